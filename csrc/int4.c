/* int4 packing (SPEC §2): element j of each group of 8 lives in bits 4j..4j+3 of an
 * int32 word as a signed two's-complement nibble.
 *
 *   unpack: int32 (..., n) -> int8 (..., 8n)
 *   pack:   integer (..., 8n) -> int32 (..., n), reporting the min and max value seen so
 *           the caller can reject values outside [-8, 7] without a second pass.
 *
 * Inputs are rows of `inner` units (words for unpack, values for pack) with an element
 * stride, numbered by up to 8 leading dims of any strides; outputs are contiguous. */
#include "npq.h"

/* Value dtypes pack accepts (element sizes 1, 1, 2, 4, 8). */

#define I4_GRAIN_WORDS 16384

/* Fills l and checks it against extent: the entry points' shared first step. */
static int i4_layout(npq_layout *l, int nd, const int64_t *sizes, const int64_t *strides, int64_t inner,
                     int64_t inner_stride, int64_t extent, int64_t *rows) {
    int rc = npq_layout_init(l, nd, sizes, strides, inner, inner_stride, rows);
    return rc != NPQ_OK ? rc : npq_layout_check(l, extent);
}

/* ---------------------------------------------------------------- unpack */

static void i4_unpack_scalar(const int32_t *w, int64_t n, int8_t *out) {
    for (int64_t k = 0; k < n; k++) {
        uint32_t word = (uint32_t)w[k];
        for (int j = 0; j < 8; j++) out[k * 8 + j] = (int8_t)((int)(((word >> (4 * j)) & 0xFu) ^ 8u) - 8);
    }
}

#if NPQ_X86
/* 8 words (32 bytes) -> 64 int8: split each byte into its low and high nibble,
 * interleave (low first), sign-extend with (v ^ 8) - 8. */
NPQ_TARGET_AVX2 static void i4_unpack_avx2(const int32_t *w, int64_t n, int8_t *out) {
    const __m256i low4 = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256i b = _mm256_loadu_si256((const __m256i *)(w + k));
        __m256i lo = _mm256_and_si256(b, low4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), low4);
        __m256i a = _mm256_unpacklo_epi8(lo, hi); /* bytes 0-7 | 16-23 */
        __m256i c = _mm256_unpackhi_epi8(lo, hi); /* bytes 8-15 | 24-31 */
        __m256i first = _mm256_permute2x128_si256(a, c, 0x20), second = _mm256_permute2x128_si256(a, c, 0x31);
        first = _mm256_sub_epi8(_mm256_xor_si256(first, eight), eight);
        second = _mm256_sub_epi8(_mm256_xor_si256(second, eight), eight);
        _mm256_storeu_si256((__m256i *)(out + k * 8), first);
        _mm256_storeu_si256((__m256i *)(out + k * 8 + 32), second);
    }
    i4_unpack_scalar(w + k, n - k, out + k * 8);
}
#endif

typedef void (*i4_unpack_fn)(const int32_t *, int64_t, int8_t *);

typedef struct {
    const int32_t *x;
    npq_layout lay;
    int8_t *out;
    i4_unpack_fn fn;
} i4_unpack_job;

static void i4_unpack_range(void *ctx, int64_t begin, int64_t end) {
    const i4_unpack_job *j = (const i4_unpack_job *)ctx;
    const int64_t inner = j->lay.inner;
    int64_t row = begin / inner, col = begin % inner;
    int32_t gather[256];
    while (begin < end) {
        int64_t take = inner - col < end - begin ? inner - col : end - begin;
        const int32_t *src = j->x + npq_row_offset(&j->lay, row) + col * j->lay.inner_stride;
        int8_t *dst = j->out + (row * inner + col) * 8;
        if (j->lay.inner_stride == 1) {
            j->fn(src, take, dst);
        } else {
            for (int64_t done = 0; done < take;) {
                int64_t n = take - done < 256 ? take - done : 256;
                for (int64_t k = 0; k < n; k++) gather[k] = src[(done + k) * j->lay.inner_stride];
                j->fn(gather, n, dst + done * 8);
                done += n;
            }
        }
        begin += take;
        row++;
        col = 0;
    }
}

