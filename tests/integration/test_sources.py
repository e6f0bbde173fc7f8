"""Video sources end to end: real decode processes, rings, files and a real RTSP server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil
import pytest

from framepipe.core.pipeline import Pipeline, PipelineState
from framepipe.core.processing import Processor
from framepipe.core.shm import sweep_orphans
from framepipe.core.sources import BackendOptions, SourceHub, StreamState
from framepipe.errors import NotFoundError, OperationError
from framepipe.testing import SyntheticVideo, make_test_video, read_frame_number
from tests.rtsp import RtspServer, free_port


class NumberReader(Processor):
    """A processor that reads every frame's encoded number (and may be slow)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.seen: list[list[tuple[int, int] | None]] = []  # per batch: (frame number, frame_id)
        self.ages_ms: list[float] = []

    def compose(
        self,
        frames: Sequence[npt.NDArray[np.uint8] | None],
        frames_metadata: Sequence[Any | None],
        predictions: Sequence[dict[str, Any] | None] | None = None,
    ) -> list[dict[str, Any] | None]:
        now = time.time_ns()
        batch: list[tuple[int, int] | None] = []
        for frame, meta in zip(frames, frames_metadata, strict=True):
            if frame is None or meta is None:
                batch.append(None)
                continue
            batch.append((read_frame_number(frame), meta.frame_id))
            self.ages_ms.append((now - meta.capture_ns) / 1e6)
        self.seen.append(batch)
        if self.delay_s:
            time.sleep(self.delay_s)
        return [None if b is None else {"number": b[0]} for b in batch]

    def numbers(self, source: int = 0) -> list[int]:
        return [b[source][0] for b in self.seen if b[source] is not None]  # type: ignore[index]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until ``condition`` holds; returns the seconds it took (fails after ``timeout``)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - started


def source_state(pipeline: Pipeline, index: int = 0) -> StreamState:
    return pipeline.status().sources[index].state


@pytest.mark.parametrize("decoder", ["opencv", "pyav"])
def test_file_every_frame_in_order_under_wait(video_120: SyntheticVideo, decoder: str) -> None:
    reader = NumberReader()
    predictions: list[tuple[list[Any], list[Any]]] = []
    pipeline = Pipeline(
        str(video_120.path),
        processing=reader,
        decoder=decoder,
        on_prediction=lambda outputs, metas: predictions.append((outputs, metas)),
        decoding_buffer_size=8,
        hold_results=True,  # every result waits for this reader, however late it starts
    )
    with pipeline:
        results = list(pipeline.results(timeout=20))
        assert pipeline.join(10)
        report = pipeline.status()
    assert reader.numbers() == list(range(video_120.frames))  # content-checked: no loss, no reorder
    assert [b[0][1] for b in reader.seen] == list(range(1, video_120.frames + 1))  # type: ignore[index]
    assert len(results) == len(predictions) == video_120.frames
    assert results[5].outputs == [{"number": 5}]
    source = report.sources[0]
    assert source.state is StreamState.ENDED and source.frames_decoded == video_120.frames
    assert source.frames_delivered == video_120.frames and source.frames_dropped == {}
    assert source.properties is not None and source.properties.is_file
    assert (source.properties.width, source.properties.height) == (320, 240)
    assert source.backend == decoder and source.buffer_filling_strategy.value == "WAIT"
    assert pipeline.finished and report.state is PipelineState.FINISHED
    # frame_timestamp of a file = decode start + pts: frames are exactly 1/30 s apart
    stamps = [m[0].frame_timestamp for _, m in predictions]
    assert (stamps[30] - stamps[0]).total_seconds() == pytest.approx(1.0, abs=1e-3)
    wire = report.to_wire()
    assert {
        "video_source_status_updates",
        "latency_reports",
        "inference_throughput",
        "sources_metadata",
    } <= set(wire)
    transitions = [
        (e["payload"]["previous_state"], e["payload"]["new_state"])
        for e in wire["video_source_status_updates"]
        if e["event_type"] == "SOURCE_STATE_UPDATE"
    ]
    assert transitions[:3] == [
        ("NOT_STARTED", "INITIALISING"),
        ("INITIALISING", "RUNNING"),
        ("RUNNING", "ENDED"),
    ]
    assert wire["latency_reports"][0]["e2e_latency"] > 0
    assert results[0].to_wire()["frames_metadata"][0]["frame_id"] == 1


