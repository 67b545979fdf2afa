"""Retention, legal holds, data-subject requests and annotations over real HTTP and a real
database, with an injected clock: what a dry run counts is what the run erases, held recordings
survive every erasure path, a person is found under any spelling of their number and handed an
encrypted bundle that opens with age (rage), gpg or openssl and whose audio decodes, and an
erasure request reports what it had to keep and why."""

from __future__ import annotations

import io
import json
import subprocess
import uuid
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pyrage
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api.lifecycle_api import LIFECYCLE_KEY
from api.views import detail_view
from siprec_server.compliance.retention import expiry_of
from siprec_server.config import Config, LifecycleConfig, RetentionConfig
from siprec_server.media.ogg_opus import OggOpusEncoder
from siprec_server.services.lifecycle import LifecycleServices, build_lifecycle, limits_of
from storage import retention as retention_store
from storage.audit import verify_audit_chain
from storage.keys import KeyRing
from tests.audio import decode_ogg_opus, dominant_frequency, tone
from tests.integration.test_recordings_api import (
    AGENT,
    Client,
    Http,
    make_token,
    recording_app,
    ring_of_one,
    stored_recording,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CUSTOMER = "+442079460000"
# Batches of two: every run here goes through several keyset pages.
CONFIG = Config(retention=RetentionConfig(default_days=365, floor_days=0, ceiling_days=3650,
                                          batch_size=2),
                lifecycle=LifecycleConfig(scrypt_work_factor=10))


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def ogg_tone(freq: float = 440.0, seconds: float = 1.0) -> bytes:
    pages: list[bytes] = []
    encoder = OggOpusEncoder(1, 8000, pages.append)
    encoder.encode(tone(freq, seconds, 8000).reshape(-1, 1))
    encoder.close()
    return b"".join(pages)


def lifecycle_services(db: asyncpg.Pool, ring: KeyRing, data_dir: Path, clock: FakeClock,
                       config: Config = CONFIG) -> LifecycleServices:
    return build_lifecycle(db, config, keys=ring, node_id="n1", data_dir=data_dir, clock=clock,
                           describe=detail_view)


@dataclass
class World:
    http: Http
    db: asyncpg.Pool
    ring: KeyRing
    clock: FakeClock
    services: LifecycleServices
    tmp: Path
    tokens: dict[str, str]
    user_ids: dict[str, str]

    async def recording(self, *parties: tuple[str, str | None, str | None], days_ago: float,
                        state: str = "complete", audio: bytes | None = None) -> uuid.UUID:
        return await stored_recording(
            self.db, self.ring, self.tmp, parties=list(parties),
            started_at=self.clock.now - timedelta(days=days_ago), state=state,
            plaintext=audio if audio is not None else b"x" * 100)

    async def run_jobs(self) -> None:
        assert self.services.runner is not None
        await self.services.runner.run_until_idle()

    async def job(self, job_id: str) -> dict[str, Any]:
        await self.run_jobs()
        status, body = await self.http.json("GET", f"/api/v1/jobs/{job_id}",
                                            self.tokens["admin"])
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    async def state(self, rid: uuid.UUID) -> str:
        return str(await self.db.fetchval("SELECT state FROM recordings WHERE id = $1", rid))


@pytest.fixture
async def world(db_pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[World]:
    ring = ring_of_one()
    clock = FakeClock(NOW)
    services = lifecycle_services(db_pool, ring, tmp_path, clock)
    app = recording_app(db_pool, keys=ring)
    app[LIFECYCLE_KEY] = services
    tokens: dict[str, str] = {}
    user_ids: dict[str, str] = {}
    for name, role in (("admin", "admin"), ("admin2", "admin"), ("supervisor", "supervisor"),
                       ("agent", "agent"), ("auditor", "auditor")):
        tokens[name], user_ids[name] = await make_token(
            db_pool, role, ("2001",) if role == "agent" else ())
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield World(Http(client), db_pool, ring, clock, services, tmp_path, tokens, user_ids)
    finally:
        await client.close()
        assert (await verify_audit_chain(db_pool)).ok
        trail = json.dumps([dict(r["details"]) for r in await db_pool.fetch(
            "SELECT details FROM audit_events")])
        assert "7946" not in trail, "a subject's number reached the audit trail"


TRADER = ("sip:+442079461111@trading.example.com", "Trader", "+442079461111")
SALES = ("sip:3001@pbx.example.com", "Sales", "3001")


# ------------------------------------------------------------------------------ retention


async def test_dry_run_counts_per_policy_exactly_what_the_run_then_erases(world: World) -> None:
    http, admin = world.http, world.tokens["admin"]
    status, mifid = await http.json("POST", "/api/v1/retention-policies", admin, json={
        "preset": "mifid2", "name": "trading desk",
        "match": {"parties": ["+4420794611*"]}})
    assert status == 201 and mifid["days"] == 1826 and mifid["legal_obligation"] is True
    status, sales = await http.json("POST", "/api/v1/retention-policies", admin, json={
        "name": "sales", "days": 500, "match": {"parties": ["sip:*@pbx.example.com"]}})
    assert status == 201
    # Criteria no recording here has (no direction, no such SRC metadata) match nothing.
    for name, match in (("vip queue", {"metadata": {"queue": "vip"}}),
                        ("outbound", {"direction": "outbound"})):
        status, _ = await http.json("POST", "/api/v1/retention-policies", admin, json={
            "name": name, "days": 3000, "match": match})
        assert status == 201
    ids = {
        "default_old": await world.recording(SALES, days_ago=600),
        "default_young": await world.recording(("tel:+33142685300", None, "+33142685300"),
                                               days_ago=100),
        "default_expired": await world.recording(("tel:+33142685300", None, "+33142685300"),
                                                 days_ago=366),
        "sales_kept": await world.recording(SALES, days_ago=400),
        "trader_kept": await world.recording(TRADER, days_ago=1800),
        "trader_expired": await world.recording(TRADER, days_ago=1830),
        "trader_and_sales": await world.recording(TRADER, SALES, days_ago=1000),
        "live_old": await world.recording(SALES, days_ago=900, state="recording"),
        "held": await world.recording(SALES, days_ago=2000),
        "held_by_search": await world.recording(("sip:dispute@x.example", "Dispute", None),
                                                days_ago=2000),
    }
    status, _ = await http.json("POST", "/api/v1/holds", admin, json={
        "matter": "Smith v Bank", "reason": "litigation", "recording_ids": [str(ids["held"])]})
    assert status == 201
    status, _ = await http.json("POST", "/api/v1/holds", admin, json={
        "matter": "Regulator inquiry", "reason": "FCA", "query": {"aor": "sip:dispute@x.example"}})
    assert status == 201

    status, job = await http.json("POST", "/api/v1/retention/run", admin, json={"dry_run": True})
    assert status == 202 and job["state"] == "queued"
    dry = await world.job(job["id"])
    assert dry["state"] == "done"
    report = dry["result"]
    per_policy = {p["name"]: p["recordings"] for p in report["policies"]}
    assert per_policy == {"trading desk": 1, "sales": 1, "vip queue": 0, "outbound": 0}
    assert report["default"] == {"days": 365, "recordings": 1}
    assert report["held"] == 2 and report["total"] == 3
    # Nothing was erased by the dry run.
    assert {await world.state(r) for r in ids.values()} <= {"complete", "recording"}

    # The SQL agrees with the reference semantics, recording by recording.
    policies = await retention_store.list_policies(world.db)
    facts = await retention_store.recording_facts(world.db, list(ids.values()))
    python_expired = {name for name, rid in ids.items()
                      if facts[rid][0] == "complete"
                      and expiry_of(facts[rid][1], policies, limits_of(CONFIG)).at <= NOW}
    assert python_expired == {"default_old", "default_expired", "trader_expired", "held",
                              "held_by_search"}

    status, job = await http.json("POST", "/api/v1/retention/run", admin,
                                  json={"dry_run": False})
    run = await world.job(job["id"])
    assert run["state"] == "done" and run["done"] == run["total"] == 3
    erased = {p["name"]: p["erased"] for p in run["result"]["policies"]}
    assert erased == per_policy and run["result"]["default"]["erased"] == 1
    assert run["result"]["held"] == 2
    states = {name: await world.state(rid) for name, rid in ids.items()}
    assert {n for n, s in states.items() if s == "erased"} == {
        "default_old", "default_expired", "trader_expired"}
    reason = await world.db.fetchval("SELECT erasure_reason FROM recordings WHERE id = $1",
                                     ids["trader_expired"])
    assert reason == "retention expired: policy trading desk (1826 days)"
    # Every erasure and the run itself are in the audit trail.
    actions = [r["action"] for r in await world.db.fetch(
        "SELECT action FROM audit_events WHERE actor LIKE 'system:retention%' ORDER BY seq")]
    assert actions.count("recording.erase") == 3 and actions[-1] == "retention.run"
    # Time moves on: the next scheduled run erases what has since expired.
    world.clock.now += timedelta(days=101)
    assert await world.services.scheduler.tick() is not None  # type: ignore[union-attr]
    assert await world.services.scheduler.tick() is None  # type: ignore[union-attr]
    await world.run_jobs()
    assert await world.state(ids["sales_kept"]) == "erased"
    assert await world.state(ids["held"]) == "complete"
    assert await world.state(ids["live_old"]) == "recording"


async def test_floor_keeps_everything_young_and_the_ceiling_caps_policies(
    db_pool: asyncpg.Pool, tmp_path: Path
) -> None:
    config = replace(CONFIG, retention=RetentionConfig(default_days=10, floor_days=30,
                                                       ceiling_days=100, batch_size=1))
    clock = FakeClock(NOW)
    services = lifecycle_services(db_pool, ring_of_one(), tmp_path, clock, config)
    ring = services.subjects.keys
    assert ring is not None

    async def at(days_ago: int, *parties: Any) -> uuid.UUID:
        return await stored_recording(db_pool, ring, tmp_path, parties=list(parties) or [SALES],
                                      started_at=NOW - timedelta(days=days_ago))

    young, old = await at(20), await at(31)
    trader_capped = await at(101, TRADER)
    await db_pool.execute(
        """INSERT INTO retention_policies (id, name, days, match, created_by, created_at,
                                           updated_at)
           VALUES ($1, 'long', 5000, '{"parties": ["+4420794611*"]}', 'test', $2, $2)""",
        uuid.uuid4(), NOW)
    report = await services.retention.dry_run()
    assert report["total"] == 2 and report["default"]["days"] == 30
    await services.retention.run()
    assert await db_pool.fetchval("SELECT state FROM recordings WHERE id = $1", young) \
        == "complete"
    for rid in (old, trader_capped):
        assert await db_pool.fetchval("SELECT state FROM recordings WHERE id = $1", rid) \
            == "erased"


async def test_shortening_a_policy_or_deleting_it_needs_a_second_user(world: World) -> None:
    http, admin, admin2 = world.http, world.tokens["admin"], world.tokens["admin2"]
    status, policy = await http.json("POST", "/api/v1/retention-policies", admin,
                                     json={"name": "desk", "days": 400})
    pid = policy["id"]
    status, body = await http.json("PATCH", f"/api/v1/retention-policies/{pid}", admin,
                                   json={"days": 800})
    assert status == 200 and body["days"] == 800 and body["pending_change"] is None
    status, body = await http.json("PATCH", f"/api/v1/retention-policies/{pid}", admin,
                                   json={"days": 200})
    assert status == 202 and body["days"] == 800
    assert body["pending_change"]["change"] == {"days": 200}
    status, body = await http.json("PATCH", f"/api/v1/retention-policies/{pid}", admin2,
                                   json={"days": 100})
    assert status == 409  # one change waits at a time
    status, body = await http.json("POST", f"/api/v1/retention-policies/{pid}/approve", admin)
    assert status == 409 and "second user" in body["error"]["message"]
    status, body = await http.json("POST", f"/api/v1/retention-policies/{pid}/approve", admin2)
    assert status == 200 and body["days"] == 200 and body["pending_change"] is None
    status, body = await http.json("DELETE", f"/api/v1/retention-policies/{pid}", admin2)
    assert status == 202
    status, body = await http.json("POST", f"/api/v1/retention-policies/{pid}/approve", admin)
    assert status == 200 and body == {"id": pid, "deleted": True}
    status, _ = await http.json("GET", f"/api/v1/retention-policies/{pid}", admin)
    assert status == 404
    for bad in ({"name": "x", "days": 4000}, {"name": "x"}, {"preset": "forever"},
                {"name": "y", "days": 10, "match": {"direction": "sideways"}}):
        status, body = await http.json("POST", "/api/v1/retention-policies", admin, json=bad)
        assert status == 400, bad
    status, _ = await http.json("GET", "/api/v1/retention-policies", world.tokens["supervisor"])
    assert status == 403
    actions = [r["action"] for r in await world.db.fetch(
        "SELECT action FROM audit_events WHERE action LIKE 'retention.policy%' "
        "AND outcome = 'success' ORDER BY seq")]
    assert actions == ["retention.policy_create", "retention.policy_change",
                       "retention.policy_change_requested", "retention.policy_change_approved",
                       "retention.policy_change_requested", "retention.policy_change_approved"]


# ------------------------------------------------------------------------------ holds


async def test_a_held_recording_answers_409_naming_the_matter_until_two_users_release_it(
    world: World,
) -> None:
    http, admin, admin2 = world.http, world.tokens["admin"], world.tokens["admin2"]
    rid = await world.recording(SALES, days_ago=1)
    status, hold = await http.json("POST", "/api/v1/holds", admin, json={
        "matter": "Smith v Bank", "reason": "litigation hold",
        "recording_ids": [str(rid), str(uuid.uuid4())]})
    assert status == 201 and hold["recordings"] == 1 and len(hold["unknown_recording_ids"]) == 1
    status, body = await http.json("DELETE", f"/api/v1/recordings/{rid}", admin,
                                   json={"reason": "customer asked"})
    assert status == 409 and body["error"]["code"] == "legal_hold"
    assert "Smith v Bank" in body["error"]["message"]
    assert body["error"]["matters"] == ["Smith v Bank"]
    status, body = await http.json("POST", f"/api/v1/holds/{hold['id']}/release", admin)
    assert status == 202 and body["state"] == "release_pending"
    status, body = await http.json("POST", f"/api/v1/holds/{hold['id']}/release", admin)
    assert status == 409
    status, _ = await http.json("DELETE", f"/api/v1/recordings/{rid}", admin,
                                json={"reason": "customer asked"})
    assert status == 409  # still held until the second user
    status, body = await http.json("POST", f"/api/v1/holds/{hold['id']}/release", admin2)
    assert status == 200 and body["state"] == "released"
    status, _ = await http.json("DELETE", f"/api/v1/recordings/{rid}", admin,
                                json={"reason": "customer asked"})
    assert status == 200


async def test_a_saved_search_holds_recordings_made_after_the_hold(world: World) -> None:
    http, admin = world.http, world.tokens["admin"]
    status, hold = await http.json("POST", "/api/v1/holds", admin, json={
        "matter": "Complaint 42", "reason": "ombudsman",
        "query": {"participant": "0044 20 7946 0000"}})
    assert status == 201 and hold["query"] == {"number": [CUSTOMER]}
    later = await world.recording((f"sip:{CUSTOMER}@sbc.example.com", "Alice", CUSTOMER),
                                  days_ago=0)
    status, body = await http.json("DELETE", f"/api/v1/recordings/{later}", admin,
                                   json={"reason": "r"})
    assert status == 409 and body["error"]["matters"] == ["Complaint 42"]
    for bad in ({"matter": "m", "reason": "r"}, {"matter": "m", "reason": "r", "query": {}},
                {"matter": "", "reason": "r", "recording_ids": [str(later)]},
                {"matter": "m", "reason": "r", "recording_ids": ["nope"]}):
        status, _ = await http.json("POST", "/api/v1/holds", admin, json=bad)
        assert status == 400, bad
    status, _ = await http.json("GET", "/api/v1/holds", world.tokens["supervisor"])
    assert status == 403


# ------------------------------------------------------------------------------ annotations


async def test_annotations_are_searchable_audited_and_erased_with_the_recording(
    world: World,
) -> None:
    http, supervisor = world.http, world.tokens["supervisor"]
    rid = await world.recording(AGENT, days_ago=1)
    other = await world.recording(SALES, days_ago=1)
    base = f"/api/v1/recordings/{rid}/annotations"
    status, tag = await http.json("POST", base, supervisor, json={"kind": "tag",
                                                                  "value": "Complaint"})
    assert status == 201 and tag["value"] == "complaint"
    await http.json("POST", base, supervisor, json={"kind": "comment", "value": "rude = yes"})
    status, flag = await http.json("POST", base, supervisor, json={"kind": "flag",
                                                                   "value": "dispute"})
    status, body = await http.json("GET", "/api/v1/recordings", supervisor,
                                   params={"tag": "COMPLAINT"})
    assert [item["id"] for item in body["items"]] == [str(rid)]
    status, body = await http.json("GET", "/api/v1/recordings", supervisor,
                                   params={"tag": "nothing"})
    assert body["items"] == []
    status, body = await http.json("GET", base, world.tokens["agent"])  # in the agent's scope
    assert status == 200 and [a["kind"] for a in body["items"]] == ["tag", "comment", "flag"]
    status, _ = await http.json("POST", base, world.tokens["agent"], json={"kind": "tag",
                                                                           "value": "x"})
    assert status == 403
    status, _ = await http.json("GET", f"/api/v1/recordings/{other}/annotations",
                                world.tokens["agent"])
    assert status == 404
    status, body = await http.json("DELETE", base, supervisor, json={"id": flag["id"]})
    assert status == 200 and body["kind"] == "flag"
    status, _ = await http.json("DELETE", base, supervisor, json={"id": flag["id"]})
    assert status == 404
    status, _ = await http.json("POST", base, supervisor, json={"kind": "mood", "value": "x"})
    assert status == 400
    status, _ = await http.json("DELETE", f"/api/v1/recordings/{rid}", world.tokens["admin"],
                                json={"reason": "test"})
    assert status == 200
    assert await world.db.fetchval(
        "SELECT count(*) FROM annotations WHERE recording_id = $1", rid) == 0
    actions = [r["action"] for r in await world.db.fetch(
        "SELECT action FROM audit_events WHERE action LIKE 'annotation.%' AND outcome = "
        "'success' ORDER BY seq")]
    assert actions == ["annotation.add"] * 3 + ["annotation.list", "annotation.delete"]


# ------------------------------------------------------------------------------ subjects

SPELLINGS = [
    (f"sip:{CUSTOMER}@sbc.example.com", "Alice Smith", CUSTOMER),
    ("tel:+44-20-7946-0000", None, CUSTOMER),
    ("sip:00442079460000@pbx.example.com;user=phone", "A. Smith", CUSTOMER),
]


async def _customer_recordings(world: World, freqs: tuple[float, ...] = (440, 660, 880)
                               ) -> list[uuid.UUID]:
    ids = []
    for i, (party, freq) in enumerate(zip(SPELLINGS, freqs, strict=True)):
        ids.append(await world.recording(AGENT, party, days_ago=10 + i, audio=ogg_tone(freq)))
    await world.recording(SALES, days_ago=5)  # someone else
    return ids


def _check_bundle(zip_bytes: bytes, ids: list[uuid.UUID],
                  freqs: tuple[float, ...] = (440, 660, 880)) -> dict[str, Any]:
    archive = zipfile.ZipFile(io.BytesIO(zip_bytes))
    names = set(archive.namelist())
    assert {"recordings.json", "recordings.csv", "README.txt"} <= names
    document = json.loads(archive.read("recordings.json"))
    by_id = {r["id"]: r for r in document["recordings"]}
    assert set(by_id) == {str(r) for r in ids}
    rows = archive.read("recordings.csv").decode().splitlines()
    assert len(rows) == 1 + len(ids) and rows[0].startswith("id,call_id")
    for rid, freq in zip(ids, freqs, strict=True):
        ogg = archive.read(f"audio/{rid}.opus")
        audio, rate = decode_ogg_opus(ogg)
        assert abs(dominant_frequency(audio[:, 0], rate) - freq) < 5
    return document


async def _bundle(world: World, recipient: dict[str, str]) -> tuple[dict[str, Any], bytes]:
    http, admin = world.http, world.tokens["admin"]
    status, request = await http.json("POST", "/api/v1/subject-requests", admin, json={
        "kind": "access", "participant": "0044 (20) 7946-0000", "recipient": recipient})
    assert status == 202 and request["state"] == "queued", request
    job = await world.job(request["job_id"])
    assert job["state"] == "done", job
    status, request = await http.json("GET", f"/api/v1/subject-requests/{request['id']}",
                                      admin)
    assert status == 200 and request["state"] == "done"
    response = await http.request("GET", request["bundle"]["href"], admin)
    assert response.status == 200
    data = await response.read()
    assert len(data) == request["bundle"]["bytes"]
    return request, data


async def test_access_bundle_for_a_passphrase_opens_with_age(world: World) -> None:
    ids = await _customer_recordings(world)
    await world.http.json("POST", f"/api/v1/recordings/{ids[0]}/annotations",
                          world.tokens["supervisor"], json={"kind": "tag", "value": "vip"})
    request, data = await _bundle(world, {"passphrase": "correct horse battery"})
    assert request["found"] == 3 and request["bundle"]["encryption"] == "age"
    assert data.startswith(b"age-encryption.org/v1\n-> scrypt ")
    assert b"Alice" not in data and b"OpusHead" not in data
    with pytest.raises(pyrage.DecryptError):
        pyrage.passphrase.decrypt(data, "wrong passphrase")
    document = _check_bundle(pyrage.passphrase.decrypt(data, "correct horse battery"), ids)
    tags = {r["id"]: [a["value"] for a in r["annotations"]] for r in document["recordings"]}
    assert tags[str(ids[0])] == ["vip"]
    # The passphrase is nowhere in the database; no plaintext file was left behind.
    dump = json.dumps([dict(r) for r in await world.db.fetch(
        "SELECT recipient::text, subject::text FROM subject_requests")])
    assert "horse" not in dump and "wrapped_file_key" not in dump
    assert [p.name for p in (world.tmp / "bundles").iterdir()] == [
        f"{request['id']}.zip.age"]
    items = request_items = (await world.http.json(
        "GET", f"/api/v1/subject-requests/{request['id']}", world.tokens["admin"]))[1]
    assert {i["outcome"] for i in items["recordings"]} == {"included"}
    assert request_items["subject"]["numbers"] == [CUSTOMER]
    exports = await world.db.fetchval(
        "SELECT count(*) FROM audit_events WHERE action = 'recording.export'")
    assert exports == 3


def _gpg_key(home: Path) -> str:
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--batch", "--homedir", str(home), "--passphrase", "",
                    "--quick-gen-key", "dpo@example.com", "default", "default", "never"],
                   check=True, capture_output=True, timeout=120)
    return subprocess.run(["gpg", "--batch", "--homedir", str(home), "--armor", "--export",
                           "dpo@example.com"], check=True, capture_output=True,
                          timeout=60).stdout.decode()


