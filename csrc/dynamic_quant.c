/* Per-token dynamic quantization (npu_dynamic_quant / npu_dynamic_quant_asymmetric, SPEC §3).
 *
 * Two passes per row, the row staying in L1/L2 between them:
 *   pass 1: xs = float32(x) [* smooth row, widened to float32 once per expert] stored to a per-thread
 *           float row buffer, row max/min,
 *           and a NaN flag (vmaxps/vminps drop NaNs, but the reference propagates them);
 *   scalar: scale / offset / 1/scale from max and min, exactly as reference.py orders the float ops;
 *   pass 2: y = clamp(rint(xs * (1/scale) [+ offset])), NaN -> 0, packed to int8 or 8 x int4 per int32.
 * Pass 2 has a "clean" fast path used when the row's bounds prove every value is finite and inside
 * int32: then rounding + saturating packs equal the general NaN-mask + float clamp path bit for bit.
 * Compiled with -ffp-contract=off: multiply and add stay separate roundings, as in the reference. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "npq.h"
#include "simd.h"

#define DQ_MAX_GROUPS 1024
#define DQ_CLEAN_BOUND 1.0e9 /* |v| below this: float->int32 conversion is exact, no NaN/inf possible */

typedef struct {
    const char *x;
    int dt, esize, nlead;
    int64_t shape[NPQ_MAX_LEAD], stride[NPQ_MAX_LEAD]; /* leading dims, strides in elements */
    int64_t rows, cols, col_stride;
    const char *smooth; /* [cols] or [ngroups, cols], contiguous, same dtype as x */
    const int32_t *gidx;
    int64_t ngroups;
    int8_t *y8;
    uint32_t *y4;
    float *scale, *offset; /* offset NULL: symmetric */
    int int4;
    const struct dyn_impl *impl; /* the picked variant's passes */
    atomic_int error;
} dq_ctx;

/* ------------------------------------------------------------------ scalar pieces */

static inline float dq_load1(const void *p, int dt, int64_t i) {
    if (dt == NPQ_F32) return ((const float *)p)[i];
    if (dt == NPQ_F16) return npq_f16_to_f32(((const uint16_t *)p)[i]);
    return npq_bf16_to_f32(((const uint16_t *)p)[i]);
}

/* Row bounds accumulated by pass 1. */
typedef struct {
    float hi, lo;
    int nan;
} dq_bounds;

/* s: the smooth row already in float32 (converted once per expert), or NULL. */
static void pass1_scalar_from(const void *x, const float *s, int dt, int64_t i, int64_t n, float *buf, dq_bounds *b) {
    float hi = b->hi, lo = b->lo;
    int nan = b->nan;
    for (; i < n; i++) {
        float v = dq_load1(x, dt, i);
        if (s) v = v * s[i];
        if (buf) buf[i] = v;
        if (v > hi) hi = v;
        if (v < lo) lo = v;
        nan |= v != v;
    }
    b->hi = hi;
    b->lo = lo;
    b->nan = nan;
}

static void pass1_scalar(const void *x, const float *s, int dt, int64_t n, float *buf, dq_bounds *b) {
    b->hi = -INFINITY;
    b->lo = INFINITY;
    b->nan = 0;
    pass1_scalar_from(x, s, dt, 0, n, buf, b);
}

/* Per-row parameters, in reference.py's order of float32 operations. */
typedef struct {
    float scale, offset, inv;
    int clean;
} dq_params;

static dq_params row_params(dq_bounds b, int64_t n, int asym, int int4) {
    dq_params p;
    float hi = b.hi, lo = b.lo;
    if (n == 0) hi = lo = 0.0f; /* an empty row counts as all zeros */
    if (b.nan) hi = lo = NAN;
    const float dmax = int4 ? 7.0f : 127.0f;
    if (asym) {
        float s = (hi - lo) / (int4 ? 15.0f : 255.0f);
        if (s < 1e-12f) s = 1e-12f; /* clamp_min: NaN stays NaN */
        p.scale = s;
        p.offset = dmax - hi / s;
        p.inv = 1.0f / s;
    } else {
        float amax = hi > -lo ? hi : -lo; /* == max|xs|; NaN row: -lo is NaN */
        if (amax == 0.0f) amax = 0.0f;    /* +0, as abs().amax() gives */
        float s = amax / dmax;
        p.scale = s;
        p.offset = 0.0f;
        p.inv = s == 0.0f ? 0.0f : 1.0f / s;
    }
    /* Canonical NaN (0x7FC00000) for the stored scale / offset, as the reference does. */
    if (p.scale != p.scale) p.scale = NAN;
    if (p.offset != p.offset) p.offset = NAN;
    double m = fabs((double)hi) > fabs((double)lo) ? fabs((double)hi) : fabs((double)lo);
    p.clean = !b.nan && isfinite(hi) && isfinite(lo) && isfinite(p.inv) && isfinite(p.offset) &&
              m * (double)p.inv + fabs((double)p.offset) < DQ_CLEAN_BOUND;
    return p;
}

