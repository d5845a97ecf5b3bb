/* Per-row / per-column dequantization (SPEC §8.1): int8 / int16 -> float32.
 *
 *     out = (float32(x) + zero_point) * scale        without zero points: float32(x) * scale
 *
 * axis -1 (per-row): one scale / zero point per row of x (parameters numbered like the rows).
 * axis -2 (per-column): one per column of each matrix x[..., :, :] (parameters [..., col]).
 *
 * The golden is the pure-torch reference (ops/dequantize/reference.py); results are
 * bit-identical to it: the int -> float32 conversion is exact, then the same one or two
 * float32 operations in the same order (no FMA: -ffp-contract=off), with IEEE results and
 * x86 NaN rules in every variant. One corner is not reproducible: when zero point and scale
 * are both NaN, torch returns either one's payload depending on which of its internal loops
 * produced the element; we return a NaN with one of the two payloads as well.
 *
 * Layout: x is rows of `cols` contiguous elements (last-dim stride 1), numbered by up to 8
 * leading dims of any strides, so the strided tiles pypto cuts out of a tensor are read in
 * place. The output and the parameters are contiguous. Work is split over the flat
 * element index, so one long row and many short rows both spread over the threads. */
#include "npq.h"


/* Inputs of up to this many elements run on the calling thread; larger ones are shared out in
 * pieces of this size (npq_parallel_for_dynamic). In cache one thread converts ~20 Gelem/s, so
 * smaller jobs take a few microseconds: about what waking a pool thread costs (more on a busy
 * machine: measured here, 2 threads were slower than 1 up to ~8M elements with the cores
 * oversubscribed). pypto's tiles are far smaller and never pay for the pool. */
#define DEQ_GRAIN (1 << 18)

/* Outputs at least this large are written with non-temporal (streaming) stores: they cannot
 * stay in cache anyway, and skipping the read-for-ownership of every output line saves a
 * third of the memory traffic (measured: 8192x4096 int8, 2 threads, ~3.5 -> ~5 Gelem/s).
 * Smaller outputs (pypto tiles) use ordinary stores and stay cached for their consumer. */
#define DEQ_STREAM_MIN_BYTES ((int64_t)16 << 20)

/* A segment: n contiguous inputs -> n contiguous outputs. Per-row (bcast) segments read
 * s[0] / z[0] for every element, per-column ones s[i] / z[i]; z == NULL: no zero points.
 * stream: use non-temporal stores where the output is aligned (SIMD variants). */
typedef void (*deq_seg_fn)(const void *x, int64_t n, const float *s, const float *z, float *out, int stream);

#define DEQ_INLINE static inline __attribute__((always_inline))

/* ---------------------------------------------------------------- scalar */

DEQ_INLINE void deq_body_scalar(const void *xv, int64_t n, const float *restrict s, const float *restrict z,
                                float *restrict out, int stream, const int dtype, const int bcast, const int has_z) {
    (void)stream;
    const int8_t *x8 = (const int8_t *)xv;
    const int16_t *x16 = (const int16_t *)xv;
    const float s0 = s[0], z0 = has_z ? z[0] : 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float v = dtype == NPQ_I8 ? (float)x8[i] : (float)x16[i];
        if (has_z) v = v + (bcast ? z0 : z[i]);
        out[i] = v * (bcast ? s0 : s[i]);
    }
}

/* One function per (dtype, per-row, zero points) so the flags are constants in the loop. */
#define DEQ_SPECIALIZE(NAME, TARGET, BODY, DT, BC, HZ)                                                  \
    TARGET static void NAME(const void *x, int64_t n, const float *s, const float *z, float *out, int stream) { \
        BODY(x, n, s, z, out, stream, DT, BC, HZ);                                                      \
    }
