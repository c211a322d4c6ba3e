/* What arlm's kernels (kernels.c, bf16_mm.c, quantized.c, attention.c, block.c) offer each other and model/native.py
 * (which mirrors the structs below with ctypes: keep the two in step). */
#ifndef ARLM_KERNELS_H
#define ARLM_KERNELS_H
#include <stdint.h>

/* One cached attention call (arlm_attend): the new tokens' rows are qkv (B, T, (nh + 2 nkv) hd) and out (B, T, nh hd),
 * float32 or bfloat16 (xbf = 1). cos, sin (B or 1, T, hd), float32 or bfloat16 (tbf = 1): the angles of their
 * positions (rope_stride: T hd, or 0 for one set for every row). Cache keys/values (R, nkv, L, hd), float32 or
 * bfloat16 (cbf = 1): row b lives in cache row rows[b] (NULL: b), its new tokens at positions starts[b] (NULL: start)
 * onward. allowed (B or 1, T, S) bytes or NULL: key j may be attended by query t (mask_stride: T S, or 0). */
typedef struct {
    const void *cos, *sin;
    void *ck, *cv;
    const long *rows, *starts;
    const uint8_t *allowed;
    long start, rope_stride, mask_stride, S, B, T, nh, nkv, hd, L;
    int xbf, tbf, cbf;
} Attention;

void arlm_attend(const Attention *a, const void *qkv, void *out, int threads);

/* A Linear on one of the kernels: kind 0 bfloat16 AMX tiles (w), 1 int8 codes (w) and float32 scales (scale), 2 int4
 * codes (w) and float16 scales and lows per group of G (scale; both laid out as quantized.c says), 3 float32 (N, K)
 * (w), 4 float32 packed 16 outputs to a line (w; kernels.c), 5 int8 codes (w) and float16 scales per group of
 * G = 32 (scale; GGUF's Q8_0); N outputs, K inputs, no bias. Kinds 1, 2 and 5 read their rows in groups of G inputs where G is 64 and
 * divides K, else 32 (int8's G: native.INT8_ROW_GROUP). */
typedef struct {
    const void *w, *scale;
    long N, K, G;
    int kind;
} Linear;

/* A pre-norm Llama block: x + attention(norm1(x)), then x + down(swiglu(up(norm2(x)))); norm weights in the rows'
 * dtype. */
typedef struct {
    const void *norm1, *norm2;
    Linear qkv, proj, up, down;
    float eps;
} Block;

void arlm_block(const Block *b, void *x, long M, const Attention *a, int threads);
void arlm_blocks(const Block *blocks, long n, void *x, long M, const Attention *a, long layer_bytes, int threads);

extern int arlm_amx_ready, arlm_amx_from; /* kernels.c */

#ifdef __AMX_TILE__
/* An AMX tile configuration (palette 1): bytes per row and rows of each of the 8 tiles */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} arlm_tile_config;

/* ldtilecfg of c. GCC 12's _tile_loadconfig names only 8 bytes of its operand as read, so GCC may delete the stores
 * that fill the rest (at -O2 it did, and ldtilecfg faulted on the garbage); this operand names all 64. */
static inline void arlm_load_tile_config(const arlm_tile_config *c) {
    __asm__ volatile("ldtilecfg %0" : : "m"(*c));
}
#endif
int arlm_amx_init(void);
void arlm_int_mm(const float *x, const Linear *l, float *y, long M, int threads);
void arlm_int_rows(const float *x, float *y, long M, long K, int width);
void arlm_f32_mm(const float *x, const float *w, float *y, long M, long N, long K, int threads);
void arlm_f32p_mm(const float *x, const float *wp, float *y, long M, long N, long K, int threads);
void arlm_bf16_mm(const uint16_t *x, const uint16_t *tiles, uint16_t *y, long M, long N, long K, int threads);
void arlm_rms_norm(const float *x, const float *w, float *y, long M, long D, float eps);
void arlm_rms_norm_bf16(const uint16_t *x, const uint16_t *w, uint16_t *y, long M, long D, float eps);
void arlm_swiglu(const void *h, void *out, long M, long F, int xbf, int threads);
#endif
