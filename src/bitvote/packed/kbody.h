/* One conv kernel body, included once per ISA by kernels.c with these macros defined:
 *   FN(name)     suffix the function name with the ISA
 *   VT           a vector of 8 uint64 lanes (8 output channels)
 *   VZERO() VLOAD(p) VBCAST(u) VXOR(a,b) VAND(a,b) VPOPADD(acc,v) VSTORE(p,v)
 * Lanes are output channels: one broadcast input word is XORed with 8 weight words. */


/* ---- the dense kernel: one leaf (popcount, MV) or one leaf per tap (HMV `tap`) ----------
 * Extra macros: VPOPACC(acc, v) adds popcount(v) to a partial accumulator (byte lanes for the
 * nibble table), VFLUSH(acc64, acc) folds a partial accumulator into 64-bit lanes, at most
 * every BV_CHUNK words; BV_CBMAX: channel blocks (of 8) held in registers at once.
 * Work items are (group of CB channel blocks, tile of BV_PT output pixels), group-major, so
 * a group's weights stay in L1 while a thread sweeps its pixels; each loaded input word is
 * XORed with the CB weight vectors of the group. Results are reduced 8 lanes at a time
 * (reduce8) and emitted with contiguous per-pixel stores (emit8). */

#ifndef BV_VEPI /* (the vector ISAs run vreduce8) */
/* Votes of 8 lanes through the levels; cnts are per leaf (the same for every lane). */
static void FN(reduce8)(const bv_conv_t *p, const int32_t *sums, const int32_t *cnts,
                        const int32_t *firsts, int32_t *va, int32_t *vb, int32_t *r)
{
    const int last = p->nlev - 1, t0 = p->lev_tie[0];
    if (last == 0) { /* one leaf: its vote, or its sum under a P root */
        for (int q = 0; q < 8; q++) r[q] = p->root_p ? sums[q] : bv_vote(sums[q], cnts[0], firsts[q], t0, 1);
        return;
    }
    for (int l = 0; l < p->L; l++)
        for (int q = 0; q < 8; q++) va[l * 8 + q] = bv_vote(sums[l * 8 + q], cnts[l], firsts[l * 8 + q], t0, 0);
    const int32_t *g = p->lev_groups;
    for (int li = 1; li <= last; li++) {
        int pos = 0;
        const int tie = p->lev_tie[li];
        for (int k = 0; k < p->lev_nodes[li]; k++) {
            int32_t s[8] = {0}, c[8] = {0}, f[8] = {0};
            for (int i = 0; i < g[k]; i++)
                for (int q = 0; q < 8; q++) {
                    const int v = va[(pos + i) * 8 + q];
                    s[q] += v;
                    c[q] += v != 0;
                    f[q] = f[q] ? f[q] : v;
                }
            pos += g[k];
            if (li == last && p->root_p) {
                for (int q = 0; q < 8; q++) r[q] = s[q];
                return;
            }
            for (int q = 0; q < 8; q++) vb[k * 8 + q] = bv_vote(s[q], c[q], f[q], tie, li == last);
        }
        g += p->lev_nodes[li];
        int32_t *t = va; va = vb; vb = t;
    }
    for (int q = 0; q < 8; q++) r[q] = va[q];
}
#endif

/* bv_post on nl consecutive floats (channels o0.., element index i0..) */
static inline void FN(post8)(const bv_conv_t *p, size_t i0, int o0, int nl, float *q)
{
    if (p->post & 1) {
        const float *res = p->res + i0;
        for (int l = 0; l < nl; l++) q[l] = q[l] + res[l];
    }
    if (p->post & 2) {
        const float *si = p->si + o0, *pw = p->pw + o0, *so = p->so + o0;
        for (int l = 0; l < nl; l++) {
            const float v = q[l] + si[l];
            q[l] = (v > 0.0f ? v : pw[l] * v) + so[l];
        }
    }
}

/* Emit 8 lanes (channels o0 .. o0+nl-1) of output pixel pix. */
static inline void FN(emit8)(const bv_conv_t *p, long pix, int n, int rem, int o0, int nl, const int32_t *r)
{
    switch (p->outmode) {
    case BV_OUT_INT: {
        int32_t *q = (int32_t *)p->out + ((size_t)n * p->Co + o0) * (size_t)(p->Ho * p->Wo) + rem;
        for (int l = 0; l < nl; l++) q[(size_t)l * p->Ho * p->Wo] = r[l];
        break;
    }
    case BV_OUT_AFFINE:
    case BV_OUT_SELECT: { /* computed locally, then stored: the output may be the residual itself */
        float *q = (float *)p->out + (size_t)pix * p->Co + o0, v[8];
        const float *a = p->a + o0, *b = p->b + o0;
        if (p->outmode == BV_OUT_AFFINE)
            for (int l = 0; l < nl; l++) v[l] = (float)r[l] * a[l] + b[l];
        else
            for (int l = 0; l < nl; l++) v[l] = r[l] > 0 ? a[l] : b[l];
        if (p->post) FN(post8)(p, (size_t)pix * p->Co + o0, o0, nl, v);
        for (int l = 0; l < nl; l++) q[l] = v[l];
        break;
    }
    default: {
        const int32_t *thr = p->thr + o0, *dir = p->dir + o0;
        unsigned m = 0;
        for (int l = 0; l < nl; l++) {
            const int d = dir[l];
            const unsigned bit = ((d > 0) & (r[l] >= thr[l])) | ((d < 0) & (r[l] <= thr[l])) | ((d == 0) & (thr[l] != 0));
            m |= bit << l;
        }
        ((uint8_t *)p->out)[(size_t)pix * p->Wdo * 8 + o0 / 8] = (uint8_t)m;
    }
    }
}

#ifdef BV_VEPI
/* Vector epilogues on 8 lanes (8 output channels) in one __m256i, shared by the AVX2 and
 * AVX-512 ISAs: BV_LD8(mm) turns 8 uint64 mismatch counts into 8 int32 lanes. Each one
 * computes exactly what bv_vote / bv_reduce / bv_post compute per lane (same rules, same
 * float ops in the same order); they return 0 where the scalar emit8 must run instead
 * (int output, a root with no valid input where the layer asks for it). */
static inline int FN(vemit)(const bv_conv_t *p, long pix, int o0, __m256i r);

/* bv_vote on 8 lanes: s, c (valid inputs) and f (first valid term / vote) per lane. */
static inline __m256i FN(vvote)(__m256i s, __m256i c, __m256i f, int tie, int root)
{
    const __m256i z = _mm256_setzero_si256();
    __m256i r = _mm256_sub_epi32(_mm256_srli_epi32(_mm256_cmpgt_epi32(s, z), 31), _mm256_srli_epi32(_mm256_cmpgt_epi32(z, s), 31));
    const __m256i tv = tie == 0 ? f : _mm256_set1_epi32(tie);
    const __m256i none = root ? _mm256_set1_epi32(tie == 0 ? 1 : tie) : z; /* no valid input: abstain / root tie */
    return _mm256_blendv_epi8(r, _mm256_blendv_epi8(tv, none, _mm256_cmpeq_epi32(c, z)), _mm256_cmpeq_epi32(s, z));
}

/* First-term values of 8 lanes: +1 where bit `bit` of x agrees with the lane's weight word
 * (BV_FIRST8: the same on this ISA's vectors, without leaving registers). */
static inline __m256i FN(vfirst)(uint64_t x, const uint64_t *w8, int bit)
{
    return _mm256_sub_epi32(_mm256_set1_epi32(1), _mm256_slli_epi32(BV_FIRST8(x, w8, bit), 1));
}

/* The first term's value when it is channel 0 of a tap: the sign of that tap's input word's
 * bit 0 times the 8 lanes' weight signs sg (+1/-1, from the kernel's table). */
static inline __m256i FN(vfirst0)(uint64_t x, const int32_t *sg)
{
    return _mm256_sign_epi32(_mm256_loadu_si256((const __m256i *)sg), _mm256_set1_epi32((x & 1) ? 1 : -1));
}

/* popcount (r = s) or a plain MV (r = vote(s)) of one leaf of cn valid terms; a tie under
 * 'first' takes the first term's value: channel 0 of the first valid tap (x word xf, the
 * lanes' weight signs there sf). */
static inline int FN(vepi)(const bv_conv_t *p, long pix, int o0, int32_t cn, const uint64_t *mm, int vote,
                           uint64_t xf, const int32_t *sf)
{
    const __m256i z = _mm256_setzero_si256();
    const __m256i s = _mm256_sub_epi32(_mm256_set1_epi32(cn), _mm256_slli_epi32(BV_LD8(mm), 1));
    __m256i r = s;
    if (vote) {
        const int tv = p->lev_tie[0];
        const __m256i f = tv == 0 && cn > 0 ? FN(vfirst0)(xf, sf) : z; /* no branch on ties */
        r = FN(vvote)(s, _mm256_set1_epi32(cn), f, tv, 1);
    }
    return FN(vemit)(p, pix, o0, r);
}

/* HMV `tap` (one leaf per tap, one root over all taps), any tie rules, on 8 lanes: a
 * zero-padded tap abstains; a tap's 'first' tie takes its channel 0, the root's the vote of
 * the first valid tap. mm: this block's mismatches of tap t at mm[t * stride]; tp/wb: the
 * pixel's tap pointers; sg: the block's weight signs of channel 0, 8 per tap. */
static inline int FN(vtap)(const bv_conv_t *p, long pix, int o0, int T, const int32_t *lcnt, const uint64_t *mm,
                           size_t stride, const uint64_t *const *tp, const int32_t *sg)
{
    if (p->nlev != 2 || p->root_p || p->L != T || p->lev_nodes[1] != 1) return 0;
    const __m256i z = _mm256_setzero_si256(), one = _mm256_set1_epi32(1);
    const int t0 = p->lev_tie[0];
    __m256i S = z, F = z;
    int nv = 0;
    for (int t = 0; t < T; t++) {
        if (lcnt[t] == 0) continue; /* abstains */
        const __m256i m = BV_LD8(mm + (size_t)t * stride);
        const __m256i sv = _mm256_sub_epi32(_mm256_set1_epi32(lcnt[t]), _mm256_slli_epi32(m, 1));
        __m256i f = z;
        if (t0 == 0) f = FN(vfirst0)(tp[t][0], sg + (size_t)t * 8); /* two ops: cheaper than a branch on ties */
        const __m256i v = FN(vvote)(sv, one, f, t0, 0);
        if (nv++ == 0) F = v;
        S = _mm256_add_epi32(S, v);
    }
    return FN(vemit)(p, pix, o0, FN(vvote)(S, _mm256_set1_epi32(nv), F, p->lev_tie[1], 1));
}

/* Any tree (bv_reduce) on 8 lanes: sums/firsts (L x 8 int32) of the leaves, cnts per leaf
 * (the same for every lane); va/vb: scratch of L x 8 int32. The result goes to r. */
static inline void FN(vreduce8)(const bv_conv_t *p, const int32_t *sums, const int32_t *cnts, const int32_t *firsts,
                                int32_t *va, int32_t *vb, int32_t *r)
{
    const int last = p->nlev - 1, t0 = p->lev_tie[0];
    const __m256i z = _mm256_setzero_si256();
    if (last == 0 && p->root_p) { /* P(M<n>): the leaf's sum */
        memcpy(r, sums, 8 * sizeof(int32_t));
        return;
    }
    for (int l = 0; l < p->L; l++) {
        const __m256i f = t0 == 0 ? _mm256_loadu_si256((const __m256i *)(firsts + l * 8)) : z;
        _mm256_storeu_si256((__m256i *)(va + l * 8),
                            FN(vvote)(_mm256_loadu_si256((const __m256i *)(sums + l * 8)), _mm256_set1_epi32(cnts[l]), f, t0, last == 0));
    }
    const int32_t *g = p->lev_groups;
    for (int li = 1; li <= last; li++) {
        int pos = 0;
        const int tie = p->lev_tie[li];
        for (int k = 0; k < p->lev_nodes[li]; k++) {
            __m256i S = z, C = z, F = z;
            for (int i = 0; i < g[k]; i++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(va + (pos + i) * 8));
                S = _mm256_add_epi32(S, v);
                const __m256i nz = _mm256_xor_si256(_mm256_cmpeq_epi32(v, z), _mm256_set1_epi32(-1));
                C = _mm256_sub_epi32(C, nz);
                F = _mm256_blendv_epi8(F, v, _mm256_cmpeq_epi32(F, z));
            }
            pos += g[k];
            if (li == last && p->root_p) {
                _mm256_storeu_si256((__m256i *)r, S);
                return;
            }
            _mm256_storeu_si256((__m256i *)(vb + k * 8), FN(vvote)(S, C, F, tie, li == last));
        }
        g += p->lev_nodes[li];
        int32_t *t = va; va = vb; vb = t;
    }
    memcpy(r, va, 8 * sizeof(int32_t));
}