def test_passthrough_outputs_metadata_only(video_60: SyntheticVideo) -> None:
    with Pipeline(str(video_60.path)) as pipeline:
        results = list(pipeline.results(timeout=20))
    assert len(results) == 60
    assert results[0].outputs == [
        {"frame_id": 1, "source_id": 0, "image": {"width": 256, "height": 144}}
    ]


class PixelPeeker(Processor):
    """Declares that it reads no pixels (as passthrough does), yet looks at them: what the
    decoder wrote into the slot for it, if anything."""

    reads_native_frames = True
    reads_pixels = False

    def __init__(self) -> None:
        self.maxima: list[int] = []

    def compose(
        self,
        frames: Sequence[Any | None],
        frames_metadata: Sequence[Any | None],
        predictions: Sequence[dict[str, Any] | None] | None = None,
    ) -> list[dict[str, Any] | None]:
        for frame in frames:
            if frame is not None:
                data = frame.data if hasattr(frame, "data") else frame
                self.maxima.append(int(np.asarray(data).max()))
        return [None if f is None else {"seen": True} for f in frames]


@pytest.mark.parametrize("decoder", ["opencv", "pyav"])
def test_a_frame_no_consumer_reads_the_pixels_of_is_not_copied(
    video_60: SyntheticVideo, decoder: str
) -> None:
    peeker = PixelPeeker()
    with Pipeline(
        str(video_60.path), processing=peeker, decoder=decoder, decoding_buffer_size=4
    ) as pipeline:
        results = list(pipeline.results(timeout=20))
        report = pipeline.status()
    assert len(results) == 60  # every frame decoded and delivered, with its metadata
    assert report.sources[0].frames_decoded == 60
    assert peeker.maxima == [0] * 60  # the slots were never written: nothing was copied


def test_a_shared_frame_is_copied_when_one_consumer_reads_pixels(
    video_120: SyntheticVideo,
) -> None:
    reader = NumberReader()
    peeker = PixelPeeker()
    with SourceHub() as hub:
        a = Pipeline(str(video_120.path), processing=reader, hub=hub, realtime_replay=True)
        b = Pipeline(str(video_120.path), processing=peeker, hub=hub, realtime_replay=True)
        a.start()
        b.start()
        try:
            wait_for(lambda: a.status().sources[0].state is StreamState.RUNNING, 10, "RUNNING")
            assert len(hub.decoders()) == 1  # one decode, two consumers
            list(a.results(timeout=20))
            list(b.results(timeout=20))
        finally:
            a.terminate()
            b.terminate()
    assert reader.numbers() == list(range(120))  # the pixel reader's frames are whole
    assert len(peeker.maxima) == 120 and max(peeker.maxima) > 0


def test_drop_oldest_keeps_frame_age_bounded_with_slow_consumer(video_120: SyntheticVideo) -> None:
    fps = 30.0
    processing_s = 0.1  # 3 frame intervals per frame: the consumer is 3x too slow
    reader = NumberReader(delay_s=processing_s)
    pipeline = Pipeline(
        str(video_120.path),
        processing=reader,
        realtime_replay=True,  # the file plays at its own pace, like a camera
        source_buffer_filling_strategy="DROP_OLDEST",
        source_buffer_consumption_strategy="EAGER",
    )
    with pipeline:
        list(pipeline.results(timeout=20))
        report = pipeline.status()
    numbers = reader.numbers()
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)  # fresh, never stale
    assert 15 <= len(numbers) <= 60  # about a third of 120 frames
    ages = np.array(reader.ages_ms[2:])
    # age at consumption: below two frame intervals (the consumer waits for the next frame
    # after each 100 ms step, never for a backlog)
    assert np.percentile(ages, 95) < 2 * 1000 / fps, ages
    dropped = report.sources[0].frames_dropped
    assert sum(dropped.values()) + len(numbers) == video_120.frames, dropped
    assert dropped.get("drop_oldest", 0) > 0


