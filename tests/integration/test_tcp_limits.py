"""The TCP front end's limits over real sockets: what an anonymous request may cost (token bytes
before parsing, JSON limits, the shared allowance for large requests, the connection cap and its
eviction), TLS on the port, and the input policy on video references."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import ssl
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from framepipe.client import (
    ConnectivityError,
    StreamManagerClient,
    SyncStreamManagerClient,
)
from framepipe.protocol.commands import Command, ListPipelinesCommand
from framepipe.protocol.envelope import ListPipelinesBody, SuccessBody
from framepipe.protocol.framing import encode_frame, encode_message
from framepipe.protocol.limits import JsonLimits
from framepipe.server.manager.policy import InputPolicy, PolicyHandler
from framepipe.server.manager.tcp import TcpFront, TcpFrontSettings, start_server
from tests.tls import self_signed

HOST = "127.0.0.1"
TIMEOUT = 5.0
TOKEN = "tok-0123456789abcdef"


class Recorder:
    """A handler that records the commands it gets; list_pipelines may be held."""

    def __init__(self) -> None:
        self.commands: list[Command] = []
        self.release = asyncio.Event()
        self.hold = False

    async def handle(self, request_id: str, command: Command) -> SuccessBody:
        self.commands.append(command)
        if self.hold and isinstance(command, ListPipelinesCommand):
            await self.release.wait()
        return ListPipelinesBody(pipelines=[])


async def exchange(port: int, data: bytes, *, half_close: bool = True) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
        await writer.wait_closed()
    assert len(answer) > 4, answer
    document: dict[str, Any] = json.loads(answer[4:])
    return document


async def serve(handler: Any, **settings: Any) -> TcpFront:
    return await start_server(handler, TcpFrontSettings(host=HOST, port=0, **settings))


# --- no parse before the token's bytes -----------------------------------------------------


async def test_a_request_without_the_tokens_bytes_is_refused_before_any_parse(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A deep or huge body without the token is answered authorisation_error, never parsed:
    the answer is not a JSON-limit or a JSON error."""
    handler = Recorder()
    async with await serve(handler, auth_token=TOKEN) as front:
        for body in (
            b"[" * 100_000 + b"]" * 100_000,
            b"[" + b",".join([b"[]"] * 300_000) + b"]",
            b"{not json at all",
            json.dumps({"type": "list_pipelines", "auth_token": "wrong"}).encode(),
        ):
            with caplog.at_level(logging.ERROR):
                answer = await exchange(front.port, encode_frame(body))
            assert answer["response"]["error_type"] == "authorisation_error", answer
        assert handler.commands == []
        assert "Traceback" not in caplog.text
        right = encode_message({"type": "list_pipelines", "auth_token": TOKEN})
        assert (await exchange(front.port, right))["response"]["status"] == "success"


async def test_json_limits_are_invalid_payload_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = Recorder()
    async with await serve(
        handler, json_limits=JsonLimits(max_depth=64, max_items=50_000)
    ) as front:
        with caplog.at_level(logging.ERROR):
            deep = await exchange(front.port, encode_frame(b"[" * 40_000 + b"]" * 40_000))
            wide = await exchange(
                front.port, encode_frame(b"[" + b",".join([b"[]"] * 300_000) + b"]")
            )
        for answer, fragment in (
            (deep, "levels deep.*FRAMEPIPE_MAX_JSON_DEPTH"),
            (wide, "JSON items.*FRAMEPIPE_MAX_JSON_ITEMS"),
        ):
            body = answer["response"]
            assert body["error_type"] == "invalid_payload"
            assert body["error_class"] == "JsonLimitError"
            assert re.search(fragment, body["error_message"]), body["error_message"]
        assert caplog.text == ""


# --- memory: the shared allowance for large requests --------------------------------------


