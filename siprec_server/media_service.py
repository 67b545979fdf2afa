"""Recorded media for the recorder: RTP sockets per answered m-line, one CallMedia per session
writing Ogg Opus straight into the encrypting file writer, and the end of each recording —
hashes, statistics, the node's signature — in PostgreSQL. Also start-up recovery of recordings
a crash left open.

This is the glue between the sans-IO media core (siprec_server/media), the storage layer and the
recorder; the media core itself never sees a socket, a key store or the database. The glue
feeds it each datagram with its source address, tells it from the session's SDP and metadata
whom to believe (source addresses, which streams' key sequences may pause), and turns what it
reports into audit events (DTMF and hold pauses; the API audits its own) and the `no_media`
flag of a recording whose streams never delivered a packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID, uuid4

from siprec_server.disk_guard import DiskGuard
from siprec_server.logs import get_logger
from siprec_server.media.call import (
    MediaReport,
    SrtpSpec,
    StreamSpec,
    recording_rate,
)
from siprec_server.media.codecs import RtpCodec
from siprec_server.media.dtmf_control import DtmfControl
from siprec_server.media.events import MediaEvent, RecordingPaused
from siprec_server.media.ports import PortAllocator, PortsExhausted
from siprec_server.media.source import RtpSourcePolicy, offer_address
from siprec_server.numbers import normalize_number
from siprec_server.siprec.metadata_state import Participant
from siprec_server.siprec.sdp_answer import NegotiatedStream
from siprec_server.siprec.session import RecordingSession
from siprec_server.workers.call_runner import CallPlan
from siprec_server.workers.engine import (
    SO_TIMESTAMPNS,
    CallSockets,
    EngineEvents,
    InProcessEngine,
    MediaEngine,
)
from storage.audit import AuditEvent
from storage.keys import KeyRing, data_key_id, new_data_key, wrap_data_key
from storage.recording_file import (
    FileSummary,
    decrypt_chunks,
    seal_interrupted,
)
from storage.recording_store import MediaStart
from storage.recording_summary import (
    build_summary,
    participant_entries,
    start_summary,
    summary_digest,
)
from storage.recordings import MediaResult
from storage.signing import NodeSigningKey, SigningKeyHolder

log = get_logger("media")

TICK_INTERVAL = 0.1
AUDIT_DRAIN_S = 5.0
"""Seconds close() waits for pause/resume audit events to reach the write-behind."""


class MediaStorage(Protocol):
    """What the media service writes and reads (storage.write_behind.WriteBehind): writes wait
    for the database when it is away; the start-up reads need it."""

    async def save_media_start(self, recording_id: UUID, start: MediaStart) -> None: ...

    async def save_media_result(self, recording_id: UUID, result: MediaResult) -> None: ...

    async def register_signing_key(self, key_id: str, node_id: str,
                                   public_key: bytes) -> None: ...

    async def mark_ended(self, recording_id: UUID, state: str, reason: str,
                         at: datetime) -> None: ...

    async def record_audit(self, event: AuditEvent, at: datetime, event_id: UUID) -> None: ...

    async def unfinished_media(self, node_id: str,
                               include_recording: bool = True) -> list[dict[str, Any]]: ...

    async def recording_key(self, recording_id: UUID) -> tuple[str, bytes] | None: ...

    async def recording_evidence(self, recording_id: UUID
                                 ) -> tuple[list[dict[str, Any]], list[str]]: ...


@dataclass
class MediaCounters:
    bind_failures: int = 0
    tick_errors: int = 0
    calls_failed: int = 0
    calls_cut_by_disk: int = 0
    """Calls ended because recording storage ran low (sealed with what was written)."""
    left_unsealed: int = 0
    """Recordings whose final chunk could not be written (ENOSPC); sealed when space is back."""
    recordings_without_media: int = 0
    """Sessions none of whose streams delivered an accepted packet (no_media recordings)."""
    audit_failures: int = 0
    """Pause/resume audit events the storage refused (logged)."""
    peaks_not_written: int = 0
    """Recordings whose waveform peaks could not be stored (they play, without a waveform)."""


@dataclass(frozen=True, slots=True)
class ChannelAssignment:
    index: int
    """Channel number in the Ogg Opus file."""
    m_index: int
    label: str | None
    participant_ids: tuple[str, ...]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "m_index": self.m_index,
            "label": self.label,
            "participant_ids": list(self.participant_ids),
            "reason": self.reason,
        }


def channel_map(session: RecordingSession) -> list[ChannelAssignment]:
    """One channel per recorded audio m-line, in SDP order. Label order says nothing about who
    is caller or agent, so the SDP order is kept and the metadata says who is on each."""
    audio = [s for s in session.streams if s.kind == "audio"]
    out = []
    for channel, stream in enumerate(audio):
        senders = session.senders_of(stream)
        if senders:
            who = f"sent by {len(senders)} participant(s) per the metadata"
            if len(senders) > 1:
                who += " (a mixed stream)"
        elif stream.label is None:
            who = "no a=label, so no participant can be resolved"
        else:
            who = f"label {stream.label!r} has no sender in the metadata"
        out.append(
            ChannelAssignment(
                channel, stream.index, stream.label, senders,
                f"m-line {stream.index} is recorded stream {channel + 1} of {len(audio)}; {who}",
            )
        )
    return out


def keypad_control(session: RecordingSession, stream: NegotiatedStream,
                   rules: Sequence[str]) -> bool:
    """Whether key sequences on `stream` may pause and resume the recording, by the rules of
    `[media] dtmf_control_from`: "*" (any stream), "label:GLOB" (its a=label), "aor:GLOB" and
    "number:GLOB" (a participant the metadata names as a sender of the stream)."""
    senders: tuple[Participant, ...] = ()
    if session.metadata is not None and stream.label is not None:
        senders = session.metadata.senders_of_label(stream.label)
    for rule in rules:
        if rule == "*":
            return True
        kind, _, pattern = rule.partition(":")
        if kind == "label":
            if stream.label is not None and fnmatchcase(stream.label, pattern):
                return True
            continue
        for participant in senders:
            if participant.aor is None:
                continue
            if kind == "aor" and fnmatchcase(participant.aor.lower(), pattern.lower()):
                return True
            if kind == "number":
                number = normalize_number(participant.aor)
                if number is not None and fnmatchcase(number, pattern):
                    return True
    return False


def stream_spec(stream: NegotiatedStream, channel: int, *, dtmf_control: bool = True
                ) -> StreamSpec:
    codec = stream.codec
    codecs = {codec.pt: RtpCodec(codec.name, codec.rate, codec.channels or 1, codec.fmtp)}
    codecs.setdefault(13, RtpCodec("CN", 8000))  # comfort noise is sent unannounced
    event_pt = None
    if stream.telephone_event is not None:
        event = stream.telephone_event
        event_pt = event.pt
        codecs[event.pt] = RtpCodec("telephone-event", event.rate, 1, event.fmtp)
    srtp = None
    if stream.srtp is not None:
        srtp = SrtpSpec(
            stream.srtp.suite,
            stream.srtp.remote_key_salt,
            stream.srtp.unencrypted_srtcp,
            stream.srtp.remote_mki,
        )
    return StreamSpec(
        stream.index, channel, codecs, event_pt, srtp, stream.rtcp_mux,
        remote_address=offer_address(stream.remote_address),
        remote_port=stream.remote_port,
        remote_rtcp_port=stream.remote_rtcp_port,
        dtmf_control=dtmf_control,
    )


@dataclass
class _ActiveCall:
    """The main process's side of a call whose media runs in the engine."""

    session: RecordingSession
    channels: list[ChannelAssignment]
    cut: bool = False
    """Ended for lack of disk space."""


