"""The recordings endpoints over real HTTP and a real database: every endpoint × every role ×
in/out of scope, hostile input (ids, queries, bodies, Range headers, tokens), byte ranges of the
decrypted audio, erasure, and — with a running server — a SIPREC call found by a number in
another spelling, played, paused mid-call, erased, with the audit chain verified at the end."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_api
from api.auth_api import setup_identity
from api.keys_api import setup_keys
from api.metrics import MetricsSources, setup_metrics
from api.recordings_api import KEYS_KEY, MEDIA_KEY, setup_recordings
from siprec_server.access import PasswordHashing, new_api_token, token_digest
from siprec_server.app import RunningServer, metrics_sources
from siprec_server.media.codecs import encode_ulaw
from siprec_server.services.keys import KeyService, KeySettings
from siprec_server.siprec.sdp import parse_sdp
from storage import recordings, users
from storage.audit import verify_audit_chain
from storage.custody import KeyCustody
from storage.keys import (
    KeyRing,
    LocalKeyStore,
    MasterKey,
    data_key_id,
    new_data_key,
    wrap_data_key,
)
from storage.playback import RecordingUnreadable, open_recording
from storage.recording_file import RecordingFileWriter
from tests.audio import active_segments, decode_ogg_opus, tone
from tests.integration.conftest import sip_address
from tests.integration.test_recording import send_rtp
from tests.sip_client import SipTestClient, interop_case, set_header

CHEAP = PasswordHashing(time_cost=1, memory_kib=8 * 1024, parallelism=1)
T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
CUSTOMER = "+442079460000"
Client = TestClient[web.Request, web.Application]


# ------------------------------------------------------------------------------ helpers


async def make_token(db: asyncpg.Pool, role: str, scopes: tuple[str, ...] = (), *,
                     ttl: timedelta = timedelta(hours=1)) -> tuple[str, str]:
    """A user of `role` and a live bearer token of theirs (no password: none is needed)."""
    now = datetime.now(UTC)
    user = await users.create_user(db, username=f"{role}-{uuid.uuid4().hex[:8]}", role=role,
                                   password_hash="-", scopes=list(scopes), now=now)
    assert user is not None
    token = new_api_token()
    await users.issue_token(db, user.id, token_digest(token), now=now, ttl=ttl, source="test")
    return token, str(user.id)


class HeldKeys(KeyCustody):
    """The test's own ring, as a development custody would hold it."""

    mode = "local"


def recording_app(db: asyncpg.Pool, *, keys: KeyRing | None = None, media: Any = None,
                  metrics: MetricsSources | None = None) -> Any:
    """The control API as siprec_server/app.py is to wire it."""
    app = create_api(db=db)
    setup_identity(app, password_hashing=CHEAP)
    setup_keys(app, KeyService(db, HeldKeys(keys or KeyRing.sealed()),
                               KeySettings(node_id="test-node"), ready=True))
    setup_recordings(app)
    setup_metrics(app, metrics)
    if keys is not None:
        app[KEYS_KEY] = keys
    if media is not None:
        app[MEDIA_KEY] = media
    return app


@dataclass
class Http:
    client: Client

    async def request(self, method: str, path: str, token: str | None,
                      **kwargs: Any) -> ClientResponse:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def json(self, method: str, path: str, token: str | None,
                   **kwargs: Any) -> tuple[int, Any]:
        response = await self.request(method, path, token, **kwargs)
        assert response.content_type == "application/json", (response.status, path)
        return response.status, await response.json()


def ring_of_one() -> KeyRing:
    master = MasterKey.generate(T0)
    return KeyRing(master, MappingProxyType({master.key_id: master}))


