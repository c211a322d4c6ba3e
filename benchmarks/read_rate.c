/* How fast these cores read memory with nothing else to do: the ceiling for arlm's one-row products, which read each
 * weight once (benchmarks/int_mm_ab.c times those on the same bytes).
 *
 *     cc -O3 -march=native -fopenmp benchmarks/read_rate.c -o /tmp/read_rate && /tmp/read_rate MB THREADS LAYER_KB
 *
 * MB of memory read in layers of LAYER_KB (one parallel region a layer, split over THREADS in halves as the products
 * split their tiles), each layer as int4's two streams: 256 bytes of codes and 64 of levels a group, from separate
 * arrays; then the same bytes as one stream. Prints GB/s, medians of 9 passes. Reading the same MB pass after pass
 * keeps what fits in the last-level cache there, as a decoding model's weights are re-read every token. */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PASSES 9

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Group g of one layer added to sum: from two streams (codes, levels), or one of 320 bytes a group */
static __m512i read_group(const char *codes, const char *levels, long g, int two, __m512i sum) {
    const char *p = two ? codes + 256 * g : codes + 320 * g;
    for (int j = 0; j < 4; j++) sum = _mm512_add_epi32(sum, _mm512_load_si512(p + 64 * j));
    return _mm512_add_epi32(sum, _mm512_load_si512(two ? levels + 64 * g : p + 256));
}

static double pass(const char *codes, const char *levels, long layers, long groups, int threads, int two) {
    double start = now();
    volatile int sink = 0; /* what was read, so that the reads are kept */
    for (long l = 0; l < layers; l++) {
        const char *c = codes + l * groups * (two ? 256 : 320), *v = levels + l * groups * 64;
#pragma omp parallel num_threads(threads)
        {
            __m512i sum = _mm512_setzero_si512();
#pragma omp for schedule(static)
            for (long g = 0; g < groups; g++) sum = read_group(c, v, g, two, sum);
#pragma omp atomic
            sink += _mm512_reduce_add_epi32(sum) & 1;
        }
    }
    return now() - start;
}

int main(int argc, char **argv) {
    if (argc != 4) return fprintf(stderr, "usage: read_rate MB THREADS LAYER_KB\n"), 2;
    long mb = atol(argv[1]), layer = atol(argv[3]) * 1024;
    int threads = atoi(argv[2]);
    long groups = layer / 320, layers = (mb << 20) / (groups * 320);
    char *codes = aligned_alloc(64, layers * groups * 320), *levels = aligned_alloc(64, layers * groups * 64);
    memset(codes, 1, layers * groups * 320), memset(levels, 1, layers * groups * 64);
    for (int two = 1; two >= 0; two--) {
        double t[PASSES];
        for (int r = 0; r < PASSES; r++) t[r] = pass(codes, levels, layers, groups, threads, two);
        qsort(t, PASSES, sizeof(double), by_value);
        printf("%ld MB in %ld layers of %ld KB, %d thread(s), %s: %.1f GB/s\n", mb, layers, layer / 1024, threads,
               two ? "two streams (codes, levels)" : "one stream", layers * groups * 320 / t[PASSES / 2] * 1e-9);
    }
    return 0;
}
