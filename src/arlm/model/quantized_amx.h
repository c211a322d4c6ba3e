/* arlm's int8 / int4 products on AMX-INT8 tiles (`tdpbsud`), from arlm_amx_from rows on where the CPU has AMX and Linux
 * lets us (quantized.c's header comment). Included by quantized.c inside its AVX512-VNNI part, whose rows (Rows), code
 * loads and float32 steps (load_codes, add_group, group_levels, store_sums, prefetch_at) it uses: the same integer
 * sums and float32 steps as the vpdpbusd kernel, lane by lane, so the same bits. */
#ifndef ARLM_QUANTIZED_AMX_H
#define ARLM_QUANTIZED_AMX_H
#include <string.h>
#define AMX_ROWS 8 /* rows per block on AMX: their q1 and q2 fill a tile's 16 rows */

/* Tile 0: 2 rows rows of q, `width` bytes (one group) each; tiles 1-3: a group's codes of three output tiles, width / 4
 * rows of 16 outputs x 4 inputs; tiles 4-6: their sums, 2 rows rows x 16 int32 */
static void configure_int_tiles(int rows, int width) {
    arlm_tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    c.colsb[0] = (uint16_t)width, c.rows[0] = (uint8_t)(2 * rows);
    for (int i = 1; i <= 3; i++) {
        c.colsb[i] = 64, c.rows[i] = (uint8_t)(width / 4);
        c.colsb[i + 3] = 64, c.rows[i + 3] = (uint8_t)(2 * rows);
    }
    arlm_load_tile_config(&c);
}

/* Rows m0 .. m0 + mt's sums of group g, stored from a tile, added to acc */
static inline __attribute__((always_inline)) void add_tile_sums(__m512 *acc, int32_t (*sums)[16], const Linear *l,
                                                                const int kind, const Rows *r, long m0, int mt, long g,
                                                                long level) {
    __m512 scale = _mm512_setzero_ps(), low = _mm512_setzero_ps();
    if (GROUP_LEVELS(kind)) group_levels(l, level, kind, &scale, &low);
    for (int i = 0; i < mt; i++) {
        __m512i s = _mm512_add_epi32(_mm512_slli_epi32(_mm512_load_si512(sums[2 * i]), 8),
                                     _mm512_load_si512(sums[2 * i + 1]));
        acc[i] = add_group(acc[i], s, kind, r, (m0 + i) * r->groups + g, scale, low);
    }
}

/* How many of output tiles t0 .. t0 + 2 the layer has (3, or what is left of it) */
static inline int triple_tiles(const Linear *l, long t0) {
    const long left = (l->N + 15) / 16 - t0;
    return left < 3 ? (int)left : 3;
}

/* Group g's codes of output tile i (of tiles `bytes` apart from `codes`; groups of `width`) where a tile load reads
 * them: in place (int8); int4, in `flat` where unpack_triple unpacked them all (tiles 2 `bytes` apart), else
 * unpacked into room[g & 1][i] a group ahead, so that the stores are done before the load comes */
static inline const void *codes_at(const uint8_t *codes, long bytes, int i, long g, int width, int kind,
                                   __m512i room[2][3][16], const uint8_t *flat) {
    if (BYTE_CODES(kind)) return codes + i * bytes + 16 * width * g;
    return flat ? flat + 2 * i * bytes + 16 * width * g : (const void *)room[g & 1][i];
}

/* Group g's codes of output tile `codes` (groups of `width`), int4, unpacked into `room` */
static inline void unpack_group(const uint8_t *codes, long g, int width, __m512i *room) {
    for (int h = 0; h < width / 32; h++) load_codes(codes, width / 32 * g + h, 2, room + 8 * h);
}

/* Every group's codes of int4 output tiles t0 .. t0 + 2 (what the layer has), unpacked into `flat` (a byte a code, the
 * int8 layout: 3 tiles of (K + 31) / 32 x 512 bytes), so that many blocks of rows read them unpacked once */
static void unpack_triple(const Linear *l, long t0, uint8_t *flat) {
    const long groups = (l->K + 31) / 32, bytes = tile_bytes(l, 2);
    const uint8_t *codes = (const uint8_t *)l->w + t0 * bytes;
    for (int i = 0; i < triple_tiles(l, t0); i++)
        for (long g = 0; g < groups; g++) load_codes(codes + i * bytes, g, 2, (__m512i *)(flat + (i * groups + g) * 512));
}

/* Group g's n tile products (rows' tile 0 against each output tile's codes, sums into tiles 4 .. 3 + n), independent
 * of each other (in flight together) */
static inline __attribute__((always_inline)) void tile_products(const int8_t *q, const Rows *r, const uint8_t *codes,
                                                                long bytes, long g, const int W, const int kind,
                                                                __m512i room[2][3][16], const uint8_t *flat,
                                                                const int n) {
    _tile_loadd(0, q + W * g, r->Kp);
    _tile_zero(4);
    _tile_loadd(1, codes_at(codes, bytes, 0, g, W, kind, room, flat), 64);
    _tile_dpbsud(4, 0, 1);
    if (n > 1) {
        _tile_zero(5);
        _tile_loadd(2, codes_at(codes, bytes, 1, g, W, kind, room, flat), 64);
        _tile_dpbsud(5, 0, 2);
    }
    if (n > 2) {
        _tile_zero(6);
        _tile_loadd(3, codes_at(codes, bytes, 2, g, W, kind, room, flat), 64);
        _tile_dpbsud(6, 0, 3);
    }
}

