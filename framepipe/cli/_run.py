"""``framepipe run VIDEO``: one local pipeline (no manager), its progress, then a summary.

    framepipe run video.mp4 --model centerface --output annotated.mp4
    framepipe run rtsp://cam/1 --model centerface --output cam.mp4     # until Ctrl-C
    framepipe run video.mp4 --model centerface --json | jq .detections

The run is a :class:`~framepipe.Pipeline` with ``model=NAME``. While it runs, a progress bar
(on stderr) shows the frames read, the results per second and, for a file, the time left; a
stream gets a live counter. At the end a summary (on stdout) gives the frames decoded and
processed, the results, their rate, the frames dropped by reason, the detections per class and
the latency percentiles; ``--json`` prints the same as JSON (and no progress unless stderr is a
terminal). ``--output`` records the frames as they pass, with the detections drawn, to an H.264
MP4 (:mod:`framepipe.cli._recorder`) — files and live streams alike. Errors are one line with the
cause and a hint (:mod:`framepipe.cli._explain`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from framepipe.cli._explain import CommandLineError
from framepipe.cli._interrupt import CtrlC

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from framepipe.cli._recorder import AnnotatedRecorder, RecordingStatistics
    from framepipe.core.histogram import HistogramSnapshot
    from framepipe.core.pipeline import Pipeline, PipelineReport, PipelineState

__all__ = ["Percentiles", "RunSummary", "run_local"]

_POLL_S = 0.1
_STATUS_EVERY_S = 0.5
_SAMPLES_KEPT = 100_000  # latencies kept for the percentiles (a uniform sample beyond that)
_VIDEO_HINT = "give a video file, a stream URL (rtsp://, http://) or a camera index"
_PLAYS_HINT = (
    "check that the file plays (e.g. with ffprobe) or that the stream is reachable from here; "
    "-v shows the decoder's log"
)


@dataclass(frozen=True)
class Percentiles:
    """Latency percentiles in milliseconds (None: no sample)."""

    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None = None


@dataclass(frozen=True)
class RunSummary:
    """What ``framepipe run`` reports at the end (the table, or ``--json``)."""

    video: str  # as the pipeline reports it (credentials masked)
    model: str
    state: str  # the pipeline's when the run stopped (FINISHED: every frame of the video)
    stopped_by: str  # "end" (the pipeline ended), "frames" (--frames reached), "interrupt"
    elapsed_s: float
    frames_decoded: int
    frames_processed: int
    results: int
    fps: float
    frames_dropped: dict[str, int]  # never reached processing, by reason
    frames_failed: dict[str, int]  # processing failed, by reason
    detections: dict[str, int]  # per class
    frame_age_ms: Percentiles  # capture → result, every result (sampled beyond 100k)
    inference_ms: Percentiles  # processing start → result, from the pipeline's histogram
    output: RecordingStatistics | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Tally:
    """What ``on_prediction`` counts, on the pipeline's thread; read by the main thread."""

    def __init__(self, limit: int | None) -> None:
        self.lock = threading.Lock()
        self.results = 0
        self.position = 0  # the furthest frame id seen: how far into the video the run is
        self.detections: Counter[str] = Counter()
        self.ages_s: list[float] = []
        self._seen_ages = 0
        self._random = random.Random(0)
        self.limit = limit
        self.enough = threading.Event()

    def __call__(self, outputs: Sequence[Any], metadata: Sequence[Any]) -> None:
        now_ns = time.time_ns()
        with self.lock:
            for output, meta in zip(outputs, metadata, strict=False):
                if meta is None:
                    continue
                self.results += 1
                self.position = max(self.position, int(meta.frame_id))
                self._age((now_ns - meta.capture_ns) / 1e9)
                self.detections.update(_classes(output))
            if self.limit is not None and self.results >= self.limit:
                self.enough.set()

    def _age(self, seconds: float) -> None:
        self._seen_ages += 1
        if len(self.ages_s) < _SAMPLES_KEPT:
            self.ages_s.append(seconds)
            return
        slot = self._random.randrange(self._seen_ages)  # reservoir sampling
        if slot < _SAMPLES_KEPT:
            self.ages_s[slot] = seconds


