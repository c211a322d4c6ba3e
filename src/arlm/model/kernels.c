/* arlm's small-batch matrix products in float32 for x86-64 CPUs with AVX-512 or AVX2 (simd.h), and RMSNorm
 * (model/native.py builds and loads this file; model/inference.py and block.c call it; bf16_mm.c has bfloat16,
 * quantized.c int8 / int4).
 *
 * y[m, n] = sum_k x[m, k] * w[n, k] for float32 rows x (M, K) and a weight w (N, K) read from memory once per call:
 *   packed (arlm_f32p_mm; native.pack_f32: 16 outputs to a line): every (m, n) sum is one lane's FMAs, k in order (one
 *   row over 4 tiles side by side; on AVX-512 more rows in blocks of up to 8 over 3 tiles, several blocks in passes
 *   of 128 inputs; on AVX2 2-4 rows over 3 tiles, more in blocks of 6 over one, a prompt's in passes of 256); in
 *   place (arlm_f32_mm: w as it is, for a weight two Linears share): every sum runs in VL lanes, k in order, and ends
 *   in one fixed lane reduction (the next tile's weights prefetched while a tile computes).
 * Either way a row's bits depend on that row and the weight only, never on the other rows or on M (batch-invariant),
 * and the weights are reused from cache for every block of rows, so a few rows (speculative verification, a batch of
 * decoding sequences) cost little more than one. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "bf16.h"
#include "kernels.h"
#include "simd.h"
#include "rows.h"

int arlm_amx_ready = 0; /* whether Linux let this process use the AMX tiles (arlm_amx_init) */
int arlm_amx_from = 3;  /* the fewest rows the int8 / int4 products take to AMX (quantized.c; at 2 rows AMX and
                           VNNI take about as long, at 1 VNNI ~20% less, at 8 AMX ~30% less: docs/perf.md) */

#define TILE_M (VL == 16 ? 4 : 3) /* rows of x per tile (AVX2's 16 registers hold 3 x 4 sums) */
#define TILE_N 4                   /* rows of w per tile */
#define ONE_ROW_N 12 /* rows of w per tile for one row of x: more weight rows streamed at once (8 to 16 read ~10% faster
                        than 4 on an AVX2 EPYC) */

static inline vf load_x(const float *x, long k, long K) {
    return k + VL <= K ? vf_load(x + k) : vf_loadn(x + k, K - k);
}

/* one cache line of each of `rows` weight rows from `row0`, `stride` bytes apart (a hint: never faults) */
static inline __attribute__((always_inline)) void prefetch_rows(const void *row0, long stride, int rows) {
    for (int j = 0; j < rows; j++) _mm_prefetch((const char *)row0 + j * stride, _MM_HINT_T0);
}

/* acc[i][j] += x row i's and weight row j's VL values at k (n of them; n < VL only at the tail), for mt rows and nt
 * weight rows: one weight vector live at a time, the rows' values read as operands (AVX2's 16 registers then hold a
 * 3 x 4 tile's sums without spilling them) */
static inline __attribute__((always_inline)) void dot_step(const float *x, const float *w, vf acc[][ONE_ROW_N], int mt,
                                                           int nt, long k, long n, long K) {
    for (int j = 0; j < nt; j++) {
        vf wv = n == VL ? vf_load(w + j * K + k) : vf_loadn(w + j * K + k, n);
        for (int i = 0; i < mt; i++)
            acc[i][j] = vf_fma(wv, n == VL ? vf_load(x + i * K + k) : vf_loadn(x + i * K + k, n), acc[i][j]);
    }
}

/* mt (<= TILE_M) rows from m0 times nt (<= ONE_ROW_N) float32 weight rows from n0; mt and nt are constants where
 * inlined */
static inline __attribute__((always_inline)) void dot_tile(const float *x, const float *w, float *y, long m0, int mt,
                                                           long n0, int nt, long N, long K) {
    vf acc[4][ONE_ROW_N]; /* mt <= 4, nt <= ONE_ROW_N */
    for (int i = 0; i < mt; i++)
        for (int j = 0; j < nt; j++) acc[i][j] = vf_zero();
    const float *xs = x + m0 * K, *ws = w + n0 * K;
    long full = K - K % VL;
    for (long k = 0; k < full; k += VL) {
        if (m0 == 0) prefetch_rows(ws + nt * K + k, K * 4, nt);
        dot_step(xs, ws, acc, mt, nt, k, VL, K);
    }
    if (full < K) dot_step(xs, ws, acc, mt, nt, full, K - full, K);
    for (int i = 0; i < mt; i++)
        for (int j = 0; j < nt; j++) y[(m0 + i) * N + n0 + j] = vf_sum(acc[i][j]);
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
    if (M == 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (long t = 0; t < N / ONE_ROW_N; t++) dot_tile(x, w, y, 0, 1, t * ONE_ROW_N, ONE_ROW_N, N, K);
        for (long j = N - N % ONE_ROW_N; j < N; j++) dot_tile(x, w, y, 0, 1, j, 1, N, K);
        return;
    }
    FOR_EACH_TILE(F32_TILE)
}