static inline int32_t quant1(float v, float inv, float off, int asym, float qlo, float qhi) {
    v = v * inv;
    if (asym) v = v + off;
    if (v != v) return 0;
    /* Clamping to integer bounds commutes with rounding; then adding and removing 1.5 * 2^23 rounds
     * half to even (the default rounding mode, like torch.round) without a libm call. */
    if (v < qlo) v = qlo;
    if (v > qhi) v = qhi;
    v = (v + 12582912.0f) - 12582912.0f;
    return (int32_t)v;
}

static void pass2_scalar_from(const float *src, int64_t i, int64_t n, dq_params p, int asym, int int4, void *out) {
    const float qlo = int4 ? -8.0f : -128.0f, qhi = int4 ? 7.0f : 127.0f;
    if (!int4) {
        int8_t *y = (int8_t *)out;
        for (; i < n; i++) y[i] = (int8_t)quant1(src[i], p.inv, p.offset, asym, qlo, qhi);
        return;
    }
    uint32_t *y = (uint32_t *)out;
    for (; i < n; i += 8) { /* n is a multiple of 8 in int4 mode */
        uint32_t word = 0;
        for (int j = 0; j < 8; j++)
            word |= ((uint32_t)quant1(src[i + j], p.inv, p.offset, asym, qlo, qhi) & 0xFu) << (4 * j);
        y[i / 8] = word;
    }
}

static void pass2_scalar(const float *src, int64_t n, dq_params p, int asym, int int4, void *out) {
    pass2_scalar_from(src, 0, n, p, asym, int4, out);
}

#if NPQ_X86
/* ------------------------------------------------------------------ SIMD: AVX2 + FMA + F16C, AVX-512
 * Pass 1 differs between the ISAs only in vector width: written once (DQ_PASS1, simd.h's mapping).
 * Pass 2 packs and narrows differently on each, so it has one body per ISA. */

#define DQ_ALWAYS_INLINE __attribute__((always_inline)) inline

/* pass1_<ISA> and pass2_<ISA>: call the always-inline bodies with dtype / asym / int4 / clean
 * as constants, so each combination is compiled into its own loop. */
#define DQ_ENTRY_POINTS(ISA, TARGET)                                                                             \
    TARGET static void pass1_##ISA(const void *x, const float *s, int dt, int64_t n, float *buf, dq_bounds *b) { \
        switch (dt) {                                                                                            \
        case NPQ_F16: pass1_##ISA##_body(x, s, NPQ_F16, n, buf, b); break;                                         \
        case NPQ_BF16: pass1_##ISA##_body(x, s, NPQ_BF16, n, buf, b); break;                                       \
        default: pass1_##ISA##_body(x, s, NPQ_F32, n, buf, b); break;                                             \
        }                                                                                                        \
    }                                                                                                            \
    TARGET static void pass2_##ISA(const float *src, int64_t n, dq_params p, int asym, int int4, void *out) {    \
        switch ((asym != 0) * 4 + (int4 != 0) * 2 + (p.clean != 0)) {                                            \
        case 0: pass2_##ISA##_body(src, n, p, 0, 0, 0, out); break;                                              \
        case 1: pass2_##ISA##_body(src, n, p, 0, 0, 1, out); break;                                              \
        case 2: pass2_##ISA##_body(src, n, p, 0, 1, 0, out); break;                                              \
        case 3: pass2_##ISA##_body(src, n, p, 0, 1, 1, out); break;                                              \
        case 4: pass2_##ISA##_body(src, n, p, 1, 0, 0, out); break;                                              \
        case 5: pass2_##ISA##_body(src, n, p, 1, 0, 1, out); break;                                              \
        case 6: pass2_##ISA##_body(src, n, p, 1, 1, 0, out); break;                                              \
        default: pass2_##ISA##_body(src, n, p, 1, 1, 1, out); break;                                             \
        }                                                                                                        \
    }

