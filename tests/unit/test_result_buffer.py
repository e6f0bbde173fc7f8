"""The shared result buffer: the reference's sink semantics in shared memory, entries encoded
once, read by another process with no torn entry, whatever the producer does."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import signal
import struct
import threading
import time

import orjson
import pytest

from framepipe.core.result_buffer import (
    SharedResultBuffer,
    decode_entry,
    encode_entry,
    entry_to_python,
    excluded_prefixes,
)
from framepipe.protocol._json import RawJson, dumps, dumps_slow


def entry(n: int, payload: bytes = b"") -> bytes:
    outputs = [{"n": orjson.dumps(n), "image": orjson.dumps(payload.decode() or "img")}, None]
    return encode_entry(outputs, orjson.dumps([{"frame_id": n}, None]))


def numbers(entries: list[bytes]) -> list[int]:
    return [entry_to_python(e)["outputs"][0]["n"] for e in entries]


@pytest.fixture
def buffer():
    made: list[SharedResultBuffer] = []

    def make(capacity: int, max_bytes: int | None = None) -> SharedResultBuffer:
        b = SharedResultBuffer.create(capacity, max_bytes)
        made.append(b)
        return b

    yield make
    for b in made:
        b.release()
        b.unlink()


def test_an_entry_is_the_wire_json_of_its_outputs_with_fields_left_out_by_slicing() -> None:
    raw = entry(7)
    assert entry_to_python(raw) == {
        "outputs": [{"n": 7, "image": "img"}, None],
        "frames_metadata": [{"frame_id": 7}, None],
    }
    outputs, meta = decode_entry(raw, excluded_prefixes(["image"]))
    assert outputs == [b'{"n":7}', None] and meta == b'[{"frame_id":7},null]'
    assert decode_entry(raw, excluded_prefixes(["n", "image"]))[0] == [b"{}", None]
    # a field whose name only starts like an excluded one stays
    raw = encode_entry([{"images": b"1", "image": b"2"}], b"[]")
    assert decode_entry(raw, excluded_prefixes(["image"]))[0] == [b'{"images":1}']


def test_full_it_drops_the_oldest_and_counts_everything(buffer) -> None:
    b = buffer(4)
    for n in range(10):
        assert b.put(entry(n))
    stats = b.statistics()
    assert (stats.buffered, stats.received, stats.dropped, stats.consumed) == (4, 10, 6, 0)
    assert numbers(b.consume(2)) == [6, 7]
    assert numbers(b.consume(10)) == [8, 9]
    assert b.consume(1) == []
    stats = b.statistics()
    assert (stats.buffered, stats.consumed, stats.bytes) == (0, 4, 0)


def test_it_is_bounded_in_bytes_and_a_reply_takes_what_fits(buffer) -> None:
    big = b"x" * 3000
    b = buffer(100, max_bytes=10_000)
    for n in range(10):
        b.put(entry(n, big))
    assert len(b) == 3 and b.statistics().dropped == 7  # three of ~3 kB fit in 10 kB
    assert b.statistics().bytes <= 10_000
    assert numbers(b.consume(10, max_bytes=4000)) == [7]  # the first, whatever its size
    assert numbers(b.consume(10, max_bytes=7000)) == [8, 9]
    lone = entry(99, b"y" * 15_000)  # bigger than the cap alone: kept alone
    b.put(lone)
    assert b.consume(5) == [lone]


def test_a_held_producer_waits_for_room_and_loses_nothing(buffer) -> None:
    b = buffer(3)
    got: list[int] = []

    def reader() -> None:
        while len(got) < 50:
            got.extend(numbers(b.consume(2)))
            time.sleep(0.003)

    t = threading.Thread(target=reader)
    t.start()
    for n in range(50):
        assert b.put(entry(n), hold=True)
    t.join(10)
    assert got == list(range(50))
    stats = b.statistics()
    assert stats.dropped == 0 and stats.held_s > 0
    # one consume takes what was buffered when it began, however fast the producer refills
    for n in range(3):
        b.put(entry(n))
    halt = threading.Event()
    refill = threading.Thread(
        target=lambda: [b.put(entry(n), hold=True, stop=halt) for n in range(3, 40)]
    )
    refill.start()
    time.sleep(0.05)
    assert len(b.consume(1000)) <= 3
    halt.set()
    refill.join(10)
    b.discard()
    stop = threading.Event()
    for n in range(3):
        b.put(entry(n))
    stop.set()
    assert b.put(entry(4), hold=True, stop=stop) is False  # stopped while full: not added
    assert len(b) == 3


def test_entries_wrap_around_the_data_area_intact(buffer) -> None:
    rng = random.Random(5)
    b = buffer(16, max_bytes=20_000)
    expected: list[bytes] = []
    for n in range(2000):
        raw = entry(n, bytes(rng.choice(b"abc") for _ in range(rng.randrange(1, 4000))))
        b.put(raw)
        expected.append(raw)
        if rng.random() < 0.4:
            for got in b.consume(rng.randrange(1, 4)):
                assert got in expected
                # FIFO: everything older than what is read was read or dropped
                expected = expected[expected.index(got) + 1 :]
    rest = b.consume(100)
    assert rest and rest == expected[len(expected) - len(rest) :]  # the newest, in order


def test_resident_pages_follow_the_results_in_flight(buffer, monkeypatch) -> None:
    from framepipe.core import result_buffer

    monkeypatch.setattr(result_buffer, "_PUNCH_AFTER_S", 0.0)
    b = buffer(64, max_bytes=64 << 20)
    idle = b.resident_bytes()
    assert idle < 256 << 10  # a 64 MB cap costs nothing until results come
    for n in range(40):
        b.put(entry(n, b"z" * 200_000))  # a burst of 8 MB
    assert b.resident_bytes() > 7 << 20
    b.consume(100)
    b.put(entry(0))  # empty: starts over at the beginning...
    b.consume(1)
    b.put(entry(1))  # ...and gives the burst's pages back
    assert b.resident_bytes() < idle + (2 << 20)


# -- across processes -------------------------------------------------------------------------


def _sealed(n: int, size: int) -> bytes:
    body = (str(n) * (size // max(1, len(str(n))) + 1))[:size].encode()
    digest = hashlib.sha256(body).hexdigest()
    return encode_entry(
        [{"n": orjson.dumps(n), "sha": orjson.dumps(digest)}], orjson.dumps([body.decode()])
    )


def _check(raw: bytes) -> int:
    e = entry_to_python(raw)
    body = e["frames_metadata"][0].encode()
    assert hashlib.sha256(body).hexdigest() == e["outputs"][0]["sha"], "torn entry"
    return int(e["outputs"][0]["n"])


def _produce(name: str, count: int, hold: bool) -> None:
    b = SharedResultBuffer.attach(name)
    rng = random.Random(os.getpid())
    for n in range(count):
        b.put(_sealed(n, rng.randrange(10, 50_000)), hold=hold)
    b.release()


@pytest.mark.parametrize("hold", [False, True])
def test_another_process_reads_every_entry_whole_and_in_order(buffer, hold) -> None:
    b = buffer(8, max_bytes=200_000)
    ctx = multiprocessing.get_context("fork")
    producer = ctx.Process(target=_produce, args=(b.name, 3000, hold))
    producer.start()
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (producer.is_alive() or len(b)):
        seen.extend(_check(raw) for raw in b.consume(3))
    producer.join(10)
    assert producer.exitcode == 0
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    stats = b.statistics()
    assert stats.received == 3000 and stats.consumed == len(seen)
    assert stats.consumed + stats.dropped == 3000
    if hold:
        assert seen == list(range(3000))


def test_a_producer_killed_mid_write_leaves_no_torn_entry(buffer) -> None:
    ctx = multiprocessing.get_context("fork")
    for attempt in range(8):
        b = buffer(8, max_bytes=4 << 20)
        producer = ctx.Process(target=_produce, args=(b.name, 10**6, False))
        producer.start()
        time.sleep(0.05 + 0.03 * attempt)
        os.kill(producer.pid, signal.SIGKILL)  # somewhere inside put(), most likely
        producer.join(5)
        numbers_read = [_check(raw) for raw in b.consume(100)]
        assert numbers_read == sorted(numbers_read)
        assert len(b) == 0


def _publish_reports(name: str, seconds: float) -> None:
    b = SharedResultBuffer.attach(name)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        body = json.dumps({"n": n, "pad": "x" * (n % 5000)}).encode()
        b.publish_report(struct.pack("<I", len(body)) + body)
    b.release()


def test_a_report_is_read_whole_while_it_is_rewritten(buffer) -> None:
    b = buffer(4)
    assert b.read_report() is None
    ctx = multiprocessing.get_context("fork")
    writer = ctx.Process(target=_publish_reports, args=(b.name, 1.0))
    writer.start()
    reads = 0
    while writer.is_alive():
        got = b.read_report()
        if got is None:
            continue
        data, published_ns = got
        (length,) = struct.unpack_from("<I", data)
        assert len(data) == 4 + length
        json.loads(data[4:])  # whole
        assert 0 < published_ns <= time.monotonic_ns()
        assert b.report_age_s() is not None and b.report_age_s() < 5
        reads += 1
    writer.join()
    assert reads > 10
    assert not b.report_wanted()
    b.want_report()
    assert b.report_wanted()


def test_the_producer_is_told_when_a_report_is_due(buffer) -> None:
    """``on_report_due`` fires for the first result, then only while a reader wants a report
    newer than the one published (so the producer's reporter need not look on a short timer)."""
    b = buffer(8)
    due: list[int] = []
    b.on_report_due = lambda: due.append(b.received())
    b.put(entry(0))
    assert due == [1]
    b.put(entry(1))
    assert due == [1]
    b.want_report()
    b.put(entry(2))
    assert due == [1, 3]
    b.publish_report(b"{}", b.received())
    b.put(entry(3))
    assert due == [1, 3]


# -- on the wire ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [10, 10_000])
def test_stored_json_spliced_into_a_reply_is_the_reference_s_bytes(size) -> None:
    output = {
        "predictions": [{"x": 1.5, "y": 2.0, "class": "face", "confidence": 0.25}],
        "s": "left out",
    }
    output["image"] = {"type": "base64", "value": "A" * size}
    raw = encode_entry(
        [{k: orjson.dumps(v) for k, v in output.items()}], orjson.dumps([{"frame_id": 1}])
    )
    outputs, meta = decode_entry(raw, excluded_prefixes(["s"]))
    spliced = {
        "status": "success",
        "outputs": [RawJson(o) for o in outputs],
        "frames_metadata": RawJson(meta),
    }
    plain_output = {k: v for k, v in output.items() if k != "s"}
    plain = {"status": "success", "outputs": [plain_output], "frames_metadata": [{"frame_id": 1}]}
    assert dumps(spliced) == dumps_slow(plain)
