"""Segment lifecycle, naming, exhaustion and the orphan sweep."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
from pathlib import Path

import pytest

from framepipe.core.processes import pid_alive
from framepipe.core.shm import SHM_DIR, Segment, new_name, sweep_orphans
from framepipe.protocol.errors import NotFoundError, ShmExhaustedError


def test_create_attach_share_bytes_and_name_carries_pid() -> None:
    with Segment.create(10_000, tag="t") as seg:
        assert re.fullmatch(rf"/fp-{os.getpid()}-t[0-9a-f]+x[0-9a-f]{{8}}", seg.name)
        assert seg.path.exists() and seg.path == SHM_DIR / seg.name[1:]
        assert seg.size == 10_000 and seg.owner
        # fully backed: the file has its size, blocks allocated (posix_fallocate)
        st = os.stat(seg.path)
        assert st.st_size == 10_000 and st.st_blocks * 512 >= 10_000
        seg.buf[0:5] = b"hello"
        other = Segment.attach(seg.name)
        try:
            assert not other.owner and other.size == 10_000
            assert bytes(other.buf[0:5]) == b"hello"
            other.buf[9_999] = 7
            assert seg.buf[9_999] == 7
        finally:
            other.close()
            other.close()  # idempotent
        # a non-owner's exit does not unlink
        assert seg.path.exists()
    assert not seg.path.exists()


def test_close_and_unlink_are_idempotent() -> None:
    seg = Segment.create(4096)
    seg.unlink()
    seg.unlink()
    assert not seg.path.exists()
    assert seg.buf[0] == 0  # still mapped until closed
    seg.close()
    seg.close()
    assert seg.closed
    with pytest.raises(ValueError, match="closed"):
        _ = seg.buf


def test_close_with_live_views_does_not_unmap_under_them() -> None:
    np = pytest.importorskip("numpy")
    seg = Segment.create(8192)
    arr = np.frombuffer(seg.buf, np.uint8)
    arr[:] = 3
    seg.close()  # views alive: the mapping stays until they go
    seg.unlink()
    assert int(arr.sum()) == 3 * 8192
    del arr


def test_attach_missing_is_not_found() -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        Segment.attach(f"/fp-{os.getpid()}-nothere")
    with pytest.raises(ValueError, match="not a framepipe segment"):
        Segment.attach("/other")


@pytest.mark.parametrize("size", [0, -1, 1.5])
def test_bad_size_is_rejected(size: object) -> None:
    with pytest.raises(ValueError, match="segment size"):
        Segment.create(size)  # type: ignore[arg-type]


def test_bad_tag_is_rejected() -> None:
    with pytest.raises(ValueError, match="tag"):
        new_name("Bad-Tag")


def test_full_shm_is_a_clear_error_at_creation_and_leaves_nothing() -> None:
    st = os.statvfs(SHM_DIR)
    too_big = st.f_blocks * st.f_frsize + (1 << 20)
    before = set(os.listdir(SHM_DIR))
    with pytest.raises(ShmExhaustedError, match=r"no room for segment /fp-.* MiB requested"):
        Segment.create(too_big)
    assert {n for n in os.listdir(SHM_DIR) if n.startswith("fp-")} <= before


def _exit_now() -> None:
    return None


def test_pid_alive_treats_dead_and_zombie_as_dead() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(0)
    proc = mp.get_context("spawn").Process(target=_exit_now)
    proc.start()
    proc.sentinel  # noqa: B018
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: a zombie
    assert not pid_alive(proc.pid)
    proc.join()
    assert not pid_alive(proc.pid)


def test_sweep_orphans_unlinks_only_dead_owners(tmp_path: Path) -> None:
    proc = mp.get_context("spawn").Process(target=_exit_now)
    proc.start()
    proc.join()
    dead, alive = proc.pid, os.getpid()
    names = [
        f"fp-{dead}-ring1xab",
        f"sem.fp-{dead}-ring1xab-p",
        f"fp-{alive}-ring2xcd",
        f"sem.fp-{alive}-ring2xcd-c0",
        "sem.mp-123",
        "fp-notapid-x",
        "unrelated",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    removed = sweep_orphans(tmp_path)
    assert sorted(removed) == sorted([f"fp-{dead}-ring1xab", f"sem.fp-{dead}-ring1xab-p"])
    assert sorted(os.listdir(tmp_path)) == sorted(names[2:])
    assert sweep_orphans(tmp_path) == []
