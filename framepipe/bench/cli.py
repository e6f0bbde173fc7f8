"""framepipe bench: how many of my cameras fit on this box, with this model, and how does that
compare with the usual way?

Only argparse is imported at module level: ``framepipe`` builds every sub-command's parser at
start, and ``framepipe serve`` must stay quick to bind.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from framepipe.bench.config import (
    DEFAULT_MODEL,
    PASSTHROUGH,
    BenchConfig,
    Layout,
    SourceMode,
    quick_config,
    smoke_config,
)

_EPILOG = """\
Each stream count N starts N pipelines through a real `framepipe serve` (on a free local port,
driven by the client) and, in the same run, N streams through the classic architecture (a decode
thread per stream, frames pickled through a multiprocessing.Queue to an inference process with
its own ONNX Runtime session). N grows 1, 2, 4, 8, ... and is then bisected to the sustainable
count: the largest N at which every stream keeps >= 95% of its rate with frame age p99 under two
frame intervals. Figures and how each is measured: framepipe/bench/results.py, perf/RESULTS.md.

examples:
  framepipe bench --quick --json            a < 1 minute check that everything works
  framepipe bench                            720p30 files, passthrough and centerface at 5 fps
  framepipe bench --model my-yolo --video rtsp://camera/stream --model-fps 10
  framepipe bench --pipelines 1,2,4 --resolution 1080p --source file,rtsp
"""


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected stream counts like 1,2,4, got {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"stream counts must be positive, got {text!r}")
    return counts


def _choices(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)}")
        return values

    return parse


def default_out_dir(now: datetime | None = None) -> Path:
    now = now or datetime.now()
    host = socket.gethostname().split(".")[0] or "machine"
    return Path("framepipe-bench") / f"{host}-{now:%Y%m%d-%H%M%S}"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "framepipe" / "bench"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0] if __doc__ else None
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--quick",
        action="store_true",
        help="about a minute: passthrough at N=1,2 and the model at N=2, 1.5 s windows",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="seconds: passthrough, one stream, does it still run?"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line"
    )
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="NAME",
        help="registered model to bench besides passthrough (repeatable; default centerface;"
        " 'passthrough' alone benches only the frame path)",
    )
    parser.add_argument(
        "--no-passthrough",
        action="store_true",
        help="bench only the model(s), not the frame path alone",
    )
    parser.add_argument(
        "--model-fps", type=float, default=5.0, help="max_fps per stream with a model (default 5)"
    )
    parser.add_argument(
        "--video", default=None, metavar="FILE_OR_URL", help="your own video file or stream URL"
    )
    parser.add_argument(
        "--resolution",
        type=_choices(("720p", "1080p")),
        default=("720p",),
        help="generated streams: 720p, 1080p or 720p,1080p (default 720p)",
    )
    parser.add_argument(
        "--source",
        type=_choices(("file", "rtsp")),
        default=("file",),
        help="file (replayed in real time), rtsp (GStreamer's server on 127.0.0.1), or both",
    )
    parser.add_argument(
        "--layout",
        type=_choices(("distinct", "fanout")),
        default=("distinct", "fanout"),
        help="distinct (N streams) and/or fanout (N pipelines on one stream); default both",
    )
    parser.add_argument(
        "--pipelines",
        type=_counts,
        default=None,
        help="fixed stream counts, e.g. 1,2,4 (no search)",
    )
    parser.add_argument(
        "--fanout-pipelines", type=_counts, default=None, help="fixed counts for the fan-out runs"
    )
    parser.add_argument("--max-pipelines", type=int, default=64, help="largest N the search tries")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per N")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before each window")
    parser.add_argument(
        "--budget", type=float, default=2400.0, help="seconds for the whole run (default 2400)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="framepipe only")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--decoding-buffer-size",
        type=int,
        default=None,
        help="decoding_buffer_size of every pipeline (default: the wire default)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default ./framepipe-bench/<machine>-<date>/)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="DIR",
        help="measure nothing: tables, summary.md and plots again from DIR/results.json",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where generated videos are kept (default ~/.cache/framepipe/bench)",
    )


def config_from_arguments(args: argparse.Namespace) -> BenchConfig:
    models = list(dict.fromkeys(args.model or [DEFAULT_MODEL]))
    if models != [PASSTHROUGH]:
        models = [PASSTHROUGH, *(m for m in models if m != PASSTHROUGH)]
    if args.no_passthrough and models != [PASSTHROUGH]:
        models = [m for m in models if m != PASSTHROUGH]
    config = BenchConfig(
        out_dir=args.out or default_out_dir(),
        cache_dir=args.cache_dir or default_cache_dir(),
        models=tuple(models),
        resolutions=tuple(args.resolution),
        sources=tuple(SourceMode(s) for s in args.source),
        video=args.video,
        layouts=tuple(Layout(v) for v in args.layout),
        pipelines=args.pipelines,
        fanout_pipelines=args.fanout_pipelines,
        max_pipelines=max(1, args.max_pipelines),
        duration_s=args.duration,
        warmup_s=args.warmup,
        budget_s=args.budget,
        model_fps=args.model_fps,
        baseline=not args.no_baseline,
        decoding_buffer_size=args.decoding_buffer_size,
        plots=not args.no_plots,
    )
    if args.smoke:
        return smoke_config(config)
    return quick_config(config) if args.quick else config


def run(args: argparse.Namespace) -> int:
    from framepipe.bench._app import rerender, run_bench

    if args.report is not None:
        results = args.report / "results.json" if args.report.is_dir() else args.report
        if not results.is_file():
            print(f"framepipe bench: {results} not found", file=sys.stderr)
            return 2
        return rerender(results, args.out, json_line=args.json)
    return run_bench(config_from_arguments(args), json_line=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="framepipe bench")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
