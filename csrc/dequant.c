/* Affine dequantization, the one kernel under npu_anti_quant, the w4a16 / weight-only tile
 * dequantization, pypto.dequantize and aclnnAscendAntiQuant:
 *
 *     out[r, c] = cast_out((float32(q[r, c]) + offset[p]) * scale[p])
 *     p(r, c)   = (r / row_block) * row_step + (c / col_block) * col_step
 *
 * (half_steps, float16 output: the sum rounded to float16 before the multiply, float16
 * arithmetic as torch does it: cast_f16(float32(cast_f16(float32(q) + offset)) * scale).)
 *
 * q is read by a decoder (int8, int16, or int32 words of 8 int4), p is the parameter index the
 * op's granularity describes (per tensor, per last dim, per row, per (row, K-group), per
 * (matrix, column), any 2-D block), cast_out an encoder (float32, float16, bfloat16).
 *
 * The golden is ops/dequant_affine/reference.py. Results are bit-identical to it: the integer
 * converts exactly, then the same float32 add and multiply in that order (no FMA), then one
 * round-half-to-even conversion with NaN as torch's casts (npq.h). A missing offset adds +0,
 * which leaves an integer's float32 value unchanged.
 *
 * Fast paths are specialisations picked from the description: along a row the parameters are
 * constant (col_step 0), a vector (col_block 1: vector loads), or groups of a multiple of 8
 * columns (one broadcast per 8 outputs); anything else runs the scalar variant. The SIMD body is
 * written once against the SIMD mapping (simd.h; DQ_SIMD below) and instantiated for AVX2 and AVX-512. */
#include "npq.h"
#include "simd.h"

#define DQ_BLOCK 64             /* outputs per work block: a multiple of 8, so int4 words never split */
#define DQ_GATHER 256           /* outputs gathered per step from a row whose elements are strided */
#define DQ_GRAIN (1 << 16)      /* outputs per thread, at least: smaller jobs stay on the caller's thread */
#define DQ_CHUNK (1 << 15)      /* outputs per piece threads claim: pieces balance a busy machine */
#define DQ_STREAM_MIN (16 << 20) /* output bytes from which stores bypass the caches */

enum { DQ_CONST = 0, DQ_VEC = 1, DQ_GROUP = 2, DQ_GENERAL = 3 }; /* parameters along a row */
/* Encoders: NPQ_F32 (0), NPQ_F16 (1), NPQ_BF16 (2), and DQ_F16_STEPS: float16 arithmetic (the sum
 * q + offset rounded to float16 before the multiply, as torch's float16 add then multiply; with
 * float16 operands a float32 result rounded to float16 is the correctly rounded float16 result). */
enum { DQ_F16_STEPS = 3 };

/* n outputs of one row from column c0 on. x points at the unit holding output c0 (contiguous
 * units); s / o at the row's parameters (offset c0 already applied for DQ_VEC); o NULL = +0. */
typedef void (*dq_seg_fn)(const void *x, int64_t n, int64_t c0, const float *s, const float *o, int64_t cb,
                          int64_t cs, void *out);

#define DQ_INLINE static inline __attribute__((always_inline))

DQ_INLINE int32_t dq_value(const void *x, int64_t i, const int dec) {
    if (dec == NPQ_I8) return ((const int8_t *)x)[i];
    if (dec == NPQ_I16) return ((const int16_t *)x)[i];
    int32_t nib = (int32_t)(((uint32_t)((const int32_t *)x)[i >> 3] >> (4 * (i & 7))) & 0xFu);
    return (nib ^ 8) - 8;
}

DQ_INLINE int64_t dq_param(int64_t c0, int64_t i, int64_t cb, int64_t cs, const int mode) {
    return mode == DQ_CONST ? 0 : mode == DQ_VEC ? i : ((c0 + i) / cb) * cs;
}

