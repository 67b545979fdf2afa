"""Retention in PostgreSQL: the policies, changes waiting for a second user, and the SQL that
finds expired recordings (siprec_server/compliance/retention.py is the reference semantics;
tests keep the two in step).

A recording is expired at `now` when it is finished (complete, interrupted, failed), started at
least the minimum retention (the default, clamped to the floor) before `now`, and no matching
policy still keeps it: for a policy of d days (clamped to the ceiling) and match M, the
recording is kept while `started_at > now - d AND M`. Held recordings are never candidates.
The first test is a range on `recordings_started_at`, so a run reads only what is old enough.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeAlias
from uuid import UUID, uuid4

import asyncpg

from siprec_server.compliance.holds import HoldQuery
from siprec_server.compliance.patterns import aor_variants
from siprec_server.compliance.retention import (
    Policy,
    PolicyMatch,
    RecordingFacts,
    RetentionLimits,
    parse_match,
)
from storage.holds import active_query_holds, held_condition
from storage.sql import Statement

__all__ = [
    "ERASABLE_STATES",
    "Expired",
    "PendingChange",
    "PolicyConflict",
    "apply_change",
    "candidate_sql",
    "count_expired",
    "delete_policy",
    "expired_batch",
    "get_pending",
    "get_policy",
    "insert_policy",
    "list_policies",
    "recording_facts",
    "request_change",
    "update_policy",
]

ERASABLE_STATES = ("complete", "interrupted", "failed")
Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection


class PolicyConflict(Exception):
    """A name already taken, a change already pending, or an approval by its requester."""


def _policy(row: Any) -> Policy:
    match = row["match"]
    if isinstance(match, str):
        match = json.loads(match)
    return Policy(row["id"], row["name"], row["days"], parse_match(match),
                  row["legal_obligation"], row["basis"], row["preset"])


_COLUMNS = "id, name, days, match, legal_obligation, basis, preset, created_at, updated_at"


async def list_policies(db: Executor) -> list[Policy]:
    return [_policy(r) for r in await db.fetch(
        f"SELECT {_COLUMNS} FROM retention_policies ORDER BY days DESC, id")]


async def get_policy(db: Executor, policy_id: UUID) -> Policy | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM retention_policies WHERE id = $1",
                            policy_id)
    return None if row is None else _policy(row)


def _match_json(match: PolicyMatch) -> str:
    return json.dumps(match.as_dict())


async def insert_policy(db: Executor, policy: Policy, *, actor: str, now: datetime) -> None:
    try:
        await db.execute(
            """INSERT INTO retention_policies (id, name, days, match, legal_obligation, basis,
                                               preset, created_by, created_at, updated_at)
               VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $7, $8, $9, $9)""",
            policy.id, policy.name, policy.days, _match_json(policy.match),
            policy.legal_obligation, policy.basis, policy.preset, actor, now)
    except asyncpg.UniqueViolationError:
        raise PolicyConflict(f"a policy named {policy.name!r} exists") from None


async def update_policy(db: Executor, policy: Policy, *, now: datetime) -> None:
    try:
        await db.execute(
            """UPDATE retention_policies SET name = $2, days = $3, match = $4::text::jsonb,
                      legal_obligation = $5, basis = $6, preset = $7, updated_at = $8
               WHERE id = $1""",
            policy.id, policy.name, policy.days, _match_json(policy.match),
            policy.legal_obligation, policy.basis, policy.preset, now)
    except asyncpg.UniqueViolationError:
        raise PolicyConflict(f"a policy named {policy.name!r} exists") from None


async def delete_policy(db: Executor, policy_id: UUID) -> None:
    await db.execute("DELETE FROM retention_policies WHERE id = $1", policy_id)


@dataclass(frozen=True, slots=True)
class PendingChange:
    id: UUID
    policy_id: UUID
    action: str
    """"update" (change holds the new fields) or "delete"."""
    change: dict[str, Any]
    requested_by: str
    requested_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"id": str(self.id), "action": self.action, "change": self.change,
                "requested_by": self.requested_by,
                "requested_at": self.requested_at.isoformat()}


def _pending(row: Any) -> PendingChange:
    change = row["change"]
    if isinstance(change, str):
        change = json.loads(change)
    return PendingChange(row["id"], row["policy_id"], row["action"], change,
                         row["requested_by"], row["requested_at"])


async def get_pending(db: Executor, policy_id: UUID) -> PendingChange | None:
    row = await db.fetchrow(
        """SELECT id, policy_id, action, change, requested_by, requested_at
           FROM retention_policy_changes WHERE policy_id = $1 AND state = 'pending'""",
        policy_id)
    return None if row is None else _pending(row)


async def request_change(db: Executor, policy_id: UUID, action: str, change: dict[str, Any],
                         *, actor: str, now: datetime) -> PendingChange:
    """Park a change that needs a second user; PolicyConflict when one is pending already."""
    try:
        row = await db.fetchrow(
            """INSERT INTO retention_policy_changes (id, policy_id, action, change, state,
                                                     requested_by, requested_at)
               VALUES ($1, $2, $3, $4::text::jsonb, 'pending', $5, $6)
               RETURNING id, policy_id, action, change, requested_by, requested_at""",
            uuid4(), policy_id, action, json.dumps(change), actor, now)
    except asyncpg.UniqueViolationError:
        raise PolicyConflict("a change of this policy already waits for approval") from None
    return _pending(row)


async def apply_change(conn: asyncpg.Connection, pending: PendingChange, *, actor: str,
                       now: datetime) -> None:
    """Mark a pending change applied by `actor` (a different user than its requester)."""
    if actor == pending.requested_by:
        raise PolicyConflict("the change must be approved by a second user")
    await conn.execute(
        """UPDATE retention_policy_changes SET state = 'applied', decided_by = $2,
                  decided_at = $3 WHERE id = $1""", pending.id, actor, now)


# ------------------------------------------------------------------------------ expiry in SQL


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def match_condition(match: PolicyMatch, st: Statement, alias: str = "r") -> str:
    """A policy's match as a condition on recordings `alias` (compliance.retention._matches)."""
    terms: list[str] = []
    parties = [f"p.number LIKE {st.param(_like(p))}" for p in match.numbers]
    parties += [f"lower(p.aor) LIKE {st.param(_like(v))}"
                for glob in match.aors for v in aor_variants(glob)]
    if parties:
        terms.append(f"EXISTS (SELECT 1 FROM participants p WHERE p.recording_id = {alias}.id "
                     f"AND ({' OR '.join(parties)}))")
    if match.direction is not None:
        terms.append(f"{alias}.direction = {st.param(match.direction)}")
    for key, values in match.metadata:
        terms.append(f"({alias}.src_metadata -> {st.param(key)}) ?| "
                     f"{st.param(list(values))}::text[]")
    # COALESCE: a recording without a direction or that metadata key makes a term NULL, and
    # NOT (... AND NULL) would drop it from every candidate list instead of not matching.
    return "COALESCE((" + " AND ".join(terms or ["TRUE"]) + "), FALSE)"


