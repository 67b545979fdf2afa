"""The audio test helpers must find what is there and, above all, not find what is not."""

from __future__ import annotations

import io
import math
from fractions import Fraction

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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

RATE = 8000


# --- generators -----------------------------------------------------------------------------


def test_tone_has_requested_length_amplitude_and_frequency() -> None:
    x = tone(440, 1.5, RATE, amplitude=0.5)
    assert x.dtype == np.int16 and x.shape == (12000,)
    assert abs(int(np.abs(x).max()) - round(0.5 * 32767)) <= 2
    assert dominant_frequency(x, RATE) == pytest.approx(440, abs=0.5)


def test_silence_is_digital_zero() -> None:
    s = silence(0.25, 16000)
    assert s.shape == (4000,) and s.dtype == np.int16 and not s.any()


def test_stereo_puts_left_on_channel_0_and_right_on_channel_1() -> None:
    pcm = stereo(tone(440, 1, RATE), silence(1, RATE))
    assert pcm.shape == (RATE, 2) and pcm.dtype == np.int16
    assert dominant_frequency(pcm[:, 0], RATE) == pytest.approx(440, abs=0.5)
    assert not pcm[:, 1].any()


def test_stereo_refuses_channels_of_different_length() -> None:
    with pytest.raises(ValueError):
        stereo(tone(440, 1, RATE), silence(0.5, RATE))


def test_multichannel_keeps_channel_order() -> None:
    pcm = multichannel(tone(300, 1, RATE), tone(700, 1, RATE), tone(1100, 1, RATE))
    found = [dominant_frequency(pcm[:, c], RATE) for c in range(3)]
    assert found == pytest.approx([300, 700, 1100], abs=0.5)


def test_noise_has_requested_rms() -> None:
    assert rms_db(noise(2, RATE, rms=0.1)) == pytest.approx(-20, abs=0.2)


def test_speech_like_is_deterministic_and_has_pauses_and_talk() -> None:
    a = speech_like(5, RATE, seed=3)
    assert np.array_equal(a, speech_like(5, RATE, seed=3))
    assert not np.array_equal(a, speech_like(5, RATE, seed=4))
    levels = [rms_db(a[i : i + 160]) for i in range(0, len(a), 160)]
    assert sum(lv == -math.inf for lv in levels) > 10  # pauses
    assert sum(lv > -30 for lv in levels) > 50  # talk


# --- rms_db and tone_level_db ---------------------------------------------------------------


def test_rms_of_full_scale_sine_is_minus_3_db_and_silence_is_minus_infinity() -> None:
    t = np.arange(RATE) / RATE
    assert rms_db(np.sin(2 * np.pi * 100 * t)) == pytest.approx(-3.01, abs=0.01)
    assert rms_db(silence(1, RATE)) == -math.inf


def test_int16_and_float_signals_measure_the_same() -> None:
    x = tone(440, 1, RATE, amplitude=0.25)
    assert rms_db(x) == pytest.approx(rms_db(x / 32768.0), abs=1e-6)
    assert tone_level_db(x, RATE, 440) == pytest.approx(tone_level_db(x / 32768.0, RATE, 440))


def test_tone_level_reads_the_amplitude_in_dbfs() -> None:
    assert tone_level_db(tone(440, 1, RATE, amplitude=0.3), RATE, 440) == pytest.approx(
        20 * math.log10(0.3), abs=0.05
    )
    assert tone_level_db(tone(440, 1, RATE, amplitude=0.003), RATE, 440) == pytest.approx(
        20 * math.log10(0.003), abs=0.1
    )


def test_tone_level_does_not_see_a_tone_at_another_frequency() -> None:
    loud_other = tone(1000, 1, RATE, amplitude=0.9)
    assert tone_level_db(loud_other, RATE, 440) < -80
    # Even 30 Hz away, over one second, it is far down.
    assert tone_level_db(tone(470, 1, RATE, amplitude=0.9), RATE, 440) < -60


def test_tone_level_of_silence_and_noise_is_low() -> None:
    assert tone_level_db(silence(1, RATE), RATE, 440) == -math.inf
    assert tone_level_db(noise(1, RATE, rms=0.03), RATE, 440) < -50


def test_tone_level_finds_a_tone_buried_in_noise() -> None:
    mix = tone(440, 1, RATE, amplitude=0.1).astype(np.int32) + noise(1, RATE, rms=0.1)
    assert tone_level_db(mix.astype(np.int16), RATE, 440) == pytest.approx(-20, abs=0.5)


def test_tone_level_refuses_multichannel_input() -> None:
    with pytest.raises(ValueError):
        tone_level_db(stereo(tone(440, 1, RATE), tone(440, 1, RATE)), RATE, 440)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    freq=st.floats(min_value=100, max_value=3500),
    amplitude=st.floats(min_value=0.01, max_value=0.95),
)
def test_level_and_frequency_of_any_tone(freq: float, amplitude: float) -> None:
    x = tone(freq, 0.5, RATE, amplitude=amplitude)
    assert tone_level_db(x, RATE, freq) == pytest.approx(20 * math.log10(amplitude), abs=0.1)
    assert dominant_frequency(x, RATE) == pytest.approx(freq, abs=1.0)
    # And the same tone is not reported at a clearly different frequency.
    assert tone_level_db(x, RATE, freq * 1.25) < 20 * math.log10(amplitude) - 50


# --- dominant_frequency ---------------------------------------------------------------------


