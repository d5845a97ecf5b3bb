/* Fused int4 weight-only GEMV for decode (w4a16, a few activation rows): never writes a float weight tile.
 *
 * Prototype (for npq.h):
 *
 *   NPQ_API int npq_gemv_int4(const void *x, int x_dtype, int64_t m, int64_t x_row_stride, int64_t k,
 *                             const int32_t *packed, int64_t packed_extent, int64_t n, int64_t words,
 *                             int64_t row_stride, const float *scale, const float *offset, int64_t groups,
 *                             const float *bias, void *out, int nthreads);
 *
 *   out[r, j] = cast(sum_kk x[r, kk] * w[j, kk]  (+ bias[j])),  r < m, j < n, kk < k
 *   w[j, kk]  = cast((float32(nibble kk of row j) + offset[j, g]) * scale[j, g]),  g = kk / (8 * words / groups)
 *
 * x: m rows of k float32 / float16 / bfloat16 (x_dtype NPQ_F32 / NPQ_F16 / NPQ_BF16), row r at
 * x + r * x_row_stride elements, unit column stride. packed: n rows of `words` int32 words of 8
 * signed int4 along K (row j at packed + j * row_stride; element kk is nibble kk % 8 of word kk / 8,
 * sign-extended, as npq_dequant_int4_grouped reads it); packed_extent int32 words are readable.
 * Only the first k <= 8 * words columns are used (the rest is padding, never read past word
 * ceil(k / 8)). scale / offset: contiguous (n, groups) float32, group size 8 * words / groups
 * columns; offset may be NULL (+0, as in npq_dequant_int4_grouped). bias: NULL or n float32, added
 * once to the float32 sum. out: contiguous (m, n) in x's dtype. `cast` is the identity for float32
 * x and npq_f32_to_f16 / npq_f32_to_bf16 (round half to even, npq.h's NaN rules) otherwise: the
 * dequantized weight is rounded to x's dtype exactly as the reference's float tile is
 * (npq_dequant_int4_grouped to x.dtype, then torch.nn.functional.linear).
 *
 * Status: NPQ_ERR_DTYPE for another x_dtype; NPQ_ERR_ARG for m, n, k, words, strides or
 * packed_extent < 0, groups <= 0, words % groups != 0, k > 8 * words, or sizes that overflow;
 * NPQ_ERR_BOUNDS when (n - 1) * row_stride + words > packed_extent; NPQ_ERR_NULL for a missing
 * pointer that the call needs; NPQ_ERR_NOMEM when the activation scratch cannot be allocated.
 * Everything is checked before any memory is touched.
 *
 * Summation order (every ISA level gives bit-identical results; the scalar version is written in
 * this order): the x row is cut into blocks of 64 columns (8 words), the last one zero-padded.
 * Column kk = 64 b + 8 i + t of block b goes to lane i (0..7) of one float32 accumulator per output
 * (+0 at the start); for b = 0, 1, ... and within a block t = 0..7, each lane does
 *     acc[i] = fma(w[kk], x[kk], acc[i])
 * (a single rounding), padding columns adding fma(+0, +0, acc[i]). Then the lanes are added as
 *     ((acc0 + acc4) + (acc2 + acc6)) + ((acc1 + acc5) + (acc3 + acc7)),
 * bias[j] is added to that once, and the result is cast to x's dtype. The order does not depend on
 * m, n, the thread count or the ISA, so a row's output does not depend on the batch it comes in.
 *
 * The AVX2 kernel keeps the packed words in registers: 8 consecutive words of a row fill one
 * vector (lane i = word i of the block), and nibble t of every lane is brought to the top by a
 * shift, sign-extended by an arithmetic shift, converted, and dequantized with the lane's group
 * offset / scale (add, multiply: the reference's two float32 operations), rounded to x's dtype
 * when that is 16-bit, and multiplied into the accumulator with x's column 64 b + 8 i + t. The
 * activations are converted to float32 once per call into a scratch buffer already in that
 * (i, t)-transposed order, so every x load is one aligned vector. */
#include <stdlib.h>

#include "npq.h"

#define GV_BLOCK 64          /* columns per block: 8 words */
#define GV_MAXM 8            /* activation rows per pass over a weight row */
#define GV_STACK_FLOATS 4096 /* activation scratch on the stack up to this size (16 KiB) */
#define GV_GRAIN_BYTES (64 << 10) /* packed-weight bytes per thread, at least: 2 threads from 128 KiB */

