/* Exact int4 x int8 linear (the w4a8 layer): int8 activation rows times a packed int4 weight with
 * per-group scale and offset, integer products accumulated exactly per group, a float32 epilogue in
 * a fixed order. Never writes a float weight tile.
 *
 * Prototype (npq.h, "gemm_s4.c" block):
 *
 *   NPQ_API int npq_gemm_s4(const npq_gemm_s4_args *a, int nthreads);
 *
 *   for r < m, j < n:
 *     a_g   = sum_{kk in group g, kk < k} x[r, kk] * w[j, kk]        exact int32 (|a_g| <= 1024 * G)
 *     s_g   = sum_{kk in group g, kk < k} x[r, kk]                    exact int32
 *     f     = +0
 *     for g = 0 .. groups - 1, in order, each step one IEEE float32 operation (round half to even):
 *         t = float(a_g) + offset[g, j] * float(s_g);   f = f + t * scale[g, j]
 *     y     = f * x_scale[r]  (+ bias[j])
 *     out[r, j] = cast(y)     (float32 as is, float16 / bfloat16 by npq.h's exact conversions)
 *
 * i.e. sum_kk x * (w + offset) * scale per group, as npu_anti_quant dequantizes the weight
 * ((w + offset) * scale), with the x_scale of a symmetric per-row quantization of the activations.
 *
 * Arguments: x int8 (m, k), row r at x + r * x_row_stride, unit column stride; x_scale m float32.
 * w: n rows of `words` int32 words of 8 signed int4 along K (the w4a16 layout of gemv_int4.c: element
 * kk is bits 4 * (kk % 8) .. + 3 of word kk / 8, sign-extended), row j at w + j * w_row_stride;
 * w_extent int32 words readable. k <= 8 * words; group size G = 8 * words / groups (words % groups
 * == 0); columns past k (padding) are never used: they count as x = 0. scale / offset: contiguous
 * (groups, n) float32 (the per-group layout of torch_npu's antiquant_scale); offset may be NULL
 * (+0: the term is then +0 * float(s_g), still evaluated, so the order above holds). bias: NULL or
 * n float32. out: contiguous (m, n) of out_dtype NPQ_F32 / NPQ_F16 / NPQ_BF16.
 *
 * Status: NPQ_ERR_DTYPE for another out_dtype; NPQ_ERR_ARG for negative sizes or strides, groups
 * <= 0, words % groups != 0, k > 8 * words, overflowing sizes; NPQ_ERR_BOUNDS when the weight rows
 * reach past w_extent; NPQ_ERR_NULL for a missing pointer the call needs; NPQ_ERR_NOMEM. All checked
 * before any memory is touched; m = 0 or n = 0 is a no-op, k = 0 gives cast(+0 * x_scale (+ bias)).
 *
 * Variants (s4_variants, the table at the end; npq_pick chooses the row, and the AVX2 row runs its
 * block kernels only when G % 32 == 0, else the scalar ones): the integer sums are exact, so every variant's a_g and s_g are the same
 * integers, and every variant runs the epilogue's float operations in the order above: results are
 * bit-identical for every ISA, thread count and m.
 *   avx2   (G % 32 == 0). Every kernel uses u = nibble ^ 8 = v + 8 in [0, 15], an unsigned byte, so
 *          vpmaddubsw (u8 x s8 pair sums) cannot saturate (|pair| <= 2 * 15 * 128 = 3840), and
 *          sum x * v = sum x * u - 8 s_g, exact.
 *          Prefill (m > 8): outputs in lanes (s4_panel_tile_avx2). Panels of 16 weight rows are
 *          repacked per thread into u bytes, 4 columns of K per column of output; an activation
 *          quad broadcast times one 64-byte quad row gives 16 outputs' pair sums, summed in int16
 *          over 32 columns from a start of -8 x the lanes' activation sums (exact modulo 2^16, and
 *          the final |sum x * v| <= 16384 fits), then widened once by vpmaddwd: 32 products per
 *          multiply, twice the exact int8 x int8 GEMM's (gemm_s8.c), whose operands would saturate.
 *          Decode (m <= 8), G == 32 or G % 64 == 0: the packed words read in place, 64 weights in
 *          9 vector operations, 8 weight rows' sums reduced across lanes by vphaddd
 *          (s4_block_avx2_whole); other G: the same with nibbles widened to int16 and vpmaddwd
 *          (s4_block_avx2_direct).
 *   scalar (any G): the definition, plain C.
 * Work is split over blocks of 8 weight rows (decode, scalar) or of 16 weight rows x 64 activation
 * rows (prefill) with the dynamic split of runtime.c.
 */
#include <stdlib.h>

#include "npq.h"

#define S4_JB 8       /* weight rows per block: one AVX2 vector of outputs */
#define S4_RB 64      /* activation rows per work item (prefill) */
#define S4_CHUNK 32   /* columns per 16-byte piece of a packed row */
#define S4P_COLS 16   /* prefill: output columns per repacked panel (two vectors of 8) */
#define S4P_ROWS 4    /* prefill: activation rows per micro-tile */
#define S4P_RB 64     /* prefill: activation rows per work item */

typedef struct {
    const npq_gemm_s4_args *a;
    int64_t gsize, chunks_per_group, jblocks, rblocks, kp;
    const int16_t *xs;   /* avx2: (m, kp) int16 in slot order */
    const int8_t *xb;    /* avx2 decode (s4_block_avx2_whole): (m, kp64) int8, per 64 columns 32 even then 32 odd */
    int64_t kp64;        /* kp rounded up to 64 */
    const int32_t *xsum; /* (m, groups) */
    const int8_t *xp;     /* avx2 prefill: (m, kp) int8, zero-padded */
    const int32_t *xstart; /* avx2 prefill: (m, kp / 32) start words (s4_prepare_panel_x) */
    int64_t jpanels;      /* avx2 prefill: panels of S4P_COLS columns */
} s4_job;

