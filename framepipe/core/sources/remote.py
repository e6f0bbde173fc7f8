"""Reading a source that another process decodes (shared decoders across processes).

The process that owns a :class:`~framepipe.core.sources.hub.SourceHub` (the stream manager)
subscribes on behalf of a reader process (``hub.subscribe(request, consumer_pid=pid)``, a
:class:`~framepipe.core.sources.hub.ServedSubscription`) and hands it a :class:`SharedSource`:
the ring's name and the consumer index registered for it. The reader's
:class:`RemoteHub` gives its :class:`~framepipe.core.pipeline.Pipeline` a
:class:`RemoteSubscription` that adopts that consumer and reads frames in place, like a local
one. The decoder's state, statistics and history stay with the owner, which sends
:class:`SourceSnapshot` s (made by :func:`snapshot_of`) that the reader applies with
:meth:`RemoteHub.apply`. Per-consumer control (strategy, max_fps, mute) goes to the decode
process through the owner, which holds its control pipe.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from framepipe.core.ring import FrameConsumer, FrameRing
from framepipe.core.sources.backends import DEFAULT_BACKEND, BackendOptions
from framepipe.core.sources.entities import (
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    DecoderStats,
    SourceProperties,
    SourceReport,
    StatusUpdate,
    StreamInfo,
    StreamState,
)
from framepipe.core.sources.hub import (
    DecoderHandle,
    ServedSubscription,
    SourceHub,
    Subscription,
    SubscriptionRequest,
    default_strategies,
)

# The newest decoder events a snapshot carries (it stays a few kB: it goes through a pipe).
SNAPSHOT_EVENTS = 64


@dataclass(frozen=True)
class SourceSnapshot:
    """What a reader process knows of a decoder it does not own (sent when it changes)."""

    source_id: int
    state: StreamState
    history: tuple[StatusUpdate, ...] = ()
    info: StreamInfo | None = None
    properties: SourceProperties | None = None
    decode_start_ns: int = 0
    stats: DecoderStats = field(default_factory=DecoderStats)
    base: DecoderStats = field(default_factory=DecoderStats)
    decoder_restarts: int = 0
    last_error: str | None = None
    dropped: dict[str, int] = field(default_factory=dict)  # the decode process's, for us
    shared_with: int = 0


@dataclass(frozen=True)
class SharedSource:
    """One source of a pipeline that is read from another process's decoder."""

    source_id: int
    ring_name: str
    consumer_index: int
    snapshot: SourceSnapshot


def snapshot_of(served: ServedSubscription, source_id: int) -> SourceSnapshot:
    """The owner's view of ``served``'s decoder, for the reader's pipeline ``source_id``."""
    handle = served.handle
    index = served.index
    return SourceSnapshot(
        source_id=source_id,
        state=handle.state,
        history=tuple(handle.history()[-SNAPSHOT_EVENTS:]),
        info=handle.info,
        properties=handle.properties,
        decode_start_ns=handle.decode_start_ns,
        stats=handle.stats,
        base=handle._base,
        decoder_restarts=handle.decoder_restarts,
        last_error=handle.last_error,
        dropped=dict(handle.consumer_dropped.get(index, {})) if index is not None else {},
        shared_with=max(0, len(handle.subscriptions) - 1),
    )


def shared_source(served: ServedSubscription, source_id: int) -> SharedSource | None:
    """The hand-over of ``served`` to its reader; None when its decoder has no ring (failed)."""
    if served.index is None or served.ring_name is None:
        return None
    return SharedSource(source_id, served.ring_name, served.index, snapshot_of(served, source_id))


