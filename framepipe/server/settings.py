"""The manager's settings: read once, at start, from the environment and the command line.

Environment names are the reference's (``STREAM_MANAGER_HOST``, ``STREAM_MANAGER_PORT``,
``STREAM_MANAGER_MAX_RAM_MB``, ``STREAM_MANAGER_RAM_USAGE_QUEUE_SIZE``,
``STREAM_API_PRELOADED_PROCESSES``) plus framepipe's own (``FRAMEPIPE_*``). Nothing here runs at
import time: :meth:`ServerSettings.from_env` is called by whoever starts the manager, and the
resulting frozen object is passed down.

The front end's limits and its security settings (token, TLS, video directories, binding
beyond loopback) are checked at start: a setting that would leave the manager open by accident
(an empty token, a public address without a token or without video directories) is refused
with a :class:`SettingsError`, which ``framepipe serve`` reports with exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import ipaddress
import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from framepipe.protocol.framing import DEFAULT_MAX_MESSAGE_SIZE

if TYPE_CHECKING:
    from framepipe.core.sources.reference import StreamPolicy
from framepipe.protocol.limits import DEFAULT_MAX_JSON_DEPTH, DEFAULT_MAX_JSON_ITEMS

DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_MAX_PENDING_BYTES = 32 * 1024 * 1024
# A token is compared with the request's bytes before they are parsed (see
# server/manager/tcp.py), so it must be written the same way by every JSON encoder: printable
# ASCII, no quote, no backslash, no slash (some encoders write "\/"), no space.
_TOKEN_FORBIDDEN = set(' "\\/')
SHORT_TOKEN = 16


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
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_SIZE
    read_timeout_s: float = 10.0
    # The event loop: "uvloop" (faster with many short connections) when it is installed,
    # else "asyncio"; FRAMEPIPE_EVENT_LOOP=asyncio|uvloop chooses explicitly.
    event_loop: str = "asyncio"
    # Registered models whose inference services start with the manager
    # (FRAMEPIPE_PRELOAD_MODELS, comma-separated): the first `init` on one does not wait.
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
    # A source that does not open within this many seconds fails to open (a live one retries).
    source_open_timeout_s: float = 5.0
    # A live source that delivers no frame for this many seconds is RESTARTING and reconnected.
    source_read_timeout_s: float = 3.0
    # The largest frame ring one source may have (FRAMEPIPE_MAX_RING_MB; 0: no cap). The default
    # is framepipe.core.sources.sizing.DEFAULT_MAX_RING_BYTES (32 4K frames), not imported here
    # to keep the manager's start light; a unit test holds the two equal.
    max_ring_mb: float = 759.375
    # A pipeline's result buffer holds at most this many MB of results besides its entry count
    # (FRAMEPIPE_MAX_RESULTS_MB; 0: no cap); it counts in the RAM budget.
    max_results_mb: float = 64.0
    # A consume_result reply carries at most this many MB of results (at least one entry;
    # it says how many are left): FRAMEPIPE_MAX_REPLY_MB, 0: no cap.
    max_reply_mb: float = 4.0
    # ---- the front end's limits and security (see docs/RELIABILITY.md) -----------------------
    # Connections open at once; at the limit the oldest one still sending its request is dropped.
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # Bytes of requests above 64 kB being received or parsed at once (beyond: they wait).
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    max_json_items: int = DEFAULT_MAX_JSON_ITEMS
    # Binding beyond loopback without a token needs this (FRAMEPIPE_ALLOW_UNAUTHENTICATED=1).
    allow_unauthenticated: bool = False
    # File video references must lie in one of these (resolved); required beyond loopback.
    video_dirs: tuple[Path, ...] | None = None
    # Stream URLs may use udp:// and rtp:// (they bind local ports): FRAMEPIPE_ALLOW_UDP_STREAMS.
    allow_udp_streams: bool = False
    # Stream URLs and TURN servers may be on private, loopback and link-local addresses
    # (cameras live on private networks): FRAMEPIPE_ALLOW_PRIVATE_STREAMS=0 forbids them.
    allow_private_streams: bool = True
    # TLS on the TCP port: a PEM certificate (chain) and its private key.
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def max_ring_bytes(self) -> int | None:
        return int(self.max_ring_mb * 1024 * 1024) if self.max_ring_mb > 0 else None

    @property
    def max_results_bytes(self) -> int | None:
        return int(self.max_results_mb * 1024 * 1024) if self.max_results_mb > 0 else None

    @property
    def max_reply_bytes(self) -> int | None:
        return int(self.max_reply_mb * 1024 * 1024) if self.max_reply_mb > 0 else None

    def stream_policy(self) -> StreamPolicy:
        """What a stream URL (or a TURN server) of a request may reach."""
        from framepipe.core.sources.reference import StreamPolicy

        return StreamPolicy(
            allow_udp=self.allow_udp_streams, allow_private=self.allow_private_streams
        )

    @property
    def is_loopback(self) -> bool:
        """The manager listens on a loopback address only."""
        return is_loopback_host(self.host)

    def tls_context(self) -> ssl.SSLContext | None:
        """The server-side TLS context (None without TLS); SettingsError if it cannot load."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(
                f"TLS certificate {str(self.tls_cert)!r} / key {str(self.tls_key)!r} cannot be "
                f"loaded: {exc} (FRAMEPIPE_TLS_CERT, FRAMEPIPE_TLS_KEY)"
            ) from None
        return context

    def security_warnings(self) -> list[str]:
        """What an operator should know about these settings (logged at start)."""
        warnings = []
        where = f"{self.host or '*'}:{self.port}"
        if not self.is_loopback and self.token is None:
            warnings.append(
                f"listening on {where} WITHOUT a token (--allow-unauthenticated): anyone who "
                "can reach this port controls the stream manager"
            )
        if not self.is_loopback and self.tls_cert is None:
            warnings.append(
                f"listening on {where} without TLS: requests (and the token) and results cross "
                "the network in clear text; set FRAMEPIPE_TLS_CERT and FRAMEPIPE_TLS_KEY"
            )
        if self.token is not None and len(self.token) < SHORT_TOKEN:
            warnings.append(
                f"the token is {len(self.token)} characters long; use {SHORT_TOKEN} or more "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return warnings

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
            token=_token(env.get("FRAMEPIPE_TOKEN"), "FRAMEPIPE_TOKEN"),
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
            source_open_timeout_s=_float(
                env, "FRAMEPIPE_SOURCE_OPEN_TIMEOUT", defaults.source_open_timeout_s
            ),
            source_read_timeout_s=_float(
                env, "FRAMEPIPE_SOURCE_READ_TIMEOUT", defaults.source_read_timeout_s
            ),
            max_ring_mb=_cap_mb(env, "FRAMEPIPE_MAX_RING_MB", defaults.max_ring_mb),
            max_results_mb=_cap_mb(env, "FRAMEPIPE_MAX_RESULTS_MB", defaults.max_results_mb),
            max_reply_mb=_cap_mb(env, "FRAMEPIPE_MAX_REPLY_MB", defaults.max_reply_mb),
            allow_udp_streams=_bool(env, "FRAMEPIPE_ALLOW_UDP_STREAMS", defaults.allow_udp_streams),
            allow_private_streams=_bool(
                env, "FRAMEPIPE_ALLOW_PRIVATE_STREAMS", defaults.allow_private_streams
            ),
            **_front_from_env(env, defaults),
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
        help="model whose inference service starts with the manager; repeatable "
        "(FRAMEPIPE_PRELOAD_MODELS)",
    )
    parser.add_argument(
        "--command-timeout",
        type=float,
        help="seconds a worker has to answer (FRAMEPIPE_COMMAND_TIMEOUT)",
    )
    _add_front_arguments(parser)


