"""A pipeline worker's side of the inference service: :class:`RemoteInference`.

It implements :class:`~framepipe.core.inference.Inference` over one connection to
the service of a model, so a :class:`~framepipe.core.pipeline.Pipeline` codes the same
against the in-process engine and the service::

    inference = RemoteInference(address)            # a ServiceAddress from the manager
    channel = inference.open_channel(spec, name="pipeline-1")
    channel.submit([SubmittedFrame(view, FrameRef(ring.name, slot, seq))], on_done)
    ...
    inference.close()

Frames go as :class:`FrameRef` only (the service reads the ring slot in place): the caller
keeps its ring lease until ``on_done`` is called.

One thread owns the connection: it connects (with backoff), registers the channels again
after a reconnect, and reads ``Inferred`` replies. Each channel has a delivery thread that
calls ``on_done`` in submission order. When the service goes away (crash, kill, hang ended
by the manager), every submit in flight fails with :class:`InferenceUnavailableError`, in
order, and so do submits made while it is away; the client reconnects as soon as the service
listens again at the same address. Each loss is a :class:`ServiceGap` in the channel's
:attr:`~RemoteChannel.state`, with its start and end, for the pipeline's status report.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from framepipe.core.inference import (
    ChannelState,
    FrameRef,
    Inference,
    InferenceUnavailableError,
    OnDone,
    Outputs,
    ServiceGap,
    SubmittedFrame,
)
from framepipe.core.processing.spec import ModelSpec
from framepipe.protocol.errors import InvalidPayloadError, OperationError
from framepipe.server.inference import _socket as _service_socket
from framepipe.server.inference.messages import (
    ChannelRegistered,
    Infer,
    Inferred,
    RegisterChannel,
    ServiceAddress,
    UnregisterChannel,
)

__all__ = ["ClientState", "RemoteChannel", "RemoteInference"]

log = logging.getLogger("framepipe.inference_client")

_GAPS_KEPT = 16


@dataclass(frozen=True, slots=True)
class ClientState:
    connected: bool
    address: str
    connects: int  # successful connections so far
    gap_count: int
    gaps: tuple[ServiceGap, ...]  # the most recent ones; the last may still be open


class _Deliveries:
    """Callbacks run one at a time, in the order queued, on a thread of their own."""

    def __init__(self, name: str) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: deque[tuple[OnDone, Outputs | BaseException]] = deque()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"deliver-{name}", daemon=True)
        self._thread.start()

    def put(self, on_done: OnDone, outcome: Outputs | BaseException) -> None:
        with self._lock:
            self._queue.append((on_done, outcome))
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return
                on_done, outcome = self._queue.popleft()
            try:
                on_done(outcome)
            except Exception:
                log.exception("an inference on_done callback raised")

    def close(self, timeout: float) -> None:
        """Deliver what is queued, then stop (waits up to ``timeout`` unless called from a
        callback)."""
        with self._lock:
            self._closed = True
            self._ready.notify()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


@dataclass(eq=False, slots=True)
class _Channel:
    number: int
    name: str
    spec: ModelSpec
    deliveries: _Deliveries
    pending: dict[int, OnDone] = field(default_factory=dict)  # seq -> on_done, in order
    next_seq: int = 0
    registered: bool = False  # the first registration was answered
    error: BaseException | None = None  # the service refused the channel
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    closed: bool = False


class RemoteChannel:
    """One pipeline's channel on the inference service (see :class:`InferenceChannel`)."""

    def __init__(self, client: RemoteInference, channel: _Channel) -> None:
        self._client = client
        self._channel = channel

    @property
    def name(self) -> str:
        return self._channel.name

    @property
    def state(self) -> ChannelState:
        return self._client._channel_state(self._channel)

    def submit(self, frames: Sequence[SubmittedFrame | None], on_done: OnDone) -> None:
        refs: list[FrameRef | None] = []
        for i, frame in enumerate(frames):
            if frame is not None and frame.ref is None:
                raise InvalidPayloadError(
                    f"source {i}: the inference service reads frames from their ring, "
                    "so a submitted frame needs its FrameRef"
                )
            refs.append(None if frame is None else frame.ref)
        self._client._submit(self._channel, tuple(refs), on_done)

    def close(self) -> None:
        self._client._close_channel(self._channel)

    def __enter__(self) -> RemoteChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteInference:
    """The inference service of one model, seen from a pipeline worker (module docstring)."""

    def __init__(
        self,
        address: ServiceAddress,
        *,
        open_timeout_s: float = 30.0,
        close_timeout_s: float = 5.0,
        retry_max_s: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.address = address
        self.open_timeout_s = open_timeout_s
        self.close_timeout_s = close_timeout_s
        self.retry_max_s = retry_max_s
        self._clock = clock
        # Lock order: _send_lock, then _lock. Sends hold only _send_lock (a send may block
        # on a service that stopped reading), so the receiver, which needs _lock, never waits
        # behind a blocked send.
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._conn: Connection | None = None
        self._channels: dict[int, _Channel] = {}
        self._next_channel = 0
        self._connects = 0
        self._gaps: deque[ServiceGap] = deque(maxlen=_GAPS_KEPT)
        self._gap_count = 0
        self._last_failure = "not connected yet"
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"inference-{address.model}", daemon=True
        )
        self._thread.start()

    # ---- public -------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._conn is not None

    def state(self) -> ClientState:
        with self._lock:
            return ClientState(
                connected=self._conn is not None,
                address=self.address.printable,
                connects=self._connects,
                gap_count=self._gap_count,
                gaps=tuple(self._gaps),
            )

    def open_channel(self, spec: ModelSpec, name: str) -> RemoteChannel:
        """Register a channel; waits up to ``open_timeout_s`` for the service (then
        InferenceUnavailableError) and raises what the service said if it refused the spec."""
        if spec.model != self.address.model:
            raise InvalidPayloadError(
                f"pipeline {name!r} asks for model {spec.model!r}; this service runs {self.address.model!r}"
            )
        deadline = time.monotonic() + self.open_timeout_s
        with self._send_lock:
            with self._lock:
                if self._stop.is_set():
                    raise OperationError("this inference client is closed")
                number = self._next_channel
                self._next_channel += 1
                channel = _Channel(number, name, spec, _Deliveries(f"{name}"))
                self._channels[number] = channel
                conn = self._conn
            if conn is not None:  # else it is registered when the connection comes
                self._send(conn, RegisterChannel(number, name, spec))
        with self._lock:
            while not channel.registered and not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            refused, registered = channel.error, channel.registered
            if refused is not None or not registered:
                del self._channels[number]
        if refused is not None or not registered:
            channel.deliveries.close(self.close_timeout_s)
            if refused is not None:
                raise refused
            raise InferenceUnavailableError(
                f"the inference service of {self.address.model!r} ({self.address.printable}) "
                f"did not answer within {self.open_timeout_s:g} s: {self._last_failure}"
            )
        return RemoteChannel(self, channel)

    def close(self) -> None:
        """Close every channel and the connection (idempotent)."""
        if self._stop.is_set():
            return
        with self._lock:
            channels = list(self._channels.values())
        for channel in channels:
            self._close_channel(channel)
        with self._lock:
            self._stop.set()
            conn = self._conn
            self._changed.notify_all()
        if conn is not None:
            _service_socket.shut_down(conn)
        if self._thread is not threading.current_thread():
            self._thread.join(self.close_timeout_s + _service_socket.HANDSHAKE_TIMEOUT_S)

    def __enter__(self) -> RemoteInference:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- channels -----------------------------------------------------------------------------

    def _submit(self, ch: _Channel, refs: tuple[FrameRef | None, ...], on_done: OnDone) -> None:
        with self._send_lock:  # held from the seq to the send: sent in seq order
            with self._lock:
                if ch.closed:
                    raise OperationError(f"inference channel {ch.name!r} is closed")
                seq = ch.next_seq
                ch.next_seq += 1
                ch.submitted += 1
                conn = self._conn
                if conn is None:
                    # queued behind the failures of the submits in flight: order holds
                    ch.failed += 1
                    ch.deliveries.put(on_done, self._unavailable())
                    return
                ch.pending[seq] = on_done
            self._send(conn, Infer(ch.number, seq, refs))

    def _send(self, conn: Connection, message: object) -> None:
        """Send (``_send_lock`` held); a broken connection is shut down so that the receiver
        fails everything in flight, in order."""
        try:
            conn.send(message)
        except (OSError, ValueError) as exc:
            self._last_failure = f"sending failed: {exc}"
            _service_socket.shut_down(conn)

    def _close_channel(self, ch: _Channel) -> None:
        deadline = time.monotonic() + self.close_timeout_s
        with self._lock:
            if ch.closed:
                return
            ch.closed = True
            # the service may still read the frames in flight: let them come back first
            while ch.pending and self._conn is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            self._fail_pending_locked(
                ch, OperationError(f"inference channel {ch.name!r} was closed")
            )
            self._channels.pop(ch.number, None)
            conn = self._conn
        if conn is not None:
            with self._send_lock:
                self._send(conn, UnregisterChannel(ch.number))
        ch.deliveries.close(self.close_timeout_s)

    def _fail_pending_locked(self, ch: _Channel, error: BaseException) -> None:
        for seq in sorted(ch.pending):
            ch.failed += 1
            ch.deliveries.put(ch.pending[seq], error)
        ch.pending.clear()

    def _channel_state(self, ch: _Channel) -> ChannelState:
        with self._lock:
            return ChannelState(
                name=ch.name,
                connected=self._conn is not None,
                submitted=ch.submitted,
                completed=ch.completed,
                failed=ch.failed,
                in_flight=len(ch.pending),
                gap_count=self._gap_count,
                gaps=tuple(self._gaps),
            )

    def _unavailable(self) -> InferenceUnavailableError:
        return InferenceUnavailableError(
            f"the inference service of {self.address.model!r} ({self.address.printable}) "
            f"is unavailable: {self._last_failure}"
        )

    # ---- the connection thread ----------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.01
        while not self._stop.is_set():
            try:
                conn = _service_socket.connect(self.address.address, self.address.authkey)
            except Exception as exc:  # refused, timed out, authentication failed
                self._last_failure = f"cannot connect: {type(exc).__name__}: {exc}"
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.retry_max_s)
                continue
            backoff = 0.01
            if not self._connected(conn):
                conn.close()
                return
            reason = self._receive(conn)
            self._disconnected(conn, reason)

    def _connected(self, conn: Connection) -> bool:
        with self._send_lock:
            with self._lock:
                if self._stop.is_set():
                    return False
                channels = list(self._channels.values())
            for ch in channels:
                # sent before the connection is published: no Infer can overtake them
                self._send(conn, RegisterChannel(ch.number, ch.name, ch.spec))
            return self._publish(conn)

    def _publish(self, conn: Connection) -> bool:
        with self._lock:
            if self._stop.is_set():
                return False
            self._conn = conn
            self._connects += 1
            if self._gaps and self._gaps[-1].ended_at is None:
                gap = self._gaps.pop()
                self._gaps.append(ServiceGap(gap.started_at, self._clock(), gap.reason))
            self._changed.notify_all()
        log.info("connected to the inference service of %r", self.address.model)
        return True

    def _receive(self, conn: Connection) -> str:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError) as exc:
                return f"connection lost ({type(exc).__name__})"
            except Exception as exc:  # an unreadable message: the stream cannot be trusted
                log.exception("unreadable message from the inference service")
                return f"unreadable message: {exc}"
            if isinstance(message, Inferred):
                self._resolve(message)
            elif isinstance(message, ChannelRegistered):
                with self._lock:
                    ch = self._channels.get(message.channel)
                    if ch is not None:
                        ch.registered = True
                        if message.error is not None:
                            ch.error = message.error.to_exception()
                        self._changed.notify_all()
            else:
                log.warning("the inference service sent an unexpected %s", type(message).__name__)

    def _resolve(self, message: Inferred) -> None:
        with self._lock:
            ch = self._channels.get(message.channel)
            on_done = None if ch is None else ch.pending.pop(message.seq, None)
            if ch is None or on_done is None:
                return  # a channel closed meanwhile, its submits failed already
            if message.error is not None:
                ch.failed += 1
                outcome: Outputs | BaseException = message.error.to_exception()
            else:
                ch.completed += 1
                outcome = message.outputs if message.outputs is not None else []
            ch.deliveries.put(on_done, outcome)
            if not ch.pending:
                self._changed.notify_all()

    def _disconnected(self, conn: Connection, reason: str) -> None:
        with self._lock:
            self._conn = None
            self._last_failure = reason
            if not self._stop.is_set():
                self._gap_count += 1
                self._gaps.append(ServiceGap(self._clock(), None, reason))
            error = self._unavailable()
            for ch in self._channels.values():
                self._fail_pending_locked(ch, error)
            self._changed.notify_all()
        with contextlib.suppress(OSError):
            conn.close()
        if not self._stop.is_set():
            log.warning("lost the inference service of %r: %s", self.address.model, reason)


if TYPE_CHECKING:  # mypy checks that the client implements what a pipeline codes against

    def _backend(remote: RemoteInference) -> Inference:
        return remote
