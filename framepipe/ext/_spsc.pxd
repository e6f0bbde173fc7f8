# Declarations of the lock-free SPSC queue and its shared-memory atomics (see fp_spsc.h).
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t


cdef extern from "<semaphore.h>" nogil:
    ctypedef struct sem_t:
        pass


cdef extern from "fp_spsc.h" nogil:
    ctypedef struct fp_desc:
        int64_t slot
        uint64_t seq
        int64_t frame_id
        int64_t source_id
        int64_t pts
        int64_t capture_ns
        int64_t publish_ns
        int64_t flags

    ctypedef struct fp_waker:
        uint32_t *flag
        sem_t *sem

    ctypedef struct fp_slot_header:
        uint64_t seq
        int64_t frame_id
        int64_t source_id
        int64_t pts
        int64_t capture_ns
        int64_t publish_ns

    ctypedef struct fp_fanout_result:
        uint64_t delivered
        uint64_t dropped_full
        uint64_t replaced
        uint64_t wait_mask

    ctypedef struct fp_queue:
        unsigned char *base
        uint64_t capacity
        fp_waker consumer
        fp_waker producer
        unsigned char *headers
        uint64_t header_stride
        uint64_t nslots
        int64_t woke_ns


cdef class NamedSemaphore:
    cdef sem_t *_sem
    cdef readonly str name
    cdef sem_t *_get(self) except NULL


cdef class SharedView:
    cdef unsigned char[::1] _mv
    cdef unsigned char *_base
    cdef readonly Py_ssize_t size
    cdef unsigned char *ptr(self, Py_ssize_t offset, Py_ssize_t width) except NULL


cdef class Waker:
    cdef fp_waker _w
    cdef SharedView _view
    cdef NamedSemaphore _sem
    cdef int _live(self) except -1


cdef class LeaseTable:
    cdef SharedView _view
    cdef unsigned char *_base
    cdef readonly Py_ssize_t slots
    cdef readonly Py_ssize_t consumers
    cdef readonly Py_ssize_t stride
    cdef unsigned char *_seq_base
    cdef Py_ssize_t _seq_stride
    cdef void _check(self, Py_ssize_t consumer, Py_ssize_t slot) except *
    cdef bint _free(self, Py_ssize_t slot) noexcept


cdef class SpscQueue:
    cdef fp_queue _q
    cdef SharedView _view
    cdef Waker _consumer
    cdef Waker _producer
    cdef public int spin
    cdef readonly int last_flags
    cdef object _desc_type
    cdef object _make_desc(self, fp_desc *d)
    cdef int _live(self) except -1
    cdef void _fill(self, fp_desc *d, int64_t slot, uint64_t seq, int64_t frame_id,
                    int64_t source_id, int64_t pts, int64_t capture_ns,
                    int64_t publish_ns) noexcept
    cdef tuple _tuple(self, fp_desc *d)


cdef class RingCore:
    cdef SharedView _view
    cdef unsigned char *_base
    cdef list _queues
    cdef fp_queue **_qptrs
    cdef readonly Py_ssize_t slots
    cdef readonly Py_ssize_t consumers
    cdef size_t _consumers_off
    cdef size_t _leases_off
    cdef size_t _lease_stride
    cdef size_t _headers_off
    cdef size_t _published_off
    cdef fp_slot_header *_header(self, Py_ssize_t slot) except NULL
