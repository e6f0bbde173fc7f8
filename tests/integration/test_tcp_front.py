"""The TCP front end over real sockets on 127.0.0.1, with a small in-test CommandHandler.

``PipelineTable`` below is a test double of the manager: it keeps pipelines in a dict and
result entries in deques, enough to exercise every command and error type through the front
end and the clients (the real manager is tested in the server's own tests).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import socket
import statistics
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from framepipe.client import (
    AuthorisationError,
    ConnectivityError,
    InternalError,
    InvalidPayloadError,
    NotFoundError,
    OperationError,
    StreamManagerClient,
    SyncStreamManagerClient,
)
from framepipe.protocol.commands import (
    Command,
    ConsumeResultCommand,
    InitCommand,
    ListPipelinesCommand,
    MuteCommand,
    ResumeCommand,
    StatusCommand,
    TerminateCommand,
    WebRTCCommand,
)
from framepipe.protocol.envelope import (
    ConsumeResultBody,
    ListPipelinesBody,
    ResultEntry,
    StatusBody,
    SuccessBody,
    WebRTCAnswerBody,
)
from framepipe.protocol.framing import encode_frame, encode_message
from framepipe.protocol.payloads import (
    InitialisePipelinePayload,
    InitialiseWebRTCPipelinePayload,
    ModelConfiguration,
    VideoConfiguration,
    WebRTCOffer,
    WorkflowConfiguration,
)
from framepipe.server.manager.tcp import TcpFront, TcpFrontSettings, start_server
from tests.wire_examples import DELIBERATE_DIFFERENCES, Exchange, command_for, load_exchanges

HOST = "127.0.0.1"
TIMEOUT = 5.0
FRAME_META = {"frame_timestamp": "2026-11-25T11:37:36.233016", "frame_id": 1, "source_id": 0}


@dataclass
class FakePipeline:
    video_reference: Any
    muted: bool = False
    results: deque[ResultEntry] = field(default_factory=deque)


class PipelineTable:
    """A CommandHandler that stores pipelines in memory (test double of the manager).

    Special video references: ``"full"`` → operation_error, ``"crash"`` → an unexpected
    exception; status of a pipeline whose reference is ``"hang"`` waits until released.
    """

    def __init__(self) -> None:
        self.pipelines: dict[str, FakePipeline] = {}
        self.commands: list[Command] = []
        self.release_hung = asyncio.Event()
        self.hung_started = asyncio.Event()

    async def handle(self, request_id: str, command: Command) -> SuccessBody:
        self.commands.append(command)
        if isinstance(command, ListPipelinesCommand):
            return ListPipelinesBody(pipelines=list(self.pipelines))
        if isinstance(command, InitCommand | WebRTCCommand):
            reference = command.payload.video_configuration.video_reference
            if reference == "full":
                raise OperationError("Not enough RAM: 900 MB used + 300 MB needed > 1000 MB")
            if reference == "crash":
                raise RuntimeError("secret internals /etc/shadow")
            pipeline_id = str(uuid.uuid4())
            pipeline = FakePipeline(video_reference=reference)
            image = "x" * (8_000_000 if reference == "big" else 10)
            for i in range(5):
                pipeline.results.append(
                    ResultEntry(
                        outputs=[{"size": i, "image": image}],
                        frames_metadata=[{**FRAME_META, "frame_id": i}],  # type: ignore[list-item]
                    )
                )
            self.pipelines[pipeline_id] = pipeline
            if isinstance(command, WebRTCCommand):
                return WebRTCAnswerBody(pipeline_id=pipeline_id, sdp="answer-sdp")
            return SuccessBody(pipeline_id=pipeline_id)
        assert command.target_pipeline_id is not None
        pipeline_id = command.target_pipeline_id
        pipeline = self.pipelines.get(pipeline_id)
        if pipeline is None:
            raise NotFoundError(f"Could not find InferencePipeline with id={pipeline_id}.")
        if isinstance(command, StatusCommand):
            if pipeline.video_reference == "hang":
                self.hung_started.set()
                await self.release_hung.wait()
            if pipeline.video_reference == "unserialisable":
                return StatusBody(report={"bad": object()})
            return StatusBody(report={"muted": pipeline.muted, "left": len(pipeline.results)})
        if isinstance(command, MuteCommand):
            pipeline.muted = True
            return SuccessBody()
        if isinstance(command, ResumeCommand):
            pipeline.muted = False
            return SuccessBody()
        if isinstance(command, ConsumeResultCommand):
            count = command.max_entries or 1
            entries = []
            while pipeline.results and len(entries) < count:
                entry = pipeline.results.popleft()
                outputs = [
                    {k: v for k, v in o.items() if k not in command.excluded_fields} if o else o
                    for o in entry.outputs
                ]
                entries.append(ResultEntry(outputs=outputs, frames_metadata=entry.frames_metadata))
            return ConsumeResultBody.from_entries(entries, multi=command.max_entries is not None)
        if isinstance(command, TerminateCommand):
            del self.pipelines[pipeline_id]
            return SuccessBody()
        raise AssertionError(f"unexpected command {command!r}")


@pytest.fixture
async def table() -> PipelineTable:
    return PipelineTable()


@pytest.fixture
async def front(table: PipelineTable) -> AsyncIterator[TcpFront]:
    server = await start_server(table, TcpFrontSettings(host=HOST, port=0, read_timeout_s=2.0))
    try:
        yield server
    finally:
        table.release_hung.set()
        await server.close(grace_s=1.0)


@pytest.fixture
def client(front: TcpFront) -> StreamManagerClient:
    return StreamManagerClient.init(HOST, front.port, operations_timeout=TIMEOUT)


def payload(reference: Any = "clip.mp4") -> InitialisePipelinePayload:
    return InitialisePipelinePayload(
        video_configuration=VideoConfiguration(video_reference=reference),
        processing_configuration=ModelConfiguration(model="passthrough"),
    )


async def raw_exchange(port: int, data: bytes, *, half_close: bool = True) -> bytes:
    """Send ``data`` as is, optionally close our sending side, return everything received."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
        await writer.wait_closed()


