"""OggOpusEncoder: each party on its own channel, crash-safe flushed prefixes, exact durations."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siprec_server.media.ogg_opus import (
    OggOpusEncoder,
    OggOpusError,
    _OggStream,
    default_bitrate_per_channel,
    ogg_crc32,
)
from tests.audio import (
    active_segments,
    decode_ogg_opus,
    dominant_frequency,
    multichannel,
    noise,
    rms_db,
    silence,
    speech_like,
    stereo,
    tone,
    tone_level_db,
)

FRAME_S = 0.060  # the default frame; "±1 frame" tolerances below use it


# --- an independent reader of what the encoder wrote ------------------------------------------


def _reference_ogg_crc(data: bytes) -> int:
    """Bit-by-bit Ogg CRC: polynomial 0x04C11DB7, init 0, MSB first, no final xor."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


@dataclass
class Page:
    flags: int
    granule: int
    serial: int
    sequence: int
    lacing: bytes
    body: bytes


def parse_pages(data: bytes) -> list[Page]:
    """Split `data` into Ogg pages, checking capture pattern, version and CRC of each."""
    pages = []
    pos = 0
    while pos < len(data):
        assert data[pos : pos + 4] == b"OggS", f"no page at offset {pos}"
        version, flags, granule, serial, sequence, crc, count = struct.unpack_from(
            "<BBqIIIB", data, pos + 4
        )
        assert version == 0
        lacing = data[pos + 27 : pos + 27 + count]
        end = pos + 27 + count + sum(lacing)
        assert end <= len(data), "truncated page"
        raw = bytearray(data[pos:end])
        raw[22:26] = b"\0\0\0\0"
        assert _reference_ogg_crc(bytes(raw)) == crc, f"bad CRC on page {sequence}"
        pages.append(Page(flags, granule, serial, sequence, lacing, data[pos + 27 + count : end]))
        pos = end
    return pages


def packets_of(pages: list[Page]) -> list[bytes]:
    """Reassemble packets from lacing values (a packet ends at a lacing value < 255)."""
    packets, current = [], b""
    for page in pages:
        offset = 0
        for value in page.lacing:
            current += page.body[offset : offset + value]
            offset += value
            if value < 255:
                packets.append(current)
                current = b""
    assert current == b"", "stream ends inside a packet"
    return packets


def encode_all(
    pcm: np.ndarray, rate: int, *, chunk: int | None = None, **options: Any
) -> tuple[bytes, int]:
    out: list[bytes] = []
    encoder = OggOpusEncoder(pcm.shape[1], rate, out.append, **options)
    step = chunk or max(1, len(pcm))
    for i in range(0, len(pcm), step):
        encoder.encode(pcm[i : i + step])
    total = encoder.close()
    return b"".join(out), total


# --- the Ogg CRC ----------------------------------------------------------------------------


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.binary(max_size=600))
def test_ogg_crc_matches_the_bitwise_definition(data: bytes) -> None:
    assert ogg_crc32(data) == _reference_ogg_crc(data)


def test_ogg_crc_of_known_vector() -> None:
    # CRC-32/MPEG-2 without init/xorout ("CRC-32/BZIP2" register, no final xor) of "123456789".
    assert ogg_crc32(b"123456789") == _reference_ogg_crc(b"123456789") == 0x89A1897F


