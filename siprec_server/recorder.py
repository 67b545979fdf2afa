"""The recording service: the SIP transaction user that turns SIPREC requests into recording
sessions — answers offers, keeps metadata as an event log, holds RTP ports, and starts and stops
each session's media.

It reaches the outside through three ports, each a Protocol: SIP (respond, hang up), media
(start, update, stop; RTP ports) and storage. Storage raises the project's own
`StorageUnavailable`; a new session is refused with 503 + Retry-After when the database is away
(so the SBC fails over), while sessions in progress keep recording and their writes wait in the
write-behind (storage/write_behind.py). Tests drive it with in-memory fakes of all three.

Every SIP event for one session is handled under that session's lock, in arrival order. A fault
in one session is logged and answered (500/503); it never reaches another session.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID, uuid4

from siprec_server.logs import get_logger
from siprec_server.media.ports import PortsExhausted
from siprec_server.net.source_policy import LOOPBACK, Admission, SourcePolicy, is_loopback
from siprec_server.numbers import normalize_number
from siprec_server.sip.events import (
    DialogConfirmed,
    DialogEnded,
    InfoReceived,
    InviteCancelled,
    RequestReceived,
    SipEvent,
)
from siprec_server.sip.message import SipRequest
from siprec_server.siprec.metadata import MetadataDocument, MetadataError, parse_metadata
from siprec_server.siprec.request import Rejection, check_recording_session, read_body
from siprec_server.siprec.sdp import SdpError, SessionDescription, parse_sdp
from siprec_server.siprec.sdp_answer import (
    AnswerPreferences,
    NoAcceptableMedia,
    acceptable_m_lines,
    negotiate,
)
from siprec_server.siprec.session import RecordingSession, SessionState
from storage.errors import StorageUnavailable
from storage.recording_store import MetadataEvent, SessionRows
from storage.recordings import NewRecording, ParticipantRow, StreamRow

log = get_logger("recorder")


class SipPort(Protocol):
    """What the recorder needs from the SIP side (SipEndpoint)."""

    def respond(self, txn: str, status: int, **kwargs: Any) -> bool: ...

    def end_dialog(self, dialog: str, reason: str = "local") -> None: ...

    def dialog_of(self, txn: str) -> str | None: ...


class RtpPorts(Protocol):
    """Where RTP port pairs come from (MediaService binds them; a bare PortAllocator will do
    for signalling-only use)."""

    def allocate(self) -> int: ...

    def release(self, port: int) -> None: ...


class RecordingStorage(Protocol):
    """What the recorder writes (storage.write_behind.WriteBehind in production)."""

    @property
    def available(self) -> bool:
        """False while the database is known to be unreachable: new sessions get 503."""

    async def open_recording(self, new: NewRecording, event: MetadataEvent | None,
                             rows: SessionRows) -> None:
        """Needs the database now; StorageUnavailable otherwise."""

    async def save_update(self, recording_id: UUID, event: MetadataEvent | None,
                          rows: SessionRows) -> None:
        """The following writes never fail for unavailability: they wait for the database."""

    async def mark_answered(self, recording_id: UUID, dialog_id: str, at: datetime) -> None: ...

    async def mark_ended(self, recording_id: UUID, state: str, reason: str,
                         at: datetime) -> None: ...


class MediaPort(Protocol):
    """What the recorder needs from the media side: start, update and stop a session's media."""

    async def start(self, session: RecordingSession) -> None: ...

    async def update(self, session: RecordingSession) -> None: ...

    async def stop(self, session: RecordingSession, reason: str) -> None: ...

    @property
    def disk_low(self) -> bool:
        """Recording storage is below its floor: new sessions get 503."""


@dataclass(frozen=True, slots=True)
class RecorderSettings:
    node_id: str
    media_address: str
    answer: AnswerPreferences
    max_sessions: int = 500
    retry_after: int = 30
    require_siprec: bool = False
    sources: SourcePolicy = field(default_factory=lambda: SourcePolicy.from_config(LOOPBACK))
    max_sessions_per_source: int = 50
    """Sessions at once from one untrusted source (sip.allow_from "any")."""
    max_streams: int = 8
    """m-lines one session may have recorded, i.e. RTP port pairs it may hold."""
    sdes_over_plain_sip: str = "loopback"
    """SDES keys over UDP/TCP: "refuse", "loopback" (only from this host) or "allow"."""


