"""Erasure at the storage level: the data key goes first, so a copy of the file taken before
the erasure can never be read again; the personal metadata goes; a tombstone and an audit event
stay; erasing twice changes nothing; an interrupted erasure is finished by the next call."""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

import asyncpg
import pytest

from storage import recordings
from storage.audit import verify_audit_chain
from storage.erasure import (
    NoRecordingToErase,
    RecordingActive,
    erase_recording,
    unfinished_erasures,
)
from storage.keys import KeyRing, MasterKey, data_key_id, new_data_key, wrap_data_key
from storage.playback import RecordingUnreadable, open_recording, read_all
from storage.recording_file import RecordingFileWriter

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
PLAINTEXT = b"OggS" + bytes(range(256)) * 40  # stands in for audio; never decoded


@pytest.fixture
def ring() -> KeyRing:
    master = MasterKey.generate(NOW)
    return KeyRing(master, MappingProxyType({master.key_id: master}))


async def recorded_call(db: asyncpg.Pool, ring: KeyRing, directory: Path, *,
                        state: str = "complete") -> tuple[uuid.UUID, Path]:
    """A recording as MediaService leaves it: rows, participants, metadata, an encrypted file
    and its wrapped data key."""
    rid = uuid.uuid4()
    await db.execute(
        """INSERT INTO recordings (id, node_id, call_id, dialog_id, sip_session_id, session_id,
                                   state, started_at, ended_at, duration_ms, transport,
                                   src_address, summary, signature, signing_key_id)
           VALUES ($1, 'n1', 'alice-call@192.0.2.10', 'dlg', 'sess', 'siprec-sess', $2, $3,
                   $4, 61000, 'udp', '192.0.2.10', '{"call_id": "alice-call@192.0.2.10"}',
                   '\\x01', 'k1')""",
        rid, state, NOW, NOW + timedelta(seconds=61),
    )
    await db.execute(
        """INSERT INTO participants (recording_id, participant_id, aor, name, number, present)
           VALUES ($1, 'p0', 'sip:+442079460000@sbc', 'Alice Smith', '+442079460000', true)""",
        rid,
    )
    await db.execute(
        """INSERT INTO metadata_events (recording_id, received_at, sip_method, datamode, document)
           VALUES ($1, $2, 'INVITE', 'complete', '<recording><name>Alice</name></recording>')""",
        rid, NOW,
    )
    await db.execute(
        """INSERT INTO streams (recording_id, m_index, label, kind, accepted, remote_address,
                                remote_port, senders, stats)
           VALUES ($1, 0, '1', 'audio', true, '198.51.100.7', 40000, '{p0}',
                   '{"packets_received": 3050, "packets_lost": 2}')""",
        rid,
    )
    path = directory / f"{rid}.srec"
    dek = new_data_key()
    await recordings.save_media_start(
        db, rid, file_path=str(path), sample_rate=8000,
        channels=[{"index": 0, "m_index": 0, "label": "1", "participant_ids": ["p0"],
                   "reason": "m-line 0"}],
        master_key_id=ring.current.key_id, wrapped_key=wrap_data_key(ring.current, dek, rid),
    )
    with open(path, "wb") as f:
        writer = RecordingFileWriter(f, recording_id=rid, data_key=dek, key_id=data_key_id(dek))
        writer.write(PLAINTEXT)
        summary = writer.close()
    await db.execute("UPDATE recordings SET plaintext_bytes = $2, plaintext_sha256 = $3 "
                     "WHERE id = $1", rid, summary.plaintext_bytes, summary.plaintext_sha256)
    return rid, path


async def test_erasure_makes_a_copy_taken_before_it_unreadable(
    db_pool: asyncpg.Pool, ring: KeyRing, tmp_path: Path
) -> None:
    rid, path = await recorded_call(db_pool, ring, tmp_path)
    assert await read_all(db_pool, ring, rid) == PLAINTEXT
    backup = tmp_path / "backup" / path.name
    backup.parent.mkdir()
    shutil.copy2(path, backup)

    erasure = await erase_recording(db_pool, rid, actor="user-1", reason="GDPR art. 17 #42",
                                    now=NOW + timedelta(days=1), source="203.0.113.5")

    assert not erasure.already_erased
    assert not path.exists()
    assert await recordings.get_recording_key(db_pool, rid) is None
    # Restore the backup copy where the file was and point the row at it: still unreadable,
    # because the only wrapped data key is gone.
    shutil.copy2(backup, path)
    await db_pool.execute("UPDATE recordings SET file_path = $2 WHERE id = $1", rid, str(path))
    with pytest.raises(RecordingUnreadable):
        await open_recording(db_pool, ring, rid)
    assert PLAINTEXT[:64] not in backup.read_bytes()


