/* Exact int8 x int8 -> int32 GEMM with fused npu_quant_matmul epilogues.
 *
 * Exactness (every int8 input, -128 included): accumulation is int32 and exact modulo 2^32,
 * i.e. exact whenever |sum| < 2^31 (always for K <= 131071) and wrapping like a 32-bit
 * accumulator register beyond, as the reference does.
 *   - AVX-512 VNNI: vpdpbusd multiplies u8 x s8 and adds groups of 4 products straight into
 *     int32 (no int16 stage). Activations go in as u8 = a + 128 (a ^ 0x80); the accumulator
 *     starts at -128 * colsum(W) so it ends at sum(a * w) (mod 2^32).
 *   - AVX2: vpmaddubsw would saturate u8 x s8 pair sums to int16 (255 * 127 * 2 > 32767), so it
 *     is not used. Both operands are widened to int16 and multiplied with vpmaddwd, whose pair
 *     sums are formed in int32: |a0*b0 + a1*b1| <= 2 * 128 * 128 = 32768 fits easily.
 *   - scalar: int16 x int16 products summed in uint32 (wrap-defined C arithmetic).
 *
 * Layouts:
 *   packed weights (per weight batch): panels of 16 columns; panel p holds, for every group of
 *     4 consecutive k, 16 columns x 4 bytes = 64 bytes: byte [p][k/4][j][k%4] = W[k][16p + j].
 *     K is zero-padded to a multiple of 4 and N to a multiple of 16. Column sums are kept
 *     beside the panels (VNNI correction, asymmetric epilogue).
 *   packed activations (per call): int16 rows (AVX2, scalar) or a ^ 0x80 bytes (VNNI), each row
 *     K rounded up to a multiple of 4 (padding 0 / 0x80, which meets zero weights).
 *   natural weights (args.wn, decode-sized M): read in place, not packed; see the GEMV section.
 *
 * Blocking: a task is (batch, block of MC rows, group of NG panels); it walks K in blocks of
 * KC, keeping a small int32 tile buffer; after the last K block each micro-tile goes through
 * the epilogue while it is still in L1. Tasks are spread over npq_parallel_for.
 *
 * Epilogue (float32, no FMA contraction; the same order in every ISA variant):
 *   v = float32(acc [+ bias_i32])             (int32 sum, wrapping; one rounding)
 *   v = v - row_offset[m] * float32(colsum[n])  (asymmetric entry point only)
 *   v = v * scale[n]; v = v * pertoken[m]; v = v + add[n]   (each step when present)
 *   cast: int8 = RNE then saturate (NaN -> 0, as torch); float16 / bfloat16 RNE (NaN bits as
 *   torch's tensor casts: npq.h); float32 as is.
 *   int32 output: acc [+ bias_i32], wrapping like an int32 accumulator. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "npq.h"

#if NPQ_X86
#include <immintrin.h>
#endif

#define PANEL 16     /* columns per packed panel */
#define KGROUP 4     /* k per packed group */
#define GROUP_BYTES (PANEL * KGROUP)

enum { OUT_INT32 = NPQ_I32, OUT_INT8 = NPQ_I8, OUT_F16 = NPQ_F16, OUT_BF16 = NPQ_BF16, OUT_F32 = NPQ_F32 };

/* Status codes (npq_status). */
enum {
    GEMM_OK = NPQ_OK,
    GEMM_EBADSIZE = NPQ_ERR_ARG,
    GEMM_ENULL = NPQ_ERR_NULL,
    GEMM_EINDEX = NPQ_ERR_ARG,
    GEMM_EKIND = NPQ_ERR_DTYPE,
    GEMM_ENOMEM = NPQ_ERR_NOMEM,
};

/* npq_gemm_args: csrc/npq.h */

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

NPQ_API int64_t npq_gemm_panels(int64_t n) { return n < 0 ? -1 : ceil_div(n, PANEL); }

/* Bytes of one weight batch in the packed layout. */
NPQ_API int64_t npq_gemm_packed_bytes(int64_t k, int64_t n) {
    if (k < 0 || n < 0) return -1;
    return ceil_div(n, PANEL) * ceil_div(k, KGROUP) * GROUP_BYTES;
}

/* ================================================================= weight packing */

/* Packs the first `done` k (a multiple of 32) of a whole panel whose 16 columns are contiguous
 * along k (src[j]: column j), adding each column's sum over them into sums[j] (modulo 2^32).
 * Returns `done`; the caller packs the rest. NULL in a variant: the scalar loop does it all. */
typedef int64_t (*pack_panel_fn)(const int8_t *const *src, int64_t k, uint8_t *dst, int64_t *sums);

typedef struct {
    const int8_t *w;
    int64_t k, n, sk, sn, k4;
    uint8_t *out;
    int32_t *colsum;
    pack_panel_fn panel;
} pack_b_ctx;

#if NPQ_X86
/* A word is 4 k of one column, and a packed k-group is the words of the 16 columns side by side:
 * packing is a transpose of words. Per 32 k: 16 column loads, two 8 x 8 word transposes, 8 whole
 * 64-byte groups stored (the scalar loop's 4-byte copies ran at 3.5 GB/s: 16 streams 4 KiB apart
 * when k = 4096 thrash one L1 set). Column sums from the transposed words: bytes -> int16 pairs
 * (vpmaddubsw by 1, exact) -> int32 (vpmaddwd by 1), wrapping like the scalar sums. */
/* Words q .. q + 7 (32 k from kk) of columns 8h .. 8h + 7 into their groups, with their sums. */
NPQ_TARGET_AVX2 static inline __attribute__((always_inline)) __m256i pack_8x8_avx2(const int8_t *const *src, int64_t kk,
                                                                                 uint8_t *d, int h, __m256i acc) {
    const __m256i one8 = _mm256_set1_epi8(1), one16 = _mm256_set1_epi16(1);
    __m256i r[8], t[8], u[8];
    for (int j = 0; j < 8; j++) r[j] = _mm256_loadu_si256((const __m256i *)(src[8 * h + j] + kk));
    for (int j = 0; j < 8; j += 2) {
        t[j] = _mm256_unpacklo_epi32(r[j], r[j + 1]);     /* words 0, 1 | 4, 5 */
        t[j + 1] = _mm256_unpackhi_epi32(r[j], r[j + 1]); /* words 2, 3 | 6, 7 */
    }
    for (int j = 0; j < 8; j += 4) {
        u[j] = _mm256_unpacklo_epi64(t[j], t[j + 2]);         /* word 0 | 4 of 4 columns */
        u[j + 1] = _mm256_unpackhi_epi64(t[j], t[j + 2]);     /* word 1 | 5 */
        u[j + 2] = _mm256_unpacklo_epi64(t[j + 1], t[j + 3]); /* word 2 | 6 */
        u[j + 3] = _mm256_unpackhi_epi64(t[j + 1], t[j + 3]); /* word 3 | 7 */
    }
    for (int q = 0; q < 4; q++) {
        const __m256i lo = _mm256_permute2x128_si256(u[q], u[4 + q], 0x20); /* word q of the 8 columns */
        const __m256i hi = _mm256_permute2x128_si256(u[q], u[4 + q], 0x31); /* word q + 4 */
        _mm256_storeu_si256((__m256i *)(d + q * GROUP_BYTES + 32 * h), lo);
        _mm256_storeu_si256((__m256i *)(d + (q + 4) * GROUP_BYTES + 32 * h), hi);
        const __m256i s2 = _mm256_add_epi16(_mm256_maddubs_epi16(one8, lo), _mm256_maddubs_epi16(one8, hi));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s2, one16));
    }
    return acc;
}

/* A whole cache line (64 k) of each column per step, both 32-k halves while the 8 lines are in L1:
 * with k = 4096 the columns are 4 KiB apart and share one L1 set. */
NPQ_TARGET_AVX2 static int64_t pack_panel_avx2(const int8_t *const *src, int64_t k, uint8_t *dst, int64_t *sums) {
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    int64_t kk = 0;
    for (; kk + 64 <= k; kk += 64) {
        uint8_t *d = dst + (kk >> 2) * GROUP_BYTES;
        acc0 = pack_8x8_avx2(src, kk, d, 0, acc0);
        acc0 = pack_8x8_avx2(src, kk + 32, d + 8 * GROUP_BYTES, 0, acc0);
        acc1 = pack_8x8_avx2(src, kk, d, 1, acc1);
        acc1 = pack_8x8_avx2(src, kk + 32, d + 8 * GROUP_BYTES, 1, acc1);
    }
    for (; kk + 32 <= k; kk += 32) {
        uint8_t *d = dst + (kk >> 2) * GROUP_BYTES;
        acc0 = pack_8x8_avx2(src, kk, d, 0, acc0);
        acc1 = pack_8x8_avx2(src, kk, d, 1, acc1);
    }
    int32_t lanes[PANEL];
    _mm256_storeu_si256((__m256i *)lanes, acc0);
    _mm256_storeu_si256((__m256i *)(lanes + 8), acc1);
    for (int j = 0; j < PANEL; j++) sums[j] += (uint32_t)lanes[j];
    return kk;
}
#endif

