"""Legal holds in PostgreSQL: matters, their explicit members and saved searches, release by a
second user, and the one question every erasure path asks: which active holds keep this
recording (`held_matters`), or, for a set of candidates, the SQL condition `held_condition`.

Holds and erasures are serialised with an advisory lock: an erasure holds it shared for its
key-destroying transaction, creating a hold takes it exclusively. A hold committed before an
erasure starts is seen by it; an erasure in progress finishes before a new hold is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID, uuid4

import asyncpg

from siprec_server.compliance.holds import HoldQuery, parse_hold_query
from storage.search import like_substring
from storage.sql import Statement

__all__ = [
    "HOLD_LOCK",
    "Hold",
    "HoldNotFound",
    "ReleaseRefused",
    "active_query_holds",
    "create_hold",
    "get_hold",
    "held_condition",
    "held_matters",
    "list_holds",
    "lock_against_new_holds",
    "release_hold",
]

HOLD_LOCK = 0x5EC0_0401

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection


class HoldNotFound(LookupError):
    pass


class ReleaseRefused(Exception):
    """The release cannot proceed (the same user again, or already released)."""


@dataclass(frozen=True, slots=True)
class Hold:
    id: UUID
    matter: str
    reason: str
    query: HoldQuery | None
    created_by: str
    created_at: datetime
    recordings: int
    release_requested_by: str | None
    release_requested_at: datetime | None
    released_by: str | None
    released_at: datetime | None

    @property
    def state(self) -> str:
        if self.released_at is not None:
            return "released"
        return "release_pending" if self.release_requested_by else "active"


_COLUMNS = """h.id, h.matter, h.reason, h.query, h.created_by, h.created_at,
    h.release_requested_by, h.release_requested_at, h.released_by, h.released_at,
    (SELECT count(*) FROM legal_hold_recordings m WHERE m.hold_id = h.id) AS recordings"""


def _hold(row: Any) -> Hold:
    query = row["query"]
    if isinstance(query, str):
        query = json.loads(query)
    return Hold(row["id"], row["matter"], row["reason"],
                None if query is None else parse_hold_query(query), row["created_by"],
                row["created_at"], row["recordings"], row["release_requested_by"],
                row["release_requested_at"], row["released_by"], row["released_at"])


async def lock_against_new_holds(conn: asyncpg.Connection) -> None:
    """Inside an erasing transaction: no hold is created until it commits."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", HOLD_LOCK)


