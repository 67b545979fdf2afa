"""Why an SRTP/SRTCP packet was refused: the one error family of the SRTP layer.

Lives in its own module so that both the public entry points (`srtp`) and our AES-CM transform
(`srtp_aes_cm`) can raise it without importing each other. Callers import it from `srtp`.
A receiver counts these and drops the packet; none of them ends a call.
"""

from __future__ import annotations

from siprec_server.media.errors import MediaError


class SrtpError(MediaError):
    """A packet could not be protected or unprotected."""


class SrtpAuthError(SrtpError):
    """The authentication tag did not verify (wrong key, tampering, unknown MKI)."""


class SrtpReplayError(SrtpError):
    """The packet index was already received, or lies behind the replay window."""


class SrtpFormatError(SrtpError):
    """Too short, or not an RTP/RTCP packet at all (version, CSRC or extension overflow)."""