/* packed: int32 words, rows of `inner` words; out: contiguous int8, 8 per word. */
NPQ_API int npq_unpack_int4(const int32_t *packed, int64_t extent, int nd, const int64_t *lead_sizes,
                            const int64_t *lead_strides, int64_t inner, int64_t inner_stride, int8_t *out,
                            int nthreads) {
    i4_unpack_job j;
    int64_t rows;
    int rc = i4_layout(&j.lay, nd, lead_sizes, lead_strides, inner, inner_stride, extent, &rows);
    if (rc != NPQ_OK) return rc;
    if (rows * inner == 0) return NPQ_OK;
    if (!packed || !out) return NPQ_ERR_ARG;
    j.x = packed;
    j.out = out;
    j.fn = *(const i4_unpack_fn *)npq_pick(&npq_kernel_int4_unpack)->impl;
    npq_advise_hugepages(out, (size_t)(rows * inner * 8));
    npq_parallel_for_dynamic(rows * inner, I4_GRAIN_WORDS, 2 * I4_GRAIN_WORDS, nthreads, i4_unpack_range, &j);
    return NPQ_OK;
}

/* ---------------------------------------------------------------- pack */

typedef struct {
    int64_t lo, hi;
} i4_minmax;

static inline void i4_minmax_add(i4_minmax *mm, int64_t lo, int64_t hi) {
    if (lo < mm->lo) mm->lo = lo;
    if (hi > mm->hi) mm->hi = hi;
}

static inline int64_t i4_load(const char *p, int dtype) {
    switch (dtype) {
    case NPQ_I8: return *(const int8_t *)p;
    case NPQ_U8: return *(const uint8_t *)p;
    case NPQ_I16: { int16_t v; memcpy(&v, p, 2); return v; }
    case NPQ_I32: { int32_t v; memcpy(&v, p, 4); return v; }
    default: { int64_t v; memcpy(&v, p, 8); return v; }
    }
}

static int i4_size(int dtype) { return dtype == NPQ_I64 ? 8 : dtype == NPQ_I32 ? 4 : dtype == NPQ_I16 ? 2 : 1; }

/* Any dtype, any element stride (in elements): n words from 8n values. */
static void i4_pack_scalar(const char *v, int64_t n, int64_t stride, int dtype, int32_t *out, i4_minmax *mm) {
    const int64_t step = stride * i4_size(dtype);
    int64_t lo = mm->lo, hi = mm->hi;
    for (int64_t k = 0; k < n; k++) {
        uint32_t word = 0;
        for (int j = 0; j < 8; j++) {
            int64_t e = i4_load(v + (k * 8 + j) * step, dtype);
            lo = e < lo ? e : lo;
            hi = e > hi ? e : hi;
            word |= ((uint32_t)e & 0xFu) << (4 * j);
        }
        out[k] = (int32_t)word;
    }
    mm->lo = lo;
    mm->hi = hi;
}

#if NPQ_X86
/* 64 int8 values (two vectors) -> 8 words. In each 16-bit lane (e[2k], e[2k+1]) the
 * packed byte is (lane & 0xF) | ((lane >> 4) & 0xF0) once both nibbles are masked. */
NPQ_TARGET_AVX2 static inline __m256i i4_pack64_avx2(__m256i a, __m256i b) {
    const __m256i low4 = _mm256_set1_epi8(0x0F), lane_lo = _mm256_set1_epi16(0x000F), lane_mid = _mm256_set1_epi16(0x00F0);
    a = _mm256_and_si256(a, low4);
    b = _mm256_and_si256(b, low4);
    a = _mm256_or_si256(_mm256_and_si256(a, lane_lo), _mm256_and_si256(_mm256_srli_epi16(a, 4), lane_mid));
    b = _mm256_or_si256(_mm256_and_si256(b, lane_lo), _mm256_and_si256(_mm256_srli_epi16(b, 4), lane_mid));
    return _mm256_permute4x64_epi64(_mm256_packus_epi16(a, b), 0xD8);
}

