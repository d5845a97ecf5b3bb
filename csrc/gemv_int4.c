/* Fused int4 weight-only GEMV for decode (w4a16, a few activation rows): never writes a float weight tile.
 *
 * Prototype (for npq.h):
 *
 *   NPQ_API int npq_gemv_int4(const void *x, int x_dtype, int64_t m, int64_t x_row_stride, int64_t k,
 *                             const int32_t *packed, int64_t packed_extent, int64_t n, int64_t words,
 *                             int64_t row_stride, const float *scale, const float *offset, int64_t groups,
 *                             const float *bias, void *out, int nthreads);
 *
 *   out[r, j] = cast(sum_kk x[r, kk] * w[j, kk]  (+ bias[j])),   r < m, j < n, kk < k
 *   w[j, kk]  = cast((float32(nibble kk of row j) + offset[j, g]) * scale[j, g]),   g = kk / group_size
 *
 * float32 x is summed in a factored form (below), float16 / bfloat16 x with the weight rounded to
 * x's dtype exactly as the reference's dequantized tile holds it; either way the result agrees with
 * the reference to float32 rounding, and is the same bits for every ISA, thread count and m.
 *
 * x: m rows of k float32 / float16 / bfloat16 (x_dtype NPQ_F32 / NPQ_F16 / NPQ_BF16), row r at
 * x + r * x_row_stride elements, unit column stride. packed: n rows of `words` int32 words of 8
 * signed int4 along K (row j at packed + j * row_stride; element kk is nibble kk % 8 of word kk / 8,
 * bits 4 * (kk % 8) .. + 3, sign-extended, as npq_dequant_int4_grouped reads it); packed_extent int32
 * words are readable. Only the first k <= 8 * words columns are used: words past ceil(k / 8) are
 * never read. scale / offset: contiguous (n, groups) float32, group_size = 8 * words / groups
 * columns; offset may be NULL (+0, as in npq_dequant_int4_grouped). bias: NULL or n float32, added
 * once to the float32 sum. out: contiguous (m, n) in x's dtype. `cast` is the identity for float32
 * x and npq_f32_to_f16 / npq_f32_to_bf16 (round half to even, npq.h's NaN rules) otherwise: the
 * weight is rounded to x's dtype exactly as the reference's dequantized tile is
 * (npq_dequant_int4_grouped to x.dtype, then torch.nn.functional.linear). x is widened to float32
 * exactly; products and sums are float32.
 *
 * Status: NPQ_ERR_DTYPE for another x_dtype; NPQ_ERR_ARG for m, n, k, words, strides or
 * packed_extent < 0, groups <= 0, words % groups != 0, k > 8 * words, or sizes and offsets that
 * overflow int64 (m * n, n * groups, (m - 1) * x_row_stride + k);
 * NPQ_ERR_BOUNDS when n > 0, words > 0 and (n - 1) * row_stride + words > packed_extent; NPQ_ERR_NULL
 * for a missing pointer the call needs (out when m * n > 0; x, packed, scale when k > 0 too);
 * NPQ_ERR_NOMEM when the activation scratch cannot be allocated. Everything is checked before any
 * memory is touched; m = 0 or n = 0 is a successful no-op, k = 0 writes cast(bias or +0).
 *
 * float32 x, the factored order (for |x| <= 2^100, all finite; otherwise the table order below).
 * Word w of a row holds columns 8w .. 8w + 7; u'_p = nibble p ^ 8 = the signed value + 8, in [0, 15];
 * g = its group. K is cut into blocks of 8 words, word 8b + i in lane i (words past ceil(k / 8) are
 * not read: u' = 8, x = 0, scale = offset' = 0 in their lanes). Per row, lane and word:
 *     A = u'_0 * x_0;  A = fma(u'_p, x_p, A) for p = 1 .. 7      (x_p = x[8w + p], +0 past k)
 *     X = ((x_0 + x_1) + x_2) + ... + x_7                        (once per call)
 *     acc[i] = fma(scale[g], fma(offset[g] - 8, X, A), acc[i])
 * then the lane reduction, bias and cast below. This is sum x * (v + offset) * scale with the
 * products regrouped: no weight is formed, so no table and no rounding to x's dtype is needed, and
 * the AVX2 loop is a shift, a mask, a convert and an FMA per 8 weights. Beyond 2^100 (or with a
 * non-finite x) the regrouped sums could overflow or meet inf * 0 where the reference's products do
 * not: such calls take the table path, whose products are the reference's own.
 *
 * Table order (float16 / bfloat16 x; every ISA level gives bit-identical results; the scalar
 * version is written in exactly this order, so it is the reference for the vector ones). K is cut into blocks of 64
 * columns (8 words; the last block zero-padded). Within a block, column
 *     e = 32 * (i >> 2) + 8 * (t & 3) + 2 * (i & 3) + (t >> 2)      (word e / 8, nibble e % 8)
 * sits in slot (t, i), t = 0..7, i = 0..7 (the order in which the vector kernel's table lookups
 * produce it: vector t, lane i). Each output has 8 float32 lane sums acc[i] = +0; per block and
 * lane, for each half h = 0, 1 (slots t = 4h .. 4h + 3):
 *     p = w[e(4h)] * x[e(4h)];  p = fma(w[e(t)], x[e(t)], p) for t = 4h+1 .. 4h+3;  acc[i] = acc[i] + p
 * with padding columns as w = +0, x = +0 (w is masked, not x: 0 * inf never appears). Then
 *     s = ((acc0 + acc4) + (acc2 + acc6)) + ((acc1 + acc5) + (acc3 + acc7)),
 * s + bias[j] once, and the cast. The order does not depend on m, n, the thread count or the ISA:
 * a row's output does not depend on the batch it comes in.
 *
 * AVX2 kernel: the 16 possible weights of a group (one per nibble value) are computed with the
 * reference's float32 operations (add, multiply, round to x's dtype) into a table held as byte
 * planes in registers (4 planes for float32 / float16 x: the bytes of the widened float32 weight;
 * 2 for bfloat16 x: the bytes of its bfloat16 bits); each 128-bit half of a plane register serves
 * 4 words, so a block uses at most 2 groups' tables, rebuilt only when its pair of groups changes.
 * A block's 32 bytes of words are split into low and high nibbles and looked up with vpshufb, and
 * the looked-up bytes are interleaved into float32 weight vectors: 2 shuffle instructions per 8
 * weights for bfloat16, 3 for float32, in place of a convert, two float32 operations and (bf16,
 * f16) a rounding per weight. Group sizes that are not a multiple of 32 columns and the last,
 * partial block decode nibbles directly into the same slots (shift, convert, fma(nibble * 2^28,
 * 2^-28, offset) == the reference's add, then multiply and round). The activations are widened to
 * float32 once per call into a scratch buffer already in slot order, so every x load is one
 * aligned vector. */
