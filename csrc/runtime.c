/* CPU feature detection, the kernel-level switch, the parallel loops, and the settings kernels
 * share (huge-page advice, bf16 NaN).
 *
 * The parallel loops run on a backend: the torch operator library installs torch's intra-op pool
 * at load (one pool per process, shared with torch's own ops; like torch's, it does not survive
 * fork() with more than one thread: a forked child sets torch.set_num_threads(1), as DataLoader
 * workers do). Without a backend (standalone C drivers, sanitizer harnesses) a small pthread
 * pool of our own runs them, rebuilt lazily in a forked child. */
#define _GNU_SOURCE /* MADV_HUGEPAGE */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "npq.h"

#define NPQ_MAX_THREADS 256

static uint32_t g_features;
static int g_features_done;
static int g_isa_limit = 1 << 30;

NPQ_API uint32_t npq_cpu_features(void) {
    if (g_features_done) return g_features;
    uint32_t f = 0;
#if NPQ_X86 && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) f |= NPQ_CPU_AVX2;
    if (__builtin_cpu_supports("fma")) f |= NPQ_CPU_FMA;
    if (__builtin_cpu_supports("f16c")) f |= NPQ_CPU_F16C;
    if (__builtin_cpu_supports("avx512f")) f |= NPQ_CPU_AVX512F;
    if (__builtin_cpu_supports("avx512bw")) f |= NPQ_CPU_AVX512BW;
    if (__builtin_cpu_supports("avx512vnni")) f |= NPQ_CPU_AVX512VNNI;
    if (__builtin_cpu_supports("avx512vl")) f |= NPQ_CPU_AVX512VL;
    if (__builtin_cpu_supports("avx512dq")) f |= NPQ_CPU_AVX512DQ;
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 10
    if (__builtin_cpu_supports("avx512bf16")) f |= NPQ_CPU_AVX512BF16;
#endif
#elif defined(__aarch64__)
    f |= NPQ_CPU_NEON;
#endif
    g_features = f;
    g_features_done = 1;
    return f;
}

NPQ_API const char *npq_status_message(int status) {
    switch (status) {
    case NPQ_OK: return "success";
    case NPQ_ERR_ARG: return "invalid size, stride, count or code";
    case NPQ_ERR_BOUNDS: return "the tensor's sizes and strides reach outside its storage";
    case NPQ_ERR_NOMEM: return "out of memory";
    case NPQ_ERR_GROUP: return "group_index must be non-decreasing within [0, rows] and end at rows";
    case NPQ_ERR_DTYPE: return "unsupported dtype";
    case NPQ_ERR_NULL: return "a required pointer is missing";
    default: return "unknown status";
    }
}

NPQ_API int npq_best_isa(void) {
    uint32_t f = npq_cpu_features();
    uint32_t avx2 = NPQ_CPU_AVX2 | NPQ_CPU_FMA | NPQ_CPU_F16C;
    uint32_t avx512 = avx2 | NPQ_CPU_AVX512F | NPQ_CPU_AVX512BW | NPQ_CPU_AVX512VL | NPQ_CPU_AVX512DQ;
    if ((f & avx512) == avx512) return NPQ_ISA_AVX512;
    if ((f & avx2) == avx2) return NPQ_ISA_AVX2;
    return NPQ_ISA_SCALAR;
}

NPQ_API int npq_isa(void) {
    int best = npq_best_isa();
    return best < g_isa_limit ? best : g_isa_limit;
}

NPQ_API int npq_set_isa_limit(int level) {
    g_isa_limit = level < 0 ? 1 << 30 : level;
    return npq_isa();
}

NPQ_API const npq_variant *npq_pick(const npq_kernel *k) {
    const int level = npq_isa();
    const uint32_t have = npq_cpu_features();
    for (int i = 0; i < k->count; i++) {
        const npq_variant *row = &k->rows[i];
        if (row->isa <= level && (row->features & have) == row->features) return row;
    }
    return &k->rows[k->count - 1]; /* not reached: the scalar row needs nothing */
}

static const npq_kernel *const g_kernels[] = {
    &npq_kernel_dequant, &npq_kernel_dynamic_quant, &npq_kernel_int4_unpack, &npq_kernel_int4_pack,
    &npq_kernel_gemm_s8, &npq_kernel_gemv_s8,       &npq_kernel_gemv_int4,  &npq_kernel_gemm_s4,
};

