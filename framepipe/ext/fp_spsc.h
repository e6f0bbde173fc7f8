/* Lock-free single-producer/single-consumer descriptor queue and wake-up flags in shared memory.
 *
 * Everything here lives in a process-shared mapping and is touched only with C11/GCC __atomic
 * builtins, so it is correct between processes (not only threads). The layout is fixed and
 * documented in _spsc.pyx; both sides must agree on it.
 *
 * Wake-up protocol (Dekker style, no lost wake-ups):
 *   sleeper: flag = 1 (seq_cst) ; re-check the condition ; if still not ready: sem wait
 *   waker:   publish the change (release) ; fence (seq_cst) ; if flag: exchange(flag, 0) == 1 -> sem_post
 * Either the sleeper sees the change in its re-check, or the waker sees the flag and posts.
 */
#ifndef FRAMEPIPE_FP_SPSC_H
#define FRAMEPIPE_FP_SPSC_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sem_clockwait */
#endif

#include <errno.h>
#include <semaphore.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define FP_CACHE_LINE 64
#define FP_DESC_SIZE 64

/* One descriptor: 64 bytes, one cache line. */
typedef struct {
    int64_t slot;
    uint64_t seq;
    int64_t frame_id;
    int64_t source_id;
    int64_t pts;
    int64_t capture_ns;
    int64_t publish_ns;
    int64_t flags;
} fp_desc;

/* Queue header: each field on its own cache line; descriptors follow at FP_QUEUE_HEADER. */
#define FP_Q_HEAD 0        /* uint64, written by the consumer only */
#define FP_Q_TAIL 64       /* uint64, written by the producer only */
#define FP_Q_CWAIT 128     /* uint32, "consumer sleeping" flag */
#define FP_Q_MAILBOX 192   /* uint64, one-deep latest-frame mailbox (0 = empty) */
#define FP_Q_CONFIG 256    /* uint32 magic, uint32 capacity */
#define FP_Q_TAKEN 264     /* uint64 descriptors taken (queue + mailbox), consumer-written */
#define FP_QUEUE_HEADER 320
#define FP_QUEUE_MAGIC 0x51505346u /* "FSPQ" */

/* Mailbox word: bit 63 valid, bits 16..62 seq, bits 0..15 slot. */
#define FP_MB_VALID (1ULL << 63)
static inline uint64_t fp_mb_pack(uint64_t slot, uint64_t seq) {
    return FP_MB_VALID | ((seq & 0x7FFFFFFFFFFFULL) << 16) | (slot & 0xFFFFULL);
}
static inline int64_t fp_mb_slot(uint64_t w) { return (int64_t)(w & 0xFFFFULL); }
static inline uint64_t fp_mb_seq(uint64_t w) { return (w >> 16) & 0x7FFFFFFFFFFFULL; }

static inline uint64_t *fp_u64(unsigned char *base, size_t off) { return (uint64_t *)(base + off); }
static inline uint32_t *fp_u32(unsigned char *base, size_t off) { return (uint32_t *)(base + off); }

