"""WebRTC pipelines against a real manager: an aiortc peer sends frames with a face and gets
annotated frames and predictions back; the peer leaving, going silent, or a terminate end the
pipeline cleanly; a bad offer costs no worker.

One manager for the module (ICE on loopback, finished pipelines leave quickly); every test
ends its pipelines, so the leak guard sees no worker, ring or status block left behind.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from functools import cache
from typing import Any

import av
import cv2
import numpy as np
import orjson
import psutil
import pytest

from framepipe.client import StreamManagerClient
from framepipe.errors import InvalidPayloadError, NotFoundError
from framepipe.protocol.payloads import (
    InitialiseWebRTCPipelinePayload,
    ModelConfiguration,
    VideoConfiguration,
    WebRTCOffer,
)
from framepipe.server.webrtc.ice import offer_host_addresses
from framepipe.testing.webrtc import TestPeer, read_counter, stamp_counter
from tests.conftest import framepipe_shm_entries
from tests.integration.gateway_harness import Gateway, running_gateway
from tests.integration.manager_harness import ManagerProcess, wait_for

DEMO = "framepipe/data/demo_faces.mp4"
DEMO_JSON = "framepipe/data/demo_faces.json"
WIDTH, HEIGHT = 640, 360
ENV = {
    "FRAMEPIPE_WEBRTC_ICE_ADDRESSES": "127.0.0.1",
    "FRAMEPIPE_ENDED_LINGER": "0.5",
    "FRAMEPIPE_HEALTH_INTERVAL": "0.25",
    # The model's inference service lives as long as the manager: started with it, before
    # the first test (the leak guard counts processes a test leaves behind).
    "FRAMEPIPE_PRELOAD_MODELS": "centerface",
}


@cache
def face_frame() -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Frame 0 of the demo video at 640x360, and its face box (x1, y1, x2, y2) there."""
    with av.open(DEMO) as container:
        first = next(container.decode(video=0)).to_ndarray(format="bgr24")
    with open(DEMO_JSON) as f:
        box = json.load(f)["per_frame"][0]["face"]
    scale = WIDTH / first.shape[1]
    image = cv2.resize(first, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA)
    x1, y1, x2, y2 = (v * scale for v in box)
    return image, (x1, y1, x2, y2)


def counted_face(number: int) -> np.ndarray:
    image = face_frame()[0].copy()
    stamp_counter(image, number)
    return image


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    with running_gateway(ENV) as gateway:
        wait_for(
            lambda: (
                "service for model 'centerface' started ahead of time" in gateway.manager.output()
            ),
            60,
            "the model's inference service",
        )
        yield gateway


@pytest.fixture
def manager(gateway: Gateway) -> ManagerProcess:
    return gateway.manager


@pytest.fixture
async def client(manager: ManagerProcess) -> AsyncIterator[StreamManagerClient]:
    offer_host_addresses(["127.0.0.1"])  # this process's peers, on loopback too
    yield StreamManagerClient(host="127.0.0.1", port=manager.port, operations_timeout=60)
    offer_host_addresses([])


def webrtc_payload(offer: dict[str, str], **fields: Any) -> InitialiseWebRTCPipelinePayload:
    return InitialiseWebRTCPipelinePayload(
        video_configuration=VideoConfiguration(
            video_reference="webrtc", max_fps=fields.pop("max_fps", None)
        ),
        processing_configuration=ModelConfiguration(model=fields.pop("model", "centerface")),
        webrtc_offer=WebRTCOffer(**offer),
        **fields,
    )


async def connect(client: StreamManagerClient, peer: TestPeer, **fields: Any) -> str:
    answer = await client.initialise_webrtc_pipeline(webrtc_payload(await peer.offer(), **fields))
    assert answer.type == "answer" and "m=video" in answer.sdp
    await peer.accept({"sdp": answer.sdp, "type": answer.type})
    pipeline_id = answer.context.pipeline_id
    assert pipeline_id
    return pipeline_id


