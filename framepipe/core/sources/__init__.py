"""Video sources: decode processes writing into shared-memory rings, shared through a hub.

``hub`` decides which decode process serves which consumer; ``push`` is a source whose owner
pushes its frames in (a WebRTC track) instead of a decode process; ``handle`` starts, restarts and
stops one decode process; ``decoder`` is the decode process itself; ``status`` is a source's
state in shared memory; ``subscription`` is one consumer, in any process; ``multiplexer``
collects batches across sources; ``sizing`` sizes rings; ``backends`` decode; ``reference``
validates what a ``video_reference`` names.
"""

# Names load on first use: importing one submodule never runs the others (two threads
# importing different submodules at once cannot deadlock on this package), and a process
# that only reads frames never imports the decoders' OpenCV and PyAV.

from typing import TYPE_CHECKING

from framepipe._lazy import lazy_getattr

if TYPE_CHECKING:
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

_EXPORTS = {
    "BackendOptions": "framepipe.core.sources.backends",
    "BatchCollector": "framepipe.core.sources.multiplexer",
    "BufferConsumptionStrategy": "framepipe.core.sources.entities",
    "BufferFillingStrategy": "framepipe.core.sources.entities",
    "ConsumerMode": "framepipe.core.sources.status",
    "DecodeBackend": "framepipe.core.sources.backends",
    "DecoderBackendName": "framepipe.core.sources.entities",
    "DecoderHandle": "framepipe.core.sources.handle",
    "DropReason": "framepipe.core.sources.entities",
    "FrameMetadata": "framepipe.core.sources.entities",
    "LeasedFrame": "framepipe.core.sources.multiplexer",
    "OpenCVBackend": "framepipe.core.sources.backends",
    "ParsedReference": "framepipe.core.sources.reference",
    "PushSource": "framepipe.core.sources.push",
    "PyAVBackend": "framepipe.core.sources.backends",
    "SourceHub": "framepipe.core.sources.hub",
    "SourceKind": "framepipe.core.sources.entities",
    "SourceProperties": "framepipe.core.sources.entities",
    "SourceReport": "framepipe.core.sources.entities",
    "SourceStatus": "framepipe.core.sources.status",
    "SourceTicket": "framepipe.core.sources.subscription",
    "StatusUpdate": "framepipe.core.sources.entities",
    "StreamState": "framepipe.core.sources.entities",
    "Subscription": "framepipe.core.sources.subscription",
    "SubscriptionRequest": "framepipe.core.sources.hub",
    "default_strategies": "framepipe.core.sources.hub",
    "mask_credentials": "framepipe.core.sources.reference",
    "parse_reference": "framepipe.core.sources.reference",
    "parse_references": "framepipe.core.sources.reference",
    "ring_bytes": "framepipe.core.sources.sizing",
    "ring_geometry": "framepipe.core.sources.sizing",
    "warm_forkserver": "framepipe.core.sources.launcher",
}


__getattr__ = lazy_getattr(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted(_EXPORTS)


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