def test_max_fps_on_a_file_picks_frames_by_its_timeline(video_60: SyntheticVideo) -> None:
    """On a file, max_fps subsamples the video's own timeline (as the reference does): a 30 fps
    file at max_fps 10 gives every third frame, and the skipped ones are counted."""
    reader = NumberReader()
    with Pipeline(str(video_60.path), processing=reader, max_fps=10) as pipeline:
        list(pipeline.results(timeout=20))
        report = pipeline.status().sources[0]
    assert reader.numbers() == list(range(0, 60, 3))
    assert report.frames_dropped == {"max_fps": 40}
    assert report.frames_decoded == 60


def test_realtime_replay_plays_a_file_at_its_own_rate(video_60: SyntheticVideo) -> None:
    reader = NumberReader()
    with Pipeline(str(video_60.path), processing=reader, realtime_replay=True) as pipeline:
        results = list(pipeline.results(timeout=20))
    assert reader.numbers() == list(range(60))
    captures = [
        r.frames_metadata[0].capture_ns for r in results if r.frames_metadata[0] is not None
    ]
    rate = (len(captures) - 1) / ((captures[-1] - captures[0]) / 1e9)
    assert rate == pytest.approx(video_60.fps, rel=0.10)


def test_missing_file_is_error_with_clear_message() -> None:
    with pytest.raises(
        NotFoundError, match=r"^video_reference '/nonexistent/video.mp4' not found$"
    ):
        Pipeline("/nonexistent/video.mp4").start()  # the Python API fails loudly
    pipeline = Pipeline("/nonexistent/video.mp4", fail_loudly=False)  # a worker reports it
    with pipeline:
        assert pipeline.join(5)
        report = pipeline.status()
    source = report.sources[0]
    assert source.state is StreamState.ERROR
    assert source.last_error == "video_reference '/nonexistent/video.mp4' not found"
    assert pipeline.finished


def test_unreachable_url_is_error_with_clear_message() -> None:
    url = f"rtsp://user:pw@127.0.0.1:{free_port()}/nothing"
    with (
        pytest.raises(OperationError, match="could not open"),  # leaving the block raises it
        Pipeline(url) as pipeline,
    ):
        wait_for(lambda: pipeline.finished, 15, "the source to give up")
        source = pipeline.status().sources[0]
    assert source.state is StreamState.ERROR
    assert source.last_error is not None
    assert "could not open video_reference 'rtsp://***:***@127.0.0.1" in source.last_error
    assert "pw" not in source.reference


def test_pause_mute_resume(video_120: SyntheticVideo) -> None:
    reader = NumberReader()
    with Pipeline(str(video_120.path), processing=reader, realtime_replay=True) as pipeline:
        wait_for(lambda: len(reader.seen) >= 10, 10, "first frames")
        pipeline.pause()
        wait_for(lambda: source_state(pipeline) is StreamState.PAUSED, 5, "PAUSED")
        time.sleep(0.2)
        paused_at = len(reader.seen)
        time.sleep(0.3)
        assert len(reader.seen) <= paused_at + 1  # at most the frame already in flight
        pipeline.resume()
        wait_for(lambda: len(reader.seen) >= paused_at + 10, 10, "frames after resume")
        pipeline.mute()
        wait_for(lambda: source_state(pipeline) is StreamState.MUTED, 5, "MUTED")
        time.sleep(0.2)
        pipeline.resume()
        list(pipeline.results(timeout=20))
        report = pipeline.status()
    numbers = reader.numbers()
    assert numbers == sorted(numbers)
    assert (
        report.sources[0].frames_dropped.get("muted", 0) > 0
    )  # muted frames were decoded and dropped
    assert len(numbers) + report.sources[0].frames_dropped["muted"] == video_120.frames
    states = [
        e.payload["new_state"]
        for e in report.status_updates
        if e.event_type == "SOURCE_STATE_UPDATE"
    ]
    assert "PAUSED" in states and "MUTED" in states


