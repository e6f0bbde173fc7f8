"""PushSource: frames pushed by their owner, read by a pipeline like any other source."""

from __future__ import annotations

import numpy as np
import pytest

from framepipe import Pipeline
from framepipe.core.pipeline import PipelineState
from framepipe.core.processing.processor import PassthroughProcessor
from framepipe.core.sources import (
    BufferConsumptionStrategy,
    BufferFillingStrategy,
    PushSource,
    SourceKind,
    StreamState,
    SubscriptionRequest,
)
from framepipe.testing import read_frame_number, render_frame

WIDTH, HEIGHT = 320, 240


def request(**kwargs: object) -> SubscriptionRequest:
    return SubscriptionRequest(source_id=0, reference=None, raw_reference="push", **kwargs)  # type: ignore[arg-type]


def test_a_pipeline_reads_pushed_frames_in_place_and_finishes_when_the_source_ends() -> None:
    with PushSource("push:test", kind=SourceKind.WEBCAM, declared_fps=30.0, codec="vp8") as source:
        source.start()
        assert source.state is StreamState.INITIALISING
        pipeline = Pipeline(
            "push:test",
            processing=PassthroughProcessor(),
            hub=source,
            source_buffer_filling_strategy="WAIT",  # every pushed frame reaches it
            source_buffer_consumption_strategy="LAZY",
        )
        with pipeline:
            reader = pipeline.results(timeout=10)
            for number in range(1, 6):
                assert source.push_image(render_frame(number, WIDTH, HEIGHT), timeout=5.0)
                result = next(reader)
                assert result.frames_metadata[0] is not None
                assert result.frames_metadata[0].frame_id == number
                assert result.outputs[0] == {
                    "frame_id": number,
                    "source_id": 0,
                    "image": {"width": WIDTH, "height": HEIGHT},
                }
            source.end()
            assert list(reader) == []
            assert pipeline.join(10)
            report = pipeline.status()
            assert report.state is PipelineState.FINISHED
            (src,) = report.sources
            assert src.state is StreamState.ENDED
            assert src.kind is SourceKind.WEBCAM
            assert src.properties is not None and (src.properties.width, src.properties.height) == (
                WIDTH,
                HEIGHT,
            )
            assert src.declared_fps == 30.0
            events = [u.event_type for u in report.status_updates]
            assert "VIDEO_CONSUMPTION_STARTED" in events and "VIDEO_CONSUMPTION_FINISHED" in events


def test_the_freshest_frame_wins_and_the_replaced_ones_are_counted() -> None:
    with PushSource("push:fresh") as source:
        subscription = source.subscribe(request())
        try:
            for number in range(1, 11):
                assert source.push_image(render_frame(number, WIDTH, HEIGHT))
            frame = subscription.take(1.0)
            assert frame is not None
            assert frame.metadata.frame_id == 10
            assert read_frame_number(frame.image) == 10
            subscription.release(frame)
            source.skip(3)  # three more arrived but a newer one had come already
            assert subscription.report().frames_dropped == {"drop_oldest": 12}
            assert subscription.report().frames_decoded == 13
        finally:
            subscription.close()


def test_a_queued_consumer_takes_frames_in_order_and_the_newest_is_dropped_when_full() -> None:
    """DROP_LATEST / LAZY (a WebRTC peer that is not realtime): up to buffer_size frames wait."""
    with PushSource("push:queue", buffer_size=3) as source:
        subscription = source.subscribe(
            request(
                filling_strategy=BufferFillingStrategy.DROP_LATEST,
                consumption_strategy=BufferConsumptionStrategy.LAZY,
            )
        )
        try:
            for number in range(1, 6):
                source.push_image(render_frame(number, WIDTH, HEIGHT))
            taken = []
            while (frame := subscription.take(0.2)) is not None:
                taken.append(read_frame_number(frame.image))
                subscription.release(frame)
            assert taken == [1, 2, 3]
            assert subscription.report().frames_dropped == {"buffer_full": 2}
        finally:
            subscription.close()


def test_max_fps_and_mute_drop_frames_by_reason() -> None:
    with PushSource("push:gates") as source:
        subscription = source.subscribe(request(max_fps=10.0))
        try:
            start = 1_000_000_000_000
            delivered = 0
            for n in range(30):  # one second at 30 fps of capture time
                frame = np.full((HEIGHT, WIDTH, 3), n, np.uint8)
                delivered += source.push_image(frame, capture_ns=start + n * 33_333_333)
            assert delivered == 10
            subscription.mute()
            assert not source.push_image(np.zeros((HEIGHT, WIDTH, 3), np.uint8))
            dropped = subscription.report().frames_dropped
            assert dropped["max_fps"] == 20
            assert dropped["muted"] == 1
        finally:
            subscription.close()


def test_frames_of_another_size_are_scaled_into_the_ring() -> None:
    with PushSource("push:resize") as source:
        subscription = source.subscribe(request())
        try:
            assert source.push_image(render_frame(7, WIDTH, HEIGHT))
            assert source.push_image(render_frame(8, WIDTH * 2, HEIGHT * 2))
            frame = subscription.take(1.0)
            assert frame is not None
            assert frame.image.shape == (HEIGHT, WIDTH, 3)
            assert read_frame_number(frame.image) == 8
            subscription.release(frame)
            source.end()  # the final statistics are written
            assert source.status.statistics().copies == 1
        finally:
            subscription.close()


def test_a_source_without_frames_ends_and_its_pipeline_finishes() -> None:
    with PushSource("push:silent") as source:
        pipeline = Pipeline("push:silent", processing=PassthroughProcessor(), hub=source)
        with pipeline:
            source.end("the peer left")
            assert pipeline.join(10)
            assert pipeline.state is PipelineState.FINISHED
            assert pipeline.status().sources[0].state is StreamState.ENDED


def test_an_ended_source_takes_no_consumer_and_no_frame() -> None:
    source = PushSource("push:ended")
    try:
        source.end()
        assert not source.push_image(np.zeros((HEIGHT, WIDTH, 3), np.uint8))
        with pytest.raises(Exception, match="has ended"):
            source.serve(request(), 1)
    finally:
        source.close()
        source.close()  # idempotent
