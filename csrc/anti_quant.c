/* Anti-quantization: int8 or int32-packed int4 -> float32 / float16 / bfloat16.
 *
 *     out = cast((float32(x) + offset) * scale)
 *
 * The golden is the pure-torch reference (ops/anti_quant/reference.py). Results are
 * bit-identical to it: the same two float32 operations in the same order (no FMA), then
 * one round-half-to-even conversion, NaN included (npq.h: NaN as torch's own casts).
 *
 * A missing offset is an offset of +0: x is an integer, so float32(x) + 0 == float32(x)
 * exactly, and one code path serves both cases.
 *
 * Layout: x is seen as rows of `inner` units (int8 elements or int32 words) with an
 * element stride inside the row, and up to 8 leading dims of any strides that number the
 * rows. The output is contiguous. Work is split over the flat unit index, so one huge row
 * and many tiny rows both spread over the threads. */
#include "npq.h"

enum { AQ_OUT_F32 = 0, AQ_OUT_F16 = 1, AQ_OUT_BF16 = 2 };
enum { AQ_IN_INT8 = 0, AQ_IN_INT4X8 = 1 };

#define AQ_GATHER 256   /* units gathered per step when a row is not contiguous */
#define AQ_GRAIN 32768  /* output elements per thread, at least */

/* Scalar kernels: one loop per output type (the type test stays out of the loop). */
#define AQ_SCALAR_LOOP(STORE)                                               \
    for (int64_t i = 0; i < total; i++) {                                   \
        float v = ((float)AQ_VALUE(i) + o[ob ? 0 : i]) * s[sb ? 0 : i];     \
        STORE;                                                              \
    }
#define AQ_SCALAR_BODY                                                      \
    if (out_t == AQ_OUT_F32) {                                              \
        float *y = (float *)out;                                            \
        AQ_SCALAR_LOOP(y[i] = v)                                            \
    } else if (out_t == AQ_OUT_F16) {                                       \
        uint16_t *y = (uint16_t *)out;                                      \
        AQ_SCALAR_LOOP(y[i] = npq_f32_to_f16(v))                            \
    } else {                                                                \
        uint16_t *y = (uint16_t *)out;                                      \
        AQ_SCALAR_LOOP(y[i] = npq_f32_to_bf16(v))                           \
    }

/* Chunk kernels: n units of contiguous input -> n (int8) or 8n (int4) contiguous outputs.
 * s / o point at the per-column values for this chunk's first output, or at a single
 * value when the matching *_bcast flag is set. */
typedef void (*aq_chunk_fn)(const void *x, int64_t n, const float *s, int s_bcast, const float *o, int o_bcast,
                            void *out, int out_t);

static void aq_i8_scalar(const void *xv, int64_t n, const float *s, int sb, const float *o, int ob, void *out,
                         int out_t) {
    const int8_t *x = (const int8_t *)xv;
    const int64_t total = n;
#define AQ_VALUE(i) x[i]
    AQ_SCALAR_BODY
#undef AQ_VALUE
}

/* Element i of packed words: nibble i % 8 of word i / 8, sign-extended. */
static inline int32_t aq_nibble(const int32_t *w, int64_t i) {
    int32_t nib = (int32_t)(((uint32_t)w[i >> 3] >> (4 * (i & 7))) & 0xFu);
    return (nib ^ 8) - 8;
}

static void aq_i4_scalar(const void *xv, int64_t n, const float *s, int sb, const float *o, int ob, void *out,
                         int out_t) {
    const int32_t *x = (const int32_t *)xv;
    const int64_t total = n * 8;
#define AQ_VALUE(i) aq_nibble(x, i)
    AQ_SCALAR_BODY
#undef AQ_VALUE
}

#if NPQ_X86
/* ---------------------------------------------------------------- AVX2 + FMA + F16C */

#define AQ_INLINE static inline __attribute__((always_inline))

