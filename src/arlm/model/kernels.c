/* arlm's small-batch matrix products in float32 and bfloat16 for x86-64 CPUs with AVX-512 or AVX2 (simd.h), and
 * RMSNorm (model/native.py builds and loads this file; model/inference.py and block.c call it; quantized.c has int8 /
 * int4).
 *
 * y[m, n] = sum_k x[m, k] * w[n, k] for rows x (M, K) and a weight w (N, K) read from memory once per call:
 *   float32, packed (arlm_f32p_mm; native.pack_f32: 16 outputs to a line): every (m, n) sum is one lane's FMAs, k in
 *            order (one row over 4 tiles side by side, 2-4 rows over 3 on AVX2, more in blocks of 6 or 8 over one
 *            tile, a prompt's rows in passes of 256 inputs); float32 in place (arlm_f32_mm: w as it is, for a weight
 *            two Linears share): every sum runs in VL lanes, k in order, and ends in one fixed lane reduction (the
 *            next tile's weights prefetched while a tile computes);
 *   bf16: bfloat16 rows and weights (laid out as AMX reads them), sums in float32, y rounded to bfloat16: on AMX tiles
 *         where the CPU has them and Linux lets us, else in vectors whose lanes are the outputs' sums, k in order: on
 *         AVX512-BF16 by bfloat16 dot products of the rows as they are (a pair of inputs an instruction), elsewhere
 *         widened to float32 (6 rows a block on AVX2, up to 16 on AVX-512). Every row goes through the same steps.
 * Either way a row's bits depend on that row and the weight only, never on the other rows or on M (batch-invariant),
 * and the weights are reused from cache for every block of rows, so a few rows (speculative verification, a batch of
 * decoding sequences) cost little more than one. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "kernels.h"
#include "simd.h"

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

/* CALL(m) with m = mt (1..8) a constant, so that the block of rows it calls is compiled for that many rows */
#define BY_ROWS(mt, CALL)                                                                                              \
    switch (mt) {                                                                                                      \
    case 8: CALL(8); break;                                                                                            \
    case 7: CALL(7); break;                                                                                            \
    case 6: CALL(6); break;                                                                                            \
    case 5: CALL(5); break;                                                                                            \
    case 4: CALL(4); break;                                                                                            \
    case 3: CALL(3); break;                                                                                            \
    case 2: CALL(2); break;                                                                                            \
    default: CALL(1);                                                                                                  \
    }

/* BY_ROWS for mt up to 16 (AVX-512's 32 registers hold 16 rows' sums, a tile's weights and a row value) */
#define BY_ROWS_16(mt, CALL)                                                                                           \
    switch (mt) {                                                                                                      \
    case 16: CALL(16); break;                                                                                          \
    case 15: CALL(15); break;                                                                                          \
    case 14: CALL(14); break;                                                                                          \
    case 13: CALL(13); break;                                                                                          \
    case 12: CALL(12); break;                                                                                          \
    case 11: CALL(11); break;                                                                                          \
    case 10: CALL(10); break;                                                                                          \
    case 9: CALL(9); break;                                                                                            \
    default: BY_ROWS(mt, CALL);                                                                                        \
    }
#define MAX_ROWS 16                 /* the most rows a block takes (sums held in registers) */
#define FEW_ROWS (VL == 16 ? 16 : 6) /* rows a block takes at most, up to 2 FEW_ROWS rows (verifications, batches) */
#define PROMPT_ROWS (VL == 16 ? 8 : 6) /* and past that (a prompt): blocks of 16 read 3-10% slower at 48 to 300 rows
                                          (float32, docs/perf.md) */

/* Rows 0 .. M in blocks as even as possible (9 rows one block, 17 two of 9 and 8): block b is rows M b / nb ..
 * M (b + 1) / nb of nb = row_blocks(M). No block is a row or two: a block's sums are chains of FMAs, one per row and
 * vector, and a block of fewer chains than the FMA units keep in flight (latency 4, 2 units) waits on each FMA -- 9
 * rows as 8 + 1 took 1.36x the time of 8 (docs/perf.md). AVX2's 16 registers hold 6 rows x 2 sums, 2 weights, a row
 * value; AVX-512's 32 hold 16 rows' sums. */
