"""StreamTimeline: real RTP packets in, PCM on the recording's timeline out.

The tests play the lead's pipeline: packets are pushed in arrival order, the timeline is pulled
every 20 ms at `now - playout_delay` and drained at the end. With G.711 at 8 kHz nothing is
resampled, so the output can be compared sample for sample with the decoded payloads placed at
their expected times; other rates are checked with tone measurements.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from typing import Any

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from siprec_server.media.codecs import ULAW_TO_LINEAR, RtpCodec
from siprec_server.media.dtmf import DtmfEvent
from siprec_server.media.jitter import StreamTimeline, TimelineError
from siprec_server.media.rtp import parse_rtp
from tests.audio import active_segments, noise, tone, tone_level_db

PD = 0.12
PCMU = {0: RtpCodec("PCMU", 8000)}
PCMU_DTMF = {0: RtpCodec("PCMU", 8000), 101: RtpCodec("telephone-event", 8000)}
Packet = tuple[float, bytes]


def ulaw(pcm: np.ndarray) -> bytes:
    """mu-law bytes from FFmpeg's encoder (an independent G.711 implementation)."""
    context = av.CodecContext.create("pcm_mulaw", "w")
    assert isinstance(context, av.AudioCodecContext)
    context.sample_rate = 8000
    context.layout = "mono"
    context.format = "s16"
    context.open()
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in context.encode(frame))


def rtp(
    seq: int, ts: int, payload: bytes, *, pt: int = 0, ssrc: int = 0x5EC0, marker: bool = False
) -> bytes:
    header = struct.pack(
        "!BBHII", 0x80, pt | (0x80 if marker else 0), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc
    )
    return header + payload


def event(code: int, duration: int, *, end: bool = False, volume: int = 10) -> bytes:
    return struct.pack("!BBH", code, (0x80 if end else 0) | volume, duration)


def stream(
    payload: bytes,
    *,
    start: float,
    seq0: int = 1000,
    ts0: int = 90000,
    ssrc: int = 0x5EC0,
    frame: int = 160,
    ptime: float = 0.02,
    pt: int = 0,
) -> list[Packet]:
    """Packets carrying `payload` in frames, sent on time from `start` (no jitter yet)."""
    count = len(payload) // frame
    return [
        (
            start + i * ptime,
            rtp(seq0 + i, ts0 + i * frame, payload[i * frame : (i + 1) * frame], pt=pt, ssrc=ssrc),
        )
        for i in range(count)
    ]


def play(
    timeline: StreamTimeline, packets: Iterable[Packet], end: float, step: float = 0.02
) -> np.ndarray:
    """Deliver packets in arrival order, pulling `now - PD` every `step` and `end` at the end."""
    queue = sorted(packets, key=lambda p: p[0])
    chunks: list[np.ndarray] = []
    at = 0
    ticks = 0
    while True:
        ticks += 1
        now = ticks * step
        while at < len(queue) and queue[at][0] <= now:
            timeline.push(queue[at][1], queue[at][0])
            at += 1
        if now - PD >= end:
            break
        chunks.append(timeline.pull(now - PD))
    chunks.append(timeline.pull(end))
    out = np.concatenate(chunks)
    assert len(out) == round(end * timeline.output_rate)
    return out


def placed(duration: float, *clips: tuple[float, np.ndarray], rate: int = 8000) -> np.ndarray:
    """The expected timeline: silence with each clip at its start time."""
    out = np.zeros(round(duration * rate), dtype=np.int16)
    for start, pcm in clips:
        at = round(start * rate)
        out[at : at + len(pcm)] = pcm[: len(out) - at]
    return out


def expand(mu: bytes) -> np.ndarray:
    return ULAW_TO_LINEAR[np.frombuffer(mu, dtype=np.uint8)]


# --- placement ---------------------------------------------------------------------------------


