"""Parsing and validating video references."""

from __future__ import annotations

from pathlib import Path

import pytest

from framepipe.core.sources.entities import SourceKind
from framepipe.core.sources.reference import mask_credentials, parse_reference, parse_references
from framepipe.protocol.errors import InvalidPayloadError, NotFoundError


def test_file_reference(tmp_path: Path) -> None:
    video = tmp_path / "a.mp4"
    video.write_bytes(b"x")
    parsed = parse_reference(str(video))
    assert parsed.kind is SourceKind.FILE and parsed.is_file and not parsed.is_reconnectable
    assert parse_reference(f"file://{video}").target == str(video)


def test_missing_file_names_the_reference() -> None:
    with pytest.raises(NotFoundError, match=r"video_reference '/nonexistent/x\.mp4' not found"):
        parse_reference("/nonexistent/x.mp4")


def test_stream_and_webcam_references() -> None:
    rtsp = parse_reference("rtsp://user:secret@cam.local:554/live")
    assert rtsp.kind is SourceKind.STREAM and rtsp.is_reconnectable
    assert "secret" not in rtsp.masked and rtsp.masked == "rtsp://***:***@cam.local:554/live"
    assert parse_reference("https://example.com/clip.mp4").kind is SourceKind.FILE
    assert parse_reference("http://example.com/mjpeg").kind is SourceKind.STREAM
    assert parse_reference(0).kind is SourceKind.WEBCAM


def test_masking_of_query_secrets() -> None:
    masked = mask_credentials("rtsp://cam/x?user=a&password=hunter2&token=t0k")
    assert "hunter2" not in masked and "t0k" not in masked and "user=a" in masked


@pytest.mark.parametrize("bad", [None, 1.5, True, -1, "", "gopher://x/y", []])
def test_bad_references_are_invalid_payload(bad: object) -> None:
    with pytest.raises(InvalidPayloadError, match="video_reference"):
        parse_references(bad)


def test_list_of_references() -> None:
    parsed = parse_references(["rtsp://a/x", 1])
    assert [p.kind for p in parsed] == [SourceKind.STREAM, SourceKind.WEBCAM]
