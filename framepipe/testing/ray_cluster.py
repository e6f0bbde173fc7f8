"""A real Ray cluster on this machine (several raylets) and a real front end process, for
tests/cluster and perf/bench_cluster.py (``ray`` extra).

:class:`LocalRayCluster` starts ``ray.cluster_utils.Cluster``: a head node and more nodes,
each a raylet of its own with one CPU, a small object store and ``camera_slots``, with the
health checks framepipe ships (:data:`framepipe.cluster.settings.HEALTH_CHECK_SYSTEM_CONFIG`).
:class:`FrontProcess` runs ``python -m framepipe.cli serve --backend ray --address ...``.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import psutil

from framepipe._serve_process import ServeProcess
from framepipe.cluster.settings import HEALTH_CHECK_SYSTEM_CONFIG

OBJECT_STORE_BYTES = 80 * 1024 * 1024
CLUSTER_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}


class LocalRayCluster:
    def __init__(self, nodes: int = 3, camera_slots: int = 2) -> None:
        from ray.cluster_utils import Cluster

        self._saved = {k: os.environ.get(k) for k in CLUSTER_ENV}
        os.environ.update(CLUSTER_ENV)
        args: dict[str, Any] = {
            "num_cpus": 1,
            "object_store_memory": OBJECT_STORE_BYTES,
            "resources": {"camera_slots": camera_slots},
            "include_dashboard": False,
        }
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={**args, "_system_config": dict(HEALTH_CHECK_SYSTEM_CONFIG)},
        )
        self._node_args = args
        self.workers = [self.cluster.add_node(**args) for _ in range(nodes - 1)]
        self.cluster.wait_for_nodes()
        self.address: str = self.cluster.address
        self.camera_slots = camera_slots

    def node(self, node_id: str) -> Any:
        for node in self.workers:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    def add(self) -> Any:
        """One more node, like the others."""
        node = self.cluster.add_node(**self._node_args)
        self.cluster.wait_for_nodes()
        self.workers.append(node)
        return node

    def remove(self, node: Any) -> None:
        """Kill a (non-head) node's raylet and its processes, as a machine dies."""
        self.cluster.remove_node(node, allow_graceful=False)
        self.workers.remove(node)

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):
            self.cluster.shutdown()  # type: ignore[no-untyped-call]
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class FrontProcess(ServeProcess):
    """``framepipe serve --backend ray`` as an operator runs it; its output in a log file."""

    def __init__(
        self,
        address: str,
        log_path: Path,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(
            ("--backend", "ray", "--address", address, *extra_args),
            env={**CLUSTER_ENV, **(env or {})},
            log_path=log_path,
            append_log=True,
            ready_timeout_s=timeout,
        )


def framepipe_processes(root: int) -> list[psutil.Process]:
    """Every live framepipe process (manager, worker, decoder, service) below ``root``."""
    found = []
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process(root).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if proc.status() != psutil.STATUS_ZOMBIE and "framepipe" in " ".join(
                    proc.cmdline()
                ):
                    found.append(proc)
    return found


def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
