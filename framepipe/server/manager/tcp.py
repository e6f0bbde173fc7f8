"""The TCP front end: the reference's control-plane protocol on an asyncio server.

One request per connection, as in the reference: the client sends one frame (4-byte length +
JSON object), the server answers one frame and closes. Every connection is served on the event
loop concurrently; what a request means is decided by a :class:`CommandHandler` (the manager),
called with a typed command.

How a request becomes a response:

- framing problems (short header, zero or oversize length, truncated body, read timeout), JSON
  beyond the depth or item limits, a payload that is not a JSON object, an unknown ``type`` or a
  bad field: ``invalid_payload`` (the reference says ``internal_error`` for several of these);
- a wrong or missing shared token, when one is configured: ``authorisation_error``;
- a :class:`FramepipeError` from the handler: the failure body of its ``error_type``;
- any other exception: ``internal_error`` naming only the exception class; the traceback goes
  to the server log under the request id, never to the client.

**Bounded cost before trust.** The token travels inside the JSON, so a request is read before
it can be authenticated; what an anonymous client can make the server spend is bounded:

- *memory*: a request's size is refused from its header above ``max_message_size``; the body
  is read into a buffer of exactly the declared size (a :class:`asyncio.BufferedProtocol`: no
  over-read, no copy per chunk). A request of up to 64 kB is always admitted; larger ones share
  ``max_pending_bytes`` (while it is spent, a new large request waits with its socket unread,
  so the kernel's flow control holds the sender back); at most ``max_connections`` sockets are
  open, and at the limit the oldest connection still sending its request is dropped to make
  room, so a slow client can neither hold the server nor keep others out for long.
- *CPU*: with a token configured, a body that does not contain the token's bytes is refused
  before anything is parsed (one ``memmem`` pass); then the JSON's depth and item count are
  checked on the raw bytes (:mod:`framepipe.protocol.limits`); only then is it parsed, and
  bodies above 64 kB are parsed in a worker thread, ``max_concurrent_parses`` at a time.
- *time*: the whole request must arrive within ``read_timeout_s`` of the connection (after
  the TLS handshake, itself bounded by the same time); a response not taken within
  ``write_timeout_s`` is dropped.

Two paths serve a plain-TCP connection. The fast one: a request that has arrived whole when the
connection is accepted (the usual case; on Linux ``TCP_DEFER_ACCEPT`` delays the accept until
the first bytes are in) is read with one ``recv`` and answered with one ``send`` on the plain
socket: an asyncio transport costs more to set up than such a request costs to serve. Every
other connection (a partial, slow or malformed request, an answer larger than the socket buffer,
and every TLS connection) goes to :class:`_Connection`, the transport-based protocol above.

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
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from framepipe.protocol.commands import AUTH_TOKEN_KEY, Command, parse_command
from framepipe.protocol.envelope import (
    ConsumeResultBody,
    FailureBody,
    ResponseBody,
    SuccessBody,
    encode_response,
)
from framepipe.protocol.errors import AuthorisationError, FramepipeError, OperationError
from framepipe.protocol.framing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    HEADER_SIZE,
    FramingError,
    MalformedHeaderError,
    MessageTooLargeError,
    decode_object,
    payload_size,
    short_header_error,
    truncated_error,
)
from framepipe.protocol.limits import JsonLimitError, JsonLimits, check_json_limits

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
    max_connections: int = 512
    """Sockets open at once; at the limit the oldest one still sending its request is dropped."""
    max_pending_bytes: int = 32 * 1024 * 1024
    """Bytes of requests above SMALL_REQUEST_BYTES being received or parsed at once."""
    max_concurrent_parses: int = 2
    """Requests above OFFLOAD_PARSE_BYTES parsed (in worker threads) at once."""
    json_limits: JsonLimits = field(default_factory=JsonLimits)
    ssl_context: ssl.SSLContext | None = None
    """TLS on the port (every connection then takes the transport path)."""


SMALL_REQUEST_BYTES = 64 * 1024
"""A request up to this size needs no share of ``max_pending_bytes`` (each connection may hold
one): status, list, consume, and nearly every init, are served however busy the server is."""
OFFLOAD_PARSE_BYTES = 64 * 1024
"""Requests larger than this are checked and parsed in a worker thread, off the event loop."""
_LINGER_S = 1.0
_DRAIN_LIMIT_BYTES = 16 * 1024 * 1024
_DRAIN_RATE_BYTES_S = 32 * 1024 * 1024
"""After a rejection, the rest of the request is read and dropped for a moment (so that a
client still sending gets its answer rather than a reset): at most _DRAIN_LIMIT_BYTES per
connection, and at most _DRAIN_RATE_BYTES_S across all of them (a token bucket), beyond which
connections are reset at once. Draining without a bound let an attacker make the server read
1 GB/s of junk; a careless client that sent a few MB too many still gets its answer."""
_FAST_READ_BYTES = 64 * 1024
_ACCEPTS_PER_WAKEUP = 64
_EVICTIONS_PER_WAKEUP = 4
"""At max_connections each accept evicts an open connection, whose socket asyncio closes on
the next pass of the loop: a few per wakeup keep the descriptors open near the limit."""
_ACCEPT_PAUSE_S = 0.1
_SCRATCH = bytearray(64 * 1024)  # where bytes to be dropped are read (never looked at)
_EARLY_LIMIT_BYTES = 256 * 1024


class RequestTimeoutError(FramingError):
    """The client did not send a complete request in time."""


class ConnectionLimitError(OperationError):
    """The server dropped this connection to make room for a new one (at max_connections)."""


def _evicted(front: TcpFront) -> ConnectionLimitError:
    return ConnectionLimitError(
        f"The stream manager is at its limit of {front.settings.max_connections} open "
        "connections and dropped this one, the oldest still sending its request; send each "
        "request whole and at once, and retry"
    )


def _too_large(error: MessageTooLargeError) -> MessageTooLargeError:
    return MessageTooLargeError(
        f"{error.message}; send a smaller request, or ask the operator to raise the server's "
        "limit (FRAMEPIPE_MAX_MESSAGE_BYTES)"
    )


def _busy() -> ConnectionLimitError:
    return ConnectionLimitError(
        "The stream manager is receiving too many large requests at once; retry in a moment"
    )


class _Slot:
    """One socket counted against ``max_connections``, released exactly once."""

    __slots__ = ("_front", "evicted", "handed_over", "released")

    def __init__(self, front: TcpFront) -> None:
        self._front = front
        self.released = False
        self.evicted = False  # dropped before its connection was set up
        self.handed_over = False  # its socket belongs to a transport (being set up)
        front.open_connections += 1

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._front.open_connections -= 1
            self._front.slot_released()


class _TokenBucket:
    """``rate`` units per second, at most ``rate`` banked."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._level = rate
        self._at = time.monotonic()

    def take(self, amount: float) -> bool:
        if amount > self.level():
            return False
        self._level -= amount
        return True

    def level(self) -> float:
        now = time.monotonic()
        self._level = min(self.rate, self._level + (now - self._at) * self.rate)
        self._at = now
        return self._level


