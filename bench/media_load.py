"""Whole-server media benchmark: real SIPREC calls with SRTP over loopback into a real server.

The server (`python -m siprec_server run`, embedded PostgreSQL) is pinned to CPU 0 and the load
generator (siprec_server.tools.loadgen, a separate process) to CPU 1, so "calls per core" means
one core of this machine. For each step of N concurrent two-party calls it prints:

- server CPU ms per call-second, measured from /proc/<pid>/stat over a window in which all N
  calls are up (setup and teardown excluded), idle cost included;
- the libopus floor: CPU ms to encode one call-second of the same kind of audio (2 channels,
  same rate and settings) with libopus alone, and the ratio server / floor;
- packet loss as the server saw it: (sent − received + late) / sent, from the per-stream
  statistics the server stored for those recordings, against what the generator sent;
- memory: server RSS growth per call;
- whether the load generator kept its 20 ms pacing (if it did not, the step measures it).

The largest N with loss < 0.01 %, no failed call and a generator that kept up is reported as
the most concurrent calls held.

    .venv/bin/python bench/media_load.py [--steps 50,100,200,300] [--duration 20]
        [--srtp AES_CM_128_HMAC_SHA1_80] [--codec PCMU]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.opus_floor import libopus_cpu  # noqa: E402
from siprec_server.media.ogg_opus import DEFAULT_COMPLEXITY, DEFAULT_FRAME_MS  # noqa: E402
from tests.audio import speech_like, stereo  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SETUP_RATE = 40.0  # calls per second while ramping up


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """The server's media worker processes (and the embedded PostgreSQL's postmaster, which
    is not counted: rtpengine writes no database either)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = _stat(int(entry.name))
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if int(fields[1]) == pid and comm.startswith("python"):
                out.append(int(entry.name))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of the server and its media workers."""
    total = 0.0
    for each in [pid, *children(pid)]:
        try:
            fields = _stat(each)
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def rss_bytes(pid: int) -> int:
    """Resident memory of the server and its media workers."""
    total = 0
    for each in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(cpu: int | None) -> Any:
    def apply() -> None:
        if cpu is not None and len(os.sched_getaffinity(0)) > 1:
            os.sched_setaffinity(0, {cpu})

    return apply


async def start_server(data_dir: Path, sip_port: int, workers: int,
                       cpu: int | None) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "SIPREC_SERVER__DATA_DIR": str(data_dir),
        "SIPREC_SERVER__LOG_LEVEL": "warning",
        "SIPREC_SERVER__LOG_FORMAT": "json",
        "SIPREC_SIP__LISTEN": f"udp:127.0.0.1:{sip_port}",
        "SIPREC_SIP__MAX_SESSIONS": "5000",
        "SIPREC_API__LISTEN": "127.0.0.1:0",
        "SIPREC_MEDIA__BIND_ADDRESS": "127.0.0.1",
        "SIPREC_MEDIA__RTP_PORT_MIN": "20000",
        "SIPREC_MEDIA__RTP_PORT_MAX": "39999",
        "SIPREC_MEDIA__WORKERS": str(workers),
        "SIPREC_RETENTION__ENABLED": "false",
        "SIPREC_BOOTSTRAP_PASSWORD": "bench password not for production",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "siprec_server", "run", env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        preexec_fn=pin(cpu),
    )
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        while b"SIP on" not in (line := await proc.stdout.readline()):
            if not line:
                raise SystemExit("server did not start")
    return proc


async def run_step(
    pid: int, sip_port: int, calls: int, duration: float, srtp: str, codec: str, out: Path,
    generators: int, cpu: int | None,
) -> dict[str, Any]:
    ramp = calls / SETUP_RATE
    if duration < ramp + 4:
        duration = ramp + 8
    shares = [calls // generators + (1 if i < calls % generators else 0)
              for i in range(generators)]
    gens = []
    for i, share in enumerate(shares):
        args = [
            sys.executable, "-m", "siprec_server.tools.loadgen",
            "--server", f"127.0.0.1:{sip_port}", "--calls", str(share),
            "--concurrency", str(share), "--rate", str(SETUP_RATE / generators),
            "--duration", str(duration), "--codec", codec, "--srtp", srtp,
            "--json", str(out.with_suffix(f".{i}.json")),
            "--hard-timeout", str(duration + ramp + 60),
        ]
        gens.append(await asyncio.create_subprocess_exec(
            *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=pin(cpu),
        ))
    rss_before = rss_bytes(pid)
    # Window: every call is up (ramp done + 1 s) until 1 s before the first one ends.
    await asyncio.sleep(ramp + 1.5)
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(max(1.0, duration - ramp - 2.5))
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    rss_during = rss_bytes(pid)
    texts = [(await gen.communicate())[0] for gen in gens]
    text = b"".join(texts)
    window = t1 - t0
    report = merge_reports([out.with_suffix(f".{i}.json") for i in range(generators)])
    return {
        "calls": calls,
        "window_s": window,
        "cpu_ms_per_call_second": (cpu1 - cpu0) * 1000 / (calls * window),
        "server_core_utilisation": (cpu1 - cpu0) / window,
        "rss_per_call_kib": (rss_during - rss_before) / calls / 1024,
        "generator": report,
        "generator_output": text.decode(errors="replace")[-800:],
    }


def merge_reports(paths: list[Path]) -> dict[str, Any]:
    """The generators' summaries added up (sent datagrams, failures, whether all kept up)."""
    summary: dict[str, Any] = {"datagrams_sent": 0, "failed": 0, "sender_fell_behind": False}
    for path in paths:
        if not path.exists():
            summary["failed"] += 1
            continue
        part = json.loads(path.read_text()).get("summary", {})
        summary["datagrams_sent"] += part.get("datagrams_sent") or 0
        summary["failed"] += part.get("failed", 0)
        summary["sender_fell_behind"] |= bool(part.get("sender_fell_behind", True))
    return {"summary": summary}


