"""The write-behind: writes of live recordings wait (in memory and in the encrypted journal) while
the database is away, keep their order, land when it is back, and survive a crash in between."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from storage.audit import AuditEvent
from storage.errors import StorageUnavailable, guarded
from storage.journal import Codec, JournalError, JournalWriter, journal_files, read_journal
from storage.keys import KeyRing, MasterKey
from storage.recording_store import MediaStart, MetadataEvent, SessionRows
from storage.recordings import MediaResult, NewRecording, ParticipantRow, StreamRow
from storage.write_behind import WriteBehind

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def ring() -> KeyRing:
    master = MasterKey.generate(NOW)
    return KeyRing(master, {master.key_id: master})


class FakeStore:
    """RecordingStore's write surface in memory; `up` decides whether the database answers."""

    def __init__(self) -> None:
        self.up = True
        self.applied: list[tuple[str, tuple[Any, ...]]] = []
        self.refuse: set[str] = set()

    def _call(self, name: str, *args: Any) -> None:
        if not self.up:
            raise StorageUnavailable("connection refused")
        if name in self.refuse:
            raise ValueError("bad data")
        self.applied.append((name, args))

    async def ping(self) -> None:
        if not self.up:
            raise StorageUnavailable("connection refused")

    async def open_recording(self, *args: Any) -> None:
        self._call("open_recording", *args)

    async def save_update(self, *args: Any) -> None:
        self._call("save_update", *args)

    async def mark_answered(self, *args: Any) -> None:
        self._call("mark_answered", *args)

    async def mark_ended(self, *args: Any) -> None:
        self._call("mark_ended", *args)

    async def save_media_start(self, *args: Any) -> None:
        self._call("save_media_start", *args)

    async def save_media_result(self, *args: Any) -> None:
        self._call("save_media_result", *args)

    async def register_signing_key(self, *args: Any) -> None:
        self._call("register_signing_key", *args)

    async def record_audit(self, *args: Any) -> None:
        self._call("record_audit", *args)


def rows() -> SessionRows:
    participant = ParticipantRow("p1", "sip:+442079460000@example.com", None, "Alice Example",
                                 NOW, None, True, "+442079460000")
    stream = StreamRow(0, "1", "s1", "audio", True, "PCMU/8000", 101, None, 20000,
                       "192.0.2.1", 40000, "sendonly", ("p1",))
    return SessionRows("session-1", (participant,), (stream,))


def result() -> MediaResult:
    return MediaResult(1500, b"\x01" * 32, b"\x02" * 32, 100, 200, [{"start_ms": 1, "end_ms": 2,
                       "source": "dtmf"}], 2, False, {"a": [1, 2]}, b"sig", "k1",
                       {0: {"packets_received": 75}}, no_media=False)