def _classes(output: Any) -> list[str]:
    """The classes one output detected (a classifier's top class counts once)."""
    if not isinstance(output, dict):
        return []
    top = output.get("top")
    if isinstance(top, str):
        return [top]
    predictions = output.get("predictions")
    if not isinstance(predictions, list):
        return []
    return [str(p["class"]) for p in predictions if isinstance(p, dict) and "class" in p]


def _percentiles_ms(values: Sequence[float]) -> Percentiles:
    if not values:
        return Percentiles(None, None, None, None)
    import numpy as np

    ms = np.asarray(values, dtype=np.float64) * 1000.0
    p50, p90, p99 = (float(v) for v in np.percentile(ms, (50, 90, 99)))
    return Percentiles(p50, p90, p99, float(ms.max()))


def _histogram_ms(snapshot: HistogramSnapshot | None) -> Percentiles:
    if snapshot is None or snapshot.count == 0:
        return Percentiles(None, None, None)
    p50, p90, p99 = ((snapshot.quantile(q) or 0.0) * 1000.0 for q in (0.5, 0.9, 0.99))
    return Percentiles(p50, p90, p99)


def _check_model(model: str) -> None:
    """An unknown model is refused before anything starts."""
    from framepipe.core.processing import ModelSpec
    from framepipe.core.processing.processor import check_spec
    from framepipe.core.processing.registry import PASSTHROUGH, ModelRegistry, ProcessingSettings
    from framepipe.errors import FramepipeError

    if model == PASSTHROUGH:
        return
    try:
        registry = ModelRegistry.from_settings(ProcessingSettings.from_env())
        check_spec(ModelSpec(model=model), registry)
    except FramepipeError as exc:
        raise CommandLineError(
            exc.message,
            "--model takes a registered model name (or passthrough); "
            "FRAMEPIPE_MODELS_DIR adds *.onnx models",
        ) from exc


def run_local(
    video: str,
    *,
    model: str,
    max_fps: float | None,
    frames: int | None,
    output: str | None = None,
    as_json: bool = False,
) -> int:
    from framepipe.core.pipeline import PipelineState

    if frames is not None and frames < 1:
        raise CommandLineError(
            f"--frames must be at least 1, got {frames}", "drop it to run to the end"
        )
    # From here until everything is torn down, Ctrl-C is a request _follow polls: raised as an
    # exception it could land inside a lock the pipeline's threads need (framepipe.cli._interrupt).
    tally = _Tally(frames)
    with CtrlC(final=True) as ctrl_c:  # a CLI command: after a Ctrl-C, the process ends
        pipeline, stopped_by, state, recording, started = _start_and_follow(
            video, model, max_fps, tally, output, as_json, ctrl_c
        )
    elapsed = time.monotonic() - started
    report = pipeline.status()
    if state is PipelineState.FAILED:
        raise CommandLineError(
            f"the video could not be processed: {report.failure or 'it failed'}", _PLAYS_HINT
        )
    summary = _summary(report, tally, model, state, stopped_by, elapsed, recording)
    if as_json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        Console().print(render_summary(summary))
    if recording is not None and recording.error is not None:
        raise CommandLineError(
            f"the recording to {recording.path} failed: {recording.error}",
            "check the --output path and the free disk space",
        )
    return 0