static void pack_b_range(void *vctx, int64_t p_begin, int64_t p_end) {
    const pack_b_ctx *c = (const pack_b_ctx *)vctx;
    for (int64_t p = p_begin; p < p_end; p++) {
        uint8_t *dst = c->out + p * c->k4 * GROUP_BYTES;
        int64_t n0 = p * PANEL;
        int ncols = (int)(c->n - n0 < PANEL ? c->n - n0 : PANEL);
        int64_t sums[PANEL] = {0};
        if (c->sk == 1) {
            /* columns contiguous along k (x2 = weight.t() of a row-major (n, k) weight) */
            const int8_t *src[PANEL];
            for (int j = 0; j < ncols; j++) src[j] = c->w + (n0 + j) * c->sn;
            int64_t k0 = ncols == PANEL && c->panel ? c->panel(src, c->k, dst, sums) : 0;
            memset(dst + (k0 >> 2) * GROUP_BYTES, 0, (size_t)((c->k4 - (k0 >> 2)) * GROUP_BYTES));
            /* the rest: 4 k of each column per group, then each column's sum in int32 chunks */
            int64_t kfull = c->k & ~(int64_t)3;
            for (int64_t kk = k0; kk < kfull; kk += 4) {
                uint8_t *d = dst + (kk >> 2) * GROUP_BYTES;
                for (int j = 0; j < ncols; j++) memcpy(d + j * KGROUP, src[j] + kk, 4);
            }
            for (int64_t kk = kfull > k0 ? kfull : k0; kk < c->k; kk++)
                for (int j = 0; j < ncols; j++) dst[(kk >> 2) * GROUP_BYTES + j * KGROUP + (kk & 3)] = (uint8_t)src[j][kk];
            for (int j = 0; j < ncols; j++) {
                for (int64_t ks = k0; ks < c->k; ks += 1 << 16) {
                    int64_t k1 = c->k - ks < (1 << 16) ? c->k : ks + (1 << 16);
                    int32_t part = 0; /* |part| <= 2^16 * 128: no overflow */
                    for (int64_t kk = ks; kk < k1; kk++) part += src[j][kk];
                    sums[j] += part;
                }
            }
        } else {
            memset(dst, 0, (size_t)(c->k4 * GROUP_BYTES));
            for (int64_t kk = 0; kk < c->k; kk++) {
                const int8_t *src = c->w + kk * c->sk + n0 * c->sn;
                uint8_t *d = dst + (kk >> 2) * GROUP_BYTES + (kk & 3);
                for (int j = 0; j < ncols; j++) {
                    int8_t v = src[j * c->sn];
                    d[j * KGROUP] = (uint8_t)v;
                    sums[j] += v;
                }
            }
        }
        /* modulo 2^32 like the accumulator (exact while |sum| < 2^31, i.e. K < 2^24) */
        for (int j = 0; j < PANEL; j++) c->colsum[n0 + j] = (int32_t)(uint32_t)(uint64_t)sums[j];
    }
}

/* ================================================================= activation packing */

enum { APACK_S16 = 0, APACK_U8X = 1 };

typedef void (*pack_row_fn)(const int8_t *src, void *dst, int64_t k); /* one contiguous row */

typedef struct {
    const npq_gemm_args *args;
    int mode;
    int64_t kp;    /* padded row length (elements) */
    int64_t lda;   /* row stride (elements): kp plus a little, so rows are not 4 KiB apart */
    void *dst;     /* (a_nbatch, m, kp) */
    pack_row_fn row; /* the variant's converter for contiguous rows (NULL: the element loop) */
} pack_a_ctx;

static inline int8_t a_elem(const npq_gemm_args *g, int64_t base, int64_t m, int64_t kk) {
    return g->a[base + m * g->a_sm + kk * g->a_sk];
}

#if NPQ_X86
NPQ_TARGET_AVX2 static void pack_row_s16_avx2(const int8_t *src, void *vdst, int64_t k) {
    int16_t *dst = (int16_t *)vdst;
    int64_t kk = 0;
    for (; kk + 16 <= k; kk += 16)
        _mm256_storeu_si256((__m256i *)(dst + kk), _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(src + kk))));
    for (; kk < k; kk++) dst[kk] = src[kk];
}

NPQ_TARGET_AVX2 static void pack_row_u8x_avx2(const int8_t *src, void *vdst, int64_t k) {
    uint8_t *dst = (uint8_t *)vdst;
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    int64_t kk = 0;
    for (; kk + 32 <= k; kk += 32)
        _mm256_storeu_si256((__m256i *)(dst + kk),
                            _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(src + kk)), flip));
    for (; kk < k; kk++) dst[kk] = (uint8_t)src[kk] ^ 0x80;
}
#endif

static void pack_a_range(void *vctx, int64_t r_begin, int64_t r_end) {
    const pack_a_ctx *c = (const pack_a_ctx *)vctx;
    const npq_gemm_args *g = c->args;
    int64_t m = g->m, k = g->k, kp = c->kp;
    for (int64_t r = r_begin; r < r_end; r++) {
        int64_t ab = r / m, row = r % m;
        int64_t base = g->a_boff[ab];
        int contiguous = g->a_sk == 1;
        if (c->mode == APACK_S16) {
            int16_t *dst = (int16_t *)c->dst + r * c->lda;
            if (contiguous && c->row) {
                c->row(g->a + base + row * g->a_sm, dst, k);
            } else {
                for (int64_t kk = 0; kk < k; kk++) dst[kk] = a_elem(g, base, row, kk);
            }
            for (int64_t kk = k; kk < kp; kk++) dst[kk] = 0;
        } else {
            uint8_t *dst = (uint8_t *)c->dst + r * c->lda;
            if (contiguous && c->row) {
                c->row(g->a + base + row * g->a_sm, dst, k);
            } else {
                for (int64_t kk = 0; kk < k; kk++) dst[kk] = (uint8_t)a_elem(g, base, row, kk) ^ 0x80;
            }
            for (int64_t kk = k; kk < kp; kk++) dst[kk] = 0x80;
        }
    }
}

/* ================================================================= micro-kernels
 *
 * Every kernel adds an (mr x cols) tile over kq groups of 4 k into c (row stride ldc); the
 * driver initialises c (0, or -128 * colsum for VNNI) before the first K block.
 * GCC 12 shuffles and spills accumulators held in arrays, so the VNNI kernel names them through
 * the FOR_ROWS8 macros, and the AVX2 kernels (16 ymm registers only) are asm. */

#define FOR_ROWS8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

/* ---- scalar: int16 activations, one panel, any mr */
#define SCALAR_MR 4

static void ukr_scalar(int mr, int64_t kq, const int16_t *a, int64_t lda, const uint8_t *w, int32_t *c,
                       int64_t ldc) {
    for (int r = 0; r < mr; r++) {
        const int16_t *ar = a + r * lda;
        for (int j = 0; j < PANEL; j++) {
            uint32_t s = (uint32_t)c[r * ldc + j];
            for (int64_t q = 0; q < kq; q++) {
                const int8_t *wq = (const int8_t *)w + q * GROUP_BYTES + j * KGROUP;
                const int16_t *aq = ar + q * KGROUP;
                int32_t dot = aq[0] * wq[0] + aq[1] * wq[1] + aq[2] * wq[2] + aq[3] * wq[3];
                s += (uint32_t)dot;
            }
            c[r * ldc + j] = (int32_t)s;
        }
    }
}

#if NPQ_X86
/* ---- AVX2: int16 activations, weights widened in registers, vpmaddwd (exact).
 * One call covers 8 columns (half a panel). A 16-byte chunk of a panel group (4 columns x 4 k)
 * widens to [c0k0..c0k3 c1k0..c1k3 | c2.. c3..]; times the broadcast row (a0 a1 a2 a3) through
 * vpmaddwd, lane 2j+h holds column j's k-pair h; the pairs are folded into columns at the end. */
#define AVX2_MR 6

/* mr x 8 tile, mr <= 6: accumulators in ymm0..ymm(2mr-1), widened weights ymm12/13, broadcast
 * ymm14, product ymm15. GCC hoists the broadcasts and spills accumulators when this is written
 * with intrinsics, so the kernel (pair folding and the store included) is one asm block per mr.
 * Folding: vphaddd gives [c0 c1 c4 c5 | c2 c3 c6 c7], vpermq 0xD8 puts the columns in order. */
#define A2_ROW(addr, lo, hi)                             \
    "vpbroadcastq " addr ", %%ymm14\n\t"                 \
    "vpmaddwd %%ymm14, %%ymm12, %%ymm15\n\t"             \
    "vpaddd %%ymm15, %%" lo ", %%" lo "\n\t"             \
    "vpmaddwd %%ymm14, %%ymm13, %%ymm15\n\t"             \
    "vpaddd %%ymm15, %%" hi ", %%" hi "\n\t"
