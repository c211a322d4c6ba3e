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
    _tile_release();
    return 0;
}
