"""Results pushed to readers: one drain per pipeline, fanned out to every reader.

How it behaves (what ``GET /inference_pipelines/{id}/results/stream`` promises):

* **One drain per pipeline.** While at least one reader is attached, the gateway pops the
  pipeline's result sink with ``consume_result`` + ``max_entries`` (the existing wire, no new
  command): at once again after a non-empty batch, after ``stream_poll_s`` after an empty one.
  With no reader attached nothing is drained, and results wait in the sink as usual; when
  every reader has a ``limit``, no more is popped than they can still use.
* **Every reader gets every result** drained while it is attached (a broadcast, not
  competing consumers): two dashboards on one pipeline show the same frames. A reader sees
  results from the moment it attaches; there is no history, and results a drain popped are
  gone from the sink. Other consumers of the sink (``consume``, a TCP client, the CLI) still
  compete with the drain for entries, as any two consumers of the sink do.
* **A slow reader loses its oldest results, counted** — the sink's own semantics, per reader:
  each reader has a bounded queue (``stream_buffer``, or ``?buffer=``); when it is full the
  oldest queued result is discarded. The reader is told, in order, by an ``event: dropped``
  (``{"dropped": n, "dropped_total": N}``) just before the next result it does get, and the
  SSE ``id`` of results (a per-pipeline sequence number) shows the gap. A slow reader never
  slows the drain, the pipeline or the other readers.
* **Ends are explicit**: ``event: end`` with a reason — ``pipeline_gone`` (terminated, or
  ended and drained), ``limit`` (``?limit=`` reached), ``error`` (the drain failed, e.g. the
  manager stopped answering) or ``shutdown`` (the gateway is stopping).

This module has no HTTP in it: the route turns :class:`StreamEvent` objects into SSE bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from framepipe.protocol.errors import FramepipeError, NotFoundError

logger = logging.getLogger(__name__)

Entry = dict[str, Any]
"""One result as sent to readers: ``{"outputs": [...], "frames_metadata": [...]}``."""

EndReason = Literal["pipeline_gone", "limit", "error", "shutdown"]

Fetch = Callable[[str, frozenset[str], int], Awaitable[list[Entry]]]
"""``fetch(pipeline_id, excluded_fields, max_entries)``: pop up to that many results."""


@dataclass(frozen=True, slots=True)
class ResultEvent:
    seq: int
    entry: Entry


@dataclass(frozen=True, slots=True)
class DroppedEvent:
    dropped: int
    dropped_total: int


@dataclass(frozen=True, slots=True)
class EndEvent:
    reason: EndReason
    message: str
    results: int
    dropped_total: int
    error: FramepipeError | None = None


StreamEvent = ResultEvent | DroppedEvent | EndEvent


class Subscription:
    """One reader: a bounded queue that drops its oldest result when full, and counts it."""

    def __init__(
        self,
        pipeline_id: str,
        capacity: int,
        excluded_fields: frozenset[str],
        limit: int | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("a subscription holds at least one result")
        self.pipeline_id = pipeline_id
        self.capacity = capacity
        self.excluded_fields = excluded_fields
        self.limit = limit
        self.delivered = 0
        self.dropped_total = 0
        self._queue: deque[ResultEvent] = deque()
        self._pending_dropped = 0
        self._end: tuple[EndReason, str, FramepipeError | None] | None = None
        self._ended = False
        self._wakeup = asyncio.Event()

    @property
    def finished(self) -> bool:
        """No event will follow: the end was handed out."""
        return self._ended

    def offer(self, seq: int, entry: Entry) -> None:
        """Queue a result; never waits. A full queue loses its oldest result, counted."""
        if self._end is not None:
            return
        if len(self._queue) >= self.capacity:
            self._queue.popleft()
            self._pending_dropped += 1
            self.dropped_total += 1
        self._queue.append(ResultEvent(seq, entry))
        self._wakeup.set()

    def finish(self, reason: EndReason, message: str, error: FramepipeError | None = None) -> None:
        """No more results will come; what is queued is still handed out, then the end."""
        if self._end is None:
            self._end = (reason, message, error)
            self._wakeup.set()

    @property
    def wanted(self) -> int | None:
        """Results this reader can still use (None: no limit); the drain pops no more than
        its readers can use, so a reader with a ``limit`` leaves the rest in the sink."""
        if self.limit is None:
            return None
        if self._end is not None:
            return 0
        return max(0, self.limit - self.delivered - len(self._queue))

    def take(self) -> list[StreamEvent]:
        """The events ready now, in order (empty when there is none). With a ``limit``, the
        end follows the last result this reader may receive."""
        if self._ended:
            return []
        events: list[StreamEvent] = []
        if self._pending_dropped:
            events.append(DroppedEvent(self._pending_dropped, self.dropped_total))
            self._pending_dropped = 0
        left = None if self.limit is None else self.limit - self.delivered
        room = len(self._queue) if left is None else min(left, len(self._queue))
        for _ in range(room):
            events.append(self._queue.popleft())
        self.delivered += room
        if left is not None and left <= room:
            self.finish("limit", f"{self.delivered} results delivered, as asked (limit)")
            self._queue.clear()
        if self._end is not None and not self._queue:
            reason, message, error = self._end
            events.append(EndEvent(reason, message, self.delivered, self.dropped_total, error))
            self._ended = True
        self._wakeup.clear()
        return events

    async def wait(self, timeout: float) -> bool:
        """Wait until an event is ready, up to ``timeout`` s; False when none came."""
        if self._queue or self._pending_dropped or (self._end is not None and not self._ended):
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()
        return self._wakeup.is_set()


class PipelineDrain:
    """Drains one pipeline's sink for as long as it has readers."""

    def __init__(
        self,
        pipeline_id: str,
        fetch: Fetch,
        *,
        batch: int,
        poll_s: float,
        on_done: Callable[[PipelineDrain], None],
    ) -> None:
        self.pipeline_id = pipeline_id
        self.subscriptions: set[Subscription] = set()
        self.closed = False
        self._fetch = fetch
        self._batch = batch
        self._poll_s = poll_s
        self._on_done = on_done
        self._seq = 0
        self._task: asyncio.Task[None] | None = None

    def attach(self, subscription: Subscription) -> None:
        self.subscriptions.add(subscription)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"framepipe-drain-{self.pipeline_id}"
            )

    def detach(self, subscription: Subscription) -> None:
        self.subscriptions.discard(subscription)

    def _wanted(self) -> int:
        """How many results to pop: a batch, unless every reader has a limit nearly reached."""
        wanted = [s.wanted for s in self.subscriptions]
        if any(w is None for w in wanted):
            return self._batch
        return min(self._batch, max((w for w in wanted if w is not None), default=0))

    def _excluded(self) -> frozenset[str]:
        """Fields no reader wants: left out by the manager already."""
        sets = [s.excluded_fields for s in self.subscriptions]
        return frozenset.intersection(*sets) if sets else frozenset()

    def _finish_all(
        self, reason: EndReason, message: str, error: FramepipeError | None = None
    ) -> None:
        self.closed = True
        for subscription in self.subscriptions:
            subscription.finish(reason, message, error)

    async def _run(self) -> None:
        try:
            while self.subscriptions and not self.closed:
                wanted = self._wanted()
                if wanted == 0:  # every reader is about to end: leave the rest in the sink
                    await asyncio.sleep(self._poll_s)
                    continue
                try:
                    entries = await self._fetch(self.pipeline_id, self._excluded(), wanted)
                except NotFoundError as error:
                    self._finish_all(
                        "pipeline_gone",
                        f"pipeline {self.pipeline_id} is gone (terminated, or ended and drained)",
                        error,
                    )
                    return
                except FramepipeError as error:
                    logger.info("stream of pipeline %s ends: %s", self.pipeline_id, error)
                    self._finish_all("error", f"draining the results failed: {error}", error)
                    return
                for entry in entries:
                    self._seq += 1
                    for subscription in self.subscriptions:
                        subscription.offer(self._seq, entry)
                # A full batch means more is waiting; otherwise give the sink time to fill.
                await asyncio.sleep(0 if len(entries) >= wanted else self._poll_s)
        except asyncio.CancelledError:
            self._finish_all("shutdown", "the gateway is shutting down")
            raise
        except Exception as error:
            logger.exception("stream drain of pipeline %s failed", self.pipeline_id)
            self._finish_all("error", f"draining the results failed: {type(error).__name__}")
        finally:
            # No await between the loop's last look at `subscriptions` and this: a reader that
            # attaches later gets a new drain.
            self.closed = True
            self._on_done(self)

    async def cancel(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._finish_all("shutdown", "the gateway is shutting down")


class ResultStreams:
    """Every pipeline's drain, created when its first reader attaches, gone with its last."""

    def __init__(self, *, batch: int, poll_s: float) -> None:
        self._batch = batch
        self._poll_s = poll_s
        self._drains: dict[str, PipelineDrain] = {}
        self._closing = False

    @property
    def pipelines(self) -> Iterable[str]:
        """Pipelines being drained now."""
        return tuple(self._drains)

    def subscribe(
        self,
        pipeline_id: str,
        fetch: Fetch,
        *,
        capacity: int,
        excluded_fields: frozenset[str] = frozenset(),
        limit: int | None = None,
    ) -> Subscription:
        """A new reader of ``pipeline_id`` (``limit``: it ends after that many results).
        ``fetch`` is used when this reader starts the drain (every reader's credentials were
        checked before it got here)."""
        subscription = Subscription(pipeline_id, capacity, excluded_fields, limit)
        if self._closing:
            subscription.finish("shutdown", "the gateway is shutting down")
            return subscription
        drain = self._drains.get(pipeline_id)
        if drain is None or drain.closed:
            drain = PipelineDrain(
                pipeline_id, fetch, batch=self._batch, poll_s=self._poll_s, on_done=self._done
            )
            self._drains[pipeline_id] = drain
        drain.attach(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        drain = self._drains.get(subscription.pipeline_id)
        if drain is not None:
            drain.detach(subscription)

    def _done(self, drain: PipelineDrain) -> None:
        if self._drains.get(drain.pipeline_id) is drain:
            del self._drains[drain.pipeline_id]

    async def close(self) -> None:
        """End every stream (``event: end``, reason ``shutdown``) and stop every drain."""
        self._closing = True
        for drain in list(self._drains.values()):
            await drain.cancel()