/* Leaf l's sums of 8 channels o0.. (8 int32 lanes) at output pixel pix, into lsum as int16. */
static inline void FN(lsum_put8)(const bv_conv_t *p, int l, long npix, long pix, int o0, __m256i sv)
{
    const __m128i h = _mm_packs_epi32(_mm256_castsi256_si128(sv), _mm256_extracti128_si256(sv, 1));
    _mm_storeu_si128((__m128i *)(p->lsum + ((size_t)l * npix + pix) * p->Co + o0), h);
}

/* r (8 lanes) to the float / bit output, with the fused residual and RPReLU. */
static inline int FN(vemit)(const bv_conv_t *p, long pix, int o0, __m256i r)
{
    const __m256i z = _mm256_setzero_si256();
    __m256 v;
    switch (p->outmode) {
    case BV_OUT_AFFINE:
        v = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(r), _mm256_loadu_ps(p->a + o0)), _mm256_loadu_ps(p->b + o0));
        break;
    case BV_OUT_SELECT:
        v = _mm256_blendv_ps(_mm256_loadu_ps(p->b + o0), _mm256_loadu_ps(p->a + o0),
                             _mm256_castsi256_ps(_mm256_cmpgt_epi32(r, z)));
        break;
    case BV_OUT_BITS: {
        const __m256i thr = _mm256_loadu_si256((const __m256i *)(p->thr + o0));
        const __m256i d = _mm256_loadu_si256((const __m256i *)(p->dir + o0));
        const __m256i ge = _mm256_andnot_si256(_mm256_cmpgt_epi32(thr, r), _mm256_cmpgt_epi32(d, z));
        const __m256i le = _mm256_andnot_si256(_mm256_cmpgt_epi32(r, thr), _mm256_cmpgt_epi32(z, d));
        const __m256i cst = _mm256_andnot_si256(_mm256_cmpeq_epi32(thr, z), _mm256_cmpeq_epi32(d, z));
        const int m = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_or_si256(_mm256_or_si256(ge, le), cst)));
        ((uint8_t *)p->out)[(size_t)pix * p->Wdo * 8 + o0 / 8] = (uint8_t)m;
        return 1;
    }
    default:
        return 0;
    }
    const size_t i0 = (size_t)pix * p->Co + o0;
    if (p->post & 1) v = _mm256_add_ps(v, _mm256_loadu_ps(p->res + i0));
    if (p->post & 2) {
        v = _mm256_add_ps(v, _mm256_loadu_ps(p->si + o0));
        const __m256 pos = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ);
        v = _mm256_blendv_ps(_mm256_mul_ps(_mm256_loadu_ps(p->pw + o0), v), v, pos);
        v = _mm256_add_ps(v, _mm256_loadu_ps(p->so + o0));
    }
    _mm256_storeu_ps((float *)p->out + i0, v);
    return 1;
}
#endif

#ifdef BV_KVOTE
#define BV_KLEV 8 /* levels above the leaves a register tree holds */
/* A node's vote from its children's: +1 where 2 pc > nv (pc: +1 votes, nv: valid children,
 * the same in every lane), or on a tie where the rule says +1 (`first`: fm, the first valid
 * child's votes). */
static inline __mmask8 FN(knode)(VT pc, int nv, __mmask8 fm, int tie)
{
    const VT s2 = VADD64(pc, pc), nvv = VBCAST((uint64_t)nv);
    const __mmask8 t = tie > 0 ? 0xFF : tie < 0 ? 0 : fm;
    return _mm512_cmpgt_epu64_mask(s2, nvv) | (_mm512_cmpeq_epu64_mask(s2, nvv) & t);
}

/* +/-1 lanes of a vote mask, as 8 int32. */
static inline void FN(kstore)(__mmask8 pos, int32_t *r)
{
    _mm256_storeu_si256((__m256i *)r, _mm512_cvtepi64_epi32(_mm512_mask_blend_epi64(pos, _mm512_set1_epi64(-1), _mm512_set1_epi64(1))));
}

/* Any tree (levels of nodes over consecutive children, `P` root or not, any tie rules) of one
 * pixel against CB blocks on the segment layout, voted in mask registers as the segments
 * stream: a finished leaf votes 2m + b <= n (n its valid terms, b the tie's bit) and passes
 * its vote up; a node votes once its last child has; abstaining children are not counted.
 * vcnt / fseg: the pixel's valid terms and first valid segment per leaf. r: CB x 8 int32. */
static inline __attribute__((always_inline)) void FN(tile_segtree)(const bv_conv_t *p, const uint64_t *const *tp,
                                                                   const uint64_t *wg, const size_t ws, const int CB,
                                                                   const int32_t *vcnt, const int32_t *fseg, int32_t *r)
{
    const int Wd = p->Wd, S = p->S, last = p->nlev - 1, t0 = p->lev_tie[0];
    const VT one = VBCAST(1), tb = t0 < 0 ? one : VZERO();
    VT a8[BV_CBMAX], a64[BV_CBMAX], b[BV_CBMAX], pc[BV_KLEV][BV_CBMAX];
    __mmask8 fm[BV_KLEV][BV_CBMAX];
    int nv[BV_KLEV], kids[BV_KLEV], node[BV_KLEV];
    const int32_t *gb[BV_KLEV]; /* level li's fan-ins */
    const int32_t *g = p->lev_groups;
    for (int li = 1; li <= last; li++) { gb[li] = g; g += p->lev_nodes[li]; nv[li] = kids[li] = node[li] = 0; }
    for (int li = 1; li <= last; li++)
        for (int c = 0; c < CB; c++) { pc[li][c] = VZERO(); fm[li][c] = 0; }
    for (int c = 0; c < CB; c++) { a8[c] = VZERO(); a64[c] = VZERO(); b[c] = tb; }
    int cur = p->seg_leaf[0], k = 0;
    for (int s = 0; s <= S; s++) {
        if (s == S || p->seg_leaf[s] != cur) { /* leaf `cur` is complete */
            const int n = vcnt[cur];
            __mmask8 vote[BV_CBMAX];
            for (int c = 0; c < CB; c++) {
                const VT m = VFLUSH(a64[c], a8[c]);
                if (last == 0) { /* one leaf: the root itself */
                    if (p->root_p) _mm256_storeu_si256((__m256i *)(r + c * 8), _mm512_cvtepi64_epi32(VSUB64(VBCAST((uint64_t)n), VADD64(m, m))));
                    else FN(kstore)(n == 0 ? (t0 < 0 ? 0 : 0xFF) : _mm512_cmple_epu64_mask(VADD64(VADD64(m, m), b[c]), VBCAST((uint64_t)n)), r + c * 8);
                } else {
                    vote[c] = _mm512_cmple_epu64_mask(VADD64(VADD64(m, m), b[c]), VBCAST((uint64_t)n));
                }
                a8[c] = VZERO(); a64[c] = VZERO(); b[c] = tb;
            }
            if (last == 0) return;
            int valid = n > 0;
            for (int li = 1; li <= last; li++) { /* pass the vote up while nodes complete */
                if (valid) {
                    for (int c = 0; c < CB; c++) {
                        pc[li][c] = _mm512_mask_add_epi64(pc[li][c], vote[c], pc[li][c], one);
                        if (nv[li] == 0) fm[li][c] = vote[c];
                    }
                    nv[li]++;
                }
                if (++kids[li] < gb[li][node[li]]) break;
                if (li == last) { /* the root */
                    for (int c = 0; c < CB; c++) {
                        if (p->root_p)
                            _mm256_storeu_si256((__m256i *)(r + c * 8),
                                                _mm512_cvtepi64_epi32(VSUB64(VADD64(pc[li][c], pc[li][c]), VBCAST((uint64_t)nv[li]))));
                        else
                            FN(kstore)(nv[li] == 0 ? (p->lev_tie[li] < 0 ? 0 : 0xFF) : FN(knode)(pc[li][c], nv[li], fm[li][c], p->lev_tie[li]),
                                       r + c * 8);
                    }
                    return;
                }
                valid = nv[li] > 0;
                for (int c = 0; c < CB; c++) {
                    if (valid) vote[c] = FN(knode)(pc[li][c], nv[li], fm[li][c], p->lev_tie[li]);
                    pc[li][c] = VZERO();
                }
                nv[li] = 0; kids[li] = 0; node[li]++;
            }
            if (s == S) return;
            cur = p->seg_leaf[s]; k = 0;
        }
        const int t = p->seg_tap[s], j = p->seg_word[s];
        const uint64_t *xp = tp[t];
        if (!xp) continue;
        const size_t wo = ((size_t)t * Wd + j) * 8;
        const VT xb = VBCAST(xp[j]), mb = VBCAST(p->seg_mask[s]);
        const int isf = t0 == 0 && s == fseg[cur];
        const int fb = isf ? __builtin_ctzll(p->seg_mask[s]) : 0;
        for (int c = 0; c < CB; c++) {
            VT d = VXOR(xb, VLOAD(wg + c * ws + wo));
            if (isf) b[c] = VAND(VSRL64(d, fb), one); /* the leaf's first valid term */
            if (p->masked) d = VAND(d, mb);
            a8[c] = VPOPACC(a8[c], d);
        }
        if (BV_CHUNK < (1 << 30) && ++k == BV_CHUNK) {
            for (int c = 0; c < CB; c++) { a64[c] = VFLUSH(a64[c], a8[c]); a8[c] = VZERO(); }
            k = 0;
        }
    }
}
#endif

#ifdef BV_VEPI
/* The segment kernel on the vector ISAs: register tiles of up to BV_CBMAX channel blocks per
 * loaded input word (each segment's word is broadcast and masked once, XORed with CB weight
 * vectors), byte-lane popcounts (VPOPACC, folded by VFLUSH per leaf or every BV_CHUNK
 * segments), and the tree on 8 lanes at once (vreduce8; a leaf's 'first' term is looked up
 * only where one of its lanes ties), then the vector epilogue. Same results as the scalar
 * kernel below, which the portable build runs. */
