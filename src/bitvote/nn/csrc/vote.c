/* Votes of a binary conv through any voter tree, and their surrogate gradient.
 *
 * One output position at a time, every output channel at once: the position's n terms are
 * gathered in their flat order (tap-major or channel-major; 0 = a zero-padded, invalid term),
 * and each voter of the tree keeps a vector of small integers over the output channels (its
 * sum, then its vote), so every loop below runs over channels and vectorizes. Leaf sums come
 * from +/-1 weights laid out term-major (n, Co). Nothing of size (leaves x outputs) outlives
 * one position: the backward recomputes the integers, multiplies the surrogate chain root ->
 * leaf on per-voter channel vectors (skipping voters whose chain is zero for every channel),
 * and adds each leaf's terms into the input and weight gradients. Semantics are those of
 * bitvote.voter.reduce_votes; the tests hold the two against each other.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

/* GCC/Clang vector extensions: 16 int16 or 8 fp32 channels per value (one AVX2 register,
 * two SSE ones), so the channel loops carry no scalar prologues or alias checks. */
typedef int16_t v16 __attribute__((vector_size(32)));
typedef int16_t v8s __attribute__((vector_size(16)));
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v8fu __attribute__((vector_size(32), aligned(4)));  /* unaligned loads / stores */
typedef float v4fu __attribute__((vector_size(16), aligned(4)));
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    const int8_t *x;      /* padded channels-last input (N, Hp, Wp, C): +1, -1, 0 = invalid */
    const int16_t *w;     /* weights term-major (n, Cp), Cp = Co rounded up to 16: +1 / -1 */
    const float *wf;      /* the same as floats, 0 in the pad channels (backward only) */
    int N, Hp, Wp, C, Co, Cp, kh, kw, sh, sw, dh, dw, Ho, Wo;
    int order;            /* 0: i = tap * C + c, 1: i = c * taps + tap */
    int n;                /* terms per output */
    int nodes;            /* voters over all levels, leaves first, level by level */
    int nlev;
    const int32_t *lev_first;  /* nlev + 1: index of each level's first node */
    const int32_t *leaf_start; /* leaves + 1: flat term boundaries */
    const int32_t *child0;     /* per node above the leaves: its first child (node index) */
    const int32_t *parent;     /* per node below the root: its parent */
    const int32_t *lev_tie;    /* per level: voter.Tie codes, 1, -1, or 0 = first */
    const float *sigma;        /* per node: nominal sigma (fanin rule or factor; 1 for unit); under sigma_valid a factor */
    int sigma_valid;           /* 1: sigma = sqrt(max(live inputs, 1)) instead */
    int root_p;                /* 1: the root counts its children's votes */
    int surrogate;             /* 0: approxsign, 1: ste */
    float clip;
    int nthreads;
    const int64_t *tap_off;    /* per tap: offset of its pixel from the window's corner */
    int H, W, ph, pw, zero_pad; /* the unpadded input and its padding: interior windows */
    const float *wtc;          /* NULL, or for few output channels in tap-major order the weights as
                                  (taps, Co, C) floats (backward) */
    int patterns;              /* 1: trees of small leaves take the pattern backward */
} bvt_args;

int bvt_struct_size(void) { return (int)sizeof(bvt_args); }

/* The kernels' input layout in one pass: x (N, C, H, W) fp32 -> out (N, H + 2 ph, W + 2 pw, C)
 * int8, +1 where x >= 0 (NaN: -1), pad at the border. A row of the output is made from C
 * contiguous input rows, in blocks of 8 channels x 8 pixels transposed in registers (three
 * rounds of interleaving row i with row i + 4), the pixels past the last whole 8 one by one. */
typedef int8_t v8b __attribute__((vector_size(8)));

void bvt_signs_nhwc(const float *x, int N, int C, int H, int W, int ph, int pw, int pad, int8_t *out,
                    int nthreads) {
    const int Hp = H + 2 * ph, Wp = W + 2 * pw;
    const size_t row = (size_t)Wp * C, HW = (size_t)H * W;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nthreads > 0 ? nthreads : 1)
    for (int n = 0; n < N; n++)
        for (int y = 0; y < Hp; y++) {
            int8_t *o = out + ((size_t)n * Hp + y) * row;
            const int inside = y >= ph && y < ph + H;
            if (!inside) { memset(o, pad, row); continue; }
            memset(o, pad, (size_t)pw * C);
            memset(o + (size_t)(pw + W) * C, pad, (size_t)pw * C);
            const float *xr = x + ((size_t)n * C * H + (y - ph)) * W;  /* channel c's row: xr + c HW */
            int8_t *op = o + (size_t)pw * C;
            const int W8 = W / 8 * 8;
            for (int c0 = 0; c0 < C; c0 += 8) {
                const int nc = C - c0 < 8 ? C - c0 : 8;
                for (int i0 = 0; i0 < W8; i0 += 8) {
                    v8f a[8], b[8];
                    for (int k = 0; k < 8; k++)
                        a[k] = k < nc ? *(const v8fu *)(xr + (size_t)(c0 + k) * HW + i0) : (v8f){0};
                    for (int round = 0; round < 3; round++) {
                        for (int k = 0; k < 4; k++) {
                            b[2 * k] = __builtin_shufflevector(a[k], a[k + 4], 0, 8, 1, 9, 2, 10, 3, 11);
                            b[2 * k + 1] = __builtin_shufflevector(a[k], a[k + 4], 4, 12, 5, 13, 6, 14, 7, 15);
                        }
                        memcpy(a, b, sizeof(a));
                    }
                    for (int k = 0; k < 8; k++) {  /* pixel i0 + k, channels c0 .. */
                        const v8i m = a[k] >= 0.0f;
                        const v8b sg = __builtin_convertvector(-2 * m - 1, v8b);
                        memcpy(op + (size_t)(i0 + k) * C + c0, &sg, (size_t)nc);
                    }
                }
                for (int c = c0; c < c0 + nc; c++)
                    for (int i = W8; i < W; i++) op[(size_t)i * C + c] = xr[(size_t)c * HW + i] >= 0.0f ? 1 : -1;
            }
        }
}



typedef struct {
    int c0, nb, n8;  /* the channel window: first channel, 16-lane blocks per row of s / v,
                        8-lane blocks holding real channels */
    int base;        /* the first node with rows in s / v / coef (the ones below have none) */
    int8_t *a;       /* the position's n terms in flat order: +1, -1, 0 = invalid */
    int32_t *cnt;    /* per node: valid terms (leaf) or non-abstaining children */
    int32_t *first;  /* per node: first valid term (leaf, flat index) or first live child; -1 none */
    float *sig;      /* per node: the sigma in use here */
    v16 *s;          /* (nodes, nb): sums of the window's channels */
    v16 *v;          /* (nodes, nb): votes */
    v8f *coef;       /* (nodes, 2 nb): dL/ds (backward) */
    v8f *cq;         /* a leaf parent's dL/ds over the leaf's sigma (backward), for node cq_node, sigma cq_sig */
    int cq_node;
    float cq_sig;
    float tab[8];    /* the approxsign factor of |s| = 0..7 at sigma tab_sig (backward) */
    float tab_sig;
    uint8_t *live;   /* per node: some channel has a non-zero dL/ds */
    size_t *pix;     /* per tap: offset of the pixel it reads */
    int inner_ready; /* cnt/first/sig of a window without padding, kept from the first one */
    int32_t *cnt_in, *first_in;
    float *sig_in;
} pos_t;