/* The float32 product on packed weights (native.pack_f32: (ceil(N/16), K, 16), 16 outputs to a line, zeros past N):
 * each output's sum is one lane's FMAs over k in order, whatever the rows or tiles beside it (batch-invariant, and
 * the same bits on AVX-512 and AVX2). Rows x are broadcast a value at a time against a tile's weight vectors, the
 * register-blocked shape of a matrix product (the lane-reduction tile above reads 16 vectors per 12 FMAs, this one
 * 8 per 12). */
#define PACK 16                        /* outputs per tile */
#define PACK_V (PACK / VL)             /* vectors per tile's line */
#define PACK_TILES 4                   /* tiles at once for one row: 4 weight streams, 4 PACK_V sums in flight */
/* A few rows (2 to GROUP_MAX_M) read GROUP tiles side by side, GROUP_ROWS rows a pass: one core streams a single tile
 * at ~14 GB/s on an AVX2 EPYC and three at ~20, so 2 rows over 3 tiles took 17 ms where 2 rows over one took 25 (all
 * SmolLM2's products, 2 threads; docs/perf.md). From 5 rows the 6-row blocks on one tile are as fast. AVX-512 takes
 * WIDE_TILES instead. */
#define GROUP 3
#define GROUP_ROWS 2
#define GROUP_MAX_M (VL == 8 ? 4 : 1)
#define KC 256 /* k per pass of many rows (a prompt) over a tile: its 16 KiB stay in L1 while every block of rows reads
                  them, sums left in y between passes (248 rows: 113 -> 130 GFLOP/s, docs/perf.md) */
#define WIDE_TILES (VL == 16 ? 3 : 1) /* AVX-512, from 2 rows: blocks of up to PROMPT_ROWS rows over 3 tiles side by
                                        side, 8 x 3 sums, 3 weight vectors and 8 row values per 24 FMAs (one tile: 9
                                        loads per 8); SmolLM2's forward over 2-8 tokens 0.78-0.95x the time, a prompt's
                                        0.83-0.87x (docs/perf.md) */
#define WIDE_KC 128 /* k per pass of those where there are several blocks: the 3 tiles' 24 KiB stay in L1 */
#define CHUNK 64 /* k per pass when the rows take two passes: the group's 3 x 4 KiB stay in L1 for the second */

/* outputs of tile t (n of its 16 real) from sums acc, to row y */
static inline void store_tile(float *y, const vf *acc, long n) {
    for (int v = 0; v < PACK_V; v++) {
        long left = n - v * VL;
        if (left >= VL) vf_store(y + v * VL, acc[v]);
        else if (left > 0) vf_storen(y + v * VL, acc[v], left);
    }
}

/* rows m0 .. m0 + mt times tiles t .. t + nt (mt, nt constants where inlined) over k0 .. k1: sums start at zero
 * (k0 = 0) or from y, where the chunk before left them */
static inline __attribute__((always_inline)) void packed_rows(const float *x, const float *wp, float *y, long m0,
                                                              int mt, long t, int nt, long N, long K, long k0,
                                                              long k1) {
    vf acc[MAX_ROWS][WIDE_TILES][PACK_V]; /* mt <= PROMPT_ROWS (AVX2: row_blocks, at most FEW_ROWS = 6) */
    for (int i = 0; i < mt; i++)
        for (int j = 0; j < nt; j++)
            for (int v = 0; v < PACK_V; v++) {
                long left = N - (t + j) * PACK - v * VL;
                const float *at = y + (m0 + i) * N + (t + j) * PACK + v * VL;
                acc[i][j][v] = k0 == 0 || left <= 0 ? vf_zero() : left >= VL ? vf_load(at) : vf_loadn(at, left);
            }
    const float *w = wp + t * K * PACK, *xs = x + m0 * K;
    for (long k = k0; k < k1; k++) {
        for (int j = 0; m0 == 0 && j < nt; j++) /* the next tiles' line k */
            _mm_prefetch((const char *)(w + ((nt + j) * K + k) * PACK), _MM_HINT_T0);
        vf wv[WIDE_TILES][PACK_V];
        for (int j = 0; j < nt; j++)
            for (int v = 0; v < PACK_V; v++) wv[j][v] = vf_load(w + (j * K + k) * PACK + v * VL);
        /* in registers: below 5 rows gcc would read each weight again for every row's FMA, 3 loads per 2 FMAs */
        for (int j = 0; j < nt; j++)
            for (int v = 0; v < PACK_V; v++) __asm__("" : "+x"(wv[j][v]));
        for (int i = 0; i < mt; i++) {
            vf b = vf_set1(xs[i * K + k]);
            for (int j = 0; j < nt; j++)
                for (int v = 0; v < PACK_V; v++) acc[i][j][v] = vf_fma(wv[j][v], b, acc[i][j][v]);
        }
    }
    for (int i = 0; i < mt; i++)
        for (int j = 0; j < nt; j++) store_tile(y + (m0 + i) * N + (t + j) * PACK, acc[i][j], N - (t + j) * PACK);
}