/* Converts 8 floats and stores them at out[i..i+8). */
NPQ_TARGET_AVX2 AQ_INLINE void aq_store8_avx2(void *out, int64_t i, __m256 v, int out_t, __m256i nan_v) {
    if (out_t == AQ_OUT_F32) {
        _mm256_storeu_ps((float *)out + i, v);
    } else if (out_t == AQ_OUT_F16) {
        _mm_storeu_si128((__m128i *)((uint16_t *)out + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    } else {
        __m256i t = npq_bf16_bits_avx2(v, nan_v);
        __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
        _mm_storeu_si128((__m128i *)((uint16_t *)out + i), packed);
    }
}

/* Converts 16 floats (two vectors) and stores them at out[i..i+16): one pack for bf16. */
NPQ_TARGET_AVX2 AQ_INLINE void aq_store16_avx2(void *out, int64_t i, __m256 v0, __m256 v1, int out_t, __m256i nan_v) {
    if (out_t == AQ_OUT_BF16) {
        __m256i t = _mm256_packus_epi32(npq_bf16_bits_avx2(v0, nan_v), npq_bf16_bits_avx2(v1, nan_v));
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + i), _mm256_permute4x64_epi64(t, 0xD8));
    } else if (out_t == AQ_OUT_F16) {
        __m128i h0 = _mm256_cvtps_ph(v0, _MM_FROUND_TO_NEAREST_INT), h1 = _mm256_cvtps_ph(v1, _MM_FROUND_TO_NEAREST_INT);
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + i), _mm256_set_m128i(h1, h0));
    } else {
        aq_store8_avx2(out, i, v0, out_t, nan_v);
        aq_store8_avx2(out, i + 8, v1, out_t, nan_v);
    }
}

/* 8 sign-extended int4 nibbles of one word, element j in lane j. */
NPQ_TARGET_AVX2 AQ_INLINE __m256i aq_nibbles8_avx2(const int32_t *w) {
    const __m256i shifts = _mm256_setr_epi32(28, 24, 20, 16, 12, 8, 4, 0);
    return _mm256_srai_epi32(_mm256_sllv_epi32(_mm256_set1_epi32(*w), shifts), 28);
}

NPQ_TARGET_AVX2 AQ_INLINE __m256 aq_apply8_avx2(__m256i xi, const float *s, int sb, __m256 s_b, const float *o, int ob,
                                                __m256 o_b, int64_t i) {
    __m256 xo = _mm256_add_ps(_mm256_cvtepi32_ps(xi), ob ? o_b : _mm256_loadu_ps(o + i));
    return _mm256_mul_ps(xo, sb ? s_b : _mm256_loadu_ps(s + i));
}

/* Body shared by int8 and int4: `kind` picks how 8 outputs' integers are loaded. The
 * tail (fewer than 8 outputs) runs the same vector code on zero-padded copies, so every
 * element goes through identical instructions. */
NPQ_TARGET_AVX2 AQ_INLINE void aq_body_avx2(const void *xv, int64_t n, const float *s, const int sb, const float *o,
                                            const int ob, void *out, const int out_t, const int kind) {
    const __m256 s_b = _mm256_set1_ps(s[0]), o_b = _mm256_set1_ps(o[0]);
    const __m256i nan_v = _mm256_set1_epi32(npq_bf16_nan);
    int64_t total = kind == AQ_IN_INT8 ? n : n * 8, i = 0;
    if (kind == AQ_IN_INT8) {
        const int8_t *x = (const int8_t *)xv;
        for (; i + 16 <= total; i += 16) {
            __m128i b = _mm_loadu_si128((const __m128i *)(x + i));
            __m256 v0 = aq_apply8_avx2(_mm256_cvtepi8_epi32(b), s, sb, s_b, o, ob, o_b, i);
            __m256 v1 = aq_apply8_avx2(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)), s, sb, s_b, o, ob, o_b, i + 8);
            aq_store16_avx2(out, i, v0, v1, out_t, nan_v);
        }
        for (; i + 8 <= total; i += 8) {
            __m128i b = _mm_loadl_epi64((const __m128i *)(x + i));
            aq_store8_avx2(out, i, aq_apply8_avx2(_mm256_cvtepi8_epi32(b), s, sb, s_b, o, ob, o_b, i), out_t, nan_v);
        }
        if (i < total) {
            int64_t r = total - i;
            int8_t xt[8] = {0};
            float st[8] = {0}, ot[8] = {0};
            uint32_t res[8];
            memcpy(xt, x + i, (size_t)r);
            if (!sb) memcpy(st, s + i, (size_t)r * 4);
            if (!ob) memcpy(ot, o + i, (size_t)r * 4);
            __m128i b = _mm_loadl_epi64((const __m128i *)xt);
            __m256 v = aq_apply8_avx2(_mm256_cvtepi8_epi32(b), st, sb, s_b, ot, ob, o_b, 0);
            aq_store8_avx2(res, 0, v, out_t, nan_v);
            memcpy((char *)out + i * (out_t == AQ_OUT_F32 ? 4 : 2), res, (size_t)r * (out_t == AQ_OUT_F32 ? 4 : 2));
        }
    } else {
        const int32_t *x = (const int32_t *)xv;
        int64_t w = 0;
        for (; w + 2 <= n; w += 2, i += 16) {
            __m256 v0 = aq_apply8_avx2(aq_nibbles8_avx2(x + w), s, sb, s_b, o, ob, o_b, i);
            __m256 v1 = aq_apply8_avx2(aq_nibbles8_avx2(x + w + 1), s, sb, s_b, o, ob, o_b, i + 8);
            aq_store16_avx2(out, i, v0, v1, out_t, nan_v);
        }
        if (w < n)
            aq_store8_avx2(out, i, aq_apply8_avx2(aq_nibbles8_avx2(x + w), s, sb, s_b, o, ob, o_b, i), out_t, nan_v);
    }
}

