"""The SDES crypto suites (RFC 4568, 6188, 7714) the recorder accepts, with their key sizes.

Shared by the SDP answer (to check an offered key and make a fresh one of the right size) and the
SRTP receivers (to build the right transform). Names are the IANA spellings; `aliases` holds the
other spellings SBCs are seen to send.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SrtpSuite:
    name: str
    """Canonical IANA name, as echoed in the SDP answer when the offer used it."""
    cipher: str
    """"aes-cm" (counter mode + HMAC-SHA1) or "aes-gcm" (AEAD, RFC 7714)."""
    key_len: int
    """Master key length in bytes."""
    salt_len: int
    """Master salt length in bytes."""
    rtp_auth_tag_len: int
    """Bytes of authentication tag on each SRTP packet (HMAC-SHA1 truncation or GCM tag)."""
    aliases: tuple[str, ...] = ()

    @property
    def key_salt_len(self) -> int:
        """Length of the `inline:` key||salt blob."""
        return self.key_len + self.salt_len


SUITES: tuple[SrtpSuite, ...] = (
    SrtpSuite("AES_CM_128_HMAC_SHA1_80", "aes-cm", 16, 14, 10),
    SrtpSuite("AES_CM_128_HMAC_SHA1_32", "aes-cm", 16, 14, 4),
    SrtpSuite("AES_256_CM_HMAC_SHA1_80", "aes-cm", 32, 14, 10, ("AES_CM_256_HMAC_SHA1_80",)),
    SrtpSuite("AES_256_CM_HMAC_SHA1_32", "aes-cm", 32, 14, 4, ("AES_CM_256_HMAC_SHA1_32",)),
    SrtpSuite("AEAD_AES_128_GCM", "aes-gcm", 16, 12, 16),
    SrtpSuite("AEAD_AES_256_GCM", "aes-gcm", 32, 12, 16),
)

_BY_NAME = {name.upper(): s for s in SUITES for name in (s.name, *s.aliases)}


def find_suite(name: str) -> SrtpSuite | None:
    """The suite an offered name means (any known spelling, any case), or None if unsupported."""
    return _BY_NAME.get(name.strip().upper())
