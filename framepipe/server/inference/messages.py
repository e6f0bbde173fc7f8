"""Messages of the inference service: pipeline workers <-> service, manager <-> service.

Typed, small and picklable; frames never travel here, only :class:`FrameRef` (ring name,
slot, sequence number). A pipeline worker's connection carries::

    RegisterChannel -> ChannelRegistered        (a pipeline's ModelSpec; once per channel)
    Infer(channel, seq, frames) -> Inferred(channel, seq, outputs | error)
    UnregisterChannel                           (no reply)

and the manager's control pipe carries ``ServiceReady | ServiceFailed`` once at start, then
``ServicePing -> ServicePong`` (with the engine's statistics) and ``ServiceShutdown``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from framepipe.core.inference import EngineStatistics, FrameRef, InferenceUnavailableError
from framepipe.core.processing.spec import ModelSpec
from framepipe.core.ring import StaleFrameError
from framepipe.protocol.errors import ERROR_CLASSES, ErrorType, FramepipeError

__all__ = [
    "ChannelRegistered",
    "Infer",
    "Inferred",
    "RegisterChannel",
    "RemoteError",
    "ServiceAddress",
    "ServiceFailed",
    "ServicePing",
    "ServicePong",
    "ServiceReady",
    "ServiceShutdown",
    "UnregisterChannel",
]

# Errors the client raises again as their own class (others become their wire type's class).
_KNOWN_ERRORS: dict[str, type[FramepipeError]] = {
    "StaleFrameError": StaleFrameError,
    "InferenceUnavailableError": InferenceUnavailableError,
}


@dataclass(frozen=True, slots=True)
class ServiceAddress:
    """Where a pipeline worker finds the inference service of a model (picklable)."""

    address: str  # AF_UNIX, abstract namespace: starts with "\0"
    authkey: bytes
    model: str
    providers: tuple[str, ...]

    @property
    def printable(self) -> str:
        return self.address.replace("\0", "@")

    def __repr__(self) -> str:  # never print the key
        return f"ServiceAddress({self.printable!r}, model={self.model!r})"


@dataclass(frozen=True, slots=True)
class RemoteError:
    """An exception, as it crosses the process boundary."""

    error_type: ErrorType
    error_class: str
    message: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> RemoteError:
        if isinstance(exc, FramepipeError):
            return cls(exc.error_type, exc.error_class, exc.message)
        return cls(ErrorType.INTERNAL_ERROR, type(exc).__name__, f"{type(exc).__name__}: {exc}")

    def to_exception(self) -> FramepipeError:
        known = _KNOWN_ERRORS.get(self.error_class)
        if known is not None:
            return known(self.message)
        return ERROR_CLASSES[self.error_type](self.message, error_class=self.error_class)


# ---- pipeline worker -> service ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterChannel:
    channel: int  # chosen by the client, unique on its connection
    name: str
    spec: ModelSpec


@dataclass(frozen=True, slots=True)
class UnregisterChannel:
    channel: int


@dataclass(frozen=True, slots=True)
class Infer:
    channel: int
    seq: int  # per channel, increasing
    frames: tuple[FrameRef | None, ...]  # one per source; None where a source had no frame


# ---- service -> pipeline worker ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelRegistered:
    channel: int
    error: RemoteError | None = None


@dataclass(frozen=True, slots=True)
class Inferred:
    channel: int
    seq: int
    outputs: list[dict[str, Any] | None] | None = None
    error: RemoteError | None = None


# ---- manager <-> service -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceReady:
    pid: int
    provider: str
    batching: bool
    concurrency: int
    load_s: float  # from process start to listening


@dataclass(frozen=True, slots=True)
class ServiceFailed:
    error: RemoteError


@dataclass(frozen=True, slots=True)
class ServicePing:
    n: int


@dataclass(frozen=True, slots=True)
class ServicePong:
    n: int
    statistics: EngineStatistics
    connections: int
    rings: int  # rings attached now


@dataclass(frozen=True, slots=True)
class ServiceShutdown:
    pass
