"""framepipe's side of a measurement: the real server (``framepipe serve`` as a subprocess on a
free port), N pipelines started over TCP with the client, results drained as an application
would drain them, the status reports, and the server's process tree measured from outside.

Each stream count gets a fresh server, so that no run inherits processes, segments or memory
from the one before. Pipelines are muted as soon as they start and resumed together once all
of them run, so the pipelines' latency windows hold no frame from the start-up (spawning N
workers loads the machine for seconds); then a warm-up, then the measured window.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from framepipe._serve_process import ServeProcess
from framepipe.bench._plan import Cancelled, LiveFigures, Reporter, RunPlan, sleep_unless
from framepipe.bench._procs import Kind, TreeSampler, classify_framepipe
from framepipe.bench.results import (
    CpuFigures,
    MemoryFigures,
    RunResult,
    StreamFigures,
    Verdict,
    judge,
    percentile,
)
from framepipe.client import FramepipeError, NotFoundError, SyncStreamManagerClient
from framepipe.protocol.payloads import (
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    InitialisePipelinePayload,
    MemorySinkConfiguration,
    ModelConfiguration,
    VideoConfiguration,
)

AGE_FROM_STATUS = (
    "status report e2e (capture -> result in the sink), per source, last 256 results within "
    "10 s of the latest (the end of the window)"
)
AGE_FROM_CLIENT = "capture (frame_timestamp) -> received by the bench's client (includes polling)"
_MAX_ENTRIES = 256


def supports_realtime_replay() -> bool:
    """Whether this framepipe has the ``VideoConfiguration.realtime_replay`` extension."""
    return "realtime_replay" in VideoConfiguration.model_fields


@dataclass
class _Drained:
    """What the bench's client got from one pipeline."""

    total: int = 0
    window: int = 0
    client_ages_ms: list[float] = field(default_factory=list)
    ended: str | None = None


class _Drainer:
    """Drains every pipeline's sink with ``consume_result`` + ``max_entries`` (one request per
    pipeline every ``interval_s``), like an application reading results."""

    def __init__(
        self,
        client: SyncStreamManagerClient,
        ids: list[str],
        interval_s: float,
        client_ages: bool,
    ) -> None:
        self.client = client
        self.client_ages = client_ages
        self.ids = ids
        self.interval_s = interval_s
        self.drained = {i: _Drained() for i in ids}
        self.lock = threading.Lock()
        self.window_open = False
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-drainer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.drain_all()
            spent = time.monotonic() - started
            self._stop.wait(max(0.0, self.interval_s - spent))

    def drain_all(self) -> None:
        for pipeline_id in self.ids:
            if self._stop.is_set():
                return
            self._drain(pipeline_id)

    def _drain(self, pipeline_id: str) -> None:
        record = self.drained[pipeline_id]
        if record.ended is not None:
            return
        try:
            response = self.client.consume_pipeline_result(pipeline_id, max_entries=_MAX_ENTRIES)
        except NotFoundError:
            record.ended = (
                "ENDED: the pipeline ended (its source ended or failed; a file must outlast "
                "start-up, warm-up and window)"
            )
            return
        except FramepipeError as exc:
            self.error = f"consume_result: {exc}"
            return
        now = time.time()
        with self.lock:
            for entry in response.entries:
                record.total += 1
                if not self.window_open:
                    continue
                record.window += 1
                if not self.client_ages:
                    continue
                for meta in entry.frames_metadata:
                    if meta is not None:
                        record.client_ages_ms.append(1000.0 * (now - _epoch(meta.frame_timestamp)))

    def open_window(self) -> None:
        self.drain_all()  # what arrived before the window is not counted
        with self.lock:
            for record in self.drained.values():
                record.window = 0
                record.client_ages_ms.clear()
            self.window_open = True

    def close_window(self) -> None:
        self.drain_all()
        with self.lock:
            self.window_open = False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def _epoch(moment: datetime) -> float:
    return moment.timestamp()  # naive: local time, as the server wrote it on this machine


def _payload(plan: RunPlan, reference: str) -> InitialisePipelinePayload:
    video: dict[str, Any] = {
        "video_reference": reference,
        "max_fps": plan.pacing.max_fps,
        "source_buffer_filling_strategy": BufferFillingStrategy.DROP_OLDEST,
        "source_buffer_consumption_strategy": BufferConsumptionStrategy.EAGER,
    }
    if plan.pacing.realtime_replay is not None:
        video["realtime_replay"] = plan.pacing.realtime_replay
    extra: dict[str, Any] = {}
    if plan.decoding_buffer_size is not None:
        extra["decoding_buffer_size"] = plan.decoding_buffer_size
    return InitialisePipelinePayload(
        video_configuration=VideoConfiguration(**video),
        processing_configuration=ModelConfiguration(model=plan.model),
        sink_configuration=MemorySinkConfiguration(),
        **extra,
    )


