"""Decoders for the recorded payload formats, G.711 encoders, the integer-ratio resampler.

References are independent of the code under test: FFmpeg's own G.711 codecs and its G.722 and
Opus encoders via PyAV. FFmpeg has no G.729 encoder, so G.729 is covered for frame splitting,
Annex B SID frames, batching equivalence and robustness, not for speech quality.
"""

from __future__ import annotations

import math

import av
import numpy as np
import pytest

from siprec_server.media.codecs import (
    ALAW_TO_LINEAR,
    ULAW_TO_LINEAR,
    CodecError,
    Resampler,
    decoder_for,
    encode_alaw,
    encode_ulaw,
    opus_packet_samples,
    resample,
)
from tests.audio import dominant_frequency, noise, rms_db, tone, tone_level_db


def encode(codec: str, pcm: np.ndarray, rate: int, frame: int, layout: str = "mono") -> list[bytes]:
    """Encode int16 PCM ((n,) or (n, channels)) with an FFmpeg encoder, one packet per frame."""
    context = av.CodecContext.create(codec, "w")
    assert isinstance(context, av.AudioCodecContext)
    context.sample_rate = rate
    context.layout = layout
    context.format = "s16"
    context.open()
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    packets: list[bytes] = []
    for at in range(0, len(pcm) - frame + 1, frame):
        chunk = np.ascontiguousarray(pcm[at : at + frame]).reshape(1, frame * channels)
        audio = av.AudioFrame.from_ndarray(chunk, format="s16", layout=layout)
        audio.sample_rate = rate
        audio.pts = at
        packets += [bytes(p) for p in context.encode(audio)]
    packets += [bytes(p) for p in context.encode(None)]
    return packets


def ffmpeg_decode(codec: str, payload: bytes, rate: int) -> np.ndarray:
    context = av.CodecContext.create(codec, "r")
    assert isinstance(context, av.AudioCodecContext)
    context.sample_rate = rate
    context.layout = "mono"
    return np.concatenate([f.to_ndarray().reshape(-1) for f in context.decode(av.Packet(payload))])


# --- G.711 -------------------------------------------------------------------------------------


def test_ulaw_encoder_inverts_the_recorders_expansion_table() -> None:
    codes = np.frombuffer(encode_ulaw(ULAW_TO_LINEAR), dtype=np.uint8)
    expected = np.arange(256)
    expected[0x7F] = 0xFF  # mu-law's negative zero expands to 0, which encodes as positive zero
    assert codes.tolist() == expected.tolist()


def test_alaw_encoder_inverts_the_recorders_expansion_table() -> None:
    codes = np.frombuffer(encode_alaw(ALAW_TO_LINEAR), dtype=np.uint8)
    assert codes.tolist() == list(range(256))


@pytest.mark.parametrize(("encode", "table"), [(encode_ulaw, ULAW_TO_LINEAR),
                                               (encode_alaw, ALAW_TO_LINEAR)])
def test_g711_round_trip_stays_within_one_quantisation_step(encode, table) -> None:  # type: ignore[no-untyped-def]
    pcm = np.random.default_rng(1).integers(-32768, 32768, 20000).astype(np.int16)
    back = table[np.frombuffer(encode(pcm), dtype=np.uint8)].astype(np.int32)
    error = np.abs(back - pcm.astype(np.int32))
    # A segment's step is 1/16 (A-law) or 1/16..1/32 (mu-law) of its magnitude, plus the bias.
    assert np.all(error <= np.abs(pcm.astype(np.int32)) / 16 + 136)


@pytest.mark.parametrize("law,table", [("pcm_mulaw", ULAW_TO_LINEAR), ("pcm_alaw", ALAW_TO_LINEAR)])
def test_g711_expansion_is_bit_exact_with_ffmpeg_for_all_256_codes(
    law: str, table: np.ndarray
) -> None:
    assert np.array_equal(table, ffmpeg_decode(law, bytes(range(256)), 8000))


@pytest.mark.parametrize("name,law", [("PCMU", "pcm_mulaw"), ("PCMA", "pcm_alaw")])
def test_g711_batch_decode_matches_ffmpeg_packet_by_packet(name: str, law: str) -> None:
    signal = tone(1000, 0.2, 8000) + noise(0.2, 8000, rms=0.01)
    payloads = [b"".join(encode(law, signal, 8000, 1600))[i : i + 160] for i in range(0, 1600, 160)]
    payloads[3] = payloads[3][:80]  # a short packet in the middle
    decoder = decoder_for(name, 8000, 1, None, 8000)
    decoded = decoder.decode(payloads)
    assert [len(d) for d in decoded] == [len(p) for p in payloads]
    for payload, pcm in zip(payloads, decoded, strict=True):
        assert np.array_equal(pcm, ffmpeg_decode(law, payload, 8000))
    assert decoder.corrupt == 0