/* Pass 1, written once for every width: the row (times the smooth scales) into buf, its bounds
 * and whether it holds a NaN. Two vectors per step, then one, then the scalar tail. */
#define DQ_PASS1(ISA, TARGET)                                                                                 \
    TARGET static DQ_ALWAYS_INLINE void pass1_##ISA##_body(const void *x, const float *s, const int dt,         \
                                                           int64_t n, float *buf, dq_bounds *b) {               \
        const int W = SIMD_T(ISA, W);                                                                         \
        SIMD_T(ISA, F) hi0 = SIMD(ISA, set1)(-INFINITY), hi1 = hi0, lo0 = SIMD(ISA, set1)(INFINITY), lo1 = lo0;  \
        SIMD_T(ISA, M) nan = SIMD(ISA, mnone)();                                                              \
        int64_t i = 0;                                                                                        \
        for (; i + 2 * W <= n; i += 2 * W) {                                                                  \
            SIMD_T(ISA, F) v0 = SIMD(ISA, load_x)(x, i, dt), v1 = SIMD(ISA, load_x)(x, i + W, dt);            \
            if (s) {                                                                                          \
                v0 = SIMD(ISA, mul)(v0, SIMD(ISA, load)(s + i));                                              \
                v1 = SIMD(ISA, mul)(v1, SIMD(ISA, load)(s + i + W));                                          \
            }                                                                                                 \
            if (buf) {                                                                                        \
                SIMD(ISA, store)(buf + i, v0);                                                                \
                SIMD(ISA, store)(buf + i + W, v1);                                                            \
            }                                                                                                 \
            hi0 = SIMD(ISA, max)(hi0, v0);                                                                    \
            hi1 = SIMD(ISA, max)(hi1, v1);                                                                    \
            lo0 = SIMD(ISA, min)(lo0, v0);                                                                    \
            lo1 = SIMD(ISA, min)(lo1, v1);                                                                    \
            nan = SIMD(ISA, mor)(nan, SIMD(ISA, mor)(SIMD(ISA, unord)(v0), SIMD(ISA, unord)(v1)));            \
        }                                                                                                     \
        for (; i + W <= n; i += W) {                                                                          \
            SIMD_T(ISA, F) v0 = SIMD(ISA, load_x)(x, i, dt);                                                  \
            if (s) v0 = SIMD(ISA, mul)(v0, SIMD(ISA, load)(s + i));                                           \
            if (buf) SIMD(ISA, store)(buf + i, v0);                                                           \
            hi0 = SIMD(ISA, max)(hi0, v0);                                                                    \
            lo0 = SIMD(ISA, min)(lo0, v0);                                                                    \
            nan = SIMD(ISA, mor)(nan, SIMD(ISA, unord)(v0));                                                  \
        }                                                                                                     \
        b->hi = SIMD(ISA, hmax)(SIMD(ISA, max)(hi0, hi1));                                                    \
        b->lo = SIMD(ISA, hmin)(SIMD(ISA, min)(lo0, lo1));                                                    \
        b->nan = SIMD(ISA, many)(nan);                                                                        \
        pass1_scalar_from(x, s, dt, i, n, buf, b);                                                            \
    }

DQ_PASS1(avx2, NPQ_TARGET_AVX2)
DQ_PASS1(avx512, NPQ_TARGET_AVX512)

/* ---- pass 2, AVX2 */

/* 8 floats -> 8 int32 quantized values (not yet clamped in the clean path: packs saturate). */
NPQ_TARGET_AVX2 static DQ_ALWAYS_INLINE __m256i quant8(const float *src, __m256 inv, __m256 off, const int asym,
                                                      const int clean, __m256 qlo, __m256 qhi) {
    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(src), inv);
    if (asym) v = _mm256_add_ps(v, off);
    v = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    if (!clean) {
        v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q)); /* NaN -> +0 */
        v = _mm256_min_ps(_mm256_max_ps(v, qlo), qhi);
    }
    return _mm256_cvttps_epi32(v);
}