/* Outputs [i, n) one at a time: the scalar variant, and the SIMD variants' last few. */
DQ_INLINE void dq_tail(const void *x, int64_t i, int64_t n, int64_t c0, const float *s, const float *o, int64_t cb,
                       int64_t cs, void *out, const int dec, const int mode, const int out_t) {
    for (; i < n; i++) {
        const int64_t p = dq_param(c0, i, cb, cs, mode);
        float v = (float)dq_value(x, i, dec) + (o ? o[p] : 0.0f);
        if (out_t == DQ_F16_STEPS) v = npq_f16_to_f32(npq_f32_to_f16(v));
        v = v * s[p];
        if (out_t == NPQ_F32)
            ((float *)out)[i] = v;
        else if (out_t == NPQ_BF16)
            ((uint16_t *)out)[i] = npq_f32_to_bf16(v);
        else
            ((uint16_t *)out)[i] = npq_f32_to_f16(v);
    }
}

static void dq_scalar(const void *x, int64_t n, int64_t c0, const float *s, const float *o, int64_t cb, int64_t cs,
                      void *out, int dec, int out_t) {
    int mode = cs == 0 ? DQ_CONST : (cb == 1 && cs == 1) ? DQ_VEC : DQ_GENERAL;
    if (mode == DQ_VEC) c0 = 0; /* s / o already point at column c0 */
#define DQ_S(D, O)                                                                                          \
    if (dec == D && out_t == O) {                                                                           \
        if (mode == DQ_CONST) dq_tail(x, 0, n, c0, s, o, cb, cs, out, D, DQ_CONST, O);                      \
        else if (mode == DQ_VEC) dq_tail(x, 0, n, c0, s, o, cb, cs, out, D, DQ_VEC, O);                     \
        else dq_tail(x, 0, n, c0, s, o, cb, cs, out, D, DQ_GENERAL, O);                                     \
        return;                                                                                             \
    }
#define DQ_S3(D) DQ_S(D, NPQ_F32) DQ_S(D, NPQ_F16) DQ_S(D, NPQ_BF16) DQ_S(D, DQ_F16_STEPS)
    DQ_S3(NPQ_I8) DQ_S3(NPQ_I16) DQ_S3(NPQ_I4)
#undef DQ_S3
#undef DQ_S
}

#if NPQ_X86
/* ---- this kernel's additions to the SIMD mapping (simd.h): W lanes of float32 / int32 ----
 * dec(x, i, dec): W decoded integers at element i; grp(p, g0, g1): W lanes taking p[g0] (first 8)
 * and p[g1] (the rest); store(out, v, out_t, nan, stream): W outputs converted and stored at out. */

NPQ_TARGET_AVX2 DQ_INLINE __m256i dq_avx2_dec(const void *x, int64_t i, const int dec) {
    if (dec == NPQ_I8) return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)x + i)));
    if (dec == NPQ_I16) return _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)((const int16_t *)x + i)));
    const __m256i shifts = _mm256_setr_epi32(28, 24, 20, 16, 12, 8, 4, 0); /* nibble j to the top, lane j */
    return _mm256_srai_epi32(_mm256_sllv_epi32(_mm256_set1_epi32(((const int32_t *)x)[i >> 3]), shifts), 28);
}
#define dq_avx2_grp(p, g0, g1) _mm256_set1_ps((p)[g0])
#define dq_avx2_f16_round(v) _mm256_cvtph_ps(_mm256_cvtps_ph((v), _MM_FROUND_TO_NEAREST_INT))
#define dq_avx2_nan() _mm256_set1_epi32(npq_bf16_nan)
NPQ_TARGET_AVX2 DQ_INLINE void dq_avx2_store(void *out, __m256 v, const int out_t, __m256i nan, const int stream) {
    const int aligned = stream && ((uintptr_t)out & (out_t == NPQ_F32 ? 31 : 15)) == 0;
    if (out_t == NPQ_F32) {
        if (aligned) _mm256_stream_ps((float *)out, v);
        else _mm256_storeu_ps((float *)out, v);
        return;
    }
    __m128i h;
    if (out_t == NPQ_F16 || out_t == DQ_F16_STEPS) {
        h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
    } else {
        __m256i t = npq_bf16_bits_avx2(v, nan);
        h = _mm_packus_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    }
    if (aligned) _mm_stream_si128((__m128i *)out, h);
    else _mm_storeu_si128((__m128i *)out, h);
}

