"""CallMedia: packets of several streams in, one time-aligned Ogg Opus out — decoded and checked."""

from __future__ import annotations

import os
import struct

import numpy as np

from siprec_server.media.call import CallMedia, SrtpSpec, StreamSpec
from siprec_server.media.codecs import RtpCodec, encode_ulaw
from siprec_server.media.dtmf_control import DtmfControl
from siprec_server.media.events import RecordingPaused, RecordingResumed
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
        kwargs.setdefault("started", T0)
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


# ------------------------------------------------------------------------------ whom to believe

SRC = ("192.0.2.10", 40000)
"""Where the offer says the SRC sends from."""
STRANGER = ("198.51.100.66", 40000)


def offered(n: int = 2, **kwargs: object) -> list[StreamSpec]:
    return [StreamSpec(i, i, PCMU, 101, remote_address=SRC[0], remote_port=SRC[1] + 2 * i,
                       remote_rtcp_port=SRC[1] + 2 * i + 1, **kwargs)  # type: ignore[arg-type]
            for i in range(n)]


def from_(source: tuple[str, int], packets: list[tuple[float, int, bytes]]
          ) -> list[tuple[float, int, bytes, tuple[str, int]]]:
    return [(t, i, d, source) for t, i, d in packets]


def play_from(call: Call, packets: list[tuple[float, int, bytes, tuple[str, int]]],
              until: float) -> None:
    """Call.play with each datagram's source address."""
    packets = sorted(packets, key=lambda p: p[0])
    i, t = 0, 0.0
    while t <= until + 1e-9:
        while i < len(packets) and packets[i][0] <= t + 1e-9:
            at, index, data, source = packets[i]
            call.media.receive_rtp(index, data, T0 + at, source)
            i += 1
        call.media.tick(T0 + t)
        t = round(t + 0.02, 6)


def test_offer_address_drops_and_counts_a_stranger_and_records_only_the_src() -> None:
    call = Call(offered(1), 1, source_policy="offer-address")
    genuine = from_(("192.0.2.10", 41234), tone_packets(0, 440, 0.0, 2.0, ssrc=1))
    forged = from_(STRANGER, tone_packets(0, 2000, 0.5, 1.0, ssrc=1, seq0=7000))
    play_from(call, genuine + forged, 2.0)
    audio, rate = call.decode(2.0)
    assert active_segments(audio[:, 0], rate, 2000) == []
    (segment,) = active_segments(audio[:, 0], rate, 440)
    assert segment[1] - segment[0] > 1.9
    stream = call.report.streams[0]
    assert stream.counters.foreign_source == 50 and stream.stats.received == 100


def test_offer_policy_wants_the_offered_port_too_and_rtcp_from_the_rtcp_port() -> None:
    call = Call(offered(1), 1, source_policy="offer")
    rtcp = struct.pack("!BBHI", 0x80, 200, 1, 1) + bytes(20)
    call.media.receive_rtp(0, rtp(1, 0, 1, bytes(160)), T0, ("192.0.2.10", 40002))
    call.media.receive_rtp(0, rtp(1, 0, 1, bytes(160)), T0, SRC)
    call.media.receive_rtcp(0, rtcp, T0, ("192.0.2.10", 40000))
    call.media.receive_rtcp(0, rtcp, T0, ("192.0.2.10", 40001))
    counters = call.media.stream_reports()[0].counters
    assert (counters.foreign_source, counters.rtcp_packets) == (2, 1)


def test_ipv4_sender_seen_by_a_dual_stack_socket_is_the_offered_address() -> None:
    call = Call(offered(1), 1, source_policy="offer-address")
    call.media.receive_rtp(0, rtp(1, 0, 1, bytes(160)), T0, ("::ffff:192.0.2.10", 9, 0, 0))  # type: ignore[arg-type]
    assert call.media.stream_reports()[0].stats.received == 1


