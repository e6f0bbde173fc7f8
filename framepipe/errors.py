"""Public error classes (defined in :mod:`framepipe.protocol.errors`)."""

from framepipe.protocol.errors import (
    AuthorisationError,
    ErrorType,
    FramepipeError,
    InternalError,
    InvalidPayloadError,
    NotFoundError,
    OperationError,
    ShmExhaustedError,
)

__all__ = [
    "AuthorisationError",
    "ErrorType",
    "FramepipeError",
    "InternalError",
    "InvalidPayloadError",
    "NotFoundError",
    "OperationError",
    "ShmExhaustedError",
]