NPQ_TARGET_AVX512 DQ_INLINE __m512i dq_avx512_dec(const void *x, int64_t i, const int dec) {
    if (dec == NPQ_I8) return _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)x + i)));
    if (dec == NPQ_I16) return _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)((const int16_t *)x + i)));
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i shifts = _mm512_setr_epi32(28, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0);
    __m512i words = _mm512_castsi128_si512(_mm_loadl_epi64((const __m128i *)((const int32_t *)x + (i >> 3))));
    return _mm512_srai_epi32(_mm512_sllv_epi32(_mm512_permutexvar_epi32(idx, words), shifts), 28);
}
#define dq_avx512_grp(p, g0, g1) \
    _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps((p)[g0])), _mm256_set1_ps((p)[g1]), 1)
#define dq_avx512_nan() _mm512_set1_epi32(npq_bf16_nan)
#define dq_avx512_f16_round(v) _mm512_cvtph_ps(_mm512_cvtps_ph((v), _MM_FROUND_TO_NEAREST_INT))
NPQ_TARGET_AVX512 DQ_INLINE void dq_avx512_store(void *out, __m512 v, const int out_t, __m512i nan, const int stream) {
    const int aligned = stream && ((uintptr_t)out & (out_t == NPQ_F32 ? 63 : 31)) == 0;
    if (out_t == NPQ_F32) {
        if (aligned) _mm512_stream_ps((float *)out, v);
        else _mm512_storeu_ps((float *)out, v);
        return;
    }
    __m256i h;
    if (out_t == NPQ_F16 || out_t == DQ_F16_STEPS) {
        h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
    } else {
        __m512i u = _mm512_castps_si512(v);
        __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
        __m512i t = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
        h = _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(nan, _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), t));
    }
    if (aligned) _mm256_stream_si256((__m256i *)out, h);
    else _mm256_storeu_si256((__m256i *)out, h);
}

/* The body, once for every width. Every argument after `out` is a compile-time constant in each
 * instantiation. DQ_GROUP needs col_block a multiple of 8 and c0 % 8 == 0 (the driver's blocks). */
