"""RAM budget arithmetic and the settings object (pure; the live checks are integration tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from framepipe.core.budget import (
    MB,
    MemoryUsage,
    RamBudget,
    process_unique_bytes,
    segment_owner_pid,
    shared_segments_bytes,
)
from framepipe.core.sources.sizing import LEASES_PER_CONSUMER, rings_bytes
from framepipe.errors import OperationError, RamBudgetExceededError, ShmExhaustedError
from framepipe.server.settings import ServerSettings, SettingsError


def test_refusal_names_the_numbers() -> None:
    budget = RamBudget(max_ram_mb=1000)
    usage = MemoryUsage(manager_mb=100, workers_mb=600, shared_segments_mb=50)
    with pytest.raises(RamBudgetExceededError) as caught:
        budget.admit(usage=usage, worker_samples_mb=[[200.0, 300.0]], new_rings_bytes=int(10 * MB))
    message = caught.value.message
    for figure in ("750.0 MB", "310.0 MB", "rings 10.0 MB", "worker 300.0 MB", "1000.0 MB"):
        assert figure in message


def test_admits_within_budget_and_reused_worker_counts_growth_only() -> None:
    budget = RamBudget(max_ram_mb=1000)
    usage = MemoryUsage(manager_mb=100, workers_mb=600, shared_segments_mb=50)
    with pytest.raises(OperationError):
        budget.admit(usage=usage, worker_samples_mb=[[300.0]], new_rings_bytes=0)
    admission = budget.admit(
        usage=usage, worker_samples_mb=[[300.0]], new_rings_bytes=0, reused_worker_mb=100.0
    )
    assert admission.predicted_mb == pytest.approx(200.0)
    assert RamBudget(None).admit(usage=usage, worker_samples_mb=[], new_rings_bytes=0)


def test_shm_space_is_checked() -> None:
    full = MemoryUsage(0, 0, 0, shm_free_bytes=64 * MB)
    with pytest.raises(ShmExhaustedError, match="shared memory"):
        RamBudget(None).admit(usage=full, worker_samples_mb=[], new_rings_bytes=65 * MB)
    assert RamBudget(None).admit(usage=full, worker_samples_mb=[], new_rings_bytes=63 * MB)


def test_segments_are_counted_once_by_owner(tmp_path: Path) -> None:
    (tmp_path / "fp-123-a").write_bytes(b"x" * 8192)
    (tmp_path / "fp-456-b").write_bytes(b"x" * 8192)
    (tmp_path / "other").write_bytes(b"x" * 8192)
    assert shared_segments_bytes({123}, tmp_path) >= 8192
    assert shared_segments_bytes({123}, tmp_path) < 16384
    assert shared_segments_bytes({999}, tmp_path) == 0
    assert segment_owner_pid("sem.fp-42-x") == 42
    assert segment_owner_pid("fpx") is None


def test_ring_bytes_and_uss() -> None:
    small = rings_bytes([(1280, 720)], 2)
    slots = 2 + LEASES_PER_CONSUMER + 1  # depth x consumers + leases + 1
    assert small > slots * 1280 * 720 * 3
    assert rings_bytes([(1280, 720), (1280, 720)], 2) == 2 * small
    assert rings_bytes([(1280, 720)], 64) > small
    assert process_unique_bytes(os.getpid()) > 1 * MB
    assert process_unique_bytes(2**22 + 12345) == 0


def test_settings_from_env() -> None:
    settings = ServerSettings.from_env(
        {
            "STREAM_MANAGER_PORT": "7171",
            "STREAM_MANAGER_MAX_RAM_MB": "2048",
            "STREAM_API_PRELOADED_PROCESSES": "2",
            "STREAM_MANAGER_RAM_USAGE_QUEUE_SIZE": "5",
        }
    )
    assert (settings.host, settings.port, settings.max_ram_mb) == ("127.0.0.1", 7171, 2048.0)
    assert (settings.preloaded_processes, settings.ram_usage_queue_size, settings.token) == (
        2,
        5,
        None,
    )
    assert ServerSettings.from_env({}).port == 7070
    assert ServerSettings.from_env({"FRAMEPIPE_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(SettingsError, match="FRAMEPIPE_EVENT_LOOP"):
        ServerSettings.from_env({"FRAMEPIPE_EVENT_LOOP": "trio"})
    assert ServerSettings.from_env({}).share_decoders is True
    assert ServerSettings.from_env({"FRAMEPIPE_SHARE_DECODERS": "off"}).share_decoders is False
    assert ServerSettings.from_env({"FRAMEPIPE_SHARE_DECODERS": "1"}).share_decoders is True


def test_shared_ring_has_room_for_its_consumers() -> None:
    one = rings_bytes([(1280, 720)], 8)
    assert rings_bytes([(1280, 720)], 8, consumers=4) > one


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STREAM_MANAGER_PORT", "x"),
        ("STREAM_MANAGER_PORT", "70000"),
        ("STREAM_MANAGER_MAX_RAM_MB", "-1"),
        ("FRAMEPIPE_SHARE_DECODERS", "maybe"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        ServerSettings.from_env({name: value})