/* rows m0 .. m0 + mt (mt <= AMX_ROWS, the tiles configured for it) times the outputs of output tiles t0 .. t0 + n - 1
 * (n: 3, or what is left of the layer), on AMX, the rows in groups of W (a constant where inlined), software-pipelined:
 * group g's sums are stored, group g + 1's tile products started, then g's sums scaled and added while the tile unit
 * works (benchmarks/amx_cycles.c: reading a triple's sums right after their stores cost 9-35 TSC ticks over the
 * stores' 87-94, the pipelined order 7-29 fewer; int8 at 3-8 rows 0.84-0.91x the time streamed, SmolLM2's int8
 * forwards 0.89-0.95x; int4 0.89-1.02x streamed, its forwards within the noise) */
static inline __attribute__((always_inline)) void amx_tiles(const Rows *r, const Linear *l, float *y, long m0, int mt,
                                                            long t0, const uint8_t *flat, const int W, const int kind,
                                                            const int full) {
    const int n = full ? 3 : triple_tiles(l, t0);
    const int sub = W / 32, shift = l->G == 64; /* the codes' groups of 32 in a group of W; group g of 32's levels:
                                                   g >> shift */
    const long groups = r->groups, levels = tile_levels(l, kind), bytes = tile_bytes(l, kind);
    const uint8_t *codes = (const uint8_t *)l->w + t0 * bytes;
    const int8_t *q = r->q + 2 * m0 * r->Kp;
    const int unpack = !BYTE_CODES(kind) && !flat; /* int4 codes unpacked here, two groups ahead of their sums */
    __m512i room[2][3][16];
    int32_t sums[2][3][2 * AMX_ROWS][16] __attribute__((aligned(64)));
    __m512 acc[3][AMX_ROWS];
    for (int i = 0; i < n; i++)
        for (int m = 0; m < mt; m++) acc[i][m] = _mm512_setzero_ps();
    for (long g = 0; unpack && g < 2 && g < groups; g++)
        for (int i = 0; i < n; i++) unpack_group(codes + i * bytes, g, W, room[g][i]);
    tile_products(q, r, codes, bytes, 0, W, kind, room, flat, n);
    for (long g = 0; g < groups; g++) {
        for (int i = 3; m0 == 0 && i < 6; i++) /* the next triple's group g (the prefetches AHEAD groups on in
                                                 these tiles: 0.66-0.93x the time at 3-8 rows) */
            for (int h = 0; h < sub; h++) prefetch_at(codes + i * bytes, l, t0 + i, sub * g + h, levels, shift, kind);
        int32_t(*done)[2 * AMX_ROWS][16] = sums[g & 1];
        _tile_stored(4, done[0], 64);
        if (n > 1) _tile_stored(5, done[1], 64);
        if (n > 2) _tile_stored(6, done[2], 64);
        if (g + 1 < groups) tile_products(q, r, codes, bytes, g + 1, W, kind, room, flat, n);
        for (int i = 0; unpack && g + 2 < groups && i < n; i++) /* where group g's codes were */
            unpack_group(codes + i * bytes, g + 2, W, room[g & 1][i]);
        for (int i = 0; i < n; i++)
            add_tile_sums(acc[i], done[i], l, kind, r, m0, mt, g, (t0 + i) * levels + (sub * g >> shift));
    }
    for (int i = 0; i < n; i++) store_sums(l, kind, y, m0, mt, t0 + i, acc[i]);
}

/* amx_tiles for the layer's kind and the rows' group width (constants in each copy) */
static void amx_any(const Rows *r, const Linear *l, float *y, long m0, int mt, long t0, const uint8_t *flat) {
    if (l->kind == 5) amx_tiles(r, l, y, m0, mt, t0, flat, 32, 5, 0);
    else if (l->kind == 1 && r->width == 64) amx_tiles(r, l, y, m0, mt, t0, flat, 64, 1, 0);
    else if (l->kind == 1) amx_tiles(r, l, y, m0, mt, t0, flat, 32, 1, 0);
    else if (r->width == 64) amx_tiles(r, l, y, m0, mt, t0, flat, 64, 2, 0);
    else amx_tiles(r, l, y, m0, mt, t0, flat, 32, 2, 0);
}

/* amx_tiles with the rows and 3 output tiles constants too, for the common kinds (int8 by 64, int4 by 32, Q8_0) */
#define AMX_ROWS_OF(MT)                                                                                                \
    if (l->kind == 5) amx_tiles(r, l, y, m0, MT, t0, flat, 32, 5, 1);                                                  \
    else if (l->kind == 1 && r->width == 64) amx_tiles(r, l, y, m0, MT, t0, flat, 64, 1, 1);                           \
    else if (l->kind == 2 && r->width == 32) amx_tiles(r, l, y, m0, MT, t0, flat, 32, 2, 1);                           \
    else amx_any(r, l, y, m0, mt, t0, flat);                                                                           \
    break

/* rows m0 .. m0 + mt times output tiles t0 .. t0 + 2 (or what is left of the layer): a verification's 3-7 rows (the
 * sums then in registers, the loops unrolled: 0.87-0.95x the time at 3-7 rows, int8 and int4, in cache and streamed;
 * 8 rows gain nothing) in copies for their row count */
static void amx_block(const Rows *r, const Linear *l, float *y, long m0, int mt, long t0, const uint8_t *flat) {
    switch (triple_tiles(l, t0) == 3 ? mt : 0) {
    case 3: AMX_ROWS_OF(3);
    case 4: AMX_ROWS_OF(4);
    case 5: AMX_ROWS_OF(5);
    case 6: AMX_ROWS_OF(6);
    case 7: AMX_ROWS_OF(7);
    default: amx_any(r, l, y, m0, mt, t0, flat);
    }
}

#endif
