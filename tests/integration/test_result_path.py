"""Every frame and every result reaches the client, through the real stream manager.

A pipeline ends only when it has nothing left to give: a client that drains slowly still gets
every result of a file, in order, before the pipeline goes away; a small result buffer holds
processing back under WAIT instead of dropping; under DROP_OLDEST its drops are counted and add
up. A reference-shaped client (raw wire dicts, a workflow with an object-detection step on the
bundled face detector) gets replies in the reference's shapes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from framepipe.client import SyncStreamManagerClient
from framepipe.data import demo_video_path
from framepipe.protocol.payloads import (
    InitialisePipelinePayload,
    MemorySinkConfiguration,
    ModelConfiguration,
    VideoConfiguration,
)
from framepipe.testing.media import make_test_video, read_frame_number
from tests.integration.manager_harness import ManagerProcess, running_manager, wait_for


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("result-path")
    return {
        "60": make_test_video(root / "f60.mp4", frames=60, width=320, height=240, fps=30.0).path,
        "200": make_test_video(root / "f200.mp4", frames=200, width=320, height=240, fps=30.0).path,
    }


@pytest.fixture
def manager() -> Iterator[ManagerProcess]:
    with running_manager({"FRAMEPIPE_ENDED_LINGER": "2"}) as running:
        yield running


def client_for(manager: ManagerProcess) -> SyncStreamManagerClient:
    return SyncStreamManagerClient(host="127.0.0.1", port=manager.port, operations_timeout=30)


def drain_one_at_a_time(
    manager: ManagerProcess, pipeline_id: str, every_s: float, limit_s: float
) -> list[int]:
    """Poll ``consume_result`` (one entry per request, as the reference's clients do) until the
    pipeline is gone; the frame ids received, in order."""
    ids: list[int] = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        reply = manager.request(
            {"type": "consume_result", "pipeline_id": pipeline_id, "excluded_fields": []}
        )
        response = reply["response"]
        if response["status"] == "failure":
            assert response["error_type"] == "not_found", response
            return ids
        ids += [meta["frame_id"] for meta in response["frames_metadata"]]
        time.sleep(every_s)
    raise AssertionError(f"the pipeline was still there after {limit_s} s ({len(ids)} results)")


def test_every_frame_of_a_file_reaches_a_client_polling_every_100_ms(
    manager: ManagerProcess, files: dict[str, Path]
) -> None:
    client = client_for(manager)
    pipeline_id = client.initialise_pipeline(
        InitialisePipelinePayload(  # default strategies: a file gives every frame
            video_configuration=VideoConfiguration(video_reference=str(files["60"])),
            processing_configuration=ModelConfiguration(model="passthrough"),
        )
    ).context.pipeline_id
    assert pipeline_id
    ids = drain_one_at_a_time(manager, pipeline_id, every_s=0.1, limit_s=30)
    assert ids == list(range(1, 61))


def test_a_small_result_buffer_holds_processing_back_and_loses_nothing(
    manager: ManagerProcess, files: dict[str, Path]
) -> None:
    client = client_for(manager)
    pipeline_id = client.initialise_pipeline(
        InitialisePipelinePayload(
            video_configuration=VideoConfiguration(video_reference=str(files["200"])),
            processing_configuration=ModelConfiguration(model="passthrough"),
            sink_configuration=MemorySinkConfiguration(results_buffer_size=8),
        )
    ).context.pipeline_id
    assert pipeline_id
    time.sleep(1.0)  # nobody reads: the buffer fills and processing waits
    held = client.get_status(pipeline_id).report["framepipe"]
    assert held["state"] == "RUNNING" and held["results"]["buffered"] == 8
    ids = drain_one_at_a_time(manager, pipeline_id, every_s=0.01, limit_s=60)
    assert ids == list(range(1, 201))


def test_dropped_and_delivered_results_add_up(
    manager: ManagerProcess, files: dict[str, Path]
) -> None:
    """Under DROP_OLDEST a full buffer drops its oldest result; every drop is counted."""
    client = client_for(manager)
    pipeline_id = client.initialise_pipeline(
        InitialisePipelinePayload(
            video_configuration=VideoConfiguration(
                video_reference=str(files["60"]),
                realtime_replay=True,
                source_buffer_filling_strategy="DROP_OLDEST",  # type: ignore[arg-type]
                source_buffer_consumption_strategy="EAGER",  # type: ignore[arg-type]
            ),
            processing_configuration=ModelConfiguration(model="passthrough"),
            sink_configuration=MemorySinkConfiguration(results_buffer_size=8),
        )
    ).context.pipeline_id
    assert pipeline_id
    delivered: list[int] = []

    def finished_and_drained() -> dict[str, Any] | None:
        time.sleep(0.25)  # a slow client: far fewer reads than the 30 results per second
        entries = client.consume_pipeline_result(pipeline_id).entries
        delivered.extend(e.frames_metadata[0].frame_id for e in entries)
        report = client.get_status(pipeline_id).report
        extra = report["framepipe"]
        if extra["state"] == "FINISHED" and extra["results"]["buffered"] == 0:
            return report
        return None

    report = wait_for(finished_and_drained, 60, "the pipeline to finish and be drained")
    results = report["framepipe"]["results"]
    assert results["dropped"] > 0
    assert len(delivered) == results["consumed"]
    assert results["consumed"] + results["dropped"] == results["produced"]
    # every frame the pipeline processed made one result
    completed = report["completion_statistics"]["sources"][0]["completed_frames"]
    assert results["produced"] == completed == report["framepipe"]["sources"][0]["frames_delivered"]
    assert delivered == sorted(delivered)


DETECTION_WORKFLOW = {
    "type": "WorkflowConfiguration",
    "workflow_specification": {
        "version": "1.0",
        "inputs": [{"type": "WorkflowImage", "name": "image"}],
        "steps": [
            {
                "type": "roboflow_core/roboflow_object_detection_model@v1",
                "name": "model",
                "model_id": "centerface",
                "images": "$inputs.image",
            }
        ],
        "outputs": [
            {"type": "JsonField", "name": "predictions", "selector": "$steps.model.predictions"}
        ],
    },
    "image_input_name": "image",
    "disable_sinks": False,
    "workflows_thread_pool_workers": 4,
    "execution_engine_thread_pool_workers": 4,
    "cancel_thread_pool_tasks_on_exit": True,
    "video_metadata_input_name": "video_metadata",
}


def test_a_reference_shaped_workflow_client(manager: ManagerProcess) -> None:
    """The reference client's own request shape, its object-detection step on the bundled face
    detector, and every reply in the reference's shape."""
    init = {
        "video_configuration": {
            "type": "VideoConfiguration",
            "video_reference": str(demo_video_path()),
            "source_buffer_filling_strategy": "WAIT",
            "source_buffer_consumption_strategy": "LAZY",
        },
        "processing_configuration": DETECTION_WORKFLOW,
        "sink_configuration": {"type": "MemorySinkConfiguration", "results_buffer_size": 64},
        "predictions_queue_size": 512,
        "decoding_buffer_size": 64,
        "type": "init",
    }
    reply = manager.request(init)
    assert list(reply) == ["request_id", "response", "pipeline_id"]
    assert reply["response"] == {"status": "success"}, reply
    pipeline_id = reply["pipeline_id"]

    faces: list[Any] = []

    def a_result_with_a_face() -> bool:
        reply = manager.request(
            {"type": "consume_result", "pipeline_id": pipeline_id, "excluded_fields": []}
        )
        assert list(reply) == ["request_id", "response", "pipeline_id"]
        response = reply["response"]
        assert list(response) == ["status", "outputs", "frames_metadata"], response
        for output, meta in zip(response["outputs"], response["frames_metadata"], strict=True):
            assert list(meta) == ["frame_timestamp", "frame_id", "source_id"]
            predictions = output["predictions"]["predictions"]
            faces.extend(p for p in predictions if p["class"] == "face")
        return bool(faces)

    wait_for(a_result_with_a_face, 60, "a detected face")
    face = faces[0]
    assert {"x", "y", "width", "height", "confidence", "class", "class_id", "detection_id"} <= set(
        face
    )

    status = manager.request({"type": "status", "pipeline_id": pipeline_id})
    assert list(status) == ["request_id", "response", "pipeline_id"]
    assert list(status["response"]) == ["status", "report"]
    report = status["response"]["report"]
    assert list(report)[:5] == [
        "video_source_status_updates",
        "latency_reports",
        "inference_throughput",
        "sources_metadata",
        "completion_statistics",
    ]
    for command in ("mute", "resume", "terminate"):
        answer = manager.request({"type": command, "pipeline_id": pipeline_id})
        assert answer["response"] == {"status": "success"}, (command, answer)
        assert answer["pipeline_id"] == pipeline_id
    listed = manager.request({"type": "list_pipelines"})["response"]
    assert listed == {"pipelines": [], "status": "success"}


def test_an_unsupported_workflow_step_is_refused_with_a_public_message(
    manager: ManagerProcess,
) -> None:
    workflow = {
        **DETECTION_WORKFLOW,
        "workflow_specification": {
            **DETECTION_WORKFLOW["workflow_specification"],  # type: ignore[dict-item]
            "steps": [{"type": "roboflow_core/bounding_box_visualization@v1", "name": "draw"}],
            "outputs": [],
        },
    }
    reply = manager.request(
        {
            "video_configuration": {
                "type": "VideoConfiguration",
                "video_reference": str(demo_video_path()),
            },
            "processing_configuration": workflow,
            "type": "init",
        }
    )
    response = reply["response"]
    assert response["error_type"] == "invalid_payload"
    assert "'draw'" in response["error_message"]
    assert response["public_error_message"] == response["error_message"]


def test_results_carry_the_frames_they_were_made_from(
    manager: ManagerProcess, files: dict[str, Path]
) -> None:
    """An image output is the very frame (its encoded number matches the frame id)."""
    client = client_for(manager)
    workflow = {
        **DETECTION_WORKFLOW,
        "workflow_specification": {
            "version": "1.0",
            "inputs": [{"type": "WorkflowImage", "name": "image"}],
            "steps": [],
            "outputs": [{"type": "JsonField", "name": "image", "selector": "$inputs.image"}],
        },
    }
    reply = manager.request(
        {
            "video_configuration": {
                "type": "VideoConfiguration",
                "video_reference": str(files["60"]),
            },
            "processing_configuration": workflow,
            "type": "init",
        }
    )
    pipeline_id = reply["pipeline_id"]
    import base64

    import cv2
    import numpy as np

    seen = 0
    deadline = time.monotonic() + 30
    while seen < 60 and time.monotonic() < deadline:
        batch = client.consume_pipeline_result(pipeline_id, max_entries=16).entries
        for entry in batch:
            image = entry.outputs[0]["image"]  # type: ignore[index]
            frame = cv2.imdecode(
                np.frombuffer(base64.b64decode(image["value"]), np.uint8), cv2.IMREAD_COLOR
            )
            assert read_frame_number(frame) == entry.frames_metadata[0].frame_id - 1  # type: ignore[union-attr]
            metadata = image["video_metadata"]
            assert metadata["frame_number"] == entry.frames_metadata[0].frame_id  # type: ignore[union-attr]
            assert metadata["comes_from_video_file"] is True and metadata["total_frames"] == 60
            seen += 1
        if not batch:
            time.sleep(0.05)
    assert seen == 60
    client.terminate_pipeline(pipeline_id)
