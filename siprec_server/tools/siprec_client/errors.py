"""The one exception of the client: a plan it cannot carry out, or an answer it cannot read.
Network failures are not exceptions: they end up in the reports."""

from __future__ import annotations


class SiprecClientError(ValueError):
    """A plan this client cannot carry out, or an SDP answer it cannot read."""