def response_of(data: bytes) -> dict[str, Any]:
    assert len(data) >= 4, f"no response frame: {data!r}"
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    document = json.loads(data[4:])
    assert list(document) == ["request_id", "response", "pipeline_id"]
    uuid.UUID(document["request_id"])
    return document  # type: ignore[no-any-return]


# --- every command, both clients -----------------------------------------------------------


async def test_every_command_through_the_async_client(client: StreamManagerClient) -> None:
    assert (await client.list_pipelines()).pipelines == []
    started = await client.initialise_pipeline(payload())
    pipeline_id = started.context.pipeline_id
    assert started.status == "success" and pipeline_id is not None
    assert (await client.list_pipelines()).pipelines == [pipeline_id]
    assert (await client.get_status(pipeline_id)).report == {"muted": False, "left": 5}
    assert (await client.pause_pipeline(pipeline_id)).context.pipeline_id == pipeline_id
    assert (await client.get_status(pipeline_id)).report["muted"] is True
    await client.resume_pipeline(pipeline_id)
    assert (await client.get_status(pipeline_id)).report["muted"] is False

    one = await client.consume_pipeline_result(pipeline_id, excluded_fields=["image"])
    assert one.outputs == [{"size": 0}]
    assert one.frames_metadata[0].frame_id == 0 and one.frames_metadata[0].source_id == 0
    assert one.frames_metadata[0].frame_timestamp.isoformat() == FRAME_META["frame_timestamp"]
    assert len(one.entries) == 1

    many = await client.consume_pipeline_result(pipeline_id, max_entries=3)
    assert [e.outputs[0]["size"] for e in many.entries] == [1, 2, 3]  # type: ignore[index]
    assert many.outputs == many.entries[0].outputs
    rest = await client.consume_pipeline_result(pipeline_id, max_entries=10)
    assert len(rest.entries) == 1
    empty = await client.consume_pipeline_result(pipeline_id)
    assert empty.outputs == [] and empty.frames_metadata == [] and empty.entries == []

    await client.terminate_pipeline(pipeline_id)
    assert (await client.list_pipelines()).pipelines == []
    with pytest.raises(NotFoundError) as caught:
        await client.get_status(pipeline_id)
    assert caught.value.public_message == f"Could not find InferencePipeline with id={pipeline_id}."
    assert caught.value.pipeline_id == pipeline_id


