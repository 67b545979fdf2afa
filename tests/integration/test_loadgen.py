"""Our SIPREC client against a real server: calls answered, one recording each in PostgreSQL,
complete after BYE; and, captured on the loopback interface, the client sends exactly what its
reports say. (Assertions on the recorded audio come with media recording.)"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import socket
import struct
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from siprec_server.app import RunningServer
from siprec_server.media.codecs import ULAW_TO_LINEAR
from siprec_server.media.srtp_suites import find_suite
from siprec_server.tools.siprec_client import (
    CallPlan,
    CallReport,
    DtmfDigit,
    Hold,
    Impairments,
    StreamReport,
    default_streams,
    run_calls,
)
from storage import recordings
from tests.audio import dominant_frequency
from tests.integration.conftest import sip_address

DURATION = 2.0
PORT_MIN, PORT_MAX = 20000, 29999  # the server's default RTP range


# --- capture on lo -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Datagram:
    at: float
    src_port: int
    dst_port: int
    payload: bytes


def _bpf_udp_to_ports(low: int, high: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF: IPv4, UDP, not a fragment, destination port in [low, high]."""
    return [
        (0x28, 0, 0, 12),        # ldh [12]            ethertype
        (0x15, 0, 9, 0x0800),    # jeq IPv4 else drop
        (0x30, 0, 0, 23),        # ldb [23]            protocol
        (0x15, 0, 7, 17),        # jeq UDP else drop
        (0x28, 0, 0, 20),        # ldh [20]            fragment offset
        (0x45, 5, 0, 0x1FFF),    # jset -> drop
        (0xB1, 0, 0, 14),        # ldxb 4*([14]&0xf)   IP header length
        (0x48, 0, 0, 16),        # ldh [x+16]          UDP destination port
        (0x35, 0, 2, low),       # jge low else drop
        (0x25, 1, 0, high),      # jgt high -> drop
        (0x06, 0, 0, 0x40000),   # accept
        (0x06, 0, 0, 0),         # drop
    ]


class LoopbackCapture:
    """Every UDP datagram sent to 127.0.0.1 ports PORT_MIN..PORT_MAX, as the kernel saw it
    leave, read by an AF_PACKET socket (needs CAP_NET_RAW) with a BPF filter."""

    def __init__(self) -> None:
        self.datagrams: list[Datagram] = []
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        program = _bpf_udp_to_ports(PORT_MIN, PORT_MAX)
        buffer = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in program))
        fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
        self._sock.setsockopt(socket.SOL_SOCKET, 26, fprog)  # SO_ATTACH_FILTER
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self._sock.bind(("lo", 0))
        self._sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                frame, address = self._sock.recvfrom(65536)
            except BlockingIOError:
                return
            if address[2] != socket.PACKET_OUTGOING:  # lo shows each packet twice
                continue
            ip = frame[14:]
            if len(ip) < 28 or ip[9] != 17 or ip[16:20] != b"\x7f\x00\x00\x01":
                continue
            header = (ip[0] & 0x0F) * 4
            src, dst, length = struct.unpack_from("!HHH", ip, header)
            self.datagrams.append(
                Datagram(time.time(), src, dst, ip[header + 8 : header + length]))

    def of(self, stream: StreamReport) -> list[Datagram]:
        assert stream.remote is not None
        return [d for d in self.datagrams
                if (d.src_port, d.dst_port) == (stream.local_port, stream.remote[1])]

    def close(self) -> None:
        self._read()
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()


@pytest.fixture
async def loopback() -> Any:
    try:
        capture = LoopbackCapture()
    except (PermissionError, OSError):
        yield None
        return
    try:
        yield capture
    finally:
        capture.close()


# --- checks ------------------------------------------------------------------------------------


async def recording_of(srv: RunningServer, call_id: str, state: str) -> dict[str, Any]:
    """The one recording of a call, once it reached `state`."""
    for _ in range(200):
        ids = await recordings.find_by_call_id(srv.db, call_id)
        assert len(ids) <= 1, "one SIPREC session makes one recording"
        if ids:
            row = await recordings.get_recording(srv.db, ids[0])
            if row is not None and row["state"] == state:
                return row
        await asyncio.sleep(0.02)
    raise AssertionError(f"the recording of {call_id} never reached {state}")


