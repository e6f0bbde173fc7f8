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

import ipaddress
import os
import re
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit, urlunsplit

from framepipe.core.sources.entities import SourceKind
from framepipe.protocol.errors import InvalidPayloadError, NotFoundError

VideoReference = str | int

#: URL schemes of live streams framepipe opens (reconnect on a drop), each with the FFmpeg
#: protocols it may use (``protocol_whitelist``): nothing else is ever opened for it.
STREAM_PROTOCOLS: dict[str, str] = {
    "rtsp": "rtsp,tcp",
    "rtsps": "rtsps,tls,tcp",
    "http": "http,https,tcp,tls,crypto",  # an HLS stream's segments may be https, encrypted
    "https": "http,https,tcp,tls,crypto",
    "rtmp": "rtmp,tcp",
    "rtmps": "rtmps,tls,tcp",
    "srt": "srt",
}
#: Schemes that make FFmpeg bind local UDP ports: refused unless the server allows them
#: (``StreamPolicy.allow_udp``, FRAMEPIPE_ALLOW_UDP_STREAMS).
UDP_PROTOCOLS: dict[str, str] = {"udp": "udp", "rtp": "rtp,udp"}
LIVE_SCHEMES = frozenset(STREAM_PROTOCOLS) | frozenset(UDP_PROTOCOLS)
#: URL query options that make FFmpeg listen or bind instead of connect (tcp/udp/srt/rtmp
#: read options from the query): refused in any stream URL.
LISTEN_OPTIONS = frozenset(
    {"listen", "listen_timeout", "localport", "local_port", "localaddr", "rtmp_listen"}
)
#: FFmpeg demuxers a video *file* may be read with (``format_whitelist``): containers and
#: elementary streams that read the one file they are given. Playlists and other demuxers
#: that open further files or URLs (hls, dash, concat, image2 patterns, sdp...) are not in it.
FILE_DEMUXERS = ",".join(
    (
        "mov", "matroska", "webm", "avi", "mpegts", "mpegtsraw", "mpeg", "mpegvideo", "flv",
        "live_flv", "asf", "h261", "h263", "h264", "hevc", "vvc", "av1", "obu", "ivf", "m4v",
        "mjpeg", "mjpeg_2000", "mpjpeg", "smjpeg", "nut", "ogg", "mxf", "gif", "apng",
        "yuv4mpegpipe", "dv", "vc1", "cavsvideo", "dirac", "dnxhd", "wtv", "rm", "nuv",
        "jpeg_pipe", "png_pipe", "webp_pipe", "bmp_pipe", "gxf", "avs2", "avs3", "evc", "flic",
    )
)  # fmt: skip
TURN_SCHEMES = frozenset({"turn", "turns", "stun", "stuns"})
#: What a file that names other files starts with: refused with a message saying what it is.
_REFERENCING_FILES = (
    (b"#EXTM3U", "an HLS playlist"),
    (b"ffconcat", "an FFmpeg concat script"),
    (b"<?xml", "an XML document (a DASH manifest?)"),
    (b"<MPD", "a DASH manifest"),
    (b"v=0", "an SDP session description"),
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
class StreamPolicy:
    """What a stream URL may reach (the server's settings; see docs/RELIABILITY.md).

    ``allow_udp``: ``udp://`` and ``rtp://`` (they bind local ports). ``allow_private``: hosts
    on private, loopback and link-local addresses (cameras usually live on a private network;
    a server that takes requests from untrusted clients may forbid them, so that no client
    makes it probe the networks behind it)."""

    allow_udp: bool = False
    allow_private: bool = True


#: Used where no server policy applies (a program's own Pipeline): no udp restriction.
PERMISSIVE_STREAMS = StreamPolicy(allow_udp=True, allow_private=True)


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

    def ffmpeg_options(self) -> dict[str, str]:
        """The FFmpeg input options that confine what opening it may touch: only the protocols
        of its scheme (``file`` alone for a file), and for a file only demuxers that read the
        one file they are given."""
        if self.kind is SourceKind.WEBCAM:
            return {}
        target = str(self.target)
        if "://" not in target:
            return {"protocol_whitelist": "file", "format_whitelist": FILE_DEMUXERS}
        scheme = target.split("://", 1)[0].lower()
        protocols = STREAM_PROTOCOLS.get(scheme) or UDP_PROTOCOLS.get(scheme, scheme)
        options = {"protocol_whitelist": protocols}
        if self.kind is SourceKind.FILE:  # a video file over HTTP: no playlist either
            options["format_whitelist"] = FILE_DEMUXERS
        return options


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
    reference: object,
    *,
    video_dirs: Sequence[Path] | None = None,
    streams: StreamPolicy = PERMISSIVE_STREAMS,
) -> ParsedReference:
    """Validate one video reference; raise NotFoundError / InvalidPayloadError naming it.

    ``video_dirs``: when given, a file must lie inside one of these directories once symlinks
    and ``..`` are resolved (checked before the file is looked at, so a refusal says nothing
    about what exists elsewhere); V4L2 devices (``/dev/videoN``) and URLs are not files.
    ``streams``: what a stream URL may reach (its scheme, its host's addresses).
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
        _check_stream_url(parts, scheme, masked, streams)
        suffix = Path(parts.path).suffix.lower()
        if scheme in ("http", "https") and suffix in FILE_SUFFIXES:
            return ParsedReference(reference, SourceKind.FILE, text, masked)
        return ParsedReference(reference, SourceKind.STREAM, text, masked)
    return _file_reference(reference, text, video_dirs)


def _check_stream_url(parts: SplitResult, scheme: str, masked: str, streams: StreamPolicy) -> None:
    """A stream URL connects to a server: a documented scheme, no option that makes FFmpeg
    listen or bind, and (by the policy) no UDP and no private address."""
    shown = _shown(masked)
    if scheme in UDP_PROTOCOLS and not streams.allow_udp:
        raise InvalidPayloadError(
            f"video_reference {shown}: {scheme}:// streams bind local ports and are not allowed "
            "on this server (FRAMEPIPE_ALLOW_UDP_STREAMS=1 allows them); use rtsp:// or srt://"
        )
    if scheme not in LIVE_SCHEMES:
        supported = ["file", *sorted(STREAM_PROTOCOLS)]
        if streams.allow_udp:
            supported += sorted(UDP_PROTOCOLS)
        raise InvalidPayloadError(
            f"video_reference {shown} has an unsupported scheme {_shown(scheme)} "
            f"(supported: {', '.join(supported)})"
        )
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        name = key.strip().lower()
        srt_listens = scheme == "srt" and name == "mode" and value.strip().lower() != "caller"
        if name in LISTEN_OPTIONS or srt_listens:
            raise InvalidPayloadError(
                f"video_reference {shown} has the option {_shown(key)}, which would make the "
                "server listen or bind a local port; a stream URL may only connect to a server"
            )
    host = parts.hostname
    if not host:
        raise InvalidPayloadError(f"video_reference {shown} names no host")
    if not streams.allow_private:
        for address in _addresses(host, parts.port):
            if not address.is_global or address.is_multicast:
                raise InvalidPayloadError(
                    f"video_reference {shown}: host {_shown(host)} is a private, loopback or "
                    f"link-local address ({address}), which this server may not reach "
                    "(FRAMEPIPE_ALLOW_PRIVATE_STREAMS=1 allows them)"
                )


def _addresses(host: str, port: int | None) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address ``host`` stands for (an IP literal, or what the resolver gives)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise InvalidPayloadError(
            f"video_reference host {_shown(host)} cannot be resolved ({exc})"
        ) from None
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def check_turn_urls(urls: Sequence[str], streams: StreamPolicy) -> None:
    """A TURN/STUN server given by a client is reached by the server as a stream is: a
    ``turn:``/``turns:``/``stun:``/``stuns:`` URL, and the same address policy (no private or
    loopback address unless allowed). UDP is what TURN is: not subject to ``allow_udp``."""
    for url in urls:
        shown = _shown(url)
        scheme, _, rest = url.strip().partition(":")
        if scheme.lower() not in TURN_SCHEMES or not rest:
            raise InvalidPayloadError(
                f"webrtc_turn_config url {shown} is not a turn:, turns:, stun: or stuns: URL"
            )
        hostport = rest.split("?", 1)[0].lstrip("/")
        if hostport.startswith("["):
            host = hostport[1:].split("]", 1)[0]
        else:
            host = hostport.split(":", 1)[0]
        if not host:
            raise InvalidPayloadError(f"webrtc_turn_config url {shown} names no host")
        if streams.allow_private:
            continue
        for address in _addresses(host, None):
            if not address.is_global or address.is_multicast:
                raise InvalidPayloadError(
                    f"webrtc_turn_config url {shown}: host {_shown(host)} is a private, "
                    f"loopback or link-local address ({address}), which this server may not "
                    "reach (FRAMEPIPE_ALLOW_PRIVATE_STREAMS=1 allows them)"
                )


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
        _check_not_referencing(resolved, shown)
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


def _check_not_referencing(path: Path, shown: str) -> None:
    """A playlist or script names other files (or URLs), which would escape the video
    directories: refused, saying what it is (FFmpeg's ``format_whitelist`` refuses any other
    such demuxer when the file is opened)."""
    try:
        with open(path, "rb") as file:
            head = file.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError as exc:
        raise InvalidPayloadError(
            f"video_reference {shown} cannot be read: {exc.strerror or exc}"
        ) from None
    for signature, what in _REFERENCING_FILES:
        if head.startswith(signature):
            raise InvalidPayloadError(
                f"video_reference {shown} is {what}, which names other files or URLs; "
                "playlists are not read from files: give the video file itself"
            )


def parse_references(
    video_reference: object,
    *,
    video_dirs: Sequence[Path] | None = None,
    streams: StreamPolicy = PERMISSIVE_STREAMS,
) -> list[ParsedReference]:
    """A single reference or a non-empty list of them."""
    if isinstance(video_reference, list | tuple):
        if not video_reference:
            raise InvalidPayloadError("video_reference list is empty")
        return [
            parse_reference(item, video_dirs=video_dirs, streams=streams)
            for item in video_reference
        ]
    return [parse_reference(video_reference, video_dirs=video_dirs, streams=streams)]
