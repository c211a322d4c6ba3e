/* arlm's cached attention for x86-64 CPUs with AVX-512 or AVX2 (simd.h; model/native.py builds and loads this file
 * with kernels.c; model/attention.py calls it for cached forwards over a few new tokens: decoding steps and
 * verifications).
 *
 * One call does what ~20 PyTorch ops do for a layer: the new tokens' queries and keys rotated (RoPE, rotate-half
 * layout), keys and values written into the cache at each row's position, and every query attending over its row's
 * keys up to its own position (softmax(q k / sqrt(hd)) v, in float32), the output laid out for the projection.
 *
 * Exactness: the rotation computes x * cos + rotated * sin in float32, one rounding per operation (no fused multiply-
 * add: built with -ffp-contract=off) and rounds to the rows' dtype, as model/attention.py's apply_rope does, so the
 * cache holds the same bits either path writes. Each query's attention is computed alone (its keys in groups of VL
 * from the first, fixed reductions), so its bits depend on its own query, keys and values only: a verification of k
 * tokens gives each token the bits k one-token steps give, and a row of a batch the bits it gets alone. With AVX-512
 * a batch or a verification takes the query heads that share a cache head together (attend_group), each key and value
 * read once for them, each query still computed by the same operations in the same order.
 *
 * Dtypes: rows (qkv, out) float32 or bfloat16 (xbf = 1); cache float32 or bfloat16 (cbf = 1); head_dim a multiple
 * of 16, at most 256. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "bf16.h"
#include "kernels.h"
#include "simd.h"

/* VL elements of a float32 or bfloat16 array from i, as float32 */
static inline vf load_values(const void *p, int bf, long i) {
    return bf ? vf_load_bf16((const uint16_t *)p + i) : vf_load((const float *)p + i);
}

/* a head (hd values of dtype xbf) rotated by the angles (cos, sin: dtype tbf), rounded to the head's dtype, into dst
 * (float32); bfloat16 angles round each product and the sum, as PyTorch's bfloat16 ops do */
static void rotate(const void *head, int xbf, const void *cos, const void *sin, int tbf, long hd, float *dst) {
    long half = hd / 2;
    if (!xbf && !tbf && half % VL == 0) { /* float32 throughout: the same operations, VL values at a time (a batch of 8
                                             rows' attention 0.9x the time) */
        const float *x = head, *c = cos, *s = sin;
        for (long d = 0; d < half; d += VL) {
            vf low = vf_load(x + d), high = vf_load(x + half + d), minus = vf_mul(high, vf_set1(-1.0f));
            vf_store(dst + d, vf_add(vf_mul(low, vf_load(c + d)), vf_mul(minus, vf_load(s + d))));
            vf_store(dst + half + d, vf_add(vf_mul(high, vf_load(c + half + d)), vf_mul(low, vf_load(s + half + d))));
        }
        return;
    }
    for (long d = 0; d < hd; d++) {
        float x = value(head, xbf, d);
        float r = d < half ? -value(head, xbf, d + half) : value(head, xbf, d - half);
        float a = x * value(cos, tbf, d);
        float b = r * value(sin, tbf, d);
        if (tbf) a = round_bf16(a), b = round_bf16(b);
        float v = a + b;
        dst[d] = xbf || tbf ? round_bf16(v) : v;
    }
}

/* the scores q . k of keys j0 .. j0 + n (n <= VL; lanes past n zero), one vector: each key's products summed lane by
 * lane over d in order, then across the lanes by vf_sums' tree -- the same for every key wherever it sits */
static inline __attribute__((always_inline)) vf key_scores(const float *q, const void *keys, int cbf, long j0, long n,
                                                           long hd) {
    vf acc[VL];
    for (int i = 0; i < VL; i++) {
        acc[i] = vf_zero();
        if (i < n)
            for (long d = 0; d < hd; d += VL)
                acc[i] = vf_fma(vf_load(q + d), load_values(keys, cbf, (j0 + i) * hd + d), acc[i]);
    }
    return vf_sums(acc);
}

/* sums (hd / VL vectors) += p times value j */
static inline __attribute__((always_inline)) void add_value(vf *sums, float p, const void *values, int cbf, long j,
                                                            long hd) {
    vf weight = vf_set1(p);
    for (long d = 0; d < hd; d += VL) sums[d / VL] = vf_fma(weight, load_values(values, cbf, j * hd + d), sums[d / VL]);
}

