"""Payload schemas of the ``init`` and ``webrtc`` commands, with the reference's names,
defaults and literal ``type`` tags.

Field order matters: the reference client sends ``payload.dict(exclude_none=True)``, and these
models are declared in the order that reproduces its bytes. Unknown fields are ignored, as the
reference ignores them. Non-finite floats are refused (the reference lets NaN through).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from pydantic.functional_validators import ModelWrapValidatorHandler

from framepipe.protocol.errors import InvalidPayloadError

DEFAULT_RESULTS_BUFFER_SIZE = 64
DEFAULT_PREDICTIONS_QUEUE_SIZE = 512
DEFAULT_DECODING_BUFFER_SIZE = 64


class BufferFillingStrategy(StrEnum):
    """What a source does when a consumer's buffer is full (the reference's names).

    The one strategy type of framepipe: the wire, the sources and the frame ring's producer
    all use it. ``base`` is what the data plane applies (``ADAPTIVE_*`` act as their base
    strategy there; the sources layer decides when an adaptive consumer starts dropping).
    """

    WAIT = "WAIT"
    DROP_OLDEST = "DROP_OLDEST"
    ADAPTIVE_DROP_OLDEST = "ADAPTIVE_DROP_OLDEST"
    DROP_LATEST = "DROP_LATEST"
    ADAPTIVE_DROP_LATEST = "ADAPTIVE_DROP_LATEST"

    @classmethod
    def parse(cls, value: str | BufferFillingStrategy) -> BufferFillingStrategy:
        """A strategy from its name (any case); InvalidPayloadError naming the choices."""
        try:
            return cls(value.upper() if isinstance(value, str) else value)
        except ValueError:
            raise InvalidPayloadError(
                f"unknown buffer filling strategy {value!r}; "
                f"expected one of {', '.join(m.value for m in cls)}"
            ) from None

    @property
    def base(self) -> BufferFillingStrategy:
        if self is BufferFillingStrategy.ADAPTIVE_DROP_OLDEST:
            return BufferFillingStrategy.DROP_OLDEST
        if self is BufferFillingStrategy.ADAPTIVE_DROP_LATEST:
            return BufferFillingStrategy.DROP_LATEST
        return self

    @property
    def waits(self) -> bool:
        """Every frame reaches the consumer (the producer waits for room)."""
        return self is BufferFillingStrategy.WAIT


class BufferConsumptionStrategy(StrEnum):
    """How the pipeline takes frames from a source buffer (the reference's names)."""

    LAZY = "LAZY"
    EAGER = "EAGER"


class _WireModel(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class VideoConfiguration(_WireModel):
    type: Literal["VideoConfiguration"] = "VideoConfiguration"
    video_reference: str | int | list[str | int]
    max_fps: float | int | None = None
    # None (left out of the wire): the server picks per source — every frame of a file
    # (WAIT/LAZY), the freshest frame of a live stream (DROP_OLDEST/EAGER). The reference's
    # client always sends DROP_OLDEST/EAGER.
    source_buffer_filling_strategy: BufferFillingStrategy | None = None
    source_buffer_consumption_strategy: BufferConsumptionStrategy | None = None
    video_source_properties: dict[str, float] | None = None
    batch_collection_timeout: float | None = None
    # framepipe extension (left out of the wire when None, so a reference-shaped request keeps
    # its bytes): True decodes a file at its own frame rate, like a camera — a new pipeline on
    # it then joins at the freshest frame. By default a file is read as fast as its consumers
    # take frames, and `max_fps` picks frames by the video's own timeline.
    realtime_replay: bool | None = None


class MemorySinkConfiguration(_WireModel):
    type: Literal["MemorySinkConfiguration"] = "MemorySinkConfiguration"
    results_buffer_size: Annotated[int, Field(ge=1)] = DEFAULT_RESULTS_BUFFER_SIZE


class WorkflowConfiguration(_WireModel):
    """The reference's workflow processing configuration (framepipe runs a local subset)."""

    type: Literal["WorkflowConfiguration"] = "WorkflowConfiguration"
    workflow_specification: dict[str, Any] | None = None
    workspace_name: str | None = None
    workflow_id: str | None = None
    image_input_name: str = "image"
    workflows_parameters: dict[str, Any] | None = None
    disable_sinks: bool = False
    workflows_thread_pool_workers: int = 4
    execution_engine_thread_pool_workers: int = 4
    cancel_thread_pool_tasks_on_exit: bool = True
    video_metadata_input_name: str = "video_metadata"


class ModelConfiguration(_WireModel):
    """framepipe's direct model configuration: a registered model name, or ``passthrough``.

    Keys beyond these are kept (``extra="allow"``) for the processing layer to judge.
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    type: Literal["ModelConfiguration"] = "ModelConfiguration"
    model: str
    task: str | None = None
    confidence: float | None = None
    iou_threshold: float | None = None
    max_detections: int | None = None


ProcessingConfiguration = Annotated[
    WorkflowConfiguration | ModelConfiguration, Field(discriminator="type")
]


class InitialisePipelinePayload(_WireModel):
    video_configuration: VideoConfiguration
    processing_configuration: ProcessingConfiguration
    sink_configuration: MemorySinkConfiguration = MemorySinkConfiguration()
    consumption_timeout: float | None = None
    api_key: str | None = None
    predictions_queue_size: Annotated[int, Field(ge=1)] = DEFAULT_PREDICTIONS_QUEUE_SIZE
    decoding_buffer_size: Annotated[int, Field(ge=1)] = DEFAULT_DECODING_BUFFER_SIZE

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
    type: str
    sdp: str


class WebRTCTURNConfig(_WireModel):
    urls: str
    username: str
    credential: str


class InitialiseWebRTCPipelinePayload(InitialisePipelinePayload):
    webrtc_offer: WebRTCOffer
    webrtc_peer_timeout: float = 1
    webrtc_realtime_processing: bool = True
    webrtc_turn_config: WebRTCTURNConfig | None = None
    stream_output: list[str | None] | None = Field(default_factory=list)
    data_output: list[str | None] | None = Field(default_factory=list)
    webcam_fps: float | None = None
    processing_timeout: float = 0.005
    fps_probe_frames: int = 10
    max_consecutive_timeouts: int = 30
    min_consecutive_on_time: int = 5