def test_g711_decoder_is_case_insensitive_and_accepts_memoryviews() -> None:
    decoder = decoder_for("pcmu", 8000, 1, None, 16000)
    data = memoryview(b"\x00\xff\x80\x7f")
    [pcm] = decoder.decode([data[:2]])
    assert pcm.tolist() == [-32124, 0]


# --- G.722 -------------------------------------------------------------------------------------


def test_g722_round_trip_is_16_khz_audio_on_an_8_khz_clock() -> None:
    signal = tone(1000, 1.0, 16000)
    payloads = encode("g722", signal, 16000, 320)  # 20 ms: 160 bytes, 160 RTP ticks
    assert {len(p) for p in payloads} == {160}
    decoder = decoder_for("G722", 8000, 1, None, 16000)
    assert (decoder.audio_rate, decoder.clock_rate) == (16000, 8000)
    decoded = decoder.decode(payloads)
    assert all(len(pcm) == 320 for pcm in decoded)
    pcm = np.concatenate(decoded)
    assert dominant_frequency(pcm[1600:], 16000) == pytest.approx(1000, abs=5)
    assert tone_level_db(pcm[1600:], 16000, 1000) == pytest.approx(
        tone_level_db(signal, 16000, 1000), abs=1.0
    )
    # One batch is the same as FFmpeg decoding the packets one by one with one context.
    context = av.CodecContext.create("g722", "r")
    assert isinstance(context, av.AudioCodecContext)
    context.sample_rate = 16000
    context.layout = "mono"
    one_by_one = np.concatenate(
        [f.to_ndarray().reshape(-1) for p in payloads for f in context.decode(av.Packet(p))]
    )
    assert np.array_equal(pcm, one_by_one)


# --- G.729 -------------------------------------------------------------------------------------


def test_g729_frames_decode_to_80_samples_each_and_batching_changes_nothing() -> None:
    rng = np.random.default_rng(7)
    payloads = [rng.integers(0, 256, 20, dtype=np.uint8).tobytes() for _ in range(6)]
    decoder = decoder_for("G729", 8000, 1, "annexb=yes", 8000)
    batch = decoder.decode(payloads)
    assert [len(p) for p in batch] == [160] * 6
    one_by_one_decoder = decoder_for("G729", 8000, 1, None, 8000)
    one_by_one = [one_by_one_decoder.decode([p])[0] for p in payloads]
    assert all(np.array_equal(a, b) for a, b in zip(batch, one_by_one, strict=True))
    assert decoder.corrupt == 0


def test_g729_annex_b_sid_frame_is_10_ms_of_silence() -> None:
    decoder = decoder_for("G729", 8000, 1, None, 8000)
    speech = bytes(range(10, 20))
    sid_only, speech_then_sid = decoder.decode([b"\x12\x34", speech + b"\x12\x34"])
    assert len(sid_only) == 80 and not sid_only.any()
    assert len(speech_then_sid) == 160 and not speech_then_sid[80:].any()
    assert decoder.corrupt == 0


@pytest.mark.parametrize("bad", [b"", b"\x01", bytes(7), bytes(13), bytes(25)])
def test_g729_payload_of_impossible_length_is_silence_and_counted(bad: bytes) -> None:
    decoder = decoder_for("G729", 8000, 1, None, 8000)
    good = bytes(range(20))
    before, broken, after = decoder.decode([good, bad, good])
    assert len(before) == len(after) == 160
    assert not broken.any()
    # The frames it would have held, or a typical payload's length when it holds none.
    assert len(broken) == (math.ceil(len(bad) / 10) * 80 or 160)
    assert decoder.corrupt == 1


# --- Opus --------------------------------------------------------------------------------------


def test_opus_round_trip_at_48_khz() -> None:
    signal = tone(1000, 1.0, 48000)
    payloads = encode("libopus", signal, 48000, 960)
    decoder = decoder_for("opus", 48000, 2, "useinbandfec=1", 16000)
    assert decoder.audio_rate == 48000
    decoded = decoder.decode(payloads)
    assert all(len(pcm) == 960 for pcm in decoded)
    pcm = np.concatenate(decoded)[4800:]
    assert dominant_frequency(pcm, 48000) == pytest.approx(1000, abs=5)
    assert tone_level_db(pcm, 48000, 1000) == pytest.approx(
        tone_level_db(signal, 48000, 1000), abs=1.5
    )
    assert decoder.corrupt == 0


def test_stereo_opus_is_folded_to_mono_with_both_channels_audible() -> None:
    left, right = tone(600, 1.0, 48000), tone(1500, 1.0, 48000)
    payloads = encode("libopus", np.stack([left, right], axis=1), 48000, 960, layout="stereo")
    pcm = np.concatenate(decoder_for("OPUS", 48000, 2, None, 8000).decode(payloads))[4800:]
    assert len(pcm) == (len(payloads) * 960) - 4800
    assert tone_level_db(pcm, 48000, 600) > -20
    assert tone_level_db(pcm, 48000, 1500) > -20


