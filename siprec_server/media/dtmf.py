"""DTMF as RTP telephone events (RFC 4733): payload parsing and per-source event tracking.

One key press is many packets sharing the RTP timestamp of the event's start, each carrying the
duration so far; the last one has the E bit and is sent three times. `TelephoneEventTracker`
folds those packets into one `EventStarted` and one `EventEnded` per key press, so the stream
timeline can blank the audio of the press and report it once. Digits live only in memory: they
are control input (pause/resume), never stored by the media path.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from siprec_server.media.errors import MediaError

__all__ = [
    "DIGITS",
    "DtmfEvent",
    "DtmfFormatError",
    "EventEnded",
    "EventStarted",
    "TelephoneEvent",
    "TelephoneEventTracker",
    "digit_for",
    "parse_telephone_event",
]

DIGITS = "0123456789*#ABCD"
"""Event codes 0-15 (RFC 4733 3.2, table 7)."""
FLASH = 16
"""Event code of hook flash; reported as the digit "flash"."""


class DtmfFormatError(MediaError, ValueError):
    """A telephone-event payload is shorter than its 4-byte event block."""


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """One telephone-event payload (RFC 4733 2.3)."""

    event: int
    """Event code (0-15 DTMF digits, 16 flash, others are tones this recorder ignores)."""
    end: bool
    """E bit: this packet reports the final duration."""
    volume: int
    """Power level in -dBm0 (0-63; larger is quieter)."""
    duration: int
    """Duration so far in RTP timestamp units, counted from the packet's timestamp."""


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """A finished key press on one stream, on the recording's timeline."""

    digit: str
    """'0'-'9', '*', '#', 'A'-'D' or 'flash'."""
    start: float
    """Start on the recording timeline, seconds."""
    duration: float
    """Length of the press, seconds."""
    volume: int
    """Power level in -dBm0 from the last packet of the event."""


@dataclass(frozen=True, slots=True)
class EventStarted:
    """The first packet of a new event was seen."""

    timestamp: int
    """RTP timestamp of the event start (as sent, 32 bits)."""
    event: int
    """Event code."""
    duration: int
    """Duration reported by the packet that opened the event, RTP units."""


@dataclass(frozen=True, slots=True)
class EventEnded:
    """An event is over: its end packet came, or a newer event replaced it, or it was closed."""

    timestamp: int
    """RTP timestamp of the event start."""
    event: int
    """Event code."""
    duration: int
    """Final (or last known) duration in RTP units."""
    volume: int
    """Power level of the last packet seen."""
    confirmed: bool
    """True when an end packet (E bit) gave the duration; False when it had to be inferred."""


def parse_telephone_event(payload: bytes | bytearray | memoryview) -> TelephoneEvent:
    """Parse the first event block of a telephone-event payload (RFC 4733 2.3)."""
    if len(payload) < 4:
        raise DtmfFormatError(f"telephone-event payload of {len(payload)} bytes, need 4")
    flags = payload[1]
    return TelephoneEvent(
        event=payload[0],
        end=bool(flags & 0x80),
        volume=flags & 0x3F,
        duration=(payload[2] << 8) | payload[3],
    )


def digit_for(event: int) -> str | None:
    """The digit an event code stands for, "flash" for 16, None for non-DTMF events."""
    if 0 <= event < 16:
        return DIGITS[event]
    if event == FLASH:
        return "flash"
    return None


def _ts_before(a: int, b: int) -> bool:
    """Whether 32-bit RTP timestamp a lies before b (serial number arithmetic)."""
    return a != b and ((b - a) & 0xFFFFFFFF) < 0x80000000


class TelephoneEventTracker:
    """Folds the packets of one source's telephone events into start/end transitions.

    Events are identified by their RTP timestamp (RFC 4733 2.5.1.2). An end packet closes the
    event once; its retransmissions, and stray updates of an event already closed or older than
    the current one, are ignored.
    """

    __slots__ = ("_open", "_finished")

    def __init__(self) -> None:
        # Open event: [timestamp, event code, duration, volume]
        self._open: list[int] | None = None
        self._finished: deque[int] = deque(maxlen=8)

    @property
    def open_timestamp(self) -> int | None:
        """RTP timestamp of the event in progress, None when none is."""
        return None if self._open is None else self._open[0]

    def observe(
        self, timestamp: int, event: TelephoneEvent
    ) -> tuple[EventStarted | EventEnded, ...]:
        """Take one telephone-event packet; returns the transitions it causes (0 to 3)."""
        if timestamp in self._finished:
            return ()
        current = self._open
        if current is not None and current[0] == timestamp:
            if event.duration > current[2]:
                current[2] = event.duration
            current[3] = event.volume
            if event.end:
                return (self._close(confirmed=True),)
            return ()
        if current is not None and _ts_before(timestamp, current[0]):
            # An update of an event older than the one in progress: its end came too late.
            return ()
        if self._finished and _ts_before(timestamp, self._finished[-1]):
            return ()
        transitions: list[EventStarted | EventEnded] = []
        if current is not None:
            # A new event started while the previous one never sent its end packet.
            transitions.append(self._close(confirmed=False))
        self._open = [timestamp, event.event, event.duration, event.volume]
        transitions.append(EventStarted(timestamp, event.event, event.duration))
        if event.end:
            transitions.append(self._close(confirmed=True))
        return tuple(transitions)

    def close(self) -> EventEnded | None:
        """End the event in progress with its last known duration (stream ended or timed out)."""
        if self._open is None:
            return None
        return self._close(confirmed=False)

    def _close(self, *, confirmed: bool) -> EventEnded:
        assert self._open is not None
        timestamp, code, duration, volume = self._open
        self._open = None
        self._finished.append(timestamp)
        return EventEnded(timestamp, code, duration, volume, confirmed)
