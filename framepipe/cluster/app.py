"""``framepipe serve --backend ray``: the cluster's front end, served like a single manager.

It joins the Ray cluster first (an address that does not answer is one line and exit status
2, within ``connect_timeout_s``), then binds the same TCP front end, input policy and
companions (HTTP gateway, metrics) as :func:`framepipe.server.manager.app.serve`, with
:class:`~framepipe.cluster.front.ClusterFront` as the command handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Sequence

from framepipe.cluster.front import ClusterFront
from framepipe.cluster.settings import NAMESPACE, ClusterSettings
from framepipe.server.manager.app import Announce, Companion, front_settings
from framepipe.server.manager.policy import InputPolicy, PolicyHandler
from framepipe.server.manager.tcp import start_server
from framepipe.server.settings import ServerSettings, SettingsError

log = logging.getLogger("framepipe.cluster")

__all__ = ["connect", "serve_cluster", "shutdown_cluster"]


def connect(cluster: ClusterSettings) -> None:
    """Join the Ray cluster as a driver; SettingsError (one line) if it does not answer."""
    try:
        import ray
    except ImportError:
        raise SettingsError(
            "--backend ray needs Ray: pip install 'framepipe[ray]' (or make install)"
        ) from None
    address = cluster.address
    if address != "auto":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise SettingsError(f"--address must be 'auto' or HOST:PORT, got {address!r}")
        try:
            socket.create_connection((host, int(port)), cluster.connect_timeout_s).close()
        except OSError as exc:
            raise SettingsError(
                f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one "
                "with `ray start --head` (docs/CLUSTER.md) or pass its GCS address to --address"
            ) from None
    try:
        ray.init(
            address=address,
            namespace=NAMESPACE,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SettingsError(
            f"cannot join the Ray cluster at {address!r}: {first} (start one with "
            "`ray start --head`, see docs/CLUSTER.md, or pass --address HOST:PORT)"
        ) from None


async def serve_cluster(
    settings: ServerSettings,
    cluster: ClusterSettings,
    *,
    announce: Announce | None = None,
    companions: Sequence[Companion] = (),
) -> None:
    """Serve the cluster until SIGINT/SIGTERM (the agents and their pipelines keep running)."""
    loop = asyncio.get_running_loop()
    connect(cluster)  # before anything is served; Ray's own set-up wants the main thread
    stop = asyncio.Event()
    for signo in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signo, stop.set)
    for warning in settings.security_warnings():
        log.warning("%s", warning)
    front_handler = ClusterFront(settings, cluster)
    started: list[Companion] = []
    front = None
    try:
        await front_handler.start()
        front = await start_server(
            PolicyHandler(front_handler, InputPolicy(settings.video_dirs)),
            front_settings(settings),
        )
        host, port = settings.host, front.port
        log.info("cluster front end listening on %s:%d", host, port)
        if announce is not None:
            announce(host, port)
        for companion in companions:
            await companion.start(host, port)
            started.append(companion)
        await stop.wait()
    finally:
        for companion in reversed(started):
            await companion.close()
        if front is not None:
            await front.close()
        await front_handler.close()
        for signo in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signo)
        import ray

        ray.shutdown()


def shutdown_cluster() -> int:
    """Stop every framepipe agent of the connected cluster: each manager shuts down cleanly
    (pipelines terminated, segments unlinked), then the actor is killed; the pipeline records
    and camera-slot reservations go too. Returns how many agents were stopped."""
    import ray
    from ray.experimental import internal_kv

    from framepipe.cluster._ray import nodes

    stopped = 0
    for node in nodes():
        if not node.get("Alive"):
            continue
        from framepipe.cluster.agent import agent_name

        try:
            handle = ray.get_actor(agent_name(node["NodeID"]), namespace=NAMESPACE)
        except ValueError:
            continue
        with contextlib.suppress(Exception):
            ray.get(handle.stop.remote(), timeout=60)
        ray.kill(handle, no_restart=True)
        stopped += 1
    for key in internal_kv._internal_kv_list("", namespace=NAMESPACE):
        internal_kv._internal_kv_del(key, namespace=NAMESPACE)
    from framepipe.cluster.reservations import Reservations

    reservations = Reservations()
    for pipeline_id in reservations.held():
        reservations.release(pipeline_id)
    return stopped
