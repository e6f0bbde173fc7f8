"""The node agent: a detached, named Ray actor per node that runs a framepipe manager there.

``framepipe-node:<node_id>`` (namespace ``framepipe``), pinned to its node by node affinity
(not soft: it never runs anywhere else). It starts ``framepipe serve`` on its node as a child
process — the manager then starts its workers, decoders, inference services and reaper exactly
as a single-machine manager does — and answers where that manager listens. The actor process
itself never forks: the child is started with ``subprocess`` (fork-free ``vfork``/``exec`` on
Linux) from a thread of the agent's own that lives as long as the child does, so the child's
``PR_SET_PDEATHSIG`` (set first thing by :mod:`framepipe.cluster._node_manager`) fires when the
agent's process dies: a dead node's manager dies with its agent, its workers with it, and its
reaper sweeps its segments.

Per agent: the manager's segment and semaphore names carry its own pid (``fp-<pid>-...``, and
its processes' pids), so agents on one host never touch each other's segments; its RAM budget
is the agent's share of the host (:func:`ram_budget_mb`), so the agents on one host add up to
no more than the host has.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from framepipe._serve_process import announced_address

log = logging.getLogger("framepipe.cluster.agent")

__all__ = ["AgentConfig", "AgentInfo", "NodeAgent", "agent_name", "ram_budget_mb"]

#: The share of a host's memory the agents on it may budget, all together.
HOST_RAM_SHARE = 0.8
#: Idle warm workers an agent's manager keeps (STREAM_API_PRELOADED_PROCESSES overrides it).
PRELOADED_WORKERS = 1


def agent_name(node_id: str) -> str:
    return f"framepipe-node:{node_id}"


@dataclass(frozen=True)
class AgentConfig:
    """What the front end starts an agent with."""

    token: str
    # Environment of the manager (FRAMEPIPE_* and STREAM_MANAGER_* of the front end).
    env: dict[str, str] = field(default_factory=dict)
    node_ram_mb: float | None = None
    start_timeout_s: float = 60.0


@dataclass(frozen=True)
class AgentInfo:
    """Where an agent's manager listens, and what it may hold."""

    node_id: str
    host: str
    port: int
    manager_pid: int
    ram_budget_mb: float
    camera_slots: int
    gpus: float
    # The node declares camera_slots as a Ray resource (so they are reserved there too).
    slots_declared: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ram_budget_mb(host_total_bytes: int, agents_on_host: int, explicit_mb: float | None) -> float:
    """An agent's RAM budget: ``explicit_mb`` when set, else its equal share of
    ``HOST_RAM_SHARE`` of the host (so the budgets of the agents on a host add up to no more
    than the host has)."""
    if explicit_mb is not None:
        return explicit_mb
    return host_total_bytes * HOST_RAM_SHARE / max(1, agents_on_host) / 1e6


class NodeAgent:
    """The actor's class (wrapped by ``ray.remote`` in :func:`framepipe.cluster.front`)."""

    def __init__(self, config: AgentConfig, default_camera_slots: int) -> None:
        import psutil
        import ray

        from framepipe.cluster._ray import nodes as ray_nodes

        self._config = config
        self.node_id: str = ray.get_runtime_context().get_node_id()
        nodes = [n for n in ray_nodes() if n.get("Alive")]
        me = next(n for n in nodes if n["NodeID"] == self.node_id)
        self.host: str = me["NodeManagerAddress"]
        same_host = [n for n in nodes if n["NodeManagerAddress"] == self.host]
        resources = me.get("Resources", {})
        self.slots_declared = "camera_slots" in resources
        self.camera_slots = int(resources.get("camera_slots", default_camera_slots))
        self.gpus = float(resources.get("GPU", 0.0))
        self.ram_budget_mb = ram_budget_mb(
            psutil.virtual_memory().total, len(same_host), config.node_ram_mb
        )
        self._proc: subprocess.Popen[str] | None = None
        self._port = 0
        self._ready = threading.Event()
        self._start_manager()

    # -- the manager child ------------------------------------------------------------------

    def _start_manager(self) -> None:
        self._ready.clear()
        self._port = 0
        thread = threading.Thread(target=self._run_manager, name="framepipe-manager", daemon=True)
        thread.start()
        if not self._ready.wait(self._config.start_timeout_s) or not self._port:
            self.stop()
            raise RuntimeError(
                f"the framepipe manager on node {self.node_id} did not listen within "
                f"{self._config.start_timeout_s:.0f} s"
            )

    def _manager_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self._config.env)
        env.update(
            STREAM_MANAGER_HOST=self.host,
            STREAM_MANAGER_PORT="0",
            STREAM_MANAGER_MAX_RAM_MB=f"{self.ram_budget_mb:.0f}",
            FRAMEPIPE_TOKEN=self._config.token,
            PYTHONUNBUFFERED="1",
        )
        # A warm worker waits for the next init, so that a pipeline placed here after another
        # node died starts without a worker's spawn (unless the operator chose otherwise).
        env.setdefault("STREAM_API_PRELOADED_PROCESSES", str(PRELOADED_WORKERS))
        if "FRAMEPIPE_VIDEO_DIRS" not in env:
            # The front end checks every video reference against its own policy before it
            # routes a request; the agent's port is open to token holders only.
            env["FRAMEPIPE_VIDEO_DIRS"] = "/"
        return env

    def _run_manager(self) -> None:
        """The thread that starts the manager and lives as long as it does (the manager's
        PR_SET_PDEATHSIG is tied to the thread that started it)."""
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "framepipe.cluster._node_manager",
                str(os.getpid()),
                "serve",
            ],
            env=self._manager_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        self._proc = proc
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)  # to the actor's log (Ray collects it)
            address = announced_address(line)
            if address is not None and not self._port:
                self._port = address[1]
                self._ready.set()
        proc.wait()
        self._ready.set()

    # -- what the front end calls -----------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Where the manager listens; a manager that died is started again (its pipelines are
        gone: the front end sees the new pid and places them again)."""
        if self._proc is None or self._proc.poll() is not None:
            self._start_manager()
        assert self._proc is not None
        return AgentInfo(
            node_id=self.node_id,
            host=self.host,
            port=self._port,
            manager_pid=self._proc.pid,
            ram_budget_mb=self.ram_budget_mb,
            camera_slots=self.camera_slots,
            gpus=self.gpus,
            slots_declared=self.slots_declared,
        ).to_dict()

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """Shut the manager down cleanly (SIGTERM: pipelines terminated, segments unlinked);
        killed if it does not exit in time. Returns its exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)
            return -signal.SIGKILL

    def ping(self) -> float:
        return time.time()
