"""Control messages between an owner and its decode process (small, pickled; never frames)."""

from __future__ import annotations

from dataclasses import dataclass

from framepipe.core.sources.entities import (
    BufferFillingStrategy,
    DecoderBackendName,
    DecoderStats,
    StreamInfo,
    StreamState,
)


class ConsumerMode:
    RUNNING = "RUNNING"
    MUTED = "MUTED"
    PAUSED = "PAUSED"


# -- owner → decode process --------------------------------------------------------------


@dataclass(frozen=True)
class AttachRing:
    ring_name: str


@dataclass(frozen=True)
class AddConsumer:
    """Consumer ``index`` of the ring (already registered there) wants frames like this."""

    index: int
    strategy: BufferFillingStrategy
    max_fps: float | None
    mode: str = ConsumerMode.RUNNING


@dataclass(frozen=True)
class RemoveConsumer:
    index: int


@dataclass(frozen=True)
class SetConsumerMode:
    index: int
    mode: str


@dataclass(frozen=True)
class Terminate:
    pass


Command = AttachRing | AddConsumer | RemoveConsumer | SetConsumerMode | Terminate


# -- decode process → owner --------------------------------------------------------------


@dataclass(frozen=True)
class StateChanged:
    previous: StreamState
    new: StreamState
    at_ns: int
    message: str = ""


@dataclass(frozen=True)
class Opened:
    info: StreamInfo
    backend: DecoderBackendName
    decode_start_ns: int
    reconnect: bool


@dataclass(frozen=True)
class StatsUpdate:
    stats: DecoderStats
    # per consumer index: frames published to it, and drops the producer counted for it
    published: dict[int, int]
    dropped: dict[int, dict[str, int]]


Event = StateChanged | Opened | StatsUpdate
