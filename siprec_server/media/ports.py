"""RTP port pairs from the configured range: an even RTP port with its RTCP port (+1) held for a
session and released at its end, never handed out twice at the same time (RFC 3550 §11)."""

from __future__ import annotations

from collections import deque

from siprec_server.media.errors import MediaError


class PortsExhausted(MediaError):
    """No free RTP/RTCP pair is left in the range; the call gets 503."""


class PortAllocator:
    def __init__(self, port_min: int, port_max: int) -> None:
        first = port_min + (port_min % 2)
        # A pair needs port and port+1 inside the range.
        self._free: deque[int] = deque(range(first, port_max, 2))
        self._in_use: set[int] = set()
        self.capacity = len(self._free)

    def allocate(self) -> int:
        """An even RTP port; its RTCP port is the next one. Least recently used first, so a
        late packet of an ended call does not land in a new call."""
        if not self._free:
            raise PortsExhausted(f"all {self.capacity} RTP port pairs are in use")
        port = self._free.popleft()
        self._in_use.add(port)
        return port

    def release(self, port: int) -> None:
        if port in self._in_use:
            self._in_use.remove(port)
            self._free.append(port)

    @property
    def in_use(self) -> int:
        return len(self._in_use)
