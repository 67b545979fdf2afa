"""Recording rules in PostgreSQL, the facts the recorder decides on at INVITE time, and what
rules, opt-outs and the API change on a recording (restricted, mode, opt-out).

The SRC metadata facts (direction, extension-data leaves) come from `src_metadata_facts`, the
same SQL function the metadata trigger fills recordings.direction / src_metadata with
(migrations 0009, 0011), so a rule sees a document exactly as retention later will.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID, uuid4

import asyncpg

from siprec_server.compliance.retention import parse_match
from siprec_server.compliance.rules import Rule

__all__ = [
    "RuleConflict",
    "RuleVersion",
    "SrcFacts",
    "delete_rule",
    "get_rule",
    "insert_rule",
    "list_rules",
    "mark_opted_out",
    "metadata_facts",
    "opt_out_of",
    "rules_version",
    "set_restricted",
    "update_rule",
]

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection


class RuleConflict(Exception):
    """A rule name already taken."""


@dataclass(frozen=True, slots=True)
class RuleVersion:
    version: int


@dataclass(frozen=True, slots=True)
class SrcFacts:
    """What the SRC's metadata says besides the parties, as the 0009 trigger extracts it."""

    direction: str | None
    metadata: Mapping[str, list[str]]
    rules_version: int


_COLUMNS = "id, name, action, restricted, opt_out, priority, match, created_by, created_at, updated_at"


def _rule(row: Any) -> Rule:
    match = row["match"]
    if isinstance(match, str):
        match = json.loads(match)
    return Rule(row["id"], row["name"], row["action"], parse_match(match), row["restricted"],
                row["opt_out"], row["priority"])


async def list_rules(db: Executor) -> list[Rule]:
    return [_rule(r) for r in await db.fetch(
        f"SELECT {_COLUMNS} FROM recording_rules ORDER BY priority, lower(name), id")]


async def get_rule(db: Executor, rule_id: UUID) -> Rule | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM recording_rules WHERE id = $1", rule_id)
    return None if row is None else _rule(row)


async def rules_version(db: Executor) -> int:
    return int(await db.fetchval("SELECT version FROM recording_rules_version"))


async def metadata_facts(db: Executor, document: str | None) -> SrcFacts:
    """The direction and extension-data leaves of one rs-metadata document (None: no
    metadata), and the rules' version, in one round trip."""
    row = await db.fetchrow(
        """SELECT f.direction, f.leaves, v.version
           FROM recording_rules_version v
           LEFT JOIN LATERAL src_metadata_facts($1::text) f ON $1::text IS NOT NULL""",
        document)
    leaves = row["leaves"]
    if isinstance(leaves, str):
        leaves = json.loads(leaves)
    return SrcFacts(row["direction"], leaves or {}, int(row["version"]))


def _match_json(rule: Rule) -> str:
    return json.dumps(rule.match.as_dict())


async def insert_rule(db: Executor, rule: Rule, *, created_by: str, now: datetime) -> Rule:
    try:
        row = await db.fetchrow(
            f"""INSERT INTO recording_rules (id, name, action, restricted, opt_out, priority,
                                             match, created_by, created_at, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9, $9)
                RETURNING {_COLUMNS}""",
            rule.id or uuid4(), rule.name, rule.action, rule.restricted, rule.opt_out,
            rule.priority, _match_json(rule), created_by, now)
    except asyncpg.UniqueViolationError:
        raise RuleConflict(f"a rule named {rule.name!r} exists") from None
    return _rule(row)


async def update_rule(db: Executor, rule: Rule, *, now: datetime) -> Rule | None:
    try:
        row = await db.fetchrow(
            f"""UPDATE recording_rules SET name = $2, action = $3, restricted = $4,
                       opt_out = $5, priority = $6, match = $7::text::jsonb, updated_at = $8
                WHERE id = $1 RETURNING {_COLUMNS}""",
            rule.id, rule.name, rule.action, rule.restricted, rule.opt_out, rule.priority,
            _match_json(rule), now)
    except asyncpg.UniqueViolationError:
        raise RuleConflict(f"a rule named {rule.name!r} exists") from None
    return None if row is None else _rule(row)


async def delete_rule(db: Executor, rule_id: UUID) -> bool:
    return await db.fetchval("DELETE FROM recording_rules WHERE id = $1 RETURNING true",
                             rule_id) is not None


# ------------------------------------------------------------------------------ recordings


async def set_restricted(db: Executor, recording_id: UUID, restricted: bool) -> bool | None:
    """Set the flag; its previous value, None when there is no such recording."""
    row = await db.fetchrow(
        """UPDATE recordings r SET restricted = $2 FROM recordings old
           WHERE r.id = $1 AND old.id = r.id RETURNING old.restricted""",
        recording_id, restricted)
    return None if row is None else bool(row["restricted"])


async def opt_out_of(db: Executor, recording_id: UUID) -> dict[str, Any] | None:
    """The opt-out facts of a recording: state, what its rule said an opt-out does, when it
    was opted out."""
    row = await db.fetchrow(
        """SELECT id, state, opt_out, opted_out_at, recording_mode, file_path IS NOT NULL
                  AS has_audio
           FROM recordings WHERE id = $1""", recording_id)
    return None if row is None else dict(row)


async def mark_opted_out(db: Executor, recording_id: UUID, *, by: str, keep: bool,
                         now: datetime) -> bool:
    """Stamp the opt-out and end the recording (the SIP session may go on, unrecorded); False
    when it was opted out before."""
    row = await db.fetchrow(
        """UPDATE recordings
              SET opted_out_at = $2, opted_out_by = $3, opt_out = $4,
                  state = CASE WHEN state IN ('offered', 'recording') THEN 'complete'
                               ELSE state END,
                  end_reason = CASE WHEN state IN ('offered', 'recording') THEN 'opt-out'
                                    ELSE end_reason END,
                  ended_at = CASE WHEN state IN ('offered', 'recording') THEN $2
                                  ELSE ended_at END
            WHERE id = $1 AND opted_out_at IS NULL RETURNING id""",
        recording_id, now, by, "keep" if keep else "discard")
    return row is not None