static int FN(conv)(const bv_conv_t *p)
{
    const int T = p->kh * p->kw, Wd = p->Wd, L = p->L, S = p->S;
    const int Cob = (p->Co + 7) / 8, HoWo = p->Ho * p->Wo;
    const long npix = (long)p->N * HoWo;
    const int need_first = p->voter && p->lev_tie[0] == 0;
    const size_t ws = (size_t)T * Wd * 8;
    int CB = BV_CBMAX;
    while (CB > 1 && CB > Cob) CB /= 2;
#ifdef BV_KVOTE /* a voter's tree in registers (no leaf sums asked for, whole blocks of 8) */
    const int ktree = p->voter && !p->lsum && p->Co % 8 == 0 && p->nlev <= BV_KLEV;
#endif
    int failed = 0;
#pragma omp parallel num_threads(p->nthreads > 0 ? p->nthreads : 1)
    {
#ifdef BV_KVOTE
        int32_t rv[BV_CBMAX * 8];
#endif
        const uint64_t **tp = malloc((size_t)T * sizeof(*tp));
        uint64_t *mism = malloc((size_t)L * CB * 8 * sizeof(uint64_t));
        int32_t *vcnt = malloc((size_t)L * 4), *fseg = malloc((size_t)L * 4);
        int32_t *buf = malloc((size_t)L * 8 * 4 * sizeof(int32_t));
        if (!tp || !mism || !vcnt || !fseg || !buf) {
#pragma omp atomic write
            failed = 1;
        } else {
            int32_t *sums = buf, *firsts = buf + L * 8, *va = buf + 2 * L * 8, *vb = buf + 3 * L * 8;
            int32_t r[8];
            memset(buf, 0, (size_t)L * 8 * 4 * sizeof(int32_t)); /* firsts of leaves without ties are never selected */
#pragma omp for schedule(dynamic, 16)
            for (long pix = 0; pix < npix; pix++) {
                const int n = (int)(pix / HoWo), rem = (int)(pix % HoWo);
                const int oy = rem / p->Wo, ox = rem % p->Wo;
                int full = 1;
                for (int ky = 0; ky < p->kh; ky++)
                    for (int kx = 0; kx < p->kw; kx++) {
                        const int iy = oy * p->stride - p->pad + ky, ix = ox * p->stride - p->pad + kx;
                        const int t = ky * p->kw + kx;
                        if (iy >= 0 && iy < p->H && ix >= 0 && ix < p->W) {
                            tp[t] = p->x + (((size_t)n * p->H + iy) * p->W + ix) * Wd;
                        } else {
                            tp[t] = p->padmode ? p->padpix : NULL;
                            full = 0;
                        }
                    }
                if (full || p->padmode) {
                    memcpy(vcnt, p->leaf_size, (size_t)L * 4);
                } else {
                    memset(vcnt, 0, (size_t)L * 4);
                    for (int s = 0; s < S; s++)
                        if (tp[p->seg_tap[s]]) vcnt[p->seg_leaf[s]] += __builtin_popcountll(p->seg_mask[s]);
                }
                if (need_first) {
                    for (int l = 0; l < L; l++) fseg[l] = -1;
                    for (int s = 0; s < S; s++) {
                        const int l = p->seg_leaf[s];
                        if (tp[p->seg_tap[s]] && (fseg[l] < 0 || p->seg_first[s] < p->seg_first[fseg[l]])) fseg[l] = s;
                    }
                }
                if (p->outmode == BV_OUT_BITS) memset((uint64_t *)p->out + pix * p->Wdo, 0, (size_t)p->Wdo * 8);
                /* channel blocks in register tiles of a power of two: the last ones in smaller tiles */
                for (int cb0 = 0, tcb; cb0 < Cob; cb0 += tcb) {
                    tcb = CB;
                    while (tcb > Cob - cb0) tcb /= 2;
                    const uint64_t *wg = p->w + (size_t)cb0 * ws;
#ifdef BV_KVOTE
                    if (ktree) { /* the tree in mask registers, then each block's epilogue */
                        switch (tcb) {
                        case 8: FN(tile_segtree)(p, tp, wg, ws, 8, vcnt, fseg, rv); break;
                        case 4: FN(tile_segtree)(p, tp, wg, ws, 4, vcnt, fseg, rv); break;
                        case 2: FN(tile_segtree)(p, tp, wg, ws, 2, vcnt, fseg, rv); break;
                        default: FN(tile_segtree)(p, tp, wg, ws, 1, vcnt, fseg, rv);
                        }
                        for (int c = 0; c < tcb; c++) {
                            const int o0 = (cb0 + c) * 8;
                            if (!FN(vemit)(p, pix, o0, _mm256_loadu_si256((const __m256i *)(rv + c * 8))))
                                FN(emit8)(p, pix, n, rem, o0, 8, rv + c * 8);
                        }
                        continue;
                    }
#endif
#define BV_SEGTILE(NB) do { \
        VT a8[NB], a64[NB]; \
        for (int c = 0; c < NB; c++) { a8[c] = VZERO(); a64[c] = VZERO(); } \
        int cur = p->seg_leaf[0], k = 0; \
        for (int s = 0; s < S; s++) { \
            if (p->seg_leaf[s] != cur) { \
                for (int c = 0; c < NB; c++) { VSTORE(mism + ((size_t)cur * NB + c) * 8, VFLUSH(a64[c], a8[c])); a8[c] = VZERO(); a64[c] = VZERO(); } \
                cur = p->seg_leaf[s]; k = 0; \
            } \
            const uint64_t *xp = tp[p->seg_tap[s]]; \
            if (!xp) continue; \
            const size_t wo = ((size_t)p->seg_tap[s] * Wd + p->seg_word[s]) * 8; \
            const VT xb = VBCAST(xp[p->seg_word[s]]), mb = VBCAST(p->seg_mask[s]); \
            for (int c = 0; c < NB; c++) { \
                VT d = VXOR(xb, VLOAD(wg + c * ws + wo)); \
                if (p->masked) d = VAND(d, mb); \
                a8[c] = VPOPACC(a8[c], d); \
            } \
            if (BV_CHUNK < (1 << 30) && ++k == BV_CHUNK) { \
                for (int c = 0; c < NB; c++) { a64[c] = VFLUSH(a64[c], a8[c]); a8[c] = VZERO(); } \
                k = 0; \
            } \
        } \
        for (int c = 0; c < NB; c++) VSTORE(mism + ((size_t)cur * NB + c) * 8, VFLUSH(a64[c], a8[c])); \
    } while (0)
                    switch (tcb) {
#if BV_CBMAX >= 8
                    case 8: BV_SEGTILE(8); break;
#endif
#if BV_CBMAX >= 4
                    case 4: BV_SEGTILE(4); break;
#endif
                    case 2: BV_SEGTILE(2); break;
                    default: BV_SEGTILE(1);
                    }
#undef BV_SEGTILE
                    for (int c = 0; c < tcb; c++) {
                        const int o0 = (cb0 + c) * 8, nl = p->Co - o0 < 8 ? p->Co - o0 : 8;
                        const uint64_t *wb = wg + (size_t)c * ws;
                        for (int l = 0; l < L; l++) {
                            const __m256i sv = _mm256_sub_epi32(_mm256_set1_epi32(vcnt[l]),
                                                                _mm256_slli_epi32(BV_LD8(mism + ((size_t)l * tcb + c) * 8), 1));
                            _mm256_storeu_si256((__m256i *)(sums + l * 8), sv);
                            if (p->lsum) {
                                if (nl == 8) FN(lsum_put8)(p, l, npix, pix, o0, sv);
                                else bv_lsum_put(p, l, npix, pix, o0, nl, sums + l * 8);
                            }
                            if (need_first && vcnt[l] > 0 && _mm256_movemask_epi8(_mm256_cmpeq_epi32(sv, _mm256_setzero_si256()))) {
                                const int s = fseg[l], t = p->seg_tap[s], j = p->seg_word[s];
                                _mm256_storeu_si256((__m256i *)(firsts + l * 8),
                                                    FN(vfirst)(tp[t][j], wb + ((size_t)t * Wd + j) * 8, __builtin_ctzll(p->seg_mask[s])));
                            }
                        }
                        if (p->voter) FN(vreduce8)(p, sums, vcnt, firsts, va, vb, r);
                        else memcpy(r, sums, sizeof r);
                        if (nl == 8 && FN(vemit)(p, pix, o0, _mm256_loadu_si256((const __m256i *)r))) continue;
                        FN(emit8)(p, pix, n, rem, o0, nl, r);
                    }
                }
            }
        }
        free(tp); free(mism); free(vcnt); free(fseg); free(buf);
    }
    return failed ? -1 : 0;
}
#else
/* the scalar segment kernel (portable build) */
static int FN(conv)(const bv_conv_t *p)
{
    const int T = p->kh * p->kw, Wd = p->Wd, L = p->L, S = p->S;
    const int Cob = (p->Co + 7) / 8, HoWo = p->Ho * p->Wo;
    const long npix = (long)p->N * HoWo;
    const int need_first = p->voter && p->lev_tie[0] == 0;
    int failed = 0;
#pragma omp parallel num_threads(p->nthreads > 0 ? p->nthreads : 1)
    {
        const uint64_t **tp = malloc((size_t)T * sizeof(*tp));
        uint64_t *mism = malloc((size_t)L * 8 * sizeof(uint64_t));
        int32_t *vcnt = malloc((size_t)L * 4), *fseg = malloc((size_t)L * 4);
        int32_t *sums = malloc((size_t)L * 4), *firsts = malloc((size_t)L * 4);
        int32_t *va = malloc((size_t)L * 4), *vb = malloc((size_t)L * 4);
        if (!tp || !mism || !vcnt || !fseg || !sums || !firsts || !va || !vb) {
#pragma omp atomic write
            failed = 1;
        } else {
#pragma omp for schedule(static)
            for (long pix = 0; pix < npix; pix++) {
                const int n = (int)(pix / HoWo), rem = (int)(pix % HoWo);
                const int oy = rem / p->Wo, ox = rem % p->Wo;
                int full = 1;
                for (int ky = 0; ky < p->kh; ky++)
                    for (int kx = 0; kx < p->kw; kx++) {
                        const int iy = oy * p->stride - p->pad + ky, ix = ox * p->stride - p->pad + kx;
                        const int t = ky * p->kw + kx;
                        if (iy >= 0 && iy < p->H && ix >= 0 && ix < p->W) {
                            tp[t] = p->x + (((size_t)n * p->H + iy) * p->W + ix) * Wd;
                        } else {
                            tp[t] = p->padmode ? p->padpix : NULL;
                            full = 0;
                        }
                    }
                /* valid terms per leaf: all of them unless zero padding cut some off */
                if (full || p->padmode) {
                    memcpy(vcnt, p->leaf_size, (size_t)L * 4);
                } else {
                    memset(vcnt, 0, (size_t)L * 4);
                    for (int s = 0; s < S; s++)
                        if (tp[p->seg_tap[s]]) vcnt[p->seg_leaf[s]] += __builtin_popcountll(p->seg_mask[s]);
                }
                if (need_first) {
                    for (int l = 0; l < L; l++) fseg[l] = -1;
                    for (int s = 0; s < S; s++) {
                        const int l = p->seg_leaf[s];
                        if (tp[p->seg_tap[s]] && (fseg[l] < 0 || p->seg_first[s] < p->seg_first[fseg[l]])) fseg[l] = s;
                    }
                }
                if (p->outmode == BV_OUT_BITS) memset((uint64_t *)p->out + pix * p->Wdo, 0, (size_t)p->Wdo * 8);
                for (int cb = 0; cb < Cob; cb++) {
                    const uint64_t *wb = p->w + (size_t)cb * T * Wd * 8;
                    VT acc = VZERO();
                    int cur = p->seg_leaf[0];
                    for (int s = 0; s < S; s++) {
                        if (p->seg_leaf[s] != cur) {
                            VSTORE(mism + (size_t)cur * 8, acc);
                            acc = VZERO();
                            cur = p->seg_leaf[s];
                        }
                        const uint64_t *xp = tp[p->seg_tap[s]];
                        if (!xp) continue;
                        const int j = p->seg_word[s];
                        VT d = VXOR(VBCAST(xp[j]), VLOAD(wb + ((size_t)p->seg_tap[s] * Wd + j) * 8));
                        if (p->masked) d = VAND(d, VBCAST(p->seg_mask[s]));
                        acc = VPOPADD(acc, d);
                    }
                    VSTORE(mism + (size_t)cur * 8, acc);
                    for (int lane = 0; lane < 8; lane++) {
                        const int o = cb * 8 + lane;
                        if (o >= p->Co) break;
                        for (int l = 0; l < L; l++) sums[l] = vcnt[l] - 2 * (int32_t)mism[(size_t)l * 8 + lane];
                        if (p->lsum)
                            for (int l = 0; l < L; l++) p->lsum[((size_t)l * npix + pix) * p->Co + o] = (int16_t)sums[l];
                        if (need_first)
                            for (int l = 0; l < L; l++) {
                                const int s = fseg[l];
                                if (s < 0) { firsts[l] = 0; continue; }
                                const int t = p->seg_tap[s], j = p->seg_word[s];
                                const int bit = __builtin_ctzll(p->seg_mask[s]);
                                const uint64_t xw = tp[t][j], ww = wb[((size_t)t * Wd + j) * 8 + lane];
                                firsts[l] = (((xw ^ ww) >> bit) & 1) ? -1 : 1;
                            }
                        const int r = p->voter ? bv_reduce(p, sums, vcnt, firsts, va, vb) : sums[0];
                        bv_emit(p, pix, n, rem, o, r);
                    }
                }
            }
        }
        free(tp); free(mism); free(vcnt); free(fseg); free(sums); free(firsts); free(va); free(vb);
    }
    return failed ? -1 : 0;
}
#endif

#if defined(BV_VEPI) && defined(VADD64)
/* The input words of every tap of output pixel (n, oy, ox): the pixel's words, the pad word
 * (+1/-1 padding), or NULL for a zero-padded tap (its terms are not valid). */
static inline void FN(tap_words)(const bv_conv_t *p, int n, int oy, int ox, const uint64_t **tp)
{
    for (int ky = 0; ky < p->kh; ky++)
        for (int kx = 0; kx < p->kw; kx++) {
            const int iy = oy * p->stride - p->pad + ky, ix = ox * p->stride - p->pad + kx;
            tp[ky * p->kw + kx] = iy >= 0 && iy < p->H && ix >= 0 && ix < p->W
                                      ? p->x + (((size_t)n * p->H + iy) * p->W + ix) * p->Wd
                                      : (p->padmode ? p->padpix : NULL);
        }
}

#ifndef BV_SWAR_MASK_DEFINED
#define BV_SWAR_MASK_DEFINED
/* SWAR field sums: mask b keeps the low half of every 2^(b+1)-bit field (b = 0: pairs of bits,
 * 3: bytes into 16-bit fields, 4: 16-bit into 32-bit fields). */
static const uint64_t bv_swar_mask[5] = {0x5555555555555555ULL, 0x3333333333333333ULL, 0x0F0F0F0F0F0F0F0FULL,
                                         0x00FF00FF00FF00FFULL, 0x0000FFFF0000FFFFULL};
#endif

/* The bits of word j that hold one of C channels. */
static inline VT FN(live_word)(int C, int j)
{
    const int k = C - 64 * j;
    return VBCAST(k >= 64 ? ~0ULL : (1ULL << k) - 1);
}

