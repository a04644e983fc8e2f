/* out[i] = c0 * a[i] + c1 * b[i] over many tensors at once, one pass over memory.

   Compiled with -ffp-contract=off: the product and the sum are rounded separately, exactly as
   torch evaluates mergekit's `coef_a * x + coef_b * y`, so results are bitwise mergekit's.
   Work is split evenly by element count across threads, across tensor boundaries. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

enum { KIND_F32 = 0, KIND_BF16 = 1 };

typedef struct {
    int kind;
    int64_t count;
    void *const *out;
    const void *const *a;
    const void *const *b;
    const int64_t *n;
    const float *c0;
    const float *c1;
    int64_t begin, end; /* global element range of this thread */
} Job;

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = ((uint32_t)h) << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even, NaN to the canonical quiet NaN: c10::BFloat16's rounding. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    /* branch-free so the loop vectorises */
    return (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u) ? 0x7fc0u : rounded);
}

static void run_range_f32(const float *a, const float *b, float *o, int64_t lo, int64_t hi, float c0, float c1) {
    for (int64_t i = lo; i < hi; i++) {
        float x = c0 * a[i];
        float y = c1 * b[i];
        o[i] = x + y;
    }
}

static void run_range_bf16(const uint16_t *a, const uint16_t *b, uint16_t *o, int64_t lo, int64_t hi, float c0, float c1) {
    for (int64_t i = lo; i < hi; i++) {
        float x = c0 * bf16_to_f32(a[i]);
        float y = c1 * bf16_to_f32(b[i]);
        o[i] = f32_to_bf16(x + y);
    }
}

static void *run_job(void *arg) {
    Job *job = (Job *)arg;
    int64_t offset = 0;
    for (int64_t t = 0; t < job->count && offset < job->end; t++) {
        int64_t lo = job->begin - offset, hi = job->end - offset;
        if (lo < 0) lo = 0;
        if (hi > job->n[t]) hi = job->n[t];
        if (lo < hi) {
            if (job->kind == KIND_F32)
                run_range_f32(job->a[t], job->b[t], job->out[t], lo, hi, job->c0[t], job->c1[t]);
            else
                run_range_bf16(job->a[t], job->b[t], job->out[t], lo, hi, job->c0[t], job->c1[t]);
        }
        offset += job->n[t];
    }
    return 0;
}

int weighted_pairs(int kind, int64_t count, void *const *out, const void *const *a, const void *const *b,
                   const int64_t *n, const float *c0, const float *c1, int threads) {
    int64_t total = 0;
    for (int64_t t = 0; t < count; t++) total += n[t];
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    if (total < ((int64_t)1 << 18)) threads = 1; /* not worth a thread */
    Job jobs[64];
    pthread_t ids[64];
    for (int k = 0; k < threads; k++) {
        Job job = {kind, count, out, a, b, n, c0, c1, total * k / threads, total * (k + 1) / threads};
        jobs[k] = job;
    }
    int started = 0;
    for (int k = 1; k < threads; k++) {
        if (pthread_create(&ids[k], 0, run_job, &jobs[k]) != 0) break;
        started = k;
    }
    run_job(&jobs[0]);
    for (int k = started + 1; k < threads; k++) run_job(&jobs[k]); /* threads that failed to start */
    for (int k = 1; k <= started; k++) pthread_join(ids[k], 0);
    return 0;
}