static inline long row_blocks(long M) {
    return M <= 2 * FEW_ROWS ? (M + FEW_ROWS - 1) / FEW_ROWS : (M + PROMPT_ROWS - 1) / PROMPT_ROWS;
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
 * SmolLM2's products, 2 threads; docs/perf.md). From 5 rows the 6-row blocks on one tile are as fast; AVX-512 keeps
 * them at every row count (not timed there). */
#define GROUP 3
#define GROUP_ROWS 2
#define GROUP_MAX_M (VL == 8 ? 4 : 1)
#define KC 256 /* k per pass of many rows (a prompt) over a tile: its 16 KiB stay in L1 while every block of rows reads
                  them, sums left in y between passes (248 rows: 113 -> 130 GFLOP/s, docs/perf.md) */
#define CHUNK 64 /* k per pass when the rows take two passes: the group's 3 x 4 KiB stay in L1 for the second */

/* outputs of tile t (n of its 16 real) from sums acc, to row y */
static inline void store_tile(float *y, const vf *acc, long n) {
    for (int v = 0; v < PACK_V; v++) {
        long left = n - v * VL;
        if (left >= VL) vf_store(y + v * VL, acc[v]);
        else if (left > 0) vf_storen(y + v * VL, acc[v], left);
    }
}

/* rows m0 .. m0 + mt (a constant where inlined) times tile t over k0 .. k1: sums start at zero (k0 = 0) or from y,
 * where the chunk before left them */
static inline __attribute__((always_inline)) void packed_rows(const float *x, const float *wp, float *y, long m0,
                                                              int mt, long t, long N, long K, long k0, long k1) {
    vf acc[MAX_ROWS][PACK_V]; /* mt <= FEW_ROWS */
    long n = N - t * PACK;
    for (int i = 0; i < mt; i++)
        for (int v = 0; v < PACK_V; v++) {
            long left = n - v * VL;
            const float *at = y + (m0 + i) * N + t * PACK + v * VL;
            acc[i][v] = k0 == 0 || left <= 0 ? vf_zero() : left >= VL ? vf_load(at) : vf_loadn(at, left);
        }
    const float *w = wp + t * K * PACK, *xs = x + m0 * K;
    for (long k = k0; k < k1; k++) {
        if (m0 == 0) _mm_prefetch((const char *)(w + (K + k) * PACK), _MM_HINT_T0); /* the next tile's line k */
        vf wv[PACK_V];
        for (int v = 0; v < PACK_V; v++) wv[v] = vf_load(w + k * PACK + v * VL);
        /* in registers: below 5 rows gcc would read each weight again for every row's FMA, 3 loads per 2 FMAs */
        for (int v = 0; v < PACK_V; v++) __asm__("" : "+x"(wv[v]));
        for (int i = 0; i < mt; i++) {
            vf b = vf_set1(xs[i * K + k]);
            for (int v = 0; v < PACK_V; v++) acc[i][v] = vf_fma(wv[v], b, acc[i][v]);
        }
    }
    for (int i = 0; i < mt; i++) store_tile(y + (m0 + i) * N + t * PACK, acc[i], n);
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
    long nb = row_blocks(M), kc = nb > 1 ? KC : K; /* more than one block: they re-read each chunk of k from L1 */
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long t = 0; t < tiles; t++)
        for (long k0 = 0; k0 < K; k0 += kc) {
            long k1 = k0 + kc < K ? k0 + kc : K;
            for (long b = 0; b < nb; b++) {
                long m0 = M * b / nb, mt = M * (b + 1) / nb - m0;
#define PACKED_ROWS(rows) packed_rows(x, wp, y, m0, rows, t, N, K, k0, k1)
                BY_ROWS_16(mt, PACKED_ROWS);
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

#ifdef __AMX_BF16__
#include <string.h>

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

/* arlm_bf16_mm on AMX: every row's sums go through the same tile products whatever M is (batch-invariant). Each
 * thread takes pairs of 16-output tiles and, for each, every 16-row block of x, so each weight is read from memory
 * once per call. */
static void amx_bf16_mm(const uint16_t *x, const uint16_t *tiles, uint16_t *y, long M, long N, long K, int threads) {
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

#define BF_TILES (VL == 16 ? 8 : 4) /* tiles at once for one row: 8 weight streams on AVX-512 (SmolLM2's one-row
                                      forward 7.4 -> 6.6 ms on a Zen 5 EPYC, docs/perf.md), 4 on AVX2's 16 registers */
#define BF_V (16 / VL)              /* vectors per tile's 16 outputs */
#define BF_AHEAD 6144 /* bytes of a tile read ahead by its first block of rows (512: a 5- or 8-row forward of SmolLM2
                         1.5-1.9x slower, waiting on memory; 10240 and up slower again: docs/perf.md) */

/* the sums of tile t's 16 outputs (acc) rounded to bfloat16, into row y */
static inline void store_bf16_tile(uint16_t *y, const vf *acc) {
    float lanes[16];
    for (int h = 0; h < BF_V; h++) vf_store(lanes + VL * h, acc[h]); /* whole: a masked store's reads wait */
    for (int j = 0; j < 16; j++) y[j] = to_bf16(lanes[j]);
}

/* rows m0 .. m0 + mt (mt <= FEW_ROWS, a constant where inlined; x widened to float32) times the 16 outputs of tile t,
 * on vectors: pair p of a tile is 16 outputs' inputs 2p and 2p + 1, so every lane is one output's sum, k in order.
 * Input 2p for all the rows, then 2p + 1: its weight vectors widened once and each row value broadcast once for both
 * halves of the tile, so that AVX2's 16 registers hold 6 rows' sums, 2 weight vectors and a row value (with the values
 * broadcast again for each half gcc spilled sums: SmolLM2's forward over 8 rows took 1.28x as long; both inputs'
 * weights at once fit 5 rows, and 6 as 3 + 3 took 1.35-1.4x the time of one block: docs/perf.md) */
static inline __attribute__((always_inline)) void bf16_vec_tile(const float *x, const uint16_t *tiles, uint16_t *y,
                                                                long m0, int mt, long t, long N, long K) {
    vf acc[MAX_ROWS][BF_V];
    for (int i = 0; i < mt; i++)
        for (int h = 0; h < BF_V; h++) acc[i][h] = vf_zero();
    const uint16_t *w = tiles + t * 16 * K; /* (K / 2 pairs, 16 outputs, 2) */
    const float *xs = x + m0 * K;
    for (long p = 0; p < K / 2; p++) {
        if (m0 == 0) _mm_prefetch((const char *)(w + 32 * p) + BF_AHEAD, _MM_HINT_T0);
        vf wv[BF_V], unused;
        for (int h = 0; h < BF_V; h++) {
            vf_load_bf16_pairs(w + 32 * p + 2 * VL * h, &wv[h], &unused);
            __asm__("" : "+x"(wv[h])); /* in registers, not read again for each row */
        }
        for (int i = 0; i < mt; i++) {
            vf b = vf_set1(xs[i * K + 2 * p]);
            for (int h = 0; h < BF_V; h++) acc[i][h] = vf_fma(wv[h], b, acc[i][h]);
        }
        for (int h = 0; h < BF_V; h++) {
            vf_load_bf16_pairs(w + 32 * p + 2 * VL * h, &unused, &wv[h]);
            __asm__("" : "+x"(wv[h]));
        }
        for (int i = 0; i < mt; i++) {
            vf b = vf_set1(xs[i * K + 2 * p + 1]);
            for (int h = 0; h < BF_V; h++) acc[i][h] = vf_fma(wv[h], b, acc[i][h]);
        }
    }
    for (int i = 0; i < mt; i++) store_bf16_tile(y + (m0 + i) * N + 16 * t, acc[i]);
}

/* one row (x widened to float32) times tiles t .. t + nt (nt <= BF_TILES, a constant where inlined): the same sums
 * as bf16_vec_tile's, nt weight streams at once */
static inline __attribute__((always_inline)) void bf16_vec_row(const float *x, const uint16_t *tiles, uint16_t *y,
                                                               long t, int nt, long K) {
    vf acc[BF_TILES][BF_V];
    for (int j = 0; j < nt; j++)
        for (int h = 0; h < BF_V; h++) acc[j][h] = vf_zero();
    const uint16_t *w = tiles + t * 16 * K;
    for (long p = 0; p < K / 2; p++) {
        vf a = vf_set1(x[2 * p]), b = vf_set1(x[2 * p + 1]);
        for (int j = 0; j < nt; j++)
            for (int h = 0; h < BF_V; h++) {
                vf we, wo;
                vf_load_bf16_pairs(w + j * 16 * K + 32 * p + 2 * VL * h, &we, &wo);
                acc[j][h] = vf_fma(wo, b, vf_fma(we, a, acc[j][h]));
            }
    }
    for (int j = 0; j < nt; j++) store_bf16_tile(y + 16 * (t + j), acc[j]);
}

#ifdef __AVX512BF16__
/* pair p of a bfloat16 row (inputs 2p and 2p + 1), broadcast to every lane for vdpbf16ps */
static inline __m512bh row_pair(const uint16_t *x, long p) {
    uint32_t pair;
    memcpy(&pair, x + 2 * p, sizeof pair);
    return (__m512bh)_mm512_set1_epi32((int)pair);
}

/* bf16_vec_tile on bfloat16 dot products, for tiles t .. t + nt (nt <= 2; mt and nt constants where inlined): each
 * lane one output's sum over the pairs in k order (vdpbf16ps adds a pair's two exact products), the rows as they are
 * (not widened); a prompt's blocks take two tiles (PROMPT_TILES), a few rows one */
static inline __attribute__((always_inline)) void bf16_dp_tile(const uint16_t *x, const uint16_t *tiles, uint16_t *y,
                                                               long m0, int mt, long t, int nt, long N, long K) {
    vf acc[MAX_ROWS][2];
    for (int i = 0; i < mt; i++)
        for (int j = 0; j < nt; j++) acc[i][j] = vf_zero();
    const uint16_t *w = tiles + t * 16 * K, *xs = x + m0 * K;
    for (long p = 0; p < K / 2; p++) {
        __m512bh pair[2];
        for (int j = 0; j < nt; j++) {
            if (m0 == 0) _mm_prefetch((const char *)(w + j * 16 * K + 32 * p) + BF_AHEAD, _MM_HINT_T0);
            pair[j] = (__m512bh)_mm512_loadu_si512(w + j * 16 * K + 32 * p);
        }
        for (int i = 0; i < mt; i++) {
            __m512bh xp = row_pair(xs + i * K, p);
            for (int j = 0; j < nt; j++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], pair[j], xp);
        }
    }
    for (int i = 0; i < mt; i++)
        for (int j = 0; j < nt; j++) store_bf16_tile(y + (m0 + i) * N + 16 * (t + j), &acc[i][j]);
}

/* bf16_vec_row on bfloat16 dot products: the sums bf16_dp_tile gives one row */
static inline __attribute__((always_inline)) void bf16_dp_row(const uint16_t *x, const uint16_t *tiles, uint16_t *y,
                                                              long t, int nt, long K) {
    vf acc[BF_TILES];
    for (int j = 0; j < nt; j++) acc[j] = vf_zero();
    const uint16_t *w = tiles + t * 16 * K;
    for (long p = 0; p < K / 2; p++) {
        __m512bh xp = row_pair(x, p);
        for (int j = 0; j < nt; j++)
            acc[j] = _mm512_dpbf16_ps(acc[j], (__m512bh)_mm512_loadu_si512(w + j * 16 * K + 32 * p), xp);
    }
    for (int j = 0; j < nt; j++) store_bf16_tile(y + 16 * (t + j), acc + j);
}
#define BF16_ROW_OF(x, n) bf16_dp_row(x, tiles, y, t, n, K)
#define BF16_TILE_OF(x, rows_) bf16_dp_tile(x, tiles, y, m0, rows_, t, 1, N, K)
#define BF16_TILES_OF(x, rows_) bf16_dp_tile(x, tiles, y, m0, rows_, t, 2, N, K)
#define PROMPT_TILES 2 /* tiles a block of a prompt's rows takes at once (a prompt of 512 rows 1.23x faster than 1;
                          5 or 8 rows 1.15-1.2x slower, so they take one: docs/perf.md) */
