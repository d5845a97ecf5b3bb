/* Shared declarations for npuquant's native kernels.
 *
 * The library is plain C with no libtorch dependency: Python passes data pointers,
 * sizes, strides (in elements) and a thread count through ctypes. Every kernel keeps a
 * scalar version beside its SIMD versions; npq_isa() picks one at run time. */
#ifndef NPQ_H
#define NPQ_H

#include <stdint.h>
#include <string.h>

#define NPQ_API __attribute__((visibility("default")))

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
NPQ_API int npq_set_isa_limit(int level); /* returns the level now in force */

/* Runs fn over [0, n) split into at most nthreads contiguous ranges, each at least
 * `grain` long; the caller's thread takes part. Falls back to running inline when the
 * pool is busy (another Python thread is inside a kernel) or nthreads <= 1. */
typedef void (*npq_range_fn)(void *ctx, int64_t begin, int64_t end);
void npq_parallel_for(int64_t n, int64_t grain, int nthreads, npq_range_fn fn, void *ctx);

/* ---- exact scalar conversions, bit-identical to PyTorch's CPU casts ---- */

static inline uint32_t npq_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float npq_f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* float32 -> bfloat16, round half to even; NaN -> 0x7FC0 (as c10::BFloat16). */
static inline uint16_t npq_f32_to_bf16(float f) {
    if (f != f) return 0x7FC0;
    uint32_t u = npq_f32_bits(f);
    u += 0x7FFF + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

static inline float npq_bf16_to_f32(uint16_t h) { return npq_f32_from_bits((uint32_t)h << 16); }

/* float32 -> IEEE half, round half to even (the FP16 library algorithm PyTorch uses). */
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
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
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

static inline int npq_has(uint32_t bits) { return (npq_cpu_features() & bits) == bits; }

#endif
