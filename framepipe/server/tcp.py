"""The TCP front end: the reference's control-plane protocol on an asyncio server.

One request per connection, as in the reference: the client sends one frame (4-byte length +
JSON object), the server answers one frame and closes. Every connection is served on the event
loop concurrently; reading a request is bounded in time and size; what a request means is
decided by a :class:`CommandHandler` (the manager), called with a typed command.

How a request becomes a response:

- framing problems (short header, zero or oversize length, truncated body, read timeout), a
  payload that is not a JSON object, an unknown ``type`` or a bad field: ``invalid_payload``
  (the reference says ``internal_error`` for several of these);
- a wrong or missing shared token, when one is configured: ``authorisation_error``;
- a :class:`FramepipeError` from the handler: the failure body of its ``error_type``;
- any other exception: ``internal_error`` naming only the exception class; the traceback goes
  to the server log under the request id, never to the client.

The handler is never cancelled because its client went away (an ``init`` half done is worse
than a reply nobody reads); only :meth:`TcpFront.close` cancels what is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from framepipe.protocol.commands import AUTH_TOKEN_KEY, Command, parse_command
from framepipe.protocol.envelope import FailureBody, ResponseBody, SuccessBody, encode_response
from framepipe.protocol.errors import AuthorisationError, FramepipeError
from framepipe.protocol.framing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    FrameDecoder,
    FramingError,
    decode_object,
)

logger = logging.getLogger(__name__)


class CommandHandler(Protocol):
    """What the TCP front end needs from the manager.

    ``handle`` returns the success body of the command (its ``pipeline_id``, when set, goes
    into the envelope: an ``init`` reply must name the new pipeline) or raises a
    :class:`FramepipeError` subclass. It runs on the event loop and must not block it.
    """

    async def handle(self, request_id: str, command: Command) -> SuccessBody: ...


@dataclass(frozen=True, slots=True)
class TcpFrontSettings:
    host: str = "127.0.0.1"
    port: int = 7070
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    read_timeout_s: float = 10.0
    """The whole request must arrive within this time after the connection opens."""
    write_timeout_s: float = 30.0
    """A client must take the whole response within this time, or the connection is dropped."""
    auth_token: str | None = None
    """When set, every request must carry it in the ``auth_token`` field."""
    backlog: int = 1024


_LINGER_S = 1.0


class RequestTimeoutError(FramingError):
    """The client did not send a complete request in time."""


class _Connection(asyncio.Protocol):
    """One connection: read one frame, answer it, close."""

    def __init__(self, front: TcpFront) -> None:
        self._front = front
        self._loop = front.loop
        self._decoder = FrameDecoder(front.settings.max_message_size)
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._request_taken = False
        self._draining = False
        self._lost = False

    # asyncio.Protocol callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._front.connections.add(self)
        self._timer = self._loop.call_later(
            self._front.settings.read_timeout_s, self._on_read_timeout
        )

    def data_received(self, data: bytes) -> None:
        if self._request_taken:
            return  # one request per connection; anything after it is ignored (or drained)
        try:
            messages = self._decoder.feed(data)
        except FramingError as error:
            self._reject(error)
            return
        if messages:
            self._take_request()
            self._front.spawn(self._serve(messages[0]))

    def eof_received(self) -> bool:
        if self._draining:
            self.close()
            return False
        if self._request_taken:
            return True  # keep the write side open for the reply
        try:
            self._decoder.eof()
        except FramingError as error:
            self._reject(error)
            return True
        self.close()  # connected and closed without a byte: nothing to answer
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_timer()
        self._front.connections.discard(self)

    # internals --------------------------------------------------------------------------

    def _take_request(self) -> None:
        self._request_taken = True
        self._cancel_timer()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_read_timeout(self) -> None:
        self._timer = None
        if self._request_taken:
            return
        received = self._decoder.buffered
        expected = self._decoder.expected_size
        detail = f"{received} of {expected} payload bytes" if expected else f"{received} bytes"
        self._reject(
            RequestTimeoutError(
                f"No complete request within {self._front.settings.read_timeout_s} s "
                f"(received {detail})"
            )
        )

    def _reject(self, error: FramingError) -> None:
        """Answer a request that could not be read, then close.

        The client may still be sending (an oversize body): closing with unread bytes would
        make the kernel send RST, and the client could lose the answer. So the answer is sent
        with a FIN after it, and the rest of the request is read and dropped for a moment
        before the connection closes (a lingering close).
        """
        self._request_taken = True
        self._cancel_timer()
        request_id = str(uuid.uuid4())
        logger.info("request %s rejected: %s", request_id, error.message)
        transport = self._transport
        if self._lost or transport is None or transport.is_closing():
            return
        self._draining = True
        transport.write(encode_response(request_id, None, FailureBody.from_error(error)))
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(_LINGER_S, transport.close)
        self._loop.call_later(self._front.settings.write_timeout_s, transport.abort)

    async def _serve(self, payload: bytes) -> None:
        request_id = str(uuid.uuid4())
        data = await self._front.answer(request_id, payload)
        self.respond(data)

    def respond(self, data: bytes) -> None:
        transport = self._transport
        if self._lost or transport is None or transport.is_closing():
            return
        transport.write(data)
        transport.close()  # flushes the buffer first
        if transport.get_write_buffer_size():
            # A client that never reads must not pin the response in memory forever.
            self._loop.call_later(self._front.settings.write_timeout_s, transport.abort)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class TcpFront:
    """A running TCP front end. Create it with :func:`start_server`."""

    def __init__(self, handler: CommandHandler, settings: TcpFrontSettings) -> None:
        self.handler = handler
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._token = settings.auth_token.encode() if settings.auth_token is not None else None

    async def _start(self) -> None:
        self._server = await self.loop.create_server(
            lambda: _Connection(self),
            host=self.settings.host,
            port=self.settings.port,
            reuse_address=True,  # a restart on the same port works at once (TIME_WAIT)
            backlog=self.settings.backlog,
        )
        for sock in self._server.sockets:
            # Python creates sockets non-inheritable (O_CLOEXEC); make it explicit, since a
            # worker that inherited the listening socket would keep the port bound.
            os.set_inheritable(sock.fileno(), False)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        sockets = self.sockets
        if not sockets:
            raise RuntimeError("the TCP front end is not listening")
        return int(sockets[0].getsockname()[1])

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def answer(self, request_id: str, payload: bytes) -> bytes:
        """The response frame for one request payload (never raises, except cancellation)."""
        pipeline_id: str | None = None
        body: ResponseBody
        try:
            document = decode_object(payload)
            self._check_token(document)
            command = parse_command(document)
            pipeline_id = command.target_pipeline_id
            body = await self.handler.handle(request_id, command)
            if not isinstance(body, SuccessBody):
                raise TypeError(f"handler returned {type(body).__name__}, not a SuccessBody")
            if body.pipeline_id is not None:
                pipeline_id = body.pipeline_id
        except FramepipeError as error:
            body = FailureBody.from_error(error)
            if error.pipeline_id is not None:
                pipeline_id = error.pipeline_id
        except Exception as error:
            logger.exception("request %s failed with an unexpected error", request_id)
            body = FailureBody.internal(error, request_id)
        try:
            return encode_response(request_id, pipeline_id, body)
        except Exception as error:  # e.g. a report holding a value JSON cannot carry
            logger.exception("request %s: response could not be serialised", request_id)
            return encode_response(request_id, pipeline_id, FailureBody.internal(error, request_id))

    def _check_token(self, document: dict[str, Any]) -> None:
        if self._token is None:
            return
        offered = document.get(AUTH_TOKEN_KEY)
        if not isinstance(offered, str):
            raise AuthorisationError(
                f"This stream manager requires a shared token in the request field '{AUTH_TOKEN_KEY}'"
            )
        if not hmac.compare_digest(offered.encode(), self._token):
            raise AuthorisationError(f"The token in field '{AUTH_TOKEN_KEY}' is not valid")

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish for up to ``grace_s``, then cancel
        them and drop every connection."""
        if self._server is not None:
            self._server.close()
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpFront:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_server(handler: CommandHandler, settings: TcpFrontSettings) -> TcpFront:
    """Listen on ``settings.host:settings.port`` and serve requests with ``handler``."""
    front = TcpFront(handler, settings)
    await front._start()
    return front