/* ---------------------------------------------------------------- shared helpers */

static inline int s4_nibble(const int32_t *row, int64_t kk) {
    const uint32_t word = (uint32_t)row[kk >> 3];
    const int v = (int)((word >> (4 * (kk & 7))) & 0xF);
    return v >= 8 ? v - 16 : v;
}

static inline void s4_store(const npq_gemm_s4_args *a, int64_t r, int64_t j, float y) {
    const int64_t o = r * a->n + j;
    if (a->out_dtype == NPQ_F32)
        ((float *)a->out)[o] = y;
    else if (a->out_dtype == NPQ_F16)
        ((uint16_t *)a->out)[o] = npq_f32_to_f16(y);
    else
        ((uint16_t *)a->out)[o] = npq_f32_to_bf16(y);
}

/* Exact per-group activation sums s_g for every row (shared by the variants). */
static void s4_row_sums(const npq_gemm_s4_args *a, int64_t gsize, int32_t *xsum) {
    for (int64_t r = 0; r < a->m; r++) {
        const int8_t *xr = a->x + r * a->x_row_stride;
        for (int64_t g = 0; g < a->groups; g++) {
            int32_t s = 0;
            const int64_t k0 = g * gsize, k1 = k0 + gsize < a->k ? k0 + gsize : a->k;
            for (int64_t kk = k0; kk < k1; kk++) s += xr[kk];
            xsum[r * a->groups + g] = s;
        }
    }
}

/* ---------------------------------------------------------------- scalar (the order's definition) */

static void s4_block_scalar(const s4_job *J, int64_t r0, int64_t r1, int64_t j0, int64_t j1) {
    const npq_gemm_s4_args *a = J->a;
    for (int64_t r = r0; r < r1; r++) {
        const int8_t *xr = a->x + r * a->x_row_stride;
        for (int64_t j = j0; j < j1; j++) {
            const int32_t *wr = a->w + j * a->w_row_stride;
            float f = 0.0f;
            for (int64_t g = 0; g < a->groups; g++) {
                int32_t acc = 0;
                const int64_t k0 = g * J->gsize, k1 = k0 + J->gsize < a->k ? k0 + J->gsize : a->k;
                for (int64_t kk = k0; kk < k1; kk++) acc += (int32_t)xr[kk] * s4_nibble(wr, kk);
                const float off = a->offset ? a->offset[g * a->n + j] : 0.0f;
                const float t = (float)acc + off * (float)J->xsum[r * a->groups + g];
                f = f + t * a->scale[g * a->n + j];
            }
            float y = f * a->x_scale[r];
            if (a->bias) y = y + a->bias[j];
            s4_store(a, r, j, y);
        }
    }
}

/* ---------------------------------------------------------------- AVX2 */
#if NPQ_X86

/* x rows -> int16 scratch in slot order (per 32 columns: even columns, then odd), padding +0. */
static void s4_prepare_x(const npq_gemm_s4_args *a, int64_t kp, int16_t *xs) {
    for (int64_t r = 0; r < a->m; r++) {
        const int8_t *xr = a->x + r * a->x_row_stride;
        int16_t *dst = xs + r * kp;
        for (int64_t c0 = 0; c0 < kp; c0 += S4_CHUNK)
            for (int i = 0; i < 16; i++) {
                const int64_t e = c0 + 2 * i, o = e + 1;
                dst[c0 + i] = e < a->k ? xr[e] : 0;
                dst[c0 + 16 + i] = o < a->k ? xr[o] : 0;
            }
    }
}

/* 8 vectors of 8 int32 partial sums, the two 128-bit halves kept apart: lane jj of lo = total of lanes
 * 0-3 of p[jj] (columns 0-31 of a 64-column chunk), of hi = lanes 4-7 (columns 32-63). */
NPQ_TARGET_AVX2 static inline void s4_reduce8_halves(const __m256i p[8], __m256i *lo, __m256i *hi) {
    const __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
    const __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
    const __m256i h0123 = _mm256_hadd_epi32(h01, h23), h4567 = _mm256_hadd_epi32(h45, h67);
    /* lane moves by insert / extract: vperm2i128 is 8 micro-ops on Zen 1-class cores, these 1-2 */
    *lo = _mm256_inserti128_si256(h0123, _mm256_castsi256_si128(h4567), 1);
    *hi = _mm256_inserti128_si256(h4567, _mm256_extracti128_si256(h0123, 1), 0);
}

/* 8 vectors of 16 int16 -> one: lane jj of its low half = total (modulo 2^16) of the low 8 lanes of
 * p[jj], lane 8 + jj = of its high 8 lanes. */
NPQ_TARGET_AVX2 static inline __m256i s4_reduce8_epi16(const __m256i p[8]) {
    const __m256i h01 = _mm256_hadd_epi16(p[0], p[1]), h23 = _mm256_hadd_epi16(p[2], p[3]);
    const __m256i h45 = _mm256_hadd_epi16(p[4], p[5]), h67 = _mm256_hadd_epi16(p[6], p[7]);
    return _mm256_hadd_epi16(_mm256_hadd_epi16(h01, h23), _mm256_hadd_epi16(h45, h67));
}

/* 8 vectors of 8 int32 partial sums -> one vector of their 8 totals (lane jj = total of p[jj]). */
NPQ_TARGET_AVX2 static inline __m256i s4_reduce8(const __m256i p[8]) {
    __m256i lo, hi;
    s4_reduce8_halves(p, &lo, &hi);
    return _mm256_add_epi32(lo, hi);
}