async def until(condition: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_writes_go_straight_through_while_the_database_answers(tmp_path: Path) -> None:
    store = FakeStore()
    writes = WriteBehind(store, tmp_path, ring)  # type: ignore[arg-type]
    recording = uuid4()
    await writes.mark_answered(recording, "dialog-1", NOW)
    assert store.applied == [("mark_answered", (recording, "dialog-1", NOW))]
    assert writes.pending == 0 and journal_files(tmp_path) == []


async def test_writes_wait_in_order_while_the_database_is_away_then_land(tmp_path: Path) -> None:
    store = FakeStore()
    keys = ring()
    writes = WriteBehind(store, tmp_path, lambda: keys)  # type: ignore[arg-type]
    writes.start()
    recording = uuid4()
    store.up = False
    event = MetadataEvent(uuid4(), NOW, "UPDATE", "partial", "<recording/>")
    await writes.save_update(recording, event, rows())
    assert not writes.available and writes.pending == 1
    # The new INVITE is refused at once (no attempt against a database known to be away).
    with pytest.raises(StorageUnavailable):
        await writes.open_recording(NewRecording(uuid4(), "n", "c", None, NOW, "udp", "h"),
                                    None, rows())
    await writes.save_media_result(recording, result())
    await writes.mark_ended(recording, "complete", "bye", NOW)
    # Waiting writes are on disk, encrypted: no number or name in the journal's bytes.
    (journal,) = journal_files(tmp_path)
    raw = journal.read_bytes()
    assert b"442079460000" not in raw and b"Alice" not in raw
    assert len(list(read_journal(journal, keys))) == 3

    store.up = True
    await until(lambda: writes.pending == 0)
    assert [name for name, _ in store.applied] == ["save_update", "save_media_result",
                                                   "mark_ended"]
    assert store.applied[0][1] == (recording, event, rows())
    assert store.applied[1][1] == (recording, result())
    assert writes.available and journal_files(tmp_path) == []
    assert writes.counters.outages == 1 and writes.counters.deferred == 3
    assert writes.counters.applied_late == 3
    await writes.close()


async def test_a_recording_with_waiting_writes_keeps_its_order_after_the_outage(
    tmp_path: Path,
) -> None:
    store = FakeStore()
    writes = WriteBehind(store, tmp_path, ring)  # type: ignore[arg-type]
    first, second = uuid4(), uuid4()
    store.up = False
    await writes.mark_answered(first, "d1", NOW)
    store.up = True
    writes._up = True  # the probe has not run yet: a write must still queue behind its elder
    await writes.mark_ended(first, "complete", "bye", NOW)
    await writes.mark_answered(second, "d2", NOW)  # another recording: straight through
    assert store.applied == [("mark_answered", (second, "d2", NOW))]
    writes.start()
    await until(lambda: writes.pending == 0)
    assert [(name, args[0]) for name, args in store.applied[1:]] == [
        ("mark_answered", first), ("mark_ended", first)]
    await writes.close()


async def test_a_crash_during_the_outage_is_replayed_at_the_next_start(tmp_path: Path) -> None:
    keys = ring()
    store = FakeStore()
    store.up = False
    crashed = WriteBehind(store, tmp_path, lambda: keys)  # type: ignore[arg-type]
    recording = uuid4()
    start = MediaStart("/var/rec/x.srec", 8000, [{"index": 0, "m_index": 0}], "k1", b"w" * 66)
    await crashed.save_media_start(recording, start)
    audit = AuditEvent("node:n1", "recording.paused", target=str(recording), source="dtmf",
                       details={"at_s": 1.5})
    audit_id = uuid4()
    await crashed.record_audit(audit, NOW, audit_id)
    await crashed.save_media_result(recording, result())
    # No close(): the process died. The next start replays what it left.
    store.up = True
    restarted = WriteBehind(store, tmp_path, lambda: keys)  # type: ignore[arg-type]
    assert await restarted.replay() == 3
    assert store.applied == [
        ("save_media_start", (recording, start)),
        ("record_audit", (audit, NOW, audit_id)),
        ("save_media_result", (recording, result())),
    ]
    assert journal_files(tmp_path) == []


async def test_a_write_refused_for_bad_data_is_counted_and_not_retried(tmp_path: Path) -> None:
    store = FakeStore()
    store.refuse.add("mark_ended")
    writes = WriteBehind(store, tmp_path, ring)  # type: ignore[arg-type]
    await writes.mark_ended(uuid4(), "complete", "bye", NOW)
    assert writes.counters.failed == 1 and writes.pending == 0 and writes.available


def test_journal_records_cannot_be_reordered_or_altered(tmp_path: Path) -> None:
    keys = ring()
    writer = JournalWriter(tmp_path, lambda: keys)
    for i in range(3):
        writer.append({"op": "mark_answered", "args": [i]})
    writer.close()
    (path,) = journal_files(tmp_path)
    assert [r["args"] for r in read_journal(path, keys)] == [[0], [1], [2]]

    blob = bytearray(path.read_bytes())
    blob[-5] ^= 1  # inside the last record's ciphertext
    path.write_bytes(bytes(blob))
    with pytest.raises(JournalError):
        list(read_journal(path, keys))


def test_a_record_torn_by_a_crash_ends_the_journal_quietly(tmp_path: Path) -> None:
    keys = ring()
    writer = JournalWriter(tmp_path, lambda: keys)
    writer.append({"op": "a"})
    writer.append({"op": "b"})
    writer.close()
    (path,) = journal_files(tmp_path)
    path.write_bytes(path.read_bytes()[:-7])
    assert [r["op"] for r in read_journal(path, keys)] == ["a"]


def test_the_codec_round_trips_what_the_recorder_writes_and_nothing_else() -> None:
    codec = Codec((MediaResult, SessionRows, ParticipantRow, StreamRow))
    values = (uuid4(), NOW, b"\x00\xff", result(), rows(), {0: {"k": 1}}, [1, "a", None])
    assert codec.decode(codec.encode(values)) == values
    with pytest.raises(JournalError):
        codec.encode(MediaStart("p", 1, [], "k", b""))
    with pytest.raises(JournalError):
        codec.decode({"$dc": "Popen", "f": {}})
    assert isinstance(codec.decode({"$uuid": str(UUID(int=1))}), UUID)


# ------------------------------------------------------------------------------ what "unavailable" is


async def test_a_transaction_broken_by_a_lost_connection_is_unavailability() -> None:
    async def lost_mid_transaction() -> None:
        try:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
        finally:  # the clean-up on the dead connection fails with a complaint of its own
            raise RuntimeError("rollback failed")

    async def cancelled_by_the_timeout() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            raise RuntimeError("rollback failed")

    async def connection_left_mid_statement() -> None:
        raise asyncpg.exceptions.InternalClientError(
            "cannot switch to state 11; another operation (2) is in progress")

    async def a_bug() -> None:
        raise asyncpg.exceptions.UniqueViolationError("duplicate key")

    for broken in (lost_mid_transaction(), connection_left_mid_statement()):
        with pytest.raises(StorageUnavailable):
            await guarded(broken)
    with pytest.raises(StorageUnavailable):
        await guarded(cancelled_by_the_timeout(), timeout=0.01)
    with pytest.raises(asyncpg.exceptions.UniqueViolationError):
        await guarded(a_bug())