/* rows m0 .. m0 + mt times tiles t .. t + nt (mt, nt constants where inlined) over k0 .. k1, the tiles read side by
 * side, weights as operands: sums start at zero (k0 = 0) or from part ((GROUP, GROUP_MAX_M, PACK)), and end in y
 * (k1 = K) or back in part */
static inline __attribute__((always_inline)) void packed_block(const float *x, const float *wp, float *y, long m0,
                                                               int mt, long t, int nt, long N, long K, long k0,
                                                               long k1, float *part) {
    vf acc[GROUP_ROWS][GROUP][PACK_V];
    for (int i = 0; i < mt; i++)
        for (int j = 0; j < nt; j++)
            for (int v = 0; v < PACK_V; v++)
                acc[i][j][v] = k0 == 0 ? vf_zero() : vf_load(part + (j * GROUP_MAX_M + m0 + i) * PACK + v * VL);
    const float *w = wp + t * K * PACK, *xs = x + m0 * K;
    for (long k = k0; k < k1; k++)
        for (int i = 0; i < mt; i++) {
            vf b = vf_set1(xs[i * K + k]);
            for (int j = 0; j < nt; j++)
                for (int v = 0; v < PACK_V; v++)
                    acc[i][j][v] = vf_fma(vf_load(w + (j * K + k) * PACK + v * VL), b, acc[i][j][v]);
        }
    for (int i = 0; i < mt; i++)
        for (int j = 0; j < nt; j++) {
            if (k1 == K) store_tile(y + (m0 + i) * N + (t + j) * PACK, acc[i][j], N - (t + j) * PACK);
            else
                for (int v = 0; v < PACK_V; v++)
                    vf_store(part + (j * GROUP_MAX_M + m0 + i) * PACK + v * VL, acc[i][j][v]);
        }
}

/* rows m0 .. m0 + mt (a constant where inlined) times tiles t .. t1 (GROUP of them side by side, or fewer one by
 * one) over k0 .. k1 */
static inline __attribute__((always_inline)) void group_pass(const float *x, const float *wp, float *y, long m0, int mt,
                                                             long t, long t1, long N, long K, long k0, long k1,
                                                             float *part) {
    if (t1 - t == GROUP) packed_block(x, wp, y, m0, mt, t, GROUP, N, K, k0, k1, part);
    else
        for (long u = t; u < t1; u++)
            packed_block(x, wp, y, m0, mt, u, 1, N, K, k0, k1, part + (u - t) * GROUP_MAX_M * PACK);
}

/* M (2 .. GROUP_MAX_M) rows times tiles t .. t1 (at most GROUP): GROUP_ROWS rows a pass, a chunk of k at a time
 * where they take more than one */
static void packed_group(const float *x, const float *wp, float *y, long M, long N, long K, long t, long t1) {
    /* the sums between chunks: carried in y instead (as packed_rows does) 3 and 4 rows took 3-6% longer, y's rows
       lying N floats apart (docs/perf.md) */
    float part[GROUP * GROUP_MAX_M * PACK] __attribute__((aligned(64)));
    long step = M <= GROUP_ROWS ? K : CHUNK;
    for (long k0 = 0; k0 < K; k0 += step) {
        long k1 = k0 + step < K ? k0 + step : K;
        for (long m0 = 0; m0 < M; m0 += GROUP_ROWS) {
            if (M - m0 >= GROUP_ROWS) group_pass(x, wp, y, m0, GROUP_ROWS, t, t1, N, K, k0, k1, part);
            else group_pass(x, wp, y, m0, 1, t, t1, N, K, k0, k1, part);
        }
    }
}

