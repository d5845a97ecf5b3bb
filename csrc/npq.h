/* Shared declarations for npuquant's native kernels.
 *
 * This header is the whole native interface: the dtype and status enums, CPU features and ISA
 * levels, and every exported prototype. The kernels are plain C and know nothing of torch:
 * the C++ operator wrappers (torch_ops.cpp) check every tensor against its storage, then pass
 * data pointers, sizes, strides (in elements), storage extents and a thread count. Every kernel
 * keeps a scalar version beside its SIMD versions in a table of variants; npq_pick() picks one at run
 * time from the CPU's features and the user's cap. */
#ifndef NPQ_H
#define NPQ_H

#include <stdint.h>
#include <string.h>

#define NPQ_API __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the one dtype numbering: every kernel argument that names a dtype uses it ---- */
typedef enum {
    NPQ_F32 = 0,
    NPQ_F16 = 1,
    NPQ_BF16 = 2,
    NPQ_I8 = 3,
    NPQ_U8 = 4,
    NPQ_I16 = 5,
    NPQ_I32 = 6,
    NPQ_I64 = 7,
    NPQ_I4 = 8, /* int32 words of 8 signed int4, element j in bits 4j..4j+3 (SPEC §2) */
} npq_dtype;

/* ---- the one status set: every entry point returns one of these; npq_status_message() words it ---- */
typedef enum {
    NPQ_OK = 0,
    NPQ_ERR_ARG = -1,    /* a size, stride, count or code is invalid (negative, overflowing, unknown) */
    NPQ_ERR_BOUNDS = -2, /* a tensor's sizes and strides reach outside its storage */
    NPQ_ERR_NOMEM = -3,  /* a scratch allocation failed */
    NPQ_ERR_GROUP = -4,  /* group_index is not non-decreasing within [0, rows] ending at rows */
    NPQ_ERR_DTYPE = -5,  /* a dtype code the kernel does not take */
    NPQ_ERR_NULL = -6,   /* a required pointer is missing */
} npq_status;

NPQ_API const char *npq_status_message(int status);

/* Feature bits reported by npq_cpu_features(). */
enum {
    NPQ_CPU_AVX2 = 1 << 0,
    NPQ_CPU_FMA = 1 << 1,
    NPQ_CPU_F16C = 1 << 2,
    NPQ_CPU_AVX512F = 1 << 3,
    NPQ_CPU_AVX512BW = 1 << 4,
    NPQ_CPU_AVX512VNNI = 1 << 5,
    NPQ_CPU_AVXVNNI = 1 << 6,
    NPQ_CPU_NEON = 1 << 7,
    NPQ_CPU_AVX512VL = 1 << 8,
    NPQ_CPU_AVX512DQ = 1 << 9,
    NPQ_CPU_AVX512BF16 = 1 << 10,
};

/* Kernel levels, lowest to highest. npq_isa() is min(best supported, user limit). */
enum { NPQ_ISA_SCALAR = 0, NPQ_ISA_AVX2 = 1, NPQ_ISA_AVX512 = 2 };
/* AVX-512 level = F + BW + VL + DQ (Skylake-X and later, Zen4+). VNNI is a separate
 * feature bit that kernels test with npq_has() on top of the level. */

NPQ_API uint32_t npq_cpu_features(void);
NPQ_API int npq_isa(void);
NPQ_API int npq_best_isa(void);
NPQ_API int npq_set_isa_limit(int level); /* returns the level now in force; a negative level lifts the cap */

/* ---- kernel variants as data ----
 * Each kernel file ends in a table of variants, best first, the scalar row last (it needs nothing,
 * so a pick always succeeds). A row's `impl` points at the file's own struct of entry points. The
 * one picker returns the first row within the ISA cap (npq_isa()) whose required CPU features are
 * present; every table is registered in runtime.c, so `npuquant info` can list the choice. */
typedef struct {
    const char *name;   /* shown by `npuquant info`, e.g. "avx512-vnni", "avx2", "scalar" */
    int isa;            /* NPQ_ISA_* level the row needs (the user's cap applies) */
    uint32_t features;  /* NPQ_CPU_* bits the row needs beyond its level (0: none) */
    const void *impl;   /* the kernel file's struct of entry points */
} npq_variant;