async def loss_since(dsn: str, since: float) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT s.stats FROM streams s JOIN recordings r ON r.id = s.recording_id
               WHERE r.started_at >= to_timestamp($1)""",
            since,
        )
    finally:
        await conn.close()
    totals = {"received": 0, "lost": 0, "late": 0, "srtp_failures": 0, "streams": 0}
    for row in rows:
        stats = json.loads(row["stats"]) if isinstance(row["stats"], str) else row["stats"]
        if not stats:
            continue
        totals["streams"] += 1
        totals["received"] += stats.get("packets_received", 0)
        totals["lost"] += stats.get("packets_lost", 0)
        totals["late"] += stats.get("late", 0)
        totals["srtp_failures"] += stats.get("srtp_auth_failures", 0) + stats.get(
            "srtp_replays", 0)
    return totals


def floor_ms_per_call_second(rate: int) -> float:
    pcm = stereo(speech_like(30.0, rate, seed=1), speech_like(30.0, rate, seed=2))
    best = min(libopus_cpu(pcm, rate, DEFAULT_COMPLEXITY, DEFAULT_FRAME_MS) for _ in range(3))
    return best * 1000 / 30.0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="50,100,200,300")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--srtp", default="AES_CM_128_HMAC_SHA1_80")
    parser.add_argument("--codec", default="PCMU")
    parser.add_argument("--mode", choices=("core", "machine"), default="core",
                        help="core: the server (main process + one media worker) pinned to CPU 0 "
                             "and the generator to CPU 1; machine: media workers on every "
                             "core, generators unpinned beside them (the whole machine)")
    parser.add_argument("--generators", type=int, default=None,
                        help="load generator processes (default: 1 in core mode, 2 in machine)")
    args = parser.parse_args()
    workers, server_cpu, gen_cpu = (1, 0, 1) if args.mode == "core" else (-1, None, None)
    generators = args.generators or (1 if args.mode == "core" else 2)
    rate = 16000 if args.codec.upper() in ("G722", "OPUS") else 8000
    floor = floor_ms_per_call_second(rate)

    tmp = Path(tempfile.mkdtemp(prefix="siprec-bench-"))
    tmp.chmod(0o755)
    sip_port = free_udp_port()
    server = await start_server(tmp / "var", sip_port, workers, server_cpu)
    dsn = f"postgresql://siprec@/siprec?host={tmp / 'var' / 'pg' / 'run'}"
    results = []
    try:
        await asyncio.sleep(2)
        idle0 = cpu_seconds(server.pid)
        await asyncio.sleep(3)
        idle_ms = (cpu_seconds(server.pid) - idle0) * 1000 / 3
        print(f"libopus floor: {floor:.2f} ms CPU per call-second "
              f"(2 channels, {rate} Hz, complexity {DEFAULT_COMPLEXITY}, {DEFAULT_FRAME_MS} ms)")
        print(f"server idle: {idle_ms:.2f} ms CPU per second")
        print(f"{'calls':>6} {'cpu ms/call-s':>14} {'ratio':>6} {'core %':>7} {'loss %':>8} "
              f"{'KiB/call':>9} {'failed':>6} {'gen ok':>6}")
        for n in [int(x) for x in args.steps.split(",")]:
            since = time.time()
            step = await run_step(server.pid, sip_port, n, args.duration, args.srtp, args.codec,
                                  tmp / f"gen-{n}.json", generators, gen_cpu)
            await asyncio.sleep(2)  # let the server finish the recordings
            totals = await loss_since(dsn, since - 1)
            summary = step["generator"].get("summary", {})
            sent = summary.get("datagrams_sent") or 0
            failed = summary.get("failed", n)
            kept_up = not summary.get("sender_fell_behind", True)
            missing = max(0, sent - totals["received"]) + totals["late"]
            loss = 100.0 * missing / sent if sent else 100.0
            step.update(totals=totals, loss_percent=loss, failed=failed, generator_kept_up=kept_up)
            results.append(step)
            print(f"{n:>6} {step['cpu_ms_per_call_second']:>14.2f} "
                  f"{step['cpu_ms_per_call_second'] / floor:>6.2f} "
                  f"{100 * step['server_core_utilisation']:>6.1f}% {loss:>8.4f} "
                  f"{step['rss_per_call_kib']:>9.0f} {failed:>6} {str(kept_up):>6}", flush=True)
            cores = 1 if args.mode == "core" else len(os.sched_getaffinity(0))
            if loss >= 0.01 or failed or step["server_core_utilisation"] > 0.97 * cores:
                break
        held = [r["calls"] for r in results
                if r["loss_percent"] < 0.01 and not r["failed"] and r["generator_kept_up"]]
        print(f"most concurrent two-party {args.srtp} calls held with loss < 0.01 %: "
              f"{max(held) if held else 0}")
        (tmp / "results.json").write_text(json.dumps(results, indent=1, default=str))
        print(f"details: {tmp / 'results.json'}")
    finally:
        server.terminate()
        try:
            await asyncio.wait_for(server.wait(), 30)
        except TimeoutError:
            server.kill()
        shutil.rmtree(tmp / "var", ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