async def test_webrtc_initialisation(client: StreamManagerClient) -> None:
    request = InitialiseWebRTCPipelinePayload(
        video_configuration=VideoConfiguration(video_reference="clip.mp4"),
        processing_configuration=ModelConfiguration(model="passthrough"),
        webrtc_offer=WebRTCOffer(type="offer", sdp="v=0"),
    )
    answer = await client.initialise_webrtc_pipeline(request)
    assert (answer.sdp, answer.type) == ("answer-sdp", "answer")
    assert answer.context.pipeline_id is not None


async def test_every_command_through_the_sync_client(front: TcpFront) -> None:
    sync = SyncStreamManagerClient.init(HOST, front.port, operations_timeout=TIMEOUT)

    def scenario() -> None:
        pipeline_id = sync.initialise_pipeline(payload()).context.pipeline_id
        assert pipeline_id is not None
        assert sync.list_pipelines().pipelines == [pipeline_id]
        sync.pause_pipeline(pipeline_id)
        assert sync.get_status(pipeline_id).report["muted"] is True
        sync.resume_pipeline(pipeline_id)
        assert sync.consume_pipeline_result(pipeline_id, ["image"]).outputs == [{"size": 0}]
        assert len(sync.consume_pipeline_result(pipeline_id, max_entries=2).entries) == 2
        sync.terminate_pipeline(pipeline_id)
        with pytest.raises(NotFoundError):
            sync.terminate_pipeline(pipeline_id)

    await asyncio.to_thread(scenario)


async def test_responses_larger_than_the_socket_buffer(client: StreamManagerClient) -> None:
    pipeline_id = (await client.initialise_pipeline(payload("big"))).context.pipeline_id
    assert pipeline_id
    many = await client.consume_pipeline_result(pipeline_id, max_entries=3)
    assert [len(e.outputs[0]["image"]) for e in many.entries] == [8_000_000] * 3  # type: ignore[index]


async def test_ipv6_loopback(table: PipelineTable) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = await start_server(table, TcpFrontSettings(host="::1", port=0))
    except OSError as error:
        pytest.skip(f"IPv6 loopback unavailable: {error}")
    async with server:
        assert server.sockets[0].family == socket.AF_INET6
        client = StreamManagerClient.init("::1", server.port, TIMEOUT)
        assert (await client.list_pipelines()).pipelines == []


# --- every error type over TCP -------------------------------------------------------------


async def test_invalid_payload_names_the_field(
    client: StreamManagerClient, front: TcpFront
) -> None:
    document = response_of(await raw_exchange(front.port, encode_message({"type": "status"})))
    body = document["response"]
    assert (body["status"], body["error_type"]) == ("failure", "invalid_payload")
    assert "field 'pipeline_id'" in body["error_message"]
    assert document["pipeline_id"] is None
    with pytest.raises(InvalidPayloadError, match="field 'max_entries'"):
        await client.send(ConsumeResultCommand.model_construct(pipeline_id="p", max_entries=0))


async def test_unknown_type_is_invalid_payload_naming_it(front: TcpFront) -> None:
    body = response_of(await raw_exchange(front.port, encode_message({"type": "explode"})))[
        "response"
    ]
    assert body["error_type"] == "invalid_payload" and "'explode'" in body["error_message"]