class _RejectionLog:
    """Rejections logged one by one up to ``per_second``, then counted (a flood of bad requests
    must not become a flood of log lines: each one costs the event loop time too)."""

    def __init__(self, per_second: int = 10) -> None:
        self._allowance = _TokenBucket(per_second)
        self._suppressed = 0

    def rejected(self, request_id: str, error: FramepipeError) -> None:
        if not self._allowance.take(1):
            self._suppressed += 1
            return
        if self._suppressed:
            logger.info("%d more requests rejected (not logged one by one)", self._suppressed)
            self._suppressed = 0
        logger.info("request %s rejected: %s", request_id, error.message)


class _PendingBytes:
    """The shared allowance for large requests' buffers: granted in arrival order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._waiting: deque[tuple[int, Callable[[], None]]] = deque()

    def take(self, size: int, granted: Callable[[], None]) -> bool:
        """Take ``size`` bytes now (True), or queue ``granted`` to be called once they are."""
        if not self._waiting and self.used + size <= self.capacity:
            self.used += size
            return True
        self._waiting.append((size, granted))
        return False

    def cancel(self, granted: Callable[[], None]) -> None:
        for entry in self._waiting:
            if entry[1] == granted:
                self._waiting.remove(entry)
                break
        self._grant()

    def release(self, size: int) -> None:
        self.used -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.capacity:
            size, granted = self._waiting.popleft()
            self.used += size
            granted()


class _Connection(asyncio.BufferedProtocol):
    """One connection on the transport path: read one frame into its own buffer, answer it,
    close. States: header → (waiting for pending bytes) → body → taken; or rejected (the
    answer is sent and whatever else arrives is drained for a moment)."""

    def __init__(self, front: TcpFront, slot: _Slot, initial: bytes = b"") -> None:
        self._front = front
        self._slot = slot
        self._loop = front.loop
        self._initial = initial  # bytes the accept fast path already read
        self._transport: asyncio.Transport | None = None
        self._header = bytearray(HEADER_SIZE)
        self._header_got = 0
        self._expected = 0
        self._body: bytearray | None = None
        self._body_got = 0
        self._early = b""  # body bytes that arrived before the buffer could be granted
        self._reserved = 0  # bytes of _PendingBytes held
        self._waiting = False  # for pending bytes
        self._request_taken = False
        self._draining = False
        self._drained = 0
        self._lost = False
        self._starting = False  # within connection_made
        self._timers: list[asyncio.TimerHandle] = []

    # asyncio.BufferedProtocol callbacks --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports do not subclass asyncio.Transport, hence a cast, not a check)
        self._transport = cast(asyncio.Transport, transport)
        if self._slot.evicted:  # dropped while its transport was being set up: say why
            body = FailureBody.from_error(_evicted(self._front))
            self._transport.write(encode_response(str(uuid.uuid4()), None, body))
            transport.close()
            return
        self._front.reading[self._slot] = self.evict  # (keeps its place: accepted first)
        self._timers.append(
            self._loop.call_later(self._front.settings.read_timeout_s, self._on_read_timeout)
        )
        if self._initial:
            initial, self._initial = self._initial, b""
            self._starting = True
            try:
                self._consume(initial)
            finally:
                self._starting = False

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._request_taken or self._waiting:
            return memoryview(_SCRATCH)  # dropped, or (waiting) kept in _early
        if self._body is not None:
            return memoryview(self._body)[self._body_got :]
        return memoryview(self._header)[self._header_got :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._waiting:  # reading is paused; a read already under way is kept, not lost
            if len(self._early) + nbytes > _EARLY_LIMIT_BYTES:
                self._reject(_busy())  # the transport does not honour the pause: do not buffer
                return
            self._early += bytes(_SCRATCH[:nbytes])
            return
        if self._draining:
            self._drained += nbytes
            if (
                self._drained > _DRAIN_LIMIT_BYTES or not self._front.drain_allowance.take(nbytes)
            ) and self._transport is not None:
                self._transport.abort()  # enough: whoever still sends this is not listening
            return
        if self._request_taken:
            return  # bytes past the one request: dropped
        if self._body is not None:
            self._body_got += nbytes
            if self._body_got == self._expected:
                self._take_request()
            return
        self._header_got += nbytes
        if self._header_got == HEADER_SIZE:
            self._on_header()

    def eof_received(self) -> bool:
        # Keep the write side open for the answer, where the transport can (TLS cannot: its
        # close_notify ends both directions, and asyncio warns if asked to).
        half_open = self._transport is not None and self._transport.can_write_eof()
        if self._draining:
            self.close()
            return False
        if self._request_taken:
            return half_open
        if self._body is not None or self._waiting:
            self._reject(truncated_error(self._body_got + len(self._early), self._expected))
            return half_open
        if self._header_got:
            self._reject(short_header_error(bytes(self._header[: self._header_got])))
            return half_open
        self.close()  # connected and closed without a byte: nothing to answer
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        for timer in self._timers:  # nothing may keep a closed connection alive
            timer.cancel()
        self._timers.clear()
        self._stop_reading_request()
        self._front.lingering.pop(self._slot, None)
        self._front.connections.discard(self)
        self._slot.release()

    # internals --------------------------------------------------------------------------

    def _consume(self, data: bytes) -> None:
        """Bytes read before the transport existed, handled as if the transport had read them."""
        view = memoryview(data)
        while view and not self._request_taken and not self._waiting:
            target = self.get_buffer(len(view))
            count = min(len(target), len(view))
            target[:count] = view[:count]
            view = view[count:]
            self.buffer_updated(count)
        if self._waiting and view:
            self._early = bytes(view)

    def _on_header(self) -> None:
        try:
            size = payload_size(bytes(self._header), self._front.settings.max_message_size)
        except MessageTooLargeError as error:
            self._reject(_too_large(error))
            return
        except FramingError as error:
            self._reject(error)
            return
        self._expected = size
        if size <= SMALL_REQUEST_BYTES or self._front.pending.take(size, self._granted):
            self._reserved = size if size > SMALL_REQUEST_BYTES else 0
            self._body = bytearray(size)
            return
        self._waiting = True  # until _granted: the socket stays unread
        self._pause_reading()

    def _pause_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.pause_reading()
        if self._starting:
            # uvloop starts reading after connection_made returns, whatever was paused in it:
            # pause again once it has.
            self._loop.call_soon(self._pause_again)

    def _pause_again(self) -> None:
        transport = self._transport
        if (
            transport is not None
            and not transport.is_closing()
            and (self._waiting or (self._request_taken and not self._draining))
        ):
            transport.pause_reading()

    def _granted(self) -> None:
        self._waiting = False
        self._reserved = self._expected
        if self._lost or self._request_taken:
            self._release_reserved()
            return
        self._body = bytearray(self._expected)
        early, self._early = self._early, b""
        if early:
            self._consume(early)
        if not self._request_taken and self._transport is not None:
            self._transport.resume_reading()

    def _release_reserved(self) -> None:
        reserved, self._reserved = self._reserved, 0
        if reserved:
            self._front.pending.release(reserved)

    def _stop_reading_request(self) -> None:
        """The request will not be read further: give back what it held or waited for."""
        self._front.reading.pop(self._slot, None)
        if self._waiting:
            self._waiting = False
            self._front.pending.cancel(self._granted)
        if not self._request_taken:  # (a request taken gives it back once parsed)
            self._release_reserved()
        self._body = None
        self._early = b""

    def _take_request(self) -> None:
        assert self._body is not None
        self._request_taken = True
        self._front.reading.pop(self._slot, None)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._pause_reading()
        payload, self._body = bytes(self._body), None
        self._front.spawn(self._serve(payload))

    def _on_read_timeout(self) -> None:
        if self._request_taken:
            return
        if self._body is not None or self._waiting:
            detail = f"{self._body_got + len(self._early)} of {self._expected} payload bytes"
        else:
            detail = f"{self._header_got} bytes"
        self._reject(
            RequestTimeoutError(
                f"No complete request within {self._front.settings.read_timeout_s:g} s "
                f"(received {detail}); send the whole request at once"
            )
        )

    def _reject(self, error: FramepipeError) -> None:
        """Answer a request that could not be read, then close.

        The client may still be sending (an oversize body): closing with unread bytes would
        make the kernel send RST, and the client could lose the answer. So the answer is sent
        with a FIN after it, and the rest of the request is read and dropped for a moment
        before the connection closes (a lingering close).
        """
        self._stop_reading_request()
        self._request_taken = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        request_id = str(uuid.uuid4())
        self._front.rejections.rejected(request_id, error)
        transport = self._transport
        if self._lost or transport is None or transport.is_closing():
            return
        self._draining = True
        transport.write(encode_response(request_id, None, FailureBody.from_error(error)))
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()  # drain into the scratch buffer
        self._front.lingering[self._slot] = self._drop  # the first to go at max_connections
        self._timers.append(self._loop.call_later(_LINGER_S, transport.close))
        self._timers.append(
            self._loop.call_later(self._front.settings.write_timeout_s, transport.abort)
        )

    def evict(self) -> None:
        """Drop this connection (still sending its request) to make room for a new one."""
        self._front.reading.pop(self._slot, None)
        self._reject(_evicted(self._front))
        self._front.lingering.pop(self._slot, None)
        if self._transport is not None:
            self._transport.close()  # no lingering: the room is needed now
        self._slot.release()

    def _drop(self) -> None:
        """Cut a lingering close short (its answer was sent) to make room for a new one."""
        self._front.lingering.pop(self._slot, None)
        if self._transport is not None:
            self._transport.abort()
        self._slot.release()

    async def _serve(self, payload: bytes) -> None:
        request_id = str(uuid.uuid4())
        data = await self._front.answer(request_id, payload, parsed=self._release_reserved)
        self.respond(data)

    def respond(self, data: bytes) -> None:
        transport = self._transport
        if self._lost or transport is None or transport.is_closing():
            return
        transport.write(data)
        transport.close()  # flushes the buffer first
        if transport.get_write_buffer_size():
            # A client that never reads must not pin the response in memory forever.
            self._timers.append(
                self._loop.call_later(self._front.settings.write_timeout_s, transport.abort)
            )

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class TcpFront:
    """A running TCP front end. Create it with :func:`start_server`."""

    def __init__(self, handler: CommandHandler, settings: TcpFrontSettings) -> None:
        if settings.max_connections < 1 or settings.max_concurrent_parses < 1:
            raise ValueError("max_connections and max_concurrent_parses must be >= 1")
        self.handler = handler
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.connections: set[_Connection] = set()
        # Connections (TLS handshakes, transports being set up) still reading their request,
        # by their slot, oldest first, each with what drops it: the candidates for eviction at
        # max_connections.
        self.reading: dict[object, Callable[[], None]] = {}
        # Connections answered with an error and draining for a moment: evicted first.
        self.lingering: dict[object, Callable[[], None]] = {}
        self.open_connections = 0
        self.pending = _PendingBytes(settings.max_pending_bytes)
        self.drain_allowance = _TokenBucket(_DRAIN_RATE_BYTES_S)
        self.rejections = _RejectionLog()
        self._parse_slots = asyncio.Semaphore(settings.max_concurrent_parses)
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: socket.socket | None = None
        self._accepting = False
        self._accept_failing = False
        self._token = settings.auth_token.encode() if settings.auth_token is not None else None
        self.evictions = 0

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
        self._resume_accepting()

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
    # (a partial or malformed frame, a large answer, TLS) goes to the transport-based
    # _Connection.

    def _accept_ready(self) -> None:
        listener = self._listener
        if listener is None:
            return
        evictions = 0
        for _ in range(_ACCEPTS_PER_WAKEUP):  # bounded: the loop has other work too
            full = self.open_connections >= self.settings.max_connections
            if full and not self.reading and not self.lingering:
                self._pause_accepting()  # every open connection is being served: wait for one
                return
            if full and evictions >= _EVICTIONS_PER_WAKEUP:
                return  # let the loop close the evicted sockets first (the listener stays ready)
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
                self._accept_failing = True
                self._pause_accepting()
                self.loop.call_later(_ACCEPT_PAUSE_S, self._resume_accepting)
                return
            if self._accept_failing:
                logger.warning("accepting connections again")
                self._accept_failing = False
            if full:
                self._evict()  # a connection is waiting: the oldest reader makes room for it
                evictions += 1
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._accepted(conn, _Slot(self))

    def _evict(self) -> None:
        """Cut short the oldest lingering close, else drop the oldest connection still reading
        its request (there must be one or the other)."""
        if self.lingering:
            self.lingering.pop(next(iter(self.lingering)))()
            return
        key = next(iter(self.reading))
        evict = self.reading.pop(key)
        self.evictions += 1
        if self.evictions == 1 or self.evictions % 1000 == 0:
            logger.warning(
                "at the limit of %d connections: dropped the oldest one still sending its "
                "request (%d dropped so far)",
                self.settings.max_connections,
                self.evictions,
            )
        evict()

    def _pause_accepting(self) -> None:
        if self._accepting and self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._accepting = False

    def _resume_accepting(self) -> None:
        if not self._accepting and self._listener is not None:
            self.loop.add_reader(self._listener.fileno(), self._accept_ready)
            self._accepting = True

    def slot_released(self) -> None:
        if (
            not self._accepting
            and not self._accept_failing
            and self.open_connections < self.settings.max_connections
        ):
            self._resume_accepting()

    def _accepted(self, conn: socket.socket, slot: _Slot) -> None:
        if self.settings.ssl_context is None:
            try:
                initial = conn.recv(_FAST_READ_BYTES)
            except (BlockingIOError, InterruptedError):
                initial = b""
            except OSError:
                conn.close()
                slot.release()
                return
            if len(initial) >= HEADER_SIZE:
                size = int.from_bytes(initial[:HEADER_SIZE], "big")
                if 0 < size <= self.settings.max_message_size:
                    if len(initial) == HEADER_SIZE + size:
                        self.spawn(self._serve_fast(conn, slot, initial[HEADER_SIZE:]))
                        return
                elif self.drain_allowance.level() < _DRAIN_LIMIT_BYTES:
                    # A bad header while the drain allowance is spent (a flood of them): answer
                    # on the spot, without a transport or a lingering close.
                    self._refuse_at_once(conn, slot, initial[:HEADER_SIZE])
                    return
        else:
            initial = b""  # the bytes are a TLS handshake

        # On the transport path the connection may be evicted from now on (its place among the
        # readers is its accept time), even before its transport exists.
        def evict_pending() -> None:
            slot.evicted = True
            slot.release()
            if not slot.handed_over:  # not a transport's yet: close it now
                with contextlib.suppress(OSError):
                    body = FailureBody.from_error(_evicted(self))
                    conn.send(encode_response(str(uuid.uuid4()), None, body))
                conn.close()

        self.reading[slot] = evict_pending
        self.spawn(self._serve_slow(conn, slot, initial))

    def _refuse_at_once(self, conn: socket.socket, slot: _Slot, header: bytes) -> None:
        error: FramingError
        try:
            payload_size(header, self.settings.max_message_size)
            error = MalformedHeaderError(f"Bad header {header!r}")  # (not reached: it is bad)
        except MessageTooLargeError as refused:
            error = _too_large(refused)
        except FramingError as refused:
            error = refused
        request_id = str(uuid.uuid4())
        self.rejections.rejected(request_id, error)
        with contextlib.suppress(OSError):
            conn.send(encode_response(request_id, None, FailureBody.from_error(error)))
            conn.shutdown(socket.SHUT_WR)
        conn.close()
        slot.release()

    async def _serve_slow(self, conn: socket.socket, slot: _Slot, initial: bytes) -> None:
        if slot.evicted:
            return  # closed when it was evicted
        slot.handed_over = True
        context = self.settings.ssl_context
        if context is None:
            try:
                await self.loop.connect_accepted_socket(
                    lambda: self._connection(slot, initial), conn
                )
            except OSError:
                self.reading.pop(slot, None)
                conn.close()
                slot.release()
            return
        handshake = asyncio.current_task()
        assert handshake is not None

        def evict_handshake() -> None:
            slot.release()
            handshake.cancel()

        self.reading[slot] = evict_handshake  # a stalled handshake may be evicted too
        try:
            await self.loop.connect_accepted_socket(
                lambda: self._connection(slot, b""),
                conn,
                ssl=context,
                ssl_handshake_timeout=self.settings.read_timeout_s,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as error:
            logger.debug("TLS handshake failed: %s", error)
            self.reading.pop(slot, None)
            conn.close()
            slot.release()
        except asyncio.CancelledError:
            self.reading.pop(slot, None)
            conn.close()
            slot.release()
            raise

    def _connection(self, slot: _Slot, initial: bytes) -> _Connection:
        connection = _Connection(self, slot, initial)
        self.connections.add(connection)
        return connection

    async def _serve_fast(self, conn: socket.socket, slot: _Slot, payload: bytes) -> None:
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
            slot.release()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def answer(
        self, request_id: str, payload: bytes, *, parsed: Callable[[], None] | None = None
    ) -> bytes:
        """The response frame for one request payload (never raises, except cancellation).
        ``parsed`` is called once the payload is no longer needed (parsed or refused)."""
        pipeline_id: str | None = None
        body: ResponseBody
        try:
            try:
                command = await self.parse(payload)
            finally:
                if parsed is not None:
                    parsed()
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
            if isinstance(body, ConsumeResultBody) and body.extra_entries:
                # Up to the reply's byte cap of results (megabytes of base64 images): encoded
                # in a thread, so that other clients' requests go on meanwhile.
                return await asyncio.to_thread(encode_response, request_id, pipeline_id, body)
            return encode_response(request_id, pipeline_id, body)
        except Exception as error:  # e.g. a report holding a value JSON cannot carry
            logger.exception("request %s: response could not be serialised", request_id)
            return encode_response(request_id, pipeline_id, FailureBody.internal(error, request_id))

    async def parse(self, payload: bytes) -> Command:
        """The typed command in ``payload``, at a bounded cost: the token's bytes first (no
        parse at all for a request without them), then the JSON's shape, then the parse."""
        self._check_token_bytes(payload)
        if len(payload) <= OFFLOAD_PARSE_BYTES:
            return self._parse(payload)
        async with self._parse_slots:  # parsing megabytes would stall every other connection
            return await asyncio.to_thread(self._parse, payload)

    def _parse(self, payload: bytes) -> Command:
        try:
            check_json_limits(payload, self.settings.json_limits)
        except JsonLimitError as error:
            setting = (
                "FRAMEPIPE_MAX_JSON_ITEMS" if error.limit == "items" else "FRAMEPIPE_MAX_JSON_DEPTH"
            )
            raise JsonLimitError(f"{error.message} ({setting})", limit=error.limit) from None
        document = decode_object(payload)
        self._check_token(document)
        return parse_command(document)

    def _check_token_bytes(self, payload: bytes) -> None:
        """A request that does not contain the token's bytes cannot carry the token (tokens are
        restricted to characters every JSON encoder writes as themselves)."""
        if self._token is not None and self._token not in payload:
            if b'"' + AUTH_TOKEN_KEY.encode() + b'"' in payload:
                raise AuthorisationError(f"The token in field '{AUTH_TOKEN_KEY}' is not valid")
            raise AuthorisationError(
                f"This stream manager requires a shared token in the request field '{AUTH_TOKEN_KEY}'"
            )

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
        self._pause_accepting()
        if self._listener is not None:
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
