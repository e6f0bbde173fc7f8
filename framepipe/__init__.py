"""framepipe — a stream manager for video inference."""

from framepipe.errors import (
    AuthorisationError,
    FramepipeError,
    InternalError,
    InvalidPayloadError,
    NotFoundError,
    OperationError,
    ShmExhaustedError,
)

__version__ = "0.1.0"

__all__ = [
    "AuthorisationError",
    "FramepipeError",
    "InternalError",
    "InvalidPayloadError",
    "NotFoundError",
    "OperationError",
    "ShmExhaustedError",
    "__version__",
]
