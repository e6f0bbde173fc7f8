"""Response envelope and bodies: key order, failure bodies from errors, client-side parsing."""

from __future__ import annotations

import json

import pytest

from framepipe.protocol.envelope import (
    ConsumeResultBody,
    FailureBody,
    ResultEntry,
    WebRTCAnswerBody,
    encode_response,
    parse_response,
)
from framepipe.protocol.errors import (
    ERROR_CLASSES,
    AuthorisationError,
    CapacityError,
    ErrorType,
    FramepipeError,
    InternalError,
    InvalidPayloadError,
    NotFoundError,
    OperationError,
    RamBudgetExceededError,
    ShmExhaustedError,
)
from framepipe.protocol.framing import MalformedPayloadError

META = {"frame_timestamp": "2026-11-25T11:37:36.233016", "frame_id": 1, "source_id": 0}


def body_text(data: bytes) -> str:
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    return data[4:].decode()


def test_envelope_key_order_and_success_body() -> None:
    text = body_text(encode_response("r", "p", WebRTCAnswerBody(sdp="v=0")))
    assert (
        text
        == '{"request_id": "r", "response": {"status": "success", "sdp": "v=0", "type": "answer"}, "pipeline_id": "p"}'
    )


def test_failure_body_of_an_error_with_a_cause() -> None:
    error = OperationError("RAM budget exceeded: 900 MB used + 300 MB needed > 1000 MB")
    wire = FailureBody.from_error(error).to_wire()
    assert wire == {
        "status": "failure",
        "error_type": "operation_error",
        "error_class": "OperationError",
        "error_message": "RAM budget exceeded: 900 MB used + 300 MB needed > 1000 MB",
    }
    assert list(wire) == ["status", "error_type", "error_class", "error_message"]


def test_failure_body_with_an_explicit_public_message() -> None:
    error = InvalidPayloadError("field 'x': bad", public_message="Could not decode the payload.")
    assert (
        FailureBody.from_error(error).to_wire()["public_error_message"]
        == "Could not decode the payload."
    )


def test_not_found_is_described_by_its_public_message_only() -> None:
    wire = FailureBody.from_error(
        NotFoundError("Could not find InferencePipeline with id=x.")
    ).to_wire()
    assert wire == {
        "status": "failure",
        "error_type": "not_found",
        "public_error_message": "Could not find InferencePipeline with id=x.",
    }


def test_internal_failure_names_the_class_but_not_the_details() -> None:
    wire = FailureBody.internal(KeyError("secret path /etc/x"), "req-1").to_wire()
    assert wire["error_type"] == "internal_error" and wire["error_class"] == "KeyError"
    assert "secret" not in json.dumps(wire) and "req-1" in wire["error_message"]


@pytest.mark.parametrize("error_type", list(ErrorType))
def test_each_failure_turns_back_into_its_exception_class(error_type: ErrorType) -> None:
    data = encode_response(
        "req", "pid", FailureBody(error_type, "ValueError", "private detail", "public text")
    )
    envelope = parse_response(json.loads(data[4:]))
    assert not envelope.succeeded
    with pytest.raises(FramepipeError) as caught:
        envelope.raise_for_failure()
    error = caught.value
    assert type(error) is ERROR_CLASSES[error_type]
    assert (error.error_class, error.message, error.public_message) == (
        "ValueError",
        "private detail",
        "public text",
    )
    assert (error.request_id, error.pipeline_id) == ("req", "pid")


@pytest.mark.parametrize("refined", [RamBudgetExceededError, ShmExhaustedError])
def test_a_capacity_refusal_comes_back_as_its_own_class(refined: type[FramepipeError]) -> None:
    body = FailureBody.from_error(refined("no room"))
    assert body.to_wire()["error_type"] == "operation_error"
    assert body.to_wire()["error_class"] == refined.__name__
    error = parse_response(json.loads(encode_response("r", None, body)[4:])).failure().to_error()
    assert type(error) is refined
    assert isinstance(error, CapacityError) and isinstance(error, OperationError)


@pytest.mark.parametrize(
    ("error_type", "error_class"),
    [
        (ErrorType.OPERATION_ERROR, "OperationError"),  # a refusal retrying cannot fix
        (ErrorType.INTERNAL_ERROR, "ShmExhaustedError"),  # a name outside its error_type
        (ErrorType.OPERATION_ERROR, "FramepipeError"),  # not a listed refinement
    ],
)
def test_only_listed_refinements_of_the_right_type_are_trusted(
    error_type: ErrorType, error_class: str
) -> None:
    error = FailureBody(error_type, error_class, "m").to_error()
    assert type(error) is ERROR_CLASSES[error_type]
    assert error.error_class == error_class


def test_unknown_error_type_becomes_internal_error_naming_it() -> None:
    envelope = parse_response(
        {"request_id": "r", "response": {"status": "failure", "error_type": "meltdown"}}
    )
    with pytest.raises(InternalError, match="Unknown error_type 'meltdown'"):
        envelope.raise_for_failure()


@pytest.mark.parametrize("document", [[], {"request_id": "r"}, {"response": "success"}])
def test_a_document_that_is_not_an_envelope_is_malformed(document: object) -> None:
    with pytest.raises(MalformedPayloadError):
        parse_response(document)


def test_consume_result_body_is_the_references_without_the_extension() -> None:
    entry = ResultEntry(outputs=[{"size": 1}], frames_metadata=[META])  # type: ignore[list-item]
    single = ConsumeResultBody.from_entries([entry], multi=False).to_wire()
    assert single == {"status": "success", "outputs": [{"size": 1}], "frames_metadata": [META]}
    empty = ConsumeResultBody.from_entries([], multi=False).to_wire()
    assert empty == {"status": "success", "outputs": [], "frames_metadata": []}


def test_consume_result_extension_puts_later_entries_in_extra_entries() -> None:
    entries = [
        ResultEntry(outputs=[{"n": i}, None], frames_metadata=[{**META, "frame_id": i}] * 2)  # type: ignore[list-item]
        for i in range(3)
    ]
    wire = ConsumeResultBody.from_entries(entries, multi=True).to_wire()
    assert wire["outputs"] == [{"n": 0}, None]
    assert [e["outputs"] for e in wire["extra_entries"]] == [[{"n": 1}, None], [{"n": 2}, None]]
    assert ConsumeResultBody.from_entries([], multi=True).to_wire()["extra_entries"] == []


def test_error_tree() -> None:
    assert issubclass(ShmExhaustedError, CapacityError)
    assert issubclass(RamBudgetExceededError, CapacityError)
    assert issubclass(CapacityError, OperationError)
    assert AuthorisationError("x").error_type is ErrorType.AUTHORISATION_ERROR
    error = OperationError("m", pipeline_id="p")
    assert (
        error.message,
        error.public_message,
        error.explicit_public_message,
        error.pipeline_id,
    ) == ("m", "m", None, "p")
