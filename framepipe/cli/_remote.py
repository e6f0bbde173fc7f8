"""``framepipe pipelines ...`` and ``framepipe top``: a running manager, seen from a terminal.

They read the same settings as the server (``STREAM_MANAGER_HOST``, ``STREAM_MANAGER_PORT``,
``FRAMEPIPE_TOKEN``; a wildcard bind address is reached on loopback), which flags override.
Tables by default, ``--json`` for scripts. Errors propagate to :func:`framepipe.cli.main`,
which prints them as one line with a hint.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from framepipe.cli._interrupt import run_async
from framepipe.client import NotFoundError, StreamManagerClient
from framepipe.client.address import reachable_host
from framepipe.protocol.errors import FramepipeError
from framepipe.server.settings import ServerSettings, SettingsError

if TYPE_CHECKING:  # rich and the tables load when a command runs, not for `framepipe serve`
    from rich.console import Console, RenderableType

    from framepipe.cli._tables import PipelineView

DEFAULT_TIMEOUT_S = 30.0
MIN_INTERVAL_S = 0.2
_STATUS_CONCURRENCY = 16


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``pipelines`` and ``top`` sub-commands."""
    # Connection flags are accepted before and after the action
    # (`framepipe pipelines --port 7071 list` and `framepipe pipelines list --port 7071`);
    # SUPPRESS keeps an absent flag from overwriting one given at the other level.
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--host", default=argparse.SUPPRESS, help="manager address (STREAM_MANAGER_HOST)"
    )
    connection.add_argument(
        "--port", type=int, default=argparse.SUPPRESS, help="manager port (STREAM_MANAGER_PORT)"
    )
    connection.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="the manager's shared token (FRAMEPIPE_TOKEN, which keeps it out of `ps`)",
    )
    connection.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        help=f"seconds per call to the manager (default {DEFAULT_TIMEOUT_S:g})",
    )
    connection.add_argument(
        "--tls",
        action="store_true",
        default=argparse.SUPPRESS,
        help="connect with TLS, checked against the system's CAs",
    )
    connection.add_argument(
        "--tls-ca",
        default=argparse.SUPPRESS,
        help="connect with TLS, checked against this CA bundle or self-signed certificate "
        "(FRAMEPIPE_TLS_CA)",
    )
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="JSON for scripts"
    )
    shared = [connection, output]

    pipelines = commands.add_parser(
        "pipelines", parents=shared, help="list, inspect and control a running manager's pipelines"
    )
    actions = pipelines.add_subparsers(dest="action", required=True)
    actions.add_parser(
        "list", parents=shared, help="every pipeline: state, fps, frames, drops, latency"
    ).set_defaults(run=run_pipelines)
    for name, text in (
        ("status", "one pipeline's status: summary, sources, recent events"),
        ("pause", "stop consuming frames (the manager's mute)"),
        ("resume", "consume frames again"),
        ("terminate", "end the pipeline"),
    ):
        action = actions.add_parser(name, parents=shared, help=text)
        action.add_argument("pipeline_id")
        action.set_defaults(run=run_pipelines)
    consume = actions.add_parser("consume", parents=shared, help="pop results of a pipeline")
    consume.add_argument("pipeline_id")
    consume.add_argument("--exclude", action="append", default=[], help="output field to leave out")
    consume.add_argument(
        "--max-entries", type=int, default=None, help="pop up to this many results"
    )
    consume.set_defaults(run=run_pipelines)

    top = commands.add_parser(
        "top", parents=shared, help="the pipelines table, refreshed live (Ctrl-C leaves)"
    )
    top.add_argument(
        "--interval",
        type=_interval,
        default=1.0,
        help=f"seconds between refreshes (>= {MIN_INTERVAL_S:g}, default 1)",
    )
    top.add_argument("--count", type=_positive, default=None, help="stop after this many refreshes")
    top.set_defaults(run=run_top)


def _interval(text: str) -> float:
    value = float(text)
    if not value >= MIN_INTERVAL_S:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_INTERVAL_S:g} s, got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def connect(args: argparse.Namespace) -> StreamManagerClient:
    """A client for the manager the settings (and the flags) name."""
    settings = ServerSettings.from_env()
    host = getattr(args, "host", None) or reachable_host(settings.host)
    port = getattr(args, "port", None)
    timeout = getattr(args, "timeout", None)
    return StreamManagerClient(
        host=host,
        port=settings.port if port is None else port,
        operations_timeout=DEFAULT_TIMEOUT_S if timeout is None else timeout,
        auth_token=getattr(args, "token", None) or settings.token,
        tls=_tls(args),
    )


def _tls(args: argparse.Namespace) -> ssl.SSLContext | bool:
    """``--tls`` (the system's CAs), or ``--tls-ca`` / FRAMEPIPE_TLS_CA (that bundle)."""
    ca_file = getattr(args, "tls_ca", None) or os.environ.get("FRAMEPIPE_TLS_CA") or None
    if ca_file is None:
        return bool(getattr(args, "tls", False))
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"TLS CA file {ca_file!r} cannot be loaded: {exc}") from None


def _console() -> Console:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        # A pipe or a file: no wrapping of pipeline ids, whatever COLUMNS says.
        console = Console(width=max(console.width, 200))
    return console


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str), flush=True)


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json")


