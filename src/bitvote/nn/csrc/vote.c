/* Votes of a binary conv through any voter tree, and their surrogate gradient, from bits.
 *
 * Per output position the n terms are packed in their flat order (tap-major or channel-major)
 * as XNOR-able words plus a valid mask (zero padding); per output channel the leaf sums are
 * masked popcounts, and the tree's levels (ties, abstention, `first`, a `P` root) are walked
 * on small integer arrays. Nothing of size (leaves x outputs) is ever stored: the backward
 * recomputes the sums from the same bits, derives the surrogate chain root -> leaf, and
 * accumulates only the leaves whose chain is non-zero straight into the input and weight
 * gradients. The semantics are bitvote.voter.reduce_votes'; Python checks they agree.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    const int8_t *x;      /* padded channels-last input (N, Hp, Wp, C): +1, -1, 0 = invalid */
    const int8_t *w;      /* weights in flat term order (Co, n): +1 / -1 */
    int N, Hp, Wp, C, Co, kh, kw, sh, sw, dh, dw, Ho, Wo;
    int order;            /* 0: i = tap * C + c, 1: i = c * taps + tap */
    int n, NW;            /* terms, 64-bit words per packed vector */
    int nodes;            /* voters over all levels, leaves first, level by level */
    int nlev;
    const int32_t *lev_first;  /* nlev + 1: index of each level's first node */
    const int32_t *leaf_seg;   /* leaves + 1: segment range of each leaf */
    const int32_t *seg_word;
    const uint64_t *seg_mask;
    const int32_t *leaf_start; /* leaves + 1: flat term boundaries */
    const int32_t *child0;     /* per node above the leaves: its first child (node index) */
    const int32_t *parent;     /* per node below the root: its parent */
    const int32_t *lev_tie;    /* per level: 1, -1, or 2 = first */
    const float *sigma;        /* per node: nominal sigma (fanin rule or factor; 1 for unit) */
    int sigma_valid;           /* 1: sigma = sqrt(max(live inputs, 1)) instead */
    int root_p;                /* 1: the root counts its children's votes */
    int surrogate;             /* 0: approxsign, 1: ste */
    float clip;
    int nthreads;
} bvt_args;

int bvt_struct_size(void) { return (int)sizeof(bvt_args); }

/* Per output position: packed term bits, valid bits, live-input counts and first live input. */
typedef struct {
    uint64_t *a, *v;
    int32_t *cnt;    /* per node: valid terms (leaf) or non-abstaining children */
    int32_t *first;  /* per node: first valid term (leaf, flat index) or first live child; -1 none */
    float *sig;      /* per node: the sigma in use here */
    int32_t *s;      /* per node: the sum (per output channel) */
    int8_t *vote;
    float *coef;     /* per node: dL/ds (backward) */
} pos_t;

static void pos_alloc(const bvt_args *A, pos_t *P) {
    P->a = calloc((size_t)A->NW, 8);
    P->v = calloc((size_t)A->NW, 8);
    P->cnt = malloc(sizeof(int32_t) * A->nodes);
    P->first = malloc(sizeof(int32_t) * A->nodes);
    P->sig = malloc(sizeof(float) * A->nodes);
    P->s = malloc(sizeof(int32_t) * A->nodes);
    P->vote = malloc((size_t)A->nodes);
    P->coef = malloc(sizeof(float) * A->nodes);
}

static void pos_free(pos_t *P) {
    free(P->a); free(P->v); free(P->cnt); free(P->first); free(P->sig); free(P->s); free(P->vote);
    free(P->coef);
}

static inline const int8_t *pixel(const bvt_args *A, int b, int ho, int wo, int t) {
    int i = t / A->kw, j = t % A->kw;
    return A->x + (((size_t)b * A->Hp + ho * A->sh + i * A->dh) * A->Wp + wo * A->sw + j * A->dw) * A->C;
}

