"""Golden tests: framepipe's bytes against the reference's captured frames (wire-examples.md).

Requests: for every request the reference client produced (titles without ``raw:``), the
request framepipe's client builds for the same call is byte-identical.
Responses: for every response, framepipe's envelope around the same content is byte-identical
(request_id and pipeline_id taken from the capture); where framepipe raises the same error as
the reference (unknown pipeline id, malformed JSON), its own error gives the same bytes.

Where the reference is wrong, framepipe answers differently on purpose (see the top of
wire-examples.md); those cases are listed in ``DELIBERATE_DIFFERENCES`` and checked over TCP in
tests/integration/test_tcp_front.py.

Note on headers: the capture redacted the video path to ``/videos/...`` in the JSON but kept the
original header, 9 bytes longer; for those frames the body is compared and framepipe's header
must equal the length of its own body.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from framepipe.client import _exchange
from framepipe.protocol import _json
from framepipe.protocol.commands import (
    InitCommand,
)
from framepipe.protocol.envelope import (
    ConsumeResultBody,
    FailureBody,
    ListPipelinesBody,
    ResponseBody,
    StatusBody,
    SuccessBody,
    encode_response,
)
from framepipe.protocol.errors import ErrorType, InvalidPayloadError, NotFoundError
from framepipe.protocol.framing import decode_object
from framepipe.protocol.payloads import (
    InitialisePipelinePayload,
    VideoConfiguration,
    WorkflowConfiguration,
)
from tests.wire_examples import (
    COPY,
    DELIBERATE_DIFFERENCES,
    SHARED,
    Exchange,
    Frame,
    command_for,
    load_exchanges,
)

EXCHANGES = load_exchanges()
CLIENT_REQUESTS = [e for e in EXCHANGES if not e.request.raw]
COMPLETE_RESPONSES = [e for e in EXCHANGES if not e.response.truncated]
TRUNCATED_RESPONSES = [e for e in EXCHANGES if e.response.truncated]
REDACTED_PATH = b'"/videos/'


def _ids(exchanges: list[Exchange]) -> list[str]:
    return [e.name for e in exchanges]


def assert_frame_equal(ours: bytes, captured: Frame) -> None:
    """``ours`` (header + body) equals the captured frame, allowing for the redacted path."""
    header, body = ours[:4], ours[4:]
    assert body == captured.body
    if int.from_bytes(captured.header, "big") == len(captured.body):
        assert header == captured.header
    else:
        assert REDACTED_PATH in captured.body, "header and body disagree in the capture"
        assert int.from_bytes(header, "big") == len(body)


def body_for(response: dict[str, Any]) -> ResponseBody:
    if response["status"] == "failure":
        return FailureBody(
            error_type=ErrorType(response["error_type"]),
            error_class=response.get("error_class"),
            error_message=response.get("error_message"),
            public_error_message=response.get("public_error_message"),
        )
    if "pipelines" in response:
        return ListPipelinesBody(pipelines=response["pipelines"])
    if "report" in response:
        return StatusBody(report=response["report"])
    if "outputs" in response:
        return ConsumeResultBody(
            outputs=response["outputs"], frames_metadata=response.get("frames_metadata", [])
        )
    assert set(response) == {"status"}
    return SuccessBody()


@pytest.fixture(params=["json.dumps path", "orjson fast path"])
def encoder_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through both serialisation paths of framepipe.protocol._json."""
    threshold = 10**12 if request.param == "json.dumps path" else 0
    monkeypatch.setattr(_json, "FAST_PATH_MIN_BYTES", threshold)
    return str(request.param)


def test_the_examples_file_was_parsed() -> None:
    assert len(EXCHANGES) == 42
    assert len(CLIENT_REQUESTS) == 28
    assert {e.request.title for e in EXCHANGES} >= set(DELIBERATE_DIFFERENCES)


def test_the_copy_equals_the_shared_reference() -> None:
    if not SHARED.exists():
        pytest.skip(f"the shared reference is not checked out next to the repository ({SHARED})")
    assert COPY.read_bytes() == SHARED.read_bytes()


@pytest.mark.parametrize("exchange", CLIENT_REQUESTS, ids=_ids(CLIENT_REQUESTS))
def test_client_request_bytes_equal_the_reference_client(exchange: Exchange) -> None:
    request = exchange.request.json()
    assert isinstance(request, dict)
    ours = _exchange.request_bytes(command_for(request), auth_token=None)
    assert_frame_equal(ours, exchange.request)


