"""The data plane across real processes: stress with content checks, crashes, orphan sweep."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from framepipe.core.ring import ConsumerState, FrameRing
from framepipe.core.shm import SHM_DIR, sweep_orphans
from framepipe.protocol.payloads import BufferFillingStrategy
from tests.integration import _dataplane_workers as w

CTX = mp.get_context("spawn")


def _recv(conn: object, proc: mp.process.BaseProcess, timeout: float) -> object:
    """The next message from ``proc``, failing fast if it died first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.poll(0.1):  # type: ignore[attr-defined]
            return conn.recv()  # type: ignore[attr-defined]
        if not proc.is_alive() and not conn.poll(0):  # type: ignore[attr-defined]
            pytest.fail(f"{proc.name} exited with {proc.exitcode} before reporting")
    pytest.fail(f"{proc.name} did not report within {timeout} s")


def _join_all(*procs: mp.process.BaseProcess, timeout: float = 60.0) -> None:
    for p in procs:
        p.join(timeout)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join(5)
    assert not alive, f"processes did not finish: {alive}"
    assert all(p.exitcode == 0 for p in procs), [(p.name, p.exitcode) for p in procs]


@pytest.fixture
def ring() -> Iterator[FrameRing]:
    slots = FrameRing.required_slots(queue_depth=4, consumers=2, leases_in_flight=3)
    with FrameRing.create(slots, w.SHAPE, np.uint8, max_consumers=3, queue_depth=4) as r:
        yield r


def _stream(
    ring: FrameRing,
    frames: int,
    strategy: BufferFillingStrategy,
    consumer_kwargs: list[dict[str, object]],
) -> tuple[int, Any, list[Any]]:
    pipes, procs, readies = [], [], []
    for i, kwargs in enumerate(consumer_kwargs):
        rx, tx = CTX.Pipe(duplex=False)
        ready = CTX.Event()
        p = CTX.Process(
            target=w.run_consumer, args=(ring.name, ready, tx), kwargs=kwargs, name=f"consumer{i}"
        )
        p.start()
        pipes.append(rx)
        procs.append(p)
        readies.append(ready)
    for ready, p in zip(readies, procs, strict=True):
        assert ready.wait(60), f"{p.name} did not start"
    prx, ptx = CTX.Pipe(duplex=False)
    producer = CTX.Process(
        target=w.run_producer,
        args=(ring.name, frames, strategy.value, len(consumer_kwargs), ptx),
        name="producer",
    )
    producer.start()
    attempted, pstats = _recv(prx, producer, 240)  # type: ignore[misc]
    reports = [_recv(rx, p, 60) for rx, p in zip(pipes, procs, strict=True)]
    _join_all(producer, *procs)
    return attempted, pstats, reports


@pytest.mark.slow
def test_wait_100k_frames_two_consumer_processes_no_loss_no_dup_no_tear(ring: FrameRing) -> None:
    frames = 100_000
    attempted, pstats, reports = _stream(ring, frames, BufferFillingStrategy.WAIT, [{}, {}])
    assert attempted == frames
    assert pstats.published == frames and pstats.dropped == 0  # type: ignore[attr-defined]
    for r in reports:
        assert r.first_ids == [0, 1, 2, 3, 4]
        assert (r.frames, r.bad_content, r.out_of_order, r.gaps, r.dropped) == (frames, 0, 0, 0, 0)
    assert ring.free_slots() == ring.slots  # every lease came back


@pytest.mark.parametrize(
    "strategy", [BufferFillingStrategy.DROP_LATEST, BufferFillingStrategy.DROP_OLDEST]
)
def test_drop_strategies_drop_only_for_the_slow_consumer_and_count_exactly(
    ring: FrameRing, strategy: BufferFillingStrategy
) -> None:
    frames = 20_000
    fast: dict[str, object] = {}
    slow: dict[str, object] = {"slow_every": 50, "slow_s": 0.002}
    attempted, pstats, (r_fast, r_slow) = _stream(ring, frames, strategy, [fast, slow])
    published = pstats.published  # type: ignore[attr-defined]
    assert attempted == frames
    assert published + pstats.dropped_no_slot == frames  # type: ignore[attr-defined]
    for r in (r_fast, r_slow):
        assert r.bad_content == 0 and r.out_of_order == 0
        # every published frame was either received or counted as dropped for this consumer
        assert r.received == r.frames
        assert r.frames + r.dropped == published, (r, pstats)
        # and every frame id the producer tried is accounted for: received, dropped for this
        # consumer, or never published for want of a free slot (ids are unique: no duplicates)
        assert r.frames + r.dropped + pstats.dropped_no_slot == attempted
    assert r_slow.dropped > 0
    per_strategy = (
        pstats.dropped_queue_full  # type: ignore[attr-defined]
        if strategy is BufferFillingStrategy.DROP_LATEST
        else pstats.dropped_replaced  # type: ignore[attr-defined]
    )
    assert per_strategy == r_fast.dropped + r_slow.dropped
    assert ring.free_slots() == ring.slots


