/* The surrogate gradient of channel-major voter trees whose voters below the root each lie
 * inside one input channel (cm:M(M3(M3)), cm:M(M9), cm:M(M3), cm:P(M3(M3)), ...), and of
 * tap-major ones whose voters below the root each lie inside one tap (tap, tap,leaf=L,
 * tap,groups=G: see "Tap-major trees" below), with the output channels as the bits of 64-bit
 * words.
 *
 * At one output position and one input channel c, term (c, t) of output o is the XNOR of the
 * input bit x[c, t] with the weight bit w[o, c, t]: for 64 output channels at once that is
 * the weight word of (c, t), inverted where x = -1. The per-channel voters are then bitwise
 * functions of those words (counts kept as bit planes), so every vote, tie and surrogate
 * factor below the root costs a few word operations per 64 outputs, and 8 output positions
 * run side by side in the 8 words of one vector. A voter's factor F(s / sigma) / sigma
 * depends only on its count, so each leaf's product of factors up to the root takes a few
 * values, each on a mask of output channels: a leaf's dL/ds is the root's dL/ds (16 outputs
 * per vector) on those masks, made inside register-tiled sums that give both gradients (the
 * taps of a leaf share it). Which terms are valid depends on the position only (zero
 * padding): positions are grouped by their pattern of live taps, each group with its tree's
 * counts, ties and factor tables made once, and a block of 16 (image, position) pairs holds
 * one group. Semantics are those of
 * bitvote.voter.reduce_votes; the tests hold the two against each other.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef float v16fu __attribute__((vector_size(64), aligned(4)));

#define CV_MAXLEV 8      /* levels below the root */
#define CV_MAXFAN 15     /* fan-in of a voter below the root: counts in 4 bit planes */
#define CV_MAXQ 32       /* distinct factor products of one leaf */
#define CV_VB 8          /* (image, position) pairs side by side: the words of a v8u */
#define CV_PB 16         /* pairs per block: CV_PB / CV_VB vectors of them */

typedef struct {
    const int8_t *x;        /* padded channels-last input (N, Hp, Wp, C): +1, -1, 0 = padding */
    const int16_t *wi;      /* weights term-major (C * T, Cp), rows c T + t (tap-major: t C + c): +1 / -1 */
    const float *g;         /* output gradient (N, Co, Ho, Wo) */
    int N, Hp, Wp, C, Co, Cp, OW, kh, kw, sh, sw, dh, dw, Ho, Wo, H, W, ph, pw, zero_pad;
    const int64_t *tap_off; /* per tap: offset of its pixel from the window's corner */
    int m;                  /* voters per channel under the root */
    int nlev;               /* levels below the root */
    const int32_t *fan;     /* per level, bottom up: fan-in (the leaves': taps) */
    const int32_t *tie;     /* per level: 1, -1, 0 = first */
    const float *sigma;     /* per level, then the root: nominal sigma (a factor under sigma_valid) */
    int sigma_valid, root_p, surrogate;
    float clip;
    int nthreads;
    int tap_major;          /* 1: tap-major trees, voters below the root inside one tap (see below) */
} cv_args;

int cv_struct_size(void) { return (int)sizeof(cv_args); }

/* One voter below the root at one position: its live inputs and factor classes. */
typedef struct {
    int k;          /* live inputs (taps or children); 0 = abstains */
    int first;      /* first live input: tap (leaf) or node index (above) */
    int nq;         /* distinct non-zero factors */
    float q[CV_MAXFAN + 1];     /* those factors */
    uint16_t cmask[CV_MAXFAN + 1]; /* per factor: the counts (of +1 inputs) that take it */
    int path;       /* leaves: 0 = no gradient here, 1 = one factor per voter up to the top, 2 = more */
    float path_g;   /* under path 1: the product of those factors */
} cv_node;

/* The tree under one channel at one position: nodes of the m per-channel voters, level by
 * level (every voter's subtree is the same shape), and which taps are live. */
typedef struct {
    cv_node *node;  /* m * NL */
    int NL;         /* nodes under one per-channel voter */
    int lev0[CV_MAXLEV + 1]; /* first node of each level within one voter's nodes */
    int live_top;   /* per-channel voters that do not abstain */
    int simple;     /* every leaf's path takes one factor per voter (or none) */
    float sig_root;
    uint8_t tap_live[64];
} cv_prog;

static float cv_factor(const cv_args *A, int s, float sig) {
    float sf = (float)s;
    if (A->surrogate == 1) return fabsf(sf) <= A->clip * sig ? 1.0f / sig : 0.0f;
    float d = 2.0f - 2.0f * fabsf(sf / sig);
    return d > 0.0f ? d / sig : 0.0f;
}

/* a voter's sigma over k live inputs: the nominal one, times sqrt(k) under sigma_valid */
static float cv_sigma(const cv_args *A, int k, float nominal) {
    return A->sigma_valid ? sqrtf((float)(k > 1 ? k : 1)) * nominal : nominal;
}

static void cv_node_classes(const cv_args *A, cv_node *n, float sig) {
    n->nq = 0;
    for (int j = 0; j <= n->k && n->k > 0; j++) {
        float f = cv_factor(A, 2 * j - n->k, sig);
        if (f == 0.0f) continue;
        int q = 0;
        while (q < n->nq && n->q[q] != f) q++;
        if (q == n->nq) { n->q[q] = f; n->cmask[q] = 0; n->nq++; }
        n->cmask[q] |= (uint16_t)(1u << j);
    }
}

static void cv_prog_setup(const cv_args *A, cv_prog *P, uint64_t live) {
    const int T = A->kh * A->kw, u = T / A->m;
    for (int t = 0; t < T; t++) P->tap_live[t] = live >> t & 1;
    P->live_top = 0;
    for (int j = 0; j < A->m; j++) {
        cv_node *nd = P->node + (size_t)j * P->NL;
        const int f0 = A->fan[0];
        for (int i = 0; i < u / f0; i++) {  /* leaves */
            cv_node *n = nd + i;
            n->k = 0;
            n->first = -1;
            for (int t = j * u + i * f0; t < j * u + (i + 1) * f0; t++)
                if (P->tap_live[t]) { if (n->first < 0) n->first = t; n->k++; }
        }
        for (int l = 1; l < A->nlev; l++) {
            const int c0 = P->lev0[l - 1], n1 = P->lev0[l + 1] - P->lev0[l];
            for (int i = 0; i < n1; i++) {
                cv_node *n = nd + P->lev0[l] + i;
                n->k = 0;
                n->first = -1;
                for (int c = c0 + i * A->fan[l]; c < c0 + (i + 1) * A->fan[l]; c++)
                    if (nd[c].k > 0) { if (n->first < 0) n->first = c; n->k++; }
            }
        }
        for (int l = 0; l < A->nlev; l++)
            for (int i = P->lev0[l]; i < P->lev0[l + 1]; i++) {
                cv_node *n = nd + i;
                cv_node_classes(A, n, cv_sigma(A, n->k, A->sigma[l]));
            }
        for (int i = 0; i < P->lev0[1]; i++) {  /* each leaf's path of factors to the top */
            cv_node *n = nd + i;
            int node = i, path = n->k ? 1 : 0;
            float gp = 1.0f;
            for (int l = 0; path; l++) {
                const cv_node *a = nd + node;
                if (!a->nq) path = 0;
                else if (a->nq > 1) path = 2;
                else gp *= a->q[0];
                if (l == A->nlev - 1) break;
                node = P->lev0[l + 1] + (node - P->lev0[l]) / A->fan[l + 1];
            }
            n->path = path;
            n->path_g = gp;
        }
        P->live_top += nd[P->NL - 1].k > 0;
    }
    P->simple = 1;
    for (int j = 0; j < A->m; j++)
        for (int i = 0; i < P->lev0[1]; i++) P->simple &= P->node[(size_t)j * P->NL + i].path < 2;
    const int kr = P->live_top * A->C;
    P->sig_root = cv_sigma(A, kr, A->sigma[A->nlev]);
}

