"""What the SIP core tells the transaction user (the SIPREC service), and where it sends bytes."""

from __future__ import annotations

from dataclasses import dataclass

from siprec_server.sip.message import SipRequest


@dataclass(frozen=True, slots=True)
class Peer:
    """A remote SIP endpoint as seen by a transport."""

    transport: str
    """"udp", "tcp" or "tls"."""
    host: str
    port: int
    connection: int | None = None
    """The stream connection a message came on (TCP/TLS), so answers go back on it."""

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Bytes the transport must send."""

    data: bytes
    peer: Peer


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A request the transaction user must answer with `SipAgent.respond(txn, ...)`."""

    txn: str
    """Server transaction id."""
    request: SipRequest
    peer: Peer
    dialog: str | None
    """The dialog id for in-dialog requests, None for a dialog-creating INVITE."""


@dataclass(frozen=True, slots=True)
class InviteCancelled:
    """The SRC cancelled an INVITE before our final answer; the core already sent 200 and 487."""

    txn: str


@dataclass(frozen=True, slots=True)
class DialogConfirmed:
    """The ACK for our 2xx arrived."""

    dialog: str


@dataclass(frozen=True, slots=True)
class DialogEnded:
    """The dialog is over; release its resources and finalise its recording."""

    dialog: str
    reason: str
    """"bye" (the SRC hung up), "no-ack", "session-expired" or "local"."""


@dataclass(frozen=True, slots=True)
class InfoReceived:
    """An in-dialog INFO (already answered 200), e.g. DTMF relay from SRCs that use INFO."""

    dialog: str
    content_type: str | None
    body: bytes


SipEvent = RequestReceived | InviteCancelled | DialogConfirmed | DialogEnded | InfoReceived