/* How a block's 8 words find their group's scale and offset. */
enum {
    GV_BCAST, /* 8 | group words: one group per block */
    GV_G1,    /* 1 word per group: 8 groups per block */
    GV_G2,    /* 2 words per group */
    GV_G4,    /* 4 words per group (group_size 32) */
    GV_SPAN,  /* more than 8 words per group, not a multiple of 8: at most one group edge per block */
    GV_ANY,   /* 3, 5, 6 or 7 words per group */
};

typedef struct {
    const float *xs; /* activation scratch: (m, nb, 8 t, 8 i) float32 */
    int64_t m, k, nb, nfull, tail; /* tail: columns of the last, partial block (0: none) */
    const int32_t *packed;
    int64_t row_stride, groups, gw; /* gw: words per group */
    const float *scale, *offset, *bias;
    void *out;
    int64_t n;
    int dt, mode;
} gv_job;

/* ---------------------------------------------------------------- shared helpers */

static inline float gv_load_x(const void *x, int dt, int64_t i) {
    if (dt == NPQ_F32) return ((const float *)x)[i];
    if (dt == NPQ_F16) return npq_f16_to_f32(((const uint16_t *)x)[i]);
    return npq_bf16_to_f32(((const uint16_t *)x)[i]);
}

/* x rows -> float32 scratch, column kk of row r at ((r * nb + kk / 64) * 8 + kk % 8) * 8 + kk % 64 / 8. */
static void gv_prepare_x(const void *x, int dt, int64_t m, int64_t xrs, int64_t k, int64_t nb, float *xs) {
    const size_t esz = dt == NPQ_F32 ? 4 : 2;
    for (int64_t r = 0; r < m; r++) {
        float *dst = xs + r * nb * GV_BLOCK;
        const char *src = (const char *)x + r * xrs * (int64_t)esz;
        if (k % GV_BLOCK) memset(dst + (nb - 1) * GV_BLOCK, 0, GV_BLOCK * sizeof(float));
        for (int64_t kk = 0; kk < k; kk++)
            dst[(kk & ~(int64_t)63) + (kk & 7) * 8 + ((kk >> 3) & 7)] = gv_load_x(src, dt, kk);
    }
}

/* The dequantized weight as the reference's tile holds it, widened back to float32. */
static inline float gv_round(float w, int dt) {
    if (dt == NPQ_F16) return npq_f16_to_f32(npq_f32_to_f16(w));
    if (dt == NPQ_BF16) return npq_bf16_to_f32(npq_f32_to_bf16(w));
    return w;
}

/* Fixed lane reduction (the file header's order), bias, cast, store. */
static inline void gv_store(const gv_job *J, int64_t r, int64_t j, const float acc[8]) {
    float s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    if (J->bias) s += J->bias[j];
    const int64_t o = r * J->n + j;
    if (J->dt == NPQ_F32)
        ((float *)J->out)[o] = s;
    else if (J->dt == NPQ_F16)
        ((uint16_t *)J->out)[o] = npq_f32_to_f16(s);
    else
        ((uint16_t *)J->out)[o] = npq_f32_to_bf16(s);
}

/* ---------------------------------------------------------------- scalar */

static void gv_rows_scalar(const gv_job *J, int64_t j0, int64_t j1) {
    const int64_t gsize = 8 * J->gw;
    for (int64_t j = j0; j < j1; j++) {
        const int32_t *wr = J->packed + j * J->row_stride;
        const float *s = J->scale + j * J->groups, *o = J->offset ? J->offset + j * J->groups : NULL;
        for (int64_t r0 = 0; r0 < J->m; r0 += GV_MAXM) {
            const int64_t mc = J->m - r0 < GV_MAXM ? J->m - r0 : GV_MAXM;
            float acc[GV_MAXM][8];
            for (int64_t r = 0; r < mc; r++)
                for (int i = 0; i < 8; i++) acc[r][i] = 0.0f;
            for (int64_t b = 0; b < J->nb; b++) {
                for (int t = 0; t < 8; t++) {
                    for (int i = 0; i < 8; i++) {
                        const int64_t kk = b * GV_BLOCK + 8 * i + t;
                        float w = 0.0f;
                        if (kk < J->k) {
                            const int32_t nib = (int32_t)(((uint32_t)wr[kk >> 3] >> (4 * (kk & 7))) & 0xFu);
                            const int64_t g = kk / gsize;
                            w = gv_round(((float)((nib ^ 8) - 8) + (o ? o[g] : 0.0f)) * s[g], J->dt);
                        }
                        for (int64_t r = 0; r < mc; r++)
                            acc[r][i] = __builtin_fmaf(w, J->xs[((r0 + r) * J->nb + b) * GV_BLOCK + t * 8 + i], acc[r][i]);
                    }
                }
            }
            for (int64_t r = 0; r < mc; r++) gv_store(J, r0 + r, j, acc[r]);
        }
    }
}

