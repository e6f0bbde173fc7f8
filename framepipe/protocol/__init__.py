"""The wire format shared by server and client. No I/O, and no import of the rest of framepipe.

- :mod:`~framepipe.protocol.framing`: 4-byte length + JSON frames, incremental decoder;
- :mod:`~framepipe.protocol.commands`: typed commands and :func:`parse_command`;
- :mod:`~framepipe.protocol.payloads`: ``init`` / ``webrtc`` payload schemas;
- :mod:`~framepipe.protocol.envelope`: response envelope, success and failure bodies;
- :mod:`~framepipe.protocol.errors`: the error tree, one class per wire ``error_type``;
- :mod:`~framepipe.protocol.limits`: depth and size limits checked on a request's raw bytes.
"""

from framepipe.protocol.commands import (
    AnyCommand,
    Command,
    CommandType,
    ConsumeResultCommand,
    InitCommand,
    ListPipelinesCommand,
    MuteCommand,
    PipelineCommand,
    ResumeCommand,
    StatusCommand,
    TerminateCommand,
    WebRTCCommand,
    parse_command,
)
from framepipe.protocol.envelope import (
    ConsumeResultBody,
    Envelope,
    FailureBody,
    ListPipelinesBody,
    ResponseBody,
    ResultEntry,
    StatusBody,
    SuccessBody,
    WebRTCAnswerBody,
    WireFrameMetadata,
    encode_response,
    parse_response,
)
from framepipe.protocol.errors import (
    AuthorisationError,
    ErrorType,
    FramepipeError,
    InternalError,
    InvalidPayloadError,
    NotFoundError,
    OperationError,
    ShmExhaustedError,
)
from framepipe.protocol.framing import (
    DEFAULT_MAX_MESSAGE_SIZE,
    FrameDecoder,
    FramingError,
    decode_object,
    encode_message,
)
from framepipe.protocol.limits import JsonLimitError, JsonLimits, check_json_limits
from framepipe.protocol.payloads import (
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    InitialisePipelinePayload,
    InitialiseWebRTCPipelinePayload,
    MemorySinkConfiguration,
    ModelConfiguration,
    VideoConfiguration,
    WebRTCOffer,
    WebRTCTURNConfig,
    WorkflowConfiguration,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "AnyCommand",
    "AuthorisationError",
    "BufferConsumptionStrategy",
    "BufferFillingStrategy",
    "Command",
    "CommandType",
    "ConsumeResultBody",
    "ConsumeResultCommand",
    "Envelope",
    "ErrorType",
    "FailureBody",
    "FrameDecoder",
    "FramepipeError",
    "FramingError",
    "InitCommand",
    "InitialisePipelinePayload",
    "InitialiseWebRTCPipelinePayload",
    "InternalError",
    "InvalidPayloadError",
    "JsonLimitError",
    "JsonLimits",
    "ListPipelinesBody",
    "ListPipelinesCommand",
    "MemorySinkConfiguration",
    "ModelConfiguration",
    "MuteCommand",
    "NotFoundError",
    "OperationError",
    "PipelineCommand",
    "ResponseBody",
    "ResultEntry",
    "ResumeCommand",
    "ShmExhaustedError",
    "StatusBody",
    "StatusCommand",
    "SuccessBody",
    "TerminateCommand",
    "VideoConfiguration",
    "WebRTCAnswerBody",
    "WebRTCCommand",
    "WebRTCOffer",
    "WebRTCTURNConfig",
    "WireFrameMetadata",
    "WorkflowConfiguration",
    "check_json_limits",
    "decode_object",
    "encode_message",
    "encode_response",
    "parse_command",
    "parse_response",
]