/* One group's epilogue step on 8 outputs: f + (acc + offset * s_g) * scale, as the scalar order. */
NPQ_TARGET_AVX2 static inline __m256 s4_step_avx2(const s4_job *J, __m256i acci, int64_t g, int64_t j0, int32_t xsum,
                                                  __m256 f) {
    const npq_gemm_s4_args *a = J->a;
    const int64_t n = a->n;
    __m256 s, o;
    if (j0 + S4_JB <= n) {
        s = _mm256_loadu_ps(a->scale + g * n + j0);
        o = a->offset ? _mm256_loadu_ps(a->offset + g * n + j0) : _mm256_setzero_ps();
    } else { /* a partial last block: padding lanes repeat the last column and are never stored */
        _Alignas(32) float sp[S4_JB], op[S4_JB];
        for (int jj = 0; jj < S4_JB; jj++) {
            const int64_t j = j0 + jj < n ? j0 + jj : n - 1;
            sp[jj] = a->scale[g * n + j];
            op[jj] = a->offset ? a->offset[g * n + j] : 0.0f;
        }
        s = _mm256_load_ps(sp), o = _mm256_load_ps(op);
    }
    const __m256 t = _mm256_add_ps(_mm256_cvtepi32_ps(acci), _mm256_mul_ps(o, _mm256_set1_ps((float)xsum)));
    return _mm256_add_ps(f, _mm256_mul_ps(t, s));
}

