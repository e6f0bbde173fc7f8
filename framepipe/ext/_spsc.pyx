# cython: language_level=3
"""Lock-free SPSC descriptor queue in shared memory, wake-up semaphores and shared atomics.

Low-level building blocks for :mod:`framepipe.core.ring`
(nothing else should import this module). Every object works on a region of a writable buffer
(an ``mmap`` of a shared segment) and keeps that buffer exported while it lives, so the mapping
cannot go away under a raw pointer; call ``release()`` before closing the segment.

Queue region layout (``queue_region_size(capacity)`` bytes, 64-byte aligned)::

    0    uint64 head        consumer-written   (own cache line)
    64   uint64 tail        producer-written   (own cache line)
    128  uint32 cwait       "consumer sleeping" flag
    192  uint64 mailbox     one-deep latest-frame mailbox (bit 63 valid | seq << 16 | slot)
    256  uint32 magic, uint32 capacity
    320  capacity x 64-byte descriptors (slot, seq, frame_id, source_id, pts, capture_ns,
         publish_ns, flags)

A descriptor crosses as a 7-tuple ``(slot, seq, frame_id, source_id, pts, capture_ns,
publish_ns)`` plus, from ``get``/``try_get``, an 8th item, flags: bit 0 = it came from the
mailbox rather than the queue, bit 1 = stale (the slot's seq no longer matches; a broken
lease invariant, never expected).
"""

from cpython.bytes cimport PyBytes_AsString
from libc.errno cimport EEXIST, ENOENT, errno
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

import os


cdef extern from "<fcntl.h>" nogil:
    int O_CREAT
    int O_EXCL


cdef extern from "<semaphore.h>" nogil:
    sem_t *sem_open(const char *name, int oflag, ...)
    int sem_close(sem_t *sem)
    int sem_unlink(const char *name)
    int sem_post(sem_t *sem)
    int sem_trywait(sem_t *sem)
    int sem_getvalue(sem_t *sem, int *sval)
    sem_t *SEM_FAILED


cdef extern from "fp_spsc.h" nogil:
    int FP_QUEUE_HEADER
    int FP_DESC_SIZE
    int FP_Q_HEAD
    int FP_Q_TAIL
    int FP_Q_CWAIT
    int FP_Q_MAILBOX
    int FP_Q_CONFIG
    int FP_Q_TAKEN
    uint32_t FP_QUEUE_MAGIC
    uint64_t fp_mb_pack(uint64_t slot, uint64_t seq)
    int64_t fp_mb_slot(uint64_t w)
    uint64_t fp_mb_seq(uint64_t w)
    uint64_t fp_load_u64(unsigned char *base, size_t off)
    void fp_store_u64(unsigned char *base, size_t off, uint64_t v)
    uint64_t fp_exchange_u64(unsigned char *base, size_t off, uint64_t v)
    uint64_t fp_fetch_add_u64(unsigned char *base, size_t off, uint64_t v)
    int fp_cas_u64(unsigned char *base, size_t off, uint64_t expected, uint64_t desired)
    uint32_t fp_load_u32(unsigned char *base, size_t off)
    void fp_store_u32(unsigned char *base, size_t off, uint32_t v)
    int fp_cas_u32(unsigned char *base, size_t off, uint32_t expected, uint32_t desired)
    uint8_t fp_load_u8(unsigned char *base, size_t off)
    void fp_store_u8(unsigned char *base, size_t off, uint8_t v)
    int64_t fp_monotonic_ns()
    int fp_wake(fp_waker *w)
    void fp_prepare_sleep(fp_waker *w)
    void fp_cancel_sleep(fp_waker *w)
    int fp_sem_wait_until(sem_t *sem, int64_t deadline_ns)
    uint64_t fp_q_size(fp_queue *q)
    int fp_q_try_put(fp_queue *q, const fp_desc *d)
    int fp_q_take(fp_queue *q, fp_desc *d)
    int fp_q_take_wait(fp_queue *q, fp_desc *d, int64_t deadline_ns, int spin)
    int fp_q_put_wait(fp_queue *q, const fp_desc *d, int64_t deadline_ns, int spin)
    uint64_t fp_q_post_mailbox(fp_queue *q, uint64_t word)
    int FP_MODE_WAIT
    int FP_MODE_DROP_LATEST
    int FP_MODE_MAILBOX
    void fp_fanout(unsigned char *base, fp_queue **queues, uint64_t nconsumers,
                   size_t consumers_off, size_t leases_off, size_t lease_stride,
                   const fp_desc *d, int mode, fp_fanout_result *r)
    void fp_fanout_each(unsigned char *base, fp_queue **queues, uint64_t nconsumers,
                        size_t consumers_off, size_t leases_off, size_t lease_stride,
                        const fp_desc *d, const unsigned char *modes, uint64_t target_mask,
                        fp_fanout_result *r)