/* one row times tiles t .. t + nt (nt <= PACK_TILES, a constant where inlined) */
static inline __attribute__((always_inline)) void packed_row(const float *x, const float *wp, float *y, long t, int nt,
                                                             long N, long K) {
    vf acc[PACK_TILES][PACK_V];
    for (int j = 0; j < nt; j++)
        for (int v = 0; v < PACK_V; v++) acc[j][v] = vf_zero();
    const float *w = wp + t * K * PACK;
    for (long k = 0; k < K; k++) {
        vf b = vf_set1(x[k]);
        for (int j = 0; j < nt; j++)
            for (int v = 0; v < PACK_V; v++) acc[j][v] = vf_fma(vf_load(w + (j * K + k) * PACK + v * VL), b, acc[j][v]);
    }
    for (int j = 0; j < nt; j++) store_tile(y + (t + j) * PACK, acc[j], N - (t + j) * PACK);
}

void arlm_f32p_mm(const float *x, const float *wp, float *y, long M, long N, long K, int threads) {
    long tiles = (N + PACK - 1) / PACK;
    if (M == 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (long g = 0; g < tiles / PACK_TILES; g++) packed_row(x, wp, y, g * PACK_TILES, PACK_TILES, N, K);
        for (long t = tiles - tiles % PACK_TILES; t < tiles; t++) packed_row(x, wp, y, t, 1, N, K);
        return;
    }
    if (M <= GROUP_MAX_M) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int th = 0; th < threads; th++) { /* each thread a contiguous, even share of the tiles */
            long t1 = tiles * (th + 1) / threads;
            for (long t = tiles * th / threads; t < t1; t += GROUP)
                packed_group(x, wp, y, M, N, K, t, t + GROUP < t1 ? t + GROUP : t1);
        }
        return;
    }
    /* blocks of rows over WIDE_TILES tiles at once (AVX2: one; AVX-512: blocks of up to PROMPT_ROWS rows), the last
       tiles one by one; several blocks re-read each chunk of k from L1 */
    long nb = WIDE_TILES > 1 ? (M + PROMPT_ROWS - 1) / PROMPT_ROWS : row_blocks(M);
    long kc = nb == 1 ? K : WIDE_TILES > 1 ? WIDE_KC : KC, groups = (tiles + WIDE_TILES - 1) / WIDE_TILES;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long g = 0; g < groups; g++)
        for (long k0 = 0; k0 < K; k0 += kc) {
            long k1 = k0 + kc < K ? k0 + kc : K, t = g * WIDE_TILES;
            for (long b = 0; b < nb; b++) {
                long m0 = M * b / nb, mt = M * (b + 1) / nb - m0;
#define WIDE_BLOCK(rows) packed_rows(x, wp, y, m0, rows, t, WIDE_TILES, N, K, k0, k1)
#define ONE_TILE(rows) packed_rows(x, wp, y, m0, rows, u, 1, N, K, k0, k1)
                if (tiles - t >= WIDE_TILES) {
                    BY_ROWS(mt, WIDE_BLOCK);
                } else
                    for (long u = t; u < tiles; u++) BY_ROWS(mt, ONE_TILE);
            }
        }
}

/* Asks Linux for this process's right to use the AMX tile registers; 0 on success, -1 where it refuses or the CPU
 * (or this build) has none: the products then run on vectors. */
#ifdef __AMX_TILE__
#include <sys/syscall.h>
#include <unistd.h>
int arlm_amx_init(void) {
    arlm_amx_ready = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
    return arlm_amx_ready ? 0 : -1;
}
#else
int arlm_amx_init(void) { return -1; }
#endif

/* RMSNorm of M rows of D values: y = x / sqrt(mean(x^2) + eps) * w, the sum of squares in VL float32 lanes (k in
 * order, one fixed lane reduction: a row's bits do not depend on the other rows). float32 rows and weight: */
static inline float inverse_rms(const float *x, long D, float eps) {
    vf acc = vf_zero();
    for (long k = 0; k < D; k += VL) {
        vf v = load_x(x, k, D);
        acc = vf_fma(v, v, acc);
    }
    return 1.0f / sqrtf(vf_sum(acc) / (float)D + eps);
}

void arlm_rms_norm(const float *x, const float *w, float *y, long M, long D, float eps) {
    for (long m = 0; m < M; m++) {
        const float *row = x + m * D;
        vf r = vf_set1(inverse_rms(row, D, eps));
        for (long k = 0; k < D; k += VL) {
            vf v = vf_mul(vf_mul(load_x(row, k, D), r), load_x(w, k, D));
            if (k + VL <= D) vf_store(y + m * D + k, v); /* AVX2's masked store is slow: only for a tail */
            else vf_storen(y + m * D + k, v, D - k);
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
