"""The figures of a bench run, how each is defined, and the verdict on each stream count.

Definitions (the same for framepipe and for the classic baseline; shown in the output):

* **delivered fps** of a stream: results the consumer received inside the measured window,
  divided by the window's length. framepipe: results drained from the pipeline's sink by the
  bench's client; classic: results that reached the collector.
* **target fps**: what a stream should deliver: the source's frame rate (passthrough) or the
  ``max_fps`` the model runs at.
* **drops by reason**: frames the source had but no result came of, counted by whoever dropped
  them, inside the window. framepipe: the per-source ``frames_dropped`` of the status report's
  ``framepipe`` section (difference between the window's start and end); classic: counted by
  its decode threads (``max_fps``: not due at the model's rate; ``drop_oldest``: a queued
  frame replaced by a newer one).
* **CPU per stream**: CPU time of every process of the architecture's tree over the window
  (framepipe: the ``framepipe serve`` process and all its descendants — manager, pipeline
  workers, decode processes, inference services, forkservers; classic: the app process and its
  inference processes), divided by the window and by N, in % of one core.
* **per-frame cost outside decode and inference** (µs): (total CPU - decode CPU - model CPU) /
  delivered frames. Decode CPU: framepipe's decode processes (the codec, pacing and publishing
  into the ring); classic: its decode threads and the codec's threads they start (the codec and
  pacing; the time the thread spends in queue calls is moved back out, to the frame path).
  Model CPU: ONNX Runtime's ``run`` only; classic: measured (its ORT threads + the calling
  thread's CPU inside ``run``); framepipe: the CPU one ``run`` of the same model costs in this
  process (calibrated in the same session) x inferences. For passthrough this is everything
  but decode: moving the frame between processes, results, status, the control plane.
* **frame age** p50 / p99 (ms): capture → result ready for the application. Capture is when the
  decoder returned the frame (for a file replayed in real time, the time it was decoded on its
  schedule). framepipe: the status report's per-source ``e2e`` percentiles (``framepipe.latency_ms``,
  measured by the pipeline up to the result entering its sink, over its last 256 results that
  completed within 10 s of the latest, read at the end of the window: the window's last 10 s,
  not the pipelines' start-up); classic: measured by the collector on arrival, over the
  window. The run's p50 is the median of the streams' p50, its p99 the worst stream's p99.
* **memory**: USS of every process of the tree by kind, plus the ``fp-*`` shared-memory
  segments it owns (counted once, by their resident blocks; a segment's page mapped by one
  process alone is not counted again in its USS), at the end of the window. Memory per additional stream:
  the slope of a least-squares line through (N, USS + shared memory).
* **sustainable stream count**: the largest N at which every stream delivers at least 95 % of
  its target rate and the worst stream's frame age p99 stays under 2 frame intervals
  (1 / target rate).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from framepipe.bench.config import Architecture, Criteria, Layout

MB = 1024 * 1024


@dataclass(frozen=True)
class StreamFigures:
    index: int
    delivered: int
    fps: float
    age_p50_ms: float | None
    age_p99_ms: float | None
    drops: dict[str, int]
    state: str = "RUNNING"
    # framepipe only: capture -> received by the bench's polling client (an upper bound)
    client_age_p50_ms: float | None = None
    client_age_p99_ms: float | None = None


@dataclass(frozen=True)
class CpuFigures:
    window_s: float
    total_s: float
    by_kind_s: dict[str, float]
    decode_s: float
    model_s: float
    model_method: str  # how model_s was obtained


@dataclass(frozen=True)
class MemoryFigures:
    uss_by_kind: dict[str, int]
    processes_by_kind: dict[str, int]
    shm_bytes: int

    @property
    def uss_bytes(self) -> int:
        return sum(self.uss_by_kind.values())

    @property
    def total_bytes(self) -> int:
        return self.uss_bytes + self.shm_bytes


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunResult:
    """One architecture at one stream count."""

    architecture: Architecture
    layout: Layout
    count: int
    target_fps: float
    streams: tuple[StreamFigures, ...]
    cpu: CpuFigures | None
    memory: MemoryFigures | None
    age_method: str
    error: str | None = None
    notes: tuple[str, ...] = ()
    verdict: Verdict = field(default_factory=lambda: Verdict(False, ("not judged",)))

    # -- derived figures --------------------------------------------------------------------

    @property
    def total_fps(self) -> float:
        return sum(s.fps for s in self.streams)

    @property
    def min_stream_fps(self) -> float:
        return min((s.fps for s in self.streams), default=0.0)

    @property
    def mean_stream_fps(self) -> float:
        return self.total_fps / len(self.streams) if self.streams else 0.0

    @property
    def delivered(self) -> int:
        return sum(s.delivered for s in self.streams)

    @property
    def drops(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for stream in self.streams:
            for reason, n in stream.drops.items():
                total[reason] = total.get(reason, 0) + n
        return dict(sorted(total.items()))

    @property
    def age_p50_ms(self) -> float | None:
        values = [s.age_p50_ms for s in self.streams if s.age_p50_ms is not None]
        return statistics.median(values) if values else None

    @property
    def age_p99_ms(self) -> float | None:
        values = [s.age_p99_ms for s in self.streams if s.age_p99_ms is not None]
        return max(values) if values else None

    @property
    def cpu_per_stream_pct(self) -> float | None:
        if self.cpu is None or not self.count or self.cpu.window_s <= 0:
            return None
        return 100.0 * self.cpu.total_s / self.cpu.window_s / self.count

    @property
    def outside_us_per_frame(self) -> float | None:
        """CPU outside decode and inference per delivered frame (µs)."""
        if self.cpu is None or not self.delivered:
            return None
        outside = self.cpu.total_s - self.cpu.decode_s - self.cpu.model_s
        return 1e6 * outside / self.delivered

    @property
    def decode_us_per_frame(self) -> float | None:
        if self.cpu is None or not self.delivered:
            return None
        return 1e6 * self.cpu.decode_s / self.delivered

    @property
    def memory_mb(self) -> float | None:
        return None if self.memory is None else self.memory.total_bytes / MB

    def figures(self) -> dict[str, Any]:
        """The flat figures of this run (what tables, plots and ratios use)."""
        memory = self.memory
        return {
            "count": self.count,
            "passed": self.verdict.passed,
            "total_fps": _round(self.total_fps, 2),
            "stream_fps_min": _round(self.min_stream_fps, 2),
            "stream_fps_mean": _round(self.mean_stream_fps, 2),
            "target_fps": _round(self.target_fps, 2),
            "delivered": self.delivered,
            "drops": self.drops,
            "cpu_per_stream_pct": _round(self.cpu_per_stream_pct, 1),
            "outside_us_per_frame": _round(self.outside_us_per_frame, 0),
            "decode_us_per_frame": _round(self.decode_us_per_frame, 0),
            "age_p50_ms": _round(self.age_p50_ms, 1),
            "age_p99_ms": _round(self.age_p99_ms, 1),
            "memory_mb": _round(self.memory_mb, 1),
            "uss_mb": None if memory is None else _round(memory.uss_bytes / MB, 1),
            "shm_mb": None if memory is None else _round(memory.shm_bytes / MB, 1),
        }

    def to_dict(self) -> dict[str, Any]:
        out = self.figures()
        out.update(
            architecture=self.architecture.value,
            layout=self.layout.value,
            age_method=self.age_method,
            error=self.error,
            notes=list(self.notes),
            verdict={"passed": self.verdict.passed, "reasons": list(self.verdict.reasons)},
            streams=[asdict(s) for s in self.streams],
            cpu=None
            if self.cpu is None
            else {
                "window_s": _round(self.cpu.window_s, 3),
                "total_s": _round(self.cpu.total_s, 3),
                "decode_s": _round(self.cpu.decode_s, 3),
                "model_s": _round(self.cpu.model_s, 3),
                "model_method": self.cpu.model_method,
                "by_kind_s": {k: _round(v, 3) for k, v in sorted(self.cpu.by_kind_s.items())},
            },
            memory=None
            if self.memory is None
            else {
                "uss_mb_by_kind": {
                    k: _round(v / MB, 1) for k, v in sorted(self.memory.uss_by_kind.items())
                },
                "processes_by_kind": dict(sorted(self.memory.processes_by_kind.items())),
                "shm_mb": _round(self.memory.shm_bytes / MB, 1),
            },
        )
        return out


def judge(run: RunResult, criteria: Criteria) -> Verdict:
    """Does every stream keep its full rate, with fresh results?"""
    if run.error is not None:
        return Verdict(False, (run.error,))
    reasons = []
    need = criteria.min_rate * run.target_fps
    slow = [s for s in run.streams if s.fps < need]
    if len(run.streams) < run.count:
        reasons.append(f"{run.count - len(run.streams)} of {run.count} streams reported nothing")
    if slow:
        worst = min(slow, key=lambda s: s.fps)
        reasons.append(
            f"{len(slow)} of {run.count} streams under {100 * criteria.min_rate:.0f}% of "
            f"{run.target_fps:g} fps (slowest {worst.fps:.1f})"
        )
    limit = age_limit_ms(run.target_fps, criteria)
    p99 = run.age_p99_ms
    if p99 is None:
        reasons.append("no frame age measured")
    elif p99 >= limit:
        reasons.append(f"frame age p99 {p99:.0f} ms >= {limit:.0f} ms")
    ended = [s for s in run.streams if s.state not in ("RUNNING", "")]
    if ended:
        reasons.append(f"{len(ended)} streams not running ({ended[0].state})")
    return Verdict(not reasons, tuple(reasons))


def age_limit_ms(target_fps: float, criteria: Criteria) -> float:
    return 1000.0 * criteria.max_age_intervals / target_fps if target_fps > 0 else math.inf


def memory_slope_mb(runs: Iterable[RunResult]) -> float | None:
    """Memory per additional stream: the least-squares slope of (N, USS + shm) in MB."""
    points = [(r.count, r.memory_mb) for r in runs if r.error is None and r.memory_mb is not None]
    counts = {n for n, _ in points}
    if len(counts) < 2:
        return None
    xs = [float(n) for n, _ in points]
    ys = [float(m) for _, m in points if m is not None]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return sxy / sxx if sxx else None


def ratio(framepipe: float | None, baseline: float | None) -> float | None:
    """framepipe / baseline (None when either is missing or the baseline is 0)."""
    if framepipe is None or baseline is None or baseline == 0:
        return None
    return framepipe / baseline


RATIO_FIGURES = (
    "total_fps",
    "stream_fps_min",
    "cpu_per_stream_pct",
    "outside_us_per_frame",
    "decode_us_per_frame",
    "age_p50_ms",
    "age_p99_ms",
    "memory_mb",
)


@dataclass
class ArchitectureResult:
    architecture: Architecture
    runs: list[RunResult] = field(default_factory=list)
    sustainable: int = 0
    search_end: str = "running"

    @property
    def lower_bound(self) -> bool:
        """The sustainable count is only a lower bound: no larger count was seen to fail."""
        if self.search_end == "found":
            return False
        largest = max(self.runs, key=lambda r: r.count, default=None)
        return largest is None or largest.verdict.passed or self.search_end == "stopped"

    def run_at(self, count: int) -> RunResult | None:
        found = [r for r in self.runs if r.count == count]
        return found[-1] if found else None

    @property
    def counts(self) -> list[int]:
        return sorted({r.count for r in self.runs})

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture.value,
            "sustainable": self.sustainable,
            "sustainable_is_lower_bound": self.lower_bound,
            "search_end": self.search_end,
            "memory_per_stream_mb": _round(memory_slope_mb(self.runs), 1),
            "runs": [r.to_dict() for r in sorted(self.runs, key=lambda r: r.count)],
        }


@dataclass
class ScenarioResult:
    """One model on one kind of stream, in one layout: both architectures."""

    key: str
    model: str
    stream: str  # e.g. "720p30"
    source: str  # what was read, for people
    layout: Layout
    target_fps: float
    results: dict[Architecture, ArchitectureResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # With a model on files: how many streams the machine could carry if nothing but the
    # model's runs and a plain decode of every frame cost CPU (cores / (rate x model run +
    # source fps x plain decode), both measured in the same bench run); None otherwise.
    model_bound_limit: float | None = None

    def arch(self, architecture: Architecture) -> ArchitectureResult:
        if architecture not in self.results:
            self.results[architecture] = ArchitectureResult(architecture)
        return self.results[architecture]

    def reference_count(self) -> int | None:
        """The count at which the two architectures are compared: the largest both sustained,
        else the largest both measured."""
        fp = self.results.get(Architecture.FRAMEPIPE)
        bl = self.results.get(Architecture.CLASSIC)
        if fp is None or bl is None:
            return None
        both = sorted(set(fp.counts) & set(bl.counts))
        if not both:
            return None
        sustained = [
            n
            for n in both
            if (a := fp.run_at(n)) is not None
            and a.verdict.passed
            and (b := bl.run_at(n)) is not None
            and b.verdict.passed
        ]
        return sustained[-1] if sustained else both[0]

    def ratios(self) -> dict[str, Any]:
        """framepipe / classic for every figure at every count both measured, the sustainable
        count, and memory per additional stream."""
        fp = self.results.get(Architecture.FRAMEPIPE)
        bl = self.results.get(Architecture.CLASSIC)
        if fp is None or bl is None:
            return {}
        per_count = {}
        for n in sorted(set(fp.counts) & set(bl.counts)):
            a, b = fp.run_at(n), bl.run_at(n)
            assert a is not None and b is not None
            fa, fb = a.figures(), b.figures()
            per_count[str(n)] = {k: _round(ratio(fa[k], fb[k]), 3) for k in RATIO_FIGURES}
        ref = self.reference_count()
        return {
            "sustainable": _round(
                ratio(float(fp.sustainable), float(bl.sustainable)) if bl.sustainable else None,
                3,
            ),
            "memory_per_stream": _round(
                ratio(memory_slope_mb(fp.runs), memory_slope_mb(bl.runs)), 3
            ),
            "reference_count": ref,
            "at_reference": per_count.get(str(ref)) if ref is not None else None,
            "by_count": per_count,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "model": self.model,
            "stream": self.stream,
            "source": self.source,
            "layout": self.layout.value,
            "target_fps": self.target_fps,
            "notes": list(self.notes),
            "model_bound_limit": _round(self.model_bound_limit, 2),
            "architectures": {a.value: r.to_dict() for a, r in self.results.items()},
            "ratios_framepipe_over_classic": self.ratios(),
        }


def _round(value: float | None, digits: int) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits) if digits else float(round(value))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100, linear interpolation, as numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