#include <math.h>
#include <stdlib.h>

#include "npq.h"

#define GV_BLOCK 64               /* columns per block: 8 words */
#define GV_MAXM 8                 /* activation rows per pass over a weight row */
#define GV_STACK_FLOATS 4096      /* activation scratch on the stack up to this size (16 KiB) */
/* Packed-weight bytes per thread, at least (2 threads from 128 KiB), claimed in quarters: the
 * dynamic split, because on a shared machine a descheduled thread then holds up only its current
 * piece (measured here: with the static split, 2 threads ran several times slower than 1 while
 * another process kept the second core busy). */
#define GV_GRAIN_BYTES (64 << 10)

typedef struct {
    const float *xs;               /* activation scratch: (m, nb, 8 t, 8 i) float32 in slot order, or
                                    * (m, nb, 8 p, 8 i) in word order for the float32 path */
    const float *xw;               /* float32 path: (m, nb, 8 i) sums of x over each word's 8 columns */
    int64_t m, k, nb, nfull, tail; /* tail: columns of the last, partial block (0: none) */
    const int32_t *packed;
    int64_t row_stride, groups, gw; /* gw: words per group */
    const float *scale, *offset, *bias;
    void *out;
    int64_t n;
    int dt;
} gv_job;

/* Column (within its block) of slot (t, i). */
static inline int gv_col(int t, int i) { return 32 * (i >> 2) + 8 * (t & 3) + 2 * (i & 3) + (t >> 2); }

/* ---------------------------------------------------------------- shared helpers */

static inline float gv_load_x(const void *x, int dt, int64_t i) {
    if (dt == NPQ_F32) return ((const float *)x)[i];
    if (dt == NPQ_F16) return npq_f16_to_f32(((const uint16_t *)x)[i]);
    return npq_bf16_to_f32(((const uint16_t *)x)[i]);
}

/* x rows -> float32 scratch in slot order, padding columns +0. */
static void gv_prepare_x(const void *x, int dt, int64_t m, int64_t xrs, int64_t k, int64_t nb, float *xs) {
    const size_t esz = dt == NPQ_F32 ? 4 : 2;
    for (int64_t r = 0; r < m; r++) {
        float *dst = xs + r * nb * GV_BLOCK;
        const char *src = (const char *)x + r * xrs * (int64_t)esz;
        if (k % GV_BLOCK) memset(dst + (nb - 1) * GV_BLOCK, 0, GV_BLOCK * sizeof(float));
        for (int64_t kk = 0; kk < k; kk++) {
            const int e = (int)(kk & 63), t = 4 * (e & 1) + ((e >> 3) & 3), i = 4 * (e >> 5) + ((e >> 1) & 3);
            dst[(kk - e) + 8 * t + i] = gv_load_x(src, dt, kk);
        }
    }
}