/* Node j's sum, vote and dL/ds rows over the window's channels. */
static inline v16 *NS(const pos_t *P, int j) { return P->s + (size_t)(j - P->base) * P->nb; }
static inline v16 *NV(const pos_t *P, int j) { return P->v + (size_t)(j - P->base) * P->nb; }
static inline v8f *NC(const pos_t *P, int j) { return P->coef + (size_t)(j - P->base) * 2 * P->nb; }

static void *valloc32(size_t bytes) {
    void *p = NULL;
    return posix_memalign(&p, 32, bytes ? bytes : 32) ? NULL : p;
}

/* Select channels c0 .. c0 + cw - 1 (cw a multiple of 16, c0 < Co) for the vector helpers. */
static void pos_window(const bvt_args *A, pos_t *P, int c0, int cw) {
    int real = A->Co - c0 < cw ? A->Co - c0 : cw;
    P->c0 = c0;
    P->nb = cw / 16;
    P->n8 = (real + 7) / 8;
}

/* Buffers for windows of up to cw channels (the whole window: every channel), with rows for
 * the nodes from base up. */
static int pos_alloc(const bvt_args *A, pos_t *P, int backward, int cw, int base) {
    size_t NC = (size_t)(A->nodes - base) * cw;
    P->base = base;
    pos_window(A, P, 0, cw);
    P->a = calloc((size_t)A->n + 4, 1);  /* + 4: term_pattern reads whole words */
    P->cnt = malloc(sizeof(int32_t) * A->nodes);
    P->first = malloc(sizeof(int32_t) * A->nodes);
    P->sig = malloc(sizeof(float) * A->nodes);
    P->s = valloc32(sizeof(int16_t) * NC);
    P->v = valloc32(sizeof(int16_t) * NC);
    P->coef = backward ? valloc32(sizeof(float) * NC) : NULL;
    P->cq = backward ? valloc32(sizeof(float) * cw) : NULL;
    P->cq_node = -1;
    P->tab_sig = -1.0f;
    P->live = malloc((size_t)A->nodes);
    P->pix = malloc(sizeof(size_t) * A->kh * A->kw);
    P->inner_ready = 0;
    P->cnt_in = malloc(sizeof(int32_t) * A->nodes);
    P->first_in = malloc(sizeof(int32_t) * A->nodes);
    P->sig_in = malloc(sizeof(float) * A->nodes);
    return P->a && P->cnt && P->first && P->sig && P->s && P->v && (P->coef || !backward) && (P->cq || !backward) && P->live && P->pix
        && P->cnt_in && P->first_in && P->sig_in;
}

static void pos_free(pos_t *P) {
    free(P->a); free(P->cnt); free(P->first); free(P->sig); free(P->s); free(P->v);
    free(P->coef); free(P->cq); free(P->live); free(P->pix); free(P->cnt_in); free(P->first_in); free(P->sig_in);
}