static inline uint64_t fp_load_u64(unsigned char *base, size_t off) {
    return __atomic_load_n(fp_u64(base, off), __ATOMIC_ACQUIRE);
}
static inline void fp_store_u64(unsigned char *base, size_t off, uint64_t v) {
    __atomic_store_n(fp_u64(base, off), v, __ATOMIC_RELEASE);
}
static inline uint64_t fp_exchange_u64(unsigned char *base, size_t off, uint64_t v) {
    return __atomic_exchange_n(fp_u64(base, off), v, __ATOMIC_ACQ_REL);
}
static inline uint64_t fp_fetch_add_u64(unsigned char *base, size_t off, uint64_t v) {
    return __atomic_fetch_add(fp_u64(base, off), v, __ATOMIC_ACQ_REL);
}
static inline int fp_cas_u64(unsigned char *base, size_t off, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(fp_u64(base, off), &expected, desired, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}
static inline uint32_t fp_load_u32(unsigned char *base, size_t off) {
    return __atomic_load_n(fp_u32(base, off), __ATOMIC_ACQUIRE);
}
static inline void fp_store_u32(unsigned char *base, size_t off, uint32_t v) {
    __atomic_store_n(fp_u32(base, off), v, __ATOMIC_RELEASE);
}
static inline int fp_cas_u32(unsigned char *base, size_t off, uint32_t expected, uint32_t desired) {
    return __atomic_compare_exchange_n(fp_u32(base, off), &expected, desired, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_ACQUIRE);
}
static inline uint8_t fp_load_u8(unsigned char *base, size_t off) {
    return __atomic_load_n(base + off, __ATOMIC_ACQUIRE);
}
static inline void fp_store_u8(unsigned char *base, size_t off, uint8_t v) {
    __atomic_store_n(base + off, v, __ATOMIC_RELEASE);
}

static inline void fp_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline int64_t fp_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- wake-up flag + semaphore -------------------------------------------------------------- */

typedef struct {
    uint32_t *flag;
    sem_t *sem;
} fp_waker;

/* Waker side: call after publishing the change the sleeper waits for. */
static inline int fp_wake(fp_waker *w) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(w->flag, __ATOMIC_RELAXED) == 0) return 0;
    if (__atomic_exchange_n(w->flag, 0, __ATOMIC_SEQ_CST) == 1) {
        sem_post(w->sem);
        return 1;
    }
    return 0;
}