/* y = f * x_scale[r] (+ bias), cast, stored to out[r, j0 .. j0 + 7] (those inside n). */
NPQ_TARGET_AVX2 static inline void s4_finish_avx2(const s4_job *J, int64_t r, int64_t j0, __m256 f) {
    const npq_gemm_s4_args *a = J->a;
    const int64_t n = a->n;
    const int full = j0 + S4_JB <= n;
    __m256 y = _mm256_mul_ps(f, _mm256_set1_ps(a->x_scale[r]));
    if (a->bias) {
        if (full) {
            y = _mm256_add_ps(y, _mm256_loadu_ps(a->bias + j0));
        } else {
            _Alignas(32) float bp[S4_JB];
            for (int jj = 0; jj < S4_JB; jj++) bp[jj] = a->bias[j0 + jj < n ? j0 + jj : n - 1];
            y = _mm256_add_ps(y, _mm256_load_ps(bp));
        }
    }
    if (full && a->out_dtype == NPQ_F32) {
        _mm256_storeu_ps((float *)a->out + r * n + j0, y);
    } else if (full && a->out_dtype == NPQ_F16) {
        _mm_storeu_si128((__m128i *)((uint16_t *)a->out + r * n + j0),
                         _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    } else if (full && a->out_dtype == NPQ_BF16) {
        const __m256i b = npq_bf16_bits_avx2(y, _mm256_set1_epi32(npq_bf16_nan));
        const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
        _mm_storeu_si128((__m128i *)((uint16_t *)a->out + r * n + j0), packed);
    } else {
        _Alignas(32) float yv[S4_JB];
        _mm256_store_ps(yv, y);
        for (int64_t jj = 0; jj < n - j0 && jj < S4_JB; jj++) s4_store(a, r, j0 + jj, yv[jj]);
    }
}

/* Few activation rows (decode): the packed words read where they lie and widened in registers,
 * row by row (a block's 8 weight rows stay in L1 across the activation rows). */
NPQ_TARGET_AVX2 static void s4_block_avx2_direct(const s4_job *J, int64_t r0, int64_t r1, int64_t j0) {
    const npq_gemm_s4_args *a = J->a;
    const int64_t kp = J->kp, cpg = J->chunks_per_group, n = a->n;
    const int32_t *wr[S4_JB];
    static const int32_t zeros[4] = {0, 0, 0, 0}; /* rows past n: lanes computed, never stored */
    const __m256i mask = _mm256_set1_epi16(0x0F);
    const __m128i flip = _mm_set1_epi8((char)0x88);
    for (int jj = 0; jj < S4_JB; jj++) wr[jj] = j0 + jj < n ? a->w + (j0 + jj) * a->w_row_stride : NULL;
    for (int64_t r = r0; r < r1; r++) {
        const int16_t *xr = J->xs + r * kp;
        __m256 f = _mm256_setzero_ps();
        for (int64_t g = 0; g < a->groups; g++) {
            __m256i p[S4_JB];
            for (int jj = 0; jj < S4_JB; jj++) p[jj] = _mm256_setzero_si256();
            for (int64_t c = g * cpg; c < (g + 1) * cpg; c++) {
                const __m256i xe = _mm256_load_si256((const __m256i *)(xr + c * S4_CHUNK));
                const __m256i xo = _mm256_load_si256((const __m256i *)(xr + c * S4_CHUNK + 16));
                for (int jj = 0; jj < S4_JB; jj++) {
                    const int32_t *src = wr[jj] ? wr[jj] + 4 * c : zeros;
                    /* u = v + 8 in [0, 15] (the stored nibble with its top bit flipped): an xor, a mask, a
                     * shift in place of sign-extending shifts; sum x * v = sum x * u - 8 s_g, exact */
                    const __m128i raw = _mm_xor_si128(_mm_loadu_si128((const __m128i *)src), flip);
                    const __m256i b = _mm256_cvtepu8_epi16(raw);
                    const __m256i lo = _mm256_and_si256(b, mask), hi = _mm256_srli_epi16(b, 4);
                    p[jj] = _mm256_add_epi32(p[jj], _mm256_madd_epi16(lo, xe));
                    p[jj] = _mm256_add_epi32(p[jj], _mm256_madd_epi16(hi, xo));
                }
            }
            const int32_t xs = J->xsum[r * a->groups + g];
            const __m256i acci = _mm256_sub_epi32(s4_reduce8(p), _mm256_set1_epi32(8 * xs));
            f = s4_step_avx2(J, acci, g, j0, xs, f);
        }
        s4_finish_avx2(J, r, j0, f);
    }
}

/* The (groups, n) parameters are `groups` streams n floats apart, too many for the hardware
 * prefetcher when n is large (the 49152-row head ran 3x slower than w8a8's): fetch the lines the
 * block `ahead` columns on will read (advice only; never past the end). */
NPQ_TARGET_AVX2 static inline void s4_prefetch_params(const npq_gemm_s4_args *a, int64_t j0, int64_t ahead) {
    if (j0 + ahead + S4_JB > a->n) return;
    for (int64_t g = 0; g < a->groups; g++) {
        _mm_prefetch((const char *)(a->scale + g * a->n + j0 + ahead), _MM_HINT_T0);
        if (a->offset) _mm_prefetch((const char *)(a->offset + g * a->n + j0 + ahead), _MM_HINT_T0);
    }
}

/* x rows -> int8 scratch for s4_block_avx2_whole: per 64 columns the 32 even ones, then the 32 odd
 * ones (the low and high nibbles of 32 packed bytes), padding 0. */
static void s4_prepare_x8(const npq_gemm_s4_args *a, int64_t kp64, int8_t *xb) {
    for (int64_t r = 0; r < a->m; r++) {
        const int8_t *xr = a->x + r * a->x_row_stride;
        int8_t *dst = xb + r * kp64;
        for (int64_t c0 = 0; c0 < kp64; c0 += 64)
            for (int i = 0; i < 32; i++) {
                const int64_t e = c0 + 2 * i, o = e + 1;
                dst[c0 + i] = e < a->k ? xr[e] : 0;
                dst[c0 + 32 + i] = o < a->k ? xr[o] : 0;
            }
    }
}


/* Decode (few activation rows), G == 32 or G % 64 == 0: a block of 8 weight rows (rows past n repeat
 * the last: lanes computed, never stored), 64 weights of a row per step. The stored nibbles with
 * their top bit flipped are u = v + 8 in [0, 15], unsigned, so vpmaddubsw (u8 x s8 pair sums,
 * saturating at int16) is exact here: |u0 x0 + u1 x1| <= 2 * 15 * 128 = 3840, and the sum of its two
 * results (even and odd columns) at most 7680; vpmaddwd by 1 widens to int32: 9 vector operations
 * per 64 weights. sum x * v = sum x * u - 8 s_g, exact; the epilogue is s4_step_avx2's, so results
 * are the scalar order's bits. g32 (a constant in each instance): G == 32, 64 columns are two whole
 * groups and the last odd group (kp % 64 == 32) runs after the loop; else G % 64 == 0, whole chunks
 * per group. */
NPQ_TARGET_AVX2 static inline __attribute__((always_inline)) void s4_block_avx2_whole(const s4_job *J, int64_t r0,
                                                                                      int64_t r1, int64_t j0,
                                                                                      const int g32) {
    const npq_gemm_s4_args *a = J->a;
    const int64_t whole = J->kp / 64, stride = a->w_row_stride, gsize = J->gsize;
    const int32_t *w0 = a->w + j0 * stride, *wr[S4_JB];
    for (int jj = 0; jj < S4_JB; jj++) wr[jj] = a->w + (j0 + jj < a->n ? j0 + jj : a->n - 1) * stride;
    /* The hardware prefetchers do not keep 8 interleaved rows in flight (gemm_s8.c's GEMV found the
     * same): stream the bytes from 1 KiB past this block's rows (dense rows: the next blocks). May
     * point past the weight; a prefetch is advice and never faults. */
    const char *pf = (const char *)(w0 + S4_JB * stride) + 1024;
    const __m256i flip = _mm256_set1_epi8((char)0x88), low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    s4_prefetch_params(a, j0, 128);
    for (int64_t r = r0; r < r1; r++) {
        const int8_t *xr = J->xb + r * J->kp64;
        const int32_t *xsum = J->xsum + r * a->groups;
        __m256 f = _mm256_setzero_ps();
        __m256i acc[S4_JB];
        for (int jj = 0; jj < S4_JB; jj++) acc[jj] = _mm256_setzero_si256();
        int64_t c = 0;
        for (; c < whole; c++) {
            const __m256i xe = _mm256_loadu_si256((const __m256i *)(xr + 64 * c));
            const __m256i xo = _mm256_loadu_si256((const __m256i *)(xr + 64 * c + 32));
            if (r == r0) /* a chunk reads 8 x 32 bytes: as many lines of the rows ahead, in flight */
                for (int i = 0; i < 4; i++) _mm_prefetch(pf + 256 * c + 64 * i, _MM_HINT_T0);
            __m256i p[S4_JB];
#pragma GCC unroll 8
            for (int jj = 0; jj < S4_JB; jj++) {
                const __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(wr[jj] + 8 * c)), flip);
                const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xe), _mm256_maddubs_epi16(hi, xo));
                p[jj] = g32 ? pairs : _mm256_madd_epi16(pairs, ones);
            }
            if (g32) { /* columns 0-31: group 2c, 32-63: group 2c + 1 */
                /* The int16 lanes summed in int16 (wrapping): h = sum x * u of each row and group modulo
                 * 2^16. a = sum x * v = sum x * u - 8 s_g lies in [-32512, 32768] (|x v| <= 1024, and
                 * -1024 needs v = 8 or x = 128), so a - 1 fits int16: h - (8 s_g + 1), sign-extended,
                 * plus 1 is a exactly. One multiply fewer per 64 weights than widening every row. */
                const __m256i h = s4_reduce8_epi16(p);
                const __m256i a1 = _mm256_sub_epi16(
                    h, _mm256_setr_m128i(_mm_set1_epi16((int16_t)(uint16_t)(8 * xsum[2 * c] + 1)),
                                         _mm_set1_epi16((int16_t)(uint16_t)(8 * xsum[2 * c + 1] + 1))));
                const __m256i one = _mm256_set1_epi32(1);
                const __m256i ga = _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(a1)), one);
                const __m256i gb = _mm256_add_epi32(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(a1, 1)), one);
                f = s4_step_avx2(J, ga, 2 * c, j0, xsum[2 * c], f);
                f = s4_step_avx2(J, gb, 2 * c + 1, j0, xsum[2 * c + 1], f);
                continue;
            }
            const int first = 64 * c % gsize == 0; /* G % 64 == 0: a group is whole chunks */
            for (int jj = 0; jj < S4_JB; jj++) acc[jj] = first ? p[jj] : _mm256_add_epi32(acc[jj], p[jj]);
            if (64 * (c + 1) % gsize == 0) {
                const int64_t g = 64 * c / gsize;
                f = s4_step_avx2(J, _mm256_sub_epi32(s4_reduce8(acc), _mm256_set1_epi32(8 * xsum[g])), g, j0, xsum[g], f);
            }
        }
        if (g32 && 2 * whole < a->groups) { /* the last group alone: 4 words per row, as 128-bit vectors */
            const __m128i xe = _mm_loadu_si128((const __m128i *)(xr + 64 * c));
            const __m128i xo = _mm_loadu_si128((const __m128i *)(xr + 64 * c + 32));
            __m256i p[S4_JB];
            for (int jj = 0; jj < S4_JB; jj++) {
                const __m128i v = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(wr[jj] + 8 * c)),
                                                _mm256_castsi256_si128(flip));
                const __m128i lo = _mm_and_si128(v, _mm256_castsi256_si128(low));
                const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), _mm256_castsi256_si128(low));
                const __m128i s = _mm_madd_epi16(_mm_add_epi16(_mm_maddubs_epi16(lo, xe), _mm_maddubs_epi16(hi, xo)),
                                                 _mm256_castsi256_si128(ones));
                p[jj] = _mm256_zextsi128_si256(s);
            }
            __m256i ga, gb;
            s4_reduce8_halves(p, &ga, &gb);
            f = s4_step_avx2(J, _mm256_sub_epi32(ga, _mm256_set1_epi32(8 * xsum[2 * c])), 2 * c, j0, xsum[2 * c], f);
        }
        s4_finish_avx2(J, r, j0, f);
    }
}