#define AQ_SPECIALIZE(NAME, TARGET, BODY, KIND)                                                                  \
    TARGET static void NAME(const void *x, int64_t n, const float *s, int sb, const float *o, int ob, void *out, \
                            int out_t) {                                                                         \
        switch (out_t * 4 + sb * 2 + ob) {                                                                       \
        case 0: BODY(x, n, s, 0, o, 0, out, 0, KIND); break;                                                     \
        case 1: BODY(x, n, s, 0, o, 1, out, 0, KIND); break;                                                     \
        case 2: BODY(x, n, s, 1, o, 0, out, 0, KIND); break;                                                     \
        case 3: BODY(x, n, s, 1, o, 1, out, 0, KIND); break;                                                     \
        case 4: BODY(x, n, s, 0, o, 0, out, 1, KIND); break;                                                     \
        case 5: BODY(x, n, s, 0, o, 1, out, 1, KIND); break;                                                     \
        case 6: BODY(x, n, s, 1, o, 0, out, 1, KIND); break;                                                     \
        case 7: BODY(x, n, s, 1, o, 1, out, 1, KIND); break;                                                     \
        case 8: BODY(x, n, s, 0, o, 0, out, 2, KIND); break;                                                     \
        case 9: BODY(x, n, s, 0, o, 1, out, 2, KIND); break;                                                     \
        case 10: BODY(x, n, s, 1, o, 0, out, 2, KIND); break;                                                    \
        default: BODY(x, n, s, 1, o, 1, out, 2, KIND); break;                                                    \
        }                                                                                                        \
    }

AQ_SPECIALIZE(aq_i8_avx2, NPQ_TARGET_AVX2, aq_body_avx2, AQ_IN_INT8)
AQ_SPECIALIZE(aq_i4_avx2, NPQ_TARGET_AVX2, aq_body_avx2, AQ_IN_INT4X8)

/* ---------------------------------------------------------------- AVX-512 (F/BW/VL/DQ) */

NPQ_TARGET_AVX512 AQ_INLINE void aq_store16_avx512(void *out, int64_t i, __m512 v, int out_t, __m512i nan_v) {
    if (out_t == AQ_OUT_F32) {
        _mm512_storeu_ps((float *)out + i, v);
    } else if (out_t == AQ_OUT_F16) {
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + i), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    } else {
        __m512i u = _mm512_castps_si512(v);
        __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
        __m512i t = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
        t = _mm512_mask_mov_epi32(nan_v, _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), t);
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + i), _mm512_cvtepi32_epi16(t));
    }
}

NPQ_TARGET_AVX512 AQ_INLINE __m512 aq_apply16_avx512(__m512i xi, const float *s, int sb, __m512 s_b, const float *o,
                                                     int ob, __m512 o_b, int64_t i) {
    __m512 xo = _mm512_add_ps(_mm512_cvtepi32_ps(xi), ob ? o_b : _mm512_loadu_ps(o + i));
    return _mm512_mul_ps(xo, sb ? s_b : _mm512_loadu_ps(s + i));
}

