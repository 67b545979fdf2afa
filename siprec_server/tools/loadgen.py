"""Load generator command line: many SIPREC calls with real (S)RTP media against one recorder.

    python -m siprec_server.tools.loadgen --server 127.0.0.1:5060 --calls 100 \\
        --concurrency 100 --rate 20 --duration 30 --codec PCMU \\
        --srtp AES_CM_128_HMAC_SHA1_80 --loss 0 --streams 2

prints what was sent (calls ok/failed, packets, the sender's own lateness and CPU per
call-second) and with --json FILE writes the whole RunReport. It sends SIP and RTP only to the
--server address and stops by itself: every call ends after --duration, and --hard-timeout
cancels whatever is still running (default: duration + the time to start every call + 40 s).
Exit status 0 when every call succeeded, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from siprec_server.media.srtp_suites import SUITES
from siprec_server.tools.siprec_client import (
    CODECS,
    T1,
    CallPlan,
    DtmfDigit,
    Hold,
    Impairments,
    RunReport,
    SiprecClientError,
    default_streams,
    parse_server,
    run_calls,
)

DTMF_SPACING = 0.5
"""Seconds between the starts of consecutive --dtmf digits."""


def _hold(text: str) -> Hold:
    start, sep, end = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return Hold(float(start), float(end))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hold {text!r}: START:END in seconds") from None


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: a percentage 0..100")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a positive number")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m siprec_server.tools.loadgen",
        description="Place SIPREC calls (INVITE with SDP + RFC 7865 metadata, RTP/SRTP media, "
        "BYE) against a recorder and report what was sent.",
    )
    p.add_argument("--server", required=True, help="recorder SIP address HOST:PORT")
    p.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    p.add_argument("--calls", type=int, default=1, help="calls to place (default 1)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="calls at once (default: all of them)")
    p.add_argument("--rate", type=_positive, default=10.0, help="new calls per second")
    p.add_argument("--duration", type=_positive, default=10.0, help="media seconds per call")
    p.add_argument("--streams", type=int, default=2, help="m-lines (parties) per call")
    p.add_argument("--codec", choices=tuple(CODECS), default="PCMU")
    p.add_argument("--srtp", choices=("none", *(s.name for s in SUITES)), default="none")
    p.add_argument("--ptime", type=int, default=20, help="packet time in ms")
    p.add_argument("--loss", type=_percent, default=0.0, help="%% of packets dropped")
    p.add_argument("--reorder", type=_percent, default=0.0, help="%% sent after the next one (max 50)")
    p.add_argument("--duplicate", type=_percent, default=0.0, help="%% sent twice")
    p.add_argument("--seed", type=int, default=0, help="impairment seed (call i uses seed+i)")
    p.add_argument("--dtmf", default="", help="digits sent on stream 0 as RFC 4733 events, "
                   f"one every {DTMF_SPACING} s from --dtmf-at")
    p.add_argument("--dtmf-at", type=float, default=1.0)
    p.add_argument("--dtmf-inband", choices=("tone", "silence", "none"), default="tone")
    p.add_argument("--hold", type=_hold, default=None, help="START:END seconds of hold")
    p.add_argument("--phases", type=int, default=4,
                   help="spread calls over this many slots of the packet time (1 = bursts)")
    p.add_argument("--sip-timeout", type=_positive, default=64 * T1,
                   help="seconds to wait for a final response (default 32)")
    p.add_argument("--hard-timeout", type=_positive, default=None,
                   help="seconds after which the whole run is stopped")
    p.add_argument("--local-address", default=None,
                   help="local IP to send from (default: the route to --server)")
    p.add_argument("--json", type=Path, default=None, help="write the full report here")
    return p


def plans_from(args: argparse.Namespace) -> list[CallPlan]:
    srtp = None if args.srtp == "none" else args.srtp
    streams = default_streams(args.streams, args.codec, srtp)
    dtmf = tuple(
        DtmfDigit(digit, args.dtmf_at + i * DTMF_SPACING) for i, digit in enumerate(args.dtmf)
    )
    impaired = args.loss or args.reorder or args.duplicate
    plans = []
    for i in range(args.calls):
        plans.append(
            CallPlan(
                streams=streams,
                duration=args.duration,
                ptime_ms=args.ptime,
                transport=args.transport,
                dtmf=dtmf,
                dtmf_inband=args.dtmf_inband,
                hold=args.hold,
                impairments=Impairments(args.loss, args.reorder, args.duplicate, args.seed + i)
                if impaired else None,
            )
        )
    return plans


def summary(report: RunReport) -> str:
    calls = report.calls
    statuses = Counter(
        str(c.invite.status) if c.invite and c.invite.status else "none" for c in calls
    )
    errors = Counter(c.error for c in calls if c.error)
    streams = [s for c in calls for s in c.streams]
    packets = sum(s.packets for s in streams)
    sender = report.sender
    cpu = report.cpu_user + report.cpu_system
    per_call_second = report.cpu_ms_per_call_second
    lines = [
        f"calls: {report.ok} ok, {report.failed} failed of {len(calls)} "
        f"(INVITE answers: {', '.join(f'{k} x{v}' for k, v in sorted(statuses.items()))})",
    ]
    for error, count in errors.most_common(5):
        lines.append(f"  {count} x {error}")
    lines += [
        f"media: {sum(1 for s in streams if s.answered)} streams, {packets} RTP packets "
        f"({sum(s.event_packets for s in streams)} telephone-event), "
        f"{report.datagrams_sent} datagrams sent, "
        f"{sum(s.dropped for s in streams)} dropped / {sum(s.duplicated for s in streams)} "
        f"duplicated / {sum(s.reordered for s in streams)} reordered by impairment, "
        f"{sum(s.send_errors for s in streams)} send errors",
        f"call-seconds: {report.call_seconds:.1f} in {report.elapsed:.1f} s, "
        f"up to {sender.max_streams} streams at once",
        f"sender lateness (last packet of a step): p50 {sender.late_last_p50_ms:.2f} ms, "
        f"p99 {sender.late_last_p99_ms:.2f} ms, max {sender.late_last_max_ms:.2f} ms; "
        f"{sender.overruns} of {sender.ticks} steps over one packet time; "
        f"send loop busy {100 * sender.duty:.0f}% of the time",
        f"sender CPU: {report.cpu_user:.2f} s user + {report.cpu_system:.2f} s system = "
        f"{cpu:.2f} s"
        + (f" = {per_call_second:.2f} ms per call-second" if per_call_second else "")
        + f" (encoding beforehand {report.prepare_cpu:.2f} s)",
    ]
    if sender.fell_behind:
        cause = (
            "it is too slow for this load: use fewer calls per process"
            if sender.duty > 0.5 else
            "its process was not scheduled in time (CPU shared with the server or others)"
        )
        lines.append(
            "WARNING: the load generator fell behind its own schedule, so lateness seen by "
            f"the server includes the sender's own; {cause}."
        )
    return "\n".join(lines)


async def _main(args: argparse.Namespace, plans: list[CallPlan]) -> RunReport:
    return await run_calls(
        args.server,
        plans,
        concurrency=args.concurrency or max(1, args.calls),
        rate=args.rate,
        local_host=args.local_address,
        sip_timeout=args.sip_timeout,
        hard_timeout=args.hard_timeout,
        phases=args.phases,
    )


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, RunReport]], RunReport]:
    # uvloop's timers and sockets are cheaper: more streams per process before falling behind.
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    run: Callable[[Coroutine[Any, Any, RunReport]], RunReport] = uvloop.run
    return run


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.calls < 1 or args.streams < 1 or (args.concurrency is not None
                                                and args.concurrency < 1):
        p.error("--calls, --streams and --concurrency must be at least 1")
    if args.duration > 24 * 3600:
        p.error("--duration is at most a day")
    if args.hard_timeout is None:
        args.hard_timeout = args.duration + args.calls / args.rate + args.sip_timeout + 40
    try:
        parse_server(args.server)
        plans = plans_from(args)
        for plan in plans[:1]:
            plan.validate()
    except SiprecClientError as exc:
        p.error(str(exc))
    try:
        report = _event_loop_runner()(_main(args, plans))
    except SiprecClientError as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    print(summary(report))
    if args.json is not None:
        data = report.to_dict()
        data["arguments"] = {k: str(v) if isinstance(v, Path | Hold) else v
                             for k, v in vars(args).items()}
        args.json.write_text(json.dumps(data, indent=2))
    return 0 if report.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
