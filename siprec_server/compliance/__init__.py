"""Sans-IO policy logic of the compliance features: retention matching and expiry, legal-hold
queries, and the planning of data-subject requests. No database, no clock: callers pass `now`
and the facts of each recording."""

from __future__ import annotations


class ComplianceError(ValueError):
    """A policy, hold query or subject request that is not acceptable (the message says why)."""


__all__ = ["ComplianceError"]
