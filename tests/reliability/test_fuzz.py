"""Fuzzing the protocol edge: every request a client can send is either a command or an
``invalid_payload`` error, never anything else (in-process, hypothesis), and the real manager
answers every one without an ``internal_error`` (over TCP, bounded)."""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framepipe.protocol._json import dumps
from framepipe.protocol.commands import parse_command
from framepipe.protocol.errors import InvalidPayloadError
from framepipe.protocol.framing import FrameDecoder, decode_object, encode_frame
from framepipe.protocol.limits import JsonLimits, check_json_limits
from tests.integration.manager_harness import ManagerProcess, running_manager
from tests.reliability.conftest import TOKEN, settled
from tests.reliability.strategies import (
    EDGE_NUMBERS,
    HOSTILE_REFERENCES,
    INIT,
    MINIMAL_INIT,
    json_values,
    manager_requests,
    mutated_requests,
    requests,
)

LIMITS = JsonLimits()


def serve_in_process(payload: bytes) -> None:
    """What the front end does with one payload, up to the handler: only InvalidPayloadError
    (or a command) may come out."""
    check_json_limits(payload, LIMITS)
    command = parse_command(decode_object(payload))
    # What the front accepts, the worker (which validates the wire form again) accepts too.
    # (Not always to the same dict: an explicit null where the default is not null, e.g.
    # webrtc's stream_output, is sent on as the default, as the reference client's
    # exclude_none sends it.)
    again = parse_command(command.to_wire())
    assert type(again) is type(command)


def assert_only_invalid_payload(payload: bytes) -> None:
    try:
        serve_in_process(payload)
    except InvalidPayloadError as error:
        assert len(error.message) < 4000, "an error quotes what it refuses, never all of it"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests)
def test_every_request_is_a_command_or_invalid_payload(request: Any) -> None:
    assert_only_invalid_payload(dumps(request))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_requests())
def test_mutated_valid_requests_are_a_command_or_invalid_payload(request: Any) -> None:
    assert_only_invalid_payload(dumps(request))


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_document_is_a_command_or_invalid_payload(document: Any) -> None:
    assert_only_invalid_payload(dumps(document))


frames = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: encode_frame(dumps(v))),
    requests.map(lambda r: encode_frame(dumps(r))),
    st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=64)).map(
        lambda t: t[0].to_bytes(4, "big") + t[1]
    ),
    st.integers(1, 3000).map(lambda d: encode_frame(b"[" * d + b"]" * d)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(frames, min_size=1, max_size=4), st.data())
def test_the_decoder_takes_any_bytes_in_any_chunks(
    chunks: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(chunks)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = FrameDecoder(max_message_size=64 * 1024)
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    try:
        for piece in pieces:
            for payload in decoder.feed(piece):
                assert_only_invalid_payload(payload)
        decoder.eof()
    except InvalidPayloadError:
        pass  # framing errors are invalid_payload: what the server answers


# --- the same through the real manager -------------------------------------------------------


@pytest.fixture(scope="module")
def manager() -> Iterator[ManagerProcess]:
    """A manager that refuses every pipeline at admission (a 1 MB RAM budget): the fuzz goes
    through the front end, the input policy and the manager's admission without starting a
    worker per valid init."""
    with running_manager({"FRAMEPIPE_TOKEN": TOKEN, "STREAM_MANAGER_MAX_RAM_MB": "1"}) as running:
        settled(running)
        yield running


def send(port: int, frame: bytes, timeout: float = 10.0) -> dict[str, Any] | None:
    """The answer to ``frame``, or None when the server closed without one (no request)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(frame)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        return None
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    document: dict[str, Any] = json.loads(data[4:])
    return document


def check_answer(answer: dict[str, Any] | None, manager: ManagerProcess) -> None:
    if answer is None:
        return
    response = answer["response"]
    assert response["status"] in ("success", "failure"), answer
    assert response.get("error_type") != "internal_error", (answer, manager.output()[-3000:])


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(manager_requests)
def test_the_manager_never_answers_internal_error(manager: ManagerProcess, request: Any) -> None:
    if isinstance(request, dict):
        request = {**request, "auth_token": TOKEN}
    check_answer(send(manager.port, encode_frame(dumps(request))), manager)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(frames)
def test_the_manager_answers_any_bytes_without_internal_error(
    manager: ManagerProcess, frame: bytes
) -> None:
    check_answer(send(manager.port, frame), manager)


def edge_inits() -> list[tuple[str, dict[str, Any]]]:
    """Every hostile video reference, and every edge number in every numeric field, each in an
    otherwise valid init (a sweep: hypothesis alone reaches some of these too rarely)."""
    cases = []
    for reference in HOSTILE_REFERENCES:
        for base in (MINIMAL_INIT, INIT):  # without properties, the manager probes the file
            request = copy.deepcopy(base)
            request["video_configuration"]["video_reference"] = reference
            cases.append((f"video_reference={reference!r:.40}", request))
    numeric = [
        ("video_configuration", "max_fps"),
        ("video_configuration", "batch_collection_timeout"),
        (None, "consumption_timeout"),
        (None, "decoding_buffer_size"),
        (None, "predictions_queue_size"),
        ("sink_configuration", "results_buffer_size"),
        ("processing_configuration", "confidence"),
        ("processing_configuration", "max_detections"),
    ]
    for section, key in numeric:
        for value in EDGE_NUMBERS:
            request = copy.deepcopy(INIT)
            (request[section] if section else request)[key] = value
            cases.append((f"{key}={value!r}", request))
    for key in ("frame_width", "frame_height", "fps", "exposure"):
        for value in EDGE_NUMBERS:
            request = copy.deepcopy(INIT)
            request["video_configuration"]["video_source_properties"] = {key: value}
            cases.append((f"video_source_properties.{key}={value!r}", request))
    return cases


def test_edge_values_in_every_field_never_reach_internal_error(manager: ManagerProcess) -> None:
    problems = []
    for name, request in edge_inits():
        answer = send(manager.port, encode_frame(dumps({**request, "auth_token": TOKEN})))
        assert answer is not None
        response = answer["response"]
        # Valid ones pass the protocol and the policy and are refused by the RAM budget.
        if response.get("error_type") not in ("invalid_payload", "operation_error"):
            problems.append(f"{name}: {response}")
    assert not problems, "\n".join(problems[:10])


def test_after_the_fuzz_the_manager_still_answers_and_started_nothing(
    manager: ManagerProcess,
) -> None:
    answer = manager.request({"type": "list_pipelines", "auth_token": TOKEN})
    assert answer["response"] == {"pipelines": [], "status": "success"}
    assert manager.workers() == []
    assert "Traceback" not in manager.output()