/* Gather one position's terms and derive everything that depends only on validity. */
static void pos_setup(const bvt_args *A, pos_t *P, int b, int ho, int wo) {
    const int T = A->kh * A->kw, C = A->C;
    const size_t base = (((size_t)b * A->Hp + (size_t)ho * A->sh) * A->Wp + (size_t)wo * A->sw) * C;
    for (int t = 0; t < T; t++) {
        P->pix[t] = base + (size_t)A->tap_off[t];
        const int8_t *px = A->x + P->pix[t];
        if (A->order) {
            for (int c = 0; c < C; c++) P->a[c * T + t] = px[c];
        } else {
            memcpy(P->a + (size_t)t * C, px, (size_t)C);
        }
    }
    /* Validity depends on the window alone: every window clear of the padding shares it. */
    int r0 = ho * A->sh - A->ph, c0 = wo * A->sw - A->pw;
    int inner = !A->zero_pad || (r0 >= 0 && r0 + (A->kh - 1) * A->dh < A->H && c0 >= 0
                                 && c0 + (A->kw - 1) * A->dw < A->W);
    if (inner && P->inner_ready) {
        memcpy(P->cnt, P->cnt_in, sizeof(int32_t) * A->nodes);
        memcpy(P->first, P->first_in, sizeof(int32_t) * A->nodes);
        memcpy(P->sig, P->sig_in, sizeof(float) * A->nodes);
        return;
    }
    const int L = A->lev_first[1];
    if (!A->order) {
        /* tap-major: a term is invalid exactly where its tap's pixel is padding (the input
         * itself is +/-1), so a leaf's count and first term come from its taps' runs */
        for (int l = 0; l < L; l++) {
            const int i0 = A->leaf_start[l], i1 = A->leaf_start[l + 1];
            int c = 0, f = -1;
            for (int t = i0 / C; t < T && t * C < i1; t++) {
                const int a = t * C > i0 ? t * C : i0, e = (t + 1) * C < i1 ? (t + 1) * C : i1;
                if (a < e && P->a[a]) { if (f < 0) f = a; c += e - a; }
            }
            P->cnt[l] = c;
            P->first[l] = f;
        }
    } else {
        for (int l = 0; l < L; l++) {
            int c = 0, f = -1;
            for (int i = A->leaf_start[l]; i < A->leaf_start[l + 1]; i++)
                if (P->a[i]) { if (f < 0) f = i; c++; }
            P->cnt[l] = c;
            P->first[l] = f;
        }
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
        P->sig[j] = A->sigma_valid ? sqrtf((float)(P->cnt[j] > 1 ? P->cnt[j] : 1)) * A->sigma[j] : A->sigma[j];
    if (inner) {
        memcpy(P->cnt_in, P->cnt, sizeof(int32_t) * A->nodes);
        memcpy(P->first_in, P->first, sizeof(int32_t) * A->nodes);
        memcpy(P->sig_in, P->sig, sizeof(float) * A->nodes);
        P->inner_ready = 1;
    }
}

/* v = sign(s), or the tie value where s == 0, for one node over the window's channels; tv:
 * the vote of the node's first non-abstaining child (tie `first` above the leaves). */
static inline void node_vote(const bvt_args *A, pos_t *P, int j, int tie, int is_root, const v16 *tv) {
    const int NB = P->nb;
    const v16 *s = NS(P, j);
    v16 *v = NV(P, j);
    if (P->cnt[j] == 0) {  /* abstains: 0, or the root's tie value (+1 under first) */
        int16_t ab = is_root ? (int16_t)(tie == 0 ? 1 : tie) : 0;
        v16 z = {0};
        for (int k = 0; k < NB; k++) v[k] = z + ab;
        return;
    }
    if (tie == 0 && j < A->lev_first[1]) {  /* a leaf: its first valid term, every channel */
        int f = P->first[j];
        const v16 *wr = (const v16 *)(A->w + (size_t)f * A->Cp + P->c0);
        int16_t af = P->a[f];
        for (int k = 0; k < NB; k++)
            v[k] = (s[k] < 0) - (s[k] > 0) + ((s[k] == 0) & (wr[k] * af));
    } else if (tie == 0) {  /* the first non-abstaining child */
        for (int k = 0; k < NB; k++) v[k] = (s[k] < 0) - (s[k] > 0) + ((s[k] == 0) & tv[k]);
    } else {
        int16_t t = (int16_t)tie;
        for (int k = 0; k < NB; k++) v[k] = (s[k] < 0) - (s[k] > 0) + ((s[k] == 0) & t);
    }
}

/* The vote of node j's first non-abstaining child, where it has one. */
static inline const v16 *first_vote(const pos_t *P, int j) {
    return P->cnt[j] > 0 ? NV(P, P->first[j]) : NULL;
}

/* Sums and votes of the nodes of level li >= 1 from their children's votes. */
static void level_votes(const bvt_args *A, pos_t *P, int li) {
    const int root = A->nodes - 1, NB = P->nb, j1 = A->lev_first[li + 1];
    for (int j = A->lev_first[li]; j < j1; j++) {
        int c0 = A->child0[j], c1 = j + 1 < j1 ? A->child0[j + 1] : A->lev_first[li];
        v16 *s = NS(P, j);
        for (int k = 0; k < NB; k++) {
            v16 acc = {0};
            for (int c = c0; c < c1; c++) acc += NV(P, c)[k];
            s[k] = acc;
        }
        node_vote(A, P, j, A->lev_tie[li], j == root, first_vote(P, j));
    }
}

/* Votes of every node from the leaf sums in P->s. */
static void pos_votes(const bvt_args *A, pos_t *P) {
    const int L = A->lev_first[1], root = A->nodes - 1;
    for (int l = 0; l < L; l++) node_vote(A, P, l, A->lev_tie[0], l == root, NULL);
    for (int li = 1; li < A->nlev; li++) level_votes(A, P, li);
}

/* The sum of leaf l from the position's terms, four 16-channel blocks at a time. */
static inline void leaf_sum(const bvt_args *A, pos_t *P, int l) {
    const int NB = P->nb, WB = A->Cp / 16;
    const v16 *W = (const v16 *)(A->w + P->c0);
    v16 *s = NS(P, l);
    const int i0 = A->leaf_start[l], i1 = A->leaf_start[l + 1];
    int k = 0;
    for (; k + 4 <= NB; k += 4) {
        v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int i = i0; i < i1; i++) {
            const v16 *wr = W + (size_t)i * WB + k;
            const int16_t ai = P->a[i];
            a0 += wr[0] * ai;
            a1 += wr[1] * ai;
            a2 += wr[2] * ai;
            a3 += wr[3] * ai;
        }
        s[k] = a0;
        s[k + 1] = a1;
        s[k + 2] = a2;
        s[k + 3] = a3;
    }
    for (; k < NB; k++) {
        v16 acc = {0};
        for (int i = i0; i < i1; i++) acc += W[(size_t)i * WB + k] * (int16_t)P->a[i];
        s[k] = acc;
    }
}

/* Sums and votes of every node from the position's terms. */
static void pos_eval(const bvt_args *A, pos_t *P) {
    for (int l = 0; l < A->lev_first[1]; l++) leaf_sum(A, P, l);
    pos_votes(A, P);
}

/* out: (N, Co, Ho, Wo) */
int bvt_forward(const bvt_args *A, float *out) {
    const size_t HW = (size_t)A->Ho * A->Wo;
    const int root = A->nodes - 1, Co = A->Co, Cp = A->Cp;
    int err = 0;
#pragma omp parallel num_threads(A->nthreads) reduction(| : err)
    {
        pos_t P;
        if (!pos_alloc(A, &P, 0, Cp, 0)) err = 1;
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < A->N; b++)
            for (int ho = 0; ho < A->Ho; ho++) {
                if (err) continue;
                for (int wo = 0; wo < A->Wo; wo++) {
                    pos_setup(A, &P, b, ho, wo);
                    pos_eval(A, &P);
                    const int16_t *r = (const int16_t *)(A->root_p ? NS(&P, root) : NV(&P, root));
                    float *o = out + (size_t)b * Co * HW + (size_t)ho * A->Wo + wo;
                    for (int c = 0; c < Co; c++) o[c * HW] = (float)r[c];
                }
            }
        pos_free(&P);
    }
    return err;
}

static inline v8f v8f_abs(v8f x) {
    v8i m = {0};
    m += 0x7fffffff;
    return (v8f)((v8i)x & m);
}

/* Whether any lane of m is non-zero. */
static inline int any_lane(v8i m) {
#ifdef __AVX2__
    return !_mm256_testz_si256((__m256i)m, (__m256i)m);
#else
    for (int q = 0; q < 8; q++)
        if (m[q]) return 1;
    return 0;
#endif
}

/* dL/ds of one node from its parent's (or the output gradient at the root); 1 if any non-zero.
 * The same operations as the float path (s / sigma, g / sigma), so a boundary |s| = sigma
 * passes or stops exactly as there. Over the window's real channels (the pad ones carry none). */
static inline int node_deriv(const bvt_args *A, const pos_t *P, const v8f *cp, const v16 *s16, float sig, v8f *cf) {
    const int N8 = P->n8;
    const v8s *s = (const v8s *)s16;
    v8i any = {0};
    if (A->surrogate == 1) {
        float lim = A->clip * sig;
        for (int k = 0; k < N8; k++) {
            v8f sf = __builtin_convertvector(s[k], v8f);
            v8i pass = v8f_abs(sf) <= lim;
            v8f d = (v8f)((v8i)(cp[k] / sig) & pass);
            cf[k] = d;
            any |= (v8i)d;
        }
    } else {
        for (int k = 0; k < N8; k++) {
            v8f sf = __builtin_convertvector(s[k], v8f);
            v8f d = 2.0f - 2.0f * v8f_abs(sf / sig);
            d = (v8f)((v8i)d & (d > 0.0f));
            d = d * (cp[k] / sig);
            cf[k] = d;
            any |= (v8i)d & 0x7fffffff;  /* -0.0 passes nothing */
        }
    }
    return any_lane(any);
}

/* dL/ds of the nodes root down to node `stop`, from the output gradient gi (the window's
 * channels, 0 beyond Co). */