class MirrorHandle(DecoderHandle):
    """A decoder owned by another process: its state is what the owner last sent."""

    def __init__(self, request: SubscriptionRequest, ring: FrameRing) -> None:
        super().__init__(
            request.reference,
            backend=request.backend or DEFAULT_BACKEND,
            options=BackendOptions(),
            max_consumers=1,
            buffer_size=request.buffer_size,
            ring_budget_bytes=0,
            raw_reference=request.raw_reference,
        )
        self.ring = ring
        self.ring_ready.set()
        self.shared_with = 0

    def start(self) -> None:
        """Nothing to start: the owner runs the decode process."""

    @property
    def alive(self) -> bool:
        # Not ours to judge or to clean up after: the owner's producer reclaims consumers.
        return True

    def apply(self, snapshot: SourceSnapshot, index: int) -> None:
        with self._lock:
            self.state = snapshot.state
            self._history = deque(snapshot.history, maxlen=self._history.maxlen)
            self.info = snapshot.info
            self.properties = snapshot.properties
            self.decode_start_ns = snapshot.decode_start_ns
            self.stats = snapshot.stats
            self._base = snapshot.base
            self.decoder_restarts = snapshot.decoder_restarts
            self.last_error = snapshot.last_error
            self.consumer_dropped = {index: dict(snapshot.dropped)}
            self.shared_with = snapshot.shared_with

    def stop(self) -> None:
        """Leave the ring (never unlink it: the owner does)."""
        with self._lock:
            self._closed = True
            ring, self.ring = self.ring, None
        if ring is not None:
            ring.close()


class RemoteSubscription(Subscription):
    """A pipeline's consumer of a ring that another process's decoder fills."""

    def __init__(
        self,
        request: SubscriptionRequest,
        handle: MirrorHandle,
        filling: BufferFillingStrategy,
        consumption: BufferConsumptionStrategy,
        index: int,
    ) -> None:
        self._index = index
        self.mirror = handle
        super().__init__(request, handle, filling, consumption)

    def _attach(self, ring: FrameRing) -> None:
        if self._consumer is not None or self._closed:
            return
        eager = self._consumption is BufferConsumptionStrategy.EAGER
        self._consumer = FrameConsumer(ring, eager=eager, index=self._index)

    def report(self) -> SourceReport:
        return replace(super().report(), shared_with=self.mirror.shared_with)


class RemoteHub(SourceHub):
    """A pipeline's hub in a reader process: the sources in ``shared`` are read from their
    owner's decoders; any other source gets a private decode process as usual."""

    def __init__(self, shared: list[SharedSource]) -> None:
        super().__init__(share=False)
        self._shared = {s.source_id: s for s in shared}
        self._remote: dict[int, RemoteSubscription] = {}

    def subscribe(
        self, request: SubscriptionRequest, *, consumer_pid: int | None = None
    ) -> Subscription:
        shared = self._shared.get(request.source_id)
        if shared is None or consumer_pid is not None:
            return super().subscribe(request, consumer_pid=consumer_pid)
        filling, consumption = _strategies(request)
        ring = FrameRing.attach(shared.ring_name)
        try:
            handle = MirrorHandle(request, ring)
            handle.apply(shared.snapshot, shared.consumer_index)
            subscription = RemoteSubscription(
                request, handle, filling, consumption, shared.consumer_index
            )
            handle.add(subscription)
        except BaseException:
            ring.close()
            raise
        self._remote[request.source_id] = subscription
        return subscription

    def apply(self, snapshot: SourceSnapshot) -> None:
        """The owner's latest view of a shared source's decoder."""
        subscription = self._remote.get(snapshot.source_id)
        if subscription is not None:
            subscription.mirror.apply(snapshot, subscription._index)

    def close(self) -> None:
        remote, self._remote = list(self._remote.values()), {}
        for subscription in remote:
            subscription.close()
        super().close()


def _strategies(
    request: SubscriptionRequest,
) -> tuple[BufferFillingStrategy, BufferConsumptionStrategy]:
    default_filling, default_consumption = default_strategies(request.reference)
    return (
        request.filling_strategy or default_filling,
        request.consumption_strategy or default_consumption,
    )
