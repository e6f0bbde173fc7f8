"""The HTTP gateway against a real manager: `framepipe serve --http-port 0` in a subprocess,
spoken to over real sockets with httpx (and a raw socket for the slow reader)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from framepipe.gateway.models import (
    CommandResponse,
    ConsumePipelineResponse,
    ErrorResponse,
    InferencePipelineStatusResponse,
    ListPipelinesResponse,
    StreamEnd,
)
from framepipe.testing import SyntheticVideo, make_test_video
from tests.integration.gateway_harness import (
    Gateway,
    SseEvent,
    init_body,
    parse_sse,
    running_gateway,
)
from tests.integration.manager_harness import wait_for
from tests.rtsp import RtspServer

NO_SUCH_ID = "00000000-0000-0000-0000-000000000000"
REFERENCE_ROUTES = {
    ("/inference_pipelines/list", "get"),
    ("/inference_pipelines/initialise", "post"),
    ("/inference_pipelines/initialise_webrtc", "post"),
    ("/inference_pipelines/{pipeline_id}/status", "get"),
    ("/inference_pipelines/{pipeline_id}/pause", "post"),
    ("/inference_pipelines/{pipeline_id}/resume", "post"),
    ("/inference_pipelines/{pipeline_id}/terminate", "post"),
    ("/inference_pipelines/{pipeline_id}/consume", "get"),
}


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    """A gateway for tests that start no pipeline (they leave no worker behind)."""
    with running_gateway() as running:
        yield running


@pytest.fixture(scope="module")
def video_3000(tmp_path_factory: pytest.TempPathFactory) -> SyntheticVideo:
    """3000 small frames: more results than any socket buffer holds as events."""
    path = tmp_path_factory.mktemp("gateway") / "v3000.mp4"
    return make_test_video(path, frames=3000, width=128, height=72, fps=30)


def error_of(response: httpx.Response, status: int, error_type: str) -> ErrorResponse:
    assert response.status_code == status, response.text
    body = ErrorResponse.model_validate(response.json())
    assert body.error_type == error_type, body
    assert body.status == "failure" and body.hint and "\n" not in body.message
    return body


def start(gateway: Gateway, video: Path | str, **fields: Any) -> str:
    body = init_body(str(video))
    body.update(fields)
    response = gateway.http.post("/inference_pipelines/initialise", json=body)
    assert response.status_code == 200, response.text
    pipeline_id = CommandResponse.model_validate(response.json()).context.pipeline_id
    assert pipeline_id
    return pipeline_id


def listed(gateway: Gateway) -> list[str]:
    return ListPipelinesResponse.model_validate(
        gateway.http.get("/inference_pipelines/list").json()
    ).pipelines


class Reader:
    """Reads one result stream in a thread; ``events`` grows as they arrive."""

    def __init__(self, gateway: Gateway, pipeline_id: str, query: str = "") -> None:
        self.url = f"/inference_pipelines/{pipeline_id}/results/stream{query}"
        self.events: list[SseEvent] = []
        self.status: int | None = None
        self.attached = threading.Event()  # set by the first bytes: the reader is subscribed
        self._client = httpx.Client(base_url=gateway.url, timeout=60)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._client.stream("GET", self.url) as response:
            self.status = response.status_code
            if response.status_code != 200:
                self.attached.set()
                return
            for event in parse_sse(response.iter_lines()):
                self.attached.set()  # the first comment says the reader is subscribed
                self.events.append(event)
                if event.event == "end":
                    return

    def join(self) -> list[SseEvent]:
        self._thread.join(120)
        assert not self._thread.is_alive(), "the stream did not end"
        self._client.close()
        return self.events

    def results(self) -> list[SseEvent]:
        return [e for e in self.events if e.event == "result"]

    def end(self) -> StreamEnd:
        assert self.events and self.events[-1].event == "end", self.events[-3:]
        return StreamEnd.model_validate(self.events[-1].json())


def frame_ids(events: list[SseEvent]) -> list[int]:
    return [e.json()["frames_metadata"][0]["frame_id"] for e in events]


# --- the routes and their errors ---------------------------------------------------------------


def test_reference_routes_probes_and_schema(gateway: Gateway) -> None:
    assert gateway.http.get("/healthz").json() == {"status": "alive"}
    assert gateway.http.get("/readyz").json()["status"] == "ready"
    schema = gateway.http.get("/openapi.json").json()
    routes = {(path, method) for path, item in schema["paths"].items() for method in item}
    assert routes >= REFERENCE_ROUTES
    assert ("/inference_pipelines/{pipeline_id}/results/stream", "get") in routes
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            assert "422" not in operation["responses"], (path, method)
    consume = schema["paths"]["/inference_pipelines/{pipeline_id}/consume"]["get"]
    assert "requestBody" in consume  # the reference's clients send a JSON body with this GET
    assert {p["name"] for p in consume["parameters"]} >= {"excluded_fields", "max_entries"}
    stream = schema["paths"]["/inference_pipelines/{pipeline_id}/results/stream"]["get"]
    event = stream["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert event["properties"]["event"]["enum"] == ["result", "dropped", "end"]  # one SSE event
    assert event["required"] == ["event", "data"]
    assert {"StreamEnd", "StreamDropped", "ErrorResponse"} <= set(schema["components"]["schemas"])


@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("GET", "status"),
        ("POST", "pause"),
        ("POST", "resume"),
        ("POST", "terminate"),
        ("GET", "consume"),
        ("GET", "results/stream"),
    ],
)
def test_unknown_pipeline_is_404(gateway: Gateway, method: str, route: str) -> None:
    response = gateway.http.request(method, f"/inference_pipelines/{NO_SUCH_ID}/{route}")
    body = error_of(response, 404, "not_found")
    assert NO_SUCH_ID in body.message and body.pipeline_id == NO_SUCH_ID


def test_invalid_requests_are_400_naming_the_field(gateway: Gateway) -> None:
    missing = gateway.http.post("/inference_pipelines/initialise", json={"x": 1})
    assert "video_configuration" in error_of(missing, 400, "invalid_payload").message
    bad_query = gateway.http.get(f"/inference_pipelines/{NO_SUCH_ID}/consume?max_entries=0")
    assert "max_entries" in error_of(bad_query, 400, "invalid_payload").message
    not_json = gateway.http.request(
        "GET",
        f"/inference_pipelines/{NO_SUCH_ID}/consume",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    error_of(not_json, 400, "invalid_payload")
    error_of(gateway.http.get("/nowhere"), 404, "not_found")
    error_of(gateway.http.put("/healthz"), 405, "method_not_allowed")
    assert listed(gateway) == []


def test_the_managers_own_refusal_of_a_payload_is_400() -> None:
    with running_gateway() as gateway:  # its own: the manager may keep the worker it tried
        unknown_model = init_body("/nonexistent.mp4")
        unknown_model["processing_configuration"]["model"] = "no-such-model"
        refused = gateway.http.post("/inference_pipelines/initialise", json=unknown_model)
        body = error_of(refused, 400, "invalid_payload")
        assert "no-such-model" in body.message and body.request_id


def test_webrtc_route_maps_the_managers_refusal_of_an_offer_to_400(gateway: Gateway) -> None:
    body = init_body("/nonexistent.mp4")
    body["webrtc_offer"] = {"type": "offer", "sdp": "v=0"}
    response = gateway.http.post("/inference_pipelines/initialise_webrtc", json=body)
    assert "no m=video" in error_of(response, 400, "invalid_payload").message
    missing_offer = gateway.http.post("/inference_pipelines/initialise_webrtc", json=init_body("x"))
    assert "webrtc_offer" in error_of(missing_offer, 400, "invalid_payload").message


def test_capacity_refusals_are_503_told_apart_by_class() -> None:
    with running_gateway(
        {"STREAM_MANAGER_MAX_RAM_MB": "40", "FRAMEPIPE_MAX_RING_MB": "0"}
    ) as gateway:
        response = gateway.http.post(
            "/inference_pipelines/initialise", json=init_body("/nonexistent.mp4")
        )
        body = error_of(response, 503, "capacity_error")
        assert body.error_class == "RamBudgetExceededError"
        assert "STREAM_MANAGER_MAX_RAM_MB" in body.message
        assert response.headers["retry-after"] == "5"
        huge = init_body(
            "/nonexistent.mp4",
            video_source_properties={
                "frame_width": 16384.0,
                "frame_height": 16384.0,
            },
        )
        shm = gateway.http.post("/inference_pipelines/initialise", json=huge)
        assert error_of(shm, 503, "capacity_error").error_class in (
            "ShmExhaustedError",
            "RamBudgetExceededError",
        )
        assert gateway.manager.workers() == []


def _raw_post(url: str, headers: str, body: bytes, wait_s: float) -> bytes:
    """POST with the given header lines and only ``body`` of what they announce; what the
    gateway answered within ``wait_s`` (b"" if it is still waiting for the rest)."""
    host, port = httpx.URL(url).host, httpx.URL(url).port
    with socket.create_connection((host, port), timeout=wait_s) as sock:
        sock.sendall(
            b"POST /inference_pipelines/initialise HTTP/1.1\r\nHost: gateway\r\n"
            + headers.encode()
            + b"Content-Type: application/json\r\n\r\n"
            + body
        )
        answer = b""
        try:
            while True:  # the head, then the body its content-length announces
                head, _, body = answer.partition(b"\r\n\r\n")
                length = [
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if length and len(body) >= length[0]:
                    return answer
                chunk = sock.recv(65536)
                if not chunk:
                    return answer
                answer += chunk
        except TimeoutError:
            return answer


def test_a_large_body_without_the_token_is_refused_before_it_is_read() -> None:
    with running_gateway({"FRAMEPIPE_TOKEN": "s3cret"}) as gateway:
        announced = "Content-Length: 10000000\r\n"
        # 10 MB announced, 1 byte sent: without the token the answer comes at once
        for auth in ("", "Authorization: Bearer nope\r\n"):
            answer = _raw_post(gateway.url, announced + auth, b"{", wait_s=5)
            assert answer.startswith(b"HTTP/1.1 401"), answer
            assert b"authorisation_error" in answer and b"bearer token" in answer
        # with it, the gateway waits for the body it was promised
        trusted = announced + "Authorization: Bearer s3cret\r\n"
        assert _raw_post(gateway.url, trusted, b"{", wait_s=1.5) == b""
        # a streamed (chunked) body without the token: refused once past 64 KiB
        chunked = gateway.http.post(
            "/inference_pipelines/initialise",
            content=iter([b"{" + b" " * 40_000, b" " * 40_000 + b"}"]),
            headers={"content-type": "application/json"},
        )
        error_of(chunked, 401, "authorisation_error")
        # a small body without the token still reaches the manager, which refuses it
        small = gateway.http.post("/inference_pipelines/initialise", json=init_body("/x.mp4"))
        error_of(small, 401, "authorisation_error")
        assert "64" not in small.json()["message"]


def test_bearer_token_is_passed_to_the_manager_and_bodies_are_bounded() -> None:
    env = {"FRAMEPIPE_TOKEN": "s3cret", "FRAMEPIPE_HTTP_MAX_BODY_BYTES": "4096"}
    with running_gateway(env) as gateway:
        anonymous = gateway.http.get("/inference_pipelines/list")
        error_of(anonymous, 401, "authorisation_error")
        assert anonymous.headers["www-authenticate"] == "Bearer"
        wrong = {"Authorization": "Bearer nope"}
        error_of(
            gateway.http.get("/inference_pipelines/list", headers=wrong), 401, "authorisation_error"
        )
        right = {"Authorization": "Bearer s3cret"}
        assert gateway.http.get("/inference_pipelines/list", headers=right).status_code == 200
        stream = gateway.http.get(f"/inference_pipelines/{NO_SUCH_ID}/results/stream")
        error_of(stream, 401, "authorisation_error")  # before any stream starts
        assert gateway.http.get("/readyz").json()["status"] == "ready"  # probes need no token
        big = init_body("/nonexistent.mp4", padding="x" * 5000)
        error_of(
            gateway.http.post("/inference_pipelines/initialise", json=big, headers=right),
            413,
            "payload_too_large",
        )
        chunked = gateway.http.post(
            "/inference_pipelines/initialise",
            content=iter([b"{" + b" " * 3000, b" " * 3000 + b"}"]),
            headers={**right, "content-type": "application/json"},
        )
        error_of(chunked, 413, "payload_too_large")


# --- a pipeline over HTTP ----------------------------------------------------------------------


def test_pipeline_lifecycle(video_3000: SyntheticVideo) -> None:
    with running_gateway() as gateway:
        # replayed in real time: 100 s, longer than the test
        pipeline_id = start(gateway, video_3000.path, video_configuration=paced(video_3000))
        assert listed(gateway) == [pipeline_id]
        status = gateway.http.get(f"/inference_pipelines/{pipeline_id}/status")
        report = InferencePipelineStatusResponse.model_validate(status.json()).report
        assert report.sources_metadata[0].source_reference == str(video_3000.path)
        assert report.framepipe is not None and report.framepipe.sources

        url = f"/inference_pipelines/{pipeline_id}/consume"

        def consume(**kwargs: Any) -> ConsumePipelineResponse:
            response = gateway.http.request("GET", url, **kwargs)
            assert response.status_code == 200, response.text
            return ConsumePipelineResponse.model_validate(response.json())

        # the reference client's way: a GET with a JSON body
        first = wait_for(
            lambda: consume(json={"excluded_fields": ["image"]}).outputs or None, 60, "a result"
        )
        assert first[0] is not None and "image" not in first[0] and "frame_id" in first[0]
        assert "entries" not in gateway.http.get(url).json()  # only for max_entries callers

        def some() -> ConsumePipelineResponse | None:
            batch = consume(params={"max_entries": 5, "excluded_fields": "image"})
            return batch if batch.entries else None

        batch = wait_for(some, 60, "results for a batch")
        assert batch.entries is not None and 1 <= len(batch.entries) <= 5
        ids = [e.frames_metadata[0].frame_id for e in batch.entries if e.frames_metadata[0]]
        assert ids == sorted(ids) and ids[0] > first[0]["frame_id"]
        assert all("image" not in (e.outputs[0] or {}) for e in batch.entries)

        for command in ("pause", "resume", "terminate"):
            done = gateway.http.post(f"/inference_pipelines/{pipeline_id}/{command}")
            assert CommandResponse.model_validate(done.json()).context.pipeline_id == pipeline_id
        error_of(gateway.http.get(f"/inference_pipelines/{pipeline_id}/status"), 404, "not_found")


# --- results pushed ----------------------------------------------------------------------------


def paced(video: SyntheticVideo) -> dict[str, Any]:
    """``video`` at its own pace (replayed in real time, like a camera)."""
    return {
        "type": "VideoConfiguration",
        "video_reference": str(video.path),
        "realtime_replay": True,
    }


def big_sink(frames: int) -> dict[str, Any]:
    """A sink that holds every result: no result is lost before the gateway drains it."""
    return {"type": "MemorySinkConfiguration", "results_buffer_size": frames + 10}


# The manager (today) removes a file pipeline about a second after its sources end, whether its
# results were read or not: streams of unpaced files drain in large batches to keep up.
FAST_DRAIN = {"FRAMEPIPE_HTTP_STREAM_BATCH": "1000"}


def test_stream_delivers_every_result_in_order_then_ends(video_120: SyntheticVideo) -> None:
    with running_gateway(FAST_DRAIN) as gateway:
        pipeline_id = start(gateway, video_120.path, sink_configuration=big_sink(120))
        reader = Reader(gateway, pipeline_id, "?buffer=1000")
        reader.join()
        results = reader.results()
        assert [int(e.id or 0) for e in results] == list(range(1, 121))
        assert (
            frame_ids(results) == sorted(frame_ids(results)) and len(set(frame_ids(results))) == 120
        )
        end = reader.end()
        assert (end.reason, end.results, end.dropped_total) == ("pipeline_gone", 120, 0)
        assert listed(gateway) == []


def live(gateway: Gateway, rtsp_server: RtspServer) -> str:
    body = {
        "video_configuration": {"type": "VideoConfiguration", "video_reference": rtsp_server.url},
        "processing_configuration": {"type": "ModelConfiguration", "model": "passthrough"},
    }
    response = gateway.http.post("/inference_pipelines/initialise", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["context"]["pipeline_id"])


def test_two_readers_each_get_every_result(rtsp_server: RtspServer) -> None:
    with running_gateway() as gateway:
        pipeline_id = live(gateway, rtsp_server)
        first = Reader(gateway, pipeline_id, "?buffer=1000")
        wait_for(lambda: first.results(), 60, "the first reader's first result")
        second = Reader(gateway, pipeline_id, "?buffer=1000")
        wait_for(lambda: len(second.results()) >= 5, 60, "results for the second reader")
        gateway.http.post(f"/inference_pipelines/{pipeline_id}/terminate").raise_for_status()
        first.join()
        second.join()
        a, b = first.results(), second.results()
        joined = [e.id for e in a].index(b[0].id)
        # from the moment it attached, the second reader got exactly what the first got
        assert [(e.id, e.data) for e in a[joined:]] == [(e.id, e.data) for e in b]
        assert [int(e.id or 0) for e in a] == list(range(1, len(a) + 1))  # nothing lost
        assert first.end().reason == second.end().reason == "pipeline_gone"


def test_a_slow_reader_loses_its_oldest_results_and_is_told(video_3000: SyntheticVideo) -> None:
    with running_gateway(FAST_DRAIN) as gateway:
        pipeline_id = start(gateway, video_3000.path, sink_configuration=big_sink(3000))
        host, port = gateway.url.removeprefix("http://").split(":")
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(60)
            sock.connect((host, int(port)))
            # HTTP/1.0: the body is the raw event stream, ended by the close.
            sock.sendall(
                f"GET /inference_pipelines/{pipeline_id}/results/stream?buffer=1 HTTP/1.0\r\n"
                f"Host: {host}\r\n\r\n".encode()
            )
            # Read nothing until every result went through the gateway: the pipeline is
            # removed only once its sink is drained.
            wait_for(lambda: pipeline_id not in listed(gateway), 120, "the pipeline to end")
            data = bytearray()
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
        events = list(parse_sse(iter(body.decode().split("\n"))))
        results = [e for e in events if e.event == "result"]
        dropped = [e.json() for e in events if e.event == "dropped"]
        end = StreamEnd.model_validate(events[-1].json())
        assert end.reason == "pipeline_gone"
        assert end.results == len(results) and end.results + end.dropped_total == 3000
        assert end.dropped_total > 0 and sum(d["dropped"] for d in dropped) == end.dropped_total
        # each `dropped` event stands just where the gap in the ids is
        expected_id, lost = 1, 0
        for event in events[:-1]:
            if event.event == "dropped":
                lost = event.json()["dropped"]
            elif event.event == "result":
                assert int(event.id or 0) == expected_id + lost
                expected_id, lost = int(event.id or 0) + 1, 0


def test_a_closed_stream_stops_draining(video_3000: SyntheticVideo) -> None:
    with running_gateway() as gateway:
        pipeline_id = start(gateway, video_3000.path, video_configuration=paced(video_3000))
        url = f"/inference_pipelines/{pipeline_id}/results/stream"
        with gateway.http.stream("GET", url) as response:
            first = next(e for e in parse_sse(response.iter_lines()) if e.event == "result")
        seen = first.json()["frames_metadata"][0]["frame_id"]

        def produced() -> int:
            report = gateway.http.get(f"/inference_pipelines/{pipeline_id}/status").json()
            return int(report["report"]["framepipe"]["results_produced"])

        closed_at = produced()
        wait_for(lambda: produced() >= closed_at + 30, 60, "30 more results")
        left = gateway.http.get(
            f"/inference_pipelines/{pipeline_id}/consume", params={"max_entries": 1000}
        ).json()["entries"]
        ids = [e["frames_metadata"][0]["frame_id"] for e in left]
        # a drain still running would have popped them (it polls every 20 ms)
        assert len(ids) >= 20, "with its reader gone the gateway stops draining"
        assert ids == sorted(ids) and ids[0] > seen
        gateway.http.post(f"/inference_pipelines/{pipeline_id}/terminate").raise_for_status()


def test_each_reader_leaves_out_its_own_fields(rtsp_server: RtspServer) -> None:
    with running_gateway() as gateway:
        pipeline_id = live(gateway, rtsp_server)
        plain = Reader(gateway, pipeline_id, "?buffer=1000")
        lean = Reader(gateway, pipeline_id, "?buffer=1000&excluded_fields=image&limit=3")
        lean.join()
        assert lean.end().reason == "limit" and len(lean.results()) == 3
        assert all("image" not in e.json()["outputs"][0] for e in lean.results())
        wait_for(lambda: len(plain.results()) >= 3, 60, "results for the plain reader")
        assert all("image" in e.json()["outputs"][0] for e in plain.results())
        gateway.http.post(f"/inference_pipelines/{pipeline_id}/terminate").raise_for_status()
        plain.join()
        assert plain.end().reason == "pipeline_gone"


def test_shutdown_ends_open_streams(video_3000: SyntheticVideo) -> None:
    with running_gateway() as gateway:
        pipeline_id = start(gateway, video_3000.path, video_configuration=paced(video_3000))
        reader = Reader(gateway, pipeline_id)
        assert reader.attached.wait(60)
        assert gateway.manager.stop() == 0
        reader.join()
        assert reader.end().reason == "shutdown"
