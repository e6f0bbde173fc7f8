"""CPU and memory of a whole process tree, by kind of process (and, where asked, by thread).

Everything is read from the outside, the same way for framepipe's server and for the classic
baseline: the CPU a process (or thread) used is its user + system time (psutil; the kernel
counts it in clock ticks, 10 ms), the memory it alone holds is its USS (``smaps_rollup``, as
framepipe's RAM budget reads it), and shared memory is the blocks of the ``fp-*`` segments in
/dev/shm that a process of the tree owns. A window's CPU is the difference between a sample at its start and one at its end;
processes seen in between are sampled every second, so one that exits inside the window
still counts with what it used until its last sample.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from framepipe.core.budget import (
    process_unique_bytes_outside_segments,
    shared_segments_bytes,
)


class Kind:
    """Names of process kinds (strings, so each architecture can name its own)."""

    MANAGER = "manager"
    WORKER = "worker"
    DECODER = "decoder"
    SERVICE = "inference service"
    OTHER = "other"
    # the classic baseline
    APP = "app (decode threads, collector)"
    INFERENCE = "inference process"


# thread groups (by the thread's name, /proc/<pid>/task/<tid>/comm)
DECODE = "decode"
MODEL = "model"


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    cmdline: str
    comm: str


#: (process, its parent or None, the tree's root pid) -> kind
Classifier = Callable[[ProcessInfo, "ProcessInfo | None", int], str]
#: thread name -> thread group (or None: not split out)
ThreadGrouper = Callable[[str], "str | None"]


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return None


def process_info(pid: int) -> ProcessInfo | None:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return ProcessInfo(pid, proc.ppid(), " ".join(proc.cmdline()), proc.name())
    except psutil.Error:
        return None


def _listening_service_inodes() -> set[str]:
    """Inodes of listening AF_UNIX sockets named like an inference service's address
    (``@framepipe-<pid>-svc-…`` in the abstract namespace)."""
    inodes = set()
    text = _read("/proc/net/unix") or ""
    for line in text.splitlines()[1:]:
        fields = line.split()
        # Num RefCount Protocol Flags Type St Inode [Path]; __SO_ACCEPTCON = 0x10000
        if len(fields) >= 8 and "-svc-" in fields[7] and int(fields[3], 16) & 0x10000:
            inodes.add(fields[6])
    return inodes


def _holds_socket(pid: int, inodes: set[str]) -> bool:
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def classify_framepipe(proc: ProcessInfo, parent: ProcessInfo | None, root: int) -> str:
    """The kinds of process in ``framepipe serve``'s tree, told apart from the outside:
    decode processes and pipeline workers are forked by the template (a forkserver), a
    worker names itself ``fp-worker``; the manager spawns inference services (and, before
    workers came from the template, workers), and a service is the one that listens on a
    service address (or names itself ``service``)."""
    if proc.pid == root:
        return Kind.MANAGER
    cmd = proc.cmdline
    if "service" in proc.comm.lower():
        return Kind.SERVICE
    if proc.comm == "fp-worker":
        return Kind.WORKER
    if "resource_tracker" in cmd:
        return Kind.OTHER
    if parent is not None and "forkserver" in parent.cmdline:
        return Kind.DECODER
    if "forkserver" in cmd:
        return Kind.OTHER  # the decode processes' forkserver (imports done, forks on demand)
    if "spawn_main" in cmd or "multiprocessing-fork" in cmd:
        if proc.ppid == root and _holds_socket(proc.pid, _listening_service_inodes()):
            return Kind.SERVICE
        return Kind.WORKER
    return Kind.OTHER


def classify_classic(proc: ProcessInfo, parent: ProcessInfo | None, root: int) -> str:
    if proc.pid == root:
        return Kind.APP
    if "resource_tracker" in proc.cmdline or "forkserver" in proc.cmdline:
        return Kind.OTHER
    return Kind.INFERENCE


def group_classic_thread(name: str) -> str | None:
    """The classic baseline names its threads before it creates what runs in them, and
    threads inherit the creating thread's name: FFmpeg's threads (``av:…`` or inherited
    ``bl-decode``) belong to a decode thread, ONNX Runtime's pool to ``bl-model``."""
    if name.startswith(("bl-decode", "av:")):
        return DECODE
    if name.startswith("bl-model"):
        return MODEL
    return None


@dataclass
class _Seen:
    kind: str
    proc: psutil.Process
    start: float  # CPU seconds at the window's start (0 for a process born inside it)
    last: float


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


