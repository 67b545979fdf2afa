"""Our RFC 3711 AES-CM/HMAC-SHA1 transform: RFC test vectors, packet index and replay rules, and
byte-for-byte agreement with libsrtp (through pylibsrtp) for the 128-bit suites."""

from __future__ import annotations

import random

import pylibsrtp
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from siprec_server.media.srtp_aes_cm import (
    REPLAY_WINDOW,
    SRTCP_TAG_LEN,
    AesCmContext,
    aes_cm_keystream,
    derive_session_key,
    derive_session_keys,
    srtp_iv,
)
from siprec_server.media.srtp_errors import SrtpAuthError, SrtpFormatError, SrtpReplayError

SSRC = 0x1234_5678


def rtp_packet(
    seq: int,
    *,
    ssrc: int = SSRC,
    payload: bytes = b"\xd5" * 160,
    csrcs: tuple[int, ...] = (),
    extension: bytes | None = None,
) -> bytes:
    first = 0x80 | len(csrcs) | (0x10 if extension is not None else 0)
    header = (
        bytes([first, 0])
        + seq.to_bytes(2, "big")
        + (seq * 160 & 0xFFFFFFFF).to_bytes(4, "big")
        + ssrc.to_bytes(4, "big")
        + b"".join(c.to_bytes(4, "big") for c in csrcs)
    )
    if extension is not None:
        header += b"\xbe\xde" + (len(extension) // 4).to_bytes(2, "big") + extension
    return header + payload


def rtcp_compound(ssrc: int = SSRC, packets_sent: int = 0) -> bytes:
    """A sender report followed by an SDES CNAME chunk, as RFC 3550 §6.1 requires."""
    sender_report = (
        bytes([0x80, 200, 0, 6])
        + ssrc.to_bytes(4, "big")
        + bytes(8)
        + (packets_sent * 160).to_bytes(4, "big")
        + packets_sent.to_bytes(4, "big")
        + (packets_sent * 160).to_bytes(4, "big")
    )
    cname = b"rec@example.invalid"
    chunk = ssrc.to_bytes(4, "big") + bytes([1, len(cname)]) + cname + b"\x00"
    chunk += bytes(-len(chunk) % 4)
    sdes = bytes([0x81, 202]) + (len(chunk) // 4).to_bytes(2, "big") + chunk
    return sender_report + sdes


def payload_for(seq: int) -> bytes:
    return random.Random(seq).randbytes(160)


# -- RFC 3711 Appendix B.2: AES-CM keystream --------------------------------------------------


def test_aes_cm_keystream_matches_rfc3711_appendix_b2() -> None:
    session_key = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
    session_salt = bytes.fromhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD")
    iv = srtp_iv(session_salt, ssrc=0, index=0)
    assert iv == bytes.fromhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000")

    keystream = aes_cm_keystream(session_key, iv, 1044512)  # the RFC's 65282-block segment

    def block(counter: int) -> str:
        return keystream[16 * counter : 16 * counter + 16].hex().upper()

    assert block(0x0000) == "E03EAD0935C95E80E166B16DD92B4EB4"
    assert block(0x0001) == "D23513162B02D0F72A43A2FE4A5F97AB"
    assert block(0x0002) == "41E95B3BB0A2E8DD477901E4FCA894C0"
    assert block(0xFEFF) == "EC8CDF7398607CB0F2D21675EA9EA1E4"
    assert block(0xFF00) == "362B7C3C6773516318A077D7FC5073AE"
    assert block(0xFF01) == "6A2CC3787889374FBEB4C81B17BA6C44"


def test_iv_mixes_ssrc_and_index_into_the_salt() -> None:
    salt = bytes(14)
    assert srtp_iv(salt, ssrc=0xCAFEBABE, index=0x1234_5678_9ABC) == bytes.fromhex(
        "00000000CAFEBABE123456789ABC0000"
    )


# -- RFC 3711 Appendix B.3: key derivation ----------------------------------------------------

RFC3711_MASTER_KEY = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139")
RFC3711_MASTER_SALT = bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6")


def test_key_derivation_matches_rfc3711_appendix_b3() -> None:
    key, salt = RFC3711_MASTER_KEY, RFC3711_MASTER_SALT
    assert derive_session_key(key, salt, 0x00, 16).hex().upper() == (
        "C61E7A93744F39EE10734AFE3FF7A087"
    )
    assert derive_session_key(key, salt, 0x02, 14).hex().upper() == ("30CBBC08863D8C85D49DB34A9AE1")
    # The RFC walks the auth key through six AES blocks: 94 octets.
    assert derive_session_key(key, salt, 0x01, 94).hex().upper() == (
        "CEBE321F6FF7716B6FD4AB49AF256A15"
        "6D38BAA48F0A0ACF3C34E2359E6CDBCE"
        "E049646C43D9327AD175578EF7227098"
        "6371C10C9A369AC2F94A8C5FBCDDDC25"
        "6D6E919A48B610EF17C2041E47403576"
        "6B68642C59BBFC2F34DB60DBDFB2"
    )


def test_srtp_session_keys_take_the_first_160_bits_of_the_auth_prf() -> None:
    keys = derive_session_keys(RFC3711_MASTER_KEY, RFC3711_MASTER_SALT, rtcp=False)
    assert keys.encryption.hex().upper() == "C61E7A93744F39EE10734AFE3FF7A087"
    assert keys.salt.hex().upper() == "30CBBC08863D8C85D49DB34A9AE1"
    assert keys.authentication.hex().upper() == "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"


# -- RFC 6188 §7.2: AES_256_CM_PRF ------------------------------------------------------------
# The RFC text itself was not at hand while writing this; the digits below are the §7.2 values
# exactly as several independent SRTP implementations' test suites reproduce them, and the
# independent computation in the next test confirms them.

RFC6188_MASTER_KEY = bytes.fromhex(
    "f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6"
)
RFC6188_MASTER_SALT = bytes.fromhex("3b04803de51ee7c96423ab5b78d2")


def test_aes_256_key_derivation_matches_rfc6188_section_7_2() -> None:
    keys = derive_session_keys(RFC6188_MASTER_KEY, RFC6188_MASTER_SALT, rtcp=False)
    assert keys.encryption.hex() == (
        "5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4"
    )
    assert len(keys.encryption) == 32  # RFC 6188: the session key is as long as the master key
    assert keys.salt.hex() == "fa31791685ca444a9e07c6c64e93"
    assert keys.authentication.hex() == "fd9c32d39ed5fbb5a9dc96b30818454d1313dc05"


@pytest.mark.parametrize("master_key", [RFC3711_MASTER_KEY, RFC6188_MASTER_KEY])
@pytest.mark.parametrize("label", range(6))
def test_key_derivation_agrees_with_aes_on_the_rfc_input_blocks(
    master_key: bytes, label: int
) -> None:
    """Independent check: AES(master key) applied block by block to the RFC 3711 §4.3.3 inputs
    (salt XOR label at octet 7, times 2^16, plus the block counter)."""
    salt = RFC3711_MASTER_SALT
    x = int.from_bytes(salt, "big") ^ (label << 48)
    ecb = Cipher(algorithms.AES(master_key), modes.ECB()).encryptor()
    expected = b"".join(ecb.update(((x << 16) + j).to_bytes(16, "big")) for j in range(3))
    assert derive_session_key(master_key, salt, label, 40) == expected[:40]


def test_aes_256_packet_matches_the_libsrtp_reference_packet() -> None:
    # libsrtp's srtp_validate_aes_256 case: same master key and salt as RFC 6188 §7.2.
    context = AesCmContext(RFC6188_MASTER_KEY, RFC6188_MASTER_SALT, 10)
    plaintext = bytes.fromhex("800f1234decafbadcafebabe" + "ab" * 16)
    ciphertext = bytes.fromhex(
        "800f1234decafbadcafebabef1d9de17ff251ff1aa007774b0b4b40da08d9d9a5b3a55d8873b"
    )
    assert context.protect_rtp(plaintext) == ciphertext
    assert (
        AesCmContext(RFC6188_MASTER_KEY, RFC6188_MASTER_SALT, 10).unprotect_rtp(ciphertext)
        == plaintext
    )


# -- cross-implementation: our AES-CM-128 against libsrtp --------------------------------------

CROSS_KEY = bytes(range(1, 31))
CSRCS = (0x0A0B0C0D, 0x01020304)
EXTENSION = bytes.fromhex("10ab20cdef000000")  # one-byte-header extension, padded to 8 bytes


def libsrtp_session(tag_len: int, *, inbound: bool) -> pylibsrtp.Session:
    profile = (
        pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
        if tag_len == 10
        else pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32
    )
    ssrc_type = pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND
    return pylibsrtp.Session(
        pylibsrtp.Policy(key=CROSS_KEY, ssrc_type=ssrc_type, srtp_profile=profile)
    )


def wrap_crossing_packets() -> list[bytes]:
    """3000 packets from seq 64000 across the 65535 -> 0 wrap, some with CSRCs and extension."""
    packets = []
    for n in range(3000):
        seq = (64000 + n) & 0xFFFF
        packets.append(
            rtp_packet(
                seq,
                payload=payload_for(n),
                csrcs=CSRCS if n % 3 == 0 else (),
                extension=EXTENSION if n % 2 == 0 else None,
            )
        )
    return packets


@pytest.mark.parametrize("tag_len", [10, 4])
def test_our_srtp_is_byte_identical_to_libsrtp_and_each_reads_the_other(tag_len: int) -> None:
    ours_tx = AesCmContext(CROSS_KEY[:16], CROSS_KEY[16:], tag_len)
    ours_rx = AesCmContext(CROSS_KEY[:16], CROSS_KEY[16:], tag_len)
    libsrtp_tx = libsrtp_session(tag_len, inbound=False)
    libsrtp_rx = libsrtp_session(tag_len, inbound=True)

    for packet in wrap_crossing_packets():
        ours = ours_tx.protect_rtp(packet)
        theirs = libsrtp_tx.protect(packet)
        assert ours == theirs
        assert len(ours) == len(packet) + tag_len
        assert libsrtp_rx.unprotect(ours) == packet
        assert ours_rx.unprotect_rtp(theirs) == packet


@pytest.mark.parametrize("tag_len", [10, 4])
def test_our_srtcp_and_libsrtp_read_each_other(tag_len: int) -> None:
    ours_tx = AesCmContext(CROSS_KEY[:16], CROSS_KEY[16:], tag_len)
    ours_rx = AesCmContext(CROSS_KEY[:16], CROSS_KEY[16:], tag_len)
    libsrtp_tx = libsrtp_session(tag_len, inbound=False)
    libsrtp_rx = libsrtp_session(tag_len, inbound=True)

    for n in range(300):
        report = rtcp_compound(packets_sent=n)
        ours = ours_tx.protect_rtcp(report)
        # E flag, 31-bit index, then an 80-bit tag even for the _32 suite (RFC 4568 §6.2).
        assert len(ours) == len(report) + 4 + SRTCP_TAG_LEN
        assert int.from_bytes(ours[-14:-10], "big") == 0x8000_0000 | n
        assert libsrtp_rx.unprotect_rtcp(ours) == report
        assert ours_rx.unprotect_rtcp(libsrtp_tx.protect_rtcp(report)) == report


def test_unencrypted_srtcp_leaves_the_report_readable() -> None:
    sender = AesCmContext(CROSS_KEY[:16], CROSS_KEY[16:], 10, unencrypted_srtcp=True)
    receiver = AesCmContext(CROSS_KEY[:16], CROSS_KEY[16:], 10, unencrypted_srtcp=True)
    report = rtcp_compound(packets_sent=7)

    protected = sender.protect_rtcp(report)

    assert protected[: len(report)] == report
    assert protected[len(report) : len(report) + 4] == bytes(4)  # E=0, index 0
    assert receiver.unprotect_rtcp(protected) == report


def test_receiver_follows_the_authenticated_e_flag_whatever_was_negotiated() -> None:
    # Tolerant where libsrtp is strict (it refuses E=0 under an encrypting policy): the flag is
    # covered by the tag, so honouring it cannot be abused to read anything.
    plain_sender = AesCmContext(CROSS_KEY[:16], CROSS_KEY[16:], 10, unencrypted_srtcp=True)
    encrypting_sender = AesCmContext(CROSS_KEY[:16], CROSS_KEY[16:], 10)
    receiver = AesCmContext(CROSS_KEY[:16], CROSS_KEY[16:], 10)
    report = rtcp_compound(ssrc=1)
    assert receiver.unprotect_rtcp(plain_sender.protect_rtcp(report)) == report
    report = rtcp_compound(ssrc=2)
    assert receiver.unprotect_rtcp(encrypting_sender.protect_rtcp(report)) == report


def test_unencrypted_srtcp_is_still_authenticated() -> None:
    sender = AesCmContext(CROSS_KEY[:16], CROSS_KEY[16:], 10, unencrypted_srtcp=True)
    receiver = AesCmContext(CROSS_KEY[:16], CROSS_KEY[16:], 10, unencrypted_srtcp=True)
    protected = bytearray(sender.protect_rtcp(rtcp_compound()))
    protected[20] ^= 0x01
    with pytest.raises(SrtpAuthError):
        receiver.unprotect_rtcp(bytes(protected))


# -- packet index, rollover counter, replay window ---------------------------------------------


def pair(tag_len: int = 10) -> tuple[AesCmContext, AesCmContext]:
    key, salt = RFC6188_MASTER_KEY, RFC6188_MASTER_SALT
    return AesCmContext(key, salt, tag_len), AesCmContext(key, salt, tag_len)


def test_rollover_counter_advances_at_the_sequence_wrap() -> None:
    sender, receiver = pair()
    # Densely across the first wrap, then in strides of 997 (heavy loss) across two more.
    for n in [*range(65530, 65545), *range(65545, 4 * 65536, 997)]:
        packet = rtp_packet(n & 0xFFFF, payload=payload_for(n))
        assert receiver.unprotect_rtp(sender.protect_rtp(packet)) == packet


def test_late_packet_from_before_the_wrap_uses_the_previous_rollover_counter() -> None:
    sender, receiver = pair()
    protected = {
        n: sender.protect_rtp(rtp_packet(n & 0xFFFF, payload=payload_for(n)))
        for n in range(65500, 65560)
    }
    # A few packets before the wrap, then everything after it, then the stragglers of ROC 0.
    arrival = [*range(65500, 65510), *range(65536, 65560), *range(65510, 65536)]
    for n in arrival:
        assert receiver.unprotect_rtp(protected[n])[12:] == payload_for(n)


def test_a_stream_starting_just_before_the_wrap_crosses_it() -> None:
    sender, receiver = pair()
    for n in (65535, 65536, 65537):
        packet = rtp_packet(n & 0xFFFF, payload=payload_for(n))
        assert receiver.unprotect_rtp(sender.protect_rtp(packet)) == packet


def test_packet_claiming_to_be_before_the_first_rollover_is_refused() -> None:
    sender, receiver = pair()
    receiver.unprotect_rtp(sender.protect_rtp(rtp_packet(10)))
    # seq 40000 after 10 means ROC - 1 = -1: no such packet can exist.
    with pytest.raises(SrtpReplayError):
        receiver.unprotect_rtp(sender.protect_rtp(rtp_packet(40000)))


def test_replay_window_holds_128_packets_behind_the_highest() -> None:
    sender, receiver = pair()
    protected = [sender.protect_rtp(rtp_packet(seq)) for seq in range(300)]
    receiver.unprotect_rtp(protected[299])
    receiver.unprotect_rtp(protected[299 - (REPLAY_WINDOW - 1)])
    with pytest.raises(SrtpReplayError):
        receiver.unprotect_rtp(protected[299 - REPLAY_WINDOW])
    with pytest.raises(SrtpReplayError):
        receiver.unprotect_rtp(protected[299 - (REPLAY_WINDOW - 1)])


def test_forged_packet_far_ahead_does_not_move_the_window() -> None:
    sender, receiver = pair()
    forger, _ = pair()
    receiver.unprotect_rtp(sender.protect_rtp(rtp_packet(100)))
    forged = bytearray(forger.protect_rtp(rtp_packet(30000)))
    forged[-1] ^= 0xFF
    with pytest.raises(SrtpAuthError):
        receiver.unprotect_rtp(bytes(forged))
    # Had the forgery been recorded, 101 would now be behind the window.
    assert receiver.unprotect_rtp(sender.protect_rtp(rtp_packet(101))) == rtp_packet(101)


def test_failed_authentication_does_not_mark_the_index_as_received() -> None:
    sender, receiver = pair()
    genuine = sender.protect_rtp(rtp_packet(5))
    forged = bytearray(genuine)
    forged[30] ^= 0x01
    with pytest.raises(SrtpAuthError):
        receiver.unprotect_rtp(bytes(forged))
    assert receiver.unprotect_rtp(genuine) == rtp_packet(5)


def test_sender_refuses_to_reuse_an_index() -> None:
    sender, _ = pair()
    sender.protect_rtp(rtp_packet(7))
    with pytest.raises(SrtpReplayError):
        sender.protect_rtp(rtp_packet(7, payload=b"other"))


def test_srtcp_replay_window_per_ssrc() -> None:
    sender, receiver = pair()
    first = sender.protect_rtcp(rtcp_compound(ssrc=1))
    other_ssrc = sender.protect_rtcp(rtcp_compound(ssrc=2))  # also index 0
    receiver.unprotect_rtcp(first)
    receiver.unprotect_rtcp(other_ssrc)
    with pytest.raises(SrtpReplayError):
        receiver.unprotect_rtcp(first)


# -- header layout, MKI, tag lengths ------------------------------------------------------------


def test_csrcs_and_header_extension_stay_in_clear_and_payload_is_encrypted() -> None:
    sender, receiver = pair()
    packet = rtp_packet(9, csrcs=CSRCS, extension=EXTENSION, payload=payload_for(9))
    header_len = 12 + 4 * len(CSRCS) + 4 + len(EXTENSION)

    protected = sender.protect_rtp(packet)

    assert protected[:header_len] == packet[:header_len]
    assert protected[header_len:-10] != packet[header_len:]
    assert receiver.unprotect_rtp(protected) == packet


def test_mki_sits_between_payload_and_tag_and_must_match() -> None:
    key, salt = RFC6188_MASTER_KEY, RFC6188_MASTER_SALT
    mki = bytes.fromhex("00000001")
    sender = AesCmContext(key, salt, 4, mki=mki)
    receiver = AesCmContext(key, salt, 4, mki=mki)
    stranger = AesCmContext(key, salt, 4, mki=bytes.fromhex("00000002"))
    packet = rtp_packet(3)

    protected = sender.protect_rtp(packet)

    assert len(protected) == len(packet) + 4 + 4
    assert protected[-8:-4] == mki
    with pytest.raises(SrtpAuthError):
        stranger.unprotect_rtp(protected)
    assert receiver.unprotect_rtp(protected) == packet
    report = rtcp_compound()
    protected_report = sender.protect_rtcp(report)
    assert protected_report[-14:-10] == mki
    assert receiver.unprotect_rtcp(protected_report) == report


def test_short_tag_suite_truncates_hmac_to_four_bytes() -> None:
    sender, receiver = pair(tag_len=4)
    packet = rtp_packet(1)
    protected = sender.protect_rtp(packet)
    assert len(protected) == len(packet) + 4
    assert receiver.unprotect_rtp(protected) == packet


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x80\x00",
        bytes(21),  # version 0
        rtp_packet(1, payload=b"")[:11] + bytes(10),
        bytes([0x8F]) + bytes(30),  # 15 CSRCs announced, 31 bytes present
        bytes([0x90]) + bytes(11) + b"\xbe\xde\xff\xff" + bytes(20),  # extension overflows
    ],
)
def test_malformed_srtp_is_a_format_error(packet: bytes) -> None:
    _, receiver = pair()
    with pytest.raises(SrtpFormatError):
        receiver.unprotect_rtp(packet)


def test_master_key_and_salt_sizes_are_checked() -> None:
    with pytest.raises(ValueError):
        AesCmContext(bytes(24), bytes(14), 10)
    with pytest.raises(ValueError):
        AesCmContext(bytes(16), bytes(12), 10)
    with pytest.raises(ValueError):
        AesCmContext(bytes(16), bytes(14), 8)
