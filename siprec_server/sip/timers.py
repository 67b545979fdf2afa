"""A deadline queue for the sans-IO SIP core: time is always passed in, never read."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TimerValues:
    """RFC 3261 §17.1.1.1 / Table 4 base values, in seconds."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0


@dataclass(order=True, slots=True)
class TimerHandle:
    deadline: float
    seq: int
    callback: Callable[[float], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class TimerQueue:
    def __init__(self) -> None:
        self._heap: list[TimerHandle] = []
        self._seq = itertools.count()

    def schedule(self, deadline: float, callback: Callable[[float], None]) -> TimerHandle:
        handle = TimerHandle(deadline, next(self._seq), callback)
        heapq.heappush(self._heap, handle)
        return handle

    def next_deadline(self) -> float | None:
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].deadline if self._heap else None

    def fire_due(self, now: float) -> None:
        while self._heap and self._heap[0].deadline <= now:
            handle = heapq.heappop(self._heap)
            if not handle.cancelled:
                handle.cancelled = True
                handle.callback(now)

    def __len__(self) -> int:
        return sum(1 for h in self._heap if not h.cancelled)
