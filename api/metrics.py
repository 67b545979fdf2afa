"""GET /metrics: the server's figures in the Prometheus text exposition format (version 0.0.4),
produced by prometheus-client from a registry of the application's own.

What is exported and where it comes from (the composition root, siprec_server/app.py, hands the
sources over as MetricsSources and registers further counters dataclasses; this module
discovers nothing):
- calls: the recorder's live session count and its event counters; SIP message counters
  (parse errors among them) from the SIP agent; transport and media service error counters.
- RTP: packets received and lost and SRTP failures of every call this process recorded, live
  calls included (MediaService.packet_totals).
- recordings by state: one GROUP BY over the recordings table, cached for a few seconds.
- the API itself: requests and a latency histogram by route template, method and status
  (never by raw path: a path can carry a searched-for number or a Call-ID).
- the process: CPU seconds, resident and virtual memory, open file descriptors, start time
  (prometheus-client's process collector), the Python version and its garbage collector.

No authentication, like /healthz: the text holds counts, never ids or personal data.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, TypeAlias

import asyncpg
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from api.app import DB_KEY
from storage import recordings

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "METRICS_KEY",
    "CounterFields",
    "Counters",
    "Metrics",
    "MetricsSources",
    "counter_values",
    "setup_metrics",
]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATE_CACHE_S = 5.0
API_LABELS = ("route", "method", "status")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# No `<counter>_created` series: they double the text and say nothing a scrape's first sight of
# a series does not (a switch of prometheus-client for the whole process).
disable_created_metrics()  # type: ignore[no-untyped-call]


# ------------------------------------------------------------------------------ sources


class CounterFields(Protocol):
    """A counters dataclass: int fields, one per kind (RecorderCounters, MediaCounters, ...)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]


Counters: TypeAlias = CounterFields | Mapping[str, int]
"""A component's counters: its counters dataclass, or a plain name -> count mapping."""


def counter_values(counters: Counters) -> dict[str, int]:
    """The int counters of a counters dataclass or mapping, by name."""
    if isinstance(counters, Mapping):
        items = list(counters.items())
    else:
        items = [(f.name, getattr(counters, f.name)) for f in dataclasses.fields(counters)]
    return {str(k): int(v) for k, v in items if isinstance(v, int)}


def _no_counters() -> Counters:
    return {}


def _no_calls() -> int:
    return 0


@dataclass(frozen=True, slots=True)
class MetricsSources:
    """What /metrics reads at each scrape; the defaults export zeros (an API without SIP or
    media, as in tests)."""

    active_calls: Callable[[], int] = _no_calls
    """Recording sessions in progress (offered or answered)."""
    recorder: Callable[[], Counters] = _no_counters
    """Recorder events: sessions started, rejected, ..."""
    sip_messages: Callable[[], Counters] = _no_counters
    """The SIP agent's message counters, parse_errors among them."""
    sip_transport: Callable[[], Counters] = _no_counters
    media_errors: Callable[[], Counters] = _no_counters
    packets: Callable[[], Counters] = _no_counters
    """Packet totals of every call recorded: packets_received, packets_lost,
    srtp_auth_failures, srtp_replays, srtp_other_failures."""


# ------------------------------------------------------------------------------ collector