static void pos_chain(const bvt_args *A, pos_t *P, const v8f *gi, int stop) {
    const int root = A->nodes - 1;
    v8f *cr = NC(P, root);
    if (A->root_p) {
        memcpy(cr, gi, sizeof(float) * 8 * P->n8);
        P->live[root] = 1;
    } else {
        P->live[root] = (uint8_t)node_deriv(A, P, gi, NS(P, root), P->sig[root], cr);
    }
    for (int j = root - 1; j >= stop; j--) {
        int pj = A->parent[j];
        /* an abstaining voter has no valid term below it: nothing to pass */
        P->live[j] = P->live[pj] && P->cnt[j] > 0
            && node_deriv(A, P, NC(P, pj), NS(P, j), P->sig[j], NC(P, j));
    }
}

/* dL/ds of leaf l from its parent pl's: node_deriv's values. Under approxsign where sigma <=
 * 7 the factor of the integer |s| is read from a table of |s| = 0..7 (zero from 7 up) and the
 * parent's dL/ds over the leaf's sigma is computed once for all siblings of one sigma. */
static inline int leaf_deriv(const bvt_args *A, pos_t *P, int l, int pl, v8f *cf) {
    const float sig = P->sig[l];
    const v16 *s16 = NS(P, l);
    const v8f *cp = NC(P, pl);
    if (A->surrogate != 0 || !(sig <= 7.0f)) return node_deriv(A, P, cp, s16, sig, cf);
    const int N8 = P->n8;
    if (P->cq_node != pl || P->cq_sig != sig) {
        for (int k = 0; k < N8; k++) P->cq[k] = cp[k] / sig;
        P->cq_node = pl;
        P->cq_sig = sig;
    }
    if (P->tab_sig != sig) {
        for (int v = 0; v < 8; v++) {
            float t = 2.0f - 2.0f * fabsf((float)v / sig);
            P->tab[v] = t > 0.0f ? t : 0.0f;
        }
        P->tab_sig = sig;
    }
    const v8s *s = (const v8s *)s16;
    v8i any = {0};
    for (int k = 0; k < N8; k++) {
        v8f t;
#ifdef __AVX2__
        __m256i a = _mm256_min_epi32(_mm256_abs_epi32((__m256i)__builtin_convertvector(s[k], v8i)), _mm256_set1_epi32(7));
        t = (v8f)_mm256_permutevar8x32_ps(_mm256_loadu_ps(P->tab), a);
#else
        for (int q = 0; q < 8; q++) {
            int a = s[k][q] < 0 ? -s[k][q] : s[k][q];
            t[q] = P->tab[a < 7 ? a : 7];
        }
#endif
        v8f d = t * P->cq[k];
        cf[k] = d;
        any |= (v8i)d & 0x7fffffff;  /* -0.0 passes nothing */
    }
    return any_lane(any);
}

/* dL/ds of every leaf for the backward's GEMMs, which then form both gradients.
 * S: the leaf sums, leaf l of position np at S[l * sstride + np * Co], NP = N * Ho * Wo
 * positions in (b, ho, wo) order; g: the output gradient channels-last (NP, Co); out:
 * (L, NP, Co), 0 where a leaf passes nothing. The tree above the leaves, ties and validity
 * are those of bvt_backward. */
int bvt_leaf_grad(const bvt_args *A, const int16_t *S, int64_t sstride, const float *g, float *out) {
    const int L = A->lev_first[1], Co = A->Co;
    const size_t NP = (size_t)A->N * A->Ho * A->Wo;
    int err = 0;
#pragma omp parallel num_threads(A->nthreads) reduction(| : err)
    {
        pos_t P;
        v8f *gi = valloc32(sizeof(float) * A->Cp);
        if (!pos_alloc(A, &P, 1, A->Cp, 0) || !gi) err = 1;
        else memset(gi, 0, sizeof(float) * A->Cp);
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < A->N; b++)
            for (int ho = 0; ho < A->Ho; ho++) {
                if (err) continue;
                for (int wo = 0; wo < A->Wo; wo++) {
                    const size_t np = ((size_t)b * A->Ho + ho) * A->Wo + wo;
                    pos_setup(A, &P, b, ho, wo);
                    for (int l = 0; l < L; l++) {
                        int16_t *s = (int16_t *)NS(&P, l);
                        memcpy(s, S + (size_t)l * sstride + np * Co, sizeof(int16_t) * Co);
                        memset(s + Co, 0, sizeof(int16_t) * (A->Cp - Co));
                    }
                    pos_votes(A, &P);
                    memcpy(gi, g + np * Co, sizeof(float) * Co);
                    pos_chain(A, &P, gi, 0);
                    for (int l = 0; l < L; l++) {
                        float *dst = out + ((size_t)l * NP + np) * Co;
                        if (P.live[l]) memcpy(dst, NC(&P, l), sizeof(float) * Co);
                        else memset(dst, 0, sizeof(float) * Co);
                    }
                }
            }
        free(gi);
        pos_free(&P);
    }
    return err;
}

/* Output positions per block of the backward (measured: 4 and 8 alike at 64 channels, 4
 * best from 128 up, where a block's per-node vectors outgrow the caches) and output channels
 * per window (a multiple of 16; a window splits every input-gradient dot product). */
#define BVT_PB 4
#define BVT_CW 512

/* acc + a * b for the gradients' sums (fused where the ISA has it: -ffp-contract=off keeps
 * every other expression as written, for the votes and the surrogate chain). */
static inline v8f fma8(v8f acc, v8f a, v8f b) {
#ifdef __FMA__
    return (v8f)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)acc);
#else
    return acc + a * b;
#endif
}

static inline float hsum8(v8f a) {
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/* Sums of the 8 lanes of a, b, c, d: (sum a, sum b, sum c, sum d). */
static inline v4fu hsum4(v8f a, v8f b, v8f c, v8f d) {
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
    v8f ab = __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) + __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
    v8f cd = __builtin_shufflevector(c, d, 0, 2, 8, 10, 4, 6, 12, 14) + __builtin_shufflevector(c, d, 1, 3, 9, 11, 5, 7, 13, 15);
    v8f q = __builtin_shufflevector(ab, cd, 0, 2, 8, 10, 4, 6, 12, 14) + __builtin_shufflevector(ab, cd, 1, 3, 9, 11, 5, 7, 13, 15);
    return __builtin_shufflevector(q, q, 0, 1, 2, 3) + __builtin_shufflevector(q, q, 4, 5, 6, 7);
#else
    v4fu r = {hsum8(a), hsum8(b), hsum8(c), hsum8(d)};
    return r;
#endif
}

/* The input gradient of few output channels (tap-major order): runs of 8 or 4 channels inside
 * one tap take it as one vector over those channels from (tap, Co, C) weights, sum over o of
 * dL/ds[o] * w[o, run], instead of a horizontal sum per term over a mostly empty vector. */
