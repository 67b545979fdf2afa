"""The web interface in a real browser (headless Chromium driven by Playwright) against a real
server that records a real SIPREC call: log in, find the call by the customer's number typed
another way, see one waveform lane per channel with the pause shaded, play a few seconds, tag
it, erase it with a reason and find the erasure in the audit trail; an agent sees only the
calls of their scope; a change without the CSRF token, and a session idle too long, are
refused. Each page is photographed into var/screenshots/ (git-ignored)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from siprec_server.app import RunningServer
from siprec_server.media.codecs import encode_ulaw
from siprec_server.services.accounts import create_account
from siprec_server.siprec.sdp import parse_sdp
from storage.audit import verify_audit_chain
from storage.keys import LocalKeyStore
from tests.audio import tone
from tests.integration.conftest import sip_address
from tests.integration.test_recording import send_rtp
from tests.integration.test_recordings_api import (
    OTHER_AGENT,
    PLAINTEXT,
    _wait_finished,
    make_token,
    stored_recording,
)
from tests.sip_client import SipTestClient, interop_case, set_header

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = os.environ.get("SIPREC_TEST_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
CUSTOMER = "+442079460000"
PASSWORD = "violet anchor tundra 47 marble"
CALL_SECONDS = 5.0

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no Chromium at {CHROMIUM} (make test-deps installs it)")


async def _account(server: RunningServer, name: str, role: str,
                   scopes: tuple[str, ...] = ()) -> str:
    user, _ = await create_account(server.db, actor="test", username=name, role=role,
                                   scopes=list(scopes), password=PASSWORD)
    assert user is not None
    return str(user.id)


async def _record_call(server: RunningServer) -> tuple[uuid.UUID, str]:
    """A two-party call of CALL_SECONDS with a pause through the API from about 2 s to 3.5 s."""
    invite = interop_case("oracle_acme_1").replace(
        b"sip:9000@192.168.50.102", f"sip:{CUSTOMER}@sbc.example.com".encode()
    ).replace(b"<name>9000</name>", b"<name>Alice Customer</name>").replace(
        b"<name>1002</name>", b"<name>Agent Bob</name>")
    call_id = f"ui-{uuid.uuid4().hex[:12]}@192.0.2.10"
    invite = set_header(invite, "Call-ID", call_id)
    left, right = tone(440, CALL_SECONDS, 8000), tone(1000, CALL_SECONDS, 8000)
    frames_l = [encode_ulaw(left[i : i + 160]) for i in range(0, len(left), 160)]
    frames_r = [encode_ulaw(right[i : i + 160]) for i in range(0, len(right), 160)]
    gateway, _ = await make_token(server.db, "integration")
    host, port = server.api_address
    async with aiohttp.ClientSession(f"http://{host}:{port}") as http:

        async def card_payment(call_id: str) -> None:
            headers = {"Authorization": f"Bearer {gateway}"}
            await asyncio.sleep(2.0)
            async with http.post(f"/api/v1/calls/{call_id}/pause", headers=headers) as r:
                assert r.status == 200, await r.text()
            await asyncio.sleep(1.5)
            async with http.post(f"/api/v1/calls/{call_id}/resume", headers=headers) as r:
                assert r.status == 200, await r.text()

        async with SipTestClient("udp", sip_address(server, "udp")) as src:
            response, dialog = await src.invite(invite)
            assert response.status == 200 and dialog is not None
            ports = [m.port for m in parse_sdp(response.body).media]
            await asyncio.gather(send_rtp(ports[0], frames_l, 0, ssrc=0x1111),
                                 send_rtp(ports[1], frames_r, 0, ssrc=0x2222),
                                 card_payment(dialog.call_id))
            await asyncio.sleep(0.3)
            assert (await src.bye(dialog)).status == 200
    return await _wait_finished(server.db, dialog.call_id), dialog.call_id


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--autoplay-policy=no-user-gesture-required"])
        try:
            yield launched
        finally:
            await launched.close()


async def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def _log_in(browser: Any, base: str, username: str) -> tuple[Any, Any]:
    context = await browser.new_context(base_url=base, viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and
            "Content Security Policy" in msg.text else None)
    page.csp_errors = errors  # type: ignore[attr-defined]
    await page.goto("/ui/recordings")
    assert page.url.endswith("/ui/login")  # no session: to the log-in first
    await page.fill("#username", username)
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/ui/recordings")
    return context, page


async def test_supervisor_story_in_a_browser(server: RunningServer, browser: Any,
                                             data_dir: Path) -> None:
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    db = server.db
    host, port = server.api_address
    base = f"http://{host}:{port}"
    await _account(server, "sam", "admin")
    await _account(server, "bob", "agent", ("1002",))  # Agent Bob's own extension
    eve_id = await _account(server, "eve", "agent", ("2002",))
    rid, call_id = await _record_call(server)
    keys, _ = LocalKeyStore(data_dir / "keys").load_or_create(datetime.now(UTC))
    # A recording as made before peaks existed: audio (stand-in bytes), no peaks file.
    other = await stored_recording(db, keys, data_dir, parties=[OTHER_AGENT],
                                   started_at=datetime.now(UTC) - timedelta(hours=1),
                                   plaintext=PLAINTEXT)

    # --- log-in page, then a wrong password in words a person understands
    context = await browser.new_context(base_url=base, viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await page.goto("/ui/login")
    await _shot(page, "01-login")
    await page.fill("#username", "sam")
    await page.fill("#password", "not the password at all")
    await page.click("button[type=submit]")
    assert "Wrong user name or password" in await page.text_content("#login-problem")
    await context.close()

    context, page = await _log_in(browser, base, "sam")
    cookie = next(c for c in await context.cookies() if c["name"] == "siprec_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"

    # --- search by the customer's number written another way
    await page.fill("#q", "0044 20 7946 0000")
    await page.click("form.filters button[type=submit]")
    await page.wait_for_selector("#results")
    rows = page.locator("#results tbody tr")
    assert await rows.count() == 1
    assert "Alice Customer" in await rows.first.text_content()
    await _shot(page, "02-search")
    await page.click("#results tbody tr a")
    await page.wait_for_url(f"**/ui/recordings/{rid}")

    # --- the recording: two lanes with party names, a waveform, the pause shaded
    await page.wait_for_selector("body[data-waveform=ready]")
    lanes = page.locator(".lane")
    assert await lanes.count() == 2
    names = await page.locator(".lane-name").all_text_contents()
    assert any("Alice Customer" in n for n in names) and any("Agent Bob" in n for n in names)
    inked = await page.evaluate("""() => Array.from(document.querySelectorAll('canvas.wave'))
        .map(c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                    let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
                    return n; })""")
    assert len(inked) == 2 and all(n > 1000 for n in inked), inked
    pause = page.locator(".lane").first.locator(".pause-api")
    box = await pause.bounding_box()
    lane_box = await page.locator(".lane-body").first.bounding_box()
    assert box is not None and lane_box is not None
    assert 0.15 < box["width"] / lane_box["width"] < 0.5, (box, lane_box)  # ~1.5 s of 5 s
    assert "Agent Bob" in await page.text_content("#timeline")
    assert "Complete" in await page.text_content("#streams") or "%" in await page.text_content(
        "#streams")
    await _shot(page, "03-recording")

    # --- play a few seconds; speed and a channel's volume work
    await page.select_option("#speed", "1.5")
    await page.locator("input[data-gain='1']").fill("0.2")
    await page.evaluate("document.getElementById('audio').play()")
    for _ in range(300):  # wait_for_function would need 'unsafe-eval', which the CSP refuses
        if await page.evaluate("document.getElementById('audio').currentTime") > 1.5:
            break
        await asyncio.sleep(0.05)
    assert await page.evaluate("document.getElementById('audio').currentTime") > 1.5
    await page.evaluate("document.getElementById('audio').pause()")
    assert await page.evaluate("document.getElementById('audio').playbackRate") == 1.5

    # --- tag it, and find it by the tag
    await page.select_option("#note-kind", "tag")
    await page.fill("#note-value", "Complaint")
    await page.click("#annotate button[type=submit]")
    await page.wait_for_selector(".annotation-tag")
    assert "complaint" in await page.text_content("#annotations")
    await page.goto("/ui/recordings?tag=complaint")
    assert await page.locator("#results tbody tr").count() == 1

    # --- a scoped agent sees only the calls of their scope
    agent_context, agent = await _log_in(browser, base, "bob")
    assert await agent.locator("#results tbody tr").count() == 1
    await _shot(agent, "04-agent-search")
    eve_context, eve = await _log_in(browser, base, "eve")
    assert await eve.locator("#results tbody tr").count() == 1
    assert "Alice Customer" not in await eve.text_content("#results")
    response = await eve.goto(f"/ui/recordings/{rid}")
    assert response is not None and response.status == 404
    assert "outside the calls your account may see" in await eve.text_content("main")
    await eve.goto(f"/ui/recordings/{other}")
    assert await eve.locator(".lane").count() == 1  # an older recording: a lane, no waveform
    await eve.wait_for_selector("body[data-waveform=none]")
    await eve_context.close()

    # --- CSRF: a change without the page's token is refused, and nothing changes
    await page.goto(f"/ui/recordings/{rid}")
    refused = await page.evaluate(f"""async () => {{
        const r = await fetch('/ui/api/v1/recordings/{rid}', {{method: 'DELETE',
            headers: {{'Content-Type': 'application/json'}},
            body: JSON.stringify({{reason: 'forged'}})}});
        return [r.status, await r.json()]; }}""")
    assert refused[0] == 403 and refused[1]["error"]["code"] == "csrf_failed"
    assert await db.fetchval("SELECT state FROM recordings WHERE id = $1", rid) == "complete"
    # The session cookie is no bearer token for the API.
    async with aiohttp.ClientSession(base) as http, http.get(
            "/api/v1/users/me", headers={"Authorization": f"Bearer {cookie['value']}"}) as r:
        assert r.status == 401

    # --- erase it with a reason
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.fill("#erase-reason", "customer asked under GDPR art. 17")
    await page.click("#erase button[type=submit]")
    await page.wait_for_selector("text=Erased")
    assert await db.fetchval("SELECT state FROM recordings WHERE id = $1", rid) == "erased"
    await _shot(page, "05-erased")

    # --- the erasure, the playback and the tag are in the audit trail, by this user
    await page.goto("/ui/audit?action=recording.*")
    audit = await page.text_content("#audit")
    for action in ("recording.erase", "recording.play", "recording.view", "recording.search",
                   "recording.waveform"):
        assert action in audit, action
    assert "customer asked under GDPR art. 17" in audit and "sam" in audit
    await _shot(page, "06-audit")

    # --- the other administrator screens
    await page.goto("/ui/users")
    assert "bob" in await page.text_content("#users")
    eve_row = page.locator(f"#users tr[data-user='{eve_id}']")
    await eve_row.locator("summary").click()
    await eve_row.locator("input[name=scopes]").fill("2002, 2003")
    await eve_row.locator("button:has-text('Save')").click()
    await page.wait_for_selector(f"#users tr[data-user='{eve_id}'] td:has-text('2002, 2003')")
    assert await db.fetchval("SELECT scopes FROM users WHERE username = 'eve'") == [
        "2002", "2003"]
    await _shot(page, "07-users")
    await page.goto("/ui/compliance")
    await page.click("#retention-dry-run button")
    await page.wait_for_selector("#retention-job .job-words:has-text('Finished')")
    assert await page.locator("#retention-run").is_visible()
    await _shot(page, "08-compliance")
    await page.goto("/ui/keys")
    await page.wait_for_selector("#key-versions tbody tr")
    assert "Unsealed" in await page.text_content("#keys-status")
    await _shot(page, "09-keys")
    assert not page.csp_errors, page.csp_errors  # type: ignore[attr-defined]

    # --- a session idle longer than auth.idle_timeout is refused
    await db.execute("UPDATE api_tokens SET last_used_at = now() - interval '16 minutes', "
                     "created_at = now() - interval '16 minutes' WHERE kind = 'web'")
    await agent.goto("/ui/recordings")
    assert "/ui/login?expired=1" in agent.url
    assert "Your session ended" in await agent.text_content("main")
    expired = await agent.evaluate(
        "fetch('/ui/api/v1/recordings').then(r => r.json()).then(b => b.error.code)")
    assert expired == "session_expired"
    await agent_context.close()
    await context.close()

    # --- log-ins through the web are audited like the API's; the chain is intact
    logins = await db.fetch("SELECT details FROM audit_events WHERE action = 'auth.login'")
    details = [r["details"] if isinstance(r["details"], dict) else json.loads(r["details"])
               for r in logins]
    assert len(details) == 3 and all(d["session"] == "web" for d in details)
    assert (await verify_audit_chain(db)).ok
