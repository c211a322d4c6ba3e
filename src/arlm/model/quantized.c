/* arlm's products by int8 and int4 weights, on integer dot products, for decoding on x86-64 CPUs (model/native.py
 * builds and loads this file with kernels.c; model/quant.py and block.c call it).
 *
 * y[m, n] = sum_k x[m, k] w[n, k] for float32 rows x (M, K) and a weight held as 8-bit or 4-bit codes u:
 *   int8 (kind 1): w[n, k] = (u[n, k] - 128) scale[n], u = q + 128 for signed codes q, one float32 scale per output;
 *   int4 (kind 2): w[n, k] = u[n, k] scale[n, g] + low[n, g], g = k / G (G = 32 or 64), GGUF's Q4_1 convention,
 *                  scale and low in float16 (as a GGUF file holds them);
 *   int8 in groups (kind 5): w[n, k] = (u[n, k] - 128) scale[n, g], g = k / 32: GGUF's Q8_0 (w = d q), int8's codes
 *                  with a float16 scale per group (the file's d, exactly).
 * The rows are read at 16 bits per group of W inputs: x[k] = d q[k], d = (largest |x| of the group) / 32639, so each
 * value is off by at most 1/65278 of its group's largest (float32 rows hold 24 bits; the weights' codes 4 or 8). W is
 * the Linear's G where it divides K, else 32: int4's levels' group; for int8, whose scale is per output, native.py
 * asks 64 (one float32 step per 64 inputs instead of two: at 3-8 rows 0.65x the time in cache, 0.86-0.97x streamed;
 * SmolLM2's int8 forwards 0.93-0.98x, docs/perf.md). With
 * AVX512-VNNI q is split into two signed bytes, q = 256 q1 + q2, so that integer dot products of bytes (unsigned codes
 * times signed row bytes, 4 products summed into each int32) multiply them exactly, S = 256 S1 + S2; on AVX2 q stays
 * an int16 and the codes become 16-bit words by masks and shifts within each lane (no shuffle across lanes: on an AVX2
 * EPYC a group took ~50 cycles at one row where widening bytes took ~80). Either way a group's sum S is an exact
 * integer (|S| < 64 x 255 x 32639 < 2^31), scaled once in float32: y = sum_g d_g S_g scale (+ low_g d_g sum q).
 *
 * Layout (native.pack_int8 / pack_int4): 16 outputs to a 64-byte vector, 4 consecutive inputs to a lane, so that a
 * vector's 16 sums are 16 outputs and nothing is reduced across lanes. Per tile of 16 outputs, per group of 32 inputs:
 * int8, 8 vectors (inputs 4j.., j = 0..7); int4, 4 vectors whose low nibbles are inputs 4j.. and high nibbles
 * 16 + 4j.. (j = 0..3). int4's levels per tile, per group of G: 16 scales then 16 lows, float16 (one cache line).
 *
 * Three engines, the same sums: AVX512-VNNI (`vpdpbusd`: 16 outputs x 4 inputs of one row byte level per instruction)
 * for one to a few rows, where reading the weights bounds the time; AMX-INT8 where the CPU has it and Linux lets us
 * (`tdpbsud`: one tile product gives a group's sums for up to 8 rows' two byte levels at once) from arlm_amx_from rows
 * on, where VNNI's work grows with the rows; and, on CPUs without AVX512-VNNI, AVX2 (`vpmaddwd`: 8 int16 pairs per
 * instruction, 8 outputs at a time). Integer sums are exact on each and the float32 steps are the same lane by lane,
 * so all give the same bits. Each row is computed alone, in the same order whatever M is and wherever it sits
 * (batch-invariant), and each tile's weights are read from memory once per call. The AMX engine is in quantized_amx.h,
 * the AVX2 one in quantized_avx2.h, both included here. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"

#define BYTE_CODES(kind) ((kind) != 2)   /* a byte per code (kinds 1 and 5), else a nibble (int4) */
#define GROUP_LEVELS(kind) ((kind) != 1) /* levels per group (kinds 2 and 5), else a scale per output */
#define LEVEL_HALVES(kind) ((kind) == 2 ? 32 : 16) /* float16 levels per output tile and group: int4 16 scales and 16
                                                      lows, kind 5 16 scales */

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define BYTE_LEVELS 1 /* rows as two signed bytes per value, for vpdpbusd and tdpbsud */
#define ROWS 5        /* rows per block (a 5-token verification in one; Zen 5, against a row alone then blocks of
                         4: SmolLM2's int8 / int4 forward over 5 tokens 0.84x / 0.81x the time) */
