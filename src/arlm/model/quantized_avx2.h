/* arlm's int8 / int4 products on AVX2 (`vpmaddwd`), for CPUs without AVX512-VNNI (quantized.c's header comment).
 * Included by quantized.c in place of its AVX512-VNNI part, whose rows (Rows, int16 q) and prefetches (prefetch_group)
 * it uses; its int_tile takes the place of the vpdpbusd one, with the same integer sums and float32 steps. */
#ifndef ARLM_QUANTIZED_AVX2_H
#define ARLM_QUANTIZED_AVX2_H
/* Codes (16 outputs x inputs 4j .. 4j + 3, a byte each, as 16-bit words: even[h] holds inputs 4j and 4j + 2 of
 * outputs 8h .. 8h + 7, odd[h] 4j + 1 and 4j + 3, as values 0..255) times rows m0 .. m0 + mt's q of those inputs
 * (stored 4j, 4j + 2, 4j + 1, 4j + 3), added to their sums: vpmaddwd multiplies int16 pairs and adds each pair into an
 * int32 (exact), so every lane of sums[i][h] is one output's. A row's two broadcasts serve both halves. */
static inline __attribute__((always_inline)) void add_products(__m256i sums[][2], const __m256i even[2],
                                                               const __m256i odd[2], const int16_t *q, long Kp,
                                                               int mt) {
    for (int i = 0; i < mt; i++) {
        int first, second; /* q of inputs 4j, 4j + 2 and of 4j + 1, 4j + 3 */
        __builtin_memcpy(&first, q + i * Kp, 4);
        __builtin_memcpy(&second, q + i * Kp + 2, 4);
        __m256i a = _mm256_set1_epi32(first), b = _mm256_set1_epi32(second);
        for (int h = 0; h < 2; h++) {
            sums[i][h] = _mm256_add_epi32(sums[i][h], _mm256_madd_epi16(even[h], a));
            sums[i][h] = _mm256_add_epi32(sums[i][h], _mm256_madd_epi16(odd[h], b));
        }
        __asm__("" : "+x"(sums[i][0]), "+x"(sums[i][1])); /* the sums kept in registers, added in this order: GCC
                                           otherwise reorders the additions into a tree whose parts it spills */
    }
}

/* The exact sums sum_k u q over the codes' group g of 32, for the 16 outputs of tile `codes` (sums[i][h]: outputs
 * 8h .. 8h + 7, in order), rows m0 .. m0 + mt, added to sums; each code vector is read and split into words once for
 * all the rows */
static inline __attribute__((always_inline)) void group_sums(const uint8_t *codes, long g, int kind, const Rows *r,
                                                             long m0, int mt, __m256i sums[][2]) {
    const int16_t *q = (const int16_t *)r->q + m0 * r->Kp + 32 * g;
    const __m256i byte = _mm256_set1_epi16(0x00FF), nibble = _mm256_set1_epi16(0x000F);
    for (int j = 0; j < (BYTE_CODES(kind) ? 8 : 4); j++) { /* int4: low nibbles are inputs 4j.., high ones 16 + 4j.. */
        __m256i v[2], even[2], odd[2];
        for (int h = 0; h < 2; h++)
            v[h] = _mm256_loadu_si256((const __m256i *)(codes + ((BYTE_CODES(kind) ? 8 : 4) * g + j) * 64 + 32 * h));
        if (BYTE_CODES(kind)) {
            for (int h = 0; h < 2; h++) even[h] = _mm256_and_si256(v[h], byte), odd[h] = _mm256_srli_epi16(v[h], 8);
            add_products(sums, even, odd, q + 4 * j, r->Kp, mt);
            continue;
        }
        for (int h = 0; h < 2; h++)
            even[h] = _mm256_and_si256(v[h], nibble), odd[h] = _mm256_and_si256(_mm256_srli_epi16(v[h], 8), nibble);
        add_products(sums, even, odd, q + 4 * j, r->Kp, mt);
        for (int h = 0; h < 2; h++)
            even[h] = _mm256_and_si256(_mm256_srli_epi16(v[h], 4), nibble), odd[h] = _mm256_srli_epi16(v[h], 12);
        add_products(sums, even, odd, q + 16 + 4 * j, r->Kp, mt);
    }
}

/* Row sums s (8 outputs of half h, group g; row at `at` of r) added to their float32 sums acc: the float32 steps of
 * add_group on VNNI, lane by lane */
static inline __attribute__((always_inline)) __m256 add_sums(__m256 acc, __m256i s, int kind, const Rows *r, long at,
                                                             const uint16_t *pair, int h) {
    __m256 d = _mm256_set1_ps(r->d[at]);
    if (kind != 2) { /* minus the codes' offset; kind 5 times the group's scale */
        s = _mm256_sub_epi32(s, _mm256_set1_epi32(128 * r->qsum[at]));
        if (kind == 5) d = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pair + 8 * h))), d);
        return _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc);
    }
    __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pair + 8 * h)));
    __m256 low = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(pair + 16 + 8 * h)));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(scale, _mm256_set1_ps(r->d[at])), acc);
    return _mm256_fmadd_ps(low, _mm256_set1_ps(r->xsum[at]), acc);
}

/* Row m's sums for outputs 8h .. 8h + 7 of tile t into y (int8: times the outputs' scales) */
static inline __attribute__((always_inline)) void store_half(const Linear *l, const int kind, float *y, long m, long t,
                                                             int h, __m256 acc) {
    long n = (l->N - 16 * t < 16 ? l->N - 16 * t : 16) - 8 * h;
    if (n <= 0) return;
    if (kind == 1) acc = _mm256_mul_ps(acc, _mm256_loadu_ps((const float *)l->scale + 16 * t + 8 * h));
    __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_maskstore_ps(y + m * l->N + 16 * t + 8 * h, mask, acc);
}

/* rows m0 .. m0 + mt (mt <= ROWS) times the 16 outputs of tile t, 8 at a time, the rows in groups of W (mt and W
 * constants where inlined); the same integer sums and float32 steps, lane by lane, as the VNNI kernel */
static inline __attribute__((always_inline)) void int_tile(const Rows *r, const Linear *l, float *y, long m0, int mt,
                                                           long t, const int W, const int kind, const int next) {
    (void)next; /* (NEXT is 0 on AVX2: the first block streams its own tile) */
    const int sub = W / 32; /* the codes' groups of 32 in a group of the rows */
    const long groups = r->groups, levels = tile_levels(l, kind);
    const int shift = l->G == 64; /* group g of 32's levels: g >> shift */
    const uint8_t *codes = (const uint8_t *)l->w + t * tile_bytes(l, kind);
    __m256 acc[4][2];
    for (int i = 0; i < mt; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (long g = 0; g < groups; g++) {
        const uint16_t *pair = (const uint16_t *)l->scale + (t * levels + (sub * g >> shift)) * LEVEL_HALVES(kind);
        __m256i sums[4][2];
        for (int i = 0; i < mt; i++) sums[i][0] = sums[i][1] = _mm256_setzero_si256();
        for (int h = 0; h < sub; h++) {
            if (m0 == 0) prefetch_group(codes, l, t, sub * g + h, levels, shift, kind);
            group_sums(codes, sub * g + h, kind, r, m0, mt, sums);
        }
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < mt; i++)
                acc[i][h] = add_sums(acc[i][h], sums[i][h], kind, r, (m0 + i) * groups + g, pair, h);
    }
    for (int i = 0; i < mt; i++)
        for (int h = 0; h < 2; h++) store_half(l, kind, y, m0 + i, t, h, acc[i][h]);
}

#endif
