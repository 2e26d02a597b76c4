/* RSign and RPReLU of ReActNet blocks in one pass forward and one pass backward.
 *
 * Eager PyTorch runs each as a chain (add, sign; add, PReLU, add) plus one reduction per
 * parameter in the backward, and PReLU's own backward is slow on the CPU. Here each thread
 * owns whole channels, so the per-channel parameter gradients are plain sums, no atomics.
 * Tensors are (N, C, P) fp32, contiguous (P = H * W). The forward values and the input
 * gradients are bit-identical to the eager ops (same operations, no contraction); the
 * parameter gradients are sums in another order (accumulated in double).
 */
#include <math.h>
#include <stdint.h>

/* 8 fp32 lanes (one AVX2 register, two SSE ones): the reductions below keep 8 partial sums,
 * so they vectorize without -ffast-math. Unaligned loads and stores. */
typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline float hsum(v8 v) { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); }

static inline v8 vabs(v8 v) {
    v8i m = {0};
    m += 0x7fffffff;
    return (v8)((v8i)v & m);
}

/* a where mask, else b (mask lanes are 0 or -1) */
static inline v8 vsel(v8i mask, v8 a, v8 b) { return (v8)(((v8i)a & mask) | ((v8i)b & ~mask)); }

/* RSign: y = +1 where x + b >= 0 (-0.0 too), else -1. Returns 1 if some x + b is NaN. */
int act_rsign_forward(const float *x, const float *b, float *y, int64_t N, int64_t C, int64_t P, int nt) {
    int nan = 0;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt) reduction(| : nan)
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            const float *xp = x + (n * C + c) * P;
            float *yp = y + (n * C + c) * P;
            const float bc = b[c];
            v8i bad = {0};
            int64_t i = 0;
            for (; i + 8 <= P; i += 8) {
                v8 v = *(const v8 *)(xp + i) + bc;
                bad |= v != v;
                *(v8 *)(yp + i) = vsel(v >= 0.0f, (v8){0} + 1.0f, (v8){0} - 1.0f);
            }
            int tail = 0;
            for (; i < P; i++) {
                float v = xp[i] + bc;
                tail |= v != v;
                yp[i] = v >= 0.0f ? 1.0f : -1.0f;
            }
            for (int q = 0; q < 8; q++) tail |= bad[q] != 0;
            nan |= tail;
        }
    return nan;
}

/* gx = g * F'(x + b), gb[c] = sum of gx over channel c. surrogate 0: ApproxSign,
 * F'(v) = max(0, 2 - 2|v|); 1: clipped STE, F'(v) = 1 where |v| <= clip. */
void act_rsign_backward(const float *x, const float *b, const float *g, float *gx, float *gb, int64_t N, int64_t C,
                        int64_t P, int surrogate, float clip, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t c = 0; c < C; c++) {
        const float bc = b[c];
        double acc = 0.0;
        for (int64_t n = 0; n < N; n++) {
            const float *xp = x + (n * C + c) * P, *gp = g + (n * C + c) * P;
            float *op = gx + (n * C + c) * P;
            v8 part = {0};
            int64_t i = 0;
            if (surrogate == 0) {
                for (; i + 8 <= P; i += 8) {
                    v8 r = vabs(*(const v8 *)(xp + i) + bc) * -2.0f + 2.0f;
                    r = vsel(r < 0.0f, (v8){0}, r);  /* clamp(min=0), NaN kept as in torch */
                    v8 d = r * *(const v8 *)(gp + i);
                    *(v8 *)(op + i) = d;
                    part += d;
                }
            } else {
                for (; i + 8 <= P; i += 8) {
                    v8 d = vsel(vabs(*(const v8 *)(xp + i) + bc) <= clip, *(const v8 *)(gp + i), (v8){0});
                    *(v8 *)(op + i) = d;
                    part += d;
                }
            }
            float tail = 0.0f;
            for (; i < P; i++) {
                float v = xp[i] + bc, d;
                if (surrogate == 0) {
                    float r = fabsf(v) * -2.0f + 2.0f;
                    d = (r < 0.0f ? 0.0f : r) * gp[i];
                } else {
                    d = fabsf(v) <= clip ? gp[i] : 0.0f;
                }
                op[i] = d;
                tail += d;
            }
            acc += (double)hsum(part) + tail;
        }
        gb[c] = (float)acc;
    }
}

/* RPReLU: u = x + b1, y = (u > 0 ? u : a * u) + b2. */
void act_rprelu_forward(const float *x, const float *b1, const float *a, const float *b2, float *y, int64_t N,
                        int64_t C, int64_t P, int nt) {
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt)
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++) {
            const float *xp = x + (n * C + c) * P;
            float *yp = y + (n * C + c) * P;
            const float s1 = b1[c], ac = a[c], s2 = b2[c];
            int64_t i = 0;
            for (; i + 8 <= P; i += 8) {  /* both branches, then a select: no control flow */
                v8 u = *(const v8 *)(xp + i) + s1;
                *(v8 *)(yp + i) = vsel(u > 0.0f, u, ac * u) + s2;
            }
            for (; i < P; i++) {
                float u = xp[i] + s1;
                float p = u > 0.0f ? u : ac * u;
                yp[i] = p + s2;
            }
        }
}

/* gx = (u > 0 ? g : a * g); gb1 = sum gx, ga = sum over u <= 0 of u * g, gb2 = sum g. */
void act_rprelu_backward(const float *x, const float *b1, const float *a, const float *g, float *gx, float *gb1,
                         float *ga, float *gb2, int64_t N, int64_t C, int64_t P, int nt) {
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t c = 0; c < C; c++) {
        const float s1 = b1[c], ac = a[c];
        double t1 = 0.0, ta = 0.0, t2 = 0.0;
        for (int64_t n = 0; n < N; n++) {
            const float *xp = x + (n * C + c) * P, *gp = g + (n * C + c) * P;
            float *op = gx + (n * C + c) * P;
            v8 p1 = {0}, pa = {0}, p2 = {0};
            int64_t i = 0;
            for (; i + 8 <= P; i += 8) {
                v8 u = *(const v8 *)(xp + i) + s1, gi = *(const v8 *)(gp + i);
                v8i pos = u > 0.0f;
                v8 d = vsel(pos, gi, ac * gi);
                *(v8 *)(op + i) = d;
                p1 += d;
                pa += vsel(pos, (v8){0}, u * gi);
                p2 += gi;
            }
            float q1 = 0.0f, qa = 0.0f, q2 = 0.0f;
            for (; i < P; i++) {
                float u = xp[i] + s1, gi = gp[i];
                int pos = u > 0.0f;
                float d = pos ? gi : ac * gi;
                op[i] = d;
                q1 += d;
                qa += pos ? 0.0f : u * gi;
                q2 += gi;
            }
            t1 += (double)hsum(p1) + q1;
            ta += (double)hsum(pa) + qa;
            t2 += (double)hsum(p2) + q2;
        }
        gb1[c] = (float)t1;
        ga[c] = (float)ta;
        gb2[c] = (float)t2;
    }
}
