"""The inference service process: one per (model, device), shared by every pipeline on it.

Started by the manager (:mod:`framepipe.server.inference.supervisor`, ``spawn`` start method),
it dies with the manager (PR_SET_PDEATHSIG), ignores SIGINT and stops in order on SIGTERM or a
:class:`ServiceShutdown`. It loads the model once into an :class:`InferenceEngine` and
listens on an AF_UNIX address in the abstract namespace; pipeline workers connect with the
authkey the manager gave them (:class:`~framepipe.server.inference.client.RemoteInference`).

Per connection, two threads:

* a reader: ``RegisterChannel`` opens an engine channel with the pipeline's ModelSpec,
  ``Infer`` submits :class:`FrameRef` frames (read in place from rings the service attaches
  by name, through a :class:`RingCache`), ``UnregisterChannel`` closes the channel. It stops
  reading while the connection has ``max_unanswered`` Infer messages without a reply, so a
  peer that stopped reading its replies pushes back on its own socket only;
* a sender: the engine's ``on_done`` (on the channel's own delivery thread) writes the
  ``Inferred`` reply itself when nothing else is being written on the connection, which
  saves a thread hand-off per frame; otherwise it appends the reply to the connection's
  queue and this thread writes it. A peer that stopped reading (a SIGSTOPped worker) blocks
  its own sender and its own channels' deliveries, nothing else: the runners never wait on a
  socket.

The manager's control pipe gets ``ServiceReady`` (or ``ServiceFailed``) once, then answers
each ``ServicePing`` with a ``ServicePong`` carrying the engine's statistics; a service that
stops answering is killed and restarted by the manager at the same address.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from framepipe.core.inference import (
    EngineChannel,
    EngineOptions,
    InferenceEngine,
    Outputs,
    SubmittedFrame,
)
from framepipe.core.processes import die_with_parent
from framepipe.core.processing.registry import ModelRegistry, ProcessingSettings
from framepipe.core.ring_cache import RingCache
from framepipe.protocol.errors import InvalidPayloadError
from framepipe.server.inference import _socket as _service_socket
from framepipe.server.inference.messages import (
    ChannelRegistered,
    Infer,
    Inferred,
    RegisterChannel,
    RemoteError,
    ServiceFailed,
    ServicePing,
    ServicePong,
    ServiceReady,
    ServiceShutdown,
    UnregisterChannel,
)

log = logging.getLogger("framepipe.service")

_TICK_S = 0.1  # the control loop's wake-up: ring-cache sweep, stop flag


@dataclass(frozen=True)
class ServiceOptions:
    """What the manager tells an inference service when it spawns it."""

    parent_pid: int
    model: str
    providers: tuple[str, ...]
    address: str
    authkey: bytes = field(repr=False)
    settings: ProcessingSettings = field(default_factory=ProcessingSettings)
    engine: EngineOptions = field(default_factory=EngineOptions)
    max_unanswered: int = 64  # Infer messages per connection waiting for their reply
    ring_linger_s: float = 2.0
    log_level: int = logging.INFO


class _Peer:
    """One pipeline worker's connection: its channels, a reader and a sender thread."""

    def __init__(self, server: InferenceServer, conn: Connection, number: int) -> None:
        self.server = server
        self.conn = conn
        self.number = number
        self.channels: dict[int, EngineChannel] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._outbox: deque[Inferred | ChannelRegistered] = deque()
        self._unanswered = 0
        self._sending = False  # a thread is writing on the connection (lock held to change)
        self._closed = False
        self.reader = threading.Thread(target=self._read, name=f"svc-read-{number}", daemon=True)
        self.sender = threading.Thread(target=self._send, name=f"svc-send-{number}", daemon=True)

    def start(self) -> None:
        self.sender.start()
        self.reader.start()

    # ---- reading ------------------------------------------------------------------------------

    def _read(self) -> None:
        try:
            while True:
                try:
                    message = self.conn.recv()
                except (EOFError, OSError):
                    return
                if isinstance(message, Infer):
                    self._infer(message)
                elif isinstance(message, RegisterChannel):
                    self._register(message)
                elif isinstance(message, UnregisterChannel):
                    self._unregister(message.channel)
                else:
                    log.warning(
                        "peer %d sent an unexpected %s", self.number, type(message).__name__
                    )
        except Exception:
            log.exception("peer %d: reading failed", self.number)
        finally:
            self.close()

    def _register(self, message: RegisterChannel) -> None:
        self._unregister(message.channel)  # a client registers again after a reconnect
        error = None
        try:
            channel = self.server.engine.open_channel(message.spec, message.name)
        except Exception as exc:
            error = RemoteError.from_exception(exc)
        else:
            with self._lock:
                closed = self._closed
                if not closed:
                    self.channels[message.channel] = channel
            if closed:
                channel.close()
                return
        self._post(ChannelRegistered(message.channel, error))

    def _unregister(self, number: int) -> None:
        with self._lock:
            channel = self.channels.pop(number, None)
        if channel is not None:
            channel.close()

    def _infer(self, message: Infer) -> None:
        with self._lock:
            # a peer that does not read its replies stops being read: the backlog stays bounded
            while self._unanswered >= self.server.options.max_unanswered and not self._closed:
                self._changed.wait()
            if self._closed:
                return
            self._unanswered += 1
        channel = self.channels.get(message.channel)
        try:
            if channel is None:
                raise InvalidPayloadError(
                    f"Infer for channel {message.channel}, which is not registered on this connection"
                )
            frames = [None if ref is None else SubmittedFrame(None, ref) for ref in message.frames]
            channel.submit(frames, lambda outcome: self._done(message, outcome))
        except Exception as exc:
            self._done(message, exc)

    def _done(self, message: Infer, outcome: Outputs | BaseException) -> None:
        if isinstance(outcome, BaseException):
            reply = Inferred(
                message.channel, message.seq, error=RemoteError.from_exception(outcome)
            )
        else:
            reply = Inferred(message.channel, message.seq, outputs=outcome)
        self._reply(reply)

    # ---- sending ------------------------------------------------------------------------------

    def _post(self, reply: Inferred | ChannelRegistered) -> None:
        """Queue a reply (never blocks: the engine's delivery threads call this)."""
        with self._lock:
            if self._closed:
                return
            self._outbox.append(reply)
            self._changed.notify_all()

    def _reply(self, reply: Inferred) -> None:
        """Write ``reply`` on this thread (a channel's delivery thread) when the connection is
        free and nothing is queued before it; else queue it for the sender."""
        with self._lock:
            if self._closed:
                return
            if self._sending or self._outbox:
                self._outbox.append(reply)
                self._changed.notify_all()
                return
            self._sending = True
        self._write(reply)

    def _send(self) -> None:
        while True:
            with self._lock:
                while (not self._outbox or self._sending) and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                reply = self._outbox.popleft()
                self._sending = True
            if not self._write(reply):
                return

    def _write(self, reply: Inferred | ChannelRegistered) -> bool:
        """Write one reply (``_sending`` set by the caller); False if the connection broke."""
        try:
            self.conn.send(reply)
        except (OSError, ValueError):
            with self._lock:
                self._sending = False
            self.close()
            return False
        with self._lock:
            self._sending = False
            # wake only who waits for this: the sender when replies queued meanwhile, the
            # reader when it stopped at max_unanswered (a wake-up per frame costs CPU)
            room = False
            if isinstance(reply, Inferred):
                self._unanswered -= 1
                room = self._unanswered + 1 >= self.server.options.max_unanswered
            if self._outbox or room:
                self._changed.notify_all()
        return True

    # ---- ending -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the peer's channels and connection (idempotent; any thread)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._outbox.clear()
            self._changed.notify_all()
            channels = list(self.channels.values())
            self.channels.clear()
        _service_socket.shut_down(self.conn)
        for channel in channels:
            channel.close()
        with contextlib.suppress(OSError):
            self.conn.close()
        self.server.forget(self)


