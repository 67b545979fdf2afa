"""One call's media, wherever it runs: the sans-IO core (CallMedia) writing Ogg Opus straight into
the encrypting file writer, with the data key in memory; at the end, the waveform peaks the core
measured go beside the file, encrypted (storage/peaks.py).

A `CallRunner` is built from a `CallPlan` (plain, picklable data: what the main process decided
for the call) and knows no socket, no database and no event loop. The in-process engine feeds it
from asyncio datagram endpoints; a media worker process feeds it from sockets it drains itself
(siprec_server/workers). Either way the main process keeps the master key, the database and the
signing key; the runner hands back a `CallOutcome` to be signed and stored there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from uuid import UUID

from siprec_server.media.call import CallMedia, MediaReport, StreamReport, StreamSpec
from siprec_server.media.dtmf_control import DtmfControl
from siprec_server.media.events import MediaEvent
from siprec_server.media.source import Address, RtpSourcePolicy
from storage.keys import data_key_id
from storage.peaks import write_peaks
from storage.recording_file import FileSummary, RecordingFileWriter

__all__ = ["CallOutcome", "CallPlan", "CallRunner", "NoSpace", "no_space"]


@dataclass(frozen=True, slots=True)
class CallPlan:
    """Everything a runner needs for one call (picklable: it crosses to a worker process)."""

    recording_id: UUID
    path: Path
    """Where the encrypted file goes (created exclusively, 0600)."""
    specs: tuple[StreamSpec, ...]
    channels: int
    rate: int
    data_key: bytes = field(repr=False)
    started: float
    """time.monotonic() when the session's media began: time 0 of the recording."""
    dtmf_control: DtmfControl | None
    rtp_source: RtpSourcePolicy
    inactivity_timeout: float


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """How a call's media ended: a sealed file with its report, or why not."""

    report: MediaReport | None = None
    summary: FileSummary | None = None
    unsealed: str | None = None
    """Why the file could not be sealed ("no space", "worker lost", or an error's kind): every
    complete chunk stays readable and recovery seals it."""
    no_space: bool = False
    peaks_error: str | None = None
    """Why the waveform peaks could not be stored beside the file (the recording stands)."""


class NoSpace(Exception):
    """The recording storage is full (ENOSPC/EDQUOT) while writing this call."""


def no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _create_private(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


class CallRunner:
    __slots__ = ("plan", "media", "_writer", "_file", "timed_out", "cut", "closed")

    def __init__(self, plan: CallPlan) -> None:
        self.plan = plan
        self._file = _create_private(plan.path)
        try:
            self._writer = RecordingFileWriter(
                self._file, recording_id=plan.recording_id, data_key=plan.data_key,
                key_id=data_key_id(plan.data_key))
        except BaseException:
            self._file.close()
            raise
        self.media = CallMedia(
            plan.specs, plan.channels, self._writer.write, self._writer.flush,
            started=plan.started, rate=plan.rate, dtmf_control=plan.dtmf_control,
            source_policy=plan.rtp_source)
        self.timed_out = False
        """The inactivity timeout fired (reported once)."""
        self.cut = False
        """Ended for lack of disk space."""
        self.closed = False

    # ---------------------------------------------------------------- packets

    def receive_rtp(self, index: int, data: bytes, now: float, source: Address | None) -> None:
        self.media.receive_rtp(index, data, now, source)

    def receive_rtcp(self, index: int, data: bytes, now: float, source: Address | None) -> None:
        self.media.receive_rtcp(index, data, now, source)

    # ---------------------------------------------------------------- time

    def tick(self, now: float) -> list[MediaEvent]:
        """Encode what is due; the pause/resume transitions since the last tick. NoSpace when
        the disk is full (the call is to be cut)."""
        try:
            self.media.tick(now)
        except OSError as exc:
            if no_space(exc):
                raise NoSpace() from exc
            raise
        return self.media.take_events()

    def inactive_for(self, now: float) -> float | None:
        """Seconds without an accepted packet, once past the inactivity timeout (reported
        once); None otherwise."""
        if self.timed_out:
            return None
        last = self.media.last_packet or self.plan.started
        if now - last > self.plan.inactivity_timeout:
            self.timed_out = True
            return now - last
        return None

    # ---------------------------------------------------------------- control

    def update(self, specs: Sequence[StreamSpec], hold: bool | None, now: float) -> list[int]:
        """New streams (a re-INVITE, new metadata); hold on or off. Returns m-lines that could
        not be given a channel."""
        unrecorded = self.media.update_streams(specs)
        if hold is True:
            self.media.pause(now, "hold")
        elif hold is False:
            self.media.resume(now, "hold")
        return unrecorded

    def pause(self, now: float, source: str) -> bool:
        return self.media.pause(now, source)

    def resume(self, now: float, source: str) -> bool:
        return self.media.resume(now, source)

    def take_events(self) -> list[MediaEvent]:
        return self.media.take_events()

    def stream_reports(self) -> tuple[StreamReport, ...]:
        return self.media.stream_reports()

    # ---------------------------------------------------------------- the end

    def close(self, now: float) -> CallOutcome:
        """Drain the streams, write the final chunk, fsync. Never raises: an outcome that
        cannot be sealed says why (the file is then sealed by recovery)."""
        if self.closed:
            return CallOutcome(unsealed="closed twice")
        self.closed = True
        try:
            report = self.media.close(now)
            summary = self._writer.close()
            self._file.flush()
            os.fsync(self._file.fileno())
        except Exception as exc:  # noqa: BLE001 - the outcome says what failed
            full = no_space(exc) or self.cut
            return CallOutcome(unsealed="no space" if full else type(exc).__name__,
                               no_space=full)
        finally:
            with contextlib.suppress(OSError):
                self._file.close()
        peaks_error = None
        if report.peaks is not None:
            try:
                write_peaks(self.plan.path, self.plan.recording_id, self.plan.data_key,
                            report.peaks.to_bytes())
            except Exception as exc:  # noqa: BLE001 - costs the waveform, not the recording
                peaks_error = type(exc).__name__
            # Drawn from the file from now on; the report need not carry them further.
            report = dataclasses.replace(report, peaks=None)
        return CallOutcome(report=report, summary=summary, peaks_error=peaks_error)

    def abandon(self) -> None:
        """Stop without sealing (the process is going away): complete chunks stay readable."""
        self.closed = True
        with contextlib.suppress(Exception):
            self._writer.flush()
        with contextlib.suppress(OSError):
            self._file.close()