static void few_channel_dx(const bvt_args *A, const pos_t *P, int i0, int i1, const float *cs, float *gx) {
    const int C = A->C, Co = A->Co;
    int t = i0 / C, c = i0 % C, i = i0;
    while (i < i1) {
        int r = C - c < i1 - i ? C - c : i1 - i;
        float *gxr = gx + P->pix[t] + c;
        const float *wt = A->wtc + (size_t)t * Co * C + c;
        int k = 0;
        for (; k + 8 <= r; k += 8) {
            v8f acc = {0};
            for (int o = 0; o < Co; o++) acc += cs[o] * *(const v8fu *)(wt + (size_t)o * C + k);
            *(v8fu *)(gxr + k) += acc;
        }
        for (; k + 4 <= r; k += 4) {
            v4fu acc = {0};
            for (int o = 0; o < Co; o++) acc += cs[o] * *(const v4fu *)(wt + (size_t)o * C + k);
            *(v4fu *)(gxr + k) += acc;
        }
        for (; k < r; k++) {
            float acc = 0.0f;
            for (int o = 0; o < Co; o++) acc += cs[o] * wt[(size_t)o * C + k];
            gxr[k] += acc;
        }
        i += r;
        c = 0;
        t++;
    }
}

/* The backward's threads (whole images each, at most one per image) and zeroed weight
 * gradients of CN floats for all but the first, which writes gw itself; NULL for one thread
 * or out of memory. */
static float *thread_grads(const bvt_args *A, size_t CN, int *nt) {
    int n = A->nthreads > 0 ? A->nthreads : 1;
    *nt = n > A->N ? A->N : n;
    float *gwt = *nt > 1 ? valloc32((size_t)(*nt - 1) * CN * sizeof(float)) : NULL;
    if (gwt) memset(gwt, 0, (size_t)(*nt - 1) * CN * sizeof(float));
    return gwt;
}

/* This thread's weight gradient: gw for the first, its copy in gwt for the others. */
static inline v8f *own_grads(float *gw, float *gwt, size_t CN) {
    int tid = 0;
#ifdef _OPENMP
    tid = omp_get_thread_num();
#endif
    return (v8f *)(tid ? gwt + (size_t)(tid - 1) * CN : gw);
}

/* The output gradient of image b, position r (of Ho * Wo), channels c0 .. c0 + 8 n8 - 1 into
 * gs, 0 from Co on. */
static inline void out_grad(const bvt_args *A, const float *g, size_t b, size_t r, int c0, int n8, float *gs) {
    const size_t HW = (size_t)A->Ho * A->Wo;
    const float *gp = g + (b * A->Co + c0) * HW + r;
    for (int o = 0; o < n8 * 8; o++) gs[o] = c0 + o < A->Co ? gp[o * HW] : 0.0f;
}

static void add_thread_grads(float *gw, float *gwt, int nt, size_t CN) {
    for (int t = 0; t + 1 < nt; t++) {
        const float *src = gwt + (size_t)t * CN;
        for (size_t k = 0; k < CN; k++) gw[k] += src[k];
    }
    free(gwt);
}

/* Leaves of up to BVT_PAT_K terms. At a position a leaf's terms are one of 3^K patterns (each
 * +1, -1 or 0 = invalid; coded in base 4, two bits a term), and its sum, vote, sigma and surrogate factor are functions of the
 * pattern alone. The pattern backward therefore makes a leaf's rows once per pattern met in a
 * block of positions, not once per position, and sums its dL/ds per pattern: the leaf's
 * weight gradient is then, per term, the sum over patterns of the term's value times that
 * sum. Votes and dL/ds are those of the term loop, value for value. */
#define BVT_PAT_K 4
#define BVT_PAT_N 256                 /* codes of BVT_PAT_K terms */
#define BVT_PAT_Q 128                 /* positions per block at most */
#define BVT_PAT_MEM (4u << 20)        /* bytes of a block's per-position rows */

/* Whether the pattern backward takes this tree: small leaves in tap-major order, at least 8
 * under each node of level 1 (every leaf's parent is on level 1), one channel window. (Measured against the
 * term loop, one layer, one thread: tap,leaf=2..4 with 8 or more leaves per tap 0.64-0.72x of
 * its time at 32-128 channels, 0.3-0.45x at 256-512; with 4 per tap, or channel-major trees of
 * 3-term leaves, 1.0-1.3x: too few uses of each pattern's rows.) */
static int pattern_leaves(const bvt_args *A) {
    const int L = A->lev_first[1];
    if (!A->patterns || A->order || A->nlev < 2 || A->Cp > BVT_CW) return 0;
    if (L < 8 * (A->lev_first[2] - L)) return 0;
    for (int l = 0; l < L; l++)
        if (A->leaf_start[l + 1] - A->leaf_start[l] > BVT_PAT_K) return 0;
    return 1;
}

/* The pattern of terms a[0 .. k-1] (readable 4 bytes on): bits 2i, 2i + 1 hold term i's
 * low two bits, 0 invalid, 1 = +1, 3 = -1. */
static inline int term_pattern(const int8_t *a, uint32_t kmask) {
    uint32_t u;
    memcpy(&u, a, 4);
    u &= kmask;  /* 0x03 in each of the leaf's k bytes */
    return (int)((u | u >> 6 | u >> 12 | u >> 18) & 0xff);
}

static inline uint32_t pattern_mask(int k) { return k >= 4 ? 0x03030303u : (uint32_t)((1ull << (8 * k)) - 1) & 0x03030303u; }

/* Valid terms of pattern p, and the first of them (-1: none). */
static inline int pattern_count(int p, int *first) {
    int c = 0;
    *first = -1;
    for (int i = 0; i < BVT_PAT_K; i++, p >>= 2)
        if (p & 3) {
            if (*first < 0) *first = i;
            c++;
        }
    return c;
}

/* Leaf l's sum over every channel for pattern p. */
static void pattern_sum(const bvt_args *A, int l, int p, v16 *s) {
    const int NB = A->Cp / 16;
    const v16 *W = (const v16 *)A->w;
    for (int k = 0; k < NB; k++) s[k] = (v16){0};
    for (int i = A->leaf_start[l]; i < A->leaf_start[l + 1]; i++, p >>= 2) {
        const v16 *wr = W + (size_t)i * NB;
        if ((p & 3) == 1)
            for (int k = 0; k < NB; k++) s[k] += wr[k];
        else if ((p & 3) == 3)
            for (int k = 0; k < NB; k++) s[k] -= wr[k];
    }
}

/* Leaf l's vote for pattern p (a valid one): node_vote's rule below the root. */
static void pattern_vote(const bvt_args *A, int l, int p, v16 *s, v16 *v) {
    const int NB = A->Cp / 16, tie = A->lev_tie[0];
    int f;
    pattern_count(p, &f);
    pattern_sum(A, l, p, s);
    if (tie == 0) {
        const v16 *wr = (const v16 *)(A->w + (size_t)(A->leaf_start[l] + f) * A->Cp);
        const int16_t af = ((p >> 2 * f) & 3) == 1 ? 1 : -1;
        for (int j = 0; j < NB; j++) v[j] = (s[j] < 0) - (s[j] > 0) + ((s[j] == 0) & (wr[j] * af));
    } else {
        const int16_t t = (int16_t)tie;
        for (int j = 0; j < NB; j++) v[j] = (s[j] < 0) - (s[j] > 0) + ((s[j] == 0) & t);
    }
}