def _add_front_arguments(parser: argparse.ArgumentParser) -> None:
    """The front end's security flags (documented in README's settings section)."""
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        default=None,
        help="allow a non-loopback --host without a token (FRAMEPIPE_ALLOW_UNAUTHENTICATED=1)",
    )
    parser.add_argument(
        "--video-dir",
        action="append",
        dest="video_dirs",
        help="directory file video references must lie in; repeatable; required beyond "
        "loopback (FRAMEPIPE_VIDEO_DIRS, colon-separated)",
    )
    parser.add_argument("--tls-cert", help="PEM certificate chain for TLS (FRAMEPIPE_TLS_CERT)")
    parser.add_argument("--tls-key", help="PEM private key for TLS (FRAMEPIPE_TLS_KEY)")


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
        **_front_overrides(args),
    )
    return validated(settings)


def validated(settings: ServerSettings) -> ServerSettings:
    """``settings`` checked as a whole, with the video directories resolved; raises
    SettingsError for anything that cannot start or would start open by accident."""
    if not 0 <= settings.port <= 65535:
        raise SettingsError(f"port must be within 0..65535, got {settings.port}")
    if settings.preloaded_processes < 0:
        raise SettingsError(f"preloaded processes must be >= 0, got {settings.preloaded_processes}")
    if settings.max_ram_mb is not None and settings.max_ram_mb <= 0:
        raise SettingsError(f"max RAM must be > 0 MB, got {settings.max_ram_mb}")
    if settings.max_ring_mb < 0:
        raise SettingsError(
            f"FRAMEPIPE_MAX_RING_MB must be >= 0 (0: no cap), got {settings.max_ring_mb}"
        )
    return _validated_front(settings)