async def gather_views(
    client: StreamManagerClient, pipeline_ids: Sequence[str]
) -> list[tuple[PipelineView, dict[str, Any] | None]]:
    """Every pipeline's view and report; a pipeline gone since it was listed shows as GONE."""
    from framepipe.cli._tables import gone_view, pipeline_view

    limit = asyncio.Semaphore(_STATUS_CONCURRENCY)

    async def one(pipeline_id: str) -> tuple[PipelineView, dict[str, Any] | None]:
        async with limit:
            try:
                report = (await client.get_status(pipeline_id)).report
            except NotFoundError:
                return gone_view(pipeline_id), None
        return pipeline_view(pipeline_id, report), report

    return list(await asyncio.gather(*(one(pid) for pid in pipeline_ids)))


def run_pipelines(args: argparse.Namespace) -> int:
    client = connect(args)
    return run_async(lambda: _pipelines(args, client))


async def _pipelines(args: argparse.Namespace, client: StreamManagerClient) -> int:
    from rich.text import Text

    from framepipe.cli._tables import pipeline_detail, pipeline_view, pipelines_table

    as_json = getattr(args, "json", False)
    console = _console()
    if args.action == "list":
        listed = await client.list_pipelines()
        views = await gather_views(client, listed.pipelines)
        if as_json:
            document = _dump(listed)
            document["reports"] = {view.pipeline_id: report for view, report in views}
            _print_json(document)
        else:
            console.print(pipelines_table([view for view, _ in views]))
        return 0
    if args.action == "status":
        response = await client.get_status(args.pipeline_id)
        if as_json:
            _print_json(_dump(response))
        else:
            view = pipeline_view(args.pipeline_id, response.report)
            console.print(pipeline_detail(view, response.report))
        return 0
    if args.action == "consume":
        consumed = await client.consume_pipeline_result(
            args.pipeline_id, excluded_fields=args.exclude, max_entries=args.max_entries
        )
        if as_json:
            _print_json(_dump(consumed))
        elif not consumed.entries:
            console.print("no result waiting", style="dim")
        else:
            for entry in consumed.entries:
                for output, meta in zip(entry.outputs, entry.frames_metadata, strict=False):
                    where = (
                        f"source {meta.source_id} frame {meta.frame_id} "
                        f"{meta.frame_timestamp.isoformat()}"
                        if meta is not None
                        else "no frame"
                    )
                    console.print(Text(f"{where}: {json.dumps(output)}"), soft_wrap=True)
        return 0
    method = {
        "pause": client.pause_pipeline,
        "resume": client.resume_pipeline,
        "terminate": client.terminate_pipeline,
    }[args.action]
    done = await method(args.pipeline_id)
    if as_json:
        _print_json(_dump(done))
    else:
        past = {"pause": "paused", "resume": "resumed", "terminate": "terminated"}[args.action]
        console.print(f"{past} {args.pipeline_id}")
    return 0


def run_top(args: argparse.Namespace) -> int:
    client = connect(args)
    try:
        return run_async(lambda: _top(args, client))
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how one leaves `top`


async def _top(args: argparse.Namespace, client: StreamManagerClient) -> int:
    as_json = getattr(args, "json", False)
    where = f"{client.host}:{client.port}"
    # The first look must work: a wrong address or token is an error, not an empty screen.
    views = await _snapshot(client)
    if as_json:
        refreshes = 0
        while True:
            print(json.dumps(_top_document(views), default=str), flush=True)
            refreshes += 1
            if args.count is not None and refreshes >= args.count:
                return 0
            await asyncio.sleep(args.interval)
            views = await _snapshot_or_error(client, views)
    from rich.live import Live

    console = _console()
    with Live(console=console, auto_refresh=False, transient=False) as live:
        refreshes = 0
        problem: str | None = None
        while True:
            live.update(_top_screen(views, where, args.interval, problem), refresh=True)
            refreshes += 1
            if args.count is not None and refreshes >= args.count:
                break
            await asyncio.sleep(args.interval)
            try:
                views = await _snapshot(client)
                problem = None
            except FramepipeError as error:
                problem = " ".join(str(error).split())  # shown; the view keeps refreshing
    if not console.is_terminal:
        console.line()
    return 0


async def _snapshot(client: StreamManagerClient) -> list[tuple[PipelineView, Any]]:
    return await gather_views(client, (await client.list_pipelines()).pipelines)


async def _snapshot_or_error(
    client: StreamManagerClient, previous: list[tuple[PipelineView, Any]]
) -> list[tuple[PipelineView, Any]]:
    try:
        return await _snapshot(client)
    except FramepipeError as error:
        print(json.dumps({"error": " ".join(str(error).split())}), file=sys.stderr, flush=True)
        return previous


def _top_document(views: list[tuple[PipelineView, Any]]) -> dict[str, Any]:
    return {
        "time": time.time(),
        "pipelines": [
            {"pipeline_id": view.pipeline_id, "report": report} for view, report in views
        ],
    }


def _top_screen(
    views: list[tuple[PipelineView, Any]], where: str, interval: float, problem: str | None
) -> RenderableType:
    from rich.console import Group
    from rich.text import Text

    from framepipe.cli._tables import pipelines_table

    footer = Text(
        f"{len(views)} pipelines on {where}, refreshed {time.strftime('%H:%M:%S')} "
        f"every {interval:g} s; Ctrl-C leaves",
        style="dim",
    )
    parts: list[RenderableType] = [pipelines_table([view for view, _ in views]), footer]
    if problem:
        parts.append(Text(f"last refresh failed: {problem}", style="red"))
    return Group(*parts)
