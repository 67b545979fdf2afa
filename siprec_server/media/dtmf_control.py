"""Pause and resume a recording by key sequence (e.g. `*1` pause, `*2` resume), as payment
flows do when an agent hands the caller to card entry. Sans-IO: key presses in, actions out.

The digits are held in memory just long enough to match a sequence; they are never stored or
logged, so card numbers typed on the keypad leave no trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from siprec_server.media.dtmf import DtmfEvent

Action = Literal["pause", "resume"]


@dataclass(frozen=True, slots=True)
class DtmfControl:
    pause_sequence: str = "*1"
    resume_sequence: str = "*2"
    timeout: float = 3.0
    """Seconds allowed between two key presses of one sequence."""


class DtmfSequenceDetector:
    def __init__(self, control: DtmfControl) -> None:
        self._control = control
        self._keys = ""
        self._last_end = float("-inf")
        self._longest = max(len(control.pause_sequence), len(control.resume_sequence), 1)

    def feed(self, event: DtmfEvent) -> tuple[Action, float] | None:
        """The action a finished key press completes, with the time it takes effect (the end of
        the sequence's last key press on the recording timeline)."""
        if event.start - self._last_end > self._control.timeout:
            self._keys = ""
        self._last_end = event.start + event.duration
        self._keys = (self._keys + event.digit)[-self._longest :]
        for action, sequence in (("pause", self._control.pause_sequence),
                                 ("resume", self._control.resume_sequence)):
            if sequence and self._keys.endswith(sequence):
                self._keys = ""
                return action, self._last_end  # type: ignore[return-value]
        return None
