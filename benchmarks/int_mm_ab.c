/* arlm's int8 / int4 product (src/arlm/model/quantized.c) from two versions of the file, alternating in one process:
 * time per call and CPU cycles per row-group (one row times 16 outputs x 32 inputs) for 1..8 rows, and whether the two
 * give the same bits. Built and run by benchmarks/int_mm_ab.sh, which compiles each version with its function renamed
 * (arlm_int_mm_a: the reference, arlm_int_mm_b: the one tried).
 *
 *     int_mm_ab KIND THREADS COPIES   (KIND 1: int8, 2: int4; COPIES of the layer, streamed from memory when many)
 *
 * The layer is SmolLM2's 1536 x 576 (up / gate shape; ARLM_AB_OUTPUTS=N for N x 576), random codes and levels; medians
 * of 15 calls a version. Cycles assume the clock a chain of dependent multiplies runs at, measured after each row count (a
 * VM's clock moves); GB/s is the weights' bytes (codes and levels) over version a's time. ARLM_AB_HUGE=1 puts the
 * copies on 2 MiB pages (madvise MADV_HUGEPAGE; Linux with transparent huge pages). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "kernels.h"

#define REPEATS 15

/* kernels.c's switches, defined here (the harness links quantized.c alone): AMX where Linux grants it, from 3 rows */
int arlm_amx_ready = 0, arlm_amx_from = 3;

void arlm_int_mm_a(const float *x, const Linear *l, float *y, long M, int threads);
void arlm_int_mm_b(const float *x, const Linear *l, float *y, long M, int threads);

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* Cycles a second: a chain of dependent 64-bit multiplies, 3 cycles each on Intel and AMD cores alike (a chain of
 * adds ran ~4x faster than the clock on a Golden Cove Xeon: its renamer folds adds of small constants) */
static double clock_rate(void) {
    long n = 100000000, v = 3;
    double start = now();
    __asm__ volatile("1: imul %0, %0\n imul %0, %0\n imul %0, %0\n imul %0, %0\n sub $4, %1\n jnz 1b"
                     : "+r"(v), "+r"(n));
    return 3e8 / (now() - start);
}

/* n bytes on a 2 MiB boundary, advised onto huge pages under ARLM_AB_HUGE=1 */
static void *weights(long n) {
    const long page = 2L << 20;
    n = (n + page - 1) / page * page;
    void *p = aligned_alloc(page, n);
    if (getenv("ARLM_AB_HUGE")) madvise(p, n, MADV_HUGEPAGE);
    return p;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 4) return fprintf(stderr, "usage: int_mm_ab KIND THREADS COPIES\n"), 2;
    int kind = atoi(argv[1]), threads = atoi(argv[2]), copies = atoi(argv[3]);
#ifdef __AMX_TILE__
    arlm_amx_ready = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
#endif
    /* G: int4's levels' group; int8's, the rows' group, native.INT8_ROW_GROUP (a version before it reads 32) */
    const long N = getenv("ARLM_AB_OUTPUTS") ? atol(getenv("ARLM_AB_OUTPUTS")) : 1536, K = 576, tiles = N / 16;
    const long G = kind == 1 ? 64 : 32, groups = K / 32;
    long bytes = kind == 1 ? N * K : N * K / 2, level_bytes = kind == 1 ? N * 4 : tiles * groups * 64;
    uint8_t *w = weights(bytes * copies), *levels = weights(level_bytes * copies);
    srand(0);
    for (long i = 0; i < bytes * copies; i++) w[i] = (uint8_t)rand();
    if (kind == 1) /* one float32 scale per output */
        for (long i = 0; i < N * copies; i++) ((float *)levels)[i] = 0.01f;
    else /* float16 scales and lows per group, ~0.125 .. 0.25 */
        for (long i = 0; i < level_bytes * copies / 2; i++) ((uint16_t *)levels)[i] = 0x3000 + (rand() & 0x3ff);
    /* the row counts: 1..8, or ARLM_AB_ROWS's comma-separated list (a prompt's: 64,256) */
    long counts[64], n_counts = 0, most = 8;
    for (char *s = getenv("ARLM_AB_ROWS"); s && *s && n_counts < 64; s += *s == ',')
        counts[n_counts++] = strtol(s, &s, 10);
    if (!n_counts)
        for (long M = 1; M <= 8; M++) counts[n_counts++] = M;
    for (long i = 0; i < n_counts; i++) most = counts[i] > most ? counts[i] : most;
    float *x = malloc(most * K * sizeof(float)), *ya = malloc(most * N * sizeof(float));
    float *yb = malloc(most * N * sizeof(float));
    for (long i = 0; i < most * K; i++) x[i] = rand() / (float)RAND_MAX - 0.5f;
    for (long i = 0; i < n_counts; i++) {
        long M = counts[i];
        double ta[REPEATS], tb[REPEATS];
        for (int r = 0; r < REPEATS; r++)
            for (int v = 0; v < 2; v++) { /* a, b, a, b, ...: both see the same stretch of the machine */
                double start = now();
                for (int c = 0; c < copies; c++) {
                    Linear l = {w + c * bytes, levels + c * level_bytes, N, K, G, kind};
                    (v ? arlm_int_mm_b : arlm_int_mm_a)(x, &l, v ? yb : ya, M, threads);
                }
                (v ? tb : ta)[r] = (now() - start) / copies;
            }
        qsort(ta, REPEATS, sizeof(double), by_value), qsort(tb, REPEATS, sizeof(double), by_value);
        double a = ta[REPEATS / 2], b = tb[REPEATS / 2], per = clock_rate() * threads / (M * tiles * groups);
        printf("%s, %d thread(s), %d cop%s, %ld row(s): a %.1f us (%.1f cycles a row-group, %.1f GB/s), b %.1f us "
               "(%.1f), b / a %.2f%s\n",
               kind == 1 ? "int8" : "int4", threads, copies, copies > 1 ? "ies" : "y", M, a * 1e6, a * per,
               (bytes + level_bytes) / a * 1e-9, b * 1e6, b * per, b / a,
               memcmp(ya, yb, M * N * sizeof(float)) ? "  DIFFERENT BITS" : "");
    }
    return 0;
}
