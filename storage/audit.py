"""The audit trail: append-only events chained by SHA-256, so that editing, inserting or deleting
any row in the table is detectable (`verify_audit_chain`).

hash(n) = SHA-256(hash(n-1) || canonical JSON of event n's fields); the first event chains to
32 zero bytes. Appends are serialised with a transaction-scoped advisory lock so the chain has
no forks however many API workers or nodes write at once. `read_audit` pages through the trail
for the API; `verify_audit_chain` walks all of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from storage.database import transaction
from storage.sql import Statement, like_escape

GENESIS = bytes(32)
_LOCK_KEY = 0x5EC0_A0D1


@dataclass(frozen=True, slots=True)
class AuditEvent:
    actor: str
    """User id, "system", or "node:<id>"; never a password or token."""
    action: str
    """Dotted verb: key.master_created, recording.play, auth.login_failed, ..."""
    outcome: str = "success"
    target: str | None = None
    source: str | None = None
    """Client address or component."""
    details: Mapping[str, Any] | None = None


def _storable(text: str | None) -> str | None:
    """PostgreSQL text holds no NUL and no lone surrogate; whatever a caller passes, the event
    is recorded (with those characters replaced) rather than lost."""
    if text is None:
        return None
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _event_bytes(at: datetime, event: AuditEvent) -> bytes:
    record = {
        "at": at.astimezone(UTC).isoformat(),
        "actor": event.actor,
        "action": event.action,
        "outcome": event.outcome,
        "target": event.target,
        "source": event.source,
        "details": dict(event.details or {}),
    }
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(prev: bytes, at: datetime, event: AuditEvent) -> bytes:
    return hashlib.sha256(prev + _event_bytes(at, event)).digest()


async def record_audit(
    db: asyncpg.Pool | asyncpg.Connection,
    event: AuditEvent,
    at: datetime | None = None,
    event_id: UUID | None = None,
) -> int:
    """Append one event; returns its sequence number. An event with an `event_id` already in the
    trail (a replayed write-behind journal) is not appended twice: its first seq is returned."""
    at = (at or datetime.now(UTC)).astimezone(UTC)
    event = AuditEvent(
        actor=_storable(event.actor) or "",
        action=_storable(event.action) or "",
        outcome=_storable(event.outcome) or "",
        target=_storable(event.target),
        source=_storable(event.source),
        details=json.loads(_storable(json.dumps(dict(event.details or {}), ensure_ascii=False)) or "{}"),
    )
    details = json.dumps(dict(event.details or {}), sort_keys=True)
    async with transaction(db) as conn:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        if event_id is not None:
            known = await conn.fetchval("SELECT seq FROM audit_events WHERE event_id = $1",
                                        event_id)
            if known is not None:
                return int(known)
        prev = await conn.fetchval("SELECT hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        digest = chain_hash(prev or GENESIS, at, event)
        seq: int = await conn.fetchval(
            """INSERT INTO audit_events (at, actor, action, target, source, outcome, details,
                                         prev_hash, hash, event_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9, $10) RETURNING seq""",
            at, event.actor, event.action, event.target, event.source, event.outcome, details,
            prev or GENESIS, digest, event_id,
        )
    return seq


# ------------------------------------------------------------------------------ reading


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """One page of the audit trail: every given filter must hold."""

    actor: str | None = None
    action: str | None = None
    action_prefix: str | None = None
    """Every action starting with this text ("auth." finds auth.login, auth.login_failed, ...)."""
    target: str | None = None
    outcome: str | None = None
    at_from: datetime | None = None
    """Inclusive lower bound of the event time."""
    at_to: datetime | None = None
    """Exclusive upper bound of the event time."""
    after_seq: int | None = None
    """The cursor: only events past this sequence number, in the page's order."""
    newest_first: bool = True
    limit: int = 100
    hide_restricted: bool = False
    """Leave out events whose target is a restricted recording (a reader without the
    restricted permission must not learn that one exists)."""


@dataclass(frozen=True, slots=True)
class StoredAuditEvent:
    """An event as the trail holds it: its place in the chain and its hashes."""

    seq: int
    at: datetime
    actor: str
    action: str
    target: str | None
    source: str | None
    outcome: str
    details: Mapping[str, Any]
    prev_hash: bytes
    hash: bytes
    actor_name: str | None = None
    """The user name when the actor is an account (events name users by id, which outlives a
    rename; the reader shows who that is)."""
    target_name: str | None = None


