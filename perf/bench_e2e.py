#!/usr/bin/env python3
"""Streams per machine, end to end: framepipe against the classic architecture, in the same run.

A thin wrapper around ``framepipe bench`` (framepipe/bench/): N pipelines through the real
server against N streams through the usual decode-thread + pickled multiprocessing.Queue +
per-stream ONNX Runtime session design, N grown then bisected to the sustainable count.
``--json`` prints one JSON object as the last line, like the other benchmarks here.

    python perf/bench_e2e.py [--quick] [--json] [framepipe bench options]
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from framepipe.bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