async def test_not_found(client: StreamManagerClient) -> None:
    for call in (
        client.get_status,
        client.pause_pipeline,
        client.resume_pipeline,
        client.terminate_pipeline,
    ):
        with pytest.raises(NotFoundError):
            await call("00000000-0000-0000-0000-000000000000")
    with pytest.raises(NotFoundError):
        await client.consume_pipeline_result("00000000-0000-0000-0000-000000000000", [])


async def test_operation_error(client: StreamManagerClient) -> None:
    with pytest.raises(OperationError, match="900 MB used") as caught:
        await client.initialise_pipeline(payload("full"))
    assert caught.value.error_class == "OperationError"


async def test_internal_error_never_leaks_details(
    client: StreamManagerClient, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="framepipe.server.manager.tcp"),
        pytest.raises(InternalError) as caught,
    ):
        await client.initialise_pipeline(payload("crash"))
    error = caught.value
    assert error.error_class == "RuntimeError"
    assert "secret" not in error.message and "Traceback" not in error.message
    assert error.request_id is not None and error.request_id in error.message
    assert "secret internals" in caplog.text and error.request_id in caplog.text


async def test_unserialisable_response_is_internal_error(
    client: StreamManagerClient, table: PipelineTable
) -> None:
    pipeline_id = (await client.initialise_pipeline(payload("unserialisable"))).context.pipeline_id
    assert pipeline_id is not None
    with pytest.raises(InternalError) as caught:
        await client.get_status(pipeline_id)
    assert caught.value.error_class == "TypeError"
    assert caught.value.pipeline_id == pipeline_id


async def test_shared_token(table: PipelineTable) -> None:
    settings = TcpFrontSettings(host=HOST, port=0, auth_token="s3cret")
    async with await start_server(table, settings) as server:
        anonymous = StreamManagerClient.init(HOST, server.port, TIMEOUT)
        wrong = StreamManagerClient.init(HOST, server.port, TIMEOUT, auth_token="guess")
        right = StreamManagerClient.init(HOST, server.port, TIMEOUT, auth_token="s3cret")
        with pytest.raises(AuthorisationError, match="requires a shared token"):
            await anonymous.list_pipelines()
        with pytest.raises(AuthorisationError, match="not valid"):
            await wrong.list_pipelines()
        with pytest.raises(AuthorisationError):  # checked before the command is even parsed
            await wrong.send(StatusCommand(pipeline_id="x"))
        assert table.commands == []
        pipeline_id = (await right.initialise_pipeline(payload())).context.pipeline_id
        assert (await right.list_pipelines()).pipelines == [pipeline_id]
        init = table.commands[0]
        assert isinstance(init, InitCommand) and "auth_token" not in init.to_wire()


# --- malformed frames ----------------------------------------------------------------------


async def test_oversize_length_is_refused_without_reading_the_body(table: PipelineTable) -> None:
    settings = TcpFrontSettings(host=HOST, port=0, max_message_size=1024)
    async with await start_server(table, settings) as server:
        # Only the header is sent, no EOF: the answer must come from the header alone.
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write((1025).to_bytes(4, "big"))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        await writer.wait_closed()
        body = response_of(data)["response"]
        assert body["error_type"] == "invalid_payload"
        assert body["error_class"] == "MessageTooLargeError" and "1025" in body["error_message"]


async def test_oversize_body_still_being_sent_gets_its_answer(table: PipelineTable) -> None:
    """The server answers while the client is still sending; the client reads the answer
    (no RST that would discard it) after pushing 2 MiB."""
    settings = TcpFrontSettings(host=HOST, port=0, max_message_size=1024)
    async with await start_server(table, settings) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write((2 * 1024 * 1024).to_bytes(4, "big"))
        for _ in range(32):
            writer.write(b"x" * 65536)
            await writer.drain()
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        await writer.wait_closed()
        assert response_of(data)["response"]["error_class"] == "MessageTooLargeError"