/* 32 int32 (4 vectors) -> 32 int8 in element order, saturating. */
NPQ_TARGET_AVX2 static inline __m256i pack32(__m256i q0, __m256i q1, __m256i q2, __m256i q3) {
    __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
    return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* 32 int8 already in [-8, 7] -> 16 bytes = 4 int32 words of 8 nibbles, element 0 lowest. */
NPQ_TARGET_AVX2 static inline __m128i nibbles32(__m256i b) {
    __m256i nib = _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
    __m256i pairs = _mm256_maddubs_epi16(nib, _mm256_set1_epi16(0x1001)); /* lo + 16 * hi, in [0, 255] */
    return _mm_packus_epi16(_mm256_castsi256_si128(pairs), _mm256_extracti128_si256(pairs, 1));
}

NPQ_TARGET_AVX2 static DQ_ALWAYS_INLINE void pass2_avx2_body(const float *src, int64_t n, dq_params p, const int asym,
                                                             const int int4, const int clean, void *out) {
    const __m256 inv = _mm256_set1_ps(p.inv), off = _mm256_set1_ps(p.offset);
    const __m256 qlo = _mm256_set1_ps(int4 ? -8.0f : -128.0f), qhi = _mm256_set1_ps(int4 ? 7.0f : 127.0f);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i b = pack32(quant8(src + i, inv, off, asym, clean, qlo, qhi),
                           quant8(src + i + 8, inv, off, asym, clean, qlo, qhi),
                           quant8(src + i + 16, inv, off, asym, clean, qlo, qhi),
                           quant8(src + i + 24, inv, off, asym, clean, qlo, qhi));
        if (int4) {
            b = _mm256_min_epi8(_mm256_max_epi8(b, _mm256_set1_epi8(-8)), _mm256_set1_epi8(7));
            _mm_storeu_si128((__m128i *)((uint32_t *)out + i / 8), nibbles32(b));
        } else {
            _mm256_storeu_si256((__m256i *)((int8_t *)out + i), b);
        }
    }
    pass2_scalar_from(src, i, n, p, asym, int4, out);
}

DQ_ENTRY_POINTS(avx2, NPQ_TARGET_AVX2)

/* ---- pass 2, AVX-512 (F/BW/VL/DQ) */

/* 16 floats -> 16 int8 (saturating), in element order. */
NPQ_TARGET_AVX512 static DQ_ALWAYS_INLINE __m128i quant16(const float *src, __m512 inv, __m512 off, const int asym,
                                                         const int clean, __m512 qlo, __m512 qhi) {
    __m512 v = _mm512_mul_ps(_mm512_loadu_ps(src), inv);
    if (asym) v = _mm512_add_ps(v, off);
    __m512i q;
    if (clean) {
        q = _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
        v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        v = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v); /* NaN -> +0 */
        v = _mm512_min_ps(_mm512_max_ps(v, qlo), qhi);
        q = _mm512_cvttps_epi32(v);
    }
    return _mm512_cvtsepi32_epi8(q);
}

NPQ_TARGET_AVX512 static DQ_ALWAYS_INLINE void pass2_avx512_body(const float *src, int64_t n, dq_params p,
                                                                 const int asym, const int int4, const int clean,
                                                                 void *out) {
    const __m512 inv = _mm512_set1_ps(p.inv), off = _mm512_set1_ps(p.offset);
    const __m512 qlo = _mm512_set1_ps(int4 ? -8.0f : -128.0f), qhi = _mm512_set1_ps(int4 ? 7.0f : 127.0f);
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m128i a = quant16(src + i, inv, off, asym, clean, qlo, qhi);
        __m128i c = quant16(src + i + 16, inv, off, asym, clean, qlo, qhi);
        if (int4) {
            __m256i b = _mm256_inserti128_si256(_mm256_castsi128_si256(a), c, 1);
            b = _mm256_min_epi8(_mm256_max_epi8(b, _mm256_set1_epi8(-8)), _mm256_set1_epi8(7));
            _mm_storeu_si128((__m128i *)((uint32_t *)out + i / 8), nibbles32(b));
        } else {
            _mm_storeu_si128((__m128i *)((int8_t *)out + i), a);
            _mm_storeu_si128((__m128i *)((int8_t *)out + i + 16), c);
        }
    }
    pass2_scalar_from(src, i, n, p, asym, int4, out);
}

DQ_ENTRY_POINTS(avx512, NPQ_TARGET_AVX512)
#endif /* NPQ_X86 */

