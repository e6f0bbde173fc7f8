"""FrameRing: geometry, attach, seqlock, and the lease-table invariants (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from framepipe.core.ring import ConsumerState, FrameDescriptor, FrameRing, StaleFrameError
from framepipe.protocol.errors import NotFoundError, OperationError

SLOTS, CONSUMERS = 5, 3


class RingMachine(RuleBasedStateMachine):
    """Random producer/consumer steps against a model of who holds which slot."""

    def __init__(self) -> None:
        super().__init__()
        self.ring = FrameRing.create(SLOTS, (4,), np.int64, CONSUMERS, queue_depth=2)
        self.held: dict[int, set[int]] = {c: set() for c in range(CONSUMERS)}
        self.content: dict[int, int] = {}
        self.next_id = 0

    def teardown(self) -> None:
        self.ring.close()
        self.ring.unlink()

    def _busy(self) -> set[int]:
        return set().union(*self.held.values())

    @rule(consumers=st.sets(st.integers(0, CONSUMERS - 1)))
    def write(self, consumers: set[int]) -> None:
        slot = self.ring.try_acquire()
        free = set(range(SLOTS)) - self._busy()
        if not free:
            assert slot is None
            return
        assert slot in free, f"acquired slot {slot} is leased"
        assert slot == min(free), "the lowest free slot is reused first (a warm prefix)"
        assert self.ring.header(slot).seq % 2 == 1  # being written
        frame_id = self.next_id
        self.next_id += 1
        self.ring.writable(slot)[:] = frame_id
        d = self.ring.publish(slot, frame_id=frame_id, source_id=7, pts=frame_id * 10)
        assert d.seq % 2 == 0 and d.slot == slot and self.ring.is_current(d)
        for c in consumers:
            self.ring.grant(c, slot)
            self.held[c].add(slot)
        self.content[slot] = frame_id

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data())
    def release_one(self, data: st.DataObject) -> None:
        c = data.draw(st.sampled_from([c for c in self.held if self.held[c]]))
        slot = data.draw(st.sampled_from(sorted(self.held[c])))
        assert self.ring.release(c, slot) is True
        self.held[c].discard(slot)
        assert self.ring.release(c, slot) is False

    @rule(c=st.integers(0, CONSUMERS - 1))
    def crash_and_release_all(self, c: int) -> None:
        assert self.ring.release_all(c) == len(self.held[c])
        self.held[c].clear()

    @invariant()
    def leases_match_the_model(self) -> None:
        for slot in range(SLOTS):
            holders = sum(slot in s for s in self.held.values())
            assert self.ring.lease_count(slot) == holders
        for c in range(CONSUMERS):
            assert self.ring.leases_of(c) == sorted(self.held[c])
        assert self.ring.free_slots() == SLOTS - len(self._busy())

    @invariant()
    def leased_frames_are_never_overwritten(self) -> None:
        for slot in self._busy():
            h = self.ring.header(slot)
            assert h.frame_id == self.content[slot] and h.pts == self.content[slot] * 10
            assert (self.ring.writable(slot) == self.content[slot]).all()


TestRingInvariants = RingMachine.TestCase
TestRingInvariants.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)


def test_geometry_attach_and_views() -> None:
    with FrameRing.create(3, (6, 8, 3), np.uint8, 2, queue_depth=4) as ring:
        assert (ring.slots, ring.shape, ring.dtype, ring.max_consumers, ring.queue_depth) == (
            3,
            (6, 8, 3),
            np.dtype(np.uint8),
            2,
            4,
        )
        assert ring.slot_nbytes == 144
        assert ring.nbytes == FrameRing.segment_size(3, (6, 8, 3), np.uint8, 2, 4)
        slot = ring.acquire(0)
        assert slot is not None
        ring.writable(slot)[:] = 9
        d = ring.publish(slot, frame_id=42, source_id=1, pts=5, capture_ns=123)
        other = FrameRing.attach(ring.name)
        try:
            assert (other.shape, other.dtype, other.slots) == (ring.shape, ring.dtype, 3)
            view = other.view(d)
            assert view.shape == (6, 8, 3) and (view == 9).all()
            assert not view.flags.writeable
            with pytest.raises(ValueError):
                view[0, 0, 0] = 1
            h = other.header(slot)
            assert (h.frame_id, h.source_id, h.pts, h.capture_ns) == (42, 1, 5, 123)
            assert h.publish_ns == d.publish_ns > 0
            assert other.published == 1
        finally:
            other.close()
            other.close()


def test_reused_slot_makes_an_old_descriptor_stale() -> None:
    with FrameRing.create(1, (4,), np.uint8, 1) as ring:
        slot = ring.acquire(0)
        assert slot == 0
        d = ring.publish(0, frame_id=1)
        assert ring.try_acquire() == 0  # nobody holds it: it may be reused
        with pytest.raises(StaleFrameError, match="reused"):
            ring.view(d)
        ring.abandon(0)
        assert not ring.is_current(d)
        with pytest.raises(OperationError, match="not acquired"):
            ring.publish(0, frame_id=2)


def test_acquire_waits_for_a_release_and_times_out() -> None:
    with FrameRing.create(1, (4,), np.uint8, 1) as ring:
        c = ring.register_consumer()
        slot = ring.acquire(0)
        assert slot is not None
        ring.publish(slot, frame_id=0)
        ring.grant(c, slot)
        assert ring.acquire(0.05) is None
        ring.release(c, slot)
        assert ring.acquire(0.05) == slot


def test_consumer_table_register_unregister_reclaim() -> None:
    with FrameRing.create(2, (4,), np.uint8, 2) as ring:
        a = ring.register_consumer()
        b = ring.register_consumer(pid=12345)
        assert (a, b) == (0, 1)
        with pytest.raises(OperationError, match="max_consumers"):
            ring.register_consumer()
        assert ring.consumer_info(b).pid == 12345
        assert ring.consumer_state(a) is ConsumerState.ACTIVE
        ring.unregister_consumer(a)
        assert ring.consumer_state(a) is ConsumerState.LEAVING
        slot = ring.acquire(0)
        assert slot is not None
        ring.publish(slot, frame_id=0)
        ring.grant(a, slot)
        assert ring.reclaim_consumer(a) == 1
        assert ring.consumer_state(a) is ConsumerState.FREE and ring.lease_count(slot) == 0
        assert ring.register_consumer() == a


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"slots": 0}, "slots"),
        ({"slots": 70_000}, "slots"),
        ({"shape": ()}, "shape"),
        ({"shape": (0, 3)}, "shape"),
        ({"dtype": object}, "dtype"),
        ({"max_consumers": 0}, "max_consumers"),
        ({"queue_depth": 0}, "queue_depth"),
    ],
)
def test_bad_geometry_is_rejected(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"slots": 2, "shape": (2, 2), "dtype": np.uint8, "max_consumers": 1}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        FrameRing.create(**args)  # type: ignore[arg-type]


def test_attach_errors() -> None:
    with pytest.raises(NotFoundError):
        FrameRing.attach("/fp-1-missing")
    from framepipe.core.shm import Segment

    with (
        Segment.create(8192) as seg,
        pytest.raises(OperationError, match="not a framepipe FrameRing"),
    ):
        FrameRing.attach(seg.name)


def test_required_slots() -> None:
    assert FrameRing.required_slots(queue_depth=4, consumers=2, leases_in_flight=1) == 11


def test_descriptor_is_a_plain_tuple() -> None:
    d = FrameDescriptor(1, 2, 3, 4, 5, 6, 7)
    assert tuple(d) == (1, 2, 3, 4, 5, 6, 7) and d.frame_id == 3


def test_attach_fails_cleanly_when_a_semaphore_is_gone() -> None:
    from framepipe.ext import _spsc

    with FrameRing.create(2, (4,), np.uint8, 2) as ring:
        _spsc.NamedSemaphore.unlink(ring.name + "-c1")
        with pytest.raises(FileNotFoundError, match="-c1 does not exist"):
            FrameRing.attach(ring.name)
