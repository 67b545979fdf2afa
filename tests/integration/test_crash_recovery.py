"""The server process killed with SIGKILL mid-call: after a restart the recording is closed as
`interrupted`, verifies, and plays up to within a second of the kill. Tampering is detected."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import asyncpg
import numpy as np
import pytest

from siprec_server.media.codecs import encode_ulaw
from siprec_server.siprec.sdp import parse_sdp
from storage.database import create_pool
from storage.keys import LocalKeyStore
from storage.playback import read_all
from tests.audio import active_segments, decode_ogg_opus, tone
from tests.integration.conftest import server_env
from tests.integration.test_recording import send_rtp
from tests.server_process import ServerProcess, free_port, run_cli
from tests.sip_client import SipTestClient, interop_case


@pytest.fixture
async def process_env(db_dsn: str, data_dir: Path) -> AsyncIterator[dict[str, str]]:
    port = free_port()
    yield server_env(
        db_dsn, data_dir,
        sip__listen=f"udp:127.0.0.1:{port}",
        media__bind_address="127.0.0.1",
        server__log_format="json",
    )


async def test_sigkill_mid_call_leaves_an_interrupted_recording_that_verifies(
    process_env: dict[str, str], db_dsn: str, data_dir: Path
) -> None:
    sip_port = int(process_env["SIPREC_SIP__LISTEN"].rsplit(":", 1)[1])
    server = ServerProcess(process_env)
    await server.start()
    try:
        frames = [encode_ulaw(f) for f in np.split(tone(440, 4.0, 8000), 200)]
        async with SipTestClient("udp", ("127.0.0.1", sip_port)) as src:
            response, dialog = await src.invite(interop_case("oracle_acme_1"))
            assert response.status == 200 and dialog is not None
            port = parse_sdp(response.body).media[0].port
            sender = asyncio.create_task(send_rtp(port, frames, 0, ssrc=7))
            await asyncio.sleep(3.0)  # 3 s of audio sent, then the process dies
            await server.kill()
            sender.cancel()
        await server.start()  # recovery happens at start-up
    finally:
        await server.stop()

    db = await asyncpg.connect(db_dsn)
    try:
        row = await db.fetchrow("SELECT id, state, recovered, duration_ms FROM recordings")
    finally:
        await db.close()
    assert row["state"] == "interrupted" and row["recovered"] is True
    recording_id: UUID = row["id"]
    code, out, err = await run_cli(process_env, "verify", str(recording_id))
    assert code == 0, out + err
    assert f"{recording_id} OK" in out

    pool = await create_pool(db_dsn)
    try:
        keys, _ = LocalKeyStore(data_dir / "keys").load_or_create(datetime.now(UTC))
        ogg = await read_all(pool, keys, recording_id)
    finally:
        await pool.close()
    audio, rate = decode_ogg_opus(ogg)
    played = audio.shape[0] / rate
    assert 2.0 - 0.2 <= played <= 3.0 + 0.2, f"played {played:.2f}s of 3 s sent before the kill"
    (segment,) = active_segments(audio[:, 0], rate, 440)
    assert segment[1] - segment[0] >= 1.8

    # Tampering with one byte of the file is caught by verify.
    path = next((data_dir / "recordings").rglob("*.srec"))
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    code, out, err = await run_cli(process_env, "verify", "--all")
    assert code == 1 and "FAILED" in out, out + err