# --- the channels carry the right party -----------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000])
def test_each_party_comes_back_on_its_own_channel_for_the_right_time(rate: int) -> None:
    # Party A: 440 Hz from 0.0 to 2.0 s; party B: 1000 Hz from 1.0 to 3.0 s. They overlap
    # for a second, which is when a coupled stereo coder would leak one into the other.
    a = np.concatenate([tone(440, 2.0, rate), silence(1.0, rate)])
    b = np.concatenate([silence(1.0, rate), tone(1000, 2.0, rate)])
    data, total = encode_all(stereo(a, b), rate)
    assert total == 3 * rate
    decoded, out_rate = decode_ogg_opus(data)
    assert decoded.shape == (3 * out_rate, 2)
    left, right = decoded[:, 0], decoded[:, 1]

    [(a_start, a_end)] = active_segments(left, out_rate, 440)
    [(b_start, b_end)] = active_segments(right, out_rate, 1000)
    assert a_start == pytest.approx(0.0, abs=FRAME_S) and a_end == pytest.approx(2.0, abs=FRAME_S)
    assert b_start == pytest.approx(1.0, abs=FRAME_S) and b_end == pytest.approx(3.0, abs=FRAME_S)
    assert active_segments(left, out_rate, 1000) == []
    assert active_segments(right, out_rate, 440) == []

    both = slice(int(1.1 * out_rate), int(1.9 * out_rate))
    assert dominant_frequency(left[both], out_rate) == pytest.approx(440, abs=2)
    assert dominant_frequency(right[both], out_rate) == pytest.approx(1000, abs=2)
    a_to_b = tone_level_db(left[both], out_rate, 440) - tone_level_db(right[both], out_rate, 440)
    b_to_a = tone_level_db(right[both], out_rate, 1000) - tone_level_db(left[both], out_rate, 1000)
    assert a_to_b >= 25 and b_to_a >= 25
    # The level survives coding (0.3 of full scale is -10.5 dBFS).
    assert tone_level_db(left[both], out_rate, 440) == pytest.approx(-10.5, abs=1.5)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_tone_does_not_leak_into_the_other_party_talking(rate: int) -> None:
    # The other party is talking (broadband) rather than silent or a pure tone.
    talk = speech_like(3.0, rate, seed=7)
    spectrum = np.fft.rfft(talk.astype(float))
    spectrum[np.abs(np.fft.rfftfreq(len(talk), 1 / rate) - 440) < 40] = 0  # room to measure
    talk = np.round(np.fft.irfft(spectrum, len(talk))).astype(np.int16)
    decoded, out_rate = decode_ogg_opus(encode_all(stereo(tone(440, 3.0, rate), talk), rate)[0])
    middle = slice(out_rate // 2, 5 * out_rate // 2)
    leak = tone_level_db(decoded[middle, 0], out_rate, 440) - tone_level_db(
        decoded[middle, 1], out_rate, 440
    )
    assert leak >= 25


def test_mono_recording() -> None:
    data, total = encode_all(tone(700, 1.0, 8000)[:, np.newaxis], 8000)
    decoded, rate = decode_ogg_opus(data)
    assert total == 8000 and decoded.shape == (rate, 1)
    assert dominant_frequency(decoded[:, 0], rate) == pytest.approx(700, abs=2)


def test_three_parties_keep_their_channel_order() -> None:
    freqs = (300, 700, 1100)
    pcm = multichannel(*(tone(f, 1.0, 8000) for f in freqs))
    decoded, rate = decode_ogg_opus(encode_all(pcm, 8000)[0])
    assert decoded.shape == (rate, 3)
    middle = decoded[rate // 4 : 3 * rate // 4]
    for channel, freq in enumerate(freqs):
        assert dominant_frequency(middle[:, channel], rate) == pytest.approx(freq, abs=2)
        own = tone_level_db(middle[:, channel], rate, freq)
        for other in set(range(3)) - {channel}:
            assert own - tone_level_db(middle[:, other], rate, freq) >= 25


# --- headers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "rate", "family"), [(1, 8000, 0), (2, 8000, 1), (2, 16000, 1), (3, 16000, 255)]
)
def test_opus_head_describes_uncoupled_channels_and_real_input_rate(
    channels: int, rate: int, family: int
) -> None:
    out: list[bytes] = []
    encoder = OggOpusEncoder(channels, rate, out.append)
    pages = parse_pages(b"".join(out))  # the constructor already wrote the headers
    assert len(pages) == 2
    head, tags = pages
    assert head.flags == 0x02 and head.granule == 0 and head.sequence == 0
    assert tags.flags == 0 and tags.sequence == 1 and tags.body.startswith(b"OpusTags")
    magic, version, count, pre_skip, input_rate, gain, mapping = struct.unpack_from(
        "<8sBBHIhB", head.body
    )
    assert (magic, version, count, input_rate, gain, mapping) == (
        b"OpusHead",
        1,
        channels,
        rate,
        0,
        family,
    )
    assert pre_skip == encoder.pre_skip > 0
    if family == 0:
        assert len(head.body) == 19
    else:
        # stream count = channels, coupled count = 0, identity mapping
        assert head.body[19:] == bytes([channels, 0, *range(channels)])


def test_pages_are_well_formed_and_only_the_last_is_eos() -> None:
    out: list[bytes] = []
    encoder = OggOpusEncoder(2, 8000, out.append)
    talk = stereo(speech_like(3.0, 8000, 1), speech_like(3.0, 8000, 2))
    for i in range(0, len(talk), 160):
        encoder.encode(talk[i : i + 160])
        if i % 8000 == 0:
            encoder.flush()
    encoder.close()
    pages = parse_pages(b"".join(out))
    assert [p.sequence for p in pages] == list(range(len(pages)))
    assert len({p.serial for p in pages}) == 1
    assert [bool(p.flags & 0x04) for p in pages] == [False] * (len(pages) - 1) + [True]
    granules = [p.granule for p in pages[2:]]
    assert granules == sorted(granules)
    assert granules[-1] == encoder.pre_skip + 3 * 48000
    audio_packets = packets_of(pages[2:])
    # The final granule may trim the last packet(s), but never past what they decode to.
    assert len(audio_packets) * 2880 >= granules[-1] >= (len(audio_packets) - 2) * 2880


# --- crash safety: every flushed prefix decodes ---------------------------------------------


def test_flushed_prefix_decodes_up_to_the_flush() -> None:
    rate = 8000
    out: list[bytes] = []
    encoder = OggOpusEncoder(2, rate, out.append)
    pcm = stereo(tone(440, 2.5, rate), tone(1000, 2.5, rate))
    encoder.encode(pcm[: int(1.03 * rate)])
    encoder.flush()
    prefix = b"".join(out)

    decoded, out_rate = decode_ogg_opus(prefix, decoder="libopus")
    parse_pages(prefix)  # ends on a page boundary
    # 17 whole 60 ms frames were complete (1.02 s), less the encoder's lookahead.
    assert len(decoded) == 17 * 2880 - encoder.pre_skip
    body = decoded[out_rate // 10 :]
    assert dominant_frequency(body[:, 0], out_rate) == pytest.approx(440, abs=2)
    assert dominant_frequency(body[:, 1], out_rate) == pytest.approx(1000, abs=2)

    encoder.encode(pcm[int(1.03 * rate) :])
    encoder.flush()
    assert len(decode_ogg_opus(b"".join(out))[0]) > len(decoded)
    encoder.close()
    assert len(decode_ogg_opus(b"".join(out), decoder="libopus")[0]) == int(2.5 * out_rate)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(1, 1500), st.booleans()), min_size=1, max_size=12))
