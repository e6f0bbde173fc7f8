"""Imported last by the process template (the forkserver), after every module it preloads:
moves every object it holds into the collector's permanent generation (:func:`gc.freeze`).

Why: a process forked from the template shares the template's pages until it writes them, and
the first full collection in the child writes the header of every object it scans, so every
page holding an object became the child's own: ~9.5 MB of each decode process's 23 MB USS,
measured (``perf/bench_process_memory.py``). Frozen objects are never scanned, so those pages
stay shared. CPython's own advice for fork without exec ("freeze right before fork").

Importing this module anywhere else freezes that process's objects too (harmless: they are
only never collected), so only the template's preload list names it.
"""

from __future__ import annotations

import gc

gc.freeze()
