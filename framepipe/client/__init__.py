"""Python clients of the stream manager (they import framepipe.protocol only)."""

from framepipe.client.aio import StreamManagerClient
from framepipe.client.errors import (
    AuthorisationError,
    CapacityError,
    ClientError,
    ConnectivityError,
    FramepipeError,
    InternalError,
    InvalidPayloadError,
    NotFoundError,
    OperationError,
    ProtocolViolationError,
)
from framepipe.client.responses import (
    CommandContext,
    CommandResponse,
    ConsumedEntry,
    ConsumePipelineResponse,
    FrameMetadata,
    InferencePipelineStatusResponse,
    InitializeWebRTCPipelineResponse,
    ListPipelinesResponse,
)
from framepipe.client.sync import SyncStreamManagerClient

__all__ = [
    "AuthorisationError",
    "CapacityError",
    "ClientError",
    "CommandContext",
    "CommandResponse",
    "ConnectivityError",
    "ConsumePipelineResponse",
    "ConsumedEntry",
    "FrameMetadata",
    "FramepipeError",
    "InferencePipelineStatusResponse",
    "InitializeWebRTCPipelineResponse",
    "InternalError",
    "InvalidPayloadError",
    "ListPipelinesResponse",
    "NotFoundError",
    "OperationError",
    "ProtocolViolationError",
    "StreamManagerClient",
    "SyncStreamManagerClient",
]