def test_sigkill_of_a_consumer_holding_leases_releases_them_and_the_rest_flows(
    ring: FrameRing,
) -> None:
    stop = CTX.Event()
    hold_rx, hold_tx = CTX.Pipe(duplex=False)
    holding, ready = CTX.Event(), CTX.Event()
    count = CTX.Value("q", 0)
    good = CTX.Process(target=w.run_counting_consumer, args=(ring.name, ready, count))
    hoarder = CTX.Process(target=w.run_hoarder, args=(ring.name, 3, holding, hold_tx))
    good.start()
    hoarder.start()
    hoarder_index = _recv(hold_rx, hoarder, 60)
    assert ready.wait(60)
    prx, ptx = CTX.Pipe(duplex=False)
    producer = CTX.Process(
        target=w.run_producer, args=(ring.name, 10**9, "WAIT", 2, ptx), kwargs={"stop": stop}
    )
    producer.start()
    try:
        assert holding.wait(60)
        # the hoarder holds 3 leases and its queue is full: under WAIT everyone is stuck
        time.sleep(0.3)
        stuck_at = count.value
        time.sleep(0.3)
        assert count.value == stuck_at
        assert len(ring.leases_of(hoarder_index)) >= 3
        os.kill(hoarder.pid, signal.SIGKILL)  # type: ignore[arg-type]
        hoarder.join(10)
        deadline = time.monotonic() + 10
        while count.value < stuck_at + 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert count.value >= stuck_at + 2000, "the producer and the other consumer did not resume"
        assert ring.leases_of(hoarder_index) == []
        assert ring.consumer_state(hoarder_index) is not ConsumerState.ACTIVE
    finally:
        stop.set()
    _, pstats = _recv(prx, producer, 30)  # type: ignore[misc]
    _join_all(producer, good)
    assert pstats.consumers_reclaimed == 1 and pstats.leases_reclaimed >= 3
    assert ring.free_slots() == ring.slots


def _entries_of(pid: int) -> list[str]:
    return sorted(n for n in os.listdir(SHM_DIR) if n.startswith((f"fp-{pid}-", f"sem.fp-{pid}-")))


def _start_owned_stream() -> tuple[mp.process.BaseProcess, mp.process.BaseProcess, str, Any]:
    rx, tx = CTX.Pipe(duplex=False)
    consumer_ready = CTX.Event()
    producer = CTX.Process(target=w.run_owner_producer, args=(tx, consumer_ready))
    producer.start()
    name = _recv(rx, producer, 60)
    count = CTX.Value("q", 0)
    consumer = CTX.Process(target=w.run_counting_consumer, args=(name, consumer_ready, count))
    consumer.start()
    deadline = time.monotonic() + 60
    while count.value < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert count.value >= 500, "stream did not start"
    return producer, consumer, name, count


def test_sigkill_of_producer_and_consumer_then_sweep_leaves_nothing() -> None:
    producer, consumer, name, _ = _start_owned_stream()
    owner = producer.pid
    assert owner is not None
    entries = _entries_of(owner)
    assert f"fp-{owner}-" in name and len(entries) == 1 + 1 + 2  # segment, -p, -c0, -c1
    os.kill(consumer.pid, signal.SIGKILL)  # type: ignore[arg-type]
    os.kill(owner, signal.SIGKILL)
    producer.join(10)
    consumer.join(10)
    assert _entries_of(owner) == entries  # a crash leaves them behind ...
    removed = sweep_orphans()
    assert set(entries) <= set(removed)  # ... and the sweep removes them
    assert _entries_of(owner) == []


def test_consumer_sees_the_end_when_its_producer_is_killed_then_sweep() -> None:
    producer, consumer, _, _count = _start_owned_stream()
    owner = producer.pid
    assert owner is not None
    os.kill(owner, signal.SIGKILL)
    producer.join(10)
    consumer.join(10)  # lease() returns None once the producer is gone: a clean exit
    assert consumer.exitcode == 0
    assert set(_entries_of(owner)) <= set(sweep_orphans())
    assert _entries_of(owner) == []
