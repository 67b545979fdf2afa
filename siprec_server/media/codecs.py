"""Audio decoders for the recorded RTP payload formats, G.711 encoders, and integer-ratio
resampling.

Decoding is done in batches at pull time, not per packet: `AudioDecoder.decode` takes the
payloads of many packets and returns one int16 mono array per payload, so the caller can place
each one on its timeline and leave silence for the packets that never came.

- PCMU/PCMA: G.711 expansion through a 256-entry lookup table over the joined payloads. The
  encoders (`encode_ulaw`, `encode_alaw`) sit beside it; the recorder never encodes G.711, but
  the test client and the tests do, and the round trip is pinned against these tables.
- G.722: FFmpeg's decoder via PyAV. Audio is 16 kHz although the RTP clock is 8 kHz
  (RFC 3551 4.5.2), so one timestamp unit is two samples.
- G.729 (and Annex A/B on the wire): FFmpeg's decoder for the 10-byte frames; a 2-byte Annex B
  SID frame stands for 10 ms of silence (no comfort noise is synthesised in a recording).
- Opus: libopus via PyAV, opened mono so libopus itself folds stereo down. FFmpeg's libopus
  wrapper always opens the decoder at 48 kHz (libopusdec.c sets the rate before opening), so
  Opus audio comes out at 48 kHz and the stream timeline resamples it to the recording rate.
- CN (RFC 3389): no audio; the gap it covers is left silent by the timeline.

A payload that cannot be decoded yields silence of the length it most likely covered and counts
in `AudioDecoder.corrupt`; decoding never raises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import av
import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from siprec_server.media.errors import MediaError

__all__ = [
    "AudioDecoder",
    "CodecError",
    "RtpCodec",
    "Resampler",
    "decoder_for",
    "encode_alaw",
    "encode_ulaw",
    "opus_packet_samples",
    "resample",
]

Pcm = npt.NDArray[np.int16]
Payload = bytes | bytearray | memoryview
"""An RTP payload as stored by the receive path: usually a slice of the datagram."""

_EMPTY: Final[Pcm] = np.zeros(0, dtype=np.int16)


class CodecError(MediaError, ValueError):
    """A codec or rate conversion this module does not support was asked for."""


@dataclass(frozen=True, slots=True)
class RtpCodec:
    """A payload format as negotiated in SDP (a=rtpmap / a=fmtp)."""

    name: str
    """Encoding name, case-insensitive: PCMU, PCMA, G722, G729, opus, CN, telephone-event."""
    clock_rate: int
    """RTP clock rate from the rtpmap (8000 for G.722 even though its audio is 16 kHz)."""
    channels: int = 1
    """Channel count from the rtpmap (2 for opus/48000/2)."""
    fmtp: str | None = None
    """The a=fmtp parameters, if any."""


# --- G.711 -------------------------------------------------------------------------------------


def _ulaw_table() -> Pcm:
    # ITU-T G.711 mu-law expansion: bits are inverted on the wire; the magnitude is
    # ((mantissa << 3) + bias) << exponent, minus the bias of 0x84.
    code = np.arange(256, dtype=np.int32) ^ 0xFF
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> Pcm:
    # ITU-T G.711 A-law expansion: even bits are inverted on the wire (XOR 0x55); sign bit set
    # means positive.
    code = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


ULAW_TO_LINEAR: Final[Pcm] = _ulaw_table()
ALAW_TO_LINEAR: Final[Pcm] = _alaw_table()

# G.711 compression by table-free arithmetic. floor(log2(i)) for i in 1..255 gives the segment.
_SEGMENT: Final = np.array([0] + [int(math.log2(i)) for i in range(1, 256)], dtype=np.int32)


def encode_ulaw(pcm: npt.NDArray[Any]) -> bytes:
    """ITU-T G.711 mu-law: bias 0x84, clip at 32635, bits inverted on the wire."""
    x = np.asarray(pcm).astype(np.int32)
    negative = (x < 0).astype(np.int32)
    magnitude = np.minimum(np.abs(x), 32635) + 0x84
    exponent = _SEGMENT[magnitude >> 7]
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    code = (negative << 7) | (exponent << 4) | mantissa
    return bytes((code ^ 0xFF).astype(np.uint8))


def encode_alaw(pcm: npt.NDArray[Any]) -> bytes:
    """ITU-T G.711 A-law: sign bit set for positive values, even bits inverted (XOR 0x55)."""
    x = np.asarray(pcm).astype(np.int32)
    positive = (x >= 0).astype(np.int32)
    magnitude = np.minimum(np.abs(x), 32767)
    high = magnitude >> 8
    exponent = np.where(high > 0, _SEGMENT[high] + 1, 0)
    mantissa = np.where(exponent > 0, magnitude >> (exponent + 3), magnitude >> 4) & 0x0F
    code = (positive << 7) | (exponent << 4) | mantissa
    return bytes((code ^ 0x55).astype(np.uint8))


def _split(pcm: Pcm, lengths: list[int]) -> list[Pcm]:
    """Consecutive views of `lengths` samples (np.split costs more for a handful of parts)."""
    out = []
    at = 0
    for n in lengths:
        out.append(pcm[at : at + n])
        at += n
    return out


class AudioDecoder:
    """Decodes payloads of one payload type to int16 mono PCM at `audio_rate`."""

    name: str = ""
    audio_rate: int = 8000
    """Sample rate of the decoded PCM."""
    clock_rate: int = 8000
    """RTP timestamp rate of the payload format."""
    samples_per_payload_hint: int = 160
    """Samples (at audio_rate) a typical payload decodes to; follows the last good payload."""

    def __init__(self) -> None:
        self.corrupt = 0
        """Payloads that could not be decoded and were replaced by silence."""

    def decode(self, payloads: Sequence[Payload]) -> list[Pcm]:
        """Decode payloads in order (decoder state runs through them); one array each."""
        raise NotImplementedError

    def expected_samples(self, payload_len: int) -> int:
        """Samples a payload of this size most likely covers, without decoding it."""
        return self.samples_per_payload_hint


class G711Decoder(AudioDecoder):
    """PCMU / PCMA: one byte per sample, stateless, decoded by table lookup."""

    def __init__(self, name: str, table: Pcm) -> None:
        super().__init__()
        self.name = name
        self._table = table

    def expected_samples(self, payload_len: int) -> int:
        return payload_len

    def decode(self, payloads: Sequence[Payload]) -> list[Pcm]:
        if not payloads:
            return []
        if len(payloads) == 1:
            return [self._table[np.frombuffer(payloads[0], dtype=np.uint8)]]
        pcm = self._table[np.frombuffer(b"".join(payloads), dtype=np.uint8)]
        if len(payloads[-1]):
            self.samples_per_payload_hint = len(payloads[-1])
        return _split(pcm, [len(p) for p in payloads])


class SilenceDecoder(AudioDecoder):
    """CN (RFC 3389): comfort-noise parameters carry no audio; the gap stays silent."""

    name = "CN"

    def decode(self, payloads: Sequence[Payload]) -> list[Pcm]:
        return [_EMPTY for _ in payloads]

    def expected_samples(self, payload_len: int) -> int:
        return 0


class _FfmpegDecoder(AudioDecoder):
    """Shared plumbing for decoders backed by an FFmpeg codec context."""

    _codec_name = ""

    def __init__(self) -> None:
        super().__init__()
        self._context = self._open()

    def _open(self) -> av.AudioCodecContext:
        context = av.CodecContext.create(self._codec_name, "r")
        assert isinstance(context, av.AudioCodecContext)
        context.sample_rate = self.audio_rate
        context.layout = "mono"
        context.open()
        return context

    def _decode_packet(self, data: bytes) -> Pcm | None:
        """Decode one FFmpeg packet to mono int16; None when FFmpeg rejects it."""
        try:
            frames = self._context.decode(av.Packet(data))
        except av.FFmpegError as error:
            if isinstance(error, EOFError):
                # The context reached end of stream (it never should); start a fresh one.
                self._context = self._open()
            return None
        if not frames:
            return _EMPTY
        arrays: list[npt.NDArray[Any]] = [frame.to_ndarray().reshape(-1) for frame in frames]
        pcm = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        return _float_to_int16(pcm)


class G722Decoder(_FfmpegDecoder):
    """G.722: 16 kHz audio, 8 kHz RTP clock, two samples per payload byte."""

    name = "G722"
    audio_rate = 16000
    clock_rate = 8000
    samples_per_payload_hint = 320
    _codec_name = "g722"

    def expected_samples(self, payload_len: int) -> int:
        return 2 * payload_len

    def decode(self, payloads: Sequence[Payload]) -> list[Pcm]:
        # ADPCM state runs from one payload into the next anyway, so the whole batch is one
        # FFmpeg packet; every byte is a valid code, so there is no corrupt G.722.
        lengths = [2 * len(p) for p in payloads]
        total = sum(lengths)
        if total == 0:
            return [_EMPTY for _ in payloads]
        pcm = self._decode_packet(b"".join(payloads))
        if pcm is None or len(pcm) != total:
            self.corrupt += len(payloads)
            return [np.zeros(n, dtype=np.int16) for n in lengths]
        self.samples_per_payload_hint = lengths[-1] or self.samples_per_payload_hint
        return _split(pcm, lengths)


G729_FRAME_BYTES: Final = 10
G729_SID_BYTES: Final = 2
G729_FRAME_SAMPLES: Final = 80


class G729Decoder(_FfmpegDecoder):
    """G.729/G.729A speech frames of 10 bytes, optionally followed by one 2-byte SID frame."""

    name = "G729"
    _codec_name = "g729"

    def expected_samples(self, payload_len: int) -> int:
        frames = payload_len // G729_FRAME_BYTES + (payload_len % G729_FRAME_BYTES > 0)
        return frames * G729_FRAME_SAMPLES if frames else self.samples_per_payload_hint

    def decode(self, payloads: Sequence[Payload]) -> list[Pcm]:
        speech: list[Payload] = []
        layout: list[tuple[int, int]] = []  # (speech frames, SID frames) per payload; -1 = bad
        for payload in payloads:
            frames, rest = divmod(len(payload), G729_FRAME_BYTES)
            if rest not in (0, G729_SID_BYTES) or (frames == 0 and rest == 0):
                layout.append((-1, 0))
                continue
            layout.append((frames, rest // G729_SID_BYTES))
            if frames:
                speech.append(payload[: frames * G729_FRAME_BYTES])
        decoded: Pcm | None = _EMPTY
        total_frames = sum(len(s) for s in speech) // G729_FRAME_BYTES
        if speech:
            decoded = self._decode_packet(b"".join(speech))
            if decoded is not None and len(decoded) != total_frames * G729_FRAME_SAMPLES:
                decoded = None
        out: list[Pcm] = []
        at = 0
        for (frames, sid), payload in zip(layout, payloads, strict=True):
            if frames < 0:
                self.corrupt += 1
                out.append(np.zeros(self.expected_samples(len(payload)), dtype=np.int16))
                continue
            n = frames * G729_FRAME_SAMPLES
            if decoded is None:
                self.corrupt += 1
                speech_pcm = np.zeros(n, dtype=np.int16)
            else:
                speech_pcm = decoded[at : at + n]
            at += n
            if sid:
                speech_pcm = np.concatenate(
                    [speech_pcm, np.zeros(G729_FRAME_SAMPLES, dtype=np.int16)]
                )
            elif n:
                self.samples_per_payload_hint = n
            out.append(speech_pcm)
        return out


_OPUS_FRAME_48K: Final = (
    # TOC config 0-11 SILK 10/20/40/60 ms, 12-15 hybrid 10/20 ms, 16-31 CELT 2.5/5/10/20 ms
    (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4
)


def opus_packet_samples(payload: Payload) -> int | None:
    """Samples at 48 kHz an Opus packet covers, from its TOC byte (RFC 6716 3.1), or None."""
    if not payload:
        return None
    toc = payload[0]
    frame = _OPUS_FRAME_48K[toc >> 3]
    code = toc & 0x03
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    elif len(payload) < 2:
        return None
    else:
        count = payload[1] & 0x3F
    samples = frame * count
    # RFC 6716 3.2.5: a packet never exceeds 120 ms.
    return samples if 0 < samples <= 5760 else None


class OpusDecoder(_FfmpegDecoder):
    """Opus through libopus at 48 kHz, mono (libopus downmixes stereo streams itself)."""

    name = "opus"
    audio_rate = 48000
    clock_rate = 48000
    samples_per_payload_hint = 960
    _codec_name = "libopus"

    def expected_samples(self, payload_len: int) -> int:
        return self.samples_per_payload_hint

    def decode(self, payloads: Sequence[Payload]) -> list[Pcm]:
        out: list[Pcm] = []
        for payload in payloads:
            expected = opus_packet_samples(payload)
            pcm = self._decode_packet(bytes(payload)) if expected is not None else None
            if pcm is None or (expected is not None and len(pcm) != expected):
                self.corrupt += 1
                out.append(np.zeros(expected or self.samples_per_payload_hint, dtype=np.int16))
                continue
            self.samples_per_payload_hint = len(pcm)
            out.append(pcm)
        return out


def _float_to_int16(pcm: npt.NDArray[Any]) -> Pcm:
    if pcm.dtype == np.int16:
        return pcm
    if np.issubdtype(pcm.dtype, np.floating):
        pcm = np.rint(np.clip(pcm, -1.0, 1.0) * 32767.0)
    out: Pcm = np.clip(pcm, -32768, 32767).astype(np.int16)
    return out


def decoder_for(
    name: str, rate: int, channels: int = 1, fmtp: str | None = None, output_rate: int = 8000
) -> AudioDecoder:
    """A decoder for an SDP payload format (name and clock rate as in the rtpmap).

    `output_rate` is the recording's rate; decoders produce their codec's natural rate
    (`audio_rate`) and the stream timeline converts, because FFmpeg's libopus wrapper cannot be
    opened at any rate but 48 kHz. `channels` and `fmtp` are accepted for the SDP's sake: every
    decoder here produces mono, and no fmtp parameter changes how a payload decodes (G.729
    annexb=no merely promises there will be no SID frames).
    """
    del channels, fmtp, output_rate
    key = name.upper()
    if key == "PCMU" and rate == 8000:
        return G711Decoder("PCMU", ULAW_TO_LINEAR)
    if key == "PCMA" and rate == 8000:
        return G711Decoder("PCMA", ALAW_TO_LINEAR)
    if key == "G722" and rate == 8000:
        return G722Decoder()
    if key in ("G729", "G729A") and rate == 8000:
        return G729Decoder()
    if key == "OPUS" and rate == 48000:
        return OpusDecoder()
    if key == "CN":
        decoder = SilenceDecoder()
        decoder.clock_rate = decoder.audio_rate = rate
        return decoder
    raise CodecError(f"no decoder for {name}/{rate}")


# --- Resampling --------------------------------------------------------------------------------

_HALF_TAPS: Final = 16
"""Input samples each side of an output sample (at the lower rate): 16 gives ~70 dB images."""
_PASSBAND: Final = 0.9
"""Cut-off as a fraction of the lower rate's Nyquist frequency."""
_KAISER_BETA: Final = 7.0


