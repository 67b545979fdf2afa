"""Ogg Opus encoding of a recording: time-aligned PCM channels in, Ogg pages out to a byte sink.

One `OggOpusEncoder` per recording. Each recorded party is one channel, coded as its own
uncoupled Opus stream, so one party never bleeds into another's channel (a coupled stereo
stream at the low bitrates a recorder wants merges channels: mid/side or intensity stereo, and
mono below ~9 kbit/s per channel). libopus (through PyAV) does the coding; this module writes
the Ogg framing itself (RFC 3533, RFC 7845) because the recorder needs what a muxer does not
offer: `flush()` must put every complete packet on a finished page *now*, so that after a crash
every flushed prefix of the (encrypted) byte stream decodes; the OpusHead must say "stereo"
rather than "unordered discrete channels"; and the final granule position must trim the
padding of the last frame so the recording lasts exactly as long as the audio given.

Header mapping (RFC 7845 §5.1.1): 1 channel -> family 0. 2 channels -> family 1 with two
uncoupled streams (family 1 allows any stream/coupling split; ordinary players play it as
plain L/R stereo, while family 255 means "channels of no defined meaning" that players may
refuse or mix arbitrarily). 3+ channels -> family 255: family 1 would give them surround
meaning (3 = L, C, R) and decoders such as ffmpeg then reorder them (file channel 1 comes out
third), which would break "channel i of the file is party i". The Opus packets are the same
in every case; only the header's description differs.

Defaults (measured with bench/opus_floor.py on the project machine): SILK ("voip") at
complexity 1 costs about 1.2 ms CPU per channel-second at 8 kHz and 2.0 ms at 16 kHz.
Complexity 2+ turns on SILK's delayed-decision quantiser and costs 60-90 % more for no
difference our signal checks can see, which a 4.6 ms per call-second server budget cannot
afford; complexity 1 buys a better pitch estimator than 0 for a few per cent. 60 ms packets
carry three SILK frames and save per-packet overhead in libopus, PyAV and Ogg against 20 ms;
a recorder has no latency constraint. 16 kbit/s per channel (VBR) is near SILK's narrowband
ceiling; wideband input gets 20 kbit/s. `application="lowdelay"` (CELT only) is ~40 % cheaper
at 16 kHz but needs more bits for speech; it is left as an option.

Known decoder quirks (ffmpeg's, not the stream's; see tests/audio.py): ffmpeg's own Opus
decoder can end SILK streams up to 0.5 ms short; its libopus wrapper reorders 3-8 channels.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt

from siprec_server.media.errors import MediaError
from siprec_server.media.libopus import LibopusError, OpusEncoder, self_delimited

__all__ = [
    "DEFAULT_APPLICATION",
    "DEFAULT_COMPLEXITY",
    "DEFAULT_FRAME_MS",
    "OggOpusEncoder",
    "OggOpusError",
    "default_bitrate_per_channel",
    "ogg_crc32",
]

OPUS_RATE: Final = 48_000
"""Granule positions and pre-skip are always counted at 48 kHz (RFC 7845 §4)."""
INPUT_RATES: Final = (8_000, 12_000, 16_000, 24_000, 48_000)
FRAME_DURATIONS_MS: Final = (10, 20, 40, 60, 80, 100, 120)
APPLICATIONS: Final = ("voip", "audio", "lowdelay")
MAX_CHANNELS: Final = 254
"""ffmpeg's libopus wrapper refuses 255 channels."""

DEFAULT_COMPLEXITY: Final = 1
DEFAULT_FRAME_MS: Final = 60
DEFAULT_APPLICATION: Final = "voip"
SILENCE_FRAMES: Final = 2
"""All-zero frames a channel's encoder still codes before it is skipped."""

_MAX_SEGMENTS: Final = 255
_VENDOR: Final = b"siprec-server"


class OggOpusError(MediaError, ValueError):
    """Bad parameters or input for the encoder, or use after close()."""


def default_bitrate_per_channel(input_rate: int) -> int:
    """Target VBR bitrate for one party: narrowband 16 kbit/s, wideband and up 20 kbit/s."""
    return 16_000 if input_rate <= 12_000 else 20_000


