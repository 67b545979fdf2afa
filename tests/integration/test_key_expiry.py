"""The cryptoperiod watch with an injected clock: a reminder 15 days before a master key version is
due (audit event, metric, API field, webhook, e-mail), once; after the due date the key keeps
working, and an alert goes out every day."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from api.auth_api import create_account
from siprec_server.app import RunningServer, start_server
from siprec_server.config import load_config
from storage import key_versions as kv
from tests.integration.conftest import server_env
from tests.integration.test_interop import wait_for_state
from tests.integration.test_key_custody import PASSWORD, Api, record_call
from tests.integration.test_recordings_api import CHEAP


class FakeSmtp:
    """Just enough SMTP for smtplib to hand over a message."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _session(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake ESMTP\r\n")
        while line := await reader.readline():
            command = line.decode().strip().upper()
            if command.startswith(("EHLO", "HELO")):
                writer.write(b"250 fake\r\n")
            elif command == "DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                body = []
                while (data := await reader.readline()) not in (b".\r\n", b""):
                    body.append(data.decode())
                self.messages.append("".join(body))
                writer.write(b"250 queued\r\n")
            elif command == "QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def receivers() -> AsyncIterator[tuple[list[dict[str, Any]], FakeSmtp, int]]:
    hooks: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        hooks.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    smtp = FakeSmtp()
    await smtp.start()
    try:
        yield hooks, smtp, port
    finally:
        await smtp.close()
        await runner.cleanup()


@pytest.fixture
async def server(db_dsn: str, data_dir: Path,
                 receivers: tuple[list[dict[str, Any]], FakeSmtp, int]
                 ) -> AsyncIterator[RunningServer]:
    _hooks, smtp, hook_port = receivers
    env = server_env(db_dsn, data_dir, media__bind_address="127.0.0.1",
                     keys__notify_webhooks=f"http://127.0.0.1:{hook_port}/hook",
                     keys__notify_email="keyops@example.com",
                     keys__smtp_server=f"127.0.0.1:{smtp.port}")
    srv = await start_server(load_config(env=env))
    try:
        yield srv
    finally:
        await srv.stop()


async def test_reminder_before_the_cryptoperiod_ends_then_a_daily_alert(
    server: RunningServer, receivers: tuple[list[dict[str, Any]], FakeSmtp, int],
    db_pool: Any,
) -> None:
    hooks, smtp, _ = receivers
    service = server.keys
    assert service is not None
    (version,) = await kv.list_versions(db_pool)
    activated = version.activated_at or version.created_at
    api = Api(server)
    try:
        await create_account(server.db, actor="test", username="keyadmin", role="admin",
                             password=PASSWORD, hashing=CHEAP)
        token = await api.login("keyadmin")

        def at(days: float) -> None:
            service.clock = lambda: activated + timedelta(days=days)

        at(349)  # 16 days before: nothing yet
        assert await service.check_cryptoperiods() == []
        at(351)
        (reminder,) = await service.check_cryptoperiods()
        assert reminder["action"] == "key.rotation_due" and reminder["age_days"] == 351
        assert await service.check_cryptoperiods() == []  # once, not on every check
        status, keys, _ = await api.call("GET", "/api/v1/keys", token)
        assert keys["versions"][0]["rotation_due"] is True
        assert keys["versions"][0]["expired"] is False
        assert keys["versions"][0]["age_days"] == 351

        at(366)  # past due: an alert, and the key keeps working
        (alert,) = await service.check_cryptoperiods()
        assert alert["action"] == "key.cryptoperiod_expired"
        at(366.5)
        assert await service.check_cryptoperiods() == []  # not twice in one day
        at(367.1)
        (again,) = await service.check_cryptoperiods()
        assert again["action"] == "key.cryptoperiod_expired"
        status, keys, _ = await api.call("GET", "/api/v1/keys", token)
        assert keys["versions"][0]["expired"] is True
        call_id, _ = await record_call(server)  # recording never stops
        await wait_for_state(server, call_id, "complete")

        assert [h["event"] for h in hooks] == ["key.rotation_due", "key.cryptoperiod_expired",
                                               "key.cryptoperiod_expired"]
        assert hooks[0]["details"]["version"] == version.id
        assert len(smtp.messages) == 3
        assert "Subject: [siprec-server test-node] key.rotation_due" in smtp.messages[0]
        assert "keyops@example.com" in smtp.messages[0]
        events = await db_pool.fetch(
            "SELECT action, outcome FROM audit_events WHERE action IN "
            "('key.rotation_due', 'key.cryptoperiod_expired') ORDER BY seq")
        assert [(e["action"], e["outcome"]) for e in events] == [
            ("key.rotation_due", "success"), ("key.cryptoperiod_expired", "alert"),
            ("key.cryptoperiod_expired", "alert")]
        async with api.session.get(api.base + "/metrics") as response:
            metrics = await response.text()
        assert "siprec_keys_rotation_reminders_total 1" in metrics
        assert "siprec_keys_cryptoperiod_alerts_total 2" in metrics
        assert "siprec_notifications_notifications_sent_total 6" in metrics
    finally:
        await api.close()
