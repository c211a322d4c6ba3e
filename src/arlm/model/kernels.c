/* arlm's small-batch matrix products in float32 and bfloat16 for x86-64 CPUs with AVX-512, and RMSNorm
 * (model/native.py builds and loads this file; model/inference.py and block.c call it; quantized.c has int8 / int4).
 *
 * y[m, n] = sum_k x[m, k] * w[n, k] for rows x (M, K) and a weight w (N, K) read from memory once per call:
 *   float32: float32 rows and weights; every (m, n) sum runs in 16 float32 lanes, k in order, and ends in one fixed
 *            lane reduction, whatever the tile it falls in (the next tile's weights prefetched while a tile computes);
 *   bf16: bfloat16 rows and weights on AMX tiles (where the CPU has them), sums in float32, y rounded to bfloat16;
 *         every row goes through the same tile products.
 * Either way a row's bits depend on that row and the weight only, never on the other rows or on M (batch-invariant),
 * and the weights are reused from cache for every block of rows, so a few rows (speculative verification, a batch of
 * decoding sequences) cost little more than one. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "bf16.h"
#include "kernels.h"

int arlm_amx_ready = 0; /* whether Linux let this process use the AMX tiles (arlm_amx_init) */
int arlm_amx_from = 3;  /* the fewest rows the int8 / int4 products take to AMX (quantized.c; at 2 rows AMX and
                           VNNI take about as long, at 1 VNNI ~20% less, at 8 AMX ~30% less: docs/perf.md) */

#define TILE_M 4 /* rows of x per tile */
#define TILE_N 4 /* rows of w per tile */

static inline __m512 load_x(const float *x, long k, long K) {
    if (k + 16 <= K) return _mm512_loadu_ps(x + k);
    return _mm512_maskz_loadu_ps((__mmask16)((1u << (K - k)) - 1), x + k);
}

/* one cache line of each of the TILE_N weight rows at `row0`, `stride` bytes apart (a hint: never faults) */
static inline void prefetch_rows(const void *row0, long stride) {
    for (int j = 0; j < TILE_N; j++) _mm_prefetch((const char *)row0 + j * stride, _MM_HINT_T0);
}

/* mt (<= TILE_M) rows from m0 times nt (<= TILE_N) float32 weight rows from n0; mt and nt are constants where
 * inlined */
static inline __attribute__((always_inline)) void dot_tile(const float *x, const float *w, float *y, long m0, int mt,
                                                           long n0, int nt, long N, long K) {
    __m512 acc[TILE_M][TILE_N];
    for (int i = 0; i < mt; i++)
        for (int j = 0; j < nt; j++) acc[i][j] = _mm512_setzero_ps();
    for (long k = 0; k < K; k += 16) {
        __m512 wv[TILE_N];
        for (int j = 0; j < nt; j++) wv[j] = load_x(w + (n0 + j) * K, k, K);
        if (m0 == 0) prefetch_rows(w + (n0 + TILE_N) * K + k, K * 4);
        for (int i = 0; i < mt; i++) {
            __m512 xv = load_x(x + (m0 + i) * K, k, K);
            for (int j = 0; j < nt; j++) acc[i][j] = _mm512_fmadd_ps(wv[j], xv, acc[i][j]);
        }
    }
    for (int i = 0; i < mt; i++)
        for (int j = 0; j < nt; j++) y[(m0 + i) * N + n0 + j] = _mm512_reduce_add_ps(acc[i][j]);
}

/* Every TILE_M x TILE_N tile of y over threads by weight rows, each tile by `TILE(m0, mt, n0, nt)` with literal tile
 * sizes where they are full (so the compiler keeps the tile's sums in registers); the last weight rows one at a
 * time. */
#define FOR_EACH_TILE(TILE)                                                  \
    _Pragma("omp parallel for schedule(static) num_threads(threads)")       \
    for (long t = 0; t < (N + TILE_N - 1) / TILE_N; t++) {                    \
        long n0 = t * TILE_N;                                                \
        for (long m0 = 0; m0 < M; m0 += TILE_M) {                            \
            long mt = M - m0 < TILE_M ? M - m0 : TILE_M;                     \
            if (N - n0 < TILE_N) {                                           \
                for (long j = n0; j < N; j++)                                \
                    for (long i = m0; i < m0 + mt; i++) TILE(i, 1, j, 1);    \
            } else if (mt == 4) TILE(m0, 4, n0, TILE_N);                     \
            else if (mt == 3) TILE(m0, 3, n0, TILE_N);                       \
            else if (mt == 2) TILE(m0, 2, n0, TILE_N);                       \
            else TILE(m0, 1, n0, TILE_N);                                    \
        }                                                                    \
    }

void arlm_f32_mm(const float *x, const float *w, float *y, long M, long N, long K, int threads) {
#define F32_TILE(m0, mt, n0, nt) dot_tile(x, w, y, m0, mt, n0, nt, N, K)
    FOR_EACH_TILE(F32_TILE)
}