#define EVEN_BLOCKS 0 /* blocks of ROWS, the rest last */
#define NEXT 1        /* the first block of several rows prefetches the next tile (one row streams its own): memory
                         keeps streaming while the rows compute (Zen 5: 5 tokens 0.82-0.93x the time) */
#else
#define ROWS 3  /* rows per block: AVX2's 16 registers hold 3 rows' sums, a code vector's 2 halves and 4 words of
                   them, 2 row values and a mask (4 rows would need 17; 2 a block: 6 and 8 rows 1.1-1.2x slower) */
#define EVEN_BLOCKS 1 /* blocks of even size, the larger first: a block of one row after others costs ~what two do */
#define NEXT 0 /* (not measured on AVX2) */
static const int PAIRED[4] = {0, 2, 1, 3}; /* where input i of a quad of the rows' int16 q lies */
#endif
#define AHEAD 12    /* groups prefetched ahead (one row streamed, int8 / int4: 4 1.07-1.08x slower, 24 or 48 alike) */
#define SPLIT_ROWS 8 /* from this many rows on the threads quantize them together (fewer: the caller alone) */
#define Q_MAX 32639 /* largest |q|: 256 q1 + q2 with q1 in -127..127, q2 in -128..127 */

/* The rows at 16 bits: q (2M, Kp) bytes, row 2m holding row m's q1 and 2m + 1 its q2 (BYTE_LEVELS; else (M, Kp)
 * int16, q itself); per row and group of `width` (32 or 64) inputs: d, the sum of q, and d times that sum. The codes
 * come in groups of 32 (the layout above): a group of the rows is `width` / 32 of theirs. */
typedef struct {
    int8_t *q;
    float *d, *xsum;
    int32_t *qsum;
    long Kp, groups;
    int width;
} Rows;

static void free_rows(Rows *r) { free(r->q), free(r->d), free(r->xsum), free(r->qsum); }

