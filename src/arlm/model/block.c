/* A decoder block's forward over a few rows in one call, for decoding on x86-64 CPUs with AVX-512 or AVX2
 * (model/native.py builds and loads this file with kernels.c and attention.c; model/inference.py's FusedBlock calls
 * it).
 *
 * A decoding step of a 135M-parameter model runs ~1,000 small operations; between them PyTorch and Python spend as long
 * as the products take. arlm_block runs a Llama block's ten steps (RMSNorm, qkv, attention, projection, residual,
 * RMSNorm, gate/up, SwiGLU, down, residual) on the kernels each step calls one at a time otherwise, in the same order
 * and with the same roundings (a bfloat16 add or SwiGLU rounds as PyTorch's bfloat16 ops do), so the block gives the
 * bits the module gives, one Python call instead of ~30. */
#include <math.h>
#include <stdlib.h>

#include "bf16.h"
#include "kernels.h"
#include "simd.h"

/* h (M, 2F) -> out (M, F): silu(gate) * up = gate / (1 + e^-gate) * up, gate the first F values of a row, e^ on
 * vectors (simd.h's vf_exp); bfloat16 rounds each op's result. Each value alone, so spread over threads in chunks of
 * 64 (the split changes no bits), on one thread below SWIGLU_SPLIT values (a decoding step's few rows take less time
 * than waking a second thread). */
#define SWIGLU_SPLIT 4096
void arlm_swiglu(const void *h, void *out, long M, long F, int xbf, int threads) {
    long chunks = (F + 63) / 64;
#pragma omp parallel for schedule(static) num_threads(threads) if (M * F >= SWIGLU_SPLIT)
    for (long c = 0; c < M * chunks; c++) {
        long m = c / chunks, f0 = c % chunks * 64, n = f0 + 64 < F ? 64 : F - f0;
        float s[64];
        for (long f = 0; f < n; f++) s[f] = value(h, xbf, m * 2 * F + f0 + f);
        for (long f = n; f < 64; f++) s[f] = 0.0f;
        for (long v = 0; v < n; v += VL) { /* whole vectors: AVX2's masked stores are slow, the reads after them wait */
            vf gate = vf_load(s + v);
            vf_store(s + v, vf_div(gate, vf_add(vf_set1(1.0f), vf_exp(vf_mul(gate, vf_set1(-1.0f))))));
        }
        for (long f = 0; f < n; f++) {
            float silu = xbf ? round_bf16(s[f]) : s[f];
            store(out, xbf, m * F + f0 + f, silu * value(h, xbf, m * 2 * F + F + f0 + f));
        }
    }
}

/* y = x times l's weight on its kernel (kernels.h's kinds; 1, 2 and 5 the int ones) */
static void linear(const Linear *l, const void *x, void *y, long M, int threads) {
    if (l->kind == 0) arlm_bf16_mm(x, l->w, y, M, l->N, l->K, threads);
    else if (l->kind == 3) arlm_f32_mm(x, l->w, y, M, l->N, l->K, threads);
    else if (l->kind == 4) arlm_f32p_mm(x, l->w, y, M, l->N, l->K, threads);
    else arlm_int_mm(x, l, y, M, threads);
}

static void norm(const void *w, const void *x, void *y, long M, long C, float eps, int xbf) {
    if (xbf)
        arlm_rms_norm_bf16(x, w, y, M, C, eps);
    else
        arlm_rms_norm(x, w, y, M, C, eps);
}

/* x += y over n values */
static void add(void *x, const void *y, long n, int xbf) {
    for (long i = 0; i < n; i++) store(x, xbf, i, value(x, xbf, i) + value(y, xbf, i));
}

/* x (M, C) rows of the block's input, replaced by its output; a: the attention call (its B T = M rows) */
void arlm_block(const Block *b, void *x, long M, const Attention *a, int threads) {
    int xbf = a->xbf;
    long size = xbf ? 2 : 4, C = b->qkv.K, F = b->up.N / 2;
    char *h = malloc(M * C * size), *qkv = malloc(M * b->qkv.N * size), *heads = malloc(M * b->proj.K * size);
    char *o = malloc(M * C * size), *up = malloc(M * 2 * F * size), *gated = malloc(M * F * size);
    norm(b->norm1, x, h, M, C, b->eps, xbf);
    linear(&b->qkv, h, qkv, M, threads);
    arlm_attend(a, qkv, heads, threads);
    linear(&b->proj, heads, o, M, threads);
    add(x, o, M * C, xbf);
    norm(b->norm2, x, h, M, C, b->eps, xbf);
    linear(&b->up, h, up, M, threads);
    arlm_swiglu(up, gated, M, F, xbf, threads);
    linear(&b->down, gated, o, M, threads);
    add(x, o, M * C, xbf);
    free(h), free(qkv), free(heads), free(o), free(up), free(gated);
}

/* n blocks in order, block i's cache layer `layer_bytes` on from the one a points at (the layers of one cache
 * tensor) */
void arlm_blocks(const Block *blocks, long n, void *x, long M, const Attention *a, long layer_bytes, int threads) {
    Attention layer = *a;
    for (long i = 0; i < n; i++) {
        layer.ck = (char *)a->ck + i * layer_bytes, layer.cv = (char *)a->cv + i * layer_bytes;
        arlm_block(&blocks[i], x, M, &layer, threads);
    }
}