@pytest.mark.parametrize(
    ("data", "error_class"),
    [
        (b"\x00\x01", "MalformedHeaderError"),
        (b"\x00\x00\x00\x00", "MalformedHeaderError"),
        ((100).to_bytes(4, "big") + b'{"type":"l', "TruncatedMessageError"),
        (encode_frame(b"\xff\xfe\x00garbage"), "MalformedPayloadError"),
        (encode_frame(b"[1,2,3]"), "MalformedPayloadError"),
        (encode_frame(b'"just a string"'), "MalformedPayloadError"),
    ],
)
async def test_malformed_frames_are_invalid_payload(
    front: TcpFront, data: bytes, error_class: str
) -> None:
    document = response_of(await raw_exchange(front.port, data))
    assert document["response"]["error_type"] == "invalid_payload"
    assert document["response"]["error_class"] == error_class
    assert document["pipeline_id"] is None


async def test_a_request_split_across_writes_is_served(front: TcpFront) -> None:
    """Header first, body later: the accept path hands the bytes it read to the transport
    path, which completes the request."""
    frame = encode_message({"type": "list_pipelines"})
    reader, writer = await asyncio.open_connection(HOST, front.port)
    for part in (frame[:4], frame[4:9], frame[9:]):
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.05)
    data = await asyncio.wait_for(reader.read(), TIMEOUT)
    writer.close()
    await writer.wait_closed()
    assert response_of(data)["response"] == {"pipelines": [], "status": "success"}


async def test_bytes_after_the_request_are_ignored(front: TcpFront) -> None:
    frame = encode_message({"type": "list_pipelines"})
    data = await raw_exchange(front.port, frame + b"trailing junk" + frame)
    assert response_of(data)["response"]["status"] == "success"


async def test_random_garbage_never_breaks_the_server(
    front: TcpFront, client: StreamManagerClient
) -> None:
    rng = __import__("random").Random(5)
    for _ in range(40):
        garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        data = await raw_exchange(front.port, garbage)
        if data:
            assert response_of(data)["response"]["status"] == "failure"
    assert (await client.list_pipelines()).status == "success"


async def test_connection_closed_without_a_byte_is_ignored(
    front: TcpFront, client: StreamManagerClient
) -> None:
    assert await raw_exchange(front.port, b"") == b""
    assert (await client.list_pipelines()).status == "success"


async def test_request_not_completed_in_time_is_answered_and_closed(table: PipelineTable) -> None:
    settings = TcpFrontSettings(host=HOST, port=0, read_timeout_s=0.3)
    async with await start_server(table, settings) as server:
        started = time.monotonic()
        data = await raw_exchange(server.port, (50).to_bytes(4, "big") + b'{"ty', half_close=False)
        elapsed = time.monotonic() - started
        body = response_of(data)["response"]
        assert body["error_class"] == "RequestTimeoutError"
        assert "received 4 of 50 payload bytes" in body["error_message"]
        assert 0.25 < elapsed < 2.0


async def test_large_requests_are_parsed_off_the_event_loop(
    client: StreamManagerClient, front: TcpFront, table: PipelineTable
) -> None:
    """An init near the 1 MiB limit (a big workflow specification) is parsed in a worker
    thread; it is served correctly, and so is a malformed one of the same size."""
    big_spec = {"version": "1.0", "steps": [], "notes": "n" * 1_000_000}
    request = InitialisePipelinePayload(
        video_configuration=VideoConfiguration(video_reference="clip.mp4"),
        processing_configuration=WorkflowConfiguration(workflow_specification=big_spec),
    )
    pipelines = asyncio.gather(*(client.list_pipelines() for _ in range(5)))
    started = await client.initialise_pipeline(request)
    await pipelines
    assert started.context.pipeline_id in table.pipelines
    init = table.commands[-1]
    assert isinstance(init, InitCommand)
    assert init.payload.raw_processing_configuration["workflow_specification"] == big_spec
    bad = {"type": "init", "video_configuration": {"x": "y" * 1_000_000}}
    body = response_of(await raw_exchange(front.port, encode_message(bad)))["response"]
    assert body["error_type"] == "invalid_payload" and "video_reference" in body["error_message"]


