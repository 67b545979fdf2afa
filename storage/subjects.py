"""Data-subject requests in PostgreSQL: the request (who it is about, its state, where its
encrypted bundle is), and what happened to each of the person's recordings."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

from siprec_server.compliance.subjects import Decision, Subject
from storage.search import Cursor, RecordingQuery, search_sql

__all__ = [
    "SubjectRequest",
    "create_request",
    "find_subject_recordings",
    "get_request",
    "list_items",
    "list_requests",
    "save_items",
    "update_request",
]

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True, slots=True)
class SubjectRequest:
    id: UUID
    kind: str
    subject: Subject
    state: str
    job_id: UUID | None
    recipient_kind: str | None
    recipient: Mapping[str, Any] | None
    bundle_path: str | None
    bundle_node: str | None
    bundle_bytes: int | None
    bundle_sha256: bytes | None
    found: int | None
    erased: int | None
    refused: int | None
    error: str | None
    created_by: str
    created_at: datetime
    finished_at: datetime | None


_COLUMNS = """id, kind, subject, state, job_id, recipient_kind, recipient, bundle_path,
    bundle_node, bundle_bytes, bundle_sha256, found, erased, refused, error, created_by,
    created_at, finished_at"""


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _request(row: Any) -> SubjectRequest:
    return SubjectRequest(
        row["id"], row["kind"], Subject.from_dict(_json(row["subject"])), row["state"],
        row["job_id"], row["recipient_kind"], _json(row["recipient"]), row["bundle_path"],
        row["bundle_node"], row["bundle_bytes"],
        None if row["bundle_sha256"] is None else bytes(row["bundle_sha256"]),
        row["found"], row["erased"], row["refused"], row["error"], row["created_by"],
        row["created_at"], row["finished_at"])


async def create_request(db: Executor, request_id: UUID, kind: str, subject: Subject, *,
                         recipient_kind: str | None, recipient: Mapping[str, Any] | None,
                         job_id: UUID | None, actor: str, now: datetime) -> SubjectRequest:
    row = await db.fetchrow(
        f"""INSERT INTO subject_requests (id, kind, subject, state, job_id, recipient_kind,
                                          recipient, created_by, created_at)
            VALUES ($1, $2, $3::text::jsonb, 'queued', $4, $5, $6::text::jsonb, $7, $8)
            RETURNING {_COLUMNS}""",
        request_id, kind, json.dumps(subject.as_dict()), job_id, recipient_kind,
        None if recipient is None else json.dumps(dict(recipient)), actor, now)
    return _request(row)


async def get_request(db: Executor, request_id: UUID) -> SubjectRequest | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM subject_requests WHERE id = $1",
                            request_id)
    return None if row is None else _request(row)


async def list_requests(db: Executor, *, limit: int = 100) -> list[SubjectRequest]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM subject_requests ORDER BY created_at DESC, id LIMIT $1", limit)
    return [_request(r) for r in rows]


_UPDATABLE = frozenset({"state", "bundle_path", "bundle_node", "bundle_bytes", "bundle_sha256",
                        "found", "erased", "refused", "error", "finished_at", "recipient"})


async def update_request(db: Executor, request_id: UUID, **fields: Any) -> None:
    unknown = set(fields) - _UPDATABLE
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    names = sorted(fields)
    sets = ", ".join(
        f"{name} = ${i + 2}" + ("::text::jsonb" if name == "recipient" else "")
        for i, name in enumerate(names))
    values = [json.dumps(fields[n]) if n == "recipient" and fields[n] is not None else fields[n]
              for n in names]
    await db.execute(f"UPDATE subject_requests SET {sets} WHERE id = $1", request_id, *values)


async def save_items(db: Executor, request_id: UUID, decisions: Sequence[Decision]) -> None:
    """Record (or overwrite, when a job is resumed) the outcome per recording."""
    await db.executemany(
        """INSERT INTO subject_request_items (request_id, recording_id, outcome, reason, matter,
                                              retained_until, basis)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (request_id, recording_id) DO UPDATE SET outcome = EXCLUDED.outcome,
               reason = EXCLUDED.reason, matter = EXCLUDED.matter,
               retained_until = EXCLUDED.retained_until, basis = EXCLUDED.basis""",
        [(request_id, d.recording_id, d.outcome, d.reason, d.matter, d.until, d.basis)
         for d in decisions])


async def list_items(db: Executor, request_id: UUID) -> list[Decision]:
    rows = await db.fetch(
        """SELECT recording_id, outcome, reason, matter, retained_until, basis
           FROM subject_request_items WHERE request_id = $1 ORDER BY recording_id""",
        request_id)
    return [Decision(r["recording_id"], r["outcome"], r["reason"], r["matter"],
                     r["retained_until"], r["basis"]) for r in rows]


def _everything_but_restricted(alias: str, first_param: int) -> tuple[str, list[object]]:
    return "TRUE", []


async def find_subject_recordings(db: Executor, subject: Subject,
                                  include_erased: bool = False,
                                  include_restricted: bool = True) -> list[UUID]:
    """Every recording one of the person's identifiers names, as any party: each number, AOR
    and name is searched on its own (the person may appear under any of them), newest
    first, without duplicates. Without `include_restricted`, restricted recordings are left
    out (a request made by a user who may not see them)."""
    found: dict[UUID, None] = {}
    scope = None if include_restricted else _everything_but_restricted
    queries = ([RecordingQuery(numbers=(n,), limit=500) for n in subject.numbers]
               + [RecordingQuery(aors=(a,), limit=500) for a in subject.aors]
               + [RecordingQuery(names=(n,), limit=500) for n in subject.names])
    for query in queries:
        after: Cursor | None = None
        while True:
            page_query = RecordingQuery(numbers=query.numbers, aors=query.aors,
                                        names=query.names, limit=500, after=after)
            sql, params = search_sql(page_query, scope)
            rows = await db.fetch(sql, *params)
            for row in rows[:500]:
                if include_erased or row["state"] != "erased":
                    found[row["id"]] = None
            if len(rows) <= 500:
                break
            last = rows[499]
            after = Cursor(last["started_at"], last["id"])
    return list(found)