/* float32 x, word order: xs[r][b][p][i] = x[r][64 b + 8 i + p] (padding +0), and
 * xw[r][b][i] = the sum of x over word 8 b + i's columns p = 0..7 in that order (left to right). Returns
 * 0 when some |x| is above GV_FACTOR_BOUND or not finite: the caller then takes the table path. */
#define GV_FACTOR_BOUND 0x1p100f
static int gv_prepare_x_words(const float *x, int64_t m, int64_t xrs, int64_t k, int64_t nb, float *xs, float *xw) {
    for (int64_t r = 0; r < m; r++) {
        const float *src = x + r * xrs;
        float *dst = xs + r * nb * GV_BLOCK, *sums = xw + r * nb * 8;
        if (k % GV_BLOCK) memset(dst + (nb - 1) * GV_BLOCK, 0, GV_BLOCK * sizeof(float));
        for (int64_t kk = 0; kk < k; kk++) {
            if (!(fabsf(src[kk]) <= GV_FACTOR_BOUND)) return 0;
            const int e = (int)(kk & 63);
            dst[(kk - e) + 8 * (e & 7) + (e >> 3)] = src[kk];
        }
        for (int64_t b = 0; b < nb; b++)
            for (int i = 0; i < 8; i++) {
                float t = dst[b * GV_BLOCK + i];
                for (int p = 1; p < 8; p++) t += dst[b * GV_BLOCK + 8 * p + i];
                sums[b * 8 + i] = t;
            }
    }
    return 1;
}

/* Scale and offset - 8 of each of block b's 8 words (lanes past the row's words: 0, 0). */
static inline void gv_word_params(const gv_job *J, const float *s, const float *o, int64_t b, float sw[8], float ow[8]) {
    const int64_t used = (J->k + 7) / 8;
    for (int i = 0; i < 8; i++) {
        const int64_t w = 8 * b + i, g = w / J->gw;
        sw[i] = w < used ? s[g] : 0.0f;
        ow[i] = w < used ? (o ? o[g] : 0.0f) - 8.0f : 0.0f;
    }
}

/* The weight as the reference's tile holds it, widened back to float32. */
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

/* ---------------------------------------------------------------- scalar (the order's definition) */

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
                for (int i = 0; i < 8; i++) {
                    for (int h = 0; h < 2; h++) {
                        float p[GV_MAXM];
                        for (int t = 4 * h; t < 4 * h + 4; t++) {
                            const int64_t kk = b * GV_BLOCK + gv_col(t, i);
                            float w = 0.0f;
                            if (kk < J->k) {
                                const int32_t nib = (int32_t)(((uint32_t)wr[kk >> 3] >> (4 * (kk & 7))) & 0xFu);
                                const int64_t g = kk / gsize;
                                w = gv_round(((float)((nib ^ 8) - 8) + (o ? o[g] : 0.0f)) * s[g], J->dt);
                            }
                            for (int64_t r = 0; r < mc; r++) {
                                const float xv = J->xs[((r0 + r) * J->nb + b) * GV_BLOCK + 8 * t + i];
                                p[r] = t == 4 * h ? w * xv : __builtin_fmaf(w, xv, p[r]);
                            }
                        }
                        for (int64_t r = 0; r < mc; r++) acc[r][i] += p[r];
                    }
                }
            }
            for (int64_t r = 0; r < mc; r++) gv_store(J, r0 + r, j, acc[r]);
        }
    }
}

/* float32 x (the file header's factored order): per word, A = sum_p u'_p x_p with u' = nibble ^ 8 in
 * [0, 15] (the signed value + 8), then acc += scale * fma(offset - 8, X, A), X the word's x sum. */