/* Words w[0], w[1] -> 16 sign-extended nibbles (w[0]'s eight, then w[1]'s). */
NPQ_TARGET_AVX512 AQ_INLINE __m512i aq_nibbles16_avx512(__m512i words, __m512i idx) {
    const __m512i shifts = _mm512_setr_epi32(28, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0);
    return _mm512_srai_epi32(_mm512_sllv_epi32(_mm512_permutexvar_epi32(idx, words), shifts), 28);
}

NPQ_TARGET_AVX512 AQ_INLINE void aq_body_avx512(const void *xv, int64_t n, const float *s, const int sb, const float *o,
                                                const int ob, void *out, const int out_t, const int kind) {
    const __m512 s_b = _mm512_set1_ps(s[0]), o_b = _mm512_set1_ps(o[0]);
    const __m512i nan_v = _mm512_set1_epi32(npq_bf16_nan);
    int64_t total = kind == AQ_IN_INT8 ? n : n * 8, i = 0;
    const __m512 zero = _mm512_setzero_ps();
    if (kind == AQ_IN_INT8) {
        const int8_t *x = (const int8_t *)xv;
        for (; i + 32 <= total; i += 32) {
            __m256i b = _mm256_loadu_si256((const __m256i *)(x + i));
            __m512 v0 = aq_apply16_avx512(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b)), s, sb, s_b, o, ob, o_b, i);
            __m512 v1 =
                aq_apply16_avx512(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1)), s, sb, s_b, o, ob, o_b, i + 16);
            aq_store16_avx512(out, i, v0, out_t, nan_v);
            aq_store16_avx512(out, i + 16, v1, out_t, nan_v);
        }
        if (i < total) {
            /* Masked loads and stores: the tail runs the same instructions without
             * touching memory past the row (masked-off lanes do not fault). */
            for (; i < total; i += 16) {
                int64_t r = total - i < 16 ? total - i : 16;
                __mmask16 m = (__mmask16)((1u << r) - 1u);
                __m512i xi = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, x + i));
                __m512 ov = ob ? o_b : _mm512_mask_loadu_ps(zero, m, o + i);
                __m512 sv = sb ? s_b : _mm512_mask_loadu_ps(zero, m, s + i);
                __m512 v = _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(xi), ov), sv);
                uint32_t res[16];
                aq_store16_avx512(res, 0, v, out_t, nan_v);
                size_t esz = out_t == AQ_OUT_F32 ? 4 : 2;
                memcpy((char *)out + i * (int64_t)esz, res, (size_t)r * esz);
            }
        }
    } else {
        const int32_t *x = (const int32_t *)xv;
        const __m512i idx0 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        const __m512i idx1 = _mm512_add_epi32(idx0, _mm512_set1_epi32(2));
        const __m512i idx2 = _mm512_add_epi32(idx0, _mm512_set1_epi32(4));
        const __m512i idx3 = _mm512_add_epi32(idx0, _mm512_set1_epi32(6));
        int64_t w = 0;
        for (; w + 8 <= n; w += 8, i += 64) {
            __m512i words = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(x + w)));
            __m512 v0 = aq_apply16_avx512(aq_nibbles16_avx512(words, idx0), s, sb, s_b, o, ob, o_b, i);
            __m512 v1 = aq_apply16_avx512(aq_nibbles16_avx512(words, idx1), s, sb, s_b, o, ob, o_b, i + 16);
            __m512 v2 = aq_apply16_avx512(aq_nibbles16_avx512(words, idx2), s, sb, s_b, o, ob, o_b, i + 32);
            __m512 v3 = aq_apply16_avx512(aq_nibbles16_avx512(words, idx3), s, sb, s_b, o, ob, o_b, i + 48);
            aq_store16_avx512(out, i, v0, out_t, nan_v);
            aq_store16_avx512(out, i + 16, v1, out_t, nan_v);
            aq_store16_avx512(out, i + 32, v2, out_t, nan_v);
            aq_store16_avx512(out, i + 48, v3, out_t, nan_v);
        }
        /* Remaining 1..7 words, 8 outputs each: whole 8-lane groups, so 256-bit code. */
        const __m256 s_b8 = _mm256_set1_ps(s[0]), o_b8 = _mm256_set1_ps(o[0]);
        const __m256i nan_v8 = _mm256_set1_epi32(npq_bf16_nan);
        for (; w < n; w++, i += 8)
            aq_store8_avx2(out, i, aq_apply8_avx2(aq_nibbles8_avx2(x + w), s, sb, s_b8, o, ob, o_b8, i), out_t, nan_v8);
    }
}

