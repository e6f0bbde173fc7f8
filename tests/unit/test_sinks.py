"""InMemoryBufferSink: bounded FIFO, oldest dropped and counted, one entry per consume."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pytest

from framepipe.core.sinks import InMemoryBufferSink, MultiSink, frame_metadata_to_wire


@dataclass(frozen=True)
class Meta:
    frame_id: int
    frame_timestamp: datetime
    source_id: int | None


def meta(i: int, source: int | None = 0) -> Meta:
    return Meta(
        frame_id=i, frame_timestamp=datetime(2026, 11, 25, 11, 37, 36, 233016), source_id=source
    )


def test_consume_pops_one_entry_per_call_oldest_first() -> None:
    sink = InMemoryBufferSink(4)
    for i in range(3):
        sink.on_prediction([{"size": i}], [meta(i)])
    (first,) = sink.consume()
    assert first.outputs == [{"size": 0}]
    assert first.frames_metadata == [
        {"frame_timestamp": "2026-11-25T11:37:36.233016", "frame_id": 0, "source_id": 0}
    ]
    assert [e.outputs for e in sink.consume(max_entries=10)] == [[{"size": 1}], [{"size": 2}]]
    assert sink.consume() == []


def test_full_buffer_drops_oldest_and_counts() -> None:
    sink = InMemoryBufferSink(2)
    for i in range(5):
        sink.on_prediction([{"i": i}], [meta(i)])
    stats = sink.statistics()
    assert (stats.buffered, stats.received, stats.dropped) == (2, 5, 3)
    assert [e.outputs[0] for e in sink.consume(max_entries=5)] == [{"i": 3}, {"i": 4}]
    assert sink.statistics().consumed == 2


def test_excluded_fields_and_missing_sources() -> None:
    sink = InMemoryBufferSink(2)
    sink.on_prediction([{"image": "x", "size": 1}, None], [meta(1, 0), None])
    (entry,) = sink.consume(excluded_fields=["image"])
    assert entry.outputs == [{"size": 1}, None]
    assert entry.frames_metadata[1] is None


def test_numpy_values_become_json() -> None:
    sink = InMemoryBufferSink(1)
    sink.on_prediction(
        [{"boxes": np.array([[1.5, 2.0]], dtype=np.float32), "n": np.int64(3)}], [meta(1)]
    )
    (entry,) = sink.consume()
    assert entry.outputs == [{"boxes": [[1.5, 2.0]], "n": 3}]


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="results_buffer_size"):
        InMemoryBufferSink(0)
    with pytest.raises(ValueError, match="max_entries"):
        InMemoryBufferSink(1).consume(max_entries=0)


def test_concurrent_producer_and_consumer_lose_nothing_but_drops() -> None:
    sink = InMemoryBufferSink(8)
    got: list[int] = []

    def produce() -> None:
        for i in range(2000):
            sink.on_prediction([{"i": i}], [meta(i)])

    thread = threading.Thread(target=produce)
    thread.start()
    while thread.is_alive() or sink.statistics().buffered:
        got += [e.outputs[0]["i"] for e in sink.consume(max_entries=4)]  # type: ignore[index]
    thread.join()
    stats = sink.statistics()
    assert got == sorted(got)
    assert len(got) + stats.dropped == 2000


def test_multisink_calls_every_sink() -> None:
    a, b = InMemoryBufferSink(2), InMemoryBufferSink(2)
    MultiSink([a.on_prediction, b.on_prediction]).on_prediction([{"k": 1}], [meta(0)])
    assert a.consume()[0].outputs == b.consume()[0].outputs == [{"k": 1}]


def test_frame_metadata_wire_shape() -> None:
    assert frame_metadata_to_wire(meta(7, None)) == {
        "frame_timestamp": "2026-11-25T11:37:36.233016",
        "frame_id": 7,
        "source_id": None,
    }