static void gv_rows_f32_scalar(const gv_job *J, int64_t j0, int64_t j1) {
    const int64_t used = (J->k + 7) / 8;
    for (int64_t j = j0; j < j1; j++) {
        const int32_t *wr = J->packed + j * J->row_stride;
        const float *s = J->scale + j * J->groups, *o = J->offset ? J->offset + j * J->groups : NULL;
        for (int64_t r0 = 0; r0 < J->m; r0 += GV_MAXM) {
            const int64_t mc = J->m - r0 < GV_MAXM ? J->m - r0 : GV_MAXM;
            float acc[GV_MAXM][8];
            for (int64_t r = 0; r < mc; r++)
                for (int i = 0; i < 8; i++) acc[r][i] = 0.0f;
            for (int64_t b = 0; b < J->nb; b++) {
                float sw[8], ow[8];
                gv_word_params(J, s, o, b, sw, ow);
                for (int i = 0; i < 8; i++) {
                    const uint32_t v = 8 * b + i < used ? (uint32_t)wr[8 * b + i] ^ 0x88888888u : 0x88888888u;
                    for (int64_t r = 0; r < mc; r++) {
                        const float *xb = J->xs + ((r0 + r) * J->nb + b) * GV_BLOCK;
                        float a = (float)(v & 0xFu) * xb[i];
                        for (int p = 1; p < 8; p++) a = __builtin_fmaf((float)((v >> (4 * p)) & 0xFu), xb[8 * p + i], a);
                        const float t = __builtin_fmaf(ow[i], J->xw[((r0 + r) * J->nb + b) * 8 + i], a);
                        acc[r][i] = __builtin_fmaf(sw[i], t, acc[r][i]);
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

/* Widened weights of one dtype, as float32 vectors: NaN stays NaN (its payload does not matter: a
 * NaN product makes the output NaN, cast with npq.h's rules). */
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

/* Tables for one block: lane half 0 (words 0-3) from group A, half 1 (words 4-7) from group B.
 * Entry u (byte u of each plane, u = unsigned nibble) is the weight of nibble value (u ^ 8) - 8:
 * planes 0..3 the bytes of its float32 value (f32, f16), or TL / TH = planes 2, 3 (bf16: the
 * bfloat16 bits, low and high byte). */
NPQ_TARGET_AVX2 GV_INLINE void gv_tables_avx2(float sA, float oA, float sB, float oB, const int dt, __m256i T[4]) {
    const __m256 sv = _mm256_set_m128(_mm_set1_ps(sB), _mm_set1_ps(sA));
    const __m256 ov = _mm256_set_m128(_mm_set1_ps(oB), _mm_set1_ps(oA));
    __m256i P[4];
    for (int q = 0; q < 4; q++) {
        /* values of u = 4q .. 4q + 3 in both halves */
        const float c0 = (float)(((4 * q) ^ 8) - 8);
        const __m256 c = _mm256_add_ps(_mm256_set1_ps(c0), _mm256_setr_ps(0, 1, 2, 3, 0, 1, 2, 3));
        const __m256 w = gv_round_avx2(_mm256_mul_ps(_mm256_add_ps(c, ov), sv), dt);
        /* bytes of the 4 values of each half by byte position: dword p = byte p of values 0..3 */
        const __m256i bytes = dt == NPQ_BF16 ? _mm256_setr_epi8(2, 6, 10, 14, 3, 7, 11, 15, -1, -1, -1, -1, -1, -1, -1,
                                                                -1, 2, 6, 10, 14, 3, 7, 11, 15, -1, -1, -1, -1, -1, -1,
                                                                -1, -1)
                                             : _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0,
                                                                4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        P[q] = _mm256_shuffle_epi8(_mm256_castps_si256(w), bytes);
    }
    const __m256i x0 = _mm256_unpacklo_epi32(P[0], P[1]), y0 = _mm256_unpacklo_epi32(P[2], P[3]);
    T[0] = _mm256_unpacklo_epi64(x0, y0); /* bf16: low bytes (TL) */
    T[1] = _mm256_unpackhi_epi64(x0, y0); /* bf16: high bytes (TH) */
    if (dt != NPQ_BF16) {
        const __m256i x1 = _mm256_unpackhi_epi32(P[0], P[1]), y1 = _mm256_unpackhi_epi32(P[2], P[3]);
        T[2] = _mm256_unpacklo_epi64(x1, y1);
        T[3] = _mm256_unpackhi_epi64(x1, y1);
    }
}

/* Weights of slots t = 4h .. 4h + 3 (W[0..3]) from the nibble indices of half h (idx: byte p of lane
 * half L = nibble h of byte p of words 4L .. 4L + 3). */
NPQ_TARGET_AVX2 GV_INLINE void gv_lookup_avx2(__m256i idx, const __m256i T[4], const int dt, __m256 W[4]) {
    if (dt == NPQ_BF16) {
        const __m256i lo = _mm256_shuffle_epi8(T[0], idx), hi = _mm256_shuffle_epi8(T[1], idx);
        const __m256i u0 = _mm256_unpacklo_epi8(lo, hi), u1 = _mm256_unpackhi_epi8(lo, hi), z = _mm256_setzero_si256();
        W[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, u0));
        W[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, u0));
        W[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, u1));
        W[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, u1));
    } else {
        const __m256i b0 = _mm256_shuffle_epi8(T[0], idx), b1 = _mm256_shuffle_epi8(T[1], idx);
        const __m256i b2 = _mm256_shuffle_epi8(T[2], idx), b3 = _mm256_shuffle_epi8(T[3], idx);
        const __m256i l01 = _mm256_unpacklo_epi8(b0, b1), h01 = _mm256_unpackhi_epi8(b0, b1);
        const __m256i l23 = _mm256_unpacklo_epi8(b2, b3), h23 = _mm256_unpackhi_epi8(b2, b3);
        W[0] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(l01, l23));
        W[1] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(l01, l23));
        W[2] = _mm256_castsi256_ps(_mm256_unpacklo_epi16(h01, h23));
        W[3] = _mm256_castsi256_ps(_mm256_unpackhi_epi16(h01, h23));
    }
}

