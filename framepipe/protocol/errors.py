"""The error tree shared by server, client and data plane.

One base, ``FramepipeError``, and one subclass per wire ``error_type`` so that a failure
raised anywhere maps 1:1 onto the response a client sees, and a client turns a failure
response back into the same exception class.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorType(StrEnum):
    """The ``error_type`` values of a failure response (as in the reference protocol)."""

    INTERNAL_ERROR = "internal_error"
    INVALID_PAYLOAD = "invalid_payload"
    NOT_FOUND = "not_found"
    OPERATION_ERROR = "operation_error"
    AUTHORISATION_ERROR = "authorisation_error"


class FramepipeError(Exception):
    """Base of every error framepipe raises on purpose."""

    error_type: ErrorType = ErrorType.INTERNAL_ERROR

    def __init__(self, message: str, public_message: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.public_message = public_message if public_message is not None else message


class InternalError(FramepipeError):
    error_type = ErrorType.INTERNAL_ERROR


class InvalidPayloadError(FramepipeError):
    error_type = ErrorType.INVALID_PAYLOAD


class NotFoundError(FramepipeError):
    error_type = ErrorType.NOT_FOUND


class OperationError(FramepipeError):
    error_type = ErrorType.OPERATION_ERROR


class AuthorisationError(FramepipeError):
    error_type = ErrorType.AUTHORISATION_ERROR


class ShmExhaustedError(OperationError):
    """/dev/shm has no room for a new segment (raised at creation, never a SIGBUS later)."""


ERROR_CLASSES: dict[ErrorType, type[FramepipeError]] = {
    ErrorType.INTERNAL_ERROR: InternalError,
    ErrorType.INVALID_PAYLOAD: InvalidPayloadError,
    ErrorType.NOT_FOUND: NotFoundError,
    ErrorType.OPERATION_ERROR: OperationError,
    ErrorType.AUTHORISATION_ERROR: AuthorisationError,
}
