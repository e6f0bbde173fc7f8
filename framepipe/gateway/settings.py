"""The HTTP gateway's settings: read once, at start, from the environment and the command line.

Each field carries its environment name and a description in its metadata, so that the
configuration reference (``framepipe serve --help-settings``) is generated from this object.
Like :class:`~framepipe.server.settings.ServerSettings`, nothing is read at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_STREAM_BUFFER = 10_000


class GatewaySettingsError(ValueError):
    """An environment variable or flag of the gateway has a value that cannot be used."""


def _setting(default: Any, env: str, help: str, example: str, section: str = "HTTP gateway") -> Any:
    """A field with its environment name, description and an example value (the settings
    test sets each variable to its example and checks the field follows); ``section`` heads
    its description in the configuration reference."""
    return field(
        default=default,
        metadata={"env": env, "help": help, "example": example, "section": section},
    )


@dataclass(frozen=True)
class GatewaySettings:
    """How the HTTP gateway listens, and how it talks to the manager."""

    http_port: int | None = _setting(
        None,
        "FRAMEPIPE_HTTP_PORT",
        "its port (0: any free one); unset: no gateway",
        "9001",
    )
    http_host: str | None = _setting(
        None,
        "FRAMEPIPE_HTTP_HOST",
        "address it binds; unset: the manager's host",
        "0.0.0.0",
    )
    operations_timeout_s: float = _setting(
        60.0,
        "FRAMEPIPE_HTTP_OPERATIONS_TIMEOUT",
        "seconds one call from the gateway to the manager may take (an init opens a video)",
        "90",
    )
    max_body_bytes: int = _setting(
        16 * 1024 * 1024,
        "FRAMEPIPE_HTTP_MAX_BODY_BYTES",
        "largest request body the gateway reads (413 above it)",
        "1048576",
    )
    stream_buffer: int = _setting(
        64,
        "FRAMEPIPE_HTTP_STREAM_BUFFER",
        "results a /results/stream reader may fall behind before it loses the oldest",
        "256",
    )
    stream_batch: int = _setting(
        64,
        "FRAMEPIPE_HTTP_STREAM_BATCH",
        "results the gateway drains from a pipeline's sink per consume_result call",
        "16",
    )
    stream_poll_s: float = _setting(
        0.02,
        "FRAMEPIPE_HTTP_STREAM_POLL",
        "seconds between drains of an empty sink while a stream is open",
        "0.05",
    )
    stream_keepalive_s: float = _setting(
        15.0,
        "FRAMEPIPE_HTTP_STREAM_KEEPALIVE",
        "seconds of silence after which a stream sends a keep-alive comment",
        "30",
    )
    cors_origins: tuple[str, ...] = _setting(
        (),
        "FRAMEPIPE_HTTP_CORS_ORIGINS",
        "comma-separated origins a browser dashboard may call the gateway from",
        "https://dash.example",
    )
    allowed_hosts: tuple[str, ...] = _setting(
        (),
        "FRAMEPIPE_HTTP_ALLOWED_HOSTS",
        "without a token, the gateway answers only requests whose `Host` is 127.0.0.1, "
        "localhost, [::1], its FRAMEPIPE_HTTP_HOST or one of these comma-separated names "
        "(`*`: any), and refuses a POST from another web origin (DNS rebinding, cross-site "
        "forms)",
        "cams.example.lan",
    )
    metrics_port: int | None = _setting(
        None,
        "FRAMEPIPE_METRICS_PORT",
        "port of a `/metrics` endpoint of its own, also when the HTTP gateway is off (0: any "
        "free one; it binds the gateway's address); unset: `/metrics` is on the gateway's port "
        "only",
        "9100",
        section="Prometheus metrics",
    )

    @property
    def enabled(self) -> bool:
        return self.http_port is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> GatewaySettings:
        """Settings from ``environ`` (pass ``os.environ``)."""
        defaults = cls()
        port = environ.get("FRAMEPIPE_HTTP_PORT", "").strip()
        metrics_port = environ.get("FRAMEPIPE_METRICS_PORT", "").strip()
        origins = environ.get("FRAMEPIPE_HTTP_CORS_ORIGINS", "")
        hosts = environ.get("FRAMEPIPE_HTTP_ALLOWED_HOSTS", "")
        settings = cls(
            http_port=_int("FRAMEPIPE_HTTP_PORT", port) if port else None,
            http_host=environ.get("FRAMEPIPE_HTTP_HOST", "").strip() or None,
            operations_timeout_s=_float(
                environ, "FRAMEPIPE_HTTP_OPERATIONS_TIMEOUT", defaults.operations_timeout_s
            ),
            max_body_bytes=_int_env(
                environ, "FRAMEPIPE_HTTP_MAX_BODY_BYTES", defaults.max_body_bytes
            ),
            stream_buffer=_int_env(environ, "FRAMEPIPE_HTTP_STREAM_BUFFER", defaults.stream_buffer),
            stream_batch=_int_env(environ, "FRAMEPIPE_HTTP_STREAM_BATCH", defaults.stream_batch),
            stream_poll_s=_float(environ, "FRAMEPIPE_HTTP_STREAM_POLL", defaults.stream_poll_s),
            stream_keepalive_s=_float(
                environ, "FRAMEPIPE_HTTP_STREAM_KEEPALIVE", defaults.stream_keepalive_s
            ),
            cors_origins=tuple(o.strip() for o in origins.split(",") if o.strip()),
            allowed_hosts=tuple(h.strip().lower() for h in hosts.split(",") if h.strip()),
            metrics_port=_int("FRAMEPIPE_METRICS_PORT", metrics_port) if metrics_port else None,
        )
        settings.validate()
        return settings

    def with_overrides(self, **changes: object) -> GatewaySettings:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        given = {k: v for k, v in changes.items() if v is not None}
        settings = dataclasses.replace(self, **given)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise GatewaySettingsError(f"HTTP port must be within 0..65535, got {self.http_port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise GatewaySettingsError(
                f"metrics port must be within 0..65535, got {self.metrics_port}"
            )
        if not 1 <= self.stream_buffer <= MAX_STREAM_BUFFER:
            raise GatewaySettingsError(
                f"FRAMEPIPE_HTTP_STREAM_BUFFER must be 1..{MAX_STREAM_BUFFER}, "
                f"got {self.stream_buffer}"
            )
        if not 1 <= self.stream_batch <= MAX_STREAM_BUFFER:
            raise GatewaySettingsError(
                f"FRAMEPIPE_HTTP_STREAM_BATCH must be 1..{MAX_STREAM_BUFFER}, "
                f"got {self.stream_batch}"
            )
        if self.max_body_bytes < 1024:
            raise GatewaySettingsError(
                f"FRAMEPIPE_HTTP_MAX_BODY_BYTES must be >= 1024, got {self.max_body_bytes}"
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The gateway's ``framepipe serve`` flags; each overrides its environment variable."""
    parser.add_argument(
        "--http-port",
        type=int,
        help="also serve the HTTP gateway on this port, 0 for any free one (FRAMEPIPE_HTTP_PORT)",
    )
    parser.add_argument(
        "--http-host", help="address the HTTP gateway binds (FRAMEPIPE_HTTP_HOST; --host)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics on this port too, also without the gateway; 0 for any "
        "free one (FRAMEPIPE_METRICS_PORT)",
    )


def from_arguments(args: argparse.Namespace, environ: Mapping[str, str]) -> GatewaySettings:
    """Settings from the environment, then the flags given on the command line."""
    return GatewaySettings.from_env(environ).with_overrides(
        http_port=getattr(args, "http_port", None),
        http_host=getattr(args, "http_host", None),
        metrics_port=getattr(args, "metrics_port", None),
    )


def _int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise GatewaySettingsError(f"{name} must be an integer, got {raw!r}") from None


def _int_env(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    return _int(name, raw) if raw else default


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise GatewaySettingsError(f"{name} must be a number, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise GatewaySettingsError(f"{name} must be a finite number > 0, got {raw!r}")
    return value