NPQ_TARGET_AVX2 static void i4_pack_i8_avx2(const int8_t *v, int64_t n, int32_t *out, i4_minmax *mm) {
    __m256i mn = _mm256_set1_epi8(127), mx = _mm256_set1_epi8(-128);
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(v + k * 8));
        __m256i b = _mm256_loadu_si256((const __m256i *)(v + k * 8 + 32));
        mn = _mm256_min_epi8(mn, _mm256_min_epi8(a, b));
        mx = _mm256_max_epi8(mx, _mm256_max_epi8(a, b));
        _mm256_storeu_si256((__m256i *)(out + k), i4_pack64_avx2(a, b));
    }
    if (k > 0) {
        int8_t lo[32], hi[32];
        _mm256_storeu_si256((__m256i *)lo, mn);
        _mm256_storeu_si256((__m256i *)hi, mx);
        for (int t = 0; t < 32; t++) i4_minmax_add(mm, lo[t], hi[t]);
    }
    i4_pack_scalar((const char *)(v + k * 8), n - k, 1, NPQ_I8, out + k, mm);
}

/* int32 values: the range is taken on the raw values; saturating narrowing to int8 then
 * only alters values that are out of range anyway (and those make the op fail). */
NPQ_TARGET_AVX2 static void i4_pack_i32_avx2(const int32_t *v, int64_t n, int32_t *out, i4_minmax *mm) {
    __m256i mn = _mm256_set1_epi32(INT32_MAX), mx = _mm256_set1_epi32(INT32_MIN);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        __m256i q[8];
        for (int t = 0; t < 8; t++) {
            q[t] = _mm256_loadu_si256((const __m256i *)(v + k * 8 + t * 8));
            mn = _mm256_min_epi32(mn, q[t]);
            mx = _mm256_max_epi32(mx, q[t]);
        }
        /* int32 -> int16 -> int8 with lane interleaving undone by one dword permute. */
        __m256i b0 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        __m256i b1 = _mm256_packs_epi16(_mm256_packs_epi32(q[4], q[5]), _mm256_packs_epi32(q[6], q[7]));
        b0 = _mm256_permutevar8x32_epi32(b0, order);
        b1 = _mm256_permutevar8x32_epi32(b1, order);
        _mm256_storeu_si256((__m256i *)(out + k), i4_pack64_avx2(b0, b1));
    }
    if (k > 0) {
        int32_t lo[8], hi[8];
        _mm256_storeu_si256((__m256i *)lo, mn);
        _mm256_storeu_si256((__m256i *)hi, mx);
        for (int t = 0; t < 8; t++) i4_minmax_add(mm, lo[t], hi[t]);
    }
    i4_pack_scalar((const char *)(v + k * 8), n - k, 1, NPQ_I32, out + k, mm);
}
#endif

/* A pack variant's entry points for contiguous rows (the table ends the file). */
typedef struct i4_pack_impl {
    void (*i8)(const int8_t *v, int64_t n, int32_t *out, i4_minmax *mm);
    void (*i32)(const int32_t *v, int64_t n, int32_t *out, i4_minmax *mm);
} i4_pack_impl;

typedef struct {
    const char *v;
    int dtype;
    const struct i4_pack_impl *impl; /* the picked variant (a NULL entry: the scalar loop) */
    npq_layout lay; /* inner counted in values */
    int32_t *out;
    int64_t words_per_row;
    i4_minmax mm;
} i4_pack_job;