# --- the reference's raw frames, byte for byte ---------------------------------------------

RAW_FRAMING_CASES = [
    e
    for e in load_exchanges()
    if e.request.raw and not e.request.title.startswith("raw: init with")
]


@pytest.mark.parametrize(
    "exchange", RAW_FRAMING_CASES, ids=[e.request.title for e in RAW_FRAMING_CASES]
)
async def test_reference_raw_requests_get_the_reference_answer_or_the_fixed_one(
    front: TcpFront, exchange: Exchange
) -> None:
    """The capture's hand-made requests, sent byte for byte; framepipe answers with the
    reference's error_type, except where the reference is wrong (DELIBERATE_DIFFERENCES)."""
    captured = exchange.response.json()
    assert isinstance(captured, dict)
    expected = DELIBERATE_DIFFERENCES.get(
        exchange.request.title, (None, captured["response"]["error_type"])
    )[1]
    document = response_of(await raw_exchange(front.port, exchange.request.wire))
    assert document["response"]["error_type"] == expected
    # The envelope names the pipeline only when the request named one. (For an invalid init
    # the reference names the worker it spawned and leaked; framepipe spawns none.)
    request = (
        json.loads(exchange.request.body)
        if exchange.request.title == "raw: terminate unknown pipeline id"
        else {}
    )
    assert document["pipeline_id"] == request.get("pipeline_id")


