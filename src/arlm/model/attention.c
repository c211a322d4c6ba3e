/* arlm's cached attention for x86-64 CPUs with AVX-512 (model/native.py builds and loads this file with kernels.c;
 * model/attention.py calls it for cached forwards over a few new tokens: decoding steps and verifications).
 *
 * One call does what ~20 PyTorch ops do for a layer: the new tokens' queries and keys rotated (RoPE, rotate-half
 * layout), keys and values written into the cache at each row's position, and every query attending over its row's
 * keys up to its own position (softmax(q k / sqrt(hd)) v, in float32), the output laid out for the projection.
 *
 * Exactness: the rotation computes x * cos + rotated * sin in float32, one rounding per operation (no fused multiply-
 * add: built with -ffp-contract=off) and rounds to the rows' dtype, as model/attention.py's apply_rope does, so the
 * cache holds the same bits either path writes. Each query's attention is computed alone (keys in order, one fixed
 * reduction), so its bits depend on its own query, keys and values only: a verification of k tokens gives each token
 * the bits k one-token steps give, and a row of a batch the bits it gets alone.
 *
 * Dtypes: rows (qkv, out) float32 or bfloat16 (xbf = 1); cache float32 or bfloat16 (cbf = 1); head_dim a multiple
 * of 16, at most 256. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "bf16.h"

/* element i of a float32 or bfloat16 array, as float32 */
static inline float value(const void *p, int bf, long i) {
    return bf ? from_bf16(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store(void *p, int bf, long i, float v) {
    if (bf)
        ((uint16_t *)p)[i] = to_bf16(v);
    else
        ((float *)p)[i] = v;
}

/* 16 elements of a float32 or bfloat16 array from i, as float32 */
static inline __m512 load16(const void *p, int bf, long i) {
    if (!bf) return _mm512_loadu_ps((const float *)p + i);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline float round_bf16(float v) { return from_bf16(to_bf16(v)); }

/* a head (hd values of dtype xbf) rotated by the angles (cos, sin: dtype tbf), rounded to the head's dtype, into dst
 * (float32); bfloat16 angles round each product and the sum, as PyTorch's bfloat16 ops do */
static void rotate(const void *head, int xbf, const void *cos, const void *sin, int tbf, long hd, float *dst) {
    long half = hd / 2;
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

/* One query q (hd float32) over keys/values [0, seen) of one cache head (hd values each, dtype cbf), keys where
 * allowed (NULL: all), into out (dtype xbf) */
static void attend_one(const float *q, const void *keys, const void *values, int cbf, const uint8_t *allowed,
                       long seen, long hd, void *out, int xbf) {
    float scores[seen];
    float scale = 1.0f / sqrtf((float)hd), top = -INFINITY;
    for (long j = 0; j < seen; j++) {
        if (allowed && !allowed[j]) {
            scores[j] = -INFINITY;
            continue;
        }
        __m512 acc = _mm512_setzero_ps();
        for (long d = 0; d < hd; d += 16)
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), load16(keys, cbf, j * hd + d), acc);
        scores[j] = _mm512_reduce_add_ps(acc) * scale;
        if (scores[j] > top) top = scores[j];
    }
    __m512 sums[16]; /* hd <= 256 */
    for (long d = 0; d < hd; d += 16) sums[d / 16] = _mm512_setzero_ps();
    float total = 0.0f;
    for (long j = 0; j < seen; j++) {
        if (scores[j] == -INFINITY) continue;
        float p = expf(scores[j] - top);
        total += p;
        __m512 weight = _mm512_set1_ps(p);
        for (long d = 0; d < hd; d += 16)
            sums[d / 16] = _mm512_fmadd_ps(weight, load16(values, cbf, j * hd + d), sums[d / 16]);
    }
    float lanes[16];
    for (long d = 0; d < hd; d += 16) {
        _mm512_storeu_ps(lanes, _mm512_div_ps(sums[d / 16], _mm512_set1_ps(total)));
        for (int i = 0; i < 16; i++) store(out, xbf, d + i, lanes[i]);
    }
}

/* one call's arguments (arlm_attend's) */
typedef struct {
    const char *qkv, *cos, *sin;
    int xbf, tbf;
    long rope_stride, T, nh, nkv, hd;
    const long *rows, *starts;
    long start;
} Call;

static inline long cache_row(const Call *a, long b) { return a->rows ? a->rows[b] : b; }

static inline long position(const Call *a, long b, long t) { return (a->starts ? a->starts[b] : a->start) + t; }

/* the start of head h (0..nh + 2 nkv) of row b's new token t in qkv */
static inline const char *token_head(const Call *a, long b, long t, long h) {
    return a->qkv + ((b * a->T + t) * (a->nh + 2 * a->nkv) + h) * a->hd * (a->xbf ? 2 : 4);
}

/* head h of row b's new token t rotated by its position's angles, into dst (float32) */
static inline void rotate_head(const Call *a, long b, long t, long h, float *dst) {
    long angle = (b * a->rope_stride + t * a->hd) * (a->tbf ? 2 : 4);
    rotate(token_head(a, b, t, h), a->xbf, a->cos + angle, a->sin + angle, a->tbf, a->hd, dst);
}

/* qkv (B, T, (nh + 2 nkv) hd): each row's new tokens' queries, keys and values; cos, sin (B or 1, T, hd) float32 or
 * bfloat16 (tbf = 1), the angles of their positions (rope_stride: T hd, or 0 for one set for every row); cache
 * keys/values (R, nkv, L, hd): row b lives in cache row rows[b] (NULL: b), its new tokens at positions starts[b]
 * (NULL: start) onward; allowed (B or 1, T, S) bytes or NULL: key j may be attended by query t (mask_stride: T S, or
 * 0); out (B, T, nh hd). */
void arlm_attend(const void *qkv, int xbf, const void *cos, const void *sin, int tbf, long rope_stride, void *ck,
                 void *cv, int cbf, const long *rows, const long *starts, long start, const uint8_t *allowed,
                 long mask_stride, long S, void *out, long B, long T, long nh, long nkv, long hd, long L, int threads) {
    Call a = {qkv, cos, sin, xbf, tbf, rope_stride, T, nh, nkv, hd, rows, starts, start};
    long csize = cbf ? 2 : 4;
#pragma omp parallel num_threads(threads)
    {
        float rotated[hd];
#pragma omp for collapse(3) schedule(static)
        for (long b = 0; b < B; b++)
            for (long t = 0; t < T; t++)
                for (long h = 0; h < nkv; h++) {
                    long at = ((cache_row(&a, b) * nkv + h) * L + position(&a, b, t)) * hd;
                    const char *v = token_head(&a, b, t, nh + nkv + h);
                    rotate_head(&a, b, t, nh + h, rotated);
                    for (long d = 0; d < hd; d++) store(ck, cbf, at + d, rotated[d]);
                    for (long d = 0; d < hd; d++) store(cv, cbf, at + d, value(v, xbf, d));
                }
#pragma omp for collapse(3) schedule(static)
        for (long b = 0; b < B; b++)
            for (long h = 0; h < nh; h++)
                for (long t = 0; t < T; t++) {
                    rotate_head(&a, b, t, h, rotated);
                    long head = (cache_row(&a, b) * nkv + h / (nh / nkv)) * L * hd * csize;
                    const uint8_t *mask = allowed ? allowed + b * mask_stride + t * S : NULL;
                    char *dst = (char *)out + ((b * T + t) * nh + h) * hd * (xbf ? 2 : 4);
                    attend_one(rotated, (char *)ck + head, (char *)cv + head, cbf, mask, position(&a, b, t) + 1, hd,
                               dst, xbf);
                }
    }
}
