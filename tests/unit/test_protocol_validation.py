"""Every field of every command is bounded at the protocol edge: a value outside its range is
``invalid_payload`` naming the field and the bound; the bounds themselves are accepted."""

from __future__ import annotations

from typing import Any

import pytest

from framepipe.protocol import payloads as p
from framepipe.protocol.commands import MAX_EXCLUDED_FIELDS, InitCommand, parse_command
from framepipe.protocol.errors import InvalidPayloadError

VIDEO = {"type": "VideoConfiguration", "video_reference": "clip.mp4"}
PASSTHROUGH = {"type": "ModelConfiguration", "model": "passthrough"}
OFFER = {"type": "offer", "sdp": "v=0"}


def init(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "init",
        "video_configuration": dict(VIDEO),
        "processing_configuration": dict(PASSTHROUGH),
        **overrides,
    }


def video(**fields: Any) -> dict[str, Any]:
    return init(video_configuration={**VIDEO, **fields})


def model(**fields: Any) -> dict[str, Any]:
    return init(processing_configuration={**PASSTHROUGH, **fields})


def workflow(**fields: Any) -> dict[str, Any]:
    return init(processing_configuration={"type": "WorkflowConfiguration", **fields})


def webrtc(**fields: Any) -> dict[str, Any]:
    return init(**{"type": "webrtc", "webrtc_offer": OFFER, **fields})


REFUSED = [
    # field, request, fragment of the message
    ("consumption_timeout", init(consumption_timeout=0), "greater than 0"),
    ("consumption_timeout", init(consumption_timeout=-1), "greater than 0"),
    ("consumption_timeout", init(consumption_timeout=1e9), "less than or equal to 604800"),
    ("video_configuration.max_fps", video(max_fps=1e-9), "greater than or equal to 0.001"),
    ("video_configuration.max_fps", video(max_fps=0), "greater than or equal to 0.001"),
    ("video_configuration.max_fps", video(max_fps=-5), "greater than or equal to 0.001"),
    ("video_configuration.max_fps", video(max_fps=1e6), "less than or equal to 1000"),
    ("video_configuration.video_reference", video(video_reference="/x" * 5000), "limit is 4096"),
    ("video_configuration.video_reference", video(video_reference=""), "is empty"),
    ("video_configuration.video_reference", video(video_reference="  "), "is empty"),
    ("video_configuration.video_reference", video(video_reference="a\x00b"), "control character"),
    ("video_configuration.video_reference", video(video_reference="a\nb"), "control character"),
    ("video_configuration.video_reference", video(video_reference=-1), "within 0..255"),
    ("video_configuration.video_reference", video(video_reference=10**30), "within 0..255"),
    ("video_configuration.video_reference", video(video_reference=True), "got a boolean"),
    ("video_configuration.video_reference", video(video_reference=1.5), "got float"),
    ("video_configuration.video_reference", video(video_reference=None), "got NoneType"),
    ("video_configuration.video_reference", video(video_reference={"a": 1}), "got dict"),
    ("video_configuration.video_reference", video(video_reference=[]), "list is empty"),
    ("video_configuration.video_reference", video(video_reference=["a"] * 33), "at most 32"),
    ("video_configuration.video_reference", video(video_reference=["a", [1]]), "got list"),
    ("video_configuration.video_reference", video(video_reference=["a", "b\x00"]), "control"),
    ("video_configuration.batch_collection_timeout", video(batch_collection_timeout=-1), "0"),
    ("video_configuration.batch_collection_timeout", video(batch_collection_timeout=61), "60"),
    (
        "video_configuration.video_source_properties",
        video(video_source_properties={"frame_width": 100_000.0}),
        "within 1..16384",
    ),
    (
        "video_configuration.video_source_properties",
        video(video_source_properties={"frame_height": 0.0}),
        "within 1..16384",
    ),
    (
        "video_configuration.video_source_properties",
        video(video_source_properties={"fps": 0.0}),
        "'fps' must be > 0",
    ),
    (
        "video_configuration.video_source_properties",
        video(video_source_properties={"exposure": 1e300}),
        "within +-",
    ),
    (
        "video_configuration.video_source_properties",
        video(video_source_properties={f"k{i}": 1.0 for i in range(33)}),
        "limit is 32",
    ),
    (
        "video_configuration.video_source_properties",
        video(video_source_properties={"k" * 65: 1.0}),
        "1 to 64 characters",
    ),
    (
        "video_configuration.video_source_properties.a",
        video(video_source_properties={"a": "b"}),
        "valid number",
    ),
    (
        "sink_configuration.results_buffer_size",
        init(sink_configuration={"type": "MemorySinkConfiguration", "results_buffer_size": 10**5}),
        "less than or equal to 10000",
    ),
    ("decoding_buffer_size", init(decoding_buffer_size=0), "greater than or equal to 1"),
    ("decoding_buffer_size", init(decoding_buffer_size=4096), "less than or equal to 1024"),
    ("predictions_queue_size", init(predictions_queue_size=10**7), "less than or equal to 65536"),
    ("api_key", init(api_key="k" * 5000), "at most 4096 characters"),
    ("processing_configuration.ModelConfiguration.model", model(model=""), "at least 1"),
    ("processing_configuration.ModelConfiguration.model", model(model="m" * 300), "at most 256"),
    ("processing_configuration.ModelConfiguration.confidence", model(confidence=2), "1"),
    ("processing_configuration.ModelConfiguration.iou_threshold", model(iou_threshold=-0.1), "0"),
    ("processing_configuration.ModelConfiguration.max_detections", model(max_detections=0), "1"),
    (
        "processing_configuration.WorkflowConfiguration.workflow_id",
        workflow(workflow_id="w" * 300),
        "at most 256",
    ),
    (
        "processing_configuration.WorkflowConfiguration.workflows_thread_pool_workers",
        workflow(workflows_thread_pool_workers=0),
        "greater than or equal to 1",
    ),
    ("webrtc_offer.sdp", webrtc(webrtc_offer={"type": "offer", "sdp": "v" * 300_000}), "262144"),
    ("webrtc_offer.type", webrtc(webrtc_offer={"type": "o" * 17, "sdp": "v=0"}), "at most 16"),
    ("webrtc_peer_timeout", webrtc(webrtc_peer_timeout=0), "greater than 0"),
    ("webcam_fps", webrtc(webcam_fps=1e-9), "0.001"),
    ("processing_timeout", webrtc(processing_timeout=-1), "greater than 0"),
    ("fps_probe_frames", webrtc(fps_probe_frames=0), "greater than or equal to 1"),
    ("stream_output", webrtc(stream_output=["x"] * 65), "at most 64"),
    ("data_output.0", webrtc(data_output=["x" * 300]), "at most 256"),
    (
        "webrtc_turn_config.credential",
        webrtc(webrtc_turn_config={"urls": "turn:x", "username": "u", "credential": "c" * 5000}),
        "at most 4096",
    ),
    ("pipeline_id", {"type": "status", "pipeline_id": "p" * 300}, "at most 256"),
    (
        "excluded_fields",
        {"type": "consume_result", "pipeline_id": "p", "excluded_fields": ["f"] * 2000},
        f"at most {MAX_EXCLUDED_FIELDS}",
    ),
    (
        "excluded_fields.0",
        {"type": "consume_result", "pipeline_id": "p", "excluded_fields": ["f" * 300]},
        "at most 256",
    ),
]


