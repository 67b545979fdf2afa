"""/metrics exports exactly what the composition root hands it: counters dataclasses and plain
mappings alike, under the same family and kind names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from api.metrics import Metrics, MetricsSources, counter_values, exposition


@dataclass
class ExampleCounters:
    sent: int = 0
    failed: int = 0
    last_error: str = ""  # not a counter: never exported


def test_counter_values_reads_dataclasses_and_mappings_alike() -> None:
    assert counter_values(ExampleCounters(failed=2, last_error="x")) == {"sent": 0, "failed": 2}
    assert counter_values({"parse_errors": 3}) == {"parse_errors": 3}


def test_families_come_from_the_sources_given() -> None:
    recorder = ExampleCounters(sent=4)
    metrics = Metrics(MetricsSources(
        active_calls=lambda: 2,
        recorder=lambda: recorder,
        sip_messages=lambda: {"requests": 7, "parse_errors": 3},
        sip_transport=lambda: {"send_failures": 1},
        media_errors=lambda: ExampleCounters(failed=1),
    ), started=datetime(2024, 5, 1, tzinfo=UTC))
    recorder.sent += 1  # read at each scrape, not when wired
    lines = exposition(metrics.families()).splitlines()
    for line in ("siprec_active_calls 2",
                 'siprec_recorder_events_total{kind="sent"} 5',
                 'siprec_sip_messages_total{kind="requests"} 7',
                 "siprec_sip_parse_errors_total 3",
                 'siprec_sip_transport_errors_total{kind="send_failures"} 1',
                 'siprec_media_errors_total{kind="failed"} 1',
                 "siprec_rtp_packets_received_total 0"):
        assert line in lines, line


def test_without_sources_every_family_is_there_with_zeros() -> None:
    text = exposition(Metrics().families())
    assert "siprec_active_calls 0" in text.splitlines()
    assert "siprec_sip_parse_errors_total 0" in text.splitlines()
    assert "# TYPE siprec_recorder_events_total counter" in text


def test_registered_counters_become_one_family_per_field() -> None:
    metrics = Metrics()
    counters = ExampleCounters()
    metrics.register("siprec_example", "Example counters", counters)
    counters.failed = 3
    lines = exposition(metrics.families()).splitlines()
    assert "siprec_example_failed_total 3" in lines
    assert "# TYPE siprec_example_sent_total counter" in lines
    assert not any("last_error" in line for line in lines)