#ifdef BYTE_LEVELS
/* lane j: the largest (max) or the sum (else) of v[j]'s lanes, for 16 vectors of int32 at once (vf_sums's tree) */
static inline __attribute__((always_inline)) __m512i lanes16(const __m512i *v, const int max) {
#define LANES_OP(a, b) (max ? _mm512_max_epi32(a, b) : _mm512_add_epi32(a, b))
    __m512i w[8], x[4];
    for (int i = 0; i < 8; i++)
        w[i] = LANES_OP(_mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        x[i] = LANES_OP(_mm512_unpacklo_epi64(w[2 * i], w[2 * i + 1]), _mm512_unpackhi_epi64(w[2 * i], w[2 * i + 1]));
    __m512i s01 = LANES_OP(_mm512_shuffle_i32x4(x[0], x[1], 0x88), _mm512_shuffle_i32x4(x[0], x[1], 0xDD));
    __m512i s23 = LANES_OP(_mm512_shuffle_i32x4(x[2], x[3], 0x88), _mm512_shuffle_i32x4(x[2], x[3], 0xDD));
    return LANES_OP(_mm512_shuffle_i32x4(s01, s23, 0x88), _mm512_shuffle_i32x4(s01, s23, 0xDD));
#undef LANES_OP
}

/* Values at .. at + 15 of a row of K (zeros past K; whole: all within it) */
static inline __attribute__((always_inline)) __m512 load_part(const float *row, long K, long at, const int whole) {
    if (whole) return _mm512_loadu_ps(row + at);
    long count = K - at < 0 ? 0 : K - at > 16 ? 16 : K - at;
    return _mm512_maskz_loadu_ps((__mmask16)((1u << count) - 1), row + at);
}

/* The n (1..16) groups of `width` (32 or 64) values of row m from group g0 on (the row's K values real, zeros after
 * them): their q1, q2, d (NaN where the group holds a NaN or an infinity: the outputs then are NaN, as a float
 * product's would be), sums of q and d times those. q rounds to nearest, ties to even. The 16 groups' largest and sums
 * are reduced together (each group alone took ~90 cycles a group of 64 on Zen 4, these ~45; the same bits). */
static inline __attribute__((always_inline)) void run_of(Rows *r, const float *x, long K, long m, long g0, int n,
                                                         const int width, const int whole) {
    const int parts = width / 16;
    const float *row = x + m * K;
    __m512i top[16], sum[16];
    for (int i = 0; i < 16; i++) { /* the magnitudes' bits: ordered as the floats, NaN and infinity above the rest */
        __m512i most = _mm512_setzero_si512();
        for (int h = 0; h < parts && i < n; h++) {
            __m512i v = _mm512_castps_si512(load_part(row, K, width * (g0 + i) + 16 * h, whole));
            most = _mm512_max_epi32(most, _mm512_and_si512(v, _mm512_set1_epi32(0x7fffffff)));
        }
        top[i] = most;
    }
    __m512i bits = lanes16(top, 1);
    __m512 largest = _mm512_castsi512_ps(bits);
    __mmask16 odd = _mm512_cmpge_epi32_mask(bits, _mm512_set1_epi32(0x7f800000)); /* NaN or infinity */
    __mmask16 some = _mm512_cmpgt_epi32_mask(bits, _mm512_setzero_si512()) & ~odd;
    float inverse[16], *d = r->d + m * r->groups + g0;
    _mm512_storeu_ps(inverse, _mm512_maskz_div_ps(some, _mm512_set1_ps(Q_MAX), largest));
    __m512 step = _mm512_mask_blend_ps(odd, _mm512_div_ps(largest, _mm512_set1_ps(Q_MAX)), _mm512_set1_ps(NAN));
    _mm512_mask_storeu_ps(d, (__mmask16)((1u << n) - 1), step);
    /* t = q + 128 = 256 q1 + (q2 + 128): q1 is t's second byte, q2 its first less 128 (flipping its top bit); per
       128-bit lane the shuffle gathers 4 values' second bytes then their first, the permute a pair of vectors' */
    const __m512i bytes = _mm512_set4_epi32(-1, -1, 0x0c080400, 0x0d090501);
    const __m512i pairs = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    const __m512i flip = _mm512_maskz_mov_epi64(0xF0, _mm512_set1_epi8((char)0x80)); /* the upper half's bytes */
    int8_t *q1 = r->q + 2 * m * r->Kp + width * g0, *q2 = q1 + r->Kp; /* group g0's */
    for (int i = 0; i < 16; i++) { /* (a loop of 16: GCC zeroes a variable count of vectors by calling memset) */
        __m512i total = _mm512_setzero_si512(), t[2];
        for (int h = 0; h < parts && i < n; h++) {
            __m512 v = load_part(row, K, width * (g0 + i) + 16 * h, whole);
            __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(v, _mm512_set1_ps(inverse[i])));
            total = _mm512_add_epi32(total, q);
            t[h & 1] = _mm512_shuffle_epi8(_mm512_add_epi32(q, _mm512_set1_epi32(128)), bytes);
            if (!(h & 1)) continue;
            __m512i both = _mm512_xor_si512(_mm512_permutex2var_epi32(t[0], pairs, t[1]), flip); /* 32 q1, 32 q2 */
            _mm256_storeu_si256((__m256i *)(q1 + width * i + 16 * h - 16), _mm512_castsi512_si256(both));
            _mm256_storeu_si256((__m256i *)(q2 + width * i + 16 * h - 16), _mm512_extracti64x4_epi64(both, 1));
        }
        sum[i] = total;
    }
    __m512i sums = lanes16(sum, 0);
    __mmask16 mask = (__mmask16)((1u << n) - 1);
    _mm512_mask_storeu_epi32(r->qsum + m * r->groups + g0, mask, sums);
    _mm512_mask_storeu_ps(r->xsum + m * r->groups + g0, mask, _mm512_mul_ps(step, _mm512_cvtepi32_ps(sums)));
}

/* run_of with the width and whether the groups lie within the row as constants */
static void quantize_run(Rows *r, const float *x, long K, long m, long g0, int n) {
    int whole = r->width * (g0 + n) <= K;
    if (r->width == 64) whole ? run_of(r, x, K, m, g0, n, 64, 1) : run_of(r, x, K, m, g0, n, 64, 0);
    else whole ? run_of(r, x, K, m, g0, n, 32, 1) : run_of(r, x, K, m, g0, n, 32, 0);
}

