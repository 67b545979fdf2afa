"""Shared wire-level helpers for the SIP core tests: requests as bytes, a fake clock that fires
the agent's timers in order, and parsers for what the agent sends. No test lives here except
one that pins the helpers themselves."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from siprec_server.sip.agent import AgentSettings, SipAgent
from siprec_server.sip.events import Outgoing, Peer, RequestReceived, SipEvent
from siprec_server.sip.message import SipRequest, SipResponse, parse_message
from siprec_server.sip.timers import TimerValues

SRS_HOST = "192.0.2.10"
SRC_HOST = "198.51.100.7"
SRC_UDP = Peer("udp", SRC_HOST, 5060)
SRC_TCP = Peer("tcp", SRC_HOST, 40312, connection=7)
T1, T2, T4 = 0.5, 4.0, 5.0

SDP = (
    b"v=0\r\no=src 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n"
    b"m=audio 20000 RTP/AVP 0\r\na=sendonly\r\na=label:1\r\n"
)


def make_agent(**overrides: object) -> SipAgent:
    values: dict[str, object] = {
        "local": {"udp": (SRS_HOST, 5060), "tcp": (SRS_HOST, 5060)},
        "timers": TimerValues(T1, T2, T4),
    }
    values.update(overrides)
    return SipAgent(AgentSettings(**values))  # type: ignore[arg-type]


_branch_counter = iter(range(1, 10**9))


def new_branch() -> str:
    return f"z9hG4bK-test-{next(_branch_counter):09d}"


def request(
    method: str,
    *,
    uri: str = f"sip:srs@{SRS_HOST}",
    branch: str | None = None,
    via: str | None = None,
    transport: str = "UDP",
    call_id: str = "call-1@src",
    cseq: int = 1,
    cseq_method: str | None = None,
    from_tag: str | None = "src-tag",
    to_tag: str | None = None,
    contact: str | None = f"<sip:src@{SRC_HOST}:5060>;+sip.src",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
    max_forwards: str | None = "70",
    omit: Iterable[str] = (),
) -> bytes:
    """A request as an SRC would put it on the wire (CRLF, exact Content-Length)."""
    omitted = {name.lower() for name in omit}
    lines = [f"{method} {uri} SIP/2.0"]
    fields: list[tuple[str, str]] = []
    fields.append(
        ("Via", via or f"SIP/2.0/{transport} {SRC_HOST}:5060;branch={branch or new_branch()}")
    )
    if max_forwards is not None:
        fields.append(("Max-Forwards", max_forwards))
    from_value = f"<sip:src@{SRC_HOST}>" + (f";tag={from_tag}" if from_tag else "")
    fields.append(("From", from_value))
    fields.append(("To", f"<sip:srs@{SRS_HOST}>" + (f";tag={to_tag}" if to_tag else "")))
    fields.append(("Call-ID", call_id))
    fields.append(("CSeq", f"{cseq} {cseq_method or method}"))
    if contact is not None and method in ("INVITE", "UPDATE"):
        fields.append(("Contact", contact))
    fields.extend(headers)
    if body:
        fields.append(("Content-Type", content_type or "application/sdp"))
    for name, value in fields:
        if name.lower() not in omitted:
            lines.append(f"{name}: {value}")
    if "content-length" not in omitted:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def ack_for(invite: bytes, to_tag: str, *, branch: str | None = None) -> bytes:
    """The ACK for a response to `invite`: same branch for a non-2xx (branch=None), a new one
    for a 2xx (RFC 3261 §17.1.1.3 / §13.2.2.4)."""
    sent = parse_message(invite)
    assert isinstance(sent, SipRequest)
    number, _ = sent.cseq
    via = sent.headers.values("Via")[0]
    if branch is not None:
        via = f"SIP/2.0/UDP {SRC_HOST}:5060;branch={branch}"
    return request(
        "ACK",
        via=via,
        call_id=sent.call_id,
        cseq=number,
        from_tag=sent.from_tag,
        to_tag=to_tag,
        uri=sent.uri,
    )


@dataclass(frozen=True, slots=True)
class Sent:
    """One message the agent put on the wire, parsed back."""

    message: SipRequest | SipResponse
    peer: Peer
    data: bytes
    at: float = 0.0

    @property
    def response(self) -> SipResponse:
        assert isinstance(self.message, SipResponse), self.message
        return self.message

    @property
    def request(self) -> SipRequest:
        assert isinstance(self.message, SipRequest), self.message
        return self.message


def sent(agent: SipAgent, at: float = 0.0) -> list[Sent]:
    out: list[Sent] = []
    for item in agent.messages_to_send():
        assert isinstance(item, Outgoing)
        out.append(Sent(parse_message(item.data), item.peer, item.data, at))
    return out


def statuses(messages: list[Sent]) -> list[int]:
    return [m.response.status for m in messages]


def events(agent: SipAgent) -> list[SipEvent]:
    out: list[SipEvent] = []
    while (event := agent.next_event()) is not None:
        out.append(event)
    return out


def run_until(agent: SipAgent, until: float) -> list[Sent]:
    """Fire every timer due up to `until`, each at its own deadline (the fake clock)."""
    out: list[Sent] = []
    while (deadline := agent.get_timer()) is not None and deadline <= until:
        agent.handle_timer(deadline)
        out.extend(sent(agent, deadline))
    return out


def invite_received(agent: SipAgent, data: bytes, peer: Peer = SRC_UDP, now: float = 0.0) -> str:
    """Feed an INVITE; return its transaction id (the 100 Trying is drained)."""
    agent.receive(data, peer, now)
    trying = sent(agent, now)
    assert statuses(trying) == [100], statuses(trying)
    (event,) = events(agent)
    assert isinstance(event, RequestReceived)
    return event.txn


@dataclass(slots=True)
class Call:
    """An established recording dialog, as seen from the SRC."""

    dialog: str
    to_tag: str
    invite: bytes
    ok: SipResponse
    peer: Peer
    cseq: int

    def in_dialog(self, method: str, **kwargs: object) -> bytes:
        self.cseq += 1
        values: dict[str, object] = {"cseq": self.cseq, "to_tag": self.to_tag}
        if self.peer.reliable:
            values["transport"] = "TCP"
        values.update(kwargs)
        return request(method, **values)  # type: ignore[arg-type]


def establish(
    agent: SipAgent,
    *,
    peer: Peer = SRC_UDP,
    now: float = 0.0,
    headers: Iterable[tuple[str, str]] = (),
    ack: bool = True,
    call_id: str = "call-1@src",
    from_tag: str = "src-tag",
) -> Call:
    """INVITE, 200 OK with an SDP answer, ACK: the usual start of a recording session."""
    transport = "TCP" if peer.reliable else "UDP"
    invite = request(
        "INVITE",
        headers=headers,
        body=SDP,
        transport=transport,
        call_id=call_id,
        from_tag=from_tag,
    )
    txn = invite_received(agent, invite, peer, now)
    assert agent.respond(txn, 200, now, body=SDP, headers=[("Content-Type", "application/sdp")])
    (ok,) = sent(agent, now)
    tag = ok.response.to_tag
    assert tag
    dialog = agent.dialog_of(txn)
    assert dialog is not None
    if ack:
        agent.receive(ack_for(invite, tag, branch=new_branch()), peer, now)
        events(agent)
    return Call(dialog, tag, invite, ok.response, peer, 1)


def test_helpers_build_a_request_the_parser_accepts() -> None:
    message = parse_message(request("INVITE", body=SDP))
    assert isinstance(message, SipRequest)
    assert message.method == "INVITE" and message.body == SDP
    assert message.cseq == (1, "INVITE")
