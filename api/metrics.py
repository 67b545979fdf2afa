"""GET /metrics: the server's counters in the Prometheus text exposition format (version 0.0.4),
written by hand — the format is a few lines of text and needs no client library.

What is exported and where it comes from:
- calls: the recorder's live session count and its event counters; SIP message counters
  (parse errors among them) from the SIP agent; transport and media service error counters.
- RTP: packets received and lost and SRTP failures of every call this process recorded, live
  calls included (MediaService.packet_totals).
- recordings by state: one GROUP BY over the recordings table, cached for a few seconds.
- the API itself: requests and a latency histogram by route template, method and status
  (never by raw path: a path can carry a searched-for number or a Call-ID).

No authentication, like /healthz: the text holds counts, never ids or personal data.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiohttp import web

from api.app import DB_KEY, RECORDER_KEY

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "METRICS_KEY",
    "Metrics",
    "exposition",
    "setup_metrics",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATE_CACHE_S = 5.0
# A recording's start time is read before its row is inserted; recordings that started this long
# before the oldest open one are surely finished and final.

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ------------------------------------------------------------------------------ exposition


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


@dataclass(slots=True)
class _Family:
    name: str
    kind: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: str) -> None:
        self.samples.append((suffix, labels, value))


def exposition(families: Iterable[_Family]) -> str:
    lines: list[str] = []
    for family in families:
        lines.append(f"# HELP {family.name} {family.help}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for suffix, labels, value in family.samples:
            lines.append(f"{family.name}{suffix}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ API requests


@dataclass(slots=True)
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))
    count: int = 0
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1


# ------------------------------------------------------------------------------ collector


class Metrics:
    """Request observations and cached database figures of one API application."""

    def __init__(
        self, *, media: Callable[[], Any] = lambda: None, started: datetime | None = None
    ) -> None:
        self.started = started or datetime.now(UTC)
        self._media_service = media
        self._requests: dict[tuple[str, str, str], _Histogram] = defaultdict(_Histogram)
        self._states: dict[str, int] = {}
        self._states_at = -math.inf
        self._media_now: dict[str, int] = {}
        self._exported: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._components: list[tuple[str, str, object]] = []

    def register(self, prefix: str, help_text: str, counters: object) -> None:
        """Export a component's counters dataclass: one counter `<prefix>_<field>_total` per
        int field (e.g. the database supervisor's restarts, the write-behind's outages)."""
        self._components.append((prefix, help_text, counters))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self._requests[(route, method, str(status))].observe(seconds)

    async def refresh(self, db: asyncpg.Pool) -> None:
        """Live packet counters from the media service; the database's recordings by state
        re-read when the cached figures are older than STATE_CACHE_S."""
        media = self._media_service()
        if media is not None and hasattr(media, "packet_totals"):
            self._media_now = media.packet_totals()
        async with self._lock:
            now = time.monotonic()
            if now - self._states_at < STATE_CACHE_S:
                return
            rows = await db.fetch("SELECT state, count(*) AS n FROM recordings GROUP BY state")
            self._states = {row["state"]: row["n"] for row in rows}
            self._states_at = now

    def _counter(self, key: str, value: int) -> int:
        # A call between "media closed" and "state stored" is briefly in neither sum; a
        # counter must never go down, or Prometheus sees a restart.
        value = max(value, self._exported.get(key, 0))
        self._exported[key] = value
        return value

    def families(self, recorder: Any) -> list[_Family]:
        out: list[_Family] = []
        up = _Family("siprec_process_start_time_seconds", "gauge",
                     "When this server process started (Unix time).")
        up.add(self.started.timestamp())
        out.append(up)

        active = _Family("siprec_active_calls", "gauge",
                         "Recording sessions in progress (offered or answered).")
        active.add(float(getattr(recorder, "active_sessions", 0)))
        out.append(active)
        out += _stats_families(recorder, self._media_service())

        rtp = [
            ("siprec_rtp_packets_received_total", "packets_received",
             "RTP packets received by the calls this process recorded."),
            ("siprec_rtp_packets_lost_total", "packets_lost",
             "RTP packets lost (RFC 3550 A.3) in the calls this process recorded."),
        ]
        for name, key, text in rtp:
            family = _Family(name, "counter", text)
            family.add(self._counter(key, self._media_now.get(key, 0)))
            out.append(family)
        srtp = _Family("siprec_srtp_failures_total", "counter",
                       "SRTP/SRTCP packets refused, by reason, in the calls this process "
                       "recorded.")
        for reason, key in (("auth", "srtp_auth_failures"), ("replay", "srtp_replays"),
                            ("other", "srtp_other_failures")):
            srtp.add(self._counter(key, self._media_now.get(key, 0)), reason=reason)
        out.append(srtp)
        dropped = _Family("siprec_rtp_packets_dropped_total", "counter",
                          "RTP/RTCP packets refused before recording, by reason (a source "
                          "the stream does not accept, an SSRC other than the locked one).")
        for reason in ("foreign_source", "foreign_ssrc"):
            dropped.add(self._counter(reason, self._media_now.get(reason, 0)), reason=reason)
        out.append(dropped)

        states = _Family("siprec_recordings", "gauge",
                         f"Recordings in the database by state (cached {STATE_CACHE_S:g} s).")
        for state in ("offered", "recording", "complete", "interrupted", "failed", "erased"):
            states.add(float(self._states.get(state, 0)), state=state)
        out.append(states)

        requests = _Family("siprec_api_requests_total", "counter",
                           "API requests by route template, method and status.")
        latency = _Family("siprec_api_request_duration_seconds", "histogram",
                          "API request latency by route template, method and status.")
        for (route, method, status), histogram in sorted(self._requests.items()):
            labels = {"route": route, "method": method, "status": status}
            requests.add(histogram.count, **labels)
            for bound, count in zip(LATENCY_BUCKETS, histogram.buckets, strict=True):
                latency.add(count, "_bucket", **labels, le=_number(bound))
            latency.add(histogram.count, "_bucket", **labels, le="+Inf")
            latency.add(histogram.total, "_sum", **labels)
            latency.add(histogram.count, "_count", **labels)
        out += [requests, latency]
        for prefix, help_text, counters in self._components:
            for name, value in sorted(_numeric_stats_of(counters).items()):
                family = _Family(f"{prefix}_{name}_total", "counter", f"{help_text}: {name}.")
                family.add(value)
                out.append(family)
        return out


def _numeric_stats_of(counters: object) -> dict[str, int]:
    if dataclasses.is_dataclass(counters) and not isinstance(counters, type):
        return {k: int(v) for k, v in dataclasses.asdict(counters).items()
                if isinstance(v, int)}
    return {}


def _numeric_stats(owner: Any) -> dict[str, int]:
    counters = _numeric_stats_of(getattr(owner, "counters", None))
    if counters:
        return counters
    stats = getattr(owner, "stats", None)
    if not isinstance(stats, Mapping):
        return {}
    return {str(k): int(v) for k, v in stats.items() if isinstance(v, int)}


def _stats_families(recorder: Any, media: Any) -> list[_Family]:
    """The plain counters the running components keep in their `stats` dicts."""
    sip_endpoint = getattr(recorder, "sip", None)
    agent = getattr(sip_endpoint, "agent", None)
    sources = [
        ("siprec_recorder_events_total", "Recorder events (sessions started, rejected, ...).",
         _numeric_stats(recorder)),
        ("siprec_sip_messages_total", "SIP agent message counters by kind.",
         _numeric_stats(agent)),
        ("siprec_sip_transport_errors_total", "SIP transport failures by kind.",
         _numeric_stats(sip_endpoint)),
        ("siprec_media_errors_total", "Media service failures by kind.",
         _numeric_stats(media)),
    ]
    out = []
    for name, text, stats in sources:
        family = _Family(name, "counter", text)
        for kind, value in sorted(stats.items()):
            family.add(value, kind=kind)
        out.append(family)
    parse = _Family("siprec_sip_parse_errors_total", "counter",
                    "SIP messages that could not be parsed.")
    parse.add(_numeric_stats(agent).get("parse_errors", 0))
    out.append(parse)
    return out


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
    recorder = request.app.get(RECORDER_KEY)
    # Without the database the in-process counters still say something, and the cache
    # keeps the last figures.
    with contextlib.suppress(asyncpg.PostgresError, OSError, TimeoutError):
        await metrics.refresh(request.app[DB_KEY])
    text = exposition(metrics.families(recorder))
    return web.Response(body=text.encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})


def setup_metrics(app: web.Application, *, media: Callable[[], Any] = lambda: None) -> None:
    """GET /metrics and the request observer (outermost, so it sees every answer). `media`
    returns the media service whose counters to export, if any."""
    app[METRICS_KEY] = Metrics(media=media)
    app.middlewares.insert(0, observe_requests)
    app.router.add_get("/metrics", metrics_endpoint, allow_head=False)
