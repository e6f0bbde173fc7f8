"""What people read while a bench runs and after it: a live table per stream count with a
progress bar over the whole run, then summary tables (rich)."""

from __future__ import annotations

import threading
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from framepipe.bench._plan import LiveFigures, RunPlan
from framepipe.bench._targets import Target
from framepipe.bench.config import Architecture
from framepipe.bench.results import RunResult, ScenarioResult

_ARCH_STYLE = {Architecture.FRAMEPIPE: "cyan", Architecture.CLASSIC: "magenta"}


def _fmt(value: float | None, spec: str = ".0f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def _drops(drops: dict[str, int]) -> str:
    if not drops:
        return "0"
    return ", ".join(f"{reason} {n}" for reason, n in drops.items())


def _run_columns(table: Table) -> None:
    for name, justify in (
        ("scenario", "left"),
        ("arch", "left"),
        ("N", "right"),
        ("fps/stream min/mean", "right"),
        ("total fps", "right"),
        ("drops", "left"),
        ("CPU/stream", "right"),
        ("µs/frame outside", "right"),
        ("age p50/p99 ms", "right"),
        ("memory MB", "right"),
        ("ok", "center"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]


class Display:
    """Live view of a bench run. On a terminal, a table that grows by one row per measured
    stream count, the run in progress, and a progress bar; elsewhere, one line per run."""

    def __init__(self, console: Console | None = None, refresh_per_second: float = 2.0) -> None:
        self.console = console or Console()
        self._rows: list[tuple[Any, ...]] = []
        self._current: RunPlan | None = None
        self._current_key = ""
        self._live_figures = LiveFigures()
        self._lock = threading.Lock()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} runs"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[budget]}"),
            console=self.console,
        )
        self._task = self.progress.add_task("bench", total=1, budget="")
        self._live: Live | None = None
        self._refresh = refresh_per_second

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> Display:
        if self.console.is_terminal:
            self._live = Live(
                self._render(),
                console=self.console,
                refresh_per_second=self._refresh,
                get_renderable=self._render,
                transient=True,  # the summary prints every run once it is over
            )
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def note(self, text: str) -> None:
        self.console.print(text, markup=False)

    # -- progress -----------------------------------------------------------------------------

    def set_progress(self, done: int, total: int, spent_s: float, budget_s: float) -> None:
        self.progress.update(
            self._task,
            completed=done,
            total=max(total, done, 1),
            budget=f"budget {spent_s:.0f}/{budget_s:.0f} s",
        )

    def run_started(self, scenario: ScenarioResult, plan: RunPlan) -> None:
        with self._lock:
            self._current = plan
            self._current_key = scenario.key
            self._live_figures = LiveFigures()
        self.progress.update(self._task, description=f"{scenario.key}: {plan.label}")

    def live(self, figures: LiveFigures) -> None:
        with self._lock:
            self._live_figures = figures

    def run_finished(self, scenario: ScenarioResult, result: RunResult) -> None:
        row = self._row(scenario.key, result)
        with self._lock:
            self._rows.append(row)
            self._current = None
        if self._live is None:
            self.console.print(
                " | ".join(
                    Text.from_markup(str(c)).plain if isinstance(c, str) else str(c) for c in row
                )
            )

    # -- rendering ----------------------------------------------------------------------------

    def _row(self, key: str, r: RunResult) -> tuple[Any, ...]:
        style = _ARCH_STYLE.get(r.architecture, "")
        age = f"{_fmt(r.age_p50_ms, '.1f')}/{_fmt(r.age_p99_ms, '.1f')}"
        ok = "[green]✓[/]" if r.verdict.passed else "[red]✗[/]"
        if r.error is not None:
            return (key, f"[{style}]{r.architecture.value}[/]", str(r.count), f"[red]{r.error}[/]",
                    "", "", "", "", "", "", ok)  # fmt: skip
        return (
            key,
            f"[{style}]{r.architecture.value}[/]",
            str(r.count),
            f"{r.min_stream_fps:.1f}/{r.mean_stream_fps:.1f} of {r.target_fps:g}",
            f"{r.total_fps:.1f}",
            _drops(r.drops),
            _fmt(r.cpu_per_stream_pct, ".0f", "%"),
            _fmt(r.outside_us_per_frame, ",.0f"),
            age,
            _fmt(r.memory_mb, ",.0f"),
            ok,
        )

    def _render(self) -> Group:
        table = Table(
            title="framepipe bench: one row per architecture and stream count", expand=False
        )
        _run_columns(table)
        with self._lock:
            for row in self._rows[-30:]:
                table.add_row(*row)
            plan, figures = self._current, self._live_figures
            if plan is not None:
                fps = figures.streams_fps
                now = f"{min(fps):.1f}/{sum(fps) / len(fps):.1f}" if fps else "…"
                table.add_row(
                    self._current_key,
                    f"[{_ARCH_STYLE.get(plan.architecture, '')}]{plan.architecture.value}[/]",
                    str(plan.count),
                    now,
                    f"{sum(fps):.1f}" if fps else "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    f"[yellow]{figures.phase}[/]",
                )
        return Group(table, self.progress)

    # -- the summary --------------------------------------------------------------------------

    def summary(
        self, scenarios: list[ScenarioResult], targets: list[Target], footer: list[str]
    ) -> None:
        console = self.console
        if self._rows:
            table = Table(title="every run")
            _run_columns(table)
            for row in self._rows:
                table.add_row(*row)
            console.print(table)
        table = Table(title="summary: sustainable streams and figures at the compared count")
        for name, justify in (
            ("scenario", "left"),
            ("arch", "left"),
            ("sustainable N", "right"),
            ("at N", "right"),
            ("fps/stream", "right"),
            ("CPU/stream", "right"),
            ("µs/frame outside", "right"),
            ("age p99 ms", "right"),
            ("memory MB", "right"),
            ("MB/extra stream", "right"),
        ):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        from framepipe.bench.results import memory_slope_mb

        for scenario in scenarios:
            ref = scenario.reference_count()
            for arch, result in scenario.results.items():
                run = result.run_at(ref) if ref is not None else None
                if run is None and result.runs:
                    run = result.run_at(result.sustainable) or result.runs[-1]
                bound = ">=" if result.lower_bound else ""
                end = "" if result.search_end in ("found", "listed") else f" ({result.search_end})"
                style = _ARCH_STYLE.get(arch, "")
                table.add_row(
                    scenario.key,
                    f"[{style}]{arch.value}[/]",
                    f"{bound}{result.sustainable}{end}",
                    "-" if run is None else str(run.count),
                    "-" if run is None else f"{run.min_stream_fps:.1f} of {run.target_fps:g}",
                    "-" if run is None else _fmt(run.cpu_per_stream_pct, ".0f", "%"),
                    "-" if run is None else _fmt(run.outside_us_per_frame, ",.0f"),
                    "-" if run is None else _fmt(run.age_p99_ms, ".1f"),
                    "-" if run is None else _fmt(run.memory_mb, ",.0f"),
                    _fmt(memory_slope_mb(result.runs), ",.1f"),
                )
            ratios = scenario.ratios()
            at = ratios.get("at_reference") or {}
            if ratios:
                table.add_row(
                    "",
                    "[bold]framepipe/classic[/]",
                    _fmt(ratios.get("sustainable"), ".2f", "x"),
                    "",
                    _fmt(at.get("stream_fps_min"), ".2f", "x"),
                    _fmt(at.get("cpu_per_stream_pct"), ".2f", "x"),
                    _fmt(at.get("outside_us_per_frame"), ".3f", "x"),
                    _fmt(at.get("age_p99_ms"), ".2f", "x"),
                    _fmt(at.get("memory_mb"), ".2f", "x"),
                    _fmt(ratios.get("memory_per_stream"), ".2f", "x"),
                    end_section=True,
                )
        console.print(table)
        if targets:
            t = Table(title="targets")
            for name in ("target", "framepipe", "classic", "figure", "wanted", "met", "where"):
                t.add_column(name)
            for target in targets:
                met = (
                    "-" if target.met is None else ("[green]yes[/]" if target.met else "[red]no[/]")
                )
                t.add_row(
                    target.name,
                    _fmt(target.framepipe, ",.1f"),
                    _fmt(target.classic, ",.1f"),
                    _fmt(target.value, ",.2f"),
                    target.wanted,
                    met,
                    target.where,
                )
            console.print(t)
        for line in footer:
            console.print(line)
