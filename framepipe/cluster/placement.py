"""Which node takes a new pipeline: a pure function of the nodes' view (no I/O).

A node can take a pipeline when it has a free camera slot (its Ray ``camera_slots`` resource
less the pipelines it runs), room in its agent's RAM budget for the pipeline's predicted need,
and a GPU when the pipeline asks for a GPU provider. Among those, it prefers (in this order):

1. a node that already decodes the pipeline's live camera (one decoder, one connection to the
   camera, shared by the pipelines on that node);
2. a node that already runs the pipeline's model (its inference service is warm: no second
   copy of the model's memory, and the first result comes sooner);
3. the node with the most free slots (spread the load), then the most free memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from framepipe.protocol.errors import CapacityError

__all__ = ["InsufficientCapacityError", "NodeView", "PipelineNeed", "rank_nodes", "refusal"]


class InsufficientCapacityError(CapacityError):
    """No node can take the pipeline (``operation_error`` on the wire)."""


@dataclass(frozen=True)
class NodeView:
    """What the front end knows of one live node with a running agent."""

    node_id: str
    camera_slots: int
    pipelines: int
    # None: the agent's manager has no budget or was not measured yet.
    memory_free_bytes: int | None = None
    gpus: float = 0.0
    models: frozenset[str] = field(default_factory=frozenset)
    live_sources: frozenset[str] = field(default_factory=frozenset)

    @property
    def free_slots(self) -> int:
        return self.camera_slots - self.pipelines


@dataclass(frozen=True)
class PipelineNeed:
    model: str | None
    live_sources: frozenset[str]
    memory_bytes: int
    gpu: bool = False


def refusal(node: NodeView, need: PipelineNeed) -> str | None:
    """Why ``node`` cannot take the pipeline; None when it can."""
    if node.free_slots <= 0:
        return f"{node.pipelines}/{node.camera_slots} camera slots used"
    if node.memory_free_bytes is not None and node.memory_free_bytes < need.memory_bytes:
        return (
            f"{node.memory_free_bytes / 1e6:.0f} MB free, the pipeline needs "
            f"{need.memory_bytes / 1e6:.0f} MB"
        )
    if need.gpu and node.gpus <= 0:
        return "no GPU"
    return None


def rank_nodes(nodes: Iterable[NodeView], need: PipelineNeed) -> list[NodeView]:
    """The nodes that can take the pipeline, best first; InsufficientCapacityError naming
    every node's reason when none can."""
    nodes = list(nodes)
    able: list[NodeView] = []
    reasons: list[str] = []
    for node in nodes:
        reason = refusal(node, need)
        if reason is None:
            able.append(node)
        else:
            reasons.append(f"node {node.node_id[:12]}: {reason}")
    if not able:
        raise InsufficientCapacityError(capacity_message(reasons, len(nodes)))

    def key(node: NodeView) -> tuple[int, int, int, int]:
        return (
            -len(need.live_sources & node.live_sources),
            0 if need.model is not None and need.model in node.models else 1,
            -node.free_slots,
            -(node.memory_free_bytes or 0),
        )

    return sorted(able, key=key)


def capacity_message(reasons: Sequence[str], nodes: int) -> str:
    if nodes == 0:
        return "insufficient capacity: no Ray node runs a framepipe agent"
    return "insufficient capacity: no node can take the pipeline (" + "; ".join(reasons) + ")"
