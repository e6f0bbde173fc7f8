"""A source whose frames its owner pushes in: a WebRTC track, a callback, a test.

A decoded source has a decode process that pulls frames from a file or a stream. A
:class:`PushSource` has none: the process that owns it receives frames from somewhere else (a
WebRTC peer's video track, say) and calls :meth:`PushSource.push` for each one. Everything
downstream is the same as for a decoded source, so a pipeline reads it like any other:

* a :class:`~framepipe.core.sources.status.SourceStatus` block holds its state, history and
  statistics (the owner writes them, as a decode process would);
* a :class:`~framepipe.core.ring.FrameRing`, created when the first frame gives the size, holds
  the frames; :meth:`push` hands the caller the slot to write the frame into (one conversion,
  straight into shared memory; nothing is pickled) and publishes it to the consumers that want
  it (their mode and ``max_fps`` decide, :mod:`~framepipe.core.sources.gate`);
* consumers get :class:`~framepipe.core.sources.subscription.SourceTicket` s
  (:meth:`serve`, for another process) or ready :class:`Subscription` s (:meth:`subscribe`), so
  a push source can be a :class:`~framepipe.Pipeline`'s ``hub``.

A push source is live: its consumers default to DROP_OLDEST / EAGER (the freshest frame wins; a
slow consumer loses the older frames, counted by reason in its report), and :meth:`push` never
blocks unless a consumer asked for WAIT and the caller gives a ``timeout``. :meth:`end` ends the
stream (ENDED: consumers drain what is queued, then their pipeline finishes); :meth:`close`
ends it too and unlinks the ring and the status block — the owner is the only one that does.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from framepipe.core._lifecycle import Closing
from framepipe.core.pixels import FrameLayout
from framepipe.core.ring import FrameProducer, FrameRing
from framepipe.core.sources.decoder import PTS_NONE
from framepipe.core.sources.entities import (
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    DecoderBackendName,
    DropReason,
    SourceKind,
    StreamInfo,
    StreamState,
)
from framepipe.core.sources.gate import ConsumerGate, frame_targets
from framepipe.core.sources.hub import SubscriptionRequest
from framepipe.core.sources.sizing import (
    DEFAULT_RING_BUDGET_BYTES,
    resident_floor_slots,
    ring_geometry,
)
from framepipe.core.sources.status import EventKind, SourceStatus
from framepipe.core.sources.subscription import SourceTicket, Subscription
from framepipe.protocol.errors import OperationError

__all__ = ["PushSource", "Writer"]

#: Fills a BGR slot (height x width x 3, uint8) with the frame, in place.
Writer = Callable[[npt.NDArray[np.uint8]], None]

_STATS_INTERVAL_S = 0.25


class PushSource(Closing):
    """One pushed source: status block, ring, producer and consumers (see the module docstring).

    ``reference`` names the source in reports (no credentials in it); ``buffer_size`` is each
    consumer's queue depth (only LAZY consumers of a DROP_LATEST or WAIT source queue frames);
    ``declared_fps``/``codec`` are reported as the stream's own. :meth:`push` is called from one
    thread at a time; consumers may come and go from any thread.
    """

    def __init__(
        self,
        reference: str,
        *,
        kind: SourceKind = SourceKind.STREAM,
        max_consumers: int = 1,
        buffer_size: int = 2,
        ring_budget_bytes: int = DEFAULT_RING_BUDGET_BYTES,
        declared_fps: float | None = None,
        codec: str = "",
        backend: DecoderBackendName = DecoderBackendName.PYAV,
    ) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.reference = reference
        self.kind = kind
        self.max_consumers = max_consumers
        self.buffer_size = buffer_size
        self.ring_budget_bytes = ring_budget_bytes
        self.declared_fps = declared_fps
        self.codec = codec
        self.backend = backend
        self.status = SourceStatus.create(max_consumers)
        self.status.set_decoder_pid(os.getpid())  # the producer is this process
        self._ring: FrameRing | None = None
        self._producer: FrameProducer | None = None
        self._gates: dict[int, ConsumerGate] = {}
        self._consumption: dict[int, BufferConsumptionStrategy] = {}
        self._lock = threading.RLock()
        self._frame_id = 0
        self._ended = False
        self._closed = False
        self._started_consuming = False
        self._copies = 0
        self._write_ms = 0.0
        self._next_stats = 0.0
        self._stats_at = time.monotonic()
        self._stats_frames = 0
        self._measured_fps = 0.0

    # -- properties -----------------------------------------------------------------------------

    @property
    def ring(self) -> FrameRing | None:
        """The frame ring, once the first frame gave the size."""
        return self._ring

    @property
    def frames_received(self) -> int:
        """Frames offered to the source (pushed or skipped)."""
        return self._frame_id

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def state(self) -> StreamState:
        return self.status.state

    # -- consumers ------------------------------------------------------------------------------

    def start(self) -> None:
        """The stream is being opened (INITIALISING) until its first frame arrives."""
        with self._lock:
            if self.status.state is StreamState.NOT_STARTED:
                self.status.set_state(StreamState.INITIALISING)

    def serve(self, request: SubscriptionRequest, consumer_pid: int) -> SourceTicket:
        """Admit a consumer living in process ``consumer_pid`` (for a live source, DROP_OLDEST
        and EAGER unless the request says otherwise); returns its ticket."""
        filling = request.filling_strategy or BufferFillingStrategy.DROP_OLDEST
        consumption = request.consumption_strategy or BufferConsumptionStrategy.EAGER
        with self._lock:
            if self._closed or self._ended:
                raise OperationError(f"source {self.reference} has ended")
            index = self.status.claim_consumer(consumer_pid, filling, request.max_fps)
            ring = self._ring
            if ring is not None:
                try:
                    ring.register_consumer(consumer_pid, index=index)
                except BaseException:
                    self.status.free_consumer(index)
                    raise
            self._gates[index] = ConsumerGate(
                index, self.status.consumer(index).generation, filling, request.max_fps
            )
            self._consumption[index] = consumption
            if self._producer is not None:
                self._producer.set_consumer_strategy(index, filling)
            if self.status.state is StreamState.NOT_STARTED:
                self.status.set_state(StreamState.INITIALISING)
        return SourceTicket(
            source_id=request.source_id,
            status_name=self.status.name,
            index=index,
            reference=self.reference,
            kind=self.kind,
            filling_strategy=filling,
            consumption_strategy=consumption,
            buffer_size=self.buffer_size,
            max_fps=request.max_fps,
        )

    def subscribe(self, request: SubscriptionRequest) -> Subscription:
        """Admit a consumer in this process: a ready subscription (its ``close`` leaves). With
        this, a push source is a pipeline's ``hub``."""
        pid = os.getpid()
        ticket = self.serve(request, pid)
        try:
            return Subscription(ticket, on_close=lambda: self.release(ticket, pid))
        except BaseException:
            self.release(ticket, pid)
            raise

    def release(self, ticket: SourceTicket, consumer_pid: int) -> None:
        """The consumer of ``ticket`` is gone: free its entry and whatever it held."""
        with self._lock:
            if self._closed:
                return
            index = ticket.index
            settings = self.status.consumer(index)
            if settings.active and settings.pid == consumer_pid:
                self.status.free_consumer(index)
            self._gates.pop(index, None)
            self._consumption.pop(index, None)
            ring = self._ring
            if ring is not None and ring.consumer_pid(index) == consumer_pid:
                # The producer is this object, under this lock: nothing is being published.
                ring.reclaim_consumer(index)
                if self._producer is not None:
                    self._producer.set_consumer_strategy(index, None)

    # -- frames ---------------------------------------------------------------------------------

    def push(
        self,
        width: int,
        height: int,
        write: Writer,
        *,
        capture_ns: int | None = None,
        pts_us: int | None = None,
        timeout: float = 0.0,
    ) -> bool:
        """Offer one frame of ``width`` x ``height``: ``write`` fills the slot it is given (of
        the ring's size: the first frame's; a later frame of another size is the writer's to
        scale). Returns whether any consumer got it. ``capture_ns``: when the frame was taken
        (wall clock; default now); ``pts_us``: its presentation time in microseconds.
        ``timeout``: how long a WAIT consumer may hold the caller (0: never)."""
        with self._lock:
            if self._ended:
                return False
            if capture_ns is None:
                capture_ns = time.time_ns()
            self._frame_id += 1
            self.status.frame_decoded(time.monotonic_ns())
            if self._producer is None:
                self._open(width, height)
            producer = self._producer
            assert producer is not None
            targets = frame_targets(self.status, self._gates.values(), capture_ns)
            if not targets:
                if not self._gates:
                    self.status.count_no_consumer()
                self._update_statistics()
                return False
            waits = any(self._gates[i].strategy.waits for i in targets)
            slot = producer.acquire(timeout if waits else 0)
            if slot is None:
                for index in targets:
                    self.status.count_drop(index, DropReason.BUFFER_FULL)
                self._update_statistics()
                return False
            started = time.perf_counter_ns()
            try:
                write(producer.writable(slot))
            except BaseException:
                producer.abandon(slot)
                raise
            spent_ms = (time.perf_counter_ns() - started) / 1e6
            self._write_ms = (
                spent_ms if not self._write_ms else 0.9 * self._write_ms + 0.1 * spent_ms
            )
            producer.publish(
                slot,
                frame_id=self._frame_id,
                pts=PTS_NONE if pts_us is None else int(pts_us),
                capture_ns=capture_ns,
                timeout=timeout,
                consumers=targets,
            )
            self.status.frame_published()
            self._update_statistics()
            return True

    def push_image(self, image: npt.NDArray[np.uint8], **kwargs: Any) -> bool:
        """:meth:`push` a BGR image (copied into the slot; scaled if the ring's size differs)."""
        height, width = image.shape[:2]

        def write(slot: npt.NDArray[np.uint8]) -> None:
            if slot.shape == image.shape:
                np.copyto(slot, image)
                return
            import cv2

            self.count_copy()
            cv2.resize(image, (slot.shape[1], slot.shape[0]), dst=slot)

        return self.push(width, height, write, **kwargs)

    def skip(self, frames: int, reason: DropReason = DropReason.DROP_OLDEST) -> None:
        """``frames`` frames arrived but were passed over before reaching the ring (a newer
        one had already arrived): each running consumer is told, by ``reason``."""
        if frames <= 0:
            return
        with self._lock:
            if self._ended:
                return
            now = time.monotonic_ns()
            for _ in range(frames):
                self._frame_id += 1
                self.status.frame_decoded(now)
            for index in self._gates:
                self.status.count_drop(index, reason, frames)

    def count_copy(self) -> None:
        """A frame needed an extra copy (scaled, or converted through a temporary)."""
        self._copies += 1

    def _open(self, width: int, height: int) -> None:
        """The first frame: its size makes the ring; the stream is RUNNING."""
        consumers = self.max_consumers
        depth, slots = ring_geometry(
            width, height, self.buffer_size, consumers, self.ring_budget_bytes
        )
        active_now = sum(1 for c in self.status.consumers() if c.active)
        layout = FrameLayout.bgr(width, height)
        ring = FrameRing.create(
            slots,
            layout.slot_shape,
            np.uint8,
            consumers,
            queue_depth=depth,
            tag="src",
            resident_slots=resident_floor_slots(active_now),
            layout=layout,
        )
        try:
            for settings in self.status.consumers():
                if settings.active:
                    ring.register_consumer(settings.pid, index=settings.index)
            producer = FrameProducer(ring, BufferFillingStrategy.DROP_OLDEST)
            for gate in self._gates.values():
                producer.set_consumer_strategy(gate.index, gate.strategy)
        except BaseException:
            ring.close()
            ring.unlink()
            raise
        self._ring, self._producer = ring, producer
        info = StreamInfo(
            width=width,
            height=height,
            fps=self.declared_fps,
            total_frames=None,
            codec=self.codec,
            layout=layout,
        )
        self.status.set_info(info, self.backend, time.time_ns())
        self.status.set_ring_name(ring.name)
        self.status.add_event(EventKind.VIDEO_CONSUMPTION_STARTED)
        self._started_consuming = True
        self.status.set_state(StreamState.RUNNING)

    def _update_statistics(self, force: bool = False) -> None:
        now = time.monotonic()
        self.status.heartbeat()
        if not force and now < self._next_stats:
            return
        self._next_stats = now + _STATS_INTERVAL_S
        elapsed = now - self._stats_at
        if elapsed > 0:
            self._measured_fps = (self._frame_id - self._stats_frames) / elapsed
        self._stats_at, self._stats_frames = now, self._frame_id
        ring = self._ring
        self.status.update_statistics(
            measured_fps=self._measured_fps,
            decode_latency_ms=self._write_ms,
            cpu_s=0.0,
            ring_slots=ring.slots if ring is not None else 0,
            ring_occupancy=ring.slots - ring.free_slots() if ring is not None else 0,
            copies=self._copies,
        )

    # -- the end --------------------------------------------------------------------------------

    def end(self, message: str = "", *, terminated: bool = False) -> None:
        """No more frames (ENDED; TERMINATING first when ``terminated``): consumers drain
        what is queued for them, then their pipelines finish. Idempotent."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            self._update_statistics(force=True)
            if self._producer is not None:
                self._producer.close()
            if self.status.state.is_final:
                return
            if terminated:
                self.status.set_state(StreamState.TERMINATING, message)
            self.status.set_state(StreamState.ENDED, message)
            if self._started_consuming:
                self.status.add_event(EventKind.VIDEO_CONSUMPTION_FINISHED)

    def fail(self, message: str) -> None:
        """The stream broke (ERROR, with ``message``); consumers drain, then stop."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            if self._producer is not None:
                self._producer.close()
            self.status.set_state(StreamState.ERROR, message)

    def close(self) -> None:
        """End the stream (as terminated) and unlink the ring and the status block
        (idempotent). Consumers still attached keep their mappings until they close."""
        self.end(terminated=True)
        with self._lock:
            if self._closed:
                return
            self._closed = True
            ring, self._ring, self._producer = self._ring, None, None
            self._gates.clear()
        if ring is not None:
            ring.close()
            ring.unlink()
        self.status.close()
        self.status.unlink()

    def __repr__(self) -> str:
        return f"<PushSource {self.reference!r} {self.status.state.value}>"