/* ------------------------------------------------------------------ driver */

typedef void (*pass1_fn)(const void *, const float *, int, int64_t, float *, dq_bounds *);
typedef void (*pass2_fn)(const float *, int64_t, dq_params, int, int, void *);

/* A variant's entry points (the table ends the file). */
typedef struct dyn_impl {
    pass1_fn pass1; /* row bounds (and the float row) */
    pass2_fn pass2; /* quantize the row */
} dyn_impl;

static void dq_range(void *vctx, int64_t begin, int64_t end) {
    dq_ctx *c = (dq_ctx *)vctx;
    const pass1_fn p1 = c->impl->pass1;
    const pass2_fn p2 = c->impl->pass2;
    const int64_t cols = c->cols;
    const int gather = c->col_stride != 1 && cols > 1;
    /* fp32 rows without smoothing are quantized in place; everything else goes through a float row. */
    const int direct = c->dt == NPQ_F32 && !c->smooth && !gather;
    const size_t fbytes = (size_t)((cols * 4 + 63) / 64 * 64);
    float *buf = NULL, *smooth_f32 = NULL;
    char *row_copy = NULL;
    if (!direct && cols > 0) {
        buf = (float *)aligned_alloc(64, fbytes);
        if (!buf) goto oom;
    }
    if (c->smooth && c->dt != NPQ_F32 && cols > 0) {
        smooth_f32 = (float *)aligned_alloc(64, fbytes);
        if (!smooth_f32) goto oom;
    }
    int64_t smooth_loaded = -1; /* expert whose smooth row smooth_f32 holds */
    if (gather && cols > 0) {
        row_copy = (char *)malloc((size_t)(cols * c->esize));
        if (!row_copy) goto oom;
    }

    /* Multi-index of row `begin` over the leading dims, then advanced like an odometer. */
    int64_t idx[NPQ_MAX_LEAD] = {0}, elem = 0, rem = begin;
    for (int d = c->nlead - 1; d >= 0; d--) {
        idx[d] = rem % c->shape[d];
        rem /= c->shape[d];
        elem += idx[d] * c->stride[d];
    }
    /* Expert of row `begin`: the first g with gidx[g] > begin (validated: gidx[E-1] == rows). */
    int64_t g = 0;
    if (c->gidx) {
        int64_t a = 0, z = c->ngroups - 1;
        while (a < z) {
            int64_t mid = (a + z) / 2;
            if (c->gidx[mid] > begin) z = mid; else a = mid + 1;
        }
        g = a;
    }
    const int asym = c->offset != NULL;
    for (int64_t r = begin; r < end; r++) {
        const char *xrow = c->x + elem * c->esize;
        if (gather) {
            for (int64_t j = 0; j < cols; j++)
                memcpy(row_copy + j * c->esize, xrow + j * c->col_stride * c->esize, (size_t)c->esize);
            xrow = row_copy;
        }
        const float *srow = NULL;
        if (c->smooth) {
            if (c->gidx)
                while (c->gidx[g] <= r) g++;
            const char *raw = c->smooth + g * cols * c->esize;
            if (!smooth_f32) {
                srow = (const float *)raw;
            } else {
                if (smooth_loaded != g) { /* exact widening, once per expert and thread */
                    dq_bounds unused;
                    p1(raw, NULL, c->dt, cols, smooth_f32, &unused);
                    smooth_loaded = g;
                }
                srow = smooth_f32;
            }
        }
        dq_bounds b;
        p1(xrow, srow, c->dt, cols, buf, &b);
        dq_params p = row_params(b, cols, asym, c->int4);
        c->scale[r] = p.scale;
        if (asym) c->offset[r] = p.offset;
        const float *src = direct ? (const float *)xrow : buf;
        if (c->int4)
            p2(src, cols, p, asym, 1, c->y4 + r * (cols / 8));
        else
            p2(src, cols, p, asym, 0, c->y8 + r * cols);
        for (int d = c->nlead - 1; d >= 0; d--) { /* next row */
            elem += c->stride[d];
            if (++idx[d] < c->shape[d]) break;
            elem -= idx[d] * c->stride[d];
            idx[d] = 0;
        }
    }
    free(buf);
    free(smooth_f32);
    free(row_copy);
    return;
oom:
    free(buf);
    free(smooth_f32);
    free(row_copy);
    atomic_store(&c->error, NPQ_ERR_NOMEM);
}