def _validated_front(settings: ServerSettings) -> ServerSettings:
    if settings.token is not None:
        _token(settings.token, "--token")
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise SettingsError(
            "TLS needs both a certificate and its key (FRAMEPIPE_TLS_CERT and FRAMEPIPE_TLS_KEY, "
            "or --tls-cert and --tls-key)"
        )
    settings.tls_context()  # loads once now, so that a bad file stops the start
    dirs = None
    if settings.video_dirs is not None:
        dirs = []
        for directory in settings.video_dirs:
            resolved = Path(os.path.realpath(directory))
            if not resolved.is_dir():
                raise SettingsError(
                    f"video directory {str(directory)!r} is not a directory (FRAMEPIPE_VIDEO_DIRS)"
                )
            dirs.append(resolved)
        if not dirs:
            raise SettingsError("FRAMEPIPE_VIDEO_DIRS is set but names no directory")
    if not settings.is_loopback:
        where = f"{settings.host or '0.0.0.0'}:{settings.port}"
        if settings.token is None and not settings.allow_unauthenticated:
            raise SettingsError(
                f"binding {where} (beyond loopback) without a token would let anyone on the "
                "network control the stream manager: set FRAMEPIPE_TOKEN (or --token), or pass "
                "--allow-unauthenticated (FRAMEPIPE_ALLOW_UNAUTHENTICATED=1) to accept that"
            )
        if dirs is None:
            raise SettingsError(
                f"binding {where} (beyond loopback) needs FRAMEPIPE_VIDEO_DIRS (or --video-dir): "
                "the directories remote clients may read video files from"
            )
    return dataclasses.replace(settings, video_dirs=tuple(dirs) if dirs is not None else None)


def is_loopback_host(host: str) -> bool:
    """``host`` is a loopback address, or a name that resolves to loopback addresses only
    ("" and 0.0.0.0 / :: mean every interface: not loopback)."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(
        ipaddress.ip_address(str(a).split("%", 1)[0]).is_loopback for a in addresses
    )


def _token(raw: str | None, name: str) -> str | None:
    """A shared token as configured: None when unset; an empty or unusable one is an error
    (an empty FRAMEPIPE_TOKEN used to turn authentication off without a word)."""
    if raw is None:
        return None
    if not raw.strip():
        raise SettingsError(
            f"{name} is set but empty: set a token (e.g. python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))') or unset it to run without one"
        )
    bad = sorted({c for c in raw if c in _TOKEN_FORBIDDEN or not (0x21 <= ord(c) <= 0x7E)})
    if bad:
        raise SettingsError(
            f"{name} may hold printable ASCII characters other than space, quote, backslash and "
            f"slash; it contains {', '.join(repr(c) for c in bad)} (secrets.token_urlsafe makes "
            "suitable tokens)"
        )
    return raw


class _FrontFields(TypedDict):
    max_connections: int
    max_pending_bytes: int
    max_json_depth: int
    max_json_items: int
    allow_unauthenticated: bool
    video_dirs: tuple[Path, ...] | None
    tls_cert: Path | None
    tls_key: Path | None


def _front_from_env(env: Mapping[str, str], defaults: ServerSettings) -> _FrontFields:
    raw_dirs = env.get("FRAMEPIPE_VIDEO_DIRS")
    return {
        "max_connections": _int(
            env, "FRAMEPIPE_MAX_CONNECTIONS", defaults.max_connections, minimum=8
        ),
        "max_pending_bytes": _int(
            env, "FRAMEPIPE_MAX_PENDING_BYTES", defaults.max_pending_bytes, minimum=1024 * 1024
        ),
        "max_json_depth": _int(env, "FRAMEPIPE_MAX_JSON_DEPTH", defaults.max_json_depth, minimum=2),
        "max_json_items": _int(env, "FRAMEPIPE_MAX_JSON_ITEMS", defaults.max_json_items, minimum=8),
        "allow_unauthenticated": _bool(
            env, "FRAMEPIPE_ALLOW_UNAUTHENTICATED", defaults.allow_unauthenticated
        ),
        "video_dirs": (
            None
            if raw_dirs is None
            else tuple(Path(part) for part in raw_dirs.split(":") if part.strip())
        ),
        "tls_cert": _optional_path(env, "FRAMEPIPE_TLS_CERT"),
        "tls_key": _optional_path(env, "FRAMEPIPE_TLS_KEY"),
    }


def _front_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "allow_unauthenticated": getattr(args, "allow_unauthenticated", None),
        "video_dirs": (
            tuple(Path(d) for d in args.video_dirs) if getattr(args, "video_dirs", None) else None
        ),
        "tls_cert": Path(args.tls_cert) if getattr(args, "tls_cert", None) else None,
        "tls_key": Path(args.tls_key) if getattr(args, "tls_key", None) else None,
    }


def _optional_path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    return Path(raw) if raw is not None and raw.strip() else None


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


def _cap_mb(env: Mapping[str, str], name: str, default: float) -> float:
    """A cap in MB: a number >= 0, where 0 means no cap."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of MB (0: no cap), got {raw!r}") from None
    if value < 0:
        raise SettingsError(f"{name} must be >= 0 (0: no cap), got {value}")
    return value


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


__all__: Sequence[str] = [
    "ServerSettings",
    "SettingsError",
    "add_arguments",
    "from_arguments",
    "is_loopback_host",
    "validated",
]
