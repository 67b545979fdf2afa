"""Every vendor request in ../shared/interop, sent over a real socket to a running server and
answered exactly as its .expect.json says; what the server stored is checked in PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from siprec_server.app import RunningServer
from siprec_server.siprec.sdp import parse_sdp
from storage import recordings
from tests.integration.conftest import sip_address
from tests.sip_client import INTEROP, SipTestClient, interop_case

INVITE_CASES = sorted(
    p.name.removesuffix(".expect.json")
    for p in INTEROP.glob("*.expect.json")
    if json.loads(p.read_text())["method"] == "INVITE"
    and not json.loads(p.read_text())["is_reinvite"]
)


def expectation(name: str) -> dict[str, Any]:
    return json.loads((INTEROP / f"{name}.expect.json").read_text())


def check_answer(body: bytes, expected_media: list[dict[str, Any]]) -> None:
    answer = parse_sdp(body)
    assert len(answer.media) == len(expected_media)
    for media, want in zip(answer.media, expected_media, strict=True):
        assert media.index == want["index"]
        assert media.kind == want["type"]
        assert media.proto == want["proto"]
        if want["type"] != "audio" and media.port == 0:
            assert "port 0" in want.get("alternative", ""), "declining needs the documented alternative"
            continue
        assert media.port != 0
        assert media.label == want["label"]
        assert media.direction == want["direction"]
        codec = media.codecs[0]
        assert (codec.pt, codec.name.upper(), codec.rate) == (
            want["codec"]["pt"], want["codec"]["name"].upper(), want["codec"]["rate"])
        events = [c for c in media.codecs if c.name.lower() == "telephone-event"]
        if want.get("telephone_event"):
            assert [(e.pt, e.rate) for e in events] == [
                (want["telephone_event"]["pt"], want["telephone_event"]["rate"])]
        else:
            assert events == []
        assert not any(name in ("record", "recordpref") for name, _ in media.attributes)


def normalized_aor(participant: dict[str, Any]) -> str:
    aor = participant.get("aor_normalized") or participant["aor"]
    return str(aor).split(" ")[0]


async def wait_for_state(srv: RunningServer, call_id: str, state: str) -> dict[str, Any]:
    for _ in range(100):
        ids = await recordings.find_by_call_id(srv.db, call_id)
        if ids:
            row = await recordings.get_recording(srv.db, ids[-1])
            if row and row["state"] == state:
                return row
        await asyncio.sleep(0.02)
    raise AssertionError(f"recording of {call_id} never reached {state}")


def check_stored(row: dict[str, Any], want: dict[str, Any], *, present_only: bool = False) -> None:
    metadata = want["metadata"]
    assert row["session_id"] == metadata["session_id"]
    participants = {p["participant_id"]: p for p in row["participants"]
                    if p["present"] or not present_only}
    assert set(participants) == {p["id"] for p in metadata["participants"]}
    for p in metadata["participants"]:
        assert participants[p["id"]]["aor"] == normalized_aor(p)
        if p.get("name"):
            assert participants[p["id"]]["name"] == p["name"]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("case", INVITE_CASES)
async def test_interop_invite_is_answered_as_expected(
    server: RunningServer, case: str, transport: str
) -> None:
    want = expectation(case)
    async with SipTestClient(transport, sip_address(server, transport)) as src:
        response, dialog = await src.invite(interop_case(case))
        assert response.status == 200
        assert "+sip.srs" in (response.headers.get("Contact") or "")
        assert (response.headers.get("Content-Type") or "").startswith("application/sdp")
        check_answer(response.body, want["expected_answer"]["media"])
        assert dialog is not None
        row = await wait_for_state(server, dialog.call_id, "recording")
        check_stored(row, want)
        labels = {s["m_index"]: s["label"] for s in row["streams"]}
        assert labels == {m["index"]: m["label"] for m in want["sdp_offer"]["media"]}
        assert len(row["metadata_events"]) == 1
        bye = await src.bye(dialog)
        assert bye.status == 200
        await wait_for_state(server, dialog.call_id, "complete")


async def test_partial_update_in_reinvite_merges_stream_senders(server: RunningServer) -> None:
    """rfc7865_2: Alice puts Bob on hold; the partial document replaces their send sets."""
    want = expectation("rfc7865_2")
    async with SipTestClient("tcp", sip_address(server, "tcp")) as src:
        response, dialog = await src.invite(interop_case("rfc7865_1"))
        assert response.status == 200 and dialog is not None
        first = parse_sdp(response.body)
        src.send(src.in_dialog(interop_case("rfc7865_2"), dialog))
        reinvite = await src.response("INVITE")
        assert reinvite.status == 200
        check_answer(reinvite.body, want["expected_answer"]["media"])
        again = parse_sdp(reinvite.body)
        assert [m.port for m in again.media] == [m.port for m in first.media], "ports kept"
        src.send(src.ack(dialog, dialog.cseq))
        row = await wait_for_state(server, dialog.call_id, "recording")
        assert len(row["metadata_events"]) == 2
        senders = {s["label"]: s["senders"] for s in row["streams"]}
        for stream in want["metadata"]["streams_after_merge"]:
            if stream["label"] in ("96", "98"):  # the audio m-lines that are recorded
                assert senders[stream["label"]] == stream["sent_by"]
        assert (await src.bye(dialog)).status == 200


async def test_avaya_placeholder_replaced_by_update(server: RunningServer) -> None:
    want = expectation("avaya_sbce_2")
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, dialog = await src.invite(interop_case("avaya_sbce_1"))
        assert response.status == 200 and dialog is not None
        src.send(src.in_dialog(interop_case("avaya_sbce_2"), dialog))
        update = await src.response("UPDATE")
        assert update.status == 200
        assert update.body == b""
        await asyncio.sleep(0.05)
        row = await wait_for_state(server, dialog.call_id, "recording")
        check_stored(row, want, present_only=True)
        gone = {p["participant_id"]: p for p in row["participants"]}
        for removed in want["metadata"]["participants_removed"]:
            assert gone[removed]["present"] is False
            assert gone[removed]["left_at"] is not None
        assert (await src.bye(dialog)).status == 200


async def test_broadworks_update_adds_third_participant(server: RunningServer) -> None:
    want = expectation("broadworks_2")
    update_raw = interop_case("broadworks_2")
    head, _, xml = update_raw.partition(b"\r\n\r\n")
    # The initial INVITE of that dialog: the same document with the first two participants.
    start = xml.index(b"<participant id=\"urn:uuid:5e217722")
    end = xml.index(b"</participant>", start) + len(b"</participant>")
    two_party = xml[:start] + xml[end:]
    sdp = (b"v=0\r\no=BroadWorks 1 1 IN IP4 10.21.0.40\r\ns=-\r\nc=IN IP4 10.21.0.40\r\nt=0 0\r\n"
           b"m=audio 17004 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendonly\r\na=label:1\r\n")
    body = (b"--b1\r\nContent-Type: application/sdp\r\n\r\n" + sdp +
            b"\r\n--b1\r\nContent-Type: application/rs-metadata+xml\r\n"
            b"Content-Disposition: recording-session\r\n\r\n" + two_party + b"\r\n--b1--\r\n")
    invite = (
        b"INVITE sip:10.21.0.90:5080 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.21.0.40:5060;branch=z9hG4bK-1\r\n"
        b"From: \"Jennifer Beer\"<sip:86074075017412@199.59.65.97>;tag=1038329112-1621279328101-\r\n"
        b"To: <sip:10.21.0.90:5080>\r\nCall-ID: 5f3c1a9e-2b7d@10.21.0.40\r\n"
        b"CSeq: 1038329114 INVITE\r\nContact: <sip:10.21.0.40:5060;transport=udp>;src\r\n"
        b"Max-Forwards: 69\r\nContent-Type: multipart/mixed;boundary=b1\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, dialog = await src.invite(invite)
        assert response.status == 200 and dialog is not None
        row = await wait_for_state(server, dialog.call_id, "recording")
        assert len(row["participants"]) == 2
        src.send(src.in_dialog(update_raw, dialog))
        update = await src.response("UPDATE")
        assert update.status == 200 and update.body == b""
        await asyncio.sleep(0.05)
        row = await wait_for_state(server, dialog.call_id, "recording")
        check_stored(row, want)
        assert row["streams"][0]["senders"] == want["metadata"]["streams"][0]["sent_by"]
        assert (await src.bye(dialog)).status == 200