/* Leaf l's surrogate factor for pattern p (a valid one), dL/ds = F * (parent's dL/ds / sigma)
 * with node_deriv's operations; returns the sigma, *nz whether any channel passes. */
static float pattern_factor(const bvt_args *A, int l, int p, v16 *s, v8f *F, uint8_t *nz) {
    const int N8 = (A->Co + 7) / 8;
    int f;
    const int c = pattern_count(p, &f);
    const float sig = A->sigma_valid ? sqrtf((float)(c > 1 ? c : 1)) * A->sigma[l] : A->sigma[l];
    pattern_sum(A, l, p, s);
    const v8s *s8 = (const v8s *)s;
    v8i any = {0};
    for (int j = 0; j < N8; j++) {
        v8f sf = __builtin_convertvector(s8[j], v8f), d;
        if (A->surrogate == 1) {
            d = (v8f)((v8i)((v8f){0} + 1.0f) & (v8f_abs(sf) <= A->clip * sig));
        } else {
            d = 2.0f - 2.0f * v8f_abs(sf / sig);
            d = (v8f)((v8i)d & (d > 0.0f));
        }
        F[j] = d;
        any |= (v8i)d & 0x7fffffff;
    }
    *nz = (uint8_t)any_lane(any);
    return sig;
}

typedef struct {  /* one thread's buffers of the pattern backward */
    pos_t *P;         /* the block's positions, rows for the nodes above the leaves */
    int np;
    uint8_t *pidx;    /* (L, Q): each leaf's pattern at each position (0 once its parent passes nothing) */
    size_t *pix;      /* (taps, Q): each tap's pixel at each position */
    v16 *fv;          /* (Q, level-1 nodes, NB): vote of each level-1 node's first valid child */
    v8f *gi, *cq;     /* (Q, N8): output gradient; a leaf parent's dL/ds over a leaf's sigma */
    int *cq_node;
    float *cq_sig;
    v16 *s, *V;       /* (NB), (BVT_PAT_N, NB): scratch sum, votes per pattern */
    v8f *F, *B, *D;   /* (BVT_PAT_N, N8) factors, dL/ds sums per pattern; (N8) one dL/ds */
} pat_t;

static void pat_free(pat_t *S) {
    for (int q = 0; q < S->np; q++) pos_free(&S->P[q]);
    free(S->P); free(S->pidx); free(S->pix); free(S->fv); free(S->gi); free(S->cq); free(S->cq_node); free(S->cq_sig);
    free(S->s); free(S->V); free(S->F); free(S->B); free(S->D);
}

static int pat_alloc(const bvt_args *A, pat_t *S, int Q) {
    const int L = A->lev_first[1], NJ = A->lev_first[2] - L, Cp = A->Cp;
    memset(S, 0, sizeof(*S));
    S->P = calloc((size_t)Q, sizeof(pos_t));  /* zeroed: pos_free of a failed one frees NULLs */
    int ok = S->P != NULL;
    if (ok) {
        S->np = Q;
        for (int q = 0; q < Q; q++) ok &= pos_alloc(A, &S->P[q], 1, Cp, L);
    }
    S->pidx = malloc((size_t)Q * L);
    S->pix = malloc(sizeof(size_t) * Q * A->kh * A->kw);
    S->fv = valloc32((size_t)Q * NJ * Cp * sizeof(int16_t));
    S->gi = valloc32((size_t)Q * Cp * sizeof(float));
    S->cq = valloc32((size_t)Q * Cp * sizeof(float));
    S->cq_node = malloc(sizeof(int) * Q);
    S->cq_sig = malloc(sizeof(float) * Q);
    S->s = valloc32(sizeof(int16_t) * Cp);
    S->V = valloc32(sizeof(int16_t) * BVT_PAT_N * Cp);
    S->F = valloc32(sizeof(float) * BVT_PAT_N * Cp);
    S->B = valloc32(sizeof(float) * BVT_PAT_N * Cp);
    S->D = valloc32(sizeof(float) * Cp);
    return ok && S->pidx && S->pix && S->fv && S->gi && S->cq && S->cq_node && S->cq_sig && S->s && S->V && S->F && S->B && S->D;
}

