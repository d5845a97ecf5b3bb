/* CPU feature detection, the kernel-level switch and a small persistent thread pool.
 *
 * Why our own pool and not OpenMP: torch ships its own libgomp, and a second OpenMP
 * runtime in one process oversubscribes cores or deadlocks after fork. A handful of
 * pthreads, sized by the thread count Python passes (torch.get_num_threads()), avoids
 * both. The pool is rebuilt lazily in a forked child. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdatomic.h>

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

static int best_isa(void) {
    uint32_t f = npq_cpu_features();
    uint32_t avx2 = NPQ_CPU_AVX2 | NPQ_CPU_FMA | NPQ_CPU_F16C;
    uint32_t avx512 = avx2 | NPQ_CPU_AVX512F | NPQ_CPU_AVX512BW | NPQ_CPU_AVX512VL | NPQ_CPU_AVX512DQ;
    if ((f & avx512) == avx512) return NPQ_ISA_AVX512;
    if ((f & avx2) == avx2) return NPQ_ISA_AVX2;
    return NPQ_ISA_SCALAR;
}

NPQ_API int npq_isa(void) {
    int best = best_isa();
    return best < g_isa_limit ? best : g_isa_limit;
}

NPQ_API int npq_set_isa_limit(int level) {
    g_isa_limit = level < 0 ? 1 << 30 : level;
    return npq_isa();
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
static int g_nworkers;        /* started worker threads */
static uint64_t g_generation; /* bumped for each job */
static npq_job g_job;
static int g_pending;         /* workers still running the current job */

static void run_part(const npq_job *job, int part) {
    int64_t b = job->n * part / job->parts, e = job->n * (part + 1) / job->parts;
    if (b < e) job->fn(job->ctx, b, e);
}

static void *worker_main(void *arg) {
    int id = (int)(intptr_t)arg; /* 1-based: part 0 belongs to the caller */
    uint64_t seen = 0;
    pthread_mutex_lock(&g_lock);
    for (;;) {
        while (g_generation == seen) pthread_cond_wait(&g_wake, &g_lock);
        seen = g_generation;
        npq_job job = g_job;
        pthread_mutex_unlock(&g_lock);
        if (id < job.parts) run_part(&job, id);
        pthread_mutex_lock(&g_lock);
        if (id < job.parts && --g_pending == 0) pthread_cond_signal(&g_done);
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
    g_pending = 0;
}

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static void install_fork_handler(void) { pthread_atfork(NULL, NULL, after_fork_child); }

void npq_parallel_for(int64_t n, int64_t grain, int nthreads, npq_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int64_t parts = (n + grain - 1) / grain;
    if (nthreads > NPQ_MAX_THREADS) nthreads = NPQ_MAX_THREADS;
    if (parts > nthreads) parts = nthreads;
    if (parts <= 1 || pthread_mutex_trylock(&g_busy) != 0) {
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
    g_pending = (int)parts - 1;
    g_generation++;
    pthread_cond_broadcast(&g_wake);
    pthread_mutex_unlock(&g_lock);

    run_part(&g_job, 0);

    pthread_mutex_lock(&g_lock);
    while (g_pending > 0) pthread_cond_wait(&g_done, &g_lock);
    pthread_mutex_unlock(&g_lock);
    pthread_mutex_unlock(&g_busy);
}

/* ---------------------------------------------------------------- self-test */

typedef struct {
    int64_t *out;
} fill_ctx;

static void fill_range(void *ctx, int64_t b, int64_t e) {
    fill_ctx *c = (fill_ctx *)ctx;
    for (int64_t i = b; i < e; i++) c->out[i] = i * i;
}

/* Writes i*i to out[0..n) through the pool: lets tests exercise threading directly. */
NPQ_API void npq_pool_selftest(int64_t *out, int64_t n, int nthreads) {
    fill_ctx c = {out};
    npq_parallel_for(n, 1, nthreads, fill_range, &c);
}

/* A real (tiny) extension module, so `import npuquant._npuquant_c` works; the kernels
 * themselves are reached through ctypes on this same shared object. */
static struct PyModuleDef npq_module = {PyModuleDef_HEAD_INIT, "_npuquant_c",
                                        "npuquant native kernels (called through ctypes).", -1, NULL};

PyMODINIT_FUNC PyInit__npuquant_c(void) { return PyModule_Create(&npq_module); }