/* Direct decode of slots t = 4h .. 4h + 3 (the fallback): slot (t, i) is nibble 2 (i & 3) + h of
 * word 4 (i >> 2) + (t & 3). sw / ow: scale and offset of each of the block's 8 words, one lane per
 * word (lane half L holds words 4L .. 4L + 3, so an in-lane broadcast picks words c and 4 + c). */
NPQ_TARGET_AVX2 GV_INLINE void gv_direct_avx2(__m256i v, const int h, __m256 sw, __m256 ow, const int dt, __m256 W[4]) {
    const __m256i shift = _mm256_sub_epi32(_mm256_setr_epi32(28, 20, 12, 4, 28, 20, 12, 4), _mm256_set1_epi32(4 * h));
    const __m256i top = _mm256_set1_epi32((int)0xF0000000u);
    const __m256 unit = _mm256_set1_ps(0x1p-28f);
#define GV_DIRECT(c)                                                                                                 \
    do {                                                                                                             \
        const __m256i word = _mm256_shuffle_epi32(v, (c) * 0x55); /* word c (half 0), 4 + c (half 1) */             \
        const __m256 nib = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_sllv_epi32(word, shift), top)); /* * 2^28 */ \
        const __m256 sv = _mm256_permute_ps(sw, (c) * 0x55), ov = _mm256_permute_ps(ow, (c) * 0x55);               \
        W[c] = gv_round_avx2(_mm256_mul_ps(_mm256_fmadd_ps(nib, unit, ov), sv), dt); /* fl(nib + off) * s */        \
    } while (0)
    GV_DIRECT(0);
    GV_DIRECT(1);
    GV_DIRECT(2);
    GV_DIRECT(3);
#undef GV_DIRECT
}

/* Lanes i of s for the 8 words from a word with group g and `left` words left in it; words past
 * `last` repeat word `last` (tail block: they do not exist). */
static inline void gv_fill_words(const float *s, int64_t g, int64_t left, int64_t gw, int last, float *dst) {
    for (int i = 0; i < 8; i++) {
        dst[i] = s ? s[g] : 0.0f;
        if (i < last && --left == 0) {
            g++;
            left = gw;
        }
    }
}

/* One weight row j times activation rows r0 .. r0 + M - 1 (M a constant 1..4, or 0: J->m - r0 up
 * to GV_MAXM at run time), x's dtype dt a constant. */