class TooManyStreams(Exception):
    pass


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class RecorderCounters:
    sessions_started: int = 0
    sessions_rejected: int = 0
    metadata_errors: int = 0
    db_errors: int = 0
    """Writes the database refused for a reason other than unavailability."""
    db_unavailable_rejections: int = 0
    """New sessions refused with 503 because the database was away."""
    sealed_rejections: int = 0
    """New sessions refused with 503 because the key store was sealed."""
    media_failures: int = 0
    source_cap_rejections: int = 0
    """New sessions of an untrusted source refused over sip.max_sessions_per_source."""
    too_many_streams: int = 0
    """Offers refused for more m-lines than sip.max_streams."""
    sdes_refused: int = 0
    """Offers refused for SRTP keys over unencrypted SIP."""
    disk_low_rejections: int = 0
    """New sessions refused because recording storage was below its floor."""


class Recorder:
    def __init__(
        self,
        settings: RecorderSettings,
        storage: RecordingStorage,
        sip: SipPort,
        ports: RtpPorts,
        media: MediaPort | None = None,
        clock: Callable[[], datetime] = _utcnow,
        sealed: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self._storage = storage
        self.sip = sip
        self._ports = ports
        self._media = media
        self._clock = clock
        self._sealed = sealed
        """True while the key store is sealed: new sessions get 503 + Retry-After."""
        self._pending: dict[str, RecordingSession] = {}  # INVITE txn id → session
        self._dialogs: dict[str, RecordingSession] = {}  # dialog id → session
        self._locks: dict[UUID, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = True
        self._per_source: Counter[str] = Counter()
        """Sessions in progress by untrusted source address."""
        self.counters = RecorderCounters()

    # ---------------------------------------------------------------- wiring

    def on_sip_event(self, event: SipEvent) -> None:
        """Called synchronously by the SIP endpoint; the work runs as a task."""
        if isinstance(event, RequestReceived):
            if event.dialog is None:
                self._spawn(self._initial_invite(event))
            else:
                self._spawn(self._in_dialog(event))
        elif isinstance(event, InviteCancelled):
            # The INVITE's task sees respond() fail and finishes the session itself.
            log.info("invite_cancelled", txn=event.txn)
        elif isinstance(event, DialogEnded):
            self._spawn(self._ended(event.dialog, event.reason))
        elif isinstance(event, DialogConfirmed):
            log.debug("dialog_confirmed", dialog=event.dialog)
        elif isinstance(event, InfoReceived):
            log.debug("info_received", dialog=event.dialog, content_type=event.content_type)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("recorder_task_failed", error=repr(exc))

    @property
    def active_sessions(self) -> int:
        return len(self._pending) + len(self._dialogs)

    def session_by_dialog(self, dialog: str) -> RecordingSession | None:
        return self._dialogs.get(dialog)

    def sessions(self) -> list[RecordingSession]:
        return list(self._dialogs.values())

    # ---------------------------------------------------------------- initial INVITE

    async def _initial_invite(self, event: RequestReceived) -> None:
        request = event.request
        if not self._accepting or self.active_sessions >= self.settings.max_sessions:
            self._reject(event.txn, 503, "Recorder at capacity", retry=True)
            return
        if self._sealed():
            self.counters.sealed_rejections += 1
            self._reject(event.txn, 503, "Recorder sealed", retry=True)
            return
        if not self._storage.available:
            self.counters.db_unavailable_rejections += 1
            self._reject(event.txn, 503, "Recording database unavailable", retry=True)
            return
        if self._media is not None and self._media.disk_low:
            self.counters.disk_low_rejections += 1
            self._reject(event.txn, 503, "Recording storage full", retry=True)
            return
        untrusted = self.settings.sources.admission(event.peer.host) is not Admission.TRUSTED
        if untrusted and self._per_source[event.peer.host] >= self.settings.max_sessions_per_source:
            self.counters.source_cap_rejections += 1
            self._reject(event.txn, 503, "Too many sessions from this source", retry=True)
            return
        try:
            offer, document, xml = self._decode(request, initial=True)
        except Rejection as rejection:
            self._reject(event.txn, rejection.status, rejection.reason, rejection.headers)
            return
        assert offer is not None
        if not self._keys_may_travel(offer, event.peer.transport, event.peer.host):
            self.counters.sdes_refused += 1
            self._reject(event.txn, 488, "SRTP keys over unencrypted SIP refused",
                         (("Warning", '399 srs "SDES keys need SIP over TLS"'),))
            return
        now = self._clock()
        session = RecordingSession(recording_id=uuid4(), call_id=request.call_id, started_at=now)
        session.source = event.peer.host if untrusted else None
        if session.source is not None:
            self._per_source[session.source] += 1
        self._pending[event.txn] = session
        lock = self._locks[session.recording_id] = asyncio.Lock()
        async with lock:
            await self._answer_initial(event, request, session, offer, document, xml, now)

    async def _answer_initial(
        self,
        event: RequestReceived,
        request: SipRequest,
        session: RecordingSession,
        offer: SessionDescription,
        document: MetadataDocument | None,
        xml: str | None,
        now: datetime,
    ) -> None:
        try:
            self._negotiate(session, offer)
        except NoAcceptableMedia as exc:
            self._discard(event.txn, session)
            self._reject(event.txn, 488, "Not Acceptable Here",
                         (("Warning", f'304 srs "{_quote(str(exc))[:200]}"'),))
            return
        except PortsExhausted:
            self._discard(event.txn, session)
            self._reject(event.txn, 503, "No RTP ports left", retry=True)
            return
        except TooManyStreams as exc:
            self._discard(event.txn, session)
            self._reject(event.txn, 488, "Too many media streams",
                         (("Warning", f'304 srs "{exc}"'),))
            return
        if document is not None:
            session.apply_metadata(document, now)
        new = NewRecording(
            id=session.recording_id,
            node_id=self.settings.node_id,
            call_id=session.call_id,
            sip_session_id=request.headers.get("Session-ID"),
            started_at=now,
            transport=event.peer.transport,
            src_address=event.peer.host,
        )
        try:
            await self._storage.open_recording(
                new, _metadata_event(now, "INVITE", document, xml), _session_rows(session))
        except StorageUnavailable as exc:
            self.counters.db_unavailable_rejections += 1
            log.error("recording_insert_failed", recording_id=str(session.recording_id),
                      error=str(exc)[:200])
            self._discard(event.txn, session)
            self._reject(event.txn, 503, "Recording database unavailable", retry=True)
            return
        except Exception as exc:  # noqa: BLE001 - this session fails, the server goes on
            self.counters.db_errors += 1
            log.error("recording_insert_failed", recording_id=str(session.recording_id),
                      error=repr(exc)[:300])
            self._discard(event.txn, session)
            self._reject(event.txn, 500, "Recording could not be stored")
            return
        assert session.negotiation is not None
        # Time 0 of the recording: the SRC may send media as soon as it has our answer.
        session.media_origin = time.monotonic()
        answered = self.sip.respond(
            event.txn,
            200,
            headers=[("Content-Type", "application/sdp")],
            body=session.negotiation.answer_sdp,
        )
        self._pending.pop(event.txn, None)
        if not answered:  # cancelled (or timed out) while we were working
            await self._finish(session, "failed", "cancelled")
            return
        dialog = self.sip.dialog_of(event.txn)
        assert dialog is not None
        session.dialog_id = dialog
        session.transition(SessionState.ACTIVE)
        self._dialogs[dialog] = session
        self.counters.sessions_started += 1
        log.info("recording_started", recording_id=str(session.recording_id),
                 call_id=session.call_id, streams=len(session.streams))
        await self._storage.mark_answered(session.recording_id, dialog, self._clock())
        if self._media is not None:
            try:
                await self._media.start(session)
            except Exception as exc:  # noqa: BLE001 - this session fails, the server goes on
                self.counters.media_failures += 1
                session.media_failed = True
                log.error("media_start_failed", recording_id=str(session.recording_id),
                          error=repr(exc))
                self.end_session(session, "media setup failed")

    # ---------------------------------------------------------------- in-dialog requests

    async def _in_dialog(self, event: RequestReceived) -> None:
        assert event.dialog is not None
        session = self._dialogs.get(event.dialog)
        if session is None:
            self.sip.respond(event.txn, 481)
            return
        async with self._locks[session.recording_id]:
            await self._update(event, session)

    async def _update(self, event: RequestReceived, session: RecordingSession) -> None:
        request = event.request
        try:
            offer, document, xml = self._decode(request, initial=False)
        except Rejection as rejection:
            self.sip.respond(event.txn, rejection.status, reason=rejection.reason,
                             headers=list(rejection.headers))
            return
        now = self._clock()
        body = b""
        headers: list[tuple[str, str]] = []
        if offer is not None:
            if not self._keys_may_travel(offer, event.peer.transport, event.peer.host):
                self.counters.sdes_refused += 1
                self.sip.respond(event.txn, 488, reason="SRTP keys over unencrypted SIP refused")
                return
            try:
                self._negotiate(session, offer)
            except NoAcceptableMedia as exc:
                self.sip.respond(event.txn, 488, headers=[
                    ("Warning", f'304 srs "{_quote(str(exc))[:200]}"')])
                return
            except TooManyStreams as exc:
                self.sip.respond(event.txn, 488, reason="Too many media streams",
                                 headers=[("Warning", f'304 srs "{exc}"')])
                return
            except PortsExhausted:
                self.sip.respond(event.txn, 503, reason="No RTP ports left",
                                 headers=[("Retry-After", str(self.settings.retry_after))])
                return
            released = session.unused_ports()
            session.forget_ports(released)
            for port in released:
                self._ports.release(port)
            assert session.negotiation is not None
            body = session.negotiation.answer_sdp
        elif request.method == "INVITE" and session.negotiation is not None:
            # A re-INVITE without an offer: the 2xx must carry one (RFC 3261 §14.2). We offer
            # what we answered last, with a new version.
            if session.offer is not None:
                self._negotiate(session, session.offer)
            body = session.negotiation.answer_sdp
        if body:
            headers.append(("Content-Type", "application/sdp"))
        if document is not None:
            session.apply_metadata(document, now)
        # Waits in the write-behind if the database is away; media keeps recording.
        await self._storage.save_update(
            session.recording_id, _metadata_event(now, request.method, document, xml),
            _session_rows(session))
        self.sip.respond(event.txn, 200, headers=headers, body=body)
        if self._media is not None and (offer is not None or document is not None):
            # New metadata can change who sends a stream, and so whose keys may pause.
            await self._media.update(session)

    # ---------------------------------------------------------------- endings

    async def _ended(self, dialog: str, reason: str) -> None:
        session = self._dialogs.get(dialog)
        if session is None:
            return
        async with self._locks[session.recording_id]:
            state = ("failed" if session.media_failed
                     else "interrupted" if session.storage_full or session.media_lost
                     else "complete")
            await self._finish(session, state, reason)

    async def _finish(self, session: RecordingSession, state: str, reason: str) -> None:
        if session.state is SessionState.ENDED:
            return
        session.transition(SessionState.ENDED)
        session.end_reason = reason
        self._forget_source(session)
        if self._media is not None and session.dialog_id is not None:
            await self._media.stop(session, reason)
        for port in session.ports.values():
            self._ports.release(port)
        session.ports.clear()
        if session.dialog_id:
            self._dialogs.pop(session.dialog_id, None)
        self._locks.pop(session.recording_id, None)
        await self._storage.mark_ended(session.recording_id, state, reason, self._clock())
        log.info("recording_ended", recording_id=str(session.recording_id), state=state,
                 reason=reason)

    def end_session(self, session: RecordingSession, reason: str) -> None:
        """Hang up from our side (BYE); the recording finishes when the dialog ends."""
        if session.dialog_id is not None:
            self.sip.end_dialog(session.dialog_id, reason)

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop taking calls, hang up every session (BYE) and finish its recording."""
        self._accepting = False
        for dialog in list(self._dialogs):
            self.sip.end_dialog(dialog, "server shutdown")
        deadline = asyncio.get_running_loop().time() + timeout
        while self._tasks and asyncio.get_running_loop().time() < deadline:
            await asyncio.wait(list(self._tasks), timeout=max(0.0, deadline - asyncio.get_running_loop().time()))

    # ---------------------------------------------------------------- helpers

    def _decode(
        self, request: SipRequest, *, initial: bool
    ) -> tuple[SessionDescription | None, MetadataDocument | None, str | None]:
        body = read_body(request)
        if initial:
            check_recording_session(request, body, strict=self.settings.require_siprec)
            if body.sdp is None:
                raise Rejection(488, "An SDP offer is required",
                                (("Warning", '304 srs "SDP offer required"'),))
        offer = None
        if body.sdp is not None:
            try:
                offer = parse_sdp(body.sdp)
            except SdpError as exc:
                raise Rejection(400, f"Bad SDP: {_quote(str(exc))[:100]}") from None
        document = None
        xml = None
        if body.metadata is not None:
            try:
                document = parse_metadata(body.metadata)
            except MetadataError as exc:
                self.counters.metadata_errors += 1
                raise Rejection(400, f"Bad recording metadata: {_quote(str(exc))[:100]}") from None
            xml = body.metadata.decode("utf-8", "replace")
        return offer, document, xml

    def _negotiate(self, session: RecordingSession, offer: SessionDescription) -> None:
        """Ports first (every m-line that can be accepted gets one, kept for the session),
        then the pure negotiation."""
        taken: list[int] = []
        acceptable = acceptable_m_lines(offer, self.settings.answer)
        if len(set(acceptable) | set(session.ports)) > self.settings.max_streams:
            self.counters.too_many_streams += 1
            raise TooManyStreams(f"at most {self.settings.max_streams} recorded streams")
        try:
            for index in acceptable:
                if index not in session.ports:
                    session.ports[index] = self._ports.allocate()
                    taken.append(index)
            session.negotiation = negotiate(
                offer,
                self.settings.answer,
                local_address=self.settings.media_address,
                port_for=session.ports.__getitem__,
                session_id=session.sdp_session_id,
                session_version=session.next_sdp_version(),
            )
        except Exception:
            # Give back ports this attempt took; the session keeps its earlier ones.
            for index in taken:
                self._ports.release(session.ports.pop(index))
            raise
        session.offer = offer

    def _reject(
        self,
        txn: str,
        status: int,
        reason: str,
        headers: tuple[tuple[str, str], ...] = (),
        *,
        retry: bool = False,
    ) -> None:
        self.counters.sessions_rejected += 1
        extra = list(headers)
        if retry:
            extra.append(("Retry-After", str(self.settings.retry_after)))
        log.info("invite_rejected", status=status, reason=reason)
        self.sip.respond(txn, status, reason=reason, headers=extra)

    def _keys_may_travel(self, offer: SessionDescription, transport: str, host: str) -> bool:
        """SDES puts the SRTP master keys in the SDP: over UDP or TCP anyone on the path reads
        them. Taken over TLS always; otherwise as sip.sdes_over_plain_sip says."""
        if transport == "tls" or not any(m.crypto for m in offer.media):
            return True
        policy = self.settings.sdes_over_plain_sip
        return policy == "allow" or (policy == "loopback" and is_loopback(host))

    def _forget_source(self, session: RecordingSession) -> None:
        if session.source is not None:
            self._per_source[session.source] -= 1
            if self._per_source[session.source] <= 0:
                del self._per_source[session.source]
            session.source = None

    def _discard(self, txn: str, session: RecordingSession) -> None:
        self._forget_source(session)
        self._pending.pop(txn, None)
        self._locks.pop(session.recording_id, None)
        for port in session.ports.values():
            self._ports.release(port)
        session.ports.clear()
        session.transition(SessionState.ENDED)


def _metadata_event(received_at: datetime, method: str, document: MetadataDocument | None,
                    xml: str | None) -> MetadataEvent | None:
    if document is None or xml is None:
        return None
    return MetadataEvent(uuid4(), received_at, method, document.datamode, xml)


def _session_rows(session: RecordingSession) -> SessionRows:
    metadata = session.metadata
    participants = tuple(
        ParticipantRow(p.id, p.aor, p.aor_raw, p.name, p.joined_at, p.left_at, p.present,
                       normalize_number(p.aor) if p.aor else None)
        for p in (metadata.participants.values() if metadata else ())
    )
    streams: list[StreamRow] = []
    accepted = {s.index: s for s in session.streams}
    for media in session.offer.media if session.offer else ():
        stream = accepted.get(media.index)
        streams.append(
            StreamRow(
                m_index=media.index,
                label=media.label,
                stream_id=session.metadata_stream_id(stream) if stream else None,
                kind=media.kind,
                accepted=stream is not None,
                codec=f"{stream.codec.name}/{stream.codec.rate}" if stream else None,
                telephone_event=stream.telephone_event.pt
                if stream and stream.telephone_event else None,
                srtp_suite=stream.srtp.suite.name if stream and stream.srtp else None,
                local_port=stream.local_port if stream else None,
                remote_address=stream.remote_address if stream else None,
                remote_port=stream.remote_port if stream else None,
                direction=media.direction,
                senders=session.senders_of(stream) if stream else (),
            )
        )
    return SessionRows(metadata.session_id if metadata else None, participants, tuple(streams))


def _quote(text: str) -> str:
    """Safe inside a SIP reason phrase or quoted Warning text."""
    return "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else " " for ch in text)
