"""The classic baseline's side of a measurement: its app process (:mod:`._classic`) started as
a subprocess, driven over stdin/stdout, and its process tree measured from outside exactly as
framepipe's server is."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import replace
from typing import IO

from framepipe.bench._plan import LiveFigures, Reporter, RunPlan, sleep_unless
from framepipe.bench._procs import (
    DECODE,
    MODEL,
    TreeSampler,
    classify_classic,
    group_classic_thread,
)
from framepipe.bench.results import (
    CpuFigures,
    MemoryFigures,
    RunResult,
    StreamFigures,
    Verdict,
    judge,
)
from framepipe.core.processes import kill_tree

AGE_CLASSIC = "capture -> result received by the collector, every result of the window"


class _App:
    """The classic app process and its line protocol."""

    def __init__(self, plan: RunPlan) -> None:
        config = {
            "references": plan.references,
            "model": plan.model,
            "pace_fps": plan.pacing.pace_fps,
            "gate_fps": plan.pacing.gate_fps,
            "ready_timeout_s": 60.0 + 5.0 * plan.count,
        }
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # RTSP over TCP with bounded waits, as a careful user sets it (framepipe does the same)
        env.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp|timeout;5000000")
        plan.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = plan.log_dir / f"classic-{plan.layout.value}-{plan.model}-n{plan.count}.log"
        self._log: IO[str] = open(self.log_path, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "framepipe.bench._classic", json.dumps(config)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="bench-classic-out", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"the classic app did not answer {prefix!r} in {timeout:.0f} s")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(
                    f"the classic app exited (status {self.proc.wait()}); see {self.log_path}"
                )
            if line.startswith(prefix):
                return line[len(prefix) :].strip()

    def ask(self, command: str, prefix: str, timeout: float = 30.0) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.expect(prefix, timeout)

    def close(self) -> int:
        code: int
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.write("stop\n")
                    self.proc.stdin.close()
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            code = -9
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return code

    def kill(self) -> None:
        kill_tree(self.proc)


def _failed(plan: RunPlan, error: str) -> RunResult:
    return RunResult(
        architecture=plan.architecture,
        layout=plan.layout,
        count=plan.count,
        target_fps=plan.target_fps,
        streams=(),
        cpu=None,
        memory=None,
        age_method=AGE_CLASSIC,
        error=error,
        verdict=Verdict(False, (error,)),
    )


def run_classic(plan: RunPlan, report: Reporter, stop: threading.Event | None = None) -> RunResult:
    live = LiveFigures(phase=f"starting {plan.count} inference processes")
    report(live)
    app = _App(plan)
    try:
        result = _measure(plan, app, live, report, stop)
    except RuntimeError as exc:
        app.kill()
        app.close()
        return _failed(plan, str(exc))
    except BaseException:
        app.kill()
        app.close()
        raise
    code = app.close()
    if code != 0 and result.error is None:
        failed = replace(result, error=f"the classic app exited with {code}; see {app.log_path}")
        result = replace(failed, verdict=judge(failed, plan.criteria))
    return result


def _measure(
    plan: RunPlan, app: _App, live: LiveFigures, report: Reporter, stop: threading.Event | None
) -> RunResult:
    sampler = TreeSampler(app.proc.pid, classify_classic, group_classic_thread)
    app.expect("READY", 90.0 + 5.0 * plan.count)
    live.phase = "waiting for first results"
    report(live)
    deadline = time.monotonic() + 30.0 + 2.0 * plan.count
    while True:
        stats = json.loads(app.ask("poll", "STATS"))
        bad = [
            f"stream {i}: {state} {error}".strip()
            for i, (state, error) in enumerate(zip(stats["states"], stats["errors"], strict=True))
            if state in ("ERROR", "ENDED")
        ]
        if bad:
            return _failed(plan, bad[0])
        if all(n > 0 for n in stats["results"]):
            break
        if time.monotonic() > deadline:
            waiting = sum(1 for n in stats["results"] if n == 0)
            return _failed(plan, f"{waiting} of {plan.count} streams gave no result in time")
        sleep_unless(stop, 0.1)
    live.phase = "warm-up"
    report(live)
    sleep_unless(stop, plan.warmup_s)
    sampler.begin()
    app.ask("open", "OK")
    opened = time.monotonic()
    live.phase = "measuring"
    report(live)
    while (elapsed := time.monotonic() - opened) < plan.duration_s:
        sleep_unless(stop, min(1.0, plan.duration_s - elapsed))
    window = json.loads(app.ask("close", "WINDOW"))
    cpu = sampler.end()
    memory = sampler.memory()
    window_s = float(window["window_s"])
    streams = []
    run_cpu_s = queue_cpu_s = 0.0
    for index, figures in enumerate(window["streams"]):
        run_cpu_s += figures["run_cpu_s"]
        queue_cpu_s += figures["queue_cpu_s"]
        streams.append(
            StreamFigures(
                index=index,
                delivered=int(figures["delivered"]),
                fps=figures["delivered"] / window_s,
                age_p50_ms=figures["age_p50_ms"],
                age_p99_ms=figures["age_p99_ms"],
                drops={k: int(v) for k, v in figures["drops"].items()},
                state=figures["state"],
            )
        )
    live.streams_fps = [s.fps for s in streams]
    report(live)
    decode_s = max(0.0, cpu.by_group.get(DECODE, 0.0) - queue_cpu_s)
    model_s = cpu.by_group.get(MODEL, 0.0) + run_cpu_s
    notes = [plan.pacing.note] if plan.pacing.note else []
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
            model_method="measured: ONNX Runtime's threads + the calling thread's CPU in run()"
            if plan.has_model
            else "none (passthrough)",
        ),
        memory=MemoryFigures(memory.uss_by_kind, memory.processes, memory.shm_bytes),
        age_method=AGE_CLASSIC,
        notes=tuple(notes),
    )
    return replace(result, verdict=judge(result, plan.criteria))


__all__ = ["run_classic"]