#else
/* quantize_group on AVX2: the same q and d, q stored as int16 */
static float quantize_group(const float *x, long count, int width, int16_t *q, int32_t *qsum) {
    __m256 v[8], largest = _mm256_setzero_ps(), odd = _mm256_setzero_ps();
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int h = 0; h < width / 8; h++) {
        long n = count - 8 * h < 0 ? 0 : count - 8 * h > 8 ? 8 : count - 8 * h;
        __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        v[h] = _mm256_maskload_ps(x + 8 * h, mask);
        __m256 a = _mm256_and_ps(v[h], magnitude);
        odd = _mm256_or_ps(odd, _mm256_cmp_ps(a, _mm256_set1_ps(INFINITY), _CMP_NLT_UQ)); /* NaN or infinity */
        largest = _mm256_max_ps(largest, a);
    }
    __m128 top = _mm_max_ps(_mm256_castps256_ps128(largest), _mm256_extractf128_ps(largest, 1));
    top = _mm_max_ps(top, _mm_movehl_ps(top, top));
    float most = _mm_cvtss_f32(_mm_max_ss(top, _mm_movehdup_ps(top)));
    int bad = _mm256_movemask_ps(odd) != 0;
    float inverse = !bad && most > 0.0f ? Q_MAX / most : 0.0f;
    __m256i sum = _mm256_setzero_si256(), ints[2];
    for (int h = 0; h < width / 8; h++) {
        ints[h & 1] = _mm256_cvtps_epi32(_mm256_mul_ps(v[h], _mm256_set1_ps(inverse)));
        sum = _mm256_add_epi32(sum, ints[h & 1]);
        if (!(h & 1)) continue;
        /* packs interleaves 128-bit halves, the permute puts them back in order, the shuffles store each quad of inputs
           0 1 2 3 as 0 2 1 3 (PAIRED) */
        __m256i q16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(ints[0], ints[1]), 0xD8);
        _mm256_storeu_si256((__m256i *)(q + 8 * h - 8), _mm256_shufflehi_epi16(_mm256_shufflelo_epi16(q16, 0xD8), 0xD8));
    }
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
    *qsum = _mm_cvtsi128_si32(_mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1)));
    return bad ? NAN : most / Q_MAX;
}
#endif

/* The rows' buffers, not yet filled */
static Rows new_rows(long M, long K, int width) {
    Rows r = {.Kp = (K + width - 1) / width * width, .groups = (K + width - 1) / width, .width = width};
    r.q = malloc(2 * M * r.Kp);
    r.d = malloc(M * r.groups * sizeof(float)), r.xsum = malloc(M * r.groups * sizeof(float));
    r.qsum = malloc(M * r.groups * sizeof(int32_t));
    return r;
}

#ifndef BYTE_LEVELS
/* quantize_run on AVX2: each group alone */
static void quantize_run(Rows *r, const float *x, long K, long m, long g0, int n) {
    for (long g = g0, at = m * r->groups + g0; g < g0 + n; g++, at++) {
        long count = K - r->width * g < r->width ? K - r->width * g : r->width;
        int16_t *q = (int16_t *)r->q + m * r->Kp + r->width * g;
        r->d[at] = quantize_group(x + m * K + r->width * g, count, r->width, q, r->qsum + at);
        r->xsum[at] = r->d[at] * (float)r->qsum[at];
    }
}
#endif

/* Runs of up to 16 groups: a row's groups 16 u .. (u: its runs from 0), the units the threads share */
static inline long runs(const Rows *r) { return (r->groups + 15) / 16; }

/* Quantizes runs [first, last) of x (M, K) into r (run u: row u / runs, the row's (u % runs)-th) */
static void quantize_runs(Rows *r, const float *x, long K, long first, long last) {
    for (long u = first; u < last; u++) {
        long m = u / runs(r), g0 = 16 * (u % runs(r));
        quantize_run(r, x, K, m, g0, (int)(r->groups - g0 < 16 ? r->groups - g0 : 16));
    }
}

static Rows quantize_rows(const float *x, long M, long K, int width) {
    Rows r = new_rows(M, K, width);
    quantize_runs(&r, x, K, 0, M * runs(&r));
    return r;
}

/* The rows as the kernel reads them in groups of `width` (32 or 64): y (M, K) = d q (for tests and for dequantized
 * references) */
void arlm_int_rows(const float *x, float *y, long M, long K, int width) {
    Rows r = quantize_rows(x, M, K, width);
    for (long m = 0; m < M; m++)
        for (long k = 0; k < K; k++) {
#ifdef BYTE_LEVELS
            long at = 2 * m * r.Kp + k;
            int q = 256 * r.q[at] + r.q[at + r.Kp];
#else
            int q = ((const int16_t *)r.q)[m * r.Kp + (k & ~3) + PAIRED[k & 3]];
#endif
            y[m * K + k] = r.d[m * r.groups + k / width] * (float)q;
        }
    free_rows(&r);
}

