"""CallMedia: packets of several streams in, one time-aligned Ogg Opus out — decoded and checked."""

from __future__ import annotations

import os
import struct

import numpy as np

from siprec_server.media.call import CallMedia, SrtpSpec, StreamSpec
from siprec_server.media.codecs import RtpCodec, encode_ulaw
from siprec_server.media.dtmf_control import DtmfControl
from siprec_server.media.srtp import srtp_sender
from siprec_server.media.srtp_suites import find_suite
from tests.audio import active_segments, decode_ogg_opus, tone, tone_level_db

PCMU = {0: RtpCodec("PCMU", 8000), 101: RtpCodec("telephone-event", 8000)}
T0 = 1000.0  # the caller's clock at the first packet


def rtp(seq: int, ts: int, ssrc: int, payload: bytes, pt: int = 0, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc) + payload


class Call:
    """A CallMedia fed by a simulated clock; the Ogg bytes stay in memory."""

    def __init__(self, specs: list[StreamSpec], channels: int, **kwargs: object) -> None:
        self.ogg = bytearray()
        self.flushes = 0
        self.media = CallMedia(specs, channels, self.ogg.extend, self._flushed, **kwargs)  # type: ignore[arg-type]

    def _flushed(self) -> None:
        self.flushes += 1

    def play(self, packets: list[tuple[float, int, bytes]], until: float,
             actions: dict[float, object] | None = None) -> None:
        """(time since T0, stream index, datagram); ticks every 20 ms; `actions` are callables
        run when the clock reaches their time."""
        packets = sorted(packets, key=lambda p: p[0])
        pending = sorted((actions or {}).items())
        i = 0
        t = 0.0
        while t <= until + 1e-9:
            while pending and pending[0][0] <= t + 1e-9:
                pending.pop(0)[1]()  # type: ignore[operator]
            while i < len(packets) and packets[i][0] <= t + 1e-9:
                at, index, data = packets[i]
                self.media.receive_rtp(index, data, T0 + at)
                i += 1
            self.media.tick(T0 + t)
            t = round(t + 0.02, 6)

    def decode(self, end: float) -> tuple[np.ndarray, int]:
        self.report = self.media.close(T0 + end)
        return decode_ogg_opus(bytes(self.ogg))


def tone_packets(index: int, freq: float, start: float, seconds: float, *, ssrc: int,
                 seq0: int = 100, ts0: int = 5000, sender=None) -> list[tuple[float, int, bytes]]:
    pcm = tone(freq, seconds, 8000)
    out = []
    for n in range(int(seconds * 50)):
        data = rtp(seq0 + n, ts0 + 160 * n, ssrc, encode_ulaw(pcm[n * 160 : (n + 1) * 160]), marker=n == 0)
        if sender is not None:
            data = sender.protect_rtp(data)
        out.append((start + n * 0.02, index, data))
    return out


def specs(n: int = 2, **kwargs: object) -> list[StreamSpec]:
    return [StreamSpec(i, i, PCMU, 101, **kwargs) for i in range(n)]  # type: ignore[arg-type]


def test_parties_are_time_aligned_on_their_own_channels() -> None:
    call = Call(specs(), 2)
    packets = tone_packets(0, 440, 0.0, 2.0, ssrc=1) + tone_packets(1, 1000, 0.5, 1.5, ssrc=2)
    call.play(packets, 2.2)
    audio, rate = call.decode(2.2)
    (left,) = active_segments(audio[:, 0], rate, 440)
    (right,) = active_segments(audio[:, 1], rate, 1000)
    assert abs(left[0] - 0.0) < 0.05 and abs(left[1] - 2.0) < 0.05
    assert abs(right[0] - 0.5) < 0.05 and abs(right[1] - 2.0) < 0.05, "second party starts late"
    assert tone_level_db(audio[:, 1], rate, 440) < tone_level_db(audio[:, 0], rate, 440) - 25
    assert abs(call.report.duration - 2.2) < 0.001
    assert call.flushes >= 2, "the encrypted file is flushed at least every second of audio"