class ReplayServer:
    """Plays the reference server from the capture: records each request's bytes and answers
    with the captured response frame."""

    def __init__(self, exchanges: list[Exchange]) -> None:
        self.pending = deque(exchanges)
        self.received: list[tuple[Exchange, bytes]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        exchange = self.pending.popleft()
        header = await reader.readexactly(4)
        body = await reader.readexactly(int.from_bytes(header, "big"))
        self.received.append((exchange, header + body))
        response = exchange.response.body
        writer.write(len(response).to_bytes(4, "big") + response)
        await writer.drain()
        writer.close()


async def test_client_sends_the_reference_clients_bytes_and_reads_its_answers() -> None:
    replayable = [e for e in load_exchanges() if not e.request.raw and not e.response.truncated]
    replay = ReplayServer(replayable)
    server = await asyncio.start_server(replay.serve, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    client = StreamManagerClient.init(HOST, port, TIMEOUT)
    try:
        for exchange in replayable:
            request = exchange.request.json()
            captured = exchange.response.json()
            assert isinstance(request, dict) and isinstance(captured, dict)
            command = command_for(request)
            if captured["response"]["status"] == "failure":
                error_class = {
                    "not_found": NotFoundError,
                    "invalid_payload": InvalidPayloadError,
                    "internal_error": InternalError,
                }[captured["response"]["error_type"]]
                with pytest.raises(error_class) as caught:
                    await client.send(command)
                assert caught.value.request_id == captured["request_id"]
                continue
            envelope = await client.send(command)
            assert envelope.request_id == captured["request_id"]
            assert envelope.pipeline_id == captured["pipeline_id"]
            if isinstance(command, ConsumeResultCommand):
                typed = await _consume_again(client, replay, exchange, command)
                assert typed.outputs == captured["response"]["outputs"]
    finally:
        server.close()
        await server.wait_closed()
    assert not replay.pending
    for exchange, sent in replay.received:
        body = sent[4:]
        assert body == exchange.request.body, exchange.name
        assert int.from_bytes(sent[:4], "big") == len(body)


async def _consume_again(
    client: StreamManagerClient,
    replay: ReplayServer,
    exchange: Exchange,
    command: ConsumeResultCommand,
) -> Any:
    """Replay the same consume exchange through the typed client method."""
    replay.pending.appendleft(exchange)
    response = await client.consume_pipeline_result(command.pipeline_id, command.excluded_fields)
    replay.received.pop()
    return response


# --- concurrency ---------------------------------------------------------------------------


async def test_a_slow_client_does_not_block_others(
    front: TcpFront, client: StreamManagerClient
) -> None:
    reader, writer = await asyncio.open_connection(HOST, front.port)
    slow_request = encode_message({"type": "list_pipelines"})

    async def trickle() -> bytes:
        for byte in slow_request:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.03)
        return await reader.read()

    slow = asyncio.create_task(trickle())
    await asyncio.sleep(0.1)
    for _ in range(20):
        started = time.monotonic()
        await client.list_pipelines()
        assert time.monotonic() - started < 0.5
    assert not slow.done()
    assert response_of(await asyncio.wait_for(slow, TIMEOUT))["response"]["status"] == "success"
    writer.close()
    await writer.wait_closed()


async def test_a_hung_handler_does_not_block_others(
    front: TcpFront, client: StreamManagerClient, table: PipelineTable
) -> None:
    hung_id = (await client.initialise_pipeline(payload("hang"))).context.pipeline_id
    other_id = (await client.initialise_pipeline(payload())).context.pipeline_id
    assert hung_id and other_id
    hung = asyncio.create_task(client.get_status(hung_id))
    await asyncio.wait_for(table.hung_started.wait(), TIMEOUT)
    for _ in range(10):
        assert (await client.get_status(other_id)).report["muted"] is False
    assert not hung.done()
    table.release_hung.set()
    assert (await asyncio.wait_for(hung, TIMEOUT)).status == "success"


async def test_a_client_that_leaves_early_does_not_cancel_the_command(
    front: TcpFront, client: StreamManagerClient, table: PipelineTable
) -> None:
    hung_id = (await client.initialise_pipeline(payload("hang"))).context.pipeline_id
    assert hung_id
    impatient = StreamManagerClient.init(HOST, front.port, operations_timeout=0.2)
    with pytest.raises(ConnectivityError):
        await impatient.get_status(hung_id)
    table.release_hung.set()
    await asyncio.sleep(0.05)
    assert (await client.list_pipelines()).pipelines == [hung_id]


async def test_close_cancels_requests_still_running(table: PipelineTable) -> None:
    server = await start_server(table, TcpFrontSettings(host=HOST, port=0))
    client = StreamManagerClient.init(HOST, server.port, TIMEOUT)
    hung_id = (await client.initialise_pipeline(payload("hang"))).context.pipeline_id
    assert hung_id
    hung = asyncio.create_task(client.get_status(hung_id))
    await asyncio.wait_for(table.hung_started.wait(), TIMEOUT)
    started = time.monotonic()
    await server.close(grace_s=0.2)
    assert time.monotonic() - started < 2.0
    with pytest.raises(ConnectivityError):
        await hung
    with pytest.raises(ConnectivityError):
        await client.list_pipelines()


async def test_fifty_concurrent_clients(front: TcpFront, client: StreamManagerClient) -> None:
    pipeline_id = (await client.initialise_pipeline(payload())).context.pipeline_id
    assert pipeline_id
    timings: list[float] = []

    async def one_client() -> None:
        own = StreamManagerClient.init(HOST, front.port, TIMEOUT)
        for _ in range(10):
            started = time.perf_counter()
            response = await own.get_status(pipeline_id)
            timings.append(time.perf_counter() - started)
            assert response.context.pipeline_id == pipeline_id

    await asyncio.gather(*(one_client() for _ in range(50)))
    assert len(timings) == 500
    timings.sort()
    p99 = timings[int(len(timings) * 0.99) - 1]
    # Clients and server share one event loop on a shared 2-core machine here; the 20 ms
    # target is measured by the benchmark with the clients in another process.
    assert p99 < 1.0, f"p50={statistics.median(timings) * 1e3:.1f} ms p99={p99 * 1e3:.1f} ms"


# --- the listening socket ------------------------------------------------------------------


async def test_listening_socket_is_close_on_exec_and_reuses_the_address(
    table: PipelineTable,
) -> None:
    server = await start_server(table, TcpFrontSettings(host=HOST, port=0))
    port = server.port
    (sock,) = server.sockets
    assert fcntl.fcntl(sock.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert not os.get_inheritable(sock.fileno())
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    client = StreamManagerClient.init(HOST, port, TIMEOUT)
    for _ in range(3):  # the server closes first: its side of each connection is in TIME_WAIT
        await client.list_pipelines()
    await server.close()
    again = await start_server(table, TcpFrontSettings(host=HOST, port=port))
    try:
        assert again.port == port
        assert (await client.list_pipelines()).status == "success"
    finally:
        await again.close()


async def test_unreachable_manager_is_a_connectivity_error() -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectivityError):
        await StreamManagerClient.init(HOST, port, 1.0).list_pipelines()
    with pytest.raises(ConnectivityError):
        await asyncio.to_thread(SyncStreamManagerClient.init(HOST, port, 1.0).list_pipelines)


# --- on uvloop -----------------------------------------------------------------------------


def test_the_front_end_on_uvloop() -> None:
    """The manager may run on uvloop, whose transports are not asyncio's classes."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        table = PipelineTable()
        async with await start_server(table, TcpFrontSettings(host=HOST, port=0)) as server:
            client = StreamManagerClient.init(HOST, server.port, TIMEOUT)
            pipeline_id = (await client.initialise_pipeline(payload())).context.pipeline_id
            assert pipeline_id
            results = await asyncio.gather(*(client.get_status(pipeline_id) for _ in range(50)))
            assert all(r.report["left"] == 5 for r in results)
            with pytest.raises(NotFoundError):
                await client.terminate_pipeline("nope")
            for data, error_class in (
                (b"\x00\x01", "MalformedHeaderError"),
                ((2**31).to_bytes(4, "big"), "MessageTooLargeError"),
                (encode_frame(b"[1]"), "MalformedPayloadError"),
            ):
                body = response_of(await raw_exchange(server.port, data))["response"]
                assert body["error_class"] == error_class
            await client.terminate_pipeline(pipeline_id)

    uvloop.run(scenario())


# --- running out of file descriptors -------------------------------------------------------

_LOW_FD_SERVER = """
import asyncio, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (96, 96))
from framepipe.protocol.envelope import ListPipelinesBody
from framepipe.server.manager.tcp import TcpFrontSettings, start_server