def _ordered(policies: Sequence[Policy]) -> list[Policy]:
    return sorted(policies, key=lambda p: (-p.days, str(p.id)))


def candidate_sql(policies: Sequence[Policy], limits: RetentionLimits, now: datetime,
                  query_holds: Sequence[tuple[UUID, str, HoldQuery]], *, held: bool = False,
                  ) -> tuple[str, list[object], Statement]:
    """The WHERE clause (over recordings r) of the recordings expired at `now`; with `held`,
    of those that would be but a legal hold keeps. Returns (sql, params, statement) so callers
    can add parameters."""
    st = Statement()
    minimum = limits.minimum_days
    where = [f"r.started_at <= {st.param(now - timedelta(days=minimum))}",
             f"r.state = ANY({st.param(list(ERASABLE_STATES))}::text[])"]
    for policy in _ordered(policies):
        days = limits.clamp(policy.days)
        if days <= minimum:
            continue  # keeps nothing the default does not keep already
        kept_since = st.param(now - timedelta(days=days))
        where.append(f"NOT (r.started_at > {kept_since} AND {match_condition(policy.match, st)})")
    hold = held_condition(query_holds, st)
    where.append(hold if held else f"NOT {hold}")
    return " AND ".join(where), st.params, st


def governing_sql(policies: Sequence[Policy], limits: RetentionLimits, st: Statement) -> str:
    """The id (text) of the policy that sets a recording's retention, NULL for the default."""
    whens = [
        f"WHEN {match_condition(p.match, st)} THEN {st.param(str(p.id))}"
        for p in _ordered(policies) if limits.clamp(p.days) > limits.minimum_days
    ]
    return f"(CASE {' '.join(whens)} ELSE NULL END)" if whens else "NULL::text"


