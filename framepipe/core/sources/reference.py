"""What a ``video_reference`` names: a file, a live stream URL or a webcam index.

Validation happens here, before any process starts, so that a wrong reference is a clear
error naming it (``video_reference '/x.mp4' not found``) and costs nothing.
"""

from __future__ import annotations

import re
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

    @property
    def is_url(self) -> bool:
        return isinstance(self.target, str) and "://" in self.target


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


def parse_reference(reference: object) -> ParsedReference:
    """Validate one video reference; raise NotFoundError / InvalidPayloadError naming it."""
    if isinstance(reference, bool) or not isinstance(reference, (str, int)):
        raise InvalidPayloadError(
            f"video_reference must be a path, a URL or a webcam index, got {type(reference).__name__}"
        )
    if isinstance(reference, int):
        if reference < 0:
            raise InvalidPayloadError(f"video_reference webcam index must be >= 0, got {reference}")
        return ParsedReference(reference, SourceKind.WEBCAM, reference, f"webcam:{reference}")
    text = reference.strip()
    if not text:
        raise InvalidPayloadError("video_reference is empty")
    if "://" in text:
        masked = mask_credentials(text)
        scheme = text.split("://", 1)[0].lower()
        if scheme == "file":
            return _file_reference(reference, unquote(urlsplit(text).path))
        if scheme not in LIVE_SCHEMES:
            raise InvalidPayloadError(
                f"video_reference {masked!r} has an unsupported scheme {scheme!r} "
                f"(supported: file, {', '.join(sorted(LIVE_SCHEMES))})"
            )
        suffix = Path(urlsplit(text).path).suffix.lower()
        if scheme in ("http", "https") and suffix in FILE_SUFFIXES:
            return ParsedReference(reference, SourceKind.FILE, text, masked)
        return ParsedReference(reference, SourceKind.STREAM, text, masked)
    return _file_reference(reference, text)


def _file_reference(original: str, path_text: str) -> ParsedReference:
    path = Path(path_text).expanduser()
    if not path.exists():
        raise NotFoundError(f"video_reference {path_text!r} not found")
    if path.is_dir():  # as a missing file is: the source will be in ERROR, saying why
        raise NotFoundError(f"video_reference {path_text!r} is a directory, not a video file")
    if not path.is_file() and not path.is_char_device():
        raise InvalidPayloadError(f"video_reference {path_text!r} is not a file")
    if path.is_char_device():  # /dev/videoN
        return ParsedReference(original, SourceKind.WEBCAM, str(path), str(path))
    return ParsedReference(original, SourceKind.FILE, str(path.resolve()), path_text)


def parse_references(video_reference: object) -> list[ParsedReference]:
    """A single reference or a non-empty list of them."""
    if isinstance(video_reference, list | tuple):
        if not video_reference:
            raise InvalidPayloadError("video_reference list is empty")
        return [parse_reference(item) for item in video_reference]
    return [parse_reference(video_reference)]
