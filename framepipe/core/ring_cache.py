"""Rings attached by name, for a process that reads frames other processes decode.

The inference service gets frames as :class:`FrameRef` (ring name, slot, sequence number)
and reads them in place. :class:`RingCache` attaches each ring once, counts the frames in
use per ring, and closes a ring nobody used for ``linger_s`` — at once when its segment
is gone from /dev/shm (its producer ended), so an unlinked ring's memory is not kept
mapped. It is the engine's :class:`~framepipe.core.inference.FrameResolver`.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from framepipe.core.pixels import FrameImage, wrap_slot
from framepipe.core.ring import FrameRef, FrameRing
from framepipe.core.shm import SHM_DIR
from framepipe.protocol.errors import InvalidPayloadError

__all__ = ["RingCache"]


@dataclass(eq=False, slots=True)
class _Attached:
    ring: FrameRing
    users: int = 0
    last_used: float = 0.0


class RingCache:
    """Attached rings by name; thread-safe. ``close()`` detaches everything (idempotent)."""

    def __init__(self, *, linger_s: float = 2.0) -> None:
        self.linger_s = linger_s
        self._lock = threading.Lock()
        self._rings: dict[str, _Attached] = {}
        self._closed = False

    def _attached(self, ref: FrameRef) -> _Attached:
        """The ring of ``ref``, attached if needed (lock held)."""
        if self._closed:
            raise InvalidPayloadError("the ring cache is closed")
        entry = self._rings.get(ref.ring)
        if entry is None:
            try:
                ring = FrameRing.attach(ref.ring)
            except ValueError as exc:
                raise InvalidPayloadError(f"frame ref names no framepipe ring: {exc}") from None
            entry = self._rings[ref.ring] = _Attached(ring)
        if not 0 <= ref.slot < entry.ring.slots:
            raise InvalidPayloadError(
                f"frame ref slot {ref.slot} is out of range: ring {ref.ring} has {entry.ring.slots} slots"
            )
        return entry

    def acquire(self, ref: FrameRef) -> FrameImage:
        """The frame read in place in its slot (a read-only BGR view, or a 4:2:0
        :class:`~framepipe.core.pixels.YuvFrame`); StaleFrameError if the slot was reused,
        NotFoundError if the ring is gone. Pair with :meth:`release`."""
        with self._lock:
            entry = self._attached(ref)
            view = wrap_slot(entry.ring.view(ref), entry.ring.layout)
            entry.users += 1
        return view

    def release(self, ref: FrameRef) -> None:
        with self._lock:
            entry = self._rings.get(ref.ring)
            if entry is not None and entry.users > 0:
                entry.users -= 1
                entry.last_used = time.monotonic()

    def is_current(self, ref: FrameRef) -> bool:
        with self._lock:
            entry = self._rings.get(ref.ring)
            return entry is not None and entry.ring.is_current(ref)

    def attached(self) -> list[str]:
        with self._lock:
            return sorted(self._rings)

    def sweep(self, now: float | None = None) -> list[str]:
        """Close the rings not in use that lingered ``linger_s`` or whose segment is gone;
        returns their names."""
        now = time.monotonic() if now is None else now
        closed: list[str] = []
        with self._lock:
            for name, entry in list(self._rings.items()):
                if entry.users:
                    continue
                unlinked = not os.path.exists(SHM_DIR / name.lstrip("/"))
                if unlinked or now - entry.last_used >= self.linger_s:
                    del self._rings[name]
                    entry.ring.close()
                    closed.append(name)
        return closed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            entries = list(self._rings.values())
            self._rings.clear()
        for entry in entries:
            entry.ring.close()

    def __enter__(self) -> RingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
