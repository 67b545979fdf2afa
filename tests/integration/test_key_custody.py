"""Key custody end to end on a real server, a real PostgreSQL and the real age tool: the init
ceremony (threshold met, not met, one person twice), shares fetched once and opened by their
custodians, a sealed restart (SIP 503 + Retry-After, the API closed but for health, login and
unseal), a tampered share refused, the unseal, and a call recorded after it."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from api.auth_api import create_account
from siprec_server.app import RunningServer, start_server
from siprec_server.config import load_config
from siprec_server.media.codecs import encode_ulaw
from siprec_server.siprec.sdp import parse_sdp
from storage import key_versions as kv
from storage.audit import verify_audit_chain
from storage.key_shares import Share
from tests.audio import tone
from tests.integration.conftest import server_env, sip_address
from tests.integration.test_interop import wait_for_state
from tests.integration.test_recording import send_rtp
from tests.integration.test_recordings_api import CHEAP
from tests.sip_client import SipTestClient, interop_case

PASSWORD = "custodian password 1"


@dataclass
class Custodian:
    name: str
    identity: Path
    public: str
    token: str = ""
    shares: list[str] = field(default_factory=list)
    """Their shares as they hold them, decrypted (newest last)."""


def age_identity(directory: Path, name: str) -> tuple[Path, str]:
    path = directory / f"{name}.key"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = next(line.split(": ")[1] for line in path.read_text().splitlines()
                  if line.startswith("# public key: "))
    return path, public


class Api:
    def __init__(self, server: RunningServer) -> None:
        host, port = server.api_address
        self.base = f"http://{host}:{port}"
        self.session = aiohttp.ClientSession()

    async def call(self, method: str, path: str, token: str | None = None,
                   body: Any = None) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, self.base + path, json=body,
                                        headers=headers) as response:
            data = await response.json(content_type=None)
            return response.status, data, response.headers

    async def login(self, name: str) -> str:
        status, body, _ = await self.call("POST", "/api/v1/auth/token", None,
                                          {"username": name, "password": PASSWORD})
        assert status == 200, body
        return str(body["token"])

    async def close(self) -> None:
        await self.session.close()


def shamir_env(db_dsn: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    return server_env(db_dsn, data_dir, keys__custody="shamir", media__bind_address="127.0.0.1",
                      **overrides)


async def wait_job(api: Api, token: str, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, job, _ = await api.call("GET", f"/api/v1/jobs/{job_id}", token)
        assert status == 200, job
        if job["state"] in ("done", "failed"):
            return dict(job)
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)


async def fetch_shares(api: Api, custodian: Custodian) -> None:
    status, body, _ = await api.call("GET", "/api/v1/keys/shares", custodian.token)
    assert status == 200, body
    for item in body["shares"]:
        opened = subprocess.run(["age", "-d", "-i", str(custodian.identity)],
                                input=item["envelope"], check=True, capture_output=True,
                                text=True).stdout
        custodian.shares.append(opened.strip())


async def record_call(server: RunningServer, seconds: float = 1.0) -> tuple[str, int]:
    """A call with `seconds` of audio on one stream; (Call-ID, packets sent)."""
    frames = [encode_ulaw(f) for f in np.split(tone(440, seconds, 8000), int(seconds * 50))]
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, dialog = await src.invite(interop_case("oracle_acme_1"))
        assert response.status == 200 and dialog is not None
        await send_rtp(parse_sdp(response.body).media[0].port, frames, 0, ssrc=7)
        assert (await src.bye(dialog)).status == 200
    return dialog.call_id, len(frames)


async def invite_status(server: RunningServer) -> tuple[int, str | None]:
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, _dialog = await src.invite(interop_case("oracle_acme_1"))
        return response.status, response.headers.get("Retry-After")


@dataclass
class Ceremonial:
    """A sealed-custody server whose three custodians (alice, bob, carol) hold age keys."""

    server: RunningServer
    api: Api
    custodians: dict[str, Custodian]
    env: dict[str, str]


@pytest.fixture
async def ceremonial(db_dsn: str, data_dir: Path, tmp_path: Path,
                     db_pool: Any) -> AsyncIterator[Ceremonial]:
    env = shamir_env(db_dsn, data_dir)
    server = await start_server(load_config(env=env))
    api = Api(server)
    custodians = {}
    try:
        for name in ("alice", "bob", "carol"):
            await create_account(server.db, actor="test", username=name, role="custodian",
                                 password=PASSWORD, hashing=CHEAP)
            identity, public = age_identity(tmp_path, name)
            custodians[name] = Custodian(name, identity, public, await api.login(name))
        yield Ceremonial(server, api, custodians, env)
    finally:
        await api.close()
        await server.stop()


async def init_ceremony(c: Ceremonial) -> dict[str, Any]:
    alice, bob = c.custodians["alice"], c.custodians["bob"]
    status, ceremony, _ = await c.api.call("POST", "/api/v1/keys/ceremonies", alice.token, {
        "kind": "init", "threshold": 2,
        "custodians": [{"user": n, "age": cu.public} for n, cu in c.custodians.items()]})
    assert status == 201, ceremony
    assert ceremony["state"] == "pending" and ceremony["needed"] == 2
    cid = ceremony["id"]
    status, body, _ = await c.api.call("POST", f"/api/v1/keys/ceremonies/{cid}/approve",
                                       alice.token, {"password": PASSWORD})
    assert status == 200 and body["state"] == "pending" and len(body["approvals"]) == 1
    # The same person twice is refused: dual control needs a second person.
    status, body, _ = await c.api.call("POST", f"/api/v1/keys/ceremonies/{cid}/approve",
                                       alice.token, {"password": PASSWORD})
    assert status == 409 and body["error"]["code"] == "already_approved", body
    # A wrong password is not an approval.
    status, body, _ = await c.api.call("POST", f"/api/v1/keys/ceremonies/{cid}/approve",
                                       bob.token, {"password": "not bob's password"})
    assert status == 403, body
    status, body, _ = await c.api.call("POST", f"/api/v1/keys/ceremonies/{cid}/approve",
                                       bob.token, {"password": PASSWORD})
    assert status == 200 and body["state"] == "approved" and body["job_id"], body
    job = await wait_job(c.api, alice.token, body["job_id"])
    assert job["state"] == "done", job
    for custodian in c.custodians.values():
        await fetch_shares(c.api, custodian)
        assert len(custodian.shares) == 1
    return dict(body)


async def test_init_ceremony_then_sealed_restart_and_unseal(
    ceremonial: Ceremonial, db_dsn: str, data_dir: Path, db_pool: Any
) -> None:
    c = ceremonial
    # Before any key exists: SIP is refused with Retry-After, the API only serves what the
    # custodians need.
    assert await invite_status(c.server) == (503, "30")
    alice = c.custodians["alice"]
    status, body, headers = await c.api.call("GET", "/api/v1/recordings", alice.token)
    assert status == 503 and body["error"]["code"] == "sealed" and headers["Retry-After"]
    status, body, _ = await c.api.call("GET", "/api/v1/keys/seal")
    assert body == {"sealed": True, "initialised": False, "custody": "shamir",
                    "progress": [0, 0]}

    await init_ceremony(c)
    # Shares are handed out once: a second fetch finds nothing.
    status, body, _ = await c.api.call("GET", "/api/v1/keys/shares", alice.token)
    assert status == 200 and body == {"shares": []}
    status, keys, _ = await c.api.call("GET", "/api/v1/keys", alice.token)
    assert keys["sealed"] is False and keys["threshold"] == 2 and keys["shares"] == 3
    (version,) = keys["versions"]
    assert version["state"] == "active" and version["age_days"] == 0
    call_id, _sent = await record_call(c.server)
    await wait_for_state(c.server, call_id, "complete")
    # Nothing of the key is on disk: no key file, and the shares only as digests.
    assert not list((data_dir / "keys").glob("master-*.key"))

    # A restart comes up sealed.
    await c.server.stop()
    c.server = await start_server(load_config(env=c.env))
    await c.api.close()
    c.api = Api(c.server)
    assert await invite_status(c.server) == (503, "30")
    status, body, _ = await c.api.call("POST", "/api/v1/auth/token", None,
                                       {"username": "alice", "password": PASSWORD})
    assert status == 200  # login still works while sealed
    status, body, _ = await c.api.call("GET", "/api/v1/keys/seal")
    assert body["sealed"] is True and body["progress"] == [0, 2]

    # A share altered with care (its check recomputed) is refused by its digest; a mistyped
    # one by its check; neither counts.
    good = Share.parse(c.custodians["alice"].shares[0])
    tampered = Share(good.key_id, good.threshold, good.x, bytes([good.y[0] ^ 1]) + good.y[1:])
    status, body, _ = await c.api.call("POST", "/api/v1/keys/unseal", None,
                                       {"share": tampered.text()})
    assert status == 400 and body["error"]["code"] == "share_refused", body
    status, body, _ = await c.api.call("POST", "/api/v1/keys/unseal", None,
                                       {"share": good.text()[:-2] + "AA"})
    assert status == 400 and body["error"]["code"] == "share_refused", body

    started = time.monotonic()
    status, body, _ = await c.api.call("POST", "/api/v1/keys/unseal", None,
                                       {"share": c.custodians["alice"].shares[0]})
    assert status == 200 and body["sealed"] is True and body["progress"] == [1, 2], body
    status, body, _ = await c.api.call("POST", "/api/v1/keys/unseal", None,
                                       {"share": c.custodians["alice"].shares[0]})
    assert status == 400  # the same share twice
    status, body, _ = await c.api.call("POST", "/api/v1/keys/unseal", None,
                                       {"share": c.custodians["carol"].shares[0]})
    assert status == 200 and body["sealed"] is False, body
    print(f"\nunseal (second share to ready): {time.monotonic() - started:.3f} s")

    call_id, sent = await record_call(c.server)
    row = await wait_for_state(c.server, call_id, "complete")
    status, detail, _ = await c.api.call("GET", f"/api/v1/recordings/{row['id']}",
                                         await c.api.login("alice"))
    assert status == 403  # a custodian hears no call
    audit = await db_pool.fetch("SELECT action, outcome FROM audit_events "
                                "WHERE action LIKE 'key.%' ORDER BY seq")
    actions = [(r["action"], r["outcome"]) for r in audit]
    for expected in [("key.ceremony_created", "success"), ("key.ceremony_approve", "success"),
                     ("key.ceremony_approve", "failure"), ("key.version_created", "success"),
                     ("key.share_fetched", "success"), ("key.unseal_share", "failure"),
                     ("key.unseal_share", "success"), ("key.unsealed", "success")]:
        assert expected in actions, expected
    assert (await verify_audit_chain(db_pool)).ok


async def test_a_ceremony_below_threshold_expires_and_runs_nothing(
    ceremonial: Ceremonial, db_pool: Any
) -> None:
    c = ceremonial
    alice = c.custodians["alice"]
    status, ceremony, _ = await c.api.call("POST", "/api/v1/keys/ceremonies", alice.token, {
        "kind": "init", "threshold": 3,
        "custodians": [{"user": n, "age": cu.public} for n, cu in c.custodians.items()]})
    assert status == 201 and ceremony["needed"] == 3
    cid = ceremony["id"]
    for name in ("alice", "bob"):
        status, body, _ = await c.api.call("POST", f"/api/v1/keys/ceremonies/{cid}/approve",
                                           c.custodians[name].token, {"password": PASSWORD})
        assert status == 200 and body["state"] == "pending"
    assert body["job_id"] is None and len(body["approvals"]) == 2
    # The window passes before the third custodian approves.
    service = c.server.keys
    assert service is not None
    real_clock = service.clock
    service.clock = lambda: real_clock() + timedelta(hours=1)
    status, body, _ = await c.api.call("POST", f"/api/v1/keys/ceremonies/{cid}/approve",
                                       c.custodians["carol"].token, {"password": PASSWORD})
    assert status == 409 and body["error"]["code"] == "expired", body
    status, body, _ = await c.api.call("GET", f"/api/v1/keys/ceremonies/{cid}", alice.token)
    assert body["state"] == "expired" and body["job_id"] is None
    assert await kv.list_versions(db_pool) == []
    assert await db_pool.fetchval(
        "SELECT count(*) FROM jobs WHERE kind IN ('init', 'rotate', 'reencrypt')") == 0
    assert c.server.keys is not None and c.server.keys.custody.sealed


async def test_users_without_keys_manage_cannot_take_part(
    ceremonial: Ceremonial, db_pool: Any
) -> None:
    c = ceremonial
    await create_account(c.server.db, actor="test", username="sam", role="supervisor",
                         password=PASSWORD, hashing=CHEAP)
    sam = await c.api.login("sam")
    status, body, _ = await c.api.call("POST", "/api/v1/keys/ceremonies", sam, {"kind": "init"})
    assert status == 403
    alice = c.custodians["alice"]
    status, body, _ = await c.api.call("POST", "/api/v1/keys/ceremonies", alice.token, {
        "kind": "init", "threshold": 2,
        "custodians": [{"user": "sam", "age": alice.public},
                       {"user": "alice", "age": alice.public}]})
    assert status == 400 and "sam" in body["error"]["message"]


async def add_synthetic_keys(db: Any, ring: Any, count: int) -> None:
    """`count` finished recordings' data keys under the current master key (no media)."""
    from uuid import uuid4

    from storage.keys import new_data_key, wrap_data_key

    now = c_now()
    rows = [(uuid4(), f"synthetic-{i}") for i in range(count)]
    await db.executemany(
        """INSERT INTO recordings (id, node_id, call_id, state, started_at, transport,
                                   src_address)
           VALUES ($1, 'elsewhere', $2, 'complete', $3, 'udp', '192.0.2.1')""",
        [(rid, call_id, now) for rid, call_id in rows])
    current = ring.current
    await db.executemany(
        "INSERT INTO recording_keys (recording_id, master_key_id, wrapped_key) "
        "VALUES ($1, $2, $3)",
        [(rid, current.key_id, wrap_data_key(current, new_data_key(), rid))
         for rid, _ in rows])


