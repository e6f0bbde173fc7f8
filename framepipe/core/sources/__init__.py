"""Video sources: decode processes writing into shared-memory rings, shared through a hub."""

from framepipe.core.sources.backends import (
    BackendOptions,
    DecodeBackend,
    OpenCVBackend,
    PyAVBackend,
)
from framepipe.core.sources.entities import (
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    DecoderBackendName,
    DropReason,
    FrameMetadata,
    SourceKind,
    SourceProperties,
    SourceReport,
    StatusUpdate,
    StreamState,
)
from framepipe.core.sources.hub import (
    DecoderHandle,
    SourceHub,
    Subscription,
    SubscriptionRequest,
    default_strategies,
    ring_bytes,
    ring_geometry,
)
from framepipe.core.sources.launcher import warm_forkserver
from framepipe.core.sources.multiplexer import BatchCollector, LeasedFrame
from framepipe.core.sources.reference import (
    ParsedReference,
    mask_credentials,
    parse_reference,
    parse_references,
)

__all__ = [
    "BackendOptions",
    "BatchCollector",
    "BufferConsumptionStrategy",
    "BufferFillingStrategy",
    "DecodeBackend",
    "DecoderBackendName",
    "DecoderHandle",
    "DropReason",
    "FrameMetadata",
    "LeasedFrame",
    "OpenCVBackend",
    "ParsedReference",
    "PyAVBackend",
    "SourceHub",
    "SourceKind",
    "SourceProperties",
    "SourceReport",
    "StatusUpdate",
    "StreamState",
    "Subscription",
    "SubscriptionRequest",
    "default_strategies",
    "mask_credentials",
    "parse_reference",
    "parse_references",
    "ring_bytes",
    "ring_geometry",
    "warm_forkserver",
]