/* A tap-major program: which taps are live, and the root's sigma over the live taps' voters. */
static void tv_prog_setup(const cv_args *A, cv_prog *P, uint64_t live) {
    const int T = A->kh * A->kw;
    P->live_top = 0;
    for (int t = 0; t < T; t++) P->live_top += P->tap_live[t] = live >> t & 1;
    P->simple = 1;
    const int kr = P->live_top * A->m;
    P->sig_root = cv_sigma(A, kr, A->sigma[A->nlev]);
}

/* The per-channel voters as word functions, for one position (W = uint64_t: 64 outputs) or
 * for CV_PB positions at once (W = v8u: one 64-bit word per position, same program). A count
 * of +1 inputs is kept as 4 bit planes; NAME_eval walks one per-channel subtree: vote bits,
 * and per factor class the mask of outputs whose count takes it. z: the terms' XNOR words,
 * by tap. */
#define CV_DEFINE_EVAL(W, CNT, ADD, IN, EVAL)                                                     \
    typedef struct { W p[4]; } CNT;                                                              \
    static inline void ADD(CNT *c, W b) {                                                        \
        for (int i = 0; i < 4; i++) {                                                            \
            W t = c->p[i] & b;                                                                   \
            c->p[i] ^= b;                                                                        \
            b = t;                                                                               \
        }                                                                                        \
    }                                                                                            \
    /* the outputs whose count is in `set` (bit j = count j) */                                  \
    static inline W IN(const CNT *c, uint32_t set) {                                             \
        W m = (W){0};                                                                            \
        while (set) {                                                                            \
            int j = __builtin_ctz(set);                                                          \
            set &= set - 1;                                                                      \
            W e = ~(W){0};                                                                       \
            for (int i = 0; i < 4; i++) e &= (j >> i & 1) ? c->p[i] : ~c->p[i];                  \
            m |= e;                                                                              \
        }                                                                                        \
        return m;                                                                                \
    }                                                                                            \
    static void EVAL(const cv_args *A, const cv_prog *P, const cv_node *nd, int j, const W *z,   \
                     W *vote, W (*qmask)[CV_MAXFAN + 1], int want_masks) {                       \
        const int T = A->kh * A->kw, u = T / A->m, f0 = A->fan[0];                               \
        for (int l = 0; l < A->nlev; l++) {                                                      \
            const int tie = A->tie[l];                                                           \
            for (int i = P->lev0[l]; i < P->lev0[l + 1]; i++) {                                  \
                const cv_node *n = nd + i;                                                       \
                if (!n->k) { vote[i] = (W){0}; continue; }                                       \
                W in[CV_MAXFAN], firstbits;                                                      \
                int k = 0;                                                                       \
                if (l == 0) {                                                                    \
                    const int t0 = j * u + i * f0;                                               \
                    for (int t = t0; t < t0 + f0; t++)                                           \
                        if (P->tap_live[t]) in[k++] = z[t];                                      \
                    firstbits = z[n->first];                                                     \
                } else {                                                                         \
                    const int c0 = P->lev0[l - 1] + (i - P->lev0[l]) * A->fan[l];                \
                    for (int ch = c0; ch < c0 + A->fan[l]; ch++)                                 \
                        if (nd[ch].k) in[k++] = vote[ch];                                        \
                    firstbits = vote[n->first];                                                  \
                }                                                                                \
                W tb = firstbits;                                                                \
                if (tie == 1) tb = ~(W){0};                                                      \
                else if (tie == -1) tb = (W){0};                                                 \
                if (k <= 3) { /* the outputs of each count, in closed form */                    \
                    W e[4];                                                                      \
                    if (k == 1) {                                                                \
                        e[1] = in[0];                                                            \
                        e[0] = ~in[0];                                                           \
                        vote[i] = in[0];                                                         \
                    } else if (k == 2) {                                                         \
                        e[2] = in[0] & in[1];                                                    \
                        e[1] = in[0] ^ in[1];                                                    \
                        e[0] = ~(in[0] | in[1]);                                                 \
                        vote[i] = e[2] | (e[1] & tb);                                            \
                    } else {                                                                     \
                        const W a = in[0], b = in[1], d = in[2], any = a | b | d;                \
                        const W maj = (a & b) | (d & (a ^ b));                                   \
                        e[3] = a & b & d;                                                        \
                        e[2] = maj & ~e[3];                                                      \
                        e[1] = any & ~maj;                                                       \
                        e[0] = ~any;                                                             \
                        vote[i] = maj;                                                           \
                    }                                                                            \
                    if (want_masks)                                                              \
                        for (int q = 0; q < n->nq; q++) {                                        \
                            W mq = (W){0};                                                       \
                            for (int c = 0; c <= k; c++)                                         \
                                if (n->cmask[q] >> c & 1) mq |= e[c];                            \
                            qmask[i][q] = mq;                                                    \
                        }                                                                        \
                    continue;                                                                    \
                }                                                                                \
                CNT c = {{(W){0}, (W){0}, (W){0}, (W){0}}};                                      \
                for (int q = 0; q < k; q++) ADD(&c, in[q]);                                      \
                uint32_t above = 0; /* more +1 than -1 inputs, or the tie bits where equal */    \
                for (int q = n->k / 2 + 1; q <= n->k; q++) above |= 1u << q;                     \
                vote[i] = IN(&c, above);                                                         \
                if (!(n->k & 1)) vote[i] |= IN(&c, 1u << (n->k / 2)) & tb;                       \
                if (want_masks)                                                                  \
                    for (int q = 0; q < n->nq; q++) qmask[i][q] = IN(&c, n->cmask[q]);           \
            }                                                                                    \
        }                                                                                        \
    }

typedef uint64_t v8u __attribute__((vector_size(64)));
CV_DEFINE_EVAL(uint64_t, cv_cnt, cnt_add, cnt_in, cv_eval)
CV_DEFINE_EVAL(v8u, cv_cnt8, cnt_add8, cnt_in8, cv_eval8)

/* Tap-major trees (tap, tap,leaf=L, tap,groups=G, M9(M16(M4)) ...): the voters below the root
 * lie inside one tap, m of them per tap over u = C / m consecutive channels, one or two levels
 * deep (leaves, then the per-tap voter). The roles of channels and taps swap: a tap's terms
 * are its C channels, whose input bits at one position come from one pixel. Zero padding
 * removes whole taps, so every voter below the root sees all its inputs: one table of factor
 * classes per level serves every position, the per-tap voters' counts may be large (a
 * counter of np bit planes), and their factor classes scale the root's dL/ds into one dense
 * vector per tap voter, which the leaves below take on their own masks. */
#define TV_MAXR 4       /* count ranges of one factor class */
#define TV_PLANES 11    /* bit planes of a per-tap voter's count: fan-in <= 2047 */

typedef struct {
    int fan, np, tie, nq;
    float q[CV_MAXQ];
    int nr[CV_MAXQ], lo[CV_MAXQ][TV_MAXR], hi[CV_MAXQ][TV_MAXR];
} tv_level;

/* Returns 2 where the factors take more than CV_MAXQ values or a class more than TV_MAXR
 * ranges of counts. */
static int tv_level_setup(const cv_args *A, tv_level *L, int fan, int tie, float signom) {
    L->fan = fan;
    L->tie = tie;
    L->np = 1;
    while ((1 << L->np) <= fan) L->np++;
    const float sig = cv_sigma(A, fan, signom);
    L->nq = 0;
    for (int j = 0; j <= fan; j++) {
        const float f = cv_factor(A, 2 * j - fan, sig);
        if (f == 0.0f) continue;
        int q = 0;
        while (q < L->nq && L->q[q] != f) q++;
        if (q == L->nq) {
            if (q == CV_MAXQ) return 2;
            L->q[q] = f;
            L->nr[q] = 0;
            L->nq++;
        }
        const int r = L->nr[q];
        if (r && L->hi[q][r - 1] == j - 1) L->hi[q][r - 1] = j;
        else {
            if (r == TV_MAXR) return 2;
            L->lo[q][r] = L->hi[q][r] = j;
            L->nr[q]++;
        }
    }
    return 0;
}

