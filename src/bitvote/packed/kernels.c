/* bitvote packed CPU kernels: XNOR/popcount convolution with fused popcount, vote and
 * threshold epilogues (docs/engine.md, SPEC.md).
 *
 * Layouts: activations (N, H, W, Wd) uint64, bit c%64 of word c/64 is channel c (1 = +1);
 * bits past C are 0. Weights (Co/8, T, Wd, 8): 8 output channels per vector, tap-major.
 * A "segment" is (tap, word, mask, leaf): the bits of one input word that belong to one
 * voter leaf; any leaf layout (tap- or channel-major, even or not) is a list of segments,
 * sorted by leaf. Popcount and MV have one leaf. The kernel counts mismatches per leaf,
 * s = valid - 2 * mismatches, then the voter levels (bv_reduce) and the epilogue (bv_emit).
 * The packer is pack.c. Built at first use and cached by bitvote/packed/build.py. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <immintrin.h>

#include "isa.h"

enum { BV_OUT_INT = 0, BV_OUT_AFFINE = 1, BV_OUT_SELECT = 2, BV_OUT_BITS = 3 };

typedef struct {
    const uint64_t *x;
    int32_t N, H, W, Wd;
    const uint64_t *w;
    int32_t Co, kh, kw, stride, pad, padmode; /* padmode: 0 zero (invalid terms), +1, -1 */
    int32_t Ho, Wo;
    const uint64_t *padpix;                   /* Wd words of the padded pixel (+1/-1 padding) */
    int32_t S, masked;
    const int32_t *seg_tap, *seg_word;
    const uint64_t *seg_mask;
    const int32_t *seg_leaf;
    const int64_t *seg_first;                 /* flat index of the segment's first term */
    int32_t L;
    const int32_t *leaf_size;
    int32_t voter, nlev, root_p;
    const int32_t *lev_nodes;                 /* nodes per level, bottom-up (lev_nodes[0] = L) */
    const int32_t *lev_groups;                /* fan-ins of levels 1.., concatenated */
    const int32_t *lev_tie;                   /* per level bottom-up: 1, -1, 0 = first */
    int32_t outmode, Wdo;
    void *out;
    const float *a, *b;                       /* AFFINE: r*a+b; SELECT: r>0 ? a : b */
    const int32_t *thr, *dir;                 /* BITS: dir>0: r>=thr, dir<0: r<=thr, 0: thr!=0 */
    int32_t nthreads;
    int32_t kind;                             /* BV_KIND_*: which kernel the leaf layout allows */
    int32_t post;                             /* float outputs: 1 add res, 2 RPReLU (si, pw, so) */
    const float *res;                         /* residual, channels-last like the output */
    const float *si, *pw, *so;                /* RPReLU: v + si -> prelu(pw) -> + so */
    const int32_t *wpc;                       /* (Co/8, T, 8) popcount of each tap's weight words, or NULL */
    int16_t *lsum;                            /* NULL, or every leaf's sum out: (L, N*Ho*Wo, Co) (training's
                                                 backward; the dense and segment kernels write it) */
} bv_conv_t;

/* Leaf l's sums s of nl channels o0.. at output pixel pix, into lsum. */
static inline void bv_lsum_put(const bv_conv_t *p, int l, long npix, long pix, int o0, int nl, const int32_t *s)
{
    int16_t *d = p->lsum + ((size_t)l * npix + pix) * p->Co + o0;
    for (int q = 0; q < nl; q++) d[q] = (int16_t)s[q];
}

/* The fused tail of a block on one float output, in PyTorch's order and rounding:
 * y + shortcut, then prelu(y + shift_in, w) + shift_out. */
static inline float bv_post(const bv_conv_t *p, size_t i, int o, float v)
{
    if (p->post & 1) v = v + p->res[i];
    if (p->post & 2) {
        v = v + p->si[o];
        v = v > 0.0f ? v : p->pw[o] * v;
        v = v + p->so[o];
    }
    return v;
}

/* Leaf layouts with a dense kernel: one leaf of every term (popcount, MV), one leaf per
 * tap holding all its channels (HMV `tap`), or tap-major leaves of L = 2..32 channels
 * (`tap,leaf=L`: conv_fields on the vector ISAs), or channel-major trees over kernel rows
 * (`cm:P(M3)`, `cm:M<C>(M3(M3))`: conv_rows on the vector ISAs), or one leaf per channel
 * (`cm:M<C>(M9)`: conv_chan on the vector ISAs), or channel-major groups of 8, 16, 32 or 64k
 * channels over every tap (`cgroups=G`: conv_cgroups). Anything else runs on the segment kernel. */
enum { BV_KIND_SEGMENTS = 0, BV_KIND_ONE_LEAF = 1, BV_KIND_TAP_LEAVES = 2, BV_KIND_FIELDS = 3, BV_KIND_ROWS = 4, BV_KIND_CHANNELS = 5,
       BV_KIND_CGROUPS = 6 };

/* One majority voter (SPEC.md): s > 0 -> +1, s < 0 -> -1; no valid input -> abstain (0),
 * or the tie value at the root (+1 under 'first'); else the tie rule. */
static inline int bv_vote(int s, int c, int f, int tie, int root)
{
    if (s > 0) return 1;
    if (s < 0) return -1;
    if (c == 0) return root ? (tie == 0 ? 1 : tie) : 0;
    return tie == 0 ? f : tie;
}

