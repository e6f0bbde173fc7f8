"""AF_UNIX connections to the inference service, authenticated like multiprocessing's.

``multiprocessing.connection``'s Listener and Client do the authkey handshake with no time
bound, so a peer that stops mid-handshake (a SIGSTOPped worker, a frozen service) would hold
the accepting or connecting thread forever. Here the handshake runs under socket-level
timeouts (SO_RCVTIMEO / SO_SNDTIMEO, which the blocking reads and writes of
:class:`~multiprocessing.connection.Connection` obey), which are lifted once it succeeds.
Messages afterwards are multiprocessing's (length-prefixed pickles).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from multiprocessing.connection import Connection, answer_challenge, deliver_challenge

HANDSHAKE_TIMEOUT_S = 5.0


def _set_timeouts(sock: socket.socket, seconds: float) -> None:
    whole = int(seconds)
    value = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def _authenticated(
    sock: socket.socket, authkey: bytes, *, server: bool, timeout: float
) -> Connection:
    """Run the handshake on ``sock`` within ``timeout``; the socket becomes the Connection."""
    try:
        _set_timeouts(sock, timeout)
        conn = Connection(os.dup(sock.fileno()))
        try:
            if server:
                deliver_challenge(conn, authkey)
                answer_challenge(conn, authkey)
            else:
                answer_challenge(conn, authkey)
                deliver_challenge(conn, authkey)
            _set_timeouts(sock, 0.0)  # 0: no timeout from now on
        except BaseException:
            conn.close()
            raise
        return conn
    finally:
        sock.close()  # the Connection holds its own descriptor of the socket


def listen(address: str, backlog: int = 64) -> socket.socket:
    """A listening AF_UNIX socket (``address`` starting with NUL: the abstract namespace)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def accept(sock: socket.socket, authkey: bytes, timeout: float = HANDSHAKE_TIMEOUT_S) -> Connection:
    """Authenticate an accepted socket (AuthenticationError, OSError or EOFError if not)."""
    return _authenticated(sock, authkey, server=True, timeout=timeout)


def connect(address: str, authkey: bytes, timeout: float = HANDSHAKE_TIMEOUT_S) -> Connection:
    """Connect and authenticate within ``timeout`` (ConnectionRefusedError when nobody listens)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _set_timeouts(sock, timeout)  # bounds connect() too when the backlog is full
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return _authenticated(sock, authkey, server=False, timeout=timeout)


def shut_down(conn: Connection) -> None:
    """Wake a thread blocked in ``conn.recv()`` (it sees end of file); the caller still
    closes ``conn``. Safe on a closed connection."""
    with contextlib.suppress(OSError, ValueError):
        fd = os.dup(conn.fileno())
        with socket.socket(fileno=fd) as sock:
            sock.shutdown(socket.SHUT_RDWR)