static inline void tv_add(v8u *p, int np, v8u b) {
    for (int i = 0; i < np; i++) {
        const v8u t = p[i] & b;
        p[i] ^= b;
        b = t;
    }
}

/* p += b for an nb-plane count b */
static inline void tv_add_num(v8u *p, int np, const v8u *b, int nb) {
    v8u cy = (v8u){0};
    for (int i = 0; i < np; i++) {
        const v8u a = p[i], bi = i < nb ? b[i] : (v8u){0}, x = a ^ bi;
        p[i] = x ^ cy;
        cy = (a & bi) | (cy & x);
    }
}

/* the count of +1 among z[0 .. n) in np planes: by 15s into 4 planes, then added up */
static inline void tv_count(v8u *p, int np, const v8u *z, int n) {
    for (int i = 0; i < np; i++) p[i] = (v8u){0};
    if (n < 16) {
        for (int k = 0; k < n; k++) tv_add(p, np, z[k]);
        return;
    }
    for (int k0 = 0; k0 < n; k0 += 15) {
        v8u c4[4] = {(v8u){0}, (v8u){0}, (v8u){0}, (v8u){0}};
        for (int k = k0; k < n && k < k0 + 15; k++) tv_add(c4, 4, z[k]);
        tv_add_num(p, np, c4, 4);
    }
}

/* lanes whose count is >= thr */
static inline v8u tv_ge(const v8u *p, int np, int thr) {
    if (thr <= 0) return ~(v8u){0};
    if (thr >= 1 << np) return (v8u){0};
    v8u gt = (v8u){0}, eq = ~(v8u){0};
    for (int i = np - 1; i >= 0; i--) {
        if (thr >> i & 1) eq &= p[i];
        else {
            gt |= eq & p[i];
            eq &= ~p[i];
        }
    }
    return gt | eq;
}

static inline v8u tv_eq(const v8u *p, int np, int j) {
    v8u e = ~(v8u){0};
    for (int i = 0; i < np; i++) e &= (j >> i & 1) ? p[i] : ~p[i];
    return e;
}

/* lanes whose count takes factor class q of level L */
static inline v8u tv_class(const v8u *p, const tv_level *L, int q) {
    v8u m = (v8u){0};
    for (int r = 0; r < L->nr[q]; r++) {
        const int lo = L->lo[q][r], hi = L->hi[q][r];
        m |= lo == hi ? tv_eq(p, L->np, lo) : tv_ge(p, L->np, lo) & ~tv_ge(p, L->np, hi + 1);
    }
    return m;
}

/* the vote of a voter that sees all its fan inputs (count in np planes); first: its first
 * input's bits */
static inline __attribute__((always_inline)) v8u tv_vote(const v8u *p, int np, int fan, int tie, v8u first) {
    v8u v = tv_ge(p, np, fan / 2 + 1);
    if (!(fan & 1)) {
        const v8u tb = tie == 1 ? ~(v8u){0} : tie == -1 ? (v8u){0} : first;
        v |= tv_eq(p, np, fan / 2) & tb;
    }
    return v;
}

/* One tap voter's leaves of F terms each (counts in NP planes; the callers pass constants, so
 * the counters unroll): each leaf's class masks to lq (NQL per leaf, CV_PB / CV_VB apart),
 * its vote to lv. */
static inline __attribute__((always_inline)) void tv_leaves(int F, int NP, const tv_level *Lf, const v8u *zj, int nl,
                                                             v8u *lv, v8u *lq, int NQL) {
    for (int i = 0; i < nl; i++) {
        v8u lc[TV_PLANES];
        tv_count(lc, NP, zj + (size_t)i * F, F);
        lv[i] = tv_vote(lc, NP, F, Lf->tie, zj[(size_t)i * F]);
        for (int q = 0; q < NQL; q++) lq[((size_t)i * NQL + q) * (CV_PB / CV_VB)] = tv_class(lc, Lf, q);
    }
}

/* Lane masks (-1 / 0) of 16-lane vectors. Without AVX-512 a 16-lane comparison is not one
 * instruction and GCC would compare lane by lane; these compare two 8-lane halves instead. */
typedef int32_t v8i_ __attribute__((vector_size(32)));
typedef float v8f_ __attribute__((vector_size(32)));

/* lane i set where bit i of m16 is */
static inline __attribute__((always_inline)) v16i cv_lanes(uint32_t m16) {
#ifdef __AVX512F__
    const v16i lane = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768};
    return (((v16i){0} + (int32_t)m16) & lane) != 0;
#else
    const v8i_ lane = {1, 2, 4, 8, 16, 32, 64, 128};
    const v8i_ lo = (((v8i_){0} + (int32_t)(m16 & 0xffu)) & lane) != 0;
    const v8i_ hi = (((v8i_){0} + (int32_t)(m16 >> 8 & 0xffu)) & lane) != 0;
    return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#endif
}

/* lanes where a <= b */
static inline __attribute__((always_inline)) v16i cv_le(v16f a, float b) {
#ifdef __AVX512F__
    return a <= b;
#else
    const v8f_ lo = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7);
    const v8f_ hi = __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
    return __builtin_shufflevector((v8i_)(lo <= b), (v8i_)(hi <= b), 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                                   14, 15);
#endif
}

/* f * K on the lanes whose bit is set in m16, 0 elsewhere. */
static inline __attribute__((always_inline)) v16f masked_mul(v16f K, float f, uint32_t m16) {
#ifdef __AVX512F__
    return (v16f)_mm512_maskz_mul_ps((__mmask16)m16, (__m512)K, _mm512_set1_ps(f));
#else
    return (v16f)((v16i)(K * f) & cv_lanes(m16));
#endif
}

/* acc + f * K on the lanes whose bit is set in m16. */
static inline __attribute__((always_inline)) v16f masked_fma(v16f acc, v16f K, float f, uint32_t m16) {
#ifdef __AVX512F__
    return (v16f)_mm512_mask3_fmadd_ps((__m512)K, _mm512_set1_ps(f), (__m512)acc, (__mmask16)m16);
#else
    return acc + (v16f)((v16i)(K * f) & cv_lanes(m16));
#endif
}

/* The lane sums of 16 vectors, in their order: 15 folds of two vectors into one (the folds
 * leave the sum of a[i] in lane bitrev4(i), the last shuffle puts it back in lane i). */