async def test_large_requests_wait_for_room_and_small_ones_never_do() -> None:
    """With room for one large request at a time, a second one waits (its socket unread) until
    the first is done; a small request is served at once meanwhile."""
    handler = Recorder()
    big = encode_message({"type": "list_pipelines", "pad": "x" * 700_000})
    async with await serve(handler, max_pending_bytes=1024 * 1024, read_timeout_s=5) as front:
        first_r, first_w = await asyncio.open_connection(HOST, front.port)
        first_w.write(big[: len(big) // 2])  # holds 700 kB of the allowance
        await first_w.drain()
        second = asyncio.create_task(exchange(front.port, big))
        await asyncio.sleep(0.3)
        assert front.pending.used == len(big) - 4
        assert not second.done(), "the second large request must wait for room"
        started = time.monotonic()
        small = await exchange(front.port, encode_message({"type": "list_pipelines"}))
        assert small["response"]["status"] == "success"
        assert time.monotonic() - started < 1.0
        first_w.write(big[len(big) // 2 :])
        await first_w.drain()
        assert len(await asyncio.wait_for(first_r.read(), TIMEOUT)) > 4
        first_w.close()
        assert (await asyncio.wait_for(second, TIMEOUT))["response"]["status"] == "success"
        await asyncio.sleep(0.05)
        assert front.pending.used == 0


async def test_a_large_request_abandoned_while_waiting_gives_its_turn_back() -> None:
    handler = Recorder()
    big = encode_message({"type": "list_pipelines", "pad": "x" * 700_000})
    async with await serve(handler, max_pending_bytes=1024 * 1024, read_timeout_s=0.5) as front:
        holder_r, holder_w = await asyncio.open_connection(HOST, front.port)
        holder_w.write(big[:1000])
        await holder_w.drain()
        _waiter_r, waiter_w = await asyncio.open_connection(HOST, front.port)
        waiter_w.write(big[:1000])
        await waiter_w.drain()
        await asyncio.sleep(1.0)  # both time out: the holder's room and the waiter's turn go
        assert front.pending.used == 0
        assert (await exchange(front.port, big))["response"]["status"] == "success"
        for writer in (holder_w, waiter_w):
            writer.close()
        await holder_r.read()


# --- connections: the cap, and eviction of the oldest reader -------------------------------


async def test_at_the_connection_limit_the_oldest_reader_is_dropped() -> None:
    handler = Recorder()
    async with await serve(handler, max_connections=8, read_timeout_s=30) as front:
        stalled = []
        for _ in range(8):
            reader, writer = await asyncio.open_connection(HOST, front.port)
            writer.write(b"\x00\x00")  # half a header, then nothing
            await writer.drain()
            stalled.append((reader, writer))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert front.open_connections == 8
        started = time.monotonic()
        answer = await exchange(front.port, encode_message({"type": "list_pipelines"}))
        assert answer["response"]["status"] == "success"
        assert time.monotonic() - started < 1.0
        dropped = await asyncio.wait_for(stalled[0][0].read(), TIMEOUT)
        body = json.loads(dropped[4:])["response"]
        assert body["error_type"] == "operation_error"
        assert (
            body["error_class"] == "ConnectionLimitError" and "limit of 8" in body["error_message"]
        )
        assert front.evictions >= 1
        for _, writer in stalled:
            writer.close()


async def test_when_every_connection_is_being_served_new_ones_wait_in_the_backlog() -> None:
    handler = Recorder()
    handler.hold = True
    async with await serve(handler, max_connections=8) as front:
        client = StreamManagerClient.init(HOST, front.port, TIMEOUT)
        held = [asyncio.create_task(client.list_pipelines()) for _ in range(8)]
        await asyncio.sleep(0.3)
        assert front.open_connections == 8
        late = asyncio.create_task(client.list_pipelines())
        await asyncio.sleep(0.3)
        assert not late.done() and front.open_connections == 8
        handler.release.set()
        await asyncio.wait_for(asyncio.gather(*held, late), TIMEOUT)
        await asyncio.sleep(0.05)
        assert front.open_connections == 0


async def test_open_connections_are_counted_back_to_zero() -> None:
    """Every path (fast, transport, rejected, timed out, evicted) gives its slot back."""
    handler = Recorder()
    async with await serve(handler, max_connections=16, read_timeout_s=0.3) as front:
        ok = encode_message({"type": "list_pipelines"})
        await asyncio.gather(
            *(exchange(front.port, ok) for _ in range(10)),
            *(exchange(front.port, ok[:3] + ok[3:]) for _ in range(5)),
            *(exchange(front.port, b"\x00\x00\x00\x00") for _ in range(5)),
            *(exchange(front.port, b"\x00\x01", half_close=False) for _ in range(20)),
        )
        for _ in range(50):
            if front.open_connections == 0:
                break
            await asyncio.sleep(0.05)
        assert front.open_connections == 0


# --- TLS -----------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_tls_with_both_clients(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    handler = Recorder()
    async with await serve(
        handler, ssl_context=server_context(cert, key), auth_token=TOKEN
    ) as front:
        trusted = ssl.create_default_context(cafile=str(cert))
        aio = StreamManagerClient.init(HOST, front.port, TIMEOUT, auth_token=TOKEN, tls=trusted)
        assert (await aio.list_pipelines()).pipelines == []
        sync = SyncStreamManagerClient.init(
            HOST, front.port, TIMEOUT, auth_token=TOKEN, tls=trusted
        )
        assert (await asyncio.to_thread(sync.list_pipelines)).pipelines == []
        by_name = StreamManagerClient.init(
            HOST,
            front.port,
            TIMEOUT,
            auth_token=TOKEN,
            tls=trusted,
            tls_server_hostname="localhost",
        )
        assert (await by_name.list_pipelines()).status == "success"
        # A framing error over TLS is answered like one over plain TCP.
        raw = StreamManagerClient.init(HOST, front.port, TIMEOUT, auth_token=TOKEN, tls=trusted)
        broken = b'{"auth_token": "' + TOKEN.encode() + b'", nope'
        answer = json.loads(await raw.exchange(encode_frame(broken)))
        assert answer["response"]["error_class"] == "MalformedPayloadError"
        assert len(handler.commands) == 3


async def test_tls_refuses_untrusted_servers_and_plain_clients(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    async with await serve(Recorder(), ssl_context=server_context(cert, key)) as front:
        with pytest.raises(ConnectivityError, match="CERTIFICATE_VERIFY_FAILED"):
            await StreamManagerClient.init(HOST, front.port, TIMEOUT, tls=True).list_pipelines()
        with pytest.raises(ConnectivityError):
            sync = SyncStreamManagerClient.init(HOST, front.port, TIMEOUT, tls=True)
            await asyncio.to_thread(sync.list_pipelines)
        with pytest.raises(ConnectivityError):  # plain TCP to a TLS port: no answer
            await StreamManagerClient.init(HOST, front.port, TIMEOUT).list_pipelines()
        await asyncio.sleep(0.1)
        assert front.open_connections == 0


async def test_a_stalled_tls_handshake_is_dropped_at_the_read_timeout(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    settings = {"ssl_context": server_context(cert, key), "read_timeout_s": 0.5}
    async with await serve(Recorder(), **settings) as front:
        reader, writer = await asyncio.open_connection(HOST, front.port)  # no ClientHello
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
        assert time.monotonic() - started < 3.0
        writer.close()
        await asyncio.sleep(0.05)
        assert front.open_connections == 0


# --- the input policy on video references --------------------------------------------------


def init_request(reference: Any) -> bytes:
    return encode_message(
        {
            "type": "init",
            "video_configuration": {"type": "VideoConfiguration", "video_reference": reference},
            "processing_configuration": {"type": "ModelConfiguration", "model": "passthrough"},
        }
    )


@pytest.fixture
def videos(tmp_path: Path) -> Path:
    allowed = tmp_path / "videos"
    allowed.mkdir()
    (allowed / "clip.mp4").write_bytes(b"x")
    (tmp_path / "secret.mp4").write_bytes(b"x")
    os.mkfifo(tmp_path / "fifo")
    return allowed


@pytest.mark.parametrize(
    ("reference", "dirs", "fragment"),
    [
        ("/dev/zero", False, "not a video capture device"),
        ("{tmp}/fifo", False, "named pipe"),
        ("/" + "n" * 300, False, "File name too long"),
        (["{allowed}/clip.mp4", "{allowed}/missing.mp4", "/dev/null"], False, "not a video"),
        ("{tmp}/secret.mp4", True, "outside the video directories"),
        ("{allowed}/../secret.mp4", True, "outside the video directories"),
        ("/dev/zero", True, "outside the video directories"),
        (["{allowed}/clip.mp4", "{tmp}/fifo"], True, "outside the video directories"),
    ],
)
async def test_the_policy_refuses_what_no_decoder_should_open(
    videos: Path, reference: Any, dirs: bool, fragment: str
) -> None:
    handler = Recorder()
    policy = InputPolicy([videos] if dirs else None)
    tmp = videos.parent

    def fill(text: str) -> str:
        return text.format(tmp=tmp, allowed=videos)

    reference = [fill(r) for r in reference] if isinstance(reference, list) else fill(reference)
    async with await serve(PolicyHandler(handler, policy)) as front:
        answer = await exchange(front.port, init_request(reference))
    body = answer["response"]
    assert body["error_type"] == "invalid_payload", body
    assert fragment in body["error_message"]
    assert handler.commands == [], "the manager never sees a refused reference"


async def test_the_policy_lets_through_files_inside_missing_files_and_streams(
    videos: Path,
) -> None:
    handler = Recorder()
    async with await serve(PolicyHandler(handler, InputPolicy([videos]))) as front:
        for reference in (
            str(videos / "clip.mp4"),
            str(videos / "not-yet.mp4"),  # reported by the pipeline as a source in ERROR
            str(videos),  # a directory: the same
            "rtsp://127.0.0.1:8554/cam",
            0,
        ):
            answer = await exchange(front.port, init_request(reference))
            assert answer["response"]["status"] == "success", (reference, answer)
    assert len(handler.commands) == 5


def test_a_v4l2_device_passes_the_policy(tmp_path: Path) -> None:
    node = tmp_path / "video0"
    try:
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(81, 0))
    except PermissionError:
        pytest.skip("creating a device node needs root")
    from framepipe.protocol.commands import parse_command

    command = parse_command(json.loads(init_request(str(node))[4:]))
    InputPolicy().check(command)  # no error


async def test_under_a_flood_of_bad_headers_they_are_refused_on_the_spot() -> None:
    """While the drain allowance is spent, a bad header is answered from the accept path
    (no transport, no lingering close): cheaper per connection, same answer."""
    async with await serve(Recorder(), max_message_size=1024) as front:
        front.drain_allowance._level = 0.0  # as after a flood of oversize bodies
        front.drain_allowance._at = time.monotonic() + 3600  # and none coming back for now
        refused: list[bytes] = []
        refuse = front._refuse_at_once

        def counted(conn: Any, slot: Any, header: bytes) -> None:
            refused.append(header)
            refuse(conn, slot, header)

        front._refuse_at_once = counted  # type: ignore[method-assign]
        for header, error_class in (
            ((2**30).to_bytes(4, "big"), "MessageTooLargeError"),
            (b"\x00\x00\x00\x00", "MalformedHeaderError"),
        ):
            answer = await exchange(front.port, header + b"x" * 100)
            assert answer["response"]["error_class"] == error_class
            assert answer["pipeline_id"] is None
        assert len(refused) == 2, "both answered from the accept path"
        assert front.open_connections == 0
        good = await exchange(front.port, encode_message({"type": "list_pipelines"}))
        assert good["response"]["status"] == "success"
