"""The few Ray calls framepipe makes, typed in one place (Ray's own are partly untyped)."""

from __future__ import annotations

from typing import Any

__all__ = ["nodes"]


def nodes() -> list[dict[str, Any]]:
    """Ray's node table: one dict per node ever seen (``NodeID``, ``Alive``,
    ``NodeManagerAddress``, ``Resources``...)."""
    import ray

    table: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return table