def test_latch_follows_the_first_authenticated_source_behind_nat() -> None:
    suite = find_suite("AES_CM_128_HMAC_SHA1_80")
    assert suite is not None
    key = os.urandom(suite.key_salt_len)
    call = Call(offered(1, srtp=SrtpSpec(suite, key)), 1, source_policy="latch")
    nat = ("203.0.113.7", 61000)  # not the private address the offer names
    # A stranger's unauthenticated packet first: it latches nothing.
    junk = rtp(1, 0, 99, bytes(170))
    call.media.receive_rtp(0, junk, T0 - 0.01, STRANGER)
    genuine = from_(nat, tone_packets(0, 440, 0.0, 1.0, ssrc=5, sender=srtp_sender(suite, key)))
    forged = from_(STRANGER, tone_packets(0, 2000, 0.3, 0.5, ssrc=5, seq0=9000,
                                          sender=srtp_sender(suite, key)))
    play_from(call, genuine + forged, 1.0)
    audio, rate = call.decode(1.0)
    assert active_segments(audio[:, 0], rate, 2000) == []
    stream = call.report.streams[0]
    assert stream.counters.srtp_auth_failures == 1
    assert stream.counters.foreign_source == 25 and stream.stats.received == 50


def test_any_policy_takes_every_source() -> None:
    call = Call(offered(1), 1, source_policy="any")
    play_from(call, from_(STRANGER, tone_packets(0, 440, 0.0, 0.5, ssrc=1)), 0.5)
    assert call.media.stream_reports()[0].stats.received == 25


def test_an_offer_without_a_usable_address_latches() -> None:
    spec = [StreamSpec(0, 0, PCMU, 101, remote_address=None, remote_port=4000)]
    call = Call(spec, 1, source_policy="offer-address")
    call.media.receive_rtp(0, rtp(1, 0, 1, bytes(160)), T0, ("192.0.2.99", 5000))
    call.media.receive_rtp(0, rtp(2, 160, 1, bytes(160)), T0 + 0.02, ("192.0.2.98", 5000))
    counters = call.media.stream_reports()[0].counters
    assert (call.media.stream_reports()[0].stats.received, counters.foreign_source) == (1, 1)


def test_a_reinvite_moving_the_sender_moves_the_check_and_lets_a_new_ssrc_in() -> None:
    call = Call(offered(1), 1, source_policy="offer-address")
    moved = StreamSpec(0, 0, PCMU, 101, remote_address="192.0.2.20", remote_port=50000,
                       remote_rtcp_port=50001)
    packets = from_(SRC, tone_packets(0, 440, 0.0, 1.0, ssrc=1))
    # After the re-INVITE, the SRC sends from its new address with a new SSRC at once.
    packets += from_(("192.0.2.20", 50000), tone_packets(0, 440, 1.0, 1.0, ssrc=2, seq0=500,
                                                         ts0=90000))
    packets += from_(SRC, tone_packets(0, 2000, 1.2, 0.2, ssrc=1, seq0=150, ts0=5000 + 9600))
    play_from(call, [p for p in packets if p[0] < 1.0 - 1e-9], 0.98)
    call.media.update_streams([moved])
    play_from(call, [p for p in packets if p[0] > 1.0 - 1e-9], 2.0)
    audio, rate = call.decode(2.0)
    (segment,) = active_segments(audio[:, 0], rate, 440)
    assert segment[1] - segment[0] > 1.9
    stream = call.report.streams[0]
    assert stream.counters.foreign_source == 10 and stream.counters.foreign_ssrc == 0
    assert stream.stats.ssrc_changes == 1


def test_a_hold_offer_with_an_unspecified_address_keeps_the_known_sender() -> None:
    call = Call(offered(1), 1, source_policy="offer-address")
    held = StreamSpec(0, 0, PCMU, 101, remote_address=None, remote_port=40000,
                      remote_rtcp_port=40001)
    call.media.update_streams([held])
    call.media.receive_rtp(0, rtp(1, 0, 1, bytes(160)), T0, STRANGER)
    call.media.receive_rtp(0, rtp(1, 0, 1, bytes(160)), T0, SRC)
    counters = call.media.stream_reports()[0].counters
    assert (call.media.stream_reports()[0].stats.received, counters.foreign_source) == (1, 1)


def test_one_ssrc_at_a_time_and_a_new_one_only_after_the_old_fell_silent() -> None:
    call = Call(offered(1), 1, source_policy="offer-address")
    # SSRC 1 talks 0-1 s; SSRC 2 (same address) talks over it from 0.5 s: dropped while 1 is
    # alive, and still dropped 0.5 s after 1 stopped; a second of silence later it takes over.
    packets = from_(SRC, tone_packets(0, 440, 0.0, 1.0, ssrc=1))
    packets += from_(SRC, tone_packets(0, 2000, 0.5, 2.5, ssrc=2, seq0=3000, ts0=70000))
    play_from(call, packets, 3.0)
    audio, rate = call.decode(3.0)
    (first,) = active_segments(audio[:, 0], rate, 440)
    (second,) = active_segments(audio[:, 0], rate, 2000)
    assert first[1] < 1.05 and 1.95 < second[0] < 2.1, (first, second)
    stream = call.report.streams[0]
    assert stream.stats.ssrc_changes == 1
    # 0.5 s to 2.0 s of SSRC 2 (refused until SSRC 1 was silent for SSRC_CHANGE_SILENCE).
    assert 70 <= stream.counters.foreign_ssrc <= 76