#define A2_OUT(addr, lo, hi)                             \
    "vphaddd %%" hi ", %%" lo ", %%" lo "\n\t"           \
    "vpermq $0xD8, %%" lo ", %%" lo "\n\t"               \
    "vpaddd " addr ", %%" lo ", %%" lo "\n\t"            \
    "vmovdqu %%" lo ", " addr "\n\t"
#define A2_ZERO(lo, hi) "vpxor %%x" lo ", %%x" lo ", %%x" lo "\n\t" "vpxor %%x" hi ", %%x" hi ", %%x" hi "\n\t"

#define A2_Z1 A2_ZERO("mm0", "mm1")
#define A2_Z2 A2_Z1 A2_ZERO("mm2", "mm3")
#define A2_Z3 A2_Z2 A2_ZERO("mm4", "mm5")
#define A2_Z4 A2_Z3 A2_ZERO("mm6", "mm7")
#define A2_Z5 A2_Z4 A2_ZERO("mm8", "mm9")
#define A2_Z6 A2_Z5 A2_ZERO("mm10", "mm11")
#define A2_S1 A2_ROW("(%[a0])", "ymm0", "ymm1")
#define A2_S2 A2_S1 A2_ROW("(%[a0],%[ldb],1)", "ymm2", "ymm3")
#define A2_S3 A2_S2 A2_ROW("(%[a0],%[ldb],2)", "ymm4", "ymm5")
#define A2_S4 A2_S3 A2_ROW("(%[a3])", "ymm6", "ymm7")
#define A2_S5 A2_S4 A2_ROW("(%[a3],%[ldb],1)", "ymm8", "ymm9")
#define A2_S6 A2_S5 A2_ROW("(%[a3],%[ldb],2)", "ymm10", "ymm11")
#define A2_O1 A2_OUT("(%[c])", "ymm0", "ymm1")
#define A2_O2 A2_O1 A2_OUT("(%[c],%[ldcb],1)", "ymm2", "ymm3")
#define A2_O3 A2_O2 A2_OUT("(%[c],%[ldcb],2)", "ymm4", "ymm5")
#define A2_O4 A2_O3 A2_OUT("(%[c3])", "ymm6", "ymm7")
#define A2_O5 A2_O4 A2_OUT("(%[c3],%[ldcb],1)", "ymm8", "ymm9")
#define A2_O6 A2_O5 A2_OUT("(%[c3],%[ldcb],2)", "ymm10", "ymm11")

