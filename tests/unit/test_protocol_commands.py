"""Typed commands and payloads: parsing, errors that name the field, wire form."""

from __future__ import annotations

from typing import Any

import pytest

from framepipe.protocol.commands import (
    MAX_ENTRIES_LIMIT,
    CommandType,
    ConsumeResultCommand,
    InitCommand,
    ListPipelinesCommand,
    MuteCommand,
    ResumeCommand,
    StatusCommand,
    TerminateCommand,
    WebRTCCommand,
    parse_command,
)
from framepipe.protocol.errors import InvalidPayloadError
from framepipe.protocol.payloads import (
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    InitialisePipelinePayload,
    ModelConfiguration,
    WorkflowConfiguration,
)

PID = "ddce6580-999f-45f3-ab5a-cd2c2250c9e8"
VIDEO = {"type": "VideoConfiguration", "video_reference": "clip.mp4"}
PASSTHROUGH = {"type": "ModelConfiguration", "model": "passthrough"}


def init_request(**overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "type": "init",
        "video_configuration": dict(VIDEO),
        "processing_configuration": dict(PASSTHROUGH),
    }
    request.update(overrides)
    return request


@pytest.mark.parametrize(
    ("request_", "cls"),
    [
        ({"type": "list_pipelines"}, ListPipelinesCommand),
        ({"type": "status", "pipeline_id": PID}, StatusCommand),
        ({"type": "mute", "pipeline_id": PID}, MuteCommand),
        ({"type": "resume", "pipeline_id": PID}, ResumeCommand),
        ({"type": "terminate", "pipeline_id": PID}, TerminateCommand),
        (
            {"type": "consume_result", "pipeline_id": PID, "excluded_fields": ["a"]},
            ConsumeResultCommand,
        ),
    ],
)
def test_each_command_type_parses_and_round_trips(request_: dict[str, Any], cls: type) -> None:
    command = parse_command(request_)
    assert type(command) is cls
    assert command.command_type is CommandType(request_["type"])
    expected = dict(request_)
    if cls is ConsumeResultCommand:
        expected.setdefault("excluded_fields", [])
    assert command.to_wire() == expected
    assert command.target_pipeline_id == request_.get("pipeline_id")


def test_consume_result_defaults_and_max_entries_extension() -> None:
    command = parse_command({"type": "consume_result", "pipeline_id": PID})
    assert isinstance(command, ConsumeResultCommand)
    assert command.excluded_fields == [] and command.max_entries is None
    multi = parse_command({"type": "consume_result", "pipeline_id": PID, "max_entries": 8})
    assert isinstance(multi, ConsumeResultCommand) and multi.max_entries == 8
    assert multi.to_wire()["max_entries"] == 8
    for bad in (0, -1, MAX_ENTRIES_LIMIT + 1, "many"):
        with pytest.raises(InvalidPayloadError, match="field 'max_entries'"):
            parse_command({"type": "consume_result", "pipeline_id": PID, "max_entries": bad})


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ({}, "missing the required field 'type'"),
        ({"type": "explode"}, "Unknown command type 'explode' in field 'type'"),
        ({"type": None}, "Unknown command type None"),
        ({"type": "status"}, "field 'pipeline_id': Field required"),
        (
            {"type": "status", "pipeline_id": 7},
            "field 'pipeline_id': Input should be a valid string",
        ),
        (
            {"type": "consume_result", "pipeline_id": PID, "excluded_fields": "image"},
            "field 'excluded_fields'",
        ),
        ({"type": "init"}, "field 'video_configuration': Field required"),
        (
            init_request(video_configuration={"type": "VideoConfiguration"}),
            "field 'video_configuration.video_reference'",
        ),
        (
            init_request(processing_configuration={"type": "Nope"}),
            "field 'processing_configuration'",
        ),
        (
            init_request(processing_configuration={"type": "ModelConfiguration"}),
            "field 'processing_configuration.ModelConfiguration.model'",
        ),
        (
            init_request(
                sink_configuration={"type": "MemorySinkConfiguration", "results_buffer_size": 0}
            ),
            "field 'sink_configuration.results_buffer_size'",
        ),
        (init_request(consumption_timeout=float("nan")), "field 'consumption_timeout'"),
        (
            init_request(
                video_configuration={**VIDEO, "source_buffer_filling_strategy": "SOMETIMES"}
            ),
            "field 'video_configuration.source_buffer_filling_strategy'",
        ),
        (
            {
                "type": "webrtc",
                "video_configuration": VIDEO,
                "processing_configuration": PASSTHROUGH,
            },
            "field 'webrtc_offer': Field required",
        ),
    ],
)
def test_bad_requests_raise_invalid_payload_naming_the_field(
    request_: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidPayloadError) as caught:
        parse_command(request_)
    assert expected in caught.value.message