AQ_SPECIALIZE(aq_i8_avx512, NPQ_TARGET_AVX512, aq_body_avx512, AQ_IN_INT8)
AQ_SPECIALIZE(aq_i4_avx512, NPQ_TARGET_AVX512, aq_body_avx512, AQ_IN_INT4X8)
#endif /* NPQ_X86 */

static aq_chunk_fn aq_pick(int kind) {
#if NPQ_X86
    int isa = npq_isa();
    if (isa >= NPQ_ISA_AVX512) return kind == AQ_IN_INT8 ? aq_i8_avx512 : aq_i4_avx512;
    if (isa >= NPQ_ISA_AVX2) return kind == AQ_IN_INT8 ? aq_i8_avx2 : aq_i4_avx2;
#endif
    return kind == AQ_IN_INT8 ? aq_i8_scalar : aq_i4_scalar;
}

/* ---------------------------------------------------------------- layout and driver */

typedef struct {
    const char *x;
    int kind; /* AQ_IN_* */
    npq_layout lay; /* in units */
    const float *scale;
    int64_t scale_row_stride; /* grouped mode: scale/offset values per row; else 0 */
    int64_t group_units;      /* grouped mode: units sharing one scale; 0 = per element / per tensor */
    int s_bcast;
    const float *offset; /* never NULL: a zero when absent */
    int o_bcast;
    char *out;
    int out_t;
    aq_chunk_fn fn;
} aq_job;

static const float aq_zero = 0.0f;

static void aq_range(void *ctx, int64_t begin, int64_t end) {
    const aq_job *j = (const aq_job *)ctx;
    const int64_t inner = j->lay.inner, per_unit = j->kind == AQ_IN_INT8 ? 1 : 8;
    const size_t unit_bytes = j->kind == AQ_IN_INT8 ? 1 : 4, out_bytes = j->out_t == AQ_OUT_F32 ? 4 : 2;
    int64_t row = begin / inner, col = begin % inner;
    int64_t row_off = npq_row_offset(&j->lay, row);
    _Alignas(64) int32_t gather[AQ_GATHER];
    while (begin < end) {
        int64_t take = inner - col < end - begin ? inner - col : end - begin;
        int64_t col_end = col + take;
        while (col < col_end) {
            int64_t n = col_end - col;
            const float *s = j->scale, *o = j->offset;
            if (j->group_units) { /* one scale per group of units: stop at the group edge */
                int64_t g = col / j->group_units, left = (g + 1) * j->group_units - col;
                if (n > left) n = left;
                s += row * j->scale_row_stride + g;
                if (o != &aq_zero) o += row * j->scale_row_stride + g;
            } else {
                if (!j->s_bcast) s += col * per_unit;
                if (!j->o_bcast) o += col * per_unit;
            }
            const char *src = j->x + (row_off + col * j->lay.inner_stride) * (int64_t)unit_bytes;
            if (j->lay.inner_stride != 1) {
                if (n > AQ_GATHER) n = AQ_GATHER;
                for (int64_t k = 0; k < n; k++) {
                    const char *p = src + k * j->lay.inner_stride * (int64_t)unit_bytes;
                    if (j->kind == AQ_IN_INT8)
                        ((int8_t *)gather)[k] = *(const int8_t *)p;
                    else
                        memcpy(&gather[k], p, 4);
                }
                src = (const char *)gather;
            }
            char *dst = j->out + (row * inner + col) * per_unit * (int64_t)out_bytes;
            j->fn(src, n, s, j->s_bcast, o, j->o_bcast, dst, j->out_t);
            col += n;
        }
        begin += take;
        if (begin < end) {
            row++;
            col = 0;
            row_off = npq_row_offset(&j->lay, row);
        }
    }
}

