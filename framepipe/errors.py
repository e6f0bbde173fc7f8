"""Public error classes (defined in :mod:`framepipe.protocol.errors`)."""

from framepipe.protocol.errors import (
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

__all__ = [
    "AuthorisationError",
    "CapacityError",
    "ErrorType",
    "FramepipeError",
    "InternalError",
    "InvalidPayloadError",
    "NotFoundError",
    "OperationError",
    "RamBudgetExceededError",
    "ShmExhaustedError",
]