@pytest.mark.parametrize(
    ("field", "request_", "fragment"),
    REFUSED,
    ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(REFUSED)],
)
def test_out_of_range_values_are_invalid_payload_naming_the_field(
    field: str, request_: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(InvalidPayloadError) as caught:
        parse_command(request_)
    message = caught.value.message
    assert f"field '{field}'" in message, message
    assert fragment in message, message
    assert len(message) < 600, "an error quotes what it refuses, never all of it"


ACCEPTED = [
    init(consumption_timeout=0.5),
    init(consumption_timeout=p.MAX_CONSUMPTION_TIMEOUT_S),
    video(max_fps=p.MIN_MAX_FPS),
    video(max_fps=p.MAX_MAX_FPS),
    video(max_fps=30),
    video(video_reference="/v" * 2048),
    video(video_reference=p.MAX_WEBCAM_INDEX),
    video(video_reference=["a.mp4", 0, "rtsp://cam/1"] * 10 + ["b", "c"]),
    video(batch_collection_timeout=0),
    video(batch_collection_timeout=p.MAX_BATCH_COLLECTION_TIMEOUT_S),
    video(
        video_source_properties={
            "frame_width": 16384.0,
            "frame_height": 1.0,
            "fps": 1000.0,
            "fourcc": 1196444237.0,
            "exposure": -13.0,
        }
    ),
    init(sink_configuration={"type": "MemorySinkConfiguration", "results_buffer_size": 10_000}),
    init(decoding_buffer_size=1024, predictions_queue_size=65_536),
    model(confidence=0, iou_threshold=1, max_detections=100_000),
    webrtc(webrtc_offer={"type": "offer", "sdp": "v" * p.MAX_SDP_LENGTH}, webcam_fps=60),
]


@pytest.mark.parametrize("request_", ACCEPTED)
def test_values_at_the_bounds_are_accepted(request_: dict[str, Any]) -> None:
    command = parse_command(request_)
    assert parse_command(command.to_wire()) == command


def test_video_reference_keeps_its_wire_form() -> None:
    command = parse_command(video(video_reference=["a.mp4", 3], max_fps=30))
    assert isinstance(command, InitCommand)
    wire = command.to_wire()["video_configuration"]
    assert wire["video_reference"] == ["a.mp4", 3] and wire["max_fps"] == 30
    assert isinstance(wire["max_fps"], int)


def test_unknown_type_value_is_quoted_short() -> None:
    with pytest.raises(InvalidPayloadError) as caught:
        parse_command({"type": ["x"] * 100_000})
    assert "<list of 100000 items>" in caught.value.message
    with pytest.raises(InvalidPayloadError) as caught:
        parse_command({"type": "y" * 100_000})
    assert len(caught.value.message) < 300