/* Quantizes every row of x (leading dims `lead_shape`/`lead_stride`, last dim `cols` with stride
 * `col_stride`; strides in elements, x dtype NPQ_F32, NPQ_F16 or NPQ_BF16; x_extent elements from
 * x are readable, and the layout is checked against it before anything is read).
 * smooth: NULL, [cols], or [ngroups, cols] with group_index (contiguous, x's dtype).
 * y: int8 [rows, cols], or with int4 != 0 int32 [rows, cols / 8]; scale (and offset, NULL for the
 * symmetric op) float32 [rows]. Returns an npq_status; argument errors (NPQ_ERR_ARG, NPQ_ERR_BOUNDS,
 * NPQ_ERR_GROUP) are found before any memory is read or written. */
NPQ_API int npq_dynamic_quant(const void *x, int x_dtype, int64_t x_extent, int nlead, const int64_t *lead_shape,
                              const int64_t *lead_stride, int64_t cols, int64_t col_stride, const void *smooth,
                              const int32_t *group_index, int64_t ngroups, void *y, float *scale, float *offset,
                              int int4, int nthreads) {
    if (x_dtype < NPQ_F32 || x_dtype > NPQ_BF16 || nlead < 0 || nlead > NPQ_MAX_LEAD || cols < 0 || col_stride < 0)
        return NPQ_ERR_ARG;
    if (int4 && cols % 8 != 0) return NPQ_ERR_ARG;
    npq_layout lay;
    int64_t rows;
    int rc = npq_layout_init(&lay, nlead, lead_shape, lead_stride, cols, col_stride, &rows);
    if (rc != NPQ_OK) return rc;
    if (rows == 0) return NPQ_OK;
    rc = npq_layout_check(&lay, x_extent);
    if (rc != NPQ_OK) return rc;
    if (!scale || (cols > 0 && (!x || !y))) return NPQ_ERR_ARG; /* empty tensors may have NULL data */
    if (group_index) {
        if (!smooth || ngroups < 1 || ngroups > DQ_MAX_GROUPS) return NPQ_ERR_GROUP;
        int32_t prev = 0;
        for (int64_t i = 0; i < ngroups; i++) {
            if (group_index[i] < prev || group_index[i] > rows) return NPQ_ERR_GROUP;
            prev = group_index[i];
        }
        if (prev != rows) return NPQ_ERR_GROUP;
    }
    dq_ctx c;
    memset(&c, 0, sizeof c);
    c.x = (const char *)x;
    c.dt = x_dtype;
    c.esize = x_dtype == NPQ_F32 ? 4 : 2;
    c.nlead = nlead;
    for (int d = 0; d < nlead; d++) {
        c.shape[d] = lead_shape[d];
        c.stride[d] = lead_stride[d];
    }
    c.rows = rows;
    c.cols = cols;
    c.col_stride = col_stride;
    c.smooth = (const char *)smooth;
    c.gidx = group_index;
    c.ngroups = ngroups;
    c.y8 = (int8_t *)y;
    c.y4 = (uint32_t *)y;
    c.scale = scale;
    c.offset = offset;
    c.int4 = int4 != 0;
    c.impl = (const dyn_impl *)npq_pick(&npq_kernel_dynamic_quant)->impl;
    atomic_init(&c.error, NPQ_OK);
    int64_t grain = cols > 0 ? 16384 / cols : 16384;
    npq_parallel_for(rows, grain > 0 ? grain : 1, nthreads, dq_range, &c);
    return atomic_load(&c.error);
}

/* ---- the variants, best first */
static const dyn_impl dyn_scalar = {pass1_scalar, pass2_scalar};
#if NPQ_X86
static const dyn_impl dyn_avx512 = {pass1_avx512, pass2_avx512}, dyn_avx2 = {pass1_avx2, pass2_avx2};
#endif

static const npq_variant dyn_variants[] = {
#if NPQ_X86
    {"avx512", NPQ_ISA_AVX512, 0, &dyn_avx512},
    {"avx2", NPQ_ISA_AVX2, 0, &dyn_avx2},
#endif
    {"scalar", NPQ_ISA_SCALAR, 0, &dyn_scalar},
};
const npq_kernel npq_kernel_dynamic_quant = NPQ_KERNEL("dynamic_quant", dyn_variants);