def run_framepipe(
    plan: RunPlan, report: Reporter, stop: threading.Event | None = None
) -> RunResult:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "STREAM_API_PRELOADED_PROCESSES": "0",
        "FRAMEPIPE_SHARE_DECODERS": "1" if plan.streams.share_decoders else "0",
    }
    live = LiveFigures(phase="starting server")
    report(live)
    log = plan.log_dir / f"server-{plan.layout.value}-{plan.model}-n{plan.count}.log"
    server = ServeProcess(env=env, log_path=log, keep_lines=200)  # the log file has it all
    try:
        result = _measure(plan, server, live, report, stop)
    except BaseException:
        server.kill()
        raise
    code = server.stop()
    if code != 0 and result.error is None:
        failed = replace(result, error=f"framepipe serve exited with status {code}; see {log}")
        result = replace(failed, verdict=judge(failed, plan.criteria))
    return result


def _failed(plan: RunPlan, error: str) -> RunResult:
    return RunResult(
        architecture=plan.architecture,
        layout=plan.layout,
        count=plan.count,
        target_fps=plan.target_fps,
        streams=(),
        cpu=None,
        memory=None,
        age_method=AGE_FROM_STATUS,
        error=error,
        verdict=Verdict(False, (error,)),
    )


def _measure(
    plan: RunPlan,
    server: ServeProcess,
    live: LiveFigures,
    report: Reporter,
    stop: threading.Event | None,
) -> RunResult:
    client = SyncStreamManagerClient(
        host=server.host, port=server.port, operations_timeout=120.0, connect_timeout=10.0
    )
    sampler = TreeSampler(server.pid, classify_framepipe)
    references = plan.references
    live.phase = f"starting {plan.count} pipelines"
    report(live)

    def start(reference: str) -> str:
        started = client.initialise_pipeline(_payload(plan, reference))
        pipeline_id = started.context.pipeline_id
        assert pipeline_id is not None
        client.mute_pipeline(pipeline_id)
        return pipeline_id

    ids: list[str] = []
    with ThreadPoolExecutor(max_workers=min(plan.count, 8)) as pool:
        futures = [pool.submit(start, ref) for ref in references]
        errors = []
        for future in futures:
            try:
                ids.append(future.result())
            except FramepipeError as exc:
                errors.append(f"init refused: {exc.error_type.value}: {exc.message}")
    if errors:
        _terminate(client, ids)
        return _failed(plan, errors[0])
    with ThreadPoolExecutor(max_workers=min(plan.count, 8)) as pool:
        list(pool.map(client.resume_pipeline, ids))
    # A file's frame_timestamp is its decode start + pts, not when the frame was decoded:
    # the client's own view of frame age is kept for live sources only.
    drainer = _Drainer(client, ids, plan.poll_interval_s, client_ages=not plan.streams.is_file)
    drainer.start()
    try:
        live.phase = "waiting for first results"
        report(live)
        deadline = time.monotonic() + 30.0 + 2.0 * plan.count
        while any(drainer.drained[i].total == 0 for i in ids):
            ended = [d.ended for d in drainer.drained.values() if d.ended]
            if ended:
                return _failed(plan, ended[0])
            if time.monotonic() > deadline:
                waiting = sum(1 for i in ids if drainer.drained[i].total == 0)
                return _failed(plan, f"{waiting} of {plan.count} pipelines gave no result in time")
            sleep_unless(stop, 0.1)
        live.phase = "warm-up"
        report(live)
        sleep_unless(stop, plan.warmup_s)
        before = _statuses(client, ids)
        sampler.begin()
        drainer.open_window()
        opened = time.monotonic()
        live.phase = "measuring"
        while (elapsed := time.monotonic() - opened) < plan.duration_s:
            sleep_unless(stop, min(1.0, plan.duration_s - elapsed))
            with drainer.lock:
                span = max(time.monotonic() - opened, 1e-3)
                live.streams_fps = [drainer.drained[i].window / span for i in ids]
            report(live)
        drainer.close_window()
        window_s = time.monotonic() - opened
        cpu = sampler.end()
        memory = sampler.memory()
        after = _statuses(client, ids)
    finally:
        drainer.stop()
    # no terminate per pipeline: the server's clean shutdown (SIGTERM) ends them all

    streams = []
    age_method = AGE_FROM_STATUS
    for index, pipeline_id in enumerate(ids):
        drained = drainer.drained[pipeline_id]
        status_after = after.get(pipeline_id, {})
        p50, p99 = _status_ages(status_after)
        if p99 is None:  # a server without the latency figures: the client's own view
            age_method = AGE_FROM_CLIENT
            p50 = percentile(drained.client_ages_ms, 50)
            p99 = percentile(drained.client_ages_ms, 99)
        streams.append(
            StreamFigures(
                index=index,
                delivered=drained.window,
                fps=drained.window / window_s,
                age_p50_ms=p50,
                age_p99_ms=p99,
                drops=_drops(before.get(pipeline_id, {}), status_after),
                state=drained.ended or _source_state(status_after),
                client_age_p50_ms=percentile(drained.client_ages_ms, 50),
                client_age_p99_ms=percentile(drained.client_ages_ms, 99),
            )
        )
    delivered = sum(s.delivered for s in streams)
    decode_s = cpu.by_kind.get(Kind.DECODER, 0.0)
    model_s = plan.model_run_cpu_s * delivered if plan.has_model else 0.0
    notes = [plan.pacing.note] if plan.pacing.note else []
    notes.append(f"client polled each pipeline every {plan.poll_interval_s:g} s")
    if drainer.error:
        notes.append(drainer.error)
    result = RunResult(
        architecture=plan.architecture,
        layout=plan.layout,
        count=plan.count,
        target_fps=plan.target_fps,
        streams=tuple(streams),
        cpu=CpuFigures(
            window_s=cpu.window_s,
            total_s=cpu.seconds,
            by_kind_s=cpu.by_kind,
            decode_s=decode_s,
            model_s=model_s,
            model_method="calibrated: CPU of one ONNX Runtime run in this session x results"
            if plan.has_model
            else "none (passthrough)",
        ),
        memory=MemoryFigures(memory.uss_by_kind, memory.processes, memory.shm_bytes),
        age_method=age_method,
        notes=tuple(notes),
    )
    return replace(result, verdict=judge(result, plan.criteria))


