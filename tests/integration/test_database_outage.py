"""Database outages lose nothing (issue 7 §2).

The big one: 50 two-party SRTP calls, the postmaster SIGKILLed mid-call and kept down 30 s, then
started again. Half the calls end during the outage (their final row and signed summary must
wait), the other half hold and resume during it (their metadata updates must wait) and end after
it. New calls get 503 + Retry-After while it is down, /healthz says degraded, logins say 503.
Afterwards: 50 of 50 recordings complete and verified, with their pauses and participants.

Also: the server's own embedded cluster, killed, is restarted by the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from siprec_server.app import RunningServer, start_server
from siprec_server.config import load_config
from storage.database import create_pool, ensure_database, migrate
from storage.embedded_postgres import EmbeddedPostgres, cluster_root_for
from storage.verification import verify_recording
from tests.integration.conftest import server_env
from tests.metrics import sample
from tests.server_process import ServerProcess, free_port
from tests.sip_client import SipTestClient, interop_case

OUTAGE_S = 30.0
SHORT_CALL_S = 20.0
LONG_CALL_S = 42.0
CALLS_PER_GROUP = 25


@pytest.fixture
def own_cluster() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, to kill without touching the shared one."""
    root = Path(tempfile.mkdtemp(prefix="siprec-outage-pg-"))
    root.chmod(0o755)
    cluster = EmbeddedPostgres(root / "pg", durable=False)
    cluster.start()
    try:
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def postmaster_pid(cluster: EmbeddedPostgres) -> int:
    return int((cluster.data_dir / "postmaster.pid").read_text().split()[0])


def http_json(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any],
                                                                       dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), dict(exc.headers)


async def get(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any],
                                                                       dict[str, str]]:
    return await asyncio.get_running_loop().run_in_executor(None, http_json, url, body)


async def loadgen(port: int, calls: int, duration: float, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "siprec_server.tools.loadgen",
        "--server", f"127.0.0.1:{port}", "--calls", str(calls), "--rate", "25",
        "--duration", str(duration), "--srtp", "AES_CM_128_HMAC_SHA1_80",
        "--dtmf", "*1*2", "--dtmf-at", "1.0", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )


@pytest.fixture
async def server_on(own_cluster: EmbeddedPostgres, data_dir: Path
                    ) -> AsyncIterator[tuple[RunningServer, str]]:
    dsn = await ensure_database(own_cluster.dsn, "outage")
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    env = server_env(dsn, data_dir, sip__listen=f"udp:127.0.0.1:{free_port()}",
                     media__bind_address="127.0.0.1", media__rtp_port_min="31000",
                     media__rtp_port_max="31999")
    env["SIPREC_BOOTSTRAP_PASSWORD"] = "outage test password"
    server = await start_server(load_config(env=env))
    try:
        yield server, dsn
    finally:
        await server.stop()