def test_refused_packets_do_not_reset_the_inactivity_clock() -> None:
    suite = find_suite("AES_CM_128_HMAC_SHA1_80")
    assert suite is not None
    key = os.urandom(suite.key_salt_len)
    call = Call(offered(1, srtp=SrtpSpec(suite, key)), 1, source_policy="offer-address")
    sender = srtp_sender(suite, key)
    call.media.receive_rtp(0, sender.protect_rtp(rtp(1, 0, 1, bytes(160))), T0, SRC)
    assert call.media.last_packet == T0
    forged_ssrc = srtp_sender(suite, key).protect_rtp(rtp(1, 0, 2, bytes(160)))
    call.media.receive_rtp(0, forged_ssrc, T0 + 0.5, SRC)  # foreign SSRC
    call.media.receive_rtp(0, sender.protect_rtp(rtp(2, 160, 1, bytes(160))), T0 + 1,
                           STRANGER)  # foreign source
    call.media.receive_rtp(0, rtp(3, 320, 1, bytes(170)), T0 + 2, SRC)  # not authentic
    rtcp = struct.pack("!BBHI", 0x80, 200, 6, 1) + bytes(36)
    call.media.receive_rtcp(0, rtcp, T0 + 3, SRC)  # not authentic either
    assert call.media.last_packet == T0
    counters = call.media.stream_reports()[0].counters
    assert (counters.foreign_ssrc, counters.foreign_source) == (1, 1)
    assert counters.srtp_auth_failures + counters.srtp_other_failures == 2


# ------------------------------------------------------------------------------ keypad control


def test_a_foreign_ssrc_keying_a_sequence_does_not_pause() -> None:
    call = Call(offered(1), 1, dtmf_control=DtmfControl("*1", "*2", 3.0),
                source_policy="offer-address")
    packets = from_(SRC, tone_packets(0, 440, 0.0, 3.0, ssrc=9, seq0=0, ts0=0))
    packets += from_(SRC, _dtmf(0, 10, 1.0, 77, 5000, 8000) + _dtmf(0, 1, 1.2, 77, 5010, 9600))
    play_from(call, packets, 3.0)
    audio, rate = call.decode(3.0)
    assert call.report.pauses == () and call.media.take_events() == []
    (segment,) = active_segments(audio[:, 0], rate, 440)
    assert segment[1] - segment[0] > 2.9
    assert call.report.streams[0].counters.foreign_ssrc == 14  # 2 keys x 7 event packets


def test_only_streams_allowed_to_control_pause_and_each_stream_keys_its_own_sequence() -> None:
    specs = [StreamSpec(0, 0, PCMU, 101, dtmf_control=False),
             StreamSpec(1, 1, PCMU, 101, dtmf_control=True)]
    call = Call(specs, 2, dtmf_control=DtmfControl("*1", "*2", 3.0))
    packets = tone_packets(0, 440, 0.0, 4.0, ssrc=1, seq0=0, ts0=0)
    packets += tone_packets(1, 1000, 0.0, 4.0, ssrc=2, seq0=0, ts0=0)
    # Stream 0 keys *1 (no control); stream 0's * then stream 1's 1 (not one sequence);
    # then stream 1 keys *1 and, later, *2.
    packets += _dtmf(0, 10, 0.5, 1, 1000, 4000) + _dtmf(0, 1, 0.7, 1, 1010, 5600)
    packets += _dtmf(0, 10, 1.0, 1, 1020, 8000) + _dtmf(1, 1, 1.2, 2, 1000, 9600)
    packets += _dtmf(1, 10, 2.0, 2, 1010, 16000) + _dtmf(1, 1, 2.2, 2, 1020, 17600)
    packets += _dtmf(1, 10, 3.0, 2, 1030, 24000) + _dtmf(1, 2, 3.2, 2, 1040, 25600)
    call.play(packets, 4.0)
    events = call.media.take_events()
    audio, rate = call.decode(4.0)
    (pause,) = call.report.pauses
    assert pause.source == "dtmf" and 2.25 < pause.start < 2.4 and 3.25 < (pause.end or 0) < 3.4
    assert events == [RecordingPaused("dtmf", pause.start, 1),
                      RecordingResumed("dtmf", pause.end or 0, 1)]
    assert call.report.dtmf_events == 8
    # The keys of stream 0 are blanked all the same.
    for freq in (941.0, 1209.0):
        assert active_segments(audio[:, 0], rate, freq) == []


