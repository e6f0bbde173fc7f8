"""Result streams without HTTP: per-reader queues that drop their oldest, counted, and one
drain per pipeline fanned out to every reader (fed here by an in-memory sink)."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from framepipe.gateway.streams import (
    DroppedEvent,
    EndEvent,
    Entry,
    ResultEvent,
    ResultStreams,
    Subscription,
)
from framepipe.protocol.errors import AuthorisationError, NotFoundError


def entry(n: int, **extra: object) -> Entry:
    return {"outputs": [{"n": n, **extra}], "frames_metadata": [None]}


def test_a_full_queue_loses_its_oldest_and_says_so_before_the_next_result() -> None:
    sub = Subscription("p", capacity=2, excluded_fields=frozenset())
    for seq in range(1, 6):
        sub.offer(seq, entry(seq))
    events = sub.take()
    assert events == [DroppedEvent(3, 3), ResultEvent(4, entry(4)), ResultEvent(5, entry(5))]
    sub.offer(6, entry(6))
    assert sub.take() == [ResultEvent(6, entry(6))]  # nothing lost since: no dropped event
    assert (sub.delivered, sub.dropped_total) == (3, 3)


def test_queued_results_come_out_before_the_end() -> None:
    sub = Subscription("p", capacity=8, excluded_fields=frozenset())
    sub.offer(1, entry(1))
    sub.finish("pipeline_gone", "gone")
    sub.offer(2, entry(2))  # after the end: ignored
    events = sub.take()
    assert events[0] == ResultEvent(1, entry(1))
    end = events[1]
    assert isinstance(end, EndEvent)
    assert (end.reason, end.results, end.dropped_total) == ("pipeline_gone", 1, 0)
    assert sub.finished and sub.take() == []


def test_a_limit_ends_the_reader_after_that_many_results() -> None:
    sub = Subscription("p", capacity=8, excluded_fields=frozenset(), limit=3)
    assert sub.wanted == 3
    for seq in range(1, 5):
        sub.offer(seq, entry(seq))
    assert sub.wanted == 0
    events = sub.take()
    assert [e.seq for e in events if isinstance(e, ResultEvent)] == [1, 2, 3]
    assert isinstance(events[-1], EndEvent) and events[-1].reason == "limit"
    assert sub.finished


async def test_wait_reports_whether_an_event_came() -> None:
    sub = Subscription("p", capacity=1, excluded_fields=frozenset())
    assert not await sub.wait(0.01)
    sub.offer(1, entry(1))
    assert await sub.wait(10)


class InMemorySink:
    """What consume_result with max_entries does, on a list: pop up to N, oldest first."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = deque(entries)
        self.calls: list[tuple[frozenset[str], int]] = []
        self.gone = False
        self.error: Exception | None = None

    async def fetch(self, pipeline_id: str, excluded: frozenset[str], limit: int) -> list[Entry]:
        self.calls.append((excluded, limit))
        if self.error is not None:
            raise self.error
        if self.gone and not self.entries:
            raise NotFoundError(f"Could not find InferencePipeline with id={pipeline_id}.")
        taken = []
        while self.entries and len(taken) < limit:
            taken.append(self.entries.popleft())
        await asyncio.sleep(0)
        return taken


async def collect(sub: Subscription) -> list[ResultEvent | DroppedEvent | EndEvent]:
    events: list[ResultEvent | DroppedEvent | EndEvent] = []
    async with asyncio.timeout(10):
        while not sub.finished:
            await sub.wait(1)
            events.extend(sub.take())
    return events


async def test_every_reader_gets_every_result_and_the_end() -> None:
    sink = InMemorySink([entry(n) for n in range(10)])
    sink.gone = True  # the pipeline goes once drained
    streams = ResultStreams(batch=4, poll_s=0.001)
    first = streams.subscribe("p", sink.fetch, capacity=100)
    second = streams.subscribe("p", sink.fetch, capacity=100)
    a, b = await asyncio.gather(collect(first), collect(second))
    assert a == b
    assert [e.seq for e in a if isinstance(e, ResultEvent)] == list(range(1, 11))
    assert isinstance(a[-1], EndEvent) and a[-1].reason == "pipeline_gone"
    assert max(limit for _, limit in sink.calls) == 4
    assert list(streams.pipelines) == []


async def wait_for_call(sink: InMemorySink, excluded: frozenset[str], after: int = 0) -> None:
    async with asyncio.timeout(10):
        while excluded not in [e for e, _ in sink.calls[after:]]:
            await asyncio.sleep(0.001)


async def test_the_drain_asks_the_manager_to_leave_out_only_what_no_reader_wants() -> None:
    sink = InMemorySink([])
    streams = ResultStreams(batch=4, poll_s=0.001)
    a = streams.subscribe("p", sink.fetch, capacity=1, excluded_fields=frozenset({"image", "x"}))
    await wait_for_call(sink, frozenset({"image", "x"}))
    b = streams.subscribe("p", sink.fetch, capacity=1, excluded_fields=frozenset({"image"}))
    await wait_for_call(sink, frozenset({"image"}))
    streams.unsubscribe(b)
    await wait_for_call(sink, frozenset({"image", "x"}), after=len(sink.calls))
    streams.unsubscribe(a)
    await streams.close()


async def test_with_no_reader_left_the_drain_stops() -> None:
    sink = InMemorySink([])
    streams = ResultStreams(batch=4, poll_s=0.001)
    sub = streams.subscribe("p", sink.fetch, capacity=4)
    await wait_for_call(sink, frozenset())
    streams.unsubscribe(sub)
    async with asyncio.timeout(10):
        while list(streams.pipelines):
            await asyncio.sleep(0.001)
    calls = len(sink.calls)
    sink.entries.extend(entry(n) for n in range(3))
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(sink.calls) == calls and len(sink.entries) == 3  # left for the next consumer


async def test_readers_with_limits_leave_what_they_cannot_use_in_the_sink() -> None:
    sink = InMemorySink([entry(n) for n in range(10)])
    streams = ResultStreams(batch=64, poll_s=0.001)
    events = await collect(streams.subscribe("p", sink.fetch, capacity=8, limit=3))
    assert [e.seq for e in events if isinstance(e, ResultEvent)] == [1, 2, 3]
    assert len(sink.entries) == 7
    assert all(limit <= 3 for _, limit in sink.calls)


async def test_a_failing_drain_ends_every_reader_with_the_error() -> None:
    sink = InMemorySink([])
    sink.error = AuthorisationError("wrong token")
    streams = ResultStreams(batch=4, poll_s=0.001)
    events = await collect(streams.subscribe("p", sink.fetch, capacity=4))
    end = events[-1]
    assert isinstance(end, EndEvent) and end.reason == "error"
    assert isinstance(end.error, AuthorisationError)


async def test_close_ends_every_stream_with_shutdown() -> None:
    sink = InMemorySink([])
    streams = ResultStreams(batch=4, poll_s=0.001)
    sub = streams.subscribe("p", sink.fetch, capacity=4)
    await streams.close()
    events = await collect(sub)
    assert isinstance(events[-1], EndEvent) and events[-1].reason == "shutdown"
    late = streams.subscribe("q", sink.fetch, capacity=4)
    assert isinstance((await collect(late))[-1], EndEvent)


def test_a_subscription_holds_at_least_one_result() -> None:
    with pytest.raises(ValueError):
        Subscription("p", capacity=0, excluded_fields=frozenset())
