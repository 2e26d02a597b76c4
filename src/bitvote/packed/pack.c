/* bitvote bit packer: real activations -> packed words, bit = (x + shift[c]) >= 0 (-0.0 -> 1,
 * NaN flagged, and any value other than +/-1 flagged apart), layout (N, H, W, Wd) as in kernels.c (docs/engine.md "Packer").
 * Any strides run the portable loop; NCHW rows (sW == 1) and channels-last pixels (sC == 1)
 * have vector packers on AVX2 and AVX-512: a compare of 8 / 16 floats gives a lane mask,
 * which either becomes 8 / 16 bits of one word (channels-last) or sets bit c in the words of
 * 8 / 16 pixels (NCHW), so no float is read twice and no bit is set one at a time. */
#include <stdint.h>
#include <string.h>
#include <immintrin.h>
#include "isa.h"

static int bv_pack_portable(const float *x, int N, int C, int H, int W, long sN, long sC, long sH, long sW,
                            const float *shift, uint64_t *out, int Wd, int nthreads)
{
    int nan = 0, odd = 0;
#pragma omp parallel for num_threads(nthreads > 0 ? nthreads : 1) schedule(static) reduction(| : nan, odd)
    for (long row = 0; row < (long)N * H; row++) {
        const int n = (int)(row / H), y = (int)(row % H);
        uint64_t *o = out + (size_t)row * W * Wd;
        memset(o, 0, (size_t)W * Wd * 8);
        for (int c = 0; c < C; c++) {
            const float *r = x + n * sN + c * sC + y * sH;
            const int j = c / 64, b = c % 64;
            if (shift) {
                const float sh = shift[c];
                for (int i = 0; i < W; i++) {
                    const float v = r[i * sW] + sh;
                    nan |= v != v;
                    odd |= v != 1.0f && v != -1.0f;
                    o[(size_t)i * Wd + j] |= (uint64_t)(v >= 0.0f) << b;
                }
            } else {
                for (int i = 0; i < W; i++) {
                    const float v = r[i * sW];
                    nan |= v != v;
                    odd |= v != 1.0f && v != -1.0f;
                    o[(size_t)i * Wd + j] |= (uint64_t)(v >= 0.0f) << b;
                }
            }
        }
    }
    return nan | odd << 1;
}

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw")
/* NCHW with contiguous rows: runs of L pixels (a whole plane when rows are contiguous too),
 * in items of up to 64 pixels (4 x 16): each channel's 256 contiguous bytes are read at once,
 * so the 64 channel streams of an item (one page each for 32x32 planes) are visited 4x less often. */