static int bv_reduce(const bv_conv_t *p, const int32_t *sums, const int32_t *cnts,
                     const int32_t *firsts, int32_t *va, int32_t *vb)
{
    const int last = p->nlev - 1;
    if (last == 0) return p->root_p ? sums[0] : bv_vote(sums[0], cnts[0], firsts[0], p->lev_tie[0], 1); /* P(M<n>): the sum */
    for (int l = 0; l < p->L; l++) va[l] = bv_vote(sums[l], cnts[l], firsts[l], p->lev_tie[0], 0);
    const int32_t *g = p->lev_groups;
    for (int li = 1; li <= last; li++) {
        int pos = 0;
        for (int k = 0; k < p->lev_nodes[li]; k++) {
            int s = 0, c = 0, f = 0;
            for (int i = 0; i < g[k]; i++) {
                const int v = va[pos + i];
                s += v;
                if (v) { c++; if (!f) f = v; }
            }
            pos += g[k];
            if (li == last && p->root_p) return s;
            vb[k] = bv_vote(s, c, f, p->lev_tie[li], li == last);
        }
        g += p->lev_nodes[li];
        int32_t *t = va; va = vb; vb = t;
    }
    return va[0];
}

static inline void bv_emit(const bv_conv_t *p, long pix, int n, int rem, int o, int r)
{
    const size_t nchw = ((size_t)n * p->Co + o) * (size_t)(p->Ho * p->Wo) + rem;
    switch (p->outmode) {
    case BV_OUT_INT: ((int32_t *)p->out)[nchw] = r; break;
    case BV_OUT_AFFINE: {
        const size_t i = (size_t)pix * p->Co + o;
        ((float *)p->out)[i] = bv_post(p, i, o, (float)r * p->a[o] + p->b[o]);
        break;
    }
    case BV_OUT_SELECT: {
        const size_t i = (size_t)pix * p->Co + o;
        ((float *)p->out)[i] = bv_post(p, i, o, r > 0 ? p->a[o] : p->b[o]);
        break;
    }
    default: {
        const int d = p->dir[o];
        const int bit = d > 0 ? r >= p->thr[o] : d < 0 ? r <= p->thr[o] : p->thr[o] != 0;
        if (bit) ((uint64_t *)p->out)[pix * p->Wdo + o / 64] |= 1ULL << (o % 64);
    }
    }
}

/* ---- portable: 8 lanes in a struct, the compiler's popcount ---- */
typedef struct { uint64_t l[8]; } bv_v8;
static inline bv_v8 p_zero(void) { bv_v8 v; memset(&v, 0, sizeof v); return v; }
static inline bv_v8 p_load(const uint64_t *q) { bv_v8 v; memcpy(v.l, q, 64); return v; }
static inline bv_v8 p_bcast(uint64_t u) { bv_v8 v; for (int i = 0; i < 8; i++) v.l[i] = u; return v; }
static inline bv_v8 p_xor(bv_v8 a, bv_v8 b) { for (int i = 0; i < 8; i++) a.l[i] ^= b.l[i]; return a; }
static inline bv_v8 p_and(bv_v8 a, bv_v8 b) { for (int i = 0; i < 8; i++) a.l[i] &= b.l[i]; return a; }
static inline bv_v8 p_popadd(bv_v8 a, bv_v8 b) { for (int i = 0; i < 8; i++) a.l[i] += __builtin_popcountll(b.l[i]); return a; }
static inline void p_store(uint64_t *q, bv_v8 v) { memcpy(q, v.l, 64); }
#define FN(name) name##_portable
#define VT bv_v8
#define VZERO p_zero
#define VLOAD p_load
#define VBCAST p_bcast
#define VXOR p_xor
#define VAND p_and
#define VPOPADD p_popadd
#define VSTORE p_store
static inline bv_v8 p_add(bv_v8 a, bv_v8 b) { for (int i = 0; i < 8; i++) a.l[i] += b.l[i]; return a; }
#define VPOPACC p_popadd
#define VFLUSH p_add
#define BV_CHUNK (1 << 30)
#define BV_CBMAX 4
#include "kbody.h"
#undef VPOPACC
#undef VFLUSH
#undef BV_CHUNK
#undef BV_CBMAX
#undef FN
#undef VT
#undef VZERO
#undef VLOAD
#undef VBCAST
#undef VXOR
#undef VAND
#undef VPOPADD
#undef VSTORE

