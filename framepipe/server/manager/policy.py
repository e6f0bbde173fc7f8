"""What a client may ask the manager to open, checked before the manager sees the command.

The protocol bounds each field's form (:mod:`framepipe.protocol.payloads`); this checks what a
video reference *names*, which takes the file system: a device that is not a camera, a FIFO, a
directory, a path the OS cannot look up, or (with video directories configured) a file outside
them, is refused as ``invalid_payload`` here, at the edge, instead of failing deep in the
manager's admission or in a worker (:func:`framepipe.core.sources.parse_reference` is the one
home of those rules; the worker applies them again when it opens the source).

A file that does not exist is let through: the pipeline starts and reports that source in
ERROR, as the reference does (a camera that is unplugged is no different).

:class:`PolicyHandler` wraps any :class:`~framepipe.server.manager.tcp.CommandHandler`, so every
front end (TCP, HTTP) that serves the manager through it applies the same policy.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from framepipe.protocol.commands import Command, InitCommand, WebRTCCommand
from framepipe.protocol.envelope import SuccessBody
from framepipe.protocol.errors import NotFoundError
from framepipe.server.manager.tcp import CommandHandler

if TYPE_CHECKING:
    from framepipe.core.sources.reference import ParsedReference, StreamPolicy


_IMPORT_LOCK = threading.Lock()


def reference_checks() -> Callable[..., ParsedReference]:
    """:func:`framepipe.core.sources.parse_reference`, imported on first use.

    Not at module level: ``framepipe.core.sources`` brings numpy and the decoders (~1 s), and
    the manager's port must open at once. The server imports it once before the manager's own
    background imports start (see :func:`framepipe.server.manager.app.serve`): the package's
    ``__init__`` imports modules that import each other, and two threads entering it by
    different modules at the same time deadlock (an ImportError in both).
    """
    with _IMPORT_LOCK:
        from framepipe.core.sources.reference import parse_reference
    return parse_reference


class InputPolicy:
    """The checks of a command's video references (``video_dirs``: the only directories a
    file may lie in, resolved; None: anywhere; ``streams``: what a stream URL, or a TURN
    server, may reach; None: the default :class:`StreamPolicy`)."""

    def __init__(
        self, video_dirs: Sequence[Path] | None = None, streams: StreamPolicy | None = None
    ) -> None:
        self.video_dirs = tuple(video_dirs) if video_dirs is not None else None
        self.streams = streams

    def check(self, command: Command) -> None:
        """Raise InvalidPayloadError naming the first unacceptable reference (blocking: it
        looks at the file system, and may resolve a stream's host name)."""
        parse_reference = reference_checks()
        from framepipe.core.sources.reference import StreamPolicy, check_turn_urls

        streams = self.streams or StreamPolicy()
        if isinstance(command, WebRTCCommand):
            # the source is the peer's track (its video_reference is unread); a TURN server
            # the client names is reached by the server, as a stream would be
            turn = command.payload.webrtc_turn_config
            if turn is not None:
                check_turn_urls([u for u in turn.urls.split(",") if u.strip()], streams)
            return
        if not isinstance(command, InitCommand):
            return
        references = command.payload.video_configuration.video_reference
        for reference in references if isinstance(references, list) else [references]:
            try:
                parse_reference(reference, video_dirs=self.video_dirs, streams=streams)
            except NotFoundError:
                continue  # reported by the pipeline as a source in ERROR


class PolicyHandler:
    """A :class:`CommandHandler` that applies an :class:`InputPolicy` before ``handler``."""

    def __init__(self, handler: CommandHandler, policy: InputPolicy) -> None:
        self.handler = handler
        self.policy = policy

    async def handle(self, request_id: str, command: Command) -> SuccessBody:
        if isinstance(command, InitCommand | WebRTCCommand):
            # A stat() may wait on a slow or remote disk, a name on its resolver: never on
            # the event loop.
            await asyncio.to_thread(self.policy.check, command)
        return await self.handler.handle(request_id, command)
