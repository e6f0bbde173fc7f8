"""Running the gateway: uvicorn on the caller's event loop, next to the TCP control plane.

:class:`Gateway` binds its socket itself (so ``port=0`` works and a busy port is an error at
once, not a log line), serves with uvicorn without uvicorn's signal handling (the process's
owner handles SIGINT/SIGTERM), and on :meth:`Gateway.close` ends every result stream first —
an open Server-Sent Events response would otherwise hold uvicorn's graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Generator, Sequence

import uvicorn
from fastapi import APIRouter

from framepipe.client.address import reachable_host
from framepipe.gateway.app import GatewayContext, ManagerAddress, create_app
from framepipe.gateway.errors import GatewayStartError
from framepipe.gateway.settings import GatewaySettings
from framepipe.gateway.streams import ResultStreams

logger = logging.getLogger(__name__)

_GRACE_S = 5.0


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the process that embeds it owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Gateway:
    """The HTTP gateway in front of the manager at ``manager_host:manager_port``.

    ``announce(url)`` is called once it listens; ``routers`` add routes (``/metrics``);
    ``control_plane=False`` serves only those and the probes (``framepipe serve
    --metrics-port``), ``name`` is what the log calls it. Usable as a companion of
    :func:`framepipe.server.manager.app.serve` (``start(host, port)`` / ``close()``).
    """

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        probe_token: str | None = None,
        default_host: str = "127.0.0.1",
        announce: Callable[[str], None] | None = None,
        routers: Sequence[APIRouter] = (),
        control_plane: bool = True,
        name: str = "HTTP gateway",
    ) -> None:
        self.settings = settings
        self.routers = tuple(routers)
        self.control_plane = control_plane
        self.name = name
        self.probe_token = probe_token
        self.default_host = default_host
        self.announce = announce
        self.streams = ResultStreams(batch=settings.stream_batch, poll_s=settings.stream_poll_s)
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the gateway is not listening")
        return int(self._socket.getsockname()[1])

    @property
    def host(self) -> str:
        return self.settings.http_host or self.default_host

    @property
    def url(self) -> str:
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    async def start(self, manager_host: str, manager_port: int) -> None:
        context = GatewayContext(
            settings=self.settings,
            manager=ManagerAddress(reachable_host(manager_host), manager_port),
            streams=self.streams,
            probe_token=self.probe_token,
        )
        port = self.settings.http_port or 0
        try:
            self._socket = socket.create_server((self.host, port), backlog=1024)
        except OSError as error:
            raise GatewayStartError(
                f"cannot listen for HTTP ({self.name}) on {self.host}:{port}: "
                f"{error.strerror or error}"
            ) from error
        self._socket.set_inheritable(False)
        config = uvicorn.Config(
            create_app(context, routers=self.routers, control_plane=self.control_plane),
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(_GRACE_S),
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.get_running_loop().create_task(
            self._server.serve(sockets=[self._socket]), name="framepipe-http-gateway"
        )
        logger.info("%s on %s (manager %s:%d)", self.name, self.url, manager_host, manager_port)
        if self.announce is not None:
            self.announce(self.url)

    async def close(self) -> None:
        """End every result stream, stop accepting, let requests in flight finish."""
        await self.streams.close()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(self._task), _GRACE_S * 2)
            except TimeoutError:
                self._server.force_exit = True
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._socket is not None:
            self._socket.close()
        self._server = None
        self._task = None

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
