"""What each field of :class:`~framepipe.server.settings.ServerSettings` means, for the
configuration reference (``framepipe serve --help-settings`` and the README's table).

A table beside the settings rather than metadata on each field, so that adding a setting never
has to touch the lines of the others. ``tests/unit/test_settings_reference.py`` fails when a
field has no entry here, when an entry names a field that is gone, and when an entry's
environment variable does not set its field (each is set to its ``example`` and read back).
"""

from __future__ import annotations

from typing import NamedTuple


class SettingDoc(NamedTuple):
    env: str
    description: str
    example: str
    """A valid value, different from the default."""
    shown_default: str | None = None
    """How to show the default when the dataclass default is not what a user gets."""


SERVER_SETTINGS: dict[str, SettingDoc] = {
    "host": SettingDoc("STREAM_MANAGER_HOST", "address the TCP control plane binds", "0.0.0.0"),
    "port": SettingDoc("STREAM_MANAGER_PORT", "TCP port of the control plane (0: any)", "7071"),
    "max_ram_mb": SettingDoc(
        "STREAM_MANAGER_MAX_RAM_MB",
        "RAM budget in MB: workers and manager by unique memory, shared segments once (their "
        "resident pages), plus the new pipeline's frames in flight and the largest worker "
        "seen; rings grow beyond that only as the budget has room; unset: no limit",
        "4096",
    ),
    "ram_usage_queue_size": SettingDoc(
        "STREAM_MANAGER_RAM_USAGE_QUEUE_SIZE", "RAM samples kept per worker", "20"
    ),
    "preloaded_processes": SettingDoc(
        "STREAM_API_PRELOADED_PROCESSES", "idle workers kept started and imported", "2"
    ),
    "token": SettingDoc(
        "FRAMEPIPE_TOKEN",
        "shared token every request must carry (TCP: `auth_token`; HTTP: bearer); "
        "unset: none required",
        "s3cret",
    ),
    "command_timeout_s": SettingDoc(
        "FRAMEPIPE_COMMAND_TIMEOUT",
        "seconds a worker has to answer a command before it is killed and reported",
        "20",
    ),
    "init_timeout_s": SettingDoc(
        "FRAMEPIPE_INIT_TIMEOUT", "seconds an `init` may take (it opens the video)", "60"
    ),
    "spawn_timeout_s": SettingDoc(
        "FRAMEPIPE_SPAWN_TIMEOUT", "seconds a new worker has to report ready", "90"
    ),
    "terminate_timeout_s": SettingDoc(
        "FRAMEPIPE_TERMINATE_TIMEOUT",
        "seconds a pipeline has to terminate before its worker is killed",
        "20",
    ),
    "health_interval_s": SettingDoc(
        "FRAMEPIPE_HEALTH_INTERVAL", "seconds between two rounds of the health loop", "2"
    ),
    "source_open_timeout_s": SettingDoc(
        "FRAMEPIPE_SOURCE_OPEN_TIMEOUT",
        "seconds a source has to open (a live one keeps retrying with backoff)",
        "10",
    ),
    "source_read_timeout_s": SettingDoc(
        "FRAMEPIPE_SOURCE_READ_TIMEOUT",
        "seconds without a frame after which a live source is RESTARTING and reconnected; a "
        "decode process silent for twice the open and read timeouts together is killed (a live "
        "source's is replaced)",
        "5",
    ),
    "ended_linger_s": SettingDoc(
        "FRAMEPIPE_ENDED_LINGER",
        "seconds a finished pipeline stays listed once its last result was consumed, and a "
        "failed one once a client read its status",
        "30",
    ),
    "retention_s": SettingDoc(
        "FRAMEPIPE_RETENTION",
        "longest a finished pipeline with unread results (and no `consumption_timeout`) or an "
        "unread failed one stays listed",
        "300",
    ),
    "max_message_bytes": SettingDoc(
        "FRAMEPIPE_MAX_MESSAGE_BYTES",
        "largest TCP request the manager reads (refused from its header)",
        "2097152",
    ),
    "max_connections": SettingDoc(
        "FRAMEPIPE_MAX_CONNECTIONS",
        "TCP connections open at once; at the limit the oldest still sending is dropped",
        "1024",
    ),
    "max_pending_bytes": SettingDoc(
        "FRAMEPIPE_MAX_PENDING_BYTES",
        "bytes of requests above 64 kB being received or parsed at once (the rest wait)",
        "67108864",
    ),
    "max_json_depth": SettingDoc(
        "FRAMEPIPE_MAX_JSON_DEPTH", "deepest JSON nesting a request may have", "32"
    ),
    "max_json_items": SettingDoc(
        "FRAMEPIPE_MAX_JSON_ITEMS", "most JSON values (items) one request may hold", "10000"
    ),
    "allow_unauthenticated": SettingDoc(
        "FRAMEPIPE_ALLOW_UNAUTHENTICATED",
        "binding beyond loopback without a token is refused unless this is set (a warning "
        "is logged then)",
        "1",
    ),
    "max_ring_mb": SettingDoc(
        "FRAMEPIPE_MAX_RING_MB",
        "the largest frame ring one source may have, in MB: a video whose frames need more is "
        "refused (at admission from its declared or probed size, at the ring's creation from "
        "its real size, and when it changes size mid-stream); 0: no cap",
        "2048",
        shown_default="759.375 (32 4K frames)",
    ),
    "max_results_mb": SettingDoc(
        "FRAMEPIPE_MAX_RESULTS_MB",
        "MB of results one pipeline's result buffer holds at most, besides results_buffer_size "
        "(big image outputs: fewer of them; the oldest are dropped, or processing waits under "
        "WAIT); counted in the RAM budget; 0: no cap",
        "256",
    ),
    "max_reply_mb": SettingDoc(
        "FRAMEPIPE_MAX_REPLY_MB",
        "MB of results one consume_result reply carries at most: max_entries returns what "
        "fits (at least one entry) and says in entries_waiting how many are left; 0: no cap",
        "32",
    ),
    "allow_udp_streams": SettingDoc(
        "FRAMEPIPE_ALLOW_UDP_STREAMS",
        "stream URLs may be udp:// or rtp:// (FFmpeg binds local ports for them)",
        "1",
    ),
    "allow_private_streams": SettingDoc(
        "FRAMEPIPE_ALLOW_PRIVATE_STREAMS",
        "stream URLs and TURN servers may be on private, loopback and link-local addresses "
        "(cameras live on private networks); 0 keeps clients from making the server reach them",
        "0",
    ),
    "video_dirs": SettingDoc(
        "FRAMEPIPE_VIDEO_DIRS",
        "colon-separated directories a file video_reference must lie in (after resolving "
        "links); required beyond loopback; unset: any file",
        "/srv/videos",
    ),
    "tls_cert": SettingDoc(
        "FRAMEPIPE_TLS_CERT",
        "PEM certificate (chain) for TLS on the TCP port; unset: no TLS",
        "/etc/framepipe/cert.pem",
    ),
    "tls_key": SettingDoc("FRAMEPIPE_TLS_KEY", "its private key (PEM)", "/etc/framepipe/key.pem"),
    "read_timeout_s": SettingDoc(
        "FRAMEPIPE_READ_TIMEOUT", "seconds a TCP client has to send its whole request", "20"
    ),
    "event_loop": SettingDoc(
        "FRAMEPIPE_EVENT_LOOP",
        "`uvloop` or `asyncio`; auto: uvloop when installed",
        "asyncio",
        shown_default="auto",
    ),
    "preload_models": SettingDoc(
        "FRAMEPIPE_PRELOAD_MODELS",
        "comma-separated models whose inference services start with the manager (the first "
        "pipeline on one does not wait for it to load)",
        "centerface",
    ),
    "share_decoders": SettingDoc(
        "FRAMEPIPE_SHARE_DECODERS",
        "pipelines on the same video reference share one decode process and ring",
        "0",
    ),
    "webrtc_ice_addresses": SettingDoc(
        "FRAMEPIPE_WEBRTC_ICE_ADDRESSES",
        "WebRTC: comma-separated addresses offered as ICE host candidates; empty: every "
        "non-loopback interface",
        "127.0.0.1",
    ),
    "webrtc_connect_timeout_s": SettingDoc(
        "FRAMEPIPE_WEBRTC_CONNECT_TIMEOUT",
        "WebRTC: seconds a peer has to connect and send its first frame after the answer",
        "10",
    ),
}