NPQ_TARGET_AVX2 static void s4_block_avx2_g32(const s4_job *J, int64_t r0, int64_t r1, int64_t j0) {
    s4_block_avx2_whole(J, r0, r1, j0, 1);
}
NPQ_TARGET_AVX2 static void s4_block_avx2_g64(const s4_job *J, int64_t r0, int64_t r1, int64_t j0) {
    s4_block_avx2_whole(J, r0, r1, j0, 0);
}

/* Prefill (m > 8, G % 32 == 0): outputs in lanes. A panel of 16 output columns is repacked once per
 * thread into unsigned bytes u = v + 8 in [0, 15], per 4 columns of K (a "quad") 16 columns x 4
 * bytes: pw[q][j][i] = u(j, 4q + i). vpmaddubsw (u8 x s8) of one quad row with an activation quad
 * broadcast to every column gives, per column, two int16 pair sums (|pair| <= 2 * 15 * 128 = 3840,
 * never saturating). They are summed with vpaddw over the 8 quads of 32 columns of K, starting from
 * -8 x the activation sums of the lanes' columns (the "start word"), so each int16 lane ends at
 * sum x * v over its 16 columns, |.| <= 16 * 128 * 8 = 16384: exact, since vpaddw wraps modulo
 * 2^16 and the final value fits. One vpmaddwd by 1 per 32 columns widens to int32; the epilogue
 * runs on 8 outputs per vector in the scalar order. 32 products per multiply, against 16 for the
 * int8 x int8 GEMM's exact int16 path (gemm_s8.c), where vpmaddubsw would saturate. */

/* x rows -> int8 (m, kp) zero-padded; per 32 columns the start word (int16 lo: -8 x the sum of x
 * over columns 0, 1 mod 4; hi: over 2, 3 mod 4); per group the sum s_g. */
NPQ_TARGET_AVX2 static void s4_prepare_panel_x(const npq_gemm_s4_args *a, int64_t kp, int64_t gsize, int8_t *xp,
                                               int32_t *start, int32_t *xsum) {
    const int64_t chunks = kp / 32, cpg = gsize / 32;
    const __m256i ones = _mm256_set1_epi8(1);
    for (int64_t r = 0; r < a->m; r++) {
        int8_t *dst = xp + r * kp;
        memcpy(dst, a->x + r * a->x_row_stride, (size_t)a->k);
        memset(dst + a->k, 0, (size_t)(kp - a->k));
        int32_t s = 0;
        for (int64_t c = 0; c < chunks; c++) {
            /* pair sums (x0 + x1, x2 + x3) per quad, then the 8 quads' int16 pairs added lane-wise */
            __m256i v = _mm256_maddubs_epi16(ones, _mm256_loadu_si256((const __m256i *)(dst + 32 * c)));
            v = _mm256_add_epi16(v, _mm256_shuffle_epi32(v, 0x4E));
            v = _mm256_add_epi16(v, _mm256_shuffle_epi32(v, 0xB1));
            const __m128i h = _mm_add_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            const uint32_t both = (uint32_t)_mm_cvtsi128_si32(h); /* |each| <= 16 * 128 */
            const int16_t s01 = (int16_t)(both & 0xFFFF), s23 = (int16_t)(both >> 16);
            start[r * chunks + c] = (int32_t)((uint32_t)(uint16_t)(-8 * s01) | ((uint32_t)(uint16_t)(-8 * s23) << 16));
            s += s01 + s23;
            if ((c + 1) % cpg == 0) {
                xsum[r * a->groups + c / cpg] = s;
                s = 0;
            }
        }
    }
}