/* Emit 8 output channels' results r (block cb): the vector epilogue, else the scalar one. */
static inline void FN(lanes_emit)(const bv_conv_t *p, long pix, int n, int rem, int cb, __m256i r)
{
    const int o0 = cb * 8, nl = p->Co - o0 < 8 ? p->Co - o0 : 8;
    if (nl == 8 && FN(vemit)(p, pix, o0, r)) return;
    int32_t rr[8];
    _mm256_storeu_si256((__m256i *)rr, r);
    FN(emit8)(p, pix, n, rem, o0, nl, rr);
}

/* The root of a tree of word-wise votes, for 8 output channels: ``acc`` counts each lane's -1
 * votes among ``votes`` children, ``first`` holds channel 0's vote (bit 0); a P root emits the
 * count votes - 2 * (-1 votes), an M root its vote under ``tie``. */
static inline void FN(root_emit)(const bv_conv_t *p, long pix, int n, int rem, int cb, VT acc, VT first,
                                 int votes, int tie)
{
    uint64_t cnt[8], f0[8];
    VSTORE(cnt, acc);
    VSTORE(f0, first);
    int32_t rr[8], fr[8];
    for (int q = 0; q < 8; q++) {
        rr[q] = votes - 2 * (int32_t)cnt[q];
        fr[q] = (f0[q] & 1) ? -1 : 1;
    }
    __m256i r = _mm256_loadu_si256((const __m256i *)rr);
    if (!p->root_p)
        r = FN(vvote)(r, _mm256_set1_epi32(votes), _mm256_loadu_si256((const __m256i *)fr), tie, 1);
    FN(lanes_emit)(p, pix, n, rem, cb, r);
}
#endif

#if defined(BV_VEPI) && defined(VADD64)
/* Tap-major leaves of L = 2..32 channels (a power of two dividing C): `tap,leaf=L`, and
 * `tap,groups=G` where C/G is such an L, i.e. M<T>(M<C/L>(M<L>)). A leaf is an L-bit field
 * of one input word, so the leaf votes of a whole word come out of SWAR arithmetic on the
 * 8 lanes' mismatch words d = x ^ w instead of one masked segment per leaf: field counts c
 * (d - (d >> 1) & 0x55.., then pairwise sums up to width L), then high-bit flags from
 * c + bias: c > L/2 (-1), c >= L/2 (not +1), the tie where they differ, resolved by the
 * level's rule ('first': the field's low bit, the leaf's first channel). Every live field
 * votes +1 or -1, so the tap node's sum is 2 * popcount(+1 flags) - leaves, over its words;
 * its 'first' value is its field 0.
 * The taps (a zero-padded one abstains) and the root vote on 8 lanes as in vtap. */
#ifdef BV_KVOTE
/* Per-field mismatch counts of d for fields of Lf bits: one instruction where the ISA counts
 * such fields (BV_FCNT8/16/32), else SWAR pairwise sums. */
static inline __attribute__((always_inline)) VT FN(fcnt)(VT d, const int Lf)
{
#ifdef BV_FCNT8
    if (Lf == 8) return BV_FCNT8(d);
    if (Lf == 16) return BV_FCNT16(d);
#endif
#ifdef BV_FCNT32
    if (Lf == 32) return BV_FCNT32(d);
#endif
    VT c = VSUB64(d, VAND(VSRL64(d, 1), VBCAST(bv_swar_mask[0])));
    for (int b = 1, wdt = 2; wdt < Lf; b++, wdt *= 2)
        c = VADD64(VAND(c, VBCAST(bv_swar_mask[b])), VAND(VSRL64(c, wdt), VBCAST(bv_swar_mask[b])));
    return c;
}

/* M<T>(M<C/L>(M<L>)) of one pixel against CB blocks in registers: a field's -1 flag is the
 * high bit of count + bias (`first`: a tie takes the field's channel 0), the tap node counts
 * its -1 leaves with one popcount per word (fields past the channels count 0: never -1) and
 * votes by mask; the root counts the taps' +1 votes. r: CB x 8 int32 +/-1. */
static inline __attribute__((always_inline)) void FN(tile_fields)(const bv_conv_t *p, const uint64_t *const *tp, const uint64_t *wg,
                                                                  const size_t ws, const int CB, const int Lf, const int nodes,
                                                                  const uint64_t Hm, const uint64_t Kneg, const uint64_t Kpos, int32_t *r)
{
    const int T = p->kh * p->kw, Wd = p->Wd, t0 = p->lev_tie[0], t1 = p->lev_tie[1], t2 = p->lev_tie[2];
    const VT one = VBCAST(1), nd = VBCAST((uint64_t)nodes), H = VBCAST(Hm), KN = VBCAST(Kneg), KP = VBCAST(Kpos);
    const VT hb0 = VBCAST(1ULL << (Lf - 1));
    VT pc[BV_CBMAX];
    __mmask8 fm[BV_CBMAX];
    for (int c = 0; c < CB; c++) { pc[c] = VZERO(); fm[c] = 0; }
    int nv = 0;
    for (int t = 0; t < T; t++) {
        const uint64_t *xp = tp[t];
        if (!xp) continue; /* a zero-padded tap abstains */
        const uint64_t *wt = wg + (size_t)t * Wd * 8;
        VT mc[BV_CBMAX];
        __mmask8 f0[BV_CBMAX]; /* lanes whose leaf 0 of this tap votes -1 */
        if (Lf >= 8) { /* fields are byte / 16-bit / 32-bit lanes: -1 flags as masks, counted per field */
            const VT lowb = VBCAST(Lf == 8 ? 0x0101010101010101ULL : Lf == 16 ? 0x0001000100010001ULL : 0x0000000100000001ULL);
            /* -1 where cnt > L/2 (tie +1), cnt >= L/2 (tie -1), 2 cnt + (channel 0's mismatch) > L (`first`) */
            const uint64_t hl = (uint64_t)(t0 == 0 ? Lf : t0 > 0 ? Lf / 2 : Lf / 2 - 1);
            const VT thr = VBCAST(Lf == 8 ? hl * 0x0101010101010101ULL : Lf == 16 ? hl * 0x0001000100010001ULL : hl * 0x0000000100000001ULL);
            for (int j = 0; j < Wd; j++) {
                const VT xb = VBCAST(xp[j]);
                for (int c = 0; c < CB; c++) {
                    const VT d = VXOR(xb, VLOAD(wt + c * ws + (size_t)j * 8)), cnt = FN(fcnt)(d, Lf);
                    const VT key = t0 == 0 ? _mm512_ternarylogic_epi64(VADD64(cnt, cnt), d, lowb, 0xF8) : cnt;
                    if (Lf == 8) {
                        const __mmask64 k = _mm512_cmpgt_epu8_mask(key, thr);
                        mc[c] = j == 0 ? _mm512_maskz_mov_epi8(k, lowb) : _mm512_mask_add_epi8(mc[c], k, mc[c], lowb);
                        if (j == 0) f0[c] = _mm512_test_epi64_mask(mc[c], VBCAST(1));
                    } else if (Lf == 16) {
                        const __mmask32 k = _mm512_cmpgt_epu16_mask(key, thr);
                        mc[c] = j == 0 ? _mm512_maskz_mov_epi16(k, lowb) : _mm512_mask_add_epi16(mc[c], k, mc[c], lowb);
                        if (j == 0) f0[c] = _mm512_test_epi64_mask(mc[c], VBCAST(1));
                    } else {
                        const __mmask16 k = _mm512_cmpgt_epu32_mask(key, thr);
                        mc[c] = j == 0 ? _mm512_maskz_mov_epi32(k, lowb) : _mm512_mask_add_epi32(mc[c], k, mc[c], lowb);
                        if (j == 0) f0[c] = _mm512_test_epi64_mask(mc[c], VBCAST(1));
                    }
                }
            }
            for (int c = 0; c < CB; c++) mc[c] = _mm512_sad_epu8(mc[c], VZERO()); /* field counts <= 31: bytes sum per lane */
        } else for (int j = 0; j < Wd; j++) {
            const VT xb = VBCAST(xp[j]);
            for (int c = 0; c < CB; c++) {
                const VT d = VXOR(xb, VLOAD(wt + c * ws + (size_t)j * 8)), cnt = FN(fcnt)(d, Lf);
                VT minus;
                if (t0 > 0) minus = VAND(VADD64(cnt, KN), H);      /* c > L/2 */
                else if (t0 < 0) minus = VAND(VADD64(cnt, KP), H); /* c >= L/2 */
                else minus = VOR(VAND(VADD64(cnt, KN), H), VAND(VAND(VADD64(cnt, KP), H), VSLL64(d, Lf - 1)));
                if (j == 0) { f0[c] = _mm512_test_epi64_mask(minus, hb0); mc[c] = VPOPACC(VZERO(), minus); }
                else mc[c] = VPOPACC(mc[c], minus);
            }
        }
        for (int c = 0; c < CB; c++) {
            const VT m = Lf >= 8 ? mc[c] : VFLUSH(VZERO(), mc[c]), m2 = VADD64(m, m); /* the tap's sum is nodes - 2m */
            const __mmask8 tie = t1 > 0 ? 0xFF : t1 < 0 ? 0 : (__mmask8)~f0[c];
            const __mmask8 pos = _mm512_cmplt_epu64_mask(m2, nd) | (_mm512_cmpeq_epu64_mask(m2, nd) & tie);
            pc[c] = _mm512_mask_add_epi64(pc[c], pos, pc[c], one);
            if (nv == 0) fm[c] = pos;
        }
        nv++;
    }
    for (int c = 0; c < CB; c++) FN(kstore)(nv == 0 ? (t2 < 0 ? 0 : 0xFF) : FN(knode)(pc[c], nv, fm[c], t2), r + c * 8);
}

#define BV_FTILE(CBv) do { switch (Lf) { \
    case 2: FN(tile_fields)(p, tp, wg, ws, CBv, 2, nodes, Hm, Kneg, Kpos, rv); break; \
    case 4: FN(tile_fields)(p, tp, wg, ws, CBv, 4, nodes, Hm, Kneg, Kpos, rv); break; \
    case 8: FN(tile_fields)(p, tp, wg, ws, CBv, 8, nodes, Hm, Kneg, Kpos, rv); break; \
    case 16: FN(tile_fields)(p, tp, wg, ws, CBv, 16, nodes, Hm, Kneg, Kpos, rv); break; \
    default: FN(tile_fields)(p, tp, wg, ws, CBv, 32, nodes, Hm, Kneg, Kpos, rv); } } while (0)

static int FN(conv_fields_k)(const bv_conv_t *p, uint64_t Hm, uint64_t Kneg, uint64_t Kpos)
{
    const int T = p->kh * p->kw, Lf = p->leaf_size[0], nodes = p->L / T;
    const int Cob = p->Co / 8, HoWo = p->Ho * p->Wo;
    const long npix = (long)p->N * HoWo;
    const size_t ws = (size_t)T * p->Wd * 8;
    int failed = 0;
#pragma omp parallel num_threads(p->nthreads > 0 ? p->nthreads : 1)
    {
        const uint64_t **tp = malloc((size_t)T * sizeof(*tp));
        int32_t rv[BV_CBMAX * 8];
        if (!tp) {
#pragma omp atomic write
            failed = 1;
        } else {
#pragma omp for schedule(dynamic, 16)
            for (long pix = 0; pix < npix; pix++) {
                const int n = (int)(pix / HoWo), rem = (int)(pix % HoWo);
                FN(tap_words)(p, n, rem / p->Wo, rem % p->Wo, tp);
                if (p->outmode == BV_OUT_BITS) memset((uint64_t *)p->out + pix * p->Wdo, 0, (size_t)p->Wdo * 8);
                for (int cb0 = 0, tcb; cb0 < Cob; cb0 += tcb) {
                    tcb = BV_CBMAX;
                    while (tcb > Cob - cb0) tcb /= 2;
                    const uint64_t *wg = p->w + (size_t)cb0 * ws;
                    switch (tcb) {
#if BV_CBMAX >= 8
                    case 8: BV_FTILE(8); break;
#endif
                    case 4: BV_FTILE(4); break;
                    case 2: BV_FTILE(2); break;
                    default: BV_FTILE(1);
                    }
                    for (int c = 0; c < tcb; c++) {
                        const int o0 = (cb0 + c) * 8;
                        if (!FN(vemit)(p, pix, o0, _mm256_loadu_si256((const __m256i *)(rv + c * 8))))
                            FN(emit8)(p, pix, n, rem, o0, 8, rv + c * 8);
                    }
                }
            }
        }
        free(tp);
    }
    return failed ? -1 : 0;
}
#undef BV_FTILE
#endif