def test_multiplexing_two_files_in_one_pipeline(
    video_120: SyntheticVideo, video_60: SyntheticVideo
) -> None:
    reader = NumberReader()
    with Pipeline(
        [str(video_120.path), str(video_60.path)], processing=reader, batch_collection_timeout=0.5
    ) as pipeline:
        results = list(pipeline.results(timeout=30))
        report = pipeline.status()
    assert all(len(r.outputs) == 2 for r in results)
    assert reader.numbers(0) == list(range(120))
    assert reader.numbers(1) == list(range(60))
    both = [b for b in reader.seen if b[0] is not None and b[1] is not None]
    assert len(both) >= 50  # batches really held a frame of each source
    assert [s.source_id for s in report.sources] == [0, 1]
    assert all(s.state is StreamState.ENDED for s in report.sources)
    assert {m.source_id for r in results for m in r.frames_metadata if m is not None} == {0, 1}


def test_fan_out_two_pipelines_share_one_decoder(video_120: SyntheticVideo) -> None:
    every = NumberReader()
    slow = NumberReader(delay_s=0.05)
    with SourceHub() as hub:
        # replayed in real time, a file is shared like a camera
        a = Pipeline(str(video_120.path), processing=every, hub=hub, realtime_replay=True)
        b = Pipeline(
            str(video_120.path),
            processing=slow,
            hub=hub,
            realtime_replay=True,
            source_buffer_filling_strategy="DROP_OLDEST",
            source_buffer_consumption_strategy="EAGER",
        )
        a.start()
        b.start()
        try:
            wait_for(lambda: a.status().sources[0].state is StreamState.RUNNING, 10, "RUNNING")
            assert len(hub.decoders()) == 1  # decoded once
            assert a.status().sources[0].shared_with == 1
            list(a.results(timeout=20))
            list(b.results(timeout=20))
            report_b = b.status()
        finally:
            a.terminate()
            b.terminate()
    assert every.numbers() == list(range(120))  # WAIT consumer: every frame
    got = slow.numbers()
    assert got == sorted(got) and 10 <= len(got) < 120  # DROP_OLDEST consumer: fresh frames only
    assert report_b.sources[0].frames_dropped.get("drop_oldest", 0) > 0


@pytest.mark.rtsp
@pytest.mark.parametrize("decoder", ["opencv", "pyav"])
def test_rtsp_stream_reconnects_after_server_restart(rtsp_server: RtspServer, decoder: str) -> None:
    reader = NumberReaderAny()
    with Pipeline(rtsp_server.url, processing=reader, decoder=decoder) as pipeline:
        wait_for(lambda: reader.count >= 10, 15, "frames from the RTSP stream")
        report = pipeline.status().sources[0]
        assert report.state is StreamState.RUNNING
        assert report.buffer_filling_strategy.value == "DROP_OLDEST"  # live default: freshest frame
        assert report.buffer_consumption_strategy.value == "EAGER"
        assert report.properties is not None and not report.properties.is_file
        rtsp_server.kill()
        wait_for(lambda: source_state(pipeline) is StreamState.RESTARTING, 10, "RESTARTING")
        time.sleep(0.5)
        rtsp_server.start()
        took = wait_for(lambda: source_state(pipeline) is StreamState.RUNNING, 10, "RUNNING again")
        assert took < 3.0, f"reconnected {took:.2f}s after the server came back"
        before = reader.count
        wait_for(lambda: reader.count >= before + 10, 10, "frames after the reconnect")
        report = pipeline.status().sources[0]
    assert report.reconnects >= 1
    states = [
        (e.payload["previous_state"], e.payload["new_state"])
        for e in pipeline.status().status_updates
        if e.event_type == "SOURCE_STATE_UPDATE"
    ]
    assert ("RUNNING", "RESTARTING") in states and ("RESTARTING", "RUNNING") in states


@pytest.mark.rtsp
def test_rtsp_max_fps_is_honoured(rtsp_server: RtspServer) -> None:
    reader = NumberReaderAny()
    with Pipeline(rtsp_server.url, processing=reader, max_fps=5) as pipeline:
        wait_for(lambda: reader.count >= 3, 15, "first frames")
        first = len(reader.captures)
        time.sleep(2.5)
        captures = reader.captures[first:]
        dropped = pipeline.status().sources[0].frames_dropped
    # rate over the capture times of the delivered frames (no counting-window quantisation)
    rate = (len(captures) - 1) / ((captures[-1] - captures[0]) / 1e9)
    assert rate == pytest.approx(5, rel=0.10)
    assert dropped.get("max_fps", 0) > 0


