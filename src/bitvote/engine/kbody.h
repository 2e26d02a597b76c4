/* One conv kernel body, included once per ISA by kernels.c with these macros defined:
 *   FN(name)     suffix the function name with the ISA
 *   VT           a vector of 8 uint64 lanes (8 output channels)
 *   VZERO() VLOAD(p) VBCAST(u) VXOR(a,b) VAND(a,b) VPOPADD(acc,v) VSTORE(p,v)
 * Lanes are output channels: one broadcast input word is XORed with 8 weight words. */

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
