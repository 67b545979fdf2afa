"""SRTP/SRTCP for the recorder: build a receiver (or, for tests and load generation, a sender)
from an SDES crypto suite and its `inline:` key||salt.

Which engine runs a suite:

- AES_CM_128_HMAC_SHA1_80/32, AEAD_AES_128_GCM, AEAD_AES_256_GCM: libsrtp through pylibsrtp,
  with a wildcard-SSRC policy so one receiver follows every SSRC the SRC sends (each with its
  own rollover counter and replay window, SSRC changes need no reconfiguration).
- AES_256_CM_HMAC_SHA1_80/32 (RFC 6188): `srtp_aes_cm`, ours; pylibsrtp 1.0 has no such profile.

pylibsrtp 1.0 exposes neither MKIs nor the SRTCP encryption switch of a policy. A session that
needs one of them runs on `srtp_aes_cm` when the suite is AES-CM (128 or 256 bits); with the GCM
suites it is refused with ValueError when the receiver is built, as is a key of the wrong size.

Every failure to unprotect a packet is an `SrtpError` (auth, replay or format); nothing else
escapes for any input bytes, and pylibsrtp's own exception never leaks. One difference between
the engines remains visible: an SRTCP packet with E=0 when UNENCRYPTED_SRTCP was not negotiated
is refused by libsrtp (SrtpError) but accepted by ours (the flag is authenticated either way).
"""

from __future__ import annotations

from typing import Protocol

import pylibsrtp
from pylibsrtp._binding import ffi as _ffi
from pylibsrtp._binding import lib as _lib

from siprec_server.media.srtp_aes_cm import SRTCP_TAG_LEN, AesCmContext, rtp_header_length
from siprec_server.media.srtp_errors import (
    SrtpAuthError,
    SrtpError,
    SrtpFormatError,
    SrtpReplayError,
)
from siprec_server.media.srtp_suites import SrtpSuite

__all__ = [
    "Packet",
    "SrtpAuthError",
    "SrtpError",
    "SrtpFormatError",
    "SrtpReceiver",
    "SrtpReplayError",
    "SrtpSender",
    "srtp_receiver",
    "srtp_sender",
]

_LIBSRTP_PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
}

# pylibsrtp raises Error(<libsrtp's message for the status code>); these are those messages.
_LIBSRTP_AUTH_FAILURES = frozenset({"authentication failure"})
_LIBSRTP_REPLAYS = frozenset(
    {
        "replay check failed (bad index)",
        "replay check failed (index too old)",
        "packet index is too old to consider",
    }
)
_LIBSRTP_FORMAT_ERRORS = frozenset({"error parsing data", "unsupported parameter"})

_LIBSRTP_BUFFER = 1500
"""pylibsrtp copies each packet into a buffer of this size (trailer room included)."""
_LIBSRTP_RTP_TRAILER = 16 + 128
_LIBSRTP_RTCP_TRAILER = 4 + 16 + 128
_GCM_TAG_LEN = 16
_RTCP_MIN = 8 + 4
_MAX_MKI_LEN = 128


class _Transform(Protocol):
    def protect_rtp(self, packet: bytes) -> bytes: ...
    def unprotect_rtp(self, packet: bytes) -> bytes: ...
    def protect_rtcp(self, packet: bytes) -> bytes: ...
    def unprotect_rtcp(self, packet: bytes) -> bytes: ...


def _libsrtp_error(error: Exception) -> SrtpError:
    message = str(error)
    if message in _LIBSRTP_AUTH_FAILURES:
        return SrtpAuthError(f"libsrtp: {message}")
    if message in _LIBSRTP_REPLAYS:
        return SrtpReplayError(f"libsrtp: {message}")
    if message in _LIBSRTP_FORMAT_ERRORS:
        return SrtpFormatError(f"libsrtp: {message}")
    return SrtpError(f"libsrtp: {message}")