class NumberReaderAny(Processor):
    """Counts frames (the RTSP test pattern carries no frame number)."""

    def __init__(self) -> None:
        self.count = 0
        self.captures: list[int] = []
        self._lock = threading.Lock()

    def compose(
        self,
        frames: Sequence[npt.NDArray[np.uint8] | None],
        frames_metadata: Sequence[Any | None],
        predictions: Sequence[dict[str, Any] | None] | None = None,
    ) -> list[dict[str, Any] | None]:
        with self._lock:
            self.count += sum(1 for f in frames if f is not None)
            self.captures.extend(m.capture_ns for m in frames_metadata if m is not None)
        return [{"mean": float(f[::16, ::16].mean())} if f is not None else None for f in frames]


@pytest.mark.parametrize(
    ("strategy", "reason"),
    [
        ("DROP_LATEST", "buffer_full"),
        ("ADAPTIVE_DROP_LATEST", "adaptive"),
        ("ADAPTIVE_DROP_OLDEST", "adaptive"),
    ],
)
def test_drop_strategies_count_their_drops(
    video_60: SyntheticVideo, strategy: str, reason: str
) -> None:
    reader = NumberReader(delay_s=0.06)  # 2x slower than the 30 fps file
    with Pipeline(
        str(video_60.path),
        processing=reader,
        realtime_replay=True,
        source_buffer_filling_strategy=strategy,
        source_buffer_consumption_strategy="LAZY",
        decoding_buffer_size=4,
    ) as pipeline:
        list(pipeline.results(timeout=20))
        report = pipeline.status()
    numbers = reader.numbers()
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    dropped = report.sources[0].frames_dropped
    assert dropped.get(reason, 0) > 0, dropped
    assert len(numbers) + sum(dropped.values()) == video_60.frames, dropped


