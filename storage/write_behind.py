"""Database outages lose nothing: the writes of live recordings wait until the database is back.

`WriteBehind` stands in front of `RecordingStore`. Opening a new recording needs the database
(the INVITE is refused with 503 otherwise, so the SBC fails over). Every later write of a
recording (metadata updates, answered/ended, the data key and file of its media, the final row
and signed summary, audit events) is tried at once; if the database cannot be reached it is
queued in memory and appended to the encrypted journal (storage/journal.py), and the call goes
on recording. One task applies the queue in order as soon as the database answers again, then
deletes the journal. Writes of one recording keep their order: once one of them waits, the
later ones queue behind it even if the database is back. A journal left by a crash is replayed
at start-up before anything else reads the recordings.

A write that fails for any other reason (a bug, bad data) is logged and counted, not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import structlog

from storage.audit import AuditEvent
from storage.errors import StorageUnavailable
from storage.journal import (
    Codec,
    JournalError,
    JournalWriter,
    journal_files,
    read_journal,
)
from storage.keys import KeyRing
from storage.recording_store import MediaStart, MetadataEvent, RecordingStore, SessionRows
from storage.recording_summary import metadata_event_digest
from storage.recordings import MediaResult, NewRecording, ParticipantRow, StreamRow

log = structlog.get_logger("write_behind")

_DEFERRABLE = frozenset({
    "save_update", "mark_answered", "mark_ended", "save_media_start", "save_media_result",
    "register_signing_key", "record_audit",
})
_CODEC = Codec((MetadataEvent, SessionRows, ParticipantRow, StreamRow, MediaStart, MediaResult,
                AuditEvent))
_PROBE_FIRST_S = 0.5
_PROBE_MAX_S = 2.0


@dataclass
class WriteBehindCounters:
    outages: int = 0
    """Times the database went from reachable to unreachable."""
    deferred: int = 0
    """Writes that had to wait (queued and journaled)."""
    applied_late: int = 0
    """Waiting writes applied once the database was back (including journal replays)."""
    failed: int = 0
    """Writes refused for a reason other than unavailability (logged; not retried)."""
    journal_failures: int = 0
    """Waiting writes that could not be journaled (they wait in memory only)."""


@dataclass(frozen=True, slots=True)
class _Pending:
    method: str
    key: str
    args: tuple[Any, ...]


class WriteBehind:
    def __init__(self, store: RecordingStore, journal_dir: Path,
                 keys: Callable[[], KeyRing]) -> None:
        self.store = store
        self._journal_dir = journal_dir
        self._keys = keys
        self._journal = JournalWriter(journal_dir, keys)
        self._queue: deque[_Pending] = deque()
        self._waiting: Counter[str] = Counter()
        self._up = True
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()
        self.down_since: float | None = None
        self._evidence: dict[UUID, list[str]] = {}
        self.counters = WriteBehindCounters()

    @property
    def available(self) -> bool:
        """Whether the database answered the last time it was asked."""
        return self._up

    @property
    def pending(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------ life

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self, timeout: float = 5.0) -> None:
        """Give waiting writes a last chance, then leave the rest to the journal."""
        deadline = self._loop.time() + timeout
        while self._queue and self._up and self._loop.time() < deadline:
            self._wakeup.set()
            await asyncio.sleep(0.05)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue:
            log.warning("writes_left_in_journal", count=len(self._queue),
                        journal=str(self._journal.path))
        self._journal.close()

    async def replay(self) -> int:
        """Apply the journals a previous run left behind (start-up, database reachable)."""
        applied = 0
        for path in journal_files(self._journal_dir):
            count = 0
            try:
                for record in read_journal(path, self._keys()):
                    method, args = record["op"], _CODEC.decode(record["args"])
                    if method not in _DEFERRABLE:
                        raise JournalError(f"{path}: unknown write {method!r}")
                    try:
                        await getattr(self.store, method)(*args)
                    except StorageUnavailable:
                        raise
                    except Exception as exc:  # noqa: BLE001 - one bad write must not stop the rest
                        self.counters.failed += 1
                        log.error("journal_write_refused", write=method,
                                  error=type(exc).__name__)
                    count += 1
            except JournalError as exc:
                log.error("journal_unreadable", journal=str(path), error=str(exc))
                path.rename(path.with_suffix(".unreadable"))
                continue
            path.unlink()
            applied += count
            log.warning("journal_replayed", journal=path.name, writes=count)
        self.counters.applied_late += applied
        return applied

    # ------------------------------------------------------------ writes

    async def open_recording(self, new: NewRecording, event: MetadataEvent | None,
                             rows: SessionRows) -> None:
        """Needs the database now: StorageUnavailable otherwise (the caller answers 503)."""
        if not self._up:
            raise StorageUnavailable("the database is unavailable")
        try:
            await self.store.open_recording(new, event, rows)
        except StorageUnavailable as exc:
            self._went_down(exc)
            raise
        self._evidence[new.id] = []
        self._note(new.id, event)

    async def save_update(self, recording_id: UUID, event: MetadataEvent | None,
                          rows: SessionRows) -> None:
        self._note(recording_id, event)
        await self._write("save_update", str(recording_id), recording_id, event, rows)

    def _note(self, recording_id: UUID, event: MetadataEvent | None) -> None:
        if event is not None and recording_id in self._evidence:
            self._evidence[recording_id].append(metadata_event_digest(
                event.received_at, event.sip_method, event.datamode, event.document))

    def metadata_digests(self, recording_id: UUID) -> list[str] | None:
        """SHA-256 of each metadata event this process wrote for a recording, in order (what
        its signed summary covers), whether or not they reached the database yet."""
        found = self._evidence.get(recording_id)
        return None if found is None else list(found)

    def forget(self, recording_id: UUID) -> None:
        self._evidence.pop(recording_id, None)

    async def mark_answered(self, recording_id: UUID, dialog_id: str, at: datetime) -> None:
        await self._write("mark_answered", str(recording_id), recording_id, dialog_id, at)

    async def mark_ended(self, recording_id: UUID, state: str, reason: str,
                         at: datetime) -> None:
        await self._write("mark_ended", str(recording_id), recording_id, state, reason, at)

    async def save_media_start(self, recording_id: UUID, start: MediaStart) -> None:
        await self._write("save_media_start", str(recording_id), recording_id, start)

    async def save_media_result(self, recording_id: UUID, result: MediaResult) -> None:
        await self._write("save_media_result", str(recording_id), recording_id, result)

    async def register_signing_key(self, key_id: str, node_id: str, public_key: bytes) -> None:
        await self._write("register_signing_key", "signing", key_id, node_id, public_key)

    async def record_audit(self, event: AuditEvent, at: datetime, event_id: UUID) -> None:
        await self._write("record_audit", "audit", event, at, event_id)

    # ------------------------------------------------------------ start-up reads (need the database)

    async def unfinished_media(self, node_id: str,
                               include_recording: bool = True) -> list[dict[str, Any]]:
        return await self.store.unfinished_media(node_id, include_recording)

    async def recording_key(self, recording_id: UUID) -> tuple[str, bytes] | None:
        return await self.store.recording_key(recording_id)

    async def recording_evidence(self, recording_id: UUID
                                 ) -> tuple[list[dict[str, Any]], list[str]]:
        """Participants and metadata digests as stored (recovery after a crash)."""
        return await self.store.recording_evidence(recording_id)

    async def _write(self, method: str, key: str, *args: Any) -> None:
        if self._up and not self._waiting[key]:
            try:
                await getattr(self.store, method)(*args)
                return
            except StorageUnavailable as exc:
                self._went_down(exc)
            except Exception as exc:  # noqa: BLE001 - counted and logged; the call goes on
                self.counters.failed += 1
                log.error("write_refused", write=method, error=repr(exc)[:300])
                return
        self._enqueue(_Pending(method, key, args))

    def _enqueue(self, pending: _Pending) -> None:
        try:
            self._journal.append({"op": pending.method, "args": _CODEC.encode(pending.args)})
        except JournalError as exc:
            self.counters.journal_failures += 1
            log.error("journal_write_failed", error=str(exc))
        self._queue.append(pending)
        self._waiting[pending.key] += 1
        self.counters.deferred += 1
        self._wakeup.set()

    def _went_down(self, exc: BaseException) -> None:
        if self._up:
            self._up = False
            self.down_since = self._loop.time()
            self.counters.outages += 1
            log.error("database_unavailable", error=str(exc)[:200])
        self._wakeup.set()

    # ------------------------------------------------------------ the applying task

    async def _run(self) -> None:
        while True:
            if not self._up:
                await self._wait_until_up()
            if self._queue:
                await self._drain()
            else:
                self._wakeup.clear()
                if self._up and not self._queue:
                    await self._wakeup.wait()

    async def _wait_until_up(self) -> None:
        delay = _PROBE_FIRST_S
        while True:
            try:
                await self.store.ping()
            except Exception as exc:  # noqa: BLE001 - the probe must outlive any failure
                if not isinstance(exc, StorageUnavailable):
                    log.error("database_probe_failed", error=repr(exc)[:200])
                await asyncio.sleep(delay)
                delay = min(delay * 2, _PROBE_MAX_S)
                continue
            outage = self._loop.time() - (self.down_since or self._loop.time())
            self._up = True
            self.down_since = None
            log.warning("database_available", outage_s=round(outage, 1),
                        waiting_writes=len(self._queue))
            return

    async def _drain(self) -> None:
        while self._queue:
            pending = self._queue[0]
            try:
                await getattr(self.store, pending.method)(*pending.args)
            except StorageUnavailable as exc:
                self._went_down(exc)
                return
            except Exception as exc:  # noqa: BLE001 - counted and logged, then dropped
                self.counters.failed += 1
                log.error("write_refused", write=pending.method, error=repr(exc)[:300])
            else:
                self.counters.applied_late += 1
            self._queue.popleft()
            self._waiting[pending.key] -= 1
        self._journal.discard()
        log.info("waiting_writes_applied")
