"""Named POSIX shared-memory segments with an explicit, trustworthy lifecycle.

Public API::

    Segment.create(size: int, tag: str = "", *, owner_pid: int | None = None,
                   reserve: int | None = None) -> Segment
    Segment.attach(name: str) -> Segment
    seg.name -> str            # "/fp-<owner pid>-<id>"  (file /dev/shm/fp-<owner pid>-<id>)
    seg.size -> int
    seg.buf -> memoryview      # writable, the whole segment
    seg.owner -> bool          # True for the creator (the one that unlinks)
    seg.reserve(offset, length) -> int  # back a range with pages; bytes newly backed
                                        # (ShmExhaustedError if /dev/shm is full)
    seg.punch(offset, length)     # give a range's pages back (page-aligned; reads as zeros after)
    seg.resident_bytes() -> int   # bytes of the segment backed by pages now
    seg.close() / seg.unlink() # both idempotent; `with Segment.create(...) as seg:` closes and,
                               # for the owner, unlinks
    new_name(tag: str = "", owner_pid: int | None = None) -> str   # for segments and semaphores
    sweep_orphans(shm_dir: str | Path = "/dev/shm") -> list[str]   # unlinked entries
    shm_available_bytes(shm_dir="/dev/shm") -> int

Why this shape:

* The backing is ``posix_fallocate``-d before it is used, so a full /dev/shm is a
  :class:`~framepipe.protocol.errors.ShmExhaustedError` and never a SIGBUS later. By default the
  whole segment is reserved at creation and pre-touched (a first-touch fault costs ~30x a warm
  access), and attachers map it with ``MAP_POPULATE``. A segment created with ``reserve=n`` is
  sparse beyond its first ``n`` bytes: its owner reserves more with :meth:`Segment.reserve` as
  its resident set grows and gives pages back with :meth:`Segment.punch` as it shrinks (a frame
  ring: resident memory follows the frames in flight, not the capacity). A sparse segment is
  never mapped with ``MAP_POPULATE`` (that would allocate every hole) and nobody may touch a
  range that was not reserved: a write into a hole of a full /dev/shm is a SIGBUS.
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


def _round_page(n: int) -> int:
    return (n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def _fallocate(fd: int, offset: int, length: int, name: str, size: int) -> None:
    """posix_fallocate, with a full /dev/shm as a ShmExhaustedError naming the numbers."""
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
            free = shm_available_bytes()
            raise ShmExhaustedError(
                f"/dev/shm has no room for segment {name} of {size} bytes "
                f"({length / 2**20:.1f} MiB requested, {free / 2**20:.1f} MiB free); "
                "free shared memory or lower the ring sizes"
            ) from exc
        raise


class Segment(OwnedResource):
    """One named shared-memory segment, mapped read-write into this process."""

    __slots__ = ("_buf", "_closed", "_fd", "_mmap", "_unlinked", "name", "owner", "size")

    def __init__(self, name: str, size: int, mapping: mmap.mmap, owner: bool, fd: int) -> None:
        self.name = name
        self.size = size
        self.owner = owner
        self._fd = fd  # kept open: reserve() and resident_bytes() need it
        self._mmap: mmap.mmap | None = mapping
        self._buf: memoryview | None = memoryview(mapping)
        self._closed = False
        self._unlinked = False

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        size: int,
        tag: str = "",
        *,
        owner_pid: int | None = None,
        reserve: int | None = None,
        name: str | None = None,
    ) -> Segment:
        """Create a new segment of ``size`` bytes: fully backed (posix_fallocate) and
        pre-touched, or with ``reserve``, backed only for its first ``reserve`` bytes (rounded
        up to a page) and sparse beyond (see :meth:`reserve`). ``name``: a well-known name
        (``/fp-<pid>-...``) instead of a fresh one; OperationError if it exists."""
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"segment size must be a positive number of bytes, got {size!r}")
        if reserve is not None and (not isinstance(reserve, int) or reserve < 0):
            raise ValueError(f"reserve must be a number of bytes >= 0, got {reserve!r}")
        sparse = reserve is not None and reserve < size
        backed = size if reserve is None else min(size, _round_page(reserve))
        if name is None:
            name = new_name(tag, owner_pid)
        elif _ENTRY_RE.match(name.removeprefix("/")) is None or not name.startswith("/"):
            raise ValueError(f"not a framepipe segment name (want '/fp-<pid>-...'): {name!r}")
        try:
            shm = posix_ipc.SharedMemory(name, flags=posix_ipc.O_CREX, mode=0o600, size=0)
        except posix_ipc.ExistentialError as exc:  # pragma: no cover - random suffix collision
            raise OperationError(f"shared-memory segment {name} already exists") from exc
        try:
            os.ftruncate(shm.fd, size)
            if backed:
                _fallocate(shm.fd, 0, backed, name, size)
            mapping = mmap.mmap(
                shm.fd,
                size,
                flags=mmap.MAP_SHARED | (0 if sparse else mmap.MAP_POPULATE),
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
            fd = os.dup(shm.fd)  # ours to close (posix_ipc's own is closed now)
        except BaseException:
            shm.close_fd()
            with contextlib.suppress(posix_ipc.ExistentialError):
                shm.unlink()
            raise
        shm.close_fd()
        seg = cls(name, size, mapping, owner=True, fd=fd)
        if not sparse:
            seg._pretouch(backed)
        # A sparse segment's pages are not touched here: mapped by the creator alone (a ring's
        # floor slots that no frame used yet), they would count in its unique memory (USS)
        # besides the segment's blocks. fallocate has allocated and zeroed them already.
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
            st = os.fstat(shm.fd)
            size = st.st_size
            if size <= 0:
                raise OperationError(f"shared-memory segment {name} is empty")
            # A sparse segment (some range not backed) is not populated: that would allocate
            # its holes. Its pages fault in as they are read (already allocated: no zeroing).
            populate = st.st_blocks * 512 >= size
            mapping = mmap.mmap(
                shm.fd,
                size,
                flags=mmap.MAP_SHARED | (mmap.MAP_POPULATE if populate else 0),
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
            fd = os.dup(shm.fd)
        finally:
            shm.close_fd()
        return cls(name, size, mapping, owner=False, fd=fd)

    def _pretouch(self, length: int) -> None:
        buf = self.buf
        for offset in range(0, length, PAGE_SIZE):
            buf[offset] = 0

    # -- residency ----------------------------------------------------------------------------

    def reserve(self, offset: int, length: int) -> int:
        """Back ``[offset, offset + length)`` with pages (posix_fallocate; idempotent, cheap
        where it is backed already); returns the bytes newly backed. ShmExhaustedError when
        /dev/shm has no room: the caller waits or reports it, and never touches the range
        (that would be a SIGBUS)."""
        self._check_range(offset, length)
        if not length:
            return 0
        fd = self._live_fd()
        before = os.fstat(fd).st_blocks
        _fallocate(fd, offset, length, self.name, self.size)
        return max(0, int(os.fstat(fd).st_blocks - before) * 512)

    def punch(self, offset: int, length: int) -> None:
        """Give the pages of ``[offset, offset + length)`` back to the system (MADV_REMOVE:
        a hole punched in the tmpfs file, in every process that maps it). ``offset`` and
        ``length`` are page multiples. The range reads as zeros once reserved again; nobody
        may touch it before that."""
        self._check_range(offset, length)
        if offset % PAGE_SIZE or length % PAGE_SIZE:
            raise ValueError(f"punch needs a page-aligned range, got [{offset}, +{length})")
        if length and self._mmap is not None:
            self._mmap.madvise(mmap.MADV_REMOVE, offset, length)

    def resident_bytes(self) -> int:
        """Bytes of the segment backed by pages now (the blocks of its tmpfs file)."""
        return int(os.fstat(self._live_fd()).st_blocks) * 512

    def _live_fd(self) -> int:
        if self._fd < 0:
            raise ValueError(f"segment {self.name} is closed")
        return self._fd

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(
                f"range [{offset}, +{length}) is outside segment {self.name} of {self.size} bytes"
            )

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
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
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
