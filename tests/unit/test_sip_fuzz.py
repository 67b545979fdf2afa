"""Property tests of the SIP core with hostile input: random bytes and mutated real messages.

Whatever arrives, `SipAgent.receive` never raises, everything it sends parses back, and once the
fake clock has run far enough (and the dialogs are hung up) no transaction, dialog or timer is
left behind. Inputs that ever broke it live in tests/regressions/sip/ and are replayed here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from siprec_server.sip.agent import SipAgent
from siprec_server.sip.events import Peer, RequestReceived
from siprec_server.sip.message import SipParseError, SipResponse, StreamFramer, parse_message
from tests.interop import INTEROP_DIR
from tests.unit.test_sip_support import (
    SDP,
    SRC_TCP,
    SRC_UDP,
    establish,
    events,
    make_agent,
    request,
)

HOST = re.compile(r"[A-Za-z0-9.\-]+|[0-9A-Fa-f:.]+")
REGRESSIONS = Path(__file__).resolve().parents[1] / "regressions" / "sip"
INTEROP = INTEROP_DIR
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

STATUSES = [None, 100, 180, 183, 200, 202, 400, 404, 486, 488, 500, 503, 603]
HEADER_NAMES = [
    "Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Contact", "m", "Content-Length",
    "l", "Max-Forwards", "Session-Expires", "x", "Min-SE", "Require", "Supported", "k",
    "Record-Route", "Route", "Allow", "Content-Type", "c", "Timestamp",
]  # fmt: skip
NASTY_VALUES = [
    "", " ", "0", "-1", "\u00b2", "\u0663", "99999999999", "2147483648 INVITE", "1 BYE",
    "<sip:a@b;self>", "<sip:a@b>;self=1", "<tel:+1>", "<sips:[::1]:99999>", "*", "<", ">",
    "SIP/2.0/UDP h;rport=\u00b2;branch=z9hG4bKx", "SIP/2.0/UDP h;maddr=;branch=z9hG4bKx",
    "SIP/2.0/UDP [::1]:5060;branch=z9hG4bK1;received=::1", "SIP/2.0/UDP h:0",
    "90;refresher=uas", "1800;refresher=", "timer, 100rel", '"a,b" <sip:x@y>;tag=1',
    "\udcff\udcfe", "a\tb", "z9hG4bK", "multipart/mixed;boundary=",
]  # fmt: skip


class Harness:
    """One agent, a transaction user answering at random, and the wire checks."""

    def __init__(self) -> None:
        self.agent: SipAgent = make_agent()
        self.now = 0.0
        self.call = establish(self.agent)
        self.answered = 0
        """Responses the agent sent to the messages fed in."""

    def seeds(self) -> list[bytes]:
        call = self.call
        tag = call.to_tag
        timer = [("Supported", "timer"), ("Session-Expires", "90"), ("Allow", "UPDATE")]
        seeds = [
            request("INVITE", body=SDP, branch="z9hG4bK-seed-1", headers=timer),
            request("OPTIONS", branch="z9hG4bK-seed-2"),
            request("CANCEL", branch="z9hG4bK-seed-3", call_id="fuzz-2"),
            request("INVITE", body=SDP, branch="z9hG4bK-seed-3", call_id="fuzz-2"),
            request("BYE", to_tag=tag, cseq=5, branch="z9hG4bK-seed-4"),
            request("UPDATE", to_tag=tag, cseq=6, body=SDP, branch="z9hG4bK-seed-5"),
            request("INFO", to_tag=tag, cseq=7, body=b"1", content_type="x/y", branch="z9hG4bK-s6"),
            request(
                "INVITE",
                to_tag=tag,
                cseq=8,
                body=SDP,
                branch="z9hG4bK-seed-7",
                headers=[("k", "timer"), ("x", "120;refresher=uas"), ("Allow", "UPDATE")],
            ),
            request("ACK", to_tag=tag, cseq=1, branch="z9hG4bK-seed-8"),
            request("ACK", to_tag=tag, cseq=8, branch="z9hG4bK-seed-9"),
            request("OPTIONS", to_tag=tag, cseq=9, transport="TCP", branch="z9hG4bK-seed-10"),
        ]
        seeds.extend(p.read_bytes() for p in sorted(INTEROP.glob("*.sip")))
        return seeds

    def feed(self, data: bytes, peer: Peer, statuses: list[int | None]) -> None:
        self.now += 0.25
        self.agent.receive(data, peer, self.now)
        self.drain(statuses)

    def drain(self, statuses: list[int | None]) -> None:
        while (event := self.agent.next_event()) is not None:
            if isinstance(event, RequestReceived) and statuses:
                status = statuses.pop()
                if status is not None:
                    body = SDP if status < 300 and event.request.method == "INVITE" else b""
                    self.agent.respond(event.txn, status, self.now, body=body)
        self.check_wire()

    def check_wire(self) -> None:
        for out in self.agent.messages_to_send():
            message = parse_message(out.data)
            if isinstance(message, SipResponse):
                self.answered += 1
                assert 100 <= message.status <= 699
                assert message.headers.get("CSeq") is not None
            assert HOST.fullmatch(out.peer.host) and 0 < out.peer.port < 65536, out.peer

    def finish(self) -> None:
        """Run the clock far, hang up what is left, run it again: nothing may remain."""
        agent = self.agent
        for horizon in (200.0, 2_000.0):
            self.now += horizon
            self.run_clock()
            for dialog in agent.dialog_ids():
                agent.end_dialog(dialog, self.now)
            self.drain([])
        self.now += 10_000.0
        self.run_clock()
        assert agent.dialog_ids() == []
        assert not agent._server, agent._server  # noqa: SLF001 - the point of the test
        assert not agent._by_id  # noqa: SLF001
        assert not agent._client  # noqa: SLF001
        assert not agent._dialogs  # noqa: SLF001
        assert agent.get_timer() is None

    def run_clock(self) -> None:
        while (deadline := self.agent.get_timer()) is not None and deadline <= self.now:
            self.agent.handle_timer(deadline)
            self.drain([])


def mutate(data: bytes, draw: st.DataObject) -> bytes:
    lines = data.split(b"\r\n")
    for _ in range(draw.draw(st.integers(1, 4), label="mutations")):
        op = draw.draw(
            st.sampled_from(
                ["delete", "duplicate", "garble", "header", "insert", "swap", "truncate", "lf"]
            ),
            label="op",
        )
        i = draw.draw(st.integers(0, max(0, len(lines) - 1)), label="line")
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "garble" and lines[i]:
            line = bytearray(lines[i])
            for _ in range(draw.draw(st.integers(1, 3))):
                pos = draw.draw(st.integers(0, len(line) - 1))
                line[pos] = draw.draw(st.integers(0, 255))
            lines[i] = bytes(line)
        elif op == "header":
            name = draw.draw(st.sampled_from(HEADER_NAMES), label="name")
            value = draw.draw(
                st.one_of(st.sampled_from(NASTY_VALUES), st.text(max_size=40)), label="value"
            )
            raw = f"{name}: {value}".encode("utf-8", "surrogateescape")
            if draw.draw(st.booleans(), label="replace"):
                lines[i] = raw
            else:
                lines.insert(max(1, i), raw)
        elif op == "insert":
            lines.insert(i, draw.draw(st.binary(max_size=60), label="junk"))
        elif op == "swap":
            j = draw.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "truncate":
            joined = b"\r\n".join(lines)
            cut = draw.draw(st.integers(0, len(joined)), label="cut")
            lines = joined[:cut].split(b"\r\n")
        elif op == "lf":
            return b"\n".join(lines)
    return b"\r\n".join(lines)


peers = st.sampled_from([SRC_UDP, SRC_TCP, Peer("udp", "203.0.113.9", 61000)])
tu_answers = st.lists(st.sampled_from(STATUSES), max_size=8)


@FUZZ
@given(data=st.binary(max_size=1500), peer=peers, answers=tu_answers)
def test_random_bytes_never_break_the_agent(data: bytes, peer: Peer, answers: list) -> None:  # type: ignore[type-arg]
    harness = Harness()
    harness.feed(data, peer, answers)
    harness.feed(b"INVITE sip:x@y SIP/2.0\r\n" + data, peer, answers)
    harness.finish()


@FUZZ
@given(draw=st.data(), peer=peers, answers=tu_answers)
def test_mutated_real_messages_never_break_the_agent(
    draw: st.DataObject,
    peer: Peer,
    answers: list,  # type: ignore[type-arg]
) -> None:
    harness = Harness()
    seeds = harness.seeds()
    for _ in range(draw.draw(st.integers(1, 5), label="steps")):
        step = draw.draw(st.sampled_from(["feed", "feed", "feed", "tick", "hangup"]), label="step")
        if step == "tick":
            # Let retransmission and session timers run part of their course.
            harness.now += draw.draw(st.sampled_from([0.5, 4.0, 31.0, 33.0, 61.0]), label="dt")
            harness.run_clock()
        elif step == "hangup":
            for dialog in harness.agent.dialog_ids():
                harness.agent.end_dialog(dialog, harness.now, "fuzz")
            harness.drain(answers)
        else:
            seed = draw.draw(st.sampled_from(seeds), label="seed")
            mutated = mutate(seed, draw) if draw.draw(st.booleans(), label="mutate") else seed
            harness.feed(mutated, peer, answers)
            if draw.draw(st.booleans(), label="retransmit"):
                harness.feed(mutated, peer, answers)
    harness.finish()


@FUZZ
@given(
    stream=st.lists(st.binary(max_size=300), max_size=6),
    splits=st.lists(st.integers(1, 200), min_size=1, max_size=10),
)
def test_stream_framer_raises_only_its_error_and_never_loses_bytes(
    stream: list[bytes], splits: list[int]
) -> None:
    valid = [request("OPTIONS"), request("INVITE", body=SDP)]
    data = b"".join(valid[i % 2] if i % 3 == 0 else chunk for i, chunk in enumerate(stream))
    framer = StreamFramer(max_message=4096)
    agent = make_agent()
    pos = 0
    i = 0
    try:
        while pos < len(data):
            step = splits[i % len(splits)]
            i += 1
            for message in framer.feed(data[pos : pos + step]):
                agent.receive(message, SRC_TCP, 0.0)
            pos += step
    except SipParseError:
        pass
    for out in agent.messages_to_send():
        parse_message(out.data)


def test_valid_messages_framed_in_any_split_come_out_whole() -> None:
    messages = [request("OPTIONS"), request("INVITE", body=SDP), request("BYE", to_tag="x")]
    stream = b"\r\n\r\n".join(messages)
    for step in (1, 2, 3, 5, 64, 1000):
        framer = StreamFramer()
        out: list[bytes] = []
        for pos in range(0, len(stream), step):
            out.extend(framer.feed(stream[pos : pos + step]))
        assert out == messages
        assert framer.pings == 2


# ---------------------------------------------------------------- the regression corpus


def regression_inputs() -> list[Path]:
    return sorted(p for p in REGRESSIONS.glob("*.sip"))


@pytest.mark.parametrize("path", regression_inputs(), ids=lambda p: p.stem)
@pytest.mark.parametrize("peer", [SRC_UDP, SRC_TCP], ids=["udp", "tcp"])
def test_regression_input_is_handled(path: Path, peer: Peer) -> None:
    """Each file once broke the core. `{{TO_TAG}}` stands for the tag of an established dialog
    (Call-ID call-1@src, From tag src-tag) so that in-dialog inputs reach it."""
    for answer in (200, 488, None):
        harness = Harness()
        data = path.read_bytes().replace(b"{{TO_TAG}}", harness.call.to_tag.encode())
        harness.feed(data, peer, [answer])
        harness.feed(data, peer, [answer])  # and its retransmission
        assert harness.answered >= 1  # every input in the corpus is a request that deserves one
        events(harness.agent)
        harness.finish()


def test_regression_corpus_is_not_empty() -> None:
    assert len(regression_inputs()) >= 5