/* Columns j0 .. j0 + 15 -> the panel (columns past n: zeros) and their (groups, 16) parameters. */
NPQ_TARGET_AVX2 static void s4_pack_panel_avx2(const s4_job *J, int64_t j0, uint8_t *pw, float *ps, float *po) {
    const npq_gemm_s4_args *a = J->a;
    const int64_t chunks = J->kp / 32, n = a->n;
    const __m128i flip = _mm_set1_epi8((char)0x88), low = _mm_set1_epi8(0x0F);
    _Alignas(32) uint8_t col[S4P_COLS][32];
    for (int64_t c = 0; c < chunks; c++) {
        for (int jj = 0; jj < S4P_COLS; jj++) {
            if (j0 + jj >= n) {
                memset(col[jj], 0, 32);
                continue;
            }
            const __m128i raw = _mm_xor_si128(
                _mm_loadu_si128((const __m128i *)(a->w + (j0 + jj) * a->w_row_stride + 4 * c)), flip);
            const __m128i lo = _mm_and_si128(raw, low), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low);
            _mm_store_si128((__m128i *)col[jj], _mm_unpacklo_epi8(lo, hi)); /* columns 0-15 of the chunk */
            _mm_store_si128((__m128i *)(col[jj] + 16), _mm_unpackhi_epi8(lo, hi));
        }
        uint8_t *dst = pw + c * 8 * S4P_COLS * 4;
        for (int q = 0; q < 8; q++)
            for (int jj = 0; jj < S4P_COLS; jj++) memcpy(dst + (q * S4P_COLS + jj) * 4, col[jj] + 4 * q, 4);
    }
    for (int64_t g = 0; g < a->groups; g++)
        for (int jj = 0; jj < S4P_COLS; jj++) {
            const int in = j0 + jj < n;
            ps[g * S4P_COLS + jj] = in ? a->scale[g * n + j0 + jj] : 0.0f;
            po[g * S4P_COLS + jj] = in && a->offset ? a->offset[g * n + j0 + jj] : 0.0f;
        }
}

/* One 32-column chunk of rows x0 .. x3 against the panel's chunk wp: per row two vectors of 8 int32
 * sums over the chunk, sum x * v (the start words st0 .. st3 hold the -8 x sums). Named registers:
 * 8 accumulators, 2 weight vectors, 1 broadcast. */
