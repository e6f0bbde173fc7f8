"""The RAM budget counts resident memory: a pipeline is admitted for its frames in flight, a
ring grows beyond that only as the budget grants, and admission and growth share one limit.
Real rings in /dev/shm, measured the way the manager measures them."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

from framepipe.core.budget import (
    MB,
    MemoryUsage,
    RamBudget,
    process_unique_bytes,
    process_unique_bytes_outside_segments,
    shared_segments_bytes,
)
from framepipe.core.growth import GrowthAccount
from framepipe.core.ring import FrameRing
from framepipe.core.shm import Segment
from framepipe.core.sources.sizing import (
    resident_floor_slots,
    ring_bytes,
    ring_floor_bytes,
    ring_geometry,
)
from framepipe.errors import RamBudgetExceededError

W, H, BUFFER = 1280, 720, 64
WORKER_MB = 20.0  # a worker's unique memory, as sampled
PIPELINES = 4


def _usage(workers: int) -> MemoryUsage:
    return MemoryUsage(
        manager_mb=0.0,
        workers_mb=workers * WORKER_MB,
        shared_segments_mb=shared_segments_bytes({os.getpid()}) / MB,
    )


def _new_ring() -> FrameRing:
    """A source's ring, made the way the decoder's owner makes it (one consumer)."""
    depth, slots = ring_geometry(W, H, BUFFER)
    return FrameRing.create(
        slots, (H, W, 3), np.uint8, 1, queue_depth=depth, resident_slots=resident_floor_slots(1)
    )


def test_admission_charges_the_frames_in_flight_not_the_capacity() -> None:
    floor, capacity = ring_floor_bytes(W, H, BUFFER), ring_bytes(W, H, BUFFER)
    frame = W * H * 3
    assert 3 * frame <= floor < 4 * frame  # the metadata and three frames in flight
    assert capacity > 10 * floor  # the queue depth of decoding_buffer_size is a bound
    with _new_ring() as ring:
        assert ring.resident_bytes() == floor  # what admission charged is what is resident


def test_fill_to_the_budget_and_one_more_pipeline_is_refused() -> None:
    floor_mb = ring_floor_bytes(W, H, BUFFER) / MB
    slack_mb = 10.0  # less than one more pipeline, more than three more frames
    budget = RamBudget(max_ram_mb=PIPELINES * (WORKER_MB + floor_mb) + slack_mb)
    samples = [[WORKER_MB]]
    with contextlib.ExitStack() as stack:
        for admitted in range(PIPELINES):
            budget.admit(
                usage=_usage(admitted),
                worker_samples_mb=samples,
                new_rings_bytes=ring_floor_bytes(W, H, BUFFER),
            )
            stack.enter_context(_new_ring())
        usage = _usage(PIPELINES)
        assert usage.shared_segments_mb == pytest.approx(PIPELINES * floor_mb, abs=0.1)
        with pytest.raises(RamBudgetExceededError, match="not enough RAM"):
            budget.admit(
                usage=usage,
                worker_samples_mb=samples,
                new_rings_bytes=ring_floor_bytes(W, H, BUFFER),
            )


def test_a_stalled_wait_pipeline_grows_to_the_budget_then_admission_refuses() -> None:
    floor_bytes = ring_floor_bytes(W, H, BUFFER)
    budget = RamBudget(max_ram_mb=2 * WORKER_MB + 3 * floor_bytes / MB)
    samples = [[WORKER_MB]]
    with GrowthAccount.create() as account, _new_ring() as ring:
        usage = _usage(1)
        budget.admit(usage=usage, worker_samples_mb=samples, new_rings_bytes=floor_bytes)
        headroom = budget.growth_headroom_bytes(usage)
        assert headroom is not None and headroom > floor_bytes
        account.set_headroom(headroom)
        # the consumer stalls: it holds every frame it is given
        consumer = ring.register_consumer()
        held = 0
        while (slot := ring.try_acquire()) is not None:
            ring.publish(slot, frame_id=held)
            ring.grant(consumer, slot)
            held += 1
        slot_bytes = -(-W * H * 3 // 4096) * 4096  # a frame, page-rounded
        granted = headroom // slot_bytes
        assert held == resident_floor_slots(1) + granted < ring.slots
        assert ring.growth_refused >= 1
        assert account.headroom < slot_bytes
        assert ring.resident_bytes() == floor_bytes + granted * slot_bytes
        # what it grew to is in use now: the next pipeline is refused
        with pytest.raises(RamBudgetExceededError):
            budget.admit(usage=_usage(1), worker_samples_mb=samples, new_rings_bytes=floor_bytes)
        assert budget.growth_headroom_bytes(_usage(1)) == pytest.approx(account.headroom, abs=MB)


def test_a_segment_page_one_process_maps_counts_once() -> None:
    """Pages of a sparse segment that only this process touched are private to it: its USS
    counts them, the measure beside the segment's blocks does not."""
    size = 32 * MB
    with Segment.create(size + MB, reserve=size) as seg:
        before = process_unique_bytes(os.getpid())
        outside_before = process_unique_bytes_outside_segments(os.getpid())
        np.frombuffer(seg.buf, np.uint8, size)[::4096] = 1  # touch every reserved page
        grown = process_unique_bytes(os.getpid()) - before
        outside_grown = process_unique_bytes_outside_segments(os.getpid()) - outside_before
        assert grown >= size
        assert outside_grown < 4 * MB
        assert seg.resident_bytes() == size  # counted there, once