static int bv_pack_nchw_avx512(const float *x, int N, int C, int H, int W, long sN, long sC, long sH,
                               const float *shift, uint64_t *out, int Wd, int nthreads)
{
    const int plane = sH == W || H == 1;
    const long nrun = plane ? N : (long)N * H, L = plane ? (long)H * W : W;
    const long nblk = (L + 63) / 64;
    int nan = 0, odd = 0;
#pragma omp parallel for num_threads(nthreads > 0 ? nthreads : 1) schedule(static) reduction(| : nan, odd)
    for (long it = 0; it < nrun * nblk; it++) {
        const long run = it / nblk, i0 = (it % nblk) * 64;
        const float *src = plane ? x + run * sN : x + (run / H) * sN + (run % H) * sH;
        const long pix0 = run * L + i0;
        const int nu = (int)((L - i0 + 15) / 16 < 4 ? (L - i0 + 15) / 16 : 4);
        __mmask16 mk[4];
        for (int u = 0; u < 4; u++) {
            const long left = L - i0 - 16 * u;
            mk[u] = left >= 16 ? 0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
        }
        const __m512i idx = _mm512_setr_epi64(0, Wd, 2L * Wd, 3L * Wd, 4L * Wd, 5L * Wd, 6L * Wd, 7L * Wd);
        __mmask16 bad = 0, notpm = 0;
        for (int j = 0; j < Wd; j++) {
            __m512i lo[4], hi[4];
            for (int u = 0; u < 4; u++) { lo[u] = _mm512_setzero_si512(); hi[u] = _mm512_setzero_si512(); }
            const int c1 = C < 64 * j + 64 ? C : 64 * j + 64;
            for (int c = 64 * j; c < c1; c++) {
                const __m512i bit = _mm512_set1_epi64((long long)(1ULL << (c & 63)));
                const __m512 sh = _mm512_set1_ps(shift ? shift[c] : 0.0f);
                for (int u = 0; u < 4; u++) { /* constant trip count: lo/hi stay in registers; mk = 0 past the run */
                    _mm_prefetch((const char *)(src + c * sC + i0 + 64 + 16 * u), _MM_HINT_T0); /* the next item's line */
                    __m512 v = _mm512_maskz_loadu_ps(mk[u], src + c * sC + i0 + 16 * u);
                    if (shift) v = _mm512_add_ps(v, sh);
                    const __mmask16 m = _mm512_mask_cmp_ps_mask(mk[u], v, _mm512_setzero_ps(), _CMP_GE_OQ);
                    bad |= _mm512_mask_cmp_ps_mask(mk[u], v, v, _CMP_UNORD_Q);
                    notpm |= _mm512_mask_cmp_ps_mask(mk[u], _mm512_abs_ps(v), _mm512_set1_ps(1.0f), _CMP_NEQ_UQ);
                    lo[u] = _mm512_mask_or_epi64(lo[u], (__mmask8)m, lo[u], bit);
                    hi[u] = _mm512_mask_or_epi64(hi[u], (__mmask8)(m >> 8), hi[u], bit);
                }
            }
            for (int u = 0; u < nu; u++) {
                uint64_t *o = out + (pix0 + 16 * u) * Wd + j;
                if (Wd == 1) {
                    _mm512_mask_storeu_epi64(o, (__mmask8)mk[u], lo[u]);
                    _mm512_mask_storeu_epi64(o + 8, (__mmask8)(mk[u] >> 8), hi[u]);
                } else {
                    _mm512_mask_i64scatter_epi64(o, (__mmask8)mk[u], idx, lo[u], 8);
                    _mm512_mask_i64scatter_epi64(o + 8 * Wd, (__mmask8)(mk[u] >> 8), idx, hi[u], 8);
                }
            }
        }
        nan |= bad != 0;
        odd |= notpm != 0;
    }
    return nan | odd << 1;
}