@dataclass
class CpuWindow:
    """CPU seconds used inside one window, by process kind and by thread group."""

    window_s: float  # wall-clock length of the window
    seconds: float
    by_kind: dict[str, float]
    by_group: dict[str, float]
    processes: dict[str, int]  # how many processes of each kind were seen


@dataclass
class MemorySample:
    uss_by_kind: dict[str, int]
    processes: dict[str, int]
    shm_bytes: int

    @property
    def uss_bytes(self) -> int:
        return sum(self.uss_by_kind.values())

    @property
    def total_bytes(self) -> int:
        return self.uss_bytes + self.shm_bytes


@dataclass
class TreeSampler:
    """Samples one process tree; :meth:`begin` / :meth:`end` bracket a window."""

    root: int
    classify: Classifier
    group_thread: ThreadGrouper | None = None
    interval_s: float = 1.0
    _procs: dict[int, _Seen] = field(default_factory=dict)
    _threads: dict[tuple[int, int], tuple[str, float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _known_kinds: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _began_at: float = 0.0

    def tree(self) -> dict[int, ProcessInfo]:
        try:
            root = psutil.Process(self.root)
            pids = [self.root, *(child.pid for child in root.children(recursive=True))]
        except psutil.Error:
            return {}
        infos = {pid: process_info(pid) for pid in pids}
        return {pid: info for pid, info in infos.items() if info is not None}

    def _kinds(self, infos: dict[int, ProcessInfo]) -> dict[int, str]:
        """Each process's kind, decided once per process (a pid is not reused within a run)."""
        kinds = {}
        for pid, info in infos.items():
            kind = self._known_kinds.get(pid)
            if kind is None:
                kind = self.classify(info, infos.get(info.ppid), self.root)
                self._known_kinds[pid] = kind
            kinds[pid] = kind
        return kinds

    def _sample(self, first: bool) -> None:
        infos = self.tree()
        kinds = self._kinds(infos)
        with self._lock:
            for pid, kind in kinds.items():
                seen = self._procs.get(pid)
                proc = seen.proc if seen is not None else _process(pid)
                if proc is None:
                    continue
                try:
                    times = proc.cpu_times()
                    threads = proc.threads() if self.group_thread is not None else []
                except psutil.Error:
                    continue  # it ended: what it used until the last sample stays counted
                used = times.user + times.system
                if seen is None:
                    self._procs[pid] = _Seen(kind, proc, used if first else 0.0, used)
                else:
                    seen.last = used
                for thread in threads:
                    self._sample_thread(pid, thread, first)

    def _sample_thread(self, pid: int, thread: Any, first: bool) -> None:
        assert self.group_thread is not None
        name = (_read(f"/proc/{pid}/task/{thread.id}/comm") or "").strip()
        group = self.group_thread(name)
        if group is None:
            return
        used = float(thread.user_time + thread.system_time)
        key = (pid, int(thread.id))
        known = self._threads.get(key)
        start = known[1] if known is not None else (used if first else 0.0)
        self._threads[key] = (group, start, used)

    def begin(self) -> None:
        """Start a window: sample now, then every ``interval_s`` until :meth:`end`."""
        self._procs.clear()
        self._threads.clear()
        self._began_at = time.monotonic()
        self._sample(first=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample(first=False)

    def end(self) -> CpuWindow:
        """End the window: a last sample, and what each kind used since :meth:`begin`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._sample(first=False)
        window_s = time.monotonic() - self._began_at
        by_kind: dict[str, float] = {}
        processes: dict[str, int] = {}
        with self._lock:
            for seen in self._procs.values():
                used = max(0.0, seen.last - seen.start)
                by_kind[seen.kind] = by_kind.get(seen.kind, 0.0) + used
                processes[seen.kind] = processes.get(seen.kind, 0) + 1
            by_group: dict[str, float] = {}
            for group, start, last in self._threads.values():
                by_group[group] = by_group.get(group, 0.0) + max(0.0, last - start)
        return CpuWindow(window_s, sum(by_kind.values()), by_kind, by_group, processes)

    def memory(self) -> MemorySample:
        """USS of every process of the tree, by kind, and the tree's shared segments (a
        segment's page that one process alone maps counts in the segment, not also in that
        process's USS)."""
        infos = self.tree()
        kinds = self._kinds(infos)
        uss: dict[str, int] = {}
        counts: dict[str, int] = {}
        for pid, kind in kinds.items():
            uss[kind] = uss.get(kind, 0) + process_unique_bytes_outside_segments(pid)
            counts[kind] = counts.get(kind, 0) + 1
        return MemorySample(uss, counts, shared_segments_bytes(set(infos)))