NPQ_API int npq_kernel_count(void) { return (int)(sizeof g_kernels / sizeof g_kernels[0]); }

NPQ_API const npq_kernel *npq_kernel_at(int i) { return i >= 0 && i < npq_kernel_count() ? g_kernels[i] : NULL; }

/* bfloat16 NaN pattern of this process's torch (npq.h explains; set once when the operators load). */
uint16_t npq_bf16_nan = 0x7FC0;

NPQ_API void npq_set_bf16_nan(uint16_t bits) { npq_bf16_nan = bits; }

NPQ_API int npq_cast_f32(const float *in, int64_t n, int dtype, void *out) {
    if (n < 0 || (n > 0 && (!in || !out))) return NPQ_ERR_ARG;
    switch (dtype) {
    case NPQ_F32: memcpy(out, in, (size_t)n * 4); return NPQ_OK;
    case NPQ_F16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)out)[i] = npq_f32_to_f16(in[i]);
        return NPQ_OK;
    case NPQ_BF16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)out)[i] = npq_f32_to_bf16(in[i]);
        return NPQ_OK;
    default: return NPQ_ERR_DTYPE;
    }
}

/* ---------------------------------------------------------------- thread pool */

typedef struct {
    npq_range_fn fn;
    void *ctx;
    int64_t n;
    int parts;
} npq_job;

static pthread_mutex_t g_busy = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wake = PTHREAD_COND_INITIALIZER;
static pthread_cond_t g_done = PTHREAD_COND_INITIALIZER;
static int g_nworkers;              /* started worker threads */
static int g_sleepers;              /* workers blocked on g_wake (under g_lock) */
static _Atomic uint64_t g_generation; /* bumped (under g_lock) for each job */
static npq_job g_job;               /* written and copied under g_lock */
static _Atomic int g_pending;       /* workers still running the current job */

/* How long a worker (and the caller waiting for it) spins before blocking. A model runs ~200
 * small jobs back to back with ~0.1 ms of other work between them; a futex wake costs 30-50 us
 * on a VM, more than many of the jobs. Spinning on the otherwise idle core is cheap by
 * comparison; past this it sleeps, so an idle process burns nothing. */
#define NPQ_SPIN_NS 400000

static inline void cpu_relax(void) {
#if NPQ_X86
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Spins until *value differs from `old` (returns 1) or NPQ_SPIN_NS pass (returns 0). */
static int spin_while_u64(_Atomic uint64_t *value, uint64_t old) {
    uint64_t start = 0;
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(value, memory_order_acquire) != old) return 1;
        cpu_relax();
        if ((i & 255) == 0) { /* look at the clock now and then: it costs ~20 ns */
            uint64_t t = now_ns();
            if (!start) start = t;
            else if (t - start > NPQ_SPIN_NS) return 0;
        }
    }
}

static int spin_while_pending(void) {
    uint64_t start = 0;
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(&g_pending, memory_order_acquire) == 0) return 1;
        cpu_relax();
        if ((i & 255) == 0) {
            uint64_t t = now_ns();
            if (!start) start = t;
            else if (t - start > NPQ_SPIN_NS) return 0;
        }
    }
}

static void run_part(const npq_job *job, int part) {
    int64_t b = job->n * part / job->parts, e = job->n * (part + 1) / job->parts;
    if (b < e) job->fn(job->ctx, b, e);
}

static void *worker_main(void *arg) {
    int id = (int)(intptr_t)arg; /* 1-based: part 0 belongs to the caller */
    uint64_t seen = 0;
    for (;;) {
        if (!spin_while_u64(&g_generation, seen)) {
            pthread_mutex_lock(&g_lock);
            g_sleepers++;
            while (atomic_load(&g_generation) == seen) pthread_cond_wait(&g_wake, &g_lock);
            g_sleepers--;
            pthread_mutex_unlock(&g_lock);
        }
        pthread_mutex_lock(&g_lock); /* a consistent copy of the job that goes with the generation */
        seen = atomic_load(&g_generation);
        npq_job job = g_job;
        pthread_mutex_unlock(&g_lock);
        if (id >= job.parts) continue;
        run_part(&job, id);
        if (atomic_fetch_sub_explicit(&g_pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&g_lock); /* the caller may be blocked on g_done */
            pthread_cond_signal(&g_done);
            pthread_mutex_unlock(&g_lock);
        }
    }
    return NULL;
}