/* Positions f0 .. f0 + nq - 1 (flat over (b, ho, wo)) of the pattern backward. */
static void pattern_block(const bvt_args *A, pat_t *S, size_t f0, int nq, const float *g, float *gx, v8f *GW,
                          int *pgen, int *gen) {
    const size_t HW = (size_t)A->Ho * A->Wo;
    const int T = A->kh * A->kw, C = A->C, L = A->lev_first[1], Co = A->Co, Cp = A->Cp, root = A->nodes - 1;
    const int NB = Cp / 16, N8 = Cp / 8, n8 = (Co + 7) / 8, J0 = L, J1 = A->lev_first[2], NJ = J1 - J0;
    const v8f *WF = (const v8f *)A->wf;
    const int Q = S->np;
    pos_t *P = S->P;
    float psig[BVT_PAT_N];
    uint8_t pnz[BVT_PAT_N];
    int used[BVT_PAT_N];
    for (int q = 0; q < nq; q++) {
        const size_t f = f0 + q, r = f % HW;
        pos_setup(A, &P[q], (int)(f / HW), (int)(r / A->Wo), (int)(r % A->Wo));
        for (int j = J0; j < J1; j++) memset(NS(&P[q], j), 0, sizeof(int16_t) * Cp);
        for (int t = 0; t < T; t++) S->pix[(size_t)t * Q + q] = P[q].pix[t];
    }
    for (int l = 0; l < L; l++) {
        const int i0 = A->leaf_start[l];
        const uint32_t km = pattern_mask(A->leaf_start[l + 1] - i0);
        uint8_t *pl = S->pidx + (size_t)l * Q;
        for (int q = 0; q < nq; q++) pl[q] = (uint8_t)term_pattern(P[q].a + i0, km);
    }
    /* the leaves' votes into their parents' sums */
    for (int l = 0; l < L; l++) {
        const int pl = A->parent[l], g1 = ++*gen;
        const uint8_t *pq = S->pidx + (size_t)l * Q;
        for (int q = 0; q < nq; q++) {
            const int p = pq[q];
            if (!p) continue;  /* abstains */
            v16 *vr = S->V + (size_t)p * NB;
            if (pgen[p] != g1) {
                pattern_vote(A, l, p, S->s, vr);
                pgen[p] = g1;
            }
            v16 *ps = NS(&P[q], pl);
            for (int j = 0; j < NB; j++) ps[j] += vr[j];
            if (P[q].first[pl] == l) memcpy(S->fv + ((size_t)q * NJ + (pl - J0)) * NB, vr, sizeof(int16_t) * Cp);
        }
    }
    /* votes above the leaves and the chain down to the leaves' parents */
    for (int q = 0; q < nq; q++) {
        for (int j = J0; j < J1; j++)
            node_vote(A, &P[q], j, A->lev_tie[1], j == root,
                      P[q].cnt[j] > 0 ? S->fv + ((size_t)q * NJ + (j - J0)) * NB : NULL);
        for (int li = 2; li < A->nlev; li++) level_votes(A, &P[q], li);
        out_grad(A, g, (f0 + q) / HW, (f0 + q) % HW, 0, n8, (float *)(S->gi + (size_t)q * N8));
        pos_chain(A, &P[q], S->gi + (size_t)q * N8, L);
        S->cq_node[q] = -1;
    }
    for (int l = 0; l < L; l++) {
        uint8_t *pq = S->pidx + (size_t)l * Q;
        for (int q = 0; q < nq; q++) pq[q] = P[q].live[A->parent[l]] ? pq[q] : 0;
    }
    /* each leaf: dL/ds per position, the input gradient, dL/ds summed per pattern */
    for (int l = 0; l < L; l++) {
        const int pl = A->parent[l], g1 = ++*gen, i0 = A->leaf_start[l], i1 = A->leaf_start[l + 1], k = i1 - i0;
        int nused = 0;
        const v8f *w0 = WF + (size_t)i0 * N8;
        const v8f *w1 = k > 1 ? w0 + N8 : w0, *w2 = k > 2 ? w0 + 2 * N8 : w0, *w3 = k > 3 ? w0 + 3 * N8 : w0;
        const int t0 = i0 / C, c0 = i0 % C;  /* term i0's (tap, channel), tap-major */
        const uint8_t *pq = S->pidx + (size_t)l * Q;
        const size_t *px = S->pix + (size_t)t0 * Q;
        /* the leaf's terms are adjacent channels of one tap: one 4-wide input gradient update */
        const int run4 = k == 4 && c0 + 4 <= C;
        for (int q = 0; q < nq; q++) {
            const int p = pq[q];
            if (!p) continue;
            v8f *Fp = S->F + (size_t)p * N8, *Bp = S->B + (size_t)p * N8;
            if (pgen[p] != g1) {
                psig[p] = pattern_factor(A, l, p, S->s, Fp, &pnz[p]);
                pgen[p] = g1;
                memset(Bp, 0, sizeof(float) * 8 * n8);
                used[nused++] = p;
            }
            if (!pnz[p]) continue;
            v8f *cqq = S->cq + (size_t)q * N8;
            if (S->cq_node[q] != pl || S->cq_sig[q] != psig[p]) {
                const v8f *cp = NC(&P[q], pl);
                for (int j = 0; j < n8; j++) cqq[j] = cp[j] / psig[p];
                S->cq_node[q] = pl;
                S->cq_sig[q] = psig[p];
            }
            if (A->wtc) {  /* few output channels: the input gradient over the leaf's channels */
                for (int j = 0; j < n8; j++) {
                    v8f d = Fp[j] * cqq[j];
                    Bp[j] += d;
                    S->D[j] = d;
                }
                few_channel_dx(A, &P[q], i0, i1, (const float *)S->D, gx);
                continue;
            }
            v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            for (int j = 0; j < n8; j++) {
                v8f d = Fp[j] * cqq[j];
                Bp[j] += d;
                a0 = fma8(a0, d, w0[j]);
                a1 = fma8(a1, d, w1[j]);
                a2 = fma8(a2, d, w2[j]);
                a3 = fma8(a3, d, w3[j]);
            }
            v4fu h = hsum4(a0, a1, a2, a3);
            if (run4) {
                *(v4fu *)(gx + px[q] + c0) += h;
                continue;
            }
            int t = t0, c = c0;
            for (int u = 0; u < k; u++) {
                gx[S->pix[(size_t)t * Q + q] + c] += h[u];
                if (++c == C) { c = 0; t++; }
            }
        }
        /* weight gradient: each valid term's value times its pattern's dL/ds sum, summed over
         * the patterns in registers, 4 vectors at a time */
        int nz = 0;
        for (int u = 0; u < nused; u++)
            if (pnz[used[u]]) used[nz++] = used[u];
        for (int i = i0; i < i1; i++) {
            v8f *gr = GW + (size_t)i * N8;
            const int sh = 2 * (i - i0);
            for (int j = 0; j < n8; j += 4) {
                const int r = n8 - j < 4 ? n8 - j : 4;
                v8f a[4] = {{0}, {0}, {0}, {0}};
                for (int u = 0; u < nz; u++) {
                    const int d = (used[u] >> sh) & 3;
                    if (!d) continue;
                    const v8f *Bp = S->B + (size_t)used[u] * N8 + j;
                    if (d == 1)
                        for (int e = 0; e < r; e++) a[e] += Bp[e];
                    else
                        for (int e = 0; e < r; e++) a[e] -= Bp[e];
                }
                for (int e = 0; e < r; e++) gr[j + e] += a[e];
            }
        }
    }
}

/* bvt_backward for pattern_leaves trees: each thread takes whole images (their input
 * gradients never overlap) in blocks of positions. */
static int pattern_backward(const bvt_args *A, const float *g, float *gx, float *gw) {
    const size_t HW = (size_t)A->Ho * A->Wo, CN = (size_t)A->Cp * A->n;
    const int L = A->lev_first[1], NJ = A->lev_first[2] - L, Cp = A->Cp;
    const size_t per_q = (size_t)(A->nodes - L) * Cp * 8 + (size_t)NJ * Cp * 2 + (size_t)Cp * 8 + L;
    int Q = (int)(BVT_PAT_MEM / per_q);
    Q = Q < 8 ? 8 : Q > BVT_PAT_Q ? BVT_PAT_Q : Q;
    int nt;
    float *gwt = thread_grads(A, CN, &nt);
    if (nt > 1 && !gwt) return 1;
    int err = 0;
#pragma omp parallel num_threads(nt) reduction(| : err)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        v8f *GW = own_grads(gw, gwt, CN);
        const size_t b0 = (size_t)A->N * tid / nt, b1 = (size_t)A->N * (tid + 1) / nt;
        const size_t np = (b1 - b0) * HW;
        const int q = np < (size_t)Q ? (int)np : Q;
        pat_t S;
        int pgen[BVT_PAT_N] = {0}, gen = 0;
        if (q > 0 && !pat_alloc(A, &S, q)) err = 1;
        else if (q > 0)
            for (size_t f = b0 * HW; f < b1 * HW; f += q)
                pattern_block(A, &S, f, b1 * HW - f < (size_t)q ? (int)(b1 * HW - f) : q, g, gx, GW, pgen, &gen);
        if (q > 0) pat_free(&S);
    }
    add_thread_grads(gw, gwt, nt, CN);
    return err;
}