static int aq_run(aq_job *j, int64_t rows, int64_t extent, int nthreads) {
    int rc = npq_layout_check(&j->lay, extent);
    if (rc != NPQ_OK) return rc;
    if (j->out_t < AQ_OUT_F32 || j->out_t > AQ_OUT_BF16) return NPQ_ERR_ARG;
    int64_t units = rows * j->lay.inner;
    if (units == 0) return NPQ_OK;
    if (!j->x || !j->out || !j->scale) return NPQ_ERR_ARG;
    j->fn = aq_pick(j->kind);
    int64_t grain = j->kind == AQ_IN_INT8 ? AQ_GRAIN : AQ_GRAIN / 8;
    npq_advise_hugepages(j->out, (size_t)(units * (j->kind == AQ_IN_INT8 ? 1 : 8)) * (j->out_t == AQ_OUT_F32 ? 4 : 2));
    npq_parallel_for_dynamic(units, grain, 2 * grain, nthreads, aq_range, j);
    return NPQ_OK;
}

/* out[r, c] = cast((float32(unit value) + offset[c]) * scale[c]), rows numbered by the
 * leading dims. x_kind: 0 = int8, 1 = int32 words of 8 int4 (output last dim 8*inner).
 * n_scale: 1 (per tensor) or the output's last dim; offset: NULL or n_scale floats.
 * x_extent: units addressable from x (bounds check). out: contiguous, out_dtype 0 = f32,
 * 1 = f16, 2 = bf16. Returns 0, or a negative code on bad arguments (nothing touched). */
NPQ_API int npq_anti_quant(const void *x, int x_kind, int64_t x_extent, int nd, const int64_t *lead_sizes,
                           const int64_t *lead_strides, int64_t inner, int64_t inner_stride, const float *scale,
                           int64_t n_scale, const float *offset, void *out, int out_dtype, int nthreads) {
    aq_job j;
    memset(&j, 0, sizeof j);
    int64_t rows;
    if (x_kind != AQ_IN_INT8 && x_kind != AQ_IN_INT4X8) return NPQ_ERR_ARG;
    int rc = npq_layout_init(&j.lay, nd, lead_sizes, lead_strides, inner, inner_stride, &rows);
    if (rc != NPQ_OK) return rc;
    int64_t out_last = x_kind == AQ_IN_INT8 ? inner : inner * 8;
    if (n_scale != 1 && n_scale != out_last) return NPQ_ERR_ARG;
    j.x = (const char *)x;
    j.kind = x_kind;
    j.scale = scale;
    j.s_bcast = n_scale == 1;
    j.offset = offset ? offset : &aq_zero;
    j.o_bcast = offset ? n_scale == 1 : 1;
    j.out = (char *)out;
    j.out_t = out_dtype;
    return aq_run(&j, rows, x_extent, nthreads);
}

/* w4a16 helper: packed int4 weight (rows, words) with one scale (and offset) per row and
 * group of group_words words (group_words * 8 elements along the last dim):
 * out[r, c] = cast((nibble + offset[r, c / G]) * scale[r, c / G]), G = 8 * group_words.
 * scale / offset: contiguous (rows, words / group_words) float32; offset may be NULL. */
NPQ_API int npq_dequant_int4_grouped(const int32_t *packed, int64_t extent, int64_t rows, int64_t words,
                                     int64_t row_stride, int64_t word_stride, int64_t group_words, const float *scale,
                                     const float *offset, void *out, int out_dtype, int nthreads) {
    aq_job j;
    memset(&j, 0, sizeof j);
    if (rows < 0 || words < 0 || group_words <= 0 || words % group_words != 0) return NPQ_ERR_ARG;
    int64_t one_size[1] = {rows}, one_stride[1] = {row_stride};
    int rc = npq_layout_init(&j.lay, 1, one_size, one_stride, words, word_stride, &rows);
    if (rc != NPQ_OK) return rc;
    j.x = (const char *)packed;
    j.kind = AQ_IN_INT4X8;
    j.scale = scale;
    j.scale_row_stride = words / group_words;
    j.group_units = group_words;
    j.s_bcast = 1;
    j.offset = offset ? offset : &aq_zero;
    j.o_bcast = 1;
    j.out = (char *)out;
    j.out_t = out_dtype;
    return aq_run(&j, rows, extent, nthreads);
}
