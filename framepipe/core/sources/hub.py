"""Which decode process serves which consumer: the sharing policy, and the registry of decoders.

A :class:`SourceHub` is the owner of decode processes in one process (the stream manager, or a
program using :class:`~framepipe.Pipeline` directly). Each consumer it admits gets an entry in a
decoder's status block and ring:

* :meth:`SourceHub.subscribe` — a consumer in this process: a ready
  :class:`~framepipe.core.sources.subscription.Subscription`;
* :meth:`SourceHub.serve` — a consumer in another process (a pipeline worker): a
  :class:`~framepipe.core.sources.subscription.SourceTicket` that process turns into a
  ``Subscription``; :meth:`SourceHub.release` gives the entry back once that consumer is gone.

Decode once, fan out — only where no frame is lost: a live source (and a file replayed in real
time) is shared by every consumer of the same reference, decoder and properties, and a new one
starts at the freshest frame, as with its own connection; a file read as fast as its consumers
go is shared only by consumers that join before its ring exists, and a later one gets a decoder
of its own that starts at frame 1. ``share=False`` gives every consumer its own decoder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from typing import Any

from framepipe.core.sources.backends import BackendOptions, default_backend
from framepipe.core.sources.entities import (
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    DecoderBackendName,
    SourceKind,
)
from framepipe.core.sources.handle import DecoderHandle, RingCharger
from framepipe.core.sources.reference import ParsedReference
from framepipe.core.sources.sizing import DEFAULT_MAX_RING_BYTES, DEFAULT_RING_BUDGET_BYTES
from framepipe.core.sources.status import ConsumerMode
from framepipe.core.sources.subscription import SourceTicket, Subscription
from framepipe.protocol.errors import OperationError

__all__ = ["SourceHub", "SubscriptionRequest", "default_strategies"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubscriptionRequest:
    """What a pipeline asks of one of its sources."""

    source_id: int
    reference: ParsedReference | None  # None: the reference was rejected (see not_found)
    raw_reference: str
    not_found: str | None = None
    max_fps: float | None = None
    filling_strategy: BufferFillingStrategy | None = None
    consumption_strategy: BufferConsumptionStrategy | None = None
    buffer_size: int = 64
    video_source_properties: dict[str, Any] = field(default_factory=dict)
    backend: DecoderBackendName | None = None
    realtime: bool = False  # a file decoded at its own frame rate, like a camera
    # The frame size the owner's RAM admission assumed; a bigger real size is charged again.
    admitted_size: tuple[int, int] | None = None
    # False: the pipeline reads its frames' metadata and size only (passthrough), so the
    # decoder writes no pixels for a frame that no other consumer reads.
    pixels: bool = True

    @property
    def strategies(self) -> tuple[BufferFillingStrategy, BufferConsumptionStrategy]:
        default_filling, default_consumption = default_strategies(self.reference)
        return (
            self.filling_strategy or default_filling,
            self.consumption_strategy or default_consumption,
        )


def default_strategies(
    reference: ParsedReference | None,
) -> tuple[BufferFillingStrategy, BufferConsumptionStrategy]:
    """framepipe's defaults: a file gives every frame (WAIT, LAZY); a live source the
    freshest (DROP_OLDEST, EAGER)."""
    if reference is None or reference.is_file:
        return BufferFillingStrategy.WAIT, BufferConsumptionStrategy.LAZY
    return BufferFillingStrategy.DROP_OLDEST, BufferConsumptionStrategy.EAGER


class SourceHub:
    """Decode processes owned by this process, shared by its consumers (decode once, fan out).

    ``share``: consumers of the same reference (same decoder and properties) share a decode
    process and ring, up to ``max_consumers`` each (see the module docstring for when).
    ``ring_budget_bytes`` bounds each ring (the queue depth shrinks for big frames);
    ``max_ring_bytes`` refuses a source whose ring would be bigger all the same (huge frames);
    ``charge`` is asked to charge a ring bigger than its request's ``admitted_size``.
    """

    def __init__(
        self,
        *,
        share: bool = True,
        max_consumers: int = 4,
        ring_budget_bytes: int = DEFAULT_RING_BUDGET_BYTES,
        backend_options: BackendOptions | None = None,
        stall_timeout_s: float | None = None,
        max_ring_bytes: int | None = DEFAULT_MAX_RING_BYTES,
        charge: RingCharger | None = None,
    ) -> None:
        if max_consumers < 1:
            raise ValueError(f"max_consumers must be >= 1, got {max_consumers}")
        self.share = share
        self.max_consumers = max_consumers
        self.ring_budget_bytes = ring_budget_bytes
        self.max_ring_bytes = max_ring_bytes
        self.charge = charge
        self.backend_options = backend_options or BackendOptions()
        # A decode process silent for longer than any open or read may take is stuck (its loop
        # shows a sign of life between every blocking call, each bounded by these timeouts).
        opts = self.backend_options
        self.stall_timeout_s = stall_timeout_s or max(
            2.0, 2 * (opts.open_timeout_s + opts.read_timeout_s)
        )
        self._supervisor: threading.Thread | None = None
        self._stop_supervisor = threading.Event()
        self._decoders: list[tuple[tuple[Any, ...], DecoderHandle]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        # A hub dropped without close() (or still open at interpreter exit) still stops its
        # decode processes and unlinks what they used.
        self._finalizer = weakref.finalize(self, SourceHub._stop_all, self._decoders, self._pid)

    @staticmethod
    def _stop_all(decoders: list[tuple[tuple[Any, ...], DecoderHandle]], pid: int) -> None:
        if os.getpid() != pid:
            return
        for _, handle in list(decoders):
            with contextlib.suppress(Exception):
                handle.stop()

    @staticmethod
    def _key(request: SubscriptionRequest, backend: DecoderBackendName) -> tuple[Any, ...]:
        reference = request.reference
        target = reference.target if reference is not None else request.raw_reference
        props = tuple(sorted((str(k), repr(v)) for k, v in request.video_source_properties.items()))
        return (target, backend, props, request.realtime)

    # -- admitting consumers --------------------------------------------------------------------

    def serve(self, request: SubscriptionRequest, consumer_pid: int) -> SourceTicket:
        """Admit a consumer living in process ``consumer_pid``; returns its ticket (starts or
        joins the source's decode process)."""
        if os.getpid() != self._pid:
            raise OperationError("a SourceHub cannot be used from a forked child process")
        kind = request.reference.kind if request.reference is not None else SourceKind.FILE
        backend = request.backend or default_backend(kind)
        filling, consumption = request.strategies
        key = self._key(request, backend)
        with self._lock:
            if self._closed:
                raise OperationError("the SourceHub is closed")
            self._decoders[:] = [(k, h) for k, h in self._decoders if not h.closed]
            handle = None
            if self.share and request.reference is not None:
                handle = next((h for k, h in self._decoders if k == key and h.accepting), None)
            if handle is None:
                options = replace(
                    self.backend_options, properties=dict(request.video_source_properties)
                )
                handle = DecoderHandle(
                    request.reference,
                    backend=backend,
                    options=options,
                    max_consumers=self.max_consumers if self.share else 1,
                    buffer_size=request.buffer_size,
                    ring_budget_bytes=self.ring_budget_bytes,
                    realtime=request.realtime,
                    raw_reference=request.raw_reference,
                    error=request.not_found,
                    max_ring_bytes=self.max_ring_bytes,
                    admitted_size=request.admitted_size,
                    charge=self.charge,
                )
                self._decoders.append((key, handle))
            index = handle.add_consumer(
                consumer_pid, filling, request.max_fps, ConsumerMode.RUNNING, pixels=request.pixels
            )
        try:
            handle.start()
        except BaseException:
            self._remove(handle, index, consumer_pid)
            raise
        self._supervise()
        reference = request.reference
        return SourceTicket(
            source_id=request.source_id,
            status_name=handle.status.name,
            index=index,
            reference=handle.masked_reference,
            kind=reference.kind if reference is not None else SourceKind.FILE,
            filling_strategy=filling,
            consumption_strategy=consumption,
            buffer_size=request.buffer_size,
            max_fps=request.max_fps,
        )

    def subscribe(self, request: SubscriptionRequest) -> Subscription:
        """Admit a consumer in this process: a ready subscription (its ``close`` leaves)."""
        ticket = self.serve(request, os.getpid())
        pid = os.getpid()
        try:
            return Subscription(ticket, on_close=lambda: self.release(ticket, pid))
        except BaseException:
            self.release(ticket, pid)
            raise

    def release(self, ticket: SourceTicket, consumer_pid: int) -> None:
        """The consumer of ``ticket`` is gone (or done): free its entry; the last one to leave
        a decoder stops it and unlinks its ring and status block."""
        with self._lock:
            handle = next(
                (
                    h
                    for _, h in self._decoders
                    if not h.closed and h.status.name == ticket.status_name
                ),
                None,
            )
        if handle is not None:
            self._remove(handle, ticket.index, consumer_pid)

    def _remove(self, handle: DecoderHandle, index: int, consumer_pid: int) -> None:
        if handle.remove_consumer(index, consumer_pid):
            handle.stop()
            with self._lock:
                self._decoders[:] = [(k, h) for k, h in self._decoders if h is not handle]

    # -- the decoders ---------------------------------------------------------------------------

    def _supervise(self) -> None:
        """Start the thread that kills a decode process that is alive but stuck (once)."""
        with self._lock:
            if self._supervisor is not None or self._closed:
                return
            self._supervisor = threading.Thread(
                target=self._watch_stalls, name="framepipe-decoder-watch", daemon=True
            )
            self._supervisor.start()

    def _watch_stalls(self) -> None:
        period = min(1.0, self.stall_timeout_s / 4)
        while not self._stop_supervisor.wait(period):
            self.kill_stalled()

    def kill_stalled(self) -> list[DecoderHandle]:
        """Kill every decode process silent for longer than ``stall_timeout_s``; those killed."""
        now = time.monotonic_ns()
        killed = []
        for handle in self.decoders():
            stalled = handle.stalled_for(now)
            if stalled > self.stall_timeout_s:
                logger.warning(
                    "decode process of %s stuck for %.1f s: killing it",
                    handle.masked_reference,
                    stalled,
                )
                handle.kill_stalled(stalled)
                killed.append(handle)
        return killed

    def decoders(self) -> list[DecoderHandle]:
        with self._lock:
            return [h for _, h in self._decoders if not h.closed]

    def is_decoding(self, reference: object) -> bool:
        """A shared decoder that would take one more consumer of ``reference`` runs now."""
        for handle in self.decoders():
            parsed = handle.reference
            if (
                parsed is not None
                and handle.accepting
                and reference in (parsed.original, parsed.target)
            ):
                return True
        return False

    def close(self) -> None:
        """Stop every decode process (idempotent); consumers still reading see their sources
        end."""
        with self._lock:
            self._closed = True
            handles = [h for _, h in self._decoders]
            self._decoders.clear()
            supervisor = self._supervisor
        self._stop_supervisor.set()
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(5.0)
        for handle in handles:
            handle.stop()

    def __enter__(self) -> SourceHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