/* The bytes of one output tile's codes: 16 outputs x K inputs in groups of 32, a byte each (int8, Q8_0) or a nibble
 * (int4) */
static inline long tile_bytes(const Linear *l, const int kind) {
    return (l->K + 31) / 32 * (BYTE_CODES(kind) ? 512 : 256);
}

/* The groups of levels one output tile has: K / G (int4, Q8_0), or one (int8: a scale per output) */
static inline long tile_levels(const Linear *l, const int kind) { return GROUP_LEVELS(kind) ? l->K / l->G : 1; }

/* A hint to have group g's lines of tile t (codes: its codes) in cache when they are reached. Always inlined: GCC 12
 * found this helper "pure" (a prefetch changes nothing it can see) and deleted its calls, which left one row streaming
 * at ~60% of the memory's speed (docs/perf.md); tests/model/test_native.py checks. */
static inline __attribute__((always_inline)) void prefetch_at(const uint8_t *codes, const Linear *l, long t, long g,
                                                              long levels, int shift, const int kind) {
    if (BYTE_CODES(kind)) /* into L2 (T0: 1.1-1.3x the time at 1-2 rows, the 8 lines a group holding L1's fill
                                buffers) */
        for (int j = 0; j < 8; j++) _mm_prefetch(codes + (8 * g + j) * 64, _MM_HINT_T1);
    else
        for (int j = 0; j < 4; j++) _mm_prefetch(codes + (4 * g + j) * 64, _MM_HINT_T0); /* T1: 1.05-1.08x */
    if (GROUP_LEVELS(kind))
        _mm_prefetch((const uint16_t *)l->scale + (t * levels + (g >> shift)) * LEVEL_HALVES(kind), _MM_HINT_T0);
}

/* The lines AHEAD groups on (the next tile's where this one ends: a thread's tiles lie in a row) */
static inline __attribute__((always_inline)) void prefetch_group(const uint8_t *codes, const Linear *l, long t, long g,
                                                                 long levels, int shift, const int kind) {
    prefetch_at(codes, l, t, g + AHEAD, levels, shift, kind);
}

#ifdef BYTE_LEVELS
/* The 8 vectors of group g's codes in tile `codes` (int8: as stored; int4: the nibbles, unpacked) */
static inline __attribute__((always_inline)) void load_codes(const uint8_t *codes, long g, int kind, __m512i w[8]) {
    if (BYTE_CODES(kind)) {
        for (int j = 0; j < 8; j++) w[j] = _mm512_loadu_si512(codes + (8 * g + j) * 64);
        return;
    }
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    for (int j = 0; j < 4; j++) {
        __m512i v = _mm512_loadu_si512(codes + (4 * g + j) * 64);
        w[j] = _mm512_and_si512(v, nibble);
        w[j + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
    }
}

/* Row m's sums s = sum_k u q over group g (exact) added to its 16 outputs' float32 sums */
static inline __attribute__((always_inline)) __m512 add_group(__m512 acc, __m512i s, int kind, const Rows *r, long at,
                                                              __m512 scale, __m512 low) {
    if (kind != 2) { /* minus the codes' offset: sum_k (u - 128) q (exact), times the group's scale (kind 5) or, at the
                        end, the output's (kind 1) */
        s = _mm512_sub_epi32(s, _mm512_set1_epi32(128 * r->qsum[at]));
        __m512 d = _mm512_set1_ps(r->d[at]);
        return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), kind == 1 ? d : _mm512_mul_ps(scale, d), acc);
    }
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(scale, _mm512_set1_ps(r->d[at])), acc);
    return _mm512_fmadd_ps(low, _mm512_set1_ps(r->xsum[at]), acc);
}

/* Tile t's levels for a group, the at-th of the layer's: scale and low (int4), scale (kind 5) */
static inline __attribute__((always_inline)) void group_levels(const Linear *l, long at, const int kind, __m512 *scale,
                                                               __m512 *low) {
    const __m256i *halves = (const __m256i *)((const uint16_t *)l->scale + at * LEVEL_HALVES(kind));
    *scale = _mm512_cvtph_ps(_mm256_loadu_si256(halves));
    if (kind == 2) *low = _mm512_cvtph_ps(_mm256_loadu_si256(halves + 1));
}

