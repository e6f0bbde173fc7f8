"""A finished run read back from its ``results.json`` (``framepipe bench --report DIR``
re-renders its tables, ``summary.md`` and plots, e.g. after the plots' style changed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framepipe.bench._targets import Target
from framepipe.bench.config import Architecture, BenchConfig, Criteria, Layout, SourceMode
from framepipe.bench.results import (
    MB,
    ArchitectureResult,
    CpuFigures,
    MemoryFigures,
    RunResult,
    ScenarioResult,
    StreamFigures,
    Verdict,
)

if TYPE_CHECKING:
    from framepipe.bench._runner import BenchReport


def _run(data: dict[str, Any]) -> RunResult:
    cpu = data.get("cpu")
    memory = data.get("memory")
    verdict = data.get("verdict") or {}
    return RunResult(
        architecture=Architecture(data["architecture"]),
        layout=Layout(data["layout"]),
        count=int(data["count"]),
        target_fps=float(data["target_fps"]),
        streams=tuple(StreamFigures(**s) for s in data.get("streams") or []),
        cpu=None
        if cpu is None
        else CpuFigures(
            window_s=cpu["window_s"],
            total_s=cpu["total_s"],
            by_kind_s=dict(cpu["by_kind_s"]),
            decode_s=cpu["decode_s"],
            model_s=cpu["model_s"],
            model_method=cpu["model_method"],
        ),
        memory=None
        if memory is None
        else MemoryFigures(
            uss_by_kind={k: round(v * MB) for k, v in memory["uss_mb_by_kind"].items()},
            processes_by_kind=dict(memory["processes_by_kind"]),
            shm_bytes=round(memory["shm_mb"] * MB),
        ),
        age_method=data.get("age_method", ""),
        error=data.get("error"),
        notes=tuple(data.get("notes") or ()),
        verdict=Verdict(bool(verdict.get("passed")), tuple(verdict.get("reasons") or ())),
    )


def load_report(path: Path) -> BenchReport:
    from framepipe.bench._runner import BenchReport

    data = json.loads(path.read_text())
    c = data["config"]
    criteria = c.get("criteria") or {}
    config = BenchConfig(
        out_dir=Path(c.get("out_dir") or path.parent),
        cache_dir=path.parent,
        models=tuple(c["models"]),
        resolutions=tuple(c["resolutions"]),
        sources=tuple(SourceMode(s) for s in c["sources"]),
        video=c.get("video"),
        layouts=tuple(Layout(v) for v in c["layouts"]),
        pipelines=tuple(c["pipelines"]) if c.get("pipelines") else None,
        fanout_pipelines=tuple(c["fanout_pipelines"]) if c.get("fanout_pipelines") else None,
        model_pipelines=tuple(c["model_pipelines"]) if c.get("model_pipelines") else None,
        max_pipelines=int(c["max_pipelines"]),
        duration_s=float(c["duration_s"]),
        warmup_s=float(c["warmup_s"]),
        budget_s=float(c["budget_s"]),
        model_fps=float(c["model_fps"]),
        criteria=Criteria(**criteria) if criteria else Criteria(),
        quick=bool(c.get("quick")),
    )
    report = BenchReport(config=config, machine=data["machine"], started=data["started"])
    report.elapsed_s = float(data.get("elapsed_s") or 0.0)
    report.cancelled = bool(data.get("cancelled"))
    report.notes = list(data.get("notes") or [])
    report.calibration = {k: v / 1e3 for k, v in (data.get("model_run_cpu_ms") or {}).items()}
    report.plain_decode = {k: v / 1e3 for k, v in (data.get("plain_decode_ms") or {}).items()}
    report.targets = [
        Target(
            t["name"], t["framepipe"], t["classic"], t["value"], t["wanted"], t["met"], t["where"]
        )
        for t in data.get("targets") or []
    ]
    for s in data["scenarios"]:
        scenario = ScenarioResult(
            key=s["key"],
            model=s["model"],
            stream=s["stream"],
            source=s["source"],
            layout=Layout(s["layout"]),
            target_fps=float(s["target_fps"]),
            notes=list(s.get("notes") or []),
            model_bound_limit=s.get("model_bound_limit"),
        )
        for name, a in s["architectures"].items():
            runs = [_run(r) for r in a["runs"]]
            passed = [r.count for r in runs if r.verdict.passed]
            result = ArchitectureResult(
                Architecture(name),
                runs=runs,
                # the largest count that passed (a run measured after the search included)
                sustainable=max([int(a["sustainable"]), *passed]),
                search_end=a["search_end"],
            )
            scenario.results[result.architecture] = result
        report.scenarios.append(scenario)
    return report