def test_lossy_reordered_duplicated_stream_is_placed_sample_exact() -> None:
    rng = np.random.default_rng(2)
    mu = ulaw(tone(1000, 3.0, 8000) + noise(3.0, 8000, rms=0.01))
    sent = stream(mu, start=0.3)
    lost = set(rng.choice(np.arange(1, len(sent)), size=len(sent) // 20, replace=False).tolist())
    packets: list[Packet] = []
    duplicates = 0
    for i, (at, data) in enumerate(sent):
        if i in lost:
            continue
        # Up to 60 ms of jitter reorders neighbours; the first packet is on time.
        arrival = at + (rng.uniform(0, 0.06) if i else 0.0)
        packets.append((arrival, data))
        if rng.random() < 0.05:
            packets.append((arrival + rng.uniform(0, 0.3), data))
            duplicates += 1
    timeline = StreamTimeline(PCMU, output_rate=8000, playout_delay=PD)
    out = play(timeline, packets, end=3.5)

    clips = [(0.3 + 0.02 * i, expand(mu[160 * i : 160 * (i + 1)])) for i in range(150)]
    assert np.array_equal(out, placed(3.5, *(c for i, c in enumerate(clips) if i not in lost)))
    for i in lost:  # a lost frame is silence, not a neighbour's audio moved in
        slot = out[round((0.3 + 0.02 * i) * 8000) :][:160]
        assert not slot.any()
    stats = timeline.stats
    assert (stats.received, stats.lost, stats.duplicates) == (
        150 - len(lost),
        len(lost),
        duplicates,
    )
    assert (stats.late, stats.reanchors, stats.decoded) == (0, 0, 150 - len(lost))


def test_lossy_stream_at_16_khz_has_tone_in_received_frames_and_silence_in_lost_ones() -> None:
    mu = ulaw(tone(1000, 2.0, 8000))
    sent = stream(mu, start=0.5)
    lost = {10, 11, 40, 77}
    timeline = StreamTimeline(PCMU, output_rate=16000, playout_delay=PD)
    out = play(timeline, [p for i, p in enumerate(sent) if i not in lost], end=3.0)
    assert len(out) == 48000
    for i in range(len(sent)):
        middle = out[round((0.5 + 0.02 * i) * 16000) + 80 :][:160]  # 5-15 ms into the frame
        if i in lost:
            assert np.abs(middle).max() < 100
        else:
            assert tone_level_db(middle, 16000, 1000) == pytest.approx(-10.5, abs=1.5)
    assert active_segments(out, 16000, 1000, window_s=0.005)[0][0] == pytest.approx(0.5, abs=0.005)


def test_audio_starts_at_the_first_packets_arrival_and_earlier_is_silence() -> None:
    mu = ulaw(tone(1000, 1.0, 8000))
    timeline = StreamTimeline(PCMU, output_rate=8000)
    out = play(timeline, stream(mu, start=2.25), end=4.0)
    assert np.array_equal(out, placed(4.0, (2.25, expand(mu))))


def test_sequence_and_timestamp_wrap_are_seamless() -> None:
    mu = ulaw(tone(1000, 2.0, 8000))
    sent = stream(mu, start=0.1, seq0=65500, ts0=2**32 - 4000)
    timeline = StreamTimeline(PCMU, output_rate=8000)
    out = play(timeline, sent, end=2.5)
    assert np.array_equal(out, placed(2.5, (0.1, expand(mu))))
    assert (timeline.stats.lost, timeline.stats.reanchors) == (0, 0)


def test_rtp_packet_objects_are_accepted_as_well_as_bytes() -> None:
    mu = ulaw(tone(1000, 0.5, 8000))
    timeline = StreamTimeline(PCMU, output_rate=8000)
    out = play(timeline, [(at, data) for at, data in stream(mu, start=0.0)], end=1.0)
    objects = StreamTimeline(PCMU, output_rate=8000)
    for at, data in stream(mu, start=0.0):
        objects.push(parse_rtp(data), at)
    assert np.array_equal(objects.pull(1.0), out)


# --- discontinuities -----------------------------------------------------------------------------


def test_new_ssrc_is_anchored_at_its_own_first_packet() -> None:
    first = ulaw(tone(1000, 1.0, 8000))
    second = ulaw(tone(500, 1.0, 8000))
    packets = stream(first, start=0.2) + stream(
        second, start=1.5, seq0=7, ts0=123456789, ssrc=0xB0B
    )
    timeline = StreamTimeline(PCMU, output_rate=8000)
    out = play(timeline, packets, end=3.0)
    assert np.array_equal(out, placed(3.0, (0.2, expand(first)), (1.5, expand(second))))
    assert timeline.stats.ssrc_changes == 1
    assert timeline.stats.lost == 0


def test_hold_of_two_seconds_is_two_seconds_of_silence_not_a_time_shift() -> None:
    mu = ulaw(tone(1000, 2.0, 8000))
    before = stream(mu[:8000], start=0.5)
    # The sender's clock ran on through the hold: timestamps jump by 3 s (1 s of audio + hold).
    after = stream(mu[8000:], start=3.5, seq0=1050, ts0=90000 + 3 * 8000)
    timeline = StreamTimeline(PCMU, output_rate=8000)
    out = play(timeline, before + after, end=5.0)
    assert np.array_equal(out, placed(5.0, (0.5, expand(mu[:8000])), (3.5, expand(mu[8000:]))))
    assert not out[round(1.5 * 8000) : round(3.5 * 8000)].any()
    assert (timeline.stats.reanchors, timeline.stats.lost, timeline.stats.late) == (0, 0, 0)


def test_resume_with_frozen_timestamps_and_marker_is_placed_at_its_arrival() -> None:
    mu = ulaw(tone(1000, 2.0, 8000))
    before = stream(mu[:8000], start=0.5)
    # This sender stopped its clock during the hold and flags the new talkspurt.
    after = stream(mu[8000:], start=3.5, seq0=1050, ts0=90000 + 8000)
    after[0] = (after[0][0], rtp(1050, 90000 + 8000, mu[8000:8160], marker=True))
    timeline = StreamTimeline(PCMU, output_rate=8000)
    out = play(timeline, before + after, end=5.0)
    assert np.array_equal(out, placed(5.0, (0.5, expand(mu[:8000])), (3.5, expand(mu[8000:]))))
    assert timeline.stats.reanchors == 1
    assert timeline.stats.late == 0


def test_timestamp_jump_without_marker_reanchors_instead_of_leaving_a_hole() -> None:
    mu = ulaw(tone(1000, 2.0, 8000))
    before = stream(mu[:8000], start=0.5)
    after = stream(mu[8000:], start=1.5, seq0=1050, ts0=90000 + 8000 + 10 * 8000)  # +10 s
    timeline = StreamTimeline(PCMU, output_rate=8000)
    out = play(timeline, before + after, end=3.0)
    assert np.array_equal(out, placed(3.0, (0.5, expand(mu))))
    assert (timeline.stats.reanchors, timeline.stats.overflow) == (1, 0)


def test_timestamp_jumping_backwards_reanchors() -> None:
    mu = ulaw(tone(1000, 2.0, 8000))
    before = stream(mu[:8000], start=0.5)
    after = stream(mu[8000:], start=1.5, seq0=1050, ts0=5)  # ts restarted, same SSRC and seq
    timeline = StreamTimeline(PCMU, output_rate=8000)
    out = play(timeline, before + after, end=3.0)
    assert np.array_equal(out, placed(3.0, (0.5, expand(mu))))
    assert timeline.stats.reanchors == 1


def test_packet_arriving_after_its_audio_was_pulled_is_counted_late_and_dropped() -> None:
    mu = ulaw(tone(1000, 1.0, 8000))
    sent = stream(mu, start=0.5)
    sent[20] = (sent[20][0] + 0.3, sent[20][1])  # 300 ms late with a 120 ms playout delay
    timeline = StreamTimeline(PCMU, output_rate=8000)
    out = play(timeline, sent, end=2.0)
    hole = expand(mu).copy()
    hole[20 * 160 : 21 * 160] = 0
    assert np.array_equal(out, placed(2.0, (0.5, hole)))
    assert (timeline.stats.late, timeline.stats.lost) == (1, 0)


def test_network_stall_drops_the_stalled_audio_and_keeps_the_anchor() -> None:
    mu = ulaw(tone(1000, 4.0, 8000))
    sent = stream(mu, start=0.5)
    # Packets sent between 1.5 s and 3.0 s all arrive in one burst at 3.0 s.
    stalled = [(max(at, 3.0) if 1.5 <= at < 3.0 else at, data) for at, data in sent]
    timeline = StreamTimeline(PCMU, output_rate=8000)
    out = play(timeline, stalled, end=5.0)
    assert timeline.stats.reanchors == 0
    assert timeline.stats.late > 60
    segments = active_segments(out, 8000, 1000)
    assert segments[0][0] == pytest.approx(0.5, abs=0.005)
    assert segments[-1][1] == pytest.approx(4.5, abs=0.005)  # audio after the stall not moved


@pytest.mark.parametrize("ptime_at_receiver", [0.0201, 0.0199])
def test_sender_clock_drift_is_followed_by_reanchoring(ptime_at_receiver: float) -> None:
    mu = ulaw(tone(1000, 30.0, 8000))
    # The sender's 20 ms packets arrive every 20.1 or 19.9 ms: its clock is 0.5 % off ours.
    sent = stream(mu, start=0.5, ptime=ptime_at_receiver)
    timeline = StreamTimeline(PCMU, output_rate=8000)
    end = sent[-1][0] + 0.5
    out = play(timeline, sent, end=end)
    stats = timeline.stats
    assert stats.reanchors >= 2
    assert stats.late <= stats.reanchors  # at most the packet under a re-anchoring seam
    assert stats.overflow == 0
    # The last packet's audio is still where it arrived, to within the playout delay.
    tail = active_segments(out, 8000, 1000, window_s=0.01)[-1]
    assert tail[1] == pytest.approx(sent[-1][0] + 0.02, abs=PD / 2 + 0.01)


def test_packets_beyond_max_buffer_are_dropped_and_counted() -> None:
    mu = ulaw(tone(1000, 5.0, 8000))
    timeline = StreamTimeline(PCMU, output_rate=8000, playout_delay=PD, max_buffer=1.0)
    for at, data in stream(mu, start=0.0):  # nobody pulls for five seconds
        timeline.push(data, at)
    assert timeline.stats.overflow > 100
    out = timeline.pull(5.0)
    assert len(out) == 40000
    assert np.array_equal(out[:8000], expand(mu[:8000]))


def test_garbage_rtcp_and_unknown_payload_types_are_counted_not_played() -> None:
    mu = ulaw(tone(1000, 1.0, 8000))
    sent = stream(mu, start=0.5)
    noise_packets: list[Packet] = [
        (0.7, b"\x00\x01garbage"),
        (0.8, bytes([0x81, 200]) + bytes(26)),  # RTCP sender report on the muxed port
        (0.9, rtp(999, 5, b"\x00" * 160, pt=18, ssrc=0x5EC0)),  # G.729 never negotiated
    ]
    timeline = StreamTimeline(PCMU, output_rate=8000)
    out = play(timeline, sent + noise_packets, end=2.0)
    assert np.array_equal(out, placed(2.0, (0.5, expand(mu))))
    assert timeline.stats.bad_packets == 2
    assert timeline.stats.unknown_payload_types == 1


def test_stream_without_a_decodable_codec_is_silence_with_every_packet_counted() -> None:
    timeline = StreamTimeline({96: RtpCodec("AMR", 8000)}, output_rate=16000)
    for i in range(50):
        timeline.push(rtp(i, 160 * i, b"\x3c" * 32, pt=96), 0.02 * i)
    out = timeline.pull(1.5)
    assert len(out) == 24000 and not out.any()
    assert timeline.stats.unknown_payload_types == 50


def test_pulls_that_do_not_advance_return_nothing_and_bad_times_are_refused() -> None:
    timeline = StreamTimeline(PCMU, output_rate=8000)
    assert len(timeline.pull(-1.0)) == 0
    assert len(timeline.pull(0.5)) == 4000
    assert len(timeline.pull(0.25)) == 0
    assert len(timeline.pull(0.5)) == 0
    assert len(timeline.pull(0.75)) == 2000
    with pytest.raises(TimelineError):
        timeline.pull(math.nan)
    timeline.push(rtp(1, 1, b"\xff" * 160), math.inf)
    assert timeline.stats.bad_packets == 1


# --- other codecs ------------------------------------------------------------------------------


def encode(codec: str, pcm: np.ndarray, rate: int, frame: int) -> list[bytes]:
    context = av.CodecContext.create(codec, "w")
    assert isinstance(context, av.AudioCodecContext)
    context.sample_rate = rate
    context.layout = "mono"
    context.format = "s16"
    context.open()
    out: list[bytes] = []
    for at in range(0, len(pcm) - frame + 1, frame):
        audio = av.AudioFrame.from_ndarray(
            pcm[at : at + frame].reshape(1, -1), format="s16", layout="mono"
        )
        audio.sample_rate = rate
        audio.pts = at
        out += [bytes(p) for p in context.encode(audio)]
    return out


@pytest.mark.parametrize("output_rate", [8000, 16000, 48000])
def test_g722_stream_uses_an_8_khz_clock_for_16_khz_audio(output_rate: int) -> None:
    payloads = encode("g722", tone(1000, 2.0, 16000), 16000, 320)
    packets = [(0.5 + 0.02 * i, rtp(i, 160 * i, p, pt=9)) for i, p in enumerate(payloads)]
    timeline = StreamTimeline({9: RtpCodec("G722", 8000)}, output_rate=output_rate)
    out = play(timeline, packets, end=3.0)
    segments: list[Any] = active_segments(out, output_rate, 1000)
    assert segments == [(pytest.approx(0.5, abs=0.01), pytest.approx(2.5, abs=0.01))]
    assert tone_level_db(
        out[round(0.7 * output_rate) : round(2.3 * output_rate)], output_rate, 1000
    ) == (pytest.approx(-10.5, abs=1.5))


@pytest.mark.parametrize("output_rate", [8000, 16000, 48000])
def test_opus_stream_lands_on_the_recording_rate(output_rate: int) -> None:
    payloads = encode("libopus", tone(1000, 2.0, 48000), 48000, 960)
    packets = [(0.5 + 0.02 * i, rtp(i, 960 * i, p, pt=111)) for i, p in enumerate(payloads)]
    del packets[30]  # one lost packet: 20 ms of silence, nothing shifted
    timeline = StreamTimeline(
        {111: RtpCodec("opus", 48000, 2), 101: RtpCodec("telephone-event", 48000)},
        output_rate=output_rate,
    )
    out = play(timeline, packets, end=3.0)
    segments = active_segments(out, output_rate, 1000, window_s=0.005)
    assert segments[0][1] == pytest.approx(0.5 + 0.02 * 30, abs=0.01)
    assert segments[1][0] == pytest.approx(0.5 + 0.02 * 31, abs=0.01)
    assert segments[-1][1] == pytest.approx(2.5, abs=0.02)
    assert timeline.stats.lost == 1


# --- DTMF --------------------------------------------------------------------------------------


KEYPAD = "123A456B789C*0#D"
ROWS, COLUMNS = (697, 770, 852, 941), (1209, 1336, 1477, 1633)


def dtmf_call(
    *, end_packets: int = 3, code: int = 5, press: tuple[float, float] = (1.0, 1.2)
) -> list[Packet]:
    """One key press: see `dtmf_presses`."""
    return dtmf_presses([(code, press, end_packets)])


def dtmf_presses(presses: list[tuple[int, tuple[float, float], int]]) -> list[Packet]:
    """Audio (a quiet 1 kHz 'voice' plus each key's in-band DTMF tone) and RFC 4733 events.

    The stream starts at 0.5 s with timestamp 90000 and lasts 2 s; each press is
    (event code, (down, up) in timeline seconds, number of end packets sent).
    """
    audio = tone(1000, 2.0, 8000, amplitude=0.1)
    sends: list[tuple[float, int, int, bytes]] = []  # (time, pt, ts, payload)
    for code, (down, up), end_packets in presses:
        key = KEYPAD.index("0123456789*#ABCD"[code])
        a, b = round((down - 0.5) * 8000), round((up - 0.5) * 8000)
        for freq in (ROWS[key // 4], COLUMNS[key % 4]):
            audio[a:b] += tone(freq, (b - a) / 8000, 8000, amplitude=0.3)
        at, duration = down, 0
        while duration < b - a:  # an update every 50 ms (RFC 4733 2.5.1.2)
            sends.append((at, 101, 90000 + a, event(code, duration)))
            at += 0.05
            duration += 400
        for k in range(end_packets):
            sends.append((up + 0.02 * k, 101, 90000 + a, event(code, b - a, end=True)))
    mu = ulaw(audio)
    for i in range(100):
        sends.append((0.5 + 0.02 * i, 0, 90000 + 160 * i, mu[160 * i : 160 * (i + 1)]))
    sends.sort(key=lambda s: s[0])
    return [
        (at, rtp(1000 + n, ts, payload, pt=pt)) for n, (at, pt, ts, payload) in enumerate(sends)
    ]


def test_key_press_is_blanked_and_reported_once() -> None:
    packets = dtmf_call()
    timeline = StreamTimeline(PCMU_DTMF, output_rate=8000)
    out = play(timeline, packets, end=3.0)
    # From the event's timestamp (with 20 ms guard) to its end plus 40 ms: digital silence.
    assert not out[round(0.98 * 8000) : round(1.24 * 8000)].any()
    for freq in (770, 1336):  # no trace of the key's tones anywhere in the recording
        assert tone_level_db(out, 8000, freq) < -60
    voice: list[Any] = active_segments(out, 8000, 1000)
    assert voice == [
        (pytest.approx(0.5, abs=0.005), pytest.approx(0.98, abs=0.005)),
        (pytest.approx(1.24, abs=0.005), pytest.approx(2.5, abs=0.005)),
    ]
    assert timeline.drain_events() == [DtmfEvent("5", start=1.0, duration=0.2, volume=10)]
    assert timeline.drain_events() == []
    assert timeline.stats.dtmf_events == 1


def test_audio_fades_into_and_out_of_a_blank_instead_of_clicking() -> None:
    # A hard cut of the voice at the blank's edges is a click whose energy spreads far enough
    # up the spectrum to look like a key tone; 5 ms raised-cosine ramps outside the blank.
    out = play(StreamTimeline(PCMU_DTMF, output_rate=8000), dtmf_call(), end=3.0)
    before = np.abs(out[round(0.975 * 8000) : round(0.98 * 8000)].astype(float))
    after = np.abs(out[round(1.24 * 8000) : round(1.245 * 8000)].astype(float))
    peak = np.abs(out[round(0.6 * 8000) : round(0.9 * 8000)]).max()
    assert before[-4:].max() < 0.2 * peak and after[:4].max() < 0.2 * peak
    assert before[:4].max() > 0.5 * peak and after[-4:].max() > 0.5 * peak


@pytest.mark.parametrize("output_rate", [16000, 48000])
def test_key_press_is_blanked_at_other_recording_rates(output_rate: int) -> None:
    packets = dtmf_call(code=11)
    timeline = StreamTimeline(PCMU_DTMF, output_rate=output_rate)
    out = play(timeline, packets, end=3.0)
    inside = out[round(0.985 * output_rate) : round(1.235 * output_rate)]
    assert np.abs(inside).max() < 50  # only the resampler's ring-out at the very edges
    for freq in (941, 1477):
        assert tone_level_db(out, output_rate, freq) < -55
    [pressed] = timeline.drain_events()
    assert (pressed.digit, pressed.start, pressed.duration) == ("#", 1.0, 0.2)


def test_open_key_press_blanks_everything_pulled_from_its_start() -> None:
    packets = dtmf_call(press=(1.0, 1.6))
    timeline = StreamTimeline(PCMU_DTMF, output_rate=8000)
    for at, data in packets:
        if at > 1.3:
            break
        timeline.push(data, at)
    out = timeline.pull(1.3)  # the end of the press is not known yet
    assert not out[round(0.98 * 8000) :].any()
    assert out[: round(0.97 * 8000)].any()
    assert timeline.drain_events() == []
    for at, data in packets:
        if at > 1.3:
            timeline.push(data, at)
    rest = timeline.pull(3.0)
    full = np.concatenate([out, rest])
    assert not full[round(0.98 * 8000) : round(1.64 * 8000)].any()
    resumed: Any = active_segments(full, 8000, 1000)[-1]
    assert resumed == (
        pytest.approx(1.64, abs=0.005),
        pytest.approx(2.5, abs=0.005),
    )
    assert timeline.drain_events() == [DtmfEvent("5", 1.0, 0.6, 10)]


def test_key_press_whose_end_packets_were_lost_is_still_reported_and_blanked() -> None:
    first = dtmf_call(end_packets=0, code=1, press=(1.0, 1.2))
    timeline = StreamTimeline(PCMU_DTMF, output_rate=8000)
    out = play(timeline, first, end=3.0)
    # Nothing ended it: it is taken as over a second after its last known duration.
    [pressed] = timeline.drain_events()
    assert (pressed.digit, pressed.start) == ("1", 1.0)
    assert pressed.duration == pytest.approx(0.15)  # last update before the lost end
    assert not out[round(0.98 * 8000) : round(1.24 * 8000)].any()
    assert out[round(2.3 * 8000) : round(2.5 * 8000)].any()  # the blank did not run on forever


def test_key_press_still_open_at_the_end_of_the_call_is_reported_when_asked() -> None:
    packets = dtmf_call(end_packets=0, press=(2.2, 2.4))
    timeline = StreamTimeline(PCMU_DTMF, output_rate=8000)
    play(timeline, packets, end=2.5)
    assert timeline.drain_events() == []
    [pressed] = timeline.drain_events(close_open=True)
    assert (pressed.digit, pressed.start) == ("5", 2.2)


def test_two_presses_in_a_row_are_two_events() -> None:
    packets = dtmf_presses([(1, (0.8, 1.0), 3), (2, (1.5, 1.7), 3)])
    timeline = StreamTimeline(PCMU_DTMF, output_rate=8000)
    play(timeline, packets, end=3.0)
    assert [(e.digit, e.start, e.duration) for e in timeline.drain_events()] == [
        ("1", 0.8, 0.2),
        ("2", 1.5, 0.2),
    ]


def test_press_whose_end_was_lost_is_closed_by_the_next_press() -> None:
    packets = dtmf_presses([(7, (0.8, 1.0), 0), (8, (1.1, 1.3), 3)])
    timeline = StreamTimeline(PCMU_DTMF, output_rate=8000)
    out = play(timeline, packets, end=3.0)
    assert [(e.digit, e.start) for e in timeline.drain_events()] == [("7", 0.8), ("8", 1.1)]
    # The unended press is blanked to its last known duration plus one update interval.
    assert not out[round(0.78 * 8000) : round(1.05 * 8000)].any()
    assert not out[round(1.08 * 8000) : round(1.34 * 8000)].any()
    for freq in (852, 1209, 1336):
        assert tone_level_db(out, 8000, freq) < -60


def test_key_press_opening_the_stream_is_placed_by_its_duration() -> None:
    # The first packet of a new source is an update 100 ms into a key press.
    timeline = StreamTimeline(PCMU, telephone_event_pt=101, output_rate=8000)
    timeline.push(rtp(1, 5000, event(9, 800), pt=101), 1.1)
    timeline.push(rtp(2, 5000, event(9, 1600, end=True), pt=101), 1.2)
    timeline.pull(2.0)
    assert timeline.drain_events() == [DtmfEvent("9", 1.0, 0.2, 10)]


# --- invariants under arbitrary input ----------------------------------------------------------

CODEC_SETS = [
    PCMU_DTMF | {8: RtpCodec("PCMA", 8000), 13: RtpCodec("CN", 8000)},
    {9: RtpCodec("G722", 8000), 0: RtpCodec("PCMU", 8000), 101: RtpCodec("telephone-event", 8000)},
    {
        111: RtpCodec("opus", 48000, 2),
        0: RtpCodec("PCMU", 8000),
        100: RtpCodec("telephone-event", 48000),
    },
    {18: RtpCodec("G729", 8000), 96: RtpCodec("AMR", 8000)},
]

packet_strategy = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda seq, ts, pt, ssrc, marker, payload: rtp(
            seq, ts, payload, pt=pt, ssrc=ssrc, marker=marker
        ),
        seq=st.integers(0, 0xFFFF),
        ts=st.integers(0, 0xFFFFFFFF),
        pt=st.sampled_from([0, 8, 9, 13, 18, 96, 100, 101, 111, 127]),
        ssrc=st.sampled_from([1, 2, 0xFFFFFFFF]),
        marker=st.booleans(),
        payload=st.binary(max_size=400),
    ),
)
sequential_strategy = st.builds(
    lambda start, count, step, jump, pt: [
        (i, rtp(start + i, 160 * i + (jump if i > count // 2 else 0), b"\x55" * 160, pt=pt))
        for i in range(count)
    ],
    start=st.integers(0, 0xFFFF),
    count=st.integers(1, 60),
    step=st.just(0.02),
    jump=st.integers(0, 0xFFFFFFFF),
    pt=st.sampled_from([0, 9, 18, 111]),
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    codecs=st.sampled_from(CODEC_SETS),
    output_rate=st.sampled_from([8000, 16000, 48000]),
    steps=st.lists(
        st.tuples(
            st.one_of(packet_strategy, st.none()),
            st.floats(-0.5, 1.5, allow_nan=False),
        ),
        max_size=60,
    ),
    runs=sequential_strategy,
    end=st.floats(0, 4),
)
def test_arbitrary_packets_and_pulls_never_raise_and_the_length_always_adds_up(
    codecs: dict[int, RtpCodec],
    output_rate: int,
    steps: list[tuple[bytes | None, float]],
    runs: list[tuple[int, bytes]],
    end: float,
) -> None:
    timeline = StreamTimeline(codecs, output_rate=output_rate, max_buffer=0.5)
    clock = 0.0
    furthest = 0.0
    total = 0
    actions: list[tuple[bytes | None, float]] = steps + [(data, 0.02) for _, data in runs]
    for data, step in actions:
        clock += step
        if data is None:
            until = clock - PD
            total += len(timeline.pull(until))
            furthest = max(furthest, until)
            assert total == max(0, round(furthest * output_rate))
        else:
            timeline.push(data, clock)
    final = max(furthest, end)
    total += len(timeline.pull(final))
    assert total == max(0, round(final * output_rate))
    timeline.drain_events(close_open=True)
