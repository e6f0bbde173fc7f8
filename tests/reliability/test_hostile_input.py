"""Hostile input, round two (issue 22): frames bigger than they claim, and what FFmpeg may open.

Each attack of the issue, tried again on a real manager (or a real decode process), with real
files and a real HTTP server on 127.0.0.1: a video that lies about its frame size is charged at
its real size before its ring exists, an absurd one is refused outright, and a stream that
changes size mid-stream meets the same cap.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from framepipe.core.pipeline import Pipeline
from framepipe.core.processing import Processor
from framepipe.core.sources import SourceHub, StreamState
from framepipe.testing import make_test_video
from tests.integration.manager_harness import ManagerProcess, running_manager, wait_for
from tests.rtsp import free_port

BIG = 4096  # a 4096x4096 frame: a 336 MiB ring for one consumer


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("hostile")
    make_test_video(directory / "big.avi", frames=3, width=BIG, height=BIG, fps=10, codec="mjpeg")
    # Its ring's resident start alone (three frames in flight, 288 MiB) passes a 290 MB budget
    # that a 1x1 admission fits in.
    make_test_video(
        directory / "wide.avi", frames=2, width=2 * BIG, height=BIG, fps=10, codec="mjpeg"
    )
    make_test_video(directory / "small.mkv", frames=20, width=160, height=120, fps=10)
    _resizing_ts(directory / "resizing.ts")
    return directory


def _ts(path: Path, width: int, height: int, frames: int) -> bytes:
    with av.open(str(path), "w", format="mpegts") as container:
        stream: Any = container.add_stream("mpeg2video", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.full((height, width, 3), (i * 20) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def _resizing_ts(path: Path) -> None:
    """An MPEG-TS stream of 320x240 frames that turns into 2048x2048 frames (two streams
    joined end to end, as a camera that changes resolution would send)."""
    first = _ts(path.with_suffix(".a.ts"), 320, 240, 10)
    second = _ts(path.with_suffix(".b.ts"), 2048, 2048, 5)
    path.write_bytes(first + second)


@pytest.fixture(scope="module")
def http_base(media: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving ``media``."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=media,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _port_open(port), 10, "the HTTP server")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait(10)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def init(reference: str, **video: Any) -> dict[str, Any]:
    return {
        "type": "init",
        "video_configuration": {
            "type": "VideoConfiguration",
            "video_reference": reference,
            **video,
        },
        "processing_configuration": {"type": "ModelConfiguration", "model": "passthrough"},
    }


ONE_PIXEL = {"video_source_properties": {"frame_width": 1, "frame_height": 1}}


def source_error(manager: ManagerProcess, pipeline_id: str, timeout: float = 30.0) -> str:
    """The pipeline's status report (as JSON text) once its source is in ERROR."""

    def failed() -> str | None:
        reply = manager.request({"type": "status", "pipeline_id": pipeline_id})
        report = reply["response"].get("report", {})
        states = [s.get("state") for s in report.get("sources_metadata", [])]
        return json.dumps(report) if "ERROR" in states else None

    text: str | None = wait_for(failed, timeout, "the source to be refused")
    assert text is not None
    return text


# ---- 1. admission from the real size ----------------------------------------------------------


def test_a_local_file_that_claims_one_pixel_is_admitted_at_its_real_size(media: Path) -> None:
    """The issue's first attack: a huge file with ``frame_width``/``frame_height`` 1 was
    admitted as a 1x1 stream. Admission probes the file: the budget sees the real ring."""
    with running_manager({"STREAM_MANAGER_MAX_RAM_MB": "400"}) as manager:
        reply = manager.request(init(str(media / "big.avi"), **ONE_PIXEL))
        response = reply["response"]
        assert response.get("error_class") == "RamBudgetExceededError", response
        # not 0 MB: the ring's resident start at 4096x4096 (three BGR frames in flight)
        rings = re.search(r"rings ([\d,.]+) MB", response["error_message"])
        assert rings is not None, response
        assert float(rings.group(1).replace(",", "")) >= 3 * 4096 * 4096 * 3 / 2**20, response
        assert manager.workers() == []