static int FN(conv_fields)(const bv_conv_t *p)
{
    const int T = p->kh * p->kw, Wd = p->Wd, Lf = p->leaf_size[0];
    const int Cob = (p->Co + 7) / 8, HoWo = p->Ho * p->Wo;
    const long npix = (long)p->N * HoWo;
    const int t0 = p->lev_tie[0], t1 = p->lev_tie[1], t2 = p->lev_tie[2];
    const int nodes = p->L / T; /* leaves per tap */
    const size_t ws = (size_t)T * Wd * 8;
    /* SWAR constants for field width Lf (bit patterns repeated every Lf bits) */
    uint64_t Hm = 0, Kneg = 0, Kpos = 0;
    for (int f = 0; f < 64; f += Lf) {
        Hm |= 1ULL << (f + Lf - 1);
        Kneg |= ((1ULL << (Lf - 1)) - (uint64_t)(Lf / 2) - 1) << f; /* c >= Lf/2 + 1 sets the high bit */
        Kpos |= ((1ULL << (Lf - 1)) - (uint64_t)(Lf / 2)) << f;     /* c >= Lf/2 sets the high bit */
    }
#ifdef BV_KVOTE
    if (!p->lsum && p->Co % 8 == 0) return FN(conv_fields_k)(p, Hm, Kneg, Kpos);
#endif
    int failed = 0;
#pragma omp parallel num_threads(p->nthreads > 0 ? p->nthreads : 1)
    {
        const uint64_t **tp = malloc((size_t)T * sizeof(*tp));
        uint64_t *cnt = malloc((size_t)T * 2 * 8 * sizeof(uint64_t)); /* per tap: +1 leaves, leaf 0's flag */
        if (!tp || !cnt) {
#pragma omp atomic write
            failed = 1;
        } else {
            const VT H = VBCAST(Hm), KN = VBCAST(Kneg), KP = VBCAST(Kpos), one = VBCAST(1);
#pragma omp for schedule(dynamic, 16)
            for (long pix = 0; pix < npix; pix++) {
                const int n = (int)(pix / HoWo), rem = (int)(pix % HoWo);
                FN(tap_words)(p, n, rem / p->Wo, rem % p->Wo, tp);
                if (p->outmode == BV_OUT_BITS) memset((uint64_t *)p->out + pix * p->Wdo, 0, (size_t)p->Wdo * 8);
                for (int cb = 0; cb < Cob; cb++) {
                    const uint64_t *wb = p->w + (size_t)cb * ws;
                    for (int t = 0; t < T; t++) {
                        const uint64_t *xp = tp[t];
                        if (!xp) continue;
                        VT pl = VZERO(), f0 = VZERO();
                        const int c1 = nodes * Lf; /* channels of the tap */
                        for (int j = 0; j < Wd; j++) {
                            const VT d = VXOR(VBCAST(xp[j]), VLOAD(wb + ((size_t)t * Wd + j) * 8));
                            VT c = VSUB64(d, VAND(VSRL64(d, 1), VBCAST(bv_swar_mask[0])));
                            for (int b = 1, wdt = 2; wdt < Lf; b++, wdt *= 2)
                                c = VADD64(VAND(c, VBCAST(bv_swar_mask[b])), VAND(VSRL64(c, wdt), VBCAST(bv_swar_mask[b])));
                            /* every live field votes +1 or -1: count the +1 fields only */
                            VT plus;
                            if (t0 > 0) {
                                plus = VANDNOT(VAND(VADD64(c, KN), H), H);      /* not c > Lf/2 */
                            } else {
                                const VT nonpos = VAND(VADD64(c, KP), H);      /* c >= Lf/2 */
                                plus = VANDNOT(nonpos, H);
                                if (t0 == 0) { /* a tie takes the field's first channel (low bit of d) */
                                    const VT tie = VANDNOT(VAND(VADD64(c, KN), H), nonpos);
                                    plus = VOR(plus, VANDNOT(VSLL64(d, Lf - 1), tie));
                                }
                            }
                            if (64 * j + 64 > c1) /* the word's fields past the tap's channels hold no leaf */
                                plus = VAND(plus, FN(live_word)(c1, j));
                            if (j == 0) f0 = VAND(VSRL64(plus, Lf - 1), one); /* leaf 0 votes +1 */
                            pl = VPOPACC(pl, plus);
                        }
                        VSTORE(cnt + ((size_t)t * 2) * 8, VFLUSH(VZERO(), pl));
                        VSTORE(cnt + ((size_t)t * 2 + 1) * 8, f0);
                    }
                    /* taps and root on 8 int32 lanes */
                    const __m256i z = _mm256_setzero_si256(), o1 = _mm256_set1_epi32(1), nd = _mm256_set1_epi32(nodes);
                    __m256i S = z, F = z;
                    int nv = 0;
                    for (int t = 0; t < T; t++) {
                        if (!tp[t]) continue; /* abstains */
                        const __m256i st = _mm256_sub_epi32(_mm256_slli_epi32(BV_LD8(cnt + ((size_t)t * 2) * 8), 1), nd);
                        const __m256i ft = _mm256_sub_epi32(_mm256_slli_epi32(BV_LD8(cnt + ((size_t)t * 2 + 1) * 8), 1), o1);
                        const __m256i v = FN(vvote)(st, o1, ft, t1, 0);
                        if (nv++ == 0) F = v;
                        S = _mm256_add_epi32(S, v);
                    }
                    FN(lanes_emit)(p, pix, n, rem, cb, FN(vvote)(S, _mm256_set1_epi32(nv), F, t2, 1));
                }
            }
        }
        free(tp); free(cnt);
    }
    return failed ? -1 : 0;
}
#endif

#if defined(BV_VEPI) && defined(VADD64)
/* Channel-major trees over kernel rows (kw, kh = 2 or 3): cm:P(M3), cm:M(M3), cm:M<C>(M3(M3)),
 * cm:P(M3(M3)). A leaf is one kernel row of one input channel, so a whole word of leaves (64
 * channels) votes in a few word ops on the 8 lanes' mismatch words d_i = x_i ^ w_i of the
 * row's taps, and so does the per-channel vote over rows, on the rows' vote words. Words hold
 * -1 votes (a set bit: the voter says -1; majority is self-dual, so no inversion is needed):
 * three valid inputs, -1 = maj(d0, d1, d2); two (a zero-padded border, or a fan-in of 2) tie
 * when they differ: -1 = d0 & d1 under tie +1, d0 | d1 under -1, d0 under 'first' (the first
 * valid input); one valid input is its own vote; a row without a valid tap abstains. The
 * root counts or votes on (votes) - 2 * (-1 votes) per lane; its 'first' is channel 0's vote
 * (its first valid row's, for a tree of rows only). */
static inline VT FN(rowvote)(const VT *d, int m, int tie)
{
    if (m == 1) return d[0];
    if (m == 3) return VOR(VAND(d[0], d[1]), VAND(d[2], VOR(d[0], d[1])));
    return tie > 0 ? VAND(d[0], d[1]) : tie < 0 ? VOR(d[0], d[1]) : d[0];
}

static int FN(conv_rows)(const bv_conv_t *p)
{
    const int T = p->kh * p->kw, Wd = p->Wd, C = p->L / p->kh; /* leaves: C x kh rows */
    const int Cob = (p->Co + 7) / 8, HoWo = p->Ho * p->Wo;
    const long npix = (long)p->N * HoWo;
    const int deep = p->nlev == 3, tl = p->lev_tie[0], tm = p->lev_tie[1], tr = p->lev_tie[p->nlev - 1];
    const size_t ws = (size_t)T * Wd * 8;
    int failed = 0;
#pragma omp parallel num_threads(p->nthreads > 0 ? p->nthreads : 1)
    {
        const uint64_t **tp = malloc((size_t)T * sizeof(*tp));
        if (!tp) {
#pragma omp atomic write
            failed = 1;
        } else {
#pragma omp for schedule(dynamic, 16)
            for (long pix = 0; pix < npix; pix++) {
                const int n = (int)(pix / HoWo), rem = (int)(pix % HoWo);
                FN(tap_words)(p, n, rem / p->Wo, rem % p->Wo, tp);
                int tv[3][3], m[3], rv[3], nr = 0;
                for (int ky = 0; ky < p->kh; ky++) {
                    m[ky] = 0;
                    for (int kx = 0; kx < p->kw; kx++)
                        if (tp[ky * p->kw + kx]) tv[ky][m[ky]++] = ky * p->kw + kx;
                    if (m[ky]) rv[nr++] = ky; /* rows that vote */
                }
                if (p->outmode == BV_OUT_BITS) memset((uint64_t *)p->out + pix * p->Wdo, 0, (size_t)p->Wdo * 8);
                /* every tap valid (the interior): straight-line, input words broadcast once per pixel */
                const int full = nr == 3 && p->kw == 3 && m[0] == 3 && m[1] == 3 && m[2] == 3 && Wd <= 8;
                VT xv[9 * 8];
                if (full)
                    for (int t = 0; t < 9; t++)
                        for (int j = 0; j < Wd; j++) xv[t * 8 + j] = VBCAST(tp[t][j]);
                for (int cb = 0; cb < Cob; cb++) {
                    const uint64_t *wb = p->w + (size_t)cb * ws;
                    VT acc = VZERO(), first = VZERO();
                    for (int j = 0; j < Wd; j++) {
                        VT pr[3];
                        if (full) {
                            VT d[9];
                            for (int t = 0; t < 9; t++) d[t] = VXOR(xv[t * 8 + j], VLOAD(wb + ((size_t)t * Wd + j) * 8));
                            for (int r = 0; r < 3; r++)
                                pr[r] = VOR(VAND(d[3 * r], d[3 * r + 1]), VAND(d[3 * r + 2], VOR(d[3 * r], d[3 * r + 1])));
                        } else
                        for (int r = 0; r < nr; r++) {
                            const int ky = rv[r];
                            VT pt[3];
                            for (int i = 0; i < m[ky]; i++)
                                pt[i] = VXOR(VBCAST(tp[tv[ky][i]][j]), VLOAD(wb + ((size_t)tv[ky][i] * Wd + j) * 8));
                            pr[r] = FN(rowvote)(pt, m[ky], tl);
                        }
                        const VT live = FN(live_word)(C, j);
                        if (deep) {
                            const VT pc = VAND(FN(rowvote)(pr, nr, tm), live);
                            if (j == 0) first = pc;
                            acc = VFLUSH(acc, VPOPACC(VZERO(), pc));
                        } else {
                            if (j == 0) first = pr[0];
                            VT pl = VZERO();
                            for (int r = 0; r < nr; r++) pl = VPOPACC(pl, VAND(pr[r], live));
                            acc = VFLUSH(acc, pl);
                        }
                    }
                    FN(root_emit)(p, pix, n, rem, cb, acc, first, deep ? C : C * nr, tr);
                }
            }
        }
        free(tp);
    }
    return failed ? -1 : 0;
}
#endif

#if defined(BV_VEPI) && defined(VADD64)
/* One leaf per input channel over all its taps (T = kh * kw <= 15): cm:M<C>(M<T>), cm:P(M<T>).
 * The 64 channels of a word vote at once: the valid taps' mismatch words d_t = x_t ^ w_t are
 * added into a bit-sliced counter (four bit planes of k, the -1 terms of each channel), then
 * compared with the valid count m: -1 where 2k > m, a tie where 2k = m, resolved by the leaf's
 * rule ('first': the first valid tap's bit). The root counts or votes on the channel votes as
 * in conv_rows (its 'first': channel 0's vote). */
#define BV_FA(s, cy, a, b, c) do { const VT u_ = VXOR(a, b); s = VXOR(u_, c); cy = VOR(VAND(a, b), VAND(c, u_)); } while (0)
static inline VT FN(chanvote)(const VT *d, int m, int tie)
{
    if (m == 9) { /* the interior of a 3x3 kernel: a carry-save tree, -1 where k >= 5 */
        VT s1, c1, s2, c2, s3, c3, ones, c4, t2, f1;
        BV_FA(s1, c1, d[0], d[1], d[2]);
        BV_FA(s2, c2, d[3], d[4], d[5]);
        BV_FA(s3, c3, d[6], d[7], d[8]);
        BV_FA(ones, c4, s1, s2, s3);
        BV_FA(t2, f1, c1, c2, c3);
        const VT twos = VXOR(t2, c4), f2 = VAND(t2, c4);
        return VOR(VAND(f1, f2), VAND(VXOR(f1, f2), VOR(ones, twos)));
    }
    VT b[4] = {VZERO(), VZERO(), VZERO(), VZERO()};
    for (int t = 0; t < m; t++) { /* ripple-add d[t] into the planes */
        VT c = d[t];
        for (int i = 0; i < 4; i++) {
            const VT nb = VXOR(b[i], c);
            c = VAND(b[i], c);
            b[i] = nb;
        }
    }
    const int h = m / 2; /* -1 where k > h; k == h is a tie when m is even */
    VT gt = VZERO(), eq = VBCAST(~0ULL);
    for (int i = 3; i >= 0; i--) {
        if (h >> i & 1) {
            eq = VAND(eq, b[i]);
        } else {
            gt = VOR(gt, VAND(eq, b[i]));
            eq = VANDNOT(b[i], eq);
        }
    }
    if (m & 1) return gt;
    return tie > 0 ? gt : tie < 0 ? VOR(gt, eq) : VOR(gt, VAND(eq, d[0]));
}

