"""``framepipe bench``: how many camera streams this machine carries through framepipe, how fresh
the results are and how much memory it takes — against the classic architecture, in the same run.

For each stream count N: N pipelines through the real server (``framepipe serve`` started on a
free port, driven over TCP by :mod:`framepipe.client`), and N streams through the classic
design most Python video-inference services use (a decode thread per stream, frames pickled
through a ``multiprocessing.Queue`` to an inference process with its own ONNX Runtime session,
results back through a queue). N grows 1, 2, 4, … then is bisected to the *sustainable* count.
What each figure means and how it is measured: :mod:`framepipe.bench.results`.

    framepipe bench --quick --json        # under a minute: does everything work here?
    framepipe bench                       # 720p30, passthrough and centerface at 5 fps
    framepipe bench --model NAME --video rtsp://camera/stream

From Python: ``run_bench(BenchConfig(out_dir=..., cache_dir=...))``. Plots need the ``bench``
extra (matplotlib).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from framepipe._lazy import lazy_getattr
from framepipe.bench.config import BenchConfig, Criteria, Layout, SourceMode

if TYPE_CHECKING:
    from framepipe.bench._app import run_bench

__all__ = ["BenchConfig", "Criteria", "Layout", "SourceMode", "run_bench"]


# The package stays light to import: `framepipe` builds its command line from
# framepipe.bench.cli at every start, and the classic baseline's app process must fork its
# inference processes before numpy or OpenCV start threads.
__getattr__ = lazy_getattr(__name__, {"run_bench": "framepipe.bench._app"})