def test_pauses_and_resumes_of_every_source_are_reported_as_events() -> None:
    call = Call(specs(1), 1)
    call.play(tone_packets(0, 440, 0.0, 2.0, ssrc=1), 2.0, {
        0.5: lambda: call.media.pause(T0 + 0.5, "hold"),
        0.6: lambda: call.media.pause(T0 + 0.6, "api"),
        1.0: lambda: call.media.resume(T0 + 1.0, "hold"),
    })
    call.decode(2.0)  # the api pause is still open: it ends with the recording, unreported
    assert [(type(e), e.source, round(e.at, 6)) for e in call.media.take_events()] == [
        (RecordingPaused, "hold", 0.5), (RecordingPaused, "api", 0.6),
        (RecordingResumed, "hold", 1.0)]
    assert [(p.source, round(p.start, 6), p.end and round(p.end, 6))
            for p in call.report.pauses] == [
        ("hold", 0.5, 1.0), ("api", 0.6, 2.0)]


# ------------------------------------------------------------------------------ time 0, no media


def test_time_zero_is_the_start_of_the_session_so_a_late_party_leaves_leading_silence() -> None:
    call = Call(specs(1), 1, started=T0 - 1.5)
    call.play(tone_packets(0, 440, 0.0, 1.0, ssrc=1), 1.0)
    audio, rate = call.decode(1.0)
    (segment,) = active_segments(audio[:, 0], rate, 440)
    assert abs(segment[0] - 1.5) < 0.05 and abs(segment[1] - 2.5) < 0.05
    assert abs(call.report.duration - 2.5) < 0.001 and not call.report.no_media


def test_a_session_without_packets_is_silence_as_long_as_the_session_and_flagged() -> None:
    call = Call(offered(2), 2, source_policy="offer-address")
    # Only strangers sent anything.
    play_from(call, from_(STRANGER, tone_packets(0, 440, 0.0, 1.0, ssrc=1)), 3.0)
    audio, rate = call.decode(3.0)
    assert call.report.no_media and abs(call.report.duration - 3.0) < 0.001
    assert abs(audio.shape[0] / rate - 3.0) < 0.03
    assert float(np.max(np.abs(audio))) < 1e-3
    assert call.media.last_packet is None


def test_peaks_are_measured_while_encoding_pauses_flat_and_key_presses_timed() -> None:
    call = Call(specs(), 2, dtmf_control=DtmfControl("*1", "*2", 3.0))
    packets = tone_packets(0, 440, 0.0, 3.0, ssrc=1) + tone_packets(1, 1000, 1.0, 2.0, ssrc=2)
    packets = [p for p in packets if not (p[1] == 1 and 2.0 <= p[0] < 2.12)]
    packets += _dtmf(1, 5, 2.0, 2, 5000, 5000 + 8000)  # one key press on channel 1, at 2 s
    call.play(packets, 3.0, {1.5: lambda: call.media.pause(T0 + 1.5, "api"),
                             1.8: lambda: call.media.resume(T0 + 1.8, "api")})
    call.decode(3.0)
    peaks = call.report.peaks
    assert peaks is not None and peaks.interval_ms == 50 and len(peaks.levels) == 2
    left, right = (list(lane) for lane in peaks.levels)
    assert len(left) == len(right) == 60  # 3 s in 50 ms steps
    level = lambda lane, t: lane[int(t * 20)]  # noqa: E731
    assert level(left, 0.5) > 50 and level(right, 0.5) == 0, "the second party starts at 1 s"
    assert level(left, 1.6) == 0 and level(right, 1.6) == 0, "a pause is flat on every lane"
    assert level(left, 2.5) > 50 and level(right, 2.5) > 50
    (press,) = peaks.key_presses
    assert press.channel == 1 and 1950 <= press.start_ms <= 2100