#if defined(__x86_64__) && defined(__GNUC__)
/* ---- AVX2: two 256-bit halves, nibble-table popcount (vpshufb) + vpsadbw ---- */
#pragma GCC push_options
#pragma GCC target("avx2,popcnt")
typedef struct { __m256i lo, hi; } bv_a2;
static inline __m256i a2_pc(__m256i v)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i m = _mm256_set1_epi8(0x0f);
    const __m256i c = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, m)),
                                      _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), m)));
    return _mm256_sad_epu8(c, _mm256_setzero_si256());
}
static inline bv_a2 a2_zero(void) { bv_a2 v = {_mm256_setzero_si256(), _mm256_setzero_si256()}; return v; }
static inline bv_a2 a2_load(const uint64_t *q) { bv_a2 v = {_mm256_loadu_si256((const __m256i *)q), _mm256_loadu_si256((const __m256i *)(q + 4))}; return v; }
static inline bv_a2 a2_bcast(uint64_t u) { bv_a2 v = {_mm256_set1_epi64x((long long)u), _mm256_set1_epi64x((long long)u)}; return v; }
static inline bv_a2 a2_xor(bv_a2 a, bv_a2 b) { a.lo = _mm256_xor_si256(a.lo, b.lo); a.hi = _mm256_xor_si256(a.hi, b.hi); return a; }
static inline bv_a2 a2_and(bv_a2 a, bv_a2 b) { a.lo = _mm256_and_si256(a.lo, b.lo); a.hi = _mm256_and_si256(a.hi, b.hi); return a; }
static inline bv_a2 a2_popadd(bv_a2 a, bv_a2 b) { a.lo = _mm256_add_epi64(a.lo, a2_pc(b.lo)); a.hi = _mm256_add_epi64(a.hi, a2_pc(b.hi)); return a; }
static inline void a2_store(uint64_t *q, bv_a2 v) { _mm256_storeu_si256((__m256i *)q, v.lo); _mm256_storeu_si256((__m256i *)(q + 4), v.hi); }
/* byte-lane nibble counts (<= 8 per byte and word: 31 words fit a byte), folded by vpsadbw */
static inline __m256i a2_pc8(__m256i v)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i m = _mm256_set1_epi8(0x0f);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, m)),
                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), m)));
}
static inline bv_a2 a2_popacc(bv_a2 a, bv_a2 b) { a.lo = _mm256_add_epi8(a.lo, a2_pc8(b.lo)); a.hi = _mm256_add_epi8(a.hi, a2_pc8(b.hi)); return a; }
static inline bv_a2 a2_flush(bv_a2 a, bv_a2 b)
{
    a.lo = _mm256_add_epi64(a.lo, _mm256_sad_epu8(b.lo, _mm256_setzero_si256()));
    a.hi = _mm256_add_epi64(a.hi, _mm256_sad_epu8(b.hi, _mm256_setzero_si256()));
    return a;
}
static inline bv_a2 a2_or(bv_a2 a, bv_a2 b) { a.lo = _mm256_or_si256(a.lo, b.lo); a.hi = _mm256_or_si256(a.hi, b.hi); return a; }
static inline bv_a2 a2_andnot(bv_a2 a, bv_a2 b) { a.lo = _mm256_andnot_si256(a.lo, b.lo); a.hi = _mm256_andnot_si256(a.hi, b.hi); return a; }
static inline bv_a2 a2_add64(bv_a2 a, bv_a2 b) { a.lo = _mm256_add_epi64(a.lo, b.lo); a.hi = _mm256_add_epi64(a.hi, b.hi); return a; }
static inline bv_a2 a2_sub64(bv_a2 a, bv_a2 b) { a.lo = _mm256_sub_epi64(a.lo, b.lo); a.hi = _mm256_sub_epi64(a.hi, b.hi); return a; }
static inline bv_a2 a2_srl64(bv_a2 a, int n) { const __m128i c = _mm_cvtsi32_si128(n); a.lo = _mm256_srl_epi64(a.lo, c); a.hi = _mm256_srl_epi64(a.hi, c); return a; }
static inline bv_a2 a2_sll64(bv_a2 a, int n) { const __m128i c = _mm_cvtsi32_si128(n); a.lo = _mm256_sll_epi64(a.lo, c); a.hi = _mm256_sll_epi64(a.hi, c); return a; }
/* 8 uint64 lanes (counts < 2^31) -> 8 int32 lanes: the vector epilogues' input */
static inline __m256i a2_ld8(const uint64_t *q)
{
    const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    const __m256i a = _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)q), idx);
    const __m256i b = _mm256_permutevar8x32_epi32(_mm256_loadu_si256((const __m256i *)(q + 4)), idx);
    return _mm256_blend_epi32(a, b, 0xF0);
}
/* bit `bit` of x ^ w8[q] for the 8 lanes, as 8 int32 lanes of 0 / 1 */
static inline __m256i a2_first8(uint64_t x, const uint64_t *w8, int bit)
{
    const __m256i xb = _mm256_set1_epi64x((long long)x), one = _mm256_set1_epi64x(1);
    const __m128i sh = _mm_cvtsi32_si128(bit);
    const __m256i lo = _mm256_and_si256(_mm256_srl_epi64(_mm256_xor_si256(xb, _mm256_loadu_si256((const __m256i *)w8)), sh), one);
    const __m256i hi = _mm256_and_si256(_mm256_srl_epi64(_mm256_xor_si256(xb, _mm256_loadu_si256((const __m256i *)(w8 + 4))), sh), one);
    const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    return _mm256_blend_epi32(_mm256_permutevar8x32_epi32(lo, idx), _mm256_permutevar8x32_epi32(hi, idx), 0xF0);
}
/* nibble counts through a weighted table (byte lanes), for the Harley-Seal folds */
static inline __m256i a2_pcw(__m256i v, __m256i lut)
{
    const __m256i m = _mm256_set1_epi8(0x0f);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, m)),
                           _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), m)));
}
#define A2_LUT(k) _mm256_setr_epi8(0, k, k, 2 * k, k, 2 * k, 2 * k, 3 * k, k, 2 * k, 2 * k, 3 * k, 2 * k, 3 * k, 3 * k, 4 * k, \
                                   0, k, k, 2 * k, k, 2 * k, 2 * k, 3 * k, k, 2 * k, 2 * k, 3 * k, 2 * k, 3 * k, 3 * k, 4 * k)