#define DQ_SIMD(ISA, TARGET)                                                                                      \
    TARGET DQ_INLINE void dq_body_##ISA(const void *x, int64_t n, int64_t c0, const float *s, const float *o,      \
                                         int64_t cb, void *out, const int dec, const int mode, const int out_t,    \
                                         const int stream) {                                                       \
        const int W = SIMD_T(ISA, W);                                                                             \
        const size_t ob = out_t == NPQ_F32 ? 4 : 2;                                                             \
        const SIMD_T(ISA, I) nan = dq_##ISA##_nan();                                                             \
        SIMD_T(ISA, F) sv = SIMD(ISA, set1)(s[0]), ov = o ? SIMD(ISA, set1)(o[0]) : SIMD(ISA, zero)();           \
        int64_t g = mode == DQ_GROUP ? c0 / cb : 0, left = mode == DQ_GROUP ? cb - c0 % cb : 0, i = 0;          \
        for (; i + W <= n; i += W) {                                                                            \
            if (mode == DQ_VEC) {                                                                               \
                sv = SIMD(ISA, load)(s + i);                                                                    \
                if (o) ov = SIMD(ISA, load)(o + i);                                                             \
            } else if (mode == DQ_GROUP) {                                                                      \
                const int64_t g0 = g;                                                                           \
                if ((left -= 8) == 0) g++, left = cb;                                                           \
                const int64_t g1 = g; /* the second 8 outputs' group (AVX-512) */                               \
                (void)g1;                                                                                       \
                if (W == 16 && (left -= 8) == 0) g++, left = cb;                                                \
                sv = dq_##ISA##_grp(s, g0, g1);                                                                 \
                if (o) ov = dq_##ISA##_grp(o, g0, g1);                                                          \
            }                                                                                                   \
            SIMD_T(ISA, F) v = SIMD(ISA, add)(SIMD(ISA, cvt)(dq_##ISA##_dec(x, i, dec)), ov);                 \
            if (out_t == DQ_F16_STEPS) v = dq_##ISA##_f16_round(v);                                            \
            v = SIMD(ISA, mul)(v, sv);                                                                          \
            dq_##ISA##_store((char *)out + i * (int64_t)ob, v, out_t, nan, stream);                             \
        }                                                                                                       \
        if (i < n) {                                                                                            \
            if (mode == DQ_VEC)                                                                                 \
                dq_tail(x, i, n, 0, s, o, 1, 1, out, dec, DQ_VEC, out_t);                                       \
            else                                                                                                \
                dq_tail(x, i, n, c0, s, o, mode == DQ_GROUP ? cb : 1, mode == DQ_GROUP ? 1 : 0, out, dec,       \
                        mode == DQ_GROUP ? DQ_GENERAL : DQ_CONST, out_t);                                       \
        }                                                                                                       \
        if (stream) _mm_sfence(); /* streaming stores are weakly ordered: drain before the job ends */          \
    }

DQ_SIMD(avx2, NPQ_TARGET_AVX2)
DQ_SIMD(avx512, NPQ_TARGET_AVX512)

/* One function per (decoder, mode, encoder, streaming): the flags are constants in its loop. */
#define DQ_FN(ISA, TARGET, D, M, O, ST)                                                                     \
    TARGET static void dq_##ISA##_##D##_##M##_##O##_##ST(const void *x, int64_t n, int64_t c0, const float *s, \
                                                         const float *o, int64_t cb, int64_t cs, void *out) {  \
        (void)cs;                                                                                            \
        dq_body_##ISA(x, n, c0, s, o, cb, out, D, M, O, ST);                                                 \
    }
#define DQ_FN_ST(ISA, T, D, M, O) DQ_FN(ISA, T, D, M, O, 0) DQ_FN(ISA, T, D, M, O, 1)
#define DQ_FN_O(ISA, T, D, M) \
    DQ_FN_ST(ISA, T, D, M, 0) DQ_FN_ST(ISA, T, D, M, 1) DQ_FN_ST(ISA, T, D, M, 2) DQ_FN_ST(ISA, T, D, M, 3)
#define DQ_FN_M(ISA, T, D) DQ_FN_O(ISA, T, D, 0) DQ_FN_O(ISA, T, D, 1) DQ_FN_O(ISA, T, D, 2)
#define DQ_FN_ALL(ISA, T) DQ_FN_M(ISA, T, 3) DQ_FN_M(ISA, T, 5) DQ_FN_M(ISA, T, 8)
/* table rows [decoder I8 / I16 / I4][mode][encoder F32 / F16 / BF16 / F16_STEPS][streaming] */
#define DQ_R_ST(ISA, D, M, O) {dq_##ISA##_##D##_##M##_##O##_0, dq_##ISA##_##D##_##M##_##O##_1}
#define DQ_R_O(ISA, D, M) \
    {DQ_R_ST(ISA, D, M, 0), DQ_R_ST(ISA, D, M, 1), DQ_R_ST(ISA, D, M, 2), DQ_R_ST(ISA, D, M, 3)}
#define DQ_R_M(ISA, D) {DQ_R_O(ISA, D, 0), DQ_R_O(ISA, D, 1), DQ_R_O(ISA, D, 2)}
#define DQ_TABLE(ISA) static const dq_seg_fn dq_##ISA##_fns[3][3][4][2] = {DQ_R_M(ISA, 3), DQ_R_M(ISA, 5), DQ_R_M(ISA, 8)};

DQ_FN_ALL(avx2, NPQ_TARGET_AVX2)
DQ_TABLE(avx2)
DQ_FN_ALL(avx512, NPQ_TARGET_AVX512)
DQ_TABLE(avx512)
#endif /* NPQ_X86 */

/* ---- variants as data (the table ends the file): the picked row's table has an entry point per
 * (decoder, mode, encoder, streaming); the scalar row serves every job. ---- */
static int dq_dec_index(int dec) { return dec == NPQ_I8 ? 0 : dec == NPQ_I16 ? 1 : 2; }

#define DQ_SCALAR_FN(D, O)                                                                                      \
    static void dq_scalar_##D##_##O(const void *x, int64_t n, int64_t c0, const float *s, const float *o,       \
                                    int64_t cb, int64_t cs, void *out) {                                        \
        dq_scalar(x, n, c0, s, o, cb, cs, out, D, O);                                                           \
    }