def test_a_stream_bigger_than_its_admission_is_charged_again_before_its_ring(
    http_base: str,
) -> None:
    """The issue's second attack: an ``http://`` video admitted on the client's word (1x1) is
    charged again at its real size once the decoder knows it, before the ring is made: over
    the budget, its source is refused with RamBudgetExceededError naming both sizes, and no
    ring was made (the manager's /dev/shm use stays small)."""
    with running_manager({"STREAM_MANAGER_MAX_RAM_MB": "290"}) as manager:
        reply = manager.request(init(f"{http_base}/wide.avi", **ONE_PIXEL))
        pipeline_id = reply.get("pipeline_id")
        assert pipeline_id, reply
        report = source_error(manager, pipeline_id)
        assert "RamBudgetExceededError" in report, report
        assert f"{2 * BIG}x{BIG}" in report and "admitted as 1x1" in report, report
        assert "STREAM_MANAGER_MAX_RAM_MB=290.0" in report, report


def test_a_ring_above_the_cap_is_refused_outright(http_base: str, media: Path) -> None:
    """With no RAM budget at all, the per-ring cap still refuses absurd frame sizes: at
    admission when the size is known (declared, or probed from a local file), and at the ring's
    creation when it is not (a URL)."""
    with running_manager({"FRAMEPIPE_MAX_RING_MB": "64"}) as manager:
        reply = manager.request(init(str(media / "big.avi")))
        response = reply["response"]
        assert response.get("error_class") == "CapacityError", response
        assert "per-ring cap of 64 MB" in response["error_message"], response
        assert f"{BIG}x{BIG}" in response["error_message"]

        declared = {"video_source_properties": {"frame_width": 16000, "frame_height": 16000}}
        reply = manager.request(init(str(media / "small.mkv"), **declared))
        assert reply["response"].get("error_class") == "CapacityError", reply

        reply = manager.request(init(f"{http_base}/big.avi", **ONE_PIXEL))
        pipeline_id = reply.get("pipeline_id")
        assert pipeline_id, reply
        report = source_error(manager, pipeline_id)
        assert "CapacityError" in report and "per-ring cap of 64 MB" in report, report

        # an honest small video still runs
        reply = manager.request(init(str(media / "small.mkv")))
        assert reply["response"]["status"] == "success", reply


class _PixelMean(Processor):
    """Reads every frame's pixels (as a model does)."""

    def compose(
        self,
        frames: Sequence[Any | None],
        frames_metadata: Sequence[Any | None],
        predictions: Sequence[Any | None] | None = None,
    ) -> list[dict[str, Any] | None]:
        return [None if f is None else {"mean": float(np.mean(f))} for f in frames]


@pytest.mark.parametrize("reads_pixels", [False, True], ids=["passthrough", "pixels"])
def test_a_stream_that_changes_size_mid_stream_meets_the_same_cap(
    media: Path, reads_pixels: bool
) -> None:
    """A stream that starts small (a small ring) and turns into 2048x2048 frames: the decoder
    refuses the new size (its ring would be above the cap), naming both sizes, instead of
    decoding and scaling frames of any size; whether or not the pipeline reads the pixels
    (a passthrough pipeline's frames are not copied, but their size is checked all the same)."""
    processing = _PixelMean() if reads_pixels else None
    with (
        SourceHub(max_ring_bytes=64 * 1024 * 1024) as hub,
        Pipeline(
            str(media / "resizing.ts"), processing=processing, decoder="pyav", hub=hub
        ) as pipeline,
    ):
        assert pipeline.join(30)
        source = pipeline.status().sources[0]
    assert source.state is StreamState.ERROR, source
    assert source.last_error is not None
    assert "changed size mid-stream from 320x240 to 2048x2048" in source.last_error
    assert "per-ring cap of 64 MB" in source.last_error


