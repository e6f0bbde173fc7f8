"""A whole bench run: scenarios x architectures x stream counts, within a time budget."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from framepipe.bench._calibrate import model_run_cpu_s, plain_decode_cpu_s
from framepipe.bench._classic_run import run_classic
from framepipe.bench._display import Display
from framepipe.bench._framepipe_run import run_framepipe, supports_realtime_replay
from framepipe.bench._machine import describe_machine, summary_line
from framepipe.bench._media import (
    MediaError,
    MediaLibrary,
    StreamSet,
    is_stream_url,
    probe,
    rtsp_cameras,
)
from framepipe.bench._plan import Cancelled, LiveFigures, Pacing, RunPlan
from framepipe.bench._search import SearchEnd, StreamCountSearch
from framepipe.bench._targets import Target, check_targets
from framepipe.bench.config import (
    PASSTHROUGH,
    RESOLUTIONS,
    Architecture,
    BenchConfig,
    Layout,
    Resolution,
    SourceMode,
)
from framepipe.bench.results import MB, RunResult, ScenarioResult, Verdict

# Time a run needs beyond warm-up + window (start N processes, first results, tear down),
# before any run has been timed.
_RUN_OVERHEAD_S = 8.0
# A file plays from its pipeline's start: it must outlast starting every pipeline (on two busy
# cores, spawning 32 workers took over a minute), the warm-up and the window.
_STARTUP_S_PER_STREAM = 4.0
_MIN_STARTUP_S = 60.0
_MAX_STARTUP_S = 600.0
# Never start a count whose predicted memory passes this share of what the machine has free.
_MEMORY_SHARE = 0.6


@dataclass
class BenchReport:
    config: BenchConfig
    machine: dict[str, Any]
    started: str
    scenarios: list[ScenarioResult] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    calibration: dict[str, float] = field(default_factory=dict)  # CPU s per model run
    plain_decode: dict[str, float] = field(default_factory=dict)  # CPU s per decoded frame
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    cancelled: bool = False

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "benchmark": "e2e",
            "started": self.started,
            "elapsed_s": round(self.elapsed_s, 1),
            "cancelled": self.cancelled,
            "machine": self.machine,
            "config": {
                "quick": c.quick,
                "models": list(c.models),
                "resolutions": list(c.resolutions),
                "sources": [s.value for s in c.sources],
                "video": c.video,
                "layouts": [layout.value for layout in c.layouts],
                "pipelines": list(c.pipelines) if c.pipelines else None,
                "fanout_pipelines": list(c.fanout_pipelines) if c.fanout_pipelines else None,
                "model_pipelines": list(c.model_pipelines) if c.model_pipelines else None,
                "max_pipelines": c.max_pipelines,
                "duration_s": c.duration_s,
                "warmup_s": c.warmup_s,
                "budget_s": c.budget_s,
                "model_fps": c.model_fps,
                "criteria": {
                    "min_rate": c.criteria.min_rate,
                    "max_age_intervals": c.criteria.max_age_intervals,
                },
                "realtime_replay": supports_realtime_replay(),
                "out_dir": str(c.out_dir),
            },
            "model_run_cpu_ms": {k: round(v * 1e3, 3) for k, v in self.calibration.items()},
            "plain_decode_ms": {k: round(v * 1e3, 3) for k, v in self.plain_decode.items()},
            "notes": self.notes,
            "targets": [t.to_dict() for t in self.targets],
            "scenarios": [s.to_dict() for s in self.scenarios],
            "plots": self.plots,
        }


@dataclass
class _Scenario:
    result: ScenarioResult
    model: str
    layout: Layout
    streams: StreamSet
    pacing: Pacing
    resolution_key: str


def _pacing(streams: StreamSet, model: str, model_fps: float) -> tuple[Pacing, float]:
    """How both architectures read the streams, and the rate each stream should deliver."""
    fps = streams.fps
    wants = min(model_fps, fps) if model != PASSTHROUGH else None
    target = wants if wants is not None else fps
    if not streams.is_file:
        return Pacing(max_fps=wants, realtime_replay=None, pace_fps=None, gate_fps=wants), target
    if supports_realtime_replay():
        return Pacing(max_fps=wants, realtime_replay=True, pace_fps=fps, gate_fps=wants), target
    if wants is None:
        return (
            Pacing(
                max_fps=fps,
                realtime_replay=None,
                pace_fps=fps,
                gate_fps=None,
                note="file paced by max_fps = its frame rate (this server has no realtime_replay)",
            ),
            target,
        )
    return (
        Pacing(
            max_fps=wants,
            realtime_replay=None,
            pace_fps=wants,
            gate_fps=None,
            note=(
                f"this server has no realtime_replay: max_fps={wants:g} paces the file, so every "
                f"stream decodes {wants:g} frames/s instead of a camera's {fps:g} "
                "(the classic baseline does the same)"
            ),
        ),
        target,
    )


class BenchRunner:
    def __init__(self, config: BenchConfig, display: Display, stop: threading.Event) -> None:
        self.config = config
        self.display = display
        self.stop = stop
        self.started = time.monotonic()
        self.report = BenchReport(
            config=config,
            machine=describe_machine(),
            started=datetime.now().isoformat(timespec="seconds"),
        )
        self.library = MediaLibrary(config.cache_dir, config.out_dir)
        self.log_dir = config.out_dir / "logs"
        self._run_times: list[float] = []
        self._done_runs = 0

    # -- budget and progress ----------------------------------------------------------------

    def spent(self) -> float:
        return time.monotonic() - self.started

    def run_estimate(self) -> float:
        if self._run_times:
            return statistics.median(self._run_times)
        return self.config.warmup_s + self.config.duration_s + _RUN_OVERHEAD_S

    def _progress(self, remaining_runs: int) -> None:
        self.display.set_progress(
            self._done_runs, self._done_runs + remaining_runs, self.spent(), self.config.budget_s
        )

    # -- streams ----------------------------------------------------------------------------

    def _file_seconds(self) -> float:
        startup = min(
            max(_MIN_STARTUP_S, _STARTUP_S_PER_STREAM * self.config.max_pipelines), _MAX_STARTUP_S
        )
        return startup + self.config.warmup_s + self.config.duration_s

    @contextlib.contextmanager
    def stream_sets(self) -> Iterator[list[tuple[str, StreamSet]]]:
        """The stream sets to bench, as (resolution key, streams); RTSP servers run meanwhile."""
        config = self.config
        count = config.max_pipelines
        with contextlib.ExitStack() as stack:
            sets: list[tuple[str, StreamSet]] = []
            if config.video is not None:
                sets.extend(self._user_streams(config.video, count))
            else:
                for key in config.resolutions:
                    resolution = RESOLUTIONS[key]
                    self.display.note(
                        f"preparing {resolution.name} H.264 streams in {config.cache_dir} …"
                    )
                    path = self.library.generated(resolution, self._file_seconds())
                    for mode in config.sources:
                        sets.append(
                            (key, self._generated_set(stack, mode, path, resolution, count))
                        )
            yield sets

    def _generated_set(
        self,
        stack: contextlib.ExitStack,
        mode: SourceMode,
        path: Path,
        resolution: Resolution,
        count: int,
    ) -> StreamSet:
        if mode is SourceMode.RTSP:
            server = stack.enter_context(rtsp_cameras(path, count, resolution.fps))
            return StreamSet(
                SourceMode.RTSP,
                tuple(server.mount_url(i) for i in range(count)),
                resolution.width,
                resolution.height,
                resolution.fps,
                f"RTSP (GStreamer on 127.0.0.1) serving the generated {resolution.name} H.264 file",
                is_file=False,
            )
        return StreamSet(
            SourceMode.FILE,
            self.library.distinct_files(path, count),
            resolution.width,
            resolution.height,
            resolution.fps,
            f"generated {resolution.name} H.264 file, replayed in real time",
            is_file=True,
        )

    def _user_streams(self, video: str, count: int) -> list[tuple[str, StreamSet]]:
        info = probe(video)
        key = f"{info.width}x{info.height}@{info.fps:g}"
        if is_stream_url(video):
            return [
                (
                    key,
                    StreamSet(
                        SourceMode.USER_STREAM,
                        (video,),
                        info.width,
                        info.height,
                        info.fps,
                        f"your stream {video} (opened once per pipeline)",
                        is_file=False,
                        share_decoders=False,
                    ),
                )
            ]
        path = Path(video)
        if info.frames is not None and info.frames / info.fps < self._file_seconds():
            self.report.notes.append(
                f"{video} lasts {info.frames / info.fps:.0f} s; a run may need up to "
                f"{self._file_seconds():.0f} s of video (a stream that ends fails its run)"
            )
        return [
            (
                key,
                StreamSet(
                    SourceMode.FILE,
                    self.library.distinct_files(path, count),
                    info.width,
                    info.height,
                    info.fps,
                    f"your file {path.name}, replayed in real time",
                    is_file=True,
                ),
            )
        ]

    # -- the run ----------------------------------------------------------------------------

    def scenarios(self, sets: list[tuple[str, StreamSet]]) -> list[_Scenario]:
        found = []
        for key, streams in sets:
            stream_name = RESOLUTIONS[key].name if key in RESOLUTIONS else key
            for model in self.config.models:
                pacing, target = _pacing(streams, model, self.config.model_fps)
                for layout in self.config.layouts:
                    source = streams.mode.value
                    scenario_key = f"{model} {stream_name} {source} {layout.value}"
                    result = ScenarioResult(
                        key=scenario_key,
                        model=model,
                        stream=stream_name,
                        source=streams.label,
                        layout=layout,
                        target_fps=target,
                    )
                    if pacing.note:
                        result.notes.append(pacing.note)
                    if layout is Layout.DISTINCT and not streams.share_decoders:
                        result.notes.append(
                            "one stream URL opened as N cameras: framepipe ran with "
                            "FRAMEPIPE_SHARE_DECODERS=0 (a decoder per pipeline)"
                        )
                    found.append(_Scenario(result, model, layout, streams, pacing, key))
        return found

    def run(self) -> BenchReport:
        try:
            with self.stream_sets() as sets:
                scenarios = self.scenarios(sets)
                self.report.scenarios = [s.result for s in scenarios]
                for index, scenario in enumerate(scenarios):
                    left = len(scenarios) - index
                    budget = (self.config.budget_s - self.spent()) / left
                    self._run_scenario(scenario, budget)
        except Cancelled:
            self.report.cancelled = True
            self.report.notes.append("interrupted: the figures cover the runs that finished")
        except MediaError as exc:
            self.report.notes.append(str(exc))
            raise
        finally:
            self.report.targets = check_targets(self.report.scenarios, self.config.criteria)
            self.report.elapsed_s = self.spent()
            self.report.machine["load_average_end"] = [round(x, 2) for x in psutil.getloadavg()]
        return self.report

    def _calibrate(self, model: str, streams: StreamSet) -> float:
        key = f"{model}@{streams.width}x{streams.height}"
        if model == PASSTHROUGH:
            return 0.0
        if key not in self.report.calibration:
            self.display.note(
                f"measuring the CPU of one {model} run at {streams.width}x{streams.height} …"
            )
            runs = 5 if self.config.quick else 20
            self.report.calibration[key] = model_run_cpu_s(
                model, streams.width, streams.height, runs
            )
        return self.report.calibration[key]

    def _model_bound_limit(self, scenario: _Scenario, model_cpu_s: float) -> float | None:
        """cores / (rate x model run + source fps x plain decode): the streams this machine
        could carry if nothing else cost CPU (files only: a live stream is not decoded here)."""
        streams = scenario.streams
        if scenario.model == PASSTHROUGH or not streams.is_file or model_cpu_s <= 0:
            return None
        pace = scenario.pacing.pace_fps
        base = f"{streams.width}x{streams.height}@{streams.fps:g}"
        frames = 60 if self.config.quick else 300
        # The limit counts the decode as the run pays it (files are read at the camera's pace:
        # paced); the tight loop's figure is kept beside it, for comparison.
        wanted: list[tuple[str, float | None]] = [(base, None)]
        if pace:
            wanted.append((f"{base} paced {pace:g}", pace))
        for key, rate in wanted:
            if key not in self.report.plain_decode:
                how = f"read at {rate:g} fps, as the streams are" if rate else "a tight loop"
                self.display.note(f"measuring the CPU of a plain PyAV decode of {base} ({how}) …")
                self.report.plain_decode[key] = plain_decode_cpu_s(
                    streams.reference(0), frames, pace_fps=rate
                )
        decode_s = self.report.plain_decode[wanted[-1][0]]
        cores = os.cpu_count() or 1
        return cores / (scenario.result.target_fps * model_cpu_s + streams.fps * decode_s)

    def _run_scenario(self, scenario: _Scenario, budget_s: float) -> None:
        config = self.config
        fixed = config.pipelines
        if scenario.model != PASSTHROUGH and config.model_pipelines is not None:
            fixed = config.model_pipelines
        if scenario.layout is Layout.FANOUT and config.fanout_pipelines is not None:
            fixed = config.fanout_pipelines
        searches = {
            arch: StreamCountSearch(config.max_pipelines, fixed) for arch in config.architectures
        }
        model_cpu = self._calibrate(scenario.model, scenario.streams)
        scenario.result.model_bound_limit = self._model_bound_limit(scenario, model_cpu)
        started = time.monotonic()
        while True:
            pending = [(a, s.next_count()) for a, s in searches.items()]
            pending = [(a, n) for a, n in pending if n is not None]
            if not pending:
                break
            for arch, count in pending:
                assert count is not None
                self._progress(sum(s.remaining_upper_bound() for s in searches.values()))
                if time.monotonic() - started + self.run_estimate() > budget_s or (
                    self.spent() + self.run_estimate() > config.budget_s
                ):
                    for search in searches.values():
                        search.stop()
                    scenario.result.notes.append("time budget reached: the search stopped early")
                    break
                result = self._run_one(scenario, self._plan(scenario, arch, count, model_cpu))
                searches[arch].record(count, result.verdict.passed)
                arch_result = scenario.result.arch(arch)
                arch_result.runs.append(result)
                arch_result.sustainable = searches[arch].sustainable
                arch_result.search_end = searches[arch].end.value
                self.display.run_finished(scenario.result, result)
        for arch, search in searches.items():
            arch_result = scenario.result.arch(arch)
            arch_result.sustainable = search.sustainable
            arch_result.search_end = search.end.value
            # memory per additional stream needs two counts: a search that ended at N=1
            # (one stream already failed) gets N=2 measured for its memory
            measured = {r.count for r in arch_result.runs if r.error is None}
            if (
                measured == {1}
                and search.end is SearchEnd.FOUND
                and (self.spent() + self.run_estimate() <= config.budget_s)
            ):
                extra = self._run_one(scenario, self._plan(scenario, arch, 2, model_cpu))
                arch_result.runs.append(extra)
                scenario.result.notes.append(
                    f"{arch.value}: N=2 measured for memory per additional stream"
                )
                if extra.verdict.passed:  # the largest count that passed, whatever the order
                    arch_result.sustainable = 2
                    scenario.result.notes.append(
                        f"{arch.value}: N=1 failed and N=2 passed: the machine's load changed "
                        "between the two"
                    )
                self.display.run_finished(scenario.result, extra)
        self._progress(0)

    def _plan(
        self, scenario: _Scenario, arch: Architecture, count: int, model_cpu: float
    ) -> RunPlan:
        config = self.config
        return RunPlan(
            architecture=arch,
            layout=scenario.layout,
            count=count,
            model=scenario.model,
            streams=scenario.streams,
            pacing=scenario.pacing,
            target_fps=scenario.result.target_fps,
            warmup_s=config.warmup_s,
            # long enough to count the target rate fairly (5 fps in a 1.5 s window read as 4.7)
            duration_s=max(
                config.duration_s,
                config.criteria.shortest_window_s(scenario.result.target_fps),
            ),
            poll_interval_s=config.poll_interval_s,
            criteria=config.criteria,
            log_dir=self.log_dir,
            decoding_buffer_size=config.decoding_buffer_size,
            model_run_cpu_s=model_cpu,
        )

    def _run_one(self, scenario: _Scenario, plan: RunPlan) -> RunResult:
        refused = self._memory_refusal(scenario, plan)
        if refused is not None:
            return refused
        self.display.run_started(scenario.result, plan)
        began = time.monotonic()

        def live(figures: LiveFigures) -> None:
            self.display.live(figures)

        runner = run_framepipe if plan.architecture is Architecture.FRAMEPIPE else run_classic
        try:
            result = runner(plan, live, self.stop)
        except Cancelled:
            raise
        except Exception as exc:  # one broken run is a failed count, not a failed bench
            self.log_dir.mkdir(parents=True, exist_ok=True)
            trace = self.log_dir / f"error-{plan.architecture.value}-{plan.model}-n{plan.count}.txt"
            trace.write_text(traceback.format_exc())
            result = _failed_run(plan, f"{type(exc).__name__}: {exc} (see {trace})")
        self._run_times.append(time.monotonic() - began)
        self._done_runs += 1
        return result

    def _memory_refusal(self, scenario: _Scenario, plan: RunPlan) -> RunResult | None:
        """A count predicted to need more memory than the machine has free is not started
        (the machine is shared; swapping would say nothing about either architecture)."""
        runs = [
            r
            for r in scenario.result.arch(plan.architecture).runs
            if r.memory is not None and r.count
        ]
        if not runs:
            return None
        largest = max(runs, key=lambda r: r.count)
        assert largest.memory is not None
        predicted = largest.memory.total_bytes / largest.count * plan.count
        available = psutil.virtual_memory().available
        if predicted <= _MEMORY_SHARE * available:
            return None
        return _failed_run(
            plan,
            f"not started: predicted {predicted / MB:,.0f} MB, more than "
            f"{100 * _MEMORY_SHARE:.0f}% of the {available / MB:,.0f} MB available",
        )


def _failed_run(plan: RunPlan, error: str) -> RunResult:
    return RunResult(
        architecture=plan.architecture,
        layout=plan.layout,
        count=plan.count,
        target_fps=plan.target_fps,
        streams=(),
        cpu=None,
        memory=None,
        age_method="",
        error=error,
        verdict=Verdict(False, (error,)),
    )


def write_outputs(report: BenchReport, display: Display) -> Path:
    """results.json, summary.md and the plots in the output folder."""
    out = report.config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if report.config.plots:
        from framepipe.bench._plots import PlotsUnavailable, write_plots

        try:
            paths = write_plots(
                report.scenarios,
                out / "plots",
                summary_line(report.machine),
                report.config.criteria,
            )
            report.plots = [str(p) for p in paths]
        except PlotsUnavailable as exc:
            report.notes.append(str(exc))
    from framepipe.bench._markdown import summary_markdown

    (out / "summary.md").write_text(summary_markdown(report, out))
    path = out / "results.json"
    path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return path