static void i4_pack_range(void *ctx, int64_t begin, int64_t end) {
    i4_pack_job *j = (i4_pack_job *)ctx;
    const int64_t wpr = j->words_per_row, esz = i4_size(j->dtype);
    int64_t row = begin / wpr, col = begin % wpr;
    i4_minmax mm = {INT64_MAX, INT64_MIN};
    while (begin < end) {
        int64_t take = wpr - col < end - begin ? wpr - col : end - begin;
        const char *src = j->v + (npq_row_offset(&j->lay, row) + col * 8 * j->lay.inner_stride) * esz;
        int32_t *dst = j->out + row * wpr + col;
        if (j->lay.inner_stride == 1 && j->dtype == NPQ_I8 && j->impl->i8)
            j->impl->i8((const int8_t *)src, take, dst, &mm);
        else if (j->lay.inner_stride == 1 && j->dtype == NPQ_I32 && j->impl->i32)
            j->impl->i32((const int32_t *)src, take, dst, &mm);
        else
            i4_pack_scalar(src, take, j->lay.inner_stride, j->dtype, dst, &mm);
        begin += take;
        row++;
        col = 0;
    }
    /* Merge this range's extremes: a CAS loop per bound, once per thread. */
    int64_t cur = __atomic_load_n(&j->mm.lo, __ATOMIC_RELAXED);
    while (mm.lo < cur && !__atomic_compare_exchange_n(&j->mm.lo, &cur, mm.lo, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
    }
    cur = __atomic_load_n(&j->mm.hi, __ATOMIC_RELAXED);
    while (mm.hi > cur && !__atomic_compare_exchange_n(&j->mm.hi, &cur, mm.hi, 0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) {
    }
}

/* values: rows of `inner` (a multiple of 8) elements of `dtype`; out: contiguous int32,
 * inner / 8 words per row. *lo / *hi receive the smallest and largest value (unchanged
 * when there are none). */
NPQ_API int npq_pack_int4(const void *values, int dtype, int64_t extent, int nd, const int64_t *lead_sizes,
                          const int64_t *lead_strides, int64_t inner, int64_t inner_stride, int32_t *out, int64_t *lo,
                          int64_t *hi, int nthreads) {
    i4_pack_job j;
    int64_t rows;
    if (dtype < NPQ_I8 || dtype > NPQ_I64 || inner % 8 != 0 || !lo || !hi) return NPQ_ERR_ARG;
    int rc = i4_layout(&j.lay, nd, lead_sizes, lead_strides, inner, inner_stride, extent, &rows);
    if (rc != NPQ_OK) return rc;
    j.words_per_row = inner / 8;
    if (rows * j.words_per_row == 0) return NPQ_OK;
    if (!values || !out) return NPQ_ERR_ARG;
    j.v = (const char *)values;
    j.dtype = dtype;
    j.impl = (const i4_pack_impl *)npq_pick(&npq_kernel_int4_pack)->impl;
    j.out = out;
    j.mm.lo = INT64_MAX;
    j.mm.hi = INT64_MIN;
    npq_advise_hugepages(out, (size_t)(rows * j.words_per_row * 4));
    npq_parallel_for_dynamic(rows * j.words_per_row, I4_GRAIN_WORDS, 2 * I4_GRAIN_WORDS, nthreads, i4_pack_range, &j);
    *lo = j.mm.lo;
    *hi = j.mm.hi;
    return NPQ_OK;
}

/* ---- the variants, best first */
static const i4_unpack_fn i4_unpack_scalar_impl = i4_unpack_scalar;
static const i4_pack_impl i4_pack_scalar_impl = {NULL, NULL};
#if NPQ_X86
static const i4_unpack_fn i4_unpack_avx2_impl = i4_unpack_avx2;
static const i4_pack_impl i4_pack_avx2_impl = {i4_pack_i8_avx2, i4_pack_i32_avx2};
#endif

static const npq_variant i4_unpack_variants[] = {
#if NPQ_X86
    {"avx2", NPQ_ISA_AVX2, 0, &i4_unpack_avx2_impl},
#endif
    {"scalar", NPQ_ISA_SCALAR, 0, &i4_unpack_scalar_impl},
};
const npq_kernel npq_kernel_int4_unpack = NPQ_KERNEL("int4_unpack", i4_unpack_variants);

static const npq_variant i4_pack_variants[] = {
#if NPQ_X86
    {"avx2", NPQ_ISA_AVX2, 0, &i4_pack_avx2_impl},
#endif
    {"scalar", NPQ_ISA_SCALAR, 0, &i4_pack_scalar_impl},
};
const npq_kernel npq_kernel_int4_pack = NPQ_KERNEL("int4_pack", i4_pack_variants);