def test_non_object_request_is_invalid_payload() -> None:
    with pytest.raises(InvalidPayloadError, match="must be a JSON object, got list"):
        parse_command([1, 2, 3])  # type: ignore[arg-type]


def test_init_defaults_are_the_references() -> None:
    command = parse_command(init_request())
    assert isinstance(command, InitCommand)
    payload = command.payload
    assert payload.sink_configuration.results_buffer_size == 64
    assert payload.predictions_queue_size == 512
    assert payload.decoding_buffer_size == 64
    assert payload.consumption_timeout is None and payload.api_key is None
    video = payload.video_configuration
    # Strategies left out are the server's to choose per source (framepipe: every frame of a
    # file, the freshest of a live stream); the reference's client always sends them.
    assert video.source_buffer_filling_strategy is None
    assert video.source_buffer_consumption_strategy is None
    assert video.max_fps is None and video.video_source_properties is None
    assert video.batch_collection_timeout is None and video.realtime_replay is None
    sent = parse_command(
        init_request(
            video_configuration={
                "type": "VideoConfiguration",
                "video_reference": "clip.mp4",
                "source_buffer_filling_strategy": "DROP_OLDEST",
                "source_buffer_consumption_strategy": "EAGER",
            }
        )
    )
    assert isinstance(sent, InitCommand)
    video = sent.payload.video_configuration
    assert video.source_buffer_filling_strategy is BufferFillingStrategy.DROP_OLDEST
    assert video.source_buffer_consumption_strategy is BufferConsumptionStrategy.EAGER


def test_unknown_fields_are_ignored_and_the_raw_processing_dict_is_kept() -> None:
    raw = {
        "type": "ModelConfiguration",
        "model": "centerface",
        "confidence": 0.4,
        "future_knob": [1],
    }
    command = parse_command(
        init_request(processing_configuration=raw, something_new=True, auth_token="t")
    )
    assert isinstance(command, InitCommand)
    assert command.payload.raw_processing_configuration is raw
    config = command.payload.processing_configuration
    assert isinstance(config, ModelConfiguration) and config.model == "centerface"
    assert "something_new" not in command.to_wire()
    assert "auth_token" not in command.to_wire()


def test_raw_processing_dict_of_a_model_built_in_python() -> None:
    payload = InitialisePipelinePayload(
        video_configuration={"video_reference": 0},  # type: ignore[arg-type]
        processing_configuration=WorkflowConfiguration(workflow_specification={"steps": []}),
    )
    assert payload.raw_processing_configuration == {
        "type": "WorkflowConfiguration",
        "workflow_specification": {"steps": []},
        "image_input_name": "image",
        "disable_sinks": False,
        "workflows_thread_pool_workers": 4,
        "execution_engine_thread_pool_workers": 4,
        "cancel_thread_pool_tasks_on_exit": True,
        "video_metadata_input_name": "video_metadata",
    }


@pytest.mark.parametrize("reference", ["rtsp://cam/1", 0, ["a.mp4", 1]])
def test_video_reference_may_be_str_int_or_list(reference: object) -> None:
    command = parse_command(
        init_request(video_configuration={**VIDEO, "video_reference": reference})
    )
    assert isinstance(command, InitCommand)
    assert command.payload.video_configuration.video_reference == reference
    assert command.to_wire()["video_configuration"]["video_reference"] == reference


def test_webrtc_payload_fields_and_defaults() -> None:
    command = parse_command(
        {
            "type": "webrtc",
            "video_configuration": VIDEO,
            "processing_configuration": PASSTHROUGH,
            "webrtc_offer": {"type": "offer", "sdp": "v=0"},
            "webrtc_turn_config": {"urls": "turn:x", "username": "u", "credential": "c"},
            "stream_output": ["image", None],
            "webcam_fps": 30,
        }
    )
    assert isinstance(command, WebRTCCommand)
    payload = command.payload
    assert payload.webrtc_offer.sdp == "v=0"
    assert payload.webrtc_turn_config is not None and payload.webrtc_turn_config.urls == "turn:x"
    assert payload.stream_output == ["image", None] and payload.data_output == []
    assert payload.webrtc_peer_timeout == 1 and payload.webrtc_realtime_processing is True
    assert command.to_wire()["type"] == "webrtc"
    assert parse_command(command.to_wire()) == command


def test_commands_are_immutable() -> None:
    command = parse_command({"type": "status", "pipeline_id": PID})
    with pytest.raises(Exception, match="frozen"):
        command.pipeline_id = "other"  # type: ignore[misc]
