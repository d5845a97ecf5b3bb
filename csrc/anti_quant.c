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


#define AQ_GATHER 256   /* units gathered per step when a row is not contiguous */
#define AQ_GRAIN 32768  /* output elements per thread, at least */

/* Scalar kernels: one loop per output type (the type test stays out of the loop). */
#define AQ_SCALAR_LOOP(STORE)                                               \
    for (int64_t i = 0; i < total; i++) {                                   \
        float v = ((float)AQ_VALUE(i) + o[ob ? 0 : i]) * s[sb ? 0 : i];     \
        STORE;                                                              \
    }
#define AQ_SCALAR_BODY                                                      \
    if (out_t == NPQ_F32) {                                              \
        float *y = (float *)out;                                            \
        AQ_SCALAR_LOOP(y[i] = v)                                            \
    } else if (out_t == NPQ_F16) {                                       \
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
    if (out_t == NPQ_F32) {
        _mm256_storeu_ps((float *)out + i, v);
    } else if (out_t == NPQ_F16) {
        _mm_storeu_si128((__m128i *)((uint16_t *)out + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    } else {
        __m256i t = npq_bf16_bits_avx2(v, nan_v);
        __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
        _mm_storeu_si128((__m128i *)((uint16_t *)out + i), packed);
    }
}

/* Converts 16 floats (two vectors) and stores them at out[i..i+16): one pack for bf16. */
NPQ_TARGET_AVX2 AQ_INLINE void aq_store16_avx2(void *out, int64_t i, __m256 v0, __m256 v1, int out_t, __m256i nan_v) {
    if (out_t == NPQ_BF16) {
        __m256i t = _mm256_packus_epi32(npq_bf16_bits_avx2(v0, nan_v), npq_bf16_bits_avx2(v1, nan_v));
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + i), _mm256_permute4x64_epi64(t, 0xD8));
    } else if (out_t == NPQ_F16) {
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
    int64_t total = kind == NPQ_I8 ? n : n * 8, i = 0;
    if (kind == NPQ_I8) {
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
            memcpy((char *)out + i * (out_t == NPQ_F32 ? 4 : 2), res, (size_t)r * (out_t == NPQ_F32 ? 4 : 2));
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

AQ_SPECIALIZE(aq_i8_avx2, NPQ_TARGET_AVX2, aq_body_avx2, NPQ_I8)
AQ_SPECIALIZE(aq_i4_avx2, NPQ_TARGET_AVX2, aq_body_avx2, NPQ_I32)

/* ---------------------------------------------------------------- AVX-512 (F/BW/VL/DQ) */

NPQ_TARGET_AVX512 AQ_INLINE void aq_store16_avx512(void *out, int64_t i, __m512 v, int out_t, __m512i nan_v) {
    if (out_t == NPQ_F32) {
        _mm512_storeu_ps((float *)out + i, v);
    } else if (out_t == NPQ_F16) {
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
    int64_t total = kind == NPQ_I8 ? n : n * 8, i = 0;
    const __m512 zero = _mm512_setzero_ps();
    if (kind == NPQ_I8) {
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
                size_t esz = out_t == NPQ_F32 ? 4 : 2;
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

AQ_SPECIALIZE(aq_i8_avx512, NPQ_TARGET_AVX512, aq_body_avx512, NPQ_I8)
AQ_SPECIALIZE(aq_i4_avx512, NPQ_TARGET_AVX512, aq_body_avx512, NPQ_I32)
#endif /* NPQ_X86 */

static aq_chunk_fn aq_pick(int kind) {
#if NPQ_X86
    int isa = npq_isa();
    if (isa >= NPQ_ISA_AVX512) return kind == NPQ_I8 ? aq_i8_avx512 : aq_i4_avx512;
    if (isa >= NPQ_ISA_AVX2) return kind == NPQ_I8 ? aq_i8_avx2 : aq_i4_avx2;
#endif
    return kind == NPQ_I8 ? aq_i8_scalar : aq_i4_scalar;
}

/* ---------------------------------------------------------------- layout and driver */

typedef struct {
    const char *x;
    int kind; /* NPQ_I8, or NPQ_I32 (packed int4) */
    npq_layout lay; /* in units */
    const float *scale;
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
    const int64_t inner = j->lay.inner, per_unit = j->kind == NPQ_I8 ? 1 : 8;
    const size_t unit_bytes = j->kind == NPQ_I8 ? 1 : 4, out_bytes = j->out_t == NPQ_F32 ? 4 : 2;
    int64_t row = begin / inner, col = begin % inner;
    int64_t row_off = npq_row_offset(&j->lay, row);
    _Alignas(64) int32_t gather[AQ_GATHER];
    while (begin < end) {
        int64_t take = inner - col < end - begin ? inner - col : end - begin;
        int64_t col_end = col + take;
        while (col < col_end) {
            int64_t n = col_end - col;
            const float *s = j->scale, *o = j->offset;
            if (!j->s_bcast) s += col * per_unit;
            if (!j->o_bcast) o += col * per_unit;
            const char *src = j->x + (row_off + col * j->lay.inner_stride) * (int64_t)unit_bytes;
            if (j->lay.inner_stride != 1) {
                if (n > AQ_GATHER) n = AQ_GATHER;
                for (int64_t k = 0; k < n; k++) {
                    const char *p = src + k * j->lay.inner_stride * (int64_t)unit_bytes;
                    if (j->kind == NPQ_I8)
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
    if (j->out_t < NPQ_F32 || j->out_t > NPQ_BF16) return NPQ_ERR_ARG;
    int64_t units = rows * j->lay.inner;
    if (units == 0) return NPQ_OK;
    if (!j->x || !j->out || !j->scale) return NPQ_ERR_ARG;
    j->fn = aq_pick(j->kind);
    int64_t grain = j->kind == NPQ_I8 ? AQ_GRAIN : AQ_GRAIN / 8;
    npq_advise_hugepages(j->out, (size_t)(units * (j->kind == NPQ_I8 ? 1 : 8)) * (j->out_t == NPQ_F32 ? 4 : 2));
    npq_parallel_for_dynamic(units, grain, 2 * grain, nthreads, aq_range, j);
    return NPQ_OK;
}

/* out[r, c] = cast((float32(unit value) + offset[c]) * scale[c]), rows numbered by the
 * leading dims. x_kind: NPQ_I8, or NPQ_I32 for words of 8 int4 (output last dim 8*inner).
 * n_scale: 1 (per tensor) or the output's last dim; offset: NULL or n_scale floats.
 * x_extent: units addressable from x (bounds check). out: contiguous, out_dtype 0 = f32,
 * 1 = f16, 2 = bf16. Returns 0, or a negative code on bad arguments (nothing touched). */
NPQ_API int npq_anti_quant(const void *x, int x_kind, int64_t x_extent, int nd, const int64_t *lead_sizes,
                           const int64_t *lead_strides, int64_t inner, int64_t inner_stride, const float *scale,
                           int64_t n_scale, const float *offset, void *out, int out_dtype, int nthreads) {
    aq_job j;
    memset(&j, 0, sizeof j);
    int64_t rows;
    if (x_kind != NPQ_I8 && x_kind != NPQ_I32) return NPQ_ERR_ARG;
    int rc = npq_layout_init(&j.lay, nd, lead_sizes, lead_strides, inner, inner_stride, &rows);
    if (rc != NPQ_OK) return rc;
    int64_t out_last = x_kind == NPQ_I8 ? inner : inner * 8;
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

/* ---------------------------------------------------------------- grouped int4 (w4a16) */

/* The w4a16 weight path: packed int4 rows with one scale (and offset) per row and group of
 * `gw` words (8 * gw outputs). Its own row-wise loops rather than aq_range's chunk calls:
 * with small groups (32 outputs) one indirect call per group cost half the throughput. Here
 * each group's scale and offset are broadcast at the group edge inside the SIMD loop.
 *
 * A span kernel converts n contiguous words of one row that start at word w0 of that row
 * (w0 places the group edges); s / o point at the row's scales and offsets (o NULL = +0, as
 * above). Every output goes through the same float32 add then multiply as the reference.
 * `stream` asks for non-temporal stores: an output far larger than the caches is then written
 * without first being read into them (measured: 576 x 49152 float32, ~7 -> ~9 Gelem/s). */
typedef void (*aq_grouped_fn)(const int32_t *x, int64_t n, int64_t w0, int64_t gw, const float *s, const float *o,
                              void *out, int out_t, int stream);

#define AQ_STREAM_MIN ((size_t)32 << 20) /* output bytes from which stores bypass the caches */

static void aq_grouped_scalar(const int32_t *x, int64_t n, int64_t w0, int64_t gw, const float *s, const float *o,
                              void *out, int out_t, int stream) {
    (void)stream;
    int64_t g = w0 / gw, left = gw - w0 % gw;
    for (int64_t w = 0; w < n; w++) {
        const float sg = s[g], og = o ? o[g] : 0.0f;
        for (int k = 0; k < 8; k++) {
            float v = ((float)aq_nibble(x + w, k) + og) * sg;
            int64_t i = 8 * w + k;
            if (out_t == NPQ_F32)
                ((float *)out)[i] = v;
            else if (out_t == NPQ_F16)
                ((uint16_t *)out)[i] = npq_f32_to_f16(v);
            else
                ((uint16_t *)out)[i] = npq_f32_to_bf16(v);
        }
        if (--left == 0) {
            g++;
            left = gw;
        }
    }
}

#if NPQ_X86
NPQ_TARGET_AVX2 AQ_INLINE __m256 aq_grouped8_avx2(const int32_t *w, __m256 s, __m256 o) {
    return _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(aq_nibbles8_avx2(w)), o), s);
}

/* 32 bytes at p: non-temporal when streaming and p is 32-byte aligned. */
NPQ_TARGET_AVX2 AQ_INLINE void aq_put32_avx2(void *p, __m256i v, int stream) {
    if (stream && ((uintptr_t)p & 31) == 0)
        _mm256_stream_si256((__m256i *)p, v);
    else
        _mm256_storeu_si256((__m256i *)p, v);
}

/* Outputs i..i+16 from two vectors; streaming variant of aq_store16_avx2 (same conversions). */
NPQ_TARGET_AVX2 AQ_INLINE void aq_gstore16_avx2(void *out, int64_t i, __m256 v0, __m256 v1, int out_t, __m256i nan_v,
                                                int stream) {
    if (!stream) {
        aq_store16_avx2(out, i, v0, v1, out_t, nan_v);
    } else if (out_t == NPQ_F32) {
        aq_put32_avx2((float *)out + i, _mm256_castps_si256(v0), 1);
        aq_put32_avx2((float *)out + i + 8, _mm256_castps_si256(v1), 1);
    } else {
        uint16_t tmp[16];
        aq_store16_avx2(tmp, 0, v0, v1, out_t, nan_v);
        aq_put32_avx2((uint16_t *)out + i, _mm256_loadu_si256((const __m256i *)tmp), 1);
    }
}

/* out_t and stream are compile-time constants in each instantiation below. */
NPQ_TARGET_AVX2 AQ_INLINE void aq_grouped_body_avx2(const int32_t *x, int64_t n, int64_t w0, int64_t gw,
                                                    const float *s, const float *o, void *out, const int out_t,
                                                    const int stream) {
    const __m256i nan_v = _mm256_set1_epi32(npq_bf16_nan);
    int64_t w = 0;
    if ((gw & (gw - 1)) == 0) {
        /* Power-of-two groups: word w's group is a shift away, so one flat loop with the
         * scale and offset broadcast per word (no per-group loop overhead for tiny groups). */
        const int sh = __builtin_ctzll((unsigned long long)gw);
        for (; w + 2 <= n; w += 2) {
            const int64_t g0 = (w0 + w) >> sh, g1 = (w0 + w + 1) >> sh;
            __m256 v0 = aq_grouped8_avx2(x + w, _mm256_set1_ps(s[g0]), _mm256_set1_ps(o ? o[g0] : 0.0f));
            __m256 v1 = aq_grouped8_avx2(x + w + 1, _mm256_set1_ps(s[g1]), _mm256_set1_ps(o ? o[g1] : 0.0f));
            aq_gstore16_avx2(out, 8 * w, v0, v1, out_t, nan_v, stream);
        }
        if (w < n) {
            const int64_t g0 = (w0 + w) >> sh;
            aq_store8_avx2(out, 8 * w, aq_grouped8_avx2(x + w, _mm256_set1_ps(s[g0]), _mm256_set1_ps(o ? o[g0] : 0.0f)),
                           out_t, nan_v);
        }
        if (stream) _mm_sfence();
        return;
    }
    int64_t g = w0 / gw, left = gw - w0 % gw;
    while (w < n) {
        const int64_t e = w + (left < n - w ? left : n - w);
        const __m256 sv = _mm256_set1_ps(s[g]), ov = _mm256_set1_ps(o ? o[g] : 0.0f);
        for (; w + 2 <= e; w += 2)
            aq_gstore16_avx2(out, 8 * w, aq_grouped8_avx2(x + w, sv, ov), aq_grouped8_avx2(x + w + 1, sv, ov), out_t,
                             nan_v, stream);
        if (w < e) {
            aq_store8_avx2(out, 8 * w, aq_grouped8_avx2(x + w, sv, ov), out_t, nan_v);
            w++;
        }
        g++;
        left = gw;
    }
    if (stream) _mm_sfence(); /* non-temporal stores are weakly ordered: drain before the job ends */
}

NPQ_TARGET_AVX2 static void aq_grouped_avx2(const int32_t *x, int64_t n, int64_t w0, int64_t gw, const float *s,
                                            const float *o, void *out, int out_t, int stream) {
    switch (out_t * 2 + (stream != 0)) {
    case 0: aq_grouped_body_avx2(x, n, w0, gw, s, o, out, NPQ_F32, 0); break;
    case 1: aq_grouped_body_avx2(x, n, w0, gw, s, o, out, NPQ_F32, 1); break;
    case 2: aq_grouped_body_avx2(x, n, w0, gw, s, o, out, NPQ_F16, 0); break;
    case 3: aq_grouped_body_avx2(x, n, w0, gw, s, o, out, NPQ_F16, 1); break;
    case 4: aq_grouped_body_avx2(x, n, w0, gw, s, o, out, NPQ_BF16, 0); break;
    default: aq_grouped_body_avx2(x, n, w0, gw, s, o, out, NPQ_BF16, 1); break;
    }
}

NPQ_TARGET_AVX512 AQ_INLINE __m512 aq_grouped16_avx512(__m512i words, __m512i idx, __m512 s, __m512 o) {
    return _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(aq_nibbles16_avx512(words, idx)), o), s);
}

/* Outputs i..i+16; streaming variant of aq_store16_avx512 (same conversions). */
NPQ_TARGET_AVX512 AQ_INLINE void aq_gstore16_avx512(void *out, int64_t i, __m512 v, int out_t, __m512i nan_v,
                                                    int stream) {
    if (!stream) {
        aq_store16_avx512(out, i, v, out_t, nan_v);
    } else if (out_t == NPQ_F32) {
        float *p = (float *)out + i;
        if (((uintptr_t)p & 63) == 0)
            _mm512_stream_ps(p, v);
        else
            _mm512_storeu_ps(p, v);
    } else {
        uint16_t tmp[16];
        aq_store16_avx512(tmp, 0, v, out_t, nan_v);
        aq_put32_avx2((uint16_t *)out + i, _mm256_loadu_si256((const __m256i *)tmp), 1);
    }
}

NPQ_TARGET_AVX512 AQ_INLINE void aq_grouped_body_avx512(const int32_t *x, int64_t n, int64_t w0, int64_t gw,
                                                        const float *s, const float *o, void *out, const int out_t,
                                                        const int stream) {
    const __m512i nan_v = _mm512_set1_epi32(npq_bf16_nan);
    const __m256i nan_v8 = _mm256_set1_epi32(npq_bf16_nan);
    /* idx0 spreads words 0, 1 over lanes 0-7, 8-15; idx1..3 do the same for words 2..7. */
    const __m512i idx0 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i idx1 = _mm512_add_epi32(idx0, _mm512_set1_epi32(2));
    const __m512i idx2 = _mm512_add_epi32(idx0, _mm512_set1_epi32(4));
    const __m512i idx3 = _mm512_add_epi32(idx0, _mm512_set1_epi32(6));
    int64_t g = w0 / gw, w = 0;
    if (gw == 1) {
        /* One group per word: scales and offsets spread over lanes exactly as the words are. */
        const __m512 zero = _mm512_setzero_ps();
        for (; w + 8 <= n; w += 8, g += 8) {
            __m512i words = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(x + w)));
            __m512 s8 = _mm512_castps256_ps512(_mm256_loadu_ps(s + g));
            __m512 o8 = o ? _mm512_castps256_ps512(_mm256_loadu_ps(o + g)) : zero;
#define AQ_G1(k, idx)                                                                                          \
    aq_gstore16_avx512(out, 8 * w + 16 * k,                                                                    \
                       aq_grouped16_avx512(words, idx, _mm512_permutexvar_ps(idx, s8), _mm512_permutexvar_ps(idx, o8)), \
                       out_t, nan_v, stream)
            AQ_G1(0, idx0);
            AQ_G1(1, idx1);
            AQ_G1(2, idx2);
            AQ_G1(3, idx3);
#undef AQ_G1
        }
        for (; w < n; w++, g++)
            aq_store8_avx2(out, 8 * w,
                           aq_grouped8_avx2(x + w, _mm256_set1_ps(s[g]), _mm256_set1_ps(o ? o[g] : 0.0f)), out_t,
                           nan_v8);
    } else if ((gw & (gw - 1)) == 0 && (w0 & 1) == 0) {
        /* Power-of-two groups of 2+ words, pairs starting at even words: both words of a pair
         * share a group, found by a shift; one flat loop, no per-group loop overhead. */
        const int sh = __builtin_ctzll((unsigned long long)gw);
#define AQ_GP(k, words, idx)                                                                                      \
    do {                                                                                                          \
        const int64_t gk = (w0 + w + 2 * (k)) >> sh;                                                              \
        aq_gstore16_avx512(out, 8 * w + 16 * (k),                                                                 \
                           aq_grouped16_avx512(words, idx, _mm512_set1_ps(s[gk]), _mm512_set1_ps(o ? o[gk] : 0.0f)), \
                           out_t, nan_v, stream);                                                                 \
    } while (0)
        for (; w + 8 <= n; w += 8) {
            __m512i words = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(x + w)));
            AQ_GP(0, words, idx0);
            AQ_GP(1, words, idx1);
            AQ_GP(2, words, idx2);
            AQ_GP(3, words, idx3);
        }
        for (; w + 2 <= n; w += 2) {
            __m512i words = _mm512_castsi128_si512(_mm_loadl_epi64((const __m128i *)(x + w)));
            AQ_GP(0, words, idx0);
        }
#undef AQ_GP
        if (w < n) {
            g = (w0 + w) >> sh;
            aq_store8_avx2(out, 8 * w,
                           aq_grouped8_avx2(x + w, _mm256_set1_ps(s[g]), _mm256_set1_ps(o ? o[g] : 0.0f)), out_t,
                           nan_v8);
        }
    } else {
        int64_t left = gw - w0 % gw;
        while (w < n) {
            const int64_t e = w + (left < n - w ? left : n - w);
            const float og = o ? o[g] : 0.0f;
            const __m512 sv = _mm512_set1_ps(s[g]), ov = _mm512_set1_ps(og);
            for (; w + 8 <= e; w += 8) {
                __m512i words = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(x + w)));
                aq_gstore16_avx512(out, 8 * w, aq_grouped16_avx512(words, idx0, sv, ov), out_t, nan_v, stream);
                aq_gstore16_avx512(out, 8 * w + 16, aq_grouped16_avx512(words, idx1, sv, ov), out_t, nan_v, stream);
                aq_gstore16_avx512(out, 8 * w + 32, aq_grouped16_avx512(words, idx2, sv, ov), out_t, nan_v, stream);
                aq_gstore16_avx512(out, 8 * w + 48, aq_grouped16_avx512(words, idx3, sv, ov), out_t, nan_v, stream);
            }
            for (; w + 2 <= e; w += 2) {
                __m512i words = _mm512_castsi128_si512(_mm_loadl_epi64((const __m128i *)(x + w)));
                aq_gstore16_avx512(out, 8 * w, aq_grouped16_avx512(words, idx0, sv, ov), out_t, nan_v, stream);
            }
            if (w < e) {
                aq_store8_avx2(out, 8 * w, aq_grouped8_avx2(x + w, _mm256_set1_ps(s[g]), _mm256_set1_ps(og)), out_t,
                               nan_v8);
                w++;
            }
            g++;
            left = gw;
        }
    }
    if (stream) _mm_sfence();
}

NPQ_TARGET_AVX512 static void aq_grouped_avx512(const int32_t *x, int64_t n, int64_t w0, int64_t gw, const float *s,
                                                const float *o, void *out, int out_t, int stream) {
    switch (out_t * 2 + (stream != 0)) {
    case 0: aq_grouped_body_avx512(x, n, w0, gw, s, o, out, NPQ_F32, 0); break;
    case 1: aq_grouped_body_avx512(x, n, w0, gw, s, o, out, NPQ_F32, 1); break;
    case 2: aq_grouped_body_avx512(x, n, w0, gw, s, o, out, NPQ_F16, 0); break;
    case 3: aq_grouped_body_avx512(x, n, w0, gw, s, o, out, NPQ_F16, 1); break;
    case 4: aq_grouped_body_avx512(x, n, w0, gw, s, o, out, NPQ_BF16, 0); break;
    default: aq_grouped_body_avx512(x, n, w0, gw, s, o, out, NPQ_BF16, 1); break;
    }
}
#endif /* NPQ_X86 */

#define AQ_GROUPED_SPAN 4096     /* words (32768 outputs) per work unit: a long row splits over threads */
/* Outputs per thread, at least. Waking a pool thread took 30-50 us on a shared 2-core VM,
 * about what one thread needs for 0.5M outputs, and w4a16 layers dequantize one cache-sized
 * tile after another: such tiles run on the caller's thread alone. */
#define AQ_GROUPED_GRAIN (1 << 20)
#define AQ_GROUPED_CHUNK 16384   /* outputs per claimed piece of the dynamic split */

typedef struct {
    const int32_t *x;
    int64_t words, row_stride, word_stride, gw, groups, span, spans_per_row;
    const float *scale, *offset;
    char *out;
    int out_t, stream;
    size_t out_bytes;
    aq_grouped_fn fn;
} aq_grouped_job;

/* Units [begin, end): unit u is span u % spans_per_row of row u / spans_per_row. */
static void aq_grouped_range(void *ctx, int64_t begin, int64_t end) {
    const aq_grouped_job *j = (const aq_grouped_job *)ctx;
    _Alignas(64) int32_t gather[AQ_GATHER];
    for (int64_t u = begin; u < end; u++) {
        const int64_t r = u / j->spans_per_row, w0 = (u % j->spans_per_row) * j->span;
        const int64_t n = j->words - w0 < j->span ? j->words - w0 : j->span;
        const int32_t *xr = j->x + r * j->row_stride;
        const float *s = j->scale + r * j->groups, *o = j->offset ? j->offset + r * j->groups : NULL;
        char *dst = j->out + (r * j->words + w0) * 8 * (int64_t)j->out_bytes;
        if (j->word_stride == 1) {
            j->fn(xr + w0, n, w0, j->gw, s, o, dst, j->out_t, j->stream);
            continue;
        }
        for (int64_t w = w0; w < w0 + n; w += AQ_GATHER) { /* strided row: copy words to a contiguous buffer */
            const int64_t m = w0 + n - w < AQ_GATHER ? w0 + n - w : AQ_GATHER;
            for (int64_t k = 0; k < m; k++) gather[k] = xr[(w + k) * j->word_stride];
            j->fn(gather, m, w, j->gw, s, o, dst + (w - w0) * 8 * (int64_t)j->out_bytes, j->out_t, j->stream);
        }
    }
}

/* w4a16 helper: packed int4 weight (rows, words) with one scale (and offset) per row and
 * group of group_words words (group_words * 8 elements along the last dim):
 * out[r, c] = cast((nibble + offset[r, c / G]) * scale[r, c / G]), G = 8 * group_words.
 * scale / offset: contiguous (rows, words / group_words) float32; offset may be NULL.
 * out: contiguous (rows, 8 * words). Returns 0, or a negative code (nothing touched). */
NPQ_API int npq_dequant_int4_grouped(const int32_t *packed, int64_t extent, int64_t rows, int64_t words,
                                     int64_t row_stride, int64_t word_stride, int64_t group_words, const float *scale,
                                     const float *offset, void *out, int out_dtype, int nthreads) {
    if (rows < 0 || words < 0 || group_words <= 0 || words % group_words != 0) return NPQ_ERR_ARG;
    if (out_dtype < NPQ_F32 || out_dtype > NPQ_BF16) return NPQ_ERR_ARG;
    npq_layout lay;
    int64_t one_size[1] = {rows}, one_stride[1] = {row_stride}, n_rows, outputs;
    int rc = npq_layout_init(&lay, 1, one_size, one_stride, words, word_stride, &n_rows);
    if (rc == NPQ_OK) rc = npq_layout_check(&lay, extent);
    if (rc != NPQ_OK) return rc;
    if (rows == 0 || words == 0) return NPQ_OK;
    if (!packed || !scale || !out) return NPQ_ERR_ARG;
    if (__builtin_mul_overflow(rows * words, (int64_t)8, &outputs)) return NPQ_ERR_ARG;
    const size_t out_bytes = out_dtype == NPQ_F32 ? 4 : 2;
    aq_grouped_job j = {packed, words, row_stride, word_stride, group_words, words / group_words,
                        words < AQ_GROUPED_SPAN ? words : AQ_GROUPED_SPAN, 0, scale, offset, (char *)out, out_dtype,
                        (size_t)outputs * out_bytes >= AQ_STREAM_MIN, out_bytes, aq_grouped_scalar};
    j.spans_per_row = (words + j.span - 1) / j.span;
#if NPQ_X86
    if (npq_isa() >= NPQ_ISA_AVX512)
        j.fn = aq_grouped_avx512;
    else if (npq_isa() >= NPQ_ISA_AVX2)
        j.fn = aq_grouped_avx2;
#endif
    const int64_t units = rows * j.spans_per_row, unit_outputs = 8 * j.span;
    const int64_t grain = (AQ_GROUPED_GRAIN + unit_outputs - 1) / unit_outputs;
    const int64_t chunk = (AQ_GROUPED_CHUNK + unit_outputs - 1) / unit_outputs;
    npq_advise_hugepages(out, (size_t)outputs * out_bytes);
    npq_parallel_for_dynamic(units, grain, chunk, nthreads, aq_grouped_range, &j);
    return NPQ_OK;
}