/* One query q (hd float32) over keys/values [0, seen) of one cache head (hd values each, dtype cbf), keys where
 * allowed (NULL: all), into out (dtype xbf). Keys VL at a time (vf_sums), the weighted values in two sums (even and
 * odd keys, added at the end): every step's order is fixed by `seen` alone. One key a step, its score reduced alone
 * and one chain of sums, took ~20 cycles a key (docs/perf.md). */
static inline __attribute__((always_inline)) void attend_one(const float *q, const void *keys, const void *values,
                                                             int cbf, const uint8_t *allowed, long seen, long hd,
                                                             void *out, int xbf) {
    long padded = (seen + VL - 1) / VL * VL;
    float scores[padded], weights[padded];
    const vf scale = vf_set1(1.0f / sqrtf((float)hd));
    vf top = vf_set1(-INFINITY);
    for (long j = 0; j < padded; j += VL) {
        vf s = j + VL <= seen ? key_scores(q, keys, cbf, j, VL, hd) : key_scores(q, keys, cbf, j, seen - j, hd);
        vf_store(scores + j, vf_mul(s, scale));
        if (allowed || j + VL > seen) /* masked keys and lanes past the last: no weight */
            for (long i = j; i < j + VL; i++)
                if (i >= seen || (allowed && !allowed[i])) scores[i] = -INFINITY;
        top = vf_max(top, vf_load(scores + j));
    }
    const vf shift = vf_set1(-vf_top(top));
    vf total = vf_zero();
    for (long j = 0; j < padded; j += VL) { /* e^(score - top) on vectors (simd.h's vf_exp), 0 where masked */
        vf s = vf_load(scores + j), w = vf_where_not_neg_inf(s, vf_exp(vf_add(s, shift)));
        vf_store(weights + j, w);
        total = vf_add(total, w);
    }
    vf even[256 / VL], odd[256 / VL]; /* hd <= 256 */
    for (long d = 0; d < hd; d += VL) even[d / VL] = odd[d / VL] = vf_zero();
    for (long j = 0; j < seen; j += 2) {
        if (!allowed || allowed[j]) add_value(even, weights[j], values, cbf, j, hd);
        if (j + 1 < seen && (!allowed || allowed[j + 1])) add_value(odd, weights[j + 1], values, cbf, j + 1, hd);
    }
    const vf divisor = vf_set1(vf_sum(total));
    float lanes[VL];
    for (long d = 0; d < hd; d += VL) {
        vf_store(lanes, vf_div(vf_add(even[d / VL], odd[d / VL]), divisor));
        for (int i = 0; i < VL; i++) store(out, xbf, d + i, lanes[i]);
    }
}

#if VL == 16
#define GROUP_MAX 4 /* query heads a cache head serves that one call takes together (GQA; SmolLM2: 3) */
/* attend_one for the g (<= GROUP_MAX) queries q[0 .. g) of one cache head (the query heads that share it: the same
 * keys, values and mask) into out[0 .. g): each query's operations are attend_one's in its order (the same bits), but
 * each key and value vector is read once for the g of them, not once each (hd 64: SmolLM2's, Llama-style models') */
