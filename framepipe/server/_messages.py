"""Messages between the manager and a pipeline worker, over a duplex multiprocessing pipe.

Commands are small typed messages tagged with the request id of the TCP request that caused
them, so a reply can never be matched to the wrong request (the reference took replies from a
shared queue, in order, and could hand one client another's answer). Frames never travel here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from framepipe.errors import ErrorType, FramepipeError

if TYPE_CHECKING:  # the manager imports this module at start: nothing heavy at import time
    from framepipe.core.sources.remote import SourceSnapshot


class WorkerOp(StrEnum):
    INIT = "init"
    STATUS = "status"
    MUTE = "mute"
    RESUME = "resume"
    CONSUME = "consume_result"
    TERMINATE = "terminate"
    HEALTH = "health"


@dataclass(frozen=True)
class WorkerRequest:
    request_id: str
    op: WorkerOp
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerFailure:
    """A failure as the worker saw it; the manager raises it again as the matching error class."""

    error_type: ErrorType
    error_class: str
    message: str
    public_message: str | None

    @classmethod
    def from_exception(cls, exc: BaseException) -> WorkerFailure:
        if isinstance(exc, FramepipeError):
            return cls(exc.error_type, exc.error_class, exc.message, exc.explicit_public_message)
        return cls(
            ErrorType.INTERNAL_ERROR,
            type(exc).__name__,
            f"The pipeline worker failed: {type(exc).__name__}: {exc}",
            None,
        )


@dataclass(frozen=True)
class WorkerReply:
    request_id: str
    body: dict[str, Any] | None = None
    failure: WorkerFailure | None = None


@dataclass(frozen=True)
class WorkerReady:
    """Sent once, when the worker's imports are done and it takes commands."""

    pid: int
    warmup_s: float


@dataclass(frozen=True)
class WorkerExiting:
    """Sent when the worker ends its pipeline on its own (e.g. consumption timeout)."""

    reason: str


@dataclass(frozen=True)
class SourceUpdates:
    """Manager → worker, unanswered: the latest state of the shared decoders it reads."""

    snapshots: tuple[SourceSnapshot, ...]


WorkerMessage = WorkerReply | WorkerReady | WorkerExiting