class InferenceServer:
    """The engine behind a listening socket: accepts pipeline workers, one :class:`_Peer` each."""

    def __init__(self, engine: InferenceEngine, options: ServiceOptions) -> None:
        self.engine = engine
        self.options = options
        self._listener = _service_socket.listen(options.address)
        self._lock = threading.Lock()
        self._peers: set[_Peer] = set()
        self._count = 0
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name="svc-accept", daemon=True)

    def start(self) -> None:
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # the listener was shut down
            # the handshake may stall on a stopped peer: never in the accepting thread
            threading.Thread(
                target=self._welcome, args=(sock,), name="svc-handshake", daemon=True
            ).start()

    def _welcome(self, sock: socket.socket) -> None:
        try:
            conn = _service_socket.accept(sock, self.options.authkey)
        except Exception as exc:
            log.warning("a connection failed to authenticate: %s", exc)
            return
        with self._lock:
            if self._closed:
                conn.close()
                return
            self._count += 1
            peer = _Peer(self, conn, self._count)
            self._peers.add(peer)
        peer.start()

    def forget(self, peer: _Peer) -> None:
        with self._lock:
            self._peers.discard(peer)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._peers)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            peers = list(self._peers)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for peer in peers:
            peer.close()


def service_main(conn: Connection, options: ServiceOptions) -> None:
    """Entry point of the inference service process (a ``spawn`` context target)."""
    started = time.monotonic()
    die_with_parent(options.parent_pid)
    logging.basicConfig(
        level=options.log_level,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signo, _frame: stop.set())
    rings = RingCache(linger_s=options.ring_linger_s)
    engine: InferenceEngine | None = None
    server: InferenceServer | None = None
    try:
        try:
            registry = ModelRegistry.from_settings(options.settings)
            engine = InferenceEngine(
                options.model,
                providers=options.providers,
                registry=registry,
                options=options.engine,
                resolver=rings,
            )
            server = InferenceServer(engine, options)
        except Exception as exc:
            log.debug("the inference service could not start", exc_info=True)
            conn.send(ServiceFailed(RemoteError.from_exception(exc)))
            return
        server.start()
        conn.send(
            ServiceReady(
                pid=os.getpid(),
                provider=engine.provider,
                batching=engine.batching,
                concurrency=engine.concurrency,
                load_s=time.monotonic() - started,
            )
        )
        _control_loop(conn, server, rings, stop)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the manager is gone; PR_SET_PDEATHSIG would end us anyway
    finally:
        if server is not None:
            server.close()
        if engine is not None:
            engine.close()
        rings.close()
        with contextlib.suppress(OSError):
            conn.close()


def _control_loop(
    conn: Connection, server: InferenceServer, rings: RingCache, stop: threading.Event
) -> None:
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLHUP)
    while not stop.is_set():
        rings.sweep()
        if not poller.poll(_TICK_S * 1000):
            continue
        try:
            message = conn.recv()
        except EOFError:
            return  # the manager closed its end
        if isinstance(message, ServicePing):
            conn.send(
                ServicePong(
                    message.n,
                    server.engine.statistics(),
                    connections=server.connections,
                    rings=len(rings.attached()),
                )
            )
        elif isinstance(message, ServiceShutdown):
            return
        else:
            log.warning("the manager sent an unexpected %s", type(message).__name__)
