"""Resource exhaustion is contained, and only the SBC is trusted (issue 7 §3, §4).

Each test floods the server the way an attacker or a broken peer would (thousands of
connections, thousands of INVITEs, offers with dozens of m-lines, a disk that fills up) and shows
that the real SBC's calls are still answered and recorded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from siprec_server.app import RunningServer
from siprec_server.media.codecs import encode_ulaw
from siprec_server.sip.message import SipResponse, parse_message
from siprec_server.siprec.sdp import parse_sdp
from storage import recordings
from tests.audio import tone
from tests.integration.test_recording import send_rtp
from tests.integration.test_sip_errors import own_server
from tests.sip_client import SipTestClient, interop_case, set_header, to_loopback

SBC = "127.0.0.1"
STRANGER = "127.0.0.2"
TRUSTING_SBC_ONLY = {"sip__allow_from": f"{SBC}/32,any"}


def sip(srv: RunningServer, transport: str) -> tuple[str, int]:
    for kind, host, port in srv.sip_addresses:
        if kind == transport:
            return host, port
    raise LookupError(transport)


async def recorded_call(srv: RunningServer, transport: str = "udp", seconds: float = 1.0,
                        local_host: str = SBC) -> str:
    """A real SIPREC call with audio, hung up; returns its Call-ID once it is complete."""
    frames = [encode_ulaw(f) for f in np.split(tone(440, seconds, 8000), int(seconds * 50))]
    async with SipTestClient(transport, sip(srv, transport), local_host) as src:
        response, dialog = await src.invite(interop_case("oracle_acme_1"))
        assert response.status == 200 and dialog is not None, response.status
        await send_rtp(parse_sdp(response.body).media[0].port, frames, 0, ssrc=99)
        assert (await src.bye(dialog)).status == 200
    for _ in range(100):
        ids = await recordings.find_by_call_id(srv.db, dialog.call_id)
        row = await recordings.get_recording(srv.db, ids[-1]) if ids else None
        if row and row["state"] == "complete" and row["signature"] is not None:
            assert row["duration_ms"] >= seconds * 1000 - 200
            return dialog.call_id
        await asyncio.sleep(0.05)
    raise AssertionError("the real call was not recorded")


def invite_bytes(port: int, *, transport: str = "udp", m_lines: int | None = None) -> bytes:
    """An interop INVITE with a fresh Call-ID, optionally with `m_lines` audio m-lines."""
    message = to_loopback(interop_case("oracle_acme_1"), transport=transport, port=port)
    message = set_header(message, "Call-ID", f"flood-{secrets.token_hex(8)}@{STRANGER}")
    if m_lines is not None:
        request = parse_message(message)
        boundary = (request.headers.get("Content-Type") or "").split("boundary=")[1].strip('"')
        sdp = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               + "".join(f"m=audio {40000 + 2 * i} RTP/AVP 0\r\na=label:{i}\r\na=sendonly\r\n"
                         for i in range(m_lines)))
        body = (f"--{boundary}\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n"
                f"--{boundary}--\r\n").encode()
        head = message.partition(b"\r\n\r\n")[0]
        message = head + b"\r\n\r\n" + body
        message = set_header(message, "Content-Length", str(len(body)))
    return message


class UdpPeer(asyncio.DatagramProtocol):
    """Counts final answers per INVITE (a 200 is retransmitted until ACKed: counted once)."""

    def __init__(self) -> None:
        self.final: dict[str, int] = {}

    @property
    def answers(self) -> Counter[int]:
        return Counter(self.final.values())

    def datagram_received(self, data: bytes, addr: object) -> None:
        with contextlib.suppress(Exception):
            message = parse_message(data)
            if isinstance(message, SipResponse) and message.status >= 200:
                self.final.setdefault(message.call_id, message.status)


@pytest.fixture
async def guarded_server(db_dsn: str, data_dir: Path) -> AsyncIterator[RunningServer]:
    async with own_server(db_dsn, data_dir, rtp_ports=400, **TRUSTING_SBC_ONLY,
                          sip__listen="udp:127.0.0.1:0,tcp:127.0.0.1:0",
                          sip__max_connections_per_source="20",
                          sip__max_sessions_per_source="50",
                          sip__message_timeout="2") as srv:
        yield srv


async def test_thousands_of_connections_from_a_stranger_leave_the_sbc_its_calls(
    guarded_server: RunningServer,
) -> None:
    srv = guarded_server
    host, port = sip(srv, "tcp")
    loop = asyncio.get_running_loop()
    writers: list[asyncio.StreamWriter] = []
    refused = 0
    for _ in range(2000):
        try:
            reader, writer = await asyncio.open_connection(host, port,
                                                           local_addr=(STRANGER, 0))
        except OSError:
            refused += 1
            continue
        writers.append(writer)
        writer.write(b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2")  # never finished
    await asyncio.sleep(0.5)
    assert srv.sip.open_connections <= 20
    assert srv.sip.counters.refused_connections + refused >= 2000 - 20

    # The SBC's calls go through, over TCP and over UDP, while the stranger's connections sit.
    await recorded_call(srv, "tcp")
    await recorded_call(srv, "udp")

    # The half-sent messages are cut off after the message timeout.
    deadline = loop.time() + 10
    while srv.sip.open_connections and loop.time() < deadline:
        await asyncio.sleep(0.2)
    assert srv.sip.open_connections == 0
    assert srv.sip.counters.message_timeouts >= 1
    for writer in writers:
        writer.close()


async def test_an_invite_flood_from_a_stranger_is_capped_and_the_sbc_is_not(
    guarded_server: RunningServer,
) -> None:
    srv = guarded_server
    host, port = sip(srv, "udp")
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(UdpPeer, local_addr=(STRANGER, 0))
    local_port = transport.get_extra_info("sockname")[1]
    try:
        flood = [invite_bytes(local_port) for _ in range(2000)]
        real = asyncio.gather(*(recorded_call(srv) for _ in range(5)))
        for start in range(0, len(flood), 100):
            for message in flood[start:start + 100]:
                transport.sendto(message, (host, port))
            await asyncio.sleep(0.05)
        await real  # five real calls, answered and recorded during the flood
        await asyncio.sleep(1.0)
    finally:
        transport.close()
    # Most of the flood is dropped unparsed (over the rate, or by the kernel when the socket
    # buffer is full); of what is parsed, sessions over the cap get 503; at most the cap is
    # ever answered with 200.
    assert peer.answers[200] <= 50, peer.answers
    assert srv.sip.counters.rate_limited >= 500
    assert sum(peer.answers.values()) <= 400, peer.answers


async def test_offers_with_dozens_of_m_lines_are_refused_and_hold_no_ports(
    guarded_server: RunningServer,
) -> None:
    srv = guarded_server
    host, port = sip(srv, "udp")
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(UdpPeer, local_addr=(SBC, 0))
    local_port = transport.get_extra_info("sockname")[1]
    try:
        for _ in range(78):
            transport.sendto(invite_bytes(local_port, m_lines=64), (host, port))
            await asyncio.sleep(0.01)
        deadline = loop.time() + 10
        while sum(peer.answers.values()) < 78 and loop.time() < deadline:
            await asyncio.sleep(0.1)
    finally:
        transport.close()
    assert peer.answers == Counter({488: 78})
    assert srv.media.ports_in_use == 0
    assert srv.recorder.counters.too_many_streams == 78
    await recorded_call(srv)


async def test_sources_outside_the_allow_list_get_nothing(db_dsn: str, data_dir: Path) -> None:
    async with own_server(db_dsn, data_dir, sip__allow_from=f"{SBC}/32",
                          sip__listen="udp:127.0.0.1:0,tcp:127.0.0.1:0") as srv:
        async with SipTestClient("udp", sip(srv, "udp"), STRANGER) as stranger:
            stranger.send(to_loopback(interop_case("oracle_acme_1"), transport="udp",
                                      port=stranger.port))
            assert await stranger.no_message(within=1.0)  # no answer: no reflection
        reader, writer = await asyncio.open_connection(*sip(srv, "tcp"),
                                                       local_addr=(STRANGER, 0))
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed at once
        writer.close()
        assert srv.sip.counters.refused_sources >= 2
        await recorded_call(srv)
        assert await recordings_count(srv) == 1


async def recordings_count(srv: RunningServer) -> int:
    return int(await srv.db.fetchval("SELECT count(*) FROM recordings"))


def with_sdes(message: bytes) -> bytes:
    """The same INVITE offering SRTP (RTP/SAVP with an SDES key on every m-line)."""
    key = base64.b64encode(os.urandom(30)).decode()
    out = re.sub(rb"(m=audio \d+ )RTP/AVP( [^\r\n]*\r\n)",
                 lambda m: m.group(1) + b"RTP/SAVP" + m.group(2)
                 + f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n".encode(), message)
    assert out != message
    return out


async def test_srtp_keys_over_plain_sip_are_refused_unless_allowed(
    db_dsn: str, data_dir: Path
) -> None:
    offer = with_sdes(interop_case("oracle_acme_1"))
    async with own_server(db_dsn, data_dir, sip__sdes_over_plain_sip="refuse") as srv:
        async with SipTestClient("udp", sip(srv, "udp")) as src:
            response, dialog = await src.invite(offer)
        assert response.status == 488 and dialog is None
        assert srv.recorder.counters.sdes_refused == 1
        assert srv.media.ports_in_use == 0
    async with (own_server(db_dsn, data_dir, sip__sdes_over_plain_sip="loopback") as srv,
                SipTestClient("udp", sip(srv, "udp")) as src):
        response, dialog = await src.invite(offer)
        assert response.status == 200 and b"a=crypto" in response.body
        assert dialog is not None and (await src.bye(dialog)).status == 200


# ------------------------------------------------------------------------------ disk full


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 12 MiB tmpfs as data_dir: a disk that really fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = Path(tempfile.mkdtemp(prefix="siprec-small-disk-"))
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m,mode=0755", "tmpfs",
                             str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(mount, ignore_errors=True)


def fill(disk: Path, leave_bytes: int) -> Path:
    """A filler file (zeros, not audio) that leaves about `leave_bytes` free."""
    filler = disk / "filler"
    st = os.statvfs(disk)
    size = max(0, st.f_bavail * st.f_frsize - leave_bytes)
    with open(filler, "wb") as f:
        f.truncate(0)
        chunk = b"\0" * 65536
        written = 0
        with contextlib.suppress(OSError):
            while written < size:
                written += f.write(chunk[: min(65536, size - written)])
    return filler


async def wait_for(condition: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.1)


async def test_below_the_free_space_floor_calls_are_sealed_and_new_ones_refused(
    db_dsn: str, small_disk: Path
) -> None:
    async with own_server(db_dsn, small_disk, server__min_free_disk_mb="4") as srv:
        frames = [encode_ulaw(f) for f in np.split(tone(440, 6.0, 8000), 300)]
        async with SipTestClient("udp", sip(srv, "udp")) as src:
            response, dialog = await src.invite(interop_case("oracle_acme_1"))
            assert response.status == 200 and dialog is not None
            sender = asyncio.create_task(
                send_rtp(parse_sdp(response.body).media[0].port, frames, 0, ssrc=3))
            await asyncio.sleep(1.5)
            filler = fill(small_disk, 2 * 2**20)  # 2 MiB left, under the 4 MiB floor
            bye = await src.receive(timeout=5)  # the recorder hangs up
            assert getattr(bye, "method", None) == "BYE"
            sender.cancel()
        await wait_for(lambda: srv.media.disk_low)
        async with SipTestClient("udp", sip(srv, "udp")) as src:
            refused, _ = await src.invite(interop_case("oracle_acme_1"))
        assert refused.status == 503 and refused.headers.get("Retry-After")

        [recording_id] = await recordings.find_by_call_id(srv.db, dialog.call_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        # The recorder ends the row after the media is sealed and signed (and audited).
        while (row := await recordings.get_recording(srv.db, recording_id)) is not None and (
                row["state"] == "recording") and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert row is not None
        assert row["state"] == "interrupted" and row["end_reason"] == "disk space low"
        assert row["signature"] is not None and 1000 <= row["duration_ms"] <= 3000

        filler.unlink()  # space is back: calls are taken again
        await wait_for(lambda: not srv.media.disk_low)
        await recorded_call(srv)


async def test_a_write_that_hits_enospc_ends_the_call_and_is_sealed_when_space_is_back(
    db_dsn: str, small_disk: Path
) -> None:
    async with own_server(db_dsn, small_disk, server__min_free_disk_mb="0") as srv:
        frames = [encode_ulaw(f) for f in np.split(tone(440, 8.0, 8000), 400)]
        async with SipTestClient("udp", sip(srv, "udp")) as src:
            response, dialog = await src.invite(interop_case("oracle_acme_1"))
            assert response.status == 200 and dialog is not None
            sender = asyncio.create_task(
                send_rtp(parse_sdp(response.body).media[0].port, frames, 0, ssrc=3))
            await asyncio.sleep(2.5)  # a couple of chunks flushed to the file
            filler = fill(small_disk, 0)  # nothing left at all
            bye = await src.receive(timeout=10)
            assert getattr(bye, "method", None) == "BYE"
            sender.cancel()
        [recording_id] = await recordings.find_by_call_id(srv.db, dialog.call_id)
        await wait_for(lambda: srv.media.counters.calls_cut_by_disk == 1)
        filler.unlink()
        async def sealed() -> bool:
            row = await recordings.get_recording(srv.db, recording_id)
            return bool(row and row["signature"] is not None)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not await sealed():
            assert loop.time() < deadline, "never sealed"
            await asyncio.sleep(0.2)
        row = await recordings.get_recording(srv.db, recording_id)
        assert row is not None and row["state"] == "interrupted" and row["recovered"]
        await recorded_call(srv)