async def report(client: StreamManagerClient, pipeline_id: str) -> dict[str, Any]:
    response = await client.get_status(pipeline_id)
    document: dict[str, Any] = response.report
    return document


async def until_gone(client: StreamManagerClient, pipeline_id: str) -> None:
    for _ in range(200):
        try:
            await client.get_status(pipeline_id)
        except NotFoundError:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"pipeline {pipeline_id} is still listed")


def predictions_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    data = message["serialized_output_data"]
    return orjson.loads(data) if data else []


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0


def box_of(prediction: dict[str, Any]) -> tuple[float, float, float, float]:
    x, y, w, h = (float(prediction[k]) for k in ("x", "y", "width", "height"))
    return x - w / 2, y - h / 2, x + w / 2, y + h / 2


def edge_difference(returned: np.ndarray, sent: np.ndarray, box: tuple[float, ...]) -> float:
    """Mean absolute difference on the box's outline (where the box is drawn)."""
    x1, y1, x2, y2 = (round(v) for v in box)
    diff = np.abs(returned.astype(int) - sent.astype(int)).sum(axis=2)
    outline = np.concatenate(
        [diff[y1:y2, x1], diff[y1:y2, x2 - 1], diff[y1, x1:x2], diff[y2 - 1, x1:x2]]
    )
    return float(outline.mean())


async def test_a_peer_gets_frames_with_its_face_drawn_and_the_predictions(
    client: StreamManagerClient,
) -> None:
    peer = TestPeer(counted_face, fps=15)
    pipeline_id = await connect(client, peer, data_output=["predictions"], webcam_fps=15)
    try:
        await peer.wait_for(
            lambda: peer.returned_count >= 5 and len(peer.messages) >= 5, 60, "results"
        )
        _, face_box = face_frame()
        # predictions: the face, where it is, with the frame's metadata
        message = peer.messages[-1]
        assert message["output_name"] == "predictions" and message["errors"] == []
        faces = [p for p in predictions_of(message) if p["class"] == "face"]
        assert faces and iou(box_of(faces[0]), face_box) > 0.5
        ids = [m["video_metadata"]["frame_id"] for m in peer.messages]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert message["video_metadata"]["declared_fps"] == 15
        # the returned frame is the sent frame with the box drawn where the face is
        returned = peer.returned[-1].image
        sent = counted_face(read_counter(returned))
        drawn = edge_difference(returned, sent, box_of(faces[0]))
        untouched = np.abs(returned.astype(int) - sent.astype(int))[150:300, 400:600].mean()
        assert drawn > 60 and untouched < 10, (drawn, untouched)
        # the status tells the peer's side; the model ran in the model's inference service
        status = await report(client, pipeline_id)
        inference = status["framepipe"]["inference"]
        assert inference["connected"] and inference["completed"] >= 5
        webrtc = status["framepipe"]["webrtc"]
        assert webrtc["connection_state"] == "connected"
        assert webrtc["frames_received"] >= webrtc["frames_returned"] >= 5
        assert webrtc["data_output"] == ["predictions"]
        source = status["sources_metadata"][0]
        assert source["state"] == "RUNNING"
        assert source["source_properties"]["width"] == WIDTH
        assert source["source_properties"]["is_file"] is False

        # the peer changes what it gets: every output field; no drawing
        peer.send({"data_output": "*", "stream_output": ""})
        seen = len(peer.messages)
        await peer.wait_for(
            lambda: any(m["output_name"] == "*" for m in peer.messages[seen:]), 30, "'*' data"
        )
        every = next(m for m in peer.messages[seen:] if m["output_name"] == "*")
        assert set(orjson.loads(every["serialized_output_data"])) == {"image", "predictions"}
        count = peer.returned_count
        await peer.wait_for(lambda: peer.returned_count >= count + 3, 30, "plain frames")
        plain = peer.returned[-1].image
        sent = counted_face(read_counter(plain))
        assert edge_difference(plain, sent, box_of(faces[0])) < 20
    finally:
        await client.terminate_pipeline(pipeline_id)
        await peer.close()
    with pytest.raises(NotFoundError):
        await client.get_status(pipeline_id)


