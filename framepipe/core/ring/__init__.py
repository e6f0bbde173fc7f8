"""The frame ring: frames in shared memory, handed between processes by descriptor.

One public boundary for the data plane's hot path. :class:`FrameRing` is N fixed-shape frame
slots in one POSIX shared-memory segment with seqlock slot headers, a per-(consumer, slot)
lease table and one lock-free SPSC descriptor queue (plus a one-deep "latest" mailbox) per
consumer. :class:`FrameProducer` is its single writer: it fans each frame out to the live
consumers under each one's filling strategy. :class:`FrameConsumer` leases frames in place
(:class:`Lease`); nothing is copied or pickled. :class:`DescriptorQueue` is a standalone SPSC
queue of descriptors.

The modules behind this package (``_ring``: layout, slots, leases, consumer table;
``_queues``: producer, consumer, standalone queue) share internals with each other and with
nobody else: import from ``framepipe.core.ring`` only.
"""

from framepipe.core.ring._queues import (
    ConsumerDeliveryStatistics,
    ConsumerStatistics,
    DescriptorQueue,
    FrameConsumer,
    FrameProducer,
    Lease,
    ProducerStatistics,
)
from framepipe.core.ring._ring import (
    ConsumerInfo,
    ConsumerState,
    FrameDescriptor,
    FrameRef,
    FrameRing,
    SlotHeader,
    StaleFrameError,
)

__all__ = [
    "ConsumerDeliveryStatistics",
    "ConsumerInfo",
    "ConsumerState",
    "ConsumerStatistics",
    "DescriptorQueue",
    "FrameConsumer",
    "FrameDescriptor",
    "FrameProducer",
    "FrameRef",
    "FrameRing",
    "Lease",
    "ProducerStatistics",
    "SlotHeader",
    "StaleFrameError",
]
