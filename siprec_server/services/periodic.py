"""A service's background loop: its work at once, then again every interval (or sooner when
woken), until it is closed. A round that fails is logged and the next one tries again: the
database may be away for a while, and the loop must outlive that."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Periodic"]


class Periodic:
    def __init__(self, work: Callable[[], Awaitable[object]], interval_s: float, *,
                 log: Any, failure: str) -> None:
        """`work` every `interval_s`; a failed round is logged on `log` as the event
        `failure`."""
        self.work = work
        self.interval_s = interval_s
        self._log = log
        self._failure = failure
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0
        """Rounds that failed in a row (0 when the last one worked)."""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    def wake(self) -> None:
        """There is work now: the next round starts at once rather than after the interval
        (at once after the current one, when a round is running)."""
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.work()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next round tries again; logged
                # The type only: a database error's text can quote the values it refused. Once
                # per run of failures (an outage of the database would log every second).
                self.failures += 1
                if self.failures == 1:
                    self._log.warning(self._failure, error=type(exc).__name__)
            else:
                if self.failures:
                    self._log.info(f"{self._failure.removesuffix('_failed')}_recovered",
                                   failed_rounds=self.failures)
                self.failures = 0
            # asyncio.timeout, not wait_for: wait_for in 3.11 can swallow a cancellation that
            # arrives as the event fires, and close() would wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