async def test_fifty_srtp_calls_lose_nothing_through_a_30_second_database_outage(
    own_cluster: EmbeddedPostgres, server_on: tuple[RunningServer, str], data_dir: Path
) -> None:
    server, dsn = server_on
    loop = asyncio.get_running_loop()
    sip_port = next(port for kind, _h, port in server.sip_addresses if kind == "udp")
    api = f"http://{server.api_address[0]}:{server.api_address[1]}"

    short = await loadgen(sip_port, CALLS_PER_GROUP, SHORT_CALL_S)
    long = await loadgen(sip_port, CALLS_PER_GROUP, LONG_CALL_S, "--hold", "8:10")
    deadline = loop.time() + 20
    while server.recorder.active_sessions < 2 * CALLS_PER_GROUP:  # every call answered
        assert loop.time() < deadline, server.recorder.active_sessions
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # and recording

    os.kill(postmaster_pid(own_cluster), signal.SIGKILL)
    killed_at = loop.time()
    await asyncio.sleep(2.0)

    # While it is down: a new call is refused so that the SBC fails over...
    async with SipTestClient("udp", ("127.0.0.1", sip_port)) as src:
        response, _dialog = await src.invite(interop_case("oracle_acme_1"))
    assert response.status == 503 and response.headers.get("Retry-After"), response
    # ...health says degraded, and a login is a 503 rather than a 500.
    status, health, _ = await get(api + "/healthz")
    assert status == 503 and health["status"] == "degraded"
    status, body, headers = await get(api + "/api/v1/auth/token",
                                      {"username": "admin", "password": "outage test password"})
    assert status == 503 and body["error"]["code"] == "database_unavailable"
    assert headers.get("Retry-After")

    await asyncio.sleep(max(0.0, killed_at + OUTAGE_S - loop.time()))
    assert server.writes.pending > 0  # the short calls ended meanwhile; their rows wait
    await loop.run_in_executor(None, own_cluster.start)
    back_at = loop.time()

    async def caught_up() -> float:
        while not (server.writes.available and server.writes.pending == 0):
            await asyncio.sleep(0.05)
        return loop.time() - back_at

    recovery = asyncio.create_task(caught_up())

    for process in (short, long):
        out, _ = await asyncio.wait_for(process.communicate(), 90)
        assert process.returncode == 0, out.decode()[-2000:]
    while True:
        status, health, _ = await get(api + "/healthz")
        if status == 200:
            break
        assert loop.time() - back_at < 60, health
        await asyncio.sleep(0.5)
    assert server.writes.counters.outages >= 1
    assert server.writes.counters.deferred > 0 and server.writes.counters.failed == 0

    pool = await create_pool(dsn)
    try:
        rows = await pool.fetch("SELECT * FROM recordings ORDER BY started_at")
        assert len(rows) == 2 * CALLS_PER_GROUP
        durations = sorted(row["duration_ms"] / 1000 for row in rows)
        for row in rows:
            assert row["state"] == "complete", (row["state"], row["end_reason"])
            assert row["signature"] is not None and not row["recovered"]
            sources = {p["source"] for p in row["pauses"]}
            assert "dtmf" in sources, row["pauses"]
            participants = await pool.fetch(
                "SELECT number FROM participants WHERE recording_id = $1", row["id"])
            assert len(participants) == 2 and all(p["number"] for p in participants)
            events = await pool.fetchval(
                "SELECT count(*) FROM metadata_events WHERE recording_id = $1", row["id"])
            assert events >= 1
            check = await verify_recording(pool, server.media._keys, row["id"])
            assert check.ok, check.problems
        assert durations[0] >= SHORT_CALL_S - 1.5 and durations[-1] >= LONG_CALL_S - 1.5
        held = [r for r in rows if any(p["source"] == "hold" for p in r["pauses"])]
        assert len(held) == CALLS_PER_GROUP  # their hold and resume came during the outage
    finally:
        await pool.close()
    print(f"\noutage {OUTAGE_S:.0f} s: every waiting write applied {await recovery:.2f} s "
          f"after the database was back; {server.writes.counters.deferred} writes waited")


async def test_the_servers_own_embedded_cluster_is_restarted_when_it_dies(
    data_dir: Path,
) -> None:
    env = server_env("", data_dir, sip__listen=f"udp:127.0.0.1:{free_port()}",
                     api__listen=f"127.0.0.1:{free_port(socket.SOCK_STREAM)}",
                     media__bind_address="127.0.0.1")
    env["SIPREC_BOOTSTRAP_PASSWORD"] = "restart test password"
    process = ServerProcess(env)
    await process.start()
    try:
        api = "http://" + env["SIPREC_API__LISTEN"]
        cluster = EmbeddedPostgres(cluster_root_for(data_dir))
        first = postmaster_pid(cluster)
        os.kill(first, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            status, health, _ = await get(api + "/healthz")
            if status == 200 and cluster.is_running() and postmaster_pid(cluster) != first:
                break
            assert loop.time() < deadline, health
            await asyncio.sleep(0.5)
        status, _body, _ = await get(api + "/api/v1/auth/token",
                                     {"username": "admin", "password": "restart test password"})
        assert status == 200
        status, _b, _ = await get(api + "/healthz")
        metrics = await loop.run_in_executor(
            None, lambda: urllib.request.urlopen(api + "/metrics", timeout=10).read().decode())
        assert sample(metrics, "siprec_database_embedded_restarts_total") == 1, metrics[-2000:]
    finally:
        await process.stop()
