"""Settings of the Ray backend: read once, at start, from the environment and the command line.

``HEALTH_CHECK_SYSTEM_CONFIG`` is the Ray system configuration framepipe ships for the head
node (``ray start --head --system-config=...``): with it the GCS declares a node dead about a
second after its raylet dies (Ray's defaults take about 30 s), which is what bounds failover.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from framepipe.server.settings import _optional_float

__all__ = [
    "HEALTH_CHECK_SYSTEM_CONFIG",
    "NAMESPACE",
    "ClusterSettings",
    "add_arguments",
    "from_arguments",
]

#: The Ray namespace of framepipe's named actors and key-value entries.
NAMESPACE = "framepipe"

#: Ray's node health checks as framepipe ships them: a probe every 300 ms, a node declared dead
#: after 3 failed probes (about 1 s). Ray's defaults (3 s x 5 probes, after a 5 s delay) make a
#: node death take 15-30 s to notice. Set on the head node only.
HEALTH_CHECK_SYSTEM_CONFIG: dict[str, int] = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 300,
    "health_check_timeout_ms": 300,
    "health_check_failure_threshold": 3,
}


def health_check_json() -> str:
    """``HEALTH_CHECK_SYSTEM_CONFIG`` as ``ray start --system-config`` takes it."""
    return json.dumps(HEALTH_CHECK_SYSTEM_CONFIG, separators=(",", ":"))


@dataclass(frozen=True)
class ClusterSettings:
    """How the front end uses the Ray cluster."""

    # "auto" (the cluster this machine belongs to) or a GCS address "host:port".
    address: str = "auto"
    # Seconds between two looks at Ray's node table (node deaths, new nodes).
    poll_interval_s: float = 0.25
    # Seconds between two reads of each agent's metrics (placement view, results at risk).
    metrics_interval_s: float = 1.0
    # Pipelines a node takes when its Ray resources declare no ``camera_slots``.
    default_camera_slots: int = 8
    # Predicted memory of a new pipeline before any has been measured (MB).
    pipeline_mb: float = 200.0
    # An agent's RAM budget (MB); None: 80% of the host's memory, shared by the agents on it.
    node_ram_mb: float | None = None
    # A new agent must have its manager listening within this many seconds.
    agent_start_timeout_s: float = 60.0
    # The GCS must answer within this many seconds at start.
    connect_timeout_s: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClusterSettings:
        env = os.environ if environ is None else environ
        defaults = cls()
        node_ram = env.get("FRAMEPIPE_CLUSTER_NODE_RAM_MB")
        return cls(
            address=env.get("FRAMEPIPE_RAY_ADDRESS", env.get("RAY_ADDRESS", defaults.address)),
            poll_interval_s=_float(
                env, "FRAMEPIPE_CLUSTER_POLL_INTERVAL", defaults.poll_interval_s
            ),
            metrics_interval_s=_float(
                env, "FRAMEPIPE_CLUSTER_METRICS_INTERVAL", defaults.metrics_interval_s
            ),
            default_camera_slots=int(
                _float(env, "FRAMEPIPE_CLUSTER_CAMERA_SLOTS", defaults.default_camera_slots)
            ),
            pipeline_mb=_float(env, "FRAMEPIPE_CLUSTER_PIPELINE_MB", defaults.pipeline_mb),
            node_ram_mb=_float(env, "FRAMEPIPE_CLUSTER_NODE_RAM_MB", 0.0) if node_ram else None,
            agent_start_timeout_s=_float(
                env, "FRAMEPIPE_CLUSTER_AGENT_START_TIMEOUT", defaults.agent_start_timeout_s
            ),
            connect_timeout_s=_float(
                env, "FRAMEPIPE_CLUSTER_CONNECT_TIMEOUT", defaults.connect_timeout_s
            ),
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``framepipe serve --backend local|ray --address auto|HOST:PORT``."""
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: one machine; ray: a front end for a Ray cluster (docs/CLUSTER.md)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="with --backend ray: the Ray cluster, 'auto' or its GCS HOST:PORT "
        "(FRAMEPIPE_RAY_ADDRESS, RAY_ADDRESS, auto)",
    )


def from_arguments(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ClusterSettings:
    settings = ClusterSettings.from_env(environ)
    if args.address:
        import dataclasses

        settings = dataclasses.replace(settings, address=args.address)
    return settings


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    """A positive number from ``env`` (the server's own parsing), ``default`` when unset."""
    value = _optional_float(env, name)
    return default if value is None else value