static inline __m256i a2_hsfold1(__m256i o1, __m256i o2, __m256i o4, __m256i a8, __m256i rs)
{
    const __m256i by = _mm256_add_epi8(_mm256_add_epi8(a2_pcw(o1, A2_LUT(1)), a2_pcw(o2, A2_LUT(2))),
                                       _mm256_add_epi8(a2_pcw(o4, A2_LUT(4)), rs));
    const __m256i z = _mm256_setzero_si256();
    return _mm256_add_epi64(_mm256_sad_epu8(by, z), _mm256_slli_epi64(_mm256_sad_epu8(a8, z), 3));
}
/* ones + 2 twos + 4 fours + rest (byte lanes) + 8 * eights, as in z_hsfold */
static inline bv_a2 a2_hsfold(bv_a2 o1, bv_a2 o2, bv_a2 o4, bv_a2 a8, bv_a2 rs)
{
    bv_a2 r = {a2_hsfold1(o1.lo, o2.lo, o4.lo, a8.lo, rs.lo), a2_hsfold1(o1.hi, o2.hi, o4.hi, a8.hi, rs.hi)};
    return r;
}
static inline __m256i a2_hs9fold1(__m256i o1, __m256i o2, __m256i o4, __m256i o8)
{
    const __m256i by = _mm256_add_epi8(_mm256_add_epi8(a2_pcw(o1, A2_LUT(1)), a2_pcw(o2, A2_LUT(2))),
                                       _mm256_add_epi8(a2_pcw(o4, A2_LUT(4)), a2_pcw(o8, A2_LUT(8))));
    return _mm256_sad_epu8(by, _mm256_setzero_si256());
}
/* ones + 2 twos + 4 fours + 8 eights of a 9-word tree, as in z_hs9fold */
static inline bv_a2 a2_hs9fold(bv_a2 o1, bv_a2 o2, bv_a2 o4, bv_a2 o8)
{
    bv_a2 r = {a2_hs9fold1(o1.lo, o2.lo, o4.lo, o8.lo), a2_hs9fold1(o1.hi, o2.hi, o4.hi, o8.hi)};
    return r;
}
/* The AVX2 kernels before the carry-save trees and vector epilogues (BITVOTE_KERNEL=v0 /
 * bv_set_kernel(0)): kept so a benchmark times both in one process. */
#define FN(name) name##_avx2v0
#define VT bv_a2
#define VZERO a2_zero
#define VLOAD a2_load
#define VBCAST a2_bcast
#define VXOR a2_xor
#define VAND a2_and
#define VPOPADD a2_popadd
#define VSTORE a2_store
#define VPOPACC a2_popacc
#define VFLUSH a2_flush
#define BV_CHUNK 31
#define BV_CBMAX 2
#include "kbody.h"
#undef VPOPACC
#undef VFLUSH
#undef BV_CHUNK
#undef BV_CBMAX
#undef FN
#undef VT
#undef VZERO
#undef VLOAD
#undef VBCAST
#undef VXOR
#undef VAND
#undef VPOPADD
#undef VSTORE
/* AVX2 proper: carry-save trees (three-input sums from xor/and/or), vector epilogues */
#define FN(name) name##_avx2
#define BV_VEPI 1
#define BV_LD8 a2_ld8
#define BV_FIRST8 a2_first8
#define VOR a2_or
#define VANDNOT a2_andnot
#define VADD64 a2_add64
#define VSUB64 a2_sub64
#define VSRL64 a2_srl64
#define VSLL64 a2_sll64
#define BV_HS9 1
#define BV_CSA(s, cy, a, b, c) do { const bv_a2 a_ = (a), b_ = (b), c_ = (c), u_ = a2_xor(a_, b_); \
        (cy) = a2_or(a2_and(a_, b_), a2_and(u_, c_)); (s) = a2_xor(u_, c_); } while (0)
#define BV_PC8ADD a2_popacc
#define BV_HSFOLD a2_hsfold
#define BV_HS9FOLD a2_hs9fold
#define VT bv_a2
#define VZERO a2_zero
#define VLOAD a2_load
#define VBCAST a2_bcast
#define VXOR a2_xor
#define VAND a2_and
#define VPOPADD a2_popadd
#define VSTORE a2_store
#define VPOPACC a2_popacc
#define VPC8ACC a2_popacc /* byte-lane counts (<= 8 per byte and word) */
#define VFLUSH a2_flush
#define BV_CHUNK 31
#define BV_CBMAX 4
#define BV_CB9MAX 8
#include "kbody.h"
#undef VPOPACC
#undef VPC8ACC
#undef VFLUSH
#undef BV_CHUNK
#undef BV_CBMAX
#undef FN
#undef VT
#undef VZERO
#undef VLOAD
#undef VBCAST
#undef VXOR
#undef VAND
#undef VPOPADD
#undef VSTORE
#undef BV_VEPI
#undef BV_LD8
#undef BV_FIRST8
#undef VOR
#undef VANDNOT
#undef VADD64
#undef VSUB64
#undef VSRL64
#undef VSLL64
#undef BV_HS9
#undef BV_CSA
#undef BV_PC8ADD
#undef BV_HSFOLD
#undef BV_HS9FOLD
#undef BV_CB9MAX
#undef BV_FLAT
#pragma GCC pop_options