DESCRIPTOR_SIZE = FP_DESC_SIZE
MODE_WAIT = FP_MODE_WAIT
MODE_DROP_LATEST = FP_MODE_DROP_LATEST
MODE_MAILBOX = FP_MODE_MAILBOX
QUEUE_HEADER_SIZE = FP_QUEUE_HEADER
DEFAULT_SPIN = 256


def queue_region_size(Py_ssize_t capacity):
    """Bytes a queue of ``capacity`` descriptors needs (header included, 64-byte multiple)."""
    if capacity < 1:
        raise ValueError(f"queue capacity must be >= 1, got {capacity}")
    return FP_QUEUE_HEADER + capacity * FP_DESC_SIZE


def monotonic_ns():
    """CLOCK_MONOTONIC in ns (the clock of ``publish_ns`` and of every deadline here)."""
    return fp_monotonic_ns()


cdef int64_t _deadline(object timeout) except? -2:
    if timeout is None:
        return -1
    cdef double t = timeout
    if t != t:
        raise ValueError("timeout must be a number of seconds, not NaN")
    if t < 0:
        t = 0
    return fp_monotonic_ns() + <int64_t>(t * 1e9)


cdef inline object _error(str what, int err):
    return OSError(err, f"{what}: {os.strerror(err)}")


cdef class NamedSemaphore:
    """A POSIX named semaphore (``/dev/shm/sem.<name>``), opened or created (O_EXCL).

    ``wait`` releases the GIL. The creator owns the name and must ``unlink`` it.
    """

    def __cinit__(self):
        self._sem = NULL

    def __init__(self, str name, bint create=False):
        if not name.startswith("/") or "/" in name[1:]:
            raise ValueError(f"semaphore name must look like '/fp-...', got {name!r}")
        cdef bytes bname = name.encode()
        cdef const char *cname = PyBytes_AsString(bname)
        cdef sem_t *s
        if create:
            s = sem_open(cname, O_CREAT | O_EXCL, <int>0o600, <unsigned int>0)
        else:
            s = sem_open(cname, 0)
        if s == SEM_FAILED:
            err = errno
            if err == ENOENT:
                raise FileNotFoundError(err, f"semaphore {name} does not exist")
            if err == EEXIST:
                raise FileExistsError(err, f"semaphore {name} already exists")
            raise _error(f"sem_open({name})", err)
        self._sem = s
        self.name = name

    def __dealloc__(self):
        if self._sem != NULL:
            sem_close(self._sem)
            self._sem = NULL

    cdef sem_t *_get(self) except NULL:
        if self._sem == NULL:
            raise ValueError(f"semaphore {self.name} is closed")
        return self._sem

    def post(self):
        if sem_post(self._get()) != 0:
            raise _error(f"sem_post({self.name})", errno)

    def wait(self, timeout=None):
        """Wait until posted; ``timeout`` seconds (None = forever). True if it was posted."""
        cdef sem_t *s = self._get()
        cdef int64_t deadline = _deadline(timeout)
        cdef int rc
        with nogil:
            rc = fp_sem_wait_until(s, deadline)
        if rc < 0:
            raise _error(f"sem_wait({self.name})", -rc)
        return rc == 1

    def try_wait(self):
        cdef sem_t *s = self._get()
        return sem_trywait(s) == 0

    @property
    def value(self):
        cdef int v = 0
        sem_getvalue(self._get(), &v)
        return v

    @property
    def closed(self):
        return self._sem == NULL

    def close(self):
        """Close this handle (idempotent); the name stays until ``unlink``."""
        if self._sem != NULL:
            sem_close(self._sem)
            self._sem = NULL

    @staticmethod
    def unlink(str name):
        """Remove the name; True if it existed."""
        cdef bytes bname = name.encode()
        if sem_unlink(PyBytes_AsString(bname)) == 0:
            return True
        err = errno
        if err == ENOENT:
            return False
        raise _error(f"sem_unlink({name})", err)


