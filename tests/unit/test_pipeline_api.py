"""The public Pipeline API: what users and the server's worker build on."""

from __future__ import annotations

import inspect

import pytest

import framepipe
from framepipe.core.pipeline import Pipeline
from framepipe.core.processing import PassthroughSpec
from framepipe.core.sources import SourceHub
from framepipe.protocol.errors import InvalidPayloadError, OperationError


def test_top_level_names_are_lazy_aliases() -> None:
    assert framepipe.Pipeline is Pipeline
    assert framepipe.SourceHub is SourceHub
    with pytest.raises(AttributeError):
        _ = framepipe.NoSuchThing  # type: ignore[attr-defined]


def test_constructor_keywords_match_the_contract() -> None:
    params = inspect.signature(Pipeline).parameters
    assert next(iter(params)) == "video_reference"
    contract = {
        "model",
        "processing",
        "on_prediction",
        "on_frame",
        "max_fps",
        "source_buffer_filling_strategy",
        "source_buffer_consumption_strategy",
        "video_source_properties",
        "batch_collection_timeout",
        "decoding_buffer_size",
        "results_buffer_size",
        "realtime_replay",
        "inference",
    }
    assert contract <= set(params)
    assert all(params[name].kind is inspect.Parameter.KEYWORD_ONLY for name in contract)
    for method in ("start", "mute", "pause", "resume", "terminate", "join", "status", "results"):
        assert callable(getattr(Pipeline, method))
    assert isinstance(inspect.getattr_static(Pipeline, "finished"), property)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_fps": 0}, "max_fps"),
        ({"source_buffer_filling_strategy": "SOMETIMES"}, "source_buffer_filling_strategy"),
        ({"source_buffer_consumption_strategy": "GREEDY"}, "source_buffer_consumption_strategy"),
        ({"decoding_buffer_size": 0}, "decoding_buffer_size"),
        ({"batch_collection_timeout": -1}, "batch_collection_timeout"),
        ({"decoder": "gstreamer"}, "decoder"),
        ({"video_source_properties": [{}, {}]}, "video_source_properties"),
        ({"results_buffer_size": 0}, "results_buffer_size"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"model": "centerface", "processing": PassthroughSpec()}, "model or processing"),
    ],
)
def test_bad_arguments_are_invalid_payload_naming_the_field(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidPayloadError, match=message):
        Pipeline("rtsp://127.0.0.1:1/x", **kwargs)  # type: ignore[arg-type]


def test_strategies_accept_wire_strings_in_any_case() -> None:
    Pipeline(
        "rtsp://127.0.0.1:1/x",
        source_buffer_filling_strategy="drop_oldest",
        source_buffer_consumption_strategy="eager",
    )


def test_results_before_start_is_an_operation_error() -> None:
    pipeline = Pipeline("rtsp://127.0.0.1:1/x")
    with pytest.raises(OperationError, match="start"):
        next(pipeline.results())
    with pytest.raises(OperationError):
        pipeline.mute()
    pipeline.terminate()  # idempotent, harmless before start


def test_status_latencies_cover_the_last_results_within_ten_seconds_of_the_latest() -> None:
    """At 5 fps the last 256 results span 51 s: a status read after a 20 s run must not report
    the pipeline's start-up as its latency. Only results within 10 s of the latest count."""
    from framepipe.core.pipeline import _LATENCY_HORIZON_S, _Latencies, _newest, _recent_count

    lat = _Latencies()
    for done_at, age in [(0.0, 5.0), (1.0, 4.0), (20.0, 0.1), (25.0, 0.2), (30.0, 0.3)]:
        lat.e2e.append(age)
        lat.done_at.append(done_at)
    assert _LATENCY_HORIZON_S == 10.0
    assert _newest(lat.e2e, _recent_count(lat)) == [
        0.1,
        0.2,
        0.3,
    ]  # 20.0 is exactly 10 s before 30.0
    assert _recent_count(_Latencies()) == 0
    # a pipeline that stopped producing keeps the figures of its last 10 s of results
    lat.e2e.append(0.4)
    lat.done_at.append(100.0)
    assert _newest(lat.e2e, _recent_count(lat)) == [0.4]