static inline __attribute__((always_inline)) void attend_group(const float *const *q, const int g, const void *keys,
                                                              const void *values, int cbf, const uint8_t *allowed,
                                                              long seen, void *const *out, int xbf) {
    const long hd = 64, padded = (seen + VL - 1) / VL * VL;
    float scores[g * padded]; /* (g a constant where inlined: 3 or 2 rows of scores on the stack) */
    const vf scale = vf_set1(1.0f / sqrtf((float)hd));
    vf top[GROUP_MAX], total[GROUP_MAX], shift[GROUP_MAX];
    for (int k = 0; k < g; k++) top[k] = vf_set1(-INFINITY), total[k] = vf_zero();
    for (long j = 0; j < padded; j += VL) {
        long n = j + VL <= seen ? VL : seen - j;
        vf acc[GROUP_MAX][VL];
        for (int i = 0; i < VL; i++) {
            for (int k = 0; k < g; k++) acc[k][i] = vf_zero();
            if (i < n)
                for (long d = 0; d < hd; d += VL) {
                    vf key = load_values(keys, cbf, (j + i) * hd + d);
                    for (int k = 0; k < g; k++) acc[k][i] = vf_fma(vf_load(q[k] + d), key, acc[k][i]);
                }
        }
        for (int k = 0; k < g; k++) {
            float *row = scores + k * padded;
            vf_store(row + j, vf_mul(vf_sums(acc[k]), scale));
            if (allowed || j + VL > seen)
                for (long i = j; i < j + VL; i++)
                    if (i >= seen || (allowed && !allowed[i])) row[i] = -INFINITY;
            top[k] = vf_max(top[k], vf_load(row + j));
        }
    }
    for (int k = 0; k < g; k++) { /* the weights e^(score - top) in place of the scores */
        float *row = scores + k * padded;
        shift[k] = vf_set1(-vf_top(top[k]));
        for (long j = 0; j < padded; j += VL) {
            vf s = vf_load(row + j), w = vf_where_not_neg_inf(s, vf_exp(vf_add(s, shift[k])));
            vf_store(row + j, w);
            total[k] = vf_add(total[k], w);
        }
    }
    vf even[GROUP_MAX][4], odd[GROUP_MAX][4];
    for (int k = 0; k < g; k++)
        for (int d = 0; d < 4; d++) even[k][d] = odd[k][d] = vf_zero();
    for (long j = 0; j < seen; j += 2) { /* even keys into `even`, odd ones into `odd`, as attend_one */
        if (!allowed || allowed[j])
            for (int d = 0; d < 4; d++) {
                vf value = load_values(values, cbf, j * hd + d * VL);
                for (int k = 0; k < g; k++) even[k][d] = vf_fma(vf_set1(scores[k * padded + j]), value, even[k][d]);
            }
        if (j + 1 < seen && (!allowed || allowed[j + 1]))
            for (int d = 0; d < 4; d++) {
                vf value = load_values(values, cbf, (j + 1) * hd + d * VL);
                for (int k = 0; k < g; k++) odd[k][d] = vf_fma(vf_set1(scores[k * padded + j + 1]), value, odd[k][d]);
            }
    }
    for (int k = 0; k < g; k++) {
        const vf divisor = vf_set1(vf_sum(total[k]));
        float lanes[VL];
        for (long d = 0; d < hd; d += VL) {
            vf_store(lanes, vf_div(vf_add(even[k][d / VL], odd[k][d / VL]), divisor));
            for (int i = 0; i < VL; i++) store(out[k], xbf, d + i, lanes[i]);
        }
    }
}
#endif

/* attend_one compiled for SmolLM2's and most models' head size, and for any other */
static void attend(const float *q, const void *keys, const void *values, int cbf, const uint8_t *allowed, long seen,
                   long hd, void *out, int xbf) {
    if (hd == 64) attend_one(q, keys, values, cbf, allowed, seen, 64, out, xbf);
    else attend_one(q, keys, values, cbf, allowed, seen, hd, out, xbf);
}

/* one call: its arguments and rows */
typedef struct {
    const Attention *a;
    const char *qkv;
} Call;

static inline long cache_row(const Call *c, long b) { return c->a->rows ? c->a->rows[b] : b; }

static inline long position(const Call *c, long b, long t) {
    return (c->a->starts ? c->a->starts[b] : c->a->start) + t;
}

/* the start of head h (0..nh + 2 nkv) of row b's new token t in qkv */
static inline const char *token_head(const Call *c, long b, long t, long h) {
    const Attention *a = c->a;
    return c->qkv + ((b * a->T + t) * (a->nh + 2 * a->nkv) + h) * a->hd * (a->xbf ? 2 : 4);
}

/* head h of row b's new token t rotated by its position's angles, into dst (float32) */
static inline void rotate_head(const Call *c, long b, long t, long h, float *dst) {
    const Attention *a = c->a;
    long angle = (b * a->rope_stride + t * a->hd) * (a->tbf ? 2 : 4);
    rotate(token_head(c, b, t, h), a->xbf, (const char *)a->cos + angle, (const char *)a->sin + angle, a->tbf, a->hd,
           dst);
}

/* query t of row b's mask (NULL: none) */
static inline const uint8_t *mask_of(const Call *c, long b, long t) {
    return c->a->allowed ? c->a->allowed + b * c->a->mask_stride + t * c->a->S : NULL;
}

