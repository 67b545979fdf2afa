"""Whom the recorder believes, over real sockets into a running server: a stream takes packets
only from the source the offer names (or, for NAT, the one it latched to) and from one SSRC at
a time; strangers are dropped and counted and keep no session alive; key sequences pause only
from the streams configured for it, and each such pause is an audit event; a session whose
streams never delivered a packet is flagged, not passed off as a good 0-second recording.

The offer says c=127.0.0.1 (tests/sip_client.to_loopback); strangers send from 127.0.0.2 and
127.0.0.3, which Linux routes over loopback like 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from structlog.testing import capture_logs

from api.openapi import document
from siprec_server.app import RunningServer, start_server
from siprec_server.config import load_config
from siprec_server.media.codecs import encode_ulaw
from siprec_server.media.srtp import SrtpSender, srtp_sender
from siprec_server.media.srtp_suites import find_suite
from siprec_server.sip.message import SipRequest, build_response
from siprec_server.siprec.sdp import parse_sdp
from storage import recordings
from storage.playback import read_all
from tests.audio import active_segments, decode_ogg_opus, tone, tone_level_db
from tests.integration.conftest import server_env, sip_address
from tests.integration.test_openapi import validate
from tests.integration.test_recordings_api import make_token
from tests.sip_client import Dialog, SipTestClient, interop_case

SUITE = "AES_CM_128_HMAC_SHA1_80"
CUSTOMER_LABEL, AGENT_LABEL = "16777227", "16777228"  # oracle_acme_1: sip:9000@, sip:1002@
EVENT_CODES = {d: i for i, d in enumerate("0123456789*#ABCD")}


# ------------------------------------------------------------------------------ the SRC side


def invite(*, srtp_keys: Sequence[bytes] | None = None) -> bytes:
    """oracle_acme_1 (two parties, metadata saying who sends which label) with an SDP offer that
    also offers telephone-event, and SRTP when keys are given."""
    raw = interop_case("oracle_acme_1")
    head, _, rest = raw.partition(b"Content-Type: application/sdp\r\n\r\n")
    _, _, tail = rest.partition(b"\r\n--unique-boundary-1")
    proto = "RTP/SAVP" if srtp_keys else "RTP/AVP"
    lines = ["v=0", "o=- 20076 595552 IN IP4 192.168.50.140", "s=-",
             "c=IN IP4 192.168.50.140", "t=0 0"]
    for n, (port, label) in enumerate(((20106, CUSTOMER_LABEL), (20110, AGENT_LABEL))):
        lines += [f"m=audio {port} {proto} 0 101", "a=rtpmap:0 PCMU/8000",
                  "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15",
                  f"a=label:{label}", "a=sendonly"]
        if srtp_keys:
            key = base64.b64encode(srtp_keys[n]).decode()
            lines.append(f"a=crypto:1 {SUITE} inline:{key}")
    sdp = ("\r\n".join(lines) + "\r\n").encode()
    return head + b"Content-Type: application/sdp\r\n\r\n" + sdp + b"\r\n--unique-boundary-1" + tail


class RtpSource:
    """One sender: a UDP socket bound on `host`, an SSRC, PCMU at 8 kHz in 20 ms packets, RFC
    4733 key presses, SRTP when given a key."""

    def __init__(self, host: str, ssrc: int, key: bytes | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.ssrc = ssrc
        self.seq = random.randrange(60000)
        self.ts0 = random.randrange(2**31)
        suite = find_suite(SUITE)
        assert suite is not None
        self.srtp: SrtpSender | None = srtp_sender(suite, key) if key else None

    def close(self) -> None:
        self.sock.close()

    def _packet(self, pt: int, ts: int, payload: bytes, marker: bool = False) -> bytes:
        data = struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), self.seq,
                           ts & 0xFFFFFFFF, self.ssrc) + payload
        self.seq = (self.seq + 1) & 0xFFFF
        return self.srtp.protect_rtp(data) if self.srtp else data

    def talk(self, freq: float, seconds: float, *, start: float = 0.0,
             keys: Sequence[tuple[str, float]] = ()) -> list[tuple[float, bytes]]:
        """(send time, datagram) of `seconds` of a tone from `start`; each key press (digit, at)
        takes the place of 100 ms of audio, as an SRC sends RFC 4733 events."""
        pcm = tone(freq, seconds, 8000)
        presses = {round(at / 0.02): digit for digit, at in keys}
        out: list[tuple[float, bytes]] = []
        n = 0
        ticks = round(seconds / 0.02)
        while n < ticks:
            at, ts = start + n * 0.02, self.ts0 + round(start / 0.02 + n) * 160
            if n in presses:
                code = EVENT_CODES[presses[n]]
                for k in range(1, 6):
                    end = k == 5
                    payload = struct.pack("!BBH", code, (0x80 if end else 0) | 10, 160 * k)
                    for _ in range(3 if end else 1):
                        out.append((at + k * 0.02, self._packet(101, ts, payload, k == 1)))
                n += 6
                continue
            frame = encode_ulaw(pcm[n * 160 : (n + 1) * 160])
            out.append((at, self._packet(0, ts, frame, n == 0)))
            n += 1
        return out


async def play(*schedules: tuple[RtpSource, int, list[tuple[float, bytes]]]) -> None:
    """Send every (source, port on 127.0.0.1, schedule) on time, all at once."""
    merged = sorted(
        ((at, i, source, port, data)
         for i, (source, port, schedule) in enumerate(schedules) for at, data in schedule),
        key=lambda item: (item[0], item[1]),
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    for at, _, source, port, data in merged:
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        source.sock.sendto(data, ("127.0.0.1", port))


@asynccontextmanager
async def sources(*specs: tuple[str, int, bytes | None]) -> AsyncIterator[list[RtpSource]]:
    made = [RtpSource(host, ssrc, key) for host, ssrc, key in specs]
    try:
        yield made
    finally:
        for source in made:
            source.close()


@asynccontextmanager
async def own_server(db_dsn: str, data_dir: Path, **overrides: str
                     ) -> AsyncIterator[RunningServer]:
    srv = await start_server(load_config(env=server_env(db_dsn, data_dir, **overrides)))
    try:
        yield srv
    finally:
        await srv.stop()


async def finished(srv: RunningServer, call_id: str) -> dict[str, Any]:
    for _ in range(200):
        ids = await recordings.find_by_call_id(srv.db, call_id)
        if ids:
            row = await recordings.get_recording(srv.db, ids[-1])
            if row and row["signature"] is not None and row["state"] != "recording":
                return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"no finished recording for {call_id}")


async def decoded(srv: RunningServer, row: dict[str, Any]) -> tuple[np.ndarray, int]:
    return decode_ogg_opus(await read_all(srv.db, srv.media._keys, row["id"]))


async def metrics_text(srv: RunningServer) -> str:
    host, port = srv.api_address
    async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/metrics") as r:
        assert r.status == 200
        return await r.text()


def sample(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.rsplit(" ", 1)[1])


def stats_by_label(row: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {s["label"]: s["stats"] for s in row["streams"]}


async def answered_call(src: SipTestClient, raw: bytes) -> tuple[Dialog, list[int]]:
    response, dialog = await src.invite(raw)
    assert response.status == 200 and dialog is not None
    return dialog, [m.port for m in parse_sdp(response.body).media]


# ------------------------------------------------------------------------------ sources


@pytest.mark.parametrize("srtp", [False, True], ids=["rtp", "srtp"])
async def test_packets_from_a_foreign_source_are_dropped_counted_and_never_recorded(
    server: RunningServer, srtp: bool
) -> None:
    keys = [os.urandom(30), os.urandom(30)] if srtp else None
    key0, key1 = keys if keys else (None, None)
    # The stranger holds even the SRC's key and SSRC: its packets are valid (S)RTP, and only
    # their source address gives them away.
    async with sources(("127.0.0.1", 0x1111, key0), ("127.0.0.1", 0x2222, key1),
                       ("127.0.0.2", 0x1111, key0)) as (customer, agent, stranger), \
            SipTestClient("udp", sip_address(server, "udp")) as src:
        dialog, ports = await answered_call(src, invite(srtp_keys=keys))
        forged = stranger.talk(2000, 1.6, start=0.2)
        await play((customer, ports[0], customer.talk(440, 2.0)),
                   (agent, ports[1], agent.talk(1000, 2.0)),
                   (stranger, ports[0], forged))
        await asyncio.sleep(0.3)
        assert server.media.packet_totals()["foreign_source"] == len(forged)
        text = await metrics_text(server)
        assert sample(text, 'siprec_rtp_packets_dropped_total{reason="foreign_source"}') == \
            len(forged)
        assert (await src.bye(dialog)).status == 200
    row = await finished(server, dialog.call_id)
    stats = stats_by_label(row)
    assert stats[CUSTOMER_LABEL]["foreign_source"] == len(forged)
    assert stats[CUSTOMER_LABEL]["packets_received"] == 100
    assert stats[CUSTOMER_LABEL]["srtp_auth_failures"] == 0
    assert stats[AGENT_LABEL]["foreign_source"] == 0
    assert row["summary"]["streams"]["0"]["foreign_source"] == len(forged)
    audio, rate = await decoded(server, row)
    (segment,) = active_segments(audio[:, 0], rate, 440)
    assert segment[1] - segment[0] > 1.9
    assert active_segments(audio[:, 0], rate, 2000) == [], "the stranger's tone was recorded"
    assert tone_level_db(audio[:, 0], rate, 2000) < tone_level_db(audio[:, 0], rate, 440) - 40


async def test_latch_takes_the_natted_source_and_nothing_after_it(
    db_dsn: str, data_dir: Path
) -> None:
    # The SRC behind NAT offers its private address (127.0.0.1); its packets arrive from the
    # NAT's public one (127.0.0.2). A third host (127.0.0.3) comes in later and is refused.
    async with own_server(db_dsn, data_dir, media__rtp_source="latch") as srv, \
            sources(("127.0.0.2", 0x1111, None), ("127.0.0.2", 0x2222, None),
                    ("127.0.0.3", 0x3333, None)) as (customer, agent, stranger), \
            SipTestClient("udp", sip_address(srv, "udp")) as src:
        dialog, ports = await answered_call(src, invite())
        forged = stranger.talk(2000, 1.0, start=0.5)
        await play((customer, ports[0], customer.talk(440, 2.0)),
                   (agent, ports[1], agent.talk(1000, 2.0)),
                   (stranger, ports[0], forged))
        await asyncio.sleep(0.3)
        assert (await src.bye(dialog)).status == 200
        row = await finished(srv, dialog.call_id)
        stats = stats_by_label(row)
        assert stats[CUSTOMER_LABEL]["packets_received"] == 100
        assert stats[AGENT_LABEL]["packets_received"] == 100
        assert stats[CUSTOMER_LABEL]["foreign_source"] == len(forged)
        audio, rate = await decoded(srv, row)
        for channel, freq in ((0, 440), (1, 1000)):
            (segment,) = active_segments(audio[:, channel], rate, freq)
            assert segment[1] - segment[0] > 1.9
        assert active_segments(audio[:, 0], rate, 2000) == []


async def test_packets_from_a_foreign_source_do_not_keep_a_session_alive(
    db_dsn: str, data_dir: Path
) -> None:
    async with own_server(db_dsn, data_dir, media__inactivity_timeout="5") as srv, \
            sources(("127.0.0.2", 0x1111, None)) as (stranger,), \
            SipTestClient("udp", sip_address(srv, "udp")) as src:
        dialog, ports = await answered_call(src, invite())
        answered = time.monotonic()
        # Ten seconds of a stranger's audio, twice the inactivity timeout.
        spam = asyncio.create_task(play((stranger, ports[0], stranger.talk(440, 10.0))))
        try:
            bye = await src.receive(timeout=9.0)
        finally:
            spam.cancel()
        assert isinstance(bye, SipRequest) and bye.method == "BYE"
        assert 'text="media inactive"' in (bye.headers.get("Reason") or "")
        assert time.monotonic() - answered < 8.0, "the stranger kept the session alive"
        src.send(build_response(bye, 200).to_bytes())
        row = await finished(srv, dialog.call_id)
        assert row["end_reason"] == "media inactive"
        assert stats_by_label(row)[CUSTOMER_LABEL]["foreign_source"] > 100
        assert row["no_media"] is True


# ------------------------------------------------------------------------------ DTMF control


async def test_keys_pause_only_from_the_agent_stream_and_every_pause_is_audited(
    db_dsn: str, data_dir: Path
) -> None:
    # Only the agent (sip:1002@..., who sends label 16777228 per the metadata) may pause.
    async with own_server(db_dsn, data_dir,
                          media__dtmf_control_from='["aor:sip:1002@*"]') as srv, \
            sources(("127.0.0.1", 0x1111, None), ("127.0.0.1", 0x2222, None),
                    ("127.0.0.1", 0x6666, None)) as (customer, agent, intruder), \
            SipTestClient("udp", sip_address(srv, "udp")) as src:
        dialog, ports = await answered_call(src, invite())
        await play(
            # The customer keys *1 at 1.0 s: blanked, but the customer cannot pause.
            (customer, ports[0], customer.talk(440, 4.0, keys=[("*", 1.0), ("1", 1.2)])),
            # The agent keys *1 at 2.0 s (pause) and *2 at 3.0 s (resume).
            (agent, ports[1], agent.talk(1000, 4.0, keys=[("*", 2.0), ("1", 2.2),
                                                          ("*", 3.0), ("2", 3.2)])),
            # From the agent's own address, another SSRC keys *1 at 0.4 s: dropped.
            (intruder, ports[1], intruder.talk(1000, 0.4, start=0.4, keys=[("*", 0.0),
                                                                            ("1", 0.2)])),
        )
        await asyncio.sleep(0.3)
        assert (await src.bye(dialog)).status == 200
        row = await finished(srv, dialog.call_id)
        stats = stats_by_label(row)
        assert stats[AGENT_LABEL]["foreign_ssrc"] > 0
        assert stats[AGENT_LABEL]["ssrc_changes"] == 0
        assert row["dtmf_events"] == 6
        (pause,) = row["pauses"]
        assert pause["source"] == "dtmf"
        assert 2.2 < pause["start_ms"] / 1000 < 2.6 and 3.2 < pause["end_ms"] / 1000 < 3.6
        audio, rate = await decoded(srv, row)
        # Not paused by the intruder nor by the customer: the customer's tone is there between
        # their keys and the agent's.
        segments = active_segments(audio[:, 0], rate, 440)
        assert any(a < 1.5 and b > 1.9 for a, b in segments), segments
        assert any(a < 0.3 and b > 0.9 for a, b in segments), segments
        assert all(b <= pause["start_ms"] / 1000 + 0.05 or a >= pause["end_ms"] / 1000 - 0.05
                   for a, b in segments), segments
        audits = await srv.db.fetch(
            "SELECT actor, action, target, source, outcome, details::text AS details"
            " FROM audit_events WHERE target = $1"
            " AND action IN ('recording.paused', 'recording.resumed') ORDER BY seq",
            str(row["id"]))
    assert [(a["action"], a["source"], a["actor"], a["outcome"]) for a in audits] == [
        ("recording.paused", "dtmf", "node:test-node", "success"),
        ("recording.resumed", "dtmf", "node:test-node", "success"),
    ]
    for audit, edge in zip(audits, (pause["start_ms"], pause["end_ms"]), strict=True):
        details = json.loads(audit["details"])
        assert set(details) == {"offset_s", "m_index"} and details["m_index"] == 1
        assert abs(details["offset_s"] - edge / 1000) <= 0.001
        assert "*" not in audit["details"]


async def test_hold_pauses_are_audited(server: RunningServer) -> None:
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        raw = invite()
        dialog, _ = await answered_call(src, raw)
        held = raw.replace(b"a=sendonly", b"a=inactive")
        reinvite = src.in_dialog(held, dialog)
        src.send(reinvite)
        assert (await src.response("INVITE")).status == 200
        src.send(src.ack(dialog, dialog.cseq))
        await asyncio.sleep(0.3)
        src.send(src.in_dialog(raw, dialog))
        assert (await src.response("INVITE")).status == 200
        src.send(src.ack(dialog, dialog.cseq))
        assert (await src.bye(dialog)).status == 200
    row = await finished(server, dialog.call_id)
    (pause,) = row["pauses"]
    assert pause["source"] == "hold"
    for _ in range(50):
        audits = await server.db.fetch(
            "SELECT action, source FROM audit_events WHERE target = $1"
            " AND action IN ('recording.paused', 'recording.resumed') ORDER BY seq",
            str(row["id"]))
        if len(audits) == 2:
            break
        await asyncio.sleep(0.05)
    assert [(a["action"], a["source"]) for a in audits] == [
        ("recording.paused", "hold"), ("recording.resumed", "hold")]


# ------------------------------------------------------------------------------ no media


async def test_a_session_without_media_is_flagged_and_lasts_as_long_as_the_session(
    server: RunningServer,
) -> None:
    with capture_logs() as logs:
        async with SipTestClient("udp", sip_address(server, "udp")) as src:
            dialog, _ = await answered_call(src, invite())
            answered = time.monotonic()
            await asyncio.sleep(2.0)
            ended = time.monotonic()
            assert (await src.bye(dialog)).status == 200
        row = await finished(server, dialog.call_id)
    session_s = ended - answered
    assert row["no_media"] is True and row["state"] == "complete"
    assert abs(row["duration_ms"] / 1000 - session_s) < 0.3, (row["duration_ms"], session_s)
    assert row["summary"]["no_media"] is True
    audio, rate = await decoded(server, row)
    assert audio.shape[1] == 2
    assert abs(audio.shape[0] / rate - row["duration_ms"] / 1000) < 0.08
    assert float(np.max(np.abs(audio))) < 1e-3, "silence throughout"
    (line,) = [entry for entry in logs if entry["event"] == "recording_without_media"]
    assert line["recording_id"] == str(row["id"])
    assert set(line) <= {"event", "log_level", "recording_id", "duration_s", "streams"}
    text = await metrics_text(server)
    assert sample(text, 'siprec_media_errors_total{kind="recordings_without_media"}') == 1
    token, _ = await make_token(server.db, "admin")
    host, port = server.api_address
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.get(f"http://{host}:{port}/api/v1/recordings/{row['id']}") as r:
            detail = await r.json()
        async with http.get(f"http://{host}:{port}/api/v1/recordings",
                            params={"call_id": dialog.call_id}) as r:
            (item,) = (await r.json())["items"]
    assert detail["no_media"] is True and item["no_media"] is True
    validate(detail, {"$ref": "#/components/schemas/RecordingDetail"}, document())
    assert "no_media" in document()["components"]["schemas"]["Recording"]["properties"]
