"""Recording storage running out: the free-space floor under data_dir.

Below `server.min_free_disk_mb` of free space the recorder refuses new calls (503, so the SBC
hunts to another recorder) and the calls in progress are ended and sealed while there is still
room to write their final chunks, instead of failing one by one on ENOSPC with nothing sealed.
When space is back (the floor plus a margin, so that it does not flap), calls are taken again
and recordings that could not be sealed are sealed then.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from siprec_server.logs import get_logger

log = get_logger("disk")

CHECK_INTERVAL_S = 1.0
RECOVERY_MARGIN = 1.1
"""Space must exceed the floor by this factor before calls are taken again..."""
RECOVERY_MINIMUM = 16 * 2**20
"""...and, when the floor is off (after an ENOSPC), this much or a tenth of the disk."""


def free_and_total(path: Path) -> tuple[int, int]:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


@dataclass
class DiskCounters:
    low_events: int = 0
    """Times free space fell below the floor (or a write hit ENOSPC)."""


class DiskGuard:
    def __init__(self, path: Path, min_free_bytes: int, *, on_low: Callable[[], None],
                 on_recovered: Callable[[], None]) -> None:
        self._path = path
        self._floor = min_free_bytes
        self._on_low = on_low
        self._on_recovered = on_recovered
        self.low = False
        self.counters = DiskCounters()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def exhausted(self) -> None:
        """A write hit ENOSPC: low at once, whatever the floor says."""
        self._go_low(reason="write failed: no space left on device")

    def check(self) -> None:
        try:
            free, total = free_and_total(self._path)
        except OSError as exc:
            log.error("disk_check_failed", error=str(exc))
            return
        back = (self._floor * RECOVERY_MARGIN if self._floor
                else min(RECOVERY_MINIMUM, total // 10))
        if not self.low and free < self._floor:
            self._go_low(reason=f"{free // 2**20} MiB free, floor {self._floor // 2**20} MiB")
        elif self.low and free >= back:
            self.low = False
            log.warning("disk_space_recovered", free_mib=free // 2**20)
            self._on_recovered()

    def _go_low(self, reason: str) -> None:
        if self.low:
            return
        self.low = True
        self.counters.low_events += 1
        log.error("disk_space_low", reason=reason)
        self._on_low()

    async def _run(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(CHECK_INTERVAL_S)
