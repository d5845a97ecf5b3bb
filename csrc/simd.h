/* The SIMD mapping: float32 / int32 vectors of W lanes under one set of names per ISA, so a loop
 * that differs between ISAs only in vector width is written once (as a macro taking the ISA name)
 * and instantiated for each. simd_<isa>_<op> and SIMD_<isa>_<name>; SIMD(isa, op) pastes them.
 *
 *   W        lanes                          F, I, M  float vector, int vector, NaN-mask type
 *   load(p)  W floats                      store(p, v)
 *   load_x(p, i, dt)  W elements of float32 / float16 / bfloat16 at p + i, widened exactly
 *   set1, zero, add, mul, max, min, cvt (int32 -> float32)
 *   unord(v) lanes that are NaN; mor(a, b), mnone(), many(m): or, empty, any set
 *   hmax(v), hmin(v)  the largest / smallest lane (no NaN lanes: callers track NaN with unord) */
#ifndef NPQ_SIMD_H
#define NPQ_SIMD_H

#include "npq.h"

#if NPQ_X86
#include <immintrin.h>

#define SIMD(isa, op) simd_##isa##_##op
#define SIMD_T(isa, name) SIMD_##isa##_##name
#define SIMD_INLINE static inline __attribute__((always_inline))

/* ---- AVX2 + FMA + F16C: 8 lanes */
#define SIMD_avx2_W 8
#define SIMD_avx2_F __m256
#define SIMD_avx2_I __m256i
#define SIMD_avx2_M __m256
#define simd_avx2_load _mm256_loadu_ps
#define simd_avx2_store _mm256_storeu_ps
#define simd_avx2_set1 _mm256_set1_ps
#define simd_avx2_zero _mm256_setzero_ps
#define simd_avx2_add _mm256_add_ps
#define simd_avx2_mul _mm256_mul_ps
#define simd_avx2_max _mm256_max_ps
#define simd_avx2_min _mm256_min_ps
#define simd_avx2_cvt _mm256_cvtepi32_ps
#define simd_avx2_unord(v) _mm256_cmp_ps((v), (v), _CMP_UNORD_Q)
#define simd_avx2_mor _mm256_or_ps
#define simd_avx2_mnone _mm256_setzero_ps
#define simd_avx2_many(m) (_mm256_movemask_ps(m) != 0)

NPQ_TARGET_AVX2 SIMD_INLINE __m256 simd_avx2_load_x(const void *p, int64_t i, const int dt) {
    if (dt == NPQ_F32) return _mm256_loadu_ps((const float *)p + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    if (dt == NPQ_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

NPQ_TARGET_AVX2 SIMD_INLINE float simd_avx2_hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}

NPQ_TARGET_AVX2 SIMD_INLINE float simd_avx2_hmin(__m256 v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_min_ss(m, _mm_shuffle_ps(m, m, 1)));
}

/* ---- AVX-512 F/BW/VL/DQ: 16 lanes */
#define SIMD_avx512_W 16
#define SIMD_avx512_F __m512
#define SIMD_avx512_I __m512i
#define SIMD_avx512_M __mmask16
#define simd_avx512_load _mm512_loadu_ps
#define simd_avx512_store _mm512_storeu_ps
#define simd_avx512_set1 _mm512_set1_ps
#define simd_avx512_zero _mm512_setzero_ps
#define simd_avx512_add _mm512_add_ps
#define simd_avx512_mul _mm512_mul_ps
#define simd_avx512_max _mm512_max_ps
#define simd_avx512_min _mm512_min_ps
#define simd_avx512_cvt _mm512_cvtepi32_ps
#define simd_avx512_unord(v) _mm512_cmp_ps_mask((v), (v), _CMP_UNORD_Q)
#define simd_avx512_mor(a, b) ((__mmask16)((a) | (b)))
#define simd_avx512_mnone() ((__mmask16)0)
#define simd_avx512_many(m) ((m) != 0)
#define simd_avx512_hmax _mm512_reduce_max_ps
#define simd_avx512_hmin _mm512_reduce_min_ps

NPQ_TARGET_AVX512 SIMD_INLINE __m512 simd_avx512_load_x(const void *p, int64_t i, const int dt) {
    if (dt == NPQ_F32) return _mm512_loadu_ps((const float *)p + i);
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i));
    if (dt == NPQ_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
#endif /* NPQ_X86 */

#endif /* NPQ_SIMD_H */
