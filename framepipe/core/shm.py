"""Named POSIX shared-memory segments with an explicit, trustworthy lifecycle.

Public API::

    Segment.create(size: int, tag: str = "", *, owner_pid: int | None = None) -> Segment
    Segment.attach(name: str) -> Segment
    seg.name -> str            # "/fp-<owner pid>-<id>"  (file /dev/shm/fp-<owner pid>-<id>)
    seg.size -> int
    seg.buf -> memoryview      # writable, the whole segment
    seg.owner -> bool          # True for the creator (the one that unlinks)
    seg.close() / seg.unlink() # both idempotent; `with Segment.create(...) as seg:` closes and,
                               # for the owner, unlinks
    new_name(tag: str = "", owner_pid: int | None = None) -> str   # for segments and semaphores
    sweep_orphans(shm_dir: str | Path = "/dev/shm") -> list[str]   # unlinked entries
    shm_available_bytes(shm_dir="/dev/shm") -> int

Why this shape:

* The backing is ``posix_fallocate``-d at creation, so a full /dev/shm is a
  :class:`~framepipe.protocol.errors.ShmExhaustedError` here and never a SIGBUS later, and every
  page is pre-touched (a first-touch fault costs ~30x a warm access). Attachers map with
  ``MAP_POPULATE`` so they fault nothing in the hot path either.
* Names carry the owner's pid (``/fp-<pid>-<id>``, semaphores ``/dev/shm/sem.fp-<pid>-<id>``),
  so :func:`sweep_orphans` can unlink whatever a dead process left behind. ``owner_pid`` lets a
  parent (the manager) put its own pid in a segment a child creates, so the segment outlives
  the child and is swept only when the manager is gone.
* ``multiprocessing``'s resource_tracker never sees these segments (we use posix_ipc, not
  ``multiprocessing.shared_memory``), so no process unlinks a segment another one still owns
  (CPython gh-82300). The creator is the single owner and unlinks.
* ``close()`` never unmaps memory that numpy views still reference: if views are alive the
  mapping is dropped with the last of them (no use-after-unmap crash).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import re
import secrets
from pathlib import Path

import posix_ipc

from framepipe.core._lifecycle import OwnedResource
from framepipe.core.processes import pid_alive
from framepipe.protocol.errors import NotFoundError, OperationError, ShmExhaustedError

__all__ = [
    "PREFIX",
    "SHM_DIR",
    "Segment",
    "new_name",
    "shm_available_bytes",
    "sweep_orphans",
]

SHM_DIR = Path("/dev/shm")
PREFIX = "fp-"
PAGE_SIZE = mmap.PAGESIZE
_counter = itertools.count()
_TAG_RE = re.compile(r"^[a-z0-9]{0,16}$")
# fp-<pid>-<id>  or  sem.fp-<pid>-<id>
_ENTRY_RE = re.compile(r"^(?:sem\.)?fp-(\d+)-[A-Za-z0-9_.-]+$")


def new_name(tag: str = "", owner_pid: int | None = None) -> str:
    """A fresh ``/fp-<pid>-<tag><counter>x<random>`` name (unique across processes)."""
    if not _TAG_RE.match(tag):
        raise ValueError(f"segment tag must be 0-16 characters [a-z0-9], got {tag!r}")
    pid = os.getpid() if owner_pid is None else owner_pid
    if pid <= 0:
        raise ValueError(f"owner_pid must be a positive pid, got {pid}")
    return f"/{PREFIX}{pid}-{tag}{next(_counter):x}x{secrets.token_hex(4)}"


def shm_available_bytes(shm_dir: str | Path = SHM_DIR) -> int:
    """Bytes free in the shared-memory filesystem (for admission checks)."""
    st = os.statvfs(shm_dir)
    return st.f_bavail * st.f_frsize


def sweep_orphans(shm_dir: str | Path = SHM_DIR) -> list[str]:
    """Unlink every ``fp-*`` segment and ``sem.fp-*`` semaphore whose owner pid is dead.

    Returns the directory entries removed (e.g. ``["fp-123-ring0xab12cd34", "sem.fp-123-..."]``).
    """
    removed: list[str] = []
    try:
        entries = sorted(os.listdir(shm_dir))
    except FileNotFoundError:
        return removed
    dead: dict[int, bool] = {}
    for entry in entries:
        match = _ENTRY_RE.match(entry)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid not in dead:
            dead[pid] = not pid_alive(pid)
        if not dead[pid]:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(shm_dir, entry))
            removed.append(entry)
    return removed


class Segment(OwnedResource):
    """One named shared-memory segment, mapped read-write into this process."""

    __slots__ = ("_buf", "_closed", "_mmap", "_unlinked", "name", "owner", "size")

    def __init__(self, name: str, size: int, mapping: mmap.mmap, owner: bool) -> None:
        self.name = name
        self.size = size
        self.owner = owner
        self._mmap: mmap.mmap | None = mapping
        self._buf: memoryview | None = memoryview(mapping)
        self._closed = False
        self._unlinked = False

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def create(cls, size: int, tag: str = "", *, owner_pid: int | None = None) -> Segment:
        """Create, fully back (posix_fallocate) and pre-touch a new segment of ``size`` bytes."""
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"segment size must be a positive number of bytes, got {size!r}")
        name = new_name(tag, owner_pid)
        try:
            shm = posix_ipc.SharedMemory(name, flags=posix_ipc.O_CREX, mode=0o600, size=0)
        except posix_ipc.ExistentialError as exc:  # pragma: no cover - random suffix collision
            raise OperationError(f"shared-memory segment {name} already exists") from exc
        try:
            try:
                os.posix_fallocate(shm.fd, 0, size)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
                    free = shm_available_bytes()
                    raise ShmExhaustedError(
                        f"/dev/shm has no room for segment {name} of {size} bytes "
                        f"({size / 2**20:.1f} MiB requested, {free / 2**20:.1f} MiB free); "
                        "free shared memory or lower the ring sizes"
                    ) from exc
                raise
            mapping = mmap.mmap(
                shm.fd,
                size,
                flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
        except BaseException:
            shm.close_fd()
            with contextlib.suppress(posix_ipc.ExistentialError):
                shm.unlink()
            raise
        shm.close_fd()
        seg = cls(name, size, mapping, owner=True)
        seg._pretouch()
        return seg

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Map an existing segment by name (``/fp-...``); raises NotFoundError if absent."""
        if not name.startswith("/" + PREFIX):
            raise ValueError(f"not a framepipe segment name (want '/fp-...'): {name!r}")
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError as exc:
            raise NotFoundError(f"shared-memory segment {name} does not exist") from exc
        try:
            size = os.fstat(shm.fd).st_size
            if size <= 0:
                raise OperationError(f"shared-memory segment {name} is empty")
            mapping = mmap.mmap(
                shm.fd,
                size,
                flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
        finally:
            shm.close_fd()
        return cls(name, size, mapping, owner=False)

    def _pretouch(self) -> None:
        buf = self.buf
        for offset in range(0, self.size, PAGE_SIZE):
            buf[offset] = 0

    # -- access -------------------------------------------------------------------------------

    @property
    def buf(self) -> memoryview:
        if self._buf is None:
            raise ValueError(f"segment {self.name} is closed")
        return self._buf

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def path(self) -> Path:
        """Where the segment shows in the filesystem (``/dev/shm/fp-...``)."""
        return SHM_DIR / self.name.lstrip("/")

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Unmap (idempotent). If numpy views of the segment are still alive, the mapping stays
        until the last of them is gone instead of being pulled from under them."""
        if self._closed:
            return
        self._closed = True
        buf, mapping = self._buf, self._mmap
        self._buf = None
        self._mmap = None
        if buf is not None:
            with contextlib.suppress(BufferError):
                buf.release()
        if mapping is not None:
            with contextlib.suppress(BufferError):
                mapping.close()

    def unlink(self) -> None:
        """Remove the name (idempotent); mappings stay valid until closed."""
        if self._unlinked:
            return
        self._unlinked = True
        with contextlib.suppress(posix_ipc.ExistentialError):
            posix_ipc.unlink_shared_memory(self.name)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Segment {self.name} {self.size} bytes {state}{' owner' if self.owner else ''}>"