#define A2_KERNEL(MR)                                                                                     \
    NPQ_TARGET_AVX2 static void ukr_avx2_##MR(int64_t kq, const int16_t *a, int64_t lda, const uint8_t *w, \
                                              int32_t *c, int64_t ldc, const uint8_t *pf) {             \
        const int16_t *a0 = a, *a3 = a + 3 * lda;                                                          \
        const uint8_t *wp = w;                                                                             \
        int32_t *c3 = c + 3 * ldc;                                                                         \
        int64_t ldb = lda * 2, ldcb = ldc * 4, n = kq;                                                     \
        __asm__ volatile(A2_Z##MR                                                                          \
                         "test %[n], %[n]\n\t"                                                             \
                         "jle 2f\n\t"                                                                      \
                         ".p2align 5\n"                                                                    \
                         "1:\n\t"                                                                          \
                         "vpmovsxbw (%[wp]), %%ymm12\n\t"                                                  \
                         "vpmovsxbw 16(%[wp]), %%ymm13\n\t"                                               \
                         "prefetcht0 (%[pf])\n\t" A2_S##MR "add $64, %[wp]\n\t"                          \
                         "add $64, %[pf]\n\t"                                                             \
                         "add $8, %[a0]\n\t"                                                               \
                         "add $8, %[a3]\n\t"                                                               \
                         "dec %[n]\n\t"                                                                    \
                         "jnz 1b\n"                                                                        \
                         "2:\n\t" A2_O##MR                                                                 \
                         : [a0] "+r"(a0), [a3] "+r"(a3), [wp] "+r"(wp), [n] "+r"(n), [pf] "+r"(pf)         \
                         : [ldb] "r"(ldb), [c] "r"(c), [c3] "r"(c3), [ldcb] "r"(ldcb)                      \
                         : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",  \
                           "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory");          \
    }

A2_KERNEL(3)
A2_KERNEL(4)
A2_KERNEL(5)
A2_KERNEL(6)

/* mr <= 2, all 16 columns in one pass (decode: one weight line per k group feeds every row,
 * so halving the passes halves the loop overhead per weight byte). Row r's four 4-column
 * chunks accumulate in ymm(4r)..ymm(4r+3); weights ymm8-11; broadcasts ymm12/13; product ymm15. */
#define A2F_ROW(bc, c0, c1, c2, c3)                      \
    "vpmaddwd %%" bc ", %%ymm8, %%ymm15\n\t"             \
    "vpaddd %%ymm15, %%" c0 ", %%" c0 "\n\t"             \
    "vpmaddwd %%" bc ", %%ymm9, %%ymm15\n\t"             \
    "vpaddd %%ymm15, %%" c1 ", %%" c1 "\n\t"             \
    "vpmaddwd %%" bc ", %%ymm10, %%ymm15\n\t"            \
    "vpaddd %%ymm15, %%" c2 ", %%" c2 "\n\t"             \
    "vpmaddwd %%" bc ", %%ymm11, %%ymm15\n\t"            \
    "vpaddd %%ymm15, %%" c3 ", %%" c3 "\n\t"
#define A2F_Z1 A2_ZERO("mm0", "mm1") A2_ZERO("mm2", "mm3")
#define A2F_Z2 A2F_Z1 A2_ZERO("mm4", "mm5") A2_ZERO("mm6", "mm7")
#define A2F_S1 "vpbroadcastq (%[a0]), %%ymm12\n\t" A2F_ROW("ymm12", "ymm0", "ymm1", "ymm2", "ymm3")
#define A2F_S2 A2F_S1 "vpbroadcastq (%[a0],%[ldb],1), %%ymm13\n\t" A2F_ROW("ymm13", "ymm4", "ymm5", "ymm6", "ymm7")
#define A2F_O1 A2_OUT("(%[c])", "ymm0", "ymm1") A2_OUT("32(%[c])", "ymm2", "ymm3")
#define A2F_O2 A2F_O1 A2_OUT("(%[c],%[ldcb],1)", "ymm4", "ymm5") A2_OUT("32(%[c],%[ldcb],1)", "ymm6", "ymm7")

#define A2F_KERNEL(MR)                                                                                     \
    NPQ_TARGET_AVX2 static void ukr_avx2_full_##MR(int64_t kq, const int16_t *a, int64_t lda,             \
                                                   const uint8_t *w, int32_t *c, int64_t ldc,             \
                                                   const uint8_t *pf) {                                   \
        const int16_t *a0 = a;                                                                             \
        const uint8_t *wp = w;                                                                             \
        int64_t ldb = lda * 2, ldcb = ldc * 4, n = kq;                                                     \
        __asm__ volatile(A2F_Z##MR                                                                         \
                         "test %[n], %[n]\n\t"                                                             \
                         "jle 2f\n\t"                                                                      \
                         ".p2align 5\n"                                                                    \
                         "1:\n\t"                                                                          \
                         "vpmovsxbw (%[wp]), %%ymm8\n\t"                                                   \
                         "vpmovsxbw 16(%[wp]), %%ymm9\n\t"                                                 \
                         "vpmovsxbw 32(%[wp]), %%ymm10\n\t"                                                \
                         "vpmovsxbw 48(%[wp]), %%ymm11\n\t"                                                \
                         "prefetcht0 (%[pf])\n\t" A2F_S##MR "add $64, %[wp]\n\t"                           \
                         "add $64, %[pf]\n\t"                                                              \
                         "add $8, %[a0]\n\t"                                                               \
                         "dec %[n]\n\t"                                                                    \
                         "jnz 1b\n"                                                                        \
                         "2:\n\t" A2F_O##MR                                                                \
                         : [a0] "+r"(a0), [wp] "+r"(wp), [n] "+r"(n), [pf] "+r"(pf)                        \
                         : [ldb] "r"(ldb), [c] "r"(c), [ldcb] "r"(ldcb)                                    \
                         : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",  \
                           "xmm10", "xmm11", "xmm12", "xmm13", "xmm15", "cc", "memory");                   \
    }

A2F_KERNEL(1)
A2F_KERNEL(2)

/* One panel (16 columns) as two 8-column halves. pf: the weight block the caller reads next;
 * the first half streams one line of it per k group (8 KB blocks jump 64 KB between panels, so
 * the hardware prefetcher alone falls behind when few rows share each weight line). */
NPQ_TARGET_AVX2 static void ukr_avx2(int mr, int64_t kq, const int16_t *a, int64_t lda, const uint8_t *w,
                                     int32_t *c, int64_t ldc, const uint8_t *pf) {
    if (mr <= 2) {
        if (mr == 2)
            ukr_avx2_full_2(kq, a, lda, w, c, ldc, pf);
        else
            ukr_avx2_full_1(kq, a, lda, w, c, ldc, pf);
        return;
    }
    for (int h = 0; h < 2; h++) {
        const uint8_t *wh = w + h * 32;
        const uint8_t *ph = h == 0 ? pf : w; /* second half: lines already in L1 */
        int32_t *ch = c + h * 8;
        switch (mr) {
        case 6: ukr_avx2_6(kq, a, lda, wh, ch, ldc, ph); break;
        case 5: ukr_avx2_5(kq, a, lda, wh, ch, ldc, ph); break;
        case 4: ukr_avx2_4(kq, a, lda, wh, ch, ldc, ph); break;
        default: ukr_avx2_3(kq, a, lda, wh, ch, ldc, ph); break;
        }
    }
}

/* ---- AVX-512 VNNI: u8 (a ^ 0x80) activations x s8 weights, vpdpbusd; tile mr x 16*np with
 * mr <= 8, np <= 2, or mr <= 4, np <= 4 (small M: more independent accumulator chains). */
#define VNNI_MR 8

NPQ_TARGET_AVX512VNNI static inline __attribute__((always_inline)) void ukr_vnni_t(
    const int MR, const int NP, int64_t kq, const uint8_t *a, int64_t lda, const uint8_t *w, int64_t wps,
    int32_t *c, int64_t ldc, const uint8_t *pf) {
#define V_DECL(r)                                                                   \
    __m512i c##r##_0 = _mm512_setzero_si512(), c##r##_1 = _mm512_setzero_si512();   \
    __m512i c##r##_2 = _mm512_setzero_si512(), c##r##_3 = _mm512_setzero_si512();   \
    if (MR > r) {                                                                   \
        c##r##_0 = _mm512_loadu_si512(c + r * ldc);                                 \
        if (NP > 1) c##r##_1 = _mm512_loadu_si512(c + r * ldc + PANEL);             \
        if (NP > 2) c##r##_2 = _mm512_loadu_si512(c + r * ldc + 2 * PANEL);         \
        if (NP > 3) c##r##_3 = _mm512_loadu_si512(c + r * ldc + 3 * PANEL);         \
    }
    FOR_ROWS8(V_DECL)
    for (int64_t q = 0; q < kq; q++) {
        const uint8_t *wq = w + q * GROUP_BYTES;
        for (int p = 0; p < NP; p++) _mm_prefetch((const char *)(pf + p * wps + q * GROUP_BYTES), _MM_HINT_T0);
        __m512i w0 = _mm512_loadu_si512(wq), w1 = w0, w2 = w0, w3 = w0;
        if (NP > 1) w1 = _mm512_loadu_si512(wq + wps);
        if (NP > 2) w2 = _mm512_loadu_si512(wq + 2 * wps);
        if (NP > 3) w3 = _mm512_loadu_si512(wq + 3 * wps);
#define V_STEP(r)                                                                   \
    if (MR > r) {                                                                   \
        int32_t bits;                                                               \
        memcpy(&bits, a + r * lda + q * KGROUP, 4);                                 \
        __m512i av = _mm512_set1_epi32(bits);                                       \
        c##r##_0 = _mm512_dpbusd_epi32(c##r##_0, av, w0);                           \
        if (NP > 1) c##r##_1 = _mm512_dpbusd_epi32(c##r##_1, av, w1);               \
        if (NP > 2) c##r##_2 = _mm512_dpbusd_epi32(c##r##_2, av, w2);               \
        if (NP > 3) c##r##_3 = _mm512_dpbusd_epi32(c##r##_3, av, w3);               \
    }
        FOR_ROWS8(V_STEP)
    }
#define V_STORE(r)                                                                  \
    if (MR > r) {                                                                   \
        _mm512_storeu_si512(c + r * ldc, c##r##_0);                                 \
        if (NP > 1) _mm512_storeu_si512(c + r * ldc + PANEL, c##r##_1);             \
        if (NP > 2) _mm512_storeu_si512(c + r * ldc + 2 * PANEL, c##r##_2);         \
        if (NP > 3) _mm512_storeu_si512(c + r * ldc + 3 * PANEL, c##r##_3);         \
    }
    FOR_ROWS8(V_STORE)
}

#define VNNI_NP124(MRV)                                                             \
    do {                                                                            \
        if (np == 4 && (MRV) <= 4)                                                  \
            ukr_vnni_t(MRV, 4, kq, a, lda, w, wps, c, ldc, pf);                     \
        else if (np >= 2)                                                           \
            ukr_vnni_t(MRV, 2, kq, a, lda, w, wps, c, ldc, pf);                     \
        else                                                                        \
            ukr_vnni_t(MRV, 1, kq, a, lda, w, wps, c, ldc, pf);                     \
    } while (0)

/* Any mr <= 8 and np <= 4; the driver sends np 4 only with mr <= 4, other cases split here. */
NPQ_TARGET_AVX512VNNI static void ukr_vnni(int mr, int np, int64_t kq, const uint8_t *a, int64_t lda,
                                           const uint8_t *w, int64_t wps, int32_t *c, int64_t ldc,
                                           const uint8_t *pf) {
    if (np == 3 || (np == 4 && mr > 4)) {
        ukr_vnni(mr, 2, kq, a, lda, w, wps, c, ldc, pf);
        ukr_vnni(mr, np - 2, kq, a, lda, w + 2 * wps, wps, c + 2 * PANEL, ldc, pf + 2 * wps);
        return;
    }
    switch (mr) {
    case 8: VNNI_NP124(8); break;
    case 7: VNNI_NP124(7); break;
    case 6: VNNI_NP124(6); break;
    case 5: VNNI_NP124(5); break;
    case 4: VNNI_NP124(4); break;
    case 3: VNNI_NP124(3); break;
    case 2: VNNI_NP124(2); break;
    default: VNNI_NP124(1); break;
    }
}
#endif

/* ================================================================= epilogue */

static inline uint8_t sat_rne_i8(float v) {
    if (v != v) return 0; /* NaN -> 0, as torch's float -> int8 cast gives here */
    v = v < -128.0f ? -128.0f : (v > 127.0f ? 127.0f : v);
    return (uint8_t)(int8_t)(int32_t)nearbyintf(v);
}

/* One output element; the scalar reference for the SIMD epilogue (and its tail). cs: the column
 * sum of column n, read only with row_offset. */
static inline void epi_one(const npq_gemm_args *g, int64_t b, int64_t m, int64_t n, int32_t cs, int32_t acc) {
    int32_t s = acc;
    if (g->bias_i32) s = (int32_t)((uint32_t)s + (uint32_t)g->bias_i32[b * g->bias_i32_bstride + n]);
    int64_t o = (b * g->m + m) * g->n + n;
    if (g->out_kind == OUT_INT32) {
        ((int32_t *)g->out)[o] = s;
        return;
    }
    float v = (float)s;
    if (g->row_offset) {
        float corr = g->row_offset[m] * (float)cs;
        v = v - corr;
    }
    if (g->scale) v = v * g->scale[n * g->scale_nstride];
    if (g->pertoken) v = v * g->pertoken[m];
    if (g->add) v = v + g->add[b * g->add_bstride + n * g->add_nstride];
    switch (g->out_kind) {
    case OUT_INT8: ((uint8_t *)g->out)[o] = sat_rne_i8(v); break;
    case OUT_F16: ((uint16_t *)g->out)[o] = npq_f32_to_f16(v); break;
    case OUT_BF16: ((uint16_t *)g->out)[o] = npq_f32_to_bf16(v); break;
    default: ((float *)g->out)[o] = v; break;
    }
}

/* The epilogue of an (mr x nc) int32 tile c for output rows m0.., columns n0..; colsum points at
 * column n0's sum and is read only with row_offset (it may be NULL without). */
typedef void (*epi_fn)(const npq_gemm_args *g, int64_t b, int64_t m0, int mr, int64_t n0, int nc, const int32_t *c,
                       int64_t ldc, const int32_t *colsum);

static void epi_tile_scalar(const npq_gemm_args *g, int64_t b, int64_t m0, int mr, int64_t n0, int nc,
                            const int32_t *c, int64_t ldc, const int32_t *colsum) {
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nc; j++) epi_one(g, b, m0 + r, n0 + j, g->row_offset ? colsum[j] : 0, c[r * ldc + j]);
}

#if NPQ_X86
NPQ_TARGET_AVX2 static void epi_tile_avx2(const npq_gemm_args *g, int64_t b, int64_t m0, int mr, int64_t n0,
                                          int nc, const int32_t *c, int64_t ldc, const int32_t *colsum) {
    const int kind = (int)g->out_kind;
    const __m256i bf16_nan = _mm256_set1_epi32(npq_bf16_nan);
    for (int r = 0; r < mr; r++) {
        int64_t m = m0 + r;
        int64_t orow = (b * g->m + m) * g->n;
        const int32_t *cr = c + r * ldc;
        int j = 0;
        for (; j + 8 <= nc; j += 8) {
            int64_t n = n0 + j;
            __m256i acc = _mm256_loadu_si256((const __m256i *)(cr + j));
            if (g->bias_i32)
                acc = _mm256_add_epi32(acc, _mm256_loadu_si256((const __m256i *)(g->bias_i32 + b * g->bias_i32_bstride + n)));
            if (kind == OUT_INT32) {
                _mm256_storeu_si256((__m256i *)((int32_t *)g->out + orow + n), acc);
                continue;
            }
            __m256 v = _mm256_cvtepi32_ps(acc);
            if (g->row_offset) {
                __m256 cs = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(colsum + j)));
                v = _mm256_sub_ps(v, _mm256_mul_ps(_mm256_set1_ps(g->row_offset[m]), cs));
            }
            if (g->scale)
                v = _mm256_mul_ps(v, g->scale_nstride ? _mm256_loadu_ps(g->scale + n) : _mm256_set1_ps(g->scale[0]));
            if (g->pertoken) v = _mm256_mul_ps(v, _mm256_set1_ps(g->pertoken[m]));
            if (g->add) {
                const float *ad = g->add + b * g->add_bstride;
                v = _mm256_add_ps(v, g->add_nstride ? _mm256_loadu_ps(ad + n) : _mm256_set1_ps(ad[0]));
            }
            switch (kind) {
            case OUT_INT8: {
                v = _mm256_and_ps(v, _mm256_cmp_ps(v, v, _CMP_ORD_Q)); /* NaN -> 0 */
                v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-128.0f)), _mm256_set1_ps(127.0f));
                __m256i i = _mm256_cvtps_epi32(v); /* RNE (default MXCSR) */
                __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
                _mm_storel_epi64((__m128i *)((int8_t *)g->out + orow + n), _mm_packs_epi16(p16, p16));
                break;
            }
            case OUT_F16:
                _mm_storeu_si128((__m128i *)((uint16_t *)g->out + orow + n), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
                break;
            case OUT_BF16: {
                __m256i rounded = npq_bf16_bits_avx2(v, bf16_nan);
                __m128i p = _mm_packus_epi32(_mm256_castsi256_si128(rounded), _mm256_extracti128_si256(rounded, 1));
                _mm_storeu_si128((__m128i *)((uint16_t *)g->out + orow + n), p);
                break;
            }
            default: _mm256_storeu_ps((float *)g->out + orow + n, v); break;
            }
        }
        for (; j < nc; j++) epi_one(g, b, m, n0 + j, g->row_offset ? colsum[j] : 0, cr[j]);
    }
}
#endif

/* ================================================================= driver */

/* A micro-kernel: adds an (mr x np panels) tile over kq groups of 4 k into c (row stride ldc). a:
 * packed activation rows (int16, or a ^ 0x80 bytes for VNNI) of stride lda; w: the first panel's
 * block, wps bytes between panels; pf: the block the caller reads next (a prefetch hint). */
typedef void (*ukr_fn)(int mr, int np, int64_t kq, const void *a, int64_t lda, const uint8_t *w, int64_t wps,
                       int32_t *c, int64_t ldc, const uint8_t *pf);

/* A GEMM variant's entry points and shape (the tables end the file). */
typedef struct gemm_impl {
    int vnni;         /* u8 activations (a ^ 0x80), tiles start at -128 * colsum, up to 4 panels per call */
    int mr;           /* rows per micro-tile */
    int kc4;          /* groups of 4 k per K block */
    pack_row_fn pack; /* contiguous activation row -> packed row (NULL: the element loop) */
    pack_panel_fn pack_panel; /* weight panels (NULL: the scalar loop) */
    ukr_fn ukr;
    epi_fn epilogue;
} gemm_impl;

typedef struct {
    const npq_gemm_args *g;
    const gemm_impl *impl;
    int vnni;
    int64_t k4, np, kp, lda;
    const void *apack;
    int64_t a_rows_stride; /* elements between x1 batches in apack (m * kp) */
    int64_t w_bstride;     /* bytes per weight batch */
    int64_t colsum_bstride;
    int64_t mr, mc, ng, kc4;
    int64_t mblocks, ngroups;
    int32_t *cbufs;          /* one tile buffer per worker range (at most nthreads) */
    int64_t cbuf_elems;
    atomic_int next_cbuf;
} gemm_ctx;

/* Packs one weight batch: w is the logical (k, n) int8 matrix with element strides (sk, sn).
 * out: npq_gemm_packed_bytes(k, n) bytes; colsum: npq_gemm_panels(n) * 16 int32. */
NPQ_API int npq_gemm_pack_b(const int8_t *w, int64_t k, int64_t n, int64_t sk, int64_t sn, uint8_t *out,
                            int32_t *colsum, int nthreads) {
    if (k < 0 || n < 0) return GEMM_EBADSIZE;
    int64_t np = ceil_div(n, PANEL);
    if (np == 0) return GEMM_OK;
    if (!out || !colsum || (k > 0 && !w)) return GEMM_ENULL;
    pack_b_ctx c = {w, k, n, sk, sn, ceil_div(k, KGROUP), out, colsum,
                    ((const gemm_impl *)npq_pick(&npq_kernel_gemm_s8)->impl)->pack_panel};
    int64_t grain = ceil_div(1 << 16, c.k4 * GROUP_BYTES + 1);
    npq_parallel_for(np, grain, nthreads, pack_b_range, &c);
    return GEMM_OK;
}

/* The epilogue of a tile of `cols` columns from n0 (clipped to n), shared by the GEMM and GEMV
 * drivers so both round identically. colsum: as epi_tile_scalar. */
static void tile_epilogue(const npq_gemm_args *g, epi_fn epi, int64_t b, int64_t m0, int mr, int64_t n0, int cols,
                          const int32_t *c, int64_t ldc, const int32_t *colsum) {
    int nc = (int)(g->n - n0 < cols ? g->n - n0 : cols);
    if (nc > 0) epi(g, b, m0, mr, n0, nc, c, ldc, colsum);
}

/* Starting value of the tile buffer: 0, or -128 * colsum for VNNI's a + 128 activations. */
static void init_tile(const gemm_ctx *x, int32_t *cbuf, int64_t ldc, int64_t rows, int64_t cols,
                      const int32_t *colsum) {
    for (int64_t r = 0; r < rows; r++) {
        int32_t *cr = cbuf + r * ldc;
        if (x->vnni) {
            for (int64_t j = 0; j < cols; j++) cr[j] = (int32_t)(0u - ((uint32_t)colsum[j] << 7));
        } else {
            memset(cr, 0, (size_t)cols * 4);
        }
    }
}

static void gemm_range(void *vctx, int64_t t_begin, int64_t t_end) {
    gemm_ctx *x = (gemm_ctx *)vctx;
    const npq_gemm_args *g = x->g;
    int64_t ldc = x->ng * PANEL;
    int32_t *cbuf = x->cbufs + (int64_t)atomic_fetch_add(&x->next_cbuf, 1) * x->cbuf_elems;
    int64_t nkb = x->k4 == 0 ? 1 : ceil_div(x->k4, x->kc4);
    int64_t wps = x->k4 * GROUP_BYTES; /* bytes per panel */
    for (int64_t t = t_begin; t < t_end; t++) {
        int64_t b = t / (x->mblocks * x->ngroups);
        int64_t rem = t % (x->mblocks * x->ngroups);
        int64_t mb = rem / x->ngroups, gi = rem % x->ngroups;
        int64_t m0 = mb * x->mc, rows = g->m - m0 < x->mc ? g->m - m0 : x->mc;
        int64_t p0 = gi * x->ng, npan = x->np - p0 < x->ng ? x->np - p0 : x->ng;
        int64_t wb = g->w_bidx[b], ab = g->a_bidx[b];
        const uint8_t *wbase = g->w + wb * x->w_bstride;
        const int32_t *colsum = g->colsum + wb * x->colsum_bstride;
        /* VNNI: 4 panels per call when the block has few rows (more independent chains), else 2 */
        int64_t pstep = x->vnni ? (rows <= 4 ? 4 : 2) : 1;
        init_tile(x, cbuf, ldc, rows, npan * PANEL, colsum + p0 * PANEL);
        int64_t nparts = ceil_div(rows, x->mr);
        for (int64_t kb = 0; kb < nkb; kb++) {
            int64_t q0 = kb * x->kc4;
            int64_t kq = x->k4 - q0 < x->kc4 ? x->k4 - q0 : x->kc4;
            int last = kb == nkb - 1;
            for (int64_t pj = 0; pj < npan;) {
                int np = (int)(npan - pj < pstep ? npan - pj : pstep);
                if (np == 3) np = 2; /* kernels exist for 1, 2 and 4 panels */
                int64_t p = p0 + pj;
                const uint8_t *wp = wbase + p * wps + q0 * GROUP_BYTES;
                /* the block read after this one: next panels, else the group's first at the next K block */
                const uint8_t *next = pj + np < npan ? wp + np * wps
                                      : (kb + 1 < nkb ? wbase + p0 * wps + (q0 + x->kc4) * GROUP_BYTES : wp);
                for (int64_t part = 0; part < nparts; part++) {
                    /* balanced micro-rows (8 rows on AVX2: 4 + 4, not 6 + 2) */
                    int64_t ir = part * rows / nparts;
                    int mr = (int)((part + 1) * rows / nparts - ir);
                    const uint8_t *pf = part == 0 ? next : wp; /* the first pass brings the lines in */
                    int32_t *c = cbuf + ir * ldc + pj * PANEL;
                    int64_t arow = ab * x->a_rows_stride + (m0 + ir) * x->lda + q0 * KGROUP;
                    const char *ar = (const char *)x->apack + arow * (x->vnni ? 1 : 2);
                    x->impl->ukr(mr, np, kq, ar, x->lda, wp, wps, c, ldc, pf);
                    if (last)
                        tile_epilogue(g, x->impl->epilogue, b, m0 + ir, mr, p * PANEL, np * PANEL, c, ldc, colsum + p * PANEL);
                }
                pj += np;
            }
        }
    }
}

/* ================================================================= natural-layout GEMV
 *
 * Small M (decode) against the weight as it lies in memory, W[kk][j] = wn[j * wn_sn + kk * wn_sk]
 * (a row-major (n, k) nn.Linear weight: wn_sn = k, wn_sk = 1). Nothing is packed or cached: the
 * call is bound by DRAM bandwidth, and packing would read the weight once more (or keep a second
 * copy of the model). Each weight row (one output column) is streamed once, in address order.
 *
 * Activations are widened to int16 once per call (the GEMM's own pack_a_range); each weight row
 * is widened in registers (vpmovsxbw) and multiplied with vpmaddwd, exact as in the GEMM. Column
 * sums (row_offset only) come from the same widened weights, added in int16 lanes.
 *
 * A task of the dynamic parallel loop is a run of columns of one output batch, done in blocks
 * of 64: each block walks M 8 rows at a time (its weights still in cache for later row groups),
 * fills an int32 tile and hands it to tile_epilogue, so results are bit-identical to the packed
 * GEMM's. For M = 1 the AVX2 kernel reads faster than DRAM delivers; larger M is bound by
 * vpmaddwd (M per 16 weight bytes). There is no AVX-512 kernel: AVX-512 machines run this one. */

#define GV_ROWS 8       /* activation rows per pass over a weight block */
#define GV_MAXNC 4      /* columns per micro-tile */
#define GV_MAXNB 64     /* columns per epilogue block */
#define GV_PF_AHEAD 1024 /* bytes prefetched beyond the next micro-tile */
#define GV_STACK_ELEMS 8192 /* widened activations up to 16 KiB live on the stack */

/* Columns per micro-tile for mr rows: mr * nc accumulators stay within the 16 vector registers,
 * and more columns amortize the horizontal sums. */
static int gv_nc(int mr) { return mr == 1 ? 4 : mr <= 4 ? 2 : 1; }

/* Micro-tile, the scalar reference and the fallback for any strides: for r < mr, c < nc, with
 * W(c, kk) = w[c * sn + kk * sk] and all sums modulo 2^32,
 *   out[r * ldo + c] = sum_kk a[r][kk] * W(c, kk),   and if cs != NULL: cs[c] = sum_kk W(c, kk). */
static void gv_tile_scalar(int mr, int nc, int64_t k, const int16_t *const *a, const int8_t *w, int64_t sn,
                           int64_t sk, int32_t *out, int64_t ldo, int32_t *cs) {
    for (int c = 0; c < nc; c++) {
        uint32_t acc[GV_ROWS] = {0}, sum = 0;
        for (int64_t kk = 0; kk < k; kk++) {
            int32_t wv = w[c * sn + kk * sk];
            sum += (uint32_t)wv;
            for (int r = 0; r < mr; r++) acc[r] += (uint32_t)(a[r][kk] * wv);
        }
        for (int r = 0; r < mr; r++) out[r * ldo + c] = (int32_t)acc[r];
        if (cs) cs[c] = (int32_t)sum;
    }
}

#if NPQ_X86
/* Sums of a SIMD micro-tile: row r's column c at s[r * GV_MAXNC + c], column sums at row GV_ROWS. */
#define GV_SUMS ((GV_ROWS + 1) * GV_MAXNC)

/* The last k % 8 or k % 16 of a SIMD micro-tile, added into s. Out of line so that GCC does not
 * vectorize and unroll these few iterations inside every kernel instance. */
static __attribute__((noinline)) void gv_tail(int mr, int nc, int cs, int64_t k0, int64_t k,
                                              const int16_t *const *a, const int8_t *w, int64_t sn, uint32_t *s) {
    for (int c = 0; c < nc; c++)
        for (int64_t kk = k0; kk < k; kk++) {
            int32_t wv = w[c * sn + kk];
            for (int r = 0; r < mr; r++) s[r * GV_MAXNC + c] += (uint32_t)(a[r][kk] * wv);
            if (cs) s[GV_ROWS * GV_MAXNC + c] += (uint32_t)wv;
        }
}

/* Zeroes the sums a tile uses (not all of s: GCC clears a whole array with a slow rep stosq). */
static inline __attribute__((always_inline)) void gv_sums_init(const int MR, const int NC, uint32_t *s) {
    for (int c = 0; c < NC; c++) {
        for (int r = 0; r < MR; r++) s[r * GV_MAXNC + c] = 0;
        s[GV_ROWS * GV_MAXNC + c] = 0;
    }
}

/* s[c] += sum of the int32 lanes of v[c], c < NC. */
NPQ_TARGET_AVX2 static inline __attribute__((always_inline)) void gv_hsum_x(const int NC, const __m128i *v,
                                                                            uint32_t *s) {
    for (int c = 0; c < NC; c++) {
        __m128i t = _mm_add_epi32(v[c], _mm_shuffle_epi32(v[c], 0x4E));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
        s[c] += (uint32_t)_mm_cvtsi128_si32(t);
    }
}

NPQ_TARGET_AVX2 static inline __attribute__((always_inline)) void gv_hsum_y(const int NC, const __m256i *v,
                                                                            uint32_t *s) {
    __m128i h[GV_MAXNC];
    for (int c = 0; c < NC; c++)
        h[c] = _mm_add_epi32(_mm256_castsi256_si128(v[c]), _mm256_extracti128_si256(v[c], 1));
    gv_hsum_x(NC, h, s);
}

/* Software prefetch, once per 64 bytes the tile consumes: the same point in the next micro-tile
 * plus GV_PF_AHEAD. With dense rows (sn = k) the tiles are consecutive, so this streams the block
 * ahead of the reads; the hardware prefetchers alone do not keep NC interleaved rows in flight. */
#define GV_PREFETCH(STEP)                                                              \
    if (((kk * NC) & 63) < NC * (STEP)) _mm_prefetch((const char *)(pf + (uintptr_t)(kk * NC)), _MM_HINT_T0)

/* gv_tile_scalar for sk = 1 with 128-bit vectors, 8 k per step: for mr <= 2, where the weights'
 * widening is paid by one or two rows (vpmovsxbw ymm costs twice vpmovsxbw xmm on cores with
 * 128-bit units, such as Zen 1). Column sums: the widened weights are added in int16 lanes
 * (vpaddw, no second vpmaddwd), flushed to int32 every 256 steps (|256 * -128| fits in int16). */
NPQ_TARGET_AVX2 static inline __attribute__((always_inline)) void gv_tile_x_t(
    const int MR, const int NC, const int CS, int64_t k, const int16_t *const *a, const int8_t *w, int64_t sn,
    int32_t *out, int64_t ldo, int32_t *cs) {
    __m128i acc[GV_ROWS][GV_MAXNC], csum[GV_MAXNC];
    uint32_t s[GV_SUMS];
    gv_sums_init(MR, NC, s);
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NC; c++) acc[r][c] = _mm_setzero_si128();
    uintptr_t pf = (uintptr_t)w + (uintptr_t)(NC * sn + GV_PF_AHEAD); /* may point past the weights */
    int64_t kv = k & ~(int64_t)7;
    for (int64_t k0 = 0; k0 < kv; k0 += 256 * 8) {
        int64_t k1 = kv - k0 < 256 * 8 ? kv : k0 + 256 * 8;
        for (int c = 0; c < NC; c++) csum[c] = _mm_setzero_si128();
        for (int64_t kk = k0; kk < k1; kk += 8) {
            GV_PREFETCH(8);
#pragma GCC unroll 16
            for (int c = 0; c < NC; c++) {
                __m128i wv = _mm_cvtepi8_epi16(_mm_loadl_epi64((const __m128i *)(w + c * sn + kk)));
                if (CS) csum[c] = _mm_add_epi16(csum[c], wv);
#pragma GCC unroll 16
                for (int r = 0; r < MR; r++) {
                    __m128i av = _mm_load_si128((const __m128i *)(a[r] + kk));
                    acc[r][c] = _mm_add_epi32(acc[r][c], _mm_madd_epi16(wv, av));
                }
            }
        }
        if (CS) {
            for (int c = 0; c < NC; c++) csum[c] = _mm_madd_epi16(csum[c], _mm_set1_epi16(1));
            gv_hsum_x(NC, csum, s + GV_ROWS * GV_MAXNC);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) gv_hsum_x(NC, acc[r], s + r * GV_MAXNC);
    if (kv < k) gv_tail(MR, NC, CS, kv, k, a, w, sn, s);
    for (int c = 0; c < NC; c++) {
        for (int r = 0; r < MR; r++) out[r * ldo + c] = (int32_t)s[r * GV_MAXNC + c];
        if (CS) cs[c] = (int32_t)s[GV_ROWS * GV_MAXNC + c];
    }
}

/* The same with 256-bit vectors, 16 k per step, for mr >= 3 (the widening is shared by the rows). */
NPQ_TARGET_AVX2 static inline __attribute__((always_inline)) void gv_tile_y_t(
    const int MR, const int NC, const int CS, int64_t k, const int16_t *const *a, const int8_t *w, int64_t sn,
    int32_t *out, int64_t ldo, int32_t *cs) {
    __m256i acc[GV_ROWS][GV_MAXNC], csum[GV_MAXNC];
    uint32_t s[GV_SUMS];
    gv_sums_init(MR, NC, s);
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NC; c++) acc[r][c] = _mm256_setzero_si256();
    uintptr_t pf = (uintptr_t)w + (uintptr_t)(NC * sn + GV_PF_AHEAD); /* may point past the weights */
    int64_t kv = k & ~(int64_t)15;
    for (int64_t k0 = 0; k0 < kv; k0 += 256 * 16) {
        int64_t k1 = kv - k0 < 256 * 16 ? kv : k0 + 256 * 16;
        for (int c = 0; c < NC; c++) csum[c] = _mm256_setzero_si256();
        for (int64_t kk = k0; kk < k1; kk += 16) {
            GV_PREFETCH(16);
#pragma GCC unroll 16
            for (int c = 0; c < NC; c++) {
                __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + c * sn + kk)));
                if (CS) csum[c] = _mm256_add_epi16(csum[c], wv);
#pragma GCC unroll 16
                for (int r = 0; r < MR; r++) {
                    __m256i av = _mm256_load_si256((const __m256i *)(a[r] + kk));
                    acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(wv, av));
                }
            }
        }
        if (CS) {
            for (int c = 0; c < NC; c++) csum[c] = _mm256_madd_epi16(csum[c], _mm256_set1_epi16(1));
            gv_hsum_y(NC, csum, s + GV_ROWS * GV_MAXNC);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) gv_hsum_y(NC, acc[r], s + r * GV_MAXNC);
    if (kv < k) gv_tail(MR, NC, CS, kv, k, a, w, sn, s);
    for (int c = 0; c < NC; c++) {
        for (int r = 0; r < MR; r++) out[r * ldo + c] = (int32_t)s[r * GV_MAXNC + c];
        if (CS) cs[c] = (int32_t)s[GV_ROWS * GV_MAXNC + c];
    }
}
#undef GV_PREFETCH

