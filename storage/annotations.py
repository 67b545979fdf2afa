"""Tags, comments and flags on recordings. They are personal data about a call: erasure deletes
them with the recording (storage/erasure.py), access bundles include them, search finds
recordings by tag (storage/search.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias
from uuid import UUID, uuid4

import asyncpg

__all__ = ["KINDS", "Annotation", "add_annotation", "annotations_of", "delete_annotation"]

KINDS = ("tag", "comment", "flag")
Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True, slots=True)
class Annotation:
    id: UUID
    recording_id: UUID
    kind: str
    value: str
    created_by: str
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {"id": str(self.id), "recording_id": str(self.recording_id), "kind": self.kind,
                "value": self.value, "created_by": self.created_by,
                "created_at": self.created_at.isoformat().replace("+00:00", "Z")}


def _annotation(row: Any) -> Annotation:
    return Annotation(row["id"], row["recording_id"], row["kind"], row["value"],
                      row["created_by"], row["created_at"])


async def add_annotation(db: Executor, recording_id: UUID, kind: str, value: str, *,
                         actor: str, now: datetime) -> Annotation | None:
    """None when the recording does not exist or is erased (nothing to describe)."""
    row = await db.fetchrow(
        """INSERT INTO annotations (id, recording_id, kind, value, created_by, created_at)
           SELECT $1, r.id, $3, $4, $5, $6 FROM recordings r
           WHERE r.id = $2 AND r.state <> 'erased' AND r.erased_at IS NULL
           RETURNING id, recording_id, kind, value, created_by, created_at""",
        uuid4(), recording_id, kind, value, actor, now)
    return None if row is None else _annotation(row)


async def annotations_of(db: Executor, recording_ids: Sequence[UUID]
                         ) -> dict[UUID, list[Annotation]]:
    found: dict[UUID, list[Annotation]] = {rid: [] for rid in recording_ids}
    for row in await db.fetch(
        """SELECT id, recording_id, kind, value, created_by, created_at FROM annotations
           WHERE recording_id = ANY($1::uuid[]) ORDER BY recording_id, created_at, id""",
        list(recording_ids)):
        found[row["recording_id"]].append(_annotation(row))
    return found


async def delete_annotation(db: Executor, recording_id: UUID,
                            annotation_id: UUID) -> Annotation | None:
    row = await db.fetchrow(
        """DELETE FROM annotations WHERE id = $1 AND recording_id = $2
           RETURNING id, recording_id, kind, value, created_by, created_at""",
        annotation_id, recording_id)
    return None if row is None else _annotation(row)
