"""Where the Ray front end places a pipeline (framepipe.cluster.placement: no I/O)."""

from __future__ import annotations

import pytest

from framepipe.cluster.agent import ram_budget_mb
from framepipe.cluster.placement import (
    InsufficientCapacityError,
    NodeView,
    PipelineNeed,
    rank_nodes,
    refusal,
)
from framepipe.protocol.errors import CapacityError, ErrorType

MB = 1_000_000
NEED = PipelineNeed(model="centerface", live_sources=frozenset(), memory_bytes=200 * MB)


def node(name: str, *, slots: int = 4, pipelines: int = 0, **fields: object) -> NodeView:
    return NodeView(node_id=name, camera_slots=slots, pipelines=pipelines, **fields)  # type: ignore[arg-type]


def test_the_emptiest_node_first_when_nothing_else_tells_them_apart() -> None:
    ranked = rank_nodes([node("a", pipelines=2), node("b"), node("c", pipelines=1)], NEED)
    assert [n.node_id for n in ranked] == ["b", "c", "a"]


def test_a_node_that_runs_the_model_is_preferred_to_an_emptier_one() -> None:
    ranked = rank_nodes([node("a"), node("b", pipelines=2, models=frozenset({"centerface"}))], NEED)
    assert [n.node_id for n in ranked] == ["b", "a"]


def test_a_node_that_decodes_the_camera_comes_before_the_model_s_node() -> None:
    camera = "rtsp://cam/1"
    need = PipelineNeed("centerface", frozenset({camera}), 200 * MB)
    ranked = rank_nodes(
        [
            node("a", models=frozenset({"centerface"})),
            node("b", pipelines=3, live_sources=frozenset({camera})),
        ],
        need,
    )
    assert [n.node_id for n in ranked] == ["b", "a"]


def test_full_short_of_memory_or_without_gpu_nodes_are_left_out() -> None:
    gpu_need = PipelineNeed(None, frozenset(), 100 * MB, gpu=True)
    nodes = [
        node("full", slots=2, pipelines=2, gpus=1),
        node("small", memory_free_bytes=50 * MB, gpus=1),
        node("cpu"),
        node("gpu", gpus=1),
    ]
    assert [n.node_id for n in rank_nodes(nodes, gpu_need)] == ["gpu"]


def test_refusal_says_why_one_node_cannot_take_the_pipeline() -> None:
    # the front end logs it for a node with a free slot that is left out
    assert refusal(node("empty"), NEED) is None
    assert refusal(node("full", slots=1, pipelines=1), NEED) == "1/1 camera slots used"
    assert refusal(node("small", memory_free_bytes=50 * MB), NEED) == (
        "50 MB free, the pipeline needs 200 MB"
    )


def test_nothing_fits_is_an_operation_error_naming_every_node_s_reason() -> None:
    with pytest.raises(InsufficientCapacityError) as refused:
        rank_nodes([node("a", slots=1, pipelines=1), node("b", memory_free_bytes=10 * MB)], NEED)
    message = refused.value.message
    assert message.startswith("insufficient capacity: ")
    assert "node a: 1/1 camera slots used" in message
    assert "node b: 10 MB free, the pipeline needs 200 MB" in message
    assert isinstance(refused.value, CapacityError)
    assert refused.value.error_type is ErrorType.OPERATION_ERROR


def test_no_node_at_all_is_refused_too() -> None:
    with pytest.raises(InsufficientCapacityError, match="no Ray node runs a framepipe agent"):
        rank_nodes([], NEED)


def test_agents_on_one_host_share_its_memory() -> None:
    host = 16_000 * MB
    shares = [ram_budget_mb(host, 3, None) for _ in range(3)]
    assert sum(shares) <= host / MB
    assert ram_budget_mb(host, 3, 1234.0) == 1234.0
