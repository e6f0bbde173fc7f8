"""The manager's settings: read once, at start, from the environment and the command line.

Environment names are the reference's (``STREAM_MANAGER_HOST``, ``STREAM_MANAGER_PORT``,
``STREAM_MANAGER_MAX_RAM_MB``, ``STREAM_MANAGER_RAM_USAGE_QUEUE_SIZE``,
``STREAM_API_PRELOADED_PROCESSES``) plus framepipe's own (``FRAMEPIPE_*``). Nothing here runs at
import time: :meth:`ServerSettings.from_env` is called by whoever starts the manager, and the
resulting frozen object is passed down.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


class SettingsError(ValueError):
    """An environment variable or flag has a value that cannot be used."""


@dataclass(frozen=True)
class ServerSettings:
    """Everything the manager and its workers are configured with."""

    host: str = "127.0.0.1"
    port: int = 7070
    # None: no RAM limit (as in the reference, where the variable is optional).
    max_ram_mb: float | None = None
    ram_usage_queue_size: int = 10
    preloaded_processes: int = 0
    # None: no authorisation (the manager binds 127.0.0.1 by default).
    token: str | None = None
    # A worker that does not answer a command within this many seconds is killed.
    command_timeout_s: float = 10.0
    # `init` may open a camera or probe a stream: it gets its own, longer, bound.
    init_timeout_s: float = 30.0
    # A freshly spawned worker must report ready (imports done) within this bound.
    spawn_timeout_s: float = 60.0
    # Graceful termination of one pipeline before its worker is killed.
    terminate_timeout_s: float = 10.0
    health_interval_s: float = 1.0
    # A finished pipeline whose results were all consumed, or a failed one whose status a
    # client read, stays listed this long (so a final `status` still answers).
    ended_linger_s: float = 10.0
    # A finished pipeline with results nobody consumes (and no consumption_timeout), or a
    # failed one nobody looked at, stays listed at most this long.
    retention_s: float = 60.0
    # Framing limits of the TCP front end.
    max_message_bytes: int = 16 * 1024 * 1024
    read_timeout_s: float = 10.0
    # The event loop: "uvloop" (faster with many short connections) when it is installed,
    # else "asyncio"; FRAMEPIPE_EVENT_LOOP=asyncio|uvloop chooses explicitly.
    event_loop: str = "asyncio"
    # Registered model names every idle worker loads ahead of time (FRAMEPIPE_PRELOAD_MODELS,
    # comma-separated): an `init` asking for one skips loading it.
    preload_models: tuple[str, ...] = ()
    # Pipelines on the same video reference share one decode process and ring, owned by the
    # manager (FRAMEPIPE_SHARE_DECODERS=0 gives every pipeline its own decoder).
    share_decoders: bool = True
    # WebRTC: the addresses the server offers as ICE host candidates (empty: every address of
    # every interface except loopback, aioice's choice). "127.0.0.1" keeps a local peer on
    # loopback (a browser needs --allow-loopback-in-peer-connection for that).
    webrtc_ice_addresses: tuple[str, ...] = ()
    # WebRTC: seconds a peer has, from the answer, to connect and send its first frame (after
    # that, `webrtc_peer_timeout` of the request bounds the silence between two frames).
    webrtc_connect_timeout_s: float = 30.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        """Settings from the environment (``os.environ`` unless another mapping is given)."""
        env = os.environ if environ is None else environ
        defaults = cls()
        return cls(
            host=env.get("STREAM_MANAGER_HOST", defaults.host),
            port=_int(env, "STREAM_MANAGER_PORT", defaults.port, minimum=0, maximum=65535),
            max_ram_mb=_optional_float(env, "STREAM_MANAGER_MAX_RAM_MB"),
            ram_usage_queue_size=_int(
                env, "STREAM_MANAGER_RAM_USAGE_QUEUE_SIZE", defaults.ram_usage_queue_size, minimum=1
            ),
            preloaded_processes=_int(
                env, "STREAM_API_PRELOADED_PROCESSES", defaults.preloaded_processes, minimum=0
            ),
            token=env.get("FRAMEPIPE_TOKEN") or None,
            command_timeout_s=_float(env, "FRAMEPIPE_COMMAND_TIMEOUT", defaults.command_timeout_s),
            init_timeout_s=_float(env, "FRAMEPIPE_INIT_TIMEOUT", defaults.init_timeout_s),
            spawn_timeout_s=_float(env, "FRAMEPIPE_SPAWN_TIMEOUT", defaults.spawn_timeout_s),
            terminate_timeout_s=_float(
                env, "FRAMEPIPE_TERMINATE_TIMEOUT", defaults.terminate_timeout_s
            ),
            health_interval_s=_float(env, "FRAMEPIPE_HEALTH_INTERVAL", defaults.health_interval_s),
            ended_linger_s=_float(env, "FRAMEPIPE_ENDED_LINGER", defaults.ended_linger_s),
            retention_s=_float(env, "FRAMEPIPE_RETENTION", defaults.retention_s),
            max_message_bytes=_int(
                env, "FRAMEPIPE_MAX_MESSAGE_BYTES", defaults.max_message_bytes, minimum=1024
            ),
            read_timeout_s=_float(env, "FRAMEPIPE_READ_TIMEOUT", defaults.read_timeout_s),
            event_loop=_event_loop(env.get("FRAMEPIPE_EVENT_LOOP", "auto")),
            preload_models=tuple(
                name.strip()
                for name in env.get("FRAMEPIPE_PRELOAD_MODELS", "").split(",")
                if name.strip()
            ),
            share_decoders=_bool(env, "FRAMEPIPE_SHARE_DECODERS", defaults.share_decoders),
            webrtc_ice_addresses=_list(env, "FRAMEPIPE_WEBRTC_ICE_ADDRESSES"),
            webrtc_connect_timeout_s=_float(
                env, "FRAMEPIPE_WEBRTC_CONNECT_TIMEOUT", defaults.webrtc_connect_timeout_s
            ),
        )

    def with_overrides(self, **changes: object) -> ServerSettings:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - valid
        if unknown:
            raise SettingsError(f"unknown settings: {sorted(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``framepipe serve`` flags; each overrides its environment variable."""
    parser.add_argument("--host", help="address to bind (STREAM_MANAGER_HOST, 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help="TCP port, 0 for any free one (STREAM_MANAGER_PORT, 7070)"
    )
    parser.add_argument(
        "--max-ram-mb", type=float, help="RAM budget in MB (STREAM_MANAGER_MAX_RAM_MB)"
    )
    parser.add_argument(
        "--preloaded-processes",
        type=int,
        help="idle warm workers to keep (STREAM_API_PRELOADED_PROCESSES, 0)",
    )
    parser.add_argument("--token", help="shared token clients must send (FRAMEPIPE_TOKEN)")
    parser.add_argument(
        "--preload-model",
        action="append",
        dest="preload_models",
        help="model idle workers load ahead of time; repeatable (FRAMEPIPE_PRELOAD_MODELS)",
    )
    parser.add_argument(
        "--command-timeout",
        type=float,
        help="seconds a worker has to answer (FRAMEPIPE_COMMAND_TIMEOUT)",
    )


