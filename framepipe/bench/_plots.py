"""PNG plots of a bench run (matplotlib, the ``bench`` extra): per scenario, total fps, CPU per
stream, frame age p99 and memory against the stream count, framepipe and the classic
baseline on the same axes, the sustainable counts marked."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from framepipe._installation import missing_extra
from framepipe.bench.config import Architecture, Criteria
from framepipe.bench.results import MB, RunResult, ScenarioResult, age_limit_ms

_COLOURS = {Architecture.FRAMEPIPE: "tab:blue", Architecture.CLASSIC: "tab:red"}
_LABELS = {
    Architecture.FRAMEPIPE: "framepipe",
    Architecture.CLASSIC: "classic (threads + mp.Queue)",
}


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed (``pip install 'framepipe[bench]'``)."""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def write_plots(
    scenarios: list[ScenarioResult], out_dir: Path, machine: str, criteria: Criteria
) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
    except ImportError as exc:
        raise PlotsUnavailable(missing_extra("bench") or str(exc)) from exc

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for scenario in scenarios:
        if not any(r.runs for r in scenario.results.values()):
            continue
        fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
        panels: list[tuple[Any, str, str, Callable[[RunResult], float | None]]] = [
            (axes[0][0], "total delivered fps", "fps", lambda r: r.total_fps),
            (axes[0][1], "CPU per stream", "% of one core", lambda r: r.cpu_per_stream_pct),
            (axes[1][0], "frame age p99", "ms (log scale)", lambda r: r.age_p99_ms),
            (axes[1][1], "memory: USS + shared memory", "MB", lambda r: r.memory_mb),
        ]
        # Every measured count is a tick, and the axes start at 0 streams: one point (a quick
        # run) reads as well as a curve, and no panel zooms a small difference into a big one.
        counts = sorted({r.count for res in scenario.results.values() for r in res.runs})
        right = (counts[-1] if counts else 1) + 1
        for axis, title, unit, figure in panels:
            for arch, result in scenario.results.items():
                runs = sorted((r for r in result.runs if r.error is None), key=lambda r: r.count)
                points = [(r.count, figure(r)) for r in runs]
                xs = [n for n, v in points if v is not None]
                ys = [v for _, v in points if v is not None]
                if not xs:
                    continue
                colour = _COLOURS.get(arch, "black")
                axis.plot(xs, ys, "o-", color=colour, label=_LABELS.get(arch, arch.value))
                failed = [(r.count, figure(r)) for r in runs if not r.verdict.passed]
                fx = [n for n, v in failed if v is not None]
                fy = [v for _, v in failed if v is not None]
                if fx:
                    axis.plot(fx, fy, "x", color=colour, markersize=10, mew=2)
                if result.sustainable:
                    axis.axvline(result.sustainable, color=colour, linestyle=":", alpha=0.6)
                if title.startswith("memory"):
                    uss = [(r.count, r.memory.uss_bytes / MB) for r in runs if r.memory is not None]
                    if uss and any(r.memory is not None and r.memory.shm_bytes for r in runs):
                        axis.plot(
                            [n for n, _ in uss],
                            [m for _, m in uss],
                            "--",
                            color=colour,
                            alpha=0.6,
                            label=f"{arch.value}: USS only",
                        )
            if title.startswith("total"):
                # what every stream at its full rate would deliver
                counts = sorted({r.count for res in scenario.results.values() for r in res.runs})
                if counts:
                    axis.plot(
                        [0, right],
                        [0, right * scenario.target_fps],
                        "--",
                        color="grey",
                        alpha=0.5,
                        label="N x target fps",
                    )
            if title.startswith("frame age"):
                axis.axhline(
                    age_limit_ms(scenario.target_fps, criteria),
                    color="grey",
                    linestyle="--",
                    alpha=0.6,
                    label="limit: 2 frame intervals",
                )
                axis.set_yscale("log")
                axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
                axis.yaxis.set_major_formatter(ScalarFormatter())
                axis.yaxis.set_minor_formatter(NullFormatter())
            else:
                axis.set_ylim(0, axis.get_ylim()[1] * 1.1)  # from 0, with room above the top point
            axis.set_xlim(0, right)
            axis.set_xticks(counts if len(counts) <= 12 else counts[:: len(counts) // 12 + 1])
            axis.set_title(title)
            axis.set_xlabel("streams (N pipelines)")
            axis.set_ylabel(unit)
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=8)
        fig.suptitle(
            f"{scenario.model} on {scenario.stream} ({scenario.layout.value}, {scenario.source}); "
            f"target {scenario.target_fps:g} fps per stream\n{machine}  —  "
            "dotted line: sustainable count, x: a count that failed",
            fontsize=10,
        )
        path = out_dir / f"{slug(scenario.key)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