@pytest.mark.parametrize("bad", [b"", b"\x03", b"\xff", bytes(1500)])
def test_corrupt_opus_payload_is_silence_and_decoding_goes_on(bad: bytes) -> None:
    payloads = encode("libopus", tone(1000, 0.2, 48000), 48000, 960)
    decoder = decoder_for("opus", 48000, 2, None, 48000)
    decoded = decoder.decode([*payloads[:5], bad, *payloads[5:]])
    broken = decoded[5]
    assert not broken.any()
    assert len(broken) == (opus_packet_samples(bad) or 960)
    assert decoder.corrupt == 1
    assert tone_level_db(np.concatenate(decoded[7:]), 48000, 1000) > -20


@pytest.mark.parametrize(
    "payload,samples",
    [
        (bytes([0 << 3 | 0]), 480),  # SILK 10 ms, one frame
        (bytes([1 << 3 | 0]), 960),  # SILK 20 ms
        (bytes([15 << 3 | 1]), 1920),  # hybrid 20 ms, two frames
        (bytes([16 << 3 | 2]), 240),  # CELT 2.5 ms, two frames
        (bytes([31 << 3 | 3, 3]), 2880),  # CELT 20 ms, code 3 with three frames
        (bytes([3 << 3 | 3, 3]), None),  # 180 ms: more than an Opus packet may hold
        (bytes([31 << 3 | 3]), None),  # code 3 without its frame count byte
        (b"", None),
    ],
)
def test_opus_packet_duration_from_toc(payload: bytes, samples: int | None) -> None:
    assert opus_packet_samples(payload) == samples


# --- CN and unknown codecs ---------------------------------------------------------------------


def test_comfort_noise_yields_no_audio() -> None:
    decoder = decoder_for("CN", 8000, 1, None, 8000)
    assert [len(p) for p in decoder.decode([b"\x40", b"\x50\x01\x02"])] == [0, 0]


@pytest.mark.parametrize(
    "name,rate", [("G726-32", 8000), ("PCMU", 16000), ("opus", 16000), ("red", 48000)]
)
def test_unsupported_codec_raises_codec_error(name: str, rate: int) -> None:
    with pytest.raises(CodecError):
        decoder_for(name, rate, 1, None, 8000)


# --- Resampling --------------------------------------------------------------------------------

RATE_PAIRS = [
    (8000, 16000),
    (8000, 48000),
    (16000, 48000),
    (16000, 8000),
    (48000, 8000),
    (48000, 16000),
]


@pytest.mark.parametrize("from_rate,to_rate", RATE_PAIRS)
def test_resampled_tone_keeps_frequency_level_and_phase(from_rate: int, to_rate: int) -> None:
    signal = tone(1000, 0.5, from_rate)
    out = resample(signal, from_rate, to_rate)
    assert len(out) == len(signal) * to_rate // from_rate
    # No delay: the output is the same sine sampled at the new rate, to within a few LSB.
    ideal = tone(1000, 0.5, to_rate).astype(np.int32)
    edge = to_rate // 100
    assert np.abs(out[edge:-edge] - ideal[edge:-edge]).max() <= 4


@pytest.mark.parametrize("from_rate,to_rate", RATE_PAIRS)
def test_streaming_resampler_output_does_not_depend_on_chunking(
    from_rate: int, to_rate: int
) -> None:
    signal = noise(0.5, from_rate, rms=0.1, seed=3)
    whole = resample(signal, from_rate, to_rate)
    resampler = Resampler(from_rate, to_rate)
    rng = np.random.default_rng(5)
    pieces, fed, made = [], 0, 0
    while made < len(whole):
        n_out = min(int(rng.integers(0, 700)), len(whole) - made)
        need = resampler.inputs_needed(made + n_out)
        chunk = signal[fed:need]
        chunk = np.concatenate([chunk, np.zeros(max(0, need - max(fed, len(signal))), np.int16)])
        fed = max(fed, need)
        pieces.append(resampler.process(chunk, n_out))
        made += n_out
    assert np.array_equal(np.concatenate(pieces), whole)


def test_downsampling_rejects_what_the_lower_rate_cannot_hold() -> None:
    above_nyquist = tone(5000, 0.5, 16000, amplitude=0.5)
    assert rms_db(resample(above_nyquist, 16000, 8000)[80:-80]) < -60


def test_upsampling_leaves_no_audible_image() -> None:
    out = resample(tone(3000, 0.5, 8000), 8000, 16000)
    assert tone_level_db(out[160:-160], 16000, 5000) < -60  # the 8000-3000 Hz image


@pytest.mark.parametrize("from_rate,to_rate", [(44100, 8000), (8000, 12345), (0, 8000)])
def test_non_integer_ratio_is_refused(from_rate: int, to_rate: int) -> None:
    with pytest.raises(CodecError):
        Resampler(from_rate, to_rate)