/* Channels-last (sC == 1): 64 channels of one pixel are 4 compares -> one word. */
static int bv_pack_nhwc_avx512(const float *x, int N, int C, int H, int W, long sN, long sH, long sW,
                               const float *shift, uint64_t *out, int Wd, int nthreads)
{
    int nan = 0, odd = 0;
#pragma omp parallel for num_threads(nthreads > 0 ? nthreads : 1) schedule(static) reduction(| : nan, odd)
    for (long row = 0; row < (long)N * H; row++) {
      const float *srow = x + (row / H) * sN + (row % H) * sH;
      for (long pix = row * W; pix < (row + 1) * W; pix++) {
        const float *src = srow + (pix - row * W) * sW;
        __mmask16 bad = 0, notpm = 0;
        for (int j = 0; j < Wd; j++) {
            uint64_t word = 0;
            for (int q = 0; q < 4; q++) {
                const int c0 = 64 * j + 16 * q;
                if (c0 >= C) break;
                const __mmask16 mk = C - c0 >= 16 ? 0xffff : (__mmask16)((1u << (C - c0)) - 1);
                __m512 v = _mm512_maskz_loadu_ps(mk, src + c0);
                if (shift) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, shift + c0));
                word |= (uint64_t)_mm512_mask_cmp_ps_mask(mk, v, _mm512_setzero_ps(), _CMP_GE_OQ) << (16 * q);
                bad |= _mm512_mask_cmp_ps_mask(mk, v, v, _CMP_UNORD_Q);
                notpm |= _mm512_mask_cmp_ps_mask(mk, _mm512_abs_ps(v), _mm512_set1_ps(1.0f), _CMP_NEQ_UQ);
            }
            out[pix * Wd + j] = word;
        }
        nan |= bad != 0;
        odd |= notpm != 0;
      }
    }
    return nan | odd << 1;
}
#pragma GCC pop_options
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2")
/* lanes i < n of 8 (a maskload / maskstore mask: no access past the run) */
static inline __m256i bv_lanes8(long n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 8 ? n : 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* NCHW with contiguous rows, AVX2: items of up to 32 pixels (4 x 8) of one run (a whole
 * plane when rows are contiguous too). A compare of 8 floats of channel c is a 32-bit lane
 * mask per pixel; bit c lands in the pixel's low (c % 64 < 32) or high dword accumulator
 * with one AND and one OR, and the two dword halves are interleaved into 64-bit words once
 * per item and word. */
static int bv_pack_nchw_avx2(const float *x, int N, int C, int H, int W, long sN, long sC, long sH,
                             const float *shift, uint64_t *out, int Wd, int nthreads)
{
    const int plane = sH == W || H == 1;
    const long nrun = plane ? N : (long)N * H, L = plane ? (long)H * W : W;
    const long nblk = (L + 31) / 32;
    int nan = 0, odd = 0;
#pragma omp parallel for num_threads(nthreads > 0 ? nthreads : 1) schedule(static) reduction(| : nan, odd)
    for (long it = 0; it < nrun * nblk; it++) {
        const long run = it / nblk, i0 = (it % nblk) * 32;
        const float *src = (plane ? x + run * sN : x + (run / H) * sN + (run % H) * sH) + i0;
        const long pix0 = run * L + i0, left = L - i0;
        const int nu = (int)((left + 7) / 8 < 4 ? (left + 7) / 8 : 4);
        const int full = left >= 32;
        __m256i mk[4];
        for (int u = 0; u < 4; u++) mk[u] = bv_lanes8(left - 8 * u > 0 ? left - 8 * u : 0);
        __m256 bad = _mm256_setzero_ps(), notpm = _mm256_setzero_ps();
        for (int j = 0; j < Wd; j++) {
            __m256i acc[2][4];
            for (int h = 0; h < 2; h++)
                for (int u = 0; u < 4; u++) acc[h][u] = _mm256_setzero_si256();
            for (int h = 0; h < 2; h++) {
                const int c0 = 64 * j + 32 * h, c1 = C < c0 + 32 ? C : c0 + 32;
                for (int c = c0; c < c1; c++) {
                    const __m256i bit = _mm256_set1_epi32((int)(1u << (c & 31)));
                    const __m256 sh = _mm256_set1_ps(shift ? shift[c] : 0.0f);
                    const float *q = src + c * sC;
                    for (int u = 0; u < 4; u++) { /* constant trip count: the accumulators stay in registers */
                        __m256 v = full ? _mm256_loadu_ps(q + 8 * u) : _mm256_maskload_ps(q + 8 * u, mk[u]);
                        if (shift) v = _mm256_add_ps(v, sh);
                        const __m256 ge = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GE_OQ);
                        bad = _mm256_or_ps(bad, _mm256_and_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q), _mm256_castsi256_ps(mk[u])));
                        notpm = _mm256_or_ps(notpm, _mm256_and_ps(_mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), v),
                                                                                _mm256_set1_ps(1.0f), _CMP_NEQ_UQ),
                                                                  _mm256_castsi256_ps(mk[u])));
                        acc[h][u] = _mm256_or_si256(acc[h][u], _mm256_and_si256(_mm256_castps_si256(ge), bit));
                    }
                }
            }
            for (int u = 0; u < nu; u++) {
                const __m256i a = _mm256_unpacklo_epi32(acc[0][u], acc[1][u]); /* pixels 0 1 | 4 5 */
                const __m256i b = _mm256_unpackhi_epi32(acc[0][u], acc[1][u]); /* pixels 2 3 | 6 7 */
                const __m256i w0 = _mm256_permute2x128_si256(a, b, 0x20), w1 = _mm256_permute2x128_si256(a, b, 0x31);
                uint64_t *o = out + (pix0 + 8 * u) * Wd + j;
                const long n8 = left - 8 * u < 8 ? left - 8 * u : 8;
                if (Wd == 1) {
                    if (n8 == 8) {
                        _mm256_storeu_si256((__m256i *)o, w0);
                        _mm256_storeu_si256((__m256i *)(o + 4), w1);
                    } else {
                        _mm256_maskstore_epi64((long long *)o, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(mk[u])), w0);
                        _mm256_maskstore_epi64((long long *)(o + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(mk[u], 1)), w1);
                    }
                } else {
                    uint64_t t[8];
                    _mm256_storeu_si256((__m256i *)t, w0);
                    _mm256_storeu_si256((__m256i *)(t + 4), w1);
                    for (long q = 0; q < n8; q++) o[q * Wd] = t[q];
                }
            }
        }
        nan |= _mm256_movemask_ps(bad) != 0;
        odd |= _mm256_movemask_ps(notpm) != 0;
    }
    return nan | odd << 1;
}