async def test_access_bundle_for_an_openpgp_key_opens_with_gpg(world: World) -> None:
    ids = await _customer_recordings(world)
    home = world.tmp / "requester-gnupg"
    public = _gpg_key(home)
    request, data = await _bundle(world, {"public_key": public})
    assert request["bundle"]["encryption"] == "openpgp"
    clear = subprocess.run(["gpg", "--batch", "--homedir", str(home), "--decrypt"],
                           input=data, check=True, capture_output=True, timeout=120).stdout
    _check_bundle(clear, ids)


async def test_access_bundle_for_a_certificate_opens_with_openssl_cms(world: World) -> None:
    ids = await _customer_recordings(world)
    key, cert = world.tmp / "dpo.key", world.tmp / "dpo.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-subj", "/CN=dpo", "-days", "30"],
                   check=True, capture_output=True, timeout=120)
    request, data = await _bundle(world, {"public_key": cert.read_text()})
    assert request["bundle"]["encryption"] == "cms"
    clear = subprocess.run(["openssl", "cms", "-decrypt", "-binary", "-inform", "DER",
                            "-inkey", str(key), "-recip", str(cert)],
                           input=data, check=True, capture_output=True, timeout=120).stdout
    _check_bundle(clear, ids)


async def test_bad_subject_requests_get_a_clear_400(world: World) -> None:
    http, admin = world.http, world.tokens["admin"]
    for body in ({"kind": "access", "participant": CUSTOMER},
                 {"kind": "access", "participant": CUSTOMER, "recipient": {"passphrase": "x"}},
                 {"kind": "access", "participant": CUSTOMER,
                  "recipient": {"public_key": "-----BEGIN PGP PUBLIC KEY BLOCK-----\nno"}},
                 {"kind": "access", "participant": CUSTOMER,
                  "recipient": {"public_key": "-----BEGIN CERTIFICATE-----\nno"}},
                 {"kind": "erasure"}, {"kind": "forget", "participant": CUSTOMER},
                 {"kind": "erasure", "participant": CUSTOMER, "recipient": {"passphrase": "p"}}):
        status, answer = await http.json("POST", "/api/v1/subject-requests", admin, json=body)
        assert status == 400 and answer["error"]["message"], body
    scoped, _ = await make_token(world.db, "admin", ("2001",))
    status, _ = await http.json("POST", "/api/v1/subject-requests", scoped,
                                json={"kind": "erasure", "participant": CUSTOMER})
    assert status == 403
    status, _ = await http.json("POST", "/api/v1/subject-requests", world.tokens["supervisor"],
                                json={"kind": "erasure", "participant": CUSTOMER})
    assert status == 403


