/* A small thread pool for the decode GEMVs that never waits for a thread that has not started.
 *
 * Why not an OpenMP parallel region: its closing barrier waits for every team thread, so when another process
 * holds a core, each of the ~200 regions of a decoded token waits for a descheduled thread to be scheduled
 * again (measured here: 2-thread decode 5x slower than 1 thread under load). Here the caller works through
 * the chunks itself; a worker joins a job only while the job is open, and the caller waits only for workers
 * that joined (they are running and hold at most one small chunk each). A late worker finds the job closed
 * and goes back to sleep. Workers spin for a bounded time (BK_POOL_SPIN_NS) before sleeping on a condition
 * variable, so back-to-back kernel calls do not pay a wake-up each.
 */
#ifndef BK_POOL_H
#define BK_POOL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <immintrin.h>

#define BK_POOL_MAX 64
#define BK_POOL_SPIN_NS 50000 /* 50 us of spinning before a worker sleeps */

typedef void (*bk_task_fn)(void *ctx, int64_t chunk);

/* The chunks are split into one contiguous segment per thread, each with its own counter: a thread streams
 * forward through its own segment (interleaving chunks between threads measured much slower from DRAM), then
 * helps with the others' (so the segment of a worker that never started still gets done). */
typedef struct {
    _Alignas(64) atomic_llong next;
    int64_t end;
    char pad[48];
} bk_segment;

typedef struct {
    bk_task_fn fn;
    void *ctx;
    int64_t nchunks;
    int max_workers;           /* workers allowed in besides the caller */
    int nseg;
    int joined;                /* workers that joined (under the pool mutex) */
    atomic_int participants;   /* workers inside the job */
    bk_segment seg[BK_POOL_MAX + 1];
} bk_job;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bk_job *_Atomic job;       /* the open job, or NULL */
    atomic_ullong seq;         /* bumped when a job opens */
    int nworkers;              /* started workers */
    int stop;
    pthread_t th[BK_POOL_MAX];
} bk_pool;

static pthread_mutex_t bk_pool_call_mu = PTHREAD_MUTEX_INITIALIZER;
static bk_pool bk_the_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0, 0, 0, {0}};

static inline uint64_t bk_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* A thread claims chunks of its own segment BK_POOL_BATCH at a time while more than BK_POOL_TAIL are left (one
 * locked add per batch: each one drains the store buffer, and at one a chunk the decode GEMVs spent ~2.5% of
 * their time there), then one at a time, as it does in the others' segments, so the end still balances. */
#define BK_POOL_BATCH 4
#define BK_POOL_TAIL 16

static void bk_run_chunks(bk_job *job, int id) {
    for (int k = 0; k < job->nseg; k++) {
        bk_segment *sg = &job->seg[(id + k) % job->nseg];
        const int64_t end = sg->end;
        for (;;) {
            int64_t step = 1;
            if (k == 0 && end - atomic_load_explicit(&sg->next, memory_order_relaxed) > BK_POOL_TAIL)
                step = BK_POOL_BATCH;
            const int64_t c = atomic_fetch_add_explicit(&sg->next, step, memory_order_relaxed);
            if (c >= end) break;
            const int64_t stop = c + step < end ? c + step : end;
            for (int64_t i = c; i < stop; i++) job->fn(job->ctx, i);
        }
    }
}

/* join the open job if there is one; returns 1 if work was done */
static int bk_try_join(bk_pool *p) {
    pthread_mutex_lock(&p->mu);
    bk_job *job = atomic_load_explicit(&p->job, memory_order_acquire);
    int id = 0;
    if (job && job->joined < job->max_workers) {
        id = ++job->joined;
        atomic_fetch_add_explicit(&job->participants, 1, memory_order_relaxed);
    } else {
        job = NULL;
    }
    pthread_mutex_unlock(&p->mu);
    if (!job) return 0;
    bk_run_chunks(job, id);
    atomic_fetch_sub_explicit(&job->participants, 1, memory_order_release);
    return 1;
}

