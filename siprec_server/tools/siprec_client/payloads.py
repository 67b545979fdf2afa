"""What the streams carry: codecs as offered and framed, and PCM made into RTP payloads.

`PayloadEncoder` encodes one packet's worth of PCM: G.711 with the encoders of media.codecs,
G.722 and Opus with PyAV (FFmpeg's g722 and libopus). Sources are tones (a continuous sine,
frame by frame), in-band DTMF dual tones, or a callable that gives each frame's PCM.

G.729 is not offered: PyAV has no G.729 encoder, so the recorder's G.729 path is receive-only
as far as this client is concerned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import av
import numpy as np
import numpy.typing as npt

from siprec_server.media.codecs import encode_alaw, encode_ulaw
from siprec_server.tools.siprec_client.errors import SiprecClientError

Pcm = npt.NDArray[np.int16]
AudioSource = float | Callable[[int, int], npt.NDArray[Any]]
"""A tone frequency in Hz, or a callable (frame index, sample rate) -> int16 PCM of one frame."""


TONE_AMPLITUDE: Final = 0.3
"""Tone level as a fraction of full scale (about -10.5 dBFS), as in tests/audio.py."""


@dataclass(frozen=True, slots=True)
class CodecSpec:
    """How one codec is offered and framed (RFC 3551, RFC 7587)."""

    name: str
    payload_type: int
    rtpmap: str
    """The a=rtpmap value after the payload type."""
    clock_rate: int
    """RTP timestamp rate: 8000 for G.722 although it samples at 16 kHz (RFC 3551 4.5.2)."""
    audio_rate: int
    """Sample rate of the PCM the encoder takes."""
    fmtp: str | None = None

    def rtp_units(self, ptime_ms: int) -> int:
        """RTP timestamp increment of one packet."""
        return self.clock_rate * ptime_ms // 1000

    def pcm_samples(self, ptime_ms: int) -> int:
        """PCM samples the encoder takes for one packet."""
        return self.audio_rate * ptime_ms // 1000


CODECS: Final[Mapping[str, CodecSpec]] = {
    "PCMU": CodecSpec("PCMU", 0, "PCMU/8000", 8000, 8000),
    "PCMA": CodecSpec("PCMA", 8, "PCMA/8000", 8000, 8000),
    "G722": CodecSpec("G722", 9, "G722/8000", 8000, 16000),
    # RFC 7587: always opus/48000/2 in SDP, whatever is actually sent.
    "opus": CodecSpec("opus", 111, "opus/48000/2", 48000, 48000, "useinbandfec=0;stereo=0"),
}
PTIMES: Final[Mapping[str, frozenset[int]]] = {
    "PCMU": frozenset({10, 20, 30, 40, 60}),
    "PCMA": frozenset({10, 20, 30, 40, 60}),
    "G722": frozenset({10, 20, 30, 40, 60}),
    "opus": frozenset({10, 20, 40, 60}),
}


def codec_spec(name: str) -> CodecSpec:
    """The codec with this name (any case); SiprecClientError for G.729 or unknown names."""
    for key, spec in CODECS.items():
        if key.lower() == name.strip().lower():
            return spec
    if name.strip().upper().startswith("G729"):
        raise SiprecClientError("G.729 cannot be sent: PyAV has no G.729 encoder (receive-only)")
    raise SiprecClientError(f"unknown codec {name!r} (known: {', '.join(CODECS)})")


class PayloadEncoder:
    """Encodes PCM frames of one packet each into RTP payloads of one codec."""

    def __init__(self, codec: CodecSpec, ptime_ms: int = 20) -> None:
        self.codec = codec
        self.samples = codec.pcm_samples(ptime_ms)
        self._pts = 0
        self._context: av.AudioCodecContext | None = None
        if codec.name in ("G722", "opus"):
            context = av.CodecContext.create("g722" if codec.name == "G722" else "libopus", "w")
            assert isinstance(context, av.AudioCodecContext)
            context.sample_rate = codec.audio_rate
            context.layout = "mono"
            context.format = "s16"
            if codec.name == "opus":
                context.bit_rate = 32000
                context.options = {"application": "voip", "frame_duration": str(ptime_ms)}
            context.open()
            self._context = context

    def encode(self, pcm: npt.NDArray[Any]) -> bytes:
        """One payload for exactly one packet's worth of PCM (padded or cut to fit)."""
        frame = _fit(pcm, self.samples)
        if self.codec.name == "PCMU":
            return encode_ulaw(frame)
        if self.codec.name == "PCMA":
            return encode_alaw(frame)
        assert self._context is not None
        av_frame = av.AudioFrame.from_ndarray(frame.reshape(1, -1), format="s16", layout="mono")
        av_frame.sample_rate = self.codec.audio_rate
        av_frame.pts = self._pts
        self._pts += self.samples
        packets = self._context.encode(av_frame)
        if len(packets) != 1:
            raise SiprecClientError(
                f"{self.codec.name} encoder gave {len(packets)} packets for one frame"
            )
        return bytes(packets[0])


def _fit(pcm: npt.NDArray[Any], samples: int) -> Pcm:
    data = np.asarray(pcm).reshape(-1)
    if data.dtype != np.int16:
        data = np.clip(np.round(data.astype(np.float64)), -32768, 32767).astype(np.int16)
    if len(data) < samples:
        data = np.concatenate([data, np.zeros(samples - len(data), dtype=np.int16)])
    return data[:samples]


def tone_frame(
    freq_hz: float, rate: int, index: int, samples: int, amplitude: float = TONE_AMPLITUDE
) -> Pcm:
    """Frame `index` of a continuous sine that starts at phase 0."""
    t = (np.arange(samples) + index * samples) / rate
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


DTMF_FREQUENCIES: Final[Mapping[str, tuple[int, int]]] = {
    digit: (low, high)
    for row, low in zip(("123A", "456B", "789C", "*0#D"), (697, 770, 852, 941), strict=True)
    for digit, high in zip(row, (1209, 1336, 1477, 1633), strict=True)
}
"""ITU-T Q.23 row and column frequencies of each key."""


def dtmf_tone(digit: str, rate: int, index: int, samples: int) -> Pcm:
    """Frame `index` of the in-band dual tone of a key, each tone at -13 dBFS or so."""
    low, high = DTMF_FREQUENCIES[digit]
    t = (np.arange(samples) + index * samples) / rate
    pcm = 0.22 * 32767 * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t))
    return np.round(pcm).astype(np.int16)


def _source_frame(source: AudioSource, rate: int, index: int, samples: int) -> Pcm:
    if isinstance(source, int | float):
        return tone_frame(float(source), rate, index, samples)
    return _fit(source(index, rate), samples)


def encode_source(
    codec: CodecSpec, source: AudioSource, frames: int, ptime_ms: int = 20, *, loop: bool = False
) -> tuple[bytes, ...]:
    """Payloads of `frames` consecutive packets of a source.

    With `loop`, the payloads are meant to be repeated: stateful codecs (G.722's ADPCM
    predictor, Opus) first encode the same stretch once to warm up, so the state at the start
    of the kept stretch matches the state at its end and the joint is clean.
    """
    encoder = PayloadEncoder(codec, ptime_ms)
    samples = encoder.samples
    if loop and codec.name in ("G722", "opus"):
        for index in range(frames):
            encoder.encode(_source_frame(source, codec.audio_rate, index, samples))
    return tuple(
        encoder.encode(_source_frame(source, codec.audio_rate, index, samples))
        for index in range(frames)
    )