cdef class SharedView:
    """Atomic (acquire/release) access to a writable buffer, by byte offset."""

    def __init__(self, object buffer):
        self._mv = buffer
        self.size = self._mv.shape[0]
        self._base = &self._mv[0] if self.size > 0 else NULL

    cdef unsigned char *ptr(self, Py_ssize_t offset, Py_ssize_t width) except NULL:
        if self._base == NULL:
            raise ValueError("shared view is released")
        if offset < 0 or offset + width > self.size or offset % width != 0:
            raise IndexError(f"offset {offset} (width {width}) outside [0, {self.size}) or misaligned")
        return self._base + offset

    def load_u8(self, Py_ssize_t offset):
        return fp_load_u8(self.ptr(offset, 1), 0)

    def store_u8(self, Py_ssize_t offset, uint8_t value):
        fp_store_u8(self.ptr(offset, 1), 0, value)

    def load_u32(self, Py_ssize_t offset):
        return fp_load_u32(self.ptr(offset, 4), 0)

    def store_u32(self, Py_ssize_t offset, uint32_t value):
        fp_store_u32(self.ptr(offset, 4), 0, value)

    def cas_u32(self, Py_ssize_t offset, uint32_t expected, uint32_t desired):
        return bool(fp_cas_u32(self.ptr(offset, 4), 0, expected, desired))

    def load_u64(self, Py_ssize_t offset):
        return fp_load_u64(self.ptr(offset, 8), 0)

    def store_u64(self, Py_ssize_t offset, uint64_t value):
        fp_store_u64(self.ptr(offset, 8), 0, value)

    def exchange_u64(self, Py_ssize_t offset, uint64_t value):
        return fp_exchange_u64(self.ptr(offset, 8), 0, value)

    def fetch_add_u64(self, Py_ssize_t offset, uint64_t value):
        return fp_fetch_add_u64(self.ptr(offset, 8), 0, value)

    def cas_u64(self, Py_ssize_t offset, uint64_t expected, uint64_t desired):
        return bool(fp_cas_u64(self.ptr(offset, 8), 0, expected, desired))

    def load_i64(self, Py_ssize_t offset):
        return <int64_t>fp_load_u64(self.ptr(offset, 8), 0)

    def store_i64(self, Py_ssize_t offset, int64_t value):
        fp_store_u64(self.ptr(offset, 8), 0, <uint64_t>value)

    def release(self):
        """Drop the buffer export (idempotent)."""
        self._base = NULL
        self.size = 0
        self._mv = None


cdef class Waker:
    """A "sleeping" flag (uint32 in shared memory) plus a named semaphore: no lost wake-ups."""

    def __init__(self, SharedView view, Py_ssize_t flag_offset, NamedSemaphore sem):
        self._view = view
        self._sem = sem
        self._w.flag = <uint32_t *>view.ptr(flag_offset, 4)
        self._w.sem = sem._get()

    cdef int _live(self) except -1:
        if self._w.flag == NULL:
            raise ValueError("waker is closed")
        return 0

    def prepare(self):
        """Announce that the caller is about to sleep; re-check the condition afterwards."""
        self._live()
        fp_prepare_sleep(&self._w)

    def cancel(self):
        self._live()
        fp_cancel_sleep(&self._w)

    def close(self):
        """Forget the flag and semaphore (idempotent)."""
        self._w.flag = NULL
        self._w.sem = NULL
        self._view = None
        self._sem = None

    def sleep(self, timeout=None):
        """Sleep (GIL released) until woken or ``timeout``; clears the flag. True if woken."""
        self._live()
        cdef int64_t deadline = _deadline(timeout)
        cdef int rc
        cdef sem_t *s = self._sem._get()
        with nogil:
            rc = fp_sem_wait_until(s, deadline)
        fp_cancel_sleep(&self._w)
        if rc < 0:
            raise _error(f"sem_wait({self._sem.name})", -rc)
        return rc == 1

    def wake(self):
        """Wake the sleeper if it announced itself; True if a post was made."""
        self._live()
        return bool(fp_wake(&self._w))