typedef struct {
    const char *kernel;      /* e.g. "gemm_s8" */
    const npq_variant *rows; /* best first, scalar last */
    int count;
} npq_kernel;

#define NPQ_KERNEL(kernel, rows) {kernel, rows, (int)(sizeof rows / sizeof rows[0])}

NPQ_API const npq_variant *npq_pick(const npq_kernel *k);
/* The registered kernels, for listing: index 0 .. npq_kernel_count() - 1 (NULL past the end). */
NPQ_API int npq_kernel_count(void);
NPQ_API const npq_kernel *npq_kernel_at(int i);
/* The kernel tables (each defined at the end of its file). */
extern const npq_kernel npq_kernel_dequant, npq_kernel_dynamic_quant, npq_kernel_int4_unpack, npq_kernel_int4_pack,
    npq_kernel_gemm_s8, npq_kernel_gemv_s8, npq_kernel_gemv_int4, npq_kernel_gemm_s4;
/* The bfloat16 NaN pattern every kernel writes (see "exact conversions" below). */
NPQ_API void npq_set_bf16_nan(uint16_t bits);

/* ---- parallel loops on our pthread pool (runtime.c) ----
 * Both run fn over [0, n), the caller's thread taking part, and run it inline on the caller's
 * thread when there is a single part, nthreads <= 1, or the pool is busy (another Python thread
 * is inside a kernel). */
typedef void (*npq_range_fn)(void *ctx, int64_t begin, int64_t end);

/* Static split: at most nthreads contiguous ranges, each at least `grain` long, and exactly one
 * fn call per range. So fn runs at most nthreads times per job, and callers may give each call
 * its own scratch (gemm_s8.c's tile buffers, dynamic_quant.c's row buffers). */
void npq_parallel_for(int64_t n, int64_t grain, int nthreads, npq_range_fn fn, void *ctx);

/* Dynamic split, for memory-bound loops: one thread per `grain` items (at most nthreads), each
 * claiming `chunk`-long pieces from a shared counter, one fn call per piece. On a busy machine a
 * descheduled thread then holds up only its current piece, not 1/nthreads of the job (measured
 * on a shared 2-core VM: the static split ran no faster with 2 threads than with 1). */
void npq_parallel_for_dynamic(int64_t n, int64_t grain, int64_t chunk, int nthreads, npq_range_fn fn, void *ctx);

/* Where the parallel loops run: by default runtime.c's own pthread pool (standalone C builds,
 * sanitizer drivers). The torch operator library installs torch's intra-op pool at load, so the
 * kernels share torch's threads instead of competing with them for the cores. A backend runs
 * fn(ctx, i, i + 1) once for every i in [0, parts), concurrently, and returns when all are done. */
typedef void (*npq_parallel_backend)(int64_t parts, npq_range_fn fn, void *ctx);
NPQ_API void npq_set_parallel_backend(npq_parallel_backend backend);

/* Asks for transparent huge pages on a large, not yet written output (advice only; see runtime.c). */
void npq_advise_hugepages(void *p, size_t bytes);

/* ---- strided row layouts ----
 * A tensor seen as rows of `inner` elements (element stride inner_stride) numbered by up to
 * NPQ_MAX_LEAD leading dims of any strides; strides and extents count elements (or units, e.g.
 * int32 words of packed int4). Entry points check a layout before touching memory. */
#define NPQ_MAX_LEAD 8

typedef struct {
    int nd;
    int64_t size[NPQ_MAX_LEAD], stride[NPQ_MAX_LEAD];
    int64_t inner, inner_stride;
} npq_layout;

/* Fills l and *rows (the product of the leading sizes). NPQ_ERR_ARG for a rank outside
 * [0, NPQ_MAX_LEAD], missing arrays, a negative size or stride, or rows * inner overflowing. */
int npq_layout_init(npq_layout *l, int nd, const int64_t *sizes, const int64_t *strides, int64_t inner,
                    int64_t inner_stride, int64_t *rows);
/* NPQ_OK when every element l addresses lies in [0, extent) (an empty layout addresses none),
 * NPQ_ERR_BOUNDS otherwise (offset overflow included); NPQ_ERR_ARG for a negative extent. */