#undef BV_FA

static int FN(conv_chan)(const bv_conv_t *p)
{
    const int T = p->kh * p->kw, Wd = p->Wd, C = p->L;
    const int Cob = (p->Co + 7) / 8, HoWo = p->Ho * p->Wo;
    const long npix = (long)p->N * HoWo;
    const int tl = p->lev_tie[0], tr = p->lev_tie[1];
    const size_t ws = (size_t)T * Wd * 8;
    int failed = 0;
#pragma omp parallel num_threads(p->nthreads > 0 ? p->nthreads : 1)
    {
        const uint64_t **tp = malloc((size_t)T * sizeof(*tp));
        if (!tp) {
#pragma omp atomic write
            failed = 1;
        } else {
#pragma omp for schedule(dynamic, 16)
            for (long pix = 0; pix < npix; pix++) {
                const int n = (int)(pix / HoWo), rem = (int)(pix % HoWo);
                FN(tap_words)(p, n, rem / p->Wo, rem % p->Wo, tp);
                int tv[15], m = 0;
                for (int t = 0; t < T; t++)
                    if (tp[t]) tv[m++] = t;
                if (p->outmode == BV_OUT_BITS) memset((uint64_t *)p->out + pix * p->Wdo, 0, (size_t)p->Wdo * 8);
                for (int cb = 0; cb < Cob; cb++) {
                    const uint64_t *wb = p->w + (size_t)cb * ws;
                    VT acc = VZERO(), first = VZERO();
                    for (int j = 0; j < Wd; j++) {
                        VT d[15];
                        for (int i = 0; i < m; i++)
                            d[i] = VXOR(VBCAST(tp[tv[i]][j]), VLOAD(wb + ((size_t)tv[i] * Wd + j) * 8));
                        const VT v = VAND(FN(chanvote)(d, m, tl), FN(live_word)(C, j));
                        if (j == 0) first = v;
                        acc = VFLUSH(acc, VPOPACC(VZERO(), v));
                    }
                    FN(root_emit)(p, pix, n, rem, cb, acc, first, C, tr);
                }
            }
        }
        free(tp);
    }
    return failed ? -1 : 0;
}
#endif

#if defined(BV_VEPI) && defined(VADD64)
/* Channel-major groups of Lc whole channels over every tap (`cgroups=G`: cm:M<G>(M<n/G>),
 * cm:P(M<n/G>)), T <= 15 taps. Lc = 8, 16 or 32: a leaf is an Lc-bit field of each input word;
 * the mismatch counts of every byte add up over the valid taps (<= 8 * 15 fits a byte), then
 * bytes add up into fields (k <= 15 * Lc fits its field); -1 where 2k > m * Lc (m valid taps: high-bit
 * flags of k + bias), a tie resolved by the leaf's rule ('first': the first valid tap's bit
 * of the field's first channel). Lc a multiple of 64: a leaf is Lc / 64 whole words, counted
 * and voted on 8 int32 lanes. The root counts or votes over the G leaves; its 'first' is leaf
 * 0's vote. A pixel without a valid tap: every leaf abstains, the root takes its tie value. */
static int FN(conv_cgroups)(const bv_conv_t *p)
{
    const int T = p->kh * p->kw, Wd = p->Wd, G = p->L, Lc = p->leaf_size[0] / T, C = G * Lc;
    const int Cob = (p->Co + 7) / 8, HoWo = p->Ho * p->Wo;
    const long npix = (long)p->N * HoWo;
    const int tl = p->lev_tie[0], tr = p->lev_tie[1];
    const size_t ws = (size_t)T * Wd * 8;
    uint64_t Hm = 0, ones = 0;
    for (int f = 0; f < 64; f += Lc) {
        Hm |= 1ULL << (f + Lc - 1);
        ones |= 1ULL << f;
    }
    int failed = 0;
#pragma omp parallel num_threads(p->nthreads > 0 ? p->nthreads : 1)
    {
        const uint64_t **tp = malloc((size_t)T * sizeof(*tp));
        if (!tp) {
#pragma omp atomic write
            failed = 1;
        } else {
            const VT H = VBCAST(Hm), one = VBCAST(1);
#pragma omp for schedule(dynamic, 16)
            for (long pix = 0; pix < npix; pix++) {
                const int n = (int)(pix / HoWo), rem = (int)(pix % HoWo);
                FN(tap_words)(p, n, rem / p->Wo, rem % p->Wo, tp);
                int tv[15], m = 0;
                for (int t = 0; t < T; t++)
                    if (tp[t]) tv[m++] = t;
                if (p->outmode == BV_OUT_BITS) memset((uint64_t *)p->out + pix * p->Wdo, 0, (size_t)p->Wdo * 8);
                const uint64_t h = (uint64_t)m * Lc / 2; /* -1 where k > h, a tie where k == h */
                const VT KN = VBCAST(((1ULL << (Lc - 1)) - h - 1) * ones), KP = VBCAST(((1ULL << (Lc - 1)) - h) * ones);
                for (int cb = 0; cb < Cob; cb++) {
                    const uint64_t *wb = p->w + (size_t)cb * ws;
                    if (m == 0) { /* every leaf abstains */
                        const __m256i z = _mm256_setzero_si256();
                        FN(lanes_emit)(p, pix, n, rem, cb, p->root_p ? z : FN(vvote)(z, z, z, tr, 1));
                        continue;
                    }
                    if (Lc < 64) {
                        VT acc = VZERO(), first = VZERO();
                        for (int j = 0; j < Wd; j++) {
                            VT k = VZERO(), d0 = VZERO();
                            for (int i = 0; i < m; i++) { /* byte counts: <= 8 m <= 120 per byte */
                                const VT d = VXOR(VBCAST(tp[tv[i]][j]), VLOAD(wb + ((size_t)tv[i] * Wd + j) * 8));
                                k = VPC8ACC(k, d);
                                if (i == 0) d0 = d;
                            }
                            for (int b = 3, wdt = 8; wdt < Lc; b++, wdt *= 2) /* bytes -> Lc-bit fields */
                                k = VADD64(VAND(k, VBCAST(bv_swar_mask[b])), VAND(VSRL64(k, wdt), VBCAST(bv_swar_mask[b])));
                            VT neg; /* -1 flags at each field's high bit */
                            if (tl > 0) {
                                neg = VAND(VADD64(k, KN), H);
                            } else if (tl < 0) {
                                neg = VAND(VADD64(k, KP), H);
                            } else {
                                const VT gt = VAND(VADD64(k, KN), H), tie = VANDNOT(gt, VAND(VADD64(k, KP), H));
                                neg = VOR(gt, VAND(tie, VSLL64(d0, Lc - 1)));
                            }
                            neg = VAND(neg, FN(live_word)(C, j)); /* fields past C hold no leaf */
                            if (j == 0) first = VAND(VSRL64(neg, Lc - 1), one);
                            acc = VFLUSH(acc, VPOPACC(VZERO(), neg));
                        }
                        FN(root_emit)(p, pix, n, rem, cb, acc, first, G, tr);
                        continue;
                    }
                    const int q = Lc / 64;
                    const __m256i one8 = _mm256_set1_epi32(1), vc = _mm256_set1_epi32(m * Lc);
                    __m256i S = _mm256_setzero_si256(), F = S;
                    for (int g = 0; g < G; g++) {
                        VT cnt = VZERO(), pc = VZERO();
                        int np = 0;
                        for (int i = 0; i < m; i++)
                            for (int j = g * q; j < g * q + q; j++) {
                                pc = VPOPACC(pc, VXOR(VBCAST(tp[tv[i]][j]), VLOAD(wb + ((size_t)tv[i] * Wd + j) * 8)));
                                if (++np == BV_CHUNK) { cnt = VFLUSH(cnt, pc); pc = VZERO(); np = 0; }
                            }
                        cnt = VFLUSH(cnt, pc);
                        uint64_t kk[8];
                        VSTORE(kk, cnt);
                        const __m256i sv = _mm256_sub_epi32(vc, _mm256_slli_epi32(BV_LD8(kk), 1));
                        const __m256i f = tl == 0 ? FN(vfirst)(tp[tv[0]][g * q], wb + ((size_t)tv[0] * Wd + g * q) * 8, 0)
                                                  : _mm256_setzero_si256();
                        const __m256i v = FN(vvote)(sv, one8, f, tl, 0);
                        if (g == 0) F = v;
                        S = _mm256_add_epi32(S, v);
                    }
                    FN(lanes_emit)(p, pix, n, rem, cb, p->root_p ? S : FN(vvote)(S, _mm256_set1_epi32(G), F, tr, 1));
                }
            }
        }
        free(tp);
    }
    return failed ? -1 : 0;
}
#endif

/* Mismatch counts of one pixel against CB channel blocks: mism[(leaf * CB + c) * 8 + lane]. */
static inline __attribute__((always_inline)) void FN(tile)(const uint64_t *const *tp, const int T, const int Wd,
                                                           const uint64_t *wg, const size_t ws, const int CB,
                                                           const int pertap, uint64_t *mism)
{
    VT a8[BV_CBMAX], a64[BV_CBMAX];
    for (int c = 0; c < CB; c++) { a8[c] = VZERO(); a64[c] = VZERO(); }
    int k = 0;
    for (int t = 0; t < T; t++) {
        const uint64_t *xp = tp[t];
        if (xp) {
            const uint64_t *wt = wg + (size_t)t * Wd * 8;
            for (int j = 0; j < Wd; j++) {
                const VT xb = VBCAST(xp[j]);
                for (int c = 0; c < CB; c++) a8[c] = VPOPACC(a8[c], VXOR(xb, VLOAD(wt + c * ws + (size_t)j * 8)));
                if (BV_CHUNK < (1 << 30) && ++k == BV_CHUNK) {
                    for (int c = 0; c < CB; c++) { a64[c] = VFLUSH(a64[c], a8[c]); a8[c] = VZERO(); }
                    k = 0;
                }
            }
        }
        if (pertap) {
            for (int c = 0; c < CB; c++) {
                VSTORE(mism + ((size_t)t * CB + c) * 8, VFLUSH(a64[c], a8[c]));
                a8[c] = VZERO(); a64[c] = VZERO();
            }
            k = 0;
        }
    }
    if (!pertap)
        for (int c = 0; c < CB; c++) VSTORE(mism + (size_t)c * 8, VFLUSH(a64[c], a8[c]));
}

static inline __attribute__((always_inline)) void FN(tiles)(const uint64_t *const *tp, int T, int Wd, const uint64_t *wg, size_t ws, int CB,
                      int pertap, uint64_t *mism)
{
#define BV_TCASE(cb) case cb: { if (pertap) FN(tile)(tp, T, Wd, wg, ws, cb, 1, mism); \
                                else FN(tile)(tp, T, Wd, wg, ws, cb, 0, mism); } break;
    switch (CB) {
#if BV_CBMAX >= 8
    BV_TCASE(8)
#endif
#if BV_CBMAX >= 4
    BV_TCASE(4)
#endif
#if BV_CBMAX >= 2
    BV_TCASE(2)
#endif
    default: BV_TCASE(1)
    }
#undef BV_TCASE
}

#ifdef BV_KVOTE
/* HMV `tap` (M<T>(M<C>), any tie rules) of one pixel against CB blocks without leaving
 * registers: a tap's vote is +1 where 2m + b <= C (m its mismatches, b the tie's bit: 0 under
 * +1, 1 under -1, channel 0's mismatch under `first`), counted per lane with a masked add; the
 * first valid tap's votes stay as a mask for the root's `first`. r: CB x 8 int32 +/-1. */
