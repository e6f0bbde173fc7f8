"""RAM accounting for pipeline admission.

The reference summed RSS, which counts every shared page (libraries, shared memory) once per
process that maps it, and ignored the frame rings altogether. Here:

* a process is counted by its *unique* memory (USS: the pages only it maps);
* each ``fp-*`` segment in /dev/shm owned by the manager's process tree is counted once, by the
  blocks it really occupies;
* a new pipeline is predicted to need the resident floor of its rings (their metadata and
  frames in flight, computed from its configuration: :func:`~framepipe.core.sources.sizing.
  ring_floor_bytes`) plus as much private memory as the largest worker observed so far;
* a ring grows beyond its floor at run time only by what the budget grants: after each
  measurement the manager sets the shared growth account's headroom to
  :meth:`RamBudget.growth_headroom_bytes` (:mod:`framepipe.core.growth`), so growth and
  admissions draw on the same limit, and a ring refused growth waits (backpressure).

:meth:`RamBudget.admit` raises :class:`RamBudgetExceededError` naming the numbers when the total
would pass the limit, and :class:`ShmExhaustedError` when /dev/shm has no room for the new rings
(both :class:`~framepipe.protocol.errors.CapacityError`, an ``operation_error`` on the wire).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from framepipe.errors import RamBudgetExceededError, ShmExhaustedError

MB = 1024 * 1024
SHM_DIR = Path("/dev/shm")
_SEGMENT_PREFIXES = ("fp-", "sem.fp-")
# Used as the "largest observed worker" before any worker was measured.
DEFAULT_WORKER_MB = 150.0


def process_unique_bytes(pid: int) -> int:
    """Private (unique) memory of one process: its USS.

    Reads ``/proc/<pid>/smaps_rollup`` (one kernel-summed record, cheap enough to sample every
    second for many workers). A framepipe ring is mapped by its producer and its consumers, so
    its pages are shared and not counted here; segments are counted once by
    :func:`shared_segments_bytes`. Falls back to psutil where the rollup is not readable.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            total = 0
            for line in rollup:
                if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
            return total
    except (FileNotFoundError, ProcessLookupError):
        return 0
    except OSError:
        try:
            return int(psutil.Process(pid).memory_full_info().uss)
        except psutil.Error:
            return 0


