"""Errors as the command line shows them: one line, the cause and what to do about it."""

from __future__ import annotations

from framepipe.client.errors import ConnectivityError, ProtocolViolationError
from framepipe.gateway.errors import GatewayStartError
from framepipe.protocol.errors import (
    AuthorisationError,
    CapacityError,
    FramepipeError,
    InternalError,
    InvalidPayloadError,
    NotFoundError,
    OperationError,
)

_MANAGER = "set --host/--port or STREAM_MANAGER_HOST/STREAM_MANAGER_PORT to reach it"


class CommandLineError(Exception):
    """An error a command found itself, with what to do about it (``framepipe run``'s)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def _one_line(text: str) -> str:
    return " ".join(text.split())


def hint_for(error: BaseException) -> str | None:
    """What a user can do about ``error`` (None when there is nothing useful to say)."""
    if isinstance(error, CommandLineError):
        return error.hint
    if isinstance(error, ConnectivityError):
        return f"is `framepipe serve` running there? {_MANAGER}"
    if isinstance(error, ProtocolViolationError):
        return f"is that a framepipe stream manager? {_MANAGER}"
    if isinstance(error, AuthorisationError):
        return "set FRAMEPIPE_TOKEN (or --token) to the manager's token"
    if isinstance(error, NotFoundError):
        return "`framepipe pipelines list` shows the pipelines that exist"
    if isinstance(error, CapacityError):
        return (
            "terminate a pipeline, raise STREAM_MANAGER_MAX_RAM_MB, or make room in /dev/shm, "
            "then retry"
        )
    if isinstance(error, InvalidPayloadError):
        return "fix the field the message names"
    if isinstance(error, OperationError):
        return "`framepipe pipelines status ID` shows the pipeline's state"
    if isinstance(error, InternalError):
        request = f" under request_id {error.request_id}" if error.request_id else ""
        return f"the manager's log has the details{request}"
    if isinstance(error, GatewayStartError):
        return (
            "choose another --http-port or --metrics-port (FRAMEPIPE_HTTP_PORT, "
            "FRAMEPIPE_METRICS_PORT), or 0 for any free one"
        )
    if isinstance(error, ImportError):
        return _import_hint(error)
    return None


def _import_hint(error: ImportError) -> str | None:
    from framepipe._installation import extra_for_module

    module = error.name or ""
    if module.startswith("framepipe.ext"):
        return (
            "framepipe's compiled extensions are missing: reinstall it from a wheel, or from "
            "the sdist with a C compiler (pip install --force-reinstall framepipe); in a "
            "checkout, make build"
        )
    extra = extra_for_module(module)
    return f"pip install 'framepipe[{extra}]'" if extra else None


def explain(error: BaseException) -> str:
    """One line: what went wrong, then a hint."""
    if isinstance(error, FramepipeError):
        label = "" if isinstance(error, ConnectivityError) else f"{error.error_type.value}: "
        cause = f"{label}{_one_line(error.message)}"
    elif isinstance(error, CommandLineError):
        cause = _one_line(error.message)
    elif isinstance(error, OSError | ImportError | GatewayStartError):
        cause = _one_line(str(error))
    else:
        cause = f"unexpected {type(error).__name__}: {_one_line(str(error))}"
    hint = hint_for(error)
    return f"{cause} (hint: {hint})" if hint else cause