NPQ_TARGET_AVX2 GV_INLINE void gv_row_avx2(const gv_job *J, int64_t j, int64_t r0, const int M, const int dt) {
    const int mc = M ? M : (int)(J->m - r0 < GV_MAXM ? J->m - r0 : GV_MAXM);
    const int32_t *wr = J->packed + j * J->row_stride;
    const float *sr = J->scale + j * J->groups, *orow = J->offset ? J->offset + j * J->groups : NULL;
    const int64_t xstride = J->nb * GV_BLOCK, gw = J->gw;
    const float *xb = J->xs + r0 * xstride;
    __m256 acc[GV_MAXM];
    for (int r = 0; r < GV_MAXM; r++) acc[r] = _mm256_setzero_ps();

/* acc[r] += ((w0 x0 fma w1 x1) fma w2 x2) fma w3 x3 over the slots of half h */
#define GV_HALF(h)                                                                                  \
    do {                                                                                            \
        for (int r = 0; r < mc; r++) {                                                              \
            const float *xr = xb + r * xstride + 32 * (h);                                          \
            __m256 p = _mm256_mul_ps(W[0], _mm256_load_ps(xr));                                     \
            p = _mm256_fmadd_ps(W[1], _mm256_load_ps(xr + 8), p);                                   \
            p = _mm256_fmadd_ps(W[2], _mm256_load_ps(xr + 16), p);                                  \
            p = _mm256_fmadd_ps(W[3], _mm256_load_ps(xr + 24), p);                                  \
            acc[r] = _mm256_add_ps(acc[r], p);                                                      \
        }                                                                                           \
    } while (0)

    int64_t b = 0;
    if (gw % 4 == 0) {
        /* Tables: groups are whole quarters (4 words) of blocks. gq: group of the next quarter,
         * lq: quarters left in it. The tables are rebuilt when a block's pair of groups changes. */
        const int64_t gw4 = gw / 4;
        int64_t gq = 0, lq = gw4, ta = -1, tb = -1;
        __m256i T[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                        _mm256_setzero_si256()};
        const __m256i low = _mm256_set1_epi8(0x0F);
        for (; b < J->nfull; b++, xb += GV_BLOCK) {
            const int64_t ga = gq;
            if (--lq == 0) {
                gq++;
                lq = gw4;
            }
            const int64_t gb = gq;
            if (--lq == 0) {
                gq++;
                lq = gw4;
            }
            if (ga != ta || gb != tb) {
                gv_tables_avx2(sr[ga], orow ? orow[ga] : 0.0f, sr[gb], orow ? orow[gb] : 0.0f, dt, T);
                ta = ga;
                tb = gb;
            }
            const __m256i v = _mm256_loadu_si256((const __m256i *)(wr + 8 * b));
            __m256 W[4];
            gv_lookup_avx2(_mm256_and_si256(v, low), T, dt, W);
            GV_HALF(0);
            gv_lookup_avx2(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), T, dt, W);
            GV_HALF(1);
        }
    } else {
        /* Direct decode; g: group of the block's first word, left: words left in it. */
        int64_t g = 0, left = gw;
        for (; b < J->nfull; b++, xb += GV_BLOCK) {
            float sw[8], ow[8];
            gv_fill_words(sr, g, left, gw, 8, sw);
            gv_fill_words(orow, g, left, gw, 8, ow);
            left -= 8;
            while (left <= 0) {
                g++;
                left += gw;
            }
            const __m256i v = _mm256_loadu_si256((const __m256i *)(wr + 8 * b));
            const __m256 swv = _mm256_loadu_ps(sw), owv = _mm256_loadu_ps(ow);
            __m256 W[4];
            gv_direct_avx2(v, 0, swv, owv, dt, W);
            GV_HALF(0);
            gv_direct_avx2(v, 1, swv, owv, dt, W);
            GV_HALF(1);
        }
    }
    if (J->tail) {
        /* Last block: only its nw used words are loaded (masked load), and slots past column
         * `tail` get w = +0. */
        const int nw = (int)((J->tail + 7) >> 3);
        const int64_t w0 = 8 * J->nfull;
        float sw[8], ow[8];
        gv_fill_words(sr, w0 / gw, gw - w0 % gw, gw, nw - 1, sw);
        gv_fill_words(orow, w0 / gw, gw - w0 % gw, gw, nw - 1, ow);
        const __m256i v =
            _mm256_maskload_epi32(wr + w0, _mm256_cmpgt_epi32(_mm256_set1_epi32(nw), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
        const __m256i tail = _mm256_set1_epi32((int)J->tail), col0 = _mm256_setr_epi32(0, 2, 4, 6, 32, 34, 36, 38);
        const __m256 swv = _mm256_loadu_ps(sw), owv = _mm256_loadu_ps(ow);
        for (int h = 0; h < 2; h++) {
            __m256 W[4];
            if (h == 0)
                gv_direct_avx2(v, 0, swv, owv, dt, W);
            else
                gv_direct_avx2(v, 1, swv, owv, dt, W);
            for (int c = 0; c < 4; c++) /* slot (4h + c, i) holds column col0[i] + 8c + h */
                W[c] = _mm256_and_ps(W[c], _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                                               tail, _mm256_add_epi32(col0, _mm256_set1_epi32(8 * c + h)))));
            if (h == 0)
                GV_HALF(0);
            else
                GV_HALF(1);
        }
    }
#undef GV_HALF
    for (int r = 0; r < mc; r++) {
        float a[8];
        _mm256_storeu_ps(a, acc[r]);
        gv_store(J, r0 + r, j, a);
    }
}

#define GV_INST(M)                                                                                  \
    NPQ_TARGET_AVX2 static void gv_row_m##M##_avx2(const gv_job *J, int64_t j, int64_t r0) {       \
        if (J->dt == NPQ_F32)                                                                       \
            gv_row_avx2(J, j, r0, M, NPQ_F32);                                                      \
        else if (J->dt == NPQ_F16)                                                                  \
            gv_row_avx2(J, j, r0, M, NPQ_F16);                                                      \
        else                                                                                        \
            gv_row_avx2(J, j, r0, M, NPQ_BF16);                                                     \
    }
