"""The ``framepipe`` command line.

``framepipe serve``                       run the stream manager (TCP control plane)
``framepipe pipelines list|status|consume|terminate``   talk to a running manager
``framepipe run VIDEO [--model NAME]``    run one pipeline locally, print its results
``framepipe demo``                        start a manager, run a pipeline on the sample video,
                                          print results as they come, shut everything down
``framepipe bench``                       streams per machine: framepipe against the classic
                                          architecture (framepipe/bench)

Heavy modules are imported by the sub-command that needs them, so ``framepipe serve`` binds its
port within a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from framepipe.bench.cli import add_arguments as add_bench_arguments
from framepipe.server.settings import SettingsError, add_arguments, from_arguments


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.run(args)
    except SettingsError as exc:
        print(f"framepipe: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="framepipe", description="A stream manager for video inference."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the stream manager")
    add_arguments(serve)
    serve.set_defaults(run=_serve)

    pipelines = commands.add_parser("pipelines", help="talk to a running stream manager")
    pipelines.add_argument("--host", default=None, help="manager address (STREAM_MANAGER_HOST)")
    pipelines.add_argument(
        "--port", type=int, default=None, help="manager port (STREAM_MANAGER_PORT)"
    )
    pipelines.add_argument("--timeout", type=float, default=30.0, help="seconds per operation")
    pipelines.add_argument(
        "--token", default=None, help="shared token, if the manager requires one"
    )
    actions = pipelines.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="ids of the running pipelines").set_defaults(run=_pipelines)
    for name, text in (("status", "status report"), ("terminate", "end the pipeline")):
        action = actions.add_parser(name, help=text)
        action.add_argument("pipeline_id")
        action.set_defaults(run=_pipelines)
    consume = actions.add_parser("consume", help="pop results of a pipeline")
    consume.add_argument("pipeline_id")
    consume.add_argument("--exclude", action="append", default=[], help="output field to leave out")
    consume.add_argument(
        "--max-entries", type=int, default=None, help="pop up to this many results"
    )
    consume.set_defaults(run=_pipelines)

    run = commands.add_parser("run", help="run one pipeline locally and print its results")
    run.add_argument("video", help="file path, stream URL or camera index")
    run.add_argument(
        "--model", default="passthrough", help="registered model name (default: passthrough)"
    )
    run.add_argument("--max-fps", type=float, default=None, help="limit the processing rate")
    run.add_argument("--frames", type=int, default=None, help="stop after this many results")
    run.add_argument(
        "--output", default=None, help="write the frames with their detections drawn (H.264 .mp4)"
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

    from framepipe.server.app import serve

    settings = from_arguments(args)

    def announce(host: str, port: int) -> None:
        print(f"framepipe: stream manager listening on {host}:{port}", flush=True)

    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.run(serve(settings, announce=announce))
    else:
        asyncio.run(serve(settings, announce=announce))
    return 0


def _pipelines(args: argparse.Namespace) -> int:
    from framepipe.server.settings import ServerSettings

    defaults = ServerSettings.from_env()
    host = args.host or defaults.host
    port = args.port if args.port is not None else defaults.port
    from framepipe.client import FramepipeError, SyncStreamManagerClient

    client = SyncStreamManagerClient(
        host=host, port=port, operations_timeout=args.timeout, auth_token=args.token
    )
    try:
        result: Any
        if args.action == "list":
            result = client.list_pipelines()
        elif args.action == "status":
            result = client.get_status(args.pipeline_id)
        elif args.action == "consume":
            result = client.consume_pipeline_result(
                args.pipeline_id, excluded_fields=args.exclude, max_entries=args.max_entries
            )
        else:
            result = client.terminate_pipeline(args.pipeline_id)
    except FramepipeError as exc:
        print(f"framepipe: {exc.error_type.value}: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(_plain(result), indent=2, default=str))
    return 0


def _plain(value: Any) -> Any:
    to_wire = getattr(value, "to_wire", None)
    if callable(to_wire):
        return to_wire()
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    return value


def _run(args: argparse.Namespace) -> int:
    from framepipe._run import run_local

    return run_local(
        args.video, model=args.model, max_fps=args.max_fps, frames=args.frames, output=args.output
    )


def _demo(args: argparse.Namespace) -> int:
    from framepipe._demo import run_demo

    return run_demo(seconds=args.seconds, model=args.model)


def _bench(args: argparse.Namespace) -> int:
    from framepipe.bench.cli import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