static inline __attribute__((always_inline)) void FN(tile_tapvote)(const uint64_t *const *tp, const int T, const int Wd,
                                                                   const uint64_t *wg, const size_t ws, const int CB,
                                                                   const int C, const int t0, const int troot, int32_t *r)
{
    VT pc[BV_CBMAX];
    __mmask8 fm[BV_CBMAX];
    const VT lim = VBCAST((uint64_t)C), one = VBCAST(1), tb = t0 < 0 ? one : VZERO();
    for (int c = 0; c < CB; c++) { pc[c] = VZERO(); fm[c] = 0; }
    int nv = 0;
    for (int t = 0; t < T; t++) {
        const uint64_t *xp = tp[t];
        if (!xp) continue; /* a zero-padded tap abstains */
        const uint64_t *wt = wg + (size_t)t * Wd * 8;
        VT a[BV_CBMAX], d0[BV_CBMAX]; /* d0: word 0's mismatches (channel 0 for `first`) */
        const VT xb0 = VBCAST(xp[0]);
        for (int c = 0; c < CB; c++) { d0[c] = VXOR(xb0, VLOAD(wt + c * ws)); a[c] = VPOPACC(VZERO(), d0[c]); }
        for (int j = 1; j < Wd; j++) {
            const VT xb = VBCAST(xp[j]);
            for (int c = 0; c < CB; c++) a[c] = VPOPACC(a[c], VXOR(xb, VLOAD(wt + c * ws + (size_t)j * 8)));
        }
        for (int c = 0; c < CB; c++) {
            const VT m = VFLUSH(VZERO(), a[c]);
            const VT b = t0 == 0 ? VAND(d0[c], one) : tb;
            const __mmask8 pos = _mm512_cmple_epu64_mask(VADD64(VADD64(m, m), b), lim);
            pc[c] = _mm512_mask_add_epi64(pc[c], pos, pc[c], one);
            fm[c] = nv == 0 ? pos : fm[c];
        }
        nv++;
    }
    const VT nvv = VBCAST((uint64_t)nv);
    for (int c = 0; c < CB; c++) {
        const VT s2 = VADD64(pc[c], pc[c]); /* the root's sum is 2 pc - nv */
        __mmask8 tie = troot > 0 ? 0xFF : troot < 0 ? 0 : fm[c];
        if (nv == 0) tie = troot < 0 ? 0 : 0xFF; /* the root abstains: its tie value, +1 under first */
        const __mmask8 pos = _mm512_cmpgt_epu64_mask(s2, nvv) | (_mm512_cmpeq_epu64_mask(s2, nvv) & tie);
        _mm256_storeu_si256((__m256i *)(r + c * 8),
                            _mm512_cvtepi64_epi32(_mm512_mask_blend_epi64(pos, _mm512_set1_epi64(-1), _mm512_set1_epi64(1))));
    }
}

static inline __attribute__((always_inline)) void FN(tiles_tapvote)(const uint64_t *const *tp, int T, int Wd, const uint64_t *wg,
                                                                    size_t ws, int CB, int C, int t0, int troot, int32_t *r)
{
    switch (CB) {
#if BV_CBMAX >= 8
    case 8: FN(tile_tapvote)(tp, T, Wd, wg, ws, 8, C, t0, troot, r); break;
#endif
    case 4: FN(tile_tapvote)(tp, T, Wd, wg, ws, 4, C, t0, troot, r); break;
    case 2: FN(tile_tapvote)(tp, T, Wd, wg, ws, 2, C, t0, troot, r); break;
    default: FN(tile_tapvote)(tp, T, Wd, wg, ws, 1, C, t0, troot, r);
    }
}
#endif

#if defined(BV_HS9) || defined(BV_POP9)
#define BV_FLAT 1
/* 3x3 taps of one word (64 channels): the 9 words of a pixel against CB blocks, weights at
 * constant offsets (a block is 9 * 8 words), no per-word loop. */
static inline __attribute__((always_inline)) void FN(tile9)(const uint64_t *xb, const long *xo, const uint64_t *wg,
                                                           const int CB, uint64_t *mism)
{
    VT x[9];
    for (int i = 0; i < 9; i++) x[i] = VBCAST(xb[xo[i]]);
    for (int c = 0; c < CB; c++) {
        const uint64_t *w = wg + c * 72;
#ifdef BV_HS9 /* a carry-save tree 9 -> ones, twos, fours, eights, one weighted-table fold */
        VT s1, s2, s3, c1, c2, c3, ones, c4, s5, c5;
        BV_CSA(s1, c1, VXOR(x[0], VLOAD(w)), VXOR(x[1], VLOAD(w + 8)), VXOR(x[2], VLOAD(w + 16)));
        BV_CSA(s2, c2, VXOR(x[3], VLOAD(w + 24)), VXOR(x[4], VLOAD(w + 32)), VXOR(x[5], VLOAD(w + 40)));
        BV_CSA(s3, c3, VXOR(x[6], VLOAD(w + 48)), VXOR(x[7], VLOAD(w + 56)), VXOR(x[8], VLOAD(w + 64)));
        BV_CSA(ones, c4, s1, s2, s3);
        BV_CSA(s5, c5, c1, c2, c3);
        const VT c6 = VAND(s5, c4);
        VSTORE(mism + (size_t)c * 8, BV_HS9FOLD(ones, VXOR(s5, c4), VXOR(c5, c6), VAND(c5, c6)));
#else /* vector popcount per word, added as a tree */
        VT a[9];
        for (int i = 0; i < 9; i++) a[i] = VPOPADD(VZERO(), VXOR(x[i], VLOAD(w + 8 * i)));
        VSTORE(mism + (size_t)c * 8, BV_ADD64(BV_ADD64(BV_ADD64(a[0], a[1]), BV_ADD64(a[2], a[3])),
                                              BV_ADD64(BV_ADD64(a[4], a[5]), BV_ADD64(BV_ADD64(a[6], a[7]), a[8]))));
#endif
    }
}

static inline __attribute__((always_inline)) void FN(tiles9)(const uint64_t *xb, const long *xo, const uint64_t *wg,
                                                            int CB, uint64_t *mism)
{
    switch (CB) {
    case 8: FN(tile9)(xb, xo, wg, 8, mism); break;
    case 4: FN(tile9)(xb, xo, wg, 4, mism); break;
    case 2: FN(tile9)(xb, xo, wg, 2, mism); break;
    default:
        for (int c = 0; c < CB; c++) FN(tile9)(xb, xo, wg + (size_t)c * 72, 1, mism + (size_t)c * 8);
    }
}
#endif

#ifdef BV_HS
#ifndef BV_HSCB
#define BV_HSCB 4
#endif
/* Harley-Seal carry-save popcount for the nibble-table ISA (one leaf): the NW mismatch
 * vectors of a pixel (word k at xb[xo[k]] against weights wg + k*8) go through carry-save
 * adders (BV_CSA: two vpternlogq) in groups of 8, so only one vector in 8 (the "eights"
 * carry) is popcounted in the loop; ones/twos/fours are counted once per pixel with weighted
 * nibble tables. ~3.5 vector ops per word instead of 8. Byte lanes: eights <= 8 per group
 * (NW <= 248), the final sum <= 8 + 16 + 32 + 3 * 8. */
static inline __attribute__((always_inline)) void FN(tile_hs)(const uint64_t *xb, const long *xo, const int NW,
                                                              const uint64_t *wg, const size_t ws, const int CB,
                                                              uint64_t *mism)
{
    VT o1[4], o2[4], o4[4], a8[4], rs[4];
    for (int c = 0; c < CB; c++) { o1[c] = VZERO(); o2[c] = VZERO(); o4[c] = VZERO(); a8[c] = VZERO(); rs[c] = VZERO(); }
    int k = 0;
    for (; k + 8 <= NW; k += 8) {
        VT x[8];
        for (int i = 0; i < 8; i++) x[i] = VBCAST(xb[xo[k + i]]);
        for (int c = 0; c < CB; c++) {
            const uint64_t *w = wg + c * ws + (size_t)k * 8;
            VT t2a, t2b, t4a, t4b, t8;
            BV_CSA(o1[c], t2a, o1[c], VXOR(x[0], VLOAD(w)), VXOR(x[1], VLOAD(w + 8)));
            BV_CSA(o1[c], t2b, o1[c], VXOR(x[2], VLOAD(w + 16)), VXOR(x[3], VLOAD(w + 24)));
            BV_CSA(o2[c], t4a, o2[c], t2a, t2b);
            BV_CSA(o1[c], t2a, o1[c], VXOR(x[4], VLOAD(w + 32)), VXOR(x[5], VLOAD(w + 40)));
            BV_CSA(o1[c], t2b, o1[c], VXOR(x[6], VLOAD(w + 48)), VXOR(x[7], VLOAD(w + 56)));
            BV_CSA(o2[c], t4b, o2[c], t2a, t2b);
            BV_CSA(o4[c], t8, o4[c], t4a, t4b);
            a8[c] = BV_PC8ADD(a8[c], t8);
        }
    }
    if (k + 4 <= NW) {
        VT x[4];
        for (int i = 0; i < 4; i++) x[i] = VBCAST(xb[xo[k + i]]);
        for (int c = 0; c < CB; c++) {
            const uint64_t *w = wg + c * ws + (size_t)k * 8;
            VT t2a, t2b, t4;
            BV_CSA(o1[c], t2a, o1[c], VXOR(x[0], VLOAD(w)), VXOR(x[1], VLOAD(w + 8)));
            BV_CSA(o1[c], t2b, o1[c], VXOR(x[2], VLOAD(w + 16)), VXOR(x[3], VLOAD(w + 24)));
            BV_CSA(o2[c], t4, o2[c], t2a, t2b);
            a8[c] = BV_PC8ADD(a8[c], VAND(o4[c], t4)); /* half adder into fours */
            o4[c] = VXOR(o4[c], t4);
        }
        k += 4;
    }
    for (; k < NW; k++) {
        const VT x = VBCAST(xb[xo[k]]);
        for (int c = 0; c < CB; c++) rs[c] = BV_PC8ADD(rs[c], VXOR(x, VLOAD(wg + c * ws + (size_t)k * 8)));
    }
    for (int c = 0; c < CB; c++) VSTORE(mism + (size_t)c * 8, BV_HSFOLD(o1[c], o2[c], o4[c], a8[c], rs[c]));
}

static inline __attribute__((always_inline)) void FN(tiles_hs)(const uint64_t *xb, const long *xo, int NW, const uint64_t *wg, size_t ws, int CB,
                         uint64_t *mism)
{
    for (int c0 = 0; c0 < CB; c0 += BV_HSCB) {
        const int n = CB - c0 < BV_HSCB ? CB - c0 : BV_HSCB;
        const uint64_t *w = wg + (size_t)c0 * ws;
        uint64_t *m = mism + (size_t)c0 * 8;
        if (n == 4) FN(tile_hs)(xb, xo, NW, w, ws, 4, m);
        else if (n == 2) FN(tile_hs)(xb, xo, NW, w, ws, 2, m);
        else FN(tile_hs)(xb, xo, NW, w, ws, 1, m);
    }
}
#endif

#ifndef BV_PT
#define BV_PT 32
#define BV_WGROUP_BYTES 16384
#define BV_GROUP_BYTES 32768
#endif