def _statuses(client: SyncStreamManagerClient, ids: list[str]) -> dict[str, dict[str, Any]]:
    def one(pipeline_id: str) -> tuple[str, dict[str, Any]]:
        try:
            return pipeline_id, client.get_status(pipeline_id).report
        except FramepipeError:
            return pipeline_id, {}

    with ThreadPoolExecutor(max_workers=min(len(ids), 8) or 1) as pool:
        return dict(pool.map(one, ids))


def _terminate(client: SyncStreamManagerClient, ids: list[str]) -> None:
    def one(pipeline_id: str) -> None:
        with contextlib.suppress(FramepipeError):
            client.terminate_pipeline(pipeline_id)

    if ids:
        with ThreadPoolExecutor(max_workers=min(len(ids), 8)) as pool:
            list(pool.map(one, ids))


def _framepipe_section(report: dict[str, Any]) -> dict[str, Any]:
    section = report.get("framepipe")
    return section if isinstance(section, dict) else {}


def _status_ages(report: dict[str, Any]) -> tuple[float | None, float | None]:
    figures = _framepipe_section(report).get("latency_ms") or []
    p50s = [f.get("e2e_p50") for f in figures if f.get("e2e_p50") is not None]
    p99s = [f.get("e2e_p99") for f in figures if f.get("e2e_p99") is not None]
    if not p99s:
        return None, None
    return (max(p50s) if p50s else None), max(p99s)


def _dropped(report: dict[str, Any]) -> dict[str, int]:
    total: dict[str, int] = {}
    for source in _framepipe_section(report).get("sources") or []:
        for reason, n in (source.get("frames_dropped") or {}).items():
            total[reason] = total.get(reason, 0) + int(n)
    return total


def _drops(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    start, end = _dropped(before), _dropped(after)
    return {k: v - start.get(k, 0) for k, v in sorted(end.items()) if v - start.get(k, 0) > 0}


def _source_state(report: dict[str, Any]) -> str:
    if not report:
        return "NO STATUS"
    states = [s.get("state") for s in report.get("sources_metadata") or [] if isinstance(s, dict)]
    bad = [s for s in states if s != "RUNNING"]
    return str(bad[0]) if bad else "RUNNING"


__all__ = ["Cancelled", "run_framepipe", "supports_realtime_replay"]
