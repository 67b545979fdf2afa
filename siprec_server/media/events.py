"""What a call's media reports to its caller (drained with `CallMedia.take_events()`): the
transitions the caller may have to record elsewhere, such as in the audit trail."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RecordingPaused:
    """The recording went silent for a reason it was not silent for before."""

    source: str
    """Who paused it: "api", "dtmf" or "hold"."""
    at: float
    """Recording time (seconds from the recording's time 0) from which it is silent."""
    stream: int | None = None
    """m-line index whose key sequence paused it (source "dtmf"); never the keys themselves."""


@dataclass(frozen=True, slots=True)
class RecordingResumed:
    """A reason for silence ended (the recording may still be paused for another one)."""

    source: str
    """Who resumed it: "api", "dtmf" or "hold"."""
    at: float
    """Recording time (seconds from the recording's time 0) from which it records again."""
    stream: int | None = None
    """m-line index whose key sequence resumed it (source "dtmf")."""


MediaEvent = RecordingPaused | RecordingResumed