/* Rows m0 .. m0 + mt of y, outputs 16 t.. (int8: times the outputs' scales) */
static inline __attribute__((always_inline)) void store_sums(const Linear *l, const int kind, float *y, long m0, int mt,
                                                             long t, const __m512 *acc) {
    long outputs = l->N - 16 * t < 16 ? l->N - 16 * t : 16;
    __mmask16 mask = (__mmask16)((1u << outputs) - 1);
    for (int i = 0; i < mt; i++) {
        __m512 out = kind == 1 ? _mm512_mul_ps(acc[i], _mm512_loadu_ps((const float *)l->scale + 16 * t)) : acc[i];
        _mm512_mask_storeu_ps(y + (m0 + i) * l->N + 16 * t, mask, out);
    }
}

/* rows m0 .. m0 + mt (mt <= ROWS) times the 16 outputs of tile t, on vpdpbusd, the rows in groups of W (mt and W
 * constants where inlined); next: prefetch the next tile's groups as this one's are read, else (the first block) this
 * tile's AHEAD groups on */
static inline __attribute__((always_inline)) void int_tile(const Rows *r, const Linear *l, float *y, long m0, int mt,
                                                           long t, const int W, const int kind, const int next) {
    const int sub = W / 32; /* the codes' groups of 32 in a group of the rows */
    const long groups = r->groups, levels = tile_levels(l, kind);
    const int shift = l->G == 64; /* group g of 32's levels: g >> shift */
    const uint8_t *codes = (const uint8_t *)l->w + t * tile_bytes(l, kind);
    __m512 acc[ROWS], scale = _mm512_setzero_ps(), low = _mm512_setzero_ps();
    for (int i = 0; i < mt; i++) acc[i] = _mm512_setzero_ps();
    /* chains per row and byte level: two below 4 rows, each product waiting for half as many; one from 4 rows on,
       whose 8 or 10 chains cover vpdpbusd's latency (~4.5 cycles on Zen 5) and leave 5 rows' sums in registers */
    const int chains = mt >= 4 ? 1 : 2;
    for (long g = 0; g < groups; g++) {
        __m512i s1[ROWS][2], s2[ROWS][2];
        for (int i = 0; i < mt; i++) s1[i][0] = s1[i][1] = s2[i][0] = s2[i][1] = _mm512_setzero_si512();
        for (int h = 0; h < sub; h++) { /* the codes' groups of 32 one at a time (16 vectors of a group of 64 at once:
                                           1.2x the time at one row in cache) */
            __m512i w[8];
            if (next) prefetch_at(codes, l, t, sub * g + h + groups * sub, levels, shift, kind); /* (NEXT) */
            else if (m0 == 0) prefetch_group(codes, l, t, sub * g + h, levels, shift, kind);
            load_codes(codes, sub * g + h, kind, w);
            for (int i = 0; i < mt; i++) {
                const int8_t *a = r->q + 2 * (m0 + i) * r->Kp + W * g + 32 * h, *b = a + r->Kp;
                for (int j = 0; j < 8; j++) {
                    __m512i a4 = _mm512_set1_epi32(*(const int32_t *)(a + 4 * j));
                    __m512i b4 = _mm512_set1_epi32(*(const int32_t *)(b + 4 * j));
                    s1[i][j % chains] = _mm512_dpbusd_epi32(s1[i][j % chains], w[j], a4);
                    s2[i][j % chains] = _mm512_dpbusd_epi32(s2[i][j % chains], w[j], b4);
                }
            }
        }
        if (GROUP_LEVELS(kind)) group_levels(l, t * levels + (sub * g >> shift), kind, &scale, &low);
        for (int i = 0; i < mt; i++) {
            __m512i upper = _mm512_add_epi32(s1[i][0], s1[i][1]), lower = _mm512_add_epi32(s2[i][0], s2[i][1]);
            __m512i s = _mm512_add_epi32(_mm512_slli_epi32(upper, 8), lower); /* sum_k u q, exact */
            acc[i] = add_group(acc[i], s, kind, r, (m0 + i) * groups + g, scale, low);
        }
    }
    store_sums(l, kind, y, m0, mt, t, acc);
}

#ifdef __AMX_INT8__
#include "quantized_amx.h"
#endif

#else
#include "quantized_avx2.h"
#endif