def test_the_default_cap_refuses_the_issues_frame_sizes() -> None:
    """16000x16000 (a 5 GB ring) and 8192x8192 (1.4 GB) are above the default cap; a 4K camera
    shared by four pipelines is not."""
    from framepipe.core.sources.sizing import DEFAULT_MAX_RING_BYTES, ring_bytes
    from framepipe.server.settings import ServerSettings

    assert ServerSettings().max_ring_bytes == DEFAULT_MAX_RING_BYTES
    assert ring_bytes(16000, 16000, 64) > DEFAULT_MAX_RING_BYTES
    assert ring_bytes(8192, 8192, 64) > DEFAULT_MAX_RING_BYTES
    assert ring_bytes(3840, 2160, 64, consumers=4) <= DEFAULT_MAX_RING_BYTES


# ---- 2. every buffer bounded in bytes ---------------------------------------------------------

NOISE_FRAMES = 150
IMAGE_WORKFLOW = {
    "type": "WorkflowConfiguration",
    "workflow_specification": {
        "version": "1.0",
        "inputs": [{"type": "WorkflowImage", "name": "image"}],
        "steps": [],
        "outputs": [{"type": "JsonField", "name": "image", "selector": "$inputs.image"}],
    },
    "image_input_name": "image",
}


@pytest.fixture(scope="module")
def noise_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """640x360 frames of noise: each image output is a ~170 kB base64 JPEG (25 MB in all)."""
    path = tmp_path_factory.mktemp("noise") / "noise.avi"
    rng = np.random.default_rng(22)
    with av.open(str(path), "w") as container:
        stream: Any = container.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuvj420p"
        for _ in range(NOISE_FRAMES):
            image = rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def image_init(video: Path, buffer: int = 10_000) -> dict[str, Any]:
    return {
        **init(str(video)),
        "processing_configuration": IMAGE_WORKFLOW,
        "sink_configuration": {"type": "MemorySinkConfiguration", "results_buffer_size": buffer},
    }


