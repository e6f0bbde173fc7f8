"""The lock-free SPSC queue, its mailbox, wake-up semaphores and shared atomics (in one process)."""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections import deque
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framepipe.core.ring import DescriptorQueue, FrameDescriptor
from framepipe.core.shm import new_name
from framepipe.ext import _spsc


class _Rig:
    """A queue over anonymous memory with two fresh semaphores."""

    def __init__(self, capacity: int) -> None:
        self.mem = mmap.mmap(-1, 4096 + _spsc.queue_region_size(capacity))
        self.view = _spsc.SharedView(self.mem)
        base = new_name("test")
        self.names = [base + "-c", base + "-p"]
        self.csem = _spsc.NamedSemaphore(self.names[0], True)
        self.psem = _spsc.NamedSemaphore(self.names[1], True)
        self.cw = _spsc.Waker(self.view, 128, self.csem)
        self.pw = _spsc.Waker(self.view, 0, self.psem)
        self.q = _spsc.SpscQueue(self.view, 4096, capacity, self.cw, self.pw, True)

    def close(self) -> None:
        self.q.close()
        self.cw.close()
        self.pw.close()
        self.view.release()
        for sem, name in ((self.csem, self.names[0]), (self.psem, self.names[1])):
            sem.close()
            _spsc.NamedSemaphore.unlink(name)
        self.mem.close()


@pytest.fixture
def rig() -> Iterator[_Rig]:
    r = _Rig(4)
    yield r
    r.close()


ops = st.lists(
    st.one_of(st.tuples(st.just("put"), st.integers(0, 2**62)), st.just(("get", 0))),
    max_size=200,
)


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 9), script=ops)
def test_queue_behaves_like_a_bounded_fifo(capacity: int, script: list[tuple[str, int]]) -> None:
    r = _Rig(capacity)
    try:
        model: deque[int] = deque()
        for op, value in script:
            if op == "put":
                ok = r.q.try_put(value % 1000, value, value, -value, 3, 4, 5)
                assert ok == (len(model) < capacity)
                if ok:
                    model.append(value)
            else:
                got = r.q.try_get()
                if not model:
                    assert got is None
                else:
                    v = model.popleft()
                    assert got == (v % 1000, v, v, -v, 3, 4, 5, 0)
            assert r.q.qsize() == len(model)
            assert r.q.full() == (len(model) == capacity)
            assert r.q.empty() == (not model)
    finally:
        r.close()


def test_mailbox_keeps_only_the_latest_and_reports_what_it_replaced(rig: _Rig) -> None:
    assert rig.q.post_latest(1, 10) is None
    assert rig.q.post_latest(2, 12) == (1, 10)
    assert rig.q.has_mailbox()
    got = rig.q.try_get()
    assert got is not None and got[:2] == (2, 12) and got[7] == 1
    assert not rig.q.has_mailbox()
    assert rig.q.post_latest(3, 14) is None  # taken: nothing replaced
    with pytest.raises(ValueError, match="mailbox"):
        rig.q.post_latest(70_000, 1)


def test_queue_is_served_before_mailbox(rig: _Rig) -> None:
    rig.q.post_latest(5, 2)
    rig.q.try_put(1, 2)
    first, second = rig.q.try_get(), rig.q.try_get()
    assert first is not None and first[0] == 1 and first[7] == 0
    assert second is not None and second[0] == 5 and second[7] == 1


def test_timeouts_are_honoured(rig: _Rig) -> None:
    t0 = time.monotonic()
    assert rig.q.get(0.05) is None
    assert 0.04 <= time.monotonic() - t0 < 1.0
    for i in range(4):
        assert rig.q.try_put(i, 0)
    t0 = time.monotonic()
    assert rig.q.put(9, 0, timeout=0.05) is False
    assert 0.04 <= time.monotonic() - t0 < 1.0
    assert rig.q.put(9, 0, timeout=0) is False
    assert rig.q.get(0) is not None


def test_blocked_get_releases_the_gil_and_wakes_on_put(rig: _Rig) -> None:
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(rig.q.get(5.0)))
    t.start()
    # while the thread sleeps in get(), this thread keeps running Python code
    spins = 0
    end = time.monotonic() + 0.2
    while time.monotonic() < end:
        spins += 1
    assert spins > 10_000
    assert rig.q.try_put(7, 8, 9)
    t.join(2.0)
    assert not t.is_alive()
    assert result and result[0] is not None and result[0][:3] == (7, 8, 9)  # type: ignore[index]
    assert rig.q.last_wake_ns > 0


def test_blocked_put_wakes_when_the_consumer_makes_room(rig: _Rig) -> None:
    for i in range(4):
        rig.q.try_put(i, 0)
    done: list[bool] = []
    t = threading.Thread(target=lambda: done.append(rig.q.put(99, 0, timeout=5.0)))
    t.start()
    time.sleep(0.05)
    assert not done
    assert rig.q.try_get() is not None
    t.join(2.0)
    assert done == [True]


def test_named_semaphore_errors_and_wait() -> None:
    name = new_name("sem")
    sem = _spsc.NamedSemaphore(name, True)
    try:
        assert os.path.exists(f"/dev/shm/sem.{name[1:]}")
        with pytest.raises(FileExistsError):
            _spsc.NamedSemaphore(name, True)
        other = _spsc.NamedSemaphore(name)
        other.post()
        assert sem.value == 1
        assert sem.wait(0.5) is True
        t0 = time.monotonic()
        assert sem.wait(0.03) is False
        assert time.monotonic() - t0 >= 0.025
        other.close()
        other.close()
        assert other.closed
        with pytest.raises(ValueError, match="closed"):
            other.post()
    finally:
        sem.close()
        assert _spsc.NamedSemaphore.unlink(name) is True
    assert _spsc.NamedSemaphore.unlink(name) is False
    with pytest.raises(FileNotFoundError):
        _spsc.NamedSemaphore(name)
    with pytest.raises(ValueError, match="semaphore name"):
        _spsc.NamedSemaphore("no-slash")


def test_shared_view_bounds_and_atomics() -> None:
    mem = mmap.mmap(-1, 4096)
    v = _spsc.SharedView(mem)
    v.store_u64(8, 5)
    assert v.exchange_u64(8, 9) == 5 and v.fetch_add_u64(8, 1) == 9 and v.load_u64(8) == 10
    assert v.cas_u32(16, 0, 3) and not v.cas_u32(16, 0, 4) and v.load_u32(16) == 3
    v.store_i64(24, -7)
    assert v.load_i64(24) == -7
    with pytest.raises(IndexError):
        v.load_u64(4096)
    with pytest.raises(IndexError):
        v.load_u64(3)  # misaligned
    v.release()
    with pytest.raises(ValueError, match="released"):
        v.load_u8(0)
    mem.close()


def test_closed_queue_refuses_use(rig: _Rig) -> None:
    rig.q.close()
    with pytest.raises(ValueError, match="closed"):
        rig.q.try_get()


def test_descriptor_queue_between_handles() -> None:
    with DescriptorQueue.create(3) as q:
        other = DescriptorQueue.attach(q.name)
        try:
            d = FrameDescriptor(1, 2, 3, 4, 5, 6, 7)
            assert q.try_put(d) and q.put(d, timeout=0.1)
            assert other.qsize() == 2
            assert other.get(0.1) == d and other.try_get() == d and other.try_get() is None
            assert other.get(0.01) is None
        finally:
            other.close()