class MediaService:
    def __init__(
        self,
        *,
        data_dir: Path,
        storage: MediaStorage,
        keys: KeyRing,
        signer: NodeSigningKey | SigningKeyHolder,
        node_id: str,
        bind_host: str,
        ports: PortAllocator,
        dtmf_control: DtmfControl | None = None,
        dtmf_control_from: Sequence[str] = ("*",),
        inactivity_timeout: float = 300.0,
        min_free_bytes: int = 0,
        rtp_source: RtpSourcePolicy = "offer-address",
        engine: Callable[[EngineEvents], MediaEngine] = InProcessEngine,
    ) -> None:
        """`engine` makes where calls' media runs (siprec_server/workers): on this event loop
        (the default) or in media worker processes."""
        self._dir = data_dir / "recordings"
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._storage = storage
        self._keys = keys
        self._signer = signer
        self._node_id = node_id
        self._bind_host = bind_host
        self._ports = ports
        self._dtmf_control = dtmf_control
        self._dtmf_control_from = tuple(dtmf_control_from)
        self._inactivity_timeout = inactivity_timeout
        self._rtp_source: RtpSourcePolicy = rtp_source
        self.on_inactive: Callable[[RecordingSession], None] | None = None
        """Called once when a session's media has been silent for the inactivity timeout."""
        self.on_storage_full: Callable[[RecordingSession], None] | None = None
        """Called once per call ended for lack of disk space (the recorder hangs it up)."""
        self.on_lost: Callable[[RecordingSession], None] | None = None
        """Called once per call whose media went away with its worker (hung up; sealed)."""
        self.disk = DiskGuard(self._dir, min_free_bytes, on_low=self._cut_all,
                              on_recovered=self._reseal_later)
        self._sockets: dict[int, tuple[socket.socket, socket.socket]] = {}
        self._calls: dict[UUID, _ActiveCall] = {}
        self._loop = asyncio.get_running_loop()
        self._engine = engine(self)
        self._audits: asyncio.Queue[tuple[AuditEvent, datetime, UUID]] = asyncio.Queue()
        self._auditor: asyncio.Task[None] | None = None
        self.counters = MediaCounters()

    # ---------------------------------------------------------------- ports (the recorder's)

    def allocate(self) -> int:
        """An RTP port whose RTP and RTCP sockets are already bound, so the SDP answer never
        names a port another process holds."""
        for _attempt in range(16):
            port = self._ports.allocate()
            try:
                self._sockets[port] = (self._bind(port), self._bind(port + 1))
                return port
            except OSError:
                # Held by another process: back to the end of the pool (it may be free again
                # by the time it comes round) and try the next pair.
                self._ports.release(port)
                self.counters.bind_failures += 1
                log.warning("rtp_port_unavailable", port=port)
        raise PortsExhausted("no bindable RTP port pair found")

    def release(self, port: int) -> None:
        for sock in self._sockets.pop(port, ()):
            sock.close()
        self._ports.release(port)

    @property
    def ports_in_use(self) -> int:
        return self._ports.in_use

    def _bind(self, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._bind_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            # From the first datagram on, the kernel stamps arrival times (a media worker reads
            # them: packets that waited for the call to reach its worker keep their own times).
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.bind((self._bind_host, port))
        except OSError:
            sock.close()
            raise
        return sock

    # ---------------------------------------------------------------- the recorder's MediaPort

    async def start(self, session: RecordingSession) -> None:
        if self._auditor is None:
            self._auditor = asyncio.create_task(self._audit_forever())
        channels = channel_map(session)
        if not channels:
            return
        specs = self._specs(session, channels)
        rate = recording_rate(specs)
        dek = new_data_key()
        wrapped = wrap_data_key(self._keys.current, dek, session.recording_id)
        path = self._path_for(session)
        await self._storage.save_media_start(
            session.recording_id,
            MediaStart(str(path), rate, [c.as_dict() for c in channels],
                       self._keys.current.key_id, wrapped),
        )
        await self._audit_start(session, wrapped_by=self._keys.current.key_id, dek=dek)
        plan = CallPlan(
            recording_id=session.recording_id, path=path, specs=tuple(specs),
            channels=len(channels), rate=rate, data_key=dek,
            started=session.media_origin or time.monotonic(),
            dtmf_control=self._dtmf_control, rtp_source=self._rtp_source,
            inactivity_timeout=self._inactivity_timeout)
        by_index = {s.index: s for s in session.streams}
        sockets = []
        for channel in channels:
            rtp, rtcp = self._sockets[by_index[channel.m_index].local_port]
            sockets.append(CallSockets(channel.m_index, rtp, rtcp))
        self._calls[session.recording_id] = _ActiveCall(session, channels)
        try:
            await self._engine.start_call(plan, sockets)
        except BaseException:
            self._calls.pop(session.recording_id, None)
            raise
        log.info("media_started", recording_id=str(session.recording_id),
                 channels=len(channels), rate=rate)

    def _specs(self, session: RecordingSession,
               channels: Sequence[ChannelAssignment]) -> list[StreamSpec]:
        by_index = {s.index: s for s in session.streams}
        return [
            stream_spec(
                by_index[c.m_index], c.index,
                dtmf_control=keypad_control(session, by_index[c.m_index],
                                            self._dtmf_control_from),
            )
            for c in channels if c.m_index in by_index
        ]

    async def update(self, session: RecordingSession) -> None:
        """A new offer or new metadata: media, allowed sources, keypad control, hold."""
        call = self._calls.get(session.recording_id)
        if call is None:
            return
        recorded = {c.m_index for c in call.channels}
        specs = self._specs(session, call.channels)
        added = [s.index for s in session.streams if s.index not in recorded and s.kind == "audio"]
        on_hold = all(s.direction in ("inactive", "recvonly") for s in session.streams)
        await self._engine.update_call(session.recording_id, specs, on_hold)
        if added:
            log.warning("streams_added_mid_call_not_recorded",
                        recording_id=str(session.recording_id), m_lines=added)

    async def stop(self, session: RecordingSession, reason: str) -> None:
        call = self._calls.pop(session.recording_id, None)
        if call is None:
            return
        outcome = await self._engine.stop_call(session.recording_id)
        if outcome is None or outcome.report is None or outcome.summary is None:
            why = outcome.unsealed if outcome is not None else "lost"
            if outcome is not None and (outcome.no_space or call.cut):
                # Its final chunk could not be written: the file stays as it is (every complete
                # chunk readable) and is sealed once there is space again.
                session.storage_full = True
                self.counters.left_unsealed += 1
                self.disk.exhausted()
                log.error("recording_left_unsealed", recording_id=str(session.recording_id))
            else:
                # The media went away with its worker, or closing failed: seal what reached
                # the file now, as a crash's recovery would.
                self.counters.calls_failed += 1
                session.media_lost = True
                log.error("media_close_failed", recording_id=str(session.recording_id),
                          error=why)
                await self._reseal(session.recording_id, session.call_id, session.started_at,
                                   call.channels, self._path_for(session),
                                   reason=f"media lost ({why})")
            return
        report, summary = outcome.report, outcome.summary
        if outcome.peaks_error is not None:
            self.counters.peaks_not_written += 1
            log.error("peaks_not_written", recording_id=str(session.recording_id),
                      error=outcome.peaks_error)
        if report.no_media:
            # Not a good 0-second recording: silence as long as the session, flagged.
            self.counters.recordings_without_media += 1
            log.warning("recording_without_media", recording_id=str(session.recording_id),
                        duration_s=round(report.duration, 3), streams=len(report.streams))
        digests = self._metadata_digests(session.recording_id)
        if digests is None:
            _stored, digests = await self._storage.recording_evidence(
                session.recording_id)
        await self._store_result(
            session.recording_id, session.call_id, session.started_at, datetime.now(UTC),
            call.channels, summary, report, recovered=False,
            participants=_participants_of(session), metadata_sha256=digests,
        )
        log.info("media_finished", recording_id=str(session.recording_id),
                 duration_s=round(report.duration, 3), bytes=summary.ciphertext_bytes)

    # ---------------------------------------------------------------- control (API, DTMF)

    def pause(self, recording_id: UUID, source: str) -> bool | None:
        return self._engine.pause(recording_id, source)

    def resume(self, recording_id: UUID, source: str) -> bool | None:
        return self._engine.resume(recording_id, source)

    def packet_totals(self) -> dict[str, int]:
        """Packet counters of every call this process recorded, live calls included."""
        return dict(self._engine.packet_totals())

    # ---------------------------------------------------------------- what the engine reports

    def media_events(self, recording_id: UUID, events: list[MediaEvent]) -> None:
        self._report_events(recording_id, events)

    def inactive(self, recording_id: UUID, seconds: float) -> None:
        call = self._calls.get(recording_id)
        if call is None:
            return
        log.warning("media_inactive", recording_id=str(recording_id), seconds=round(seconds))
        if self.on_inactive is not None:
            self.on_inactive(call.session)

    def no_space(self, recording_id: UUID) -> None:
        self.disk.exhausted()
        call = self._calls.get(recording_id)
        if call is not None:
            self._cut(call)

    def lost(self, recording_id: UUID, why: str) -> None:
        """The call's media went away (its worker died): hang up; stop() seals the file."""
        call = self._calls.get(recording_id)
        if call is None:
            return
        call.session.media_lost = True
        log.error("media_lost", recording_id=str(recording_id), why=why)
        if self.on_lost is not None:
            self.on_lost(call.session)

    # ---------------------------------------------------------------- audit of pauses

    def _report_events(self, recording_id: UUID, events: list[MediaEvent]) -> None:
        """Queue an audit event for every DTMF and hold pause or resume the core reported.
        API pauses are audited by the API, with the user who asked."""
        for event in events:
            if event.source == "api":
                continue
            action = "paused" if isinstance(event, RecordingPaused) else "resumed"
            details: dict[str, Any] = {"offset_s": round(event.at, 3)}
            if event.stream is not None:
                details["m_index"] = event.stream
            self._audits.put_nowait((
                AuditEvent(actor=f"node:{self._node_id}", action=f"recording.{action}",
                           target=str(recording_id), source=event.source, details=details),
                datetime.now(UTC),
                uuid4(),
            ))
            log.info(f"recording_{action}", recording_id=str(recording_id),
                     source=event.source, offset_s=details["offset_s"])

    async def _audit_forever(self) -> None:
        # One writer, so a call's pause and resume reach the audit chain in order; the tick
        # loop never waits for the database.
        while True:
            event, at, event_id = await self._audits.get()
            try:
                await self._storage.record_audit(event, at, event_id)
            except Exception as exc:  # noqa: BLE001 - counted and logged; recording goes on
                self.counters.audit_failures += 1
                log.error("pause_audit_failed", recording_id=event.target, error=repr(exc))
            finally:
                self._audits.task_done()

    # ---------------------------------------------------------------- storage running out

    @property
    def disk_low(self) -> bool:
        return self.disk.low

    def _cut_all(self) -> None:
        for call in list(self._calls.values()):
            self._cut(call)

    def _cut(self, call: _ActiveCall) -> None:
        """End a call for lack of space: the recorder hangs up, stop() seals what was written."""
        if call.cut:
            return
        call.cut = True
        call.session.storage_full = True
        self.counters.calls_cut_by_disk += 1
        log.error("recording_cut_disk_low", recording_id=str(call.session.recording_id))
        if self.on_storage_full is not None:
            self.on_storage_full(call.session)

    def _reseal_later(self) -> None:
        task = asyncio.ensure_future(self.recover(include_recording=False))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def open(self) -> None:
        """Start the engine (media worker processes) and the free-space watch."""
        await self._engine.start()
        self.disk.start()

    @property
    def engine(self) -> MediaEngine:
        return self._engine

    async def close(self) -> None:
        await self.disk.close()
        await self._engine.close()
        if self._auditor is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._audits.join(), AUDIT_DRAIN_S)
            self._auditor.cancel()
            if not self._audits.empty():
                log.error("pause_audits_not_written", count=self._audits.qsize())
        for port in list(self._sockets):
            self.release(port)

    # ---------------------------------------------------------------- finishing and recovery

    async def _store_result(
        self,
        recording_id: UUID,
        call_id: str,
        started_at: datetime,
        ended_at: datetime,
        channels: list[ChannelAssignment] | list[dict[str, Any]],
        summary: FileSummary,
        report: MediaReport | None,
        *,
        recovered: bool,
        participants: list[dict[str, Any]],
        metadata_sha256: list[str],
        duration_ms: int | None = None,
    ) -> None:
        if report is not None:
            duration_ms = round(report.duration * 1000)
            pauses = [
                {"start_ms": round(p.start * 1000),
                 "end_ms": round(p.end * 1000) if p.end is not None else None,
                 "source": p.source}
                for p in report.pauses
            ]
            stream_stats = {s.index: _stream_stats(s) for s in report.streams}
            dtmf = report.dtmf_events
            no_media = report.no_media
        else:
            pauses, stream_stats, dtmf, no_media = [], {}, 0, False
        channel_dicts = [c.as_dict() if isinstance(c, ChannelAssignment) else c for c in channels]
        signed = build_summary(
            recording_id=recording_id, node_id=self._node_id, call_id=call_id,
            started_at=started_at, ended_at=ended_at, duration_ms=duration_ms or 0,
            channels=channel_dicts, plaintext_sha256=summary.plaintext_sha256,
            ciphertext_sha256=summary.ciphertext_sha256,
            plaintext_bytes=summary.plaintext_bytes, ciphertext_bytes=summary.ciphertext_bytes,
            recovered=recovered, pauses=pauses, dtmf_events=dtmf, no_media=no_media,
            streams=stream_stats, participants=participants, metadata_sha256=metadata_sha256,
        )
        signature = self._signer.sign(signed)
        await self._storage.register_signing_key(
            self._signer.key_id, self._node_id, self._signer.public_key_bytes()
        )
        await self._storage.save_media_result(
            recording_id,
            MediaResult(
                duration_ms=duration_ms or 0,
                plaintext_sha256=summary.plaintext_sha256,
                ciphertext_sha256=summary.ciphertext_sha256,
                plaintext_bytes=summary.plaintext_bytes,
                ciphertext_bytes=summary.ciphertext_bytes,
                pauses=pauses,
                dtmf_events=dtmf,
                recovered=recovered,
                summary=signed,
                signature=signature,
                signing_key_id=self._signer.key_id,
                stream_stats=stream_stats,
                no_media=no_media,
            ),
        )
        # The trail vouches for this exact summary: a summary re-signed later with another key
        # no longer matches it.
        await self._storage.record_audit(AuditEvent(
            actor=f"node:{self._node_id}", action="recording.sealed",
            target=str(recording_id), source="media",
            details={"summary_sha256": summary_digest(signed),
                     "signing_key_id": self._signer.key_id, "recovered": recovered,
                     "participants": len(participants),
                     "metadata_events": len(metadata_sha256)}), datetime.now(UTC), uuid4())
        forget = getattr(self._storage, "forget", None)
        if forget is not None:
            forget(recording_id)

    async def recover(self, include_recording: bool = True) -> int:
        """Seal every file this node left open (a crash, or a disk that filled up): each
        complete chunk stays readable, the recording is marked interrupted and signed as
        recovered. At start-up `include_recording` takes the recordings still marked as
        recording (nothing of this node runs yet); later only those already ended."""
        count = 0
        for row in await self._storage.unfinished_media(self._node_id, include_recording):
            recording_id: UUID = row["id"]
            if recording_id in self._calls:
                continue
            if await self._reseal(recording_id, row["call_id"], row["started_at"],
                                  row["channels"], Path(row["file_path"]),
                                  reason="server stopped while recording"):
                count += 1
        return count

    async def _reseal(self, recording_id: UUID, call_id: str, started_at: datetime,
                      channels: list[ChannelAssignment] | list[dict[str, Any]], path: Path, *,
                      reason: str) -> bool:
        """Seal one recording's file as it is (final chunk after the last complete one) and
        store it signed as recovered, state interrupted. False when that failed (logged; the
        recording is marked failed)."""
        try:
            key = await self._storage.recording_key(recording_id)
            if key is None:
                raise LookupError("no data key")
            dek = self._keys.unwrap(key[1], recording_id)
            with open(path, "r+b") as f:
                summary = seal_interrupted(f, recording_id=recording_id, data_key=dek)
                f.flush()
                os.fsync(f.fileno())
            with open(path, "rb") as f:
                duration_ms = ogg_duration_ms(
                    decrypt_chunks(f, recording_id=recording_id, data_key=dek)
                )
            now = datetime.now(UTC)
            participants, digests = await self._storage.recording_evidence(recording_id)
            await self._store_result(
                recording_id, call_id, started_at, now, channels,
                summary, None, recovered=True, participants=participants,
                metadata_sha256=digests, duration_ms=duration_ms,
            )
            await self._storage.mark_ended(recording_id, "interrupted", reason, now)
            log.warning("recording_recovered", recording_id=str(recording_id),
                        duration_ms=duration_ms)
            return True
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
            log.error("recording_recovery_failed", recording_id=str(recording_id),
                      error=repr(exc))
            await self._storage.mark_ended(recording_id, "failed",
                                           f"recovery failed: {type(exc).__name__}",
                                           datetime.now(UTC))
            return False

    def _metadata_digests(self, recording_id: UUID) -> list[str] | None:
        digests = getattr(self._storage, "metadata_digests", None)
        return None if digests is None else digests(recording_id)

    async def _audit_start(self, session: RecordingSession, *, wrapped_by: str,
                           dek: bytes) -> None:
        digests = self._metadata_digests(session.recording_id) or []
        participants = _participants_of(session)
        start = start_summary(
            recording_id=session.recording_id, node_id=self._node_id, call_id=session.call_id,
            started_at=session.started_at, participants=participants, metadata_sha256=digests,
            master_key_id=wrapped_by, data_key_id=data_key_id(dek))
        await self._storage.record_audit(AuditEvent(
            actor=f"node:{self._node_id}", action="recording.started",
            target=str(session.recording_id), source="media",
            details={"summary_sha256": summary_digest(start), "master_key_id": wrapped_by,
                     "participants": len(participants), "metadata_events": len(digests)}),
            datetime.now(UTC), uuid4())

    def _path_for(self, session: RecordingSession) -> Path:
        day = session.started_at.astimezone(UTC)
        return self._dir / f"{day:%Y/%m/%d}" / f"{session.recording_id}.srec"