def test_api_pause_silences_both_channels_from_the_next_packet() -> None:
    call = Call(specs(), 2)
    packets = tone_packets(0, 440, 0.0, 3.0, ssrc=1) + tone_packets(1, 1000, 0.0, 3.0, ssrc=2)
    results: list[bool] = []
    call.play(packets, 3.0, {
        1.0: lambda: results.extend([call.media.pause(T0 + 1.0, "api"),
                                     call.media.pause(T0 + 1.0, "api")]),
        2.0: lambda: results.append(call.media.resume(T0 + 2.0, "api")),
    })
    assert results == [True, False, True], "pausing twice is harmless"
    audio, rate = call.decode(3.0)
    for channel, freq in ((0, 440), (1, 1000)):
        segments = active_segments(audio[:, channel], rate, freq)
        assert len(segments) == 2
        assert abs(segments[0][1] - 1.0) < 0.06 and abs(segments[1][0] - 2.0) < 0.06
    (pause,) = call.report.pauses
    assert (pause.source, round(pause.start, 2), round(pause.end or 0, 2)) == ("api", 1.0, 2.0)


def _dtmf(index: int, digit_code: int, start: float, ssrc: int, seq: int, ts: int,
          length: float = 0.1) -> list[tuple[float, int, bytes]]:
    """One key press as RFC 4733 events: updates every 20 ms, the end packet three times."""
    out = []
    steps = int(length / 0.02)
    for k in range(1, steps + 1):
        end = k == steps
        payload = struct.pack("!BBH", digit_code, (0x80 if end else 0) | 10, 160 * k)
        for _ in range(3 if end else 1):
            out.append((start + k * 0.02, index, rtp(seq, ts, ssrc, payload, pt=101,
                                                     marker=k == 1)))
            seq += 1
    return out


def test_dtmf_sequences_pause_and_resume_and_keys_are_not_recorded() -> None:
    call = Call(specs(1), 1, dtmf_control=DtmfControl("*1", "*2", 3.0))
    audio_packets = tone_packets(0, 440, 0.0, 4.0, ssrc=9, seq0=0, ts0=0)
    # Key presses replace audio packets at their times (as an SRC does when it sends 4733).
    presses = [(0.9, 10), (1.1, 1), (2.6, 10), (2.8, 1 + 1)]  # * 1 ... * 2
    busy = [(0.9, 1.22), (2.6, 2.92)]  # the caller is keying, not talking
    packets = [p for p in audio_packets if not any(a <= p[0] < b for a, b in busy)]
    for n, (start, code) in enumerate(presses):
        packets += _dtmf(0, code, start, 9, 1000 + 10 * n, int(start * 8000))
    call.play(packets, 4.0)
    audio, rate = call.decode(4.0)
    segments = active_segments(audio[:, 0], rate, 440)
    assert len(segments) == 2, segments
    assert segments[0][1] < 1.25 and segments[1][0] > 2.8
    (pause,) = call.report.pauses
    assert pause.source == "dtmf"
    assert 1.15 < pause.start < 1.3 and 2.8 < (pause.end or 0) < 3.0
    assert call.report.dtmf_events == 4


def test_hold_leaves_silence_of_the_right_length_not_a_time_shift() -> None:
    call = Call(specs(1), 1)
    packets = tone_packets(0, 440, 0.0, 1.0, ssrc=3, seq0=0, ts0=0)
    # After 2 s of hold the same source resumes; its clock kept running.
    packets += tone_packets(0, 440, 3.0, 1.0, ssrc=3, seq0=50, ts0=3 * 8000)
    call.play(packets, 4.1)
    audio, rate = call.decode(4.1)
    segments = active_segments(audio[:, 0], rate, 440)
    assert [(round(a, 1), round(b, 1)) for a, b in segments] == [(0.0, 1.0), (3.0, 4.0)]


def test_srtp_is_decrypted_and_forged_packets_are_counted_not_recorded() -> None:
    suite = find_suite("AES_256_CM_HMAC_SHA1_80")
    assert suite is not None
    key = os.urandom(suite.key_salt_len)
    spec = [StreamSpec(0, 0, PCMU, 101, SrtpSpec(suite, key))]
    call = Call(spec, 1)
    packets = tone_packets(0, 440, 0.0, 1.0, ssrc=4, sender=srtp_sender(suite, key))
    # Tampered copies arrive just before the genuine packets: authentication fails (a copy
    # arriving after its original would be counted as a replay instead).
    forged = [(t - 0.001, 0, d[:-1] + bytes([d[-1] ^ 1])) for t, _, d in packets[1:11]]
    call.play(packets + forged, 1.2)
    audio, rate = call.decode(1.2)
    (segment,) = active_segments(audio[:, 0], rate, 440)
    assert segment[1] - segment[0] > 0.9
    stream = call.report.streams[0]
    assert stream.counters.srtp_auth_failures == 10
    assert stream.stats.received == 50