async def stored_recording(
    db: asyncpg.Pool, ring: KeyRing, directory: Path, *,
    parties: list[tuple[str, str | None, str | None]], started_at: datetime,
    state: str = "complete", plaintext: bytes | None = None, call_id: str | None = None,
) -> uuid.UUID:
    """A recording as the recorder and MediaService leave it, parties as (aor, name, number),
    with an encrypted file of `plaintext` when given."""
    rid = uuid.uuid4()
    await db.execute(
        """INSERT INTO recordings (id, node_id, call_id, session_id, state, started_at,
                                   ended_at, duration_ms, transport, src_address, channels,
                                   pauses)
           VALUES ($1, 'n1', $2, $3, $4, $5::timestamptz,
                   CASE WHEN $4 IN ('offered', 'recording') THEN NULL
                        ELSE $5::timestamptz + interval '20 seconds' END,
                   20000, 'udp', '192.0.2.1',
                   '[{"index": 0, "m_index": 0, "label": "1", "participant_ids": ["p0"],
                      "reason": "m-line 0"}]',
                   '[{"start_ms": 5000, "end_ms": 7500, "source": "api"}]')""",
        rid, call_id or f"{rid.hex[:12]}@192.0.2.1", f"sess-{rid.hex[:8]}", state, started_at,
    )
    for i, (aor, name, number) in enumerate(parties):
        await db.execute(
            """INSERT INTO participants (recording_id, participant_id, aor, name, number,
                                         present) VALUES ($1, $2, $3, $4, $5, true)""",
            rid, f"p{i}", aor, name, number,
        )
    await db.execute(
        """INSERT INTO streams (recording_id, m_index, label, kind, accepted, codec,
                                srtp_suite, channel, senders, stats)
           VALUES ($1, 0, '1', 'audio', true, 'PCMU/8000', NULL, 0, '{p0}',
                   '{"packets_received": 1000, "packets_lost": 3}')""",
        rid,
    )
    if plaintext is not None:
        path = directory / f"{rid}.srec"
        dek = new_data_key()
        await recordings.save_media_start(
            db, rid, file_path=str(path), sample_rate=8000,
            channels=[{"index": 0, "m_index": 0, "label": "1", "participant_ids": ["p0"],
                       "reason": "m-line 0"}],
            master_key_id=ring.current.key_id,
            wrapped_key=wrap_data_key(ring.current, dek, rid),
        )
        with open(path, "wb") as f:
            writer = RecordingFileWriter(f, recording_id=rid, data_key=dek,
                                         key_id=data_key_id(dek), max_chunk=1000)
            writer.write(plaintext)
            summary = writer.close()
        if state not in ("offered", "recording"):
            await db.execute(
                "UPDATE recordings SET plaintext_bytes = $2, plaintext_sha256 = $3 "
                "WHERE id = $1", rid, summary.plaintext_bytes, summary.plaintext_sha256)
    return rid