async def test_the_peer_leaving_ends_the_pipeline_cleanly(client: StreamManagerClient) -> None:
    peer = TestPeer(counted_face, fps=15)
    pipeline_id = await connect(client, peer)
    await peer.wait_for(lambda: peer.returned_count >= 3, 60, "returned frames")
    await peer.close()
    for _ in range(100):
        status = await report(client, pipeline_id)
        if status["framepipe"]["state"] != "RUNNING":
            break
        await asyncio.sleep(0.05)
    assert status["framepipe"]["state"] == "FINISHED"
    assert status["sources_metadata"][0]["state"] == "ENDED"
    webrtc = status["framepipe"]["webrtc"]
    assert webrtc["ended_reason"] in ("the peer connection closed", "the peer's video track ended")
    # every frame the peer sent was processed or dropped, by reason
    source = status["framepipe"]["sources"][0]
    assert source["frames_decoded"] == source["frames_delivered"] + sum(
        source["frames_dropped"].values()
    )
    await until_gone(client, pipeline_id)


async def test_a_silent_peer_is_gone_after_webrtc_peer_timeout(
    client: StreamManagerClient,
) -> None:
    peer = TestPeer(counted_face, fps=15)
    pipeline_id = await connect(client, peer, webrtc_peer_timeout=0.5)
    try:
        await peer.wait_for(lambda: peer.returned_count >= 2, 60, "returned frames")
        peer.paused = True
        for _ in range(100):
            status = await report(client, pipeline_id)
            if status["framepipe"]["state"] != "RUNNING":
                break
            await asyncio.sleep(0.05)
        assert status["framepipe"]["state"] == "FINISHED"
        reason = status["framepipe"]["webrtc"]["ended_reason"]
        assert "webrtc_peer_timeout" in reason
        await until_gone(client, pipeline_id)
        await peer.wait_for(lambda: peer.connection_state == "closed", 30, "the server to close")
    finally:
        await peer.close()


async def test_the_returned_video_stays_fresh_and_every_input_frame_is_accounted_for(
    client: StreamManagerClient,
) -> None:
    """A model slower than the camera drops input frames (freshest wins): the returned video
    does not fall further behind as time passes, and each dropped frame is counted by reason."""
    lags: list[int] = []

    def lag_of(returned: Any) -> None:
        lags.append(max(peer.sent_ns) - read_counter(returned.image))

    peer = TestPeer(counted_face, fps=30, on_frame=lag_of)
    pipeline_id = await connect(client, peer)
    await peer.wait_for(lambda: peer.returned_count >= 10, 60, "returned frames")
    early = len(lags)
    await peer.wait_for(lambda: len(peer.sent_ns) >= 240, 60, "8 s of frames sent")
    late = lags[early:]
    # A backlog would grow by every frame the model could not keep up with (tens per second);
    # freshest-wins keeps the lag what one frame's processing takes, however long it runs.
    assert max(late[-5:]) <= max(lags[:early]) + 30, lags
    await peer.close()
    for _ in range(100):
        status = await report(client, pipeline_id)
        if status["framepipe"]["state"] != "RUNNING":
            break
        await asyncio.sleep(0.05)
    source = status["framepipe"]["sources"][0]
    dropped = source["frames_dropped"]
    assert set(dropped) <= {"drop_oldest"}
    assert source["frames_decoded"] == source["frames_delivered"] + sum(dropped.values())
    assert status["framepipe"]["webrtc"]["frames_received"] == source["frames_decoded"]
    await until_gone(client, pipeline_id)


