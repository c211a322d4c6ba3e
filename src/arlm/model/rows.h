/* How arlm's float32 and bfloat16 products (kernels.c, bf16_mm.c) cut the rows into blocks whose sums stay in
 * registers. Needs simd.h (VL). */
#ifndef ARLM_ROWS_H
#define ARLM_ROWS_H

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

#endif
