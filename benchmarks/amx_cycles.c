/* What a round of AMX tile products costs on this CPU, the way quantized.c's amx_tiles uses them: per round, three
 * int8 tile products (rows' tile 0 against three code tiles, sums into tiles 4-6), in TSC ticks a round, for the
 * row and input counts of SmolLM2's verifications (10 or 16 tile rows: 5 or 8 rows at two byte levels; 32 or 64
 * inputs: a group of int4 / Q8_0 or of per-channel int8):
 *   products  tile loads, zero, tdpbsud (x3)
 *   + stores  ... then the three sums tiles stored to memory
 *   + read    ... then the stored sums read back into vector registers at once (the order before ea7cfb6)
 *   pipelined store round g's sums, start round g + 1's products, then read round g's (amx_tiles' order since)
 *
 *     cc -O2 -march=native -I src/arlm/model benchmarks/amx_cycles.c -o /tmp/amx_cycles -lm && /tmp/amx_cycles
 *
 * A second table times the same rounds on bfloat16 tiles (`tdpbf16ps`), the way an int4 product could hold a 16-bit
 * row whole: its two byte levels as 256 q1 and q2 in bfloat16 (both exact) side by side in K, two products of 32
 * inputs into one float32 sums tile a row (the code times the row, summed in float32, stays an exact integer below
 * 2^24 at int4's codes: 32 x 15 x 32639), the codes as bfloat16 (16 x 64 bytes a tile): rows x 64 bytes, half the
 * sums rows to store and no level to shift and add, but twice the products and code bytes a round.
 *
 * It includes quantized.c, so the tiles are configured and the products issued by the kernel's own code
 * (configure_int_tiles, tile_products).
 * Linux must grant the tile data (arch_prctl ARCH_REQ_XCOMP_PERM); the program says so where it does not. */
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <x86intrin.h>

#include "quantized.c"

/* kernels.c's switches, defined here (quantized.c alone is linked) */
int arlm_amx_ready = 1, arlm_amx_from = 3;

#define ROUNDS 200000

static int8_t rows[16 * 64] __attribute__((aligned(64)));
static uint8_t codes[3][16 * 64] __attribute__((aligned(64)));
static int32_t sums[2][3][16][16] __attribute__((aligned(64)));

/* The kernel's round: tile 0 (the rows) against three code tiles, `width` inputs (a constant in each copy) */
static void products(int width) {
    const Rows r = {.q = rows, .Kp = 64};
    __m512i room[2][3][16];
    if (width == 32) tile_products(rows, &r, &codes[0][0], sizeof codes[0], 0, 32, 1, room, NULL, 3);
    else tile_products(rows, &r, &codes[0][0], sizeof codes[0], 0, 64, 1, room, NULL, 3);
}

static void store(int b) {
    if (b) {
        _tile_stored(4, sums[1][0], 64);
        _tile_stored(5, sums[1][1], 64);
        _tile_stored(6, sums[1][2], 64);
    } else {
        _tile_stored(4, sums[0][0], 64);
        _tile_stored(5, sums[0][1], 64);
        _tile_stored(6, sums[0][2], 64);
    }
}

/* The stored sums summed in a vector register (what the float steps read) */
static __m512i read_back(int b, int height, __m512i total) {
    for (int r = 0; r < height; r++)
        for (int i = 0; i < 3; i++) total = _mm512_add_epi32(total, _mm512_load_si512(sums[b][i][r]));
    return total;
}

static uint16_t halves[2][16 * 32] __attribute__((aligned(64))); /* the rows' two levels, bfloat16 */
static uint16_t bf_codes[3][16 * 32] __attribute__((aligned(64)));
static float bf_sums[2][3][16][16] __attribute__((aligned(64)));

/* Tiles 0 and 7: the rows' two levels (rows x 32 bfloat16); 1-3: three output tiles' codes (16 x 32 bfloat16);
 * 4-6: their float32 sums (rows x 16) */
