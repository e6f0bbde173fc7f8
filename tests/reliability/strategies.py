"""Hypothesis strategies for fuzzing the protocol: random JSON, every command's valid requests,
and mutations of them (a key removed, a value replaced at any depth by something else)."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

from framepipe.protocol.commands import CommandType
from tests.realistic_requests import large_workflow_init

# Values a careless or hostile client sends: edge numbers, odd strings, wrong types.
EDGE_NUMBERS = [0, -1, 1, 2**31, 2**63, 10**30, -(10**30), 1e-9, 1e308, -0.0, 0.5, 1e6]
EDGE_STRINGS = [
    "",
    " ",
    "\x00",
    "a\nb",
    "/dev/zero",
    "/dev/null",
    "/dev/random",
    "/",
    "/tmp",
    "~nobody/x.mp4",
    "../../etc/passwd",
    "file:///etc/passwd",
    "file://",
    "http://[::1",
    "rtsp://",
    "gopher://x/y",
    "/" + "a" * 300,
    "x" * 5000,
    "\u00e9\u4e2d\U0001f600",
    "passthrough",
    "ModelConfiguration",
    "WorkflowConfiguration",
    "VideoConfiguration",
    "init",
    "status",
]

scalars = (
    st.none()
    | st.booleans()
    | st.sampled_from(EDGE_NUMBERS)
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(EDGE_STRINGS)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)

VIDEO = {
    "type": "VideoConfiguration",
    "video_reference": "/nonexistent/fuzz.mp4",
    "max_fps": 30,
    "source_buffer_filling_strategy": "DROP_OLDEST",
    "source_buffer_consumption_strategy": "EAGER",
    "video_source_properties": {"frame_width": 640.0, "frame_height": 480.0, "fps": 30.0},
    "batch_collection_timeout": 0.1,
}
MODEL = {
    "type": "ModelConfiguration",
    "model": "passthrough",
    "task": "object-detection",
    "confidence": 0.5,
    "iou_threshold": 0.5,
    "max_detections": 100,
}
INIT = {
    "type": "init",
    "video_configuration": VIDEO,
    "processing_configuration": MODEL,
    "sink_configuration": {"type": "MemorySinkConfiguration", "results_buffer_size": 64},
    "consumption_timeout": 10.0,
    "api_key": "key",
    "predictions_queue_size": 512,
    "decoding_buffer_size": 8,
}
WEBRTC = {
    **INIT,
    "type": "webrtc",
    "webrtc_offer": {"type": "offer", "sdp": "v=0\r\n"},
    "webrtc_turn_config": {"urls": "turn:127.0.0.1", "username": "u", "credential": "c"},
    "webrtc_realtime_processing": True,
    "stream_output": ["image", None],
    "data_output": ["predictions"],
    "webcam_fps": 30,
    "processing_timeout": 0.005,
    "fps_probe_frames": 10,
    "max_consecutive_timeouts": 30,
    "min_consecutive_on_time": 5,
}
# The smallest init: no video_source_properties, so the manager probes the reference itself.
MINIMAL_INIT = {
    "type": "init",
    "video_configuration": {"type": "VideoConfiguration", "video_reference": "/nonexistent.mp4"},
    "processing_configuration": {"type": "ModelConfiguration", "model": "passthrough"},
}
PIPELINE_ID = "00000000-0000-0000-0000-000000000000"
VALID_REQUESTS: list[dict[str, Any]] = [
    {"type": "list_pipelines"},
    {"type": "status", "pipeline_id": PIPELINE_ID},
    {"type": "mute", "pipeline_id": PIPELINE_ID},
    {"type": "resume", "pipeline_id": PIPELINE_ID},
    {"type": "terminate", "pipeline_id": PIPELINE_ID},
    {"type": "consume_result", "pipeline_id": PIPELINE_ID, "excluded_fields": ["image"]},
    {"type": "consume_result", "pipeline_id": PIPELINE_ID, "max_entries": 10},
    INIT,
    MINIMAL_INIT,
    WEBRTC,
    {**INIT, "video_configuration": {**VIDEO, "video_reference": [0, "rtsp://127.0.0.1:9/x"]}},
    {
        **INIT,
        "processing_configuration": {
            "type": "WorkflowConfiguration",
            "workflow_specification": {"version": "1.0", "steps": [], "outputs": []},
        },
    },
]
COMMAND_TYPES = [t.value for t in CommandType]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (dict keys and list indices)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _apply(document: Any, path: tuple[Any, ...], how: str, replacement: Any) -> Any:
    if not path:
        return replacement if how == "replace" else document
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if how == "delete":
        del parent[last]
    else:
        parent[last] = replacement
    return document


@st.composite
def mutated_requests(draw: st.DrawFn) -> dict[str, Any] | Any:
    """A valid request of any command, with 1 to 4 mutations at random depths."""
    base = draw(st.sampled_from(VALID_REQUESTS) | st.builds(large_workflow_init))
    document: Any = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(document)
        path = draw(st.sampled_from(paths))
        how = draw(st.sampled_from(["replace", "replace", "delete"])) if path else "replace"
        replacement = draw(
            json_values | st.sampled_from(COMMAND_TYPES) | st.sampled_from(EDGE_STRINGS)
        )
        document = _apply(document, path, how, replacement)
    return document


random_requests = st.fixed_dictionaries(
    {"type": st.sampled_from(COMMAND_TYPES) | scalars},
    optional={
        key: json_values
        for key in {*INIT, *WEBRTC, "pipeline_id", "excluded_fields", "max_entries"} - {"type"}
    },
)
requests = random_requests | mutated_requests()


HOSTILE_REFERENCES = [
    "/dev/zero",
    "/dev/null",
    "/dev/random",
    "/dev/tty",
    "/dev/video99",
    "/" + "a" * 300,
    "/tmp/" + "b" * 300,
    "c" * 5000,
    "/" + "d/" * 2100,
    "/tmp",
    "/proc/self/fd/0",
    "\x00",
    "clip\x00.mp4",
    "~nobody/x.mp4",
    "file://",
    "file:///dev/zero",
    "http://[::1",
    "rtsp://[::1/x",
    " ",
    "",
    -1,
    256,
    10**20,
    True,
    [],
    ["/dev/zero", "/nonexistent.mp4"],
    ["/nonexistent.mp4"] * 40,
]


@st.composite
def edgy_inits(draw: st.DrawFn) -> dict[str, Any]:
    """A valid init with its video reference (half the time) and one or two other fields set to
    an edge value: the rest stays valid, so the request reaches as deep as those values let it
    (the input policy, the manager's admission)."""
    request = copy.deepcopy(draw(st.sampled_from([INIT, MINIMAL_INIT])))
    video = request["video_configuration"]
    if draw(st.booleans()):
        video["video_reference"] = draw(st.sampled_from(HOSTILE_REFERENCES))
    fields = [("video", key) for key in VIDEO if key != "type"]
    fields += [("top", key) for key in INIT if key not in ("type", "video_configuration")]
    if (
        draw(st.integers(0, 2)) == 0
        or video["video_reference"] == INIT["video_configuration"]["video_reference"]
    ):
        where, key = draw(st.sampled_from(fields))
        value = draw(st.sampled_from(EDGE_STRINGS) | st.sampled_from(EDGE_NUMBERS) | scalars)
        (video if where == "video" else request)[key] = value
    return request


requests = requests | edgy_inits()
manager_requests = st.one_of(edgy_inits(), requests)
