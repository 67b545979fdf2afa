"""End to end: a SIPREC call with two parties' RTP over loopback becomes an encrypted Ogg Opus
recording whose decoded audio has each party's tone on its own channel, for the right time."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from pathlib import Path

from siprec_server.app import RunningServer, start_server
from siprec_server.config import load_config
from siprec_server.media.codecs import encode_ulaw
from siprec_server.sip.message import SipRequest, build_response
from siprec_server.siprec.sdp import parse_sdp
from storage import recordings
from storage.playback import read_all
from tests.audio import active_segments, decode_ogg_opus, tone, tone_level_db
from tests.integration.conftest import server_env, sip_address
from tests.integration.test_interop import wait_for_state
from tests.sip_client import SipTestClient, interop_case


async def send_rtp(port: int, payloads: list[bytes], pt: int, *, ssrc: int,
                   samples: int = 160, ptime: float = 0.02) -> None:
    """Paced plain RTP to the recorder's port on loopback."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seq = random.randrange(65536)
    ts = random.randrange(2**32)
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        for i, payload in enumerate(payloads):
            header = struct.pack("!BBHII", 0x80, pt | (0x80 if i == 0 else 0),
                                 (seq + i) & 0xFFFF, (ts + i * samples) & 0xFFFFFFFF, ssrc)
            sock.sendto(header + payload, ("127.0.0.1", port))
            delay = start + (i + 1) * ptime - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
    finally:
        sock.close()


async def test_two_party_call_is_recorded_on_two_channels(server: RunningServer) -> None:
    seconds = 2.0
    left = tone(440, seconds, 8000)
    right = tone(1000, seconds, 8000)
    frames_l = [encode_ulaw(left[i : i + 160]) for i in range(0, len(left), 160)]
    frames_r = [encode_ulaw(right[i : i + 160]) for i in range(0, len(right), 160)]
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, dialog = await src.invite(interop_case("oracle_acme_1"))
        assert response.status == 200 and dialog is not None
        answer = parse_sdp(response.body)
        ports = [m.port for m in answer.media]
        await asyncio.gather(
            send_rtp(ports[0], frames_l, 0, ssrc=0x1111),
            send_rtp(ports[1], frames_r, 0, ssrc=0x2222),
        )
        # The packet counters (for /metrics) include calls still in progress (media workers
        # report theirs every half second).
        for _ in range(40):
            await asyncio.sleep(0.1)
            if server.media.packet_totals().get("packets_received") == len(frames_l) * 2:
                break
        assert server.media.packet_totals()["packets_received"] == len(frames_l) + len(frames_r)
        assert (await src.bye(dialog)).status == 200
    row = await wait_for_state(server, dialog.call_id, "complete")
    for _ in range(50):
        row = await recordings.get_recording(server.db, row["id"])
        if row and row["signature"] is not None:
            break
        await asyncio.sleep(0.05)
    assert row is not None and row["signature"] is not None
    assert [c["label"] for c in row["channels"]] == ["16777227", "16777228"]
    ogg = await read_all(server.db, server.media._keys, row["id"])
    audio, rate = decode_ogg_opus(ogg)
    assert audio.shape[1] == 2
    duration = audio.shape[0] / rate
    assert abs(duration - row["duration_ms"] / 1000) < 0.08
    assert seconds - 0.1 < duration < seconds + 0.6
    assert tone_level_db(audio[:, 0], rate, 440) - tone_level_db(audio[:, 1], rate, 440) > 25
    assert tone_level_db(audio[:, 1], rate, 1000) - tone_level_db(audio[:, 0], rate, 1000) > 25
    (seg_l,) = active_segments(audio[:, 0], rate, 440)
    assert abs((seg_l[1] - seg_l[0]) - seconds) < 0.1
    stats = {s["label"]: s["stats"] for s in row["streams"]}
    assert stats["16777227"]["packets_received"] == len(frames_l)
    assert stats["16777227"]["packets_lost"] == 0



async def test_silent_session_is_hung_up_after_the_inactivity_timeout(
    db_dsn: str, data_dir: Path
) -> None:
    srv = await start_server(load_config(env=server_env(db_dsn, data_dir,
                                                        media__inactivity_timeout="5")))
    try:
        async with SipTestClient("udp", sip_address(srv, "udp")) as src:
            response, dialog = await src.invite(interop_case("rfc7866_1"))
            assert response.status == 200 and dialog is not None
            bye = await src.receive(timeout=8.0)
            assert isinstance(bye, SipRequest) and bye.method == "BYE"
            assert 'text="media inactive"' in (bye.headers.get("Reason") or "")
            ok = build_response(bye, 200)
            src.send(ok.to_bytes())
        row = await wait_for_state(srv, dialog.call_id, "complete")
        assert row["end_reason"] == "media inactive"
    finally:
        await srv.stop()