# A stand-in for Ogg Opus bytes: playback serves bytes, it never decodes them.
PLAINTEXT = bytes((i * 7 + i // 256) % 251 for i in range(5000))
AGENT = ("sip:2001@pbx.example.com", "Agent One", "2001")
OTHER_AGENT = ("sip:2002@pbx.example.com", "Agent Two", "2002")


@dataclass
class World:
    http: Http
    db: asyncpg.Pool
    ring: KeyRing
    ids: dict[str, uuid.UUID]
    tokens: dict[str, str]
    user_ids: dict[str, str]


@pytest.fixture
async def world(db_pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[World]:
    ring = ring_of_one()
    ids: dict[str, uuid.UUID] = {}
    customer = (f"sip:{CUSTOMER}@sbc.example.com", "Alice Smith", CUSTOMER)
    french = ("tel:+33142685300", "Bob O'Neil", "+33142685300")
    specs: list[tuple[str, list[Any], str]] = [
        ("mine", [AGENT, customer], "complete"),
        ("other", [OTHER_AGENT, french], "complete"),
        ("live_mine", [AGENT, french], "recording"),
        ("live_other", [OTHER_AGENT, customer], "recording"),
        ("doomed_mine", [AGENT], "complete"),
        ("doomed_other", [OTHER_AGENT], "complete"),
    ]
    for i, (name, parties, state) in enumerate(specs):
        ids[name] = await stored_recording(
            db_pool, ring, tmp_path, parties=parties, state=state,
            started_at=T0 + timedelta(minutes=i), plaintext=PLAINTEXT)
    roles = {
        "admin": ("admin", ()),
        "admin_scoped": ("admin", ("2001",)),
        "supervisor": ("supervisor", ()),
        "supervisor_scoped": ("supervisor", ("2001",)),
        "auditor": ("auditor", ()),
        "agent": ("agent", ("2001",)),
        "agent_unscoped": ("agent", ()),
        "integration": ("integration", ("2001",)),
    }
    tokens: dict[str, str] = {}
    user_ids: dict[str, str] = {}
    for name, (role, scopes) in roles.items():
        tokens[name], user_ids[name] = await make_token(db_pool, role, scopes)
    client: Client = TestClient(TestServer(recording_app(db_pool, keys=ring)))
    await client.start_server()
    try:
        yield World(Http(client), db_pool, ring, ids, tokens, user_ids)
    finally:
        await client.close()
        report = await verify_audit_chain(db_pool)
        assert report.ok, report
        # Principle 4: a searched-for number never reaches the audit trail.
        trail = json.dumps([dict(r["details"]) for r in await db_pool.fetch(
            "SELECT details FROM audit_events")])
        assert "7946" not in trail and "Alice" not in trail


# ------------------------------------------------------------------------------ the matrix

PERMISSIONS = {
    "admin": {"search", "play", "export", "delete", "pause"},
    "admin_scoped": {"search", "play", "export", "delete", "pause"},
    "supervisor": {"search", "play", "export", "pause"},
    "supervisor_scoped": {"search", "play", "export", "pause"},
    "auditor": {"search"},
    "agent": {"search", "play"},
    "agent_unscoped": set(),  # holds search and play, but its empty scope shows nothing
    "integration": {"pause"},
}
SCOPED_TO_2001 = {"admin_scoped", "supervisor_scoped", "agent", "integration"}
ROLE_PERMISSIONS = {**PERMISSIONS, "agent_unscoped": {"search", "play"}}


def sees(who: str, target: str) -> bool:
    if who == "agent_unscoped":
        return False
    if who in SCOPED_TO_2001:
        return target in ("mine", "live_mine", "doomed_mine")
    return True


def expected(who: str, permission: str, target: str, *, in_scope_status: int) -> int:
    if permission not in ROLE_PERMISSIONS[who]:
        return 403
    return in_scope_status if sees(who, target) else 404


async def test_every_endpoint_for_every_role_in_and_out_of_scope(world: World) -> None:
    http = world.http
    got: dict[tuple[str, str, str], int] = {}
    want: dict[tuple[str, str, str], int] = {}
    for who, token in world.tokens.items():
        # Search: a permitted caller gets exactly the recordings in their scope.
        response = await http.request("GET", "/api/v1/recordings", token)
        want[(who, "search", "-")] = 200 if "search" in ROLE_PERMISSIONS[who] else 403
        got[(who, "search", "-")] = response.status
        if response.status == 200:
            body = await response.json()
            visible = {name for name in world.ids if sees(who, name)}
            assert {item["id"] for item in body["items"]} == {
                str(world.ids[n]) for n in visible}, who
            assert body["next_cursor"] is None
        response = await http.request("GET", "/api/v1/recordings?format=csv", token)
        want[(who, "export", "-")] = 200 if "export" in ROLE_PERMISSIONS[who] else 403
        got[(who, "export", "-")] = response.status
        if response.status == 200:
            rows = list(csv.reader(io.StringIO(await response.text())))
            assert len(rows) - 1 == sum(sees(who, n) for n in world.ids), who
        for target in ("mine", "other"):
            rid = world.ids[target]
            response = await http.request("GET", f"/api/v1/recordings/{rid}", token)
            got[(who, "view", target)] = response.status
            want[(who, "view", target)] = expected(who, "search", target, in_scope_status=200)
            response = await http.request("GET", f"/api/v1/recordings/{rid}/audio", token)
            got[(who, "play", target)] = response.status
            want[(who, "play", target)] = expected(who, "play", target, in_scope_status=200)
            if response.status == 200:
                assert await response.read() == PLAINTEXT
        for target in ("live_mine", "live_other"):
            rid = world.ids[target]
            response = await http.request("POST", f"/api/v1/calls/{rid}/pause", token)
            got[(who, "pause", target)] = response.status
            # Permitted and in scope: found, but no media runs for it on this API node.
            want[(who, "pause", target)] = expected(who, "pause", target, in_scope_status=409)
            response = await http.request("POST", f"/api/v1/calls/{rid}/resume", token)
            got[(who, "resume", target)] = response.status
            want[(who, "resume", target)] = want[(who, "pause", target)]
    # Erasure last, the scoped admin before the unrestricted one.
    for who in [*(w for w in world.tokens if not w.startswith("admin")), "admin_scoped",
                "admin"]:
        for target in ("doomed_mine", "doomed_other"):
            response = await http.request(
                "DELETE", f"/api/v1/recordings/{world.ids[target]}", world.tokens[who],
                json={"reason": "retention period over"})
            got[(who, "erase", target)] = response.status
            want[(who, "erase", target)] = expected(who, "delete", target, in_scope_status=200)
    assert got == want


async def test_denials_and_accesses_are_audited(world: World) -> None:
    http = world.http
    rid = world.ids["mine"]
    await http.request("GET", f"/api/v1/recordings/{rid}/audio", world.tokens["auditor"])
    await http.request("GET", f"/api/v1/recordings/{rid}/audio", world.tokens["agent"],
                       headers={"Range": "bytes=0-99"})
    await http.request("GET", "/api/v1/recordings", world.tokens["agent"],
                       params={"participant": "+44 20 7946 0000", "from": "2024-05-01T00:00:00Z"})
    rows = await world.db.fetch(
        "SELECT actor, action, outcome, target, source, details FROM audit_events ORDER BY seq")
    events = [(r["action"], r["outcome"], r["actor"]) for r in rows]
    assert events == [
        ("recording.play", "denied", world.user_ids["auditor"]),
        ("recording.play", "success", world.user_ids["agent"]),
        ("recording.search", "success", world.user_ids["agent"]),
    ]
    play, search = rows[1], rows[2]
    assert play["target"] == str(rid) and play["source"] == "127.0.0.1"
    assert play["details"] == {"range": "bytes=0-99", "status": 206}
    assert search["details"] == {"filters": ["number", "from"], "returned": 1}


async def test_no_token_expired_and_revoked_tokens_get_401(world: World) -> None:
    http = world.http
    expired, _ = await make_token(world.db, "admin", ttl=timedelta(seconds=-1))
    revoked, _ = await make_token(world.db, "admin")
    await users.revoke_token(world.db, token_digest(revoked), datetime.now(UTC))
    rid = world.ids["mine"]
    for token in (None, expired, revoked, "srs_" + "x" * 43, "garbage"):
        for method, path in (("GET", "/api/v1/recordings"), ("GET", f"/api/v1/recordings/{rid}"),
                             ("GET", f"/api/v1/recordings/{rid}/audio"),
                             ("DELETE", f"/api/v1/recordings/{rid}"),
                             ("POST", f"/api/v1/calls/{rid}/pause")):
            status, body = await http.json(method, path, token)
            assert status == 401 and body["error"]["code"] in ("unauthenticated",
                                                               "invalid_token")


# ------------------------------------------------------------------------------ search


async def test_a_number_in_any_spelling_finds_the_same_party(world: World) -> None:
    want = {str(world.ids["mine"]), str(world.ids["live_other"])}
    for spelling in ("+44 20 7946 0000", "00442079460000", f"sip:{CUSTOMER}@elsewhere.example",
                     "tel:+44-20-7946-0000"):
        status, body = await world.http.json("GET", "/api/v1/recordings", world.tokens["admin"],
                                             params={"participant": spelling})
        assert status == 200
        assert {item["id"] for item in body["items"]} == want, spelling
    # The README's example typed as shown: a '+' in the URL is a plus, not a space.
    for raw in ("/api/v1/recordings?participant=+442079460000",
                "/api/v1/recordings?number=+44%2020%207946%200000"):
        status, body = await world.http.json("GET", raw, world.tokens["admin"])
        assert status == 200 and {item["id"] for item in body["items"]} == want, raw
    status, body = await world.http.json("GET", "/api/v1/recordings", world.tokens["admin"],
                                         params={"aor": "SIP:2002@PBX.example.com"})
    assert {item["id"] for item in body["items"]} == {
        str(world.ids[n]) for n in ("other", "live_other", "doomed_other")}
    status, body = await world.http.json("GET", "/api/v1/recordings", world.tokens["admin"],
                                         params={"name": "o'nei"})
    assert {item["id"] for item in body["items"]} == {
        str(world.ids[n]) for n in ("other", "live_mine")}


async def test_results_follow_the_recording_contract(world: World) -> None:
    status, body = await world.http.json(
        "GET", "/api/v1/recordings", world.tokens["admin"],
        params={"call_id": (await world.db.fetchval(
            "SELECT call_id FROM recordings WHERE id = $1", world.ids["mine"]))})
    assert status == 200
    (item,) = body["items"]
    assert uuid.UUID(item["id"]) == world.ids["mine"]
    assert item["state"] == "complete"
    assert item["started_at"].endswith("Z") and item["duration_s"] == 20.0
    assert item["participants"][1] == {
        "id": "p1", "aor": f"sip:{CUSTOMER}@sbc.example.com", "name": "Alice Smith",
        "number": CUSTOMER, "present": True, "joined_at": None, "left_at": None}
    assert item["channels"] == [{"index": 0, "label": "1", "m_index": 0,
                                 "participant_ids": ["p0"], "reason": "m-line 0"}]
    stream = item["streams"][0]
    assert (stream["label"], stream["codec"], stream["srtp"], stream["packets_received"],
            stream["packets_lost"]) == ("1", "PCMU/8000", None, 1000, 3)
    assert item["pauses"] == [{"start_s": 5.0, "end_s": 7.5, "source": "api"}]


async def test_pages_walk_through_every_result(world: World) -> None:
    seen: list[str] = []
    params: dict[str, str] = {"limit": "4"}
    for _ in range(5):
        status, body = await world.http.json("GET", "/api/v1/recordings",
                                             world.tokens["admin"], params=params)
        assert status == 200
        seen += [item["id"] for item in body["items"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert sorted(seen) == sorted(str(r) for r in world.ids.values())


async def test_csv_export_is_the_right_of_access_extract(world: World) -> None:
    response = await world.http.request(
        "GET", "/api/v1/recordings", world.tokens["supervisor"],
        params={"participant": "00442079460000"}, headers={"Accept": "text/csv"})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    assert {r["id"] for r in rows} == {str(world.ids["mine"]), str(world.ids["live_other"])}
    assert all(CUSTOMER in r["participant_numbers"] for r in rows)
    (event,) = await world.db.fetch(
        "SELECT details FROM audit_events WHERE action = 'recording.export'")
    assert event["details"] == {"filters": ["number"], "exported": 2, "format": "csv"}


BAD_SEARCHES = [
    "limit=0", "limit=501", "limit=abc", "limit=-1", "cursor=not-a-cursor", "cursor=",
    "from=yesterday", "from=2024-05-01T00:00:00",
    "to=2024-01-01T00:00:00Z&from=2024-02-01T00:00:00Z", "state=deleted", "nonsense=1",
    "number=alice", "name=ab", "participant=", "format=xml", "call_id=a&call_id=b",
    "participant=" + "9" * 300, "from=2024-13-45T00:00:00Z", "participant=%00",
    "call_id=a%00b", "participant=a&" * 11 + "x=1",
]


async def test_bad_searches_get_a_clear_400(world: World) -> None:
    for query in BAD_SEARCHES:
        status, body = await world.http.json("GET", f"/api/v1/recordings?{query}",
                                             world.tokens["admin"])
        assert status == 400, (query, body)
        assert body["error"]["code"] == "bad_request" and body["error"]["message"]
    # Three literal percent signs: a valid search that finds nothing.
    status, body = await world.http.json("GET", "/api/v1/recordings?name=%25%25%25",
                                         world.tokens["admin"])
    assert status == 200 and body["items"] == []


# ------------------------------------------------------------------------------ metadata


async def test_detail_shows_hashes_counters_and_signature_state(world: World) -> None:
    rid = world.ids["mine"]
    status, body = await world.http.json("GET", f"/api/v1/recordings/{rid}",
                                         world.tokens["auditor"])
    assert status == 200
    assert len(body["hashes"]["plaintext_sha256"]) == 64
    assert body["sizes"]["plaintext_bytes"] == len(PLAINTEXT)
    assert body["streams"][0]["stats"] == {"packets_received": 1000, "packets_lost": 3}
    assert body["signature"] == {"state": "unsigned", "key_id": None, "verified": None,
                                 "problems": []}
    assert body["dtmf_events"] == 0 and body["has_audio"] is True
    status, body = await world.http.json("GET", f"/api/v1/recordings/{rid}?verify=true",
                                         world.tokens["auditor"])
    assert status == 200
    assert body["signature"]["state"] == "failed" and body["signature"]["verified"] is False
    assert "no signed summary" in body["signature"]["problems"]


async def test_bad_and_unknown_ids_are_404_json(world: World) -> None:
    for path in ("/api/v1/recordings/not-a-uuid", "/api/v1/recordings/not-a-uuid/audio",
                 f"/api/v1/recordings/{uuid.uuid4()}", f"/api/v1/recordings/{uuid.uuid4()}/audio",
                 "/api/v1/recordings/00000000-0000-0000-0000-00000000000g",
                 "/api/v1/recordings/%00"):
        status, body = await world.http.json("GET", path, world.tokens["admin"])
        assert status == 404 and body["error"]["code"] == "not_found", path
    status, body = await world.http.json("DELETE", "/api/v1/recordings/nope",
                                         world.tokens["admin"], json={"reason": "x"})
    assert status == 404


async def test_bad_verify_flag_is_400(world: World) -> None:
    status, _ = await world.http.json(
        "GET", f"/api/v1/recordings/{world.ids['mine']}?verify=maybe", world.tokens["admin"])
    assert status == 400


# ------------------------------------------------------------------------------ playback


SATISFIABLE = [
    ("bytes=0-99", 206, 0, 100),
    ("bytes=4900-", 206, 4900, 5000),
    ("bytes=-50", 206, 4950, 5000),
    ("bytes=-99999", 206, 0, 5000),
    ("bytes=1000-999999999", 206, 1000, 5000),
    ("bytes=1234-1234", 206, 1234, 1235),
    ("bytes=2500-3499", 206, 2500, 3500),  # across the file's 1000-byte chunks
    ("items=0-5", 200, 0, 5000),  # another unit: ignored
    ("bytes=0-1,4-5", 200, 0, 5000),  # several ranges: the whole body
]
UNSATISFIABLE = [
    "bytes=5000-", "bytes=99999-100000", "bytes=-0", "bytes=abc", "bytes=5-3", "bytes=-",
    "bytes=", "bytes=1-2-3", "bytes= 9" * 3, "bytes=" + "9" * 40 + "-",
]


async def test_ranges_serve_exactly_the_bytes_asked_for(world: World) -> None:
    path = f"/api/v1/recordings/{world.ids['mine']}/audio"
    for header, status, start, end in SATISFIABLE:
        response = await world.http.request("GET", path, world.tokens["agent"],
                                            headers={"Range": header})
        assert response.status == status, header
        assert response.headers["Accept-Ranges"] == "bytes"
        assert response.headers["Content-Type"] == "audio/ogg"
        assert await response.read() == PLAINTEXT[start:end], header
        if status == 206:
            assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/5000"
    for header in UNSATISFIABLE:
        status, body = await world.http.json("GET", path, world.tokens["agent"],
                                             headers={"Range": header})
        assert status == 416 and body["error"]["code"] == "range_not_satisfiable", header


async def test_416_names_the_size(world: World) -> None:
    response = await world.http.request(
        "GET", f"/api/v1/recordings/{world.ids['mine']}/audio", world.tokens["agent"],
        headers={"Range": "bytes=6000-"})
    assert response.status == 416 and response.headers["Content-Range"] == "bytes */5000"


async def test_a_recording_in_progress_streams_what_is_there_ignoring_ranges(
    world: World,
) -> None:
    response = await world.http.request(
        "GET", f"/api/v1/recordings/{world.ids['live_mine']}/audio", world.tokens["admin"],
        headers={"Range": "bytes=0-9"})
    assert response.status == 200
    assert response.headers.get("Transfer-Encoding") == "chunked"
    # The writer was closed, so every byte is there; a live file yields its complete chunks.
    assert await response.read() == PLAINTEXT


async def test_a_damaged_file_is_a_json_error_not_a_crash(world: World) -> None:
    path = await world.db.fetchval("SELECT file_path FROM recordings WHERE id = $1",
                                   world.ids["other"])
    data = bytearray(Path(path).read_bytes())
    data[200] ^= 1
    Path(path).write_bytes(bytes(data))
    status, body = await world.http.json(
        "GET", f"/api/v1/recordings/{world.ids['other']}/audio", world.tokens["admin"])
    assert status == 500 and body["error"]["code"] == "recording_unreadable"


# ------------------------------------------------------------------------------ erasure


BAD_ERASURE_BODIES: list[tuple[bytes | None, int]] = [
    (None, 400), (b"not json", 400), (b"[]", 400), (b'{"reason": 5}', 400),
    (b'{"reason": ""}', 400), (b'{"reason": "   "}', 400), (b'{"why": "x"}', 400),
    (b'{"reason": "ok", "extra": 1}', 400), (json.dumps({"reason": "x" * 501}).encode(), 400),
    (b'{"reason": "' + b"x" * 20000 + b'"}', 413), (b"\xff\xfe", 400),
    (b'{"reason": "a\\u0000b"}', 400), (b"[" * 100000, 413),
]


async def test_erasure_needs_a_reason_in_a_json_object(world: World) -> None:
    for body, status in BAD_ERASURE_BODIES:
        got, answer = await world.http.json(
            "DELETE", f"/api/v1/recordings/{world.ids['mine']}", world.tokens["admin"],
            data=body, headers={"Content-Type": "application/json"})
        assert got == status and answer["error"]["message"], body
    assert await world.db.fetchval("SELECT state FROM recordings WHERE id = $1",
                                   world.ids["mine"]) == "complete"


async def test_erasure_is_gone_for_good_and_harmless_twice(world: World) -> None:
    rid = world.ids["mine"]
    http, token = world.http, world.tokens["admin"]
    status, first = await http.json("DELETE", f"/api/v1/recordings/{rid}", token,
                                    json={"reason": "GDPR request 2024-17"})
    assert status == 200 and first["already_erased"] is False
    tombstone = first["recording"]
    assert tombstone["state"] == "erased" and tombstone["erased_by"] == world.user_ids["admin"]
    status, second = await http.json("DELETE", f"/api/v1/recordings/{rid}", token,
                                     json={"reason": "again"})
    assert status == 200 and second == {"recording": tombstone, "already_erased": True}
    status, body = await http.json("GET", f"/api/v1/recordings/{rid}/audio", token)
    assert status == 410 and body["error"]["code"] == "erased"
    status, body = await http.json("GET", f"/api/v1/recordings/{rid}", token)
    assert status == 200 and body["state"] == "erased" and body["participants"] == []
    assert body["call_id"] is None and body["hashes"]["plaintext_sha256"] is None
    # The agent whose call it was can no longer find it: nothing personal links it to them.
    status, body = await http.json("GET", f"/api/v1/recordings/{rid}", world.tokens["agent"])
    assert status == 404


async def test_an_active_recording_cannot_be_erased(world: World) -> None:
    status, body = await world.http.json(
        "DELETE", f"/api/v1/recordings/{world.ids['live_mine']}", world.tokens["admin"],
        json={"reason": "x"})
    assert status == 409 and body["error"]["code"] == "recording_active"


# ------------------------------------------------------------------------------ call control


async def test_pause_references_that_name_nothing_or_a_finished_call(world: World) -> None:
    http, token = world.http, world.tokens["supervisor"]
    for ref in ("unknown-call-id@host", str(uuid.uuid4()), "x" * 300, "%00"):
        status, body = await http.json("POST", f"/api/v1/calls/{ref}/pause", token)
        assert status == 404 and body["error"]["code"] == "not_found", ref
    call_id = await world.db.fetchval("SELECT call_id FROM recordings WHERE id = $1",
                                      world.ids["mine"])
    status, body = await http.json("POST", f"/api/v1/calls/{call_id}/pause", token)
    assert status == 409 and body["error"]["code"] == "call_ended"


# ------------------------------------------------------------------------------ metrics


async def test_metrics_count_requests_and_recordings_by_state(world: World) -> None:
    http = world.http
    await http.request("GET", "/api/v1/recordings", world.tokens["admin"])
    await http.request("GET", "/api/v1/recordings/nope", world.tokens["admin"])
    response = await http.request("GET", "/metrics", None)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = await response.text()
    lines = text.splitlines()
    assert 'siprec_recordings{state="complete"} 4' in lines
    assert 'siprec_recordings{state="recording"} 2' in lines
    assert ('siprec_api_requests_total{route="/api/v1/recordings",method="GET",status="200"} 1'
            in lines)
    assert ('siprec_api_requests_total{route="/api/v1/recordings/{id}",method="GET",'
            'status="404"} 1' in lines)
    assert any(line.startswith('siprec_api_request_duration_seconds_bucket{route='
                               '"/api/v1/recordings",method="GET",status="200",le="+Inf"} 1')
               for line in lines)
    for family in ("siprec_active_calls", "siprec_rtp_packets_received_total",
                   "siprec_rtp_packets_lost_total", "siprec_srtp_failures_total",
                   "siprec_sip_parse_errors_total"):
        assert f"# TYPE {family} " in text
    # The exposition names routes, never a path with a number or a Call-ID in it.
    assert "7946" not in text and "nope" not in text


# ------------------------------------------------------------------------------ end to end


async def _wait_finished(db: asyncpg.Pool, call_id: str) -> uuid.UUID:
    for _ in range(200):
        row = await db.fetchrow(
            "SELECT id, state, signature FROM recordings WHERE call_id = $1", call_id)
        if row is not None and row["state"] == "complete" and row["signature"] is not None:
            return uuid.UUID(str(row["id"]))
        await asyncio.sleep(0.05)
    raise AssertionError("the recording never finished")


async def test_a_call_is_found_played_paused_and_erased_end_to_end(
    server: RunningServer, data_dir: Path
) -> None:
    db = server.db
    keys, _ = LocalKeyStore(data_dir / "keys").load_or_create(datetime.now(UTC))
    app = recording_app(db, keys=keys, media=server.media,
                        metrics=metrics_sources(server.recorder, server.media, server.sip))
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    http = Http(client)
    try:
        admin, admin_id = await make_token(db, "admin")
        gateway, _ = await make_token(db, "integration", ("+44*",))  # pauses for card payments
        agent, _ = await make_token(db, "agent", (CUSTOMER,))
        invite = interop_case("oracle_acme_1").replace(
            b"sip:9000@192.168.50.102", f"sip:{CUSTOMER}@sbc.example.com".encode())
        invite = set_header(invite, "Call-ID", f"e2e-{uuid.uuid4().hex[:12]}@192.0.2.10")
        seconds = 3.0
        left, right = tone(440, seconds, 8000), tone(1000, seconds, 8000)
        frames_l = [encode_ulaw(left[i : i + 160]) for i in range(0, len(left), 160)]
        frames_r = [encode_ulaw(right[i : i + 160]) for i in range(0, len(right), 160)]
        answers: list[Any] = []

        async def card_payment(call_id: str, session_id: str) -> None:
            await asyncio.sleep(1.0)
            answers.append(await http.json("POST", f"/api/v1/calls/{call_id}/pause", gateway))
            answers.append(await http.json("POST", f"/api/v1/calls/{call_id}/pause", gateway))
            await asyncio.sleep(1.0)
            answers.append(await http.json(
                "POST", f"/api/v1/calls/{quote(session_id, safe='')}/resume", gateway))

        async with SipTestClient("udp", sip_address(server, "udp")) as src:
            response, dialog = await src.invite(invite)
            assert response.status == 200 and dialog is not None
            ports = [m.port for m in parse_sdp(response.body).media]
            await asyncio.gather(
                send_rtp(ports[0], frames_l, 0, ssrc=0x1111),
                send_rtp(ports[1], frames_r, 0, ssrc=0x2222),
                card_payment(dialog.call_id, "AavRXwIIQj1Q39eJulTipQ=="),
            )
            await asyncio.sleep(0.3)
            assert (await src.bye(dialog)).status == 200
        rid = await _wait_finished(db, dialog.call_id)
        # The gateway's scope (+44*) matches the customer through participants.number.
        assert [(s, b.get("status")) for s, b in answers] == [
            (200, "paused"), (200, "already paused"), (200, "resumed")], (
            answers, "participants.number must hold normalize_number(aor) (filled by the recorder)")
        from api.openapi import document  # noqa: PLC0415
        from tests.integration.test_openapi import validate  # noqa: PLC0415

        for _, body in answers:
            validate(body, {"$ref": "#/components/schemas/CallControl"}, document())

        # Found by the customer's number in another spelling, within the agent's scope.
        numbers = await db.fetch("SELECT number FROM participants WHERE recording_id = $1", rid)
        assert CUSTOMER in [r["number"] for r in numbers], (
            "participants.number is not filled by the recorder (normalize_number of the AOR)")
        status, body = await http.json("GET", "/api/v1/recordings", agent,
                                       params={"participant": "0044 20 7946 0000"})
        assert status == 200 and [item["id"] for item in body["items"]] == [str(rid)]
        status, detail = await http.json("GET", f"/api/v1/recordings/{rid}?verify=true", agent)
        assert status == 200 and detail["signature"]["state"] == "verified"
        (pause,) = detail["pauses"]
        assert pause["source"] == "api"
        assert 0.8 < pause["start_s"] < 1.4 and 0.8 < pause["end_s"] - pause["start_s"] < 1.3

        # Played through the API: each party's tone on its channel, silence while paused.
        played = await http.request("GET", f"/api/v1/recordings/{rid}/audio", agent)
        assert played.status == 200
        ogg = await played.read()
        audio, rate = decode_ogg_opus(ogg)
        for channel, freq in ((0, 440), (1, 1000)):
            (before, after) = active_segments(audio[:, channel], rate, freq)
            assert abs(before[1] - pause["start_s"]) < 0.1, (channel, before, pause)
            assert abs(after[0] - pause["end_s"]) < 0.1, (channel, after, pause)
            assert before[0] < 0.1 and after[1] > seconds - 0.2
        part = await http.request("GET", f"/api/v1/recordings/{rid}/audio", agent,
                                  headers={"Range": "bytes=100-4195"})
        assert part.status == 206 and await part.read() == ogg[100:4196]

        # A copy of the file taken before the erasure, as a backup would hold it.
        path = Path(await db.fetchval("SELECT file_path FROM recordings WHERE id = $1", rid))
        backup = data_dir / "backup" / path.name
        backup.parent.mkdir()
        shutil.copy2(path, backup)

        status, body = await http.json("DELETE", f"/api/v1/recordings/{rid}", admin,
                                       json={"reason": "GDPR art. 17 request #7"})
        assert status == 200 and body["recording"]["erased_by"] == admin_id
        status, body = await http.json("GET", f"/api/v1/recordings/{rid}/audio", admin)
        assert status == 410
        assert not path.exists()
        # The backup copy, put back where the file was: the key to open it no longer exists.
        shutil.copy2(backup, path)
        await db.execute("UPDATE recordings SET file_path = $2 WHERE id = $1", rid, str(path))
        with pytest.raises(RecordingUnreadable):
            await open_recording(db, keys, rid)
        assert await db.fetchval("SELECT count(*) FROM recording_keys") == 0
        os.unlink(path)

        # Metadata gone, tombstone kept; nobody finds it by the number any more.
        assert await db.fetchval(
            "SELECT count(*) FROM participants WHERE recording_id = $1", rid) == 0
        assert await db.fetchval(
            "SELECT count(*) FROM metadata_events WHERE recording_id = $1", rid) == 0
        status, body = await http.json("GET", "/api/v1/recordings", admin,
                                       params={"participant": CUSTOMER})
        assert body["items"] == []
        status, body = await http.json("GET", f"/api/v1/recordings/{rid}", admin)
        assert (body["state"], body["call_id"], body["participants"]) == ("erased", None, [])
        assert body["duration_s"] == pytest.approx(seconds, abs=0.6)

        metrics = await (await http.request("GET", "/metrics", None)).text()
        received = next(line for line in metrics.splitlines()
                        if line.startswith("siprec_rtp_packets_received_total "))
        assert int(received.split()[1]) == len(frames_l) + len(frames_r)
    finally:
        await client.close()

    # The audit trail holds every step and verifies; changing one event breaks it.
    actions = [r["action"] for r in await db.fetch(
        "SELECT action FROM audit_events WHERE target = $1 ORDER BY seq", str(rid))]
    # The node's own: the start and the sealing of the recording, with their summary hashes.
    assert actions[0] == "recording.started" and "recording.sealed" in actions
    actions = [a for a in actions if a not in ("recording.started", "recording.sealed")]
    assert actions == ["recording.pause", "recording.pause", "recording.resume",
                       "recording.view", "recording.play", "recording.play", "recording.erase",
                       "recording.view"]
    assert (await verify_audit_chain(db)).ok
    seq = await db.fetchval(
        "SELECT seq FROM audit_events WHERE action = 'recording.erase' AND target = $1",
        str(rid))
    await db.execute("""UPDATE audit_events SET details = '{"reason": "routine"}'
                        WHERE seq = $1""", seq)
    report = await verify_audit_chain(db)
    assert not report.ok and report.first_bad_seq == seq