@dataclass(frozen=True, slots=True)
class AuditPage:
    events: list[StoredAuditEvent]
    more: bool
    """Further events match beyond this page (continue after events[-1].seq)."""


def audit_sql(query: AuditQuery) -> tuple[str, list[object]]:
    """The statement of one page of `query` (limit + 1 rows: the extra one says whether there
    is a next page)."""
    st = Statement()
    where: list[str] = []
    for column in ("actor", "action", "target", "outcome"):
        value = getattr(query, column)
        if value is not None:
            where.append(f"{column} = {st.param(value)}")
    if query.action_prefix is not None:
        pattern = like_escape(query.action_prefix) + "%"
        where.append(f"action LIKE {st.param(pattern)}")
    if query.at_from is not None:
        where.append(f"at >= {st.param(query.at_from)}")
    if query.at_to is not None:
        where.append(f"at < {st.param(query.at_to)}")
    if query.after_seq is not None:
        where.append(f"seq {'<' if query.newest_first else '>'} {st.param(query.after_seq)}")
    if query.hide_restricted:
        # Targets are text; a recording's is its id. The restricted set is small (0011 index).
        where.append("(target IS NULL OR target NOT IN "
                     "(SELECT id::text FROM recordings WHERE restricted))")
    order = "DESC" if query.newest_first else "ASC"
    sql = (
        "SELECT seq, at, actor, action, target, source, outcome, details, prev_hash, hash "
        "FROM audit_events"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY seq {order} LIMIT {st.param(query.limit + 1)}"
    )
    return sql, st.params


async def read_audit(db: asyncpg.Pool | asyncpg.Connection, query: AuditQuery) -> AuditPage:
    """One page of the events matching `query`."""
    sql, params = audit_sql(query)
    rows = await db.fetch(sql, *params)
    names = await _user_names(db, [v for r in rows[: query.limit]
                                   for v in (r["actor"], r["target"])])
    events = []
    for row in rows[: query.limit]:
        details = row["details"]
        if isinstance(details, str):
            details = json.loads(details)
        events.append(StoredAuditEvent(
            seq=row["seq"], at=row["at"], actor=row["actor"], action=row["action"],
            target=row["target"], source=row["source"], outcome=row["outcome"],
            details=details, prev_hash=bytes(row["prev_hash"]), hash=bytes(row["hash"]),
            actor_name=names.get(row["actor"]), target_name=names.get(row["target"] or ""),
        ))
    return AuditPage(events, more=len(rows) > query.limit)


async def _user_names(db: asyncpg.Pool | asyncpg.Connection,
                      values: list[str | None]) -> dict[str, str]:
    """User names of the values that are account ids (users are never deleted)."""
    ids = set()
    for value in values:
        if value and len(value) == 36:
            try:
                ids.add(UUID(value))
            except ValueError:
                continue
    if not ids:
        return {}
    rows = await db.fetch("SELECT id, username FROM users WHERE id = ANY($1::uuid[])",
                          list(ids))
    return {str(row["id"]): row["username"] for row in rows}


# ------------------------------------------------------------------------------ verification


@dataclass(frozen=True, slots=True)
class ChainReport:
    events: int
    first_bad_seq: int | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.first_bad_seq is None


async def verify_audit_chain(db: asyncpg.Pool | asyncpg.Connection) -> ChainReport:
    prev = GENESIS
    count = 0
    async with transaction(db) as conn:
        async for row in conn.cursor("SELECT * FROM audit_events ORDER BY seq"):
            count += 1
            details = row["details"]
            if isinstance(details, str):
                details = json.loads(details)
            event = AuditEvent(row["actor"], row["action"], row["outcome"], row["target"],
                               row["source"], details)
            if bytes(row["prev_hash"]) != prev:
                return ChainReport(count, row["seq"], "an event before it was removed or changed")
            expected = chain_hash(prev, row["at"], event)
            if bytes(row["hash"]) != expected:
                return ChainReport(count, row["seq"], "the event was changed")
            prev = expected
    return ChainReport(count, None, None)
