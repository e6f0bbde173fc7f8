"""From an error to an HTTP answer: the status code, and one ``ErrorResponse`` body shape.

=========================  ======  ================================================
what failed                status  ``error_type`` in the body
=========================  ======  ================================================
invalid_payload            400     invalid_payload (also the gateway's own checks)
authorisation_error        401     authorisation_error (+ ``WWW-Authenticate``)
not_found                  404     not_found (also an unknown route)
operation_error            409     operation_error
CapacityError              503     capacity_error (RAM budget, /dev/shm; retry later)
internal_error             500     internal_error
manager unreachable        503     connectivity_error
malformed manager answer   502     protocol_error
body too large             413     payload_too_large
=========================  ======  ================================================

The capacity distinction is by type (:class:`~framepipe.protocol.errors.CapacityError`, which
the client rebuilds from the failure's ``error_class``), never by message text.
"""

from __future__ import annotations

from dataclasses import dataclass

from framepipe.client.errors import ConnectivityError, ProtocolViolationError
from framepipe.gateway.models import ErrorResponse, ErrorType
from framepipe.protocol.errors import CapacityError, FramepipeError, InvalidPayloadError
from framepipe.protocol.errors import ErrorType as WireErrorType


class GatewayStartError(Exception):
    """The gateway could not listen (the port is taken, the address is not local, ...)."""


@dataclass(frozen=True)
class HttpFailure:
    status_code: int
    body: ErrorResponse

    @property
    def headers(self) -> dict[str, str]:
        if self.status_code == 401:
            return {"WWW-Authenticate": "Bearer"}
        if self.body.error_type == "capacity_error":
            return {"Retry-After": "5"}
        return {}


_BY_WIRE_TYPE: dict[WireErrorType, tuple[int, ErrorType, str]] = {
    WireErrorType.INVALID_PAYLOAD: (
        400,
        "invalid_payload",
        "check the request against the schema at /openapi.json (or /docs)",
    ),
    WireErrorType.AUTHORISATION_ERROR: (
        401,
        "authorisation_error",
        "send the manager's token (FRAMEPIPE_TOKEN) as 'Authorization: Bearer <token>'",
    ),
    WireErrorType.NOT_FOUND: (
        404,
        "not_found",
        "GET /inference_pipelines/list shows the pipelines that exist",
    ),
    WireErrorType.OPERATION_ERROR: (
        409,
        "operation_error",
        "the manager refused in its current state; "
        "GET /inference_pipelines/{pipeline_id}/status shows the pipeline's state",
    ),
    WireErrorType.INTERNAL_ERROR: (
        500,
        "internal_error",
        "the manager's log has the details under the request_id",
    ),
}


def one_line(text: str) -> str:
    return " ".join(text.split())


def failure_for(error: FramepipeError) -> HttpFailure:
    """The HTTP answer for an error raised by the client (or by the gateway itself)."""
    if isinstance(error, ConnectivityError):
        status, error_type, hint = (
            503,
            "connectivity_error",
            "the stream manager does not answer; check that it runs (GET /readyz)",
        )
    elif isinstance(error, ProtocolViolationError):
        status, error_type, hint = (
            502,
            "protocol_error",
            "the stream manager's answer was malformed; the gateway's log has it",
        )
    elif isinstance(error, CapacityError):
        status, error_type, hint = (
            503,
            "capacity_error",
            "retry later, or make room: terminate a pipeline, raise STREAM_MANAGER_MAX_RAM_MB "
            "or enlarge /dev/shm",
        )
    else:
        status, error_type, hint = _BY_WIRE_TYPE[error.error_type]
    server_side = not isinstance(error, ConnectivityError | ProtocolViolationError)
    return HttpFailure(
        status,
        ErrorResponse(
            error_type=error_type,
            error_class=error.error_class if server_side else None,
            message=one_line(error.message) or error_type,
            hint=hint,
            pipeline_id=error.pipeline_id,
            request_id=error.request_id,
        ),
    )


def invalid_request(message: str) -> HttpFailure:
    """A request the gateway itself found invalid (it never reached the manager)."""
    status, error_type, hint = _BY_WIRE_TYPE[WireErrorType.INVALID_PAYLOAD]
    return HttpFailure(
        status,
        ErrorResponse(
            error_type=error_type,
            # the class the manager gives the same failure: a client rebuilds it from this
            error_class=InvalidPayloadError.__name__,
            message=one_line(message),
            hint=hint,
        ),
    )


def too_large(limit: int) -> HttpFailure:
    return HttpFailure(
        413,
        ErrorResponse(
            error_type="payload_too_large",
            message=f"the request body is larger than {limit} bytes",
            hint="send a smaller body, or raise FRAMEPIPE_HTTP_MAX_BODY_BYTES on the server",
        ),
    )


def no_route(status_code: int, method: str, path: str) -> HttpFailure:
    if status_code == 405:
        return HttpFailure(
            405,
            ErrorResponse(
                error_type="method_not_allowed",
                message=f"{method} is not allowed on {path}",
                hint="/openapi.json lists each route's methods",
            ),
        )
    return HttpFailure(
        404,
        ErrorResponse(
            error_type="not_found",
            message=f"no route {path}",
            hint="/openapi.json lists the routes (the pipeline routes are under "
            "/inference_pipelines/)",
        ),
    )


def unexpected(error: BaseException) -> HttpFailure:
    return HttpFailure(
        500,
        ErrorResponse(
            error_type="internal_error",
            error_class=type(error).__name__,
            message="internal error of the HTTP gateway",
            hint="the gateway's log has the traceback",
        ),
    )
