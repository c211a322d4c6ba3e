/* bfloat16 <-> float32 conversions shared by arlm's kernels (kernels.c, attention.c). */
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
#endif
