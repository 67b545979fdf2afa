"""SRTP/SRTCP with AES counter mode and HMAC-SHA1 (RFC 3711), for 128- and 256-bit master keys.

pylibsrtp 1.0 offers no AES-256-CM profile, yet SBCs offer AES_256_CM_HMAC_SHA1_80/32 (RFC 6188),
so this module implements the RFC 3711 transform itself: the AES-CM PRF key derivation
(key derivation rate 0), the implicit packet index with a per-SSRC rollover counter, HMAC-SHA1
authentication checked before anything is decrypted, and a 128-packet replay window per SSRC.
The same code serves 128-bit keys; `srtp` uses that when pylibsrtp cannot express a session
(MKI, UNENCRYPTED_SRTCP), and the tests hold it against libsrtp.

Sans-IO: bytes in, bytes out, no clock. One `AesCmContext` holds the state of every SSRC of one
direction of one media stream; it is not thread-safe (one call's media lives in one worker).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from siprec_server.media.srtp_errors import (
    SrtpAuthError,
    SrtpError,
    SrtpFormatError,
    SrtpReplayError,
)

# RFC 3711 §4.3.1 and §4.3.2: the key derivation labels.
LABEL_RTP_ENCRYPTION = 0x00
LABEL_RTP_AUTH = 0x01
LABEL_RTP_SALT = 0x02
LABEL_RTCP_ENCRYPTION = 0x03
LABEL_RTCP_AUTH = 0x04
LABEL_RTCP_SALT = 0x05

MASTER_SALT_LEN = 14
AUTH_KEY_LEN = 20
"""n_a = 160 bits for HMAC-SHA1 (RFC 3711 §4.2.1, RFC 4568 §6.2)."""
SRTCP_TAG_LEN = 10
"""SRTCP always carries an 80-bit tag, also with the _32 suites (RFC 4568 §6.2 table)."""
REPLAY_WINDOW = 128
"""Packets behind the highest index still accepted once; RFC 3711 §3.3.2 asks for at least 64."""

_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1
_RTP_HEADER_LEN = 12
_RTCP_HEADER_LEN = 8
_SRTCP_INDEX_LEN = 4
_SRTCP_E_FLAG = 0x80000000
_SRTCP_MAX_INDEX = 0x7FFFFFFF
_MAX_MKI_LEN = 128


def aes_cm_keystream(key: bytes, iv: bytes, length: int) -> bytes:
    """`length` bytes of AES counter-mode keystream starting at counter block `iv`."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return encryptor.update(bytes(length)) + encryptor.finalize()


def derive_session_key(master_key: bytes, master_salt: bytes, label: int, length: int) -> bytes:
    """The AES-CM PRF of RFC 3711 §4.3.1/§4.3.3 with key derivation rate 0.

    x = (label || r) XOR master_salt with r = 0, and the key is the keystream under the master
    key from counter block x * 2^16. A 256-bit master key runs AES-256 (AES_256_CM_PRF, RFC 6188).
    """
    if len(master_key) not in (16, 32):
        raise ValueError("master key must be 16 or 32 bytes")
    if len(master_salt) != MASTER_SALT_LEN:
        raise ValueError(f"master salt must be {MASTER_SALT_LEN} bytes")
    if not 0 <= label <= 0xFF:
        raise ValueError("label is one byte")
    x = bytearray(master_salt)
    # key_id = label (8 bits) || r (48 bits) is right-aligned under the 112-bit salt.
    x[MASTER_SALT_LEN - 7] ^= label
    return aes_cm_keystream(master_key, bytes(x) + b"\x00\x00", length)


def srtp_iv(session_salt: bytes, ssrc: int, index: int) -> bytes:
    """IV = (k_s * 2^16) XOR (SSRC * 2^64) XOR (i * 2^16) (RFC 3711 §4.1.1), also for SRTCP."""
    salt = int.from_bytes(session_salt, "big") << 16
    return (salt ^ (ssrc << 64) ^ (index << 16)).to_bytes(16, "big")


