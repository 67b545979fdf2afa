"""The deadline queue under the SIP core: time only ever comes in as a parameter."""

from __future__ import annotations

from siprec_server.sip.timers import TimerQueue, TimerValues


def test_rfc3261_default_timer_values() -> None:
    values = TimerValues()
    assert (values.t1, values.t2, values.t4) == (0.5, 4.0, 5.0)


def test_timers_fire_in_deadline_order_then_in_scheduling_order() -> None:
    queue = TimerQueue()
    fired: list[str] = []
    queue.schedule(2.0, lambda now: fired.append("b"))
    queue.schedule(1.0, lambda now: fired.append("a"))
    queue.schedule(2.0, lambda now: fired.append("c"))
    assert queue.next_deadline() == 1.0
    queue.fire_due(5.0)
    assert fired == ["a", "b", "c"]
    assert queue.next_deadline() is None and len(queue) == 0


def test_only_due_timers_fire_and_they_get_the_current_time() -> None:
    queue = TimerQueue()
    seen: list[float] = []
    queue.schedule(1.0, seen.append)
    queue.schedule(3.0, seen.append)
    queue.fire_due(1.5)
    assert seen == [1.5]
    assert queue.next_deadline() == 3.0
    queue.fire_due(2.9)
    assert seen == [1.5]
    queue.fire_due(3.0)
    assert seen == [1.5, 3.0]


def test_cancelled_timer_never_fires_and_is_not_the_next_deadline() -> None:
    queue = TimerQueue()
    fired: list[float] = []
    first = queue.schedule(1.0, fired.append)
    queue.schedule(2.0, fired.append)
    first.cancel()
    assert queue.next_deadline() == 2.0
    assert len(queue) == 1
    queue.fire_due(10.0)
    assert fired == [10.0]


def test_a_callback_may_schedule_and_cancel_timers() -> None:
    queue = TimerQueue()
    fired: list[str] = []
    later = queue.schedule(1.5, lambda now: fired.append("cancelled one"))

    def first(now: float) -> None:
        fired.append("first")
        later.cancel()
        queue.schedule(now, lambda _now: fired.append("due at once"))
        queue.schedule(now + 10, lambda _now: fired.append("much later"))

    queue.schedule(1.0, first)
    queue.fire_due(2.0)
    assert fired == ["first", "due at once"]
    assert queue.next_deadline() == 12.0


def test_a_handle_fires_at_most_once() -> None:
    queue = TimerQueue()
    fired: list[float] = []
    handle = queue.schedule(1.0, fired.append)
    queue.fire_due(1.0)
    queue.fire_due(2.0)
    handle.cancel()
    assert fired == [1.0]
    assert handle.cancelled
