/* One core's peak rate of the vector instructions arlm's kernels use (src/arlm/model/kernels.c): 512-bit and 256-bit
 * float32 fused multiply-adds and 512-bit bfloat16 dot products, 12 independent chains each (no memory traffic).
 *
 *     cc -O2 -march=native benchmarks/cpu_peak.c -o /tmp/cpu_peak && /tmp/cpu_peak
 *
 * Prints instructions per second; each 512-bit FMA is 16 multiply-adds, a 256-bit one 8, a dot product 32. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#define CHAINS 12
#define ROUNDS (200000000 / CHAINS)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    __m512 a[CHAINS];
    __m256 h[CHAINS];
    for (int i = 0; i < CHAINS; i++) a[i] = _mm512_set1_ps(i * 1e-3f), h[i] = _mm256_set1_ps(i * 1e-3f);
    __m512 b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-6f);
    __m256 hb = _mm256_set1_ps(0.999f), hc = _mm256_set1_ps(1e-6f);
    __m512bh one = (__m512bh)_mm512_set1_epi16(0x3f80);
    float sink = 0;

    double start = now();
    for (long r = 0; r < ROUNDS; r++)
        for (int i = 0; i < CHAINS; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);
    double fma512 = ROUNDS * CHAINS / (now() - start);
    for (int i = 0; i < CHAINS; i++) sink += _mm512_reduce_add_ps(a[i]);

    start = now();
    for (long r = 0; r < ROUNDS; r++)
        for (int i = 0; i < CHAINS; i++) h[i] = _mm256_fmadd_ps(h[i], hb, hc);
    double fma256 = ROUNDS * CHAINS / (now() - start);
    for (int i = 0; i < CHAINS; i++) sink += _mm256_cvtss_f32(h[i]);

    start = now();
    for (long r = 0; r < ROUNDS; r++)
        for (int i = 0; i < CHAINS; i++) a[i] = _mm512_dpbf16_ps(a[i], one, one);
    double dot512 = ROUNDS * CHAINS / (now() - start);
    for (int i = 0; i < CHAINS; i++) sink += _mm512_reduce_add_ps(a[i]);

    printf("512-bit FMA %.2f G/s (%.1f G multiply-adds/s)\n", fma512 / 1e9, 16 * fma512 / 1e9);
    printf("256-bit FMA %.2f G/s (%.1f G multiply-adds/s)\n", fma256 / 1e9, 8 * fma256 / 1e9);
    printf("512-bit bfloat16 dot %.2f G/s (%.1f G multiply-adds/s)\n", dot512 / 1e9, 32 * dot512 / 1e9);
    return sink == 42.0f;  /* keeps the sums alive */
}