GV_INST(0)
GV_INST(1)
GV_INST(2)
GV_INST(3)
GV_INST(4)
#undef GV_INST

/* float32 x, the factored order: lane i holds word 8 b + i; nibble p of every lane is one shift
 * and one mask away, converted exactly (u' <= 15) and multiplied into the lane's word sum. No
 * table, no shuffle: ~4 vector operations per 8 weights whatever the group size. */
NPQ_TARGET_AVX2 GV_INLINE void gv_row_f32_avx2(const gv_job *J, int64_t j, int64_t r0, const int M) {
    const int mc = M ? M : (int)(J->m - r0 < GV_MAXM ? J->m - r0 : GV_MAXM);
    const int32_t *wr = J->packed + j * J->row_stride;
    const float *sr = J->scale + j * J->groups, *orow = J->offset ? J->offset + j * J->groups : NULL;
    const int64_t xstride = J->nb * GV_BLOCK, gw = J->gw, used = (J->k + 7) / 8;
    const __m256i flip = _mm256_set1_epi32((int)0x88888888u), low = _mm256_set1_epi32(0xF);
    __m256 acc[GV_MAXM];
    for (int r = 0; r < GV_MAXM; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < J->nb; b++) {
        __m256i v;
        __m256 sv, ov;
        if (8 * b + 8 <= used && gw % 8 == 0) { /* one group for the 8 words */
            const int64_t g = 8 * b / gw;
            v = _mm256_loadu_si256((const __m256i *)(wr + 8 * b));
            sv = _mm256_set1_ps(sr[g]);
            ov = _mm256_set1_ps((orow ? orow[g] : 0.0f) - 8.0f);
        } else if (8 * b + 8 <= used && gw == 4) { /* two: words 0-3 and 4-7 */
            const int64_t g = 2 * b;
            v = _mm256_loadu_si256((const __m256i *)(wr + 8 * b));
            sv = _mm256_set_m128(_mm_set1_ps(sr[g + 1]), _mm_set1_ps(sr[g]));
            ov = _mm256_set_m128(_mm_set1_ps((orow ? orow[g + 1] : 0.0f) - 8.0f),
                                 _mm_set1_ps((orow ? orow[g] : 0.0f) - 8.0f));
        } else { /* any other group size, and the last block (only its used words are loaded) */
            float sw[8], ow[8];
            gv_word_params(J, sr, orow, b, sw, ow);
            const int64_t nw = used - 8 * b < 8 ? used - 8 * b : 8;
            v = _mm256_maskload_epi32(wr + 8 * b, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nw),
                                                                     _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
            sv = _mm256_loadu_ps(sw);
            ov = _mm256_loadu_ps(ow);
        }
        v = _mm256_xor_si256(v, flip);
        __m256 a[GV_MAXM] = {_mm256_setzero_ps()}; /* each a[r] is first written by the p = 0 multiply */
        const float *xb = J->xs + r0 * xstride + b * GV_BLOCK;
        for (int p = 0; p < 8; p++) {
            __m256i u = p ? _mm256_srli_epi32(v, 4 * p) : v;
            if (p < 7) u = _mm256_and_si256(u, low);
            const __m256 f = _mm256_cvtepi32_ps(u);
            for (int r = 0; r < mc; r++) {
                const __m256 xv = _mm256_load_ps(xb + r * xstride + 8 * p);
                a[r] = p ? _mm256_fmadd_ps(f, xv, a[r]) : _mm256_mul_ps(f, xv);
            }
        }
        for (int r = 0; r < mc; r++) {
            const __m256 xw = _mm256_loadu_ps(J->xw + ((r0 + r) * J->nb + b) * 8);
            acc[r] = _mm256_fmadd_ps(sv, _mm256_fmadd_ps(ov, xw, a[r]), acc[r]);
        }
    }
    for (int r = 0; r < mc; r++) {
        float t[8];
        _mm256_storeu_ps(t, acc[r]);
        gv_store(J, r0 + r, j, t);
    }
}

#define GV_F32_INST(M)                                                                              \
    NPQ_TARGET_AVX2 static void gv_row_f32_m##M##_avx2(const gv_job *J, int64_t j, int64_t r0) {   \
        gv_row_f32_avx2(J, j, r0, M);                                                               \
    }
GV_F32_INST(0)
GV_F32_INST(1)
GV_F32_INST(2)
GV_F32_INST(3)
GV_F32_INST(4)
#undef GV_F32_INST