def check_sip(call: CallReport) -> None:
    assert call.ok, call.error
    assert call.invite is not None and call.invite.status == 200
    assert call.bye is not None and call.bye.status == 200
    assert call.bye.sent_after >= DURATION
    assert call.media_seconds == pytest.approx(DURATION)


def headers(datagrams: list[Datagram]) -> Iterator[tuple[int, int, int, int, int]]:
    """(marker, payload type, sequence number, timestamp, ssrc) of each datagram."""
    for d in datagrams:
        b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", d.payload)
        assert b0 == 0x80
        yield b1 >> 7, b1 & 0x7F, seq, ts, ssrc


def descents(seqs: list[int]) -> int:
    return sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if 0 < (a - b) & 0xFFFF < 0x8000)


def check_wire(stream: StreamReport, wire: list[Datagram], *, impaired: bool = False) -> None:
    """What was captured is what the stream's report says it sent."""
    assert stream.send_errors == 0
    assert stream.datagrams_sent == stream.packets - stream.dropped + stream.duplicated
    assert len(wire) == stream.datagrams_sent
    fields = list(headers(wire))
    assert {f[4] for f in fields} == {stream.ssrc}
    seqs = [f[2] for f in fields]
    assert len(set(seqs)) == stream.packets - stream.dropped
    assert len(seqs) - len(set(seqs)) == stream.duplicated
    assert descents(seqs) == stream.reordered
    suite = find_suite(stream.srtp_suite) if stream.srtp_suite else None
    tag = suite.rtp_auth_tag_len if suite else 0
    audio = [d for d, f in zip(wire, fields, strict=True) if f[1] == stream.payload_type]
    assert {len(d.payload) for d in audio} == {12 + 160 + tag}
    assert stream.first_packet_at == pytest.approx(wire[0].at, abs=0.05)
    if not impaired:
        assert stream.dropped == stream.duplicated == stream.reordered == 0
        assert seqs == [(stream.first_seq + i) & 0xFFFF for i in range(stream.packets)]
        assert fields[0][0] == 1 and fields[0][3] == stream.first_timestamp
        assert sum(1 for f in fields if f[1] == 101) == stream.event_packets
        assert len(audio) == stream.audio_packets
        # Real-time pacing: 2 s of media takes 2 s on the wire.
        assert wire[-1].at - wire[0].at == pytest.approx(DURATION - 0.02, abs=0.25)


# --- tests -------------------------------------------------------------------------------------


async def test_three_concurrent_calls_are_answered_and_recorded_completely(
    server: RunningServer, loopback: LoopbackCapture | None
) -> None:
    suites = [None, "AES_CM_128_HMAC_SHA1_80", "AES_256_CM_HMAC_SHA1_80"]
    plans = [
        CallPlan(streams=default_streams(2, "PCMU", suites[0]), duration=DURATION),
        CallPlan(streams=default_streams(2, "PCMU", suites[1]), duration=DURATION),
        CallPlan(streams=default_streams(2, "PCMU", suites[2]), duration=DURATION,
                 transport="tcp"),
    ]
    addresses = {"udp": sip_address(server, "udp"), "tcp": sip_address(server, "tcp")}
    report = await run_calls(addresses, plans, concurrency=3, rate=50, hard_timeout=12)

    assert len(report.calls) == 3 and report.failed == 0
    assert report.sender.max_streams == 6, "the three calls overlapped"
    for call, plan, suite in zip(report.calls, plans, suites, strict=True):
        check_sip(call)
        assert call.transport == plan.transport
        for stream in call.streams:
            assert stream.answered and stream.srtp_suite == suite
            assert stream.audio_packets == 100 and stream.datagrams_sent == 100
            assert stream.send_errors == 0
            if loopback is not None:
                check_wire(stream, loopback.of(stream))
        row = await recording_of(server, call.call_id, "complete")
        assert row["session_id"] == call.session_id
        assert row["transport"] == plan.transport
        assert row["ended_at"] is not None
        assert [(s["m_index"], s["label"], s["codec"], s["srtp_suite"], s["local_port"],
                 s["remote_port"], s["direction"]) for s in row["streams"]] == [
            (i, st.label, "PCMU/8000", suite, st.remote[1] if st.remote else None,
             st.local_port, "sendonly") for i, st in enumerate(call.streams)]
        assert {(p["aor"], p["name"]) for p in row["participants"]} == {
            (s.participant.aor, s.participant.name) for s in plan.streams}
        assert len(row["metadata_events"]) == 1
    assert len({s.ssrc for c in report.calls for s in c.streams}) == 6


