"""Signal helpers for every audio test: make test signals, decode Ogg Opus in memory, measure.

The measuring helpers are what lets a test say "a 440 Hz tone on channel 0 from 0.0 to 2.0 s,
silence on channel 1". They are proven on synthetic signals in tests/unit/test_audio_helpers.py.

Conventions:
- Generated signals are int16 numpy arrays, 1-D per channel; `stereo`/`multichannel` stack
  them into (n, channels), the shape the encoder takes.
- Measuring helpers take int16 (full scale 32768) or float (full scale 1.0), 1-D.
- Levels are dB relative to full scale: a full-scale sine has `tone_level_db` 0 dB and
  `rms_db` -3.01 dB; digital silence has -inf.
- Nothing here touches the disk: decoding reads from bytes in memory.
"""

from __future__ import annotations

import io
import math
from typing import cast

import av
import numpy as np
import numpy.typing as npt

__all__ = [
    "active_segments",
    "decode_ogg_opus",
    "dominant_frequency",
    "multichannel",
    "noise",
    "rms_db",
    "silence",
    "speech_like",
    "stereo",
    "tone",
    "tone_level_db",
]

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.floating]


# --- making signals -----------------------------------------------------------------------


def _samples(seconds: float, rate: int) -> int:
    return round(seconds * rate)


def tone(freq_hz: float, seconds: float, rate: int, amplitude: float = 0.3) -> Int16Array:
    """A sine of `amplitude` (fraction of full scale) starting at phase 0."""
    t = np.arange(_samples(seconds, rate)) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def silence(seconds: float, rate: int) -> Int16Array:
    """Digital silence."""
    return np.zeros(_samples(seconds, rate), dtype=np.int16)


