"""The pieces of a WebRTC pipeline that need no peer: the request's checks, what is drawn and
sent for each frame, the return track's mailbox, the frame-end jitter buffer."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import pytest
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

from framepipe.core.sources.entities import FrameMetadata
from framepipe.errors import InvalidPayloadError
from framepipe.protocol.payloads import InitialiseWebRTCPipelinePayload
from framepipe.server.webrtc.config import WebRTCConfig, check_offer
from framepipe.server.webrtc.jitter import FrameEndJitterBuffer
from framepipe.server.webrtc.outputs import (
    OutputSelection,
    data_message,
    predictions_for,
    render,
)
from framepipe.server.webrtc.tracks import ReturnTrack, to_video_frame, write_into_slot

OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
FACE = {"x": 50.0, "y": 40.0, "width": 20.0, "height": 30.0, "confidence": 0.9, "class": "face"}
CAR = {"x": 10.0, "y": 10.0, "width": 8.0, "height": 8.0, "confidence": 0.5, "class": "car"}


def payload(**fields: Any) -> InitialiseWebRTCPipelinePayload:
    return InitialiseWebRTCPipelinePayload.model_validate(
        {
            "video_configuration": {"type": "VideoConfiguration", "video_reference": ""},
            "processing_configuration": {"type": "ModelConfiguration", "model": "centerface"},
            "webrtc_offer": {"type": "offer", "sdp": OFFER},
            **fields,
        }
    )


# -- the request ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offer_type", "sdp", "complaint"),
    [
        ("answer", OFFER, "webrtc_offer.type must be 'offer'"),
        ("offer", "", "not an SDP session description"),
        ("offer", "hello", "not an SDP session description"),
        ("offer", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "offers no video"),
    ],
)
def test_an_offer_that_cannot_carry_video_is_refused_saying_why(
    offer_type: str, sdp: str, complaint: str
) -> None:
    with pytest.raises(InvalidPayloadError, match=complaint):
        check_offer(offer_type, sdp)


def test_the_reference_fields_map_onto_the_config() -> None:
    config = WebRTCConfig.from_payload(
        payload(
            webrtc_peer_timeout=2.5,
            webrtc_turn_config={"urls": "turn:t:3478", "username": "u", "credential": "c"},
            stream_output=[None],
            data_output=["predictions", None],
            webcam_fps=25,
            webrtc_realtime_processing=False,
        ),
        ice_addresses=("127.0.0.1",),
    )
    assert config.peer_timeout_s == 2.5
    assert config.turn is not None and config.turn.urls == "turn:t:3478"
    assert config.stream_output is None  # [None]: the reference UI's "any output"
    assert config.data_output == ("predictions",)
    assert config.webcam_fps == 25
    assert config.realtime is False
    assert config.ice_addresses == ("127.0.0.1",)
    defaults = WebRTCConfig.from_payload(payload())
    assert (defaults.stream_output, defaults.data_output, defaults.realtime) == (None, (), True)


def test_the_turn_server_is_the_only_ice_server() -> None:
    from framepipe.server.webrtc.session import rtc_configuration

    turn = {"urls": "turn:turn.example.org:3478", "username": "u", "credential": "c"}
    configured = rtc_configuration(WebRTCConfig.from_payload(payload(webrtc_turn_config=turn)))
    assert configured.iceServers is not None
    (server,) = configured.iceServers
    assert (server.urls, server.username, server.credential) == (turn["urls"], "u", "c")
    assert rtc_configuration(WebRTCConfig.from_payload(payload())).iceServers == []


def test_a_webrtc_request_may_leave_video_reference_empty_as_the_reference_client_does() -> None:
    from framepipe.protocol.commands import parse_command

    request = {
        "type": "webrtc",
        "video_configuration": {"type": "VideoConfiguration", "video_reference": ""},
        "processing_configuration": {"type": "ModelConfiguration", "model": "centerface"},
        "webrtc_offer": {"type": "offer", "sdp": OFFER},
    }
    parse_command(request)  # the peer's track is the source: the reference is not read
    with pytest.raises(InvalidPayloadError, match="video_reference is empty"):
        parse_command({**request, "type": "init"})


# -- what is drawn and sent ----------------------------------------------------------------------


def test_the_peer_changes_what_is_drawn_and_sent_on_the_data_channel() -> None:
    selection = OutputSelection()
    selection = selection.updated(b'{"stream_output": "faces", "data_output": "*"}')
    assert selection == OutputSelection(stream="faces", data=("*",))
    selection = selection.updated('{"data_output": ""}')  # back to metadata only
    assert selection == OutputSelection(stream="faces", data=())
    assert selection.updated("not json") == selection
    assert selection.updated("[1, 2]") == selection
    assert selection.updated('{"stream_output": null}') == selection  # null: unchanged


def test_predictions_drawn_follow_stream_output() -> None:
    model_output = {"image": {"width": 4, "height": 4}, "predictions": [FACE]}
    assert predictions_for(model_output, None) == ([FACE], [])
    assert predictions_for(model_output, "") == ([], [])  # drawing turned off
    workflow_output = {"faces": {"predictions": [FACE]}, "cars": [CAR], "count": 2}
    assert predictions_for(workflow_output, None) == ([FACE, CAR], [])
    assert predictions_for(workflow_output, "cars") == ([CAR], [])
    drawn, errors = predictions_for(workflow_output, "dogs")
    assert drawn == [FACE, CAR]
    assert errors == ["'dogs' not found in outputs; drawing every prediction"]
    assert predictions_for(None, None) == ([], [])


def meta(frame_id: int = 7) -> FrameMetadata:
    return FrameMetadata(
        frame_id=frame_id,
        frame_timestamp=datetime(2026, 1, 2, 3, 4, 5),
        source_id=0,
        capture_ns=1,
        pts=0.5,
        width=4,
        height=4,
        fps=30.0,
        measured_fps=29.5,
    )


def decode(message: bytes) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(message)
    return document


def test_a_data_message_is_the_references_webrtc_output() -> None:
    output = {"image": {"width": 4, "height": 4}, "predictions": [FACE], "top": np.float32(0.5)}
    none = decode(data_message(output, meta(), OutputSelection(), pts=45, fps=12.0, errors=[]))
    assert none["output_name"] is None and none["serialized_output_data"] is None
    assert none["video_metadata"] == {
        "frame_id": 7,
        "frame_timestamp": "2026-01-02T03:04:05",
        "pts": 45,
        "time_base": 1 / 90_000,
        "declared_fps": 30.0,
        "measured_fps": 29.5,
    }
    assert none["errors"] == [] and none["framepipe"]["fps"] == 12.0
    one = decode(
        data_message(
            output, meta(), OutputSelection(data=("predictions",)), pts=0, fps=0, errors=[]
        )
    )
    assert one["output_name"] == "predictions"
    assert orjson.loads(one["serialized_output_data"]) == [FACE]
    every = decode(
        data_message(output, meta(), OutputSelection(data=("*",)), pts=0, fps=0, errors=[])
    )
    assert orjson.loads(every["serialized_output_data"]) == {
        "image": {"width": 4, "height": 4},
        "predictions": [FACE],
        "top": 0.5,
    }
    missing = decode(
        data_message(output, meta(), OutputSelection(data=("dogs",)), pts=0, fps=0, errors=["e"])
    )
    assert missing["serialized_output_data"] is None
    assert missing["errors"] == ["e", "Selected data output 'dogs' not found in outputs"]


def test_render_draws_boxes_and_the_hud_on_a_copy() -> None:
    frame = np.full((120, 160, 3), 128, np.uint8)
    before = frame.copy()
    canvas, errors = render(frame, {"predictions": [FACE]}, OutputSelection(), fps=25.0)
    assert errors == []
    assert np.array_equal(frame, before)  # the slot is never written
    box_edge = canvas[25:55, 40]  # left edge of the box (x = 50 - 20 / 2)
    assert np.abs(box_edge.astype(int) - 128).sum(axis=1).max() > 100
    assert np.array_equal(canvas[100:, 100:], before[100:, 100:])  # far from box and HUD
    assert (canvas[:10, :10] != 128).any()  # the HUD
    plain, _ = render(frame, {"predictions": [FACE]}, OutputSelection(stream=""), fps=25.0)
    assert np.array_equal(plain[25:55, 40], before[25:55, 40])


# -- frames in and out ---------------------------------------------------------------------------


def test_frames_convert_into_a_slot_and_back_to_yuv() -> None:
    image = np.zeros((64, 96, 3), np.uint8)
    image[:, :48] = (0, 0, 255)  # red left half (BGR)
    frame = to_video_frame(image, pts=90)
    assert frame.format.name == "yuv420p" and frame.pts == 90
    slot = np.zeros_like(image)
    assert write_into_slot(frame, slot) is False  # straight into the slot
    assert np.abs(slot.astype(int) - image.astype(int)).mean() < 6
    small = np.zeros((32, 48, 3), np.uint8)
    assert write_into_slot(frame, small) is True  # scaled first
    assert small[16, 10, 2] > 200 and small[16, 40, 2] < 50


async def test_the_return_track_keeps_only_the_freshest_frame() -> None:
    track = ReturnTrack()
    image = np.zeros((16, 16, 3), np.uint8)
    for pts in (10, 20, 30):
        track.offer(to_video_frame(image, pts))
    frame = await track.recv()
    assert frame.pts == 30
    assert (track.offered, track.sent, track.replaced) == (3, 1, 2)
    waiting = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    track.offer(to_video_frame(image, 25))  # an older timestamp: made to increase
    assert (await waiting).pts == 31
    pending = asyncio.ensure_future(track.recv())
    await asyncio.sleep(0.01)
    track.stop()
    with pytest.raises(MediaStreamError):
        await pending


# -- the jitter buffer ---------------------------------------------------------------------------


def packet(seq: int, timestamp: int, marker: bool, data: bytes) -> RtpPacket:
    p = RtpPacket(payload_type=96, marker=int(marker), sequence_number=seq, timestamp=timestamp)
    p._data = data  # type: ignore[attr-defined]
    return p


def test_a_video_frame_is_complete_at_its_marked_last_packet() -> None:
    buffer = FrameEndJitterBuffer(capacity=128, is_video=True)
    assert buffer.add(packet(100, 3000, False, b"a"))[1] is None
    _, frame = buffer.add(packet(101, 3000, True, b"b"))
    assert frame is not None and frame.data == b"ab" and frame.timestamp == 3000
    # the next frame, with a packet missing in the middle: not complete at its marker
    assert buffer.add(packet(102, 6000, False, b"c"))[1] is None
    assert buffer.add(packet(104, 6000, True, b"e"))[1] is None
    _, frame = buffer.add(packet(103, 6000, False, b"d"))
    assert frame is None  # complete now, but its marker came already: aiortc's rule applies
    _, frame = buffer.add(packet(105, 9000, True, b"f"))
    assert frame is not None and frame.data == b"cde"