def c_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def test_rotation_under_load_loses_nothing_and_destroys_the_old_version(
    ceremonial: Ceremonial, db_pool: Any
) -> None:
    import dataclasses

    from storage.playback import read_all
    from storage.verification import verify_recording
    from tests.audio import decode_ogg_opus

    c = ceremonial
    await init_ceremony(c)
    service = c.server.keys
    assert service is not None
    ring = service.custody.ring
    old_version = ring.current.key_id
    await add_synthetic_keys(db_pool, ring, 3000)
    # Small batches: the re-wrap takes many transactions while the calls go on.
    service.settings = dataclasses.replace(service.settings, rewrap_batch=20)
    alice, bob = c.custodians["alice"], c.custodians["bob"]

    seconds = 4.0
    frames = [encode_ulaw(f) for f in np.split(tone(440, seconds, 8000), int(seconds * 50))]

    async def call(delay: float) -> str:
        await asyncio.sleep(delay)
        async with SipTestClient("udp", sip_address(c.server, "udp")) as src:
            response, dialog = await src.invite(interop_case("oracle_acme_1"))
            assert response.status == 200 and dialog is not None
            await send_rtp(parse_sdp(response.body).media[0].port, frames, 0,
                           ssrc=int(delay * 10) + 1)
            assert (await src.bye(dialog)).status == 200
            return dialog.call_id

    async def rotate() -> dict[str, Any]:
        await asyncio.sleep(0.8)  # the first calls are recording under the old version
        status, plan, _ = await c.api.call("POST", "/api/v1/keys/ceremonies", alice.token,
                                           {"kind": "rotate", "dry_run": True})
        assert status == 200 and plan["data_keys"] >= 3002 and plan["from_version"] == \
            old_version, plan
        status, ceremony, _ = await c.api.call("POST", "/api/v1/keys/ceremonies", alice.token,
                                               {"kind": "rotate"})
        assert status == 201, ceremony
        for who in (alice, bob):
            status, ceremony, _ = await c.api.call(
                "POST", f"/api/v1/keys/ceremonies/{ceremony['id']}/approve", who.token,
                {"password": PASSWORD})
            assert status == 200, ceremony
        job_id = ceremony["job_id"]
        seen_running = False
        while True:
            status, job, _ = await c.api.call("GET", f"/api/v1/jobs/{job_id}", alice.token)
            seen_running |= job["state"] == "running" and 0 < job["done"] < job["total"]
            if job["state"] in ("done", "failed"):
                break
            await asyncio.sleep(0.05)
        assert job["state"] == "done" and seen_running, job
        return dict(job)

    # Two calls start before the rotation, one while it runs.
    results = await asyncio.gather(call(0.0), call(0.3), rotate(), call(1.5))
    call_ids = [r for r in results if isinstance(r, str)]
    job = next(r for r in results if isinstance(r, dict))
    assert job["result"]["rewrapped"] >= 3002 and job["result"]["destroyed"] == old_version

    versions = {v.id: v for v in await kv.list_versions(db_pool)}
    assert versions[old_version].state == "destroyed"
    assert versions[old_version].sealed_key is None
    assert old_version not in ring.by_id
    assert await db_pool.fetchval("SELECT count(*) FROM recording_keys WHERE master_key_id = $1",
                                  old_version) == 0
    for call_id in call_ids:
        row = await wait_for_state(c.server, call_id, "complete")
        for _ in range(100):
            stats = await db_pool.fetchval(
                "SELECT stats FROM streams WHERE recording_id = $1 AND m_index = 0", row["id"])
            if stats and "packets_received" in stats:
                break
            await asyncio.sleep(0.05)
        assert stats["packets_received"] == len(frames) and stats["packets_lost"] == 0
        audio, rate = decode_ogg_opus(await read_all(db_pool, ring, row["id"]))
        assert abs(audio.shape[0] / rate - seconds) < 0.5
        check = await verify_recording(db_pool, ring, row["id"])
        assert check.ok, check.problems

    # New shares went to the custodians; the old ones open nothing any more. A restart
    # unseals with the new ones.
    for custodian in c.custodians.values():
        await fetch_shares(c.api, custodian)
        assert Share.parse(custodian.shares[-1]).key_id == ring.current.key_id
    await c.server.stop()
    c.server = await start_server(load_config(env=c.env))
    await c.api.close()
    c.api = Api(c.server)
    status, body, _ = await c.api.call("POST", "/api/v1/keys/unseal", None,
                                       {"share": alice.shares[0]})
    assert status == 400 and "destroyed" in body["error"]["message"], body
    for who in (alice, bob):
        status, body, _ = await c.api.call("POST", "/api/v1/keys/unseal", None,
                                           {"share": who.shares[-1]})
        assert status == 200, body
    assert body["sealed"] is False
    call_id, _ = await record_call(c.server)
    await wait_for_state(c.server, call_id, "complete")