/* Instances: nc = gv_nc(mr) for whole tiles, nc = 1 for the columns left over; cs: column sums. */
NPQ_TARGET_AVX2 static void gv_tile_avx2(int mr, int nc, int64_t k, const int16_t *const *a, const int8_t *w,
                                         int64_t sn, int32_t *out, int64_t ldo, int32_t *cs) {
#define GV_X(MR, NC)                                                                     \
    case MR * 16 + NC:                                                                   \
        if (cs) gv_tile_x_t(MR, NC, 1, k, a, w, sn, out, ldo, cs);                       \
        else gv_tile_x_t(MR, NC, 0, k, a, w, sn, out, ldo, cs);                          \
        return;
#define GV_Y(MR, NC)                                                                     \
    case MR * 16 + NC:                                                                   \
        if (cs) gv_tile_y_t(MR, NC, 1, k, a, w, sn, out, ldo, cs);                       \
        else gv_tile_y_t(MR, NC, 0, k, a, w, sn, out, ldo, cs);                          \
        return;
    switch (mr * 16 + nc) {
        GV_X(1, 4) GV_X(2, 2) GV_Y(3, 2) GV_Y(4, 2) GV_Y(5, 1) GV_Y(6, 1) GV_Y(7, 1) GV_Y(8, 1)
        GV_X(1, 1) GV_X(2, 1) GV_Y(3, 1) GV_Y(4, 1)
    default: break;
    }
#undef GV_X
#undef GV_Y
    gv_tile_scalar(mr, nc, k, a, w, sn, 1, out, ldo, cs); /* not reached: the driver asks for the above */
}
#endif