class Handler:
    async def handle(self, request_id, command):
        return ListPipelinesBody(pipelines=[])

async def main():
    front = await start_server(Handler(), TcpFrontSettings(host="127.0.0.1", port=0, read_timeout_s=30))
    print(front.port, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_running_out_of_file_descriptors_pauses_accepting_without_spinning() -> None:
    import subprocess
    import sys

    import psutil

    server = subprocess.Popen(
        [sys.executable, "-c", _LOW_FD_SERVER],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    held: list[socket.socket] = []
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        # Each connection sends one byte, so the server accepts it and holds it (partial
        # request); 150 of them exhaust its 96 descriptors.
        for _ in range(150):
            sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
            sock.sendall(b"\x00")
            held.append(sock)
        process = psutil.Process(server.pid)
        time.sleep(0.5)
        cpu_before = sum(process.cpu_times()[:2])
        time.sleep(1.0)
        spent = sum(process.cpu_times()[:2]) - cpu_before
        assert spent < 0.5, f"the server spun at {spent:.2f} s of CPU per second while out of fds"
        for sock in held:
            sock.close()
        held.clear()
        sync = SyncStreamManagerClient.init(HOST, port, operations_timeout=TIMEOUT)
        assert sync.list_pipelines().pipelines == []
    finally:
        for sock in held:
            sock.close()
        server.kill()
        server.wait(TIMEOUT)
        if server.stdout is not None:
            server.stdout.close()