def test_decode_process_dies_with_its_owner(video_120: SyntheticVideo, tmp_path: Path) -> None:
    """SIGKILL the process that owns a pipeline: its decode process must not outlive it."""
    script = tmp_path / "owner.py"
    script.write_text(
        "import sys, time\n"
        "from framepipe.core.pipeline import Pipeline\n"
        "p = Pipeline(sys.argv[1], realtime_replay=True).start()\n"
        "while not p.status().sources[0].state.value == 'RUNNING': time.sleep(0.01)\n"
        "print('RUNNING', flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, str(script), str(video_120.path)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == b"RUNNING"
        family = psutil.Process(owner.pid).children(recursive=True)
        assert family, "the owner has no child processes"
        owner.kill()
        owner.wait(10)
        _gone, alive = psutil.wait_procs(family, timeout=5)
        assert not alive, f"outlived their owner: {alive}"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
        if owner.stdout is not None:
            owner.stdout.close()
        sweep_orphans()  # the killed owner could not unlink its ring


@pytest.mark.rtsp
def test_frozen_rtsp_server_never_hangs_the_source(rtsp_server: RtspServer) -> None:
    """A server that keeps the socket open but stops sending: the read times out, the source
    goes RESTARTING (never hangs), and comes back once the server answers again."""
    reader = NumberReaderAny()
    options = BackendOptions(open_timeout_s=1.0, read_timeout_s=1.0)
    with (
        SourceHub(backend_options=options) as hub,
        Pipeline(rtsp_server.url, processing=reader, hub=hub) as pipeline,
    ):
        wait_for(lambda: reader.count >= 5, 15, "frames from the RTSP stream")
        rtsp_server.freeze()
        wait_for(
            lambda: source_state(pipeline) is StreamState.RESTARTING,
            10,
            "RESTARTING after the freeze",
        )
        rtsp_server.thaw()
        wait_for(
            lambda: source_state(pipeline) is StreamState.RUNNING, 10, "RUNNING after the thaw"
        )
        before = reader.count
        wait_for(lambda: reader.count >= before + 5, 10, "frames after the thaw")


@pytest.mark.parametrize(("codec", "suffix"), [("libx265", ".mkv"), ("mjpeg", ".avi")])
@pytest.mark.parametrize("decoder", ["opencv", "pyav"])
def test_other_codecs_every_frame(media_dir: Path, codec: str, suffix: str, decoder: str) -> None:
    video = make_test_video(media_dir / f"c-{codec}-{decoder}{suffix}", frames=40, codec=codec)
    reader = NumberReader()
    with Pipeline(str(video.path), processing=reader, decoder=decoder) as pipeline:
        list(pipeline.results(timeout=20))
    assert reader.numbers() == list(range(40))


def test_http_url_file(media_dir: Path) -> None:
    """A video file served over HTTP: read to its end like a local file (every frame, ENDED)."""
    video = make_test_video(media_dir / "http.mkv", frames=50, width=320, height=240)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(media_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _port_open(port), 10, "the HTTP server")
        reader = NumberReader()
        with Pipeline(f"http://127.0.0.1:{port}/http.mkv", processing=reader) as pipeline:
            list(pipeline.results(timeout=20))
            report = pipeline.status().sources[0]
        assert reader.numbers() == list(range(video.frames))
        assert report.state is StreamState.ENDED and report.buffer_filling_strategy.value == "WAIT"
    finally:
        server.kill()
        server.wait(10)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.rtsp
def test_crashed_decode_process_of_a_live_source_is_replaced(rtsp_server: RtspServer) -> None:
    reader = NumberReaderAny()
    with SourceHub() as hub, Pipeline(rtsp_server.url, processing=reader, hub=hub) as pipeline:
        wait_for(lambda: reader.count >= 5, 15, "frames from the RTSP stream")
        (decoder,) = hub.decoders()
        crashed = decoder.pid
        assert crashed is not None
        os.kill(crashed, signal.SIGKILL)
        wait_for(lambda: source_state(pipeline) is StreamState.RESTARTING, 5, "RESTARTING")
        wait_for(
            lambda: source_state(pipeline) is StreamState.RUNNING, 10, "RUNNING with a new decoder"
        )
        before = reader.count
        wait_for(lambda: reader.count >= before + 10, 10, "frames from the new decode process")
        report = pipeline.status().sources[0]
        assert report.decoder_restarts == 1
        assert report.last_error is not None and "was killed by SIGKILL" in report.last_error
        assert decoder.pid not in (None, crashed)  # a new process, same ring
        assert len(hub.decoders()) == 1


def test_crashed_decode_process_of_a_file_is_an_error(video_120: SyntheticVideo) -> None:
    with (
        SourceHub() as hub,
        Pipeline(str(video_120.path), hub=hub, realtime_replay=True) as pipeline,
    ):
        wait_for(lambda: source_state(pipeline) is StreamState.RUNNING, 10, "RUNNING")
        (decoder,) = hub.decoders()
        killed = decoder.pid
        assert killed is not None
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: pipeline.finished, 10, "the pipeline to finish")
        report = pipeline.status().sources[0]
    assert report.state is StreamState.ERROR
    assert report.last_error == f"the decode process (pid {killed}) was killed by SIGKILL"


@pytest.mark.rtsp
def test_multiplexing_does_not_wait_for_a_stalled_source(
    rtsp_server: RtspServer, video_60: SyntheticVideo
) -> None:
    """A live source that drops out gives None in each batch; the other source keeps flowing."""
    reader = NumberReader()
    with Pipeline(
        [rtsp_server.url, str(video_60.path)],
        processing=reader,
        realtime_replay=True,
        batch_collection_timeout=0.2,
        decoder="opencv",
    ) as pipeline:
        wait_for(lambda: sum(1 for b in reader.seen if b[0] is not None) >= 3, 15, "RTSP frames")
        rtsp_server.kill()
        wait_for(lambda: source_state(pipeline, 0) is StreamState.RESTARTING, 10, "RESTARTING")
        stalled_from = len(reader.seen)
        wait_for(lambda: source_state(pipeline, 1) is StreamState.ENDED, 15, "the file to end")
        wait_for(lambda: len(reader.numbers(1)) == 60, 5, "every frame of the file")
        report = pipeline.status()
    # (a frame the camera sent just before it died may still be in the first batch after)
    after = reader.seen[stalled_from + 1 :]
    assert len(after) >= 5 and all(b[0] is None and b[1] is not None for b in after)
    assert reader.numbers(1) == list(range(60))  # the file source never waited for the camera
    assert report.sources[1].state is StreamState.ENDED