/* A GEMV micro-tile (see gv_tile_scalar) for unit-stride k. */
typedef void (*gv_tile_fn)(int mr, int nc, int64_t k, const int16_t *const *a, const int8_t *w, int64_t sn,
                           int32_t *out, int64_t ldo, int32_t *cs);

/* A GEMV variant's entry points (the tables end the file). */
typedef struct gemv_impl {
    pack_row_fn pack; /* contiguous activation row -> int16 (NULL: the element loop) */
    gv_tile_fn tile;  /* unit-stride k (NULL: the scalar tile; other strides always take it) */
    epi_fn epilogue;
} gemv_impl;

typedef struct {
    const npq_gemm_args *g;
    const gemv_impl *impl;
    const int16_t *abuf; /* (a_nbatch * m) widened activation rows of lda */
    int64_t lda, nb, nblocks;
} gemv_ctx;

static void gemv_tile(const gemv_ctx *x, int mr, int nc, const int16_t *const *a, const int8_t *w, int32_t *out,
                      int64_t ldo, int32_t *cs) {
    const npq_gemm_args *g = x->g;
    if (x->impl->tile && g->wn_sk == 1) {
        x->impl->tile(mr, nc, g->k, a, w, g->wn_sn, out, ldo, cs);
        return;
    }
    gv_tile_scalar(mr, nc, g->k, a, w, g->wn_sn, g->wn_sk, out, ldo, cs);
}

