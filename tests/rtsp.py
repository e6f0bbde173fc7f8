"""The test RTSP server, as the tests import it; it lives in :mod:`framepipe.testing.rtsp`
(``framepipe bench`` uses it too, and a product feature cannot import tests)."""

from framepipe.testing.rtsp import (
    SERVER_SCRIPT,
    SYSTEM_PYTHON,
    RtspServer,
    free_port,
    system_python_has_gst_rtsp,
)

__all__ = [
    "SERVER_SCRIPT",
    "SYSTEM_PYTHON",
    "RtspServer",
    "free_port",
    "system_python_has_gst_rtsp",
]
