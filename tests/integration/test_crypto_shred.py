"""Crypto-shredding reaches backups: a recording erased, the master key rotated and the old version
destroyed cannot be decrypted from a copy of the data directories taken before the erasure —
not with anything that still exists afterwards (the server's keys, the custodians' new shares,
the files on disk). Only the old shares would open it: the custodians destroy them when the
rotation ends, which is why the server tells them to."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from api.auth_api import create_account
from siprec_server.app import start_server
from siprec_server.config import load_config
from storage.embedded_postgres import EmbeddedPostgres
from storage.key_shares import Share
from storage.keys import KeyStoreError, MasterKey, unwrap_data_key
from storage.recording_file import decrypt_chunks
from storage.shamir import combine
from tests.integration.test_interop import wait_for_state
from tests.integration.test_key_custody import (
    PASSWORD,
    Api,
    Ceremonial,
    Custodian,
    age_identity,
    init_ceremony,
    record_call,
    shamir_env,
    wait_job,
)
from tests.integration.test_recordings_api import CHEAP


@pytest.fixture
def own_cluster() -> Iterator[tuple[EmbeddedPostgres, Path]]:
    """A PostgreSQL of this test's own, so that its data directory can be copied."""
    root = Path(tempfile.mkdtemp(prefix="siprec-shred-pg-"))
    root.chmod(0o755)
    cluster = EmbeddedPostgres(root / "live", durable=False)
    try:
        cluster.start()
        yield cluster, root
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def files_contain(roots: list[Path], needle: bytes) -> list[str]:
    found = []
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    with open(path, "rb") as f:
                        if needle in f.read():
                            found.append(str(path))
    return found


async def test_an_erased_recording_stays_unreadable_in_a_pre_erasure_copy(
    own_cluster: tuple[EmbeddedPostgres, Path], data_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster, root = own_cluster
    env = shamir_env(cluster.dsn, data_dir)
    server = await start_server(load_config(env=env))
    api = Api(server)
    custodians: dict[str, Custodian] = {}
    try:
        for name in ("alice", "bob", "carol"):
            await create_account(server.db, actor="test", username=name, role="custodian",
                                 password=PASSWORD, hashing=CHEAP)
            identity, public = age_identity(tmp_path, name)
            custodians[name] = Custodian(name, identity, public, await api.login(name))
        await create_account(server.db, actor="test", username="dpo", role="admin",
                             password=PASSWORD, hashing=CHEAP)
        c = Ceremonial(server, api, custodians, env)
        await init_ceremony(c)
        call_id, _ = await record_call(server)
        row = await wait_for_state(server, call_id, "complete")
        erased_id = row["id"]
        kept_call, _ = await record_call(server)
        await wait_for_state(server, kept_call, "complete")
        for _ in range(100):
            if await server.db.fetchval("SELECT signature IS NOT NULL FROM recordings "
                                        "WHERE id = $1", erased_id):
                break
            await asyncio.sleep(0.05)
        wrapped = bytes(await server.db.fetchval(
            "SELECT wrapped_key FROM recording_keys WHERE recording_id = $1", erased_id))
        file_path = Path(row["file_path"] or await server.db.fetchval(
            "SELECT file_path FROM recordings WHERE id = $1", erased_id))

        # The backup: both data directories, copied cold.
        await server.stop()
        await asyncio.get_running_loop().run_in_executor(None, cluster.stop)
        backup = root / "backup"
        shutil.copytree(cluster.data_dir, backup / "data", symlinks=True)
        backup_files = tmp_path / "data_dir-backup"
        shutil.copytree(data_dir, backup_files, symlinks=True,
                        ignore=shutil.ignore_patterns("*.lock", "pg"))
        await asyncio.get_running_loop().run_in_executor(None, cluster.start)

        server = await start_server(load_config(env=env))
        c.server = server
        await api.close()
        api = c.api = Api(server)
        for name in ("alice", "bob"):
            status, body, _ = await api.call("POST", "/api/v1/keys/unseal", None,
                                             {"share": custodians[name].shares[0]})
            assert status == 200, body
        for name in custodians:
            custodians[name].token = await api.login(name)

        # Erasure, then a rotation that destroys the version the erased key was wrapped under.
        dpo = await api.login("dpo")
        status, body, _ = await api.call("DELETE", f"/api/v1/recordings/{erased_id}", dpo,
                                         {"reason": "GDPR art. 17 request 42"})
        assert status == 200, body
        assert server.erasure_vacuum is not None and await server.erasure_vacuum.sweep()
        alice, bob = custodians["alice"], custodians["bob"]
        status, ceremony, _ = await api.call("POST", "/api/v1/keys/ceremonies", alice.token,
                                             {"kind": "rotate"})
        for who in (alice, bob):
            status, ceremony, _ = await api.call(
                "POST", f"/api/v1/keys/ceremonies/{ceremony['id']}/approve", who.token,
                {"password": PASSWORD})
        job = await wait_job(api, alice.token, ceremony["job_id"])
        assert job["state"] == "done" and job["result"]["destroyed"], job
        old_version = job["result"]["destroyed"]
        from tests.integration.test_key_custody import fetch_shares

        for custodian in custodians.values():
            await fetch_shares(api, custodian)
        assert server.keys is not None
        ring = server.keys.custody.ring
        new_key = ring.current
        assert isinstance(new_key, MasterKey)
    finally:
        await api.close()
        await server.stop()

    # The attacker restores the backup...
    restored = EmbeddedPostgres(backup, durable=False)
    dsn = await asyncio.get_running_loop().run_in_executor(None, restored.start)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            in_backup = await conn.fetchval(
                "SELECT wrapped_key FROM recording_keys WHERE recording_id = $1", erased_id)
            sealed = await conn.fetch("SELECT id, sealed_key FROM master_key_versions")
        finally:
            await conn.close()
    finally:
        await asyncio.get_running_loop().run_in_executor(None, restored.stop)
    # ... which still holds the wrapped data key and the encrypted file,
    assert bytes(in_backup) == wrapped
    backup_file = backup_files / file_path.relative_to(data_dir)
    assert backup_file.exists()
    # but no master key: the backup's version row holds only a commitment.
    assert [(r["id"], r["sealed_key"]) for r in sealed] == [(old_version, None)]

    # Everything that exists after the destruction fails: the server's keys, the custodians'
    # current shares (they rebuild the new key), and the key bytes are on no disk.
    with pytest.raises(KeyStoreError):
        ring.unwrap(wrapped, erased_id)
    with pytest.raises(KeyStoreError):
        unwrap_data_key(new_key, wrapped, erased_id)
    current = [Share.parse(cu.shares[-1]) for cu in custodians.values()][:2]
    assert all(s.key_id == new_key.key_id for s in current)
    rebuilt = MasterKey.from_key(combine([(s.x, s.y) for s in current]), new_key.created_at)
    with pytest.raises(KeyStoreError):
        unwrap_data_key(rebuilt, wrapped, erased_id)
    old_shares = [Share.parse(cu.shares[0]) for cu in custodians.values()][:2]
    old_key = combine([(s.x, s.y) for s in old_shares])
    assert files_contain([backup, root / "live", backup_files, data_dir], old_key) == []

    # The one residual risk, shown rather than hidden: the OLD shares, had a custodian kept
    # them, would open the backup. Destroying them is part of the rotation (the notification).
    dek = unwrap_data_key(MasterKey.from_key(old_key, new_key.created_at), wrapped, erased_id)
    with open(backup_file, "rb") as f:
        assert b"OggS" in b"".join(decrypt_chunks(f, recording_id=erased_id, data_key=dek))

