"""Every benchmark in perf/ still runs: each ``perf/bench_*.py --smoke --json``, as a user runs it.

No timing thresholds (a smoke run on a shared machine says nothing about speed): each must exit
0 and print one JSON object last, whose figures are finite, and whose key figures (the ones its
targets are read from, for both sides of its comparison) are there and above zero.
``perf/bench_e2e.py`` (``framepipe bench``) runs in tests/e2e/test_bench.py, with its own checks.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PERF = ROOT / "perf"

# The figures each benchmark's verdict rests on: both sides of its comparison. A dotted path
# reads nested objects.
KEY_FIGURES: dict[str, tuple[str, ...]] = {
    "bench_attack.py": (
        "default.baseline.probes",
        "default.attack.probes",
        "default.attack_bodies_sent",
        "default.peak_rss_mb",
    ),
    "bench_cluster.py": (
        "front.status_p50_ms",
        "local.status_p50_ms",
        "front.consume_p50_ms",
        "local.consume_p50_ms",
        "failover_s",
    ),
    "bench_control.py": (
        "manager_accept_ms",
        "bare_python_accept_ms",
        "idle_worker_uss_mb",
        "init_to_first_result_ms_warm",
        "status_rtt_p50_ms",
        "status_requests",
        "server_cpu_us_per_status",
        "server_cpu_us_per_empty_consume",
    ),
    "bench_decode.py": (
        "fps_plain",
        "fps_framepipe",
        "fps_plain_pyav",
        "cpu_per_frame_ms_plain_pyav",
        "cpu_per_frame_ms_framepipe_pyav",
        "cpu_ratio_vs_cv2",
        "cpu_ratio_vs_pyav_planes",
        "fps_total_4x720p",
        "fps_total_4x720p_plain",
        "drop_oldest_age_p50_ms",
    ),
    "bench_engine.py": ("fps", "baseline_fps", "cpu_ms_per_frame", "baseline_cpu_ms_per_frame"),
    "bench_handoff.py": (
        "fps_shm",
        "fps_queue",
        "cpu_per_frame_us_shm",
        "cpu_per_frame_us_queue",
        "latency_p50_us",
        "latency_frames",
    ),
    "bench_inference.py": ("fps", "baseline_fps", "inference_ms", "outside_inference_ms", "faces"),
    "bench_inference_service.py": (
        "loop_fps",
        "loop_cpu_ms_per_frame",
        "model_ceiling_fps",
        "model_ceiling_fps_before",
        "model_ceiling_fps_after",
        "model_cpu_ms_per_run",
        "plain_decode_ms",
        "fps_n1",
        "cpu_ms_per_frame_n1",
        "fps_total_n4",
        "cpu_ms_per_frame_n4",
        "uss_total_mb_n4",
        "shm_mb_n4",
        "fps_total_n4_same_file",
        "latency_p50_ms",
        "latency_p99_ms",
        "latency_samples",
    ),
    "bench_process_memory.py": (
        "by_config.pyav_threads_1.uss_running_mb",
        "by_config.pyav_threads_default.uss_running_mb",
        "by_config.pyav_threads_1.cpu_ms_per_frame",
        "by_config.opencv_threads_1.uss_running_mb",
    ),
    "bench_preprocess.py": ("baseline_ms", "framepipe_ms", "speedup", "baseline_720p_ms"),
    "bench_tcp_front.py": (
        "baseline_requests_per_s",
        "framepipe_asyncio_requests_per_s",
        "framepipe_asyncio_status_rtt_p50_ms",
        "consume_780kB_framepipe_us",
    ),
    "bench_webrtc.py": (
        "webrtc_latency_p50_ms",
        "webrtc_fps",
        "model.frames_returned",
        "baseline_passthrough.latency_p50_ms",
        "baseline_passthrough.frames_returned",
    ),
}
COVERED_ELSEWHERE = {"bench_e2e.py": "tests/e2e/test_bench.py"}


def figure(report: dict[str, Any], dotted: str) -> Any:
    value: Any = report
    for key in dotted.split("."):
        assert isinstance(value, dict) and key in value, f"no {dotted!r} in the report"
        value = value[key]
    return value


def numbers(value: Any, path: str = "") -> list[tuple[str, float]]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [(path, float(value))]
    if isinstance(value, dict):
        return [n for key, item in value.items() for n in numbers(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [n for i, item in enumerate(value) for n in numbers(item, f"{path}[{i}]")]
    return []


def test_every_benchmark_is_smoke_tested() -> None:
    benchmarks = {path.name for path in PERF.glob("bench_*.py")}
    assert benchmarks == set(KEY_FIGURES) | set(COVERED_ELSEWHERE)
    for name, test in COVERED_ELSEWHERE.items():
        assert f"perf/{name}" in (ROOT / test).read_text()


@pytest.mark.parametrize("name", sorted(KEY_FIGURES))
def test_benchmark_runs_and_reports_figures(name: str) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(PERF / name), "--smoke", "--json"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    shown = f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, shown
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines, shown
    report = json.loads(lines[-1])
    assert isinstance(report, dict), shown
    values = numbers(report)
    assert values, shown
    not_finite = [path for path, value in values if not math.isfinite(value)]
    assert not not_finite, f"not finite: {not_finite}"
    for dotted in KEY_FIGURES[name]:
        value = figure(report, dotted)
        assert isinstance(value, int | float) and not isinstance(value, bool), (dotted, value)
        assert value > 0, f"{name}: {dotted} = {value}\n{shown}"
    print(f"{name}: {len(values)} figures in {time.monotonic() - started:.1f} s")