def test_init_built_from_models_equals_the_reference_client() -> None:
    """The happy-path init, built the way the reference's docs build it."""
    exchange = next(e for e in CLIENT_REQUESTS if e.request.title == "init")
    captured = exchange.request.json()
    assert isinstance(captured, dict)
    payload = InitialisePipelinePayload(
        video_configuration=VideoConfiguration(
            type="VideoConfiguration",
            video_reference="/videos/test_1080p30_long.mp4",
            max_fps=30.0,
            source_buffer_filling_strategy="DROP_OLDEST",  # type: ignore[arg-type]
            source_buffer_consumption_strategy="EAGER",  # type: ignore[arg-type]
        ),
        processing_configuration=WorkflowConfiguration(
            type="WorkflowConfiguration",
            workflow_specification=captured["processing_configuration"]["workflow_specification"],
        ),
    )
    ours = _exchange.request_bytes(InitCommand(payload=payload), auth_token=None)
    assert_frame_equal(ours, exchange.request)


@pytest.mark.parametrize("exchange", COMPLETE_RESPONSES, ids=_ids(COMPLETE_RESPONSES))
def test_response_bytes_equal_the_reference(exchange: Exchange, encoder_path: str) -> None:
    captured = exchange.response.json()
    assert isinstance(captured, dict)
    ours = encode_response(
        captured["request_id"], captured["pipeline_id"], body_for(captured["response"])
    )
    assert_frame_equal(ours, exchange.response)


def _closed(prefix: str) -> str:
    """``prefix`` with its open string and containers closed."""
    closers = []
    in_string = escaped = False
    for char in prefix:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "{[":
            closers.append("}" if char == "{" else "]")
        elif char in "}]":
            closers.pop()
    return prefix + ('"' if in_string else "") + "".join(reversed(closers))


def _truncated_document(text: str) -> tuple[Any, int]:
    """The longest prefix of ``text`` — the whole text, else one ending before a `, "` — that
    closes into valid JSON: (that JSON, the prefix length)."""
    cut = len(text)
    while cut > 0:
        try:
            return json.loads(_closed(text[:cut])), cut
        except json.JSONDecodeError:
            cut = text.rfind(', "', 0, cut)
    raise AssertionError("no parseable prefix")


@pytest.mark.parametrize("exchange", TRUNCATED_RESPONSES, ids=_ids(TRUNCATED_RESPONSES))
def test_truncated_response_prefix_equals_the_reference(
    exchange: Exchange, encoder_path: str
) -> None:
    """Only a prefix of these frames was captured: the complete part of the content, encoded
    by framepipe, starts with exactly the captured bytes."""
    text = exchange.response.body.decode("utf-8")
    document, cut = _truncated_document(text)
    assert cut > 200  # a substantial part of the report is compared
    ours = encode_response(
        document["request_id"], document.get("pipeline_id"), body_for(document["response"])
    )
    assert ours[4:].startswith(exchange.response.body[:cut])


NOT_FOUND_RESPONSES = [
    e
    for e in COMPLETE_RESPONSES
    if (e.response.json() or {}).get("response", {}).get("error_type") == "not_found"  # type: ignore[union-attr]
]


@pytest.mark.parametrize("exchange", NOT_FOUND_RESPONSES, ids=_ids(NOT_FOUND_RESPONSES))
def test_not_found_error_gives_the_reference_bytes(exchange: Exchange) -> None:
    """The manager raises NotFoundError for an unknown id; its failure body is the reference's."""
    captured = exchange.response.json()
    assert isinstance(captured, dict)
    pipeline_id = captured["pipeline_id"]
    error = NotFoundError(f"Could not find InferencePipeline with id={pipeline_id}.")
    ours = encode_response(captured["request_id"], pipeline_id, FailureBody.from_error(error))
    assert_frame_equal(ours, exchange.response)


def test_malformed_json_error_gives_the_reference_bytes() -> None:
    exchange = next(e for e in EXCHANGES if e.request.title == "raw: malformed JSON body")
    with pytest.raises(InvalidPayloadError) as caught:
        decode_object(exchange.request.body)
    captured = exchange.response.json()
    assert isinstance(captured, dict)
    ours = encode_response(captured["request_id"], None, FailureBody.from_error(caught.value))
    assert_frame_equal(ours, exchange.response)


@pytest.mark.parametrize("title", sorted(DELIBERATE_DIFFERENCES))
def test_deliberate_differences_are_what_the_capture_shows(title: str) -> None:
    """Guard the table above: the capture really shows the reference's (wrong) error type."""
    exchange = next(e for e in EXCHANGES if e.request.title == title)
    captured = exchange.response.json()
    assert isinstance(captured, dict)
    assert captured["response"]["error_type"] == DELIBERATE_DIFFERENCES[title][0]
