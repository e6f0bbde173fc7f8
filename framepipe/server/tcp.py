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

Two paths serve a connection. The fast one: a request that has arrived whole when the
connection is accepted (the usual case; on Linux ``TCP_DEFER_ACCEPT`` delays the accept until
the first bytes are in) is read with one ``recv`` and answered with one ``send`` on the plain
socket — an asyncio transport costs more to set up than such a request costs to serve. Every
other connection (a partial, slow or malformed request, an answer larger than the socket buffer)
goes to :class:`_Connection`, a transport-based protocol with the read timeout, the size limit
and a lingering close after a rejection. Requests above 256 kB are parsed in a worker thread.

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
from typing import Any, Protocol, cast

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
_FAST_READ_BYTES = 64 * 1024
_ACCEPTS_PER_WAKEUP = 64
_ACCEPT_PAUSE_S = 0.1
OFFLOAD_PARSE_BYTES = 256 * 1024
"""Requests larger than this are parsed in a worker thread, off the event loop."""


class RequestTimeoutError(FramingError):
    """The client did not send a complete request in time."""


class _Connection(asyncio.Protocol):
    """One connection on the transport path: read one frame, answer it, close."""

    def __init__(self, front: TcpFront, initial: bytes = b"") -> None:
        self._front = front
        self._loop = front.loop
        self._decoder = FrameDecoder(front.settings.max_message_size)
        self._initial = initial  # bytes the accept fast path already read
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._request_taken = False
        self._draining = False
        self._lost = False

    # asyncio.Protocol callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check)
        self._transport = cast(asyncio.Transport, transport)
        self._front.connections.add(self)
        self._timer = self._loop.call_later(
            self._front.settings.read_timeout_s, self._on_read_timeout
        )
        if self._initial:
            initial, self._initial = self._initial, b""
            self.data_received(initial)

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
        self._listener: socket.socket | None = None
        self._accept_failing = False
        self._token = settings.auth_token.encode() if settings.auth_token is not None else None

    def _start(self) -> None:
        # socket.create_server sets SO_REUSEADDR (a restart on the same port works at once,
        # despite connections in TIME_WAIT) and creates the socket non-inheritable (O_CLOEXEC:
        # a worker that inherited it would keep the port bound after the manager is gone).
        family = socket.getaddrinfo(
            self.settings.host or None,
            self.settings.port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )[0][0]
        listener = socket.create_server(
            (self.settings.host, self.settings.port), family=family, backlog=self.settings.backlog
        )
        os.set_inheritable(listener.fileno(), False)
        listener.setblocking(False)
        if hasattr(socket, "TCP_DEFER_ACCEPT"):
            # Linux: wake the accept only once the request's first bytes have arrived, so
            # the fast path below nearly always finds them.
            with contextlib.suppress(OSError):
                listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
        self._listener = listener
        self.loop.add_reader(listener.fileno(), self._accept_ready)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._listener,) if self._listener is not None else ()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._listener is None:
            raise RuntimeError("the TCP front end is not listening")
        return int(self._listener.getsockname()[1])

    # Accepting. A request is one small frame that, by the time the connection is accepted,
    # has usually arrived whole: then it is read with one recv and answered with one send,
    # without an asyncio transport (whose set-up costs more than the request). Anything else
    # (a partial or malformed frame, a large answer) goes to the transport-based _Connection.

    def _accept_ready(self) -> None:
        listener = self._listener
        if listener is None:
            return
        for _ in range(_ACCEPTS_PER_WAKEUP):  # bounded: the loop has other work too
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                # e.g. EMFILE: the listener stays readable, so stop watching it for a moment
                # rather than spin; the pending connections wait in the backlog.
                logger.warning(
                    "accept failed (%s); pausing accepts for %.1f s", error, _ACCEPT_PAUSE_S
                )
                self.loop.remove_reader(listener.fileno())
                self.loop.call_later(_ACCEPT_PAUSE_S, self._resume_accepting)
                return
            if self._accept_failing:
                logger.warning("accepting connections again")
                self._accept_failing = False
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._accepted(conn)

    def _resume_accepting(self) -> None:
        if self._listener is not None:
            self.loop.add_reader(self._listener.fileno(), self._accept_ready)

    def _accepted(self, conn: socket.socket) -> None:
        try:
            initial = conn.recv(_FAST_READ_BYTES)
        except (BlockingIOError, InterruptedError):
            initial = b""
        except OSError:
            conn.close()
            return
        if initial:
            decoder = FrameDecoder(self.settings.max_message_size)
            try:
                messages = decoder.feed(initial)
            except FramingError:
                messages = []  # the slow path answers it
            if messages and decoder.buffered == 0:
                self.spawn(self._serve_fast(conn, messages[0]))
                return
        self.spawn(self._serve_slow(conn, initial))

    async def _serve_slow(self, conn: socket.socket, initial: bytes) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: _Connection(self, initial), conn)
        except OSError:
            conn.close()

    async def _serve_fast(self, conn: socket.socket, payload: bytes) -> None:
        try:
            data = await self.answer(str(uuid.uuid4()), payload)
            try:
                sent = conn.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent < len(data):
                await asyncio.wait_for(
                    self.loop.sock_sendall(conn, memoryview(data)[sent:]),
                    self.settings.write_timeout_s,
                )
        except (OSError, TimeoutError):
            pass  # the client went away or does not read: nothing more to do for it
        finally:
            conn.close()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def answer(self, request_id: str, payload: bytes) -> bytes:
        """The response frame for one request payload (never raises, except cancellation)."""
        pipeline_id: str | None = None
        body: ResponseBody
        try:
            if len(payload) > OFFLOAD_PARSE_BYTES:
                # Parsing and validating megabytes would stall every other connection.
                command = await asyncio.to_thread(self._parse, payload)
            else:
                command = self._parse(payload)
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

    def _parse(self, payload: bytes) -> Command:
        document = decode_object(payload)
        self._check_token(document)
        return parse_command(document)

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
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace_s)
        for connection in list(self.connections):
            connection.abort()

    async def __aenter__(self) -> TcpFront:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def start_server(handler: CommandHandler, settings: TcpFrontSettings) -> TcpFront:
    """Listen on ``settings.host:settings.port`` and serve requests with ``handler``."""
    front = TcpFront(handler, settings)
    front._start()
    return front
