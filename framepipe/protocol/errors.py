"""The error tree shared by server, client and data plane.

One base, ``FramepipeError``, and one subclass per wire ``error_type`` so that a failure
raised anywhere maps 1:1 onto the response a client sees, and a client turns a failure
response back into the same exception class.

How an error becomes a failure body (see :mod:`framepipe.protocol.envelope`):

- ``error_class`` is the name of the error's class (or, on the client side, the class name
  the server reported), ``error_message`` is ``message``;
- ``public_error_message`` is sent only when a public message was given explicitly;
- classes with ``describes_cause = False`` (``NotFoundError``) are described by their public
  message alone, exactly as the reference describes an unknown pipeline id.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar


class ErrorType(StrEnum):
    """The ``error_type`` values of a failure response (as in the reference protocol)."""

    INTERNAL_ERROR = "internal_error"
    INVALID_PAYLOAD = "invalid_payload"
    NOT_FOUND = "not_found"
    OPERATION_ERROR = "operation_error"
    AUTHORISATION_ERROR = "authorisation_error"


class FramepipeError(Exception):
    """Base of every error framepipe raises on purpose.

    ``message`` is the full (private) description; ``public_message`` what may be shown to an
    end user (defaults to ``message``). ``pipeline_id`` names the pipeline the error concerns
    when the command did not (a failed ``init``). ``error_class`` defaults to the class name;
    the client sets it to the class name the server reported. ``request_id`` is set by the
    client from the failure response.
    """

    error_type: ClassVar[ErrorType] = ErrorType.INTERNAL_ERROR
    describes_cause: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        public_message: str | None = None,
        *,
        pipeline_id: str | None = None,
        error_class: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.public_message = public_message if public_message is not None else message
        self.explicit_public_message = public_message
        self.pipeline_id = pipeline_id
        self.error_class = error_class if error_class is not None else type(self).__name__
        self.request_id = request_id


class InternalError(FramepipeError):
    error_type = ErrorType.INTERNAL_ERROR


class InvalidPayloadError(FramepipeError):
    error_type = ErrorType.INVALID_PAYLOAD


class NotFoundError(FramepipeError):
    error_type = ErrorType.NOT_FOUND
    describes_cause = False


class OperationError(FramepipeError):
    error_type = ErrorType.OPERATION_ERROR


class AuthorisationError(FramepipeError):
    error_type = ErrorType.AUTHORISATION_ERROR


class CapacityError(OperationError):
    """The manager refused for lack of a resource (RAM budget, shared memory), not because the
    request was wrong: the same request may succeed later or on another manager. A class of its
    own so that a front end tells it apart by type (the HTTP gateway answers 503, not 409)."""


class RamBudgetExceededError(CapacityError):
    """Admitting the pipeline would pass ``STREAM_MANAGER_MAX_RAM_MB``."""


class ShmExhaustedError(CapacityError):
    """/dev/shm has no room for a new segment (raised at creation, never a SIGBUS later)."""


ERROR_CLASSES: dict[ErrorType, type[FramepipeError]] = {
    ErrorType.INTERNAL_ERROR: InternalError,
    ErrorType.INVALID_PAYLOAD: InvalidPayloadError,
    ErrorType.NOT_FOUND: NotFoundError,
    ErrorType.OPERATION_ERROR: OperationError,
    ErrorType.AUTHORISATION_ERROR: AuthorisationError,
}

REFINED_ERROR_CLASSES: dict[str, type[FramepipeError]] = {
    cls.__name__: cls for cls in (CapacityError, RamBudgetExceededError, ShmExhaustedError)
}
"""Subclasses a failure's ``error_class`` names, rebuilt as such on the client side, so that
``except CapacityError`` works across the wire. Only names listed here are trusted, and only
under the ``error_type`` they belong to."""


def error_class_for(error_type: ErrorType, error_class: str | None) -> type[FramepipeError]:
    """The exception class for a failure: the refined subclass ``error_class`` names when it
    is one of ``error_type``'s, else the class of ``error_type``."""
    base = ERROR_CLASSES[error_type]
    refined = REFINED_ERROR_CLASSES.get(error_class or "")
    if refined is not None and issubclass(refined, base):
        return refined
    return base


def preview(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters: an error message quotes what it
    refuses, never megabytes of it."""
    if isinstance(value, list | dict | tuple) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
