"""Tamper evidence anchored outside the database: `siprec-server verify` fails on each of the
tampers someone with write access to PostgreSQL could try — edited participants, a summary
replaced and re-signed with a key inserted into the database, the last audit events deleted, and
the audit chain rewritten consistently from some event on."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from siprec_server.app import RunningServer
from storage.audit import AuditEvent, chain_hash, record_audit
from storage.signing import SIGNATURE_CONTEXT, canonical_summary_bytes, public_key_id
from tests.integration.conftest import server_env
from tests.integration.test_interop import wait_for_state
from tests.integration.test_key_custody import record_call
from tests.server_process import run_cli


async def sealed_recording(server: RunningServer) -> UUID:
    call_id, _ = await record_call(server)
    row = await wait_for_state(server, call_id, "complete")
    for _ in range(100):
        if await server.db.fetchval("SELECT signature IS NOT NULL FROM recordings WHERE id = $1",
                                    row["id"]):
            break
        await asyncio.sleep(0.05)
    return UUID(str(row["id"]))


async def verify(db_dsn: str, data_dir: Path, *args: str) -> tuple[int, str]:
    code, out, err = await run_cli(server_env(db_dsn, data_dir), "verify", *args)
    return code, out + err


async def test_recording_tampers_fail_verify(server: RunningServer, db_dsn: str,
                                            data_dir: Path) -> None:
    rid = await sealed_recording(server)
    db = server.db
    code, out = await verify(db_dsn, data_dir, "--all")
    assert code == 0 and "1 checked, 0 failed" in out, out
    summary = await db.fetchval("SELECT summary FROM recordings WHERE id = $1", rid)
    assert summary["participants"] and summary["metadata_sha256"] and "pauses" in summary
    sealed = await db.fetchval(
        "SELECT details->>'summary_sha256' FROM audit_events WHERE action = 'recording.sealed'"
        " AND target = $1", str(rid))
    started = await db.fetchval(
        "SELECT details->>'summary_sha256' FROM audit_events WHERE action = 'recording.started'"
        " AND target = $1", str(rid))
    assert sealed and started and sealed != started

    # 1. A participant's name edited in the database.
    (pid, name) = await db.fetchrow(
        "SELECT participant_id, name FROM participants WHERE recording_id = $1 LIMIT 1", rid)
    await db.execute("UPDATE participants SET name = 'Mallory' WHERE recording_id = $1 AND "
                     "participant_id = $2", rid, pid)
    code, out = await verify(db_dsn, data_dir, str(rid))
    assert code == 1 and "participants in the database differ" in out, out
    await db.execute("UPDATE participants SET name = $3 WHERE recording_id = $1 AND "
                     "participant_id = $2", rid, pid, name)

    # 2. A metadata event edited.
    await db.execute("UPDATE metadata_events SET document = document || ' ' "
                     "WHERE recording_id = $1", rid)
    code, out = await verify(db_dsn, data_dir, str(rid))
    assert code == 1 and "metadata events in the database differ" in out, out
    await db.execute("UPDATE metadata_events SET document = rtrim(document, ' ') "
                     "WHERE recording_id = $1", rid)
    code, out = await verify(db_dsn, data_dir, str(rid))
    assert code == 0, out

    # 3. The summary changed to match edited participants, and re-signed with a key the
    #    attacker inserted into the database (the signature itself is valid).
    forged_key = Ed25519PrivateKey.generate()
    public = forged_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                  serialization.PublicFormat.Raw)
    forged_id = public_key_id(public)
    await db.execute("INSERT INTO signing_keys (key_id, node_id, public_key) "
                     "VALUES ($1, 'test-node', $2)", forged_id, public)
    forged = dict(summary)
    forged["participants"] = [{**p, "name": "Mallory"} for p in summary["participants"]]
    await db.execute("UPDATE participants SET name = 'Mallory' WHERE recording_id = $1", rid)
    await db.execute(
        "UPDATE recordings SET summary = $2, signature = $3, signing_key_id = $4 WHERE id = $1",
        rid, forged, forged_key.sign(SIGNATURE_CONTEXT + canonical_summary_bytes(forged)),
        forged_id)
    code, out = await verify(db_dsn, data_dir, str(rid))
    assert code == 1, out
    assert "is not pinned" in out and "not the one the audit trail recorded" in out, out
    # The API's quick check trusts the database's key, so only the audit trail catches it.
    from storage.verification import verify_recording

    check = await verify_recording(db, None, rid)
    assert not check.ok and any("audit trail" in p for p in check.problems), check.problems

    # 4. A pause removed from the database.
    await db.execute("UPDATE recordings SET pauses = '[{\"start_ms\": 1, \"end_ms\": 2, "
                     "\"source\": \"api\"}]' WHERE id = $1", rid)
    code, out = await verify(db_dsn, data_dir, str(rid))
    assert "pauses in the database differ" in out, out


async def test_audit_tail_deletion_fails_verify(server: RunningServer, db_dsn: str,
                                                data_dir: Path) -> None:
    await sealed_recording(server)
    assert server.checkpoints is not None
    checkpoint = await server.checkpoints.checkpoint()
    assert checkpoint is not None
    code, out = await verify(db_dsn, data_dir, "--audit")
    assert code == 0 and "checkpoints OK" in out, out
    lines = (data_dir / "audit-checkpoints.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["seq"] == checkpoint.seq

    # Deleting the last events leaves a chain that is internally sound...
    await server.db.execute("DELETE FROM audit_events WHERE seq > $1", checkpoint.seq - 3)
    code, out = await verify(db_dsn, data_dir, "--audit")
    assert "audit chain OK" in out
    # ... but shorter than a signed checkpoint says.
    assert code == 1 and "last events were deleted" in out, out


async def test_consistent_chain_rewrite_fails_verify(server: RunningServer, db_dsn: str,
                                                     data_dir: Path) -> None:
    db = server.db
    for n in range(5):
        await record_audit(db, AuditEvent("system", "test.event", details={"n": n}))
    assert server.checkpoints is not None
    checkpoint = await server.checkpoints.checkpoint()
    assert checkpoint is not None

    # Rewrite one early event and recompute every hash after it: the chain verifies.
    rows: list[Any] = await db.fetch("SELECT * FROM audit_events ORDER BY seq")
    target = next(r for r in rows if r["action"] == "test.event")
    prev = bytes(target["prev_hash"])
    for row in rows[rows.index(target):]:
        details = row["details"]
        if row["seq"] == target["seq"]:
            details = {"n": "rewritten"}
        event = AuditEvent(row["actor"], row["action"], row["outcome"], row["target"],
                           row["source"], details)
        digest = chain_hash(prev, row["at"], event)
        await db.execute("UPDATE audit_events SET details = $2::text::jsonb, prev_hash = $3, "
                         "hash = $4 WHERE seq = $1", row["seq"], json.dumps(details), prev,
                         digest)
        prev = digest
    code, out = await verify(db_dsn, data_dir, "--audit")
    assert "audit chain OK" in out  # consistent: the chain alone cannot tell
    assert code == 1 and "chain was rewritten" in out, out

    # A checkpoint forged with another key is refused too.
    path = data_dir / "audit-checkpoints.jsonl"
    forged = json.loads(path.read_text().splitlines()[-1])
    forged["head"] = bytes(prev).hex()
    path.write_text(json.dumps(forged) + "\n")
    code, out = await verify(db_dsn, data_dir, "--audit")
    assert code == 1 and "bad signature" in out, out
