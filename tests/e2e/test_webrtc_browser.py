"""The WebRTC demo page in a real browser: Debian's chromium, driven by Playwright, with a fake
camera playing the demo video (a face) opens ``/webrtc`` on a real server, starts a pipeline,
receives predictions on the data channel and plays the annotated video that comes back.

A screenshot of the page goes to ``.artifacts/webrtc-demo.png`` (ignored by git) and to the
test's tmp dir.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from framepipe.testing import write_y4m
from tests.integration.gateway_harness import Gateway, running_gateway

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / ".artifacts"
DEMO = ROOT / "framepipe/data/demo_faces.mp4"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (make system-deps)"
)


def fake_camera(path: Path, frames: int = 50) -> Path:
    """The demo video's first frames at 640x480 (letterboxed), as a .y4m the fake camera loops."""
    images = []
    with av.open(str(DEMO)) as container:
        for number, frame in enumerate(container.decode(video=0)):
            if number >= frames:
                break
            canvas = np.full((480, 640, 3), 40, np.uint8)
            canvas[60:420] = cv2.resize(frame.to_ndarray(format="bgr24"), (640, 360))
            images.append(canvas)
    return write_y4m(path, images, fps=25)


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    env = {
        "FRAMEPIPE_WEBRTC_ICE_ADDRESSES": "127.0.0.1",
        "FRAMEPIPE_ENDED_LINGER": "0.5",
        "FRAMEPIPE_HEALTH_INTERVAL": "0.25",
    }
    with running_gateway(env) as gateway:
        yield gateway


def pipelines(gateway: Gateway) -> list[str]:
    listed: list[str] = gateway.http.get("/inference_pipelines/list").json()["pipelines"]
    return listed


def test_the_demo_page_shows_predictions_and_the_annotated_video(
    gateway: Gateway, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    camera = fake_camera(tmp_path / "camera.y4m")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={camera}",
                # the server offers loopback candidates only (FRAMEPIPE_WEBRTC_ICE_ADDRESSES)
                "--allow-loopback-in-peer-connection",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{gateway.url}/webrtc")
            page.click("#start")
            page.wait_for_function(
                "() => window.framepipeDemo.error !== null || ("
                "window.framepipeDemo.messages >= 5"
                " && window.framepipeDemo.predictions.some(p => p.class === 'face'))",
                timeout=90_000,
            )
            demo: dict[str, Any] = page.evaluate("window.framepipeDemo")
            assert demo["error"] is None, demo["error"]
            assert demo["pipelineId"] in pipelines(gateway)
            # the returned video plays: frames decode and its clock moves
            page.wait_for_function(
                "() => { const v = document.getElementById('annotated');"
                " return v.readyState >= 2 && !v.paused && v.videoWidth > 0"
                " && v.currentTime > 1; }",
                timeout=60_000,
            )
            video = page.evaluate(
                "(() => { const v = document.getElementById('annotated');"
                " return {width: v.videoWidth, height: v.videoHeight}; })()"
            )
            assert video == {"width": 640, "height": 480}
            assert int(page.inner_text("#count")) >= 1
            assert page.locator("#predictions tr").count() >= 1
            time.sleep(1.0)  # a second more of video for the screenshot
            shot = tmp_path / "webrtc-demo.png"
            page.screenshot(path=str(shot), full_page=True)
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(shot, ARTIFACTS / "webrtc-demo.png")
            pipeline_id = demo["pipelineId"]
            page.click("#stop")
            page.wait_for_function("() => window.framepipeDemo.state === 'stopped'")
            assert errors == []
        finally:
            browser.close()
    deadline = time.monotonic() + 30
    while pipeline_id in pipelines(gateway):
        assert time.monotonic() < deadline, "the pipeline outlived the page's Stop"
        time.sleep(0.1)
