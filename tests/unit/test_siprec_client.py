"""The pieces of our SIPREC client (the SRC side), against the RFCs and the server's own parsers:
payload encoders, RTP headers, SRTP for every suite, seeded impairments, RFC 4733 telephone
events, and the INVITE the recorder has to accept."""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import pytest

from siprec_server.media.codecs import (
    ULAW_TO_LINEAR,
    G722Decoder,
    OpusDecoder,
)
from siprec_server.media.dtmf import (
    EventEnded,
    EventStarted,
    TelephoneEventTracker,
    parse_telephone_event,
)
from siprec_server.media.rtp import RtpPacket, parse_rtp
from siprec_server.media.srtp import SrtpError, srtp_receiver, srtp_sender
from siprec_server.media.srtp_suites import SUITES, find_suite
from siprec_server.sip.message import Headers, SipRequest, SipResponse, parse_message
from siprec_server.siprec.metadata import parse_metadata
from siprec_server.siprec.multipart import find_part, metadata_part, split_body
from siprec_server.siprec.request import check_recording_session, read_body
from siprec_server.siprec.sdp import parse_sdp
from siprec_server.siprec.sdp_answer import AnswerPreferences, negotiate
from siprec_server.tools import loadgen, siprec_client
from siprec_server.tools.siprec_client import (
    CODECS,
    CallPlan,
    DtmfDigit,
    Hold,
    Impairments,
    Participant,
    SiprecClientError,
    StreamPlan,
    codec_spec,
    default_streams,
)
from siprec_server.tools.siprec_client.dialog import SrcDialog
from siprec_server.tools.siprec_client.invite import (
    OfferedMedia,
    build_metadata,
    build_offer_sdp,
    read_answer,
)
from siprec_server.tools.siprec_client.payloads import PayloadEncoder, encode_source, tone_frame
from siprec_server.tools.siprec_client.rtp import (
    DTMF_END_REPEATS,
    Impairment,
    RtpStream,
    dtmf_overrides,
)
from tests.audio import dominant_frequency, tone, tone_level_db

# --- payloads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722"])
def test_twenty_ms_payload_is_160_bytes(codec: str) -> None:
    payloads = encode_source(CODECS[codec], 440.0, 10)
    assert [len(p) for p in payloads] == [160] * 10


def test_tone_frames_join_into_one_continuous_sine() -> None:
    frames = np.concatenate([tone_frame(440.0, 8000, i, 160) for i in range(50)])
    assert np.array_equal(frames, tone(440.0, 1.0, 8000))


def test_g722_payloads_decode_to_the_tone_at_16_khz() -> None:
    payloads = encode_source(CODECS["G722"], 1000.0, 50, loop=True)
    pcm = np.concatenate(G722Decoder().decode(payloads))
    assert len(pcm) == 16000
    assert dominant_frequency(pcm, 16000) == pytest.approx(1000.0, abs=5)


def test_opus_payloads_decode_with_pyav_to_20_ms_of_the_tone() -> None:
    payloads = encode_source(CODECS["opus"], 440.0, 50, loop=True)
    decoder = OpusDecoder()
    frames = decoder.decode(payloads)
    assert decoder.corrupt == 0
    assert {len(f) for f in frames} == {960}
    assert dominant_frequency(np.concatenate(frames)[4800:], 48000) == pytest.approx(440, abs=5)


def test_opus_sdp_says_48000_2_and_telephone_events_at_48000() -> None:
    media = OfferedMedia("1", 4000, CODECS["opus"])
    sdp = parse_sdp(build_offer_sdp([media], address="127.0.0.1", session_id=1,
                                    session_version=1))
    names = {(c.name, c.rate, c.channels) for c in sdp.media[0].codecs}
    assert names == {("opus", 48000, 2), ("telephone-event", 48000, 1)}


def test_g729_is_receive_only() -> None:
    with pytest.raises(SiprecClientError, match="receive-only"):
        codec_spec("G729")
    with pytest.raises(SiprecClientError):
        CallPlan(streams=default_streams(2, "G729")).validate()