async def count_expired(db: Executor, policies: Sequence[Policy], limits: RetentionLimits,
                        now: datetime) -> tuple[dict[str | None, int], int]:
    """Expired recordings per governing policy id (None: the default) at `now`, and how many
    more would be expired but are held."""
    async with _snapshot(db) as conn:
        query_holds = await active_query_holds(conn)
        where, params, st = candidate_sql(policies, limits, now, query_holds)
        governing = governing_sql(policies, limits, st)
        rows = await conn.fetch(
            f"SELECT {governing} AS policy, count(*) AS n FROM recordings r WHERE {where} "
            "GROUP BY 1", *st.params)
        where_held, _params, st_held = candidate_sql(policies, limits, now, query_holds,
                                                     held=True)
        held = await conn.fetchval(f"SELECT count(*) FROM recordings r WHERE {where_held}",
                                   *st_held.params)
    return {r["policy"]: r["n"] for r in rows}, int(held)


@dataclass(frozen=True, slots=True)
class Expired:
    recording_id: UUID
    started_at: datetime
    policy_id: str | None
    """The governing policy (None: the default)."""


async def expired_batch(db: Executor, policies: Sequence[Policy], limits: RetentionLimits,
                        now: datetime, limit: int,
                        after: tuple[datetime, UUID] | None = None) -> list[Expired]:
    """Up to `limit` expired recordings, oldest first, each with its governing policy id;
    `after` = the (started_at, id) of the last one of the previous batch (keyset: a run never
    walks again over what it erased or had to skip)."""
    async with _snapshot(db) as conn:
        query_holds = await active_query_holds(conn)
        where, _params, st = candidate_sql(policies, limits, now, query_holds)
        governing = governing_sql(policies, limits, st)
        if after is not None:
            since = st.param(after[0])
            # The plain bound is what an index range on recordings_started_at starts from.
            where += (f" AND r.started_at >= {since} AND (r.started_at, r.id) > "
                      f"({since}::timestamptz, {st.param(after[1])}::uuid)")
        rows = await conn.fetch(
            f"""SELECT r.id, r.started_at, {governing} AS policy FROM recordings r
                WHERE {where} ORDER BY r.started_at, r.id LIMIT {st.param(limit)}""",
            *st.params)
    return [Expired(r["id"], r["started_at"], r["policy"]) for r in rows]


class _snapshot:
    """One repeatable-read transaction on a pool's connection (or the given connection), so
    the holds read and the candidates found see the same data."""

    def __init__(self, db: Executor) -> None:
        self._db = db
        self._conn: Any = None
        self._tx: Any = None

    async def __aenter__(self) -> asyncpg.Connection:
        if isinstance(self._db, asyncpg.Pool):
            self._conn = await self._db.acquire()
            conn = self._conn
        else:
            conn = self._db
        self._tx = conn.transaction(isolation="repeatable_read", readonly=True)
        await self._tx.start()
        return conn

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self._tx.rollback()
        finally:
            if self._conn is not None:
                await self._db.release(self._conn)


async def recording_facts(db: Executor, recording_ids: Sequence[UUID]
                          ) -> dict[UUID, tuple[str, RecordingFacts]]:
    """(state, facts) of each recording, for decisions made in Python (subject erasure)."""
    rows = await db.fetch(
        """SELECT r.id, r.state, r.started_at, r.direction, r.src_metadata,
                  array_remove(array_agg(p.number), NULL) AS numbers,
                  array_remove(array_agg(lower(p.aor)), NULL) AS aors
           FROM recordings r LEFT JOIN participants p ON p.recording_id = r.id
           WHERE r.id = ANY($1::uuid[]) GROUP BY r.id""", list(recording_ids))
    out: dict[UUID, tuple[str, RecordingFacts]] = {}
    for row in rows:
        metadata = row["src_metadata"]
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        out[row["id"]] = (row["state"], RecordingFacts(
            row["id"], row["started_at"], frozenset(row["numbers"]), frozenset(row["aors"]),
            row["direction"], metadata or {}))
    return out