def rtp_header_length(packet: bytes, end: int) -> int:
    """Bytes of RTP header (fixed part, CSRCs, extension) before the payload.

    `end` is where the payload must end at the latest (the packet length minus any SRTP
    trailer). Raises SrtpFormatError when the packet is not RTP version 2 or the header does
    not fit.
    """
    if end < _RTP_HEADER_LEN:
        raise SrtpFormatError("shorter than an RTP header")
    first = packet[0]
    if first & 0xC0 != 0x80:
        raise SrtpFormatError("not RTP version 2")
    length = _RTP_HEADER_LEN + 4 * (first & 0x0F)
    if first & 0x10:
        if length + 4 > end:
            raise SrtpFormatError("header extension does not fit")
        length += 4 + 4 * ((packet[length + 2] << 8) | packet[length + 3])
    if length > end:
        raise SrtpFormatError("RTP header does not fit")
    return length


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The keys one direction (SRTP or SRTCP) derives from the master key and salt."""

    encryption: bytes
    authentication: bytes
    salt: bytes


def derive_session_keys(master_key: bytes, master_salt: bytes, *, rtcp: bool) -> SessionKeys:
    """Session keys for SRTP (labels 0, 1, 2) or SRTCP (labels 3, 4, 5).

    The session encryption key is as long as the master key: 32 bytes for AES-256 (RFC 6188).
    """
    base = LABEL_RTCP_ENCRYPTION if rtcp else LABEL_RTP_ENCRYPTION
    return SessionKeys(
        encryption=derive_session_key(master_key, master_salt, base, len(master_key)),
        authentication=derive_session_key(master_key, master_salt, base + 1, AUTH_KEY_LEN),
        salt=derive_session_key(master_key, master_salt, base + 2, MASTER_SALT_LEN),
    )


class _ReplayWindow:
    """Highest authenticated index of one SSRC and a bitmask of the ones just behind it.

    For SRTP the highest index is ROC * 2^16 + s_l, so ROC and s_l of RFC 3711 §3.3.1 are
    read from it and updated in one assignment.
    """

    __slots__ = ("highest", "mask")

    def __init__(self, index: int) -> None:
        self.highest = index
        self.mask = 1

    def check(self, index: int) -> int:
        """Distance ahead of the highest index; raises SrtpReplayError for a replay."""
        delta = index - self.highest
        if delta <= 0:
            if -delta >= REPLAY_WINDOW:
                raise SrtpReplayError("index behind the replay window")
            if (self.mask >> -delta) & 1:
                raise SrtpReplayError("index already received")
        return delta

    def accept(self, delta: int) -> None:
        """Record an authenticated index `delta` ahead of the highest (from `check`)."""
        if delta > 0:
            self.mask = ((self.mask << delta) | 1) & _WINDOW_MASK if delta < REPLAY_WINDOW else 1
            self.highest += delta
        else:
            self.mask |= 1 << -delta


def _estimate_index(window: _ReplayWindow, seq: int) -> int:
    """RFC 3711 Appendix A: pick ROC-1, ROC or ROC+1 so the index is closest to the highest."""
    highest = window.highest
    roc = highest >> 16
    s_l = highest & 0xFFFF
    if s_l < 0x8000:
        if seq - s_l > 0x8000:
            roc -= 1
            if roc < 0:
                raise SrtpReplayError("index before the start of the stream")
    elif s_l - 0x8000 > seq:
        roc += 1
    return (roc << 16) | seq


class AesCmContext:
    """SRTP and SRTCP crypto contexts of one direction of one stream, for every SSRC in it.

    `rtp_tag_len` is 10 (HMAC_SHA1_80) or 4 (HMAC_SHA1_32). `mki` is the Master Key
    Identifier carried in each packet (empty when the session has none). A sender and a
    receiver are both an AesCmContext; each side only calls its own half of the methods.
    """

    __slots__ = (
        "_mki",
        "_mki_len",
        "_rtcp_aes",
        "_rtcp_encrypt",
        "_rtcp_mac",
        "_rtcp_next_index",
        "_rtcp_salt",
        "_rtcp_windows",
        "_rtp_aes",
        "_rtp_mac",
        "_rtp_salt",
        "_rtp_tag_len",
        "_rtp_windows",
    )

    def __init__(
        self,
        master_key: bytes,
        master_salt: bytes,
        rtp_tag_len: int,
        *,
        unencrypted_srtcp: bool = False,
        mki: bytes = b"",
    ) -> None:
        if rtp_tag_len not in (4, 10):
            raise ValueError("HMAC-SHA1 tag must be 4 or 10 bytes")
        if len(mki) > _MAX_MKI_LEN:
            raise ValueError(f"MKI is at most {_MAX_MKI_LEN} bytes")
        rtp = derive_session_keys(master_key, master_salt, rtcp=False)
        rtcp = derive_session_keys(master_key, master_salt, rtcp=True)
        self._rtp_aes = algorithms.AES(rtp.encryption)
        self._rtp_salt = int.from_bytes(rtp.salt, "big") << 16
        # One keyed HMAC per direction, copied per packet: keying costs two SHA-1 blocks.
        self._rtp_mac = crypto_hmac.HMAC(rtp.authentication, hashes.SHA1())
        self._rtp_tag_len = rtp_tag_len
        self._rtcp_aes = algorithms.AES(rtcp.encryption)
        self._rtcp_salt = int.from_bytes(rtcp.salt, "big") << 16
        self._rtcp_mac = crypto_hmac.HMAC(rtcp.authentication, hashes.SHA1())
        self._rtcp_encrypt = not unencrypted_srtcp
        self._mki = bytes(mki)
        self._mki_len = len(mki)
        self._rtp_windows: dict[int, _ReplayWindow] = {}
        self._rtcp_windows: dict[int, _ReplayWindow] = {}
        self._rtcp_next_index: dict[int, int] = {}

    # -- SRTP -------------------------------------------------------------------------------

    def _rtp_index(self, ssrc: int, seq: int) -> tuple[_ReplayWindow | None, int, int]:
        """The SSRC's replay window (None before its first packet), the packet's estimated
        index (RFC 3711 §3.3.1) and its position relative to the window (raises on replay)."""
        window = self._rtp_windows.get(ssrc)
        if window is None:
            # RFC 4568 §6.4: ROC starts at zero and s_l at the first packet's SEQ.
            return None, seq, 0
        index = _estimate_index(window, seq)
        return window, index, window.check(index)

    def unprotect_rtp(self, packet: bytes) -> bytes:
        """Authenticate, replay-check and decrypt one SRTP packet; returns the RTP packet."""
        tag_len = self._rtp_tag_len
        size = len(packet)
        auth_end = size - tag_len - self._mki_len
        header_len = rtp_header_length(packet, auth_end)
        ssrc = int.from_bytes(packet[8:12], "big")
        window, index, delta = self._rtp_index(ssrc, (packet[2] << 8) | packet[3])
        if self._mki_len and packet[auth_end : auth_end + self._mki_len] != self._mki:
            raise SrtpAuthError("unknown MKI")
        mac = self._rtp_mac.copy()
        mac.update(packet[:auth_end])
        mac.update(((index >> 16) & 0xFFFFFFFF).to_bytes(4, "big"))
        if not hmac.compare_digest(mac.finalize()[:tag_len], packet[size - tag_len :]):
            raise SrtpAuthError("SRTP authentication tag mismatch")
        iv = (self._rtp_salt ^ (ssrc << 64) ^ (index << 16)).to_bytes(16, "big")
        payload = (
            Cipher(self._rtp_aes, modes.CTR(iv)).decryptor().update(packet[header_len:auth_end])
        )
        if window is None:
            self._rtp_windows[ssrc] = _ReplayWindow(index)
        else:
            window.accept(delta)
        return packet[:header_len] + payload

    def protect_rtp(self, packet: bytes) -> bytes:
        """Encrypt and authenticate one RTP packet (sender side).

        Refuses (SrtpReplayError) to protect an index twice: that would reuse keystream.
        """
        size = len(packet)
        header_len = rtp_header_length(packet, size)
        ssrc = int.from_bytes(packet[8:12], "big")
        window, index, delta = self._rtp_index(ssrc, (packet[2] << 8) | packet[3])
        iv = (self._rtp_salt ^ (ssrc << 64) ^ (index << 16)).to_bytes(16, "big")
        protected = packet[:header_len] + Cipher(self._rtp_aes, modes.CTR(iv)).encryptor().update(
            packet[header_len:]
        )
        mac = self._rtp_mac.copy()
        mac.update(protected)
        mac.update(((index >> 16) & 0xFFFFFFFF).to_bytes(4, "big"))
        if window is None:
            self._rtp_windows[ssrc] = _ReplayWindow(index)
        else:
            window.accept(delta)
        return protected + self._mki + mac.finalize()[: self._rtp_tag_len]

    # -- SRTCP ------------------------------------------------------------------------------

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """Authenticate, replay-check and (if its E flag says so) decrypt one SRTCP packet."""
        size = len(packet)
        auth_end = size - SRTCP_TAG_LEN - self._mki_len
        if auth_end < _RTCP_HEADER_LEN + _SRTCP_INDEX_LEN:
            raise SrtpFormatError("shorter than an SRTCP packet")
        if packet[0] & 0xC0 != 0x80:
            raise SrtpFormatError("not RTCP version 2")
        body_end = auth_end - _SRTCP_INDEX_LEN
        e_and_index = int.from_bytes(packet[body_end:auth_end], "big")
        index = e_and_index & _SRTCP_MAX_INDEX
        ssrc = int.from_bytes(packet[4:8], "big")
        window = self._rtcp_windows.get(ssrc)
        delta = 0 if window is None else window.check(index)
        if self._mki_len and packet[auth_end : auth_end + self._mki_len] != self._mki:
            raise SrtpAuthError("unknown MKI")
        mac = self._rtcp_mac.copy()
        mac.update(packet[:auth_end])
        if not hmac.compare_digest(mac.finalize()[:SRTCP_TAG_LEN], packet[size - SRTCP_TAG_LEN :]):
            raise SrtpAuthError("SRTCP authentication tag mismatch")
        # The E flag is covered by the tag, so an attacker cannot clear it; follow it as
        # libsrtp does, whatever UNENCRYPTED_SRTCP said.
        if e_and_index & _SRTCP_E_FLAG:
            iv = (self._rtcp_salt ^ (ssrc << 64) ^ (index << 16)).to_bytes(16, "big")
            body = (
                Cipher(self._rtcp_aes, modes.CTR(iv))
                .decryptor()
                .update(packet[_RTCP_HEADER_LEN:body_end])
            )
        else:
            body = packet[_RTCP_HEADER_LEN:body_end]
        if window is None:
            self._rtcp_windows[ssrc] = _ReplayWindow(index)
        else:
            window.accept(delta)
        return packet[:_RTCP_HEADER_LEN] + body

    def protect_rtcp(self, packet: bytes) -> bytes:
        """Append E flag, SRTCP index, MKI and tag to one (compound) RTCP packet (sender side).

        The index of each SSRC starts at 0 and grows by one per packet (RFC 3711 §3.4).
        """
        if len(packet) < _RTCP_HEADER_LEN:
            raise SrtpFormatError("shorter than an RTCP header")
        if packet[0] & 0xC0 != 0x80:
            raise SrtpFormatError("not RTCP version 2")
        ssrc = int.from_bytes(packet[4:8], "big")
        index = self._rtcp_next_index.get(ssrc, 0)
        if index > _SRTCP_MAX_INDEX:
            raise SrtpError("SRTCP index exhausted: the master key must be replaced")
        self._rtcp_next_index[ssrc] = index + 1
        if self._rtcp_encrypt:
            iv = (self._rtcp_salt ^ (ssrc << 64) ^ (index << 16)).to_bytes(16, "big")
            body = (
                Cipher(self._rtcp_aes, modes.CTR(iv)).encryptor().update(packet[_RTCP_HEADER_LEN:])
            )
            e_and_index = _SRTCP_E_FLAG | index
        else:
            body = packet[_RTCP_HEADER_LEN:]
            e_and_index = index
        protected = packet[:_RTCP_HEADER_LEN] + body + e_and_index.to_bytes(4, "big")
        mac = self._rtcp_mac.copy()
        mac.update(protected)
        return protected + self._mki + mac.finalize()[:SRTCP_TAG_LEN]