#define DQ_SCALAR_FNS(D) DQ_SCALAR_FN(D, 0) DQ_SCALAR_FN(D, 1) DQ_SCALAR_FN(D, 2) DQ_SCALAR_FN(D, 3)
DQ_SCALAR_FNS(3) DQ_SCALAR_FNS(5) DQ_SCALAR_FNS(8)
#define DQ_SCALAR_ROW(D) {dq_scalar_##D##_0, dq_scalar_##D##_1, dq_scalar_##D##_2, dq_scalar_##D##_3}
static const dq_seg_fn dq_scalar_fns[3][4] = {DQ_SCALAR_ROW(3), DQ_SCALAR_ROW(5), DQ_SCALAR_ROW(8)};

/* A row's entry points: fns[decoder][mode][encoder][stream] for the vectorised modes (NULL: the
 * scalar row, which serves every job). */
typedef struct {
    const dq_seg_fn (*fns)[3][4][2];
} dq_impl;

/* The GENERAL mode (any parameter layout) has only the scalar body. */
static dq_seg_fn dq_pick(int dec, int mode, int out_t, int stream) {
    const int d = dq_dec_index(dec);
    const dq_impl *impl = (const dq_impl *)npq_pick(&npq_kernel_dequant)->impl;
    if (impl->fns && mode != DQ_GENERAL) return impl->fns[d][mode][out_t][stream];
    return dq_scalar_fns[d][out_t];
}

/* ---- driver: work is split into blocks of DQ_BLOCK outputs of one row, so one long row and
 * many short ones both spread over the threads ---- */
typedef struct {
    npq_layout lay; /* in units */
    const char *x;
    int64_t unit_bytes, per_unit, cols, blocks_per_row;
    int64_t rb, rs, cb, cs;
    int mode;
    const float *s, *o;
    char *out;
    int64_t out_bytes;
    dq_seg_fn fn;
} dq_job;

static void dq_range(void *ctx, int64_t begin, int64_t end) {
    const dq_job *j = (const dq_job *)ctx;
    _Alignas(64) int32_t gather[DQ_GATHER];
    while (begin < end) {
        const int64_t row = begin / j->blocks_per_row, b0 = begin % j->blocks_per_row;
        const int64_t b1 = end - begin < j->blocks_per_row - b0 ? b0 + end - begin : j->blocks_per_row;
        const int64_t c1 = b1 * DQ_BLOCK < j->cols ? b1 * DQ_BLOCK : j->cols;
        const int64_t p = (row / j->rb) * j->rs;
        const float *s = j->s + p, *o = j->o ? j->o + p : NULL;
        const char *src = j->x + npq_row_offset(&j->lay, row) * j->unit_bytes;
        char *dst = j->out + row * j->cols * j->out_bytes;
        const int64_t step = j->lay.inner_stride == 1 ? c1 : DQ_GATHER;
        for (int64_t c0 = b0 * DQ_BLOCK; c0 < c1; c0 += step) {
            const int64_t n = c1 - c0 < step ? c1 - c0 : step;
            const char *xs = src + (c0 / j->per_unit) * j->lay.inner_stride * j->unit_bytes;
            if (j->lay.inner_stride != 1) { /* strided row: its units to a contiguous buffer */
                for (int64_t k = 0; k < (n + j->per_unit - 1) / j->per_unit; k++)
                    memcpy((char *)gather + k * j->unit_bytes, xs + k * j->lay.inner_stride * j->unit_bytes,
                           (size_t)j->unit_bytes);
                xs = (const char *)gather;
            }
            const int64_t shift = j->mode == DQ_VEC ? c0 : 0;
            j->fn(xs, n, c0, s + shift, o ? o + shift : NULL, j->cb, j->cs, dst + c0 * j->out_bytes);
        }
        begin += b1 - b0;
    }
}