def test_a_callable_source_gives_each_frame_at_the_codecs_own_rate() -> None:
    asked: list[tuple[int, int]] = []

    def source(index: int, rate: int) -> np.ndarray:
        asked.append((index, rate))
        return np.full(rate // 50, 1000 * (index + 1), dtype=np.int16)

    payloads = encode_source(CODECS["PCMU"], source, 3)
    levels = [int(ULAW_TO_LINEAR[np.frombuffer(p, np.uint8)].mean()) for p in payloads]
    assert levels == pytest.approx([1000, 2000, 3000], rel=0.05)
    asked.clear()
    encode_source(CODECS["G722"], source, 2)
    assert asked == [(0, 16000), (1, 16000)]


def test_encoder_pads_a_short_frame() -> None:
    assert len(PayloadEncoder(CODECS["PCMA"]).encode(np.zeros(10, np.int16))) == 160


# --- RTP ---------------------------------------------------------------------------------------


def stream(**overrides) -> RtpStream:  # type: ignore[no-untyped-def]
    args = dict(payload_type=0, units=160, payloads=[b"\xff" * 160], ssrc=0xDEADBEEF,
                first_seq=0xFFFE, first_timestamp=0xFFFFFF00)
    args.update(overrides)
    return RtpStream(**args)  # type: ignore[arg-type]


def test_sequence_numbers_and_timestamps_wrap_from_their_random_start() -> None:
    rtp = stream()
    packets = [parse_rtp(rtp.packets(k)[0]) for k in range(5)]
    assert [p.sequence_number for p in packets] == [0xFFFE, 0xFFFF, 0, 1, 2]
    assert [p.timestamp for p in packets] == [
        (0xFFFFFF00 + 160 * k) & 0xFFFFFFFF for k in range(5)]
    assert packets[2].timestamp == 0x40  # wrapped
    assert {p.ssrc for p in packets} == {0xDEADBEEF}
    assert [p.marker for p in packets] == [True, False, False, False, False]
    assert {p.payload_type for p in packets} == {0}


def test_g722_timestamps_advance_at_8000_hz_for_16000_hz_audio() -> None:
    g722 = CODECS["G722"]
    assert (g722.rtp_units(20), g722.pcm_samples(20)) == (160, 320)  # RFC 3551 4.5.2
    rtp = stream(payload_type=9, units=g722.rtp_units(20), first_timestamp=1000)
    assert [parse_rtp(rtp.packets(k)[0]).timestamp for k in range(3)] == [1000, 1160, 1320]


def test_payload_loop_repeats() -> None:
    rtp = stream(payloads=[b"a", b"b", b"c"])
    payloads = [bytes(parse_rtp(rtp.packets(k)[0]).payload) for k in range(7)]
    assert payloads == [b"a", b"b", b"c", b"a", b"b", b"c", b"a"]


def test_hold_keeps_the_media_clock_running_and_marks_the_resumed_talkspurt() -> None:
    rtp = stream(first_seq=100, first_timestamp=0)
    before = [parse_rtp(rtp.packets(k)[0]) for k in range(3)]
    rtp.hold()
    assert all(rtp.packets(k) == [] for k in range(3, 6))
    rtp.resume()
    after = parse_rtp(rtp.packets(6)[0])
    assert after.sequence_number == before[-1].sequence_number + 1  # no gap in sequence
    assert after.timestamp == 6 * 160  # the hold shows as time
    assert after.marker


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_srtp_packets_decrypt_with_the_offered_key(suite) -> None:  # type: ignore[no-untyped-def]
    key = os.urandom(suite.key_salt_len)
    sender = srtp_sender(suite, key)
    receiver = srtp_receiver(suite, key)
    rtp = stream(payloads=[bytes(range(160))])
    for k in range(70_000 if suite.name == "AES_CM_128_HMAC_SHA1_32" else 5):
        # One suite runs across the sequence number wrap: the rollover counter must follow.
        plain = rtp.packets(k)[0]
        secured = sender.protect_rtp(plain)
        assert len(secured) == len(plain) + suite.rtp_auth_tag_len
        assert receiver.unprotect_rtp(secured) == plain
    other = srtp_receiver(suite, os.urandom(suite.key_salt_len))
    with pytest.raises(SrtpError):
        other.unprotect_rtp(sender.protect_rtp(rtp.packets(99_999)[0]))


@pytest.mark.parametrize("suite", SUITES, ids=lambda s: s.name)
def test_offer_carries_our_key_for_every_suite(suite) -> None:  # type: ignore[no-untyped-def]
    key = os.urandom(suite.key_salt_len)
    media = OfferedMedia("a_leg", 4000, CODECS["PCMU"], srtp_suite=suite.name, key_salt=key)
    sdp = parse_sdp(build_offer_sdp([media], address="127.0.0.1", session_id=1,
                                    session_version=1))
    line = sdp.media[0]
    assert line.proto == "RTP/SAVP"
    assert len(line.crypto) == 1
    assert (line.crypto[0].suite, line.crypto[0].key_salt, line.crypto[0].usable) == (
        suite, key, True)


# --- impairments -------------------------------------------------------------------------------


def run_impairment(spec: Impairments, n: int, key: str = "0:0") -> tuple[list[bytes], Impairment]:
    impairment = Impairment(spec, key)
    out: list[bytes] = []
    for i in range(n):
        out += impairment.apply(i.to_bytes(4, "big"))
    out += impairment.flush()
    return out, impairment


def test_impairments_replay_exactly_with_the_same_seed() -> None:
    spec = Impairments(loss_percent=5, reorder_percent=5, duplicate_percent=5, seed=7)
    assert run_impairment(spec, 3000)[0] == run_impairment(spec, 3000)[0]
    other = Impairments(loss_percent=5, reorder_percent=5, duplicate_percent=5, seed=8)
    assert run_impairment(spec, 3000)[0] != run_impairment(other, 3000)[0]
    assert run_impairment(spec, 3000, "0:1")[0] != run_impairment(spec, 3000, "0:0")[0]


@pytest.mark.parametrize("kind", ["loss_percent", "reorder_percent", "duplicate_percent"])
def test_impairment_hits_its_percentage_of_packets(kind: str) -> None:
    n = 20_000
    out, imp = run_impairment(Impairments(**{kind: 10.0}, seed=3), n)
    count = {"loss_percent": imp.dropped, "reorder_percent": imp.reordered,
             "duplicate_percent": imp.duplicated}[kind]
    sigma = (n * 0.1 * 0.9) ** 0.5
    assert abs(count - n * 0.1) < 4 * sigma
    assert len(out) == n - imp.dropped + imp.duplicated


def test_loss_hits_the_same_packets_whatever_the_other_impairments() -> None:
    lossy, _ = run_impairment(Impairments(loss_percent=10, seed=1), 2000)
    both, _ = run_impairment(Impairments(loss_percent=10, duplicate_percent=30, seed=1), 2000)
    assert set(lossy) == set(both)


def test_a_reordered_packet_follows_the_next_one_and_nothing_is_lost() -> None:
    out, imp = run_impairment(Impairments(reorder_percent=50), 5)
    numbers = [int.from_bytes(p, "big") for p in out]
    assert numbers == [1, 0, 3, 2, 4]  # the last one is held to the end, then flushed
    assert imp.reordered == 2 and imp.dropped == 0  # ... so it was not reordered after all
    out, _ = run_impairment(Impairments(reorder_percent=30, duplicate_percent=30, seed=2), 1000)
    assert set(Counter(out)) == {i.to_bytes(4, "big") for i in range(1000)}


@pytest.mark.parametrize("seed", range(5))
def test_reordered_counts_the_packets_that_arrive_after_a_later_one(seed: int) -> None:
    out, imp = run_impairment(Impairments(loss_percent=5, reorder_percent=10,
                                          duplicate_percent=5, seed=seed), 500)
    numbers = [int.from_bytes(p, "big") for p in out]
    assert sum(1 for a, b in zip(numbers, numbers[1:], strict=False) if b < a) == imp.reordered


def test_total_loss_sends_nothing() -> None:
    out, imp = run_impairment(Impairments(loss_percent=100), 100)
    assert out == [] and imp.dropped == 100


# --- DTMF (RFC 4733) ---------------------------------------------------------------------------


def dtmf_plan(codec: str = "PCMU", inband: str = "tone") -> CallPlan:
    return CallPlan(streams=default_streams(2, codec), duration=1.0,
                    dtmf=(DtmfDigit("5", at=0.2, duration=0.1),), dtmf_inband=inband)  # type: ignore[arg-type]


def dtmf_stream(plan: CallPlan, index: int = 0) -> RtpStream:
    spec = codec_spec(plan.streams[index].codec)
    return RtpStream(
        payload_type=spec.payload_type, units=spec.rtp_units(plan.ptime_ms),
        payloads=encode_source(spec, 440.0, 50, loop=True), ssrc=1, first_seq=65530,
        first_timestamp=5000, event_pt=101, overrides=dtmf_overrides(plan, index),
    )


def all_packets(rtp: RtpStream, frames: int) -> list[tuple[int, RtpPacket]]:
    return [(k, parse_rtp(p)) for k in range(frames) for p in rtp.packets(k)]


@pytest.mark.parametrize(("codec", "units"), [("PCMU", 160), ("G722", 160), ("opus", 960)])
def test_key_press_is_one_event_of_growing_duration_with_three_end_packets(
    codec: str, units: int
) -> None:
    plan = dtmf_plan(codec)
    packets = all_packets(dtmf_stream(plan), plan.frames())
    events = [(k, p) for k, p in packets if p.payload_type == 101]
    blocks = [parse_telephone_event(p.payload) for _, p in events]
    assert [k for k, _ in events] == list(range(10, 10 + 5 + DTMF_END_REPEATS - 1))
    assert {p.timestamp for _, p in events} == {5000 + 10 * units}  # the event's start
    assert [p.marker for _, p in events] == [True] + [False] * 6
    assert [b.duration for b in blocks] == [units * i for i in (1, 2, 3, 4, 5, 5, 5)]
    assert [b.end for b in blocks] == [False] * 4 + [True] * 3
    assert {b.event for b in blocks} == {5} and {b.volume for b in blocks} == {10}
    # Every packet has its own sequence number (SRTP replay protection would drop repeats).
    seqs = [p.sequence_number for _, p in packets]
    assert seqs == [(65530 + i) & 0xFFFF for i in range(len(packets))]
    tracker = TelephoneEventTracker()
    transitions = [t for _, p in events
                   for t in tracker.observe(p.timestamp, parse_telephone_event(p.payload))]
    assert transitions == [EventStarted(5000 + 10 * units, 5, units),
                           EventEnded(5000 + 10 * units, 5, 5 * units, 10, True)]


def test_inband_tone_mode_sends_the_keys_dual_tone_while_the_event_lasts() -> None:
    plan = dtmf_plan("PCMU", "tone")
    packets = all_packets(dtmf_stream(plan), plan.frames())
    audio = {k: bytes(p.payload) for k, p in packets if p.payload_type == 0}
    assert sorted(audio) == list(range(50))  # audio never stops
    during = ULAW_TO_LINEAR[np.frombuffer(b"".join(audio[k] for k in range(10, 15)), np.uint8)]
    assert tone_level_db(during, 8000, 770) > -20 and tone_level_db(during, 8000, 1336) > -20
    assert tone_level_db(during, 8000, 440) < -40
    after = ULAW_TO_LINEAR[np.frombuffer(audio[15] + audio[16], np.uint8)]
    assert tone_level_db(after, 8000, 440) > -15  # the repeats of the end carry audio again


def test_inband_none_mode_suppresses_audio_during_the_event() -> None:
    plan = dtmf_plan("PCMA", "none")
    packets = all_packets(dtmf_stream(plan), plan.frames())
    audio_ticks = {k for k, p in packets if p.payload_type == 8}
    assert audio_ticks == set(range(50)) - set(range(10, 15))


def test_inband_silence_mode_sends_digital_silence() -> None:
    plan = dtmf_plan("PCMU", "silence")
    overrides = dtmf_overrides(plan, 0)
    assert overrides[10].audio == b"\xff" * 160


def test_dtmf_only_on_its_own_stream() -> None:
    assert dtmf_overrides(dtmf_plan(), 1) == {}


@pytest.mark.parametrize("digits", [
    (DtmfDigit("1", 0.2), DtmfDigit("2", 0.25)),  # overlaps (end repeats included)
    (DtmfDigit("1", 0.95),),  # its end would fall after the call
    (DtmfDigit("x", 0.2),),
    (DtmfDigit("1", 0.2, stream=5),),
    (DtmfDigit("1", 0.0, duration=9.0),),  # over 16 bits of duration at 8 kHz
])
def test_impossible_key_presses_are_refused(digits: tuple[DtmfDigit, ...]) -> None:
    with pytest.raises(SiprecClientError):
        CallPlan(duration=1.0 if digits[0].duration < 1 else 20.0, dtmf=digits).validate()


# --- the INVITE --------------------------------------------------------------------------------


PARTIES = (Participant("sip:+15550100@sbc.example.com", "Alice Caller"),
           Participant("sip:agent7@cc.example.com", "Bob <Agent> & Co"))


def offer_and_metadata(suite: str | None = "AES_CM_128_HMAC_SHA1_80") -> tuple[
        list[OfferedMedia], bytes, bytes, tuple[StreamPlan, ...]]:
    streams = (StreamPlan("a_leg", PARTIES[0], "PCMU", srtp=suite),
               StreamPlan("16777227", PARTIES[1], "G722", srtp=suite))
    found = find_suite(suite) if suite else None
    media = [OfferedMedia(s.label, 4000 + 2 * i, codec_spec(s.codec), srtp_suite=suite,
                          key_salt=os.urandom(found.key_salt_len) if found else None)
             for i, s in enumerate(streams)]
    sdp = build_offer_sdp(media, address="127.0.0.1", session_id=42, session_version=1)
    metadata = build_metadata(
        streams, session_id="c2Vzc2lvbg==", stream_ids=["c3RyZWFtMQ==", "c3RyZWFtMg=="],
        participant_ids={PARTIES[0]: "cGFydHkx", PARTIES[1]: "cGFydHky"},
        now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    return media, sdp, metadata, streams


def test_invite_is_a_recording_session_the_recorder_accepts_even_strictly() -> None:
    media, sdp, metadata, _ = offer_and_metadata()
    dialog = SrcDialog(transport="udp", local=("127.0.0.1", 5999), server=("127.0.0.1", 5060))
    wire = dialog.invite(sdp, metadata).to_bytes()
    request = parse_message(wire)
    assert isinstance(request, SipRequest) and request.method == "INVITE"
    head, _, body = wire.partition(b"\r\n\r\n")
    assert int(request.headers.get("Content-Length") or -1) == len(body)
    assert "siprec" in request.headers.tokens("Require")
    assert ";+sip.src" in (request.headers.get("Contact") or "")
    assert request.top_via.branch and request.top_via.branch.startswith("z9hG4bK")
    siprec = read_body(request)
    check_recording_session(request, siprec, strict=True)
    assert siprec.sdp == sdp and siprec.metadata == metadata
    parts = split_body(request.content_type or "", request.body)
    assert find_part(parts, "application/sdp") is not None
    part = metadata_part(parts)
    assert part is not None and part.disposition == "recording-session"


def test_sdp_offer_has_one_sendonly_labelled_line_per_stream() -> None:
    media, sdp, _, _ = offer_and_metadata()
    offer = parse_sdp(sdp)
    assert [m.label for m in offer.media] == ["a_leg", "16777227"]
    assert {m.direction for m in offer.media} == {"sendonly"}
    assert [m.port for m in offer.media] == [4000, 4002]
    assert [[(c.pt, c.name, c.rate) for c in m.codecs] for m in offer.media] == [
        [(0, "PCMU", 8000), (101, "telephone-event", 8000)],
        [(9, "G722", 8000), (101, "telephone-event", 8000)],
    ]
    assert [m.crypto[0].key_salt for m in offer.media] == [m.key_salt for m in media]
    assert not any(a in ("record", "recordpref") for m in offer.media for a, _ in m.attributes)
    plain = parse_sdp(offer_and_metadata(None)[1])
    assert {m.proto for m in plain.media} == {"RTP/AVP"} and not plain.media[0].crypto


def test_metadata_names_the_parties_and_who_sends_which_stream() -> None:
    _, _, metadata, _ = offer_and_metadata()
    document = parse_metadata(metadata)
    assert document.datamode == "complete" and not document.warnings
    assert document.session_id == "c2Vzc2lvbg=="
    assert {(p.aor, p.name) for p in document.participants} == {
        ("sip:+15550100@sbc.example.com", "Alice Caller"),
        ("sip:agent7@cc.example.com", "Bob <Agent> & Co")}
    assert {s.id: s.label for s in document.streams} == {
        "c3RyZWFtMQ==": "a_leg", "c3RyZWFtMg==": "16777227"}
    alice = document.participant("cGFydHkx")
    assert alice is not None and alice.send == ("c3RyZWFtMQ==",)
    assert alice.recv == ("c3RyZWFtMg==",)


def test_the_recorders_answer_to_our_offer_reads_back() -> None:
    media, sdp, _, _ = offer_and_metadata("AES_256_CM_HMAC_SHA1_80")
    ports = iter(range(30000, 30100, 2))
    negotiation = negotiate(parse_sdp(sdp), AnswerPreferences(), local_address="127.0.0.1",
                            port_for=lambda _i: next(ports), session_id=7, session_version=1)
    answered = read_answer(negotiation.answer_sdp, len(media))
    assert [(a.label, a.port, a.payload_type, a.telephone_event_pt, a.direction)
            for a in answered] == [("a_leg", 30000, 0, 101, "recvonly"),
                                   ("16777227", 30002, 9, 101, "recvonly")]
    assert {a.srtp_suite for a in answered} == {"AES_256_CM_HMAC_SHA1_80"}
    assert all(a.srtp_key_ok for a in answered)


@pytest.mark.parametrize("body", [b"", b"\x00garbage", b"v=0\r\nm=audio 1 RTP/AVP 0\r\n"])
def test_an_answer_that_does_not_match_the_offer_is_an_error(body: bytes) -> None:
    with pytest.raises(SiprecClientError):
        read_answer(body, 2)


def response(status: int, to: str, contact: str | None = None) -> SipResponse:
    headers = Headers([("To", to), ("CSeq", "1 INVITE")])
    if contact:
        headers.add("Contact", contact)
    return SipResponse(headers, b"", status, "x")


def test_ack_of_200_is_a_new_transaction_to_the_recorders_contact() -> None:
    dialog = SrcDialog(transport="tcp", local=("127.0.0.1", 5999), server=("127.0.0.1", 5060))
    invite = dialog.invite(b"v=0\r\n", b"<recording/>")
    ack = dialog.ack(invite, response(200, "<sip:srs@127.0.0.1>;tag=srs1",
                                      "<sip:srs@127.0.0.1:5060;transport=tcp>;+sip.srs"))
    assert ack.uri == "sip:srs@127.0.0.1:5060;transport=tcp"
    assert ack.to_tag == "srs1" and ack.cseq == (1, "ACK")
    assert ack.top_via.branch != invite.top_via.branch
    bye = dialog.request("BYE")
    assert bye.cseq == (2, "BYE") and bye.to_tag == "srs1" and bye.from_tag == invite.from_tag


def test_ack_of_an_error_belongs_to_the_invite_transaction() -> None:
    dialog = SrcDialog(transport="udp", local=("127.0.0.1", 5999), server=("127.0.0.1", 5060))
    invite = dialog.invite(b"v=0\r\n", b"<recording/>")
    ack = dialog.ack(invite, response(488, "<sip:srs@127.0.0.1>;tag=t9"))
    assert ack.top_via.branch == invite.top_via.branch and ack.uri == invite.uri
    assert ack.to_tag == "t9" and ack.cseq == (1, "ACK")


# --- plans and the command line ----------------------------------------------------------------


@pytest.mark.parametrize("plan", [
    CallPlan(streams=()),
    CallPlan(streams=default_streams(2, srtp="AES_CM_512_NOPE")),
    CallPlan(streams=(StreamPlan("1", PARTIES[0]), StreamPlan("1", PARTIES[1]))),
    CallPlan(streams=default_streams(1, "opus"), ptime_ms=30),
    CallPlan(hold=Hold(2.0, 1.0)),
    CallPlan(impairments=Impairments(loss_percent=101)),
    CallPlan(impairments=Impairments(reorder_percent=60)),
    CallPlan(duration=0),
    CallPlan(transport="sctp"),  # type: ignore[arg-type]
])
def test_impossible_plans_are_refused(plan: CallPlan) -> None:
    with pytest.raises(SiprecClientError):
        plan.validate()


def test_default_streams_are_distinct_parties_with_distinct_tones() -> None:
    streams = default_streams(3, "G722", "AEAD_AES_128_GCM")
    assert [s.label for s in streams] == ["1", "2", "3"]
    assert len({s.participant for s in streams}) == 3
    assert len({s.source for s in streams}) == 3
    CallPlan(streams=streams).validate()


def test_command_line_builds_one_plan_per_call_with_its_own_seed() -> None:
    args = loadgen.parser().parse_args([
        "--server", "127.0.0.1:5060", "--calls", "3", "--codec", "opus", "--srtp",
        "AEAD_AES_256_GCM", "--loss", "1.5", "--seed", "10", "--dtmf", "12#", "--hold", "2:3",
        "--streams", "4"])
    plans = loadgen.plans_from(args)
    assert len(plans) == 3
    assert [p.impairments.seed for p in plans if p.impairments] == [10, 11, 12]
    assert [d.digit for d in plans[0].dtmf] == ["1", "2", "#"]
    assert plans[0].hold == Hold(2.0, 3.0)
    assert {(s.codec, s.srtp) for s in plans[0].streams} == {("opus", "AEAD_AES_256_GCM")}
    assert len(plans[0].streams) == 4
    for plan in plans:
        plan.validate()


@pytest.mark.parametrize("argv", [
    [],
    ["--server", "127.0.0.1:5060", "--codec", "G729"],
    ["--server", "127.0.0.1:5060", "--loss", "150"],
    ["--server", "127.0.0.1:5060", "--calls", "0"],
    ["--server", "no-port-here"],
    ["--server", "127.0.0.1:5060", "--hold", "soon"],
    ["--server", "127.0.0.1:5060", "--reorder", "60"],
])
def test_command_line_refuses_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        loadgen.main(argv)
    assert exit_info.value.code == 2


# --- the package -------------------------------------------------------------------------------


def test_the_package_exports_what_it_takes_to_plan_run_and_read_calls() -> None:
    # The sans-IO pieces (RtpStream, SrcDialog, build_offer_sdp...) are imported from their
    # modules; the package itself is what the load generator and the end-to-end tests use.
    assert sorted(siprec_client.__all__) == sorted([
        "CODECS", "T1", "AudioSource", "CallPlan", "CallReport", "CodecSpec", "DtmfDigit",
        "DtmfSent", "Hold", "Impairments", "Participant", "RunReport", "SenderStats",
        "ServerAddress", "SipExchange", "SiprecClientError", "StreamPlan", "StreamReport",
        "codec_spec", "default_streams", "parse_server", "run_calls",
    ])
    for name in siprec_client.__all__:
        assert hasattr(siprec_client, name), name