cdef class LeaseTable:
    """One byte per (slot, consumer): 1 = the consumer holds a lease on the slot.

    The producer sets a byte (release store) before it hands the slot to that consumer; the
    consumer clears it (release store) when done. A slot is free when its bytes are all 0 and
    its seqlock sequence is even (odd = the producer is writing it).
    """

    def __init__(self, SharedView view, Py_ssize_t offset, Py_ssize_t slots, Py_ssize_t consumers,
                 Py_ssize_t stride, Py_ssize_t seq_offset, Py_ssize_t seq_stride):
        if slots < 1 or consumers < 1 or stride < consumers:
            raise ValueError("bad lease table geometry")
        self._view = view
        self._base = view.ptr(offset, 1)
        view.ptr(offset + slots * stride - 1, 1)
        self.slots = slots
        self.consumers = consumers
        self.stride = stride
        self._seq_base = view.ptr(seq_offset, 8)
        view.ptr(seq_offset + (slots - 1) * seq_stride, 8)
        self._seq_stride = seq_stride

    cdef void _check(self, Py_ssize_t consumer, Py_ssize_t slot) except *:
        if consumer < 0 or consumer >= self.consumers:
            raise IndexError(f"consumer {consumer} out of range [0, {self.consumers})")
        if slot < 0 or slot >= self.slots:
            raise IndexError(f"slot {slot} out of range [0, {self.slots})")

    def grant(self, Py_ssize_t consumer, Py_ssize_t slot):
        self._check(consumer, slot)
        fp_store_u8(self._base, slot * self.stride + consumer, 1)

    def release(self, Py_ssize_t consumer, Py_ssize_t slot):
        """Clear one lease; True if it was held."""
        self._check(consumer, slot)
        cdef size_t off = slot * self.stride + consumer
        if fp_load_u8(self._base, off) == 0:
            return False
        fp_store_u8(self._base, off, 0)
        return True

    def held(self, Py_ssize_t consumer, Py_ssize_t slot):
        self._check(consumer, slot)
        return fp_load_u8(self._base, slot * self.stride + consumer) != 0

    def release_all(self, Py_ssize_t consumer):
        """Clear every lease of ``consumer``; returns how many were held."""
        self._check(consumer, 0)
        cdef Py_ssize_t s, n = 0
        cdef size_t off
        for s in range(self.slots):
            off = s * self.stride + consumer
            if fp_load_u8(self._base, off) != 0:
                fp_store_u8(self._base, off, 0)
                n += 1
        return n

    def count(self, Py_ssize_t slot):
        """How many consumers hold ``slot`` (the slot's refcount)."""
        self._check(0, slot)
        cdef Py_ssize_t c, n = 0
        for c in range(self.consumers):
            n += fp_load_u8(self._base, slot * self.stride + c) != 0
        return n

    def leases_of(self, Py_ssize_t consumer):
        self._check(consumer, 0)
        cdef Py_ssize_t s
        return [s for s in range(self.slots) if fp_load_u8(self._base, s * self.stride + consumer) != 0]

    cdef bint _free(self, Py_ssize_t slot) noexcept:
        cdef Py_ssize_t c
        if fp_load_u64(self._seq_base, slot * self._seq_stride) & 1:
            return False
        for c in range(self.consumers):
            if fp_load_u8(self._base, slot * self.stride + c) != 0:
                return False
        return True

    def is_free(self, Py_ssize_t slot):
        self._check(0, slot)
        return self._free(slot)

    def find_free(self, Py_ssize_t start=0):
        """The first free slot at or after ``start`` (wrapping), or -1."""
        cdef Py_ssize_t i, s
        for i in range(self.slots):
            s = (start + i) % self.slots
            if self._free(s):
                return s
        return -1

    def free_count(self):
        cdef Py_ssize_t s, n = 0
        for s in range(self.slots):
            n += self._free(s)
        return n

    def close(self):
        """Forget the region (idempotent)."""
        self.slots = 0
        self._view = None