/* ---- AVX-512BW: one zmm, nibble-table popcount (vpshufb) + vpsadbw ---- */
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,popcnt")
static inline __m512i z_pc(__m512i v)
{
    const __m512i lut = _mm512_set4_epi32(0x04030302, 0x03020201, 0x03020201, 0x02010100);
    const __m512i m = _mm512_set1_epi8(0x0f);
    const __m512i c = _mm512_add_epi8(_mm512_shuffle_epi8(lut, _mm512_and_si512(v, m)),
                                      _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(v, 4), m)));
    return _mm512_sad_epu8(c, _mm512_setzero_si512());
}
static inline __m512i z_popadd(__m512i a, __m512i b) { return _mm512_add_epi64(a, z_pc(b)); }
/* byte-lane nibble counts (<= 8 per byte and word: 31 words fit a byte), folded by vpsadbw */
static inline __m512i z_popacc(__m512i a, __m512i v)
{
    const __m512i lut = _mm512_set4_epi32(0x04030302, 0x03020201, 0x03020201, 0x02010100);
    const __m512i m = _mm512_set1_epi8(0x0f);
    return _mm512_add_epi8(a, _mm512_add_epi8(_mm512_shuffle_epi8(lut, _mm512_and_si512(v, m)),
                                              _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(v, 4), m))));
}
static inline __m512i z_flush(__m512i a, __m512i b) { return _mm512_add_epi64(a, _mm512_sad_epu8(b, _mm512_setzero_si512())); }
static inline __m512i z_load(const uint64_t *q) { return _mm512_loadu_si512((const void *)q); }
static inline __m512i z_bcast(uint64_t u) { return _mm512_set1_epi64((long long)u); }
static inline void z_store(uint64_t *q, __m512i v) { _mm512_storeu_si512((void *)q, v); }
#define FN(name) name##_avx512bw
#define VT __m512i
#define VZERO _mm512_setzero_si512
#define VLOAD z_load
#define VBCAST z_bcast
#define VXOR _mm512_xor_si512
#define VAND _mm512_and_si512
#define VPOPADD z_popadd
#define VSTORE z_store
#define VPOPACC z_popacc
#define VPC8ACC z_popacc /* byte-lane counts (<= 8 per byte and word) */
#define VFLUSH z_flush
#define BV_CHUNK 31
#define BV_CBMAX 8
/* Harley-Seal: carry-save adders (sum = a^b^c, carry = majority) as vpternlogq */
#define BV_HS 1
#define BV_VEPI 1
#define BV_KVOTE 1 /* mask-register votes (AVX-512F) */
#define BV_LD8(mm) _mm512_cvtepi64_epi32(_mm512_loadu_si512((const void *)(mm)))
#define BV_FIRST8(x, w8, bit) _mm512_cvtepi64_epi32(_mm512_and_si512(_mm512_srl_epi64(_mm512_xor_si512(_mm512_set1_epi64((long long)(x)), \
        _mm512_loadu_si512((const void *)(w8))), _mm_cvtsi32_si128(bit)), _mm512_set1_epi64(1)))
#define VOR _mm512_or_si512
#define VANDNOT _mm512_andnot_si512
#define VADD64 _mm512_add_epi64
#define VSUB64 _mm512_sub_epi64
#define VSRL64(v, n) _mm512_srl_epi64((v), _mm_cvtsi32_si128(n))
#define VSLL64(v, n) _mm512_sll_epi64((v), _mm_cvtsi32_si128(n))
#define BV_CSA(s, cy, a, b, c) do { const __m512i a_ = (a), b_ = (b), c_ = (c); \
        (cy) = _mm512_ternarylogic_epi64(a_, b_, c_, 0xE8); (s) = _mm512_ternarylogic_epi64(a_, b_, c_, 0x96); } while (0)
