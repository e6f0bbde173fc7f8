"""What a bench run measures: the typed configuration, built once from the command line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

PASSTHROUGH = "passthrough"
DEFAULT_MODEL = "centerface"
# A common deployment setting: CenterFace at 30 fps costs about one core per stream here.
DEFAULT_MODEL_FPS = 5.0


class Architecture(StrEnum):
    FRAMEPIPE = "framepipe"
    # per stream: a decode thread, frames pickled through a multiprocessing.Queue to an
    # inference process with its own ONNX Runtime session, results back through a queue
    CLASSIC = "classic"


class Layout(StrEnum):
    DISTINCT = "distinct"  # N pipelines, each on its own stream (N cameras)
    FANOUT = "fanout"  # N pipelines on one stream (one camera, N consumers)


class SourceMode(StrEnum):
    FILE = "file"  # a generated (or the user's) file, replayed at its own frame rate
    RTSP = "rtsp"  # GStreamer's RTSP server on 127.0.0.1 serving the generated file
    USER_STREAM = "user-stream"  # the user's own rtsp:// (or other live) URL


@dataclass(frozen=True)
class Resolution:
    name: str
    width: int
    height: int
    fps: float = 30.0


RESOLUTIONS: dict[str, Resolution] = {
    "720p": Resolution("720p30", 1280, 720),
    "1080p": Resolution("1080p30", 1920, 1080),
}


@dataclass(frozen=True)
class Criteria:
    """When a stream count is *sustainable*: every stream keeps its full rate and its results
    stay fresh.

    ``min_rate``: each stream delivers at least this fraction of its target rate (the source's
    frame rate, or ``max_fps`` when a model runs at a lower rate). ``max_age_intervals``: the
    worst stream's frame age p99 stays under this many of its frame intervals (1 / target rate).
    """

    min_rate: float = 0.95
    max_age_intervals: float = 2.0

    def shortest_window_s(self, target_fps: float) -> float:
        """The shortest window in which a stream at its full rate is never judged under
        ``min_rate`` by counting: a count of whole results can fall 2 short of rate x window
        (one for where the window starts between two frames, one for the results in flight at
        its two ends), so the window holds 2 / (1 - min_rate) frame intervals (40 at 95%: 8 s
        at 5 fps, 1.3 s at 30 fps). Lengthening the window, never lowering the bar."""
        if target_fps <= 0 or self.min_rate >= 1:
            return 0.0
        return 2.0 / (1.0 - self.min_rate) / target_fps


@dataclass(frozen=True)
class BenchConfig:
    """Everything one ``framepipe bench`` run is configured with."""

    out_dir: Path
    cache_dir: Path
    models: tuple[str, ...] = (PASSTHROUGH, DEFAULT_MODEL)
    resolutions: tuple[str, ...] = ("720p",)
    sources: tuple[SourceMode, ...] = (SourceMode.FILE,)
    video: str | None = None  # the user's file or stream URL (replaces the generated streams)
    layouts: tuple[Layout, ...] = (Layout.DISTINCT, Layout.FANOUT)
    # a fixed list of stream counts; None: grow 1, 2, 4, ... then bisect to the sustainable count
    pipelines: tuple[int, ...] | None = None
    fanout_pipelines: tuple[int, ...] | None = None
    # fixed counts for the scenarios with a model (None: as for passthrough)
    model_pipelines: tuple[int, ...] | None = None
    max_pipelines: int = 64
    duration_s: float = 10.0  # measured window per stream count
    warmup_s: float = 3.0  # after every pipeline delivered its first result, before the window
    budget_s: float = 3600.0  # the whole run; searches stop (marked) when it is spent
    model_fps: float = DEFAULT_MODEL_FPS
    baseline: bool = True
    decoding_buffer_size: int | None = None  # None: the wire default
    poll_interval_s: float = 0.2  # how often the bench's client drains each pipeline's results
    criteria: Criteria = field(default_factory=Criteria)
    quick: bool = False
    plots: bool = True

    def with_changes(self, **changes: object) -> BenchConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def architectures(self) -> tuple[Architecture, ...]:
        if self.baseline:
            return (Architecture.FRAMEPIPE, Architecture.CLASSIC)
        return (Architecture.FRAMEPIPE,)


def quick_config(config: BenchConfig) -> BenchConfig:
    """``--quick``: about a minute on two busy cores, to check that everything works end to
    end: passthrough at 1 and 2 streams, the model at 2, both architectures, distinct streams
    (``--layout fanout`` adds the fan-out at 2), 1.5 s windows — longer where the target rate
    needs it to be judged fairly (:meth:`Criteria.shortest_window_s`: 8 s for a model at 5 fps).
    The figures of such short windows are indicative only."""
    return config.with_changes(
        quick=True,
        resolutions=config.resolutions[:1],
        sources=config.sources[:1],
        layouts=config.layouts
        if config.layouts != (Layout.DISTINCT, Layout.FANOUT)
        else (Layout.DISTINCT,),
        pipelines=config.pipelines or (1, 2),
        model_pipelines=config.model_pipelines or config.pipelines or (2,),
        fanout_pipelines=config.fanout_pipelines or (2,),
        duration_s=min(config.duration_s, 1.5),
        warmup_s=min(config.warmup_s, 0.3),
        budget_s=min(config.budget_s, 120.0),
    )


def smoke_config(config: BenchConfig) -> BenchConfig:
    """``--smoke`` (as every benchmark in perf/ has): does it still run? Passthrough, one
    stream, both architectures, a 1 s window; the figures mean nothing."""
    return quick_config(config).with_changes(
        models=(PASSTHROUGH,),
        layouts=(Layout.DISTINCT,),
        pipelines=(1,),
        model_pipelines=(1,),
        duration_s=1.0,
        warmup_s=0.2,
    )
