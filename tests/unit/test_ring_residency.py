"""A ring's resident memory follows the frames in flight: sparse segment, lowest free slot
first, pages reserved as it grows (RAM budget's growth account, /dev/shm), punched when idle."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from framepipe.core.growth import GrowthAccount, growth_account_name
from framepipe.core.ring import FrameProducer, FrameRing
from framepipe.core.shm import SHM_DIR, Segment
from framepipe.protocol.errors import ShmExhaustedError
from framepipe.protocol.payloads import BufferFillingStrategy

PAGE = 4096
SLOT_SHAPE = (PAGE,)  # one page per slot: resident bytes count slots exactly


def _metadata(ring: FrameRing) -> int:
    return ring.nbytes - ring.slots * PAGE


def _write(ring: FrameRing, consumer: int, frame_id: int) -> int | None:
    """Produce one frame and lease it to ``consumer`` (which holds it: a stalled consumer)."""
    slot = ring.try_acquire()
    if slot is None:
        return None
    ring.writable(slot)[:] = frame_id % 251
    ring.publish(slot, frame_id=frame_id)
    ring.grant(consumer, slot)
    return slot


def test_capacity_is_a_bound_not_a_cost() -> None:
    with FrameRing.create(64, SLOT_SHAPE, np.uint8, 1, queue_depth=32) as ring:
        assert ring.resident_bytes() == _metadata(ring) + PAGE  # the floor: one slot
        consumer = ring.register_consumer()
        # a consumer that keeps up: each frame released before the next is written
        for frame_id in range(500):
            slot = _write(ring, consumer, frame_id)
            assert slot == 0, "the slot just released is the next one written"
            ring.release(consumer, slot)
        # three in flight at a time: slots 0-2 and nothing else
        held: list[int] = []
        for frame_id in range(500):
            slot = _write(ring, consumer, frame_id)
            assert slot is not None
            held.append(slot)
            if len(held) == 3:
                ring.release(consumer, held.pop(0))
        assert ring.resident_bytes() == _metadata(ring) + 3 * PAGE
        # another process's view: attaching does not populate the holes
        other = FrameRing.attach(ring.name)
        try:
            assert other.resident_slots() == 3
            assert ring.resident_bytes() == _metadata(ring) + 3 * PAGE
        finally:
            other.close()


def test_stalled_consumer_grows_the_ring_to_its_bound_and_no_further() -> None:
    with FrameRing.create(8, SLOT_SHAPE, np.uint8, 1, queue_depth=6, resident_slots=2) as ring:
        consumer = ring.register_consumer()
        written = 0
        while _write(ring, consumer, written) is not None:
            written += 1
        assert written == ring.slots == 8
        assert ring.resident_bytes() == ring.nbytes  # grown to the bound: every slot
        assert ring.growth_refused == 0


def test_stalled_consumer_grows_to_the_budget_and_no_further() -> None:
    with (
        GrowthAccount.create(headroom=3 * PAGE) as account,
        FrameRing.create(8, SLOT_SHAPE, np.uint8, 1, queue_depth=6, resident_slots=2) as ring,
    ):
        # the ring belongs to this process: it finds this process's account by its name
        assert account.name == growth_account_name(os.getpid())
        consumer = ring.register_consumer()
        held = []
        while (slot := _write(ring, consumer, len(held))) is not None:
            held.append(slot)
        assert held == [0, 1, 2, 3, 4]  # the floor (2) + what the budget granted (3)
        assert ring.resident_bytes() == _metadata(ring) + 5 * PAGE
        assert account.headroom == 0 and ring.growth_refused >= 1
        assert _write(ring, consumer, 99) is None  # still refused: nothing reserved
        assert ring.resident_bytes() == _metadata(ring) + 5 * PAGE
        # a released slot is reused without growing
        ring.release(consumer, 3)
        assert _write(ring, consumer, 100) == 3
        # the budget grows (the manager measured less in use): so does the ring
        account.set_headroom(PAGE)
        assert _write(ring, consumer, 101) == 5
        assert account.headroom == 0
        assert ring.resident_bytes() == _metadata(ring) + 6 * PAGE


def test_wait_producer_refused_growth_waits_and_resumes_on_release() -> None:
    with (
        GrowthAccount.create(headroom=0) as account,
        FrameRing.create(4, SLOT_SHAPE, np.uint8, 1, queue_depth=2, resident_slots=1) as ring,
    ):
        producer = FrameProducer(ring, BufferFillingStrategy.WAIT)
        consumer = ring.register_consumer()
        assert _write(ring, consumer, 0) == 0
        t0 = time.monotonic()
        assert producer.acquire(0.2) is None  # waited (backpressure), did not fail
        assert time.monotonic() - t0 >= 0.15
        assert account.headroom == 0 and ring.resident_bytes() == _metadata(ring) + PAGE
        releaser = threading.Timer(0.1, ring.release, (consumer, 0))
        releaser.start()
        try:
            assert producer.acquire(5.0) == 0
        finally:
            releaser.join()
        producer.close()


def test_idle_slots_are_punched_out_and_their_bytes_go_back_to_the_budget() -> None:
    with (
        GrowthAccount.create(headroom=10 * PAGE) as account,
        FrameRing.create(8, SLOT_SHAPE, np.uint8, 1, queue_depth=6, resident_slots=2) as ring,
    ):
        consumer = ring.register_consumer()
        for frame_id in range(6):
            assert _write(ring, consumer, frame_id) == frame_id
        assert account.headroom == 6 * PAGE
        ring.set_residency(idle_s=0.2)
        for slot in range(6):
            ring.release(consumer, slot)
        assert ring.trim() == 0  # released, but not idle long enough yet
        assert ring.trim_if_due() == 0  # and not due again yet (at most every idle_s / 2)
        time.sleep(0.25)
        assert ring.trim_if_due() == 4  # slots 2-5; the floor (0, 1) stays
        assert ring.resident_bytes() == _metadata(ring) + 2 * PAGE
        assert account.headroom == 10 * PAGE
        # written again later: reserved again, and the reserved pages read as zeros, not SIGBUS
        for frame_id in range(4):
            assert _write(ring, consumer, frame_id) == frame_id
        assert ring.resident_bytes() == _metadata(ring) + 4 * PAGE
        assert account.headroom == 8 * PAGE


def test_a_leased_slot_is_never_punched() -> None:
    with FrameRing.create(4, SLOT_SHAPE, np.uint8, 1, queue_depth=2, resident_slots=1) as ring:
        consumer = ring.register_consumer()
        for frame_id in range(3):
            _write(ring, consumer, frame_id + 1)
        ring.set_residency(idle_s=0.0)
        ring.release(consumer, 1)
        assert ring.trim() == 1  # slot 1 only: 0 is the floor, 2 is leased
        view = ring.writable(2)
        assert int(view[0]) == 3  # its frame is intact


def test_a_full_dev_shm_refuses_growth_instead_of_a_sigbus() -> None:
    st = os.statvfs(SHM_DIR)
    too_big = st.f_blocks * st.f_frsize + PAGE
    with FrameRing.create(2, (too_big,), np.uint8, 1, resident_slots=0) as ring:
        assert ring.resident_bytes() < 1 << 20  # only the metadata
        assert ring.try_acquire() is None
        assert ring.growth_refused == 1
        assert ring.resident_bytes() < 1 << 20


def test_segment_reserve_and_punch() -> None:
    with Segment.create(16 * PAGE, reserve=PAGE) as seg:
        assert seg.resident_bytes() == PAGE
        assert seg.reserve(4 * PAGE, 2 * PAGE) == 2 * PAGE
        assert seg.reserve(0, 6 * PAGE) == 3 * PAGE  # only the pages that were holes
        assert seg.resident_bytes() == 6 * PAGE
        seg.buf[4 * PAGE] = 7
        seg.punch(4 * PAGE, 2 * PAGE)
        assert seg.resident_bytes() == 4 * PAGE
        with pytest.raises(ValueError, match="page-aligned"):
            seg.punch(1, PAGE)
        with pytest.raises(ValueError, match="outside"):
            seg.reserve(15 * PAGE, 2 * PAGE)
    st = os.statvfs(SHM_DIR)
    too_big = st.f_blocks * st.f_frsize + PAGE
    with Segment.create(too_big + PAGE, reserve=0) as seg:
        with pytest.raises(ShmExhaustedError, match="no room for segment"):
            seg.reserve(0, too_big)
        assert seg.resident_bytes() == 0