async def create_hold(db: asyncpg.Pool, *, matter: str, reason: str,
                      recording_ids: Sequence[UUID], query: HoldQuery | None,
                      created_by: str, now: datetime) -> tuple[Hold, list[UUID]]:
    """A new active hold; returns it and the given ids that name no recording (not added)."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", HOLD_LOCK)
        hold_id = uuid4()
        await conn.execute(
            """INSERT INTO legal_holds (id, matter, reason, query, created_by, created_at)
               VALUES ($1, $2, $3, $4::text::jsonb, $5, $6)""",
            hold_id, matter, reason,
            None if query is None else json.dumps(query.as_dict()), created_by, now)
        added = await conn.fetch(
            """INSERT INTO legal_hold_recordings (hold_id, recording_id, added_at)
               SELECT $1, r.id, $3 FROM recordings r WHERE r.id = ANY($2::uuid[])
               RETURNING recording_id""",
            hold_id, list(recording_ids), now)
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM legal_holds h WHERE h.id = $1",
                                  hold_id)
    found = {r["recording_id"] for r in added}
    return _hold(row), [rid for rid in recording_ids if rid not in found]


async def get_hold(db: Executor, hold_id: UUID) -> Hold | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM legal_holds h WHERE h.id = $1", hold_id)
    return None if row is None else _hold(row)


async def list_holds(db: Executor, *, include_released: bool = True,
                     limit: int = 500) -> list[Hold]:
    rows = await db.fetch(
        f"""SELECT {_COLUMNS} FROM legal_holds h
            WHERE $1 OR h.released_at IS NULL ORDER BY h.created_at DESC, h.id LIMIT $2""",
        include_released, limit)
    return [_hold(r) for r in rows]


async def release_hold(db: asyncpg.Pool, hold_id: UUID, *, actor: str,
                       now: datetime) -> Hold:
    """The first user's call asks for the release; a second, different user's call releases.
    ReleaseRefused when the same user asks twice or the hold is already released."""
    async with db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            """SELECT release_requested_by, released_at FROM legal_holds
               WHERE id = $1 FOR UPDATE""", hold_id)
        if row is None:
            raise HoldNotFound(str(hold_id))
        if row["released_at"] is not None:
            raise ReleaseRefused("the hold is already released")
        if row["release_requested_by"] is None:
            await conn.execute(
                """UPDATE legal_holds SET release_requested_by = $2, release_requested_at = $3
                   WHERE id = $1""", hold_id, actor, now)
        elif row["release_requested_by"] == actor:
            raise ReleaseRefused("a second user must approve the release")
        else:
            await conn.execute(
                "UPDATE legal_holds SET released_by = $2, released_at = $3 WHERE id = $1",
                hold_id, actor, now)
        hold = await get_hold(conn, hold_id)
    assert hold is not None
    return hold


# ------------------------------------------------------------------------------ held or not


def query_condition(query: HoldQuery, st: Statement, alias: str = "r") -> str:
    """A saved search as a condition on recordings `alias` (every filter must hold)."""
    terms: list[str] = []
    for number in query.numbers:
        terms.append(f"{alias}.id IN (SELECT p.recording_id FROM participants p "
                     f"WHERE p.number = {st.param(number)})")
    for aor in query.aors:
        terms.append(f"{alias}.id IN (SELECT p.recording_id FROM participants p "
                     f"WHERE lower(p.aor) = {st.param(aor.lower())})")
    for name in query.names:
        terms.append(f"{alias}.id IN (SELECT p.recording_id FROM participants p "
                     f"WHERE lower(p.name) LIKE {st.param(like_substring(name))})")
    for tag in query.tags:
        terms.append(f"{alias}.id IN (SELECT a.recording_id FROM annotations a "
                     f"WHERE a.kind = 'tag' AND lower(a.value) = {st.param(tag.lower())})")
    if query.call_id is not None:
        terms.append(f"{alias}.call_id = {st.param(query.call_id)}")
    if query.session_id is not None:
        terms.append(f"{alias}.session_id = {st.param(query.session_id)}")
    if query.started_from is not None:
        terms.append(f"{alias}.started_at >= {st.param(query.started_from)}")
    if query.started_to is not None:
        terms.append(f"{alias}.started_at < {st.param(query.started_to)}")
    # NULL columns (an erased recording's call_id) must not make the whole condition NULL.
    return "COALESCE((" + " AND ".join(terms or ["FALSE"]) + "), FALSE)"


async def active_query_holds(db: Executor) -> list[tuple[UUID, str, HoldQuery]]:
    rows = await db.fetch(
        """SELECT id, matter, query FROM legal_holds
           WHERE released_at IS NULL AND query IS NOT NULL ORDER BY created_at, id""")
    out = []
    for row in rows:
        query = row["query"]
        if isinstance(query, str):
            query = json.loads(query)
        out.append((row["id"], row["matter"], parse_hold_query(query)))
    return out


def held_condition(query_holds: Sequence[tuple[UUID, str, HoldQuery]], st: Statement,
                   alias: str = "r") -> str:
    """True for recordings `alias` that an active hold keeps: an explicit member, or a match
    of one of `query_holds` (active_query_holds, read in the same transaction)."""
    terms = [f"""EXISTS (SELECT 1 FROM legal_hold_recordings m JOIN legal_holds h
                         ON h.id = m.hold_id
                         WHERE m.recording_id = {alias}.id AND h.released_at IS NULL)"""]
    terms += [query_condition(query, st, alias) for _id, _matter, query in query_holds]
    return "(" + " OR ".join(terms) + ")"


async def held_matters(conn: Executor, recording_id: UUID) -> list[str]:
    """The matters of the active holds that keep this recording (empty: none does)."""
    matters = [r["matter"] for r in await conn.fetch(
        """SELECT h.matter FROM legal_hold_recordings m JOIN legal_holds h ON h.id = m.hold_id
           WHERE m.recording_id = $1 AND h.released_at IS NULL ORDER BY h.created_at""",
        recording_id)]
    for _hold_id, matter, query in await active_query_holds(conn):
        st = Statement()
        rid = st.param(recording_id)
        condition = query_condition(query, st)
        if await conn.fetchval(f"SELECT 1 FROM recordings r WHERE r.id = {rid} AND {condition}",
                               *st.params):
            matters.append(matter)
    return list(dict.fromkeys(matters))
