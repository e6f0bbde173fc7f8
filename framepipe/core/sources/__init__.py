"""Video sources: decode processes writing into shared-memory rings, shared through a hub.

``hub`` decides which decode process serves which consumer; ``push`` is a source whose owner
pushes its frames in (a WebRTC track) instead of a decode process; ``handle`` starts, restarts and
stops one decode process; ``decoder`` is the decode process itself; ``status`` is a source's
state in shared memory; ``subscription`` is one consumer, in any process; ``multiplexer``
collects batches across sources; ``sizing`` sizes rings; ``backends`` decode; ``reference``
validates what a ``video_reference`` names.
"""

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
from framepipe.core.sources.handle import DecoderHandle
from framepipe.core.sources.hub import SourceHub, SubscriptionRequest, default_strategies
from framepipe.core.sources.launcher import warm_forkserver
from framepipe.core.sources.multiplexer import BatchCollector, LeasedFrame
from framepipe.core.sources.push import PushSource
from framepipe.core.sources.reference import (
    ParsedReference,
    mask_credentials,
    parse_reference,
    parse_references,
)
from framepipe.core.sources.sizing import ring_bytes, ring_geometry
from framepipe.core.sources.status import ConsumerMode, SourceStatus
from framepipe.core.sources.subscription import SourceTicket, Subscription

__all__ = [
    "BackendOptions",
    "BatchCollector",
    "BufferConsumptionStrategy",
    "BufferFillingStrategy",
    "ConsumerMode",
    "DecodeBackend",
    "DecoderBackendName",
    "DecoderHandle",
    "DropReason",
    "FrameMetadata",
    "LeasedFrame",
    "OpenCVBackend",
    "ParsedReference",
    "PushSource",
    "PyAVBackend",
    "SourceHub",
    "SourceKind",
    "SourceProperties",
    "SourceReport",
    "SourceStatus",
    "SourceTicket",
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
