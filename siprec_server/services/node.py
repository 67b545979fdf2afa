"""This server's membership among the nodes of one database: claimed at start (refused if a live
server already runs under the same node_id), renewed by a heartbeat, released at a clean stop.
A heartbeat missed while the database is away is simply retried; the claim only lapses for
others after storage.nodes.STALE_AFTER."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import asyncpg

from siprec_server.logs import get_logger
from storage.errors import StorageUnavailable, guarded
from storage.nodes import HEARTBEAT_INTERVAL_S, NodeClaim, claim_node, heartbeat, release_node

log = get_logger("node")


class NodeMembership:
    def __init__(self, db: asyncpg.Pool, node_id: str, data_dir: Path) -> None:
        self._db = db
        self.claim = NodeClaim(node_id, uuid4(), socket.gethostname(), os.getpid(),
                               str(data_dir.resolve()))
        self._task: asyncio.Task[None] | None = None

    async def join(self) -> None:
        """Claim the node_id (NodeInUse if a live server holds it) and keep it."""
        await claim_node(self._db, self.claim, datetime.now(UTC))
        self._task = asyncio.create_task(self._beat())

    async def leave(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(StorageUnavailable):
            await guarded(release_node(self._db, self.claim))

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)
            try:
                if not await guarded(heartbeat(self._db, self.claim, datetime.now(UTC))):
                    log.error("node_claim_lost", node_id=self.claim.node_id)
            except StorageUnavailable:
                pass  # the write-behind reports the outage; the next beat retries
            except Exception as exc:  # noqa: BLE001 - a failed beat must not end the server
                log.error("node_heartbeat_failed", error=repr(exc)[:200])