#define S4P_ROW(i)                                                                 \
    do {                                                                           \
        int32_t quad;                                                              \
        memcpy(&quad, x##i + 4 * q, 4);                                            \
        const __m256i xb = _mm256_set1_epi32(quad);                                \
        a##i##0 = _mm256_add_epi16(a##i##0, _mm256_maddubs_epi16(w0, xb));          \
        a##i##1 = _mm256_add_epi16(a##i##1, _mm256_maddubs_epi16(w1, xb));          \
    } while (0)
NPQ_TARGET_AVX2 static inline __attribute__((always_inline)) void s4_panel_chunk_avx2(
    const uint8_t *wp, const int8_t *x0, const int8_t *x1, const int8_t *x2, const int8_t *x3, int32_t st0,
    int32_t st1, int32_t st2, int32_t st3, __m256i out[8]) {
    __m256i a00 = _mm256_set1_epi32(st0), a01 = a00, a10 = _mm256_set1_epi32(st1), a11 = a10;
    __m256i a20 = _mm256_set1_epi32(st2), a21 = a20, a30 = _mm256_set1_epi32(st3), a31 = a30;
#pragma GCC unroll 2
    for (int q = 0; q < 8; q++) {
        const __m256i w0 = _mm256_load_si256((const __m256i *)(wp + q * 64));
        const __m256i w1 = _mm256_load_si256((const __m256i *)(wp + q * 64 + 32));
        S4P_ROW(0);
        S4P_ROW(1);
        S4P_ROW(2);
        S4P_ROW(3);
    }
    const __m256i ones = _mm256_set1_epi16(1);
    out[0] = _mm256_madd_epi16(a00, ones), out[1] = _mm256_madd_epi16(a01, ones);
    out[2] = _mm256_madd_epi16(a10, ones), out[3] = _mm256_madd_epi16(a11, ones);
    out[4] = _mm256_madd_epi16(a20, ones), out[5] = _mm256_madd_epi16(a21, ones);
    out[6] = _mm256_madd_epi16(a30, ones), out[7] = _mm256_madd_epi16(a31, ones);
}
#undef S4P_ROW

/* Rows r .. r + rows - 1 (rows <= S4P_ROWS; the missing ones repeat the last, never stored) of the panel. */
NPQ_TARGET_AVX2 static void s4_panel_tile_avx2(const s4_job *J, const uint8_t *pw, const float *ps, const float *po,
                                               int64_t r, int rows, int64_t j0) {
    const npq_gemm_s4_args *a = J->a;
    const int64_t kp = J->kp, chunks = kp / 32, cpg = J->chunks_per_group;
    const int8_t *xr[S4P_ROWS];
    const int32_t *st[S4P_ROWS], *xs[S4P_ROWS];
    for (int i = 0; i < S4P_ROWS; i++) {
        const int64_t rr = r + (i < rows ? i : rows - 1);
        xr[i] = J->xp + rr * kp;
        st[i] = J->xstart + rr * chunks;
        xs[i] = J->xsum + rr * a->groups;
    }
    _Alignas(32) float f[S4P_ROWS * 2][8]; /* running sums, row i's vector h at f[2 i + h] */
    for (int v = 0; v < S4P_ROWS * 2; v++) _mm256_store_ps(f[v], _mm256_setzero_ps());
    for (int64_t g = 0; g < a->groups; g++) {
        __m256i acc[8], part[8];
        for (int64_t cc = 0; cc < cpg; cc++) {
            const int64_t c = g * cpg + cc;
            s4_panel_chunk_avx2(pw + c * 8 * S4P_COLS * 4, xr[0] + 32 * c, xr[1] + 32 * c, xr[2] + 32 * c,
                                xr[3] + 32 * c, st[0][c], st[1][c], st[2][c], st[3][c], cc ? part : acc);
            if (cc)
                for (int v = 0; v < 8; v++) acc[v] = _mm256_add_epi32(acc[v], part[v]);
        }
        for (int h = 0; h < 2; h++) {
            const __m256 sc = _mm256_load_ps(ps + g * S4P_COLS + 8 * h), of = _mm256_load_ps(po + g * S4P_COLS + 8 * h);
            for (int i = 0; i < S4P_ROWS; i++) {
                const __m256 t =
                    _mm256_add_ps(_mm256_cvtepi32_ps(acc[2 * i + h]), _mm256_mul_ps(of, _mm256_set1_ps((float)xs[i][g])));
                _mm256_store_ps(f[2 * i + h], _mm256_add_ps(_mm256_load_ps(f[2 * i + h]), _mm256_mul_ps(t, sc)));
            }
        }
    }
    for (int i = 0; i < rows; i++)
        for (int h = 0; h < 2; h++) s4_finish_avx2(J, r + i, j0 + 8 * h, _mm256_load_ps(f[2 * i + h]));
}
#endif

/* ---------------------------------------------------------------- variants and driver */

/* A variant's entry points (the table ends the file). */
typedef struct {
    int avx2; /* 1: the AVX2 block kernels (taken when G % 32 == 0, else the scalar ones); 0: scalar */
} s4_impl;

typedef struct {
    s4_job job;
    int avx2;
    volatile int nomem; /* a piece could not allocate its weight buffer: the call fails */
} s4_ctx;

/* Prefill items (AVX2): item = panel * rblocks + row block. Each claimed range repacks its panel
 * (once per panel when a range spans several items: the single-thread path); the repack is small
 * beside a 64-row tile's products. */
static void s4_panel_range(s4_ctx *C, int64_t begin, int64_t end) {
#if NPQ_X86
    const s4_job *J = &C->job;
    const int64_t m = J->a->m;
    uint8_t *pw = (uint8_t *)aligned_alloc(64, (size_t)(J->kp * S4P_COLS));
    float *ps = (float *)aligned_alloc(64, (size_t)(J->a->groups * S4P_COLS * 2) * sizeof(float));
    if (!pw || !ps) {
        C->nomem = 1;
    } else {
        float *po = ps + J->a->groups * S4P_COLS;
        int64_t packed = -1;
        for (int64_t item = begin; item < end; item++) {
            const int64_t jb = item / J->rblocks, rb = item % J->rblocks;
            if (jb != packed) s4_pack_panel_avx2(J, jb * S4P_COLS, pw, ps, po), packed = jb;
            const int64_t r1 = (rb + 1) * S4P_RB < m ? (rb + 1) * S4P_RB : m;
            for (int64_t r = rb * S4P_RB; r < r1; r += S4P_ROWS)
                s4_panel_tile_avx2(J, pw, ps, po, r, (int)(r1 - r < S4P_ROWS ? r1 - r : S4P_ROWS), jb * S4P_COLS);
        }
    }
    free(pw);
    free(ps);
#else
    (void)C, (void)begin, (void)end;
#endif
}

static void s4_range(void *ctx, int64_t begin, int64_t end) {
    s4_ctx *C = (s4_ctx *)ctx;
    const s4_job *J = &C->job;
    if (J->xp) {
        s4_panel_range(C, begin, end);
        return;
    }
    for (int64_t item = begin; item < end; item++) {
        const int64_t rb = item / J->jblocks, jb = item % J->jblocks;
        const int64_t r0 = rb * S4_RB, r1 = r0 + S4_RB < J->a->m ? r0 + S4_RB : J->a->m;
        const int64_t j0 = jb * S4_JB, j1 = j0 + S4_JB < J->a->n ? j0 + S4_JB : J->a->n;
#if NPQ_X86
        if (C->avx2) {
            if (J->xb && J->gsize == 32)
                s4_block_avx2_g32(J, r0, r1, j0);
            else if (J->xb)
                s4_block_avx2_g64(J, r0, r1, j0);
            else
                s4_block_avx2_direct(J, r0, r1, j0);
            continue;
        }
#endif
        s4_block_scalar(J, r0, r1, j0, j1);
    }
}

NPQ_API int npq_gemm_s4(const npq_gemm_s4_args *a, int nthreads) {
    if (!a) return NPQ_ERR_NULL;
    if (a->out_dtype != NPQ_F32 && a->out_dtype != NPQ_F16 && a->out_dtype != NPQ_BF16) return NPQ_ERR_DTYPE;
    if (a->m < 0 || a->n < 0 || a->k < 0 || a->words < 0 || a->x_row_stride < 0 || a->w_row_stride < 0 ||
        a->w_extent < 0 || a->groups <= 0 || a->words % a->groups != 0)
        return NPQ_ERR_ARG;
    int64_t kp, mn, gn, xlast;
    if (__builtin_mul_overflow(a->words, (int64_t)8, &kp) || a->k > kp || __builtin_mul_overflow(a->m, a->n, &mn) ||
        __builtin_mul_overflow(a->groups, a->n, &gn) || __builtin_mul_overflow(a->m, kp, &xlast) ||
        (a->m > 0 && (__builtin_mul_overflow(a->m - 1, a->x_row_stride, &xlast) ||
                      __builtin_add_overflow(xlast, a->k, &xlast))))
        return NPQ_ERR_ARG;
    if (a->n > 0 && a->words > 0) {
        int64_t last;
        if (__builtin_mul_overflow(a->n - 1, a->w_row_stride, &last) || __builtin_add_overflow(last, a->words, &last))
            return NPQ_ERR_ARG;
        if (last > a->w_extent) return NPQ_ERR_BOUNDS;
    }
    if (mn == 0) return NPQ_OK;
    if (!a->out || !a->x_scale || !a->scale || (a->k > 0 && (!a->x || !a->w))) return NPQ_ERR_NULL;

    s4_ctx C;
    memset(&C, 0, sizeof C);
    s4_job *J = &C.job;
    J->a = a;
    J->gsize = kp / a->groups;
    J->kp = kp;
    J->chunks_per_group = J->gsize / S4_CHUNK;
    J->jblocks = (a->n + S4_JB - 1) / S4_JB;
    J->rblocks = (a->m + S4_RB - 1) / S4_RB;
    const s4_impl *impl = (const s4_impl *)npq_pick(&npq_kernel_gemm_s4)->impl;
    C.avx2 = impl->avx2 && J->gsize % S4_CHUNK == 0 && a->k > 0;
    int32_t *xsum = (int32_t *)malloc((size_t)(a->m * a->groups) * sizeof(int32_t));
    if (!xsum) return NPQ_ERR_NOMEM;
    J->xsum = xsum;
    int16_t *xs = NULL;
    int8_t *xb = NULL, *xp = NULL;
    int32_t *xstart = NULL;
    int64_t items = J->rblocks * J->jblocks;
#if NPQ_X86
    if (C.avx2 && a->m > S4_JB) {
        /* prefill: the outputs-in-lanes panel kernel */
        xp = (int8_t *)aligned_alloc(64, (size_t)(a->m * kp + 64) / 64 * 64);
        xstart = (int32_t *)malloc((size_t)(a->m * (kp / 32)) * sizeof(int32_t));
        if (!xp || !xstart) {
            free(xp), free(xstart), free(xsum);
            return NPQ_ERR_NOMEM;
        }
        s4_prepare_panel_x(a, kp, J->gsize, xp, xstart, xsum);
        J->jpanels = (a->n + S4P_COLS - 1) / S4P_COLS;
        J->rblocks = (a->m + S4P_RB - 1) / S4P_RB;
        items = J->jpanels * J->rblocks;
    } else if (C.avx2 && (J->gsize == 32 || J->gsize % 64 == 0)) {
        /* decode: the vpmaddubsw kernel's int8 activations */
        J->kp64 = (kp + 63) / 64 * 64;
        xb = (int8_t *)aligned_alloc(64, (size_t)(a->m * J->kp64));
        if (!xb) {
            free(xsum);
            return NPQ_ERR_NOMEM;
        }
        s4_prepare_x8(a, J->kp64, xb);
    } else if (C.avx2) {
        xs = (int16_t *)aligned_alloc(64, ((size_t)(a->m * kp) * sizeof(int16_t) + 63) & ~(size_t)63);
        if (!xs) {
            free(xsum);
            return NPQ_ERR_NOMEM;
        }
        s4_prepare_x(a, kp, xs);
    }
#endif
    if (!xp) s4_row_sums(a, J->gsize, xsum); /* the panel kernel's preparation sums them itself */
    J->xp = xp;
    J->xstart = xstart;
    J->xs = xs;
    J->xb = xb;
    /* decode: at least 64 KiB of packed weight per thread, claimed in quarters (gemv_int4.c's
     * measured choice); prefill: every item is a 64-row tile, heavy enough alone, claimed one at a
     * time (claiming whole panels, to repack each once, measured no faster: 512x576x1536 14-18 ms
     * against 13-14) */
    const int64_t item_bytes = S4_JB * a->words * 4 + 1;
    const int64_t grain = a->m <= S4_JB ? ((64 << 10) + item_bytes - 1) / item_bytes : 1;
    npq_parallel_for_dynamic(items, grain, (grain + 3) / 4, nthreads, s4_range, &C);
    free(xs);
    free(xb);
    free(xp);
    free(xstart);
    free(xsum);
    return C.nomem ? NPQ_ERR_NOMEM : NPQ_OK;
}

/* ---- the variants, best first */
static const s4_impl s4_scalar = {0};
#if NPQ_X86
static const s4_impl s4_avx2 = {1};
#endif

static const npq_variant s4_variants[] = {
#if NPQ_X86
    {"avx2", NPQ_ISA_AVX2, 0, &s4_avx2},
#endif
    {"scalar", NPQ_ISA_SCALAR, 0, &s4_scalar},
};
const npq_kernel npq_kernel_gemm_s4 = NPQ_KERNEL("gemm_s4", s4_variants);
