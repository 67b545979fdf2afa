"""What the SIP agent is configured with: where it is reachable, what it allows and supports,
RFC 4028 intervals, RFC 3261 timer values, and how strictly it reads what SRCs send."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from siprec_server.sip.routing import bracket_host
from siprec_server.sip.timers import TimerValues

DEFAULT_ALLOW = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO")
DEFAULT_ACCEPT = (
    "application/sdp",
    "application/rs-metadata+xml",
    "application/rs-metadata",
    "multipart/mixed",
)
DEFAULT_SUPPORTED = ("siprec", "timer")


@dataclass(frozen=True, slots=True)
class AgentSettings:
    local: Mapping[str, tuple[str, int]]
    """Per transport ("udp", "tcp", "tls"): the host and port we advertise (Via, Contact)."""
    allow: tuple[str, ...] = DEFAULT_ALLOW
    accept: tuple[str, ...] = DEFAULT_ACCEPT
    supported: tuple[str, ...] = DEFAULT_SUPPORTED
    server: str = "siprec-server"
    session_expires: int = 1800
    """Session interval we ask for when the SRC supports timers but proposes none."""
    min_se: int = 90
    """Smallest session interval we accept (RFC 4028 §5: at least 90)."""
    timers: TimerValues = field(default_factory=TimerValues)
    """Read once, when the agent is built."""
    max_transactions: int = 20_000
    strict: bool = False
    """True: RFC 3261 to the letter. False: what SRCs in the field get wrong is accepted (logged
    and counted) where the dialog is still known without doubt: an ACK whose CSeq or To-tag
    does not match, a BYE with a CSeq below the last request's, a Contact without its `>`."""

    def address(self, transport: str) -> tuple[str, int]:
        return self.local.get(transport) or next(iter(self.local.values()))

    def contact(self, transport: str) -> str:
        host, port = self.address(transport)
        scheme = "sips" if transport == "tls" else "sip"
        param = f";transport={transport}" if transport != "udp" else ""
        return f"<{scheme}:srs@{bracket_host(host)}:{port}{param}>;+sip.srs"

    def capabilities(self, transport: str) -> list[tuple[str, str]]:
        """What an answer to OPTIONS says about us (RFC 3261 §11.2)."""
        return [
            ("Allow", ", ".join(self.allow)),
            ("Accept", ", ".join(self.accept)),
            ("Supported", ", ".join(self.supported)),
            ("Accept-Encoding", "identity"),
            ("Contact", self.contact(transport)),
        ]

    def via(self, transport: str, branch: str) -> str:
        """The Via of a request we send (RFC 3261 §8.1.1.7, with rport: RFC 3581 §3)."""
        host, port = self.address(transport)
        return f"SIP/2.0/{transport.upper()} {bracket_host(host)}:{port};branch={branch};rport"
