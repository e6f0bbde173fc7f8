"""What a ``video_reference`` names: a file, a live stream URL or a webcam index.

Validation happens here, before any process starts, so that a wrong reference is a clear
error naming it (``video_reference '/x.mp4' not found``) and costs nothing. Only what a decoder
can read is accepted: a regular file, a stream URL, a webcam index or a V4L2 character device
(``/dev/videoN``). Other character devices (``/dev/zero`` would be "decoded" forever),
FIFOs (opening one blocks), sockets and block devices are refused, as are paths the OS cannot
look up (too long, a symlink loop); the server may also confine files to configured
directories. A missing file, or a directory, is NotFoundError: a pipeline reports that source
in ERROR (as the reference does), it is not refused.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from framepipe.core.sources.entities import SourceKind
from framepipe.protocol.errors import InvalidPayloadError, NotFoundError

VideoReference = str | int

#: URL schemes of live streams FFmpeg opens (reconnect on a drop).
LIVE_SCHEMES = frozenset(
    {"rtsp", "rtsps", "rtmp", "rtmps", "rtp", "udp", "tcp", "srt", "http", "https"}
)
#: A URL whose path ends like this is a remote file: it ends, and is not reconnected.
FILE_SUFFIXES = frozenset(
    {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts", ".mpg", ".mpeg", ".flv"}
)
#: Character devices of this major number are V4L2 (video4linux) devices: /dev/videoN.
V4L2_MAJOR = 81
MAX_WEBCAM_INDEX = 255
MAX_REFERENCE_LENGTH = 4096
_V4L2_NAME = re.compile(r"/dev/video\d+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SECRET_QUERY = re.compile(
    r"((?:password|passwd|pwd|token|key|secret|signature)=)[^&]*", re.IGNORECASE
)


@dataclass(frozen=True)
class ParsedReference:
    """A validated video reference."""

    original: VideoReference
    kind: SourceKind
    target: str | int  # path, URL, or webcam index handed to the decoder
    masked: str  # safe to log and report: credentials replaced by ***

    @property
    def is_file(self) -> bool:
        return self.kind is SourceKind.FILE

    @property
    def is_live(self) -> bool:
        return not self.is_file

    @property
    def is_reconnectable(self) -> bool:
        return self.kind is SourceKind.STREAM


def mask_credentials(reference: str) -> str:
    """``rtsp://user:pass@host/x?token=t`` → ``rtsp://***:***@host/x?token=***``."""
    if "://" not in reference:
        return reference
    try:
        parts = urlsplit(reference)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = ("***:***@" if ":" in userinfo else "***@") + host
    query = _SECRET_QUERY.sub(r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def parse_reference(
    reference: object, *, video_dirs: Sequence[Path] | None = None
) -> ParsedReference:
    """Validate one video reference; raise NotFoundError / InvalidPayloadError naming it.

    ``video_dirs``: when given, a file must lie inside one of these directories once symlinks
    and ``..`` are resolved (checked before the file is looked at, so a refusal says nothing
    about what exists elsewhere); V4L2 devices (``/dev/videoN``) and URLs are not files.
    """
    if isinstance(reference, bool) or not isinstance(reference, (str, int)):
        raise InvalidPayloadError(
            f"video_reference must be a path, a URL or a webcam index, got {type(reference).__name__}"
        )
    if isinstance(reference, int):
        if not 0 <= reference <= MAX_WEBCAM_INDEX:
            raise InvalidPayloadError(
                f"video_reference webcam index must be within 0..{MAX_WEBCAM_INDEX}, "
                f"got {reference}"
            )
        return ParsedReference(reference, SourceKind.WEBCAM, reference, f"webcam:{reference}")
    text = reference.strip()
    if not text:
        raise InvalidPayloadError("video_reference is empty")
    if len(text) > MAX_REFERENCE_LENGTH:
        raise InvalidPayloadError(
            f"video_reference {_shown(text)} is {len(text)} characters long; the limit is "
            f"{MAX_REFERENCE_LENGTH}"
        )
    if _CONTROL.search(text):
        raise InvalidPayloadError(
            f"video_reference {_shown(text)} contains a control character; a path or URL never does"
        )
    if "://" in text:
        masked = mask_credentials(text)
        scheme = text.split("://", 1)[0].lower()
        try:
            parts = urlsplit(text)
        except ValueError as exc:
            raise InvalidPayloadError(
                f"video_reference {_shown(masked)} is not a valid URL ({exc})"
            ) from None
        if scheme == "file":
            return _file_reference(reference, unquote(parts.path), video_dirs)
        if scheme not in LIVE_SCHEMES:
            raise InvalidPayloadError(
                f"video_reference {_shown(masked)} has an unsupported scheme {_shown(scheme)} "
                f"(supported: file, {', '.join(sorted(LIVE_SCHEMES))})"
            )
        suffix = Path(parts.path).suffix.lower()
        if scheme in ("http", "https") and suffix in FILE_SUFFIXES:
            return ParsedReference(reference, SourceKind.FILE, text, masked)
        return ParsedReference(reference, SourceKind.STREAM, text, masked)
    return _file_reference(reference, text, video_dirs)


def _shown(text: str) -> str:
    """A reference quoted in an error message: cut short, never kilobytes of it."""
    return repr(text) if len(text) <= 120 else repr(text[:117] + "...")


def _inside(path: Path, directories: Sequence[Path]) -> bool:
    return any(path.is_relative_to(directory) for directory in directories)


def _file_reference(
    original: str, path_text: str, video_dirs: Sequence[Path] | None
) -> ParsedReference:
    shown = _shown(path_text)
    try:
        path = Path(path_text).expanduser()
        resolved = Path(os.path.realpath(path))
    except (RuntimeError, OSError, ValueError) as exc:  # "~nobody", a loop, a NUL byte
        raise InvalidPayloadError(f"video_reference {shown} is not a usable path ({exc})") from None
    if (
        video_dirs is not None
        and not _inside(resolved, video_dirs)
        and not _V4L2_NAME.fullmatch(str(resolved))
    ):
        allowed = ", ".join(str(d) for d in video_dirs) or "(none)"
        raise InvalidPayloadError(
            f"video_reference {shown} is outside the video directories this stream manager may "
            f"read ({allowed}); put the video in one of them"
        )
    try:
        status = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFoundError(f"video_reference {shown} not found") from None
    except OSError as exc:  # ENAMETOOLONG, ELOOP, EACCES...
        raise InvalidPayloadError(
            f"video_reference {shown} cannot be opened: {exc.strerror or exc}"
        ) from None
    mode = status.st_mode
    if stat.S_ISDIR(mode):  # as a missing file is: the source will be in ERROR, saying why
        raise NotFoundError(f"video_reference {shown} is a directory, not a video file")
    if stat.S_ISREG(mode):
        return ParsedReference(original, SourceKind.FILE, str(resolved), path_text)
    if stat.S_ISCHR(mode):
        if os.major(status.st_rdev) == V4L2_MAJOR:  # /dev/videoN, or a udev link to one
            return ParsedReference(original, SourceKind.WEBCAM, str(path), str(path))
        raise InvalidPayloadError(
            f"video_reference {shown} is a character device but not a video capture device; "
            "a webcam is an index (0, 1, ...) or a V4L2 device such as /dev/video0"
        )
    kind = (
        "a named pipe (FIFO)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a block device"
        if stat.S_ISBLK(mode)
        else "not a regular file"
    )
    raise InvalidPayloadError(
        f"video_reference {shown} is {kind}; give a video file, a stream URL or a webcam"
    )


def parse_references(
    video_reference: object, *, video_dirs: Sequence[Path] | None = None
) -> list[ParsedReference]:
    """A single reference or a non-empty list of them."""
    if isinstance(video_reference, list | tuple):
        if not video_reference:
            raise InvalidPayloadError("video_reference list is empty")
        return [parse_reference(item, video_dirs=video_dirs) for item in video_reference]
    return [parse_reference(video_reference, video_dirs=video_dirs)]
