"""Thread names, as /proc shows them (``/proc/<pid>/task/<tid>/comm``).

The classic baseline names its threads before it creates what runs in them; threads inherit
their creator's name, so the codec's and ONNX Runtime's threads carry the name of the thread
that started them, and the bench tells decode CPU and model CPU apart from the outside.
"""

from __future__ import annotations

import ctypes

_PR_SET_NAME = 15


def set_thread_name(name: str) -> None:
    """Name the calling thread (at most 15 bytes are kept)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