/* Pack one position's terms and derive everything that depends only on validity. */
static void pos_setup(const bvt_args *A, pos_t *P, int b, int ho, int wo) {
    const int T = A->kh * A->kw, C = A->C;
    memset(P->a, 0, 8 * (size_t)A->NW);
    memset(P->v, 0, 8 * (size_t)A->NW);
    for (int t = 0; t < T; t++) {
        const int8_t *px = pixel(A, b, ho, wo, t);
        for (int c = 0; c < C; c++) {
            int i = A->order ? c * T + t : t * C + c;
            int8_t x = px[c];
            uint64_t bit = 1ull << (i & 63);
            if (x > 0) P->a[i >> 6] |= bit;
            if (x != 0) P->v[i >> 6] |= bit;
        }
    }
    const int L = A->lev_first[1];
    for (int l = 0; l < L; l++) {
        int c = 0;
        for (int k = A->leaf_seg[l]; k < A->leaf_seg[l + 1]; k++)
            c += __builtin_popcountll(P->v[A->seg_word[k]] & A->seg_mask[k]);
        P->cnt[l] = c;
        int f = -1;
        if (c) {
            for (int k = A->leaf_seg[l]; k < A->leaf_seg[l + 1]; k++) {
                uint64_t m = P->v[A->seg_word[k]] & A->seg_mask[k];
                if (m) { f = A->seg_word[k] * 64 + __builtin_ctzll(m); break; }
            }
        }
        P->first[l] = f;
    }
    for (int li = 1; li < A->nlev; li++) {
        for (int j = A->lev_first[li]; j < A->lev_first[li + 1]; j++) {
            int c0 = A->child0[j], c1 = j + 1 < A->lev_first[li + 1] ? A->child0[j + 1] : A->lev_first[li];
            int c = 0, f = -1;
            for (int k = c0; k < c1; k++)
                if (P->cnt[k] > 0) { if (f < 0) f = k; c++; }
            P->cnt[j] = c;
            P->first[j] = f;
        }
    }
    for (int j = 0; j < A->nodes; j++)
        P->sig[j] = A->sigma_valid ? sqrtf((float)(P->cnt[j] > 1 ? P->cnt[j] : 1)) : A->sigma[j];
}

/* Sums and votes of every node for output channel co; returns the root's output. */
static inline float pos_eval(const bvt_args *A, pos_t *P, const uint64_t *wbits) {
    const int L = A->lev_first[1], root = A->nodes - 1, NW = A->NW;
    uint64_t xn[NW];
    for (int k = 0; k < NW; k++) xn[k] = ~(P->a[k] ^ wbits[k]) & P->v[k];
    int tie = A->lev_tie[0];
    for (int l = 0; l < L; l++) {
        int pc = 0;
        for (int k = A->leaf_seg[l]; k < A->leaf_seg[l + 1]; k++)
            pc += __builtin_popcountll(xn[A->seg_word[k]] & A->seg_mask[k]);
        int s = 2 * pc - P->cnt[l];
        P->s[l] = s;
        int8_t v;
        if (s) v = s > 0 ? 1 : -1;
        else if (P->cnt[l] == 0) v = (l == root) ? (int8_t)(tie == 2 ? 1 : tie) : 0;
        else if (tie == 2) { int f = P->first[l]; v = (xn[f >> 6] >> (f & 63)) & 1 ? 1 : -1; }
        else v = (int8_t)tie;
        P->vote[l] = v;
    }
    for (int li = 1; li < A->nlev; li++) {
        int j1 = A->lev_first[li + 1];
        tie = A->lev_tie[li];
        for (int j = A->lev_first[li]; j < j1; j++) {
            int c0 = A->child0[j], c1 = j + 1 < j1 ? A->child0[j + 1] : A->lev_first[li];
            int s = 0;
            for (int k = c0; k < c1; k++) s += P->vote[k];
            P->s[j] = s;
            int8_t v;
            if (s) v = s > 0 ? 1 : -1;
            else if (P->cnt[j] == 0) v = (j == root) ? (int8_t)(tie == 2 ? 1 : tie) : 0;
            else if (tie == 2) v = P->vote[P->first[j]];
            else v = (int8_t)tie;
            P->vote[j] = v;
        }
    }
    return A->root_p ? (float)P->s[root] : (float)P->vote[root];
}

static inline float deriv(const bvt_args *A, float g, int s, float sig) {
    float u = (float)s / sig;
    if (A->surrogate == 1) return fabsf((float)s) <= A->clip * sig ? g / sig : 0.0f;
    float d = 2.0f - 2.0f * fabsf(u);
    return d > 0.0f ? d * (g / sig) : 0.0f;
}

static void pack_weights(const bvt_args *A, uint64_t *wb) {
    memset(wb, 0, 8 * (size_t)A->Co * A->NW);
    for (int o = 0; o < A->Co; o++)
        for (int i = 0; i < A->n; i++)
            if (A->w[(size_t)o * A->n + i] > 0) wb[(size_t)o * A->NW + (i >> 6)] |= 1ull << (i & 63);
}

