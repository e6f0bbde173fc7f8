"""Child-process bodies for the data-plane integration tests (importable under ``spawn``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from framepipe.core.processes import die_with_parent
from framepipe.core.ring import FrameConsumer, FrameProducer, FrameRing
from framepipe.protocol.payloads import BufferFillingStrategy

SHAPE = (48, 64, 3)


def fill(frame: np.ndarray, frame_id: int) -> None:
    """Frame content that reveals loss, duplicates and torn writes: a body byte derived from
    the id, and the id itself at both ends (written first and last)."""
    flat = frame.reshape(-1)
    stamp = np.frombuffer(frame_id.to_bytes(8, "little"), np.uint8)
    flat[:8] = stamp
    flat[8:-8] = frame_id % 251
    flat[-8:] = stamp


def check(frame: np.ndarray, frame_id: int) -> bool:
    flat = frame.reshape(-1)
    head = int.from_bytes(flat[:8].tobytes(), "little")
    tail = int.from_bytes(flat[-8:].tobytes(), "little")
    return head == frame_id and tail == frame_id and bool((flat[8:-8] == frame_id % 251).all())


@dataclass
class ConsumerReport:
    index: int
    frames: int = 0
    bad_content: int = 0
    out_of_order: int = 0  # a frame id not greater than the previous one (duplicate/reorder)
    gaps: int = 0  # frame ids skipped
    first_ids: list[int] = field(default_factory=list)
    received: int = 0
    dropped: int = 0
    skipped: int = 0


def run_consumer(
    ring_name: str,
    ready: Any,
    out: Connection,
    slow_every: int = 0,
    slow_s: float = 0.0,
    eager: bool = False,
) -> None:
    die_with_parent()
    with FrameConsumer(ring_name, eager=eager) as consumer:
        report = ConsumerReport(consumer.index)
        ready.set()
        last = -1
        while (lease := consumer.lease(timeout=30.0)) is not None:
            with lease:
                fid = lease.frame_id
                if not check(lease.array, fid):
                    report.bad_content += 1
                if fid <= last:
                    report.out_of_order += 1
                elif fid != last + 1:
                    report.gaps += fid - last - 1
                last = max(last, fid)
                if len(report.first_ids) < 5:
                    report.first_ids.append(fid)
                report.frames += 1
            if slow_every and report.frames % slow_every == 0:
                time.sleep(slow_s)
        stats = consumer.statistics()
        report.received, report.dropped, report.skipped = (
            stats.received,
            stats.dropped,
            stats.skipped,
        )
        out.send(report)


def run_producer(
    ring_name: str,
    frames: int,
    strategy: str,
    consumers: int,
    out: Connection,
    stop: Any = None,
) -> None:
    """Publish ``frames`` frames (or until ``stop`` is set) once ``consumers`` registered."""
    die_with_parent()
    ring = FrameRing.attach(ring_name)
    producer = FrameProducer(ring, BufferFillingStrategy(strategy))
    deadline = time.monotonic() + 60
    while sum(c.state == 1 for c in ring.consumers()) < consumers:
        if time.monotonic() > deadline:
            raise RuntimeError("consumers did not register")
        time.sleep(0.005)
    frame_id = 0
    while frame_id < frames and not (stop is not None and stop.is_set()):
        slot = producer.acquire(timeout=None)
        if slot is not None:
            fill(ring.writable(slot), frame_id)
            producer.publish(slot, frame_id=frame_id)
        frame_id += 1
    producer.close()
    out.send((frame_id, producer.statistics()))
    ring.close()


def run_hoarder(ring_name: str, hold: int, holding: Any, out: Connection) -> None:
    """A consumer that leases ``hold`` frames, never releases them, and waits to be killed."""
    die_with_parent()
    consumer = FrameConsumer(ring_name)
    out.send(consumer.index)
    held = []
    while len(held) < hold:
        lease = consumer.lease(timeout=30.0)
        if lease is None:
            raise RuntimeError("no frames to hoard")
        held.append(lease)
    holding.set()
    time.sleep(600)


def run_owner_producer(out: Connection, consumer_ready: Any) -> None:
    """Create a ring (this process owns it) and stream into it until killed."""
    die_with_parent()
    slots = FrameRing.required_slots(4, 1, 2)
    ring = FrameRing.create(slots, SHAPE, np.uint8, max_consumers=2, queue_depth=4, tag="crash")
    out.send(ring.name)
    consumer_ready.wait(60)
    producer = FrameProducer(ring, BufferFillingStrategy.DROP_OLDEST)
    frame_id = 0
    while True:
        slot = producer.acquire()
        if slot is not None:
            fill(ring.writable(slot), frame_id)
            producer.publish(slot, frame_id=frame_id)
        frame_id += 1
        if frame_id % 64 == 0:
            time.sleep(0.001)


def run_counting_consumer(ring_name: str, ready: Any, count: Any) -> None:
    """Lease and release until the stream ends; ``count`` (a shared int) shows progress."""
    die_with_parent()
    with FrameConsumer(ring_name) as consumer:
        ready.set()
        while (lease := consumer.lease(timeout=30.0)) is not None:
            with lease:
                if not check(lease.array, lease.frame_id):
                    raise RuntimeError(f"torn frame {lease.frame_id}")
            count.value += 1
