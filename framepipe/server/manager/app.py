"""Running the stream manager: listen first, then warm up, until SIGINT/SIGTERM.

The socket is bound before anything slow happens (the orphan sweep runs in a thread, idle
workers start in the background), so clients can connect well within a second of launch.
On SIGINT or SIGTERM the manager stops accepting, terminates every pipeline and idle worker,
unlinks every segment they left, and returns normally (exit status 0).

Companions (the HTTP gateway) run in the same process and event loop: each is started once the
TCP port accepts, with the address to reach the manager at, and closed first at shutdown. The
server does not know what they are (it imports no client), only this small protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Protocol

from framepipe.protocol.limits import JsonLimits
from framepipe.server.manager.driver import StreamManager
from framepipe.server.manager.policy import InputPolicy, PolicyHandler, reference_checks
from framepipe.server.manager.tcp import TcpFrontSettings, start_server
from framepipe.server.settings import ServerSettings, SettingsError

log = logging.getLogger("framepipe.server")

Announce = Callable[[str, int], None]


class Companion(Protocol):
    """A service that runs beside the manager and talks to it over its TCP port."""

    async def start(self, manager_host: str, manager_port: int) -> None: ...

    async def close(self) -> None: ...


async def serve(
    settings: ServerSettings,
    *,
    announce: Announce | None = None,
    companions: Sequence[Companion] = (),
) -> None:
    """Serve until SIGINT/SIGTERM; ``announce(host, port)`` is called once the port accepts;
    ``companions`` start after that and stop before the manager does."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signo in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signo, stop.set)
    for warning in settings.security_warnings():
        log.warning("%s", warning)
    manager = StreamManager(settings)
    try:
        front = await start_server(
            PolicyHandler(manager, InputPolicy(settings.video_dirs, settings.stream_policy())),
            front_settings(settings),
        )
    except OSError as error:
        raise SettingsError(cannot_listen(settings, error)) from error
    host, port = settings.host, front.port
    log.info(
        "stream manager listening on %s:%d%s%s",
        host,
        port,
        " (TLS)" if settings.tls_cert is not None else "",
        " (token required)" if settings.token is not None else "",
    )
    if announce is not None:
        announce(host, port)
    started: list[Companion] = []
    try:
        # The input policy's imports, done before the manager's own start in the background
        # (see framepipe.server.manager.policy.reference_checks); requests are served meanwhile.
        await loop.run_in_executor(None, reference_checks)
        for companion in companions:
            await companion.start(host, port)
            started.append(companion)
        await manager.start()
        await stop.wait()
        log.info("shutting down: terminating %d pipelines", len(await manager.list_pipelines()))
    finally:
        for companion in reversed(started):
            await companion.close()
        await front.close()
        await manager.close()
        for signo in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signo)


def cannot_listen(settings: ServerSettings, error: OSError) -> str:
    """Why the control plane cannot listen, naming the setting that changes it."""
    where = f"{settings.host}:{settings.port}"
    cause = (error.strerror or str(error)).split(" (while")[0]
    if error.errno == errno.EADDRNOTAVAIL:
        fix = "choose an address of this machine with --host or STREAM_MANAGER_HOST"
    else:
        fix = "choose another port with --port or STREAM_MANAGER_PORT (0: any free port)"
    return f"cannot listen on {where}: {cause}; {fix}"


def front_settings(settings: ServerSettings) -> TcpFrontSettings:
    """The TCP front end's settings from the manager's."""
    return TcpFrontSettings(
        host=settings.host,
        port=settings.port,
        max_message_size=settings.max_message_bytes,
        read_timeout_s=settings.read_timeout_s,
        auth_token=settings.token,
        max_connections=settings.max_connections,
        max_pending_bytes=settings.max_pending_bytes,
        json_limits=JsonLimits(
            max_depth=settings.max_json_depth, max_items=settings.max_json_items
        ),
        ssl_context=settings.tls_context(),
    )