#define BV_PC8ADD z_popacc
static inline __m512i z_pcw(__m512i v, __m512i lut)
{
    const __m512i m = _mm512_set1_epi8(0x0f);
    return _mm512_add_epi8(_mm512_shuffle_epi8(lut, _mm512_and_si512(v, m)),
                           _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(v, 4), m)));
}
/* ones + 2 twos + 4 fours + rest (weighted nibble tables, byte lanes) + 8 * eights */
static inline __m512i z_hsfold(__m512i o1, __m512i o2, __m512i o4, __m512i a8, __m512i rs)
{
    const __m512i l1 = _mm512_set4_epi32(0x04030302, 0x03020201, 0x03020201, 0x02010100);
    const __m512i l2 = _mm512_set4_epi32(0x08060604, 0x06040402, 0x06040402, 0x04020200);
    const __m512i l4 = _mm512_set4_epi32(0x100C0C08, 0x0C080804, 0x0C080804, 0x08040400);
    const __m512i by = _mm512_add_epi8(_mm512_add_epi8(z_pcw(o1, l1), z_pcw(o2, l2)), _mm512_add_epi8(z_pcw(o4, l4), rs));
    const __m512i z = _mm512_setzero_si512();
    return _mm512_add_epi64(_mm512_sad_epu8(by, z), _mm512_slli_epi64(_mm512_sad_epu8(a8, z), 3));
}
#define BV_HSFOLD z_hsfold
/* ones + 2 twos + 4 fours + 8 eights of a 9-word tree: bytes <= 8 * 15 */
static inline __m512i z_hs9fold(__m512i o1, __m512i o2, __m512i o4, __m512i o8)
{
    const __m512i l1 = _mm512_set4_epi32(0x04030302, 0x03020201, 0x03020201, 0x02010100);
    const __m512i l2 = _mm512_set4_epi32(0x08060604, 0x06040402, 0x06040402, 0x04020200);
    const __m512i l4 = _mm512_set4_epi32(0x100C0C08, 0x0C080804, 0x0C080804, 0x08040400);
    const __m512i l8 = _mm512_set4_epi32(0x20181810, 0x18101008, 0x18101008, 0x10080800);
    const __m512i by = _mm512_add_epi8(_mm512_add_epi8(z_pcw(o1, l1), z_pcw(o2, l2)), _mm512_add_epi8(z_pcw(o4, l4), z_pcw(o8, l8)));
    return _mm512_sad_epu8(by, _mm512_setzero_si512());
}
#define BV_HS9 1
#define BV_HS9FOLD z_hs9fold
#define BV_ADD64 _mm512_add_epi64
#include "kbody.h"
#undef BV_HS
#undef BV_VEPI
#undef BV_KVOTE
#undef BV_FCNT8
#undef BV_FCNT16
#undef BV_FCNT32
#undef BV_LD8
#undef BV_FIRST8
#undef VOR
#undef VANDNOT
#undef VADD64
#undef VSUB64
#undef VSRL64
#undef VSLL64
#undef BV_CSA
#undef BV_PC8ADD
#undef BV_HSFOLD
#undef BV_HS9
#undef BV_HS9FOLD
#undef BV_ADD64
#undef BV_FLAT
#undef FN
#undef VPOPADD
#undef VPOPACC
#undef VPC8ACC
#undef VFLUSH
#undef BV_CHUNK
#pragma GCC pop_options

/* ---- AVX-512 VPOPCNTDQ (where the CPU has it): vpopcntq per lane ---- */
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vpopcntdq,avx512bitalg,popcnt")
static inline __m512i zp_popadd(__m512i a, __m512i b) { return _mm512_add_epi64(a, _mm512_popcnt_epi64(b)); }
#define FN(name) name##_avx512popcnt
#define VPOPADD zp_popadd
#define VPOPACC zp_popadd
#define VPC8ACC z_popacc /* byte-lane counts (<= 8 per byte and word), as on AVX-512BW */
#define VFLUSH _mm512_add_epi64
#define BV_CHUNK (1 << 30)
#define BV_VEPI 1
#define BV_KVOTE 1
#define BV_FCNT8 _mm512_popcnt_epi8 /* BITALG: per-byte and per-16-bit counts */
#define BV_FCNT16 _mm512_popcnt_epi16
#define BV_FCNT32 _mm512_popcnt_epi32
#define BV_LD8(mm) _mm512_cvtepi64_epi32(_mm512_loadu_si512((const void *)(mm)))
#define BV_FIRST8(x, w8, bit) _mm512_cvtepi64_epi32(_mm512_and_si512(_mm512_srl_epi64(_mm512_xor_si512(_mm512_set1_epi64((long long)(x)), \
        _mm512_loadu_si512((const void *)(w8))), _mm_cvtsi32_si128(bit)), _mm512_set1_epi64(1)))
#define VOR _mm512_or_si512
#define VANDNOT _mm512_andnot_si512
#define VADD64 _mm512_add_epi64
#define VSUB64 _mm512_sub_epi64
#define VSRL64(v, n) _mm512_srl_epi64((v), _mm_cvtsi32_si128(n))
#define VSLL64(v, n) _mm512_sll_epi64((v), _mm_cvtsi32_si128(n))
#define BV_POP9 1
#define BV_ADD64 _mm512_add_epi64
#include "kbody.h"
#undef BV_VEPI
#undef BV_KVOTE
#undef BV_LD8
#undef BV_FIRST8
#undef VOR
#undef VANDNOT
#undef VADD64
#undef VSUB64
#undef VSRL64
#undef VSLL64
#undef BV_POP9
#undef BV_ADD64
#undef BV_FLAT
#undef VPOPACC
#undef VPC8ACC
#undef VFLUSH
#undef BV_CHUNK
#undef BV_CBMAX
#undef FN
#undef VT
#undef VZERO
#undef VLOAD
#undef VBCAST
#undef VXOR
#undef VAND
#undef VPOPADD
#undef VSTORE
#pragma GCC pop_options
#endif

/* Which AVX2 kernels run: 1 (default) the current ones, 0 the earlier ones (byte-lane
 * popcount tiles, scalar epilogues), so a benchmark can time both in one process. */
static int bv_kernel_version = 1;
int bv_set_kernel(int v) { const int old = bv_kernel_version; bv_kernel_version = v; return old; }