# --- Ogg CRC ------------------------------------------------------------------------------
# Ogg's CRC-32 is polynomial 0x04C11DB7, initial value 0, no reflection, no final xor. zlib's
# CRC-32 is the same polynomial reflected. Reflecting every input byte and the result turns
# one into the other, and bytes.translate + zlib.crc32 both run in C, so a page costs a few
# microseconds instead of a Python loop per byte.

_BIT_REVERSED: Final = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def ogg_crc32(data: bytes) -> int:
    """The CRC of an Ogg page (computed with the checksum field set to zero)."""
    # zlib.crc32(d, v) starts its register at ~v and returns ~register: v = 0xFFFFFFFF gives
    # the plain reflected CRC with initial value 0 once the result is inverted back.
    reflected = ~zlib.crc32(data.translate(_BIT_REVERSED), 0xFFFFFFFF) & 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


# --- Ogg pages ------------------------------------------------------------------------------

_PAGE_HEADER: Final = struct.Struct("<4sBBqIII B")
_FLAG_CONTINUED: Final = 0x01
_FLAG_BOS: Final = 0x02
_FLAG_EOS: Final = 0x04


class _OggStream:
    """Packs packets of one logical bitstream into Ogg pages (RFC 3533)."""

    __slots__ = (
        "_continued",
        "_data",
        "_lacing",
        "_page_granule",
        "_sequence",
        "_serial",
    )

    def __init__(self, serial: int) -> None:
        self._serial = serial
        self._sequence = 0
        self._lacing = bytearray()
        self._data = bytearray()
        self._page_granule = -1
        """Granule after the last packet that ends on the pending page; -1 if none does."""
        self._continued = False
        """The pending page starts with the rest of a packet from the previous page."""

    @property
    def pending(self) -> bool:
        return bool(self._lacing)

    def add_packet(self, packet: bytes, granule: int, out: list[bytes]) -> None:
        """Queue a packet whose last sample has `granule`; completed full pages go to `out`."""
        size = len(packet)
        start = 0
        while True:
            room = _MAX_SEGMENTS - len(self._lacing)
            rest = size - start
            if rest // 255 + 1 <= room:
                # The rest of the packet (ending with a lacing value < 255) fits on this page.
                self._lacing.extend(b"\xff" * (rest // 255))
                self._lacing.append(rest % 255)
                self._data += packet[start:]
                self._page_granule = granule
                if len(self._lacing) == _MAX_SEGMENTS:
                    out.append(self.page(eos=False))
                return
            # Only part of it fits: fill the page with 255-byte segments and carry on.
            chunk = room * 255
            self._lacing.extend(b"\xff" * room)
            self._data += packet[start : start + chunk]
            start += chunk
            out.append(self.page(eos=False))
            self._continued = True

    def page(self, *, eos: bool, granule: int | None = None, bos: bool = False) -> bytes:
        """Close the pending page (which may be empty only when it carries EOS)."""
        flags = (_FLAG_CONTINUED if self._continued else 0) | (_FLAG_BOS if bos else 0)
        if eos:
            flags |= _FLAG_EOS
        page_granule = self._page_granule if granule is None else granule
        header = _PAGE_HEADER.pack(
            b"OggS", 0, flags, page_granule, self._serial, self._sequence, 0, len(self._lacing)
        )
        page = bytearray(header)
        page += self._lacing
        page += self._data
        struct.pack_into("<I", page, 22, ogg_crc32(bytes(page)))
        self._sequence += 1
        # A page that ended mid-packet leaves the next one continued (set by add_packet).
        self._continued = False
        self._lacing.clear()
        self._data.clear()
        self._page_granule = -1
        return bytes(page)


# --- Opus headers ---------------------------------------------------------------------------


def _opus_head(channels: int, pre_skip: int, input_rate: int) -> bytes:
    """OpusHead (RFC 7845 §5.1) describing one uncoupled stream per channel."""
    family = {1: 0, 2: 1}.get(channels, 255)
    head = struct.pack("<8sBBHIhB", b"OpusHead", 1, channels, pre_skip, input_rate, 0, family)
    if family != 0:
        head += bytes((channels, 0)) + bytes(range(channels))
    return head


def _opus_tags() -> bytes:
    """OpusTags (RFC 7845 §5.2) with our vendor string and no user comments."""
    return b"OpusTags" + struct.pack("<I", len(_VENDOR)) + _VENDOR + struct.pack("<I", 0)


# --- the encoder ----------------------------------------------------------------------------


class OggOpusEncoder:
    """Encodes int16 PCM channels to Ogg Opus and hands finished pages to `sink`.

    The headers are written to `sink` by the constructor. `encode()` buffers audio and may
    emit full pages; `flush()` emits every encoded packet on finished pages (only the last
    partial frame stays buffered); `close()` pads and finishes the stream with the EOS page.
    """

    def __init__(
        self,
        channels: int,
        input_rate: int,
        sink: Callable[[bytes], None],
        *,
        bitrate_per_channel: int | None = None,
        complexity: int = DEFAULT_COMPLEXITY,
        frame_ms: int = DEFAULT_FRAME_MS,
        application: str = DEFAULT_APPLICATION,
        serial: int = 0x5EC0_4D01,
    ) -> None:
        if not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
            raise OggOpusError(f"channels must be 1..{MAX_CHANNELS}, got {channels!r}")
        if input_rate not in INPUT_RATES:
            raise OggOpusError(f"input_rate must be one of {INPUT_RATES}, got {input_rate!r}")
        if frame_ms not in FRAME_DURATIONS_MS:
            raise OggOpusError(f"frame_ms must be one of {FRAME_DURATIONS_MS}, got {frame_ms!r}")
        if not isinstance(complexity, int) or not 0 <= complexity <= 10:
            raise OggOpusError(f"complexity must be 0..10, got {complexity!r}")
        if application not in APPLICATIONS:
            raise OggOpusError(f"application must be one of {APPLICATIONS}, got {application!r}")
        if bitrate_per_channel is None:
            bitrate_per_channel = default_bitrate_per_channel(input_rate)
        if not isinstance(bitrate_per_channel, int) or not 6_000 <= bitrate_per_channel <= 256_000:
            raise OggOpusError(
                f"bitrate_per_channel must be 6000..256000, got {bitrate_per_channel!r}"
            )
        if not isinstance(serial, int) or not 0 <= serial <= 0xFFFFFFFF:
            raise OggOpusError(f"serial must be a 32-bit unsigned integer, got {serial!r}")

        self._channels = channels
        self._rate = input_rate
        self._sink = sink
        self._frame_size = input_rate * frame_ms // 1000
        self._packet_granules = OPUS_RATE * frame_ms // 1000
        try:
            self._encoders = [
                OpusEncoder(input_rate, self._frame_size, application=application,
                            bitrate=bitrate_per_channel, complexity=complexity)
                for _ in range(channels)
            ]
        except LibopusError as exc:  # pragma: no cover - parameters are validated above
            raise OggOpusError(str(exc)) from exc
        self._pre_skip = self._encoders[0].lookahead * OPUS_RATE // input_rate
        self._zero_run = [0] * channels
        """Consecutive all-zero frames per channel (silence: no packets, a pause, hold)."""
        self._silent_packet: list[bytes | None] = [None] * channels
        self._resume = [False] * channels
        """The channel's encoder was skipped: reset it before the next sound."""
        self.frames_skipped = 0
        """Channel-frames not encoded because the party was silent (the saving)."""

        self._pending = np.empty((self._frame_size, channels), dtype=np.int16)
        self._pending_len = 0
        self._samples_in = 0
        """Input samples (per channel) accepted so far."""
        self._granule = 0
        """Granule position (48 kHz, pre-skip included) after the last packet queued."""
        self._closed = False

        self._ogg = _OggStream(serial)
        pages: list[bytes] = []
        self._ogg.add_packet(_opus_head(channels, self._pre_skip, input_rate), 0, pages)
        pages.append(self._ogg.page(eos=False, granule=0, bos=True))
        self._ogg.add_packet(_opus_tags(), 0, pages)
        pages.append(self._ogg.page(eos=False, granule=0))
        self._emit(pages)

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def input_rate(self) -> int:
        return self._rate

    @property
    def pre_skip(self) -> int:
        """Samples at 48 kHz the decoder drops at the start (the encoder's lookahead)."""
        return self._pre_skip

    @property
    def samples_encoded(self) -> int:
        """Input samples per channel accepted so far, including any still buffered."""
        return self._samples_in

    def encode(self, pcm: npt.NDArray[np.int16]) -> None:
        """Add `pcm`, int16 shaped (n, channels) at the input rate; any n, including 0."""
        self._check_open()
        if not isinstance(pcm, np.ndarray) or pcm.dtype != np.int16:
            raise OggOpusError("pcm must be a numpy int16 array")
        if pcm.ndim != 2 or pcm.shape[1] != self._channels:
            raise OggOpusError(f"pcm must be shaped (n, {self._channels}), got {pcm.shape}")
        n = pcm.shape[0]
        self._samples_in += n
        pages: list[bytes] = []
        offset = 0
        pending = self._pending
        size = self._frame_size
        while offset < n:
            if self._pending_len == 0 and n - offset >= size:
                self._encode_frame(pcm[offset : offset + size], pages)
                offset += size
                continue
            take = min(size - self._pending_len, n - offset)
            pending[self._pending_len : self._pending_len + take] = pcm[offset : offset + take]
            self._pending_len += take
            offset += take
            if self._pending_len == size:
                self._encode_frame(pending, pages)
                self._pending_len = 0
        self._emit(pages)

    def flush(self) -> None:
        """Push every encoded packet to the sink on finished pages.

        What the sink has received after this is a valid Ogg Opus stream (without an EOS page)
        that decodes up to the last complete frame (ffmpeg cannot open a stream that has no
        audio packet yet, i.e. before the first complete frame).
        """
        self._check_open()
        if self._ogg.pending:
            self._emit([self._ogg.page(eos=False)])

    def close(self) -> int:
        """Encode what is buffered, write the EOS page and return the samples encoded.

        The final granule position makes a decoder play exactly `samples_encoded` samples.
        """
        self._check_open()
        self._closed = True
        pages: list[bytes] = []
        final_granule = self._pre_skip + self._samples_in * OPUS_RATE // self._rate
        if self._pending_len or self._samples_in == 0:
            # The short last frame, padded with silence. An empty recording still gets one
            # packet: ffmpeg cannot open a stream without an audio packet.
            self._pending[self._pending_len :] = 0
            self._encode_frame(self._pending, pages)
            self._pending_len = 0
        while self._granule < final_granule:
            # The lookahead's tail: the decoder needs packets up to the final granule.
            self._pending[:] = 0
            self._encode_frame(self._pending, pages)
        pages.append(self._ogg.page(eos=True, granule=final_granule))
        self._emit(pages)
        return self._samples_in

    # -- internals -------------------------------------------------------------------------

    def _encode_frame(self, block: npt.NDArray[np.int16], pages: list[bytes]) -> None:
        """One frame of every channel -> one (multistream) packet: each channel is its own
        stream; all but the last are self-delimited (RFC 7845 §5.1.1, RFC 6716 App. B)."""
        packets = [self._channel_packet(ch, block[:, ch]) for ch in range(self._channels)]
        if len(packets) == 1:
            packet = packets[0]
        else:
            packet = b"".join([self_delimited(p) for p in packets[:-1]] + [packets[-1]])
        self._queue_packet(packet, pages)

    def _channel_packet(self, channel: int, samples: npt.NDArray[np.int16]) -> bytes:
        """A party's packet for one frame. While the party is silent (all-zero samples: no
        packets, a pause, hold) its encoder is skipped after SILENCE_FRAMES frames and their
        last packet stands for every further one; the encoder is reset before the next sound,
        as the decoder then holds the silence too (measured: within 0.2 dB of encoding every
        frame, at a third less CPU on speech with pauses)."""
        encoder = self._encoders[channel]
        if not samples.any():
            run = self._zero_run[channel] = self._zero_run[channel] + 1
            silent = self._silent_packet[channel]
            if run > SILENCE_FRAMES and silent is not None:
                self._resume[channel] = True
                self.frames_skipped += 1
                return silent
            packet = encoder.encode(np.ascontiguousarray(samples))
            self._silent_packet[channel] = packet
            return packet
        self._zero_run[channel] = 0
        if self._resume[channel]:
            encoder.reset()
            self._resume[channel] = False
        return encoder.encode(np.ascontiguousarray(samples))

    def _queue_packet(self, packet: bytes, pages: list[bytes]) -> None:
        self._granule += self._packet_granules
        self._ogg.add_packet(packet, self._granule, pages)

    def _emit(self, pages: list[bytes]) -> None:
        for page in pages:
            self._sink(page)

    def _check_open(self) -> None:
        if self._closed:
            raise OggOpusError("encoder is closed")
