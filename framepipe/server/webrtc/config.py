"""What a ``webrtc`` request asks for, typed and checked before any process starts.

Nothing here imports aiortc: the manager checks the offer with :func:`check_offer` so that a
malformed one is an ``invalid_payload`` answer that costs no worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from framepipe.protocol.errors import InvalidPayloadError
from framepipe.protocol.payloads import InitialiseWebRTCPipelinePayload

__all__ = ["ALL_OUTPUTS", "TurnServer", "WebRTCConfig", "check_offer"]

#: ``data_output: ["*"]``: every field of the output (the reference's wildcard).
ALL_OUTPUTS = "*"
#: Frames a non-realtime peer may have queued for the pipeline.
QUEUED_FRAMES = 8


@dataclass(frozen=True)
class TurnServer:
    urls: str
    username: str
    credential: str


@dataclass(frozen=True)
class WebRTCConfig:
    """The WebRTC side of a ``webrtc`` request (the pipeline side is a ``PipelineConfig``).

    ``stream_output``: the output whose predictions are drawn on the returned video (None: every
    prediction of the output). ``data_output``: the output fields sent on the data channel with
    each frame's metadata (empty: metadata only; ``("*",)``: every field).
    """

    offer_sdp: str
    offer_type: str = "offer"
    peer_timeout_s: float = 1.0
    realtime: bool = True
    turn: TurnServer | None = None
    stream_output: str | None = None
    data_output: tuple[str, ...] = ()
    webcam_fps: float | None = None
    ice_addresses: tuple[str, ...] = ()
    connect_timeout_s: float = 30.0

    @classmethod
    def from_payload(
        cls,
        payload: InitialiseWebRTCPipelinePayload,
        *,
        ice_addresses: tuple[str, ...] = (),
        connect_timeout_s: float = 30.0,
    ) -> WebRTCConfig:
        """The config of a ``webrtc`` payload; InvalidPayloadError names a wrong field."""
        offer = payload.webrtc_offer
        check_offer(offer.type, offer.sdp)
        # The payload's bounds (timeouts, fps, lengths) were checked at the edge.
        turn = payload.webrtc_turn_config
        stream = payload.stream_output or []
        data = payload.data_output or []
        return cls(
            offer_sdp=offer.sdp,
            offer_type=offer.type,
            peer_timeout_s=float(payload.webrtc_peer_timeout),
            realtime=payload.webrtc_realtime_processing,
            turn=TurnServer(turn.urls, turn.username, turn.credential) if turn else None,
            # The reference's UI sends [None] (or [""]) for "any output": the default here.
            stream_output=(stream[0] or None) if stream else None,
            data_output=tuple(name for name in data if name),
            webcam_fps=payload.webcam_fps,
            ice_addresses=ice_addresses,
            connect_timeout_s=connect_timeout_s,
        )


def _invalid(message: str) -> InvalidPayloadError:
    return InvalidPayloadError(message, public_message=message)


def check_offer(offer_type: str, sdp: str) -> None:
    """A plausible SDP offer with a video section, or InvalidPayloadError saying what is wrong
    (aiortc parses it in full in the worker)."""
    if offer_type != "offer":
        raise _invalid(f"webrtc_offer.type must be 'offer', got {offer_type!r}")
    lines = [line.strip() for line in sdp.splitlines()]
    if not lines or lines[0] != "v=0":
        raise _invalid(
            "webrtc_offer.sdp is not an SDP session description (it must start with v=0)"
        )
    if not any(line.startswith("m=video ") for line in lines):
        raise _invalid(
            "webrtc_offer.sdp offers no video (no m=video section): add a video track to the "
            "peer connection before creating the offer"
        )
