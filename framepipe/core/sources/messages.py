"""Control messages between an owner and its decode process (small, pickled; never frames).

Everything else — the state, the statistics, how each consumer wants its frames — is read and
written in the source's :class:`~framepipe.core.sources.status.SourceStatus` block.
"""

from __future__ import annotations

from dataclasses import dataclass

from framepipe.core.sources.entities import DecoderBackendName, StreamInfo

# -- owner → decode process --------------------------------------------------------------


@dataclass(frozen=True)
class AttachRing:
    """The ring the owner created for the stream: write frames into it."""

    ring_name: str


@dataclass(frozen=True)
class Terminate:
    pass


Command = AttachRing | Terminate


# -- decode process → owner --------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """The stream opened (the owner creates the ring from its size on the first one)."""

    info: StreamInfo
    backend: DecoderBackendName
    decode_start_ns: int
    reconnect: bool