#if NPQ_X86
/* ---------------------------------------------------------------- AVX2 + FMA + F16C */

#define GV_INLINE static inline __attribute__((always_inline))

/* Lane i (< 8) of a block starting at word w0: s[group of word w0 + i], any mode. g / left: the
 * group of word w0 and the words left in it from w0. `last`: lanes past it repeat it (tail block). */
static void gv_fill_lanes(const float *s, int64_t g, int64_t left, int64_t gw, int last, float *dst) {
    for (int i = 0; i < 8; i++) {
        dst[i] = s[g];
        if (i < last && --left == 0) {
            g++;
            left = gw;
        }
    }
}

/* The 8 per-lane values of s for the block at word w0 (a full block: every word exists). */
NPQ_TARGET_AVX2 GV_INLINE __m256 gv_lanes_avx2(const float *s, int mode, int64_t w0, int64_t g, int64_t left,
                                               int64_t gw) {
    switch (mode) {
    case GV_BCAST: return _mm256_broadcast_ss(s + g);
    case GV_G1: return _mm256_loadu_ps(s + w0);
    case GV_G2: /* [a b c d | a b c d] -> [a a b b | c c d d] */
        return _mm256_permutevar_ps(_mm256_broadcast_ps((const __m128 *)(s + (w0 >> 1))),
                                    _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
    case GV_G4: { /* [a b a b | a b a b] -> [a a a a | b b b b] */
        int64_t ab;
        memcpy(&ab, s + (w0 >> 2), 8);
        return _mm256_permutevar_ps(_mm256_castsi256_ps(_mm256_set1_epi64x(ab)),
                                    _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
    }
    case GV_SPAN:
        if (left >= 8) return _mm256_broadcast_ss(s + g);
        return _mm256_blendv_ps(_mm256_broadcast_ss(s + g), _mm256_broadcast_ss(s + g + 1),
                                _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                                                       _mm256_set1_epi32((int)left - 1))));
    default: {
        float t[8];
        gv_fill_lanes(s, g, left, gw, 8, t);
        return _mm256_loadu_ps(t);
    }
    }
}

/* Nibble t of every lane as float32, exactly. */
NPQ_TARGET_AVX2 GV_INLINE __m256 gv_nibble_avx2(__m256i v, const int t) {
    __m256i top = t == 7 ? v : _mm256_slli_epi32(v, 28 - 4 * t);
    return _mm256_cvtepi32_ps(_mm256_srai_epi32(top, 28));
}

/* w as the reference's tile holds it (rounded to x's dtype), widened to float32. NaN stays NaN
 * (its payload does not matter: a NaN product makes the output NaN, cast with npq.h's rules). */
NPQ_TARGET_AVX2 GV_INLINE __m256 gv_round_avx2(__m256 w, const int dt) {
    if (dt == NPQ_F16) return _mm256_cvtph_ps(_mm256_cvtps_ph(w, _MM_FROUND_TO_NEAREST_INT));
    if (dt == NPQ_BF16) {
        const __m256i u = _mm256_castps_si256(w);
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        const __m256i rnd = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
        const __m256 r = _mm256_castsi256_ps(_mm256_and_si256(rnd, _mm256_set1_epi32((int)0xFFFF0000u)));
        return _mm256_blendv_ps(_mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000)), r, _mm256_cmp_ps(w, w, _CMP_ORD_Q));
    }
    return w;
}

/* Sums the lanes in the header's order, adds the bias, casts, stores. */
NPQ_TARGET_AVX2 GV_INLINE void gv_store_avx2(const gv_job *J, int64_t r, int64_t j, __m256 acc) {
    const __m128 a = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1)); /* i, i + 4 */
    const __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));                                    /* (0+4)+(2+6), (1+5)+(3+7) */
    float s = _mm_cvtss_f32(_mm_add_ss(b, _mm_movehdup_ps(b)));
    if (J->bias) s += J->bias[j];
    const int64_t o = r * J->n + j;
    if (J->dt == NPQ_F32)
        ((float *)J->out)[o] = s;
    else if (J->dt == NPQ_F16)
        ((uint16_t *)J->out)[o] = npq_f32_to_f16(s);
    else
        ((uint16_t *)J->out)[o] = npq_f32_to_bf16(s);
}

