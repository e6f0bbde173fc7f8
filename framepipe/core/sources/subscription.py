"""A consumer of one source, in any process: read frames in place, report the source's state.

The owner of a source (a :class:`~framepipe.core.sources.hub.SourceHub`) gives each consumer a
:class:`SourceTicket`: the name of the source's status block and the consumer's index in it
(the same index in the frame ring). A :class:`Subscription` made from a ticket — in the owner's
process or in another one, such as a pipeline worker — attaches the status block, waits for the
ring to exist, adopts its consumer entry and leases frames in place. It reads the source's
state, history and statistics where the decoder writes them; ``mute``/``pause``/``resume`` set
this consumer's mode there, and the decoder reads it. Nothing is relayed through the owner.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from framepipe.core.pixels import wrap_slot
from framepipe.core.ring import FrameConsumer, FrameRef, FrameRing, Lease
from framepipe.core.sources.decoder import PTS_NONE
from framepipe.core.sources.entities import (
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    DropReason,
    FrameMetadata,
    SourceKind,
    SourceProperties,
    SourceReport,
    StatusUpdate,
    StreamInfo,
    StreamState,
)
from framepipe.core.sources.multiplexer import LeasedFrame
from framepipe.core.sources.status import ConsumerMode, SourceStatus

__all__ = ["SourceTicket", "Subscription"]

_RING_POLL_S = 0.005
# How long a frame's metadata reuses the stream facts it reads from the status block (the
# stream's info, which changes only when a live source reopens, and the decoder's measured
# rate, which it updates about once a second); reading them costs more than the rest of a frame.
_FACTS_TTL_NS = 500_000_000


@dataclass(frozen=True)
class SourceTicket:
    """What a process needs to read one source (picklable; no handles, only names)."""

    source_id: int  # the pipeline's index of this source
    status_name: str
    index: int  # the consumer's entry in the status block and the ring
    reference: str  # credentials masked
    kind: SourceKind
    filling_strategy: BufferFillingStrategy
    consumption_strategy: BufferConsumptionStrategy
    buffer_size: int
    max_fps: float | None = None
    created_at: datetime = field(default_factory=datetime.now)


class Subscription:
    """One consumer of a source: ``take()`` frames in place, ``release()`` them after use."""

    def __init__(self, ticket: SourceTicket, *, on_close: Callable[[], None] | None = None) -> None:
        self.ticket = ticket
        self.source_id = ticket.source_id
        self.filling_strategy = ticket.filling_strategy
        self.status = SourceStatus.attach(ticket.status_name)
        self._index = ticket.index
        self._on_close = on_close
        self._ring: FrameRing | None = None
        self._consumer: FrameConsumer | None = None
        self._mode = self.status.consumer(ticket.index).mode
        self._delivered = 0
        self._closed = False
        self._final: SourceReport | None = None
        self._final_events: list[StatusUpdate] = []
        self._facts: tuple[StreamInfo | None, float] = (None, 0.0)
        self._facts_until_ns = 0

    # -- frames ---------------------------------------------------------------------------------

    @property
    def consumption_strategy(self) -> BufferConsumptionStrategy:
        return self.ticket.consumption_strategy

    @property
    def ring_name(self) -> str | None:
        ring = self._ring
        return ring.name if ring is not None else None

    def _attach(self, timeout: float) -> FrameConsumer | None:
        """The ring's consumer, once the ring exists (it is created when the stream opens)."""
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._closed:
            name = self.status.ring_name
            if name is not None:
                ring = FrameRing.attach(name)
                try:
                    eager = self.consumption_strategy is BufferConsumptionStrategy.EAGER
                    consumer = FrameConsumer(ring, eager=eager, index=self._index)
                except BaseException:
                    ring.close()
                    raise
                self._ring, self._consumer = ring, consumer
                return consumer
            if self.status.state.is_final:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(left, _RING_POLL_S))
        return None

    def take(self, timeout: float) -> LeasedFrame | None:
        consumer = self._consumer
        if consumer is None:
            consumer = self._attach(timeout)
            if consumer is None:
                return None
        lease = consumer.lease(timeout)
        if lease is None:
            return None
        self._delivered += 1
        assert self._ring is not None
        d = lease.descriptor
        return LeasedFrame(
            wrap_slot(lease.array, self._ring.layout),
            self._metadata(lease),
            d.slot,
            d.seq,
            lease,
            FrameRef(self._ring.name, d.slot, d.seq),
        )

    def _stream_facts(self, now_ns: int) -> tuple[StreamInfo | None, float]:
        """The stream's info and measured rate, read again at most every _FACTS_TTL_NS."""
        if now_ns >= self._facts_until_ns:
            info = self.status.info
            self._facts = (info, self.status.measured_fps)
            # (no info yet: read again next frame)
            self._facts_until_ns = now_ns + _FACTS_TTL_NS if info is not None else 0
        return self._facts

    def _metadata(self, lease: Lease) -> FrameMetadata:
        d = lease.descriptor
        pts = None if d.pts == PTS_NONE else d.pts / 1e6
        is_file = self.ticket.kind is SourceKind.FILE
        if is_file and pts is not None:
            stamp_ns = self.status.decode_start_ns + int(pts * 1e9)
        else:
            stamp_ns = d.capture_ns
        layout = self._ring.layout if self._ring is not None else None
        if layout is not None:
            height, width = layout.height, layout.width
        else:
            height, width = lease.array.shape[:2]
        info, measured_fps = self._stream_facts(time.monotonic_ns())
        return FrameMetadata(
            frame_id=d.frame_id,
            frame_timestamp=datetime.fromtimestamp(stamp_ns / 1e9),
            source_id=self.source_id,
            capture_ns=d.capture_ns,
            pts=pts,
            width=width,
            height=height,
            fps=info.fps if info is not None else None,
            measured_fps=measured_fps,
            comes_from_video_file=is_file,
            publish_ns=d.publish_ns,
            total_frames=info.total_frames if info is not None else None,
        )

    def release(self, frame: LeasedFrame) -> None:
        if frame.lease is not None and self._consumer is not None:
            self._consumer.release(frame.lease)

    # -- state ----------------------------------------------------------------------------------

    @property
    def state(self) -> StreamState:
        if self._closed:
            return self._final.state if self._final is not None else StreamState.ENDED
        state = self.status.state
        if state is StreamState.RUNNING and self._mode is not ConsumerMode.RUNNING:
            return StreamState(self._mode.name)
        return state

    @property
    def exhausted(self) -> bool:
        """Nothing more will come: the source is finished and nothing is queued for us."""
        if self._closed:
            return True
        if not self.status.state.is_final:
            return False
        consumer = self._consumer
        if consumer is None:
            if self.status.ring_name is None:
                return True  # it ended (or failed) before it had a ring
            consumer = self._attach(0)
            if consumer is None:
                return True
        return consumer.finished

    @property
    def delivering(self) -> bool:
        """Frames are coming: the source runs, or is about to (not yet started, still
        opening), or it has ended but frames it decoded are still queued for us. Each is
        worth a batch's wait, so batches stay whole."""
        state = self.state
        if state in (StreamState.RUNNING, StreamState.INITIALISING, StreamState.NOT_STARTED):
            return True
        return state.is_final and not self.exhausted

    def _set_mode(self, mode: ConsumerMode) -> None:
        self._mode = mode
        if not self._closed:
            self.status.set_mode(self._index, mode)

    def mute(self) -> None:
        self._set_mode(ConsumerMode.MUTED)

    def pause(self) -> None:
        self._set_mode(ConsumerMode.PAUSED)

    def resume(self) -> None:
        self._set_mode(ConsumerMode.RUNNING)

    def events(self) -> list[StatusUpdate]:
        """The source's history, with this pipeline's source id."""
        if self._closed:
            return list(self._final_events)
        return [event.to_update(self.source_id) for event in self.status.events()]

    # -- report ---------------------------------------------------------------------------------

    def _dropped(self) -> dict[str, int]:
        dropped = self.status.drops(self._index)
        consumer = self._consumer
        if consumer is not None:
            stats = consumer.statistics()
            if stats.dropped:
                reason = (
                    DropReason.DROP_OLDEST
                    if self.filling_strategy.base is BufferFillingStrategy.DROP_OLDEST
                    else DropReason.BUFFER_FULL
                )
                dropped[reason.value] = dropped.get(reason.value, 0) + stats.dropped
            if stats.skipped:
                dropped[DropReason.EAGER.value] = (
                    dropped.get(DropReason.EAGER.value, 0) + stats.skipped
                )
        return dropped

    def report(self) -> SourceReport:
        if self._closed and self._final is not None:
            return self._final
        stats = self.status.statistics()
        info = stats.info
        ticket = self.ticket
        properties = None
        if info is not None:
            properties = SourceProperties(
                width=info.width,
                height=info.height,
                total_frames=info.total_frames,
                is_file=ticket.kind is SourceKind.FILE,
                fps=info.fps,
                is_reconnectable=True if ticket.kind is SourceKind.STREAM else None,
                timestamp_created=ticket.created_at,
            )
        ring = self._ring
        return SourceReport(
            source_id=self.source_id,
            reference=ticket.reference,
            kind=ticket.kind,
            state=self.state,
            backend=stats.backend.value,
            properties=properties,
            declared_fps=info.fps if info is not None else None,
            measured_fps=stats.measured_fps,
            frames_decoded=stats.frames_decoded,
            frames_delivered=self._delivered,
            frames_dropped=self._dropped(),
            reconnects=stats.reconnects,
            last_error=stats.last_error,
            decode_latency_ms=stats.decode_latency_ms,
            ring_slots=stats.ring_slots,
            ring_occupancy=stats.ring_occupancy,
            shm_bytes=ring.nbytes + self.status.segment.size
            if ring is not None
            else self.status.segment.size,
            buffer_size=ticket.buffer_size,
            buffer_filling_strategy=ticket.filling_strategy,
            buffer_consumption_strategy=ticket.consumption_strategy,
            shared_with=max(0, self.status.active_consumers() - 1),
            decoder_cpu_s=stats.cpu_s,
            decoder_restarts=stats.decoder_restarts,
            last_frame_mono_ns=stats.last_frame_mono_ns,
            heartbeat_mono_ns=stats.heartbeat_mono_ns,
            decoder_pid=stats.decoder_pid,
        )

    def close(self) -> None:
        """Leave the source (idempotent): release every frame, give the consumer entry back."""
        if self._closed:
            return
        self._final = self.report()
        self._final_events = self.events()
        self._closed = True
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.close()
        self._final = replace(self._final, shm_bytes=0)
        self.status.close()
        if self._on_close is not None:
            self._on_close()