/* Columns [n0, n0 + cols) of output batch b, cols <= GV_MAXNB: all M rows, then the epilogue. */
static void gemv_block(const gemv_ctx *x, int64_t b, int64_t n0, int cols) {
    const npq_gemm_args *g = x->g;
    int32_t tile[GV_ROWS * GV_MAXNB], colsum[GV_MAXNB];
    const int8_t *wb = g->wn + g->w_bidx[b] * g->wn_bstride + n0 * g->wn_sn;
    const int16_t *ab = x->abuf + g->a_bidx[b] * g->m * x->lda;
    for (int64_t r0 = 0; r0 < g->m; r0 += GV_ROWS) {
        int mr = (int)(g->m - r0 < GV_ROWS ? g->m - r0 : GV_ROWS);
        int want_cs = g->row_offset && r0 == 0; /* column sums with the first row group */
        const int16_t *arow[GV_ROWS];
        for (int r = 0; r < mr; r++) arow[r] = ab + (r0 + r) * x->lda;
        int nc = gv_nc(mr);
        for (int j = 0; j < cols; j += nc) {
            if (cols - j < nc) nc = 1;
            gemv_tile(x, mr, nc, arow, wb + j * g->wn_sn, tile + j, GV_MAXNB, want_cs ? colsum + j : NULL);
        }
        tile_epilogue(g, x->impl->epilogue, b, r0, mr, n0, cols, tile, GV_MAXNB, g->row_offset ? colsum : NULL);
    }
}

/* Tasks [t_begin, t_end): task t is columns [n0, n0 + nb) of output batch t / nblocks. */
static void gemv_range(void *vctx, int64_t t_begin, int64_t t_end) {
    const gemv_ctx *x = (const gemv_ctx *)vctx;
    const npq_gemm_args *g = x->g;
    for (int64_t t = t_begin; t < t_end; t++) {
        int64_t b = t / x->nblocks, n0 = t % x->nblocks * x->nb;
        int64_t n1 = g->n - n0 < x->nb ? g->n : n0 + x->nb;
        for (; n0 < n1; n0 += GV_MAXNB) gemv_block(x, b, n0, (int)(n1 - n0 < GV_MAXNB ? n1 - n0 : GV_MAXNB));
    }
}

