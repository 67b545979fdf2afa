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
import errno
import os
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from uuid import UUID, uuid4

from siprec_server.disk_guard import DiskGuard
from siprec_server.logs import get_logger
from siprec_server.media.call import (
    CallMedia,
    MediaReport,
    SrtpSpec,
    StreamReport,
    StreamSpec,
    recording_rate,
)
from siprec_server.media.codecs import RtpCodec
from siprec_server.media.dtmf_control import DtmfControl
from siprec_server.media.events import RecordingPaused
from siprec_server.media.ports import PortAllocator, PortsExhausted
from siprec_server.media.source import Address, RtpSourcePolicy, offer_address
from siprec_server.numbers import normalize_number
from siprec_server.siprec.metadata_state import Participant
from siprec_server.siprec.sdp_answer import NegotiatedStream
from siprec_server.siprec.session import RecordingSession
from storage.audit import AuditEvent
from storage.keys import KeyRing, data_key_id, new_data_key, wrap_data_key
from storage.peaks import write_peaks
from storage.recording_file import (
    FileSummary,
    RecordingFileWriter,
    decrypt_chunks,
    seal_interrupted,
)
from storage.recording_store import MediaStart
from storage.recordings import MediaResult
from storage.signing import NodeSigningKey

log = get_logger("media")

TICK_INTERVAL = 0.1
FORMAT = "ogg-opus/siprec-aead-v1"
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


class _DatagramProtocol(asyncio.DatagramProtocol):
    """One socket (RTP or RTCP) of one m-line; the per-packet path is two calls."""

    __slots__ = ("_receive", "_index", "_time")

    def __init__(self, receive: Callable[[int, bytes, float, Address], None], index: int,
                 time: Callable[[], float]) -> None:
        self._receive = receive
        self._index = index
        self._time = time

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._receive(self._index, data, self._time(), addr)


@dataclass
class _ActiveCall:
    session: RecordingSession
    media: CallMedia
    writer: RecordingFileWriter
    file: BinaryIO
    path: Path
    transports: list[asyncio.BaseTransport]
    channels: list[ChannelAssignment]
    data_key: bytes
    started: float
    timed_out: bool = False
    cut: bool = False
    """Ended for lack of disk space."""