/* ---- peak probes: what this CPU's vector units do at best, for the benchmark's "% of peak" ----
 * Independent accumulators in registers, nothing from memory: fp32 FMA (AVX-512F or AVX2+FMA)
 * and int8 dot products (VNNI vpdpbusd on 512 or 256 bits where present, else AVX2's
 * vpmaddubsw + vpmaddwd + vpaddd, the sequence fbgemm's AVX2 kernels use). Each returns the
 * multiply-accumulates done. */
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
static double bv_peak_fma_avx2(long iters)
{
    __m256 a[10], m = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 10; i++) a[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 10; i++) a[i] = _mm256_fmadd_ps(a[i], m, b);
    float out[8];
    __m256 t = a[0];
    for (int i = 1; i < 10; i++) t = _mm256_add_ps(t, a[i]);
    _mm256_storeu_ps(out, t);
    volatile float keep = out[0];
    (void)keep;
    return (double)iters * 10 * 8;
}
static double bv_peak_int8_avx2(long iters)
{
    const __m256i s = _mm256_set1_epi8(-2);
    __m256i u0 = _mm256_set1_epi8(3), u1 = _mm256_set1_epi8(4), u2 = _mm256_set1_epi8(5), u3 = _mm256_set1_epi8(6);
    __m256i u4 = _mm256_set1_epi8(7), u5 = _mm256_set1_epi8(8);
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0;
    for (long it = 0; it < iters; it++) {
        /* opaque each round (no instruction): the products cannot be hoisted out of the loop */
        __asm__ volatile("" : "+x"(u0), "+x"(u1), "+x"(u2), "+x"(u3), "+x"(u4), "+x"(u5));
        a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(u0, s));
        a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(u1, s));
        a2 = _mm256_add_epi16(a2, _mm256_maddubs_epi16(u2, s));
        a3 = _mm256_add_epi16(a3, _mm256_maddubs_epi16(u3, s));
        a4 = _mm256_add_epi16(a4, _mm256_maddubs_epi16(u4, s));
        a5 = _mm256_add_epi16(a5, _mm256_maddubs_epi16(u5, s));
    }
    const __m256i t = _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(a0, a1), _mm256_add_epi16(a2, a3)), _mm256_add_epi16(a4, a5));
    volatile int keep = _mm256_extract_epi32(t, 0);
    (void)keep;
    return (double)iters * 6 * 32;
}
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,avxvnni")
static double bv_peak_int8_avxvnni(long iters)
{
    __m256i acc[10];
    const __m256i u = _mm256_set1_epi8(3), s = _mm256_set1_epi8(-2);
    for (int i = 0; i < 10; i++) acc[i] = _mm256_set1_epi32(i);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 10; i++) acc[i] = _mm256_dpbusd_avx_epi32(acc[i], u, s);
    __m256i t = acc[0];
    for (int i = 1; i < 10; i++) t = _mm256_add_epi32(t, acc[i]);
    volatile int keep = _mm256_extract_epi32(t, 0);
    (void)keep;
    return (double)iters * 10 * 32;
}
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vnni")
static double bv_peak_fma_avx512(long iters)
{
    __m512 a[12], m = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], m, b);
    __m512 t = a[0];
    for (int i = 1; i < 12; i++) t = _mm512_add_ps(t, a[i]);
    volatile float keep = _mm512_reduce_add_ps(t);
    (void)keep;
    return (double)iters * 12 * 16;
}
static double bv_peak_int8_avx512vnni(long iters)
{
    __m512i acc[12];
    const __m512i u = _mm512_set1_epi8(3), s = _mm512_set1_epi8(-2);
    for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_epi32(i);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 12; i++) acc[i] = _mm512_dpbusd_epi32(acc[i], u, s);
    __m512i t = acc[0];
    for (int i = 1; i < 12; i++) t = _mm512_add_epi32(t, acc[i]);
    volatile int keep = _mm512_reduce_add_epi32(t);
    (void)keep;
    return (double)iters * 12 * 64;
}
#pragma GCC pop_options
#endif

/* AMX-INT8 (tile matrix multiply: oneDNN's int8 convs use it where present). Linux lends the
 * tile state to a process on request; the compiler must know the instructions. */
#if defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define BV_HAVE_AMX 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The CPU has AMX-TILE and AMX-INT8, the OS saves the tile state, and this process may use it. */
static int bv_amx_usable(void)
{
    static int state = -1; /* written once, with the final answer (the probe's threads read it) */
    if (state >= 0) return state;
    unsigned a, b, c, d, lo, hi;
    int ok = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 27));                      /* OSXSAVE */
    ok = ok && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 24)) && (d & (1u << 25));
    if (ok) {
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        ok = (lo & (3u << 17)) == (3u << 17); /* XTILECFG, XTILEDATA */
    }
    ok = ok && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
    state = ok;
    return state;
}

typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) bv_tilecfg;

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-int8")
/* Four independent 16x16 int32 accumulator tiles, each += (16x64 int8) x (64x16 int8). */
static double bv_peak_int8_amx(long iters)
{
    bv_tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette_id = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    int8_t src[16 * 64] __attribute__((aligned(64)));
    int32_t dst[16 * 16] __attribute__((aligned(64)));
    for (int i = 0; i < 16 * 64; i++) src[i] = (int8_t)(i % 7 - 3);
    _tile_loadconfig(&cfg);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, src, 64);
    _tile_loadd(5, src, 64);
    _tile_loadd(6, src, 64);
    _tile_loadd(7, src, 64);
    for (long it = 0; it < iters; it++) {
        _tile_dpbssd(0, 4, 6);
        _tile_dpbssd(1, 4, 7);
        _tile_dpbssd(2, 5, 6);
        _tile_dpbssd(3, 5, 7);
    }
    _tile_stored(0, dst, 64);
    _tile_release();
    volatile int32_t keep = dst[0];
    (void)keep;
    return (double)iters * 4 * 16 * 16 * 64;
}
#pragma GCC pop_options
#endif

/* Which int8 unit the probe uses: 0 none, 1 AVX2 (vpmaddubsw), 2 AVX-VNNI, 3 AVX-512 VNNI,
 * 4 AMX-INT8 (the widest present: what a tuned int8 library runs on this CPU). */
