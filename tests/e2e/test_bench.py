"""`framepipe bench --quick`, through its wrapper perf/bench_e2e.py, as a user runs it: the
harness works end to end, every figure is there for both architectures, and the plots are
written. No timing thresholds: the figures of a quick run on a shared machine say nothing; that
they exist and add up does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

RUN_FIGURES = (
    "total_fps",
    "stream_fps_min",
    "stream_fps_mean",
    "cpu_per_stream_pct",
    "outside_us_per_frame",
    "decode_us_per_frame",
    "age_p50_ms",
    "age_p99_ms",
    "memory_mb",
    "uss_mb",
    "shm_mb",
)


def test_quick_bench_measures_both_architectures_and_writes_plots(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "perf/bench_e2e.py",  # the wrapper of `framepipe bench` (so it cannot rot either)
            "--quick",
            "--json",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == json.loads((out / "results.json").read_text())
    assert report["benchmark"] == "e2e" and report["config"]["quick"] is True
    assert report["machine"]["logical_cores"] >= 1

    scenarios = {s["key"]: s for s in report["scenarios"]}
    assert {s["model"] for s in scenarios.values()} == {"passthrough", "centerface"}
    for scenario in scenarios.values():
        for arch in ("framepipe", "classic"):
            measured = scenario["architectures"][arch]
            assert measured["runs"], f"{scenario['key']}: {arch} measured nothing"
            for run in measured["runs"]:
                assert run["error"] is None, run["error"]
                for figure in RUN_FIGURES:
                    assert run[figure] is not None, (scenario["key"], arch, run["count"], figure)
                assert isinstance(run["drops"], dict)  # may be empty
                assert run["delivered"] > 0
                assert len(run["streams"]) == run["count"]
                assert run["cpu"]["total_s"] > 0 and run["cpu"]["window_s"] > 0
                assert run["memory"]["uss_mb_by_kind"]
            assert isinstance(measured["sustainable"], int)
            for run in measured["runs"]:  # long enough to count the target rate fairly
                assert run["cpu"]["window_s"] >= 40 / scenario["target_fps"] - 0.05, run["cpu"]
        ratios = scenario["ratios_framepipe_over_classic"]
        assert ratios["at_reference"] is not None
        assert ratios["at_reference"]["total_fps"] is not None

    passthrough = scenarios["passthrough 720p30 file distinct"]
    framepipe_runs = passthrough["architectures"]["framepipe"]["runs"]
    assert [r["count"] for r in framepipe_runs] == [1, 2]
    # framepipe's frames live in shared memory, the classic's go through pipes
    assert all(r["shm_mb"] > 0 for r in framepipe_runs)
    assert passthrough["architectures"]["framepipe"]["memory_per_stream_mb"] is not None
    assert passthrough["architectures"]["classic"]["memory_per_stream_mb"] is not None
    assert {t["name"] for t in report["targets"]} >= {
        "passthrough: CPU per frame outside decode (µs)",
        "passthrough: sustainable streams",
    }
    # the model's scenario is judged against the limit its own floors give, measured in this run
    detector = scenarios["centerface 720p30 file distinct"]
    decode = report["plain_decode_ms"]
    assert decode["1280x720@30"] > 0 and decode["1280x720@30 paced 30"] > 0, decode
    model_ms = report["model_run_cpu_ms"]["centerface@1280x720"]
    cores = report["machine"]["logical_cores"]
    limit = cores / (5 * model_ms + 30 * decode["1280x720@30 paced 30"]) * 1000
    assert detector["model_bound_limit"] == pytest.approx(limit, abs=0.01)
    [bound] = [t for t in report["targets"] if "model-bound limit" in t["name"]]
    sustained = detector["architectures"]["framepipe"]["sustainable"]
    assert bound["value"] == pytest.approx(sustained / detector["model_bound_limit"], abs=0.01)

    cache = tmp_path / "cache"
    assert f"cached clips: {cache} (" in " ".join(result.stdout.split()), result.stdout[-2000:]
    assert f"`rm -r {cache}` removes them" in " ".join(result.stdout.split())

    assert len(report["plots"]) == len(scenarios)
    for plot in report["plots"]:
        data = Path(plot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    summary = (out / "summary.md").read_text()
    assert all(key in summary for key in scenarios)
    assert all(Path(plot).name in summary for plot in report["plots"])

    # the same tables and plots again from results.json, nothing measured
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "framepipe.cli",
            "bench",
            "--report",
            str(out),
            "--json",
            "--out",
            str(tmp_path / "again"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    rendered = json.loads(again.stdout.strip().splitlines()[-1])
    # targets are checked again from the figures as results.json rounds them
    assert [(t["name"], t["met"]) for t in rendered["targets"]] == [
        (t["name"], t["met"]) for t in report["targets"]
    ]
    for new, old in zip(rendered["targets"], report["targets"], strict=True):
        assert (new["value"] is None) == (old["value"] is None)
        if old["value"] is not None:
            assert new["value"] == pytest.approx(old["value"], rel=0.02, abs=0.5)
    assert [s["key"] for s in rendered["scenarios"]] == list(scenarios)
    assert len(list((tmp_path / "again" / "plots").glob("*.png"))) == len(scenarios)