static void configure_bf16_tiles(int rows) {
    arlm_tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    c.colsb[0] = c.colsb[7] = 64, c.rows[0] = c.rows[7] = (uint8_t)rows;
    for (int i = 1; i <= 3; i++) c.colsb[i] = 64, c.rows[i] = 16, c.colsb[i + 3] = 64, c.rows[i + 3] = (uint8_t)rows;
    arlm_load_tile_config(&c);
}

static void bf16_products(void) {
    _tile_loadd(0, halves[0], 64);
    _tile_loadd(7, halves[1], 64);
    _tile_zero(4);
    _tile_loadd(1, bf_codes[0], 64);
    _tile_dpbf16ps(4, 0, 1);
    _tile_dpbf16ps(4, 7, 1);
    _tile_zero(5);
    _tile_loadd(2, bf_codes[1], 64);
    _tile_dpbf16ps(5, 0, 2);
    _tile_dpbf16ps(5, 7, 2);
    _tile_zero(6);
    _tile_loadd(3, bf_codes[2], 64);
    _tile_dpbf16ps(6, 0, 3);
    _tile_dpbf16ps(6, 7, 3);
}

static void bf16_store(int b) {
    _tile_stored(4, bf_sums[b][0], 64);
    _tile_stored(5, bf_sums[b][1], 64);
    _tile_stored(6, bf_sums[b][2], 64);
}

/* The bfloat16 table: products, + stores, pipelined (store round g, start g + 1, read g), for 5, 8 and 16 rows */
static void bf16_table(void) {
    const int heights[] = {5, 8, 16};
    printf("\nTSC ticks a round on bfloat16 tiles (2 x 3 products of 32 inputs)\n| rows | products | + stores | "
           "pipelined |\n|---|---|---|---|\n");
    for (int s = 0; s < 3; s++) {
        configure_bf16_tiles(heights[s]);
        printf("| %d |", heights[s]);
        for (int mode = 0; mode < 3; mode++) {
            __m512 total = _mm512_setzero_ps();
            if (mode == 2) bf16_products();
            uint64_t start = __rdtsc();
            for (long n = 0; n < ROUNDS; n++) {
                if (mode < 2) {
                    bf16_products();
                    if (mode == 1) bf16_store(0);
                } else {
                    bf16_store(n & 1);
                    bf16_products();
                    for (int r = 0; r < heights[s]; r++)
                        for (int i = 0; i < 3; i++) total = _mm512_add_ps(total, _mm512_load_ps(bf_sums[n & 1][i][r]));
                }
            }
            double ticks = (double)(__rdtsc() - start) / ROUNDS;
            halves[0][0] += (uint16_t)_mm512_reduce_add_ps(total); /* keeps the reads */
            printf(" %.1f |", ticks);
        }
        printf("\n");
    }
}

int main(void) {
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */))
        return fprintf(stderr, "amx_cycles: Linux does not grant AMX tile data here\n"), 2;
    const char *names[] = {"products", "+ stores", "+ read", "pipelined"};
    const int shapes[][2] = {{10, 32}, {16, 32}, {10, 64}, {16, 64}};
    printf("TSC ticks a round of 3 tile products\n| tile rows x inputs | %s | %s | %s | %s |\n|---|---|---|---|---|\n",
           names[0], names[1], names[2], names[3]);
    for (int s = 0; s < 4; s++) {
        int height = shapes[s][0], width = shapes[s][1];
        configure_int_tiles(height / 2, width);
        printf("| %d x %d |", height, width);
        for (int mode = 0; mode < 4; mode++) {
            __m512i total = _mm512_setzero_si512();
            if (mode == 3) products(width);
            uint64_t start = __rdtsc();
            for (long n = 0; n < ROUNDS; n++) {
                if (mode < 3) {
                    products(width);
                    if (mode >= 1) store(0);
                    if (mode == 2) total = read_back(0, height, total);
                } else {
                    store(n & 1);
                    products(width);
                    total = read_back(n & 1, height, total);
                }
            }
            double ticks = (double)(__rdtsc() - start) / ROUNDS;
            rows[0] += (int8_t)_mm_cvtsi128_si32(_mm512_castsi512_si128(total)); /* keeps the reads */
            printf(" %.1f |", ticks);
        }
        printf("\n");
    }
    bf16_table();
    _tile_release();
    return 0;
}