/* Weight rows j .. j + R - 1 times activation rows r0 .. r0 + M - 1. R, M, dt and mode are
 * constants in each instantiation. */
NPQ_TARGET_AVX2 GV_INLINE void gv_body_avx2(const gv_job *J, int64_t j, int64_t r0, const int R, const int M,
                                            const int dt, const int mode) {
    const int32_t *wr[2];
    const float *sr[2], *orow[2];
    for (int q = 0; q < R; q++) {
        wr[q] = J->packed + (j + q) * J->row_stride;
        sr[q] = J->scale + (j + q) * J->groups;
        orow[q] = J->offset ? J->offset + (j + q) * J->groups : NULL;
    }
    const int64_t xstride = J->nb * GV_BLOCK, gw = J->gw;
    const float *xb = J->xs + r0 * xstride;
    __m256 acc[2][GV_MAXM];
    for (int q = 0; q < R; q++)
        for (int r = 0; r < M; r++) acc[q][r] = _mm256_setzero_ps();
    int64_t g = 0, left = gw; /* group of the block's first word, words left in it */

#define GV_STEP(t)                                                                                   \
    do {                                                                                             \
        __m256 w_[2];                                                                                \
        for (int q = 0; q < R; q++)                                                                  \
            w_[q] = gv_round_avx2(_mm256_mul_ps(_mm256_add_ps(gv_nibble_avx2(v[q], t), ov[q]), sv[q]), dt); \
        if (masked)                                                                                  \
            for (int q = 0; q < R; q++)                                                              \
                w_[q] = _mm256_and_ps(w_[q], _mm256_castsi256_ps(_mm256_cmpgt_epi32(lim, _mm256_set1_epi32(t)))); \
        for (int r = 0; r < M; r++) {                                                                \
            const __m256 xv = _mm256_load_ps(xb + r * xstride + (t) * 8);                            \
            for (int q = 0; q < R; q++) acc[q][r] = _mm256_fmadd_ps(w_[q], xv, acc[q][r]);            \
        }                                                                                            \
    } while (0)
#define GV_BLOCK_BODY                                                                                \
    do {                                                                                             \
        GV_STEP(0);                                                                                  \
        GV_STEP(1);                                                                                  \
        GV_STEP(2);                                                                                  \
        GV_STEP(3);                                                                                  \
        GV_STEP(4);                                                                                  \
        GV_STEP(5);                                                                                  \
        GV_STEP(6);                                                                                  \
        GV_STEP(7);                                                                                  \
    } while (0)

    for (int64_t b = 0; b < J->nfull; b++, xb += GV_BLOCK) {
        const int masked = 0;
        const __m256i lim = _mm256_setzero_si256();
        (void)lim;
        __m256i v[2];
        __m256 sv[2], ov[2];
        for (int q = 0; q < R; q++) {
            v[q] = _mm256_loadu_si256((const __m256i *)(wr[q] + 8 * b));
            sv[q] = gv_lanes_avx2(sr[q], mode, 8 * b, g, left, gw);
            ov[q] = orow[q] ? gv_lanes_avx2(orow[q], mode, 8 * b, g, left, gw) : _mm256_setzero_ps();
        }
        GV_BLOCK_BODY;
        if (mode == GV_BCAST || mode == GV_SPAN || mode == GV_ANY) {
            left -= 8;
            while (left <= 0) {
                g++;
                left += gw;
            }
        }
    }
    if (J->tail) {
        /* Last block: words past the used ones are not loaded (masked load), their lanes and the
         * padding columns of the last word get w = +0 (lim: valid columns of each lane). */
        const int masked = 1;
        const int nw = (int)((J->tail + 7) >> 3);
        const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i lim = _mm256_min_epi32(
            _mm256_max_epi32(_mm256_sub_epi32(_mm256_set1_epi32((int)J->tail), _mm256_slli_epi32(lane, 3)),
                             _mm256_setzero_si256()),
            _mm256_set1_epi32(8));
        const __m256i wmask = _mm256_cmpgt_epi32(_mm256_set1_epi32(nw), lane);
        const int64_t w0 = 8 * J->nfull;
        if (mode == GV_G1 || mode == GV_G2 || mode == GV_G4) { /* g / left were not tracked */
            g = w0 / gw;
            left = gw - w0 % gw;
        }
        __m256i v[2];
        __m256 sv[2], ov[2];
        for (int q = 0; q < R; q++) {
            float t8[8];
            v[q] = _mm256_maskload_epi32(wr[q] + w0, wmask);
            gv_fill_lanes(sr[q], g, left, gw, nw - 1, t8);
            sv[q] = _mm256_loadu_ps(t8);
            if (orow[q]) {
                gv_fill_lanes(orow[q], g, left, gw, nw - 1, t8);
                ov[q] = _mm256_loadu_ps(t8);
            } else {
                ov[q] = _mm256_setzero_ps();
            }
        }
        GV_BLOCK_BODY;
    }
#undef GV_BLOCK_BODY
#undef GV_STEP
    for (int q = 0; q < R; q++)
        for (int r = 0; r < M; r++) gv_store_avx2(J, r0 + r, j + q, acc[q][r]);
}