def noise(seconds: float, rate: int, rms: float = 0.03, seed: int = 0) -> Int16Array:
    """White Gaussian noise with the given RMS (fraction of full scale), deterministic."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, rms * 32767, _samples(seconds, rate))
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def speech_like(seconds: float, rate: int, seed: int = 0) -> Int16Array:
    """Deterministic stand-in for talk: voiced bursts, fricative-like noise and pauses.

    Voiced parts are harmonic series on a wandering pitch (90-250 Hz) shaped by three formants;
    noise bursts stand in for fricatives; about a quarter of the time is silence. It exercises
    a speech codec's voiced/unvoiced/silence paths, so encoder CPU figures are realistic.
    """
    rng = np.random.default_rng(seed)
    n = _samples(seconds, rate)
    out = np.zeros(n)
    pos = 0
    top = min(rate / 2, 3800.0)
    while pos < n:
        seg = min(int(rng.uniform(0.08, 0.4) * rate), n - pos)
        kind = rng.choice(3, p=[0.55, 0.2, 0.25])
        envelope = np.sin(np.pi * np.arange(seg) / seg) ** 0.5
        if kind == 0:
            t = np.arange(seg) / rate
            f0 = rng.uniform(90, 250)
            pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(2, 6) * t))
            phase = 2 * np.pi * np.cumsum(pitch) / rate
            formants = [
                (rng.uniform(300, 800), 90.0, 1.0),
                (rng.uniform(900, 2300), 120.0, 0.5),
                (rng.uniform(2400, 3400), 180.0, 0.25),
            ]
            voiced = np.zeros(seg)
            for h in range(1, int(top / f0)):
                gain = 0.01 + sum(g / (1 + ((h * f0 - f) / bw) ** 2) for f, bw, g in formants)
                voiced += gain * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
            out[pos : pos + seg] = 0.25 * voiced / (np.abs(voiced).max() + 1e-9) * envelope
        elif kind == 1:
            out[pos : pos + seg] = rng.normal(0, 0.08, seg) * envelope
        pos += seg
    return np.clip(np.round(out * 32767), -32768, 32767).astype(np.int16)


def multichannel(*signals: Int16Array) -> Int16Array:
    """Stack equal-length 1-D signals into (n, channels); channel i is signals[i]."""
    if not signals or any(s.ndim != 1 for s in signals):
        raise ValueError("give one or more 1-D signals")
    if len({len(s) for s in signals}) != 1:
        raise ValueError(f"channel lengths differ: {[len(s) for s in signals]}")
    return np.ascontiguousarray(np.stack(signals, axis=1))


def stereo(left: Int16Array, right: Int16Array) -> Int16Array:
    """(n, 2) with `left` on channel 0 and `right` on channel 1."""
    return multichannel(left, right)


# --- decoding -----------------------------------------------------------------------------


def decode_ogg_opus(
    data: bytes, decoder: str | None = None
) -> tuple[npt.NDArray[np.float32], int]:
    """Decode an Ogg Opus byte string (in memory) to float32 (n, channels) in [-1, 1] and rate.

    PyAV's Ogg demuxer turns pre-skip and the final granule position into per-packet trimming,
    as players do. `decoder` picks ffmpeg's own Opus decoder ("opus": what ffmpeg-based players
    use) or libopus ("libopus", the reference); by default libopus for one or two channels and
    ffmpeg's own for more. Known differences, all ffmpeg's: its own decoder can end up to 24
    samples (0.5 ms) short on SILK streams, and on uncoupled two-stream SILK recordings with
    packet-loss gaps it has been seen to output bursts several times louder than the signal
    (libopus decodes the same bytes cleanly); its libopus wrapper reorders 3 to 8 channels as if
    they were surround even for mapping family 255, so channel-order checks there want "opus".
    The rate is Opus's 48 kHz.
    """
    chunks: list[npt.NDArray[np.float32]] = []
    with av.open(io.BytesIO(data), "r", format="ogg") as container:
        stream = container.streams.audio[0]
        if decoder is None:
            decoder = "libopus" if stream.codec_context.layout.nb_channels <= 2 else "opus"
        codec = cast(av.AudioCodecContext, av.CodecContext.create(decoder, "r"))
        codec.extradata = stream.codec_context.extradata
        codec.sample_rate = 48_000
        codec.layout = stream.codec_context.layout
        channels = codec.layout.nb_channels
        packets = [p for p in container.demux(stream) if p.size]
        for packet in [*packets, None]:
            for frame in codec.decode(packet):
                chunks.append(_frame_to_float(frame, channels))
    if not chunks:
        return np.zeros((0, channels), dtype=np.float32), 48_000
    return np.concatenate(chunks), 48_000


def _frame_to_float(frame: av.AudioFrame, channels: int) -> npt.NDArray[np.float32]:
    array = frame.to_ndarray()
    array = array.T if frame.format.is_planar else array.reshape(-1, channels)
    scale = 1 / 32768 if np.issubdtype(array.dtype, np.integer) else 1.0
    return (array * scale).astype(np.float32)


# --- measuring ----------------------------------------------------------------------------


def _as_float(signal: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
    x = np.asarray(signal)
    if x.ndim != 1:
        raise ValueError(f"measure one channel (1-D), got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float64) / 32768
    return x.astype(np.float64)


def _db(amplitude: float) -> float:
    return 20 * math.log10(amplitude) if amplitude > 0 else -math.inf


def rms_db(signal: npt.NDArray[np.generic]) -> float:
    """RMS level in dBFS (full-scale square wave 0 dB, full-scale sine -3.01 dB)."""
    x = _as_float(signal)
    if len(x) == 0:
        return -math.inf
    return _db(float(np.sqrt(np.mean(x * x))))


def _tone_amplitudes(frames: npt.NDArray[np.float64], rate: int, freq_hz: float) -> FloatArray:
    """Amplitude of the `freq_hz` sinusoid in each row (Hann-windowed single-bin DFT)."""
    n = frames.shape[-1]
    window = np.hanning(n)
    probe = window * np.exp(-2j * np.pi * freq_hz * np.arange(n) / rate)
    # 2|X|/sum(w) turns the windowed DFT bin into the sinusoid's peak amplitude.
    return np.asarray(2 * np.abs(frames @ probe) / window.sum())


def tone_level_db(signal: npt.NDArray[np.generic], rate: int, freq_hz: float) -> float:
    """Level in dBFS of a sine at `freq_hz` over the whole signal (full-scale sine = 0 dB).

    A Hann-windowed DFT evaluated exactly at `freq_hz`, so other frequencies leak in only
    through the window's side lobes (a tone 10 bins away, i.e. 10*rate/len(signal) Hz, is
    attenuated by more than 60 dB); the tone must be within about rate/len(signal) Hz of
    `freq_hz` to be measured at full level. A tone present for part of the signal reads lower
    (weighted by the window), so measure over the interval of interest.
    """
    x = _as_float(signal)
    if len(x) < 2:
        return -math.inf
    return _db(float(_tone_amplitudes(x[np.newaxis, :], rate, freq_hz)[0]))


def dominant_frequency(signal: npt.NDArray[np.generic], rate: int) -> float:
    """Frequency in Hz of the strongest spectral peak (DC excluded), to a fraction of a bin."""
    x = _as_float(signal)
    if len(x) < 8:
        raise ValueError("signal too short to find a frequency")
    x = x - x.mean()
    size = 1 << max(14, (len(x) - 1).bit_length())  # zero-pad for a finer grid
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), size))
    spectrum[0] = 0.0
    k = int(np.argmax(spectrum))
    if spectrum[k] == 0.0:
        raise ValueError("signal is silent")
    offset = 0.0
    if 0 < k < len(spectrum) - 1:
        # Parabolic interpolation of the log magnitude around the peak bin.
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-300)
        denominator = a - 2 * b + c
        if denominator != 0:
            offset = 0.5 * (a - c) / denominator
    return float((k + offset) * rate / size)


def active_segments(
    signal: npt.NDArray[np.generic],
    rate: int,
    freq_hz: float,
    window_s: float = 0.02,
    threshold_db: float = -40.0,
    min_duration_s: float | None = None,
) -> list[tuple[float, float]]:
    """Intervals (start_s, end_s) where a sine at `freq_hz` is present.

    The signal is cut into Hann windows of `window_s` every quarter window; a window is active
    when the tone's level in it is at least `threshold_db` dBFS. Runs of active windows are
    segments; each edge is then placed where the level crosses half (-6 dB) of the segment's
    median level, interpolated between windows, which is where a windowed measurement of a
    switched tone crosses it. Edges are typically within a few ms.

    Segments shorter than `min_duration_s` (default 1.5 windows) are dropped: the onset of any
    other sound, or a click, splatters energy over all frequencies for about one window, and
    must not read as the tone. So a tone shorter than that is not reported either. Two tones
    closer than about 2/window_s Hz are not told apart.
    """
    shortest = 1.5 * window_s if min_duration_s is None else min_duration_s
    x = _as_float(signal)
    size = max(8, round(window_s * rate))
    hop = max(1, size // 4)
    if len(x) < size:
        return []
    frames = np.lib.stride_tricks.sliding_window_view(x, size)[::hop]
    amplitudes = _tone_amplitudes(frames, rate, freq_hz)
    centres = (np.arange(len(frames)) * hop + size / 2) / rate
    threshold = 10 ** (threshold_db / 20)
    active = amplitudes >= threshold
    duration = len(x) / rate

    segments: list[tuple[float, float]] = []
    k = 0
    while k < len(active):
        if not active[k]:
            k += 1
            continue
        first = k
        while k < len(active) and active[k]:
            k += 1
        last = k - 1
        half = float(np.median(amplitudes[first : last + 1])) / 2
        start = _crossing(amplitudes, centres, first, -1, half, edge=0.0)
        end = _crossing(amplitudes, centres, last, +1, half, edge=duration)
        if end - start >= shortest:
            segments.append((start, end))
    return segments


def _crossing(
    amplitudes: FloatArray,
    centres: FloatArray,
    index: int,
    direction: int,
    half: float,
    edge: float,
) -> float:
    """Time where the amplitude crosses `half`, walking outwards from inside a segment."""
    # Move inwards first if the run's outer window is still below half level.
    inner = index
    while amplitudes[inner] < half and 0 <= inner - direction < len(amplitudes):
        inner -= direction
    outer = inner + direction
    if not 0 <= outer < len(amplitudes):
        return edge  # the tone runs to the signal's start or end
    a_in, a_out = float(amplitudes[inner]), float(amplitudes[outer])
    if a_in <= a_out:
        return float(centres[inner])
    fraction = (a_in - half) / (a_in - a_out)
    return float(centres[inner] + direction * fraction * (centres[1] - centres[0]))
