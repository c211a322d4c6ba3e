/* arlm's small-batch matrix product in bfloat16 for x86-64 CPUs (model/native.py builds and loads this file with
 * kernels.c; model/inference.py and block.c call it).
 *
 * y[m, n] = sum_k x[m, k] * w[n, k], bfloat16 rows x (M, K) and weight w (N, K, laid out as AMX reads it: native.
 * bf16_tiles), sums in float32, y rounded to bfloat16: on AMX tiles where the CPU has them and Linux lets us, else in
 * vectors whose lanes are the outputs' sums, k in order: on AVX512-BF16 by bfloat16 dot products of the rows as they
 * are (a pair of inputs an instruction), elsewhere widened to float32 (6 rows a block on AVX2, up to 16 on AVX-512).
 * Every row goes through the same steps, so a row's bits depend on that row and the weight only (batch-invariant), and
 * the weights are read from memory once per call. */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "kernels.h"
#include "simd.h"
#include "rows.h"

#ifdef __AMX_BF16__

/* tile 0: `rows` rows of x, 32 bfloat16 each; tiles 1, 2: 16 k-pairs x 16 outputs x 2 of w; tiles 3, 4: the sums,
 * `rows` x 16 float32 */
static void configure_tiles(int rows) {
    arlm_tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 5; t++) {
        c.colsb[t] = 64;
        c.rows[t] = t == 1 || t == 2 ? 16 : rows;
    }
    arlm_load_tile_config(&c);
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