int npq_layout_check(const npq_layout *l, int64_t extent);

/* Offset of the first element of `row` (rows numbered in row-major order of the leading dims). */
static inline int64_t npq_row_offset(const npq_layout *l, int64_t row) {
    int64_t off = 0;
    for (int d = l->nd - 1; d >= 0; d--) {
        off += (row % l->size[d]) * l->stride[d];
        row /= l->size[d];
    }
    return off;
}

/* ---- kernels: every entry point returns an npq_status and checks its layouts against the given
 * extents (elements, or int32 words for packed int4, readable from the data pointer) before it
 * reads or writes anything. Outputs are contiguous and sized by the caller. nthreads <= 1 runs
 * on the caller's thread. ---- */

/* dequant.c: affine dequantization, the kernel under anti-quant, grouped int4 tiles and dequantize:
 *     out[r, c] = cast_out((float32(q[r, c]) + offset[p]) * scale[p])
 *     p(r, c)   = (r / row_block) * row_step + (c / col_block) * col_step
 * x_kind NPQ_I8 / NPQ_I16 / NPQ_I4 (then a row has 8 * inner outputs); rows numbered by the nd
 * leading dims; sizes, strides and x_extent in units. scale / offset: n_param float32 (offset
 * NULL = +0). out: contiguous rows x cols of NPQ_F32 / NPQ_F16 / NPQ_BF16. half_steps (NPQ_F16 only)
 * rounds q + offset to float16 before the multiply. */
typedef struct {
    const void *x;
    int x_kind;
    int64_t x_extent;
    int nd;
    const int64_t *lead_sizes, *lead_strides;
    int64_t inner, inner_stride;
    const float *scale, *offset;
    int64_t n_param;
    int64_t row_block, row_step, col_block, col_step;
    void *out;
    int out_dtype;
    int half_steps; /* NPQ_F16 only, else 0: float16 arithmetic, cast_f16(float32(cast_f16(q + offset)) * scale)
                     * (torch's float16 add then multiply; scale and offset must then be float16 values) */
} npq_dequant_args;
NPQ_API int npq_dequant(const npq_dequant_args *args, int nthreads);
/* dynamic_quant.c: per-row dynamic quantization (symmetric when offset is NULL), int8 or packed int4. */
NPQ_API int npq_dynamic_quant(const void *x, int x_dtype, int64_t x_extent, int nlead, const int64_t *lead_shape,
                              const int64_t *lead_stride, int64_t cols, int64_t col_stride, const void *smooth,
                              const int32_t *group_index, int64_t ngroups, void *y, float *scale, float *offset,
                              int int4, int nthreads);
/* int4.c: int32 words of 8 int4 -> int8, and integers (NPQ_I8 / U8 / I16 / I32 / I64) -> words,
 * with the smallest and largest value seen in *lo / *hi (the caller rejects values outside [-8, 7]). */
NPQ_API int npq_unpack_int4(const int32_t *packed, int64_t extent, int nd, const int64_t *lead_sizes,
                            const int64_t *lead_strides, int64_t inner, int64_t inner_stride, int8_t *out,
                            int nthreads);
NPQ_API int npq_pack_int4(const void *values, int dtype, int64_t extent, int nd, const int64_t *lead_sizes,
                          const int64_t *lead_strides, int64_t inner, int64_t inner_stride, int32_t *out, int64_t *lo,
                          int64_t *hi, int nthreads);

/* gemv_int4.c: fused int4 weight-only GEMV (w4a16 decode), never writing a float weight tile:
 * out[r, j] = cast(sum_kk x[r, kk] * w[j, kk] (+ bias[j])), w[j, kk] = cast((nibble + offset[j, g]) *
 * scale[j, g]); float16 / bfloat16 x: w rounded to x's dtype as a dequantized tile would be; float32
 * x: the products regrouped per 8-column word (sum nibble * x, then offset and scale once); float32
 * sums in the fixed orders the file documents (the same for every ISA, thread count and m). */
