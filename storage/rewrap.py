"""Re-wrapping data keys under a new master key version (the rotation job's work), one batch per
transaction: rows still under the old version are locked (SKIP LOCKED: erasures and other
runners pass by), unwrapped with the old key, wrapped with the current one and written back.
A crash loses at most the batch in flight; running again resumes with what is still under the
old version. Media files are not touched: a data key stays the same, only its wrapping changes.
"""

from __future__ import annotations

import asyncpg

from storage.keys import KeyRing, unwrap_data_key, wrap_data_key

__all__ = ["rewrap_batch"]


async def rewrap_batch(db: asyncpg.Pool, ring: KeyRing, from_version: str, limit: int) -> int:
    """Re-wrap up to `limit` data keys wrapped under `from_version`; how many were done."""
    async with db.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            """SELECT recording_id, wrapped_key, next_wrapped_key FROM recording_keys
               WHERE master_key_id = $1 LIMIT $2 FOR UPDATE SKIP LOCKED""",
            from_version, limit)
        if not rows:
            return 0
        old = ring.get(from_version)
        current = ring.current
        ids, wrapped, pending = [], [], []
        for row in rows:
            recording_id = row["recording_id"]
            ids.append(recording_id)
            wrapped.append(wrap_data_key(
                current, unwrap_data_key(old, row["wrapped_key"], recording_id), recording_id))
            # A re-encryption's pending key goes along: it must not outlive its master key.
            next_key = row["next_wrapped_key"]
            if next_key is not None:
                next_key = wrap_data_key(
                    current, ring.unwrap(bytes(next_key), recording_id), recording_id)
            pending.append(next_key)
        await conn.execute(
            """UPDATE recording_keys k SET wrapped_key = u.w, next_wrapped_key = u.n,
                   master_key_id = $4
               FROM unnest($1::uuid[], $2::bytea[], $3::bytea[]) AS u(id, w, n)
               WHERE k.recording_id = u.id""",
            ids, wrapped, pending, current.key_id)
    return len(rows)