static void after_fork_child(void) {
    /* Worker threads do not survive fork: start afresh. */
    pthread_mutex_init(&g_busy, NULL);
    pthread_mutex_init(&g_lock, NULL);
    pthread_cond_init(&g_wake, NULL);
    pthread_cond_init(&g_done, NULL);
    g_nworkers = 0;
    g_sleepers = 0;
    atomic_store(&g_pending, 0);
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static void install_fork_handler(void) { pthread_atfork(NULL, NULL, after_fork_child); }

static npq_parallel_backend g_backend; /* NULL: our own pool */

NPQ_API void npq_set_parallel_backend(npq_parallel_backend backend) { g_backend = backend; }

/* A job's part i as a backend task (the backend calls it with [i, i + 1)). */
static void run_parts(void *ctx, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) run_part((const npq_job *)ctx, (int)i);
}

void npq_parallel_for(int64_t n, int64_t grain, int nthreads, npq_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int64_t parts = (n + grain - 1) / grain;
    if (nthreads > NPQ_MAX_THREADS) nthreads = NPQ_MAX_THREADS;
    if (parts > nthreads) parts = nthreads;
    if (parts <= 1) {
        fn(ctx, 0, n);
        return;
    }
    if (g_backend) {
        npq_job job = {fn, ctx, n, (int)parts};
        g_backend(parts, run_parts, &job);
        return;
    }
    if (pthread_mutex_trylock(&g_busy) != 0) { /* another thread's job holds the pool */
        fn(ctx, 0, n);
        return;
    }
    pthread_once(&g_once, install_fork_handler);
    pthread_mutex_lock(&g_lock);
    while (g_nworkers < parts - 1) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker_main, (void *)(intptr_t)(g_nworkers + 1)) != 0) break;
        pthread_detach(t);
        g_nworkers++;
    }
    if (parts > g_nworkers + 1) parts = g_nworkers + 1;
    g_job.fn = fn;
    g_job.ctx = ctx;
    g_job.n = n;
    g_job.parts = (int)parts;
    atomic_store(&g_pending, (int)parts - 1);
    atomic_fetch_add_explicit(&g_generation, 1, memory_order_release);
    if (g_sleepers) pthread_cond_broadcast(&g_wake);
    pthread_mutex_unlock(&g_lock);

    run_part(&g_job, 0);

    if (!spin_while_pending()) {
        pthread_mutex_lock(&g_lock);
        while (atomic_load(&g_pending) > 0) pthread_cond_wait(&g_done, &g_lock);
        pthread_mutex_unlock(&g_lock);
    }
    pthread_mutex_unlock(&g_busy);
}

/* The dynamic split runs as a static job of one range per thread; each range ignores its
 * bounds and claims pieces from the shared counter until none are left. */
typedef struct {
    npq_range_fn fn;
    void *ctx;
    int64_t n, chunk;
    _Atomic int64_t next;
} dynamic_job;

static void dynamic_worker(void *ctx, int64_t begin, int64_t end) {
    dynamic_job *d = (dynamic_job *)ctx;
    (void)begin;
    (void)end;
    for (;;) {
        int64_t c = atomic_fetch_add_explicit(&d->next, 1, memory_order_relaxed);
        if (c >= (d->n + d->chunk - 1) / d->chunk) return;
        int64_t b = c * d->chunk, e = b + d->chunk < d->n ? b + d->chunk : d->n;
        d->fn(d->ctx, b, e);
    }
}

void npq_parallel_for_dynamic(int64_t n, int64_t grain, int64_t chunk, int nthreads, npq_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (chunk < 1) chunk = 1;
    int64_t parts = (n + grain - 1) / grain;
    if (parts > nthreads) parts = nthreads;
    if (parts <= 1) {
        fn(ctx, 0, n);
        return;
    }
    dynamic_job d = {fn, ctx, n, chunk, 0};
    npq_parallel_for(parts, 1, (int)parts, dynamic_worker, &d);
}

