"""Exceptions a client raises.

A failure response becomes the protocol's exception of its ``error_type`` (one class each:
:class:`InternalError`, :class:`InvalidPayloadError`, :class:`NotFoundError`,
:class:`OperationError`, :class:`AuthorisationError`; an ``error_class`` that names a known
refinement, such as :class:`CapacityError`, gives that subclass), with the server's
``error_class``, ``error_message`` (``.message``), ``public_error_message`` (``.public_message``),
``request_id`` and ``pipeline_id`` preserved. Problems on the client's side of the wire are
:class:`ClientError` subclasses. The reference client's exception names are kept as aliases.
"""

from __future__ import annotations

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


class ClientError(FramepipeError):
    """The client could not complete the exchange (nothing was learnt from the server)."""


class ConnectivityError(ClientError):
    """The stream manager could not be reached, or did not answer in time."""


class ProtocolViolationError(ClientError):
    """The server's answer was not a well-formed response frame."""


# The reference client's names, for code written against it.
ProcessesManagerClientError = FramepipeError
ProcessesManagerInternalError = InternalError
ProcessesManagerInvalidPayload = InvalidPayloadError
ProcessesManagerNotFoundError = NotFoundError
ProcessesManagerOperationError = OperationError
ProcessesManagerAuthorisationError = AuthorisationError

__all__ = [
    "ERROR_CLASSES",
    "AuthorisationError",
    "CapacityError",
    "ClientError",
    "ConnectivityError",
    "ErrorType",
    "FramepipeError",
    "InternalError",
    "InvalidPayloadError",
    "NotFoundError",
    "OperationError",
    "ProcessesManagerAuthorisationError",
    "ProcessesManagerClientError",
    "ProcessesManagerInternalError",
    "ProcessesManagerInvalidPayload",
    "ProcessesManagerNotFoundError",
    "ProcessesManagerOperationError",
    "ProtocolViolationError",
    "RamBudgetExceededError",
    "ShmExhaustedError",
]
