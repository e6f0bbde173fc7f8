"""How big a source's ring is: one home for the sizing rule (decoders and RAM admission use it).

A ring of ``width`` x ``height`` BGR frames has a queue ``depth`` per consumer (the reference's
``decoding_buffer_size``, shrunk so the ring stays near a byte budget) and ``depth x consumers +
leases in flight + 1`` slots, so the writer never waits for a slot under WAIT
(docs/ARCHITECTURE.md, "Slot lifecycle"). A consumer may hold, besides its queue: the frames of
the batches its pipeline has in flight, one in the multi-source collector's mailbox, and one in
the DROP_OLDEST mailbox.

That is the ring's *bound*. What it costs is its resident set (see :mod:`framepipe.core.ring`):
a pipeline is admitted for :func:`ring_floor_bytes`, the metadata and the frames in flight of
a consumer that keeps up (one being written, and per consumer one queued and one being
processed); the ring grows beyond that at run time only as the RAM budget grants
(:mod:`framepipe.core.growth`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from framepipe.core.ring import FrameRing
from framepipe.protocol.errors import CapacityError

__all__ = [
    "DEFAULT_MAX_RING_BYTES",
    "DEFAULT_RING_BUDGET_BYTES",
    "LEASES_PER_CONSUMER",
    "MAX_IN_FLIGHT",
    "check_ring_cap",
    "resident_floor_slots",
    "ring_bytes",
    "ring_floor_bytes",
    "ring_geometry",
    "rings_bytes",
    "rings_floor_bytes",
    "slot_bytes",
]

DEFAULT_RING_BUDGET_BYTES = 128 * 1024 * 1024
#: Batches one pipeline may have in processing at once (inference runs overlap).
MAX_IN_FLIGHT = 3
LEASES_PER_CONSUMER = MAX_IN_FLIGHT + 2  # + collector mailbox + DROP_OLDEST mailbox
MB = 1024 * 1024


def slot_bytes(width: int, height: int) -> int:
    """Bytes of one frame of this size in a ring slot (the one place that knows the slots'
    pixel format)."""
    return width * height * 3


#: The largest ring one source may have, whatever its frames (FRAMEPIPE_MAX_RING_MB): 32 4K
#: frames, room for a 4K camera shared by 4 pipelines (25 slots), and far below the 5 GB ring
#: a 16000x16000 video would take. A frame size needing more is refused outright.
DEFAULT_MAX_RING_BYTES = 32 * slot_bytes(3840, 2160)


def ring_geometry(
    width: int,
    height: int,
    buffer_size: int,
    consumers: int = 1,
    ring_budget_bytes: int = DEFAULT_RING_BUDGET_BYTES,
) -> tuple[int, int]:
    """(queue depth, slots) of the ring for ``consumers`` consumers of this frame size."""
    frame_bytes = max(1, slot_bytes(width, height))
    fit = ring_budget_bytes // frame_bytes
    leases = consumers * LEASES_PER_CONSUMER
    depth = max(1, min(buffer_size, (fit - leases - 1) // consumers))
    return depth, FrameRing.required_slots(depth, consumers, LEASES_PER_CONSUMER)


def ring_bytes(
    width: int,
    height: int,
    buffer_size: int,
    consumers: int = 1,
    ring_budget_bytes: int = DEFAULT_RING_BUDGET_BYTES,
) -> int:
    """Shared-memory bytes of that ring, headers included (for RAM budgets)."""
    depth, slots = ring_geometry(width, height, buffer_size, consumers, ring_budget_bytes)
    return FrameRing.segment_size(slots, (height, width, 3), np.uint8, consumers, depth)


def rings_bytes(
    frame_sizes: Iterable[tuple[int, int]], buffer_size: int, consumers: int = 1
) -> int:
    """The rings of several sources (``(width, height)`` each), e.g. a new pipeline's."""
    return sum(ring_bytes(w, h, buffer_size, consumers) for w, h in frame_sizes)


def resident_floor_slots(consumers: int = 1) -> int:
    """Slots a ring keeps resident from its creation on: one being written, and for each
    consumer one queued and one being processed (the frames in flight of a pipeline that
    keeps up with its source)."""
    return 1 + 2 * max(1, consumers)


def ring_floor_bytes(
    width: int,
    height: int,
    buffer_size: int,
    consumers: int = 1,
    ring_budget_bytes: int = DEFAULT_RING_BUDGET_BYTES,
    active_consumers: int = 1,
) -> int:
    """Shared-memory bytes resident in that ring when it starts (its metadata and
    :func:`resident_floor_slots` for ``active_consumers``): what admission charges."""
    depth, slots = ring_geometry(width, height, buffer_size, consumers, ring_budget_bytes)
    return FrameRing.resident_size(
        slots,
        (height, width, 3),
        np.uint8,
        consumers,
        depth,
        resident_slots=resident_floor_slots(active_consumers),
    )


def rings_floor_bytes(
    frame_sizes: Iterable[tuple[int, int]], buffer_size: int, consumers: int = 1
) -> int:
    """:func:`ring_floor_bytes` of several sources, one active consumer each."""
    return sum(ring_floor_bytes(w, h, buffer_size, consumers) for w, h in frame_sizes)


def check_ring_cap(width: int, height: int, size: int, max_ring_bytes: int | None) -> None:
    """Raise CapacityError when a ring of ``size`` bytes for ``width`` x ``height`` frames is
    above the per-ring cap (None: no cap)."""
    if max_ring_bytes is not None and size > max_ring_bytes:
        raise CapacityError(
            f"a {width}x{height} video needs a {size / MB:,.0f} MB frame ring, above the "
            f"per-ring cap of {max_ring_bytes / MB:,.0f} MB (FRAMEPIPE_MAX_RING_MB)"
        )