def _participants_of(session: RecordingSession) -> list[dict[str, Any]]:
    metadata = session.metadata
    return participant_entries(
        {"participant_id": p.id, "aor": p.aor, "name": p.name, "present": p.present,
         "joined_at": p.joined_at, "left_at": p.left_at}
        for p in (metadata.participants.values() if metadata else ()))


def _stream_stats(stream: Any) -> dict[str, int]:
    stats, counters = stream.stats, stream.counters
    return {
        "channel": stream.channel,
        "packets_received": stats.received,
        "packets_lost": stats.lost,
        "late": stats.late,
        "duplicates": stats.duplicates,
        "ssrc_changes": stats.ssrc_changes,
        "reanchors": stats.reanchors,
        "bad_packets": stats.bad_packets,
        "srtp_auth_failures": counters.srtp_auth_failures,
        "srtp_replays": counters.srtp_replays,
        "srtp_other_failures": counters.srtp_other_failures,
        "rtcp_packets": counters.rtcp_packets,
        "foreign_source": counters.foreign_source,
        "foreign_ssrc": counters.foreign_ssrc,
        "dtmf_events": stats.dtmf_events,
    }


def ogg_duration_ms(plaintext_chunks: Any) -> int:
    """Audio duration of an Ogg Opus stream from its last page's granule position (48 kHz) less
    the pre-skip in its OpusHead; the stream may end mid-page (a crash)."""
    tail = b""
    last_granule = 0
    pre_skip = 0
    head_seen = False
    for chunk in plaintext_chunks:
        data = tail + chunk
        pos = 0
        while True:
            start = data.find(b"OggS", pos)
            if start == -1 or len(data) - start < 27:
                tail = data[start:] if start != -1 else data[pos:]
                break
            segments = data[start + 26]
            header_len = 27 + segments
            if len(data) - start < header_len:
                tail = data[start:]
                break
            body_len = sum(data[start + 27 : start + header_len])
            if len(data) - start < header_len + body_len:
                tail = data[start:]
                break
            body = data[start + header_len : start + header_len + body_len]
            granule = int.from_bytes(data[start + 6 : start + 14], "little", signed=True)
            if not head_seen and body.startswith(b"OpusHead") and len(body) >= 12:
                pre_skip = int.from_bytes(body[10:12], "little")
                head_seen = True
            elif granule > 0:
                last_granule = granule
            pos = start + header_len + body_len
    return max(0, (last_granule - pre_skip) // 48)