class _LibsrtpTransform:
    """One pylibsrtp session with a wildcard-SSRC policy, errors translated to ours.

    Packets are checked for RTP/RTCP shape first so malformed input gets the same
    SrtpFormatError as on our own transform, whatever libsrtp would say about it.
    """

    __slots__ = ("_rtcp_tag_len", "_rtp_tag_len", "_session", "_context", "_cdata", "_buffer",
                 "_length")

    def __init__(self, suite: SrtpSuite, key_salt: bytes, *, inbound: bool) -> None:
        ssrc_type = (
            pylibsrtp.Policy.SSRC_ANY_INBOUND if inbound else pylibsrtp.Policy.SSRC_ANY_OUTBOUND
        )
        policy = pylibsrtp.Policy(
            key=key_salt, ssrc_type=ssrc_type, srtp_profile=_LIBSRTP_PROFILES[suite.name]
        )
        self._session = pylibsrtp.Session(policy)
        # The per-packet path calls libsrtp through pylibsrtp's own binding with the session's
        # buffer, skipping a wrapper that allocates a length cell and re-checks types on every
        # packet (pylibsrtp is pinned to 1.0.0, whose Session keeps these three attributes).
        self._context = self._session._srtp[0]
        self._cdata = self._session._cdata
        self._buffer = self._session._buffer
        self._length = _ffi.new("int *")
        self._rtp_tag_len = suite.rtp_auth_tag_len
        self._rtcp_tag_len = _GCM_TAG_LEN if suite.cipher == "aes-gcm" else SRTCP_TAG_LEN

    def unprotect_rtp(self, packet: bytes) -> bytes:
        size = len(packet)
        if size > _LIBSRTP_BUFFER:
            raise SrtpFormatError("packet larger than the SRTP buffer")
        rtp_header_length(packet, size - self._rtp_tag_len)
        self._buffer[0:size] = packet
        length = self._length
        length[0] = size
        status = _lib.srtp_unprotect(self._context, self._cdata, length)
        if status:
            raise _libsrtp_error(pylibsrtp.Error(pylibsrtp.ERRORS[status]))
        plaintext: bytes = self._buffer[0 : length[0]]
        return plaintext

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        if len(packet) > _LIBSRTP_BUFFER:
            raise SrtpFormatError("packet larger than the SRTP buffer")
        _check_srtcp_shape(packet, self._rtcp_tag_len)
        try:
            return self._session.unprotect_rtcp(packet)
        except pylibsrtp.Error as error:
            raise _libsrtp_error(error) from None

    def protect_rtp(self, packet: bytes) -> bytes:
        if len(packet) > _LIBSRTP_BUFFER - _LIBSRTP_RTP_TRAILER:
            raise SrtpFormatError("packet too large to protect")
        rtp_header_length(packet, len(packet))
        try:
            return self._session.protect(packet)
        except pylibsrtp.Error as error:
            raise _libsrtp_error(error) from None

    def protect_rtcp(self, packet: bytes) -> bytes:
        if len(packet) > _LIBSRTP_BUFFER - _LIBSRTP_RTCP_TRAILER:
            raise SrtpFormatError("packet too large to protect")
        if len(packet) < 8 or packet[0] & 0xC0 != 0x80:
            raise SrtpFormatError("not an RTCP packet")
        try:
            return self._session.protect_rtcp(packet)
        except pylibsrtp.Error as error:
            raise _libsrtp_error(error) from None


def _check_srtcp_shape(packet: bytes, tag_len: int) -> None:
    if len(packet) < _RTCP_MIN + tag_len:
        raise SrtpFormatError("shorter than an SRTCP packet")
    if packet[0] & 0xC0 != 0x80:
        raise SrtpFormatError("not RTCP version 2")


Packet = bytes | bytearray | memoryview
"""What a receiver takes: bytes, or a socket buffer holding one datagram."""


def _as_bytes(packet: Packet) -> bytes:
    # pylibsrtp insists on bytes; bytearray/memoryview from a socket buffer are fine for us.
    return packet if type(packet) is bytes else bytes(packet)


def _mki_bytes(mki: tuple[int, int] | None) -> bytes:
    if mki is None:
        return b""
    value, length = mki
    if not 1 <= length <= _MAX_MKI_LEN:
        raise ValueError(f"MKI length must be 1..{_MAX_MKI_LEN} bytes")
    if not 0 <= value < 1 << (8 * length):
        raise ValueError("MKI value does not fit its length")
    return value.to_bytes(length, "big")