static void *bk_worker(void *arg) {
    bk_pool *p = (bk_pool *)arg;
    unsigned long long seen = atomic_load(&p->seq);
    for (;;) {
        /* spin a little: the next kernel call usually follows within microseconds */
        const uint64_t t0 = bk_now_ns();
        int spins = 0;
        while (atomic_load_explicit(&p->seq, memory_order_acquire) == seen) {
            _mm_pause();
            if (++spins == 64) {
                spins = 0;
                if (bk_now_ns() - t0 > BK_POOL_SPIN_NS) break;
            }
        }
        if (atomic_load_explicit(&p->seq, memory_order_acquire) == seen) {
            pthread_mutex_lock(&p->mu);
            while (!p->stop && atomic_load(&p->seq) == seen) pthread_cond_wait(&p->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (p->stop) break;
        seen = atomic_load(&p->seq);
        bk_try_join(p);
    }
    return NULL;
}

/* after fork() the child has none of the workers (and maybe a mutex held by one): start from scratch */
static void bk_pool_atfork_child(void) {
    pthread_mutex_init(&bk_pool_call_mu, NULL);
    pthread_mutex_init(&bk_the_pool.mu, NULL);
    pthread_cond_init(&bk_the_pool.cv, NULL);
    atomic_store(&bk_the_pool.job, NULL);
    bk_the_pool.nworkers = 0;
}

static int bk_pool_atfork_done = 0;

static void bk_pool_ensure(bk_pool *p, int nworkers) {
    if (!bk_pool_atfork_done) {
        bk_pool_atfork_done = 1;
        pthread_atfork(NULL, NULL, bk_pool_atfork_child);
    }
    if (nworkers > BK_POOL_MAX) nworkers = BK_POOL_MAX;
    pthread_mutex_lock(&p->mu);
    while (p->nworkers < nworkers) {
        if (pthread_create(&p->th[p->nworkers], NULL, bk_worker, p) != 0) break;
        pthread_detach(p->th[p->nworkers]);
        p->nworkers++;
    }
    pthread_mutex_unlock(&p->mu);
}

/* Run fn(ctx, c) for c in [0, nchunks) on the caller plus up to nthreads - 1 workers. One job at a time:
 * concurrent callers (Python threads with the GIL released) serialize on bk_pool_call_mu. */

static void bk_pool_run(int nthreads, bk_task_fn fn, void *ctx, int64_t nchunks) {
    if (nthreads > BK_POOL_MAX + 1) nthreads = BK_POOL_MAX + 1;
    if (nthreads <= 1 || nchunks <= 1) {
        for (int64_t c = 0; c < nchunks; c++) fn(ctx, c);
        return;
    }
    bk_pool *p = &bk_the_pool;
    pthread_mutex_lock(&bk_pool_call_mu);
    bk_pool_ensure(p, nthreads - 1);
    static bk_job job; /* one job at a time (bk_pool_call_mu); too big for small thread stacks */
    job.fn = fn;
    job.ctx = ctx;
    job.nchunks = nchunks;
    job.max_workers = nthreads - 1;
    job.nseg = nthreads < nchunks ? nthreads : (int)nchunks;
    job.joined = 0;
    for (int i = 0; i < job.nseg; i++) {
        atomic_init(&job.seg[i].next, nchunks * i / job.nseg);
        job.seg[i].end = nchunks * (i + 1) / job.nseg;
    }
    atomic_init(&job.participants, 0);
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->job, &job, memory_order_release);
    atomic_fetch_add_explicit(&p->seq, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    bk_run_chunks(&job, 0);
    /* close the job: no worker can join from now on; wait for the ones inside */
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->job, NULL, memory_order_release);
    pthread_mutex_unlock(&p->mu);
    while (atomic_load_explicit(&job.participants, memory_order_acquire) > 0) _mm_pause();
    pthread_mutex_unlock(&bk_pool_call_mu);
}

#endif /* BK_POOL_H */
