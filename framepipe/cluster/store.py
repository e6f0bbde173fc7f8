"""Pipeline records in Ray's GCS key-value store: what survives a front end or a node.

One entry per pipeline, ``pipeline:<front id>`` in the ``framepipe`` namespace, holding the
``init`` payload as received and where the pipeline runs now (node, the manager's pid there,
its id on that manager), with every move so far. The front end writes a record before it asks
a node to start the pipeline and removes it when the pipeline is terminated, has ended, or
could not start; a restarted front end reads them all back (:mod:`framepipe.cluster.front`).
The GCS keeps them as long as the cluster's head lives (with GCS fault tolerance, beyond).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from framepipe.cluster.settings import NAMESPACE

__all__ = ["Move", "PipelineRecord", "RecordStore"]

_PREFIX = "pipeline:"
TOKEN_KEY = "agent-token"


@dataclass
class Move:
    """A pipeline placed again: from which node, to which, when, why, what was lost."""

    from_node: str
    to_node: str | None
    at: float
    reason: str
    results_lost: int
    restarted_from: str  # "the beginning" (files), "the live stream" (cameras)


@dataclass
class PipelineRecord:
    pipeline_id: str
    payload: dict[str, Any]
    created_at: float
    node_id: str | None = None
    manager_pid: int | None = None
    local_id: str | None = None
    moves: list[Move] = field(default_factory=list)
    # Set when the pipeline could not be placed again (its status says why).
    failure: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> PipelineRecord:
        data = json.loads(raw)
        data["moves"] = [Move(**move) for move in data.get("moves", [])]
        return cls(**data)


class RecordStore:
    """The records in the GCS (blocking calls: the front end runs them in a thread)."""

    def put(self, record: PipelineRecord) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(
            _PREFIX + record.pipeline_id, record.to_json(), overwrite=True, namespace=NAMESPACE
        )

    def delete(self, pipeline_id: str) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_del(_PREFIX + pipeline_id, namespace=NAMESPACE)

    def load_all(self) -> list[PipelineRecord]:
        from ray.experimental import internal_kv

        records = []
        for key in internal_kv._internal_kv_list(_PREFIX, namespace=NAMESPACE):
            raw = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
            if raw is not None:
                records.append(PipelineRecord.from_json(raw))
        return records

    def agent_token(self, proposed: str) -> str:
        """The token every agent's manager requires: the first front end's, kept in the GCS
        so that a restarted front end reaches the agents that are already running."""
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(
            TOKEN_KEY, proposed.encode(), overwrite=False, namespace=NAMESPACE
        )
        raw = internal_kv._internal_kv_get(TOKEN_KEY, namespace=NAMESPACE)
        return raw.decode() if raw is not None else proposed