def _build_transform(
    suite: SrtpSuite,
    key_salt: bytes,
    *,
    unencrypted_srtcp: bool,
    mki: tuple[int, int] | None,
    inbound: bool,
) -> _Transform:
    key_salt = bytes(key_salt)
    if len(key_salt) != suite.key_salt_len:
        raise ValueError(
            f"{suite.name} needs {suite.key_salt_len} bytes of key||salt, got {len(key_salt)}"
        )
    mki_value = _mki_bytes(mki)
    needs_ours = bool(mki_value) or unencrypted_srtcp
    if suite.cipher == "aes-cm" and (suite.key_len == 32 or needs_ours):
        return AesCmContext(
            key_salt[: suite.key_len],
            key_salt[suite.key_len :],
            suite.rtp_auth_tag_len,
            unencrypted_srtcp=unencrypted_srtcp,
            mki=mki_value,
        )
    if suite.name not in _LIBSRTP_PROFILES:
        raise ValueError(f"no SRTP transform for suite {suite.name}")
    if needs_ours:
        raise ValueError(
            f"{suite.name} via pylibsrtp 1.0 supports neither MKI nor UNENCRYPTED_SRTCP"
        )
    return _LibsrtpTransform(suite, key_salt, inbound=inbound)


def receivable(suite: SrtpSuite, *, mki: bool, unencrypted_srtcp: bool) -> bool:
    """Whether this module can receive the suite with these SDES parameters (pylibsrtp 1.0 has
    neither MKI nor UNENCRYPTED_SRTCP, and only our AES-CM transform stands in for it)."""
    return suite.cipher == "aes-cm" or not (mki or unencrypted_srtcp)


class SrtpReceiver:
    """Unprotects the SRTP and SRTCP packets of one received media stream, any SSRC in it."""

    __slots__ = ("_transform", "suite")

    def __init__(self, suite: SrtpSuite, transform: _Transform) -> None:
        self.suite = suite
        self._transform = transform

    def unprotect_rtp(self, packet: Packet) -> bytes:
        """The RTP packet inside an SRTP packet; raises an SrtpError subclass on refusal."""
        return self._transform.unprotect_rtp(_as_bytes(packet))

    def unprotect_rtcp(self, packet: Packet) -> bytes:
        """The (compound) RTCP packet inside an SRTCP packet; raises SrtpError on refusal."""
        return self._transform.unprotect_rtcp(_as_bytes(packet))


class SrtpSender:
    """Protects RTP and RTCP packets: the SRC side, for our load generator and tests."""

    __slots__ = ("_transform", "suite")

    def __init__(self, suite: SrtpSuite, transform: _Transform) -> None:
        self.suite = suite
        self._transform = transform

    def protect_rtp(self, packet: Packet) -> bytes:
        """The SRTP packet for an RTP packet; SrtpReplayError if its index was already used."""
        return self._transform.protect_rtp(_as_bytes(packet))

    def protect_rtcp(self, packet: Packet) -> bytes:
        """The SRTCP packet for a (compound) RTCP packet."""
        return self._transform.protect_rtcp(_as_bytes(packet))


def srtp_receiver(
    suite: SrtpSuite,
    key_salt: bytes,
    *,
    unencrypted_srtcp: bool = False,
    mki: tuple[int, int] | None = None,
) -> SrtpReceiver:
    """A receiver for the SRC's key of one m-line.

    `key_salt` is the decoded `inline:` blob; `mki` is (value, length in bytes) from its
    `|MKI:length` part; `unencrypted_srtcp` is the UNENCRYPTED_SRTCP session parameter.
    Raises ValueError for a key of the wrong size or a combination no engine supports.
    """
    return SrtpReceiver(
        suite,
        _build_transform(
            suite, key_salt, unencrypted_srtcp=unencrypted_srtcp, mki=mki, inbound=True
        ),
    )


def srtp_sender(
    suite: SrtpSuite,
    key_salt: bytes,
    *,
    unencrypted_srtcp: bool = False,
    mki: tuple[int, int] | None = None,
) -> SrtpSender:
    """A sender with the same arguments as `srtp_receiver` (the SRC side of a stream)."""
    return SrtpSender(
        suite,
        _build_transform(
            suite, key_salt, unencrypted_srtcp=unencrypted_srtcp, mki=mki, inbound=False
        ),
    )
