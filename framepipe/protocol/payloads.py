"""Payload schemas of the ``init`` and ``webrtc`` commands, with the reference's names,
defaults and literal ``type`` tags.

Field order matters: the reference client sends ``payload.dict(exclude_none=True)``, and these
models are declared in the order that reproduces its bytes. Unknown fields are ignored, as the
reference ignores them. Non-finite floats are refused (the reference lets NaN through).

Every field is bounded here, at the protocol edge, so that nothing a client sends can reach the
manager or a worker as a value they cannot handle: each bound below says why it is where it
is, and a value outside it is an ``invalid_payload`` error naming the field and the bound.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.functional_validators import ModelWrapValidatorHandler

from framepipe.protocol.errors import preview
from framepipe.protocol.strategies import BufferConsumptionStrategy as BufferConsumptionStrategy
from framepipe.protocol.strategies import BufferFillingStrategy as BufferFillingStrategy

DEFAULT_RESULTS_BUFFER_SIZE = 64
DEFAULT_PREDICTIONS_QUEUE_SIZE = 512
DEFAULT_DECODING_BUFFER_SIZE = 64

# ---- bounds --------------------------------------------------------------------------------
MAX_VIDEO_REFERENCES = 32
"""Sources of one pipeline (each is a decode process and a ring of full frames)."""
MAX_VIDEO_REFERENCE_LENGTH = 4096
"""Characters of one path or URL (Linux's PATH_MAX)."""
MAX_WEBCAM_INDEX = 255
"""Highest V4L2 device number (/dev/video255)."""
MIN_MAX_FPS = 0.001
"""One frame every 1000 s; below, the decoder's pacing waits overflow the OS's poll timeout."""
MAX_MAX_FPS = 1000.0
"""Above any camera; a value beyond is a mistake, not a wish for no limit (that is null)."""
MAX_BATCH_COLLECTION_TIMEOUT_S = 60.0
"""How long a batch may wait for a lagging source; longer holds every other source's frames."""
MAX_CONSUMPTION_TIMEOUT_S = 7 * 24 * 3600.0
"""A week: beyond is a unit mistake (null means never)."""
MAX_RESULTS_BUFFER_SIZE = 10_000
"""Result sink entries (as many as one ``consume_result`` may drain)."""
MAX_DECODING_BUFFER_SIZE = 1024
"""Ring slots of one source: each holds a whole frame (6 MB at 1080p)."""
MAX_PREDICTIONS_QUEUE_SIZE = 65_536
MAX_VIDEO_SOURCE_PROPERTIES = 32
MAX_FRAME_DIMENSION = 16_384
"""Pixels of ``frame_width`` / ``frame_height`` in video_source_properties (twice 8K)."""
MAX_PROPERTY_VALUE = float(2**32)
"""Any other capture property (a FOURCC code is a 32-bit number)."""
MAX_NAME_LENGTH = 256
"""Identifiers: model and workflow names, input and output names, pipeline ids."""
MAX_SECRET_LENGTH = 4096
"""API keys and TURN credentials."""
MAX_SDP_LENGTH = 256 * 1024
"""A WebRTC session description (a browser's offer is 4-20 kB)."""
MAX_OUTPUT_NAMES = 64
"""Entries of ``stream_output`` / ``data_output``."""

Name = Annotated[str, StringConstraints(max_length=MAX_NAME_LENGTH)]
Secret = Annotated[str, StringConstraints(max_length=MAX_SECRET_LENGTH)]


class _WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


def _check_reference(item: object) -> None:
    """One video reference's form (what it names is checked by the server, which can look)."""
    if isinstance(item, bool) or not isinstance(item, str | int):
        raise ValueError(
            "video_reference must be a path, a URL or a webcam index (an integer), "
            f"got {'a boolean' if isinstance(item, bool) else type(item).__name__}"
        )
    if isinstance(item, int):
        if not 0 <= item <= MAX_WEBCAM_INDEX:
            raise ValueError(
                f"video_reference webcam index must be within 0..{MAX_WEBCAM_INDEX}, got {item}"
            )
        return
    if not item.strip():
        raise ValueError("video_reference is empty; give a path, a URL or a webcam index")
    if len(item) > MAX_VIDEO_REFERENCE_LENGTH:
        raise ValueError(
            f"video_reference is {len(item)} characters long; the limit is "
            f"{MAX_VIDEO_REFERENCE_LENGTH} (a path or URL is never longer)"
        )
    for position, char in enumerate(item):
        if ord(char) < 0x20 or ord(char) == 0x7F:
            raise ValueError(
                f"video_reference contains the control character {char!r} at position "
                f"{position}; a path or URL never does"
            )


def _check_properties(properties: dict[str, float]) -> None:
    if len(properties) > MAX_VIDEO_SOURCE_PROPERTIES:
        raise ValueError(
            f"video_source_properties has {len(properties)} entries; the limit is "
            f"{MAX_VIDEO_SOURCE_PROPERTIES}"
        )
    for key, value in properties.items():
        if not 0 < len(key) <= 64:
            raise ValueError(
                f"video_source_properties key {preview(key)} must be 1 to 64 characters long"
            )
        name = key.lower()
        if name in ("frame_width", "frame_height"):
            if not 1 <= value <= MAX_FRAME_DIMENSION:
                raise ValueError(
                    f"video_source_properties {key!r} must be within 1..{MAX_FRAME_DIMENSION} "
                    f"pixels, got {value:g}"
                )
        elif name == "fps":
            if not 0 < value <= MAX_MAX_FPS:
                raise ValueError(
                    f"video_source_properties 'fps' must be > 0 and <= {MAX_MAX_FPS:g}, "
                    f"got {value:g}"
                )
        elif abs(value) > MAX_PROPERTY_VALUE:
            raise ValueError(
                f"video_source_properties {key!r} must be within +-{MAX_PROPERTY_VALUE:g}, "
                f"got {value:g}"
            )


class VideoConfiguration(_WireModel):
    type: Literal["VideoConfiguration"] = "VideoConfiguration"
    video_reference: str | int | list[str | int]
    max_fps: Annotated[float | int, Field(ge=MIN_MAX_FPS, le=MAX_MAX_FPS)] | None = None
    # None (left out of the wire): the server picks per source — every frame of a file
    # (WAIT/LAZY), the freshest frame of a live stream (DROP_OLDEST/EAGER). The reference's
    # client always sends DROP_OLDEST/EAGER.
    source_buffer_filling_strategy: BufferFillingStrategy | None = None
    source_buffer_consumption_strategy: BufferConsumptionStrategy | None = None
    video_source_properties: dict[str, float] | None = None
    batch_collection_timeout: (
        Annotated[float, Field(ge=0, le=MAX_BATCH_COLLECTION_TIMEOUT_S)] | None
    ) = None
    # framepipe extension (left out of the wire when None, so a reference-shaped request keeps
    # its bytes): True decodes a file at its own frame rate, like a camera — a new pipeline on
    # it then joins at the freshest frame. By default a file is read as fast as its consumers
    # take frames, and `max_fps` picks frames by the video's own timeline.
    realtime_replay: bool | None = None

    @field_validator("video_reference", mode="before")
    @classmethod
    def _bounded_references(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("video_reference list is empty; give at least one reference")
            if len(value) > MAX_VIDEO_REFERENCES:
                raise ValueError(
                    f"video_reference lists {len(value)} sources; a pipeline takes at most "
                    f"{MAX_VIDEO_REFERENCES}"
                )
            for item in value:
                _check_reference(item)
        else:
            _check_reference(value)
        return value

    @field_validator("video_source_properties")
    @classmethod
    def _bounded_properties(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            _check_properties(value)
        return value


class MemorySinkConfiguration(_WireModel):
    type: Literal["MemorySinkConfiguration"] = "MemorySinkConfiguration"
    results_buffer_size: Annotated[int, Field(ge=1, le=MAX_RESULTS_BUFFER_SIZE)] = (
        DEFAULT_RESULTS_BUFFER_SIZE
    )


class WorkflowConfiguration(_WireModel):
    """The reference's workflow processing configuration (framepipe runs a local subset)."""

    type: Literal["WorkflowConfiguration"] = "WorkflowConfiguration"
    workflow_specification: dict[str, Any] | None = None
    workspace_name: Name | None = None
    workflow_id: Name | None = None
    image_input_name: Name = "image"
    workflows_parameters: dict[str, Any] | None = None
    disable_sinks: bool = False
    workflows_thread_pool_workers: Annotated[int, Field(ge=1, le=256)] = 4
    execution_engine_thread_pool_workers: Annotated[int, Field(ge=1, le=256)] = 4
    cancel_thread_pool_tasks_on_exit: bool = True
    video_metadata_input_name: Name = "video_metadata"


class ModelConfiguration(_WireModel):
    """framepipe's direct model configuration: a registered model name, or ``passthrough``.

    Keys beyond these are kept (``extra="allow"``) for the processing layer to judge.
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    type: Literal["ModelConfiguration"] = "ModelConfiguration"
    model: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH)]
    task: Name | None = None
    confidence: Annotated[float, Field(ge=0, le=1)] | None = None
    iou_threshold: Annotated[float, Field(ge=0, le=1)] | None = None
    max_detections: Annotated[int, Field(ge=1, le=100_000)] | None = None


ProcessingConfiguration = Annotated[
    WorkflowConfiguration | ModelConfiguration, Field(discriminator="type")
]


class InitialisePipelinePayload(_WireModel):
    video_configuration: VideoConfiguration
    processing_configuration: ProcessingConfiguration
    sink_configuration: MemorySinkConfiguration = MemorySinkConfiguration()
    consumption_timeout: Annotated[float, Field(gt=0, le=MAX_CONSUMPTION_TIMEOUT_S)] | None = None
    api_key: Secret | None = None
    predictions_queue_size: Annotated[int, Field(ge=1, le=MAX_PREDICTIONS_QUEUE_SIZE)] = (
        DEFAULT_PREDICTIONS_QUEUE_SIZE
    )
    decoding_buffer_size: Annotated[int, Field(ge=1, le=MAX_DECODING_BUFFER_SIZE)] = (
        DEFAULT_DECODING_BUFFER_SIZE
    )

    _raw_processing_configuration: dict[str, Any] | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_raw_processing_configuration(
        cls, data: Any, handler: ModelWrapValidatorHandler[InitialisePipelinePayload]
    ) -> InitialisePipelinePayload:
        model = handler(data)
        if isinstance(data, dict):
            raw = data.get("processing_configuration")
            if isinstance(raw, dict):
                model._raw_processing_configuration = raw
        return model

    @property
    def raw_processing_configuration(self) -> dict[str, Any]:
        """``processing_configuration`` as the wire dict (what ``processing_spec_from_wire`` takes):
        the dict received when parsed from the wire, else this model's own dump."""
        if self._raw_processing_configuration is not None:
            return self._raw_processing_configuration
        return self.processing_configuration.model_dump(mode="json", exclude_none=True)

    def to_wire(self) -> dict[str, Any]:
        """The dict the reference client sends (``exclude_none``, field order kept)."""
        return self.model_dump(mode="json", exclude_none=True)


class WebRTCOffer(_WireModel):
    type: Annotated[str, StringConstraints(max_length=16)]
    sdp: Annotated[str, StringConstraints(max_length=MAX_SDP_LENGTH)]


class WebRTCTURNConfig(_WireModel):
    urls: Secret
    username: Secret
    credential: Secret


OutputNames = Annotated[list[Name | None], Field(max_length=MAX_OUTPUT_NAMES)]


#: What an empty ``video_reference`` of a ``webrtc`` request becomes (it is never read).
WEBRTC_VIDEO_REFERENCE = "webrtc"


class InitialiseWebRTCPipelinePayload(InitialisePipelinePayload):
    webrtc_offer: WebRTCOffer
    webrtc_peer_timeout: Annotated[float, Field(gt=0, le=600)] = 1
    webrtc_realtime_processing: bool = True
    webrtc_turn_config: WebRTCTURNConfig | None = None
    stream_output: OutputNames | None = Field(default_factory=list)
    data_output: OutputNames | None = Field(default_factory=list)
    webcam_fps: Annotated[float, Field(ge=MIN_MAX_FPS, le=MAX_MAX_FPS)] | None = None
    processing_timeout: Annotated[float, Field(gt=0, le=60)] = 0.005
    fps_probe_frames: Annotated[int, Field(ge=1, le=1000)] = 10
    max_consecutive_timeouts: Annotated[int, Field(ge=1, le=100_000)] = 30
    min_consecutive_on_time: Annotated[int, Field(ge=1, le=100_000)] = 5

    @model_validator(mode="before")
    @classmethod
    def _unread_video_reference(cls, data: Any) -> Any:
        """The source is the peer's video track, so ``video_reference`` is not read; the
        reference's client sends ``""``, which ``init`` refuses: accepted here."""
        if isinstance(data, dict):
            video = data.get("video_configuration")
            if isinstance(video, dict) and video.get("video_reference") == "":
                data = {
                    **data,
                    "video_configuration": {**video, "video_reference": WEBRTC_VIDEO_REFERENCE},
                }
        return data