class StatusProbe:
    """Another client: ``status`` of a pipeline every 20 ms in a thread, each timed."""

    def __init__(self, manager: ManagerProcess, pipeline_id: str) -> None:
        import threading

        self.manager, self.pipeline_id = manager, pipeline_id
        self.latencies_ms: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            began = time.perf_counter()
            try:
                reply = self.manager.request(
                    {"type": "status", "pipeline_id": self.pipeline_id}, timeout=2
                )
                if reply["response"]["status"] != "success":
                    self.failures.append(str(reply["response"]))
            except Exception as exc:  # a probe that times out is a failure, not a crash
                self.failures.append(repr(exc))
            self.latencies_ms.append((time.perf_counter() - began) * 1000)

    def __enter__(self) -> StatusProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def p99(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _manager_rss_mb(manager: ManagerProcess) -> float:
    import psutil

    return float(psutil.Process(manager.pid).memory_info().rss) / 2**20


def test_the_result_buffer_is_bounded_in_bytes(noise_video: Path, long_video: Path) -> None:
    """The issue's second attack: ``results_buffer_size`` 10,000 and an image output held
    gigabytes in the worker. The buffer holds at most FRAMEPIPE_MAX_RESULTS_MB of results
    (here 8 MB: about 49 of these images), whatever its entry count; under WAIT processing then
    waits for a reader, and nothing is lost."""
    env = {"FRAMEPIPE_MAX_RESULTS_MB": "8", "FRAMEPIPE_MAX_REPLY_MB": "0"}
    with running_manager(env) as manager:
        other = manager.request(init(str(long_video)))["pipeline_id"]
        pipeline_id = manager.request(image_init(noise_video))["pipeline_id"]
        assert pipeline_id, "init failed"
        with StatusProbe(manager, other) as probe:
            time.sleep(6)  # long enough to process every frame, had there been room
            reply = manager.request(
                {"type": "consume_result", "pipeline_id": pipeline_id, "max_entries": 10_000}
            )
        body = reply["response"]
        entries = 1 + len(body["extra_entries"])
        held = len(json.dumps(body))
        # each result is ~170 kB: 8 MB holds ~49 of the 150
        assert entries < NOISE_FRAMES // 2, f"{entries} results ({held / 2**20:.0f} MB) held"
        assert held < 8.5 * 2**20, f"{entries} results ({held / 2**20:.1f} MB) held"
        assert not probe.failures, probe.failures[:3]
        assert probe.p99() < 100, f"status p99 {probe.p99():.1f} ms"
        # nothing was lost: the rest come once there is room again
        seen = entries
        deadline = time.monotonic() + 60
        while seen < NOISE_FRAMES and time.monotonic() < deadline:
            body = manager.request(
                {"type": "consume_result", "pipeline_id": pipeline_id, "max_entries": 10_000}
            )["response"]
            seen += len(body["extra_entries"]) + (1 if body["outputs"] else 0)
        assert seen == NOISE_FRAMES


def test_a_consume_result_reply_is_bounded_in_bytes(noise_video: Path, long_video: Path) -> None:
    """The issue's third attack: one ``consume_result`` with ``max_entries`` 400 built a
    991 MB reply and stalled every other client. A reply carries at most FRAMEPIPE_MAX_REPLY_MB
    (4 MB by default) of results — at least one entry — says how many are still waiting, and is
    encoded off the event loop: ``status`` of other clients stays fast and the manager's RSS
    bounded throughout."""
    with running_manager() as manager:
        other = manager.request(init(str(long_video)))["pipeline_id"]
        pipeline_id = manager.request(image_init(noise_video))["pipeline_id"]
        assert pipeline_id
        wait_for(
            lambda: (
                manager.request({"type": "status", "pipeline_id": pipeline_id})["response"][
                    "report"
                ]["framepipe"]["state"]
                == "FINISHED"
            ),
            60,
            "every frame to be processed into the buffer",
        )
        rss_before = _manager_rss_mb(manager)
        rss_peak = rss_before
        sizes: list[int] = []
        waiting: list[int] = []
        taken = 0
        with StatusProbe(manager, other) as probe:
            while taken < NOISE_FRAMES:
                body = manager.request(
                    {"type": "consume_result", "pipeline_id": pipeline_id, "max_entries": 400}
                )["response"]
                count = len(body["extra_entries"]) + (1 if body["outputs"] else 0)
                assert count >= 1, body
                taken += count
                sizes.append(len(json.dumps(body)))
                waiting.append(body["entries_waiting"])
                rss_peak = max(rss_peak, _manager_rss_mb(manager))
        assert max(sizes) <= 4 * 2**20 + 2**20, [s // 2**20 for s in sizes]
        assert waiting[0] > 0 and waiting[-1] == 0, waiting
        assert taken == NOISE_FRAMES
        assert not probe.failures, probe.failures[:3]
        assert probe.p99() < 100, f"status p99 {probe.p99():.1f} ms"
        assert rss_peak - rss_before < 100, f"manager RSS {rss_before:.0f} -> {rss_peak:.0f} MB"
        print(
            f"consume_result max_entries=400: {len(sizes)} replies of at most "
            f"{max(sizes) / 2**20:.1f} MB; status p99 {probe.p99():.1f} ms; manager RSS "
            f"{rss_before:.0f} -> {rss_peak:.0f} MB"
        )


# ---- 3. FFmpeg confined -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def playlist_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An allowed directory holding an HLS playlist that lists a video outside it, by absolute
    and by relative path (the issue's fourth attack)."""
    root = tmp_path_factory.mktemp("playlists")
    allowed, outside = root / "allowed", root / "outside"
    allowed.mkdir()
    outside.mkdir()
    make_test_video(outside / "secret.ts", frames=10, width=160, height=120, fps=10)
    make_test_video(allowed / "ok.mp4", frames=10, width=160, height=120, fps=10)
    (allowed / "list.m3u8").write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:1.0,\n{outside / 'secret.ts'}\n#EXTINF:1.0,\n../outside/secret.ts\n"
        "#EXT-X-ENDLIST\n"
    )
    # what the HLS demuxer still takes, though it does not start like a playlist: FFmpeg's
    # format whitelist refuses it when the file is opened
    (allowed / "concat.txt").write_text(f"ffconcat version 1.0\nfile {outside / 'secret.ts'}\n")
    return allowed, outside


def test_a_playlist_inside_the_video_dirs_cannot_reach_outside(
    playlist_dirs: tuple[Path, Path],
) -> None:
    allowed, _ = playlist_dirs
    with running_manager({"FRAMEPIPE_VIDEO_DIRS": str(allowed)}) as manager:
        for name, what in (("list.m3u8", "HLS playlist"), ("concat.txt", "concat script")):
            response = manager.request(init(str(allowed / name)))["response"]
            assert response.get("error_type") == "invalid_payload", response
            assert what in response["error_message"], response
            assert "give the video file itself" in response["error_message"]
        ok = manager.request(init(str(allowed / "ok.mp4")))
        assert ok["response"]["status"] == "success", ok
        assert manager.workers() != []


@pytest.mark.parametrize("decoder", ["opencv", "pyav"])
def test_ffmpeg_opens_a_file_with_its_own_demuxer_only(
    playlist_dirs: tuple[Path, Path], decoder: str
) -> None:
    """Past the check of what a file starts with, FFmpeg itself is confined: a file is opened
    with ``protocol_whitelist=file`` and a whitelist of demuxers that read one file, so a
    playlist that reached the decoder would not open (and without those options it would)."""
    from framepipe.core.sources.backends import BackendOptions, SourceOpenError, make_backend
    from framepipe.core.sources.entities import DecoderBackendName, SourceKind
    from framepipe.core.sources.reference import ParsedReference

    allowed, _ = playlist_dirs
    playlist = str(allowed / "list.m3u8")
    reference = ParsedReference(playlist, SourceKind.FILE, playlist, playlist)
    name = DecoderBackendName(decoder)
    confined = make_backend(
        name, playlist, SourceKind.FILE, BackendOptions(input_options=reference.ffmpeg_options())
    )
    with pytest.raises(SourceOpenError):
        confined.open()
    confined.close()
    unconfined = make_backend(name, playlist, SourceKind.FILE, BackendOptions())
    try:
        info = unconfined.open()  # the attack, had the options not been given
        assert (info.width, info.height) == (160, 120)
    finally:
        unconfined.close()
    video = str(allowed / "ok.mp4")
    honest = ParsedReference(video, SourceKind.FILE, video, video)
    backend = make_backend(
        name, video, SourceKind.FILE, BackendOptions(input_options=honest.ffmpeg_options())
    )
    try:
        assert backend.open().width == 160 and backend.grab()
    finally:
        backend.close()


def _listening(port: int) -> bool:
    import psutil

    return any(c.laddr and c.laddr.port == port for c in psutil.net_connections("inet") if c.laddr)


def test_stream_urls_never_listen_nor_bind_udp_unless_allowed() -> None:
    """The issue's fifth attack: ``tcp://...?listen=1`` made the server listen; ``udp://`` and
    ``rtp://`` bound local ports. Each is refused, naming what was wrong, and nothing listens."""
    port = free_port()
    hostile = [
        (f"tcp://127.0.0.1:{port}?listen=1&listen_timeout=60000", "unsupported scheme 'tcp'"),
        (f"rtsp://127.0.0.1:{port}/x?listen=1", "listen or bind"),
        (f"srt://127.0.0.1:{port}?mode=listener", "listen or bind"),
        (f"rtmp://127.0.0.1:{port}/live?rtmp_listen=1", "listen or bind"),
        (f"udp://127.0.0.1:{port}", "FRAMEPIPE_ALLOW_UDP_STREAMS"),
        (f"rtp://0.0.0.0:{port}", "FRAMEPIPE_ALLOW_UDP_STREAMS"),
        (f"gopher://127.0.0.1:{port}/x", "unsupported scheme"),
    ]
    with running_manager() as manager:
        for url, fragment in hostile:
            response = manager.request(init(url))["response"]
            assert response.get("error_type") == "invalid_payload", (url, response)
            assert fragment in response["error_message"], (url, response)
        assert not _listening(port)
        assert manager.workers() == []
    with running_manager({"FRAMEPIPE_ALLOW_UDP_STREAMS": "1"}) as manager:
        reply = manager.request(init(f"udp://127.0.0.1:{port}"))
        assert reply["response"]["status"] == "success", reply
        manager.request({"type": "terminate", "pipeline_id": reply["pipeline_id"]})


def test_private_and_loopback_stream_hosts_are_a_setting(http_base: str) -> None:
    """FRAMEPIPE_ALLOW_PRIVATE_STREAMS=0: a stream URL or a TURN server on a private, loopback
    or link-local address is refused (the default allows them: cameras live on private
    networks)."""
    from tests.realistic_requests import sdp_offer, webrtc_request

    turn = webrtc_request(sdp_offer())
    turn["webrtc_turn_config"]["urls"] = "turn:127.0.0.1:3478?transport=udp"
    with running_manager({"FRAMEPIPE_ALLOW_PRIVATE_STREAMS": "0"}) as manager:
        for url in (
            f"{http_base}/small.mkv",
            "rtsp://10.1.2.3/stream",
            "rtsp://localhost:8554/x",
            "rtsp://[::1]:8554/x",
            "http://169.254.169.254/latest/x.mp4",
        ):
            response = manager.request(init(url))["response"]
            assert response.get("error_type") == "invalid_payload", (url, response)
            assert "FRAMEPIPE_ALLOW_PRIVATE_STREAMS" in response["error_message"], response
        response = manager.request(turn)["response"]
        assert response.get("error_type") == "invalid_payload", response
        assert "webrtc_turn_config" in response["error_message"], response
        assert manager.workers() == []
    with running_manager() as manager:  # the default
        reply = manager.request(init(f"{http_base}/small.mkv"))
        assert reply["response"]["status"] == "success", reply


# ---- 4. the gateway without a token -------------------------------------------------------------


def test_a_gateway_without_a_token_answers_its_own_names_only() -> None:
    """DNS rebinding: a page on ``evil.example`` resolved to 127.0.0.1 sends ``Host:
    evil.example``; a cross-site page sends a POST without a body (no CORS preflight). Without
    a token, both are refused; the gateway's own names, and the names configured, are served."""
    from tests.integration.gateway_harness import running_gateway

    with running_gateway({"FRAMEPIPE_HTTP_ALLOWED_HOSTS": "cams.example.lan"}) as gateway:
        port = gateway.url.rsplit(":", 1)[1]
        http = gateway.http
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "cams.example.lan"):
            response = http.get("/inference_pipelines/list", headers={"Host": host})
            assert response.status_code == 200, (host, response.text)
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
            response = http.get("/inference_pipelines/list", headers={"Host": host})
            assert response.status_code == 401, (host, response.text)
            assert "is not a name of this gateway" in response.text
        terminate = "/inference_pipelines/nonexistent/terminate"
        cross = http.post(terminate, headers={"Origin": "http://evil.example"})
        assert cross.status_code == 401, cross.text
        assert "web origin 'http://evil.example'" in cross.text
        same = http.post(terminate, headers={"Origin": f"http://127.0.0.1:{port}"})
        assert same.status_code == 404, same.text  # reached the manager: no such pipeline
        assert http.post(terminate).status_code == 404  # no Origin: not a browser's request