/* ---------------------------------------------------------------- huge pages */

#define NPQ_HUGE_MIN (4u << 20) /* outputs this large get transparent huge pages */

/* A fresh large output is untouched memory: faulting it in 4 KiB at a time costs several
 * times the conversion itself (measured: 64 MiB fp16 output, ~1.5 vs 4-7 Gelem/s). Asking
 * for transparent huge pages on its 2 MiB-aligned interior before the first write removes
 * most of that cost; torch does the same for its own allocations under
 * THP_MEM_ALLOC_ENABLE. Advice only: contents and ownership are unchanged, errors ignored. */
void npq_advise_hugepages(void *p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)1 << 21;
    if (bytes < NPQ_HUGE_MIN) return;
    uintptr_t a = ((uintptr_t)p + huge - 1) & ~(huge - 1), e = ((uintptr_t)p + bytes) & ~(huge - 1);
    if (e > a) (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

/* ---------------------------------------------------------------- row layouts */

int npq_layout_init(npq_layout *l, int nd, const int64_t *sizes, const int64_t *strides, int64_t inner,
                    int64_t inner_stride, int64_t *rows) {
    if (nd < 0 || nd > NPQ_MAX_LEAD || (nd > 0 && (!sizes || !strides))) return NPQ_ERR_ARG;
    if (inner < 0 || inner_stride < 0) return NPQ_ERR_ARG;
    int64_t n = 1, t;
    l->nd = nd;
    l->inner = inner;
    l->inner_stride = inner_stride;
    for (int d = 0; d < nd; d++) {
        if (sizes[d] < 0 || strides[d] < 0) return NPQ_ERR_ARG;
        l->size[d] = sizes[d];
        l->stride[d] = strides[d];
        if (__builtin_mul_overflow(n, sizes[d], &n)) return NPQ_ERR_ARG;
    }
    if (__builtin_mul_overflow(n, inner, &t)) return NPQ_ERR_ARG;
    *rows = n;
    return NPQ_OK;
}

int npq_layout_check(const npq_layout *l, int64_t extent) {
    if (extent < 0) return NPQ_ERR_ARG;
    if (l->inner == 0) return NPQ_OK;
    for (int d = 0; d < l->nd; d++)
        if (l->size[d] == 0) return NPQ_OK;
    int64_t last = 0, t; /* offset of the last element: every stride is >= 0 */
    for (int d = 0; d < l->nd; d++) {
        if (__builtin_mul_overflow(l->size[d] - 1, l->stride[d], &t) || __builtin_add_overflow(last, t, &last))
            return NPQ_ERR_BOUNDS;
    }
    if (__builtin_mul_overflow(l->inner - 1, l->inner_stride, &t) || __builtin_add_overflow(last, t, &last))
        return NPQ_ERR_BOUNDS;
    return last < extent ? NPQ_OK : NPQ_ERR_BOUNDS;
}

/* ---------------------------------------------------------------- self-test */

typedef struct {
    int64_t *out;
} fill_ctx;

static void fill_range(void *ctx, int64_t b, int64_t e) {
    fill_ctx *c = (fill_ctx *)ctx;
    for (int64_t i = b; i < e; i++) c->out[i] = i * i;
}

static void add_range(void *ctx, int64_t b, int64_t e) {
    fill_ctx *c = (fill_ctx *)ctx;
    for (int64_t i = b; i < e; i++) c->out[i] += i * i + 1;
}

/* Writes i*i to out[0..n) through the pool: lets tests exercise threading directly. */
NPQ_API void npq_pool_selftest(int64_t *out, int64_t n, int nthreads) {
    fill_ctx c = {out};
    npq_parallel_for(n, 1, nthreads, fill_range, &c);
}

/* Adds i*i + 1 to out[i] for i in [0, n) through the dynamic split: from -1, every index
 * visited exactly once ends at i*i. */
NPQ_API void npq_pool_selftest_dynamic(int64_t *out, int64_t n, int64_t chunk, int nthreads) {
    fill_ctx c = {out};
    npq_parallel_for_dynamic(n, 1, chunk, nthreads, add_range, &c);
}