async def test_what_the_client_reports_is_what_went_on_the_wire(
    server: RunningServer, loopback: LoopbackCapture | None
) -> None:
    if loopback is None:
        pytest.skip("capturing on lo needs CAP_NET_RAW")
    plain, secured = default_streams(2, "PCMU")
    with_dtmf_and_hold = CallPlan(
        streams=(plain, dataclasses.replace(secured, srtp="AEAD_AES_128_GCM")),
        duration=DURATION, dtmf=(DtmfDigit("7", at=0.5, duration=0.1),),
        dtmf_inband="none", hold=Hold(1.0, 1.4),
    )
    impaired = CallPlan(
        streams=default_streams(2, "G722", "AES_CM_128_HMAC_SHA1_32"), duration=DURATION,
        impairments=Impairments(loss_percent=5, reorder_percent=5, duplicate_percent=5,
                                seed=11),
    )
    report = await run_calls(sip_address(server, "udp"), [with_dtmf_and_hold, impaired],
                             concurrency=2, rate=50, hard_timeout=12)
    first, second = report.calls
    for call in report.calls:
        check_sip(call)
        await recording_of(server, call.call_id, "complete")

    # The call with DTMF and hold: every packet accounted for, in order.
    assert [(x.status, x.cseq) for x in first.reinvites] == [(200, 2), (200, 3)]
    key, other = first.streams
    for stream in first.streams:
        check_wire(stream, loopback.of(stream))
    fields = list(headers(loopback.of(key)))
    events = [f for f in fields if f[1] == 101]
    assert len(events) == key.event_packets == 7  # 5 updates/end + 2 end repeats (RFC 4733)
    assert {f[3] for f in events} == {(key.first_timestamp + 25 * 160) & 0xFFFFFFFF}
    assert [f[0] for f in events] == [1, 0, 0, 0, 0, 0, 0]
    assert [(d.digit, d.stream, d.planned_at, d.duration_ms) for d in first.dtmf] == [
        ("7", 0, 0.5, 100)]
    # Hold: no audio for the ticks on hold; the clock jumped; the talkspurt after is marked.
    audio = [f for f in fields if f[1] == 0]
    gaps = [(a, b) for a, b in zip(audio, audio[1:], strict=False)
            if (b[3] - a[3]) & 0xFFFFFFFF > 160]
    assert len(gaps) == 2  # the DTMF (no in-band audio) and the hold
    hold_gap = max(gaps, key=lambda g: (g[1][3] - g[0][3]) & 0xFFFFFFFF)
    assert ((hold_gap[1][3] - hold_gap[0][3]) & 0xFFFFFFFF) / 8000 >= 0.4
    assert hold_gap[1][0] == 1
    assert other.srtp_suite == "AEAD_AES_128_GCM" and other.event_packets == 0
    # The plain stream's audio is the 440 Hz tone it was planned with.
    pcm = ULAW_TO_LINEAR[np.frombuffer(
        b"".join(d.payload[12:] for d in loopback.of(key)[:20]), dtype=np.uint8)]
    assert dominant_frequency(pcm, 8000) == pytest.approx(440, abs=3)

    # The impaired call: drops, duplicates and reorderings exactly as reported.
    for stream in second.streams:
        assert stream.dropped > 0 and stream.duplicated > 0 and stream.reordered > 0
        check_wire(stream, loopback.of(stream), impaired=True)
    # Nothing went from our media sockets to any other of the recorder's ports.
    per_port: dict[int, int] = defaultdict(int)
    for d in loopback.datagrams:
        per_port[d.src_port] += 1
    assert all(per_port[s.local_port] == s.datagrams_sent
               for c in report.calls for s in c.streams)