/* All eight, and a table [dtype][per-row][zero points] of them. */
#define DEQ_ALL(PREFIX, TARGET, BODY)                                                     \
    DEQ_SPECIALIZE(PREFIX##_i8_col, TARGET, BODY, NPQ_I8, 0, 0)                         \
    DEQ_SPECIALIZE(PREFIX##_i8_col_z, TARGET, BODY, NPQ_I8, 0, 1)                       \
    DEQ_SPECIALIZE(PREFIX##_i8_row, TARGET, BODY, NPQ_I8, 1, 0)                         \
    DEQ_SPECIALIZE(PREFIX##_i8_row_z, TARGET, BODY, NPQ_I8, 1, 1)                       \
    DEQ_SPECIALIZE(PREFIX##_i16_col, TARGET, BODY, NPQ_I16, 0, 0)                       \
    DEQ_SPECIALIZE(PREFIX##_i16_col_z, TARGET, BODY, NPQ_I16, 0, 1)                     \
    DEQ_SPECIALIZE(PREFIX##_i16_row, TARGET, BODY, NPQ_I16, 1, 0)                       \
    DEQ_SPECIALIZE(PREFIX##_i16_row_z, TARGET, BODY, NPQ_I16, 1, 1)                     \
    static const deq_seg_fn PREFIX##_fns[2][2][2] = {                                     \
        {{PREFIX##_i8_col, PREFIX##_i8_col_z}, {PREFIX##_i8_row, PREFIX##_i8_row_z}},     \
        {{PREFIX##_i16_col, PREFIX##_i16_col_z}, {PREFIX##_i16_row, PREFIX##_i16_row_z}}, \
    };

#define DEQ_NO_TARGET
DEQ_ALL(deq_scalar, DEQ_NO_TARGET, deq_body_scalar)

#if NPQ_X86
/* ---------------------------------------------------------------- AVX2 */

/* 8 consecutive inputs as int32 lanes. */
NPQ_TARGET_AVX2 DEQ_INLINE __m256i deq_load8_avx2(const void *x, int64_t i, const int dtype) {
    if (dtype == NPQ_I8) return _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)x + i)));
    return _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)((const int16_t *)x + i)));
}

/* 16 consecutive inputs at i as two vectors of 8 int32 lanes. */
#define DEQ_LOAD16_AVX2(x, i, dtype, lo, hi)                                                   \
    do {                                                                                        \
        if ((dtype) == NPQ_I8) {                                                              \
            __m128i b_ = _mm_loadu_si128((const __m128i *)((const int8_t *)(x) + (i)));         \
            (lo) = _mm256_cvtepi8_epi32(b_);                                                    \
            (hi) = _mm256_cvtepi8_epi32(_mm_srli_si128(b_, 8));                                 \
        } else {                                                                                \
            __m256i w_ = _mm256_loadu_si256((const __m256i *)((const int16_t *)(x) + (i)));     \
            (lo) = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(w_));                           \
            (hi) = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(w_, 1));                      \
        }                                                                                       \
    } while (0)

NPQ_TARGET_AVX2 DEQ_INLINE __m256 deq_apply8_avx2(__m256i xi, const float *s, const float *z, int64_t i, __m256 s_b,
                                                  __m256 z_b, const int bcast, const int has_z) {
    __m256 v = _mm256_cvtepi32_ps(xi);
    if (has_z) v = _mm256_add_ps(v, bcast ? z_b : _mm256_loadu_ps(z + i));
    return _mm256_mul_ps(v, bcast ? s_b : _mm256_loadu_ps(s + i));
}

/* r < 8 elements at i: the same instructions on zero-padded copies, so no read or write
 * goes past the segment and every element sees identical arithmetic. */
NPQ_TARGET_AVX2 DEQ_INLINE void deq_part_avx2(const void *x, int64_t i, int64_t r, const float *s, const float *z,
                                              float *out, __m256 s_b, __m256 z_b, const int dtype, const int bcast,
                                              const int has_z) {
    int16_t xt[8] = {0};
    float st[8] = {0}, zt[8] = {0}, res[8];
    size_t esz = dtype == NPQ_I8 ? 1 : 2;
    memcpy(xt, (const char *)x + i * (int64_t)esz, (size_t)r * esz);
    if (!bcast) {
        memcpy(st, s + i, (size_t)r * 4);
        if (has_z) memcpy(zt, z + i, (size_t)r * 4);
    }
    _mm256_storeu_ps(res, deq_apply8_avx2(deq_load8_avx2(xt, 0, dtype), st, zt, 0, s_b, z_b, bcast, has_z));
    memcpy(out + i, res, (size_t)r * 4);
}

NPQ_TARGET_AVX2 DEQ_INLINE void deq_body_avx2(const void *x, int64_t n, const float *s, const float *z, float *out,
                                              int stream, const int dtype, const int bcast, const int has_z) {
    const __m256 s_b = _mm256_set1_ps(s[0]), z_b = _mm256_set1_ps(has_z ? z[0] : 0.0f);
    int64_t i = 0;
    stream = stream && ((uintptr_t)out & 3) == 0;
    if (stream) {
        /* Up to 7 leading elements bring the output to a 32-byte boundary. */
        i = (int64_t)((32 - ((uintptr_t)out & 31)) & 31) / 4;
        if (i > n) i = n;
        if (i) deq_part_avx2(x, 0, i, s, z, out, s_b, z_b, dtype, bcast, has_z);
    }
    for (; i + 16 <= n; i += 16) {
        __m256i lo, hi;
        DEQ_LOAD16_AVX2(x, i, dtype, lo, hi);
        __m256 a = deq_apply8_avx2(lo, s, z, i, s_b, z_b, bcast, has_z);
        __m256 b = deq_apply8_avx2(hi, s, z, i + 8, s_b, z_b, bcast, has_z);
        if (stream) {
            _mm256_stream_ps(out + i, a);
            _mm256_stream_ps(out + i + 8, b);
        } else {
            _mm256_storeu_ps(out + i, a);
            _mm256_storeu_ps(out + i + 8, b);
        }
    }
    if (i + 8 <= n) {
        _mm256_storeu_ps(out + i, deq_apply8_avx2(deq_load8_avx2(x, i, dtype), s, z, i, s_b, z_b, bcast, has_z));
        i += 8;
    }
    if (i < n) deq_part_avx2(x, i, n - i, s, z, out, s_b, z_b, dtype, bcast, has_z);
}

DEQ_ALL(deq_avx2, NPQ_TARGET_AVX2, deq_body_avx2)

/* ---------------------------------------------------------------- AVX-512 (F/BW/VL/DQ) */

NPQ_TARGET_AVX512 DEQ_INLINE __m512 deq_apply16_avx512(__m512i xi, const float *s, const float *z, int64_t i,
                                                       __m512 s_b, __m512 z_b, const int bcast, const int has_z) {
    __m512 v = _mm512_cvtepi32_ps(xi);
    if (has_z) v = _mm512_add_ps(v, bcast ? z_b : _mm512_loadu_ps(z + i));
    return _mm512_mul_ps(v, bcast ? s_b : _mm512_loadu_ps(s + i));
}

/* r <= 16 elements at i: masked loads and stores (masked-off lanes neither fault nor write). */
NPQ_TARGET_AVX512 DEQ_INLINE void deq_part_avx512(const void *x, int64_t i, int64_t r, const float *s, const float *z,
                                                  float *out, __m512 s_b, __m512 z_b, const int dtype,
                                                  const int bcast, const int has_z) {
    const __m512 zero = _mm512_setzero_ps();
    __mmask16 m = (__mmask16)((1u << r) - 1u);
    __m512i xi = dtype == NPQ_I8 ? _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, (const int8_t *)x + i))
                                   : _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(m, (const int16_t *)x + i));
    __m512 v = _mm512_cvtepi32_ps(xi);
    if (has_z) v = _mm512_add_ps(v, bcast ? z_b : _mm512_mask_loadu_ps(zero, m, z + i));
    v = _mm512_mul_ps(v, bcast ? s_b : _mm512_mask_loadu_ps(zero, m, s + i));
    _mm512_mask_storeu_ps(out + i, m, v);
}