class Metrics:
    """The figures of one API application, in a registry of its own: the server's counters and
    gauges read from the sources at each scrape, the API's requests as they are observed, and
    the process."""

    def __init__(
        self, sources: MetricsSources | None = None, *, started: datetime | None = None
    ) -> None:
        self.started = started or datetime.now(UTC)
        self._sources = sources or MetricsSources()
        self._states: dict[str, int] = {}
        self._states_at = -math.inf
        self._exported: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._components: list[tuple[str, str, Counters]] = []
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self._requests = Counter("siprec_api_requests_total",
                                 "API requests by route template, method and status.",
                                 API_LABELS, registry=self.registry)
        self._latency = Histogram("siprec_api_request_duration_seconds",
                                  "API request latency by route template, method and status.",
                                  API_LABELS, buckets=LATENCY_BUCKETS, registry=self.registry)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def register(self, prefix: str, help_text: str, counters: Counters) -> None:
        """Export a component's counters dataclass: one counter `<prefix>_<field>_total` per
        int field (e.g. the database supervisor's restarts, the write-behind's outages)."""
        self._components.append((prefix, help_text, counters))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        labels = (route, method, str(status))
        self._requests.labels(*labels).inc()
        self._latency.labels(*labels).observe(seconds)

    async def refresh(self, db: asyncpg.Pool) -> None:
        """The database's recordings by state, re-read when the cached figures are older than
        STATE_CACHE_S."""
        async with self._lock:
            now = time.monotonic()
            if now - self._states_at < STATE_CACHE_S:
                return
            self._states = await recordings.count_by_state(db)
            self._states_at = now

    def exposition(self) -> bytes:
        """Everything, as the text a scrape gets."""
        return generate_latest(self.registry)

    def _counter(self, key: str, value: int) -> int:
        # A call between "media closed" and "state stored" is briefly in neither sum; a
        # counter must never go down, or Prometheus sees a restart.
        value = max(value, self._exported.get(key, 0))
        self._exported[key] = value
        return value

    def collect(self) -> Iterator[Metric]:
        """The server's own figures (the registry calls this at each scrape)."""
        yield GaugeMetricFamily("siprec_process_start_time_seconds",
                                "When this server process started (Unix time).",
                                value=self.started.timestamp())
        yield GaugeMetricFamily("siprec_active_calls",
                                "Recording sessions in progress (offered or answered).",
                                value=self._sources.active_calls())
        yield from _counter_families(self._sources)

        packets = counter_values(self._sources.packets())  # live calls included
        rtp = [
            ("siprec_rtp_packets_received_total", "packets_received",
             "RTP packets received by the calls this process recorded."),
            ("siprec_rtp_packets_lost_total", "packets_lost",
             "RTP packets lost (RFC 3550 A.3) in the calls this process recorded."),
        ]
        for name, key, text in rtp:
            yield CounterMetricFamily(name, text, value=self._counter(key, packets.get(key, 0)))
        srtp = CounterMetricFamily("siprec_srtp_failures_total",
                                   "SRTP/SRTCP packets refused, by reason, in the calls this "
                                   "process recorded.", labels=["reason"])
        for reason, key in (("auth", "srtp_auth_failures"), ("replay", "srtp_replays"),
                            ("other", "srtp_other_failures")):
            srtp.add_metric([reason], self._counter(key, packets.get(key, 0)))
        yield srtp
        dropped = CounterMetricFamily("siprec_rtp_packets_dropped_total",
                                      "RTP/RTCP packets refused before recording, by reason (a "
                                      "source the stream does not accept, an SSRC other than "
                                      "the locked one).", labels=["reason"])
        for reason in ("foreign_source", "foreign_ssrc"):
            dropped.add_metric([reason], self._counter(reason, packets.get(reason, 0)))
        yield dropped

        states = GaugeMetricFamily("siprec_recordings",
                                   f"Recordings in the database by state (cached "
                                   f"{STATE_CACHE_S:g} s).", labels=["state"])
        for state in ("offered", "recording", "complete", "interrupted", "failed", "erased"):
            states.add_metric([state], self._states.get(state, 0))
        yield states
        for prefix, help_text, counters in self._components:
            for name, value in sorted(counter_values(counters).items()):
                yield CounterMetricFamily(f"{prefix}_{name}_total", f"{help_text}: {name}.",
                                          value=value)


def _counter_families(sources: MetricsSources) -> Iterator[Metric]:
    """The plain counters of the running components, one family each."""
    sip_messages = counter_values(sources.sip_messages())
    families = [
        ("siprec_recorder_events_total", "Recorder events (sessions started, rejected, ...).",
         counter_values(sources.recorder())),
        ("siprec_sip_messages_total", "SIP agent message counters by kind.", sip_messages),
        ("siprec_sip_transport_errors_total", "SIP transport failures by kind.",
         counter_values(sources.sip_transport())),
        ("siprec_media_errors_total", "Media service failures by kind.",
         counter_values(sources.media_errors())),
    ]
    for name, text, counts in families:
        family = CounterMetricFamily(name, text, labels=["kind"])
        for kind, value in sorted(counts.items()):
            family.add_metric([kind], value)
        yield family
    yield CounterMetricFamily("siprec_sip_parse_errors_total",
                              "SIP messages that could not be parsed.",
                              value=sip_messages.get("parse_errors", 0))


METRICS_KEY = web.AppKey("metrics", Metrics)


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        request.app[METRICS_KEY].observe(_route(request), request.method, status,
                                         time.perf_counter() - started)


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    # Without the database the in-process counters still say something, and the cache
    # keeps the last figures.
    with contextlib.suppress(asyncpg.PostgresError, OSError, TimeoutError):
        await metrics.refresh(request.app[DB_KEY])
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})


def setup_metrics(app: web.Application, sources: MetricsSources | None = None) -> Metrics:
    """GET /metrics and the request observer (outermost, so it sees every answer), exporting
    the counters `sources` reads (zeros without). Returns the collector, for `register`."""
    metrics = app[METRICS_KEY] = Metrics(sources)
    app.middlewares.insert(0, observe_requests)
    app.router.add_get("/metrics", metrics_endpoint, allow_head=False)
    return metrics
