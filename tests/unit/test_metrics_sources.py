"""/metrics exports exactly what the composition root hands it: counters dataclasses and plain
mappings alike, under the same family and kind names."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from api.metrics import Metrics, MetricsSources, counter_values
from tests.metrics import sample


@dataclass
class ExampleCounters:
    sent: int = 0
    failed: int = 0
    last_error: str = ""  # not a counter: never exported


def text(metrics: Metrics) -> str:
    return metrics.exposition().decode()


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
    exposed = text(metrics)
    assert sample(exposed, "siprec_active_calls") == 2
    assert sample(exposed, "siprec_recorder_events_total", kind="sent") == 5
    assert sample(exposed, "siprec_sip_messages_total", kind="requests") == 7
    assert sample(exposed, "siprec_sip_parse_errors_total") == 3
    assert sample(exposed, "siprec_sip_transport_errors_total", kind="send_failures") == 1
    assert sample(exposed, "siprec_media_errors_total", kind="failed") == 1
    assert sample(exposed, "siprec_rtp_packets_received_total") == 0
    assert sample(exposed, "siprec_process_start_time_seconds") == \
        datetime(2024, 5, 1, tzinfo=UTC).timestamp()


def test_without_sources_every_family_is_there_with_zeros() -> None:
    exposed = text(Metrics())
    assert sample(exposed, "siprec_active_calls") == 0
    assert sample(exposed, "siprec_sip_parse_errors_total") == 0
    assert "# TYPE siprec_recorder_events_total counter" in exposed


def test_registered_counters_become_one_family_per_field() -> None:
    metrics = Metrics()
    counters = ExampleCounters()
    metrics.register("siprec_example", "Example counters", counters)
    counters.failed = 3
    exposed = text(metrics)
    assert sample(exposed, "siprec_example_failed_total") == 3
    assert "# TYPE siprec_example_sent_total counter" in exposed.splitlines()
    assert "last_error" not in exposed


def test_packet_counters_never_go_down() -> None:
    """A call between "media closed" and "state stored" is briefly in neither sum: the counter
    holds its last value rather than dropping (Prometheus would take a drop for a restart)."""
    totals = {"packets_received": 100, "srtp_replays": 2}
    metrics = Metrics(MetricsSources(packets=lambda: totals))
    assert sample(text(metrics), "siprec_rtp_packets_received_total") == 100
    totals.update(packets_received=40, srtp_replays=1)
    exposed = text(metrics)
    assert sample(exposed, "siprec_rtp_packets_received_total") == 100
    assert sample(exposed, "siprec_srtp_failures_total", reason="replay") == 2


def test_no_created_series_and_the_process_is_described() -> None:
    metrics = Metrics()
    metrics.observe("/api/v1/recordings", "GET", 200, 0.02)
    exposed = text(metrics)
    assert "_created" not in exposed
    assert sample(exposed, "siprec_api_requests_total", route="/api/v1/recordings",
                  method="GET", status="200") == 1
    assert sample(exposed, "siprec_api_request_duration_seconds_sum",
                  route="/api/v1/recordings", method="GET", status="200") == 0.02
    assert (sample(exposed, "process_resident_memory_bytes") or 0) > 0
    assert "# TYPE python_info gauge" in exposed
