"""RingCache: FrameRefs resolved in place from rings attached once, closed when unused; and
the service's errors as they cross the process boundary."""

from __future__ import annotations

import pytest

from framepipe.core.inference import FrameRef, InferenceUnavailableError
from framepipe.core.ring import FrameRing, StaleFrameError
from framepipe.core.ring_cache import RingCache
from framepipe.protocol.errors import InvalidPayloadError, NotFoundError, OperationError
from framepipe.server.inference.messages import RemoteError


def publish(ring: FrameRing, value: int) -> FrameRef:
    slot = ring.try_acquire()
    assert slot is not None
    ring.writable(slot)[:] = value
    d = ring.publish(slot, frame_id=value)
    return FrameRef(ring.name, d.slot, d.seq)


def test_a_ref_reads_the_slot_in_place_until_it_is_reused() -> None:
    with FrameRing.create(2, (4, 6, 3), tag="cache") as ring, RingCache() as cache:
        first = publish(ring, 7)
        view = cache.acquire(first)
        assert view.shape == (4, 6, 3) and (view == 7).all() and not view.flags.writeable
        assert cache.is_current(first) and cache.attached() == [ring.name]
        cache.release(first)
        second = publish(ring, 8)
        assert cache.acquire(second)[0, 0, 0] == 8  # the same attachment
        cache.release(second)
        third = publish(ring, 9)  # two slots: the first one again
        assert third.slot == first.slot
        assert not cache.is_current(first) and cache.is_current(third)
        with pytest.raises(StaleFrameError, match=f"slot {first.slot}"):
            cache.acquire(first)
        with pytest.raises(InvalidPayloadError, match="slot 5 is out of range"):
            cache.acquire(FrameRef(ring.name, 5, 0))
    with pytest.raises(InvalidPayloadError, match="closed"):
        cache.acquire(first)


def test_unknown_rings_are_errors_that_name_them() -> None:
    with RingCache() as cache:
        with pytest.raises(NotFoundError):
            cache.acquire(FrameRef("/fp-1-nosuchring", 0, 0))
        with pytest.raises(InvalidPayloadError, match="names no framepipe ring"):
            cache.acquire(FrameRef("/etc-passwd", 0, 0))
        assert not cache.is_current(FrameRef("/fp-1-nosuchring", 0, 0))


def test_sweep_closes_rings_unused_for_a_while_or_unlinked() -> None:
    cache = RingCache(linger_s=5.0)
    try:
        with FrameRing.create(2, (2, 2, 3), tag="keep") as kept:
            ref = publish(kept, 1)
            cache.acquire(ref)
            assert cache.sweep(now=1e12) == []  # in use: never closed under a reader
            cache.release(ref)
            assert cache.sweep() == []  # released just now: lingers
            assert cache.sweep(now=1e12) == [kept.name]
            again = publish(kept, 2)
            assert cache.acquire(again)[0, 0, 0] == 2  # attached again on demand
            cache.release(again)
        # the producer closed and unlinked its ring: closed at once, linger or not
        assert cache.sweep() == [kept.name] and cache.attached() == []
    finally:
        cache.close()


def test_errors_keep_their_class_across_the_process_boundary() -> None:
    stale = RemoteError.from_exception(StaleFrameError("slot 3 was reused")).to_exception()
    assert type(stale) is StaleFrameError and stale.message == "slot 3 was reused"
    gone = RemoteError.from_exception(InferenceUnavailableError("gone")).to_exception()
    assert type(gone) is InferenceUnavailableError
    bad = RemoteError.from_exception(InvalidPayloadError("class_filter: ['x']")).to_exception()
    assert type(bad) is InvalidPayloadError and bad.error_class == "InvalidPayloadError"
    crash = RemoteError.from_exception(ZeroDivisionError("boom")).to_exception()
    assert crash.error_class == "ZeroDivisionError" and "boom" in crash.message
    assert isinstance(
        RemoteError.from_exception(OperationError("x")).to_exception(), OperationError
    )