def _start_and_follow(
    video: str,
    model: str,
    max_fps: float | None,
    tally: _Tally,
    output: str | None,
    as_json: bool,
    ctrl_c: CtrlC,
) -> tuple[Pipeline, str, PipelineState, RecordingStatistics | None, float]:
    """Start the pipeline (and the recorder), follow it to its end, tear both down."""
    from framepipe.core.pipeline import Pipeline
    from framepipe.errors import FramepipeError

    _check_model(model)
    reference: str | int = int(video) if video.isdigit() else video
    recorder = _recorder(output) if output is not None else None
    try:
        try:
            pipeline = Pipeline(
                reference,
                model=model,
                on_prediction=tally,
                on_frame=recorder.offer if recorder is not None else None,
                max_fps=max_fps,
                hold_results=False,  # results are counted by on_prediction, not read
                results_buffer_size=1,
            )
        except FramepipeError as exc:
            raise CommandLineError(exc.message, "fix the option the message names") from exc
        missing = pipeline.requests[0].not_found
        if missing is not None:
            raise CommandLineError(missing, _VIDEO_HINT)
        try:
            pipeline.start()
        except BaseException as exc:
            pipeline.terminate()
            if isinstance(exc, FramepipeError):
                raise CommandLineError(
                    f"the video could not be processed: {exc.message}", _PLAYS_HINT
                ) from exc
            raise
        started = time.monotonic()
        progress_console = Console(stderr=True)
        show_progress = not as_json or progress_console.is_terminal
        stopped_by, state = _follow(
            pipeline, tally, progress_console if show_progress else None, ctrl_c
        )
    finally:
        recording = recorder.close() if recorder is not None else None
    return pipeline, stopped_by, state, recording, started


def _recorder(output: str) -> AnnotatedRecorder:
    from framepipe.cli._recorder import AnnotatedRecorder

    if Path(output).suffix.lower() not in (".mp4", ".mov", ".mkv"):
        raise CommandLineError(
            f"--output {output!r} is not a video file name", "name it e.g. annotated.mp4"
        )
    folder = Path(output).absolute().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise CommandLineError(
            f"cannot write --output {output!r}: {folder} is not a writable directory",
            "choose a path in a directory that exists and is writable",
        )
    return AnnotatedRecorder(output)


