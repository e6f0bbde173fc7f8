"""Owner side of decode processes: ``SourceHub``, ``DecoderHandle`` and ``Subscription``.

A :class:`SourceHub` starts one decode process per distinct video source and hands out
:class:`Subscription` s — one consumer each, with its own queue, filling strategy,
consumption strategy, max_fps and mute/pause state. Two subscriptions to the same
``video_reference`` (same decoder and properties) share one decode process and one ring:
the source is decoded once and fanned out (``share=False`` gives each its own decoder).
A process that runs several pipelines (the manager, a worker) holds one hub and passes it
to each :class:`~framepipe.core.pipeline.Pipeline`.

The hub owns every ring it creates (names carry this process's pid) and unlinks it when the
decoder's last subscription closes; decode processes only attach. Each decode process has a
control pipe (commands and small events, never frames) and a listener thread here that
records its state changes and statistics.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np

from framepipe.core.ring import FrameConsumer, FrameRing, Lease
from framepipe.core.sources.backends import DEFAULT_BACKEND, BackendOptions
from framepipe.core.sources.entities import (
    SEVERITY_INFO,
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    DecoderBackendName,
    DecoderStats,
    DropReason,
    FrameMetadata,
    SourceKind,
    SourceProperties,
    SourceReport,
    StatusUpdate,
    StreamInfo,
    StreamState,
    state_update,
)
from framepipe.core.sources.launcher import DecodeProcess, decode_context
from framepipe.core.sources.messages import (
    AddConsumer,
    AttachRing,
    Command,
    ConsumerMode,
    Opened,
    RemoveConsumer,
    SetConsumerMode,
    StateChanged,
    StatsUpdate,
    Terminate,
)
from framepipe.core.sources.multiplexer import LeasedFrame
from framepipe.core.sources.reference import ParsedReference
from framepipe.core.sources.worker import PTS_NONE, DecoderConfig, run_decoder
from framepipe.protocol.errors import OperationError

logger = logging.getLogger(__name__)

DEFAULT_RING_BUDGET_BYTES = 128 * 1024 * 1024
_EVENTS_KEPT = 256
_LEASES_PER_CONSUMER = 3  # being processed + multiplexer mailbox + DROP_OLDEST mailbox
_STOP_TIMEOUT_S = 3.0
_RESTART_BACKOFF_S = 0.1


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


def ring_geometry(
    width: int,
    height: int,
    buffer_size: int,
    max_consumers: int = 1,
    ring_budget_bytes: int = DEFAULT_RING_BUDGET_BYTES,
) -> tuple[int, int]:
    """(queue depth, slots) of the ring a decoder of ``width`` x ``height`` BGR frames gets.

    The queue depth is ``buffer_size`` (the reference's ``decoding_buffer_size``), shrunk so
    the ring stays near ``ring_budget_bytes``; slots = depth x consumers + leases in flight + 1
    (the writer never waits for a slot under WAIT). A Pipeline's private hub has one consumer
    per ring; a shared :class:`SourceHub` has ``max_consumers`` (default 4).
    """
    frame_bytes = max(1, width * height * 3)
    fit = ring_budget_bytes // frame_bytes
    leases = max_consumers * _LEASES_PER_CONSUMER
    depth = max(1, min(buffer_size, (fit - leases - 1) // max_consumers))
    return depth, FrameRing.required_slots(depth, max_consumers, _LEASES_PER_CONSUMER)


def ring_bytes(
    width: int,
    height: int,
    buffer_size: int,
    max_consumers: int = 1,
    ring_budget_bytes: int = DEFAULT_RING_BUDGET_BYTES,
) -> int:
    """Shared-memory bytes of that ring (headers included): for RAM budgets."""
    depth, slots = ring_geometry(width, height, buffer_size, max_consumers, ring_budget_bytes)
    return FrameRing.segment_size(slots, (height, width, 3), np.uint8, max_consumers, depth)


def default_strategies(
    reference: ParsedReference | None,
) -> tuple[BufferFillingStrategy, BufferConsumptionStrategy]:
    """The reference's defaults: files every frame (WAIT, LAZY); live the freshest (DROP_OLDEST, EAGER)."""
    if reference is None or reference.is_file:
        return BufferFillingStrategy.WAIT, BufferConsumptionStrategy.LAZY
    return BufferFillingStrategy.DROP_OLDEST, BufferConsumptionStrategy.EAGER


class DecoderHandle:
    """One decode process, its ring and its consumers, seen from the owning process."""

    _ids = itertools.count()

    def __init__(
        self,
        reference: ParsedReference | None,
        *,
        backend: DecoderBackendName,
        options: BackendOptions,
        max_consumers: int,
        buffer_size: int,
        ring_budget_bytes: int,
        raw_reference: str = "",
        error: str | None = None,
    ) -> None:
        self.decoder_id = next(self._ids)
        self.reference = reference
        self.masked_reference = reference.masked if reference is not None else raw_reference
        self.backend = backend
        self.options = options
        self.max_consumers = max_consumers
        self.buffer_size = buffer_size
        self.ring_budget_bytes = ring_budget_bytes
        self.state = StreamState.NOT_STARTED
        self.info: StreamInfo | None = None
        self.properties: SourceProperties | None = None
        self.decode_start_ns = 0
        self.stats = DecoderStats()
        self.consumer_published: dict[int, int] = {}
        self.consumer_dropped: dict[int, dict[str, int]] = {}
        self.last_error: str | None = error
        self.ring: FrameRing | None = None
        self.ring_ready = threading.Event()
        self.subscriptions: list[Subscription] = []
        self._history: deque[StatusUpdate] = deque(maxlen=_EVENTS_KEPT)
        self._lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._conn: Connection | None = None
        self._process: BaseProcess | None = None
        self._listener: threading.Thread | None = None
        self._closed = False
        self._halt = threading.Event()
        self._base = DecoderStats()  # totals of earlier decode processes (after restarts)
        self.decoder_restarts = 0
        self.created_at = datetime.now()
        if error is not None:
            self._set_state(StreamState.ERROR, error)

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self.state is not StreamState.NOT_STARTED or self.reference is None:
            return
        self._set_state(StreamState.INITIALISING)
        with self._lock:
            self._spawn(restart=False)

    def _spawn(self, restart: bool) -> None:
        """Start a decode process (under the lock). A restart attaches it to the existing
        ring and consumers straight away and keeps retrying the stream until it opens."""
        assert self.reference is not None
        context = decode_context()
        parent_conn, child_conn = context.Pipe(duplex=True)
        config = DecoderConfig(
            decoder_id=self.decoder_id,
            reference=self.reference,
            backend=self.backend,
            options=self.options,
            retry_open=restart,
            first_frame_id=self._base.frames_decoded + self.stats.frames_decoded + 1
            if restart
            else 1,
        )
        process = DecodeProcess(
            target=run_decoder,
            args=(config, child_conn),
            name=f"framepipe-decode-{self.decoder_id}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        self._conn = parent_conn
        self._process = process
        if restart and self.ring is not None:
            for subscription in self.subscriptions:
                subscription._announce()
            self.send(AttachRing(self.ring.name))
        self._listener = threading.Thread(
            target=self._listen,
            args=(parent_conn, process),
            name=f"framepipe-decode-{self.decoder_id}-events",
            daemon=True,
        )
        self._listener.start()

    def _set_state(self, new: StreamState, message: str = "", at: datetime | None = None) -> None:
        with self._lock:
            previous = self.state
            if previous is new:
                return
            self.state = new
            if new is StreamState.ERROR and message:
                self.last_error = message
            self._history.append(
                state_update(self.decoder_id, previous, new, at=at, message=message)
            )

    def history(self) -> list[StatusUpdate]:
        with self._lock:
            return list(self._history)

    @property
    def pid(self) -> int | None:
        """The current decode process's pid (None before it starts)."""
        process = self._process
        return process.pid if process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def accepting(self) -> bool:
        """Can take one more subscription (shared decoding)."""
        with self._lock:
            return (
                not self._closed
                and not self.state.is_final
                and self.state is not StreamState.TERMINATING
                and len(self.subscriptions) < self.max_consumers
            )

    def send(self, command: Command) -> None:
        conn = self._conn
        if conn is None:
            return
        with self._send_lock, contextlib.suppress(OSError, BrokenPipeError, EOFError):
            conn.send(command)

    # -- events from the decode process -----------------------------------------------------

    def _listen(self, conn: Connection, process: BaseProcess) -> None:
        while True:
            try:
                event = conn.recv()
            except (EOFError, OSError):
                break
            try:
                self._on_event(event)
            except Exception:
                logger.exception("decode process %s: handling %r failed", self.decoder_id, event)
        process.join(_STOP_TIMEOUT_S)
        restart = False
        with self._lock:
            if not self.state.is_final and not self._closed:
                reason = f"decode process exited unexpectedly (exit code {process.exitcode})"
                live = self.reference is not None and self.reference.is_live
                if live and self.ring is not None:
                    # A crashed decoder of a live source is replaced, like a dropped stream.
                    restart = True
                    self.decoder_restarts += 1
                    self.last_error = reason
                    self._set_state(StreamState.RESTARTING, f"{reason}; starting a new one")
                else:
                    self._set_state(StreamState.ERROR, reason)
        if restart:
            backoff = min(_RESTART_BACKOFF_S * 2 ** min(self.decoder_restarts - 1, 5), 5.0)
            if self._halt.wait(backoff):
                return
            with self._lock:
                if self._closed:
                    return
                conn.close()
                with contextlib.suppress(ValueError):
                    process.close()
                self._base = DecoderStats(
                    frames_decoded=self._base.frames_decoded + self.stats.frames_decoded,
                    reconnects=self._base.reconnects + self.stats.reconnects,
                    cpu_s=self._base.cpu_s + self.stats.cpu_s,
                )
                self.stats = DecoderStats()
                self._spawn(restart=True)
            return
        self.ring_ready.set()  # nobody waits for a ring that will never come

    def _on_event(self, event: object) -> None:
        if isinstance(event, StateChanged):
            self._set_state(event.new, event.message, datetime.fromtimestamp(event.at_ns / 1e9))
        elif isinstance(event, StatsUpdate):
            with self._lock:
                self.stats = event.stats
                self.consumer_published.update(event.published)
                self.consumer_dropped.update(event.dropped)
                if event.stats.last_error:
                    self.last_error = event.stats.last_error
        elif isinstance(event, Opened):
            self._on_opened(event)

    def _on_opened(self, event: Opened) -> None:
        info = event.info
        with self._lock:
            first = self.info is None
            self.info = info
            if not first:
                return
            reference = self.reference
            assert reference is not None
            self.decode_start_ns = event.decode_start_ns
            self.properties = SourceProperties(
                width=info.width,
                height=info.height,
                total_frames=info.total_frames,
                is_file=reference.is_file,
                fps=info.fps,
                is_reconnectable=reference.is_reconnectable if reference.is_live else None,
                timestamp_created=self.created_at,
            )
            self._history.append(
                StatusUpdate(
                    datetime.now(),
                    SEVERITY_INFO,
                    "VIDEO_CONSUMPTION_STARTED",
                    {"source_id": self.decoder_id},
                    "video_source",
                )
            )
            consumers = self.max_consumers
            depth, slots = ring_geometry(
                info.width, info.height, self.buffer_size, consumers, self.ring_budget_bytes
            )
            try:
                self.ring = FrameRing.create(
                    slots,
                    (info.height, info.width, 3),
                    np.uint8,
                    consumers,
                    queue_depth=depth,
                    tag="src",
                )
            except Exception as exc:
                self.send(Terminate())
                self._set_state(StreamState.ERROR, f"could not create the frame ring: {exc}")
                return
            # Consumers first, then the ring: the decoder starts with every consumer known,
            # so none misses the first frames.
            for subscription in list(self.subscriptions):
                subscription._attach(self.ring)
            self.send(AttachRing(self.ring.name))
        self.ring_ready.set()

    # -- consumers --------------------------------------------------------------------------

    def add(self, subscription: Subscription) -> None:
        with self._lock:
            self.subscriptions.append(subscription)
            if self.ring is not None:
                subscription._attach(self.ring)

    def remove(self, subscription: Subscription) -> bool:
        """Detach one subscription; True when it was the last one (the decoder should stop)."""
        with self._lock:
            if subscription in self.subscriptions:
                self.subscriptions.remove(subscription)
            return not self.subscriptions

    def stop(self) -> None:
        """Stop the decode process (after its subscriptions closed) and unlink the ring."""
        with self._lock:
            if self._closed:
                return
            self._closed = True  # from here on no new decode process is spawned
            process, listener = self._process, self._listener
        self._halt.set()
        if process is not None:
            if process.is_alive():
                self.send(Terminate())
                process.join(_STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join(_STOP_TIMEOUT_S)
        if listener is not None:
            listener.join(_STOP_TIMEOUT_S)
        if self._conn is not None:
            self._conn.close()
        if process is not None:
            with contextlib.suppress(ValueError):
                process.close()
        with self._lock:
            if not self.state.is_final:
                self._set_state(StreamState.ENDED)
            ring, self.ring = self.ring, None
        if ring is not None:
            ring.close()
            ring.unlink()


class Subscription:
    """One consumer of a source: ``take()`` frames in place, ``release()`` them after use."""

    def __init__(
        self,
        request: SubscriptionRequest,
        handle: DecoderHandle,
        filling: BufferFillingStrategy,
        consumption: BufferConsumptionStrategy,
    ) -> None:
        self.source_id = request.source_id
        self.request = request
        self.handle = handle
        self.filling_strategy = filling
        self._consumption = consumption
        self._consumer: FrameConsumer | None = None
        self._mode = ConsumerMode.RUNNING
        self._delivered = 0
        self._closed = False
        self._dropped_before_close: dict[str, int] = {}
        self._final_ring_info = (0, 0, 0)  # slots, free slots, bytes when it closed

    # -- wiring (called by the handle) ------------------------------------------------------

    def _attach(self, ring: FrameRing) -> None:
        if self._consumer is not None or self._closed:
            return
        consumer = FrameConsumer(ring, eager=self._consumption is BufferConsumptionStrategy.EAGER)
        self._consumer = consumer
        self._announce()

    def _announce(self) -> None:
        """Tell the decode process how this consumer wants its frames."""
        consumer = self._consumer
        if consumer is not None:
            self.handle.send(
                AddConsumer(consumer.index, self.filling_strategy, self.request.max_fps, self._mode)
            )

    # -- frames -----------------------------------------------------------------------------

    @property
    def consumption_strategy(self) -> BufferConsumptionStrategy:
        return self._consumption

    def take(self, timeout: float) -> LeasedFrame | None:
        consumer = self._consumer
        if consumer is None:
            if self._closed or not self.handle.ring_ready.wait(timeout):
                return None
            consumer = self._consumer
            if consumer is None:
                return None
        lease = consumer.lease(timeout)
        if lease is None:
            return None
        self._delivered += 1
        return LeasedFrame(
            lease.array, self._metadata(lease), lease.slot, lease.descriptor.seq, lease
        )

    def _metadata(self, lease: Lease) -> FrameMetadata:
        d = lease.descriptor
        handle = self.handle
        pts = None if d.pts == PTS_NONE else d.pts / 1e6
        is_file = handle.reference is not None and handle.reference.is_file
        if is_file and pts is not None:
            stamp_ns = handle.decode_start_ns + int(pts * 1e9)
        else:
            stamp_ns = d.capture_ns
        height, width = lease.array.shape[:2]
        info = handle.info
        return FrameMetadata(
            frame_id=d.frame_id,
            frame_timestamp=datetime.fromtimestamp(stamp_ns / 1e9),
            source_id=self.source_id,
            capture_ns=d.capture_ns,
            pts=pts,
            width=width,
            height=height,
            fps=info.fps if info is not None else None,
            measured_fps=handle.stats.measured_fps,
            comes_from_video_file=is_file,
            publish_ns=d.publish_ns,
        )

    def release(self, frame: LeasedFrame) -> None:
        if frame.lease is not None and self._consumer is not None:
            self._consumer.release(frame.lease)

    # -- state ------------------------------------------------------------------------------

    @property
    def state(self) -> StreamState:
        state = self.handle.state
        if state is StreamState.RUNNING and self._mode != ConsumerMode.RUNNING:
            return StreamState(self._mode)
        return state

    @property
    def exhausted(self) -> bool:
        if self._closed:
            return True
        if not self.handle.state.is_final:
            return False
        consumer = self._consumer
        return consumer is None or consumer.finished

    @property
    def delivering(self) -> bool:
        """Frames are coming: the source runs, or is about to (not yet started, still
        opening), or it has ended but frames it decoded are still queued for us (a file
        decoded ahead into the ring). Each is worth a batch's wait, so batches stay whole."""
        state = self.state
        if state in (StreamState.RUNNING, StreamState.INITIALISING, StreamState.NOT_STARTED):
            return True
        return state.is_final and not self.exhausted

    def _set_mode(self, mode: str) -> None:
        self._mode = mode
        consumer = self._consumer
        if consumer is not None:
            self.handle.send(SetConsumerMode(consumer.index, mode))

    def mute(self) -> None:
        self._set_mode(ConsumerMode.MUTED)

    def pause(self) -> None:
        self._set_mode(ConsumerMode.PAUSED)

    def resume(self) -> None:
        self._set_mode(ConsumerMode.RUNNING)

    def events(self) -> list[StatusUpdate]:
        """The source's history, with this pipeline's source id."""
        out = []
        for event in self.handle.history():
            if "source_id" in event.payload:
                event = replace(event, payload={**event.payload, "source_id": self.source_id})
            out.append(event)
        return out

    def close(self) -> None:
        """Leave the source (idempotent); the last subscription stops the decode process."""
        if self._closed:
            return
        self._closed = True
        handle = self.handle
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            self._dropped_before_close = self._dropped(consumer)
            self._final_ring_info = (
                consumer.ring.slots,
                consumer.ring.free_slots(),
                consumer.ring.nbytes,
            )
            handle.send(RemoveConsumer(consumer.index))
            consumer.close()
            if not handle.alive and handle.ring is not None:
                handle.ring.reclaim_consumer(consumer.index)
        if handle.remove(self):
            handle.stop()

    # -- report -----------------------------------------------------------------------------

    def _dropped(self, consumer: FrameConsumer | None) -> dict[str, int]:
        if consumer is None:
            return dict(self._dropped_before_close)
        handle = self.handle
        dropped = dict(handle.consumer_dropped.get(consumer.index, {}))
        stats = consumer.statistics()
        if stats.dropped:
            base = self.filling_strategy
            if base in (
                BufferFillingStrategy.DROP_OLDEST,
                BufferFillingStrategy.ADAPTIVE_DROP_OLDEST,
            ):
                reason = DropReason.DROP_OLDEST
            else:
                reason = DropReason.BUFFER_FULL
            dropped[reason.value] = dropped.get(reason.value, 0) + stats.dropped
        if stats.skipped:
            dropped[DropReason.EAGER.value] = dropped.get(DropReason.EAGER.value, 0) + stats.skipped
        return {k: v for k, v in dropped.items() if v}

    def report(self) -> SourceReport:
        handle = self.handle
        consumer = self._consumer
        ring = consumer.ring if consumer is not None else handle.ring
        stats = handle.stats
        if ring is not None and not ring.closed:
            slots, occupancy, shm_bytes = ring.slots, ring.slots - ring.free_slots(), ring.nbytes
        else:
            slots, free, shm_bytes = self._final_ring_info
            occupancy = slots - free if slots else 0
            if self._closed:
                shm_bytes = 0
        reference = handle.reference
        info = handle.info
        return SourceReport(
            source_id=self.source_id,
            reference=handle.masked_reference,
            kind=reference.kind if reference is not None else SourceKind.FILE,
            state=self.state,
            backend=handle.backend.value,
            properties=handle.properties,
            declared_fps=info.fps if info is not None else None,
            measured_fps=stats.measured_fps,
            frames_decoded=handle._base.frames_decoded + stats.frames_decoded,
            frames_delivered=self._delivered,
            frames_dropped=self._dropped(consumer),
            reconnects=handle._base.reconnects + stats.reconnects,
            decoder_restarts=handle.decoder_restarts,
            last_error=handle.last_error,
            decode_latency_ms=stats.decode_latency_ms,
            ring_slots=slots,
            ring_occupancy=occupancy,
            shm_bytes=shm_bytes,
            buffer_size=self.request.buffer_size,
            buffer_filling_strategy=self.filling_strategy,
            buffer_consumption_strategy=self._consumption,
            shared_with=max(0, len(handle.subscriptions) - 1),
            decoder_cpu_s=handle._base.cpu_s + stats.cpu_s,
        )


class ServedSubscription(Subscription):
    """A subscription whose frames another process reads (``consumer_pid``).

    The owner registers a consumer of the ring for that process and tells the decode process
    how it wants its frames; the other process adopts the consumer by index
    (``FrameConsumer(ring_name, index=...)``) and reads frames in place. If that process
    dies, the decode process's producer reclaims the consumer (its pid is dead). Frames are
    never taken here.
    """

    def __init__(
        self,
        request: SubscriptionRequest,
        handle: DecoderHandle,
        filling: BufferFillingStrategy,
        consumption: BufferConsumptionStrategy,
        consumer_pid: int,
    ) -> None:
        super().__init__(request, handle, filling, consumption)
        self.consumer_pid = consumer_pid
        self.index: int | None = None
        self.ring_name: str | None = None

    def _attach(self, ring: FrameRing) -> None:
        if self.index is not None or self._closed:
            return
        self.index = ring.register_consumer(self.consumer_pid)
        self.ring_name = ring.name
        self._announce()

    def _announce(self) -> None:
        if self.index is not None:
            self.handle.send(
                AddConsumer(self.index, self.filling_strategy, self.request.max_fps, self._mode)
            )

    def _set_mode(self, mode: str) -> None:
        self._mode = mode
        if self.index is not None:
            self.handle.send(SetConsumerMode(self.index, mode))

    def take(self, timeout: float) -> LeasedFrame | None:
        raise OperationError("the frames of a served subscription are read by its consumer")

    def close(self) -> None:
        """Leave the source (idempotent): the consumer entry is freed (it is still the one
        registered for ``consumer_pid``: an index the producer reclaimed may be someone
        else's by now); the last subscription stops the decode process."""
        if self._closed:
            return
        self._closed = True
        handle = self.handle
        index, self.index = self.index, None
        ring = handle.ring
        if index is not None and ring is not None and ring.consumer_pid(index) == self.consumer_pid:
            handle.send(RemoveConsumer(index))
            if handle.alive:
                ring.unregister_consumer(index)  # the producer frees it
            else:
                ring.reclaim_consumer(index)
        if handle.remove(self):
            handle.stop()


class SourceHub:
    """Decode processes shared by the pipelines of one process (decode once, fan out).

    ``share``: subscriptions to the same reference (same decoder backend and properties)
    share one decode process and ring, up to ``max_consumers`` each. ``ring_budget_bytes``
    bounds each ring (the queue depth shrinks for big frames).
    """

    def __init__(
        self,
        *,
        share: bool = True,
        max_consumers: int = 4,
        ring_budget_bytes: int = DEFAULT_RING_BUDGET_BYTES,
        backend_options: BackendOptions | None = None,
    ) -> None:
        if max_consumers < 1:
            raise ValueError(f"max_consumers must be >= 1, got {max_consumers}")
        self.share = share
        self.max_consumers = max_consumers
        self.ring_budget_bytes = ring_budget_bytes
        self.backend_options = backend_options or BackendOptions()
        self._decoders: list[tuple[tuple[Any, ...], DecoderHandle]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        # A hub dropped without close() (or still open at interpreter exit) still stops its
        # decode processes and unlinks its rings.
        self._finalizer = weakref.finalize(self, SourceHub._stop_all, self._decoders, self._pid)

    @staticmethod
    def _stop_all(decoders: list[tuple[tuple[Any, ...], DecoderHandle]], pid: int) -> None:
        if os.getpid() != pid:
            return
        for _, handle in list(decoders):
            for subscription in list(handle.subscriptions):
                with contextlib.suppress(Exception):
                    subscription.close()
            with contextlib.suppress(Exception):
                handle.stop()

    @staticmethod
    def _key(request: SubscriptionRequest, backend: DecoderBackendName) -> tuple[Any, ...]:
        reference = request.reference
        target = reference.target if reference is not None else request.raw_reference
        props = tuple(sorted((str(k), repr(v)) for k, v in request.video_source_properties.items()))
        return (target, backend, props)

    def subscribe(
        self, request: SubscriptionRequest, *, consumer_pid: int | None = None
    ) -> Subscription:
        """A new consumer of ``request.reference`` (starts or joins its decode process).

        ``consumer_pid``: the frames are read by that process, not this one (a
        :class:`ServedSubscription`).
        """
        if os.getpid() != self._pid:
            raise OperationError("a SourceHub cannot be used from a forked child process")
        backend = request.backend or DEFAULT_BACKEND
        default_filling, default_consumption = default_strategies(request.reference)
        filling = request.filling_strategy or default_filling
        consumption = request.consumption_strategy or default_consumption
        key = self._key(request, backend)
        with self._lock:
            if self._closed:
                raise OperationError("the SourceHub is closed")
            self._decoders[:] = [(k, h) for k, h in self._decoders if not h._closed]
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
                    raw_reference=request.raw_reference,
                    error=request.not_found,
                )
                self._decoders.append((key, handle))
            subscription = (
                Subscription(request, handle, filling, consumption)
                if consumer_pid is None
                else ServedSubscription(request, handle, filling, consumption, consumer_pid)
            )
            handle.add(subscription)
        try:
            handle.start()
        except BaseException:
            subscription.close()
            raise
        return subscription

    def decoders(self) -> list[DecoderHandle]:
        with self._lock:
            return [h for _, h in self._decoders if not h._closed]

    def close(self) -> None:
        """Close every subscription and stop every decode process (idempotent)."""
        with self._lock:
            self._closed = True
            handles = [h for _, h in self._decoders]
            self._decoders.clear()
        for handle in handles:
            for subscription in list(handle.subscriptions):
                subscription.close()
            handle.stop()

    def __enter__(self) -> SourceHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