NPQ_API int npq_gemv_int4(const void *x, int x_dtype, int64_t m, int64_t x_row_stride, int64_t k,
                          const int32_t *packed, int64_t packed_extent, int64_t n, int64_t words,
                          int64_t row_stride, const float *scale, const float *offset, int64_t groups,
                          const float *bias, void *out, int nthreads);

/* runtime.c: float32 -> float32 / float16 / bfloat16 exactly as torch's tensor casts (small vectors,
 * e.g. a layer's smooth scales in its activations' dtype). */
NPQ_API int npq_cast_f32(const float *in, int64_t n, int dtype, void *out);

/* runtime.c: thread-pool self-tests (out[i] = i * i over [0, n)). */
NPQ_API void npq_pool_selftest(int64_t *out, int64_t n, int nthreads);
NPQ_API void npq_pool_selftest_dynamic(int64_t *out, int64_t n, int64_t chunk, int nthreads);

/* gemm_s8.c: one exact int8 GEMM / GEMV call with its epilogue (the file's header gives the
 * layouts and the epilogue's float32 order). Filled by the C++ wrapper. */
typedef struct npq_gemm_args {
    int64_t batch, m, n, k;
    /* activations: logical int8 (m, k) per x1 batch, element strides */
    const int8_t *a;
    int64_t a_sm, a_sk;
    int64_t a_nbatch;
    const int64_t *a_boff; /* element offset of each x1 batch (a_nbatch) */
    const int64_t *a_bidx; /* x1 batch of each output batch (batch) */
    /* packed weights */
    const uint8_t *w;
    int64_t w_nbatch;
    const int32_t *colsum;  /* (w_nbatch, n_panels * 16) */
    const int64_t *w_bidx;  /* weight batch of each output batch (batch) */
    /* epilogue */
    int64_t out_kind; /* npq_dtype: NPQ_I32, NPQ_I8, NPQ_F16, NPQ_BF16 or NPQ_F32 */
    const int32_t *bias_i32;
    int64_t bias_i32_bstride;
    const float *scale;
    int64_t scale_nstride;
    const float *pertoken;
    const float *row_offset;
    const float *add;
    int64_t add_nstride, add_bstride;
    void *out; /* contiguous (batch, m, n) */
    /* natural-layout weights: when wn is set, the GEMV path reads W[kk][j] =
     * wn[w_bidx[b] * wn_bstride + j * wn_sn + kk * wn_sk] in place (a row-major (n, k) weight has
     * wn_sn = k, wn_sk = 1) and w / colsum may be NULL. Leave wn NULL for the packed path. */
    const int8_t *wn;
    int64_t wn_sn, wn_sk, wn_bstride;
} npq_gemm_args;

NPQ_API int64_t npq_gemm_panels(int64_t n);               /* 16-column panels for n columns */
NPQ_API int64_t npq_gemm_packed_bytes(int64_t k, int64_t n); /* bytes of one packed weight batch */
/* Packs one weight batch, the logical (k, n) int8 matrix w with element strides (sk, sn), into
 * npq_gemm_packed_bytes(k, n) bytes at out, with its exact column sums (npq_gemm_panels(n) * 16). */
NPQ_API int npq_gemm_pack_b(const int8_t *w, int64_t k, int64_t n, int64_t sk, int64_t sn, uint8_t *out,
                            int32_t *colsum, int nthreads);
NPQ_API int npq_gemm_s8(const npq_gemm_args *g, int nthreads);

/* ---- gemm_s4.c: exact int4 x int8 linear (the w4a8 layer); the file's header gives the rule and
 * the float32 order. ---- */
typedef struct {
    int64_t m, n, k, words, groups; /* k <= 8 * words; group size 8 * words / groups */
    const int8_t *x;                /* (m, k), row stride x_row_stride, unit column stride */
    int64_t x_row_stride;
    const float *x_scale;           /* (m) */
    const int32_t *w;               /* (n, words) packed int4 along K, row stride w_row_stride */
    int64_t w_row_stride, w_extent;
    const float *scale, *offset;    /* (groups, n) contiguous; offset may be NULL */
    const float *bias;              /* (n) or NULL */
    void *out;                      /* contiguous (m, n) */
    int out_dtype;                  /* NPQ_F32 / NPQ_F16 / NPQ_BF16 */
} npq_gemm_s4_args;
NPQ_API int npq_gemm_s4(const npq_gemm_s4_args *a, int nthreads);

