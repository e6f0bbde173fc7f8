"""``summary.md`` in the output folder: the run's tables in Markdown, plots embedded, ready to
paste into a document (perf/RESULTS.md embeds the published runs this way)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from framepipe.bench._machine import summary_line
from framepipe.bench.results import MB, ArchitectureResult, RunResult, memory_slope_mb

if TYPE_CHECKING:
    from framepipe.bench._runner import BenchReport


def _n(value: float | None, spec: str = ",.0f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def _drops(run: RunResult) -> str:
    return ", ".join(f"{k} {v}" for k, v in run.drops.items()) or "0"


def _sustainable(result: ArchitectureResult) -> str:
    bound = "≥ " if result.lower_bound else ""
    return f"{bound}{result.sustainable}"


def summary_markdown(report: BenchReport, base: Path) -> str:
    """The whole run as Markdown; plot links relative to ``base`` (the file's folder)."""
    machine = report.machine
    lines = [
        f"# framepipe bench, {report.started}",
        "",
        f"Machine: {summary_line(machine)}; {machine.get('os', '')}, Python "
        f"{machine.get('python', '')}. Load average at the start "
        f"{machine.get('load_average')}, at the end {machine.get('load_average_end')}. "
        f"{'Quick run. ' if report.config.quick else ''}"
        f"Window {report.config.duration_s:g} s per count (at least 40 frame intervals of the "
        f"target rate, so that counting cannot fail a stream at its full rate) after "
        f"{report.config.warmup_s:g} s of warm-up; {report.elapsed_s:.0f} s in all.",
        "",
        "## Sustainable streams, and the figures at the largest count both sustain",
        "",
        "| scenario | architecture | sustainable N | at N | fps per stream (min) | CPU per stream "
        "| µs/frame outside decode + model | frame age p50 / p99 ms | memory MB (USS + shm) "
        "| MB per extra stream |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in report.scenarios:
        ref = scenario.reference_count()
        for arch, result in scenario.results.items():
            run = result.run_at(ref) if ref is not None else None
            lines.append(
                f"| {scenario.key} | {arch.value} | {_sustainable(result)} | "
                + (
                    "- | - | - | - | - | - "
                    if run is None
                    else f"{run.count} | {run.min_stream_fps:.1f} of {run.target_fps:g} | "
                    f"{_n(run.cpu_per_stream_pct, '.0f', ' %')} | "
                    f"{_n(run.outside_us_per_frame)} | "
                    f"{_n(run.age_p50_ms, '.1f')} / {_n(run.age_p99_ms, '.1f')} | "
                    f"{_n(run.memory_mb)} "
                )
                + f"| {_n(memory_slope_mb(result.runs), ',.1f')} |"
            )
        ratios = scenario.ratios()
        at = ratios.get("at_reference") or {}
        if ratios:
            lines.append(
                f"| | **framepipe / classic** | {_n(ratios.get('sustainable'), '.2f', 'x')} | | "
                f"{_n(at.get('stream_fps_min'), '.2f', 'x')} | "
                f"{_n(at.get('cpu_per_stream_pct'), '.2f', 'x')} | "
                f"{_n(at.get('outside_us_per_frame'), '.3f', 'x')} | "
                f"{_n(at.get('age_p50_ms'), '.2f', 'x')} / {_n(at.get('age_p99_ms'), '.2f', 'x')} | "
                f"{_n(at.get('memory_mb'), '.2f', 'x')} | "
                f"{_n(ratios.get('memory_per_stream'), '.2f', 'x')} |"
            )
    if report.targets:
        lines += [
            "",
            "## Targets",
            "",
            "| target | framepipe | classic | figure | wanted | met | where |",
            "|---|---:|---:|---:|---|---|---|",
        ]
        for t in report.targets:
            met = "-" if t.met is None else ("yes" if t.met else "**no**")
            lines.append(
                f"| {t.name} | {_n(t.framepipe, ',.1f')} | {_n(t.classic, ',.1f')} | "
                f"{_n(t.value, ',.2f')} | {t.wanted} | {met} | {t.where} |"
            )
    lines += [
        "",
        "## Every run",
        "",
        "| scenario | architecture | N | fps per stream min / mean | total fps | drops "
        "| CPU per stream | µs/frame outside | age p50 / p99 ms | USS MB by kind | shm MB | ok |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---|---:|---|",
    ]
    for scenario in report.scenarios:
        for arch, result in scenario.results.items():
            for run in sorted(result.runs, key=lambda r: r.count):
                if run.error is not None:
                    lines.append(
                        f"| {scenario.key} | {arch.value} | {run.count} | {run.error} "
                        "| | | | | | | | no |"
                    )
                    continue
                uss = (
                    ""
                    if run.memory is None
                    else ", ".join(
                        f"{k} {v / MB:,.0f}" for k, v in sorted(run.memory.uss_by_kind.items())
                    )
                )
                shm = None if run.memory is None else run.memory.shm_bytes / MB
                lines.append(
                    f"| {scenario.key} | {arch.value} | {run.count} | "
                    f"{run.min_stream_fps:.1f} / {run.mean_stream_fps:.1f} of {run.target_fps:g} | "
                    f"{run.total_fps:.1f} | {_drops(run)} | "
                    f"{_n(run.cpu_per_stream_pct, '.0f', ' %')} | {_n(run.outside_us_per_frame)} | "
                    f"{_n(run.age_p50_ms, '.1f')} / {_n(run.age_p99_ms, '.1f')} | {uss} | "
                    f"{_n(shm)} | {'yes' if run.verdict.passed else 'no'} |"
                )
    notes = list(report.notes)
    for scenario in report.scenarios:
        notes += [f"{scenario.key}: {note}" for note in scenario.notes]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    if report.plots:
        lines += ["", "## Plots", ""]
        for plot in report.plots:
            rel = os.path.relpath(plot, base)
            lines.append(f"![{Path(plot).stem}]({rel})")
            lines.append("")
    lines += [
        "",
        "Definitions: `framepipe/bench/results.py` (module docstring). Ratios are framepipe / "
        "classic: below 1 is better for CPU, cost, age and memory; above 1 for fps and stream "
        "counts.",
        "",
    ]
    return "\n".join(lines)
