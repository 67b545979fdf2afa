"""The recorder without PostgreSQL, sockets or media: its three ports are in-memory fakes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from siprec_server.recorder import Recorder, RecorderSettings
from siprec_server.sip.events import DialogEnded, Peer, RequestReceived
from siprec_server.sip.message import SipRequest, parse_message
from siprec_server.siprec.sdp import parse_sdp
from siprec_server.siprec.sdp_answer import AnswerPreferences
from siprec_server.siprec.session import RecordingSession
from storage.errors import StorageUnavailable
from tests.sip_client import interop_case

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
PEER = Peer("udp", "192.0.2.10", 5060)


class FakeSip:
    def __init__(self) -> None:
        self.answers: dict[str, tuple[int, dict[str, Any]]] = {}
        self.hung_up: list[str] = []

    def respond(self, txn: str, status: int, **kwargs: Any) -> bool:
        self.answers[txn] = (status, kwargs)
        return True

    def end_dialog(self, dialog: str, reason: str = "local") -> None:
        self.hung_up.append(dialog)

    def dialog_of(self, txn: str) -> str | None:
        return f"dialog-of-{txn}"


class FakeStorage:
    def __init__(self) -> None:
        self.available = True
        self.writes: list[tuple[str, tuple[Any, ...]]] = []

    async def open_recording(self, *args: Any) -> None:
        if not self.available:
            raise StorageUnavailable("down")
        self.writes.append(("open_recording", args))

    async def save_update(self, *args: Any) -> None:
        self.writes.append(("save_update", args))

    async def mark_answered(self, *args: Any) -> None:
        self.writes.append(("mark_answered", args))

    async def mark_ended(self, *args: Any) -> None:
        self.writes.append(("mark_ended", args))


class FakePorts:
    def __init__(self) -> None:
        self.next = 30000
        self.held: set[int] = set()

    def allocate(self) -> int:
        self.next += 2
        self.held.add(self.next)
        return self.next

    def release(self, port: int) -> None:
        self.held.discard(port)


class FakeMedia:
    disk_low = False

    def __init__(self) -> None:
        self.started: list[UUID] = []
        self.stopped: list[UUID] = []

    async def start(self, session: RecordingSession) -> None:
        self.started.append(session.recording_id)

    async def update(self, session: RecordingSession) -> None:
        pass

    async def stop(self, session: RecordingSession, reason: str) -> None:
        self.stopped.append(session.recording_id)


def recorder() -> tuple[Recorder, FakeSip, FakeStorage, FakePorts, FakeMedia]:
    sip, storage, ports, media = FakeSip(), FakeStorage(), FakePorts(), FakeMedia()
    settings = RecorderSettings(node_id="n1", media_address="198.51.100.7",
                                answer=AnswerPreferences(), retry_after=17)
    return (Recorder(settings, storage, sip, ports, media, clock=lambda: NOW), sip, storage,
            ports, media)


def invite(case: str = "oracle_acme_1") -> SipRequest:
    message = parse_message(interop_case(case))
    assert isinstance(message, SipRequest)
    return message


async def settle(rec: Recorder) -> None:
    while rec._tasks:
        await asyncio.gather(*rec._tasks)


async def test_an_invite_is_answered_stored_and_recorded() -> None:
    rec, sip, storage, ports, media = recorder()
    rec.on_sip_event(RequestReceived("t1", invite(), PEER, None))
    await settle(rec)
    status, kwargs = sip.answers["t1"]
    assert status == 200
    answer = parse_sdp(kwargs["body"])
    assert {m.port for m in answer.media if m.port} <= ports.held
    kinds = [name for name, _ in storage.writes]
    assert kinds == ["open_recording", "mark_answered"]
    new, event, rows = storage.writes[0][1]
    assert new.src_address == PEER.host and event is not None and event.sip_method == "INVITE"
    assert rows.participants and all(p.number or p.aor for p in rows.participants)
    assert media.started == [new.id]

    rec.on_sip_event(DialogEnded("dialog-of-t1", "bye"))
    await settle(rec)
    assert storage.writes[-1][0] == "mark_ended" and storage.writes[-1][1][1] == "complete"
    assert media.stopped == [new.id] and ports.held == set()


async def test_a_new_session_while_the_database_is_away_gets_503_and_holds_nothing() -> None:
    rec, sip, storage, ports, media = recorder()
    storage.available = False
    rec.on_sip_event(RequestReceived("t1", invite(), PEER, None))
    await settle(rec)
    status, kwargs = sip.answers["t1"]
    assert status == 503 and ("Retry-After", "17") in kwargs["headers"]
    assert storage.writes == [] and ports.held == set() and media.started == []
    assert rec.counters.db_unavailable_rejections == 1 and rec.active_sessions == 0


async def test_sessions_in_progress_keep_going_while_the_database_is_away() -> None:
    rec, sip, storage, ports, media = recorder()
    rec.on_sip_event(RequestReceived("t1", invite(), PEER, None))
    await settle(rec)
    storage.available = False  # the write-behind queues what follows
    rec.on_sip_event(DialogEnded("dialog-of-t1", "bye"))
    await settle(rec)
    assert storage.writes[-1][0] == "mark_ended" and media.stopped
