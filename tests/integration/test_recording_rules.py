"""Recording rules, opt-out and restricted recordings on real SIPREC calls over UDP: a
do-not-record call is answered cleanly and leaves nothing (no row, no key, no file, no RTP
socket), a metadata-only call keeps who and when but no audio, a caller's opt-out stops the
recording and keeps or crypto-shreds what was recorded, and a restricted recording does not
exist for a user without the restricted permission."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from siprec_server.app import RunningServer
from siprec_server.media.codecs import encode_ulaw
from siprec_server.siprec.sdp import parse_sdp
from storage import recordings
from storage.playback import read_all
from tests.audio import decode_ogg_opus, tone, tone_level_db
from tests.integration.conftest import sip_address
from tests.integration.test_interop import wait_for_state
from tests.integration.test_recording import send_rtp
from tests.integration.test_recordings_api import make_token
from tests.sip_client import SipTestClient, interop_case


class Api:
    def __init__(self, server: RunningServer, session: aiohttp.ClientSession) -> None:
        host, port = server.api_address
        self.base = f"http://{host}:{port}"
        self.session = session

    async def call(self, method: str, path: str, token: str, **kwargs: Any
                   ) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, headers={
                "Authorization": f"Bearer {token}"}, **kwargs) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.read()


@pytest.fixture
async def api(server: RunningServer) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(server, session)


def frames(freq: float, seconds: float) -> list[bytes]:
    pcm = tone(freq, seconds, 8000)
    return [encode_ulaw(pcm[i : i + 160]) for i in range(0, len(pcm), 160)]


async def rule(api: Api, token: str, **body: Any) -> dict[str, Any]:
    status, created = await api.call("POST", "/api/v1/recording-rules", token, json=body)
    assert status == 201, created
    return created  # type: ignore[no-any-return]


def recording_files(server: RunningServer) -> list[Path]:
    return [p for p in (server.config.server.data_dir / "recordings").rglob("*") if p.is_file()]


async def test_a_do_not_record_call_gets_a_clean_answer_and_leaves_nothing(
        server: RunningServer, api: Api) -> None:
    admin, _ = await make_token(server.db, "admin")
    created = await rule(api, admin, name="EAP line", action="do_not_record",
                         match={"parties": ["1002"]})
    sockets_before = len(server.media._sockets)
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, dialog = await src.invite(interop_case("oracle_acme_1"))
        assert response.status == 200 and dialog is not None
        answer = parse_sdp(response.body)
        # One m-line per offered one, each declined: the SRC has nowhere to send RTP.
        assert len(answer.media) == 2 and all(m.port == 0 for m in answer.media)
        assert [m.label for m in answer.media] == ["16777227", "16777228"]
        assert all(m.direction == "inactive" for m in answer.media)
        assert len(server.media._sockets) == sockets_before  # no RTP socket was opened
        # A re-INVITE is answered the same way, within the dialog.
        reinvite = src.in_dialog(interop_case("oracle_acme_1"), dialog)
        src.send(reinvite)
        again = await src.response("INVITE")
        assert again.status == 200
        assert all(m.port == 0 for m in parse_sdp(again.body).media)
        src.send(src.ack(dialog, dialog.cseq))
        assert (await src.bye(dialog)).status == 200
    assert await recordings.find_by_call_id(server.db, dialog.call_id) == []
    assert await server.db.fetchval("SELECT count(*) FROM recordings") == 0
    assert await server.db.fetchval("SELECT count(*) FROM recording_keys") == 0
    assert await server.db.fetchval("SELECT count(*) FROM metadata_events") == 0
    assert recording_files(server) == []
    assert server.media.packet_totals().get("packets_received", 0) == 0
    assert server.recorder.counters.sessions_not_recorded == 1
    events = await server.db.fetch(
        "SELECT target, details FROM audit_events WHERE action = 'recording.not_recorded'")
    assert [e["target"] for e in events] == [f"rule:{created['id']}"]
    assert server.recorder.active_sessions == 0


async def test_metadata_only_by_src_metadata_keeps_who_and_when_but_no_audio(
        server: RunningServer, api: Api) -> None:
    admin, _ = await make_token(server.db, "admin")
    # Metaswitch says callType originating: the 0009 extraction makes that "outbound".
    await rule(api, admin, name="Outbound sales", action="metadata_only",
               match={"direction": "outbound",
                      "metadata": {"businessGroup": "MiaRec Inc. - 00004803"}})
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, dialog = await src.invite(interop_case("metaswitch_1"))
        assert response.status == 200 and dialog is not None
        assert all(m.port == 0 for m in parse_sdp(response.body).media)
        assert (await src.bye(dialog)).status == 200
    row = await wait_for_state(server, dialog.call_id, "complete")
    assert row["recording_mode"] == "metadata_only"
    assert row["file_path"] is None and row["direction"] == "outbound"
    assert {p["aor"] for p in row["participants"]} == {"tel:7602922410", "tel:7602922411"}
    assert await server.db.fetchval("SELECT count(*) FROM recording_keys") == 0
    assert recording_files(server) == []
    status, detail = await api.call("GET", f"/api/v1/recordings/{row['id']}", admin)
    assert status == 200 and detail["recording_mode"] == "metadata_only"
    assert detail["has_audio"] is False
    status, body = await api.call("GET", f"/api/v1/recordings/{row['id']}/audio", admin)
    assert status == 404 and body["error"]["code"] == "no_audio"


async def _recorded_then_opted_out(server: RunningServer, api: Api, keep: bool
                                   ) -> tuple[dict[str, Any], Any]:
    integration, _ = await make_token(server.db, "integration")
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, dialog = await src.invite(interop_case("oracle_acme_1"))
        assert response.status == 200 and dialog is not None
        ports = [m.port for m in parse_sdp(response.body).media]
        await send_rtp(ports[0], frames(440, 1.0), 0, ssrc=0x1111)
        await asyncio.sleep(0.2)
        status, body = await api.call("POST", f"/api/v1/calls/{dialog.call_id}/opt-out",
                                      integration, json={"keep": keep})
        assert status == 200, body
        # The SRC keeps sending: nothing of it may be recorded any more.
        await send_rtp(ports[0], frames(1000, 0.5), 0, ssrc=0x1111)
        # A re-INVITE now finds every stream declined.
        src.send(src.in_dialog(interop_case("oracle_acme_1"), dialog))
        again = await src.response("INVITE")
        assert again.status == 200 and all(m.port == 0 for m in parse_sdp(again.body).media)
        src.send(src.ack(dialog, dialog.cseq))
        assert (await src.bye(dialog)).status == 200
    return body, dialog


async def test_opt_out_with_keep_stops_the_recording_and_keeps_what_was_recorded(
        server: RunningServer, api: Api) -> None:
    body, dialog = await _recorded_then_opted_out(server, api, keep=True)
    assert body["recordings"][0]["keep"] is True and body["recordings"][0]["erased"] is False
    row = await wait_for_state(server, dialog.call_id, "complete")
    assert row["end_reason"] == "opt-out" and row["opted_out_at"] is not None
    for _ in range(50):
        row = await recordings.get_recording(server.db, row["id"])
        if row and row["signature"] is not None:
            break
        await asyncio.sleep(0.05)
    assert row is not None and row["signature"] is not None
    audio, rate = decode_ogg_opus(await read_all(server.db, server.media._keys, row["id"]))
    assert tone_level_db(audio[:, 0], rate, 440) > -30
    # What the SRC sent after the opt-out is not in the recording.
    assert tone_level_db(audio[:, 0], rate, 1000) < -50
    assert audio.shape[0] / rate < 1.6
    events = await server.db.fetch(
        "SELECT details FROM audit_events WHERE action = 'recording.opt_out' AND target = $1",
        str(row["id"]))
    assert len(events) == 1


async def test_opt_out_with_discard_crypto_shreds_and_the_tombstone_says_why(
        server: RunningServer, api: Api) -> None:
    admin, _ = await make_token(server.db, "admin")
    body, dialog = await _recorded_then_opted_out(server, api, keep=False)
    assert body["recordings"][0]["erased"] is True
    rid = body["recordings"][0]["id"]
    row = await server.db.fetchrow("SELECT * FROM recordings WHERE id = $1::uuid", rid)
    assert row["state"] == "erased" and row["call_id"] is None
    assert row["erasure_reason"] == "caller withdrew consent (opt-out)"
    assert await server.db.fetchval(
        "SELECT count(*) FROM recording_keys WHERE recording_id = $1::uuid", rid) == 0
    assert await server.db.fetchval(
        "SELECT count(*) FROM participants WHERE recording_id = $1::uuid", rid) == 0
    # The re-INVITE after the discard brought metadata: none of it was stored.
    assert await server.db.fetchval(
        "SELECT count(*) FROM metadata_events WHERE recording_id = $1::uuid", rid) == 0
    assert recording_files(server) == []
    status, detail = await api.call("GET", f"/api/v1/recordings/{rid}", admin)
    assert status == 200 and detail["state"] == "erased"
    assert detail["erasure_reason"] == "caller withdrew consent (opt-out)"
    status, _ = await api.call("GET", f"/api/v1/recordings/{rid}/audio", admin)
    assert status == 410


async def test_a_restricted_recording_does_not_exist_without_the_permission(
        server: RunningServer, api: Api) -> None:
    admin, _ = await make_token(server.db, "admin")
    await rule(api, admin, name="HR line", action="record", restricted=True,
               match={"parties": ["9000"]})
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, dialog = await src.invite(interop_case("oracle_acme_1"))
        assert response.status == 200 and dialog is not None
        ports = [m.port for m in parse_sdp(response.body).media]
        await send_rtp(ports[0], frames(440, 0.5), 0, ssrc=0x1111)
        assert (await src.bye(dialog)).status == 200
    row = await wait_for_state(server, dialog.call_id, "complete")
    for _ in range(50):
        if (await recordings.get_recording(server.db, row["id"]) or {}).get("signature"):
            break
        await asyncio.sleep(0.05)
    rid = str(row["id"])
    supervisor, _ = await make_token(server.db, "supervisor")
    auditor, _ = await make_token(server.db, "auditor")
    cleared, cleared_id = await make_token(server.db, "supervisor")
    await server.db.execute("UPDATE users SET grants = '{restricted}' WHERE id = $1::uuid",
                            cleared_id)
    # Someone touches it, so the audit trail has events targeting it.
    assert (await api.call("GET", f"/api/v1/recordings/{rid}", admin))[0] == 200

    for token in (supervisor, auditor):
        status, page = await api.call("GET", "/api/v1/recordings?participant=9000", token)
        assert status == 200 and page["items"] == []
        status, page = await api.call("GET", "/api/v1/recordings", token)
        assert rid not in {i["id"] for i in page["items"]}
        status, body = await api.call("GET", f"/api/v1/recordings/{rid}", token)
        assert status == 404 and body["error"]["code"] == "not_found"
        status, body = await api.call("GET", f"/api/v1/recordings/{rid}/annotations", token)
        assert status == 404
    status, body = await api.call("GET", f"/api/v1/recordings/{rid}/audio", supervisor)
    assert status == 404
    status, raw = await api.call("GET", "/api/v1/recordings?format=csv", supervisor)
    assert status == 200 and rid not in raw.decode()
    status, body = await api.call("GET", f"/api/v1/audit?target={rid}", auditor)
    assert status == 200 and body["items"] == []
    status, body = await api.call("POST", f"/api/v1/recordings/{rid}/restricted", supervisor,
                                  json={"restricted": False})
    assert status == 403  # supervisors do not manage rules

    # With the grant, or as an admin, it is there everywhere.
    for token in (cleared, admin):
        status, page = await api.call("GET", "/api/v1/recordings?participant=9000", token)
        assert [i["id"] for i in page["items"]] == [rid]
        assert page["items"][0]["restricted"] is True
        assert (await api.call("GET", f"/api/v1/recordings/{rid}", token))[0] == 200
        status, ogg = await api.call("GET", f"/api/v1/recordings/{rid}/audio", token)
        assert status == 200 and ogg[:4] == b"OggS"
        status, raw = await api.call("GET", "/api/v1/recordings?format=csv", token)
        rows = list(csv.reader(io.StringIO(raw.decode())))
        assert rid in {r[0] for r in rows[1:]}
    status, body = await api.call("GET", f"/api/v1/audit?target={rid}", admin)
    assert status == 200 and body["items"]

    # Lifting the restriction makes it an ordinary recording again.
    status, body = await api.call("POST", f"/api/v1/recordings/{rid}/restricted", admin,
                                  json={"restricted": False})
    assert status == 200 and body["changed"] is True
    assert (await api.call("GET", f"/api/v1/recordings/{rid}", supervisor))[0] == 200


async def test_rules_are_managed_through_the_api_and_bad_ones_are_refused(
        server: RunningServer, api: Api) -> None:
    admin, _ = await make_token(server.db, "admin")
    supervisor, _ = await make_token(server.db, "supervisor")
    status, _ = await api.call("GET", "/api/v1/recording-rules", supervisor)
    assert status == 403
    for bad in ({"name": "x", "action": "maybe"},
                {"name": "x", "action": "record", "match": {"parties": ["not a number"]}},
                {"name": "x", "action": "record", "opt_out": "sometimes"},
                {"action": "record"}):
        status, body = await api.call("POST", "/api/v1/recording-rules", admin, json=bad)
        assert status == 400, bad
    created = await rule(api, admin, name="Trading", action="record", priority=10,
                         match={"parties": ["+4420794600*"]}, opt_out="keep")
    status, body = await api.call("POST", "/api/v1/recording-rules", admin,
                                  json={"name": "trading", "action": "record"})
    assert status == 409
    status, body = await api.call("PATCH", f"/api/v1/recording-rules/{created['id']}", admin,
                                  json={"action": "metadata_only"})
    assert status == 200 and body["action"] == "metadata_only" and body["priority"] == 10
    status, body = await api.call("GET", "/api/v1/recording-rules", admin)
    assert [r["name"] for r in body["items"]] == ["Trading"]
    assert body["default_action"] == "record"
    status, body = await api.call("DELETE", f"/api/v1/recording-rules/{created['id']}", admin)
    assert status == 200
    status, body = await api.call("GET", f"/api/v1/recording-rules/{created['id']}", admin)
    assert status == 404
    actions = [r["action"] for r in await server.db.fetch(
        "SELECT action FROM audit_events WHERE action LIKE 'rule.%' AND outcome = 'success' "
        "ORDER BY seq")]
    assert actions == ["rule.create", "rule.change", "rule.delete"]


async def test_opt_out_of_an_unknown_or_ended_call_is_refused(server: RunningServer,
                                                              api: Api) -> None:
    integration, _ = await make_token(server.db, "integration")
    status, body = await api.call("POST", "/api/v1/calls/nope@example/opt-out", integration,
                                  json={})
    assert status == 404
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, dialog = await src.invite(interop_case("rfc7866_1"))
        assert response.status == 200 and dialog is not None
        assert (await src.bye(dialog)).status == 200
    await wait_for_state(server, dialog.call_id, "complete")
    status, body = await api.call("POST", f"/api/v1/calls/{dialog.call_id}/opt-out",
                                  integration, json={"keep": "yes"})
    assert status == 400
    status, body = await api.call("POST", f"/api/v1/calls/{dialog.call_id}/opt-out",
                                  integration, json={"keep": True})
    assert status == 409 and body["error"]["code"] == "call_ended"