/* g: (N, Co, Ho, Wo); gx: (N, Hp, Wp, C) zeroed; gw: (n, Cp) zeroed, term-major.
 *
 * Blocks of BVT_PB output positions of one image, windows of up to BVT_CW output channels:
 * the block's trees are evaluated leaf by leaf across its positions (a leaf's weight rows read
 * once per block), the chain runs root down to the leaves' parents, and each leaf's dL/ds
 * is formed for the whole block and used at once, never stored for every leaf: its weight
 * gradient rows are read and written once per block (summed over the block's positions in
 * registers), its input gradient comes four terms per pass over dL/ds. A term at padding
 * passes no weight gradient; its input gradient lands in the padding, which is cropped. */
int bvt_backward(const bvt_args *A, const float *g, float *gx, float *gw) {
    if (pattern_leaves(A)) return pattern_backward(A, g, gx, gw);
    const size_t HW = (size_t)A->Ho * A->Wo, CN = (size_t)A->Cp * A->n;
    const int T = A->kh * A->kw, C = A->C, L = A->lev_first[1], Co = A->Co, Cp = A->Cp, root = A->nodes - 1;
    const int WR = Cp / 8;                       /* weight / gradient row stride in v8f */
    const int CW = Cp < BVT_CW ? Cp : BVT_CW;    /* window width */
    const int PB = BVT_PB;
    int nt;
    float *gwt = thread_grads(A, CN, &nt);
    if (nt > 1 && !gwt) return 1;
    const v8f *WF = (const v8f *)A->wf;
    int err = 0;
#pragma omp parallel num_threads(nt) reduction(| : err)
    {
        v8f *GW = own_grads(gw, gwt, CN);
        pos_t P[BVT_PB];
        int ok = 1;
        for (int p = 0; p < PB; p++) ok &= pos_alloc(A, &P[p], 1, CW, 0);
        v8f *gi = valloc32(sizeof(float) * CW * PB);   /* per position: the window's output gradient */
        v8f *D = valloc32(sizeof(float) * CW * PB);    /* per position: one leaf's dL/ds */
        if (!ok || !gi || !D) err = 1;
#pragma omp for schedule(static)
        for (int b = 0; b < A->N; b++)
            for (size_t r0 = 0; r0 < HW; r0 += PB) {
                if (err) continue;
                const int np = HW - r0 < (size_t)PB ? (int)(HW - r0) : PB;
                for (int p = 0; p < np; p++)
                    pos_setup(A, &P[p], b, (int)((r0 + p) / A->Wo), (int)((r0 + p) % A->Wo));
                for (int c0 = 0; c0 < Co; c0 += CW) {
                    const int cw = Cp - c0 < CW ? Cp - c0 : CW, n8 = ((Co - c0 < cw ? Co - c0 : cw) + 7) / 8;
                    for (int p = 0; p < np; p++) pos_window(A, &P[p], c0, cw);
                    for (int l = 0; l < L; l++)
                        for (int p = 0; p < np; p++) leaf_sum(A, &P[p], l);
                    for (int p = 0; p < np; p++) {
                        pos_votes(A, &P[p]);
                        out_grad(A, g, (size_t)b, r0 + p, c0, n8, (float *)(gi + (size_t)p * (CW / 8)));
                        pos_chain(A, &P[p], gi + (size_t)p * (CW / 8), L);
                        P[p].cq_node = -1;  /* new dL/ds above the leaves */
                    }
                    for (int l = 0; l < L; l++) {
                        /* the block's live positions for this leaf and their dL/ds */
                        int lp[BVT_PB], nl = 0;
                        for (int p = 0; p < np; p++) {
                            v8f *dp = D + (size_t)p * (CW / 8);
                            int live;
                            if (l == root) {
                                live = P[p].live[root];
                                if (live) memcpy(dp, NC(&P[p], root), sizeof(float) * 8 * n8);
                            } else {
                                const int pl = A->parent[l];
                                live = P[p].live[pl] && P[p].cnt[l] > 0 && leaf_deriv(A, &P[p], l, pl, dp);
                            }
                            if (live) lp[nl++] = p;
                        }
                        if (!nl) continue;
                        const int i0 = A->leaf_start[l], i1 = A->leaf_start[l + 1];
                        /* weight gradient: each row once for the block */
                        for (int i = i0; i < i1; i++) {
                            float m[BVT_PB];
                            int any = 0;
                            for (int q = 0; q < nl; q++) {
                                m[q] = (float)P[lp[q]].a[i];
                                any |= P[lp[q]].a[i];
                            }
                            if (!any) continue;  /* padding everywhere in the block */
                            v8f *gr = GW + (size_t)i * WR + c0 / 8;
                            for (int k = 0; k < n8; k++) {
                                v8f acc = {0};
                                for (int q = 0; q < nl; q++) acc = fma8(acc, (v8f){0} + m[q], D[(size_t)lp[q] * (CW / 8) + k]);
                                gr[k] += acc;
                            }
                        }
                        /* input gradient */
                        for (int q = 0; q < nl; q++) {
                            const pos_t *Pq = &P[lp[q]];
                            const v8f *dq = D + (size_t)lp[q] * (CW / 8);
                            if (A->wtc) {  /* few output channels: one window, tap-major */
                                few_channel_dx(A, Pq, i0, i1, (const float *)dq, gx);
                                continue;
                            }
                            /* (tap, channel) of term i, stepped along instead of divided per term */
                            int t = A->order ? i0 % T : i0 / C, c = A->order ? i0 / T : i0 % C;
                            for (int i = i0; i < i1; i += 4) {  /* four terms per pass (fewer at the end) */
                                const int r = i1 - i < 4 ? i1 - i : 4;
                                const v8f *w0 = WF + (size_t)i * WR + c0 / 8;
                                const v8f *w1 = r > 1 ? w0 + WR : w0, *w2 = r > 2 ? w0 + 2 * WR : w0, *w3 = r > 3 ? w0 + 3 * WR : w0;
                                v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                                for (int k = 0; k < n8; k++) {
                                    v8f d = dq[k];
                                    a0 = fma8(a0, d, w0[k]);
                                    a1 = fma8(a1, d, w1[k]);
                                    a2 = fma8(a2, d, w2[k]);
                                    a3 = fma8(a3, d, w3[k]);
                                }
                                v4fu h = hsum4(a0, a1, a2, a3);
                                for (int u = 0; u < r; u++) {
                                    gx[Pq->pix[t] + c] += h[u];
                                    if (A->order) { if (++t == T) { t = 0; c++; } }
                                    else if (++c == C) { c = 0; t++; }
                                }
                            }
                        }
                    }
                }
            }
        free(gi);
        free(D);
        for (int p = 0; p < PB; p++) pos_free(&P[p]);
    }
    add_thread_grads(gw, gwt, nt, CN);
    return err;
}