#ifdef __cplusplus
} /* extern "C" */
#else /* kernel-internal helpers below: C only */

/* ---- exact conversions, bit-identical to PyTorch's CPU tensor casts ----
 * Finite and infinite values round half to even, as torch does. NaN, where torch's casts differ
 * from IEEE defaults and from each other:
 *   float16:  sign and top 10 payload bits kept, quiet bit set (F16C's vcvtps2ph). torch gives
 *             this with every ATen CPU capability, vectorized or not.
 *   bfloat16: one pattern for every NaN, set by the torch build: its AVX2 / AVX-512 kernels write
 *             0xFFFF, c10's scalar conversion (ATEN_CPU_CAPABILITY=default) 0x7FC0. the operator library
 *             asks torch once at load and stores the answer with npq_set_bf16_nan(); every kernel
 *             that writes bfloat16 uses it (npq_f32_to_bf16, npq_bf16_bits_avx2 with npq_bf16_nan).
 * Kernels writing only float32 or integers follow their reference's own NaN rules (see each file). */

extern uint16_t npq_bf16_nan; /* runtime.c; default 0x7FC0 until npq_set_bf16_nan() at load */

static inline uint32_t npq_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float npq_f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline uint16_t npq_f32_to_bf16(float f) {
    if (f != f) return npq_bf16_nan;
    uint32_t u = npq_f32_bits(f);
    u += 0x7FFF + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

static inline float npq_bf16_to_f32(uint16_t h) { return npq_f32_from_bits((uint32_t)h << 16); }

/* float32 -> IEEE half: the FP16 library algorithm c10 uses, NaN as F16C. */
static inline uint16_t npq_f32_to_f16(float f) {
    const float scale_to_inf = 0x1.0p+112f, scale_to_zero = 0x1.0p-110f;
    float base = (f < 0 ? -f : f) * scale_to_inf * scale_to_zero;
    uint32_t w = npq_f32_bits(f), shl1_w = w + w, sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = npq_f32_from_bits((bias >> 1) + 0x07800000u) + base;
    uint32_t bits = npq_f32_bits(base);
    uint32_t exp_bits = (bits >> 13) & 0x00007C00u, mant_bits = bits & 0x00000FFFu;
    uint32_t nonsign = exp_bits + mant_bits;
    uint32_t nan = 0x7E00u | ((w >> 13) & 0x3FFu);
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? nan : nonsign));
}

static inline float npq_f16_to_f32(uint16_t h) {
    uint32_t w = (uint32_t)h << 16, sign = w & 0x80000000u, two_w = w + w;
    const uint32_t exp_offset = 0xE0u << 23;
    float normalized = npq_f32_from_bits((two_w >> 4) + exp_offset) * 0x1.0p-112f;
    const uint32_t magic_mask = 126u << 23;
    float denormalized = npq_f32_from_bits((two_w >> 17) | magic_mask) - 0.5f;
    uint32_t r = sign | (two_w < (1u << 27) ? npq_f32_bits(denormalized) : npq_f32_bits(normalized));
    return npq_f32_from_bits(r);
}

#if defined(__x86_64__) || defined(__i386__)
#define NPQ_X86 1
#define NPQ_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define NPQ_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define NPQ_TARGET_AVX512VNNI \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#else
#define NPQ_X86 0
#endif

#if NPQ_X86
#include <immintrin.h> /* for every kernel file */

/* 8 floats -> bfloat16 bits in the low half of each int32 lane, as npq_f32_to_bf16; NaN lanes
 * take `nan` (npq_bf16_nan broadcast once per call by the caller). */
NPQ_TARGET_AVX2 static inline __attribute__((always_inline)) __m256i npq_bf16_bits_avx2(__m256 v, __m256i nan) {
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i t = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
    return _mm256_blendv_epi8(nan, t, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_ORD_Q)));
}
#endif

static inline int npq_has(uint32_t bits) { return (npq_cpu_features() & bits) == bits; }

#endif /* !__cplusplus */

#endif
