"""The recorder's SRTP receivers for every SDES suite it accepts: what an SRC sends arrives, and
forged, replayed, stale or garbage packets are refused with an SrtpError and nothing else."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from siprec_server.media.srtp import (
    SrtpAuthError,
    SrtpError,
    SrtpFormatError,
    SrtpReceiver,
    SrtpReplayError,
    SrtpSender,
    srtp_receiver,
    srtp_sender,
)
from siprec_server.media.srtp_suites import SUITES, SrtpSuite, find_suite

SSRC_A = 0x1111_2222
SSRC_B = 0x3333_4444
SUITE_IDS = [suite.name for suite in SUITES]


def rtp_packet(seq: int, *, ssrc: int = SSRC_A, payload: bytes | None = None) -> bytes:
    if payload is None:
        payload = random.Random(seq * 7 + ssrc).randbytes(160)
    return (
        bytes([0x80, 0])
        + (seq & 0xFFFF).to_bytes(2, "big")
        + (seq * 160 & 0xFFFFFFFF).to_bytes(4, "big")
        + ssrc.to_bytes(4, "big")
        + payload
    )


def receiver_report(ssrc: int = SSRC_A) -> bytes:
    report_block = SSRC_B.to_bytes(4, "big") + bytes(20)
    return bytes([0x81, 201, 0, 7]) + ssrc.to_bytes(4, "big") + report_block


def key_for(suite: SrtpSuite, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(suite.key_salt_len)


def endpoints(suite: SrtpSuite, **options: object) -> tuple[SrtpSender, SrtpReceiver]:
    key = key_for(suite)
    return srtp_sender(suite, key, **options), srtp_receiver(suite, key, **options)  # type: ignore[arg-type]


@pytest.fixture(params=SUITES, ids=SUITE_IDS)
def suite(request: pytest.FixtureRequest) -> SrtpSuite:
    return request.param  # type: ignore[no-any-return]


def test_rtp_round_trip(suite: SrtpSuite) -> None:
    sender, receiver = endpoints(suite)
    for seq in range(1000, 1050):
        packet = rtp_packet(seq)
        protected = sender.protect_rtp(packet)
        assert len(protected) == len(packet) + suite.rtp_auth_tag_len
        assert protected[12:] != packet[12:]
        assert receiver.unprotect_rtp(protected) == packet


def test_rtcp_round_trip(suite: SrtpSuite) -> None:
    sender, receiver = endpoints(suite)
    for _ in range(5):
        report = receiver_report()
        protected = sender.protect_rtcp(report)
        assert protected[8 : len(report)] != report[8:]  # encrypted by default
        assert receiver.unprotect_rtcp(protected) == report


@pytest.mark.parametrize("position", [1, 8, 40, -1], ids=["header", "ssrc", "payload", "tag"])
def test_tampered_packet_is_an_auth_error(suite: SrtpSuite, position: int) -> None:
    sender, receiver = endpoints(suite)
    tampered = bytearray(sender.protect_rtp(rtp_packet(10)))
    tampered[position] ^= 0x01
    with pytest.raises(SrtpAuthError):
        receiver.unprotect_rtp(bytes(tampered))


def test_tampered_rtcp_is_an_auth_error(suite: SrtpSuite) -> None:
    sender, receiver = endpoints(suite)
    tampered = bytearray(sender.protect_rtcp(receiver_report()))
    tampered[12] ^= 0x80
    with pytest.raises(SrtpAuthError):
        receiver.unprotect_rtcp(bytes(tampered))


def test_replayed_packet_is_a_replay_error(suite: SrtpSuite) -> None:
    sender, receiver = endpoints(suite)
    protected = sender.protect_rtp(rtp_packet(500))
    receiver.unprotect_rtp(protected)
    with pytest.raises(SrtpReplayError):
        receiver.unprotect_rtp(protected)


def test_replayed_rtcp_is_a_replay_error(suite: SrtpSuite) -> None:
    sender, receiver = endpoints(suite)
    protected = sender.protect_rtcp(receiver_report())
    receiver.unprotect_rtcp(protected)
    with pytest.raises(SrtpReplayError):
        receiver.unprotect_rtcp(protected)


def test_reordered_packets_inside_the_window_are_accepted(suite: SrtpSuite) -> None:
    sender, receiver = endpoints(suite)
    protected = {seq: sender.protect_rtp(rtp_packet(seq)) for seq in range(200, 260)}
    arrival = list(protected)
    random.Random(3).shuffle(arrival)
    for seq in arrival:
        assert receiver.unprotect_rtp(protected[seq]) == rtp_packet(seq)


def test_very_old_packet_is_a_replay_error(suite: SrtpSuite) -> None:
    sender, receiver = endpoints(suite)
    protected = [sender.protect_rtp(rtp_packet(seq)) for seq in range(1, 400)]
    for packet in protected[200:]:
        receiver.unprotect_rtp(packet)
    # Never received, but 300+ packets behind the newest one: outside any replay window.
    with pytest.raises(SrtpReplayError):
        receiver.unprotect_rtp(protected[0])


def test_new_ssrc_mid_call_needs_no_reconfiguration(suite: SrtpSuite) -> None:
    sender, receiver = endpoints(suite)
    for seq in range(100, 110):
        receiver.unprotect_rtp(sender.protect_rtp(rtp_packet(seq, ssrc=SSRC_A)))
    # The SBC re-anchors media: a new SSRC starting at an unrelated sequence number.
    for seq in range(50000, 50010):
        packet = rtp_packet(seq, ssrc=SSRC_B)
        assert receiver.unprotect_rtp(sender.protect_rtp(packet)) == packet
    # The old SSRC comes back; its own window and rollover counter were kept.
    for seq in range(110, 120):
        packet = rtp_packet(seq, ssrc=SSRC_A)
        assert receiver.unprotect_rtp(sender.protect_rtp(packet)) == packet
    report = receiver_report(ssrc=SSRC_B)
    assert receiver.unprotect_rtcp(sender.protect_rtcp(report)) == report


def test_each_ssrc_has_its_own_rollover_counter_and_window(suite: SrtpSuite) -> None:
    sender, receiver = endpoints(suite)
    # A crosses the sequence wrap; B uses the same sequence numbers without crossing it.
    for n in range(65530, 65545):
        for ssrc in (SSRC_A, SSRC_B):
            seq = n & 0xFFFF if ssrc == SSRC_A else n - 60000
            packet = rtp_packet(seq, ssrc=ssrc)
            assert receiver.unprotect_rtp(sender.protect_rtp(packet)) == packet
    # Same seq on both SSRCs is not a replay.
    same_a = sender.protect_rtp(rtp_packet(20, ssrc=SSRC_A))
    same_b = sender.protect_rtp(rtp_packet(5600, ssrc=SSRC_B))
    receiver.unprotect_rtp(same_a)
    receiver.unprotect_rtp(same_b)


def test_wrong_key_is_an_auth_error(suite: SrtpSuite) -> None:
    sender = srtp_sender(suite, key_for(suite, seed=1))
    receiver = srtp_receiver(suite, key_for(suite, seed=2))
    with pytest.raises(SrtpAuthError):
        receiver.unprotect_rtp(sender.protect_rtp(rtp_packet(1)))
    with pytest.raises(SrtpAuthError):
        receiver.unprotect_rtcp(sender.protect_rtcp(receiver_report()))


def test_packet_of_another_suite_is_refused(suite: SrtpSuite) -> None:
    other = next(s for s in SUITES if s.rtp_auth_tag_len != suite.rtp_auth_tag_len)
    sender = srtp_sender(other, key_for(other))
    receiver = srtp_receiver(suite, key_for(suite))
    with pytest.raises(SrtpError):
        receiver.unprotect_rtp(sender.protect_rtp(rtp_packet(1)))


def test_socket_buffers_are_accepted(suite: SrtpSuite) -> None:
    sender, receiver = endpoints(suite)
    protected = sender.protect_rtp(rtp_packet(1))
    assert receiver.unprotect_rtp(bytearray(protected)) == rtp_packet(1)
    assert receiver.unprotect_rtp(memoryview(sender.protect_rtp(rtp_packet(2)))) == rtp_packet(2)


def test_oversized_datagram_is_a_format_error(suite: SrtpSuite) -> None:
    _, receiver = endpoints(suite)
    with pytest.raises(SrtpError):
        receiver.unprotect_rtp(rtp_packet(1, payload=bytes(1600)))
    with pytest.raises(SrtpError):
        receiver.unprotect_rtcp(receiver_report() + bytes(1600))


@pytest.mark.parametrize("packet", [b"", b"\x80", bytes(40), b"\x80\xc9" + bytes(6)])
def test_runt_or_non_rtp_packets_are_format_errors(suite: SrtpSuite, packet: bytes) -> None:
    _, receiver = endpoints(suite)
    with pytest.raises(SrtpFormatError):
        receiver.unprotect_rtp(packet)
    with pytest.raises(SrtpFormatError):
        receiver.unprotect_rtcp(packet)


# -- construction -------------------------------------------------------------------------------


def test_key_of_the_wrong_size_is_refused(suite: SrtpSuite) -> None:
    with pytest.raises(ValueError):
        srtp_receiver(suite, bytes(suite.key_salt_len - 1))
    with pytest.raises(ValueError):
        srtp_receiver(suite, bytes(suite.key_salt_len + 1))


def test_sbc_spelling_of_the_256_bit_suite_builds_a_receiver() -> None:
    suite = find_suite("AES_CM_256_HMAC_SHA1_80")
    assert suite is not None
    sender, receiver = endpoints(suite)
    assert receiver.unprotect_rtp(sender.protect_rtp(rtp_packet(1))) == rtp_packet(1)


@pytest.mark.parametrize("name", ["AEAD_AES_128_GCM", "AEAD_AES_256_GCM"])
def test_gcm_cannot_run_with_mki_or_unencrypted_srtcp(name: str) -> None:
    suite = find_suite(name)
    assert suite is not None
    with pytest.raises(ValueError):
        srtp_receiver(suite, key_for(suite), mki=(1, 4))
    with pytest.raises(ValueError):
        srtp_receiver(suite, key_for(suite), unencrypted_srtcp=True)


@pytest.mark.parametrize("mki", [(0, 0), (256, 1), (-1, 2), (1, 129)])
def test_impossible_mki_is_refused(mki: tuple[int, int]) -> None:
    suite = SUITES[0]
    with pytest.raises(ValueError):
        srtp_receiver(suite, key_for(suite), mki=mki)


@pytest.mark.parametrize(
    "name",
    [
        "AES_CM_128_HMAC_SHA1_80",
        "AES_CM_128_HMAC_SHA1_32",
        "AES_256_CM_HMAC_SHA1_80",
        "AES_256_CM_HMAC_SHA1_32",
    ],
)
def test_aes_cm_sessions_with_mki_and_unencrypted_srtcp(name: str) -> None:
    suite = find_suite(name)
    assert suite is not None
    sender, receiver = endpoints(suite, mki=(7, 2), unencrypted_srtcp=True)
    packet = rtp_packet(42)
    protected = sender.protect_rtp(packet)
    assert len(protected) == len(packet) + 2 + suite.rtp_auth_tag_len
    assert protected[len(packet) : len(packet) + 2] == b"\x00\x07"
    assert receiver.unprotect_rtp(protected) == packet
    report = receiver_report()
    protected_report = sender.protect_rtcp(report)
    assert protected_report.startswith(report)  # UNENCRYPTED_SRTCP: E=0, body in clear
    assert receiver.unprotect_rtcp(protected_report) == report


def test_a_receiver_without_mki_refuses_packets_that_carry_one() -> None:
    suite = SUITES[0]
    sender = srtp_sender(suite, key_for(suite), mki=(1, 4))
    receiver = srtp_receiver(suite, key_for(suite))
    with pytest.raises(SrtpAuthError):
        receiver.unprotect_rtp(sender.protect_rtp(rtp_packet(1)))


# -- arbitrary input: bytes or SrtpError, never anything else ---------------------------------

_RECEIVERS = {suite.name: srtp_receiver(suite, key_for(suite)) for suite in SUITES}
_SAMPLES = {
    suite.name: (
        srtp_sender(suite, key_for(suite)).protect_rtp(rtp_packet(77)),
        srtp_sender(suite, key_for(suite)).protect_rtcp(receiver_report()),
    )
    for suite in SUITES
}
_HYPOTHESIS = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

rtp_like = st.one_of(
    st.binary(max_size=200),
    st.binary(min_size=1400, max_size=1700),
    st.tuples(st.integers(0x80, 0xBF), st.binary(max_size=300)).map(lambda t: bytes([t[0]]) + t[1]),
)


@st.composite
def mutated(draw: st.DrawFn, sample: bytes) -> bytes:
    """A genuine packet with a few bytes changed, cut short or extended."""
    data = bytearray(sample)
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=8))


def _unprotect_or_refuse(receiver: SrtpReceiver, packet: bytes, rtcp: bool) -> None:
    try:
        result = receiver.unprotect_rtcp(packet) if rtcp else receiver.unprotect_rtp(packet)
    except SrtpError:
        return
    assert isinstance(result, bytes)


@pytest.mark.parametrize("name", SUITE_IDS)
@_HYPOTHESIS
@given(data=st.data())
def test_arbitrary_bytes_give_bytes_or_srtp_error(name: str, data: st.DataObject) -> None:
    rtp_sample, rtcp_sample = _SAMPLES[name]
    receiver = _RECEIVERS[name]
    _unprotect_or_refuse(receiver, data.draw(rtp_like), rtcp=False)
    _unprotect_or_refuse(receiver, data.draw(rtp_like), rtcp=True)
    _unprotect_or_refuse(receiver, data.draw(mutated(rtp_sample)), rtcp=False)
    _unprotect_or_refuse(receiver, data.draw(mutated(rtcp_sample)), rtcp=True)


def test_libsrtp_refusals_surface_as_srtp_errors() -> None:
    # E=0 without UNENCRYPTED_SRTCP negotiated: libsrtp refuses ("unable to perform desired
    # validation"); the receiver reports that as an SrtpError, never as pylibsrtp's own error.
    suite = SUITES[0]
    sender = srtp_sender(suite, key_for(suite), unencrypted_srtcp=True)
    receiver = srtp_receiver(suite, key_for(suite))
    with pytest.raises(SrtpError) as refusal:
        receiver.unprotect_rtcp(sender.protect_rtcp(receiver_report()))
    assert type(refusal.value).__module__ == "siprec_server.media.srtp_errors"
