"""Error → HTTP status and body: by error type, with capacity told apart by class."""

from __future__ import annotations

import pytest

from framepipe.client.errors import ConnectivityError, ProtocolViolationError
from framepipe.gateway.errors import failure_for, no_route, too_large
from framepipe.protocol.envelope import FailureBody
from framepipe.protocol.errors import (
    AuthorisationError,
    ErrorType,
    FramepipeError,
    InternalError,
    InvalidPayloadError,
    NotFoundError,
    OperationError,
    RamBudgetExceededError,
    ShmExhaustedError,
)


@pytest.mark.parametrize(
    ("error", "status", "error_type"),
    [
        (InvalidPayloadError("field 'x': missing"), 400, "invalid_payload"),
        (AuthorisationError("no token"), 401, "authorisation_error"),
        (NotFoundError("no such pipeline"), 404, "not_found"),
        (OperationError("webrtc is not available"), 409, "operation_error"),
        (RamBudgetExceededError("not enough RAM"), 503, "capacity_error"),
        (ShmExhaustedError("/dev/shm is full"), 503, "capacity_error"),
        (InternalError("boom"), 500, "internal_error"),
        (ConnectivityError("refused"), 503, "connectivity_error"),
        (ProtocolViolationError("garbage"), 502, "protocol_error"),
    ],
)
def test_status_code_of_each_error(error: FramepipeError, status: int, error_type: str) -> None:
    failure = failure_for(error)
    assert (failure.status_code, failure.body.error_type) == (status, error_type)
    assert failure.body.hint


def test_capacity_is_decided_by_class_not_by_message_text() -> None:
    # A plain operation_error that talks about RAM is still a 409 ...
    assert failure_for(OperationError("not enough RAM in the budget")).status_code == 409
    # ... and a capacity refusal is a 503 whatever it says, also after crossing the wire.
    wire = FailureBody(ErrorType.OPERATION_ERROR, "RamBudgetExceededError", "anything")
    failure = failure_for(wire.to_error())
    assert failure.status_code == 503
    assert failure.headers == {"Retry-After": "5"}


def test_authorisation_failure_asks_for_a_bearer_token() -> None:
    assert failure_for(AuthorisationError("x")).headers == {"WWW-Authenticate": "Bearer"}


def test_messages_are_one_line() -> None:
    body = failure_for(InvalidPayloadError("first\nsecond\n  third")).body
    assert body.message == "first second third"


def test_gateway_own_failures() -> None:
    assert too_large(1024).status_code == 413
    assert no_route(404, "GET", "/x").body.error_type == "not_found"
    assert no_route(405, "PUT", "/healthz").body.error_type == "method_not_allowed"