cdef class SpscQueue:
    """The SPSC descriptor queue over a region of a shared buffer.

    Exactly one producer process calls the ``put`` side and one consumer process the ``get``
    side. ``put``/``get`` with a timeout spin briefly, then sleep on the semaphore of their
    :class:`Waker` with the GIL released.
    """

    def __init__(self, SharedView view, Py_ssize_t offset, Py_ssize_t capacity, Waker consumer,
                 Waker producer, bint initialise=False, Py_ssize_t headers_offset=-1,
                 Py_ssize_t header_stride=64, Py_ssize_t nslots=0, int spin=DEFAULT_SPIN):
        if capacity < 1:
            raise ValueError(f"queue capacity must be >= 1, got {capacity}")
        cdef Py_ssize_t size = queue_region_size(capacity)
        self._view = view
        self._q.base = view.ptr(offset, 64)
        view.ptr(offset + size - 8, 8)
        self._q.capacity = capacity
        self._q.woke_ns = 0
        self._desc_type = None
        self.last_flags = 0
        self._consumer = consumer
        self._producer = producer
        self._q.consumer = consumer._w
        self._q.producer = producer._w
        self.spin = spin
        if headers_offset >= 0 and nslots > 0:
            self._q.headers = view.ptr(headers_offset, 64)
            view.ptr(headers_offset + (nslots - 1) * header_stride, 64)
            self._q.header_stride = header_stride
            self._q.nslots = nslots
        else:
            self._q.headers = NULL
            self._q.header_stride = 0
            self._q.nslots = 0
        if initialise:
            memset(self._q.base, 0, size)
            fp_store_u32(self._q.base, FP_Q_CONFIG + 4, <uint32_t>capacity)
            fp_store_u32(self._q.base, FP_Q_CONFIG, FP_QUEUE_MAGIC)
        else:
            if fp_load_u32(self._q.base, FP_Q_CONFIG) != FP_QUEUE_MAGIC:
                raise ValueError("no initialised SPSC queue at this offset (bad magic)")
            if fp_load_u32(self._q.base, FP_Q_CONFIG + 4) != <uint32_t>capacity:
                raise ValueError("SPSC queue capacity does not match the shared header")

    cdef int _live(self) except -1:
        if self._q.base == NULL:
            raise ValueError("SPSC queue is closed")
        return 0

    @property
    def capacity(self):
        return self._q.capacity

    @property
    def last_wake_ns(self):
        """CLOCK_MONOTONIC ns when ``get`` last came back from sleeping (0: never slept)."""
        return self._q.woke_ns

    def qsize(self):
        self._live()
        return fp_q_size(&self._q)

    def empty(self):
        self._live()
        return fp_q_size(&self._q) == 0

    def full(self):
        self._live()
        return fp_q_size(&self._q) >= self._q.capacity

    def has_mailbox(self):
        self._live()
        return fp_load_u64(self._q.base, FP_Q_MAILBOX) != 0

    cdef void _fill(self, fp_desc *d, int64_t slot, uint64_t seq, int64_t frame_id,
                           int64_t source_id, int64_t pts, int64_t capture_ns,
                           int64_t publish_ns) noexcept:
        d.slot = slot
        d.seq = seq
        d.frame_id = frame_id
        d.source_id = source_id
        d.pts = pts
        d.capture_ns = capture_ns
        d.publish_ns = publish_ns
        d.flags = 0

    def try_put(self, int64_t slot, uint64_t seq, int64_t frame_id=0, int64_t source_id=0,
                int64_t pts=0, int64_t capture_ns=0, int64_t publish_ns=0):
        """Producer: enqueue without blocking; False if the queue is full."""
        cdef fp_desc d
        self._live()
        self._fill(&d, slot, seq, frame_id, source_id, pts, capture_ns, publish_ns)
        return bool(fp_q_try_put(&self._q, &d))

    def put(self, int64_t slot, uint64_t seq, int64_t frame_id=0, int64_t source_id=0,
            int64_t pts=0, int64_t capture_ns=0, int64_t publish_ns=0, timeout=None):
        """Producer: enqueue, waiting up to ``timeout`` s (None = forever) for room."""
        cdef fp_desc d
        cdef int64_t deadline = _deadline(timeout)
        cdef int rc
        cdef int spin = self.spin
        self._live()
        self._fill(&d, slot, seq, frame_id, source_id, pts, capture_ns, publish_ns)
        if fp_q_try_put(&self._q, &d):
            return True
        if timeout is not None and timeout <= 0:
            return False
        with nogil:
            rc = fp_q_put_wait(&self._q, &d, deadline, spin)
        if rc < 0:
            raise _error("SPSC put wait", -rc)
        return rc == 1

    cdef tuple _tuple(self, fp_desc *d):
        return (d.slot, d.seq, d.frame_id, d.source_id, d.pts, d.capture_ns, d.publish_ns,
                d.flags)

    def try_get(self):
        """Consumer: the next descriptor (queue first, then mailbox) or None."""
        self._live()
        cdef fp_desc d
        if fp_q_take(&self._q, &d):
            return self._tuple(&d)
        return None

    def set_descriptor_type(self, object cls):
        """The tuple subclass (FrameDescriptor) ``take`` returns."""
        if not issubclass(cls, tuple):
            raise TypeError("descriptor type must be a tuple subclass")
        self._desc_type = cls

    cdef object _make_desc(self, fp_desc *d):
        self.last_flags = <int>d.flags
        return tuple.__new__(self._desc_type, (d.slot, d.seq, d.frame_id, d.source_id, d.pts,
                                               d.capture_ns, d.publish_ns))

    @property
    def taken(self):
        """Descriptors the consumer took so far (queue and mailbox)."""
        self._live()
        return fp_load_u64(self._q.base, FP_Q_TAKEN)

    def reset_taken(self):
        self._live()
        fp_store_u64(self._q.base, FP_Q_TAKEN, 0)

    def take(self, timeout=None):
        """Consumer: like ``get`` but returns a descriptor of the type given to
        ``set_descriptor_type`` (flags in ``last_flags``); None on timeout / empty wake-up."""
        cdef fp_desc d
        cdef int64_t deadline
        cdef int rc
        cdef int spin = self.spin
        self._live()
        if self._desc_type is None:
            raise ValueError("set_descriptor_type() first")
        if fp_q_take(&self._q, &d):
            return self._make_desc(&d)
        if timeout is not None and timeout <= 0:
            return None
        deadline = _deadline(timeout)
        with nogil:
            rc = fp_q_take_wait(&self._q, &d, deadline, spin)
        if rc < 0:
            raise _error("SPSC get wait", -rc)
        if rc == 0:
            return None
        return self._make_desc(&d)

    def get(self, timeout=None):
        """Consumer: wait up to ``timeout`` s (None = forever); None on timeout."""
        self._live()
        cdef fp_desc d
        cdef int64_t deadline
        cdef int rc
        cdef int spin = self.spin
        if fp_q_take(&self._q, &d):
            return self._tuple(&d)
        if timeout is not None and timeout <= 0:
            return None
        deadline = _deadline(timeout)
        with nogil:
            rc = fp_q_take_wait(&self._q, &d, deadline, spin)
        if rc < 0:
            raise _error("SPSC get wait", -rc)
        if rc == 0:
            return None
        return self._tuple(&d)

    def post_latest(self, int64_t slot, uint64_t seq):
        """Producer: replace the mailbox with (slot, seq); returns the replaced (slot, seq)
        the consumer never took, or None."""
        self._live()
        if slot < 0 or slot > 0xFFFF:
            raise ValueError(f"slot {slot} does not fit a mailbox word")
        cdef uint64_t old = fp_q_post_mailbox(&self._q, fp_mb_pack(<uint64_t>slot, seq))
        if old == 0:
            return None
        return (fp_mb_slot(old), fp_mb_seq(old))

    def reset(self):
        """Empty the queue and mailbox from the producer side. Only when the consumer is gone."""
        self._live()
        fp_store_u64(self._q.base, FP_Q_MAILBOX, 0)
        fp_store_u64(self._q.base, FP_Q_HEAD, fp_load_u64(self._q.base, FP_Q_TAIL))

    def wake_consumer(self):
        self._live()
        return bool(fp_wake(&self._q.consumer))

    def close(self):
        """Forget the region (idempotent); the queue is unusable afterwards."""
        self._q.base = NULL
        self._q.headers = NULL
        self._view = None
        self._consumer = None
        self._producer = None