/* 32 consecutive inputs at i as two vectors of 16 int32 lanes. */
#define DEQ_LOAD32_AVX512(x, i, dtype, lo, hi)                                                  \
    do {                                                                                        \
        if ((dtype) == NPQ_I8) {                                                              \
            __m256i b_ = _mm256_loadu_si256((const __m256i *)((const int8_t *)(x) + (i)));      \
            (lo) = _mm512_cvtepi8_epi32(_mm256_castsi256_si128(b_));                            \
            (hi) = _mm512_cvtepi8_epi32(_mm256_extracti128_si256(b_, 1));                       \
        } else {                                                                                \
            __m512i w_ = _mm512_loadu_si512((const void *)((const int16_t *)(x) + (i)));        \
            (lo) = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(w_));                           \
            (hi) = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(w_, 1));                     \
        }                                                                                       \
    } while (0)

NPQ_TARGET_AVX512 DEQ_INLINE void deq_body_avx512(const void *x, int64_t n, const float *s, const float *z, float *out,
                                                  int stream, const int dtype, const int bcast, const int has_z) {
    const __m512 s_b = _mm512_set1_ps(s[0]), z_b = _mm512_set1_ps(has_z ? z[0] : 0.0f);
    int64_t i = 0;
    stream = stream && ((uintptr_t)out & 3) == 0;
    if (stream) {
        /* Up to 15 leading elements bring the output to a 64-byte boundary. */
        i = (int64_t)((64 - ((uintptr_t)out & 63)) & 63) / 4;
        if (i > n) i = n;
        if (i) deq_part_avx512(x, 0, i, s, z, out, s_b, z_b, dtype, bcast, has_z);
    }
    for (; i + 32 <= n; i += 32) {
        __m512i lo, hi;
        DEQ_LOAD32_AVX512(x, i, dtype, lo, hi);
        __m512 a = deq_apply16_avx512(lo, s, z, i, s_b, z_b, bcast, has_z);
        __m512 b = deq_apply16_avx512(hi, s, z, i + 16, s_b, z_b, bcast, has_z);
        if (stream) {
            _mm512_stream_ps(out + i, a);
            _mm512_stream_ps(out + i + 16, b);
        } else {
            _mm512_storeu_ps(out + i, a);
            _mm512_storeu_ps(out + i + 16, b);
        }
    }
    for (; i < n; i += 16) deq_part_avx512(x, i, n - i < 16 ? n - i : 16, s, z, out, s_b, z_b, dtype, bcast, has_z);
}

