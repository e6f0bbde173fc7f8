"""Blocking client: the same methods as :class:`~framepipe.client.aio.StreamManagerClient`,
on plain sockets (no event loop per call)."""

from __future__ import annotations

import contextlib
import socket
import time

from framepipe.client import _exchange
from framepipe.client.errors import ConnectivityError, ProtocolViolationError
from framepipe.client.responses import (
    CommandResponse,
    ConsumePipelineResponse,
    InferencePipelineStatusResponse,
    InitializeWebRTCPipelineResponse,
    ListPipelinesResponse,
)
from framepipe.protocol.commands import (
    Command,
    ConsumeResultCommand,
    InitCommand,
    ListPipelinesCommand,
    MuteCommand,
    ResumeCommand,
    StatusCommand,
    TerminateCommand,
    WebRTCCommand,
)
from framepipe.protocol.envelope import Envelope
from framepipe.protocol.framing import FrameDecoder, FramingError
from framepipe.protocol.payloads import InitialisePipelinePayload, InitialiseWebRTCPipelinePayload


class SyncStreamManagerClient(_exchange.ClientSettings):
    def list_pipelines(self) -> ListPipelinesResponse:
        return _exchange.list_pipelines_response(self.send(ListPipelinesCommand()))

    def initialise_pipeline(
        self, initialisation_request: InitialisePipelinePayload
    ) -> CommandResponse:
        return _exchange.command_response(self.send(InitCommand(payload=initialisation_request)))

    def initialise_webrtc_pipeline(
        self, initialisation_request: InitialiseWebRTCPipelinePayload
    ) -> InitializeWebRTCPipelineResponse:
        return _exchange.webrtc_response(self.send(WebRTCCommand(payload=initialisation_request)))

    def terminate_pipeline(self, pipeline_id: str) -> CommandResponse:
        return _exchange.command_response(self.send(TerminateCommand(pipeline_id=pipeline_id)))

    def pause_pipeline(self, pipeline_id: str) -> CommandResponse:
        return _exchange.command_response(self.send(MuteCommand(pipeline_id=pipeline_id)))

    mute_pipeline = pause_pipeline

    def resume_pipeline(self, pipeline_id: str) -> CommandResponse:
        return _exchange.command_response(self.send(ResumeCommand(pipeline_id=pipeline_id)))

    def get_status(self, pipeline_id: str) -> InferencePipelineStatusResponse:
        return _exchange.status_response(self.send(StatusCommand(pipeline_id=pipeline_id)))

    def consume_pipeline_result(
        self,
        pipeline_id: str,
        excluded_fields: list[str] | None = None,
        max_entries: int | None = None,
    ) -> ConsumePipelineResponse:
        command = ConsumeResultCommand(
            pipeline_id=pipeline_id,
            excluded_fields=list(excluded_fields or []),
            max_entries=max_entries,
        )
        return _exchange.consume_response(self.send(command))

    def send(self, command: Command) -> Envelope:
        payload = self.exchange(_exchange.request_bytes(command, self.auth_token))
        return _exchange.envelope_from_payload(payload)

    def exchange(self, request: bytes) -> bytes:
        """Send raw request bytes on a new connection; the response payload (no header)."""
        deadline = (
            time.monotonic() + self.operations_timeout
            if self.operations_timeout is not None
            else None
        )
        try:
            connect_timeout = _earliest(self.connect_timeout, deadline)
            with contextlib.ExitStack() as stack:
                sock = stack.enter_context(
                    socket.create_connection((self.host, self.port), timeout=connect_timeout)
                )
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.ssl_context is not None:  # the handshake is bounded by connect_timeout
                    sock = stack.enter_context(
                        self.ssl_context.wrap_socket(sock, server_hostname=self.tls_server_hostname)
                    )
                sock.settimeout(_remaining(deadline))
                sock.sendall(request)
                decoder = FrameDecoder(self.max_message_size)
                while True:
                    sock.settimeout(_remaining(deadline))
                    chunk = sock.recv(_exchange.READ_CHUNK)
                    if not chunk:
                        raise ConnectivityError(
                            "The stream manager closed the connection before a complete answer "
                            f"({decoder.buffered} bytes received)"
                        )
                    try:
                        messages = decoder.feed(chunk)
                    except FramingError as error:
                        raise ProtocolViolationError(
                            f"Malformed response frame: {error}"
                        ) from error
                    if messages:
                        return messages[0]
        except OSError as error:  # includes socket.timeout / TimeoutError and ssl.SSLError
            raise ConnectivityError(
                f"Could not communicate with the stream manager at {self.host}:{self.port}: "
                f"{type(error).__name__}: {error}"
            ) from error


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("operations_timeout elapsed")
    return left


def _earliest(timeout: float | None, deadline: float | None) -> float | None:
    left = _remaining(deadline)
    if timeout is None:
        return left
    return timeout if left is None else min(timeout, left)