def test_every_flushed_prefix_is_a_decodable_ogg_stream(steps: list[tuple[int, bool]]) -> None:
    rate = 8000
    out: list[bytes] = []
    encoder = OggOpusEncoder(2, rate, out.append)
    talk = stereo(speech_like(1.5, rate, 1), speech_like(1.5, rate, 2))
    pos = 0
    for size, flush in steps:
        encoder.encode(talk[pos : pos + size])
        pos += size
        if flush:
            encoder.flush()
            prefix = b"".join(out)
            frames = pos // 480
            pages = parse_pages(prefix)
            assert len(packets_of(pages[2:])) == frames
            if frames:
                expected = frames * 2880 - encoder.pre_skip
                assert len(decode_ogg_opus(prefix, decoder="libopus")[0]) == expected
                assert 0 <= expected - len(decode_ogg_opus(prefix)[0]) <= 24
    assert encoder.close() == pos
    assert len(decode_ogg_opus(b"".join(out), decoder="libopus")[0]) == pos * 6


# --- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "samples"),
    [(8000, 1), (8000, 479), (8000, 480), (8000, 481), (8000, 12345), (16000, 16000 * 2 + 7)],
)
def test_close_makes_the_decoded_duration_exactly_the_samples_given(
    rate: int, samples: int
) -> None:
    pcm = stereo(tone(440, samples / rate, rate), silence(samples / rate, rate))
    data, total = encode_all(pcm, rate)
    assert total == samples
    decoded, out_rate = decode_ogg_opus(data, decoder="libopus")
    assert len(decoded) == samples * out_rate // rate
    if samples > 4:
        # ffmpeg's own decoder may end up to 24 samples short (its quirk, see audio.py); with
        # less than 24 samples to keep it does not trim at all.
        assert 0 <= samples * out_rate // rate - len(decode_ogg_opus(data)[0]) <= 24


def test_empty_recording_closes_to_a_playable_silent_stream() -> None:
    out: list[bytes] = []
    encoder = OggOpusEncoder(2, 8000, out.append)
    assert encoder.close() == 0
    pages = parse_pages(b"".join(out))
    assert pages[-1].flags & 0x04 and pages[-1].granule == encoder.pre_skip  # 0 samples
    decoded, rate = decode_ogg_opus(b"".join(out))
    # ffmpeg will not trim a stream to nothing: it plays less than one frame, and it is silent.
    assert len(decoded) <= 2880 and rms_db(decoded[:, 0]) < -60


def test_many_small_encodes_equal_one_big_one() -> None:
    rate = 8000
    pcm = stereo(speech_like(2.0, rate, 3), speech_like(2.0, rate, 4))
    whole, _ = encode_all(pcm, rate)
    for chunk in (1, 37, 160, 481):
        pieces, total = encode_all(pcm, rate, chunk=chunk)
        assert total == len(pcm)
        assert pieces == whole  # same frames reach libopus, so byte-identical output
    assert len(decode_ogg_opus(whole)[0]) == 2 * 48000