async def test_erasure_request_erases_all_but_the_held_and_the_legally_kept(
    world: World,
) -> None:
    http, admin = world.http, world.tokens["admin"]
    free, held, kept = await _customer_recordings(world)
    status, _ = await http.json("POST", "/api/v1/holds", admin, json={
        "matter": "Smith v Bank", "reason": "litigation", "recording_ids": [str(held)]})
    status, policy = await http.json("POST", "/api/v1/retention-policies", admin, json={
        "preset": "mifid2", "name": "trading line",
        "match": {"parties": ["sip:00442079460000@pbx.example.com*"]}})
    assert status == 201
    status, request = await http.json("POST", "/api/v1/subject-requests", admin, json={
        "kind": "erasure", "participant": "tel:+44 20 7946 0000"})
    assert status == 202
    await world.job(request["job_id"])
    status, report = await http.json("GET", f"/api/v1/subject-requests/{request['id']}", admin)
    assert (report["state"], report["found"], report["erased"], report["refused"]) == (
        "done", 3, 1, 2)
    outcomes = {uuid.UUID(r["recording_id"]): r for r in report["recordings"]}
    assert outcomes[free]["outcome"] == "erased"
    assert (outcomes[held]["outcome"], outcomes[held]["reason"], outcomes[held]["matter"]) == (
        "refused", "legal_hold", "Smith v Bank")
    started = await world.db.fetchval("SELECT started_at FROM recordings WHERE id = $1", kept)
    assert (outcomes[kept]["outcome"], outcomes[kept]["reason"]) == ("refused",
                                                                     "legal_obligation")
    assert datetime.fromisoformat(outcomes[kept]["retained_until"]) == started + timedelta(
        days=1826)
    assert "MiFID II" in outcomes[kept]["basis"]
    assert [await world.state(r) for r in (free, held, kept)] == ["erased", "complete",
                                                                   "complete"]
    status, listing = await http.json("GET", "/api/v1/subject-requests", admin)
    assert [r["id"] for r in listing["items"]] == [request["id"]]
    refusals = await world.db.fetch(
        """SELECT target, details FROM audit_events WHERE action = 'recording.erase'
           AND outcome = 'failure' ORDER BY seq""")
    assert [(r["target"], r["details"]["refused"]) for r in refusals] == [
        (str(held), "legal_hold"), (str(kept), "legal_obligation")]