async def test_a_killed_worker_fails_the_pipeline_and_leaves_no_segment(
    client: StreamManagerClient,
) -> None:
    """The worker owns the source's ring and status block (named after its pid): when it is
    killed, the manager reports the pipeline FAILED and sweeps what it left in /dev/shm (the
    leak guard checks)."""
    peer = TestPeer(counted_face, fps=15)
    pipeline_id = await connect(client, peer, model="passthrough")
    try:
        await peer.wait_for(lambda: peer.returned_count >= 2, 60, "returned frames")
        worker = psutil.Process((await report(client, pipeline_id))["framepipe"]["pid"])
        assert any(name.startswith(f"fp-{worker.pid}-") for name in framepipe_shm_entries())
        worker.kill()
        for _ in range(100):
            status = await report(client, pipeline_id)
            if status["framepipe"]["state"] == "FAILED":
                break
            await asyncio.sleep(0.1)
        assert status["framepipe"]["state"] == "FAILED"
        assert "SIGKILL" in status["framepipe"]["failure"]
        await peer.wait_for(
            lambda: not any(n.startswith(f"fp-{worker.pid}-") for n in framepipe_shm_entries()),
            30,
            "the dead worker's segments to be swept",
        )
    finally:
        await client.terminate_pipeline(pipeline_id)
        await peer.close()


async def test_max_fps_limits_the_frames_processed(client: StreamManagerClient) -> None:
    peer = TestPeer(counted_face, fps=30)
    pipeline_id = await connect(client, peer, max_fps=3, model="passthrough")
    try:
        await peer.wait_for(lambda: len(peer.sent_ns) >= 90, 60, "3 s of frames")
        source = (await report(client, pipeline_id))["framepipe"]["sources"][0]
        assert source["frames_dropped"]["max_fps"] > 0
        # at most 3 per second of the frames' own timeline (plus the first)
        assert source["frames_delivered"] <= source["frames_decoded"] / 30 * 3 + 2
    finally:
        await client.terminate_pipeline(pipeline_id)
        await peer.close()


async def test_an_offer_without_video_costs_no_worker(
    client: StreamManagerClient, manager: ManagerProcess
) -> None:
    workers = {p.pid for p in manager.workers()}
    no_video = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"}
    with pytest.raises(InvalidPayloadError, match="no m=video"):
        await client.initialise_webrtc_pipeline(webrtc_payload(no_video))
    assert {p.pid for p in manager.workers()} == workers
    assert (await client.list_pipelines()).pipelines == []


async def test_an_offer_aiortc_cannot_answer_is_invalid_and_leaves_nothing(
    client: StreamManagerClient,
) -> None:
    broken = {"type": "offer", "sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"}
    with pytest.raises(InvalidPayloadError, match="webrtc_offer"):
        await client.initialise_webrtc_pipeline(webrtc_payload(broken))
    peer = TestPeer(counted_face)
    try:
        offer = await peer.offer()
        # a video codec aiortc does not have, and nothing else
        for codec in ("VP8", "H264", "rtx"):
            offer["sdp"] = offer["sdp"].replace(f" {codec}/90000", " XVID9/90000")
        with pytest.raises(InvalidPayloadError, match="webrtc_offer could not be answered"):
            await client.initialise_webrtc_pipeline(webrtc_payload(offer))
    finally:
        await peer.close()
    assert (await client.list_pipelines()).pipelines == []


async def test_the_http_route_starts_a_webrtc_pipeline(gateway: Gateway) -> None:
    offer_host_addresses(["127.0.0.1"])
    peer = TestPeer(counted_face, fps=15)
    try:
        body = webrtc_payload(await peer.offer(), data_output=["*"]).model_dump(mode="json")
        body["video_configuration"]["video_reference"] = ""  # what the reference's client sends
        response = await asyncio.to_thread(
            gateway.http.post, "/inference_pipelines/initialise_webrtc", json=body
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["status"] == "success" and answer["type"] == "answer"
        pipeline_id = answer["context"]["pipeline_id"]
        await peer.accept(answer)
        await peer.wait_for(lambda: len(peer.messages) >= 3, 60, "data channel messages")
        assert "predictions" in orjson.loads(peer.messages[-1]["serialized_output_data"])
        terminated = await asyncio.to_thread(
            gateway.http.post, f"/inference_pipelines/{pipeline_id}/terminate"
        )
        assert terminated.status_code == 200
    finally:
        await peer.close()
        offer_host_addresses([])