def test_dominant_frequency_picks_the_stronger_of_two_tones() -> None:
    mix = tone(600, 1, RATE, amplitude=0.1) + tone(1700, 1, RATE, amplitude=0.3)
    assert dominant_frequency(mix, RATE) == pytest.approx(1700, abs=0.5)


def test_dominant_frequency_between_fft_bins_and_at_48k() -> None:
    assert dominant_frequency(tone(1234.5, 0.3, 48000), 48000) == pytest.approx(1234.5, abs=1)


def test_dominant_frequency_of_silence_is_an_error() -> None:
    with pytest.raises(ValueError):
        dominant_frequency(silence(1, RATE), RATE)


# --- active_segments ------------------------------------------------------------------------


def _burst(freq: float, start: float, end: float, total: float, rate: int = RATE) -> np.ndarray:
    x = silence(total, rate)
    a, b = round(start * rate), round(end * rate)
    x[a:b] = tone(freq, end - start, rate)[: b - a]
    return x


def test_active_segment_edges_are_found_within_5_ms() -> None:
    segments = active_segments(_burst(440, 0.5, 1.5, 2.0), RATE, 440)
    assert len(segments) == 1
    start, end = segments[0]
    assert start == pytest.approx(0.5, abs=0.005) and end == pytest.approx(1.5, abs=0.005)


def test_two_bursts_are_two_segments() -> None:
    x = _burst(440, 0.2, 0.6, 2.0) + _burst(440, 1.0, 1.7, 2.0)
    segments = active_segments(x, RATE, 440)
    assert len(segments) == 2
    assert segments[0] == pytest.approx((0.2, 0.6), abs=0.005)
    assert segments[1] == pytest.approx((1.0, 1.7), abs=0.005)


def test_tone_filling_the_signal_runs_from_start_to_end() -> None:
    assert active_segments(tone(440, 1.0, RATE), RATE, 440) == [(0.0, 1.0)]


def test_no_segments_in_silence_noise_or_another_tone() -> None:
    assert active_segments(silence(1, RATE), RATE, 440) == []
    assert active_segments(noise(1, RATE, rms=0.01), RATE, 440) == []
    assert active_segments(tone(1000, 1, RATE, amplitude=0.9), RATE, 440) == []


def test_other_tone_at_the_same_time_does_not_move_the_edges() -> None:
    x = _burst(440, 0.3, 0.9, 1.2) + tone(1000, 1.2, RATE)
    assert active_segments(x, RATE, 440) == [pytest.approx((0.3, 0.9), abs=0.005)]
    assert active_segments(x, RATE, 1000) == [pytest.approx((0.0, 1.2), abs=0.005)]


def test_tone_below_threshold_is_not_active() -> None:
    quiet = tone(440, 1, RATE, amplitude=0.005)  # -46 dBFS
    assert active_segments(quiet, RATE, 440) == []
    assert len(active_segments(quiet, RATE, 440, threshold_db=-50)) == 1


# --- decode_ogg_opus ------------------------------------------------------------------------


def _ogg_opus_by_pyav_muxer(pcm: np.ndarray, rate: int) -> bytes:
    """An Ogg Opus file made by ffmpeg's own muxer, independent of our encoder."""
    out = io.BytesIO()
    with av.open(out, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=rate, layout="stereo")
        stream.codec_context.bit_rate = 64000
        stream.codec_context.time_base = Fraction(1, rate)
        for i in range(0, len(pcm), 960):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(pcm[i : i + 960]).reshape(1, -1), format="s16", layout="stereo"
            )
            frame.sample_rate = rate
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def test_decode_ogg_opus_returns_float_channels_at_48k() -> None:
    pcm = stereo(tone(440, 1.0, 48000), tone(1000, 1.0, 48000))
    samples, rate = decode_ogg_opus(_ogg_opus_by_pyav_muxer(pcm, 48000))
    assert rate == 48000
    assert samples.dtype == np.float32 and samples.shape[1] == 2
    assert abs(len(samples) - 48000) <= 960
    middle = samples[12000:36000]
    assert dominant_frequency(middle[:, 0], rate) == pytest.approx(440, abs=1)
    assert dominant_frequency(middle[:, 1], rate) == pytest.approx(1000, abs=1)
    assert tone_level_db(middle[:, 0], rate, 440) == pytest.approx(20 * math.log10(0.3), abs=1)


def test_decode_ogg_opus_of_garbage_is_an_error() -> None:
    with pytest.raises(av.FFmpegError):
        decode_ogg_opus(b"not an ogg file at all" * 10)


def test_onset_of_another_sound_or_a_click_is_not_a_segment() -> None:
    onset = np.concatenate([silence(1, RATE), tone(1000, 1, RATE, amplitude=0.9)])
    click = silence(2, RATE)
    click[RATE] = 30000
    for x in (onset, click):
        assert active_segments(x, RATE, 440) == []
        # ...although, counted window by window, they do splatter energy at 440 Hz.
        assert len(active_segments(x, RATE, 440, min_duration_s=0)) == 1


def test_short_tone_of_dtmf_length_is_found() -> None:
    x = _burst(440, 0.5, 0.56, 1.0)
    assert active_segments(x, RATE, 440) == [pytest.approx((0.5, 0.56), abs=0.005)]


def test_a_longer_window_tells_close_tones_apart() -> None:
    near = tone(500, 1, RATE, amplitude=0.9)
    assert active_segments(near, RATE, 440) != []  # 60 Hz is inside a 20 ms window's lobe
    assert active_segments(near, RATE, 440, window_s=0.1) == []