/* npq_gemm_s8 with natural-layout weights (g->wn); arguments already validated. */
static int gemv_natural(const npq_gemm_args *g, int nthreads) {
    gemv_ctx x;
    memset(&x, 0, sizeof x);
    x.g = g;
    x.impl = (const gemv_impl *)npq_pick(&npq_kernel_gemv_s8)->impl;
    x.lda = ceil_div(g->k, 16) * 16; /* 32-byte aligned rows for the SIMD loads */
    /* one thread for small jobs: waking the other costs about as much as streaming 64 KiB */
    int64_t wbytes = g->batch * g->n * g->k;
    if (wbytes * ceil_div(g->m, GV_ROWS) < ((int64_t)1 << 16)) nthreads = 1;
    if (nthreads < 1) nthreads = 1;
    /* Tasks of ~1/8 of a thread's share, within [32 KiB / min(m, 8), 512 KiB]: small enough to
     * balance the threads (and a descheduled one), large enough that each thread streams long runs
     * (smaller for larger m, whose bytes cost more compute). A task is a whole number of epilogue
     * blocks when large, else a multiple of 8 columns (the epilogue's width). */
    int64_t task = wbytes / (8 * nthreads), task_min = ((int64_t)32 << 10) / (g->m < GV_ROWS ? g->m : GV_ROWS);
    task = task < task_min ? task_min : task > ((int64_t)512 << 10) ? (int64_t)512 << 10 : task;
    int64_t nb = task / (g->k > 0 ? g->k : 1);
    x.nb = nb >= GV_MAXNB ? nb / GV_MAXNB * GV_MAXNB : nb >= 8 ? nb / 8 * 8 : 8;
    x.nblocks = ceil_div(g->n, x.nb);

    /* widened activations: on the stack when small (decode), saving a malloc per call */
    _Alignas(64) int16_t stack_buf[GV_STACK_ELEMS];
    int64_t arows = g->a_nbatch * g->m;
    int16_t *abuf = stack_buf, *heap = NULL;
    if (arows * x.lda > GV_STACK_ELEMS) {
        heap = (int16_t *)aligned_alloc(64, (size_t)(arows * x.lda * 2 + 63) / 64 * 64);
        if (!heap) return GEMM_ENOMEM;
        abuf = heap;
    }
    if (x.lda > 0) {
        pack_a_ctx pa = {g, APACK_S16, x.lda, x.lda, abuf, x.impl->pack};
        npq_parallel_for(arows, ceil_div(1 << 15, x.lda), nthreads, pack_a_range, &pa);
    }
    x.abuf = abuf;
    npq_parallel_for_dynamic(g->batch * x.nblocks, 1, 1, nthreads, gemv_range, &x);
    free(heap);
    return GEMM_OK;
}

/* Runs the GEMM (or, with g->wn, the natural-layout GEMV) + epilogue. Returns 0 or a negative
 * GEMM_E* code (nothing written on error). */
NPQ_API int npq_gemm_s8(const npq_gemm_args *g, int nthreads) {
    if (!g) return GEMM_ENULL;
    if (g->batch < 0 || g->m < 0 || g->n < 0 || g->k < 0 || g->a_nbatch < 0 || g->w_nbatch < 0)
        return GEMM_EBADSIZE;
    if (g->out_kind != OUT_INT32 && g->out_kind != OUT_INT8 && g->out_kind != OUT_F16 && g->out_kind != OUT_BF16 &&
        g->out_kind != OUT_F32)
        return GEMM_EKIND;
    if (g->batch == 0 || g->m == 0 || g->n == 0) return GEMM_OK;
    int natural = g->wn != NULL; /* natural-layout weights: the GEMV path, no packed w / colsum */
    if (!g->out || !g->a_bidx || !g->w_bidx || (!natural && (!g->w || !g->colsum)) ||
        (g->k > 0 && (!g->a || !g->a_boff)))
        return GEMM_ENULL;
    for (int64_t b = 0; b < g->batch; b++) {
        if (g->a_bidx[b] < 0 || g->a_bidx[b] >= g->a_nbatch || g->w_bidx[b] < 0 || g->w_bidx[b] >= g->w_nbatch)
            return GEMM_EINDEX;
    }
    if (natural) return gemv_natural(g, nthreads);

    gemm_ctx x;
    memset(&x, 0, sizeof x);
    x.g = g;
    x.impl = (const gemm_impl *)npq_pick(&npq_kernel_gemm_s8)->impl;
    x.vnni = x.impl->vnni;
    x.k4 = ceil_div(g->k, KGROUP);
    x.kp = x.k4 * KGROUP;
    x.lda = x.kp + 32;
    x.np = ceil_div(g->n, PANEL);
    x.w_bstride = x.np * x.k4 * GROUP_BYTES;
    x.colsum_bstride = x.np * PANEL;
    x.mr = x.impl->mr;
    x.mc = x.mr * ceil_div(64, x.mr);
    x.kc4 = x.impl->kc4;
    x.mblocks = ceil_div(g->m, x.mc);

    int64_t macs = g->batch * g->m * g->n * (g->k + 1);
    if (macs < (1 << 20)) nthreads = 1; /* a few microseconds of work: waking a thread costs as much */
    if (nthreads < 1) nthreads = 1;
    int64_t outer = g->batch * x.mblocks;
    int64_t groups_wanted = ceil_div(4 * (int64_t)nthreads, outer);
    x.ng = ceil_div(x.np, groups_wanted);
    if (x.ng > 16) x.ng = 16;
    if (x.ng < 1) x.ng = 1;
    if (x.vnni && x.ng > 1) x.ng = (x.ng + 3) / 4 * 4; /* whole 4-panel steps */
    x.ngroups = ceil_div(x.np, x.ng);

    /* pack activations once per call (every x1 batch) */
    size_t esz = x.vnni ? 1 : 2;
    size_t abytes = (size_t)(g->a_nbatch * g->m * x.lda) * esz + 64;
    void *apack = aligned_alloc(64, (abytes + 63) / 64 * 64);
    x.cbuf_elems = x.mc * x.ng * PANEL;
    if (nthreads > 256) nthreads = 256;
    x.cbufs = (int32_t *)aligned_alloc(64, (size_t)(nthreads * x.cbuf_elems * 4));
    atomic_init(&x.next_cbuf, 0);
    if (!apack || !x.cbufs) {
        free(apack);
        free(x.cbufs);
        return GEMM_ENOMEM;
    }
    pack_a_ctx pa = {g, x.vnni ? APACK_U8X : APACK_S16, x.kp, x.lda, apack, x.impl->pack};
    int64_t arows = g->a_nbatch * g->m;
    if (x.kp > 0) npq_parallel_for(arows, ceil_div(1 << 15, x.kp), nthreads, pack_a_range, &pa);
    x.apack = apack;
    x.a_rows_stride = g->m * x.lda;

    npq_parallel_for(g->batch * x.mblocks * x.ngroups, 1, nthreads, gemm_range, &x);
    free(apack);
    free(x.cbufs);
    return GEMM_OK;
}

/* ================================================================= the variants, best first */

/* The micro-kernels behind one signature (AVX2 and scalar take one panel per call). */
static void ukr_scalar_v(int mr, int np, int64_t kq, const void *a, int64_t lda, const uint8_t *w, int64_t wps,
                         int32_t *c, int64_t ldc, const uint8_t *pf) {
    (void)pf;
    for (int p = 0; p < np; p++) ukr_scalar(mr, kq, (const int16_t *)a, lda, w + p * wps, c + p * PANEL, ldc);
}

static const gemm_impl gemm_scalar = {0, SCALAR_MR, 128, NULL, NULL, ukr_scalar_v, epi_tile_scalar};
static const gemv_impl gemv_scalar = {NULL, NULL, epi_tile_scalar};
#if NPQ_X86
NPQ_TARGET_AVX2 static void ukr_avx2_v(int mr, int np, int64_t kq, const void *a, int64_t lda, const uint8_t *w,
                                       int64_t wps, int32_t *c, int64_t ldc, const uint8_t *pf) {
    for (int p = 0; p < np; p++) ukr_avx2(mr, kq, (const int16_t *)a, lda, w + p * wps, c + p * PANEL, ldc, pf);
}

NPQ_TARGET_AVX512VNNI static void ukr_vnni_v(int mr, int np, int64_t kq, const void *a, int64_t lda,
                                             const uint8_t *w, int64_t wps, int32_t *c, int64_t ldc,
                                             const uint8_t *pf) {
    ukr_vnni(mr, np, kq, (const uint8_t *)a, lda, w, wps, c, ldc, pf);
}

static const gemm_impl gemm_vnni = {1, VNNI_MR, 256, pack_row_u8x_avx2, pack_panel_avx2, ukr_vnni_v, epi_tile_avx2};
static const gemm_impl gemm_avx2 = {0, AVX2_MR, 128, pack_row_s16_avx2, pack_panel_avx2, ukr_avx2_v, epi_tile_avx2};
/* No AVX-512 GEMV: AVX-512 machines run the AVX2 one (bound by memory, not by vector width). */
static const gemv_impl gemv_avx2 = {pack_row_s16_avx2, gv_tile_avx2, epi_tile_avx2};
#endif

static const npq_variant gemm_variants[] = {
#if NPQ_X86
    {"avx512-vnni", NPQ_ISA_AVX512, NPQ_CPU_AVX512VNNI, &gemm_vnni},
    {"avx2", NPQ_ISA_AVX2, 0, &gemm_avx2},
#endif
    {"scalar", NPQ_ISA_SCALAR, 0, &gemm_scalar},
};
const npq_kernel npq_kernel_gemm_s8 = NPQ_KERNEL("gemm_s8", gemm_variants);

static const npq_variant gemv_variants[] = {
#if NPQ_X86
    {"avx2", NPQ_ISA_AVX2, 0, &gemv_avx2},
#endif
    {"scalar", NPQ_ISA_SCALAR, 0, &gemv_scalar},
};
const npq_kernel npq_kernel_gemv_s8 = NPQ_KERNEL("gemv_s8", gemv_variants);