static int FN(conv_dense)(const bv_conv_t *p)
{
    const int T = p->kh * p->kw, Wd = p->Wd, HoWo = p->Ho * p->Wo, Cob = (p->Co + 7) / 8;
    const int pertap = p->kind == BV_KIND_TAP_LEAVES, LT = pertap ? T : 1;
    const long npix = (long)p->N * HoWo;
    const int need_first = p->voter && p->lev_tie[0] == 0;
    const int mv1 = p->voter && !pertap && p->nlev == 1 && !p->root_p; /* a plain MV: vote = sign, tie rule */
    const int C = p->leaf_size[0] / (pertap ? 1 : T); /* channels: leaf sizes are C*T or C */
    const size_t ws = (size_t)T * Wd * 8;             /* words of one channel block */
    const int NW = T * Wd;
#ifdef BV_KVOTE /* a 2-level `tap` tree voted in registers (no leaf sums asked for, whole blocks of 8) */
    const int kvote = pertap && !p->lsum && p->nlev == 2 && !p->root_p && p->L == T && p->lev_nodes[1] == 1 &&
                      p->Co % 8 == 0 && Wd <= BV_CHUNK;
#endif
#ifdef BV_CB9MAX /* the 9-word tile holds no per-block arrays: it may sweep more blocks per loaded pixel */
    int CB = NW == 9 && !pertap && p->wpc ? BV_CB9MAX : BV_CBMAX;
#else
    int CB = BV_CBMAX;
#endif
    while (CB > 1 && (CB > Cob || (size_t)CB * ws * 8 > BV_WGROUP_BYTES)) CB /= 2;
    /* a work item's channel group: G >= CB blocks whose weights stay in L1 (<= BV_GROUP_BYTES),
     * swept in register tiles of CB, so a pixel's setup (taps, borders) is paid once per G */
    int G = CB;
    while (G * 2 <= Cob && (size_t)G * 2 * ws * 8 <= BV_GROUP_BYTES) G *= 2;
    const int ncg = (Cob + G - 1) / G;
    const int nth = p->nthreads > 0 ? p->nthreads : 1;
    int PT = BV_PT;
    while (PT > 1 && (long)ncg * ((npix + PT - 1) / PT) < 4L * nth) PT /= 2;
    const long npt = (npix + PT - 1) / PT, nitems = (long)ncg * npt;
    const int bytes_out = p->outmode == BV_OUT_BITS ? p->Wdo * 8 : 0;
#ifdef BV_FLAT
    /* one leaf whose pixel words are read as a flat stream (xb[xo[k]], zero words for zero-padded
     * taps, corrected below): the 9-word tile, or Harley-Seal (nibble ISA, up to 248 words) */
#ifdef BV_HS
    const int flat = !pertap && p->wpc && NW <= 248;
#else
    const int flat = !pertap && p->wpc && NW == 9;
#endif
#endif
#ifdef BV_VEPI
    /* 'first' ties at channel 0 of a tap: the weight signs there, (block, tap, lane) */
    int32_t *wsg = malloc((size_t)Cob * T * 8 * sizeof(int32_t));
    if (!wsg) return -1;
    for (int cb = 0; cb < Cob; cb++)
        for (int t = 0; t < T; t++)
            for (int q = 0; q < 8; q++)
                wsg[((size_t)cb * T + t) * 8 + q] = (p->w[(((size_t)cb * T + t) * Wd) * 8 + q] & 1) ? 1 : -1;
#endif
    int failed = 0;
#pragma omp parallel num_threads(nth)
    {
        const uint64_t **tp = malloc((size_t)T * sizeof(*tp));
        long *toff = malloc((size_t)T * sizeof(long));
        long *xo_full = malloc((size_t)NW * 2 * sizeof(long)), *xo_id = xo_full + NW; /* interior / border word offsets */
        uint64_t *xv = malloc((size_t)NW * sizeof(uint64_t));                    /* a border pixel's words */
        uint64_t *mism = malloc((size_t)LT * CB * 8 * sizeof(uint64_t));
        int32_t *buf = malloc((size_t)LT * 8 * 5 * sizeof(int32_t) + 64);
        int32_t cnts[1];
        if (!tp || !toff || !mism || !buf || !xo_full || !xv) {
#pragma omp atomic write
            failed = 1;
        } else {
            int32_t *sums = buf, *firsts = buf + LT * 8, *va = buf + 2 * LT * 8, *vb = buf + 3 * LT * 8;
            int32_t *lcnt = buf + 4 * LT * 8;
            int32_t r[8];
#ifdef BV_KVOTE
            int32_t rv[BV_CBMAX * 8]; /* this thread's tap-vote results */
#endif
            for (int ky = 0; ky < p->kh; ky++)
                for (int kx = 0; kx < p->kw; kx++) toff[ky * p->kw + kx] = ((long)ky * p->W + kx) * Wd;
            for (int t = 0; t < T; t++)
                for (int j = 0; j < Wd; j++) { xo_full[t * Wd + j] = toff[t] + j; xo_id[t * Wd + j] = t * Wd + j; }
#pragma omp for schedule(dynamic, 1) /* items are >= 32 pixels x CB blocks: a descheduled thread's items go to the other */
            for (long it = 0; it < nitems; it++) {
                const int cg = (int)(it / npt);
                const long p0 = (it % npt) * PT, p1 = p0 + PT < npix ? p0 + PT : npix;
                const int cb0 = cg * G, cbn = Cob - cb0 < G ? Cob - cb0 : G;
                int n = (int)(p0 / HoWo), rem = (int)(p0 % HoWo), oy = rem / p->Wo, ox = rem % p->Wo;
                for (long pix = p0; pix < p1; pix++, rem++, ox++) { /* (n, oy, ox) stepped, no divisions */
                    if (ox == p->Wo) {
                        ox = 0;
                        if (++oy == p->Ho) { oy = 0; rem = 0; n++; }
                    }
                    const int iy0 = oy * p->stride - p->pad, ix0 = ox * p->stride - p->pad;
                    int nval = T, t1 = 0;
                    const uint64_t *xb = NULL; /* HS: word k of the pixel is xb[xo[k]] */
                    const long *xo = xo_full;
                    if (iy0 >= 0 && iy0 + p->kh <= p->H && ix0 >= 0 && ix0 + p->kw <= p->W) {
                        const uint64_t *base = p->x + (((size_t)n * p->H + iy0) * p->W + ix0) * Wd;
                        for (int t = 0; t < T; t++) tp[t] = base + toff[t];
                        xb = base;
                    } else {
                        nval = 0; t1 = -1;
                        for (int ky = 0; ky < p->kh; ky++)
                            for (int kx = 0; kx < p->kw; kx++) {
                                const int iy = iy0 + ky, ix = ix0 + kx, t = ky * p->kw + kx;
                                if (iy >= 0 && iy < p->H && ix >= 0 && ix < p->W) {
                                    tp[t] = p->x + (((size_t)n * p->H + iy) * p->W + ix) * Wd;
                                    nval++;
                                    if (t1 < 0) t1 = t;
                                } else {
                                    tp[t] = p->padmode ? p->padpix : NULL;
                                }
                            }
                        if (p->padmode) { nval = T; t1 = 0; }
#ifdef BV_FLAT
                        if (flat) { /* zero words for zero-padded taps; their mismatches (popcount(w)) come off below */
                            for (int t = 0; t < T; t++)
                                for (int j = 0; j < Wd; j++) xv[t * Wd + j] = tp[t] ? tp[t][j] : 0;
                            xb = xv; xo = xo_id;
                        }
#endif
                    }
                    if (pertap)
                        for (int t = 0; t < T; t++) lcnt[t] = tp[t] ? C : 0;
                    else
                        cnts[0] = nval * C;
                    /* channel blocks cb0 .. cb0+cbn-1, in register tiles of a power of two */
                    for (int done = 0; done < cbn;) {
                        int tcb = CB;
                        while (tcb > cbn - done) tcb /= 2;
                        const int cbs = cb0 + done;
                        const uint64_t *wg = p->w + (size_t)cbs * ws;
#ifdef BV_FLAT
                        if (flat) {
                            if (NW == 9) FN(tiles9)(xb, xo, wg, tcb, mism);
#ifdef BV_HS
                            else FN(tiles_hs)(xb, xo, NW, wg, ws, tcb, mism);
#endif
                            if (nval < T && !p->padmode)
                                for (int t = 0; t < T; t++) {
                                    if (tp[t]) continue;
                                    for (int c = 0; c < tcb; c++) {
                                        const int32_t *wp = p->wpc + ((size_t)(cbs + c) * T + t) * 8;
                                        for (int q = 0; q < 8; q++) mism[c * 8 + q] -= (uint64_t)wp[q];
                                    }
                                }
                        } else
#endif
#ifdef BV_KVOTE
                        if (kvote) { /* the tap votes in registers, then each block's epilogue */
                            FN(tiles_tapvote)(tp, T, Wd, wg, ws, tcb, C, p->lev_tie[0], p->lev_tie[1], rv);
                            for (int c = 0; c < tcb; c++) {
                                const int o0 = (cbs + c) * 8;
                                if (!FN(vemit)(p, pix, o0, _mm256_loadu_si256((const __m256i *)(rv + c * 8))))
                                    FN(emit8)(p, pix, n, rem, o0, 8, rv + c * 8);
                            }
                            done += tcb;
                            continue;
                        }
#endif
                        FN(tiles)(tp, T, Wd, wg, ws, tcb, pertap, mism);
                        for (int c = 0; c < tcb; c++) {
                            const int o0 = (cbs + c) * 8, nl = p->Co - o0 < 8 ? p->Co - o0 : 8;
                            if (p->lsum) {
                                for (int l = 0; l < LT; l++) {
                                    const int32_t cn = pertap ? lcnt[l] : cnts[0];
#ifdef BV_VEPI
                                    if (nl == 8) { /* 8 lanes at once: (cn - 2 m) packed to int16 */
                                        const __m256i sv = _mm256_sub_epi32(_mm256_set1_epi32(cn),
                                                                            _mm256_slli_epi32(BV_LD8(mism + ((size_t)l * tcb + c) * 8), 1));
                                        FN(lsum_put8)(p, l, npix, pix, o0, sv);
                                        continue;
                                    }
#endif
                                    int32_t ls[8];
                                    for (int q = 0; q < 8; q++) ls[q] = cn - 2 * (int32_t)mism[((size_t)l * tcb + c) * 8 + q];
                                    bv_lsum_put(p, l, npix, pix, o0, nl, ls);
                                }
                            }
#ifdef BV_VEPI
                            if (nl == 8 && (!p->voter || mv1) &&
                                FN(vepi)(p, pix, o0, cnts[0], mism + (size_t)c * 8, p->voter, t1 >= 0 ? tp[t1][0] : 0,
                                         wsg + ((size_t)(cbs + c) * T + (t1 >= 0 ? t1 : 0)) * 8))
                                continue;
                            if (nl == 8 && pertap &&
                                FN(vtap)(p, pix, o0, T, lcnt, mism + (size_t)c * 8, (size_t)tcb * 8, tp, wsg + (size_t)(cbs + c) * T * 8))
                                continue;
#endif
                            if (!p->voter) {
                                const int32_t cn = cnts[0];
                                for (int q = 0; q < 8; q++) r[q] = cn - 2 * (int32_t)mism[c * 8 + q];
                            } else if (mv1) { /* one leaf, one level: the vote, ties from tv */
                                const int32_t cn = cnts[0];
                                int ties = 0;
                                for (int q = 0; q < 8; q++) {
                                    const int32_t sq = cn - 2 * (int32_t)mism[c * 8 + q];
                                    r[q] = (sq > 0) - (sq < 0);
                                    ties += sq == 0;
                                }
                                if (ties) {
                                    const int tie = p->lev_tie[0];
                                    for (int q = 0; q < 8; q++) {
                                        if (r[q]) continue;
                                        if (cn == 0 || tie != 0) { r[q] = tie == 0 ? 1 : tie; continue; }
                                        const uint64_t *ww = wg + (size_t)c * ws + (size_t)t1 * Wd * 8;
                                        r[q] = ((tp[t1][0] ^ ww[q]) & 1) ? -1 : 1;
                                    }
                                }
                            } else {
                                for (int l = 0; l < LT; l++) {
                                    const int32_t cn = pertap ? lcnt[l] : cnts[0];
                                    for (int q = 0; q < 8; q++) sums[l * 8 + q] = cn - 2 * (int32_t)mism[((size_t)l * tcb + c) * 8 + q];
                                }
                                if (need_first)
                                    for (int l = 0; l < LT; l++) {
                                        const int t = pertap ? l : t1;
                                        const uint64_t xw = t >= 0 && tp[t] ? tp[t][0] : 0;
                                        const uint64_t *ww = wg + (size_t)c * ws + (size_t)t * Wd * 8;
                                        for (int q = 0; q < 8; q++)
                                            firsts[l * 8 + q] = t >= 0 && tp[t] ? ((((xw ^ ww[q]) & 1) ? -1 : 1)) : 0;
                                    }
#ifdef BV_VEPI
                                FN(vreduce8)(p, sums, pertap ? lcnt : cnts, firsts, va, vb, r);
                                if (nl == 8 && FN(vemit)(p, pix, o0, _mm256_loadu_si256((const __m256i *)r))) continue;
#else
                                FN(reduce8)(p, sums, pertap ? lcnt : cnts, firsts, va, vb, r);
#endif
                            }
                            FN(emit8)(p, pix, n, rem, o0, nl, r);
                        }
                        done += tcb;
                    }
                    if (bytes_out && cg == ncg - 1)
                        memset((uint8_t *)p->out + (size_t)pix * bytes_out + Cob, 0, (size_t)(bytes_out - Cob));
                }
            }
        }
        free(tp); free(toff); free(mism); free(buf); free(xo_full); free(xv);
    }
#ifdef BV_VEPI
    free(wsg);
#endif
    return failed ? -1 : 0;
}

/* Peak probe: the XOR + popcount inner loop of the dense kernel (FN(tile), BV_CBMAX blocks
 * of 8 channels against 16 input words) on L1-resident data, nothing else: what this ISA's
 * popcount can do at best. Returns the binary MACs done (iters * CB * 8 * 16 * 64). */
static double FN(peak_xorpop)(long iters)
{
    enum { NWP = 16 };
    uint64_t w[BV_CBMAX * NWP * 8], x[NWP], mism[BV_CBMAX * 8];
    for (int i = 0; i < BV_CBMAX * NWP * 8; i++) w[i] = 0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1);
    for (int i = 0; i < NWP; i++) x[i] = 0xD1B54A32D192ED03ULL * (uint64_t)(i + 7);
    const uint64_t *tp[1] = {x};
    uint64_t sink = 0;
    for (long it = 0; it < iters; it++) {
        FN(tile)(tp, 1, NWP, w, (size_t)NWP * 8, BV_CBMAX, 0, mism);
        x[it % NWP] ^= mism[0]; /* a dependency through memory: the loop cannot be hoisted */
        for (int i = 0; i < BV_CBMAX * 8; i++) sink += mism[i] << (i & 7); /* every lane is live */
    }
    volatile uint64_t keep = sink;
    (void)keep;
    return (double)iters * BV_CBMAX * 8 * NWP * 64;
}
