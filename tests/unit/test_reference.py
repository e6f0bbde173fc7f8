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


# --- what a decoder cannot read is refused, with a message saying what it is --------------


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/random", "/dev/urandom"])
def test_character_devices_other_than_cameras_are_refused(device: str) -> None:
    if not Path(device).exists():
        pytest.skip(f"{device} is not present here")
    with pytest.raises(InvalidPayloadError, match=r"not a video capture device.*/dev/video0"):
        parse_reference(device)


def test_a_v4l2_device_node_is_a_webcam(tmp_path: Path) -> None:
    import os
    import stat

    node = tmp_path / "camera"
    try:
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(81, 0))  # V4L2's major number
    except PermissionError:
        pytest.skip("creating a device node needs root")
    parsed = parse_reference(str(node))
    assert parsed.kind is SourceKind.WEBCAM and parsed.target == str(node)


@pytest.mark.parametrize(("kind", "what"), [("fifo", "named pipe"), ("socket", "a socket")])
def test_fifos_and_sockets_are_refused(tmp_path: Path, kind: str, what: str) -> None:
    import os
    import socket

    target = tmp_path / "thing"
    with socket.socket(socket.AF_UNIX) as sock:
        if kind == "fifo":
            os.mkfifo(target)
        else:
            sock.bind(str(target))
        with pytest.raises(InvalidPayloadError, match=what):
            parse_reference(str(target))


def test_a_directory_is_not_found_like_a_missing_file(tmp_path: Path) -> None:
    """Not refused: the pipeline reports the source in ERROR, saying why (as the reference)."""
    with pytest.raises(NotFoundError, match="is a directory, not a video file"):
        parse_reference(str(tmp_path))


def test_names_the_os_cannot_look_up_are_invalid_never_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidPayloadError, match="cannot be opened: File name too long"):
        parse_reference("/" + "a" * 300 + ".mp4")
    with pytest.raises(InvalidPayloadError, match="limit is 4096"):
        parse_reference("/x" * 5000)
    loop = tmp_path / "loop.mp4"
    loop.symlink_to(loop)
    with pytest.raises(InvalidPayloadError, match=r"loop\.mp4"):
        parse_reference(str(loop))
    with pytest.raises(InvalidPayloadError, match="control character"):
        parse_reference("clip\x00.mp4")
    with pytest.raises(InvalidPayloadError, match="not a valid URL"):
        parse_reference("http://[::1/stream")
    with pytest.raises(InvalidPayloadError, match=r"within 0\.\.255"):
        parse_reference(10**20)


def test_error_messages_quote_long_references_short() -> None:
    with pytest.raises(InvalidPayloadError) as caught:
        parse_reference("/" + "b" * 3000)
    assert len(caught.value.message) < 400


# --- video directories ---------------------------------------------------------------------


@pytest.fixture
def video_dirs(tmp_path: Path) -> tuple[Path, Path]:
    allowed = tmp_path / "videos"
    allowed.mkdir()
    (allowed / "clip.mp4").write_bytes(b"x")
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(b"x")
    return allowed, outside


def test_files_inside_the_video_dirs_are_accepted(video_dirs: tuple[Path, Path]) -> None:
    allowed, _ = video_dirs
    parsed = parse_reference(str(allowed / "clip.mp4"), video_dirs=[allowed])
    assert parsed.kind is SourceKind.FILE
    assert parse_reference(f"file://{allowed}/clip.mp4", video_dirs=[allowed]).is_file
    # not there: still the usual not-found (the pipeline reports the source in ERROR)
    with pytest.raises(NotFoundError):
        parse_reference(str(allowed / "later.mp4"), video_dirs=[allowed])


@pytest.mark.parametrize(
    "escape",
    [
        "{outside}/secret.mp4",
        "{allowed}/../private/secret.mp4",
        "file://{outside}/secret.mp4",
        "{allowed}/link.mp4",  # a symlink inside, pointing outside
        "/etc/passwd",
        "/nonexistent/anything.mp4",  # outside and missing: refused, not "not found"
    ],
)
def test_files_outside_the_video_dirs_are_refused(
    video_dirs: tuple[Path, Path], escape: str
) -> None:
    allowed, outside = video_dirs
    (allowed / "link.mp4").symlink_to(outside / "secret.mp4")
    reference = escape.format(allowed=allowed, outside=outside)
    with pytest.raises(InvalidPayloadError, match="outside the video directories") as caught:
        parse_reference(reference, video_dirs=[allowed])
    assert str(allowed) in caught.value.message


def test_streams_and_webcams_are_not_files_for_the_video_dirs(
    video_dirs: tuple[Path, Path],
) -> None:
    allowed, _ = video_dirs
    assert parse_reference("rtsp://cam/1", video_dirs=[allowed]).kind is SourceKind.STREAM
    assert parse_reference(0, video_dirs=[allowed]).kind is SourceKind.WEBCAM
    assert parse_references(["rtsp://cam/1", 2], video_dirs=[allowed])