typedef void (*gv_kernel)(const gv_job *J, int64_t j, int64_t r0);
static const gv_kernel gv_kernels_avx2[GV_MAXM + 1] = {NULL,           gv_row_m1_avx2, gv_row_m2_avx2,
                                                       gv_row_m3_avx2, gv_row_m4_avx2, gv_row_m0_avx2,
                                                       gv_row_m0_avx2, gv_row_m0_avx2, gv_row_m0_avx2};

static void gv_rows_avx2(const gv_job *J, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; j++)
        for (int64_t r0 = 0; r0 < J->m; r0 += GV_MAXM)
            gv_kernels_avx2[J->m - r0 < GV_MAXM ? J->m - r0 : GV_MAXM](J, j, r0);
}

static const gv_kernel gv_f32_kernels_avx2[GV_MAXM + 1] = {
    NULL, gv_row_f32_m1_avx2, gv_row_f32_m2_avx2, gv_row_f32_m3_avx2, gv_row_f32_m4_avx2,
    gv_row_f32_m0_avx2, gv_row_f32_m0_avx2, gv_row_f32_m0_avx2, gv_row_f32_m0_avx2};

static void gv_rows_f32_avx2(const gv_job *J, int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; j++)
        for (int64_t r0 = 0; r0 < J->m; r0 += GV_MAXM)
            gv_f32_kernels_avx2[J->m - r0 < GV_MAXM ? J->m - r0 : GV_MAXM](J, j, r0);
}
#endif /* NPQ_X86 */

/* ---------------------------------------------------------------- driver */

typedef void (*gv_rows_fn)(const gv_job *J, int64_t j0, int64_t j1); /* weight rows j0 .. j1 - 1 */

/* A variant's entry points: the table path (float16 / bfloat16 x, and float32 x beyond
 * GV_FACTOR_BOUND) and the factored float32 path. */
typedef struct {
    gv_rows_fn table, f32;
} gv_impl;

typedef struct {
    const gv_job *job;
    gv_rows_fn rows;
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
    int64_t outputs, last, scratch, t;
    if (__builtin_mul_overflow(m, n, &outputs)) return NPQ_ERR_ARG;
    if (k > INT64_MAX - GV_BLOCK || __builtin_mul_overflow(n, groups, &t)) return NPQ_ERR_ARG; /* scale indices */
    if (m > 0 && (__builtin_mul_overflow(m - 1, x_row_stride, &t) || __builtin_add_overflow(t, k, &t)))
        return NPQ_ERR_ARG; /* x offsets */
    const int64_t nb = (k + GV_BLOCK - 1) / GV_BLOCK;
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

    /* scratch: the activations (scratch floats), then their word sums (scratch / 8) */
    _Alignas(32) float stack_xs[GV_STACK_FLOATS + GV_STACK_FLOATS / 8];
    float *xs = stack_xs;
    if (scratch > GV_STACK_FLOATS) {
        xs = (float *)aligned_alloc(64, (size_t)(scratch + scratch / 8) * sizeof(float)); /* 256-byte multiple */
        if (!xs) return NPQ_ERR_NOMEM;
    }
    float *xw = xs + scratch;
    const gv_impl *impl = (const gv_impl *)npq_pick(&npq_kernel_gemv_int4)->impl;
    const int factored = x_dtype == NPQ_F32 && gv_prepare_x_words((const float *)x, m, x_row_stride, k, nb, xs, xw);
    if (!factored) gv_prepare_x(x, x_dtype, m, x_row_stride, k, nb, xs);

    gv_job J;
    memset(&J, 0, sizeof J);
    J.xs = xs;
    J.xw = xw;
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

    gv_ctx c = {&J, factored ? impl->f32 : impl->table};
    const int64_t row_bytes = 4 * ((k + 7) / 8);
    const int64_t grain = (GV_GRAIN_BYTES + row_bytes - 1) / row_bytes;
    npq_parallel_for_dynamic(n, grain, (grain + 3) / 4, nthreads, gv_range, &c);
    if (xs != stack_xs) free(xs);
    return NPQ_OK;
}

/* ---- the variants, best first */
static const gv_impl gv_scalar_impl = {gv_rows_scalar, gv_rows_f32_scalar};
#if NPQ_X86
static const gv_impl gv_avx2_impl = {gv_rows_avx2, gv_rows_f32_avx2};
#endif

static const npq_variant gv_variants[] = {
#if NPQ_X86
    {"avx2", NPQ_ISA_AVX2, 0, &gv_avx2_impl},
#endif
    {"scalar", NPQ_ISA_SCALAR, 0, &gv_scalar_impl},
};
const npq_kernel npq_kernel_gemv_int4 = NPQ_KERNEL("gemv_int4", gv_variants);
