"""The control channel between the main process and a media worker: one AF_UNIX SOCK_SEQPACKET
socket pair, one message per datagram (so no framing), pickled Python values, and file
descriptors passed alongside (SCM_RIGHTS: the RTP/RTCP sockets the main process bound for a
call). Both ends are our own processes on a private socket pair, which is why pickle is fine
here and nowhere else.

Control traffic is small and rare (a call's start, updates, its end; a stats message per
second), so it stays off the per-packet path entirely.
"""

from __future__ import annotations

import array
import pickle
import socket
from typing import Any

__all__ = ["BUFFER_BYTES", "MAX_MESSAGE", "channel_pair", "decode", "encode", "receive", "send"]

MAX_MESSAGE = 1 << 20
"""A message holds a call plan or a call's final report: kilobytes, far below this."""
BUFFER_BYTES = 4 << 20
MAX_FDS = 64


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(main end, worker end)."""
    main, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (main, worker):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER_BYTES)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_BYTES)
    return main, worker


def encode(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > MAX_MESSAGE:
        raise ValueError(f"control message of {len(data)} bytes")
    return data


def decode(data: bytes) -> Any:
    return pickle.loads(data)  # noqa: S301 - our own child process, on a private socket pair


def send(sock: socket.socket, message: Any, fds: list[int] | None = None) -> None:
    """One message (with file descriptors); BlockingIOError when a non-blocking socket's
    buffer is full (the caller queues it)."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([encode(message)], ancillary)


def receive(sock: socket.socket) -> tuple[Any, list[int]] | None:
    """One message and the descriptors that came with it; None at end of file.
    BlockingIOError when a non-blocking socket has nothing."""
    data, ancillary, _flags, _address = sock.recvmsg(
        MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize))
    if not data:
        return None
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
            fds.extend(received)
    return decode(data), fds