#ifdef __AMX_BF16__
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Asks Linux for this process's right to use the AMX tile registers; 0 on success. */
int arlm_amx_init(void) {
    arlm_amx_ready = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
    return arlm_amx_ready ? 0 : -1;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

/* tile 0: `rows` rows of x, 32 bfloat16 each; tiles 1, 2: 16 k-pairs x 16 outputs x 2 of w; tiles 3, 4: the sums,
 * `rows` x 16 float32 */
static void configure_tiles(int rows) {
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 5; t++) {
        c.colsb[t] = 64;
        c.rows[t] = t == 1 || t == 2 ? 16 : rows;
    }
    _tile_loadconfig(&c);
}

/* rows m0 .. m0 + rows of y for outputs 32 p .. 32 p + 32: two 16-output tiles of sums over every k */
static void bf16_block(const uint16_t *x, const uint16_t *tiles, uint16_t *y, long m0, int rows, long p, long N,
                       long K) {
    long steps = K / 32;
    const uint16_t *b0 = tiles + 2 * p * steps * 512, *b1 = b0 + steps * 512;
    float sums[2][16][16];
    _tile_zero(3);
    _tile_zero(4);
    for (long k = 0; k < steps; k++) {
        _tile_loadd(0, x + m0 * K + 32 * k, 2 * K);
        _tile_loadd(1, b0 + 512 * k, 64);
        _tile_dpbf16ps(3, 0, 1);
        _tile_loadd(2, b1 + 512 * k, 64);
        _tile_dpbf16ps(4, 0, 2);
    }
    _tile_stored(3, sums[0], 64);
    _tile_stored(4, sums[1], 64);
    for (int i = 0; i < rows; i++)
        for (int h = 0; h < 2; h++)
            for (int j = 0; j < 16; j++) y[(m0 + i) * N + 32 * p + 16 * h + j] = to_bf16(sums[h][i][j]);
}

/* y (M, N) bfloat16 = x (M, K) bfloat16 times w^T, w (N, K) held as `tiles` (arlm_bf16_tiles' layout; N % 32 == 0,
 * K % 32 == 0), on AMX: every row's sums go through the same tile products whatever M is (batch-invariant). Each
 * thread takes pairs of 16-output tiles and, for each, every 16-row block of x, so each weight is read from memory
 * once per call. */
void arlm_bf16_mm(const uint16_t *x, const uint16_t *tiles, uint16_t *y, long M, long N, long K, int threads) {
    long pairs = N / 32, full = M / 16, rest = M % 16;
#pragma omp parallel num_threads(threads)
    {
        if (full) {
            configure_tiles(16);
#pragma omp for schedule(static)
            for (long p = 0; p < pairs; p++)
                for (long b = 0; b < full; b++) bf16_block(x, tiles, y, 16 * b, 16, p, N, K);
        }
        if (rest) {
            configure_tiles((int)rest);
#pragma omp for schedule(static)
            for (long p = 0; p < pairs; p++) bf16_block(x, tiles, y, 16 * full, (int)rest, p, N, K);
        }
        _tile_release();
    }
}
#endif

/* RMSNorm of M rows of D values: y = x / sqrt(mean(x^2) + eps) * w, the sum of squares in 16 float32 lanes (k in
 * order, one fixed lane reduction: a row's bits do not depend on the other rows). float32 rows and weight: */
static inline float inverse_rms(const float *x, long D, float eps) {
    __m512 acc = _mm512_setzero_ps();
    for (long k = 0; k < D; k += 16) {
        __m512 v = load_x(x, k, D);
        acc = _mm512_fmadd_ps(v, v, acc);
    }
    return 1.0f / sqrtf(_mm512_reduce_add_ps(acc) / (float)D + eps);
}

void arlm_rms_norm(const float *x, const float *w, float *y, long M, long D, float eps) {
    for (long m = 0; m < M; m++) {
        const float *row = x + m * D;
        __m512 r = _mm512_set1_ps(inverse_rms(row, D, eps));
        for (long k = 0; k < D; k += 16) {
            __mmask16 mask = k + 16 <= D ? (__mmask16)0xffff : (__mmask16)((1u << (D - k)) - 1);
            __m512 v = _mm512_mul_ps(_mm512_mul_ps(load_x(row, k, D), r), load_x(w, k, D));
            _mm512_mask_storeu_ps(y + m * D + k, mask, v);
        }
    }
}

/* bfloat16 rows and weight, as a bfloat16 model computes it: normed = bf16(x * inverse rms) in float32, y = bf16(w *
 * normed) */
void arlm_rms_norm_bf16(const uint16_t *x, const uint16_t *w, uint16_t *y, long M, long D, float eps) {
    float row[D];
    for (long m = 0; m < M; m++) {
        for (long k = 0; k < D; k++) row[k] = from_bf16(x[m * D + k]);
        float r = inverse_rms(row, D, eps);
        for (long k = 0; k < D; k++) y[m * D + k] = to_bf16(from_bf16(to_bf16(row[k] * r)) * from_bf16(w[k]));
    }
}
