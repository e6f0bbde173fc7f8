"""Prometheus metrics from a real manager: scraped while real pipelines run (a replayed clip,
and the bundled video through the bundled face detector), checked against their status reports,
and gone with them. Also ``framepipe serve --metrics-port`` without the gateway, and the
``metrics`` command's authorisation."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from framepipe.data import demo_video_path
from framepipe.testing import SyntheticVideo, make_test_video
from tests.integration.gateway_harness import Gateway, init_body, running_gateway
from tests.integration.manager_harness import ManagerProcess, wait_for, wire_request

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> SyntheticVideo:
    """A minute of small numbered frames: replayed in real time, it outlives the test."""
    path = tmp_path_factory.mktemp("metrics") / "clip.mp4"
    return make_test_video(path, frames=1800, width=128, height=72, fps=30)


def scrape(url: str, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series_of(samples: Samples, pipeline_id: str) -> list[str]:
    return [name for name, labels in samples if ("pipeline_id", pipeline_id) in labels]


def start(gateway: Gateway, **video: Any) -> str:
    body = init_body(str(video.pop("video_reference")), **video)
    body["sink_configuration"] = {"type": "MemorySinkConfiguration", "results_buffer_size": 4096}
    response = gateway.http.post("/inference_pipelines/initialise", json=body)
    assert response.status_code == 200, response.text
    pipeline_id: str = response.json()["context"]["pipeline_id"]
    return pipeline_id


def status(gateway: Gateway, pipeline_id: str) -> dict[str, Any]:
    response = gateway.http.get(f"/inference_pipelines/{pipeline_id}/status")
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()["report"]
    return report


def test_scrapes_move_agree_with_the_status_and_forget_terminated_pipelines(
    clip: SyntheticVideo,
) -> None:
    with running_gateway() as gateway:
        route = gateway.http.get("/openapi.json").json()["paths"]["/metrics"]["get"]
        assert "text/plain; version=0.0.4; charset=utf-8" in route["responses"]["200"]["content"]
        # results nobody consumes: a sink that holds them all, so processing never waits for room
        live = start(gateway, video_reference=clip.path, realtime_replay=True)
        # the bundled video through the bundled model, one frame in five (max_fps on a file
        # picks frames by its timeline: the others are dropped with the reason max_fps)
        body = init_body(str(demo_video_path()), max_fps=5)
        body["processing_configuration"] = {"type": "ModelConfiguration", "model": "centerface"}
        response = gateway.http.post("/inference_pipelines/initialise", json=body)
        assert response.status_code == 200, response.text
        faces = response.json()["context"]["pipeline_id"]

        live_source = {"pipeline_id": live, "source_id": "0"}
        first = wait_for(
            lambda: (
                (s := scrape(gateway.url))
                and (get(s, "framepipe_source_frames_processed_total", **live_source) or 0) > 0
                and s
            ),
            60,
            "a first scrape with processed frames",
        )

        # counters move between two scrapes (the health loop refreshes the reports)
        def moved() -> Samples | None:
            later = scrape(gateway.url)
            name = "framepipe_source_frames_processed_total"
            ahead = get(later, name, **live_source) or 0
            return later if ahead > (get(first, name, **live_source) or 0) else None

        second = wait_for(moved, 60, "the processed-frames counter to move")
        for name in (
            "framepipe_source_frames_decoded_total",
            "framepipe_pipeline_results_total",
            "framepipe_source_frame_age_seconds_count",
            "framepipe_source_inference_latency_seconds_count",
        ):
            labels = live_source if name.startswith("framepipe_source") else {"pipeline_id": live}
            before, after = get(first, name, **labels), get(second, name, **labels)
            assert before is not None and after is not None and after > before, name
        assert get(second, "framepipe_pipeline_state", pipeline_id=live, state="RUNNING") == 1
        assert get(second, "framepipe_pipeline_info", pipeline_id=live, model="none") == 1
        assert (get(second, "framepipe_manager_pipelines", state="running") or 0) >= 1

        # the finished pipeline: its figures are the status report's
        wait_for(lambda: status(gateway, faces)["framepipe"]["state"] == "FINISHED", 120, "the end")
        report = status(gateway, faces)["framepipe"]
        (source,) = report["sources"]
        samples = scrape(gateway.url)
        src = {"pipeline_id": faces, "source_id": "0"}
        assert get(samples, "framepipe_pipeline_state", pipeline_id=faces, state="FINISHED") == 1
        assert get(samples, "framepipe_pipeline_info", pipeline_id=faces, model="centerface") == 1
        decoded = get(samples, "framepipe_source_frames_decoded_total", **src)
        assert decoded == source["frames_decoded"] == 200
        assert (
            get(samples, "framepipe_source_frames_delivered_total", **src)
            == (source["frames_delivered"])
        )
        for reason, count in source["frames_dropped"].items():
            assert get(samples, "framepipe_source_frames_dropped_total", reason=reason, **src) == (
                count
            )
        dropped = sum(source["frames_dropped"].values())
        assert source["frames_dropped"]["max_fps"] == dropped > 0
        results = get(samples, "framepipe_pipeline_results_total", pipeline_id=faces)
        assert results == report["results"]["produced"] == 200 - dropped
        assert (
            get(samples, "framepipe_pipeline_results_buffered", pipeline_id=faces)
            == (report["results"]["buffered"])
        )
        processed = get(samples, "framepipe_source_frames_processed_total", **src)
        assert processed == results and decoded == processed + dropped
        for histogram in ("inference_latency", "frame_age"):
            name = f"framepipe_source_{histogram}_seconds"
            assert get(samples, f"{name}_count", **src) == processed
            assert get(samples, f"{name}_bucket", le="+Inf", **src) == processed
            assert (get(samples, f"{name}_sum", **src) or 0) > 0

        # the model's inference service ran every processed frame (only this pipeline uses it);
        # its figures come with its own periodic statistics, which may trail the pipeline's
        service = {"model": "centerface", "provider": "cpu"}
        samples = wait_for(
            lambda: (
                (s := scrape(gateway.url))
                and get(s, "framepipe_service_frames_total", **service) == processed
                and s
            ),
            10,
            "the service's statistics to count every processed frame",
        )
        assert get(samples, "framepipe_service_state", state="running", **service) == 1
        assert get(samples, "framepipe_service_frames_total", **service) == processed
        runs = get(samples, "framepipe_service_runs_total", **service) or 0
        assert 0 < runs <= processed
        assert (get(samples, "framepipe_service_busy_seconds_total", **service) or 0) > 0

        # a terminated pipeline's series are gone; the other's stay
        assert gateway.http.post(f"/inference_pipelines/{live}/terminate").status_code == 200
        after = scrape(gateway.url)
        assert series_of(after, live) == []
        assert "framepipe_source_frames_decoded_total" in series_of(after, faces)
        assert gateway.http.post(f"/inference_pipelines/{faces}/terminate").status_code == 200
        assert series_of(scrape(gateway.url), faces) == []


_METRICS = re.compile(r"Prometheus metrics on (http://[\d.]+:\d+)/metrics")


def test_metrics_port_serves_them_without_the_gateway_and_asks_for_the_token(
    clip: SyntheticVideo,
) -> None:
    manager = ManagerProcess({"FRAMEPIPE_TOKEN": "s3cret"}, args=("--metrics-port", "0"))
    try:
        url = wait_for(
            lambda: next((m.group(1) for m in map(_METRICS.search, manager.lines) if m), None),
            20,
            "the metrics endpoint's address",
        )
        assert not any("HTTP gateway on" in line for line in manager.lines)
        assert httpx.get(f"{url}/metrics", timeout=30).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.get(f"{url}/metrics", headers=wrong, timeout=30).status_code == 401
        assert httpx.get(f"{url}/inference_pipelines/list", timeout=30).status_code == 404

        refused = wire_request(manager.port, {"type": "metrics"})["response"]
        assert refused["error_type"] == "authorisation_error"
        request = {"type": "init", "auth_token": "s3cret", **init_body(str(clip.path))}
        request["video_configuration"]["realtime_replay"] = True
        started = wire_request(manager.port, request)
        assert started["response"]["status"] == "success", started
        pipeline_id = started["pipeline_id"]

        answer = wire_request(manager.port, {"type": "metrics", "auth_token": "s3cret"})
        listed = [p["pipeline_id"] for p in answer["response"]["metrics"]["pipelines"]]
        assert listed == [pipeline_id]
        samples = wait_for(
            lambda: (
                (s := scrape(url, "s3cret"))
                and get(s, "framepipe_manager_memory_used_bytes")
                and get(
                    s, "framepipe_source_info", pipeline_id=pipeline_id, source_id="0", kind="file"
                )
                and s
            ),
            30,
            "a scrape after a health check",
        )
        assert get(samples, "framepipe_pipeline_state", pipeline_id=pipeline_id, state="RUNNING")
        assert get(samples, "framepipe_manager_decoder_processes") == 1
        assert "framepipe_manager_memory_limit_bytes" not in {name for name, _ in samples}

        ended = wire_request(
            manager.port, {"type": "terminate", "pipeline_id": pipeline_id, "auth_token": "s3cret"}
        )
        assert ended["response"]["status"] == "success"
        assert series_of(scrape(url, "s3cret"), pipeline_id) == []
    finally:
        if manager.proc.poll() is None:
            assert manager.stop() == 0, manager.output()
        else:
            manager.kill()