NPQ_API int npq_dequant(const npq_dequant_args *a, int nthreads) {
    dq_job j;
    memset(&j, 0, sizeof j);
    if (!a) return NPQ_ERR_NULL;
    if (a->x_kind != NPQ_I8 && a->x_kind != NPQ_I16 && a->x_kind != NPQ_I4) return NPQ_ERR_DTYPE;
    if (a->out_dtype != NPQ_F32 && a->out_dtype != NPQ_F16 && a->out_dtype != NPQ_BF16) return NPQ_ERR_DTYPE;
    if (a->half_steps && a->out_dtype != NPQ_F16) return NPQ_ERR_DTYPE;
    if (a->row_block <= 0 || a->col_block <= 0 || a->row_step < 0 || a->col_step < 0 || a->n_param < 0)
        return NPQ_ERR_ARG;
    int64_t rows;
    int rc = npq_layout_init(&j.lay, a->nd, a->lead_sizes, a->lead_strides, a->inner, a->inner_stride, &rows);
    if (rc != NPQ_OK) return rc;
    j.per_unit = a->x_kind == NPQ_I4 ? 8 : 1;
    if (__builtin_mul_overflow(a->inner, j.per_unit, &j.cols)) return NPQ_ERR_ARG;
    if (rows == 0 || j.cols == 0) return NPQ_OK;
    /* the last parameter read lies inside the n_param given */
    int64_t pr, pc, last;
    if (__builtin_mul_overflow((rows - 1) / a->row_block, a->row_step, &pr) ||
        __builtin_mul_overflow((j.cols - 1) / a->col_block, a->col_step, &pc) ||
        __builtin_add_overflow(pr, pc, &last) || last >= a->n_param)
        return NPQ_ERR_ARG;
    if (!a->x || !a->scale || !a->out) return NPQ_ERR_NULL;
    rc = npq_layout_check(&j.lay, a->x_extent);
    if (rc != NPQ_OK) return rc;

    j.x = (const char *)a->x;
    j.unit_bytes = a->x_kind == NPQ_I8 ? 1 : a->x_kind == NPQ_I16 ? 2 : 4;
    j.blocks_per_row = (j.cols + DQ_BLOCK - 1) / DQ_BLOCK;
    j.rb = a->row_block, j.rs = a->row_step, j.cb = a->col_block, j.cs = a->col_step;
    j.mode = (a->col_step == 0 || a->col_block >= j.cols) ? DQ_CONST
             : a->col_step != 1                          ? DQ_GENERAL
             : a->col_block == 1                         ? DQ_VEC
             : a->col_block % 8 == 0                     ? DQ_GROUP
                                                         : DQ_GENERAL;
    if (j.mode == DQ_CONST) j.cs = 0;
    j.s = a->scale, j.o = a->offset;
    j.out = (char *)a->out;
    j.out_bytes = a->out_dtype == NPQ_F32 ? 4 : 2;
    const int64_t total = rows * j.cols; /* no overflow: npq_layout_init checked rows * inner */
    const int stream = total * j.out_bytes >= DQ_STREAM_MIN;
    j.fn = dq_pick(a->x_kind, j.mode, a->half_steps ? DQ_F16_STEPS : a->out_dtype, stream);
    int64_t blocks;
    if (__builtin_mul_overflow(rows, j.blocks_per_row, &blocks)) return NPQ_ERR_ARG;
    npq_advise_hugepages(j.out, (size_t)(total * j.out_bytes));
    npq_parallel_for_dynamic(blocks, DQ_GRAIN / DQ_BLOCK, DQ_CHUNK / DQ_BLOCK, nthreads, dq_range, &j);
    return NPQ_OK;
}

/* ---- the variants, best first */
static const dq_impl dq_none = {NULL};
#if NPQ_X86
static const dq_impl dq_avx512 = {dq_avx512_fns}, dq_avx2 = {dq_avx2_fns};
#endif

static const npq_variant dq_variants[] = {
#if NPQ_X86
    {"avx512", NPQ_ISA_AVX512, 0, &dq_avx512},
    {"avx2", NPQ_ISA_AVX2, 0, &dq_avx2},
#endif
    {"scalar", NPQ_ISA_SCALAR, 0, &dq_none},
};
const npq_kernel npq_kernel_dequant = NPQ_KERNEL("dequant", dq_variants);