#define WIDENED 0 /* the rows as they are */
#else
#define BF16_ROW_OF(x, n) bf16_vec_row(x, tiles, y, t, n, K)
#define BF16_TILE_OF(x, rows_) bf16_vec_tile(x, tiles, y, m0, rows_, t, N, K)
#define BF16_TILES_OF(x, rows_) BF16_TILE_OF(x, rows_) /* not reached */
#define PROMPT_TILES 1
#define WIDENED 1 /* the rows widened to float32 */
#endif

/* arlm_bf16_mm on vectors, over threads by tiles of 16 outputs */
static void vec_bf16_mm(const uint16_t *x, const uint16_t *tiles, uint16_t *y, long M, long N, long K, int threads) {
#if WIDENED
    float *rows = malloc(M * K * sizeof(float));
    for (long i = 0; i < M * K; i++) rows[i] = from_bf16(x[i]);
#else
    const uint16_t *rows = x;
#endif
    long tiles_n = N / 16;
    if (M == 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
        for (int th = 0; th < threads; th++) { /* each thread a contiguous, even share of the tiles, BF_TILES at once */
            long t1 = tiles_n * (th + 1) / threads;
            for (long t = tiles_n * th / threads, nt; t < t1; t += nt) {
                nt = t1 - t < BF_TILES ? t1 - t : BF_TILES;
#define BF16_ROW(n) BF16_ROW_OF(rows, n)
                BY_ROWS(nt, BF16_ROW); /* nt tiles side by side, nt a constant in each case */
            }
        }
    } else {
        long nb = row_blocks(M), step = M > 2 * FEW_ROWS ? PROMPT_TILES : 1; /* N % 32 == 0: tiles pair up */
#pragma omp parallel for schedule(static) num_threads(threads)
        for (long t = 0; t < tiles_n; t += step)
            for (long b = 0; b < nb; b++) {
                long m0 = M * b / nb, mt = M * (b + 1) / nb - m0;
#define BF16_ROWS(rows_) BF16_TILE_OF(rows, rows_)
#define BF16_ROWS_PAIRED(rows_) BF16_TILES_OF(rows, rows_)
                if (step == 2) {
                    BY_ROWS(mt, BF16_ROWS_PAIRED);
                } else {
                    BY_ROWS_16(mt, BF16_ROWS);
                }
            }
    }
#if WIDENED
    free(rows);
#endif
}

/* y (M, N) bfloat16 = x (M, K) bfloat16 times w^T, w (N, K) held as `tiles` (native.bf16_tiles' layout: N % 32 == 0,
 * K % 32 == 0): on AMX where Linux let this process use it, else on vectors */
void arlm_bf16_mm(const uint16_t *x, const uint16_t *tiles, uint16_t *y, long M, long N, long K, int threads) {
#ifdef __AMX_BF16__
    if (arlm_amx_ready) {
        amx_bf16_mm(x, tiles, y, M, N, K, threads);
        return;
    }
#endif
    vec_bf16_mm(x, tiles, y, M, N, K, threads);
}

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