/* out: (N, Co, Ho, Wo) */
int bvt_forward(const bvt_args *A, float *out) {
    uint64_t *wb = malloc(8 * (size_t)A->Co * A->NW);
    if (!wb) return 1;
    pack_weights(A, wb);
    const size_t HW = (size_t)A->Ho * A->Wo;
#pragma omp parallel num_threads(A->nthreads)
    {
        pos_t P;
        pos_alloc(A, &P);
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < A->N; b++)
            for (int ho = 0; ho < A->Ho; ho++)
                for (int wo = 0; wo < A->Wo; wo++) {
                    pos_setup(A, &P, b, ho, wo);
                    float *o = out + (size_t)b * A->Co * HW + (size_t)ho * A->Wo + wo;
                    for (int co = 0; co < A->Co; co++)
                        o[co * HW] = pos_eval(A, &P, wb + (size_t)co * A->NW);
                }
        pos_free(&P);
    }
    free(wb);
    return 0;
}

/* g: (N, Co, Ho, Wo); gx: (N, Hp, Wp, C) zeroed; gw: (Co, n) zeroed, flat term order. */
int bvt_backward(const bvt_args *A, const float *g, float *gx, float *gw) {
    uint64_t *wb = malloc(8 * (size_t)A->Co * A->NW);
    if (!wb) return 1;
    pack_weights(A, wb);
    const size_t HW = (size_t)A->Ho * A->Wo, CN = (size_t)A->Co * A->n;
    const int T = A->kh * A->kw, C = A->C, L = A->lev_first[1], root = A->nodes - 1;
    int nt = A->nthreads > 0 ? A->nthreads : 1;
    if (nt > A->N) nt = A->N;
    float *gwt = calloc((size_t)nt * CN, sizeof(float));
    if (!gwt) { free(wb); return 1; }
#pragma omp parallel num_threads(nt)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *gwl = gwt + (size_t)tid * CN;
        pos_t P;
        pos_alloc(A, &P);
        size_t pix[T];
#pragma omp for schedule(static)
        for (int b = 0; b < A->N; b++)
            for (int ho = 0; ho < A->Ho; ho++)
                for (int wo = 0; wo < A->Wo; wo++) {
                    pos_setup(A, &P, b, ho, wo);
                    for (int t = 0; t < T; t++) pix[t] = (size_t)(pixel(A, b, ho, wo, t) - A->x);
                    const float *gp = g + (size_t)b * A->Co * HW + (size_t)ho * A->Wo + wo;
                    for (int co = 0; co < A->Co; co++) {
                        float go = gp[co * HW];
                        if (go == 0.0f) continue;
                        pos_eval(A, &P, wb + (size_t)co * A->NW);
                        P.coef[root] = A->root_p ? go : deriv(A, go, P.s[root], P.sig[root]);
                        for (int j = root - 1; j >= 0; j--) {
                            float cp = P.coef[A->parent[j]];
                            /* an abstaining voter has no valid term below it: nothing to pass */
                            P.coef[j] = (cp != 0.0f && P.cnt[j] > 0) ? deriv(A, cp, P.s[j], P.sig[j]) : 0.0f;
                        }
                        const int8_t *wr = A->w + (size_t)co * A->n;
                        float *gwr = gwl + (size_t)co * A->n;
                        for (int l = 0; l < L; l++) {
                            float cf = P.coef[l];
                            if (cf == 0.0f) continue;
                            int i = A->leaf_start[l], e = A->leaf_start[l + 1];
                            if (A->order == 0) {
                                while (i < e) {  /* runs of channels inside one tap */
                                    int t = i / C, c = i % C, r = C - c < e - i ? C - c : e - i;
                                    float *gxr = gx + pix[t] + c;
                                    const int8_t *xr = A->x + pix[t] + c;
                                    for (int k = 0; k < r; k++) {
                                        gxr[k] += cf * (float)wr[i + k];
                                        gwr[i + k] += cf * (float)xr[k];
                                    }
                                    i += r;
                                }
                            } else {
                                for (; i < e; i++) {
                                    int c = i / T, t = i % T;
                                    gx[pix[t] + c] += cf * (float)wr[i];
                                    gwr[i] += cf * (float)A->x[pix[t] + c];
                                }
                            }
                        }
                    }
                }
        pos_free(&P);
    }
    for (int t = 0; t < nt; t++) {
        const float *src = gwt + (size_t)t * CN;
        for (size_t k = 0; k < CN; k++) gw[k] += src[k];
    }
    free(gwt);
    free(wb);
    return 0;
}