class MediaService:
    def __init__(
        self,
        *,
        data_dir: Path,
        storage: MediaStorage,
        keys: KeyRing,
        signer: NodeSigningKey,
        node_id: str,
        bind_host: str,
        ports: PortAllocator,
        dtmf_control: DtmfControl | None = None,
        dtmf_control_from: Sequence[str] = ("*",),
        inactivity_timeout: float = 300.0,
        min_free_bytes: int = 0,
        rtp_source: RtpSourcePolicy = "offer-address",
    ) -> None:
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
        self.disk = DiskGuard(self._dir, min_free_bytes, on_low=self._cut_all,
                              on_recovered=self._reseal_later)
        self._sockets: dict[int, tuple[socket.socket, socket.socket]] = {}
        self._calls: dict[UUID, _ActiveCall] = {}
        self._loop = asyncio.get_running_loop()
        self._ticker: asyncio.Task[None] | None = None
        self._audits: asyncio.Queue[tuple[AuditEvent, datetime, UUID]] = asyncio.Queue()
        self._auditor: asyncio.Task[None] | None = None
        self.counters = MediaCounters()
        self._finished_packets: Counter[str] = Counter()

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
            sock.bind((self._bind_host, port))
        except OSError:
            sock.close()
            raise
        return sock

    # ---------------------------------------------------------------- the recorder's MediaPort

    async def start(self, session: RecordingSession) -> None:
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_forever())
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
        file = _create_private(path)
        writer = RecordingFileWriter(
            file, recording_id=session.recording_id, data_key=dek, key_id=data_key_id(dek)
        )
        started = self._loop.time()
        media = CallMedia(specs, len(channels), writer.write, writer.flush, started=started,
                          rate=rate, dtmf_control=self._dtmf_control,
                          source_policy=self._rtp_source)
        by_index = {s.index: s for s in session.streams}
        transports: list[asyncio.BaseTransport] = []
        for channel in channels:
            stream = by_index[channel.m_index]
            rtp_sock, rtcp_sock = self._sockets[stream.local_port]
            rtp, _ = await self._loop.create_datagram_endpoint(
                partial(_DatagramProtocol, media.receive_rtp, stream.index, self._loop.time),
                sock=rtp_sock,
            )
            rtcp, _ = await self._loop.create_datagram_endpoint(
                partial(_DatagramProtocol, media.receive_rtcp, stream.index, self._loop.time),
                sock=rtcp_sock,
            )
            transports += [rtp, rtcp]
        self._calls[session.recording_id] = _ActiveCall(
            session, media, writer, file, path, transports, channels, dek, started
        )
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
        call.media.update_streams(specs)
        if added:
            log.warning("streams_added_mid_call_not_recorded",
                        recording_id=str(session.recording_id), m_lines=added)
        now = self._loop.time()
        on_hold = all(s.direction in ("inactive", "recvonly") for s in session.streams)
        if on_hold:
            call.media.pause(now, "hold")
        else:
            call.media.resume(now, "hold")
        self._report_events(call)

    async def stop(self, session: RecordingSession, reason: str) -> None:
        call = self._calls.pop(session.recording_id, None)
        if call is None:
            return
        for transport in call.transports:
            transport.close()
        try:
            report = call.media.close(self._loop.time())
            summary = call.writer.close()
            call.file.flush()
            os.fsync(call.file.fileno())
        except Exception as exc:  # noqa: BLE001 - finish what can be finished, say what failed
            if _no_space(exc) or call.cut:
                # Its final chunk could not be written: the file stays as it is (every complete
                # chunk readable) and is sealed once there is space again.
                session.storage_full = True
                self.counters.left_unsealed += 1
                self.disk.exhausted()
                log.error("recording_left_unsealed", recording_id=str(session.recording_id))
            else:
                self.counters.calls_failed += 1
                log.error("media_close_failed", recording_id=str(session.recording_id),
                          error=repr(exc))
            return
        finally:
            with contextlib.suppress(OSError):
                call.file.close()
        self._report_events(call)
        self._save_peaks(call, report)
        for stream in report.streams:
            self._finished_packets.update(_packet_counts(stream))
        if report.no_media:
            # Not a good 0-second recording: silence as long as the session, flagged.
            self.counters.recordings_without_media += 1
            log.warning("recording_without_media", recording_id=str(session.recording_id),
                        duration_s=round(report.duration, 3), streams=len(report.streams))
        await self._store_result(
            session.recording_id, session.call_id, session.started_at, datetime.now(UTC),
            call.channels, summary, report, recovered=False,
        )
        log.info("media_finished", recording_id=str(session.recording_id),
                 duration_s=round(report.duration, 3), bytes=summary.ciphertext_bytes)

    def _save_peaks(self, call: _ActiveCall, report: MediaReport) -> None:
        """The waveform beside the recording, encrypted (storage/peaks.py); a failure costs the
        waveform, never the recording."""
        if report.peaks is None:
            return
        try:
            write_peaks(call.path, call.session.recording_id, call.data_key,
                        report.peaks.to_bytes())
        except Exception as exc:  # noqa: BLE001 - counted and logged; the recording stands
            self.counters.peaks_not_written += 1
            log.error("peaks_not_written", recording_id=str(call.session.recording_id),
                      error=repr(exc))

    # ---------------------------------------------------------------- control (API, DTMF)

    def pause(self, recording_id: UUID, source: str) -> bool | None:
        call = self._calls.get(recording_id)
        return None if call is None else call.media.pause(self._loop.time(), source)

    def resume(self, recording_id: UUID, source: str) -> bool | None:
        call = self._calls.get(recording_id)
        return None if call is None else call.media.resume(self._loop.time(), source)

    def packet_totals(self) -> dict[str, int]:
        """Packet counters of every call this process recorded, live calls included."""
        totals = Counter(self._finished_packets)
        for call in self._calls.values():
            for stream in call.media.stream_reports():
                totals.update(_packet_counts(stream))
        return dict(totals)

    def active(self, recording_id: UUID) -> CallMedia | None:
        call = self._calls.get(recording_id)
        return call.media if call else None

    # ---------------------------------------------------------------- audit of pauses

    def _report_events(self, call: _ActiveCall) -> None:
        """Queue an audit event for every DTMF and hold pause or resume the core reported.
        API pauses are audited by the API, with the user who asked."""
        recording_id = call.session.recording_id
        for event in call.media.take_events():
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

    # ---------------------------------------------------------------- ticking

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            now = self._loop.time()
            for recording_id, call in list(self._calls.items()):
                try:
                    call.media.tick(now)
                except Exception as exc:  # noqa: BLE001 - one call's fault stays in that call
                    self.counters.tick_errors += 1
                    if _no_space(exc):
                        self.disk.exhausted()
                        self._cut(call)
                    elif not call.cut:
                        log.error("media_tick_failed", recording_id=str(recording_id),
                                  error=repr(exc))
                self._report_events(call)
                last = call.media.last_packet or call.started
                if (not call.timed_out and now - last > self._inactivity_timeout
                        and self.on_inactive is not None):
                    call.timed_out = True
                    log.warning("media_inactive", recording_id=str(recording_id),
                                seconds=round(now - last))
                    self.on_inactive(call.session)

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

    async def close(self) -> None:
        await self.disk.close()
        if self._ticker is not None:
            self._ticker.cancel()
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
        signed: dict[str, Any] = {
            "format": FORMAT,
            "recording_id": str(recording_id),
            "node_id": self._node_id,
            "call_id": call_id,
            "started_at": started_at.astimezone(UTC).isoformat(),
            "ended_at": ended_at.astimezone(UTC).isoformat(),
            "duration_ms": duration_ms or 0,
            "channels": channel_dicts,
            "plaintext_sha256": summary.plaintext_sha256.hex(),
            "ciphertext_sha256": summary.ciphertext_sha256.hex(),
            "plaintext_bytes": summary.plaintext_bytes,
            "ciphertext_bytes": summary.ciphertext_bytes,
            "recovered": recovered,
            "pauses": pauses,
            "dtmf_events": dtmf,
            "no_media": no_media,
            "streams": {str(k): v for k, v in sorted(stream_stats.items())},
        }
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
            try:
                key = await self._storage.recording_key(recording_id)
                if key is None:
                    raise LookupError("no data key")
                dek = self._keys.unwrap(key[1], recording_id)
                path = Path(row["file_path"])
                with open(path, "r+b") as f:
                    summary = seal_interrupted(f, recording_id=recording_id, data_key=dek)
                    f.flush()
                    os.fsync(f.fileno())
                with open(path, "rb") as f:
                    duration_ms = ogg_duration_ms(
                        decrypt_chunks(f, recording_id=recording_id, data_key=dek)
                    )
                now = datetime.now(UTC)
                await self._store_result(
                    recording_id, row["call_id"], row["started_at"], now, row["channels"],
                    summary, None, recovered=True, duration_ms=duration_ms,
                )
                await self._storage.mark_ended(recording_id, "interrupted",
                                               "server stopped while recording", now)
                count += 1
                log.warning("recording_recovered", recording_id=str(recording_id),
                            duration_ms=duration_ms)
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop start-up
                log.error("recording_recovery_failed", recording_id=str(recording_id),
                          error=repr(exc))
                await self._storage.mark_ended(recording_id, "failed",
                                               f"recovery failed: {type(exc).__name__}",
                                               datetime.now(UTC))
        return count

    def _path_for(self, session: RecordingSession) -> Path:
        day = session.started_at.astimezone(UTC)
        return self._dir / f"{day:%Y/%m/%d}" / f"{session.recording_id}.srec"


def _no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _create_private(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


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


def _packet_counts(stream: StreamReport) -> dict[str, int]:
    stats, counters = stream.stats, stream.counters
    return {
        "packets_received": stats.received,
        "packets_lost": stats.lost,
        "late": stats.late,
        "srtp_auth_failures": counters.srtp_auth_failures,
        "srtp_replays": counters.srtp_replays,
        "srtp_other_failures": counters.srtp_other_failures,
        "foreign_source": counters.foreign_source,
        "foreign_ssrc": counters.foreign_ssrc,
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
