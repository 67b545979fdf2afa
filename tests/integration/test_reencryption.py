"""Re-encryption of selected recordings under fresh data keys (a data key suspected compromised):
a dual-control ceremony, a resumable job, the file rewritten without plaintext on disk, the
summary re-signed and the recording verified after; the old data key opens nothing any more."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from api.auth_api import create_account
from siprec_server.app import RunningServer
from storage.keys import KeyStoreError
from storage.playback import read_all
from storage.recording_file import decrypt_chunks
from storage.reencryption import reencrypt_recording
from tests.integration.conftest import server_env
from tests.integration.test_interop import wait_for_state
from tests.integration.test_key_custody import PASSWORD, Api, record_call, wait_job
from tests.integration.test_recordings_api import CHEAP
from tests.server_process import run_cli


async def signed(server: RunningServer) -> UUID:
    call_id, _ = await record_call(server)
    row = await wait_for_state(server, call_id, "complete")
    for _ in range(100):
        if await server.db.fetchval("SELECT signature IS NOT NULL FROM recordings WHERE id = $1",
                                    row["id"]):
            break
        await asyncio.sleep(0.05)
    return UUID(str(row["id"]))


async def test_reencryption_ceremony_rewrites_and_resigns(
    server: RunningServer, db_dsn: str, data_dir: Path, db_pool: Any
) -> None:
    target = await signed(server)
    other = await signed(server)
    ring = server.media._keys
    before = bytes(await db_pool.fetchval(
        "SELECT wrapped_key FROM recording_keys WHERE recording_id = $1", target))
    old_dek = ring.unwrap(before, target)
    plaintext = await read_all(db_pool, ring, target)
    path = Path(await db_pool.fetchval("SELECT file_path FROM recordings WHERE id = $1", target))
    old_file = path.read_bytes()
    other_file = Path(await db_pool.fetchval("SELECT file_path FROM recordings WHERE id = $1",
                                             other)).read_bytes()

    api = Api(server)
    try:
        for name in ("kc1", "kc2"):
            await create_account(server.db, actor="test", username=name, role="custodian",
                                 password=PASSWORD, hashing=CHEAP)
        one, two = await api.login("kc1"), await api.login("kc2")
        status, ceremony, _ = await api.call("POST", "/api/v1/keys/ceremonies", one,
                                             {"kind": "reencrypt", "recording_ids": [str(target)]})
        assert status == 201 and ceremony["needed"] == 2 and ceremony["recordings"] == 1
        for token in (one, two):
            status, ceremony, _ = await api.call(
                "POST", f"/api/v1/keys/ceremonies/{ceremony['id']}/approve", token,
                {"password": PASSWORD})
            assert status == 200, ceremony
        job = await wait_job(api, one, ceremony["job_id"])
    finally:
        await api.close()
    assert job["state"] == "done" and job["result"]["outcomes"] == {str(target): "reencrypted"}
    assert (job["done"], job["total"]) == (1, 1)

    after = bytes(await db_pool.fetchval(
        "SELECT wrapped_key FROM recording_keys WHERE recording_id = $1", target))
    assert after != before and ring.unwrap(after, target) != old_dek
    assert path.read_bytes() != old_file
    assert await read_all(db_pool, ring, target) == plaintext  # the same audio
    with open(path, "rb") as f, pytest.raises(Exception):  # noqa: B017 - any refusal
        b"".join(decrypt_chunks(f, recording_id=target, data_key=old_dek))
    assert not list(path.parent.glob("*.reencrypting"))  # no leftovers
    # Only the selected recording changed; both verify with the pinned key.
    assert Path(await db_pool.fetchval("SELECT file_path FROM recordings WHERE id = $1",
                                       other)).read_bytes() == other_file
    code, out, err = await run_cli(server_env(db_dsn, data_dir), "verify", "--all")
    assert code == 0 and "2 checked, 0 failed" in out, out + err
    summary = await db_pool.fetchval("SELECT summary FROM recordings WHERE id = $1", target)
    assert summary["reencrypted"] is True
    assert summary["ciphertext_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_crash_between_file_and_row_is_finished_by_the_next_run(
    server: RunningServer, db_pool: Any
) -> None:
    """The file was swapped under the pending key, the row still names the old key: the next
    run sees the file already opens with the pending key and completes the row."""
    target = await signed(server)
    ring = server.media._keys
    plaintext = await read_all(db_pool, ring, target)
    import storage.reencryption as reencryption

    real_sign = server.keys.signer.sign if server.keys else None
    assert real_sign is not None

    class CrashAfterRename:
        key_id = server.keys.signer.key_id

        def public_key_bytes(self) -> bytes:
            return bytes(server.keys.signer.public_key_bytes())

        def sign(self, summary: Any) -> bytes:
            raise KeyStoreError("crash after the rename")

    with pytest.raises(KeyStoreError):
        await reencryption.reencrypt_recording(db_pool, ring, target, CrashAfterRename())
    assert await db_pool.fetchval("SELECT next_wrapped_key IS NOT NULL FROM recording_keys "
                                  "WHERE recording_id = $1", target)
    assert await reencrypt_recording(db_pool, ring, target, server.keys.signer) == "reencrypted"
    assert await read_all(db_pool, ring, target) == plaintext
    assert await db_pool.fetchval("SELECT next_wrapped_key IS NULL FROM recording_keys "
                                  "WHERE recording_id = $1", target)
