"""Writes signed checkpoints of the audit chain to the configured sinks (storage/
audit_checkpoints.py): when `every_events` events were added since the last one, or
`every_seconds` passed and there is anything new. At least the file sink is always on."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg

from siprec_server.logs import get_logger
from storage.audit_checkpoints import Checkpoint, make_checkpoint
from storage.keys import Sealed

__all__ = ["AuditCheckpointer"]

log = get_logger("audit_checkpoints")

_POLL_S = 2.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class AuditCheckpointer:
    def __init__(self, db: asyncpg.Pool, signer: Any, node_id: str, sinks: Sequence[Any], *,
                 webhook: str = "", every_events: int = 1000, every_seconds: float = 300.0,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._signer = signer
        self._node_id = node_id
        self._sinks = list(sinks)
        self._webhook = webhook
        self._every_events = every_events
        self._every_seconds = every_seconds
        self._clock = clock
        self._last: Checkpoint | None = None
        self._last_at: datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.failures = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.checkpoint()  # a clean stop leaves the trail checkpointed

    async def checkpoint(self, *, force: bool = True) -> Checkpoint | None:
        """Write a checkpoint now (force) or when one is due."""
        now = self._clock()
        head = await self._db.fetchval("SELECT max(seq) FROM audit_events") or 0
        last_seq = self._last.seq if self._last else 0
        if head <= last_seq:
            return None
        due = (head - last_seq >= self._every_events or self._last_at is None
               or (now - self._last_at).total_seconds() >= self._every_seconds)
        if not (force or due):
            return None
        checkpoint = await make_checkpoint(self._db, self._signer, self._node_id, now)
        if checkpoint is None:
            return None
        for sink in self._sinks:
            await asyncio.get_running_loop().run_in_executor(None, sink.write, checkpoint)
        if self._webhook:
            try:
                async with aiohttp.ClientSession(
                        timeout=aiohttp.ClientTimeout(total=10)) as session, \
                        session.post(self._webhook, data=checkpoint.as_json(),
                                     headers={"Content-Type": "application/json"}) as response:
                    if response.status >= 300:
                        raise aiohttp.ClientError(f"status {response.status}")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.failures += 1
                log.error("checkpoint_webhook_failed", error=repr(exc)[:200])
        self._last, self._last_at = checkpoint, now
        self.written += 1
        return checkpoint

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(min(_POLL_S, self._every_seconds))
            try:
                await self.checkpoint(force=False)
            except asyncio.CancelledError:
                raise
            except Sealed:
                pass  # no signing key before the unseal
            except Exception as exc:  # noqa: BLE001 - retried next round; logged and counted
                self.failures += 1
                if not failing:  # once per run of failures: an outage would log every second
                    log.error("audit_checkpoint_failed", error=type(exc).__name__)
                failing = True
            else:
                if failing:
                    log.info("audit_checkpoint_recovered")
                failing = False