def _follow(
    pipeline: Pipeline, tally: _Tally, console: Console | None, ctrl_c: CtrlC
) -> tuple[str, PipelineState]:
    """Wait for the end (the pipeline's, --frames', or Ctrl-C's), showing progress; then stop
    the pipeline. Returns what stopped it, and the pipeline's state then."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    from framepipe.errors import FramepipeError

    class Eta(ProgressColumn):
        """The time left, for a video of known length (a stream has none)."""

        remaining = TimeRemainingColumn()

        def render(self, task: Task) -> Text:
            if task.total is None:
                return Text("")
            return Text.assemble("ETA ", self.remaining.render(task))

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames · {task.fields[results]} results · {task.fields[fps]:.1f} fps"),
        TimeElapsedColumn(),
        Eta(),
        console=console,
        disable=console is None,
    )
    stopped_by = "end"
    try:
        with progress:
            task = progress.add_task(_label(pipeline), total=None, results=0, fps=0.0)
            started = time.monotonic()
            next_status = 0.0
            while True:
                if ctrl_c.requested:
                    stopped_by = "interrupt"
                    break
                if tally.enough.wait(_POLL_S):
                    stopped_by = "frames"
                    break
                finished = pipeline.finished
                now = time.monotonic()
                if now >= next_status:
                    next_status = now + _STATUS_EVERY_S
                    _set_total(progress, task, pipeline.status())
                _update(progress, task, tally, now - started)
                if finished:
                    break
            _update(progress, task, tally, time.monotonic() - started, final=True)
    finally:
        state = pipeline.state
        pipeline.terminate()
        with contextlib.suppress(FramepipeError):  # a failure is reported from the status
            pipeline.join(10.0)
    return stopped_by, state


def _label(pipeline: Pipeline) -> str:
    """The video, short (a file's name; a stream's URL without credentials)."""
    reference = pipeline.requests[0].reference
    if reference is None:
        return "video"
    return Path(reference.masked).name if reference.is_file else reference.masked


def _set_total(progress: Progress, task: TaskID, report: PipelineReport) -> None:
    source = report.sources[0] if report.sources else None
    if source is None or source.properties is None or not source.properties.is_file:
        return
    if source.properties.total_frames:
        progress.update(task, total=source.properties.total_frames)


def _update(
    progress: Progress, task: TaskID, tally: _Tally, elapsed: float, final: bool = False
) -> None:
    with tally.lock:
        results, position = tally.results, tally.position
    total = progress.tasks[task].total
    completed = position if total is not None else results
    if final and total is not None:
        completed = max(completed, position)
    progress.update(
        task,
        completed=completed,
        results=results,
        fps=results / elapsed if elapsed > 0 else 0.0,
        refresh=final,
    )


def _summary(
    report: PipelineReport,
    tally: _Tally,
    model: str,
    state: PipelineState,
    stopped_by: str,
    elapsed: float,
    recording: RecordingStatistics | None,
) -> RunSummary:
    source = report.sources[0] if report.sources else None
    processed = sum(s.completed_frames for s in report.completion.sources)
    histograms = report.histograms[0] if report.histograms else None
    with tally.lock:
        results = tally.results
        detections = dict(tally.detections.most_common())
        ages = list(tally.ages_s)
    return RunSummary(
        video=source.reference if source is not None else "",
        model=model,
        state=state.value,
        stopped_by=stopped_by,
        elapsed_s=elapsed,
        frames_decoded=source.frames_decoded if source is not None else 0,
        frames_processed=processed,
        results=results,
        fps=results / elapsed if elapsed > 0 else 0.0,
        frames_dropped={k: v for k, v in (source.frames_dropped if source else {}).items() if v},
        frames_failed={k: v for k, v in report.frames_failed.items() if v},
        detections=detections,
        frame_age_ms=_percentiles_ms(ages),
        inference_ms=_histogram_ms(histograms.inference_latency_s if histograms else None),
        output=recording,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def render_summary(summary: RunSummary) -> Any:
    """The summary as rich tables (frames and results; latency percentiles)."""
    from rich.console import Group
    from rich.table import Table

    stopped = {
        "end": "ended",
        "frames": "stopped: --frames reached",
        "interrupt": "stopped: Ctrl-C",
    }
    table = Table(title=f"framepipe run: {summary.video}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", summary.model)
    table.add_row(
        "state", f"{summary.state} ({stopped.get(summary.stopped_by, summary.stopped_by)})"
    )
    table.add_row("frames decoded", str(summary.frames_decoded))
    table.add_row("frames processed", str(summary.frames_processed))
    table.add_row("results", str(summary.results))
    table.add_row("elapsed", f"{summary.elapsed_s:.1f} s")
    table.add_row("results per second", f"{summary.fps:.1f}")
    table.add_row("drops by reason", _counts(summary.frames_dropped))
    if summary.frames_failed:
        table.add_row("failed by reason", _counts(summary.frames_failed))
    table.add_row("detections per class", _counts(summary.detections))
    if summary.output is not None:
        out = summary.output
        table.add_row(
            "output",
            f"{out.path}: {out.frames_written} frames written, {out.frames_dropped} dropped"
            + (f" ({out.error})" if out.error else ""),
        )
    latency = Table(title="latency (ms)", title_justify="left")
    latency.add_column("")
    for name in ("p50", "p90", "p99", "max"):
        latency.add_column(name, justify="right")
    age, inference = summary.frame_age_ms, summary.inference_ms
    latency.add_row("capture → result", _ms(age.p50), _ms(age.p90), _ms(age.p99), _ms(age.max))
    latency.add_row(
        "inference (buckets)", _ms(inference.p50), _ms(inference.p90), _ms(inference.p99), "-"
    )
    return Group(table, latency)