/* One instantiation per (rows at once, activation rows, dtype); mode is a run-time switch
 * inside (one predictable branch per block). */
#define GV_INST(R, M)                                                                                            \
    NPQ_TARGET_AVX2 static void gv_r##R##_m##M##_avx2(const gv_job *J, int64_t j, int64_t r0) {                \
        switch (J->dt * 8 + J->mode) {                                                                           \
        case NPQ_F32 * 8 + GV_BCAST: gv_body_avx2(J, j, r0, R, M, NPQ_F32, GV_BCAST); break;                     \
        case NPQ_F32 * 8 + GV_G4: gv_body_avx2(J, j, r0, R, M, NPQ_F32, GV_G4); break;                           \
        case NPQ_F16 * 8 + GV_BCAST: gv_body_avx2(J, j, r0, R, M, NPQ_F16, GV_BCAST); break;                     \
        case NPQ_F16 * 8 + GV_G4: gv_body_avx2(J, j, r0, R, M, NPQ_F16, GV_G4); break;                           \
        case NPQ_BF16 * 8 + GV_BCAST: gv_body_avx2(J, j, r0, R, M, NPQ_BF16, GV_BCAST); break;                   \
        case NPQ_BF16 * 8 + GV_G4: gv_body_avx2(J, j, r0, R, M, NPQ_BF16, GV_G4); break;                         \
        default:                                                                                                 \
            if (J->dt == NPQ_F32) gv_body_avx2(J, j, r0, R, M, NPQ_F32, J->mode);                                \
            else if (J->dt == NPQ_F16) gv_body_avx2(J, j, r0, R, M, NPQ_F16, J->mode);                           \
            else gv_body_avx2(J, j, r0, R, M, NPQ_BF16, J->mode);                                                \
        }                                                                                                        \
    }
GV_INST(2, 1)
GV_INST(2, 2)
GV_INST(1, 1)
GV_INST(1, 2)
GV_INST(1, 3)
GV_INST(1, 4)
GV_INST(1, 5)
GV_INST(1, 6)
GV_INST(1, 7)
GV_INST(1, 8)
#undef GV_INST

typedef void (*gv_kernel)(const gv_job *J, int64_t j, int64_t r0);
static const gv_kernel gv_k1_avx2[GV_MAXM + 1] = {NULL, gv_r1_m1_avx2, gv_r1_m2_avx2, gv_r1_m3_avx2, gv_r1_m4_avx2,
                                                  gv_r1_m5_avx2, gv_r1_m6_avx2, gv_r1_m7_avx2, gv_r1_m8_avx2};
static const gv_kernel gv_k2_avx2[3] = {NULL, gv_r2_m1_avx2, gv_r2_m2_avx2};

static void gv_rows_avx2(const gv_job *J, int64_t j0, int64_t j1) {
    for (int64_t r0 = 0; r0 < J->m; r0 += GV_MAXM) {
        const int64_t mc = J->m - r0 < GV_MAXM ? J->m - r0 : GV_MAXM;
        int64_t j = j0;
        if (mc <= 2)
            for (; j + 2 <= j1; j += 2) gv_k2_avx2[mc](J, j, r0);
        for (; j < j1; j++) gv_k1_avx2[mc](J, j, r0);
    }
}
#endif /* NPQ_X86 */

