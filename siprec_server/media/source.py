"""Whom a recorded stream believes: the source address check of one m-line's RTP and RTCP, and
the one-SSRC-at-a-time lock. Sans-IO: the caller passes each datagram's source address and its
clock; nothing here reads a socket.

Source policies (config `[media] rtp_source`):

- ``offer-address``: packets must come from the IP address of the offer's c= line, from any
  port (SBCs often send from another port than the one they advertise for receiving).
- ``offer``: IP address and port exactly as offered (RTCP: the a=rtcp port, else RTP + 1; the
  RTP port with rtcp-mux).
- ``latch``: the first packet that is well-formed (and, with SRTP, authenticated) fixes the
  source, IP and port; RTP and RTCP latch separately. For SRCs behind NAT.
- ``any``: no check (the behaviour before this module existed).

When the offer names no usable address (none, a host name, or 0.0.0.0 / :: as some SRCs send
for hold), the ``offer*`` policies fall back to latching for that stream.

The SSRC lock (`SsrcLock`) lets one synchronisation source at a time into a stream's timeline.
Another SSRC takes its place only when a new offer changed the stream (`reset`) or when the
locked one has been silent for `SSRC_CHANGE_SILENCE` (an unsignalled source change, e.g. an
SRC relaying as an RTP translator whose call was transferred, or an SSRC collision that made
the sender pick a new one, RFC 3550 §8.2).
"""

from __future__ import annotations

import ipaddress
from enum import Enum
from typing import Final, Literal

__all__ = [
    "RTP_SOURCE_POLICIES",
    "SSRC_CHANGE_SILENCE",
    "Address",
    "RtpSourcePolicy",
    "SourceFilter",
    "SourceVerdict",
    "SsrcLock",
    "offer_address",
]

RtpSourcePolicy = Literal["offer-address", "offer", "latch", "any"]
RTP_SOURCE_POLICIES: Final[tuple[RtpSourcePolicy, ...]] = (
    "offer-address", "offer", "latch", "any")

Address = tuple[str, int]
"""(host, port) as the socket reports it; IPv6 sockets may add flow info and scope id."""

SSRC_CHANGE_SILENCE: Final = 1.0
"""Seconds the locked SSRC must have been silent before an unsignalled new SSRC may take over.

Long enough that nobody can interleave packets with a party who is talking (20-60 ms packets,
Opus DTX still sends one every 400 ms) or slip in during a pause for breath; short enough that
a real, unsignalled source change loses at most a second of the new source's audio. With SRTP
a packet of a foreign SSRC must also authenticate, so this only ever decides between senders
holding the SRC's key."""


class SourceVerdict(Enum):
    ALLOWED = "allowed"
    FOREIGN = "foreign"
    UNLATCHED = "unlatched"
    """Nothing latched yet: accept if the packet is good, then call `latch`."""


def offer_address(text: str | None) -> str | None:
    """The IP literal of an offer's c= address in canonical form; None when it is missing, a
    host name, or unspecified (0.0.0.0, ::)."""
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if ip.is_unspecified:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _host_forms(address: str) -> frozenset[str]:
    """How a socket may report packets from `address`: an IPv4 sender reaches a dual-stack
    IPv6 socket as ::ffff:a.b.c.d."""
    if ":" in address:
        return frozenset({address})
    return frozenset({address, f"::ffff:{address}"})


class SourceFilter:
    """The sources one m-line's RTP and RTCP are accepted from."""

    __slots__ = ("policy", "_hosts", "_rtp_port", "_rtcp_port", "_latched")

    def __init__(
        self,
        policy: RtpSourcePolicy,
        address: str | None,
        rtp_port: int | None = None,
        rtcp_port: int | None = None,
    ) -> None:
        if policy not in RTP_SOURCE_POLICIES:
            raise ValueError(f"unknown RTP source policy {policy!r}")
        if policy in ("offer-address", "offer") and address is None:
            policy = "latch"
        self.policy: RtpSourcePolicy = policy
        """The policy in force (an offer* policy without a usable address latches)."""
        self._hosts = _host_forms(address) if address is not None else frozenset()
        self._rtp_port = rtp_port
        self._rtcp_port = rtcp_port
        self._latched: list[Address | None] = [None, None]  # RTP, RTCP

    def check(self, source: Address | None, *, rtcp: bool = False) -> SourceVerdict:
        policy = self.policy
        if policy == "any":
            return SourceVerdict.ALLOWED
        if source is None:
            return SourceVerdict.FOREIGN
        host, port = source[0], source[1]
        if policy == "latch":
            latched = self._latched[rtcp]
            if latched is None:
                return SourceVerdict.UNLATCHED
            ok = host == latched[0] and port == latched[1]
        elif host not in self._hosts:
            ok = False
        elif policy == "offer":
            wanted = self._rtcp_port if rtcp else self._rtp_port
            ok = wanted is None or port == wanted
        else:
            ok = True
        return SourceVerdict.ALLOWED if ok else SourceVerdict.FOREIGN

    def latch(self, source: Address | None, *, rtcp: bool = False) -> None:
        """Fix the source of RTP (or RTCP) after its first good packet (latch policy only)."""
        if self.policy == "latch" and source is not None and self._latched[rtcp] is None:
            self._latched[rtcp] = (source[0], source[1])


class SsrcLock:
    """One SSRC at a time: the first accepted one locks the stream."""

    __slots__ = ("ssrc", "_last_seen")

    def __init__(self) -> None:
        self.ssrc: int | None = None
        """The SSRC whose packets the stream records now; None until the first."""
        self._last_seen = 0.0

    def admit(self, ssrc: int, now: float) -> bool:
        """Whether a (source-checked, authenticated) packet of `ssrc` at `now` may be recorded.
        A new SSRC is admitted, and locked, once the locked one has been silent long enough."""
        locked = self.ssrc
        if locked is not None and ssrc != locked and now - self._last_seen < SSRC_CHANGE_SILENCE:
            return False
        self.ssrc = ssrc
        self._last_seen = now
        return True

    def reset(self) -> None:
        """A new offer changed the stream: the next SSRC locks it at once."""
        self.ssrc = None
