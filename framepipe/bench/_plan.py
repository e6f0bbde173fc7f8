"""One measurement: an architecture, N pipelines, their streams and how to read them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from framepipe.bench._media import StreamSet
from framepipe.bench.config import PASSTHROUGH, Architecture, Criteria, Layout


@dataclass(frozen=True)
class Pacing:
    """How frames are read and gated, the same for both architectures.

    ``max_fps``: what framepipe's ``VideoConfiguration.max_fps`` is set to; ``realtime_replay``:
    the ``VideoConfiguration.realtime_replay`` extension (None: the server does not have it).
    The classic baseline mirrors them: ``pace_fps`` — a file is read at this rate (a camera's
    pace); ``gate_fps`` — frames are delivered at most at this rate, the others grabbed and
    skipped.
    """

    max_fps: float | None
    realtime_replay: bool | None
    pace_fps: float | None
    gate_fps: float | None
    note: str = ""


@dataclass(frozen=True)
class RunPlan:
    architecture: Architecture
    layout: Layout
    count: int
    model: str
    streams: StreamSet
    pacing: Pacing
    target_fps: float
    warmup_s: float
    duration_s: float
    poll_interval_s: float
    criteria: Criteria
    log_dir: Path
    decoding_buffer_size: int | None = None
    # framepipe: CPU one ONNX Runtime run of the model costs (calibrated in this session)
    model_run_cpu_s: float = 0.0

    @property
    def references(self) -> list[str]:
        if self.layout is Layout.FANOUT:
            return [self.streams.reference(0)] * self.count
        return [self.streams.reference(i) for i in range(self.count)]

    @property
    def has_model(self) -> bool:
        return self.model != PASSTHROUGH

    @property
    def label(self) -> str:
        return f"{self.architecture.value} x{self.count}"


@dataclass
class LiveFigures:
    """What a run in progress shows (updated by the run, read by the display)."""

    phase: str = "starting"
    streams_fps: list[float] = field(default_factory=list)
    drops: int = 0
    cpu_pct: float | None = None
    age_p99_ms: float | None = None


Reporter = Callable[[LiveFigures], None]


class Cancelled(Exception):
    """The run was interrupted (Ctrl-C)."""


def sleep_unless(stop: threading.Event | None, seconds: float) -> None:
    if stop is None:
        import time

        time.sleep(seconds)
        return
    if stop.wait(seconds):
        raise Cancelled()