/* ---------------------------------------------------------------- driver */

typedef struct {
    const gv_job *job;
    void (*rows)(const gv_job *J, int64_t j0, int64_t j1);
} gv_ctx;

static void gv_range(void *ctx, int64_t begin, int64_t end) {
    const gv_ctx *c = (const gv_ctx *)ctx;
    c->rows(c->job, begin, end);
}

NPQ_API int npq_gemv_int4(const void *x, int x_dtype, int64_t m, int64_t x_row_stride, int64_t k,
                          const int32_t *packed, int64_t packed_extent, int64_t n, int64_t words, int64_t row_stride,
                          const float *scale, const float *offset, int64_t groups, const float *bias, void *out,
                          int nthreads) {
    if (x_dtype != NPQ_F32 && x_dtype != NPQ_F16 && x_dtype != NPQ_BF16) return NPQ_ERR_DTYPE;
    if (m < 0 || n < 0 || k < 0 || words < 0 || x_row_stride < 0 || row_stride < 0 || packed_extent < 0)
        return NPQ_ERR_ARG;
    if (groups <= 0 || words % groups != 0) return NPQ_ERR_ARG;
    if (words > INT64_MAX / 8 || k > 8 * words) return NPQ_ERR_ARG;
    int64_t outputs, last;
    if (__builtin_mul_overflow(m, n, &outputs)) return NPQ_ERR_ARG;
    const int64_t nb = (k + GV_BLOCK - 1) / GV_BLOCK;
    int64_t scratch; /* floats */
    if (__builtin_mul_overflow(m, nb * GV_BLOCK, &scratch) || scratch > INT64_MAX / 8) return NPQ_ERR_ARG;
    if (n > 0 && words > 0) {
        if (__builtin_mul_overflow(n - 1, row_stride, &last) || __builtin_add_overflow(last, words, &last) ||
            last > packed_extent)
            return NPQ_ERR_BOUNDS;
    }
    if (outputs == 0) return NPQ_OK;
    if (!out) return NPQ_ERR_NULL;
    if (k > 0 && (!x || !packed || !scale)) return NPQ_ERR_NULL;

    if (k == 0) { /* an empty sum: the bias (or +0) cast to x's dtype */
        for (int64_t r = 0; r < m; r++)
            for (int64_t j = 0; j < n; j++) {
                const float s = bias ? bias[j] : 0.0f;
                if (x_dtype == NPQ_F32)
                    ((float *)out)[r * n + j] = s;
                else
                    ((uint16_t *)out)[r * n + j] = x_dtype == NPQ_F16 ? npq_f32_to_f16(s) : npq_f32_to_bf16(s);
            }
        return NPQ_OK;
    }

    _Alignas(32) float stack_xs[GV_STACK_FLOATS];
    float *xs = stack_xs;
    if (scratch > GV_STACK_FLOATS) {
        xs = (float *)aligned_alloc(64, (size_t)scratch * sizeof(float)); /* a multiple of 256 bytes */
        if (!xs) return NPQ_ERR_NOMEM;
    }
    gv_prepare_x(x, x_dtype, m, x_row_stride, k, nb, xs);

    gv_job J;
    memset(&J, 0, sizeof J);
    J.xs = xs;
    J.m = m;
    J.k = k;
    J.nb = nb;
    J.nfull = k / GV_BLOCK;
    J.tail = k % GV_BLOCK;
    J.packed = packed;
    J.row_stride = row_stride;
    J.groups = groups;
    J.gw = words / groups;
    J.scale = scale;
    J.offset = offset;
    J.bias = bias;
    J.out = out;
    J.n = n;
    J.dt = x_dtype;
    J.mode = J.gw % 8 == 0 ? GV_BCAST
             : J.gw == 1   ? GV_G1
             : J.gw == 2   ? GV_G2
             : J.gw == 4   ? GV_G4
             : J.gw > 8    ? GV_SPAN
                           : GV_ANY;

    gv_ctx c = {&J, gv_rows_scalar};
#if NPQ_X86
    if (npq_isa() >= NPQ_ISA_AVX2) c.rows = gv_rows_avx2;
#endif
    const int64_t row_bytes = 4 * ((k + 7) / 8);
    npq_parallel_for(n, (GV_GRAIN_BYTES + row_bytes - 1) / row_bytes, nthreads, gv_range, &c);
    if (xs != stack_xs) free(xs);
    return NPQ_OK;
}
