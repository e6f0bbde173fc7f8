"""framepipe's status reports and image outputs have every key a reference client reads.

The reference's own reports (a running file, an ended file, a missing file) and an image output
are in ``tests/data/reference-status-examples.md``. Each of framepipe's, from a real manager,
must contain the reference's keys, nested the same way (framepipe adds its own under
``framepipe`` and in a few payloads), and tell the same story in its events.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from framepipe.client import SyncStreamManagerClient
from framepipe.testing.media import make_test_video
from tests.integration.manager_harness import ManagerProcess, running_manager, wait_for

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "reference-status-examples.md"
SHARED = Path(__file__).resolve().parents[3] / "shared" / "reference" / "status-examples.md"


def reference_responses() -> dict[str, dict[str, Any]]:
    """Section title → the response JSON of that section."""
    text = EXAMPLES.read_text(encoding="utf-8")
    out = {}
    for match in re.finditer(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL):
        blocks = re.findall(r"```json\n(.*?)\n```", match.group(2), re.DOTALL)
        if len(blocks) >= 2:
            out[match.group(1)] = json.loads(blocks[-1])
    return out


def missing_keys(reference: Any, ours: Any, where: str = "") -> list[str]:
    """Keys of ``reference`` (recursively; lists by their first element) absent from ``ours``."""
    if isinstance(reference, dict):
        if not isinstance(ours, dict):
            return [f"{where or '.'} is {type(ours).__name__}, not an object"]
        problems = []
        for key, value in reference.items():
            if key not in ours:
                problems.append(f"{where}.{key}")
            else:
                problems += missing_keys(value, ours[key], f"{where}.{key}")
        return problems
    if isinstance(reference, list) and reference and isinstance(ours, list) and ours:
        return missing_keys(reference[0], ours[0], f"{where}[0]")
    return []


def events(report: dict[str, Any]) -> list[str]:
    out = []
    for event in report["video_source_status_updates"]:
        if event["event_type"] == "SOURCE_STATE_UPDATE":
            payload = event["payload"]
            out.append(f"{payload['previous_state']}->{payload['new_state']}")
        else:
            out.append(event["event_type"])
    return out


REFERENCE = reference_responses()


def test_the_copy_equals_the_shared_original() -> None:
    if not SHARED.is_file():
        pytest.skip("the shared reference material is not beside this checkout")
    assert EXAMPLES.read_bytes() == SHARED.read_bytes()


@pytest.fixture(scope="module")
def manager() -> Iterator[ManagerProcess]:
    with running_manager() as running:
        yield running


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shapes")
    return {
        "long": make_test_video(
            root / "long.mp4", frames=600, width=320, height=240, fps=30.0
        ).path,
        "short": make_test_video(
            root / "short.mp4", frames=60, width=320, height=240, fps=20.0
        ).path,
    }


def init(manager: ManagerProcess, reference: str, **video: Any) -> str:
    reply = manager.request(
        {
            "video_configuration": {
                "type": "VideoConfiguration",
                "video_reference": reference,
                **video,
            },
            "processing_configuration": {
                "type": "WorkflowConfiguration",
                "workflow_specification": {
                    "version": "1.0",
                    "inputs": [{"type": "WorkflowImage", "name": "image"}],
                    "steps": [],
                    "outputs": [
                        {"type": "JsonField", "name": "image", "selector": "$inputs.image"}
                    ],
                },
            },
            "type": "init",
        }
    )
    assert reply["response"]["status"] == "success", reply
    pipeline_id: str = reply["pipeline_id"]
    return pipeline_id


def status(manager: ManagerProcess, pipeline_id: str) -> dict[str, Any]:
    reply = manager.request({"type": "status", "pipeline_id": pipeline_id})
    assert reply["response"]["status"] == "success", reply
    return reply


def test_a_running_pipeline(manager: ManagerProcess, videos: dict[str, Path]) -> None:
    pipeline_id = init(manager, str(videos["long"]), realtime_replay=True)
    wait_for(
        lambda: status(manager, pipeline_id)["response"]["report"]["completion_statistics"][
            "sources"
        ][0]["completed_frames"],
        20,
        "a completed frame",
    )
    ours = status(manager, pipeline_id)
    assert missing_keys(REFERENCE["A running pipeline: `status`"], ours) == []
    report = ours["response"]["report"]
    assert events(report)[:4] == [
        "INFERENCE_THREAD_STARTED",
        "NOT_STARTED->INITIALISING",
        "VIDEO_CONSUMPTION_STARTED",
        "INITIALISING->RUNNING",
    ]
    source = report["completion_statistics"]["sources"][0]
    assert source["source_id"] == 0 and source["last_frame_id"] >= source["completed_frames"] >= 1
    assert (
        report["completion_statistics"]["sampled_at_monotonic"]
        >= source["last_completed_at_monotonic"]
    )
    manager.request({"type": "terminate", "pipeline_id": pipeline_id})


def test_a_file_that_ended(manager: ManagerProcess, videos: dict[str, Path]) -> None:
    pipeline_id = init(manager, str(videos["short"]))
    client = SyncStreamManagerClient(host="127.0.0.1", port=manager.port, operations_timeout=30)

    def finished() -> dict[str, Any] | None:
        client.consume_pipeline_result(pipeline_id, max_entries=100)
        reply = status(manager, pipeline_id)
        return reply if reply["response"]["report"]["framepipe"]["state"] == "FINISHED" else None

    ours = wait_for(finished, 30, "the file to be processed")
    assert missing_keys(REFERENCE["A file that ended: `status`"], ours) == []
    report = ours["response"]["report"]
    assert events(report) == [
        "INFERENCE_THREAD_STARTED",
        "NOT_STARTED->INITIALISING",
        "VIDEO_CONSUMPTION_STARTED",
        "INITIALISING->RUNNING",
        "RUNNING->ENDED",
        "VIDEO_CONSUMPTION_FINISHED",
        "INFERENCE_THREAD_FINISHED",
    ]
    assert report["sources_metadata"][0]["state"] == "ENDED"
    properties = report["sources_metadata"][0]["source_properties"]
    assert (properties["total_frames"], properties["fps"], properties["is_file"]) == (
        60,
        20.0,
        True,
    )
    completion = report["completion_statistics"]["sources"][0]
    assert (completion["completed_frames"], completion["last_frame_id"]) == (60, 60)
    manager.request({"type": "terminate", "pipeline_id": pipeline_id})


def test_a_missing_file(manager: ManagerProcess) -> None:
    pipeline_id = init(manager, "/videos/does_not_exist.mp4")
    ours = wait_for(
        lambda: (
            (r := status(manager, pipeline_id))["response"]["report"]["framepipe"]["finished"] and r
        ),
        15,
        "the pipeline to fail",
    )
    assert missing_keys(REFERENCE["A missing file: `status`"], ours) == []
    report = ours["response"]["report"]
    assert events(report) == [
        "INFERENCE_THREAD_STARTED",
        "NOT_STARTED->INITIALISING",
        "INITIALISING->ERROR",
        "INFERENCE_ERROR",
        "INFERENCE_THREAD_FINISHED",
    ]
    error = next(
        e for e in report["video_source_status_updates"] if e["event_type"] == "INFERENCE_ERROR"
    )
    assert error["severity"] == 40 and error["context"] == "inference_pipeline"
    assert error["payload"] == {
        "error_type": "SourceConnectionError",
        "error_message": "Cannot connect to video source under reference: /videos/does_not_exist.mp4",
        "error_context": "inference_thread",
    }
    assert report["sources_metadata"][0]["source_properties"] is None
    assert report["latency_reports"][0]["e2e_latency"] is None
    assert report["completion_statistics"]["sources"][0] == {
        "source_id": 0,
        "completed_frames": 0,
        "last_completed_at_monotonic": None,
        "last_frame_id": None,
    }
    manager.request({"type": "terminate", "pipeline_id": pipeline_id})


def test_an_image_output(manager: ManagerProcess, videos: dict[str, Path]) -> None:
    pipeline_id = init(manager, str(videos["long"]))

    def consumed() -> dict[str, Any] | None:
        reply = manager.request(
            {"type": "consume_result", "pipeline_id": pipeline_id, "excluded_fields": []}
        )
        return reply if reply["response"]["outputs"] else None

    ours = wait_for(consumed, 20, "an image output")
    reference = REFERENCE["An image output (`excluded_fields: []`): `consume_result`"]
    assert missing_keys(reference, ours) == []
    metadata = ours["response"]["outputs"][0]["image"]["video_metadata"]
    assert list(metadata) == list(reference["response"]["outputs"][0]["image"]["video_metadata"])
    assert metadata["video_identifier"] == "0" and metadata["frame_number"] == 1
    assert metadata["frame_timestamp"] == ours["response"]["frames_metadata"][0]["frame_timestamp"]
    assert metadata["fps"] == 30.0 and metadata["total_frames"] == 600
    manager.request({"type": "terminate", "pipeline_id": pipeline_id})
