"""``framepipe bench`` end to end: run, write the outputs, print the summary (and the JSON line)."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.markup import escape

from framepipe.bench._display import Display
from framepipe.bench._machine import summary_line
from framepipe.bench._media import MediaError
from framepipe.bench._runner import BenchReport, BenchRunner, write_outputs
from framepipe.bench.config import BenchConfig

_DEFINITIONS = (
    "fps: results received per second in the window; CPU/stream: all processes of the "
    "architecture, % of one core per stream; µs/frame outside: (all CPU - decode - model run) / "
    "results; age: capture -> result ready (framepipe: status report e2e; classic: collector); "
    "memory: USS of every process + its shared memory. Definitions: framepipe/bench/results.py."
)


def rerender(results: Path, out_dir: Path | None, *, json_line: bool = False) -> int:
    """Tables, summary.md and plots again from a finished run's results.json."""
    from dataclasses import replace

    from framepipe.bench._load import load_report
    from framepipe.bench._targets import check_targets

    console = Console() if sys.stdout.isatty() else Console(width=180)
    report = load_report(results)
    report.config = replace(report.config, out_dir=out_dir or results.parent)
    report.targets = check_targets(report.scenarios, report.config.criteria)
    display = Display(console)
    path = write_outputs(report, display)
    display.summary(report.scenarios, report.targets, _footer(report, path))
    if json_line:
        _print_json(report)
    return 0


def _footer(report: BenchReport, results_path: Path) -> list[str]:
    footer = [f"[dim]{_DEFINITIONS}[/]"]
    # notes and paths are plain text: `[bench]` in a hint is not markup
    footer += [f"[yellow]note[/]: {escape(note)}" for note in report.notes]
    for scenario in report.scenarios:
        footer += [f"[yellow]{escape(scenario.key)}[/]: {escape(note)}" for note in scenario.notes]
    footer.append(f"results: {escape(str(results_path))}")
    if report.plots:
        footer.append(f"plots: {escape(', '.join(report.plots))}")
    cached = cache_line(report.config.cache_dir)
    if cached is not None:
        footer.append(cached)
    return footer


def cache_line(cache_dir: Path) -> str | None:
    """Where the generated clips are kept, how much they take, how to remove them."""
    clips = sorted(cache_dir.glob("*.mp4")) if cache_dir.is_dir() else []
    if not clips:
        return None
    size_mb = sum(clip.stat().st_size for clip in clips) / 1e6
    return (
        f"cached clips: {cache_dir} ({len(clips)} files, {size_mb:.0f} MB, kept for the next "
        f"run; `rm -r {cache_dir}` removes them, they are made again when needed)"
    )


def _print_json(report: BenchReport) -> None:
    sys.stdout.flush()
    sys.stdout.write(json.dumps(report.to_dict(), separators=(",", ":")) + "\n")
    sys.stdout.flush()


def run_bench(config: BenchConfig, *, json_line: bool = False) -> int:
    console = Console() if sys.stdout.isatty() else Console(width=180)
    stop = threading.Event()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        display = Display(console)
        runner = BenchRunner(config, display, stop)
        console.print(
            f"[bold]framepipe bench[/]{' (quick)' if config.quick else ''}: "
            f"{summary_line(runner.report.machine)}; output in {config.out_dir}"
        )
        try:
            with display:
                report = runner.run()
        except MediaError as exc:
            console.print(f"[red]framepipe bench: {exc}[/]")
            return 2
        results_path = write_outputs(report, display)
        display.summary(report.scenarios, report.targets, _footer(report, results_path))
    finally:
        signal.signal(signal.SIGINT, previous)
    if json_line:
        _print_json(report)
    return 130 if report.cancelled else 0
