"""Notifications to people: key reminders and alerts go to the configured webhooks (a JSON POST)
and e-mail addresses (SMTP). A notification that cannot be delivered is logged and counted; it
never stops what sent it (the audit event is the record)."""

from __future__ import annotations

import asyncio
import smtplib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import aiohttp

from siprec_server.logs import get_logger

__all__ = ["Notifier", "NotifierCounters"]

log = get_logger("notifications")

_TIMEOUT_S = 10.0


@dataclass
class NotifierCounters:
    notifications_sent: int = 0
    notifications_failed: int = 0


@dataclass
class Notifier:
    webhooks: tuple[str, ...] = ()
    email_to: tuple[str, ...] = ()
    smtp_server: str = ""
    email_from: str = "siprec-server@localhost"
    node_id: str = ""
    counters: NotifierCounters = field(default_factory=NotifierCounters)

    async def send(self, event: str, text: str, details: dict[str, Any]) -> None:
        payload = {"event": event, "text": text, "details": details, "node_id": self.node_id,
                   "at": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
        for url in self.webhooks:
            try:
                async with aiohttp.ClientSession(
                        timeout=aiohttp.ClientTimeout(total=_TIMEOUT_S)) as session, \
                        session.post(url, json=payload) as response:
                    if response.status >= 300:
                        raise aiohttp.ClientResponseError(
                            response.request_info, (), status=response.status)
                self.counters.notifications_sent += 1
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.counters.notifications_failed += 1
                log.error("webhook_notification_failed", event=event, error=repr(exc)[:200])
        if self.email_to and self.smtp_server:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._mail, event, text)
                self.counters.notifications_sent += 1
            except (smtplib.SMTPException, OSError) as exc:
                self.counters.notifications_failed += 1
                log.error("email_notification_failed", event=event, error=repr(exc)[:200])

    def _mail(self, event: str, text: str) -> None:
        host, _, port = self.smtp_server.rpartition(":")
        message = EmailMessage()
        message["From"] = self.email_from
        message["To"] = ", ".join(self.email_to)
        message["Subject"] = f"[siprec-server {self.node_id}] {event}"
        message.set_content(text + "\n")
        with smtplib.SMTP(host, int(port), timeout=_TIMEOUT_S) as smtp:
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                smtp.starttls()
                smtp.ehlo()
            smtp.send_message(message)