static inline void fp_prepare_sleep(fp_waker *w) {
    __atomic_store_n(w->flag, 1, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static inline void fp_cancel_sleep(fp_waker *w) { __atomic_store_n(w->flag, 0, __ATOMIC_SEQ_CST); }

/* Wait on the semaphore until deadline_ns (CLOCK_MONOTONIC; <0 = forever).
 * Returns 1 when woken, 0 on timeout, -errno on error. EINTR is retried. */
static inline int fp_sem_wait_until(sem_t *sem, int64_t deadline_ns) {
    int rc;
    if (deadline_ns < 0) {
        do {
            rc = sem_wait(sem);
        } while (rc != 0 && errno == EINTR);
        return rc == 0 ? 1 : -errno;
    }
    struct timespec ts;
    ts.tv_sec = (time_t)(deadline_ns / 1000000000LL);
    ts.tv_nsec = (long)(deadline_ns % 1000000000LL);
    do {
        rc = sem_clockwait(sem, CLOCK_MONOTONIC, &ts);
    } while (rc != 0 && errno == EINTR);
    if (rc == 0) return 1;
    if (errno == ETIMEDOUT) return 0;
    return -errno;
}

/* ---- the queue ------------------------------------------------------------------------------ */

typedef struct {
    unsigned char *base; /* queue region (header + descriptors) */
    uint64_t capacity;
    fp_waker consumer; /* woken by the producer after a put / mailbox post */
    fp_waker producer; /* woken by the consumer after a get (room in the queue) */
    unsigned char *headers; /* slot headers of the ring (NULL: none), to complete mailbox takes */
    uint64_t header_stride;
    uint64_t nslots;
    int64_t woke_ns; /* CLOCK_MONOTONIC when the consumer last returned from a semaphore sleep */
} fp_queue;

/* Slot header of a ring (64 bytes): the same field order as a descriptor, minus the slot. */
typedef struct {
    uint64_t seq; /* seqlock: odd while the producer writes the slot, even once published */
    int64_t frame_id;
    int64_t source_id;
    int64_t pts;
    int64_t capture_ns;
    int64_t publish_ns;
    int64_t reserved[2];
} fp_slot_header;

/* Turn a mailbox word into a full descriptor (metadata from the slot header when known). */
static inline void fp_q_fill_from_word(fp_queue *q, uint64_t w, fp_desc *d) {
    memset(d, 0, sizeof(fp_desc));
    d->slot = fp_mb_slot(w);
    d->seq = fp_mb_seq(w);
    d->flags = 1;
    if (q->headers != NULL && (uint64_t)d->slot < q->nslots) {
        fp_slot_header *h = (fp_slot_header *)(q->headers + (uint64_t)d->slot * q->header_stride);
        d->frame_id = h->frame_id;
        d->source_id = h->source_id;
        d->pts = h->pts;
        d->capture_ns = h->capture_ns;
        d->publish_ns = h->publish_ns;
        if (__atomic_load_n(&h->seq, __ATOMIC_ACQUIRE) != d->seq) d->flags |= 2;
    }
}

static inline fp_desc *fp_q_desc(fp_queue *q, uint64_t index) {
    return (fp_desc *)(q->base + FP_QUEUE_HEADER + (index % q->capacity) * FP_DESC_SIZE);
}

static inline uint64_t fp_q_size(fp_queue *q) {
    uint64_t tail = fp_load_u64(q->base, FP_Q_TAIL);
    uint64_t head = fp_load_u64(q->base, FP_Q_HEAD);
    return tail - head;
}

/* Producer: 1 if put, 0 if full. */
static inline int fp_q_try_put(fp_queue *q, const fp_desc *d) {
    uint64_t tail = __atomic_load_n(fp_u64(q->base, FP_Q_TAIL), __ATOMIC_RELAXED);
    uint64_t head = fp_load_u64(q->base, FP_Q_HEAD);
    if (tail - head >= q->capacity) return 0;
    memcpy(fp_q_desc(q, tail), d, sizeof(fp_desc));
    fp_store_u64(q->base, FP_Q_TAIL, tail + 1);
    fp_wake(&q->consumer);
    return 1;
}

/* Consumer: 1 if a descriptor was taken into *d, 0 if empty. */
static inline int fp_q_try_get(fp_queue *q, fp_desc *d) {
    uint64_t head = __atomic_load_n(fp_u64(q->base, FP_Q_HEAD), __ATOMIC_RELAXED);
    uint64_t tail = fp_load_u64(q->base, FP_Q_TAIL);
    if (tail == head) return 0;
    memcpy(d, fp_q_desc(q, head), sizeof(fp_desc));
    fp_store_u64(q->base, FP_Q_HEAD, head + 1);
    fp_wake(&q->producer);
    return 1;
}

/* Consumer: take the mailbox word (0 when empty). */
static inline uint64_t fp_q_take_mailbox(fp_queue *q) {
    if (__atomic_load_n(fp_u64(q->base, FP_Q_MAILBOX), __ATOMIC_ACQUIRE) == 0) return 0;
    return fp_exchange_u64(q->base, FP_Q_MAILBOX, 0);
}

/* Producer: replace the mailbox word; returns the previous word (0 = the consumer took it). */
static inline uint64_t fp_q_post_mailbox(fp_queue *q, uint64_t word) {
    uint64_t old = fp_exchange_u64(q->base, FP_Q_MAILBOX, word);
    fp_wake(&q->consumer);
    return old;
}

/* Consumer: take from the queue, else from the mailbox. 1 = queue, 2 = mailbox, 0 = nothing. */
static inline void fp_q_count_taken(fp_queue *q) {
    fp_store_u64(q->base, FP_Q_TAKEN, __atomic_load_n(fp_u64(q->base, FP_Q_TAKEN), __ATOMIC_RELAXED) + 1);
}

static inline int fp_q_take(fp_queue *q, fp_desc *d) {
    if (fp_q_try_get(q, d)) {
        fp_q_count_taken(q);
        /* flag a descriptor whose slot no longer holds that frame (cannot happen while the
         * lease byte is set; checked so that a broken invariant is loud, not silent) */
        if (q->headers != NULL && (uint64_t)d->slot < q->nslots) {
            fp_slot_header *h = (fp_slot_header *)(q->headers + (uint64_t)d->slot * q->header_stride);
            if (__atomic_load_n(&h->seq, __ATOMIC_ACQUIRE) != d->seq) d->flags |= 2;
        }
        return 1;
    }
    uint64_t w = fp_q_take_mailbox(q);
    if (w != 0) {
        fp_q_fill_from_word(q, w, d);
        fp_q_count_taken(q);
        return 2;
    }
    return 0;
}

static inline int fp_q_ready_for_consumer(fp_queue *q) {
    return fp_q_size(q) != 0 || __atomic_load_n(fp_u64(q->base, FP_Q_MAILBOX), __ATOMIC_SEQ_CST) != 0;
}

/* Consumer, blocking: spin a bounded number of rounds, then sleep on the semaphore.
 * Call WITHOUT the GIL. deadline_ns < 0 = forever. Returns like fp_q_take, or -errno. */
static inline int fp_q_take_wait(fp_queue *q, fp_desc *d, int64_t deadline_ns,
                                 int spin) {
    int got, rc;
    for (;;) {
        for (int i = 0; i < spin; i++) {
            got = fp_q_take(q, d);
            if (got) return got;
            fp_cpu_relax();
        }
        got = fp_q_take(q, d);
        if (got) return got;
        fp_prepare_sleep(&q->consumer);
        if (fp_q_ready_for_consumer(q)) {
            fp_cancel_sleep(&q->consumer);
            continue;
        }
        if (deadline_ns >= 0 && fp_monotonic_ns() >= deadline_ns) {
            fp_cancel_sleep(&q->consumer);
            return fp_q_take(q, d);
        }
        rc = fp_sem_wait_until(q->consumer.sem, deadline_ns);
        q->woke_ns = fp_monotonic_ns();
        fp_cancel_sleep(&q->consumer);
        if (rc < 0) return rc;
        /* Woken (or timed out): return what is there, possibly nothing - a wake-up without a
         * descriptor means "look around" (e.g. the producer closed); the caller loops. */
        return fp_q_take(q, d);
    }
}

/* Producer, blocking: wait for room, bounded by deadline_ns (or slice_ns, whichever is first, so
 * the caller can check liveness of the consumer). Call WITHOUT the GIL.
 * Returns 1 = put, 0 = still full at the deadline, -errno on error. */
static inline int fp_q_put_wait(fp_queue *q, const fp_desc *d, int64_t deadline_ns, int spin) {
    int rc;
    for (;;) {
        for (int i = 0; i < spin; i++) {
            if (fp_q_try_put(q, d)) return 1;
            fp_cpu_relax();
        }
        if (fp_q_try_put(q, d)) return 1;
        fp_prepare_sleep(&q->producer);
        if (fp_q_size(q) < q->capacity) {
            fp_cancel_sleep(&q->producer);
            continue;
        }
        if (deadline_ns >= 0 && fp_monotonic_ns() >= deadline_ns) {
            fp_cancel_sleep(&q->producer);
            return fp_q_try_put(q, d);
        }
        rc = fp_sem_wait_until(q->producer.sem, deadline_ns);
        fp_cancel_sleep(&q->producer);
        if (rc < 0) return rc;
        if (rc == 0) return fp_q_try_put(q, d);
        spin = 0;
    }
}


/* ---- ring fan-out (the producer's per-frame hot path) --------------------------------------- */

#define FP_C_STATE 0
#define FP_C_DELIVERED 32
#define FP_C_DROPPED 40
#define FP_STATE_ACTIVE 1
#define FP_MODE_WAIT 0
#define FP_MODE_DROP_LATEST 1
#define FP_MODE_MAILBOX 2

typedef struct {
    uint64_t delivered;
    uint64_t dropped_full;
    uint64_t replaced;
    uint64_t wait_mask; /* WAIT: consumers whose queue was full (lease granted, not enqueued) */
} fp_fanout_result;

static inline void fp_bump(unsigned char *base, size_t off) {
    fp_store_u64(base, off, __atomic_load_n(fp_u64(base, off), __ATOMIC_RELAXED) + 1);
}

/* Hand a published slot to every ACTIVE consumer: set its lease byte (release) BEFORE the
 * descriptor becomes visible, then enqueue / post to its mailbox under the mode. */
static inline void fp_fanout(unsigned char *base, fp_queue *const *queues, uint64_t nconsumers,
                             size_t consumers_off, size_t leases_off, size_t lease_stride,
                             const fp_desc *d, int mode, fp_fanout_result *r) {
    uint64_t i;
    memset(r, 0, sizeof(*r));
    for (i = 0; i < nconsumers; i++) {
        size_t centry = consumers_off + i * FP_CACHE_LINE;
        if (fp_load_u32(base, centry + FP_C_STATE) != FP_STATE_ACTIVE) continue;
        size_t lease = leases_off + (size_t)d->slot * lease_stride + i;
        fp_store_u8(base, lease, 1);
        fp_queue *q = queues[i];
        if (mode == FP_MODE_MAILBOX) {
            uint64_t old = fp_q_post_mailbox(q, fp_mb_pack((uint64_t)d->slot, d->seq));
            if (old != 0) {
                /* the consumer never took the old frame: its lease is ours to clear */
                fp_store_u8(base, leases_off + (size_t)fp_mb_slot(old) * lease_stride + i, 0);
                fp_bump(base, centry + FP_C_DROPPED);
                r->replaced++;
            }
            fp_bump(base, centry + FP_C_DELIVERED);
            r->delivered++;
        } else if (fp_q_try_put(q, d)) {
            fp_bump(base, centry + FP_C_DELIVERED);
            r->delivered++;
        } else if (mode == FP_MODE_WAIT && i < 64) {
            r->wait_mask |= 1ULL << i;
        } else {
            fp_store_u8(base, lease, 0); /* never seen by the consumer: safe to take back */
            fp_bump(base, centry + FP_C_DROPPED);
            r->dropped_full++;
        }
    }
}

/* One source fanned out to consumers that want different things: like fp_fanout, but with
 * a mode per consumer (modes[i]) and only for the consumers in target_mask (bit i; the
 * others - muted, rate-limited - are skipped). Consumers at index >= 64 are never targeted. */
static inline void fp_fanout_each(unsigned char *base, fp_queue *const *queues,
                                  uint64_t nconsumers, size_t consumers_off, size_t leases_off,
                                  size_t lease_stride, const fp_desc *d,
                                  const unsigned char *modes, uint64_t target_mask,
                                  fp_fanout_result *r) {
    uint64_t i;
    memset(r, 0, sizeof(*r));
    for (i = 0; i < nconsumers && i < 64; i++) {
        if (!((target_mask >> i) & 1)) continue;
        size_t centry = consumers_off + i * FP_CACHE_LINE;
        if (fp_load_u32(base, centry + FP_C_STATE) != FP_STATE_ACTIVE) continue;
        size_t lease = leases_off + (size_t)d->slot * lease_stride + i;
        fp_store_u8(base, lease, 1);
        fp_queue *q = queues[i];
        int mode = modes[i];
        if (mode == FP_MODE_MAILBOX) {
            uint64_t old = fp_q_post_mailbox(q, fp_mb_pack((uint64_t)d->slot, d->seq));
            if (old != 0) {
                fp_store_u8(base, leases_off + (size_t)fp_mb_slot(old) * lease_stride + i, 0);
                fp_bump(base, centry + FP_C_DROPPED);
                r->replaced++;
            }
            fp_bump(base, centry + FP_C_DELIVERED);
            r->delivered++;
        } else if (fp_q_try_put(q, d)) {
            fp_bump(base, centry + FP_C_DELIVERED);
            r->delivered++;
        } else if (mode == FP_MODE_WAIT) {
            r->wait_mask |= 1ULL << i;
        } else {
            fp_store_u8(base, lease, 0);
            fp_bump(base, centry + FP_C_DROPPED);
            r->dropped_full++;
        }
    }
}

#endif
