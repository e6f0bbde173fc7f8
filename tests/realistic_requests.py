"""Large but real requests, to size the server's request limits against (and to test them).

- :func:`large_workflow_init`: an ``init`` with a 40-step workflow of the shape Roboflow
  workflows have (detection, tracking, zones with many-point polygons, class filters listing
  80 COCO classes, annotators), a 4-camera video list and every optional field set.
- :func:`webrtc_request`: a ``webrtc`` command carrying a real SDP offer, made by aiortc when it
  is installed (audio + video + data channel), otherwise a stored offer of the same shape.
"""

from __future__ import annotations

import asyncio
from typing import Any

COCO = [f"class_{i:02d}_{name}" for i, name in enumerate(["person", "bicycle", "car"] * 27)][:80]


def _polygon(points: int) -> list[list[int]]:
    return [[100 + (i * 37) % 1800, 100 + (i * 53) % 900] for i in range(points)]


def _steps(count: int) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            steps.append(
                {
                    "type": "roboflow_core/roboflow_object_detection_model@v2",
                    "name": f"model_{i}",
                    "images": "$inputs.image",
                    "model_id": "coco/17",
                    "confidence": 0.35,
                    "iou_threshold": 0.5,
                    "class_filter": COCO,
                    "max_detections": 300,
                }
            )
        elif kind == 1:
            steps.append(
                {
                    "type": "roboflow_core/polygon_zone_visualization@v1",
                    "name": f"zone_{i}",
                    "image": "$inputs.image",
                    "zone": _polygon(64),
                    "color": "#FF00FF",
                    "opacity": 0.3,
                }
            )
        elif kind == 2:
            steps.append(
                {
                    "type": "roboflow_core/byte_tracker@v3",
                    "name": f"tracker_{i}",
                    "image": "$inputs.image",
                    "detections": f"$steps.model_{i - 2}.predictions",
                    "track_activation_threshold": 0.25,
                    "lost_track_buffer": 30,
                    "minimum_matching_threshold": 0.8,
                    "minimum_consecutive_frames": 1,
                }
            )
        else:
            steps.append(
                {
                    "type": "roboflow_core/line_counter@v2",
                    "name": f"counter_{i}",
                    "detections": f"$steps.tracker_{i - 1}.tracked_detections",
                    "line_segment": [[10, 500], [1900, 520]],
                    "triggering_anchor": "CENTER",
                }
            )
    return steps


def large_workflow_init() -> dict[str, Any]:
    steps = _steps(40)
    return {
        "type": "init",
        "video_configuration": {
            "type": "VideoConfiguration",
            "video_reference": [f"rtsp://camera-{i}.example.net:554/stream1" for i in range(4)],
            "max_fps": 15,
            "source_buffer_filling_strategy": "DROP_OLDEST",
            "source_buffer_consumption_strategy": "EAGER",
            "video_source_properties": {"frame_width": 1920, "frame_height": 1080, "fps": 30},
            "batch_collection_timeout": 0.1,
        },
        "processing_configuration": {
            "type": "WorkflowConfiguration",
            "workflow_specification": {
                "version": "1.0",
                "inputs": [
                    {"type": "WorkflowImage", "name": "image"},
                    {"type": "WorkflowVideoMetadata", "name": "video_metadata"},
                    {"type": "WorkflowParameter", "name": "zones", "default_value": []},
                ],
                "steps": steps,
                "outputs": [
                    {
                        "type": "JsonField",
                        "name": step["name"],
                        "selector": f"$steps.{step['name']}.*",
                    }
                    for step in steps
                ],
            },
            "image_input_name": "image",
            "workflows_parameters": {"zones": [_polygon(32) for _ in range(4)]},
            "disable_sinks": False,
            "workflows_thread_pool_workers": 4,
            "execution_engine_thread_pool_workers": 4,
            "cancel_thread_pool_tasks_on_exit": True,
            "video_metadata_input_name": "video_metadata",
        },
        "sink_configuration": {"type": "MemorySinkConfiguration", "results_buffer_size": 64},
        "consumption_timeout": 30.0,
        "api_key": "k" * 40,
        "predictions_queue_size": 512,
        "decoding_buffer_size": 64,
    }


# A browser-shaped offer (audio + video + data channel), used when aiortc is not installed.
_STORED_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 3911456127 3911456127 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1 2",
        "a=msid-semantic:WMS *",
        "m=video 9 UDP/TLS/RTP/SAVPF 97 98 99 100 101 102",
        "c=IN IP4 0.0.0.0",
        *[f"a=rtpmap:{pt} VP8/90000" for pt in (97, 98, 99, 100, 101, 102)],
        *[f"a=rtcp-fb:{pt} nack pli" for pt in (97, 98, 99, 100, 101, 102)],
        *[f"a=candidate:{i} 1 udp 2130706431 192.168.1.{i} 5{i:04d} typ host" for i in range(20)],
        "a=ice-ufrag:abcd",
        "a=ice-pwd:" + "p" * 22,
        "a=fingerprint:sha-256 " + ":".join(["AB"] * 32),
        "a=setup:actpass",
        "m=application 9 DTLS/SCTP 5000",
        "a=sctpmap:5000 webrtc-datachannel 65535",
    ]
)


def sdp_offer() -> str:
    try:
        from aiortc import RTCPeerConnection, VideoStreamTrack
    except ImportError:
        return _STORED_OFFER

    async def make() -> str:
        peer = RTCPeerConnection()
        try:
            peer.addTrack(VideoStreamTrack())
            peer.addTransceiver("audio")
            peer.createDataChannel("data")
            await peer.setLocalDescription(await peer.createOffer())
            return str(peer.localDescription.sdp)
        finally:
            await peer.close()

    return asyncio.run(make())


def webrtc_request(sdp: str) -> dict[str, Any]:
    request = large_workflow_init()
    request["type"] = "webrtc"
    request["webrtc_offer"] = {"type": "offer", "sdp": sdp}
    request["webrtc_turn_config"] = {
        "urls": "turn:turn.example.net:3478",
        "username": "user",
        "credential": "c" * 32,
    }
    request["stream_output"] = ["image"]
    request["data_output"] = ["counter_3"]
    request["webcam_fps"] = 30
    return request
