"""Waveform data of a recording, computed while it is encoded: the loudest sample of each channel
in every 50 ms, and when each key press happened (never which key), so that a browser can draw
one lane per party without decoding the audio.

Sans-IO: `PeakMeter` takes the same int16 blocks the Opus encoder gets (pauses already
silenced) and `Peaks.to_bytes` gives the plaintext that the storage layer encrypts beside the
recording (storage/peaks.py). A 1-hour two-party call is 144 KB of peaks.

Binary form, version 1 (integers big-endian)::

    4  magic b"SRPK"          1  version = 1          1  channels C (1..254)
    2  interval in ms         4  buckets N            4  key presses K
    C x N bytes: channel 0's N levels, then channel 1's ...; a level is
                 ceil(max |sample| * 255 / 32768), so any sound at all is at least 1
    K x 5 bytes: u32 start in ms, u8 channel
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from siprec_server.media.errors import MediaError

__all__ = ["PEAK_INTERVAL_MS", "KeyPress", "PeakMeter", "Peaks", "PeaksFormatError"]

PEAK_INTERVAL_MS: Final = 50
MAGIC: Final = b"SRPK"
VERSION: Final = 1
MAX_KEY_PRESSES: Final = 100_000
"""Key presses kept per recording; a stream of fake presses must not grow memory without end."""
_HEAD: Final = struct.Struct(">4sBBHII")
_PRESS: Final = struct.Struct(">IB")


class PeaksFormatError(MediaError, ValueError):
    """Bytes that are not peak data of a version this code reads."""


@dataclass(frozen=True, slots=True)
class KeyPress:
    """A DTMF key press on the recording's timeline; the digit is deliberately absent."""

    start_ms: int
    channel: int


@dataclass(frozen=True, slots=True)
class Peaks:
    interval_ms: int
    levels: tuple[bytes, ...]
    """Per channel, one level (0-255) per interval from time 0."""
    key_presses: tuple[KeyPress, ...] = ()

    def to_bytes(self) -> bytes:
        buckets = len(self.levels[0]) if self.levels else 0
        if any(len(lane) != buckets for lane in self.levels):
            raise PeaksFormatError("every channel needs the same number of levels")
        head = _HEAD.pack(MAGIC, VERSION, len(self.levels), self.interval_ms, buckets,
                          len(self.key_presses))
        presses = b"".join(_PRESS.pack(p.start_ms, p.channel) for p in self.key_presses)
        return head + b"".join(self.levels) + presses

    @classmethod
    def from_bytes(cls, data: bytes) -> Peaks:
        if len(data) < _HEAD.size:
            raise PeaksFormatError("too short for peak data")
        magic, version, channels, interval, buckets, presses = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise PeaksFormatError("not peak data")
        if version != VERSION:
            raise PeaksFormatError(f"peak data version {version} is not supported")
        if interval < 1 or channels < 1:
            raise PeaksFormatError("impossible interval or channel count")
        if len(data) != _HEAD.size + channels * buckets + presses * _PRESS.size:
            raise PeaksFormatError("peak data has the wrong length")
        offset = _HEAD.size
        levels = []
        for _ in range(channels):
            levels.append(data[offset : offset + buckets])
            offset += buckets
        key_presses = []
        for _ in range(presses):
            start, channel = _PRESS.unpack_from(data, offset)
            offset += _PRESS.size
            key_presses.append(KeyPress(start, channel))
        return cls(interval, tuple(levels), tuple(key_presses))


class PeakMeter:
    """Accumulates the level of each channel per interval as blocks of audio go by."""

    def __init__(self, channels: int, rate: int, interval_ms: int = PEAK_INTERVAL_MS) -> None:
        if channels < 1 or rate < 1 or not 1 <= interval_ms <= 60_000:
            raise PeaksFormatError("channels, rate and interval must be positive")
        self.channels = channels
        self.interval_ms = interval_ms
        self._bucket = max(1, rate * interval_ms // 1000)
        self._carry = np.zeros((0, channels), dtype=np.int16)
        self._lanes = [bytearray() for _ in range(channels)]
        self._presses: list[KeyPress] = []

    def feed(self, pcm: npt.NDArray[np.int16]) -> None:
        """The next block, int16 shaped (n, channels), exactly as it is encoded."""
        if pcm.ndim != 2 or pcm.shape[1] != self.channels:
            raise PeaksFormatError(f"pcm must be shaped (n, {self.channels})")
        block = np.concatenate((self._carry, pcm)) if len(self._carry) else pcm
        whole = len(block) // self._bucket * self._bucket
        if whole:
            self._append(block[:whole])
        self._carry = np.array(block[whole:], dtype=np.int16, copy=True)

    def key_press(self, start_s: float, channel: int) -> None:
        if len(self._presses) < MAX_KEY_PRESSES and 0 <= channel < self.channels:
            self._presses.append(KeyPress(max(0, round(start_s * 1000)), channel))

    def finish(self) -> Peaks:
        """Everything fed so far, the last partial interval included."""
        lanes = [bytearray(lane) for lane in self._lanes]
        if len(self._carry):
            for channel, level in enumerate(_levels(self._carry[np.newaxis, :, :])[0]):
                lanes[channel].append(int(level))
        return Peaks(self.interval_ms, tuple(bytes(lane) for lane in lanes),
                     tuple(sorted(self._presses, key=lambda p: (p.start_ms, p.channel))))

    def _append(self, block: npt.NDArray[np.int16]) -> None:
        shaped = block.reshape(-1, self._bucket, self.channels)
        levels = _levels(shaped)  # (buckets, channels)
        for channel in range(self.channels):
            self._lanes[channel] += levels[:, channel].tobytes()


def _levels(shaped: npt.NDArray[np.int16]) -> npt.NDArray[np.uint8]:
    """(buckets, samples, channels) int16 -> (buckets, channels) levels 0-255."""
    # int32 first: abs(-32768) does not fit an int16.
    peak = np.abs(shaped.astype(np.int32)).max(axis=1)
    levels: npt.NDArray[np.uint8] = ((peak * 255 + 32767) // 32768).astype(np.uint8)
    return levels