def process_unique_bytes_outside_segments(pid: int) -> int:
    """A process's USS less the pages of the ``fp-*`` segments it alone maps.

    A ring's segment is sparse (:mod:`framepipe.core.ring`): a page is mapped by the processes
    that touched it, and one that only the decoder writes (a passthrough pipeline's worker never
    reads the pixels) is private to the decoder, so :func:`process_unique_bytes` counts it
    besides the segment's blocks. This counts every page once; it reads the whole
    ``/proc/<pid>/smaps`` (several times the cost of the rollup), so it is for one-off
    measurements (``framepipe bench``), not the budget's periodic sampling (which over-counts,
    the safe side).
    """
    total = 0
    in_segment = False
    try:
        with open(f"/proc/{pid}/smaps", "rb") as smaps:
            for line in smaps:
                if line[:1] in b"0123456789abcdef" and b"-" in line.split(b" ", 1)[0]:
                    fields = line.split()
                    path = fields[5] if len(fields) > 5 else b""
                    in_segment = path.startswith(b"/dev/shm/" + _SEGMENT_PREFIXES[0].encode())
                elif not in_segment and line.startswith((b"Private_Clean:", b"Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return 0
    except OSError:
        return process_unique_bytes(pid)
    return total


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids of every process, from one pass over /proc.

    Built once per measurement and shared by every worker's tree: psutil's ``children()``
    scans all of /proc on each call, which costs milliseconds per worker on a busy machine.
    """
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def tree_pids(pid: int, children: dict[int, list[int]] | None = None) -> set[int]:
    """A process and all its descendants (empty when it is gone)."""
    children = children_map() if children is None else children
    if not os.path.exists(f"/proc/{pid}"):
        return set()
    found = {pid}
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), ()):
            if child not in found:
                found.add(child)
                pending.append(child)
    return found


def segment_owner_pid(name: str) -> int | None:
    """The owner pid in ``fp-<pid>-<id>`` / ``sem.fp-<pid>-<id>`` (None for other names)."""
    stem = name.removeprefix("sem.")
    if not stem.startswith("fp-"):
        return None
    pid_text = stem[3:].split("-", 1)[0]
    return int(pid_text) if pid_text.isdigit() else None


def shared_segments_bytes(owner_pids: Collection[int], shm_dir: Path = SHM_DIR) -> int:
    """Blocks occupied by the ``fp-*`` segments whose owner is one of ``owner_pids``."""
    total = 0
    try:
        names = os.listdir(shm_dir)
    except FileNotFoundError:
        return 0
    for name in names:
        if not name.startswith(_SEGMENT_PREFIXES) or segment_owner_pid(name) not in owner_pids:
            continue
        try:
            total += os.stat(shm_dir / name).st_blocks * 512
        except FileNotFoundError:
            continue
    return total


def shm_free_bytes(shm_dir: Path = SHM_DIR) -> int:
    """Room left in the shared-memory filesystem."""
    return shutil.disk_usage(shm_dir).free


@dataclass(frozen=True)
class MemoryUsage:
    """What is in use now, in MB."""

    manager_mb: float
    workers_mb: float
    shared_segments_mb: float
    shm_free_bytes: int | None = None  # room left in /dev/shm (None: not measured)

    @property
    def total_mb(self) -> float:
        return self.manager_mb + self.workers_mb + self.shared_segments_mb


@dataclass(frozen=True)
class Admission:
    """A granted admission, with the figures it was decided on."""

    usage: MemoryUsage
    predicted_mb: float
    max_ram_mb: float | None


class RamBudget:
    """Admission control for new pipelines against ``STREAM_MANAGER_MAX_RAM_MB``."""

    def __init__(self, max_ram_mb: float | None) -> None:
        self.max_ram_mb = max_ram_mb

    def admit(
        self,
        *,
        usage: MemoryUsage,
        worker_samples_mb: Iterable[Sequence[float]],
        new_rings_bytes: int,
        reused_worker_mb: float | None = None,
        results_bytes: int = 0,
    ) -> Admission:
        """Admit a pipeline whose rings take ``new_rings_bytes``, or raise.

        ``worker_samples_mb`` are the recent unique-memory samples of every worker (the RAM
        windows); the largest sample is the prediction for the new worker. When the new pipeline
        reuses an idle worker already counted in ``usage`` (``reused_worker_mb``), only the growth
        up to that largest size is predicted. ``results_bytes``: what the new pipeline's result
        buffer may hold (its byte cap), charged on top of the worker.
        """
        free = usage.shm_free_bytes
        if free is not None and new_rings_bytes > free:
            raise ShmExhaustedError(
                f"Cannot start the pipeline: its frame rings need {new_rings_bytes / MB:.1f} MB "
                f"of shared memory and {SHM_DIR} has {free / MB:.1f} MB free."
            )
        largest = max(
            (max(window) for window in worker_samples_mb if window), default=DEFAULT_WORKER_MB
        )
        worker_mb = largest if reused_worker_mb is None else max(0.0, largest - reused_worker_mb)
        predicted = new_rings_bytes / MB + results_bytes / MB + worker_mb
        if self.max_ram_mb is not None and usage.total_mb + predicted > self.max_ram_mb:
            raise RamBudgetExceededError(
                "Cannot start a new pipeline: not enough RAM in the budget. "
                f"In use: {usage.total_mb:.1f} MB (manager {usage.manager_mb:.1f} MB, "
                f"workers {usage.workers_mb:.1f} MB, shared segments {usage.shared_segments_mb:.1f} MB); "
                f"predicted for the new pipeline: {predicted:.1f} MB "
                f"(rings {new_rings_bytes / MB:.1f} MB + "
                + (f"result buffer {results_bytes / MB:.1f} MB + " if results_bytes else "")
                + f"worker {worker_mb:.1f} MB); "
                f"limit STREAM_MANAGER_MAX_RAM_MB={self.max_ram_mb:.1f} MB."
            )
        return Admission(usage=usage, predicted_mb=predicted, max_ram_mb=self.max_ram_mb)

    def growth_headroom_bytes(self, usage: MemoryUsage, reserved_mb: float = 0.0) -> int | None:
        """What rings may still grow by at run time: the limit less what is in use (resident
        segments included) and less ``reserved_mb`` (admissions in progress), and no more than
        /dev/shm has free. None without a limit (growth bounded by capacity and /dev/shm)."""
        if self.max_ram_mb is None:
            return None
        headroom = int((self.max_ram_mb - usage.total_mb - reserved_mb) * MB)
        if usage.shm_free_bytes is not None:
            headroom = min(headroom, usage.shm_free_bytes)
        return max(0, headroom)