def _lowpass(factor: int, half_taps: int) -> npt.NDArray[np.float64]:
    """Kaiser-windowed sinc at the higher rate, cut-off below the lower rate's Nyquist."""
    n = np.arange(-half_taps * factor, half_taps * factor + 1, dtype=np.float64)
    cutoff = 0.5 * _PASSBAND / factor  # cycles per sample at the higher rate
    taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(len(n), _KAISER_BETA)
    taps /= taps.sum()
    return taps


class Resampler:
    """Streaming conversion between rates with an integer ratio (8k/16k/24k/48k ...).

    A linear-phase FIR, applied polyphase, with no delay: output sample k stands for input time
    k * from_rate / to_rate exactly. To compute it the filter looks ahead a few input samples,
    so a caller asks `inputs_needed(n)` how many input samples must have been fed to produce the
    first n outputs. Input before the first sample counts as silence.
    """

    def __init__(self, from_rate: int, to_rate: int, half_taps: int = _HALF_TAPS) -> None:
        if from_rate <= 0 or to_rate <= 0:
            raise CodecError(f"bad rates {from_rate} -> {to_rate}")
        g = math.gcd(from_rate, to_rate)
        self.up = to_rate // g
        self.down = from_rate // g
        if self.up != 1 and self.down != 1:
            raise CodecError(f"{from_rate} -> {to_rate} is not an integer ratio")
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._k = half_taps
        self._in_total = 0
        self._out_total = 0
        if self.up > 1:
            taps = _lowpass(self.up, half_taps) * self.up
            width = 2 * half_taps + 1
            # Column p holds the taps of output phase p, ordered to meet the input window
            # x[n-K .. n+K] oldest first: y[nL+p] = sum_i taps[p + iL] * x[n+K-i].
            padded = np.concatenate([taps, np.zeros(self.up)])
            self._phases = [
                np.ascontiguousarray(padded[p :: self.up][:width][::-1], dtype=np.float32)
                for p in range(self.up)
            ]
            self._reach = half_taps
        else:
            # Taps padded to whole blocks of `down` samples, one row per block, so the filter
            # becomes one matrix product over the input reshaped into blocks.
            taps = _lowpass(self.down, half_taps)
            blocks = -(-len(taps) // self.down)
            padded = np.zeros(blocks * self.down)
            padded[: len(taps)] = taps
            self._blocks = np.ascontiguousarray(
                padded.reshape(blocks, self.down).T, dtype=np.float32
            )
            self._reach = half_taps * self.down
        self._buf = np.zeros(self._reach, dtype=np.float32)
        self._buf_start = -self._reach

    @property
    def identity(self) -> bool:
        return self.up == self.down

    def inputs_needed(self, out_total: int) -> int:
        """Input samples that must have been fed before output `out_total - 1` can be made."""
        if out_total <= 0:
            return 0
        if self.up == self.down:
            return out_total
        if self.up > 1:
            return (out_total - 1) // self.up + self._k + 1
        return (out_total - 1) * self.down + self._reach + 1

    def process(self, pcm: Pcm, n_out: int) -> Pcm:
        """Feed `pcm` and return the next `n_out` output samples.

        Inputs the filter needs but that were not fed yet count as silence for this call only.
        """
        if self.up == self.down:
            self._in_total += len(pcm)
            self._out_total += n_out
            if len(pcm) == n_out:
                return pcm
            out = np.zeros(n_out, dtype=np.int16)
            out[: min(n_out, len(pcm))] = pcm[:n_out]
            return out
        if len(pcm):
            self._buf = np.concatenate([self._buf, pcm.astype(np.float32)])
            self._in_total += len(pcm)
        if n_out <= 0:
            return _EMPTY
        first = self._out_total
        last = first + n_out - 1
        if self.up > 1:
            row0, row1 = first // self.up, last // self.up
            lo, hi = row0 - self._k, row1 + self._k + 1
        else:
            lo, hi = first * self.down - self._reach, last * self.down + self._reach + 1
        if self.up > 1:
            segment = self._window(lo, hi)
            y = np.empty((row1 - row0 + 1, self.up), dtype=np.float32)
            for p, phase in enumerate(self._phases):
                y[:, p] = np.correlate(segment, phase, "valid")
            skip = first - row0 * self.up
            y = y.reshape(-1)[skip : skip + n_out]
            keep_from = (last + 1) // self.up - self._k
        else:
            blocks = self._blocks.shape[1]
            # y[k] = sum_q sum_r taps[qM + r] * x[lo + (k + q)M + r]: block rows times tap
            # blocks, then the diagonal sums over q.
            segment = self._window(lo, lo + (n_out + blocks - 1) * self.down)
            z = segment.reshape(-1, self.down) @ self._blocks
            rs, cs = z.strides
            y = as_strided(z, shape=(n_out, blocks), strides=(rs, rs + cs)).sum(axis=1)
            keep_from = (last + 1) * self.down - self._reach
        self._out_total = last + 1
        drop = keep_from - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start = keep_from
        return np.clip(np.rint(y), -32768, 32767).astype(np.int16)

    def _window(self, lo: int, hi: int) -> npt.NDArray[np.float32]:
        """Input samples [lo, hi) in absolute input indices, silence where not fed."""
        start = lo - self._buf_start
        end = hi - self._buf_start
        if start >= 0 and end <= len(self._buf):
            return self._buf[start:end]
        out = np.zeros(hi - lo, dtype=np.float32)
        s, e = max(start, 0), min(end, len(self._buf))
        if e > s:
            out[s - start : e - start] = self._buf[s:e]
        return out


def resample(pcm: Pcm, from_rate: int, to_rate: int) -> Pcm:
    """Convert a whole clip between rates with an integer ratio; length scales exactly."""
    if from_rate == to_rate:
        return pcm
    resampler = Resampler(from_rate, to_rate)
    n_out = len(pcm) * resampler.up // resampler.down
    return resampler.process(np.asarray(pcm, dtype=np.int16), n_out)