int bv_int8_kind(void)
{
#ifdef BV_HAVE_AMX
    if (bv_amx_usable()) return 4;
#endif
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw")) return 3;
    if (__builtin_cpu_supports("avxvnni")) return 2;
    if (__builtin_cpu_supports("avx2")) return 1;
#endif
    return 0;
}

static double bv_peak1(int which, int isa, int int8_kind, long iters)
{
    switch (which) {
#if defined(__x86_64__) && defined(__GNUC__)
    case 0:
        switch (isa) {
        case BV_ISA_AVX512POPCNT: return peak_xorpop_avx512popcnt(iters);
        case BV_ISA_AVX512BW: return peak_xorpop_avx512bw(iters);
        case BV_ISA_AVX2: return bv_kernel_version ? peak_xorpop_avx2(iters) : peak_xorpop_avx2v0(iters);
        default: return peak_xorpop_portable(iters);
        }
    case 1:
        if (__builtin_cpu_supports("avx512f")) return bv_peak_fma_avx512(iters);
        if (__builtin_cpu_supports("fma")) return bv_peak_fma_avx2(iters);
        return 0;
    case 2:
        switch (int8_kind) {
#ifdef BV_HAVE_AMX
        case 4: return bv_peak_int8_amx(iters);
#endif
        case 3: return bv_peak_int8_avx512vnni(iters);
        case 2: return bv_peak_int8_avxvnni(iters);
        case 1: return bv_peak_int8_avx2(iters);
        default: return 0;
        }
#else
    case 0: return peak_xorpop_portable(iters);
#endif
    default: return 0;
    }
}

/* Peak probe ``which`` (0 XOR+popcount on ``isa``, 1 fp32 FMA, 2 int8 dot products), iters
 * per thread on nthreads threads; returns the MACs done (0: this CPU has no such unit). */
double bv_peak(int which, int isa, long iters, int nthreads)
{
    const int best = bv_best_isa();
    if (isa < 0 || isa > best) isa = best;
    const int int8_kind = bv_int8_kind(); /* once, before the threads: every one probes the same unit */
    double total = 0;
#pragma omp parallel num_threads(nthreads > 0 ? nthreads : 1) reduction(+ : total)
    total += bv_peak1(which, isa, int8_kind, iters);
    return total;
}

/* Best ISA this CPU runs (what -1 picks). */
int bv_best_isa(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
        if (__builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("avx512bitalg")) return BV_ISA_AVX512POPCNT;
        return BV_ISA_AVX512BW;
    }
    if (__builtin_cpu_supports("avx2")) return BV_ISA_AVX2;
#endif
    return BV_ISA_PORTABLE;
}

int bv_struct_size(void) { return (int)sizeof(bv_conv_t); }

/* Run one binary conv; isa = -1 picks the best. Returns 0, -1 (out of memory), -2 (bad ISA). */
int bv_conv(const bv_conv_t *p, int isa)
{
    const int best = bv_best_isa();
    if (isa < 0) isa = best;
    if (isa > best) return -2;
    if (p->lsum && p->kind != BV_KIND_ONE_LEAF && p->kind != BV_KIND_TAP_LEAVES && p->kind != BV_KIND_SEGMENTS) {
        bv_conv_t q = *p; /* leaf sums out: the kernels that hold every leaf's sum */
        q.kind = BV_KIND_SEGMENTS;
        return bv_conv(&q, isa);
    }
    switch (isa) {
#if defined(__x86_64__) && defined(__GNUC__)
    case BV_ISA_AVX2:
        if (bv_kernel_version == 0 && !p->lsum) return p->kind == 1 || p->kind == 2 ? conv_dense_avx2v0(p) : conv_avx2v0(p);
        return p->kind == BV_KIND_FIELDS ? conv_fields_avx2(p) : p->kind == BV_KIND_ROWS ? conv_rows_avx2(p)
            : p->kind == BV_KIND_CHANNELS ? conv_chan_avx2(p)
            : p->kind == BV_KIND_CGROUPS ? conv_cgroups_avx2(p)
            : p->kind ? conv_dense_avx2(p) : conv_avx2(p);
    case BV_ISA_AVX512POPCNT:
        return p->kind == BV_KIND_FIELDS ? conv_fields_avx512popcnt(p) : p->kind == BV_KIND_ROWS ? conv_rows_avx512popcnt(p)
            : p->kind == BV_KIND_CHANNELS ? conv_chan_avx512popcnt(p)
            : p->kind == BV_KIND_CGROUPS ? conv_cgroups_avx512popcnt(p)
            : p->kind ? conv_dense_avx512popcnt(p) : conv_avx512popcnt(p);
    case BV_ISA_AVX512BW:
        return p->kind == BV_KIND_FIELDS ? conv_fields_avx512bw(p) : p->kind == BV_KIND_ROWS ? conv_rows_avx512bw(p)
            : p->kind == BV_KIND_CHANNELS ? conv_chan_avx512bw(p)
            : p->kind == BV_KIND_CGROUPS ? conv_cgroups_avx512bw(p)
            : p->kind ? conv_dense_avx512bw(p) : conv_avx512bw(p);
#endif
    default: return p->kind == 1 || p->kind == 2 ? conv_dense_portable(p) : conv_portable(p);
    }
}