/* Channels-last (sC == 1), AVX2: 64 channels of one pixel are 8 compares -> one word. */
static int bv_pack_nhwc_avx2(const float *x, int N, int C, int H, int W, long sN, long sH, long sW,
                             const float *shift, uint64_t *out, int Wd, int nthreads)
{
    int nan = 0, odd = 0;
#pragma omp parallel for num_threads(nthreads > 0 ? nthreads : 1) schedule(static) reduction(| : nan, odd)
    for (long row = 0; row < (long)N * H; row++) {
        const float *srow = x + (row / H) * sN + (row % H) * sH;
        int bad = 0, notpm = 0;
        for (long pix = row * W; pix < (row + 1) * W; pix++) {
            const float *src = srow + (pix - row * W) * sW;
            for (int j = 0; j < Wd; j++) {
                uint64_t word = 0;
                for (int q = 0; q < 8; q++) {
                    const int c0 = 64 * j + 8 * q;
                    if (c0 >= C) break;
                    __m256 v, s;
                    if (C - c0 >= 8) {
                        v = _mm256_loadu_ps(src + c0);
                        s = shift ? _mm256_loadu_ps(shift + c0) : _mm256_setzero_ps();
                    } else {
                        const __m256i mk = bv_lanes8(C - c0);
                        v = _mm256_maskload_ps(src + c0, mk);
                        s = shift ? _mm256_maskload_ps(shift + c0, mk) : _mm256_setzero_ps();
                    }
                    if (shift) v = _mm256_add_ps(v, s);
                    const unsigned lanes = C - c0 >= 8 ? 0xffu : (1u << (C - c0)) - 1;
                    word |= (uint64_t)((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GE_OQ)) & lanes) << (8 * q);
                    bad |= _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) & lanes;
                    notpm |= _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), v),
                                                              _mm256_set1_ps(1.0f), _CMP_NEQ_UQ)) & lanes;
                }
                out[pix * Wd + j] = word;
            }
        }
        nan |= bad != 0;
        odd |= notpm != 0;
    }
    return nan | odd << 1;
}
#pragma GCC pop_options
#endif

/* Pack (any strides, NCHW indexing) into (N, H, W, Wd) words; shift may be NULL. isa = -1
 * picks the best. Returns bit 0 set if any value is NaN, bit 1 if any is other than +1 or -1. */
int bv_pack(const float *x, int N, int C, int H, int W, long sN, long sC, long sH, long sW,
            const float *shift, uint64_t *out, int Wd, int nthreads, int isa)
{
    if (isa < 0) isa = bv_best_isa();
#if defined(__x86_64__) && defined(__GNUC__)
    if (isa >= BV_ISA_AVX512BW && C > 0) {
        if (sC == 1)
            return bv_pack_nhwc_avx512(x, N, C, H, W, sN, sH, sW, shift, out, Wd, nthreads);
        if (sW == 1)
            return bv_pack_nchw_avx512(x, N, C, H, W, sN, sC, sH, shift, out, Wd, nthreads);
    }
    if (isa == BV_ISA_AVX2 && C > 0) {
        if (sC == 1)
            return bv_pack_nhwc_avx2(x, N, C, H, W, sN, sH, sW, shift, out, Wd, nthreads);
        if (sW == 1)
            return bv_pack_nchw_avx2(x, N, C, H, W, sN, sC, sH, shift, out, Wd, nthreads);
    }
#endif
    return bv_pack_portable(x, N, C, H, W, sN, sC, sH, sW, shift, out, Wd, nthreads);
}