async def test_audio_of_a_bundle_matches_playback(world: World) -> None:
    """The bundle's audio is byte for byte what playback serves."""
    (rid,) = [await world.recording(AGENT, SPELLINGS[0], days_ago=1, audio=ogg_tone(500))]
    request, data = await _bundle(world, {"passphrase": "another passphrase"})
    archive = zipfile.ZipFile(io.BytesIO(pyrage.passphrase.decrypt(data, "another passphrase")))
    played = await world.http.request("GET", f"/api/v1/recordings/{rid}/audio",
                                      world.tokens["admin"])
    assert archive.read(f"audio/{rid}.opus") == await played.read()
    audio, rate = decode_ogg_opus(archive.read(f"audio/{rid}.opus"))
    assert np.abs(audio).max() > 0.1


# ------------------------------------------------------------------------------ OpenAPI


async def exercise_lifecycle_endpoints(call: Any, db: asyncpg.Pool, ring: KeyRing, tmp: Path,
                                       services: LifecycleServices, admin: str) -> None:
    """Every lifecycle operation, successes and errors, through test_openapi's checker."""
    c = call
    admin2, _ = await make_token(db, "admin")
    keep = await stored_recording(db, ring, tmp, parties=[AGENT], started_at=NOW,
                                  plaintext=ogg_tone())
    coll, one = "/api/v1/retention-policies", "/api/v1/retention-policies/{id}"
    policy = await c("POST", coll, coll, admin, json={"name": "desk", "days": 400,
                                                      "match": {"parties": ["2001"]}})
    await c("POST", coll, coll, admin, json={"name": "no days"})
    await c("GET", coll, coll, admin)
    path = f"{coll}/{policy['id']}"
    await c("GET", one, path, admin)
    await c("GET", one, f"{coll}/{uuid.uuid4()}", admin)
    await c("PATCH", one, path, admin, json={"days": 500})
    await c("PATCH", one, path, admin, json={"days": 100})
    await c("POST", one + "/approve", path + "/approve", admin)
    await c("POST", one + "/approve", path + "/approve", admin2)
    await c("DELETE", one, path, admin)
    await c("POST", one + "/approve", path + "/approve", admin2)
    job = await c("POST", "/api/v1/retention/run", "/api/v1/retention/run", admin,
                  json={"dry_run": True})
    await c("POST", "/api/v1/retention/run", "/api/v1/retention/run", admin,
            json={"dry_run": "yes"})
    assert services.runner is not None
    await services.runner.run_until_idle()
    await c("GET", "/api/v1/jobs/{id}", f"/api/v1/jobs/{job['id']}", admin)
    await c("GET", "/api/v1/jobs/{id}", f"/api/v1/jobs/{uuid.uuid4()}", admin)

    hold = await c("POST", "/api/v1/holds", "/api/v1/holds", admin, json={
        "matter": "Smith v Bank", "reason": "litigation", "recording_ids": [str(keep)]})
    await c("POST", "/api/v1/holds", "/api/v1/holds", admin, json={"matter": "m"})
    await c("GET", "/api/v1/holds", "/api/v1/holds", admin)
    await c("GET", "/api/v1/holds/{id}", f"/api/v1/holds/{hold['id']}", admin)
    await c("GET", "/api/v1/holds/{id}", f"/api/v1/holds/{uuid.uuid4()}", admin)
    await c("DELETE", "/api/v1/recordings/{id}", f"/api/v1/recordings/{keep}", admin,
            json={"reason": "test"})
    release = "/api/v1/holds/{id}/release"
    await c("POST", release, f"/api/v1/holds/{hold['id']}/release", admin)
    await c("POST", release, f"/api/v1/holds/{hold['id']}/release", admin)
    await c("POST", release, f"/api/v1/holds/{hold['id']}/release", admin2)

    notes = "/api/v1/recordings/{id}/annotations"
    here = f"/api/v1/recordings/{keep}/annotations"
    note = await c("POST", notes, here, admin, json={"kind": "tag", "value": "vip"})
    await c("POST", notes, here, admin, json={"kind": "tag"})
    await c("GET", notes, here, admin)
    await c("GET", notes, f"/api/v1/recordings/{uuid.uuid4()}/annotations", admin)
    await c("DELETE", notes, here, admin, json={"id": note["id"]})

    requests = "/api/v1/subject-requests"
    request = await c("POST", requests, requests, admin, json={
        "kind": "access", "participant": "2001", "recipient": {"passphrase": "a passphrase"}})
    await c("POST", requests, requests, admin, json={"kind": "access"})
    await services.runner.run_until_idle()
    await c("GET", requests, requests, admin)
    await c("GET", requests + "/{id}", f"{requests}/{request['id']}", admin)
    await c("GET", requests + "/{id}", f"{requests}/{uuid.uuid4()}", admin)
    bundle = await c("GET", requests + "/{id}/bundle", f"{requests}/{request['id']}/bundle",
                     admin)
    assert bundle.startswith(b"age-encryption.org/v1")
    await c("GET", requests + "/{id}/bundle", f"{requests}/{uuid.uuid4()}/bundle", admin)
