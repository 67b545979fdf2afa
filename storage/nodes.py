"""The running servers of one database: each node claims its node_id at start and keeps a
heartbeat, so that a second server with the same node_id (another data_dir on the same host,
or a copied config) is refused before its crash recovery could seal the first one's live calls,
and so that others can tell a node that is gone from one that is busy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

HEARTBEAT_INTERVAL_S = 5.0
STALE_AFTER = timedelta(seconds=30)
"""A node whose heartbeat is older than this is taken to be gone."""


class NodeInUse(Exception):
    """Another live server already runs under this node_id; the message names it."""


@dataclass(frozen=True, slots=True)
class NodeClaim:
    node_id: str
    instance_id: UUID
    host: str
    pid: int
    data_dir: str


async def claim_node(db: asyncpg.Pool, claim: NodeClaim, now: datetime) -> None:
    async with db.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM nodes WHERE node_id = $1 FOR UPDATE", claim.node_id)
        # The same host and data_dir is this installation restarting after a crash: the data_dir
        # lock we hold proves the previous instance is gone, whatever its last heartbeat says.
        same_installation = row is not None and (row["host"], row["data_dir"]) == (
            claim.host, claim.data_dir)
        if (row is not None and not same_installation
                and row["instance_id"] != claim.instance_id
                and row["heartbeat_at"] is not None
                and row["heartbeat_at"] > now - STALE_AFTER):
            raise NodeInUse(
                f"node_id {claim.node_id!r} is in use by a live server (pid {row['pid']} on "
                f"{row['host']}, data_dir {row['data_dir']}, last heartbeat "
                f"{row['heartbeat_at']:%Y-%m-%d %H:%M:%S} UTC): give each server its own "
                f"[server] node_id"
            )
        await conn.execute(
            """INSERT INTO nodes (node_id, instance_id, host, pid, data_dir, started_at,
                                  heartbeat_at, draining)
               VALUES ($1, $2, $3, $4, $5, $6, $6, false)
               ON CONFLICT (node_id) DO UPDATE SET instance_id = $2, host = $3, pid = $4,
                   data_dir = $5, started_at = $6, heartbeat_at = $6, draining = false""",
            claim.node_id, claim.instance_id, claim.host, claim.pid, claim.data_dir, now,
        )


async def heartbeat(db: asyncpg.Pool, claim: NodeClaim, now: datetime) -> bool:
    """Renew the claim; False if another instance took the node_id meanwhile."""
    result = await db.execute(
        "UPDATE nodes SET heartbeat_at = $3 WHERE node_id = $1 AND instance_id = $2",
        claim.node_id, claim.instance_id, now,
    )
    return bool(result.endswith(" 1"))


async def release_node(db: asyncpg.Pool, claim: NodeClaim) -> None:
    """A clean stop: the node is known to be gone at once."""
    await db.execute(
        "UPDATE nodes SET heartbeat_at = NULL WHERE node_id = $1 AND instance_id = $2",
        claim.node_id, claim.instance_id,
    )
