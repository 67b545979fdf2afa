"""What a run sent, as frozen data: per SIP request, per stream, per call, and how well the
pacer kept time. `RunReport.to_dict` is what the load generator writes as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class SipExchange:
    """One request we sent and how it was answered. Times are seconds since the INVITE."""

    method: str
    cseq: int
    sent_after: float
    status: int | None
    """Final status; None when nothing final came (timeout, connection lost)."""
    reason: str
    provisional_after: float | None
    final_after: float | None
    transmissions: int
    """1 + retransmissions over UDP."""


@dataclass(frozen=True, slots=True)
class DtmfSent:
    """A key press whose first telephone-event packet went out."""

    digit: str
    stream: int
    planned_at: float
    """Seconds after the call's first media tick, as planned."""
    sent_at: float
    """Wall clock (epoch seconds) of the first event packet."""
    rtp_timestamp: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class StreamReport:
    """What one stream sent. Counts are of RTP packets (audio + events) unless named datagrams."""

    label: str
    codec: str
    payload_type: int | None
    telephone_event_pt: int | None
    srtp_suite: str | None
    answered: bool
    """False when the recorder declined the m-line (port 0) or the call was not answered."""
    local_port: int
    remote: tuple[str, int] | None
    answer_address: str | None
    ssrc: int
    first_seq: int
    first_timestamp: int
    audio_packets: int
    event_packets: int
    dropped: int
    """Packets the impairment dropped (never sent)."""
    duplicated: int
    """Extra copies sent by the impairment."""
    reordered: int
    datagrams_sent: int
    """Datagrams handed to the kernel: packets - dropped + duplicated, minus send errors."""
    send_errors: int
    first_packet_at: float | None
    """Wall clock (epoch seconds) of the first datagram."""
    first_packet_after: float | None
    """Seconds from the INVITE to the first datagram."""

    @property
    def packets(self) -> int:
        return self.audio_packets + self.event_packets


@dataclass(frozen=True, slots=True)
class CallReport:
    index: int
    call_id: str
    session_id: str
    """The RFC 7865 recording session id of the metadata (base64 of a UUID)."""
    transport: str
    ok: bool
    """200 to the INVITE, media sent as planned, 200 to the BYE."""
    error: str | None
    invite: SipExchange | None
    reinvites: tuple[SipExchange, ...]
    bye: SipExchange | None
    ended_by_server: bool
    streams: tuple[StreamReport, ...]
    dtmf: tuple[DtmfSent, ...]
    started_at: float
    """Wall clock (epoch seconds) of the INVITE."""
    media_started_at: float | None
    """Wall clock of the call's first media tick (DTMF and hold times count from here)."""
    media_seconds: float
    """Seconds of media clock the streams covered (the plan's duration when all went well)."""
    max_sender_lateness_ms: float | None
    """Worst lateness of the pacer's ticks while this call was sending."""


@dataclass(frozen=True, slots=True)
class SenderStats:
    """How well the pacer kept to its 20 ms grid. Lateness is measured per tick with streams:
    `first` when the tick started sending, `last` when its last packet had been sent."""

    ticks: int
    """Steps of the pacer that had streams to serve."""
    max_streams: int
    phases: int
    """Steps per packet time: calls are spread over this many phases."""
    late_first_p50_ms: float
    late_first_p99_ms: float
    late_last_p50_ms: float
    late_last_p99_ms: float
    late_last_max_ms: float
    overruns: int
    """Ticks whose last packet left more than one packet time late: the sender fell behind."""
    busy_seconds: float
    """Wall time spent building and sending packets."""
    active_seconds: float = 0.0
    """Wall time covered by the steps that had streams."""

    @property
    def fell_behind(self) -> bool:
        return self.overruns > 0 or self.late_last_p99_ms > 10.0

    @property
    def duty(self) -> float:
        """Share of the active time the send loop was busy. Lateness with a low duty means
        the process was not scheduled in time (the CPU is shared), not that sending is slow."""
        return self.busy_seconds / self.active_seconds if self.active_seconds else 0.0


@dataclass(frozen=True, slots=True)
class RunReport:
    calls: tuple[CallReport, ...]
    sender: SenderStats
    elapsed: float
    """Seconds from the first call's start to the end of the last."""
    cpu_user: float
    """CPU seconds of this process during the run (all threads), encoding excluded."""
    cpu_system: float
    prepare_cpu: float = 0.0
    """CPU seconds spent encoding payloads before the run."""

    @property
    def ok(self) -> int:
        return sum(1 for c in self.calls if c.ok)

    @property
    def failed(self) -> int:
        return len(self.calls) - self.ok

    @property
    def call_seconds(self) -> float:
        return sum(c.media_seconds for c in self.calls)

    @property
    def datagrams_sent(self) -> int:
        return sum(s.datagrams_sent for c in self.calls for s in c.streams)

    @property
    def cpu_ms_per_call_second(self) -> float | None:
        seconds = self.call_seconds
        return 1000 * (self.cpu_user + self.cpu_system) / seconds if seconds else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = {
            "ok": self.ok,
            "failed": self.failed,
            "call_seconds": self.call_seconds,
            "datagrams_sent": self.datagrams_sent,
            "cpu_ms_per_call_second": self.cpu_ms_per_call_second,
            "sender_fell_behind": self.sender.fell_behind,
        }
        return data
