"""A recording session (RFC 7866 RS) as the SRS sees it: its lifecycle, its negotiated streams and
local ports, and its metadata state. Sans-IO; the recorder service drives it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from uuid import UUID

from siprec_server.siprec.metadata import MetadataDocument
from siprec_server.siprec.metadata_state import RecordingMetadata, apply_metadata
from siprec_server.siprec.sdp import SessionDescription
from siprec_server.siprec.sdp_answer import NegotiatedStream, Negotiation


class SessionState(Enum):
    OFFERED = "offered"
    """INVITE received, not yet answered."""
    ACTIVE = "active"
    """Answered; media is being recorded."""
    ENDED = "ended"


_ALLOWED = {
    SessionState.OFFERED: {SessionState.ACTIVE, SessionState.ENDED},
    SessionState.ACTIVE: {SessionState.ENDED},
    SessionState.ENDED: set(),
}


class IllegalTransition(RuntimeError):
    pass


@dataclass
class RecordingSession:
    recording_id: UUID
    call_id: str
    started_at: datetime
    state: SessionState = SessionState.OFFERED
    dialog_id: str | None = None
    offer: SessionDescription | None = None
    negotiation: Negotiation | None = None
    metadata: RecordingMetadata | None = None
    ports: dict[int, int] = field(default_factory=dict)
    """m-line index → local RTP port (its RTCP port is +1)."""
    sdp_session_id: int = field(default_factory=lambda: secrets.randbelow(2**31))
    sdp_version: int = 0
    end_reason: str | None = None
    media_failed: bool = False
    """The media could not be set up after the answer; the session ends as failed."""
    storage_full: bool = False
    """Recording storage ran out: the session ends as interrupted."""
    media_origin: float | None = None
    """time.monotonic() when the answer went out: time 0 of the recording's timeline (media may
    arrive from then on, before the media pipeline is up)."""
    media_lost: bool = False
    """The media went away mid-call (its worker died): the session ends as interrupted."""
    source: str | None = None
    """The untrusted source address this session counts against (None when trusted)."""

    def transition(self, new: SessionState) -> None:
        if new not in _ALLOWED[self.state]:
            raise IllegalTransition(f"{self.state.value} -> {new.value}")
        self.state = new

    def unused_ports(self) -> list[int]:
        """Ports of m-lines the current negotiation no longer accepts (to release)."""
        accepted = {s.index for s in self.negotiation.streams} if self.negotiation else set()
        return [port for index, port in self.ports.items() if index not in accepted]

    def forget_ports(self, ports: list[int]) -> None:
        self.ports = {i: p for i, p in self.ports.items() if p not in ports}

    def next_sdp_version(self) -> int:
        self.sdp_version += 1
        return self.sdp_version

    def apply_metadata(self, document: MetadataDocument, received_at: datetime) -> None:
        self.metadata = apply_metadata(self.metadata, document, received_at)

    @property
    def streams(self) -> tuple[NegotiatedStream, ...]:
        return self.negotiation.streams if self.negotiation else ()

    def senders_of(self, stream: NegotiatedStream) -> tuple[str, ...]:
        """Participant ids heard on a negotiated stream, by its label; empty if unresolvable."""
        if self.metadata is None or stream.label is None:
            return ()
        return tuple(p.id for p in self.metadata.senders_of_label(stream.label))

    def metadata_stream_id(self, stream: NegotiatedStream) -> str | None:
        if self.metadata is None or stream.label is None:
            return None
        found = self.metadata.stream_by_label(stream.label)
        return found.id if found else None