async def test_command_line_unseals_rotates_and_follows_the_job(
    ceremonial: Ceremonial, db_pool: Any
) -> None:
    from tests.server_process import run_cli

    c = ceremonial
    await init_ceremony(c)
    await c.server.stop()
    c.server = await start_server(load_config(env=c.env))
    await c.api.close()
    c.api = Api(c.server)
    host, port = c.server.api_address
    env = {**c.env, "SIPREC_API__LISTEN": f"{host}:{port}"}
    alice, bob = c.custodians["alice"], c.custodians["bob"]

    code, out, err = await run_cli(env, "keys", "unseal", stdin=alice.shares[0].encode())
    assert code == 0 and "1 of 2; still sealed" in out, out + err
    code, out, err = await run_cli(env, "keys", "unseal", stdin=b"srs-share1:garbage\n")
    assert code == 1 and "refused" in err, out + err
    code, out, err = await run_cli(env, "keys", "unseal", stdin=bob.shares[0].encode())
    assert code == 0 and "unsealed" in out, out + err

    code, out, err = await run_cli(env, "keys", "status")
    assert code == 0, err
    status = __import__("json").loads(out)
    assert status["sealed"] is False and status["threshold"] == 2 and status["shares"] == 3
    assert [v["state"] for v in status["versions"]] == ["active"]
    assert status["signing_key_pins"][0].startswith("ed25519 ")

    code, out, err = await run_cli(env, "keys", "rotate", "--dry-run")
    assert code == 0 and __import__("json").loads(out)["data_keys"] == 0, out + err
    code, out, err = await run_cli(env, "keys", "rotate", "--user", "alice",
                                   stdin=(PASSWORD + "\n").encode())
    assert code == 0 and "1 of 2" in out, out + err
    ceremony_id = out.split()[1]
    code, out, err = await run_cli(env, "keys", "approve", ceremony_id, "--user", "alice",
                                   stdin=(PASSWORD + "\n").encode())
    assert code == 1 and "already" in err, out + err
    code, out, err = await run_cli(env, "keys", "approve", ceremony_id, "--user", "bob",
                                   stdin=(PASSWORD + "\n").encode())
    assert code == 0 and "job" in out, out + err
    job_id = out.rsplit("keys job ", 1)[1].split()[0]
    code, out, err = await run_cli(env, "keys", "job", job_id, "--watch")
    assert code == 0 and "[" in out and '"state": "done"' in out, out + err
    versions = [v.state for v in await kv.list_versions(db_pool)]
    assert versions == ["destroyed", "active"]