static inline __attribute__((always_inline)) v16f cv_sums16(const v16f *a) {
#define CV_FOLD(x, y, ...) (__builtin_shufflevector(x, y, __VA_ARGS__))
    v16f b[8], c[4], d[2];
    for (int i = 0; i < 8; i++)
        b[i] = CV_FOLD(a[2 * i], a[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
             + CV_FOLD(a[2 * i], a[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int i = 0; i < 4; i++)
        c[i] = CV_FOLD(b[2 * i], b[2 * i + 1], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27)
             + CV_FOLD(b[2 * i], b[2 * i + 1], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
    for (int i = 0; i < 2; i++)
        d[i] = CV_FOLD(c[2 * i], c[2 * i + 1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29)
             + CV_FOLD(c[2 * i], c[2 * i + 1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
    const v16f r = CV_FOLD(d[0], d[1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30)
                 + CV_FOLD(d[0], d[1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
    return CV_FOLD(r, r, 0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15);
#undef CV_FOLD
}

/* dst[p, h] = sum over classes q of f[q] k[p, h] on the lanes of class q's mask, for the
 * block's pairs p and output vectors h < HC: k's pair p at k + p ks, dst's at dst + p ds
 * (vectors); class q's 64-bit words at masks + w ws + q CV_PB + p for output word w. */
static void tv_by_class(const v16f *k, size_t ks, const uint64_t *masks, size_t ws, const float *f, int nq, int HC,
                        v16f *dst, size_t ds) {
    for (int p = 0; p < CV_PB; p++)
        for (int h = 0; h < HC; h++) {
            const uint64_t *mw = masks + (size_t)(h >> 2) * ws + p;
            v16f acc = (v16f){0};
            for (int q = 0; q < nq; q++)
                acc = masked_fma(acc, k[p * ks + h], f[q], ((const uint16_t *)(mw + (size_t)q * CV_PB))[h & 3]);
            dst[p * ds + h] = acc;
        }
}

typedef int8_t v16b __attribute__((vector_size(16)));
typedef int8_t v8b __attribute__((vector_size(8)));
typedef float v8fu __attribute__((vector_size(32), aligned(4)));

/* dst[c] = src[c] for c < C, int8 to float, 16 and 8 at a time */
static inline void cv_floats(const int8_t *src, float *dst, int C) {
    int c = 0;
    for (; c + 16 <= C; c += 16) {
        v16b b;
        memcpy(&b, src + c, sizeof(b));
        *(v16fu *)(dst + c) = __builtin_convertvector(b, v16f);
    }
    for (; c + 8 <= C; c += 8) {
        v8b b;
        memcpy(&b, src + c, sizeof(b));
        *(v8fu *)(dst + c) = __builtin_convertvector(b, v8f_);
    }
    for (; c < C; c++) dst[c] = (float)src[c];
}

/* d[0 .. n) = r[l0 .. l0 + n) */
static inline __attribute__((always_inline)) void cv_store_lanes(float *d, v16f r, int l0, int n) {
#ifdef __AVX512F__
    _mm512_mask_storeu_ps(d - l0, (__mmask16)(((1u << n) - 1) << l0), (__m512)r);
#else
    for (int b = 0; b < n; b++) d[b] = r[l0 + b];
#endif
}

/* Register tiles of the term loops: CV_TQ positions (8 for TT = 2) x TT terms of one leaf, TT = 2, 3 (leaves of
 * 3, 6, 9 ... taps) or 4. */
#define CV_TQ 4
#define CV_GQ 4 /* positions of a weight-gradient pass (their inputs stay in registers) */
#define CV_GH 2 /* output vectors of a weight-gradient pass: independent chains of adds */
#define CV_TTMAX 4

/* The f0 terms of one leaf, term b at row r0 + b rs of wf and GW and at offset xo + b xd of a
 * position's xs and sums (channel-major trees: the taps of one channel, rows c T + t; tap-major
 * ones: channels of one tap, rows t C + c), at the block's CV_PB positions, whose dL/ds (OL
 * floats per position, rows `pstride` floats apart from km) LOADK gives:
 * gw[row] += x * dL/ds summed over the positions; sums[p, term] = dL/ds . w[:, term].
 * xs[p, t, c]: the inputs as floats (0 past the block's positions and at zero padding), both
 * (CV_PB, T + CV_TTMAX, C). Terms past the leaf's end are computed against zero weights into
 * the scratch row: their sums (0) land on the next leaf's terms, which that leaf then
 * overwrites. The sums are fused multiply-adds. */
#define CV_DEFINE_LEAF_TERMS(NAME, TT, TQ, LOADK)                                                          \
    __attribute__((optimize("fp-contract=fast")))                                                \
    static void NAME(const cv_args *A, int f0, size_t r0, size_t rs, size_t xo, size_t xd,        \
                     const float *km, size_t pstride, float gk,                                   \
                     const uint16_t *m16, size_t mstride, const float *xs, const float *wf,       \
                     float *GW, float *sums, const float *zrow, float *srow, int OL) {            \
        const int T = A->kh * A->kw, HC = (A->Co + 15) / 16; /* lanes >= Co: 0 */                 \
        (void)gk, (void)m16, (void)mstride; /* the row variant reads km alone */                  \
        const size_t TS = (size_t)(T + CV_TTMAX) * A->C; /* xs, sums: a position's stride */     \
        for (int tb = 0; tb < f0; tb += TT) {                                                     \
            float *gr[TT];                                                                        \
            const float *wr[TT];                                                                  \
            for (int b = 0; b < TT; b++) {                                                        \
                const size_t r = r0 + (size_t)(tb + b) * rs;                                      \
                const int on = tb + b < f0;                                                       \
                gr[b] = on ? GW + r * OL : srow;                                                  \
                wr[b] = on ? wf + r * OL : zrow;                                                  \
            }                                                                                     \
            for (int qb = 0; qb < CV_PB; qb += CV_GQ) { /* weight gradient: inputs in registers, */ \
                v16f xv[CV_GQ][TT];                        /* CV_GH vectors of outputs at once */ \
                for (int q = 0; q < CV_GQ; q++)                                                   \
                    for (int b = 0; b < TT; b++)                                                  \
                        xv[q][b] = (v16f){0} + xs[(qb + q) * TS + xo + (size_t)(tb + b) * xd];      \
                int h = 0;                                                                        \
                for (; h + CV_GH <= HC; h += CV_GH) {                                             \
                    v16f acc[CV_GH][TT];                                                          \
                    for (int e = 0; e < CV_GH; e++)                                               \
                        for (int b = 0; b < TT; b++) acc[e][b] = *(const v16fu *)(gr[b] + 16 * (h + e)); \
                    for (int q = 0; q < CV_GQ; q++)                                               \
                        for (int e = 0; e < CV_GH; e++) {                                         \
                            const v16f k = LOADK(qb + q, h + e); \
                            for (int b = 0; b < TT; b++) acc[e][b] += xv[q][b] * k;               \
                        }                                                                         \
                    for (int e = 0; e < CV_GH; e++)                                               \
                        for (int b = 0; b < TT; b++) *(v16fu *)(gr[b] + 16 * (h + e)) = acc[e][b]; \
                }                                                                                 \
                for (; h < HC; h++) {                                                             \
                    v16f acc[TT];                                                                 \
                    for (int b = 0; b < TT; b++) acc[b] = *(const v16fu *)(gr[b] + 16 * h);       \
                    for (int q = 0; q < CV_GQ; q++) {                                             \
                        const v16f k = LOADK(qb + q, h);        \
                        for (int b = 0; b < TT; b++) acc[b] += xv[q][b] * k;                      \
                    }                                                                             \
                    for (int b = 0; b < TT; b++) *(v16fu *)(gr[b] + 16 * h) = acc[b];             \
                }                                                                                 \
            }                                                                                     \
            for (int qb = 0; qb < CV_PB; qb += TQ) { /* input gradient: tiles of dot products */   \
                v16f acc[16];                                                                     \
                for (int a = 0; a < 16; a++) acc[a] = (v16f){0};                                  \
                for (int h = 0; h < HC; h++) {                                                    \
                    v16f w[TT];                                                                   \
                    for (int b = 0; b < TT; b++) w[b] = *(const v16fu *)(wr[b] + 16 * h);         \
                    for (int a = 0; a < TQ; a++) {                                                \
                        const v16f k = LOADK(qb + a, h);        \
                        for (int b = 0; b < TT; b++) acc[a * TT + b] += k * w[b];                 \
                    }                                                                             \
                }                                                                                 \
                const v16f r = cv_sums16(acc);                                                    \
                if (xd == 1) /* a position's terms side by side: one store each */               \
                    for (int a = 0; a < TQ; a++)                                                  \
                        cv_store_lanes(sums + (qb + a) * TS + xo + tb, r, a * TT, TT);            \
                else                                                                              \
                    for (int a = 0; a < TQ; a++)                                                  \
                        for (int b = 0; b < TT; b++)                                              \
                            sums[(qb + a) * TS + xo + (size_t)(tb + b) * xd] = r[a * TT + b];       \
            }                                                                                     \
        }                                                                                         \
    }

/* a leaf's dL/ds at pair q, outputs 16 h ..: a row of km, or the root's dL/ds (km) times gk on
 * the lanes of the leaf's mask (64-bit words: pair q's word w at m16 + 4 (w mstride + q), 16
 * bits per vector of outputs) */
#define CV_ROW(q, h) (*(const v16fu *)(km + (size_t)(q) * pstride + 16 * (h)))
#define CV_MASKED(q, h) \
    masked_mul(*(const v16fu *)(km + (size_t)(q) * pstride + 16 * (h)), gk, \
               m16[(((size_t)(h) >> 2) * mstride + (size_t)(q)) * 4 + ((h) & 3)])
CV_DEFINE_LEAF_TERMS(cv_leaf_terms2, 2, 8, CV_ROW)
CV_DEFINE_LEAF_TERMS(cv_leaf_terms3, 3, CV_TQ, CV_ROW)
CV_DEFINE_LEAF_TERMS(cv_leaf_terms4, 4, CV_TQ, CV_ROW)
CV_DEFINE_LEAF_TERMS(cv_leaf_masked2, 2, 8, CV_MASKED)
CV_DEFINE_LEAF_TERMS(cv_leaf_masked3, 3, CV_TQ, CV_MASKED)
CV_DEFINE_LEAF_TERMS(cv_leaf_masked4, 4, CV_TQ, CV_MASKED)

typedef void (*cv_tile_fn)(const cv_args *, int, size_t, size_t, size_t, size_t, const float *, size_t, float,
                           const uint16_t *, size_t, const float *, const float *, float *, float *, const float *,
                           float *, int);

/* the tiles for leaves of f0 terms: 2 terms at a time for leaves of 1 or 2, 3 for multiples
 * of 3 that are not of 4, else 4 (the last tile of a leaf may run past its end) */
static cv_tile_fn cv_tiles(int f0, int masked) {
    if (f0 <= 2) return masked ? cv_leaf_masked2 : cv_leaf_terms2;
    if (f0 % 3 == 0 && f0 % 4) return masked ? cv_leaf_masked3 : cv_leaf_terms3;
    return masked ? cv_leaf_masked4 : cv_leaf_terms4;
}

#define CV_PLANES 24 /* bit planes of a root count */
#define CV_SCRATCH (2u << 20) /* bytes of a thread's group scratch, about: 8 to 64 images */

/* dst[s * ds + r] = src[r * ss + s] for an R x S matrix, in 16 x 16 tiles: whole tiles in
 * registers (four rounds of interleaving row i with row i + 8 transpose 16 rows of 16), the
 * edges element by element. */
static void cv_transpose(const float *src, size_t ss, float *dst, size_t ds, int R, int S) {
    for (int r0 = 0; r0 < R; r0 += 16)
        for (int s0 = 0; s0 < S; s0 += 16) {
            const int r1 = r0 + 16 < R ? r0 + 16 : R, s1 = s0 + 16 < S ? s0 + 16 : S;
            if (r1 - r0 == 16 && s1 - s0 == 16) {
                v16f a[16], b[16];
                for (int i = 0; i < 16; i++) a[i] = *(const v16fu *)(src + (size_t)(r0 + i) * ss + s0);
                for (int round = 0; round < 4; round++) {
                    for (int i = 0; i < 8; i++) {
                        b[2 * i] = __builtin_shufflevector(a[i], a[i + 8], 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6,
                                                           22, 7, 23);
                        b[2 * i + 1] = __builtin_shufflevector(a[i], a[i + 8], 8, 24, 9, 25, 10, 26, 11, 27, 12, 28,
                                                               13, 29, 14, 30, 15, 31);
                    }
                    memcpy(a, b, sizeof(a));
                }
                for (int i = 0; i < 16; i++) *(v16fu *)(dst + (size_t)(s0 + i) * ds + r0) = a[i];
                continue;
            }
            for (int r = r0; r < r1; r++)
                for (int c = s0; c < s1; c++) dst[(size_t)c * ds + r] = src[(size_t)r * ss + c];
        }
}

/* first tap of leaf li of one channel (channel-major trees) */
#define leaf_t0(li) ((li) / nleaf * u + (li) % nleaf * A->fan[0])

/* gx: (N, C, H, W), every element written; gw: (C * T, 64 OW) zeroed, rows in wi's order.
 * Returns 1 out of memory, 2 where a leaf's factors take more than CV_MAXQ values, or a
 * tap-major level's more than CV_MAXQ or a class more than TV_MAXR ranges of counts (the
 * caller then takes another path). A thread takes its images a group at a time: their output gradient (channels
 * last) and padded input gradient live in its scratch, and only the finished input gradient
 * is written out. */
int cv_backward(const cv_args *A, float *gx, float *gw) {
    const int T = A->kh * A->kw, C = A->C, OW = A->OW, OL = 64 * OW, H16 = OL / 16, HC = (A->Co + 15) / 16,
              TM = A->tap_major, u = (TM ? C : T) / A->m;
    const size_t HW = (size_t)A->Ho * A->Wo, GWN = (size_t)C * T * OL;
    int NL = 1, lev0[CV_MAXLEV + 1] = {0};
    if (!TM) {
        int cnt = u;
        NL = 0;
        for (int l = 0; l < A->nlev; l++) { lev0[l] = NL; cnt /= A->fan[l]; NL += cnt; }
        lev0[A->nlev] = NL;
    }
    const int nleaf = TM ? 1 : lev0[1], LC = TM ? 1 : A->m * nleaf;  /* leaves per channel */
    /* tap-major: the leaf level and the per-tap voters' (the same level where it is one deep) */
    tv_level TL[2];
    memset(TL, 0, sizeof(TL));
    const int f0 = A->fan[0], nl = TM ? u / f0 : 1, LT = A->m * nl;  /* leaves per tap voter, per tap */
    if (TM) {
        for (int l = 0; l < A->nlev; l++)
            if (tv_level_setup(A, &TL[l], A->fan[l], A->tie[l], A->sigma[l])) return 2;
        if (A->nlev == 1) TL[1] = TL[0];
    }
    const tv_level *Lf = &TL[0], *Lt = &TL[1];
    const int NQT = TM ? Lt->nq : 0, NQL = TM && A->nlev == 2 ? Lf->nq : 0;
    int nplanes = 1;                               /* bit planes of a root count (<= m C, m T) */
    while (nplanes < CV_PLANES && (1L << nplanes) <= (long)A->m * (TM ? T : C)) nplanes++;
    int nt = A->nthreads > 0 ? A->nthreads : 1;
    if (nt > A->N) nt = A->N;
    /* the weights as words (C, T, OW), bit o % 64 of word o / 64 set where w[o, c, t] = +1,
     * and as +/-1 floats (C, T, 64 OW), 0 from Co on; the output positions grouped by their
     * live taps (the program), so that every block of CV_PB positions runs one program */
    uint64_t *wb = calloc((size_t)C * T * OW, sizeof(uint64_t));
    float *wf = calloc((size_t)C * T * OL, sizeof(float));
    uint64_t *key = malloc(sizeof(uint64_t) * HW);
    int *order = malloc(sizeof(int) * HW), *gstart = malloc(sizeof(int) * (HW + 1)), nprog = 0;
    uint8_t *done = calloc(HW, 1);
    float *gwt = nt > 1 ? calloc((size_t)(nt - 1) * GWN, sizeof(float)) : NULL;
    int err = !wb || !wf || !key || !order || !gstart || !done || (nt > 1 && !gwt);
    if (err) goto out;
    for (size_t r = 0; r < (size_t)C * T; r++)
        for (int o = 0; o < A->Co; o++) {
            const int pos = A->wi[r * A->Cp + o] > 0;
            wb[r * OW + o / 64] |= (uint64_t)pos << (o % 64);
            wf[r * OL + o] = pos ? 1.0f : -1.0f;
        }
    for (size_t r = 0; r < HW; r++) {
        const int y0 = (int)(r / A->Wo) * A->sh - A->ph, x0 = (int)(r % A->Wo) * A->sw - A->pw;
        uint64_t live = 0;
        for (int i = 0; i < A->kh; i++)
            for (int j = 0; j < A->kw; j++) {
                const int y = y0 + i * A->dh, x = x0 + j * A->dw;
                if (!A->zero_pad || (y >= 0 && y < A->H && x >= 0 && x < A->W)) live |= 1ull << (i * A->kw + j);
            }
        key[r] = live;
    }
    {
        size_t n = 0;
        for (size_t r = 0; r < HW; r++) {
            if (done[r]) continue;
            gstart[nprog++] = (int)n;
            for (size_t q = r; q < HW; q++)
                if (!done[q] && key[q] == key[r]) { done[q] = 1; order[n++] = (int)q; }
        }
        gstart[nprog] = (int)n;
    }
#pragma omp parallel num_threads(nt) reduction(| : err)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *GW = tid ? gwt + (size_t)(tid - 1) * GWN : gw;
        cv_prog *prog = malloc(sizeof(cv_prog) * nprog);
        int ok = prog != NULL;
        for (int g = 0; ok && g < nprog; g++) {
            prog[g].node = malloc(sizeof(cv_node) * A->m * NL);
            ok &= prog[g].node != NULL;
            prog[g].NL = NL;
            memcpy(prog[g].lev0, lev0, sizeof(lev0));
            if (ok) (TM ? tv_prog_setup : cv_prog_setup)(A, &prog[g], key[order[gstart[g]]]);
        }
        size_t pix[CV_PB][64];
        v16f *K = aligned_alloc(64, sizeof(float) * CV_PB * OL);          /* per position: the root's dL/ds */
        v16f *KM = aligned_alloc(64, sizeof(float) * CV_PB * LC * OL);    /* per position, leaf: its dL/ds */
        /* the block's inputs and input-gradient sums (CV_PB, T + CV_TTMAX, C): taps past T stay 0 */
        float *XS = calloc((size_t)CV_PB * (T + CV_TTMAX) * C, sizeof(float));
        float *SS = calloc((size_t)CV_PB * (T + CV_TTMAX) * C, sizeof(float));
        v8u *vc8 = aligned_alloc(64, sizeof(v8u) * (CV_PB / CV_VB) * OW * CV_PLANES); /* count planes, lane = pair */
        v8u *z8 = aligned_alloc(64, sizeof(v8u) * T), *vote8 = aligned_alloc(64, sizeof(v8u) * NL);
        v8u (*qm8)[CV_MAXFAN + 1] = aligned_alloc(64, sizeof(*qm8) * NL);
        v8u sg[64];                                                      /* per tap: lanes where x = -1 */
        uint64_t *z = malloc(sizeof(uint64_t) * T);
        uint64_t *vote = malloc(sizeof(uint64_t) * NL);
        uint64_t (*qm)[CV_MAXFAN + 1] = malloc(sizeof(*qm) * NL);
        /* per channel, word, leaf, position: the leaf's mask of outputs (simple programs) */
        v8u *lm = aligned_alloc(64, sizeof(v8u) * (CV_PB / CV_VB) * C * OW * LC);
        float *zrow = calloc((size_t)2 * OL, sizeof(float)), *srow = zrow ? zrow + OL : NULL; /* zeros; scratch */
        /* tap-major: per channel the sub-block's input signs and term words; per (tap, word,
         * tap voter or leaf, factor class) the masks of the block's pairs (64-bit words, pair
         * innermost); per pair the tap voters' dL/ds (one tap at a time) and, where the leaves
         * take several factors, each leaf's */
        const size_t tmn = TM ? (size_t)T * OW * A->m * (NQT ? NQT : 1) * (CV_PB / CV_VB) : 1,
                     lmn = TM ? (size_t)T * OW * LT * (NQL ? NQL : 1) * (CV_PB / CV_VB) : 1;
        v8u *sgt = aligned_alloc(64, sizeof(v8u) * (TM ? C : 1)), *zt = aligned_alloc(64, sizeof(v8u) * (TM ? C : 1));
        v8u *lvt = aligned_alloc(64, sizeof(v8u) * nl);  /* the leaf votes under one tap voter */
        v8u *tmask = aligned_alloc(64, sizeof(v8u) * tmn), *lmask = aligned_alloc(64, sizeof(v8u) * lmn);
        v16f *KT = aligned_alloc(64, sizeof(float) * CV_PB * (TM ? A->m : 1) * OL);
        v16f *KMT = aligned_alloc(64, sizeof(float) * (NQL > 1 ? (size_t)CV_PB * LT * OL : 16));
        if (!lm || !zrow || !XS || !SS || !vc8 || !z8 || !vote8 || !qm8 || !sgt || !zt || !lvt || !tmask || !lmask ||
            !KT || !KMT || !ok || !K || !KM || !z || !vote || !qm) err = 1;
        const int b0 = (int)((size_t)A->N * tid / nt), b1 = (int)((size_t)A->N * (tid + 1) / nt);
        const size_t IMG = (size_t)A->Hp * A->Wp * C;  /* floats of one padded image's gx */
        size_t ig = CV_SCRATCH / (sizeof(float) * (IMG + HW * A->Co));
        const int IG = ig < 8 ? 8 : ig > 64 ? 64 : (int)ig;  /* images of a group */
        float *Xg = malloc(sizeof(float) * IG * IMG), *Gg = malloc(sizeof(float) * IG * HW * A->Co);
        if (!Xg || !Gg) err = 1;
        for (int gb = b0; gb < b1 && !err; gb += IG) {
        const int nbg = b1 - gb < IG ? b1 - gb : IG;
        const size_t xoff = (size_t)gb * IMG;  /* the group's first pixel in x */
        memset(Xg, 0, sizeof(float) * nbg * IMG);
        for (int i = 0; i < nbg; i++)  /* the output gradient, channels last */
            cv_transpose(A->g + (size_t)(gb + i) * A->Co * HW, HW, Gg + (size_t)i * HW * A->Co, A->Co, A->Co, (int)HW);
        for (int g = 0; g < nprog && !err; g++) {
            const int gs = gstart[g + 1] - gstart[g];
            const size_t total = (size_t)nbg * gs;  /* (image, position) pairs of this program */
            for (size_t r0 = 0; r0 < total && !err; r0 += CV_PB) {
                const int np = total - r0 < CV_PB ? (int)(total - r0) : CV_PB;
                const cv_prog *P = &prog[g];
                /* the block: pairs of one program (lanes past np repeat the first) */
                size_t gofs[CV_PB];  /* each pair's output gradient row */
                for (int p = 0; p < CV_PB; p++) {
                    const size_t e = r0 + (p < np ? p : 0);
                    const int b = gb + (int)(e / gs), r = order[gstart[g] + (int)(e % gs)];
                    const int ho = r / A->Wo, wo = r % A->Wo;
                    const size_t base = (((size_t)b * A->Hp + (size_t)ho * A->sh) * A->Wp + (size_t)wo * A->sw) * C;
                    for (int t = 0; t < T; t++) pix[p][t] = base + (size_t)A->tap_off[t];
                    gofs[p] = ((size_t)(b - gb) * HW + r) * A->Co;
                }
                /* root counts (bit planes, lane = position) and leaf masks, CV_VB pairs at a time */
                memset(vc8, 0, sizeof(v8u) * (CV_PB / CV_VB) * OW * CV_PLANES);
                for (int sb = 0; sb * CV_VB < np && (!A->root_p || P->simple); sb++) {
#ifdef __AVX512F__
                    __m512i idx[64];  /* per tap: the sub-block's pixels */
                    for (int t = 0; t < T; t++) {
                        int64_t v[CV_VB];
                        for (int p = 0; p < CV_VB; p++) v[p] = (int64_t)pix[sb * CV_VB + p][t];
                        idx[t] = _mm512_loadu_si512(v);
                    }
#endif
                    for (int t = 0; TM && t < T; t++) {  /* tap-major: tap by tap, its voters over channels */
                        if (!P->tap_live[t]) continue;
                        for (int c0 = 0; c0 < C; c0 += 8) {  /* 8 channels' bytes from each pixel */
                            const int nc = C - c0 < 8 ? C - c0 : 8;
#ifdef __AVX512F__
                            const __m512i v = _mm512_i64gather_epi64(idx[t], (const void *)(A->x + c0), 1);
                            for (int k = 0; k < nc; k++)
                                sgt[c0 + k] = (v8u)_mm512_srai_epi64(_mm512_slli_epi64(v, 56 - 8 * k), 63);
#else
                            for (int k = 0; k < nc; k++)
                                for (int p = 0; p < CV_VB; p++)
                                    sgt[c0 + k][p] = A->x[pix[sb * CV_VB + p][t] + c0 + k] < 0 ? ~0ull : 0ull;
#endif
                        }
                        for (int w = 0; w < OW; w++) {
                            const uint64_t *wt = wb + (size_t)t * C * OW + w;
                            for (int c = 0; c < C; c++) zt[c] = sgt[c] ^ wt[(size_t)c * OW];
                            v8u *pl = vc8 + ((size_t)sb * OW + w) * CV_PLANES;
                            for (int j = 0; j < A->m; j++) {
                                const v8u *zj = zt + (size_t)j * u;
                                v8u tp[TV_PLANES], first;
                                if (A->nlev == 1) {
                                    tv_count(tp, Lt->np, zj, u);
                                    first = zj[0];
                                } else {
                                    v8u *lq = lmask + ((((size_t)t * OW + w) * LT + j * nl) * NQL) * (CV_PB / CV_VB) + sb;
                                    switch (f0) {  /* the common leaves with constant counters */
                                    case 2: tv_leaves(2, 2, Lf, zj, nl, lvt, lq, NQL); break;
                                    case 3: tv_leaves(3, 2, Lf, zj, nl, lvt, lq, NQL); break;
                                    case 4: tv_leaves(4, 3, Lf, zj, nl, lvt, lq, NQL); break;
                                    case 8: tv_leaves(8, 4, Lf, zj, nl, lvt, lq, NQL); break;
                                    case 16: tv_leaves(16, 5, Lf, zj, nl, lvt, lq, NQL); break;
                                    default: tv_leaves(f0, Lf->np, Lf, zj, nl, lvt, lq, NQL);
                                    }
                                    tv_count(tp, Lt->np, lvt, nl);
                                    first = lvt[0];
                                }
                                v8u *tq = tmask + ((((size_t)t * OW + w) * A->m + j) * NQT) * (CV_PB / CV_VB) + sb;
                                for (int q = 0; q < NQT; q++) tq[q * (CV_PB / CV_VB)] = tv_class(tp, Lt, q);
                                if (!A->root_p) tv_add(pl, nplanes, tv_vote(tp, Lt->np, Lt->fan, Lt->tie, first));
                            }
                        }
                    }
                    for (int c = 0; c < C && !TM; c++) {
                        const int8_t *xc = A->x + c;
#ifdef __AVX512F__
                        for (int t = 0; t < T; t++) {  /* 8 bytes from each pixel (the input has slack): the first's sign */
                            const __m512i v = _mm512_i64gather_epi64(idx[t], (const void *)xc, 1);
                            sg[t] = (v8u)_mm512_srai_epi64(_mm512_slli_epi64(v, 56), 63);
                        }
#else
                        for (int t = 0; t < T; t++)
                            for (int p = 0; p < CV_VB; p++) sg[t][p] = xc[pix[sb * CV_VB + p][t]] < 0 ? ~0ull : 0ull;
#endif
                        for (int w = 0; w < OW; w++) {
                            for (int t = 0; t < T; t++) z8[t] = sg[t] ^ wb[((size_t)c * T + t) * OW + w];
                            v8u *lmw = lm + (((size_t)c * OW + w) * LC) * (CV_PB / CV_VB) + sb;
                            v8u *pl = vc8 + ((size_t)sb * OW + w) * CV_PLANES;
                            for (int j = 0; j < A->m; j++) {
                                const cv_node *nd = P->node + (size_t)j * NL;
                                if (!nd[NL - 1].k) {  /* abstains: its leaves pass nothing */
                                    for (int i = 0; i < nleaf && P->simple; i++)
                                        lmw[(size_t)(j * nleaf + i) * (CV_PB / CV_VB)] = (v8u){0};
                                    continue;
                                }
                                cv_eval8(A, P, nd, j, z8, vote8, qm8, P->simple);
                                if (!A->root_p) tv_add(pl, nplanes, vote8[NL - 1]);  /* into the count planes */
                                if (!P->simple) continue;
                                for (int i = 0; i < nleaf; i++) {
                                    v8u mk = (v8u){0};
                                    if (nd[i].path == 1) {
                                        int node = i;
                                        mk = ~mk;
                                        for (int l = 0; ; l++) {
                                            mk &= qm8[node][0];
                                            if (l == A->nlev - 1) break;
                                            node = lev0[l + 1] + (node - lev0[l]) / A->fan[l + 1];
                                        }
                                    }
                                    lmw[(size_t)(j * nleaf + i) * (CV_PB / CV_VB)] = mk;
                                }
                            }
                        }
                    }
                }
                /* the root's dL/ds, 16 outputs at a time */
                const int kr = P->live_top * (TM ? A->m : C);
                for (int p = 0; p < np; p++) {
                    const float *gp = Gg + gofs[p];
                    for (int h = 0; h < HC; h++) {
                        const int o0 = 16 * h;
                        v16f gv = (v16f){0}, k;
                        if (o0 + 16 <= A->Co) gv = *(const v16fu *)(gp + o0);
                        else
                            for (int o = o0; o < A->Co; o++) gv[o - o0] = gp[o];
                        if (!kr) k = (v16f){0};
                        else if (A->root_p) k = gv;
                        else {
                            const v8u *pl = vc8 + ((size_t)(p / CV_VB) * OW + o0 / 64) * CV_PLANES;
                            v16i ones = {0};
                            for (int i = 0; i < nplanes; i++)
                                ones |= cv_lanes((uint32_t)(pl[i][p % CV_VB] >> (o0 % 64)) & 0xffffu) & (1 << i);
                            const v16f S = __builtin_convertvector(2 * ones - kr, v16f);
                            const float sig = P->sig_root;
                            if (A->surrogate == 1) {
                                const v16i keep = cv_le((v16f)((v16i)S & 0x7fffffff), A->clip * sig);
                                k = (v16f)((v16i)(gv / sig) & keep);
                            } else {
                                const v16f d = 2.0f - 2.0f * (v16f)((v16i)(S / sig) & 0x7fffffff);
                                k = (v16f)((v16i)d & ~cv_le(d, 0.0f)) * (gv / sig);
                            }
                        }
                        K[(size_t)p * H16 + h] = k;
                    }
                }
                /* the block's inputs as floats, channels contiguous */
                for (int p = 0; p < CV_PB; p++)
                    for (int t = 0; t < T; t++) {
                        float *d = XS + ((size_t)p * (T + CV_TTMAX) + t) * C;
                        const int8_t *xv = A->x + pix[p][t];
                        if (p < np)
                            cv_floats(xv, d, C);
                        else
                            memset(d, 0, sizeof(float) * C);
                    }
                if (np < CV_PB) memset(K + (size_t)np * H16, 0, sizeof(float) * (CV_PB - np) * OL);
                /* tap-major, tap by tap: each tap voter's dL/ds (the root's times its factor, by
                 * class), then the terms of its leaves (the tap voter's dL/ds on the leaf's mask
                 * times its factor; with several leaf factors, rows made first) */
                for (int t = 0; TM && t < T; t++) {
                    if (!P->tap_live[t]) continue;
                    const size_t TS = (size_t)(T + CV_TTMAX) * C, tc = (size_t)t * C;
                    if (A->nlev == 2 && !NQL) {  /* no leaf passes a gradient: the sums are 0 */
                        for (int p = 0; p < CV_PB; p++) memset(SS + p * TS + tc, 0, sizeof(float) * C);
                        continue;
                    }
for (int j = 0; j < A->m; j++)  /* the tap voters' dL/ds: the root's times their factors */
                        tv_by_class(K, H16, (const uint64_t *)tmask + ((size_t)t * OW * A->m + j) * NQT * CV_PB,
                                    (size_t)A->m * NQT * CV_PB, Lt->q, NQT, HC, KT + (size_t)j * H16, (size_t)A->m * H16);
                    if (A->nlev == 1) {
                        for (int j = 0; j < A->m; j++)
                            cv_tiles(u, 0)(
                                A, u, tc + (size_t)j * u, 1, tc + (size_t)j * u, 1, (const float *)(KT + (size_t)j * H16),
                                (size_t)A->m * OL, 0.0f, NULL, 0, XS, wf, GW, SS, zrow, srow, OL);
                        continue;
                    }
                    for (int li = 0; li < LT; li++) {
                        const int j = li / nl;
                        const size_t r0 = tc + (size_t)li * f0;
                        if (NQL == 1) {
                            cv_tiles(f0, 1)(
                                A, f0, r0, 1, r0, 1, (const float *)(KT + (size_t)j * H16), (size_t)A->m * OL, Lf->q[0],
                                (const uint16_t *)((const uint64_t *)lmask + ((size_t)t * OW * LT + li) * CV_PB),
                                (size_t)LT * CV_PB, XS, wf, GW, SS, zrow, srow, OL);
                            continue;
                        }
                        tv_by_class(KT + (size_t)j * H16, (size_t)A->m * H16,
                                    (const uint64_t *)lmask + ((size_t)t * OW * LT + li) * NQL * CV_PB,
                                    (size_t)LT * NQL * CV_PB, Lf->q, NQL, HC, KMT + (size_t)li * H16, (size_t)LT * H16);
                        cv_tiles(f0, 0)(
                            A, f0, r0, 1, r0, 1, (const float *)(KMT + (size_t)li * H16), (size_t)LT * OL, 0.0f, NULL, 0,
                            XS, wf, GW, SS, zrow, srow, OL);
                    }
                }
                /* channel by channel: each leaf's dL/ds (the root's on masks of outputs, times
                 * the factor products of the leaf's path), then its terms */
                for (int c = 0; c < C && !err && !TM; c++) {
                    const int8_t *xc = A->x + c;
                    if (P->simple) {  /* one factor per voter: dL/ds is the root's, scaled on a mask */
                        for (int li = 0; li < LC; li++)
                            cv_tiles(A->fan[0], 1)(
                                A, A->fan[0], (size_t)c * T + leaf_t0(li), 1, (size_t)leaf_t0(li) * C + c, C,
                                (const float *)K, (size_t)OL,
                                P->node[(size_t)(li / nleaf) * NL + li % nleaf].path_g,
                                (const uint16_t *)((const uint64_t *)lm + ((size_t)c * OW * LC + li) * CV_PB),
                                (size_t)LC * CV_PB, XS, wf, GW, SS, zrow, srow, OL);
                        continue;
                    }
                    for (int p = 0; p < np; p++) {
                        v16f *km = KM + (size_t)p * LC * H16;
                        const v16f *Kp = K + (size_t)p * H16;
                        memset(km, 0, sizeof(float) * LC * OL);
                        if (!P->live_top) continue;
                        for (int w = 0; w < OW; w++) {
                            for (int t = 0; t < T; t++)
                                z[t] = wb[((size_t)c * T + t) * OW + w] ^ (xc[pix[p][t]] < 0 ? ~0ull : 0ull);
                            for (int j = 0; j < A->m; j++) {
                                const cv_node *nd = P->node + (size_t)j * NL;
                                if (!nd[NL - 1].k) continue;
                                cv_eval(A, P, nd, j, z, vote, qm, 1);
                                for (int i = 0; i < nleaf; i++) {
                                    if (!nd[i].path) continue;
                                    /* leaf i's path to the top, its classes multiplied out */
                                    uint64_t mk[CV_MAXQ];
                                    float gk[CV_MAXQ];
                                    int nq = 1, node = i;
                                    mk[0] = ~0ull;
                                    gk[0] = 1.0f;
                                    if (nd[i].path == 1) {  /* one factor per voter: one mask */
                                        for (int l = 0; ; l++) {
                                            mk[0] &= qm[node][0];
                                            if (l == A->nlev - 1) break;
                                            node = lev0[l + 1] + (node - lev0[l]) / A->fan[l + 1];
                                        }
                                        gk[0] = nd[i].path_g;
                                        nq = mk[0] != 0;
                                    }
                                    for (int l = 0; nd[i].path == 2; l++) {
                                        const cv_node *n = nd + node;
                                        uint64_t m2[CV_MAXQ];
                                        float g2[CV_MAXQ];
                                        int nn = 0;
                                        for (int a = 0; a < nq; a++)
                                            for (int q = 0; q < n->nq; q++) {
                                                uint64_t mm = mk[a] & qm[node][q];
                                                if (!mm) continue;
                                                if (nn == CV_MAXQ) { err = 2; continue; }
                                                m2[nn] = mm;
                                                g2[nn++] = gk[a] * n->q[q];
                                            }
                                        nq = nn;
                                        memcpy(mk, m2, sizeof(uint64_t) * nn);
                                        memcpy(gk, g2, sizeof(float) * nn);
                                        if (!nq || l == A->nlev - 1) break;
                                        node = lev0[l + 1] + (node - lev0[l]) / A->fan[l + 1];
                                    }
                                    if (!nq) continue;
                                    v16f *kl = km + (size_t)(j * nleaf + i) * H16 + 4 * w;
                                    for (int h = 0; h < 4 && 4 * w + h < HC; h++) {
                                        v16f acc = kl[h];
                                        for (int a = 0; a < nq; a++) {
                                            const uint32_t m16 = (uint32_t)(mk[a] >> (16 * h)) & 0xffffu;
                                            if (m16) acc = masked_fma(acc, Kp[4 * w + h], gk[a], m16);
                                        }
                                        kl[h] = acc;
                                    }
                                }
                            }
                        }
                    }
                    if (err) break;
                    /* the channel's terms, leaf by leaf: taps of one leaf share its dL/ds */
                    if (np < CV_PB) memset(KM + (size_t)np * LC * H16, 0, sizeof(float) * (CV_PB - np) * LC * OL);
                    for (int li = 0; li < LC; li++)
                        cv_tiles(A->fan[0], 0)(
                            A, A->fan[0], (size_t)c * T + leaf_t0(li), 1, (size_t)leaf_t0(li) * C + c, C,
                            (const float *)(KM + (size_t)li * H16), (size_t)LC * OL, 0.0f, NULL, 0, XS, wf, GW, SS,
                            zrow, srow, OL);
                }
                for (int p = 0; p < np; p++)  /* the block's input gradient, channels contiguous */
                    for (int t = 0; t < T; t++) {
                        if (TM && !P->tap_live[t]) continue;  /* never written */
                        float *d = Xg + (pix[p][t] - xoff);
                        const float *sv = SS + ((size_t)p * (T + CV_TTMAX) + t) * C;
                        for (int c = 0; c < C; c++) d[c] += sv[c];
                    }
            }
        }
        for (int i = 0; i < nbg; i++)  /* the group's input gradient, unpadded, channels first */
            for (int y = 0; y < A->H; y++)
                cv_transpose(Xg + i * IMG + ((size_t)(y + A->ph) * A->Wp + A->pw) * C, C,
                             gx + ((size_t)(gb + i) * C * A->H + y) * A->W, (size_t)A->H * A->W, A->W, C);
        }
        free(Xg);
        free(Gg);
        for (int g = 0; prog && g < nprog; g++) free(prog[g].node);
        free(prog);
        free(sgt); free(zt); free(lvt); free(tmask); free(lmask); free(KT); free(KMT);
        free(lm); free(zrow); free(XS); free(SS); free(K); free(KM); free(vc8); free(z8); free(vote8); free(qm8); free(z); free(vote); free(qm);
    }
    if (gwt && !err)
        for (int t = 0; t + 1 < nt; t++) {
            const float *src = gwt + (size_t)t * GWN;
            for (size_t k = 0; k < GWN; k++) gw[k] += src[k];
        }
out:
    free(gwt);
    free(key);
    free(order);
    free(gstart);
    free(done);
    free(wb);
    free(wf);
    return err;
}