def test_input_memory_layout_does_not_matter() -> None:
    rate = 8000
    pcm = stereo(speech_like(1.0, rate, 5), speech_like(1.0, rate, 6))
    reference, _ = encode_all(pcm, rate)
    wider = np.zeros((len(pcm), 4), dtype=np.int16)
    wider[:, 0], wider[:, 2] = pcm[:, 0], pcm[:, 1]
    assert encode_all(np.asfortranarray(pcm), rate)[0] == reference
    assert encode_all(wider[:, ::2], rate)[0] == reference  # strided columns of a wider mix
    assert encode_all(wider[:, ::2], rate, chunk=100)[0] == reference


def test_silence_costs_a_fraction_of_talk() -> None:
    rate = 8000
    quiet, _ = encode_all(stereo(silence(5, rate), silence(5, rate)), rate)
    talk, _ = encode_all(stereo(speech_like(5, rate, 1), speech_like(5, rate, 2)), rate)
    assert len(quiet) < len(talk) / 3
    assert len(quiet) * 8 / 5 < 6000  # bits per second, both channels, Ogg included
    decoded, _ = decode_ogg_opus(quiet)
    assert rms_db(decoded[:, 0]) == -math.inf or rms_db(decoded[:, 0]) < -80


def test_default_bitrate_follows_the_input_bandwidth() -> None:
    assert default_bitrate_per_channel(8000) == 16000
    assert default_bitrate_per_channel(16000) == 20000
    rate = 8000
    pcm = stereo(noise(3, rate, 0.1, seed=1), noise(3, rate, 0.1, seed=2))
    low, _ = encode_all(pcm, rate, bitrate_per_channel=8000)
    high, _ = encode_all(pcm, rate, bitrate_per_channel=32000)
    assert len(high) > 2 * len(low)


@pytest.mark.parametrize("frame_ms", [20, 40])
def test_other_frame_durations_keep_exact_length(frame_ms: int) -> None:
    rate = 16000
    pcm = stereo(tone(440, 1.01, rate), tone(880, 1.01, rate))
    data, _ = encode_all(pcm, rate, frame_ms=frame_ms, complexity=0)
    decoded, out_rate = decode_ogg_opus(data)
    assert len(decoded) == round(1.01 * out_rate)
    assert dominant_frequency(decoded[4800:, 1], out_rate) == pytest.approx(880, abs=2)


# --- page packing of big packets ------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes", [[70_000], [254, 255, 256, 0, 510], [64_770, 64_770, 5], [1] * 600]
)
def test_packets_of_any_size_are_split_and_rejoined_across_pages(sizes: list[int]) -> None:
    rng = np.random.default_rng(len(sizes))
    packets = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    stream = _OggStream(serial=7)
    pages: list[bytes] = []
    for index, packet in enumerate(packets):
        stream.add_packet(packet, granule=index + 1, out=pages)
    pages.append(stream.page(eos=True, granule=len(packets)))
    parsed = parse_pages(b"".join(pages))
    assert packets_of(parsed) == packets
    assert all(len(p.lacing) <= 255 for p in parsed)
    for page in parsed[1:]:
        previous = parsed[parsed.index(page) - 1]
        assert bool(page.flags & 0x01) == (previous.lacing[-1] == 255 if previous.lacing else False)
    # A page on which no packet ends carries granule -1 (RFC 3533).
    for page in parsed:
        if page.lacing and all(v == 255 for v in page.lacing):
            assert page.granule == -1


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"channels": 0},
        {"channels": 255},
        {"input_rate": 44100},
        {"frame_ms": 30},
        {"complexity": 11},
        {"bitrate_per_channel": 100},
        {"application": "music"},
        {"serial": -1},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"channels": 2, "input_rate": 8000, "sink": lambda _: None}
    args.update(kwargs)
    with pytest.raises(OggOpusError):
        OggOpusEncoder(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "pcm",
    [
        np.zeros((160, 3), dtype=np.int16),
        np.zeros(160, dtype=np.int16),
        np.zeros((160, 2), dtype=np.float32),
        np.zeros((160, 2), dtype=np.int32),
        [[0, 0]],
    ],
)
def test_bad_pcm_is_refused(pcm: object) -> None:
    encoder = OggOpusEncoder(2, 8000, lambda _: None)
    with pytest.raises(OggOpusError):
        encoder.encode(pcm)  # type: ignore[arg-type]
    encoder.encode(np.zeros((0, 2), dtype=np.int16))  # empty is fine


def test_use_after_close_is_refused() -> None:
    encoder = OggOpusEncoder(1, 8000, lambda _: None)
    encoder.close()
    for call in (lambda: encoder.encode(np.zeros((1, 1), np.int16)), encoder.flush, encoder.close):
        with pytest.raises(OggOpusError):
            call()
