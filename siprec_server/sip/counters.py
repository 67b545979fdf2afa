"""What the SIP core counts, for /metrics (which exports every int field of `agent.counters` as
a kind of siprec_sip_messages_total): one typed field per kind, so that a misspelt counter is a
type error rather than a new series."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SipCounters:
    requests: int = 0
    """Requests parsed (retransmissions included)."""
    responses_sent: int = 0
    """Responses put on the wire for the first time (retransmissions not counted)."""
    retransmissions_absorbed: int = 0
    """Requests that matched a server transaction already under way."""
    parse_errors: int = 0
    dropped: int = 0
    """Responses and ACKs that matched no transaction or dialog."""
    keepalives: int = 0
    """CRLF keep-alives (RFC 5626 §3.5.1)."""
    unanswered: int = 0
    """Requests the transaction user left unanswered for 64*T1 (answered 408)."""
    session_refreshes: int = 0
    """Session refresh UPDATEs we sent (RFC 4028, we are the refresher)."""
    # What SRCs get wrong and the agent accepts unless AgentSettings.strict (each also logged):
    tolerated_ack_mismatch: int = 0
    """An ACK of our 2xx with the wrong CSeq or To-tag, taken for the dialog it names."""
    tolerated_low_cseq_bye: int = 0
    """A BYE with a CSeq below the dialog's last request (e.g. a re-INVITE's), obeyed."""
    tolerated_unclosed_contact: int = 0
    """A Contact without its closing `>`, read as if it ended with one."""
