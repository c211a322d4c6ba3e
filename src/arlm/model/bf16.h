/* bfloat16 <-> float32 conversions and element access shared by arlm's kernels (kernels.c, bf16_mm.c, attention.c,
 * block.c). */
#ifndef ARLM_BF16_H
#define ARLM_BF16_H
#include <stdint.h>

/* float32 -> bfloat16, round to nearest even (as torch's conversion); a NaN stays a NaN */
static inline uint16_t to_bf16(float f) {
    uint32_t bits;
    __builtin_memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffff) > 0x7f800000) return (uint16_t)((bits >> 16) | 0x40);
    bits += 0x7fff + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

static inline float from_bf16(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    __builtin_memcpy(&f, &bits, 4);
    return f;
}
static inline float round_bf16(float v) { return from_bf16(to_bf16(v)); }

/* element i of a float32 or bfloat16 array, as float32 */
static inline float value(const void *p, int bf, long i) {
    return bf ? from_bf16(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store(void *p, int bf, long i, float v) {
    if (bf)
        ((uint16_t *)p)[i] = to_bf16(v);
    else
        ((float *)p)[i] = v;
}

#endif
