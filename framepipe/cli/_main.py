"""The ``framepipe`` command line.

``framepipe serve [--http-port N]``       run the stream manager (TCP control plane, and the
                                          HTTP gateway with --http-port; Prometheus /metrics
                                          on it, or on --metrics-port)
``framepipe pipelines list|status|consume|pause|resume|terminate``   talk to a running manager
``framepipe top``                         the pipelines table, refreshed live
``framepipe run VIDEO [--model NAME]``    run one pipeline locally: progress, then a summary
                                          (--output: an annotated H.264 recording; --json)
``framepipe demo``                        start a manager, run a pipeline on the sample video,
                                          print results as they come, shut everything down
``framepipe models fetch|list``           the bundled model into the per-user model cache;
                                          what is registered, and where it lives
``framepipe bench``                       streams per machine: framepipe against the classic
                                          architecture (framepipe/bench)

Heavy modules are imported by the sub-command that needs them, so ``framepipe serve`` binds its
port within a fraction of a second. An error is one line with its cause and a hint; ``-v``
adds the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from framepipe import __version__
from framepipe.bench.cli import add_arguments as add_bench_arguments
from framepipe.cluster.settings import add_arguments as add_cluster_arguments
from framepipe.gateway.settings import GatewaySettingsError
from framepipe.gateway.settings import add_arguments as add_gateway_arguments
from framepipe.gateway.settings import from_arguments as gateway_from_arguments
from framepipe.server.settings import SettingsError, add_arguments, from_arguments


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while the sub-commands' modules load
        return 130
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command in _RUNS_PIPELINES:
            from framepipe._installation import check_single_builds

            check_single_builds()
        code: int = args.run(args)
    except (SettingsError, GatewaySettingsError) as exc:
        print(f"framepipe: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from framepipe.cli._explain import explain

        if args.verbose:
            traceback.print_exc()
        print(f"framepipe: {explain(exc)}", file=sys.stderr)
        return 1
    return code


# Commands that import ONNX Runtime and OpenCV: two builds of either are refused first.
_RUNS_PIPELINES = frozenset({"serve", "run", "demo", "bench"})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="framepipe", description="A stream manager for video inference."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, and tracebacks of errors"
    )
    parser.add_argument("--version", action="version", version=f"framepipe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the stream manager")
    add_arguments(serve)
    add_gateway_arguments(serve)
    add_cluster_arguments(serve)
    serve.add_argument(
        "--help-settings",
        action="store_true",
        help="print every setting (environment variable, default, meaning) and exit",
    )
    serve.set_defaults(run=_serve)

    from framepipe.cli._remote import add_commands as add_remote_commands

    add_remote_commands(commands)

    from framepipe.cli._models import add_commands as add_model_commands

    add_model_commands(commands)

    run = commands.add_parser(
        "run",
        help="run one pipeline locally: progress, a summary, optionally an annotated recording",
    )
    run.add_argument("video", help="file path, stream URL or camera index")
    run.add_argument(
        "--model", default="passthrough", help="registered model name (default: passthrough)"
    )
    run.add_argument("--max-fps", type=float, default=None, help="limit the processing rate")
    run.add_argument("--frames", type=int, default=None, help="stop after this many results")
    run.add_argument(
        "--output",
        default=None,
        help="record the frames as they pass, with the detections drawn (H.264 .mp4); "
        "streams too (until Ctrl-C or --frames)",
    )
    run.add_argument(
        "--json", action="store_true", help="the summary as JSON on stdout (for scripts)"
    )
    run.set_defaults(run=_run)

    demo = commands.add_parser(
        "demo", help="manager + pipeline on the sample video, results printed"
    )
    demo.add_argument("--seconds", type=float, default=20.0, help="stop after this long at most")
    demo.add_argument(
        "--model", default=None, help="model to run (default: the bundled one if present)"
    )
    demo.set_defaults(run=_demo)

    bench = commands.add_parser(
        "bench", help="how many streams this machine carries, against the classic architecture"
    )
    add_bench_arguments(bench)
    bench.set_defaults(run=_bench)
    return parser


def _serve(args: argparse.Namespace) -> int:
    import asyncio

    from framepipe.server.manager.app import Companion, serve

    if args.help_settings:
        from framepipe.cli._settings_reference import render_markdown

        print(render_markdown(), end="")
        return 0
    settings = from_arguments(args)
    gateway_settings = gateway_from_arguments(args, os.environ)
    if gateway_settings.enabled or gateway_settings.metrics_port is not None:
        from framepipe._installation import require_extra

        require_extra("http")  # before anything starts, not an ImportError once it has
    companions: list[Companion] = []
    if gateway_settings.enabled:
        from framepipe.gateway.metrics import metrics_router
        from framepipe.gateway.runner import Gateway

        def announce_gateway(url: str) -> None:
            print(f"framepipe: HTTP gateway on {url} (OpenAPI: {url}/docs)", flush=True)

        companions.append(
            Gateway(
                gateway_settings,
                probe_token=settings.token,
                default_host=settings.host,
                announce=announce_gateway,
                routers=[metrics_router()],
            )
        )
    if gateway_settings.metrics_port is not None:
        import dataclasses

        from framepipe.gateway.metrics import metrics_router
        from framepipe.gateway.runner import Gateway

        def announce_metrics(url: str) -> None:
            print(f"framepipe: Prometheus metrics on {url}/metrics", flush=True)

        companions.append(
            Gateway(
                dataclasses.replace(gateway_settings, http_port=gateway_settings.metrics_port),
                probe_token=settings.token,
                default_host=settings.host,
                announce=announce_metrics,
                routers=[metrics_router()],
                control_plane=False,
                name="metrics endpoint",
            )
        )

    def announce(host: str, port: int) -> None:
        print(f"framepipe: stream manager listening on {host}:{port}", flush=True)

    main = serve(settings, announce=announce, companions=companions)
    if args.backend == "ray":
        from framepipe.cluster.app import serve_cluster
        from framepipe.cluster.settings import from_arguments as cluster_from_arguments

        main.close()  # the single-machine server, never started
        main = serve_cluster(
            settings, cluster_from_arguments(args), announce=announce, companions=companions
        )
    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)
    return 0


def _run(args: argparse.Namespace) -> int:
    from framepipe.cli._run import run_local

    return run_local(
        args.video,
        model=args.model,
        max_fps=args.max_fps,
        frames=args.frames,
        output=args.output,
        as_json=args.json,
    )


def _demo(args: argparse.Namespace) -> int:
    from framepipe.cli._demo import run_demo

    return run_demo(seconds=args.seconds, model=args.model)


def _bench(args: argparse.Namespace) -> int:
    from framepipe.bench.cli import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
