"""The server as a new operator runs it: one owner per data_dir, operator commands beside a
running server, busy ports, a clone the unprivileged postgres user cannot enter (issue 7 §1)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from siprec_server.media.codecs import encode_ulaw
from siprec_server.siprec.sdp import parse_sdp
from storage.embedded_postgres import EmbeddedPostgres, cluster_root_for
from tests.audio import tone
from tests.integration.conftest import server_env
from tests.integration.test_recording import send_rtp
from tests.server_process import ServerProcess, free_port, run_cli
from tests.sip_client import SipTestClient, interop_case

PASSWORD = "operator password 123"


def embedded_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    """A server on its own embedded PostgreSQL under data_dir (as `make run` does)."""
    env = server_env("", data_dir, **{
        "sip__listen": f"udp:127.0.0.1:{free_port()}",
        "api__listen": f"127.0.0.1:{free_port(socket.SOCK_STREAM)}",
        "media__bind_address": "127.0.0.1",
        **overrides,
    })
    env["SIPREC_BOOTSTRAP_PASSWORD"] = PASSWORD
    return env


def sip_port(env: dict[str, str]) -> int:
    return int(env["SIPREC_SIP__LISTEN"].rsplit(":", 1)[1])


def api_base(env: dict[str, str]) -> str:
    return "http://" + env["SIPREC_API__LISTEN"]


async def http(method: str, url: str, body: dict[str, object] | None = None,
               token: str | None = None) -> tuple[int, dict[str, object]]:
    def call() -> tuple[int, dict[str, object]]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    return await asyncio.get_running_loop().run_in_executor(None, call)


async def record_a_call(port: int, seconds: float = 1.0) -> str:
    """One SIPREC call with a second of audio; returns its Call-ID."""
    frames = [encode_ulaw(f) for f in np.split(tone(440, seconds, 8000), int(seconds * 50))]
    async with SipTestClient("udp", ("127.0.0.1", port)) as src:
        response, dialog = await src.invite(interop_case("oracle_acme_1"))
        assert response.status == 200 and dialog is not None
        await send_rtp(parse_sdp(response.body).media[0].port, frames, 0, ssrc=11)
        assert (await src.bye(dialog)).status == 200
        return dialog.call_id


@pytest.fixture
async def embedded_server(data_dir: Path) -> AsyncIterator[tuple[ServerProcess, dict[str, str]]]:
    env = embedded_env(data_dir)
    server = ServerProcess(env)
    await server.start()
    try:
        yield server, env
    finally:
        await server.stop()


async def test_operator_commands_use_the_running_servers_database_and_stop_nothing(
    embedded_server: tuple[ServerProcess, dict[str, str]], data_dir: Path
) -> None:
    server, env = embedded_server
    await record_a_call(sip_port(env))

    code, out, err = await run_cli(env, "users", "add", "auditor1", "--role", "auditor",
                                   "--password-stdin", stdin=b"auditor password 123\n")
    assert code == 0, err
    code, out, err = await run_cli(env, "verify", "--all")
    assert code == 0 and "1 checked, 0 failed" in out, out + err
    code, out, err = await run_cli(env, "verify", "--audit")
    assert code == 0, out + err
    code, out, err = await run_cli(env, "db", "migrate")
    assert code == 0, err

    # The server's PostgreSQL is still the one it started, and it still serves: a login (the
    # new account's) and a new call.
    cluster = EmbeddedPostgres(cluster_root_for(data_dir))
    assert cluster.is_running()
    status, body = await http("POST", api_base(env) + "/api/v1/auth/token",
                              {"username": "auditor1", "password": "auditor password 123"})
    assert status == 200, body
    await record_a_call(sip_port(env))
    status, health = await http("GET", api_base(env) + "/healthz")
    assert status == 200 and health["database"] == "ok", health
    assert server.proc is not None and server.proc.returncode is None


async def test_a_second_run_on_the_same_data_dir_exits_at_once_and_changes_nothing(
    embedded_server: tuple[ServerProcess, dict[str, str]], data_dir: Path
) -> None:
    first, env = embedded_server
    frames = [encode_ulaw(f) for f in np.split(tone(440, 3.0, 8000), 150)]
    async with SipTestClient("udp", ("127.0.0.1", sip_port(env))) as src:
        response, dialog = await src.invite(interop_case("oracle_acme_1"))
        assert response.status == 200 and dialog is not None
        sender = asyncio.create_task(
            send_rtp(parse_sdp(response.body).media[0].port, frames, 0, ssrc=5))
        await asyncio.sleep(0.5)

        # Another run on the same data_dir, on ports of its own so only the data_dir is shared.
        second_env = {**env, "SIPREC_SIP__LISTEN": f"udp:127.0.0.1:{free_port()}",
                      "SIPREC_API__LISTEN": f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"}
        loop = asyncio.get_running_loop()
        started = loop.time()
        code, out, err = await run_cli(second_env, "run", timeout=20)
        assert loop.time() - started < 10
        assert code != 0
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert f"pid {first.pid}" in lines[0] and "in use" in lines[0], lines[0]

        await sender
        assert (await src.bye(dialog)).status == 200

    # The first server's call was not touched: complete, not "recovered", and it verifies.
    code, out, err = await run_cli(env, "verify", "--all")
    assert code == 0 and "1 checked, 0 failed" in out, out + err
    cluster = EmbeddedPostgres(cluster_root_for(data_dir))
    dsn = cluster.attach()
    import asyncpg

    db = await asyncpg.connect(dsn)
    try:
        row = await db.fetchrow("SELECT state, recovered, duration_ms FROM recordings")
    finally:
        await db.close()
    assert row["state"] == "complete" and row["recovered"] is False
    assert row["duration_ms"] >= 2500


@pytest.mark.parametrize("which", ["sip", "api"])
async def test_a_port_in_use_is_one_line_not_a_traceback(
    which: str, db_dsn: str, data_dir: Path
) -> None:
    kind = socket.SOCK_DGRAM if which == "sip" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as squatter:
        squatter.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            squatter.listen()
        port = squatter.getsockname()[1]
        overrides = {"sip__listen": f"udp:127.0.0.1:{port}"} if which == "sip" else {
            "api__listen": f"127.0.0.1:{port}"}
        env = server_env(db_dsn, data_dir, media__bind_address="127.0.0.1", **overrides)
        code, out, err = await run_cli(env, "run", timeout=30)
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines[-1].startswith("siprec-server: cannot listen for "), err
    assert str(port) in lines[-1] and "in use" in lines[-1], lines[-1]
    # It let go of the data_dir on the way out: the next start is not refused.
    code, out, err = await run_cli(env, "verify", "--audit")
    assert code == 0, out + err


@pytest.mark.skipif(os.geteuid() != 0, reason="the embedded cluster drops privileges only as root")
async def test_make_run_works_in_a_clone_postgres_cannot_enter() -> None:
    home = Path(tempfile.mkdtemp(prefix="siprec-private-home-"))  # 0700, like /root
    data_dir = home / "clone" / "var"
    relocated = cluster_root_for(data_dir)
    try:
        assert relocated != data_dir.resolve() / "pg"
        env = embedded_env(data_dir)
        server = ServerProcess(env)
        await server.start()
        try:
            await record_a_call(sip_port(env))
            code, out, err = await run_cli(env, "verify", "--all")
            assert code == 0 and "1 checked, 0 failed" in out, out + err
        finally:
            await server.stop()
        assert (home.stat().st_mode & 0o777) == 0o700  # the operator's permissions untouched
        assert not EmbeddedPostgres(relocated).is_running()  # stopped with the server
    finally:
        cluster = EmbeddedPostgres(relocated)
        if cluster.is_running():
            cluster.stop()
        shutil.rmtree(relocated, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


async def test_a_second_server_under_a_live_node_id_is_refused_before_recovery(
    db_dsn: str, data_dir: Path
) -> None:
    """Two data_dirs, one database, one node_id (a copied config): the second would seal the
    first one's live calls as its own crash leftovers. It is refused instead."""
    first_env = server_env(db_dsn, data_dir, sip__listen=f"udp:127.0.0.1:{free_port()}",
                           api__listen=f"127.0.0.1:{free_port(socket.SOCK_STREAM)}",
                           media__bind_address="127.0.0.1")
    first = ServerProcess(first_env)
    await first.start()
    other_dir = Path(tempfile.mkdtemp(prefix="siprec-test-data-"))
    try:
        async with SipTestClient("udp", ("127.0.0.1", sip_port(first_env))) as src:
            response, dialog = await src.invite(interop_case("oracle_acme_1"))
            assert response.status == 200 and dialog is not None
            second_env = {**first_env, "SIPREC_SERVER__DATA_DIR": str(other_dir),
                          "SIPREC_SIP__LISTEN": f"udp:127.0.0.1:{free_port()}",
                          "SIPREC_API__LISTEN": f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"}
            code, out, err = await run_cli(second_env, "run", timeout=30)
            assert code == 1, err
            assert "node_id 'test-node' is in use" in err.splitlines()[-1], err
            assert f"pid {first.pid}" in err.splitlines()[-1]
            assert (await src.bye(dialog)).status == 200
        code, out, err = await run_cli(first_env, "verify", "--all")
        assert code == 0 and "1 checked, 0 failed" in out, out + err
    finally:
        await first.stop()
        shutil.rmtree(other_dir, ignore_errors=True)
