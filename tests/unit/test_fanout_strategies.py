"""One source fanned out to consumers with different strategies and targets (decode once)."""

from __future__ import annotations

import numpy as np

from framepipe.core.ring import FrameConsumer, FrameProducer, FrameRing


def _publish(producer: FrameProducer, value: int, consumers: list[int] | None) -> None:
    slot = producer.acquire(0)
    assert slot is not None
    producer.writable(slot)[:] = value
    producer.publish(slot, frame_id=value, consumers=consumers)


def test_per_consumer_strategies_and_targeted_publish() -> None:
    ring = FrameRing.create(FrameRing.required_slots(4, 2, 2), (4, 4), np.uint8, 2, queue_depth=4)
    try:
        lazy = FrameConsumer(ring)  # a queue of 4, the newest frames dropped when full
        fresh = FrameConsumer(ring)  # a one-deep mailbox holding the newest frame
        producer = FrameProducer(ring, "DROP_LATEST")
        producer.set_consumer_strategy(fresh.index, "DROP_OLDEST")
        for value in range(1, 7):
            # odd frames go to both; even frames only to `lazy` (say `fresh` is rate-limited)
            _publish(producer, value, None if value % 2 else [lazy.index])
        got_lazy = []
        while (lease := lazy.lease(0)) is not None:
            got_lazy.append((lease.frame_id, int(lease.array[0, 0])))
            lease.release()
        lease = fresh.lease(0)
        assert lease is not None
        got_fresh = (lease.frame_id, int(lease.array[0, 0]))
        lease.release()
        assert got_lazy == [(1, 1), (2, 2), (3, 3), (4, 4)]  # 5 and 6 found its queue full
        assert got_fresh == (5, 5)  # 1 and 3 were replaced in its mailbox; 2, 4, 6 not for it
        assert ring.consumer_info(lazy.index).dropped == 2
        assert ring.consumer_info(fresh.index).dropped == 2
        assert fresh.lease(0) is None  # nothing else was handed to it
        producer.set_consumer_strategy(fresh.index, None)  # back to the producer's DROP_LATEST
        _publish(producer, 7, None)
        lease = fresh.lease(0)
        assert lease is not None and lease.frame_id == 7
        lease.release()
        lazy.close()
        fresh.close()
        producer.close()
        assert ring.free_slots() == ring.slots
    finally:
        ring.close()
        ring.unlink()