DEQ_ALL(deq_avx512, NPQ_TARGET_AVX512, deq_body_avx512)
#endif /* NPQ_X86 */

static deq_seg_fn deq_pick(int dtype, int bcast, int has_z) {
#if NPQ_X86
    int isa = npq_isa();
    if (isa >= NPQ_ISA_AVX512) return deq_avx512_fns[dtype == NPQ_I16][bcast][has_z];
    if (isa >= NPQ_ISA_AVX2) return deq_avx2_fns[dtype == NPQ_I16][bcast][has_z];
#endif
    return deq_scalar_fns[dtype == NPQ_I16][bcast][has_z];
}

/* ---------------------------------------------------------------- driver */

typedef struct {
    const char *x;
    int64_t esize;
    npq_layout lay; /* rows of lay.inner = cols elements, inner stride 1 */
    int per_col;
    int64_t rows_per_matrix; /* per-column: x.shape[-2] */
    const float *scale;
    const float *zp; /* NULL: none */
    float *out;
    int stream; /* non-temporal stores */
    deq_seg_fn fn;
} deq_job;

static void deq_range(void *ctx, int64_t begin, int64_t end) {
    const deq_job *j = (const deq_job *)ctx;
    const npq_layout *l = &j->lay;
    const int64_t cols = l->inner;
    int64_t row = begin / cols, col = begin % cols;
    /* Leading-dim index of the first row; then stepped like an odometer, row by row. */
    int64_t idx[NPQ_MAX_LEAD], off = 0, rest = row;
    for (int d = l->nd - 1; d >= 0; d--) {
        idx[d] = rest % l->size[d];
        rest /= l->size[d];
        off += idx[d] * l->stride[d];
    }
    while (begin < end) {
        int64_t n = cols - col < end - begin ? cols - col : end - begin;
        int64_t p = j->per_col ? row / j->rows_per_matrix * cols + col : row;
        j->fn(j->x + (off + col) * j->esize, n, j->scale + p, j->zp ? j->zp + p : NULL, j->out + row * cols + col,
              j->stream);
        begin += n;
        col = 0;
        row++;
        for (int d = l->nd - 1; d >= 0; d--) {
            off += l->stride[d];
            if (++idx[d] < l->size[d]) break;
            off -= idx[d] * l->stride[d];
            idx[d] = 0;
        }
    }
#if NPQ_X86
    /* Streaming stores are weakly ordered: make them visible before the caller reads out. */
    if (j->stream) _mm_sfence();
#endif
}

