"""RFC 4733 telephone events: payload parsing and folding many packets into one key press."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siprec_server.media.dtmf import (
    DtmfFormatError,
    EventEnded,
    EventStarted,
    TelephoneEvent,
    TelephoneEventTracker,
    digit_for,
    parse_telephone_event,
)


def event_payload(event: int, duration: int, *, end: bool = False, volume: int = 10) -> bytes:
    return struct.pack("!BBH", event, (0x80 if end else 0) | volume, duration)


def test_payload_fields_are_parsed() -> None:
    assert parse_telephone_event(event_payload(11, 1600, end=True, volume=7)) == TelephoneEvent(
        event=11, end=True, volume=7, duration=1600
    )


def test_reserved_bit_is_ignored() -> None:
    payload = bytes([5, 0x40 | 12]) + struct.pack("!H", 400)
    assert parse_telephone_event(payload) == TelephoneEvent(5, False, 12, 400)


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\x01\x02\x03"])
def test_short_payload_raises_dtmf_format_error(payload: bytes) -> None:
    with pytest.raises(DtmfFormatError):
        parse_telephone_event(payload)
    assert issubclass(DtmfFormatError, ValueError)


def test_event_codes_map_to_digits() -> None:
    assert [digit_for(code) for code in range(17)] == [*"0123456789*#ABCD", "flash"]
    assert digit_for(32) is None  # fax/modem tones are not key presses


def test_one_key_press_is_one_start_and_one_end_despite_retransmitted_end_packets() -> None:
    tracker = TelephoneEventTracker()
    transitions: list[EventStarted | EventEnded] = []
    for duration in (0, 400, 800, 1200):
        transitions += tracker.observe(8000, parse_telephone_event(event_payload(1, duration)))
    for _ in range(3):  # RFC 4733 2.5.1.4: the final packet is sent three times
        transitions += tracker.observe(
            8000, parse_telephone_event(event_payload(1, 1600, end=True))
        )
    assert transitions == [
        EventStarted(timestamp=8000, event=1, duration=0),
        EventEnded(timestamp=8000, event=1, duration=1600, volume=10, confirmed=True),
    ]
    assert tracker.open_timestamp is None


def test_new_event_closes_one_whose_end_packets_were_lost() -> None:
    tracker = TelephoneEventTracker()
    tracker.observe(1000, TelephoneEvent(2, False, 10, 800))
    transitions = tracker.observe(5000, TelephoneEvent(3, False, 10, 0))
    assert transitions == (
        EventEnded(1000, 2, 800, 10, confirmed=False),
        EventStarted(5000, 3, 0),
    )


def test_late_update_of_a_finished_or_older_event_is_ignored() -> None:
    tracker = TelephoneEventTracker()
    tracker.observe(1000, TelephoneEvent(2, True, 10, 800))
    assert tracker.observe(1000, TelephoneEvent(2, False, 10, 400)) == ()
    tracker.observe(9000, TelephoneEvent(4, False, 10, 0))
    assert tracker.observe(5000, TelephoneEvent(3, False, 10, 400)) == ()
    assert tracker.open_timestamp == 9000


def test_timestamps_compare_across_32_bit_wrap() -> None:
    tracker = TelephoneEventTracker()
    tracker.observe(0xFFFFFF00, TelephoneEvent(1, True, 10, 800))
    # 0x100 is after 0xFFFFFF00 once the timestamp wrapped: a new event, not a stale one.
    assert tracker.observe(0x100, TelephoneEvent(2, False, 10, 0)) == (EventStarted(0x100, 2, 0),)


def test_close_reports_the_open_event_with_its_last_duration() -> None:
    tracker = TelephoneEventTracker()
    assert tracker.close() is None
    tracker.observe(7, TelephoneEvent(9, False, 20, 320))
    tracker.observe(7, TelephoneEvent(9, False, 21, 640))
    assert tracker.close() == EventEnded(7, 9, 640, 21, confirmed=False)
    assert tracker.close() is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 0xFFFFFFFF),
            st.integers(0, 20),
            st.booleans(),
            st.integers(0, 0xFFFF),
        ),
        max_size=40,
    )
)
def test_every_started_event_ends_exactly_once(
    packets: list[tuple[int, int, bool, int]],
) -> None:
    tracker = TelephoneEventTracker()
    started: list[int] = []
    ended: list[int] = []
    for ts, code, end, duration in packets:
        for t in tracker.observe(ts, TelephoneEvent(code, end, 0, duration)):
            (started if isinstance(t, EventStarted) else ended).append(t.timestamp)
    last = tracker.close()
    if last is not None:
        ended.append(last.timestamp)
    assert started == ended
