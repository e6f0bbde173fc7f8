"""Fan-out and backpressure of FrameProducer / FrameConsumer (one process, two handles)."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framepipe.core.ring import FrameConsumer, FrameProducer, FrameRing
from framepipe.protocol.errors import InvalidPayloadError, OperationError
from framepipe.protocol.payloads import BufferFillingStrategy


@pytest.fixture
def ring() -> Iterator[FrameRing]:
    with FrameRing.create(8, (2, 3), np.int64, max_consumers=3, queue_depth=2) as r:
        yield r


def _send(producer: FrameProducer, frame_id: int, timeout: float | None = 0.05) -> bool:
    frame = np.full(producer.ring.shape, frame_id, producer.ring.dtype)
    return producer.send(frame, frame_id=frame_id, timeout=timeout) is not None


def test_backpressure_parse_and_base() -> None:
    assert BufferFillingStrategy.parse("drop_oldest") is BufferFillingStrategy.DROP_OLDEST
    assert BufferFillingStrategy.ADAPTIVE_DROP_LATEST.base is BufferFillingStrategy.DROP_LATEST
    assert BufferFillingStrategy.ADAPTIVE_DROP_OLDEST.base is BufferFillingStrategy.DROP_OLDEST
    assert BufferFillingStrategy.WAIT.base is BufferFillingStrategy.WAIT
    with pytest.raises(InvalidPayloadError, match="unknown buffer filling strategy 'SOMETIMES'"):
        BufferFillingStrategy.parse("SOMETIMES")


def test_wait_delivers_every_frame_to_every_consumer_in_order(ring: FrameRing) -> None:
    producer = FrameProducer(ring, BufferFillingStrategy.WAIT)
    a, b = FrameConsumer(ring), FrameConsumer(ring)
    seen: dict[int, list[int]] = {a.index: [], b.index: []}

    def drain(c: FrameConsumer) -> None:
        while (lease := c.lease(timeout=5.0)) is not None:
            with lease:
                assert (lease.array == lease.frame_id).all()
                seen[c.index].append(lease.frame_id)

    threads = [threading.Thread(target=drain, args=(c,)) for c in (a, b)]
    for t in threads:
        t.start()
    for i in range(300):
        assert _send(producer, i, timeout=5.0)
    producer.close()
    for t in threads:
        t.join(10)
    assert seen[a.index] == list(range(300)) and seen[b.index] == list(range(300))
    stats = producer.statistics()
    assert (stats.published, stats.delivered, stats.dropped) == (300, 600, 0)
    assert a.statistics().received == 300 and a.statistics().held == 0
    a.close()
    b.close()


def test_wait_times_out_when_a_consumer_does_not_drain(ring: FrameRing) -> None:
    producer = FrameProducer(ring, BufferFillingStrategy.WAIT)
    consumer = FrameConsumer(ring)
    assert _send(producer, 0) and _send(producer, 1)  # queue depth 2: full now
    t0 = time.monotonic()
    assert _send(producer, 2, timeout=0.1)  # published, but not handed over in time
    assert time.monotonic() - t0 >= 0.09
    stats = producer.statistics()
    assert stats.dropped_timeout == 1 and stats.delivered == 2
    assert consumer.statistics().dropped == 1
    got = [consumer.lease(0.1), consumer.lease(0.1), consumer.lease(0.01)]
    assert [g.frame_id if g else None for g in got] == [0, 1, None]
    consumer.close()


def test_drop_latest_keeps_the_first_frames_and_counts_the_rest(ring: FrameRing) -> None:
    producer = FrameProducer(ring, BufferFillingStrategy.DROP_LATEST)
    consumer = FrameConsumer(ring)
    for i in range(10):
        assert _send(producer, i)
    stats = producer.statistics()
    assert stats.dropped_queue_full == 8 and stats.delivered == 2
    assert consumer.statistics().dropped == 8
    assert [consumer.lease(0).frame_id for _ in range(2)] == [0, 1]  # type: ignore[union-attr]
    consumer.close()


def test_drop_latest_without_free_slot_drops_at_acquire() -> None:
    with FrameRing.create(2, (2,), np.uint8, max_consumers=1, queue_depth=4) as ring:
        producer = FrameProducer(ring, BufferFillingStrategy.DROP_LATEST)
        consumer = FrameConsumer(ring)
        assert producer.send(np.zeros(2, np.uint8), frame_id=0)
        assert producer.send(np.zeros(2, np.uint8), frame_id=1)
        assert producer.acquire() is None  # both slots are leased: never waits
        assert producer.statistics().dropped_no_slot == 1
        consumer.close()


def test_drop_oldest_gives_the_freshest_frame_and_counts_replaced(ring: FrameRing) -> None:
    producer = FrameProducer(ring, BufferFillingStrategy.DROP_OLDEST)
    consumer = FrameConsumer(ring)
    for i in range(10):
        assert _send(producer, i)
    lease = consumer.lease(0.1)
    assert lease is not None and lease.frame_id == 9 and (lease.array == 9).all()
    assert consumer.lease(0) is None
    stats = producer.statistics()
    assert stats.dropped_replaced == 9 and consumer.statistics().dropped == 9
    # replaced frames' leases were taken back: only the one we hold is leased
    assert sum(ring.lease_count(s) for s in range(ring.slots)) == 1
    lease.release()
    consumer.close()


@settings(max_examples=25, deadline=None)
@given(
    strategy=st.sampled_from(list(BufferFillingStrategy)),
    script=st.lists(st.sampled_from(["send", "take", "take_release", "release"]), max_size=60),
)
def test_every_frame_is_delivered_or_counted(
    strategy: BufferFillingStrategy, script: list[str]
) -> None:
    """Accounting invariant for all strategies: published == received + dropped + in flight."""
    with FrameRing.create(4, (1,), np.int64, max_consumers=1, queue_depth=2) as ring:
        producer = FrameProducer(ring, strategy)
        consumer = FrameConsumer(ring)
        held = []
        last = -1
        sent = attempts = 0
        for op in script:
            if op == "send":
                attempts += 1
                sent += _send(producer, attempts, timeout=0)
            elif op in ("take", "take_release"):
                lease = consumer.lease(0)
                if lease is not None:
                    assert lease.frame_id > last and (lease.array == lease.frame_id).all()
                    last = lease.frame_id
                    if op == "take":
                        held.append(lease)
                    else:
                        lease.release()
            elif held:
                held.pop(0).release()
        ps, cs = producer.statistics(), consumer.statistics()
        queued = ps.consumers[0].queued
        assert ps.published == sent
        assert attempts == sent + ps.dropped_no_slot
        assert sent == cs.received + cs.dropped + queued
        assert sum(ring.lease_count(s) for s in range(ring.slots)) == len(held) + queued
        consumer.close()


def test_eager_consumer_takes_the_newest_and_releases_the_rest(ring: FrameRing) -> None:
    producer = FrameProducer(ring, BufferFillingStrategy.WAIT)
    consumer = FrameConsumer(ring, eager=True)
    for i in range(2):
        assert _send(producer, i)
    lease = consumer.lease(0.1)
    assert lease is not None and lease.frame_id == 1
    assert consumer.statistics().skipped == 1
    assert sum(ring.lease_count(s) for s in range(ring.slots)) == 1
    lease.release()
    consumer.close()


def test_end_of_stream_ends_lease(ring: FrameRing) -> None:
    producer = FrameProducer(ring)
    consumer = FrameConsumer(ring)
    assert _send(producer, 0)
    producer.close()
    assert not consumer.finished  # one frame still queued
    lease = consumer.lease(1.0)
    assert lease is not None
    lease.release()
    t0 = time.monotonic()
    assert consumer.lease(None) is None  # does not block: the stream is over
    assert time.monotonic() - t0 < 1.0 and consumer.finished
    with pytest.raises(OperationError, match="closed"):
        producer.publish(0, frame_id=1)
    consumer.close()


def test_consumer_close_gives_everything_back_and_producer_reclaims(ring: FrameRing) -> None:
    producer = FrameProducer(ring)
    consumer = FrameConsumer(ring)
    for i in range(2):
        assert _send(producer, i)
    held = consumer.lease(0)
    assert held is not None
    consumer.close()
    consumer.close()
    assert held.released
    assert ring.free_slots() == ring.slots
    assert producer.reap() == 1
    assert producer.statistics().consumers == ()
    assert _send(producer, 3)  # nobody listening: published, given to no one
    assert producer.statistics().delivered == 2


def _exit_now() -> None:
    return None


def test_dead_consumer_is_reclaimed_and_wait_resumes(ring: FrameRing) -> None:
    proc = mp.get_context("spawn").Process(target=_exit_now)
    proc.start()
    proc.join()
    producer = FrameProducer(ring, BufferFillingStrategy.WAIT, reap_interval=60.0)
    live = FrameConsumer(ring)

    def send_and_consume(frame_id: int, timeout: float) -> None:
        assert _send(producer, frame_id, timeout)
        lease = live.lease(0)
        assert lease is not None and lease.frame_id == frame_id
        lease.release()

    send_and_consume(0, 0.05)  # the periodic liveness check ran here; next one in 60 s
    ghost = ring.register_consumer(pid=proc.pid)  # a consumer whose process is gone
    for i in range(1, 3):
        send_and_consume(i, 0.05)
    assert sorted(ring.header(slot).frame_id for slot in ring.leases_of(ghost)) == [1, 2]
    # the ghost's queue is full: WAIT would block forever, but the waiting producer notices
    t0 = time.monotonic()
    send_and_consume(3, 5.0)
    assert time.monotonic() - t0 < 2.0
    assert ring.leases_of(ghost) == []
    stats = producer.statistics()
    assert stats.consumers_reclaimed == 1 and stats.leases_reclaimed == 3
    assert stats.dropped == 0  # the ghost is gone: no drop is counted for it
    live.close()


def test_send_rejects_wrong_shape(ring: FrameRing) -> None:
    producer = FrameProducer(ring)
    with pytest.raises(InvalidPayloadError, match="shape"):
        producer.send(np.zeros((3, 3), np.int64), frame_id=0)


def test_a_descriptor_whose_slot_was_reused_is_skipped_and_counted(ring: FrameRing) -> None:
    producer = FrameProducer(ring)
    consumer = FrameConsumer(ring)
    assert _send(producer, 0)
    d = ring.header(0)
    # forge a descriptor with an old sequence number: the consumer must not hand it out
    ring.grant(consumer.index, 0)
    assert ring._queues[consumer.index].try_put(0, d.seq - 2, 99)
    first = consumer.lease(0)
    assert first is not None and first.frame_id == 0
    first.release()
    assert consumer.lease(0) is None
    stats = consumer.statistics()
    assert stats.stale == 1 and stats.received == 2
    consumer.close()
