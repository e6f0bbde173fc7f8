"""Result sinks: where a pipeline's predictions go.

:class:`InMemoryBufferSink` is the reference's bounded buffer that clients drain with
``consume_result``: one entry per processing step (one output per video source), the oldest
entry dropped — and counted — when the buffer is full. :class:`MultiSink` fans one prediction
out to several sinks.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson


class FrameMetadataLike(Protocol):
    """What a sink reads of a frame's metadata (``framepipe.core.sources.entities.FrameMetadata``)."""

    @property
    def frame_id(self) -> int: ...

    @property
    def frame_timestamp(self) -> datetime: ...

    @property
    def source_id(self) -> int | None: ...


OnPrediction = Callable[[Sequence[dict[str, Any] | None], Sequence[FrameMetadataLike | None]], None]


@dataclass(frozen=True)
class BufferedResult:
    """One processing step: an output and a frame-metadata entry per video source (wire shapes)."""

    outputs: list[dict[str, Any] | None]
    frames_metadata: list[dict[str, Any] | None]

    def without(self, excluded_fields: Iterable[str]) -> BufferedResult:
        """A copy whose outputs lack the given keys (the reference's ``excluded_fields``)."""
        excluded = set(excluded_fields)
        if not excluded:
            return self
        outputs = [
            None if out is None else {k: v for k, v in out.items() if k not in excluded}
            for out in self.outputs
        ]
        return BufferedResult(outputs=outputs, frames_metadata=self.frames_metadata)


@dataclass(frozen=True)
class SinkStatistics:
    buffered: int
    capacity: int
    received: int
    consumed: int
    dropped: int


class InMemoryBufferSink:
    """A bounded, thread-safe FIFO of processing results.

    ``on_prediction`` is called by the pipeline's processing thread; ``consume`` by the worker's
    command loop. Outputs are made JSON-able when they arrive (numpy scalars and arrays, datetimes),
    so consuming never fails on a value a model produced.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"results_buffer_size must be >= 1, got {capacity}")
        self._capacity = capacity
        self._entries: deque[BufferedResult] = deque()
        self._lock = threading.Lock()
        self._received = 0
        self._consumed = 0
        self._dropped = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    def on_prediction(
        self,
        outputs: Sequence[dict[str, Any] | None],
        frames: Sequence[FrameMetadataLike | None],
    ) -> None:
        entry = BufferedResult(
            outputs=[None if out is None else _jsonable(out) for out in outputs],
            frames_metadata=[
                None if frame is None else frame_metadata_to_wire(frame) for frame in frames
            ],
        )
        with self._lock:
            self._received += 1
            if len(self._entries) >= self._capacity:
                self._entries.popleft()
                self._dropped += 1
            self._entries.append(entry)

    def consume(
        self, excluded_fields: Iterable[str] = (), max_entries: int = 1
    ) -> list[BufferedResult]:
        """Pop up to ``max_entries`` entries, oldest first (an empty list when there are none)."""
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        excluded = list(excluded_fields)
        with self._lock:
            count = min(max_entries, len(self._entries))
            taken = [self._entries.popleft() for _ in range(count)]
            self._consumed += count
        return [entry.without(excluded) for entry in taken]

    def statistics(self) -> SinkStatistics:
        with self._lock:
            return SinkStatistics(
                buffered=len(self._entries),
                capacity=self._capacity,
                received=self._received,
                consumed=self._consumed,
                dropped=self._dropped,
            )


class MultiSink:
    """Calls every sink with each prediction; one failing sink does not starve the others."""

    def __init__(self, sinks: Sequence[OnPrediction]) -> None:
        self._sinks = list(sinks)

    def on_prediction(
        self,
        outputs: Sequence[dict[str, Any] | None],
        frames: Sequence[FrameMetadataLike | None],
    ) -> None:
        errors: list[BaseException] = []
        for sink in self._sinks:
            try:
                sink(outputs, frames)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def frame_metadata_to_wire(frame: FrameMetadataLike) -> dict[str, Any]:
    """The reference's ``frames_metadata`` entry: ISO timestamp, frame id, source id."""
    return {
        "frame_timestamp": frame.frame_timestamp.isoformat(),
        "frame_id": int(frame.frame_id),
        "source_id": None if frame.source_id is None else int(frame.source_id),
    }


def _jsonable(output: dict[str, Any]) -> dict[str, Any]:
    try:
        return orjson.loads(orjson.dumps(output))  # type: ignore[no-any-return]
    except TypeError:
        converted = orjson.loads(
            orjson.dumps(
                output,
                default=_fallback,
                option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
            )
        )
        return converted  # type: ignore[no-any-return]


def _fallback(value: object) -> object:
    item = getattr(value, "item", None)  # numpy scalars of types orjson does not know
    if callable(item):
        return item()
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot serialise a {type(value).__name__} in a prediction output")