cdef class RingCore:
    """The producer's per-frame hot path over a FrameRing segment, in C: stamp a slot header
    (seqlock to even) and fan the descriptor out to every ACTIVE consumer.

    Layout knowledge (offsets) comes from :mod:`framepipe.core.ring`; slot headers are
    64-byte ``fp_slot_header`` records, consumer entries 64 bytes each.
    """

    def __cinit__(self):
        self._qptrs = NULL

    def __init__(self, SharedView view, list queues, Py_ssize_t slots, Py_ssize_t consumers_off,
                 Py_ssize_t leases_off, Py_ssize_t lease_stride, Py_ssize_t headers_off,
                 Py_ssize_t published_off):
        cdef Py_ssize_t i, n = len(queues)
        if n < 1 or slots < 1 or lease_stride < n:
            raise ValueError("bad ring geometry")
        self._view = view
        self._base = view.ptr(0, 1)
        view.ptr(consumers_off + n * 64 - 8, 8)
        view.ptr(leases_off + slots * lease_stride - 1, 1)
        view.ptr(headers_off + slots * 64 - 8, 8)
        view.ptr(published_off, 8)
        self._queues = list(queues)
        self._qptrs = <fp_queue **>malloc(n * sizeof(fp_queue *))
        if self._qptrs == NULL:
            raise MemoryError()
        for i in range(n):
            self._qptrs[i] = &(<SpscQueue?>self._queues[i])._q
        self.slots = slots
        self.consumers = n
        self._consumers_off = consumers_off
        self._leases_off = leases_off
        self._lease_stride = lease_stride
        self._headers_off = headers_off
        self._published_off = published_off

    def __dealloc__(self):
        if self._qptrs != NULL:
            free(self._qptrs)
            self._qptrs = NULL

    cdef fp_slot_header *_header(self, Py_ssize_t slot) except NULL:
        if self._base == NULL:
            raise ValueError("ring core is closed")
        if slot < 0 or slot >= self.slots:
            raise IndexError(f"slot {slot} out of range [0, {self.slots})")
        return <fp_slot_header *>(self._base + self._headers_off + slot * 64)

    def stamp(self, Py_ssize_t slot, int64_t frame_id, int64_t source_id, int64_t pts,
              int64_t capture_ns):
        """Write the header of an acquired (odd seq) slot and publish it (seq even, release).
        Returns ``(seq, publish_ns)``; -1 seq if the slot was not acquired."""
        cdef fp_slot_header *h = self._header(slot)
        cdef uint64_t seq = fp_load_u64(<unsigned char *>&h.seq, 0)
        if (seq & 1) == 0:
            return (-1, 0)
        h.frame_id = frame_id
        h.source_id = source_id
        h.pts = pts
        h.capture_ns = capture_ns
        cdef int64_t now = fp_monotonic_ns()
        h.publish_ns = now
        fp_store_u64(<unsigned char *>&h.seq, 0, seq + 1)
        fp_fetch_add_u64(self._base, self._published_off, 1)
        return (seq + 1, now)

    def publish(self, Py_ssize_t slot, int64_t frame_id, int64_t source_id, int64_t pts,
                int64_t capture_ns, int mode):
        """``stamp`` + fan-out. Returns ``(seq, publish_ns, delivered, dropped_full, replaced,
        wait_mask)``; ``wait_mask`` has bit i set for WAIT consumers whose queue was full (their
        lease is granted, the descriptor not yet enqueued: the caller waits and puts)."""
        cdef fp_slot_header *h = self._header(slot)
        cdef uint64_t seq = fp_load_u64(<unsigned char *>&h.seq, 0)
        cdef fp_desc d
        cdef fp_fanout_result r
        if (seq & 1) == 0:
            return (-1, 0, 0, 0, 0, 0)
        if mode != FP_MODE_WAIT and mode != FP_MODE_DROP_LATEST and mode != FP_MODE_MAILBOX:
            raise ValueError(f"bad fan-out mode {mode}")
        h.frame_id = frame_id
        h.source_id = source_id
        h.pts = pts
        h.capture_ns = capture_ns
        d.slot = slot
        d.seq = seq + 1
        d.frame_id = frame_id
        d.source_id = source_id
        d.pts = pts
        d.capture_ns = capture_ns
        d.flags = 0
        d.publish_ns = fp_monotonic_ns()
        h.publish_ns = d.publish_ns
        fp_store_u64(<unsigned char *>&h.seq, 0, d.seq)
        fp_fetch_add_u64(self._base, self._published_off, 1)
        fp_fanout(self._base, self._qptrs, <uint64_t>self.consumers, self._consumers_off,
                  self._leases_off, self._lease_stride, &d, mode, &r)
        return (d.seq, d.publish_ns, r.delivered, r.dropped_full, r.replaced, r.wait_mask)

    def publish_each(self, Py_ssize_t slot, int64_t frame_id, int64_t source_id, int64_t pts,
                     int64_t capture_ns, const unsigned char[::1] modes, uint64_t target_mask):
        """``publish`` with a fan-out mode per consumer (``modes[i]``, one byte each, at least
        ``consumers`` long) to the consumers in ``target_mask`` (bit i) only. Same result
        tuple as ``publish``."""
        cdef fp_slot_header *h = self._header(slot)
        cdef uint64_t seq = fp_load_u64(<unsigned char *>&h.seq, 0)
        cdef fp_desc d
        cdef fp_fanout_result r
        cdef Py_ssize_t i
        if (seq & 1) == 0:
            return (-1, 0, 0, 0, 0, 0)
        if modes.shape[0] < self.consumers:
            raise ValueError(f"modes has {modes.shape[0]} entries for {self.consumers} consumers")
        for i in range(self.consumers):
            if modes[i] != FP_MODE_WAIT and modes[i] != FP_MODE_DROP_LATEST and modes[i] != FP_MODE_MAILBOX:
                raise ValueError(f"bad fan-out mode {modes[i]} for consumer {i}")
        h.frame_id = frame_id
        h.source_id = source_id
        h.pts = pts
        h.capture_ns = capture_ns
        d.slot = slot
        d.seq = seq + 1
        d.frame_id = frame_id
        d.source_id = source_id
        d.pts = pts
        d.capture_ns = capture_ns
        d.flags = 0
        d.publish_ns = fp_monotonic_ns()
        h.publish_ns = d.publish_ns
        fp_store_u64(<unsigned char *>&h.seq, 0, d.seq)
        fp_fetch_add_u64(self._base, self._published_off, 1)
        fp_fanout_each(self._base, self._qptrs, <uint64_t>self.consumers, self._consumers_off,
                       self._leases_off, self._lease_stride, &d, &modes[0], target_mask, &r)
        return (d.seq, d.publish_ns, r.delivered, r.dropped_full, r.replaced, r.wait_mask)

    def close(self):
        self._base = NULL
        self._queues = []
        if self._qptrs != NULL:
            free(self._qptrs)
            self._qptrs = NULL
        self._view = None
