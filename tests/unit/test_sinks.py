"""The result buffer (InMemoryBufferSink) and a result's wire shape.

The buffer is bounded: one entry per ``consume`` by default, oldest first; when full, a
producer that must not lose results waits for room (hold), any other drops the oldest entry
and the drop is counted. A result's wire form is JSON (numpy values converted) with the
excluded fields left out.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

import numpy as np
import pytest

from framepipe.core.pipeline import PipelineResult, frame_metadata_to_wire
from framepipe.core.sinks import InMemoryBufferSink
from framepipe.core.sources.entities import FrameMetadata


def meta(i: int, source: int = 0) -> FrameMetadata:
    return FrameMetadata(
        frame_id=i,
        frame_timestamp=datetime(2026, 11, 25, 11, 37, 36, 233016),
        source_id=source,
        capture_ns=0,
        pts=None,
        width=4,
        height=4,
    )


def test_consume_pops_one_entry_per_call_oldest_first() -> None:
    sink: InMemoryBufferSink[int] = InMemoryBufferSink(4)
    for i in range(3):
        assert sink.put(i)
    assert sink.consume() == [0]
    assert sink.consume(max_entries=10) == [1, 2]
    assert sink.consume() == []


def test_full_buffer_drops_oldest_and_counts() -> None:
    sink: InMemoryBufferSink[int] = InMemoryBufferSink(2)
    for i in range(5):
        sink.put(i)
    stats = sink.statistics()
    assert (stats.buffered, stats.received, stats.dropped) == (2, 5, 3)
    assert sink.consume(max_entries=5) == [3, 4]
    assert sink.statistics().consumed == 2


def test_discard_empties_the_buffer_and_counts_the_entries_as_dropped() -> None:
    sink: InMemoryBufferSink[int] = InMemoryBufferSink(4)
    for i in range(6):
        sink.put(i)
    assert sink.discard() == 4
    stats = sink.statistics()
    assert (stats.buffered, stats.dropped, stats.consumed) == (0, 6, 0)
    assert sink.consume() == []


def test_hold_waits_for_room_and_loses_nothing() -> None:
    sink: InMemoryBufferSink[int] = InMemoryBufferSink(2)
    got: list[int] = []

    def produce() -> None:
        for i in range(200):
            assert sink.put(i, hold=True)

    thread = threading.Thread(target=produce)
    thread.start()
    deadline = time.monotonic() + 30
    while (thread.is_alive() or len(sink)) and time.monotonic() < deadline:
        got += sink.consume(max_entries=1)
        time.sleep(0.0005)
    thread.join(5)
    stats = sink.statistics()
    assert got == list(range(200))
    assert stats.dropped == 0 and stats.held_s > 0


def test_hold_gives_up_when_stopped_or_closed() -> None:
    sink: InMemoryBufferSink[int] = InMemoryBufferSink(1)
    sink.put(0)
    stop = threading.Event()
    stop.set()
    assert not sink.put(1, hold=True, stop=stop)
    sink.close()
    assert not sink.put(2, hold=True)
    assert sink.consume(5) == [0] and sink.statistics().dropped == 0


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="results_buffer_size"):
        InMemoryBufferSink(0)
    with pytest.raises(ValueError, match="max_entries"):
        InMemoryBufferSink[int](1).consume(max_entries=0)


def test_concurrent_producer_and_consumer_lose_nothing_but_drops() -> None:
    sink: InMemoryBufferSink[int] = InMemoryBufferSink(8)
    got: list[int] = []

    def produce() -> None:
        for i in range(2000):
            sink.put(i)

    thread = threading.Thread(target=produce)
    thread.start()
    while thread.is_alive() or sink.statistics().buffered:
        got += sink.consume(max_entries=4)
    thread.join()
    stats = sink.statistics()
    assert got == sorted(got)
    assert len(got) + stats.dropped == 2000


def test_result_wire_shape_excluded_fields_and_numpy() -> None:
    result = PipelineResult(
        [
            {"image": "x", "boxes": np.array([[1.5, 2.0]], dtype=np.float32), "n": np.int64(3)},
            None,
        ],
        [meta(1, 0), None],
    )
    assert result.to_wire(["image"]) == {
        "outputs": [{"boxes": [[1.5, 2.0]], "n": 3}, None],
        "frames_metadata": [
            {"frame_timestamp": "2026-11-25T11:37:36.233016", "frame_id": 1, "source_id": 0},
            None,
        ],
    }
    assert frame_metadata_to_wire(meta(7, 2)) == {
        "frame_timestamp": "2026-11-25T11:37:36.233016",
        "frame_id": 7,
        "source_id": 2,
    }


def test_the_buffer_is_bounded_in_bytes_too() -> None:
    """Each entry weighed once when put: past ``max_bytes`` the oldest go (counted), and an
    entry bigger than the whole cap is kept alone."""
    sink: InMemoryBufferSink[bytes] = InMemoryBufferSink(1000, max_bytes=100, size_of=len)
    for i in range(10):
        assert sink.put(bytes([i]) * 30)
    stats = sink.statistics()
    assert (stats.buffered, stats.bytes, stats.dropped) == (3, 90, 7)
    sink.put(b"x" * 500)
    assert (len(sink), sink.statistics().bytes) == (1, 500)


def test_consume_takes_what_fits_in_a_byte_budget_and_at_least_one() -> None:
    sink: InMemoryBufferSink[bytes] = InMemoryBufferSink(1000, size_of=len)
    for size in (60, 30, 30, 10):
        sink.put(b"x" * size)
    assert [len(e) for e in sink.consume(10, max_bytes=50)] == [60]  # over, but the first
    assert [len(e) for e in sink.consume(10, max_bytes=50)] == [30]
    assert [len(e) for e in sink.consume(10, max_bytes=50)] == [30, 10]
    assert sink.consume(10, max_bytes=50) == []


def test_hold_waits_for_room_in_bytes() -> None:
    sink: InMemoryBufferSink[bytes] = InMemoryBufferSink(1000, max_bytes=100, size_of=len)
    sink.put(b"x" * 80)
    stop = threading.Event()
    stop.set()
    assert not sink.put(b"y" * 30, hold=True, stop=stop)  # no room in bytes: not added
    assert sink.statistics().dropped == 0