/* out[row, c] = (float32(x[row, c]) + zp[p]) * scale[p], p = row (axis -1) or
 * row / rows_per_matrix * cols + c (axis -2); zero_points may be NULL.
 *
 * x: int8 (x_dtype NPQ_I8) or int16 (NPQ_I16); rows of `cols` elements at stride 1, numbered by nd
 * (<= 8) leading dims of sizes lead_sizes and strides lead_strides (elements, >= 0);
 * x_extent = elements addressable from x (every element read is checked to lie inside).
 * scale / zero_points: contiguous float32, n_param values (must be the count the axis
 * implies). out: contiguous float32 of rows * cols. Returns 0, or a negative code on bad
 * arguments before anything is read or written. */
NPQ_API int npq_dequantize(const void *x, int x_dtype, int64_t x_extent, int nd, const int64_t *lead_sizes,
                           const int64_t *lead_strides, int64_t cols, const float *scale, const float *zero_points,
                           int64_t n_param, int axis, int64_t rows_per_matrix, float *out, int nthreads) {
    deq_job j;
    memset(&j, 0, sizeof j);
    if (x_dtype != NPQ_I8 && x_dtype != NPQ_I16) return NPQ_ERR_ARG;
    if (axis != -1 && axis != -2) return NPQ_ERR_ARG;
    if (x_extent < 0 || n_param < 0) return NPQ_ERR_ARG;
    int64_t rows;
    int rc = npq_layout_init(&j.lay, nd, lead_sizes, lead_strides, cols, 1, &rows);
    if (rc != NPQ_OK) return rc;
    int64_t total = rows * cols; /* no overflow: checked by npq_layout_init */
    if (total == 0) return NPQ_OK;
    /* Argument errors first, then the bounds check. */
    if (axis == -2 && (rows_per_matrix <= 0 || rows % rows_per_matrix != 0)) return NPQ_ERR_ARG;
    int64_t expected = axis == -1 ? rows : rows / rows_per_matrix * cols; /* <= total: no overflow */
    if (n_param != expected) return NPQ_ERR_ARG;
    if (!x || !scale || !out) return NPQ_ERR_ARG;
    rc = npq_layout_check(&j.lay, x_extent);
    if (rc != NPQ_OK) return rc;

    j.x = (const char *)x;
    j.esize = x_dtype == NPQ_I8 ? 1 : 2;
    j.per_col = axis == -2;
    j.rows_per_matrix = rows_per_matrix;
    j.scale = scale;
    j.zp = zero_points;
    j.out = out;
    j.stream = total >= DEQ_STREAM_MIN_BYTES / 4;
    j.fn = deq_pick(x_dtype, axis == -1, zero_points != NULL);
    npq_advise_hugepages(out, (size_t)total * 4);
    npq_parallel_for_dynamic(total, DEQ_GRAIN, DEQ_GRAIN, nthreads, deq_range, &j);
    return NPQ_OK;
}