/* where head h of row b's token t goes in out */
static inline char *output(const Call *c, void *out, long b, long t, long h) {
    const Attention *a = c->a;
    return (char *)out + ((b * a->T + t) * a->nh + h) * a->hd * (a->xbf ? 2 : 4);
}

/* Whether the call takes each cache head's query heads together (attend_group: AVX-512, head size 64, 2 to GROUP_MAX
 * query heads a cache head) -- where the groups are enough to keep the threads busy: a batch or a verification, not
 * one row's one token (3 cache heads over 2 threads; its query heads one at a time split 5 and 4). The same bits
 * either way. */
static int grouped(const Attention *a, int threads) {
#if VL == 16
    long per = a->nh / a->nkv;
    return a->hd == 64 && per >= 2 && per <= GROUP_MAX && a->B * a->T * a->nkv >= 4 * threads;
#else
    (void)a, (void)threads;
    return 0;
#endif
}

/* row b's token t: the query heads of cache head h, together (attend_group) */
static void attend_heads(const Call *c, long b, long h, long t, void *out) {
#if VL == 16
    const Attention *a = c->a;
    long per = a->nh / a->nkv, head = (cache_row(c, b) * a->nkv + h) * a->L * a->hd * (a->cbf ? 2 : 4);
    float rotated[GROUP_MAX][64];
    const float *q[GROUP_MAX];
    void *dst[GROUP_MAX];
    for (long k = 0; k < per; k++) {
        rotate_head(c, b, t, h * per + k, rotated[k]);
        q[k] = rotated[k], dst[k] = output(c, out, b, t, h * per + k);
    }
    const void *keys = (char *)a->ck + head, *values = (char *)a->cv + head;
    const uint8_t *mask = mask_of(c, b, t);
    long seen = position(c, b, t) + 1;
    if (per == 3) attend_group(q, 3, keys, values, a->cbf, mask, seen, dst, a->xbf); /* (SmolLM2) */
    else if (per == 2) attend_group(q, 2, keys, values, a->cbf, mask, seen, dst, a->xbf);
    else attend_group(q, 4, keys, values, a->cbf, mask, seen, dst, a->xbf);
#else
    (void)c, (void)b, (void)h, (void)t, (void)out;
#endif
}

/* kernels.h says what the arguments hold */
void arlm_attend(const Attention *a, const void *qkv, void *out, int threads) {
    Call c = {a, qkv};
    long nh = a->nh, nkv = a->nkv, hd = a->hd, L = a->L, T = a->T, csize = a->cbf ? 2 : 4;
#pragma omp parallel num_threads(threads)
    {
        float rotated[hd];
#pragma omp for collapse(3) schedule(static)
        for (long b = 0; b < a->B; b++)
            for (long t = 0; t < T; t++)
                for (long h = 0; h < nkv; h++) {
                    long at = ((cache_row(&c, b) * nkv + h) * L + position(&c, b, t)) * hd;
                    const char *v = token_head(&c, b, t, nh + nkv + h);
                    rotate_head(&c, b, t, nh + h, rotated);
                    for (long d = 0; d < hd; d++) store(a->ck, a->cbf, at + d, rotated[d]);
                    for (long d = 0; d < hd; d++) store(a->cv, a->cbf, at + d, value(v, a->xbf, d));
                }
        if (grouped(a, threads)) {
#pragma omp for collapse(3) schedule(static)
            for (long b = 0; b < a->B; b++)
                for (long h = 0; h < nkv; h++)
                    for (long t = 0; t < T; t++) attend_heads(&c, b, h, t, out);
        } else {
#pragma omp for collapse(3) schedule(static)
            for (long b = 0; b < a->B; b++)
                for (long h = 0; h < nh; h++)
                    for (long t = 0; t < T; t++) {
                        rotate_head(&c, b, t, h, rotated);
                        long head = (cache_row(&c, b) * nkv + h / (nh / nkv)) * L * hd * csize;
                        attend(rotated, (char *)a->ck + head, (char *)a->cv + head, a->cbf, mask_of(&c, b, t),
                               position(&c, b, t) + 1, hd, output(&c, out, b, t, h), a->xbf);
                    }
        }
    }
}