@pytest.mark.rtsp
def test_fan_out_of_a_camera_with_different_rates(rtsp_server: RtspServer) -> None:
    """Two pipelines on one camera: one decode process, each pipeline at its own max_fps."""
    full, slow = NumberReaderAny(), NumberReaderAny()
    with SourceHub() as hub:
        a = Pipeline(rtsp_server.url, processing=full, hub=hub).start()
        b = Pipeline(rtsp_server.url, processing=slow, hub=hub, max_fps=5).start()
        try:
            wait_for(lambda: full.count >= 5 and slow.count >= 2, 15, "frames in both pipelines")
            assert len(hub.decoders()) == 1
            first_full, first_slow = len(full.captures), len(slow.captures)
            time.sleep(2.0)
            report_a, report_b = a.status().sources[0], b.status().sources[0]
        finally:
            a.terminate()
            b.terminate()
    full_rate = (len(full.captures) - first_full - 1) / (
        (full.captures[-1] - full.captures[first_full]) / 1e9
    )
    slow_rate = (len(slow.captures) - first_slow - 1) / (
        (slow.captures[-1] - slow.captures[first_slow]) / 1e9
    )
    assert full_rate == pytest.approx(15, rel=0.15)
    assert slow_rate == pytest.approx(5, rel=0.15)
    assert report_a.shared_with == 1 and report_b.shared_with == 1
    assert (
        report_b.frames_dropped.get("max_fps", 0) > 0 and "max_fps" not in report_a.frames_dropped
    )


@pytest.mark.parametrize("decoder", ["opencv", "pyav"])
def test_a_file_that_is_not_a_video_is_error(tmp_path: Path, decoder: str) -> None:
    bogus = tmp_path / "notes.mp4"
    bogus.write_bytes(b"this is not a video\n" * 100)
    with pytest.raises(OperationError, match=f"^could not open video_reference '{bogus}'"):
        Pipeline(str(bogus), decoder=decoder).start()  # the Python API fails loudly
    with Pipeline(str(bogus), decoder=decoder, fail_loudly=False) as pipeline:
        wait_for(lambda: pipeline.finished, 15, "the source to give up")
        source = pipeline.status().sources[0]
    assert source.state is StreamState.ERROR
    assert source.last_error is not None
    assert source.last_error.startswith(f"could not open video_reference '{bogus}'")


def test_wait_with_a_slow_consumer_loses_nothing(video_60: SyntheticVideo) -> None:
    reader = NumberReader(delay_s=0.08)  # far slower than decoding; the queue holds 2 frames
    with Pipeline(str(video_60.path), processing=reader, decoding_buffer_size=2) as pipeline:
        list(pipeline.results(timeout=30))
        report = pipeline.status().sources[0]
    assert reader.numbers() == list(range(60))
    assert report.frames_dropped == {}


def test_nobody_reading_results_never_stalls_the_pipeline(video_120: SyntheticVideo) -> None:
    """Processing only for its side effects: the results buffer keeps the newest and counts drops."""
    reader = NumberReader()
    with Pipeline(str(video_120.path), processing=reader, results_buffer_size=16) as pipeline:
        assert pipeline.join(20), "the pipeline stalled on its unread results"
        report = pipeline.status()
        kept = [r.outputs[0] for r in pipeline.results(timeout=1)]
    assert reader.numbers() == list(range(120))
    assert report.results_produced == 120 and report.results_dropped == 120 - 16
    assert kept == [{"number": n} for n in range(104, 120)]  # the newest 16


@pytest.mark.parametrize("decoder", ["opencv", "pyav"])
def test_a_decode_process_decodes_with_one_thread(video_120: SyntheticVideo, decoder: str) -> None:
    """One stream per decode process: no FFmpeg frame threads (each would hold frames of its
    own; the codec's default is one per core + 1)."""
    with Pipeline(str(video_120.path), decoder=decoder, realtime_replay=True) as pipeline:
        wait_for(lambda: source_state(pipeline) is StreamState.RUNNING, 20, "RUNNING")
        wait_for(lambda: pipeline.status().sources[0].frames_decoded >= 5, 20, "5 frames")
        process = psutil.Process(pipeline.status().sources[0].decoder_pid)
        # the main thread, and PyAV's own helper where it has one
        assert process.num_threads() <= 2, [t.id for t in process.threads()]
