"""framepipe — a stream manager for video inference."""

from framepipe._lazy import lazy_getattr
from framepipe.errors import (
    AuthorisationError,
    CapacityError,
    FramepipeError,
    InternalError,
    InvalidPayloadError,
    NotFoundError,
    OperationError,
    RamBudgetExceededError,
    ShmExhaustedError,
)

__version__ = "0.1.0"

# The pipeline pulls in numpy, OpenCV and the data plane; load it only when asked for, so
# that ``import framepipe.client`` stays light.
_LAZY = {
    "Pipeline": "framepipe.core.pipeline",
    "PipelineReport": "framepipe.core.pipeline",
    "PipelineResult": "framepipe.core.pipeline",
    "SourceHub": "framepipe.core.sources.hub",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "AuthorisationError",
    "CapacityError",
    "FramepipeError",
    "InternalError",
    "InvalidPayloadError",
    "NotFoundError",
    "OperationError",
    "Pipeline",
    "PipelineReport",
    "PipelineResult",
    "RamBudgetExceededError",
    "ShmExhaustedError",
    "SourceHub",
    "__version__",
]
