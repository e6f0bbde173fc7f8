"""Where a client connects to reach a server that was told to bind some address."""

from __future__ import annotations


def reachable_host(bind_host: str) -> str:
    """The address to connect to for a server bound to ``bind_host``: a wildcard bind
    (``0.0.0.0``, ``::``, empty) is reached on the loopback of the same family."""
    if bind_host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bind_host == "::":
        return "::1"
    return bind_host
