"""The root of every error the media core raises. Each module keeps its own kinds (SRTP refusals,
malformed RTP or DTMF payloads, codec and encoder misuse, an exhausted port range, ...) and all
of them are MediaError, so a caller that must outlive any media failure of one call catches one
class. Those that were ValueErrors still are."""

from __future__ import annotations

__all__ = ["MediaError"]


class MediaError(Exception):
    """A packet, a stream or a resource the media core cannot handle."""