async def test_erasure_leaves_a_tombstone_without_personal_data(
    db_pool: asyncpg.Pool, ring: KeyRing, tmp_path: Path
) -> None:
    rid, _ = await recorded_call(db_pool, ring, tmp_path)
    erased_at = NOW + timedelta(days=1)
    erasure = await erase_recording(db_pool, rid, actor="user-1", reason="GDPR art. 17 #42",
                                    now=erased_at)
    row = await recordings.get_recording(db_pool, rid)
    assert row is not None
    assert row["state"] == "erased"
    assert row["participants"] == [] and row["metadata_events"] == []
    for column in ("call_id", "dialog_id", "sip_session_id", "session_id", "src_address",
                   "summary", "signature", "file_path", "plaintext_sha256"):
        assert row[column] is None, column
    assert row["channels"][0]["participant_ids"] == []
    (stream,) = row["streams"]
    assert stream["remote_address"] is None and stream["remote_port"] is None
    assert stream["senders"] == []
    assert stream["stats"]["packets_received"] == 3050  # counters are not personal
    assert (row["started_at"], row["duration_ms"]) == (NOW, 61000)
    assert (row["erased_at"], row["erased_by"], row["erasure_reason"]) == (
        erased_at, "user-1", "GDPR art. 17 #42")
    assert erasure.tombstone.erased_by == "user-1"
    text = str(dict(row))
    for personal in ("Alice", "+442079460000", "192.0.2.10", "198.51.100.7", "alice-call"):
        assert personal not in text


async def test_erasing_twice_gives_the_same_tombstone(
    db_pool: asyncpg.Pool, ring: KeyRing, tmp_path: Path
) -> None:
    rid, _ = await recorded_call(db_pool, ring, tmp_path)
    first = await erase_recording(db_pool, rid, actor="user-1", reason="request 1", now=NOW)
    second = await erase_recording(db_pool, rid, actor="user-2", reason="request 2",
                                   now=NOW + timedelta(hours=1))
    assert second.already_erased
    assert second.tombstone == first.tombstone


async def test_every_erasure_is_in_the_verified_audit_chain(
    db_pool: asyncpg.Pool, ring: KeyRing, tmp_path: Path
) -> None:
    rid, _ = await recorded_call(db_pool, ring, tmp_path)
    await erase_recording(db_pool, rid, actor="user-1", reason="retention", now=NOW,
                          source="198.51.100.1")
    await erase_recording(db_pool, rid, actor="user-1", reason="retention", now=NOW)
    events = await db_pool.fetch(
        "SELECT actor, action, target, source, details FROM audit_events ORDER BY seq")
    assert [(e["action"], e["target"], e["details"]["already_erased"]) for e in events] == [
        ("recording.erase", str(rid), False), ("recording.erase", str(rid), True)]
    assert events[0]["source"] == "198.51.100.1"
    assert (await verify_audit_chain(db_pool)).ok


async def test_an_active_recording_cannot_be_erased(
    db_pool: asyncpg.Pool, ring: KeyRing, tmp_path: Path
) -> None:
    rid, path = await recorded_call(db_pool, ring, tmp_path, state="recording")
    with pytest.raises(RecordingActive):
        await erase_recording(db_pool, rid, actor="u", reason="r", now=NOW)
    assert path.exists()
    assert await recordings.get_recording_key(db_pool, rid) is not None


async def test_unknown_recordings_and_missing_reasons_are_refused(
    db_pool: asyncpg.Pool, ring: KeyRing, tmp_path: Path
) -> None:
    with pytest.raises(NoRecordingToErase):
        await erase_recording(db_pool, uuid.uuid4(), actor="u", reason="r", now=NOW)
    rid, _ = await recorded_call(db_pool, ring, tmp_path)
    for reason in ("", "   ", "x" * 501):
        with pytest.raises(ValueError):
            await erase_recording(db_pool, rid, actor="u", reason=reason, now=NOW)


async def test_an_erasure_interrupted_after_the_key_is_finished_later(
    db_pool: asyncpg.Pool, ring: KeyRing, tmp_path: Path
) -> None:
    rid, path = await recorded_call(db_pool, ring, tmp_path)
    # What a crash right after step 1 leaves: key gone, stamp set, everything else still there.
    await db_pool.execute("DELETE FROM recording_keys WHERE recording_id = $1", rid)
    await db_pool.execute(
        "UPDATE recordings SET erased_at = $2, erased_by = 'user-1', erasure_reason = 'first' "
        "WHERE id = $1", rid, NOW)
    assert await unfinished_erasures(db_pool) == [rid]
    erasure = await erase_recording(db_pool, rid, actor="user-2", reason="again",
                                    now=NOW + timedelta(hours=1))
    assert (erasure.tombstone.erased_by, erasure.tombstone.reason) == ("user-1", "first")
    assert await unfinished_erasures(db_pool) == []
    assert not path.exists()


async def test_only_the_recordings_own_file_is_ever_unlinked(
    db_pool: asyncpg.Pool, ring: KeyRing, tmp_path: Path
) -> None:
    rid, path = await recorded_call(db_pool, ring, tmp_path)
    bystander = tmp_path / "not-a-recording.txt"
    bystander.write_text("keep me")
    await db_pool.execute("UPDATE recordings SET file_path = $2 WHERE id = $1", rid,
                          str(bystander))
    await erase_recording(db_pool, rid, actor="u", reason="r", now=NOW)
    assert bystander.read_text() == "keep me"