def from_arguments(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ServerSettings:
    """Settings from the environment, then the flags given on the command line."""
    settings = ServerSettings.from_env(environ)
    settings = settings.with_overrides(
        host=args.host,
        port=args.port,
        max_ram_mb=args.max_ram_mb,
        preloaded_processes=args.preloaded_processes,
        token=args.token,
        command_timeout_s=args.command_timeout,
        preload_models=tuple(args.preload_models) if args.preload_models else None,
    )
    _validate(settings)
    return settings


def _validate(settings: ServerSettings) -> None:
    if not 0 <= settings.port <= 65535:
        raise SettingsError(f"port must be within 0..65535, got {settings.port}")
    if settings.preloaded_processes < 0:
        raise SettingsError(f"preloaded processes must be >= 0, got {settings.preloaded_processes}")
    if settings.max_ram_mb is not None and settings.max_ram_mb <= 0:
        raise SettingsError(f"max RAM must be > 0 MB, got {settings.max_ram_mb}")


def _event_loop(choice: str) -> str:
    choice = choice.strip().lower() or "auto"
    if choice not in ("auto", "asyncio", "uvloop"):
        raise SettingsError(f"FRAMEPIPE_EVENT_LOOP must be auto, asyncio or uvloop, got {choice!r}")
    if choice == "asyncio":
        return choice
    installed = importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not installed:
        raise SettingsError("FRAMEPIPE_EVENT_LOOP=uvloop but uvloop is not installed")
    return "uvloop" if installed else "asyncio"


def _int(
    env: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int | None = None
) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise SettingsError(f"{name} must be {bound}, got {value}")
    return value


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list (empty entries ignored)."""
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be 1/0, true/false, yes/no or on/off, got {raw!r}")


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    value = _optional_float(env, name)
    return default if value is None else value


def _optional_float(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be > 0, got {value}")
    return value


__all__: Sequence[str] = ["ServerSettings", "SettingsError", "add_arguments", "from_arguments"]