/* Rows 0 .. M times the 16 outputs of tile t, in blocks of ROWS, the rows in groups of W (a constant where inlined) */
static inline __attribute__((always_inline)) void tile_rows(const Rows *r, const Linear *l, float *y, long M, long t,
                                                            const int W, const int kind) {
    for (long m0 = 0, mt; m0 < M; m0 += mt) {
        long left = M - m0, blocks = (left + ROWS - 1) / ROWS; /* AVX2: 7 rows 3 + 2 + 2, not 3 + 3 + 1 */
        int next = NEXT && M > 1 && m0 == 0;
        mt = EVEN_BLOCKS ? (left + blocks - 1) / blocks : left < ROWS ? left : ROWS;
        if (ROWS >= 5 && mt == 5) int_tile(r, l, y, m0, 5, t, W, kind, next);
        else if (ROWS >= 4 && mt == 4) int_tile(r, l, y, m0, 4, t, W, kind, next);
        else if (mt == 3) int_tile(r, l, y, m0, 3, t, W, kind, next);
        else if (mt == 2) int_tile(r, l, y, m0, 2, t, W, kind, next);
        else int_tile(r, l, y, m0, 1, t, W, kind, next);
    }
}

/* tile_rows for the layer's kind and the rows' group width (constants in each copy) */
static void rows_of_tile(const Rows *r, const Linear *l, float *y, long M, long t) {
    if (l->kind == 5) tile_rows(r, l, y, M, t, 32, 5);
    else if (l->kind == 1 && r->width == 64) tile_rows(r, l, y, M, t, 64, 1);
    else if (l->kind == 1) tile_rows(r, l, y, M, t, 32, 1);
    else if (r->width == 64) tile_rows(r, l, y, M, t, 64, 2);
    else tile_rows(r, l, y, M, t, 32, 2);
}

/* y (M, N) = x (M, K) times the weight of l (kind 1, 2 or 5, the layout above), over threads by tiles of 16 outputs */
void arlm_int_mm(const float *x, const Linear *l, float *y, long M, int threads) {
    int width = l->G == 64 && l->K % 64 == 0 ? 64 : 32;
    long tiles = (l->N + 15) / 16;
#ifdef __AMX_INT8__
    if (arlm_amx_ready && M >= arlm_amx_from) {
        Rows r = new_rows(M, l->K, width);
#pragma omp parallel num_threads(threads)
        {
            /* the rows quantized by the threads together (each group alone: the same bits), then the products */
#pragma omp for schedule(static) nowait
            for (long u = 0; u < M * runs(&r); u++) quantize_runs(&r, x, l->K, u, u + 1);
            long full = M / AMX_ROWS, rest = M % AMX_ROWS, triples = (tiles + 2) / 3; /* output tiles 3 at a time */
            /* int4 for 2 blocks of rows or more (a prompt): each triple's codes unpacked once, not once a block */
            uint8_t *flat = l->kind == 2 && full > 1 ? aligned_alloc(64, 3 * tile_bytes(l, 1)) : NULL;
            if (full) configure_int_tiles(AMX_ROWS, r.width);
#pragma omp barrier
#pragma omp for schedule(static)
            for (long u = 0; u < triples; u++) {
                if (flat) unpack_triple(l, 3 * u, flat);
                for (long b = 0; b < full; b++) amx_block(&r, l, y, b * AMX_ROWS, AMX_ROWS, 3 * u, flat);
            }
            free(flat);
            if (rest) {
                configure_int_tiles((int)rest, r.width);
#pragma omp for schedule(static)
                for (long u = 0; u < triples; u++) amx_block(&r, l, y, full * AMX_ROWS, (int)rest, 3 * u, NULL);
            }
            _tile_release();
        }
        free_rows(&r);
        return;
    }
#endif
    Rows r = new_rows(M, l->K, width);
    long count = M * runs(&r), split = M >= SPLIT_ROWS;
    if (!split) quantize_runs(&r, x, l->K, 0, count);
#pragma omp parallel num_threads(threads)
    {
        if (split) { /* the rows quantized by the threads together (each group alone: the same bits) */
#pragma omp for schedule(static)
            for (long u = 0; u < count; u++) quantize_runs(&r, x, l->K, u, u + 1);
        }
#pragma omp for schedule(static)
        for (long t = 0; t < tiles; t++) rows_of_tile(&r, l, y, M, t);
    }
    free_rows(&r);
}
