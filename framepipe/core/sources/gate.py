"""Which consumers get a frame: each consumer's mode and rate gates, one home for every producer.

A source's producer — the decode process, or a :class:`~framepipe.core.sources.push.PushSource`
fed by its owner — asks, for each new frame, which of the consumers in its status block want
it: a consumer that is muted or paused gets nothing, ``max_fps`` keeps at most that many frames
per second of the source's timeline, and an adaptive consumer that fell behind gets frames at
its own pace. Every frame a consumer does not get is counted in the status block, by reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from framepipe.core.sources.entities import BufferFillingStrategy, DropReason
from framepipe.core.sources.status import ConsumerMode, SourceStatus

__all__ = ["ConsumerGate", "frame_targets"]


@dataclass
class ConsumerGate:
    """A producer's view of one consumer entry (refreshed when its generation changes)."""

    index: int
    generation: int
    strategy: BufferFillingStrategy
    max_fps: float | None
    pixels: bool = True  # False: it reads the frame's metadata only
    next_due_ns: int | None = None
    adaptive_fps: float | None = None
    last_received: int = 0

    def due(self, at_ns: int, fps: float | None) -> bool:
        """Rate gate on a timeline (capture time, or a file's presentation time): at most
        ``fps`` frames per second of that timeline, without drift (a gate that fell behind by
        more than half an interval catches up at once instead of bursting)."""
        if fps is None:
            return True
        interval = int(1e9 / fps)
        if self.next_due_ns is None:
            self.next_due_ns = at_ns + interval
            return True
        if at_ns < self.next_due_ns:
            return False
        self.next_due_ns = max(self.next_due_ns + interval, at_ns - interval // 2)
        return True


def frame_targets(status: SourceStatus, gates: Iterable[ConsumerGate], at_ns: int) -> list[int]:
    """The consumers that get the frame at ``at_ns`` on the source's timeline; the others'
    drops are counted in ``status`` (muted, max_fps, adaptive)."""
    modes = status.modes()
    chosen = []
    for gate in gates:
        index = gate.index
        if int(modes[index]) != ConsumerMode.RUNNING:
            status.count_drop(index, DropReason.MUTED)
            continue
        if not gate.due(at_ns, gate.max_fps):
            status.count_drop(index, DropReason.MAX_FPS)
            continue
        if gate.adaptive_fps is not None and not gate.due(at_ns, gate.adaptive_fps):
            status.count_drop(index, DropReason.ADAPTIVE)
            continue
        chosen.append(index)
    return chosen
