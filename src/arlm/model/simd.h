/* The float32 vector arlm's kernels compute on (kernels.c, bf16_mm.c, attention.c, block.c), VL lanes wide: AVX-512
 * (16 lanes) where the compiler targets it, else AVX2 with FMA and F16C (8 lanes). Every operation is lane by lane
 * except vf_sum, vf_sums and vf_top, fixed reductions, so a kernel's result depends on the data and VL only, never on
 * what else is computed beside it. */
#ifndef ARLM_SIMD_H
#define ARLM_SIMD_H
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#if defined(__AVX512F__)
#define VL 16
typedef __m512 vf;
static inline vf vf_zero(void) { return _mm512_setzero_ps(); }
static inline vf vf_set1(float v) { return _mm512_set1_ps(v); }
static inline vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
static inline vf vf_min(vf a, vf b) { return _mm512_min_ps(a, b); }
static inline vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf vf_round(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
/* 2^n for whole n in -126 .. 127 (exactly: the exponent field) */
static inline vf vf_pow2(vf n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
static inline float vf_sum(vf v) { return _mm512_reduce_add_ps(v); }
static inline float vf_top(vf v) { return _mm512_reduce_max_ps(v); }
/* w where s is not minus infinity, else 0 */
static inline vf vf_where_not_neg_inf(vf s, vf w) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(s, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ), w, _mm512_setzero_ps());
}
/* lane j: the sum of v[j]'s lanes, for 16 vectors at once, every lane by the same tree: within each 128-bit quarter
 * (0 + 2) + (1 + 3), then the quarters (q0 + q1) + (q2 + q3) */
static inline vf vf_sums(const vf *v) {
    vf w[8], x[4];
    for (int i = 0; i < 8; i++)
        w[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(w[2 * i]), b = _mm512_castps_pd(w[2 * i + 1]);
        x[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    vf s01 = _mm512_add_ps(_mm512_shuffle_f32x4(x[0], x[1], 0x88), _mm512_shuffle_f32x4(x[0], x[1], 0xDD));
    vf s23 = _mm512_add_ps(_mm512_shuffle_f32x4(x[2], x[3], 0x88), _mm512_shuffle_f32x4(x[2], x[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xDD));
}
static inline __mmask16 vf_mask(long n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }
/* the first n (0..VL) values at p, zeros after them; stores only the first n */
static inline vf vf_loadn(const float *p, long n) { return _mm512_maskz_loadu_ps(vf_mask(n), p); }
static inline void vf_storen(float *p, vf v, long n) { _mm512_mask_storeu_ps(p, vf_mask(n), v); }
static inline void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
/* VL bfloat16 values (widened exactly) */
static inline vf vf_load_bf16(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
/* VL pairs of bfloat16 at p (a0 b0 a1 b1 ...), widened exactly: even = a0 a1 ..., odd = b0 b1 ... */
static inline void vf_load_bf16_pairs(const uint16_t *p, vf *even, vf *odd) {
    __m512i v = _mm512_loadu_si512(p);
    *even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
    *odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define VL 8
typedef __m256 vf;
static inline vf vf_zero(void) { return _mm256_setzero_ps(); }
static inline vf vf_set1(float v) { return _mm256_set1_ps(v); }
static inline vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline vf vf_min(vf a, vf b) { return _mm256_min_ps(a, b); }
static inline vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf vf_round(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vf vf_pow2(vf n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
static inline float vf_sum(vf v) { /* halves, then quarters, then the last pair: always the same tree */
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
static inline vf vf_where_not_neg_inf(vf s, vf w) {
    return _mm256_blendv_ps(w, _mm256_setzero_ps(), _mm256_cmp_ps(s, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ));
}
static inline float vf_top(vf v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
/* lane j: the sum of v[j]'s lanes, for 8 vectors at once, every lane by the same tree: within each 128-bit half
 * (0 + 2) + (1 + 3), then the halves */
static inline vf vf_sums(const vf *v) {
    vf w[4], x[2];
    for (int i = 0; i < 4; i++)
        w[i] = _mm256_add_ps(_mm256_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm256_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 2; i++) {
        __m256d a = _mm256_castps_pd(w[2 * i]), b = _mm256_castps_pd(w[2 * i + 1]);
        x[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(a, b)), _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)));
    }
    return _mm256_add_ps(_mm256_permute2f128_ps(x[0], x[1], 0x20), _mm256_permute2f128_ps(x[0], x[1], 0x31));
}
static inline __m256i vf_mask(long n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n > 8 ? 8 : n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline vf vf_loadn(const float *p, long n) { return _mm256_maskload_ps(p, vf_mask(n)); }
static inline void vf_storen(float *p, vf v, long n) { _mm256_maskstore_ps(p, vf_mask(n), v); }
static inline void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vf_load_bf16(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
static inline void vf_load_bf16_pairs(const uint16_t *p, vf *even, vf *odd) {
    __m256i v = _mm256_loadu_si256((const __m256i *)p);
    *even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    *odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u)));
}
#else
#error "arlm's kernels need AVX-512 or AVX2 with FMA and F16C"
#endif

/* e^x lane by lane, within about 2 units in the last place, the same bits at either width: x clamped to -87 .. 88
 * (beyond them 1.2e-38 and 1.7e38), x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, so n ln2 is exact), e^r by
 * its Taylor series to r^7 (truncated: < 6e-9 relative), times 2^n */
static inline vf vf_exp(vf x) {
    x = vf_min(vf_max(x, vf_set1(-87.0f)), vf_set1(88.0f));
    vf n = vf_round(vf_mul(x, vf_set1(1.44269504f)));
    vf r = vf_fma(n, vf_set1(-0.693145752f), x);
    r = vf_fma(n, vf_set1(-1.42860677e-6f), r);
    vf p = vf_set1(1.0f / 5040.0f);
    const float terms[7] = {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f};
    for (int i = 0; i < 7; i++) p = vf_fma(p, r, vf_set1(terms[i]));
    return vf_mul(p, vf_pow2(n));
}

#endif
