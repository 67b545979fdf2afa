"""Secure delivery of sealed recordings and webhooks for recording events.

Every node runs one `DeliveryService`. Its loop:
1. fans the recording-event outbox (migration 0012, filled by triggers) out into a delivery row
   per configured destination for each sealed recording and a webhook row per subscribed
   endpoint for each event;
2. works due rows, claimed under a lease, so that a restart or another node resumes them.

A delivery encrypts the recording's audio (Ogg Opus, decrypted from our own format as it is
read) and an XML description of it to the destination's recipient — an X.509 certificate (CMS,
`openssl cms`) or an OpenPGP key (`gpg`), through the streaming encryptors of subject bundles —
and uploads the two ciphertext files. Only ciphertext touches disk; only the customer's private
key opens it. The recipient key is checked before every attempt: one that does not parse, cannot
encrypt, is expired or not yet valid fails the delivery at once (fail closed, no retry: a key does
not repair itself), visibly in the API, the audit trail and the metrics. Other failures are
retried with exponential back-off up to `max_attempts`.

A webhook is a JSON POST signed like Stripe's: `X-Siprec-Signature: t=<unix seconds>,v1=<hex
HMAC-SHA256(secret, "<t>.<raw body>")>`; receivers recompute it and refuse a timestamp more than
`SIGNATURE_TOLERANCE_S` from their clock, so a captured request cannot be replayed later. Each
attempt is signed afresh. After `max_attempts` failures a webhook is dead (a dead letter the API
lists and can retry).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from siprec_server.config import DeliveriesConfig, DeliveryDestination, WebhooksConfig
from siprec_server.logs import get_logger
from siprec_server.services.bundles import (
    MAX_PUBLIC_KEY,
    Recipient,
    RecipientError,
    check_openpgp_key,
    open_encryptor,
)
from siprec_server.services.delivery_targets import DeliveryTarget, TargetError, target_for
from siprec_server.services.periodic import Periodic
from storage import deliveries as store
from storage.audit import AuditEvent, record_audit
from storage.keys import KeyRing
from storage.playback import RecordingUnreadable, open_recording
from storage.search import FoundRecording, find_recording

__all__ = [
    "SIGNATURE_HEADER",
    "SIGNATURE_TOLERANCE_S",
    "DeliveryCounters",
    "DeliveryService",
    "check_recipient",
    "sign_webhook",
    "verify_webhook",
]

log = get_logger("deliveries")

SIGNATURE_HEADER = "X-Siprec-Signature"
SIGNATURE_TOLERANCE_S = 300
FAN_OUT_BATCH = 200

RecordingRenderer = Callable[[FoundRecording], dict[str, Any]]


@dataclass
class DeliveryCounters:
    deliveries_delivered: int = 0
    deliveries_failed_attempts: int = 0
    deliveries_given_up: int = 0
    recipient_key_refusals: int = 0
    """Deliveries failed closed for a recipient key that was invalid or expired."""
    delivered_bytes: int = 0
    webhooks_delivered: int = 0
    webhooks_failed_attempts: int = 0
    webhooks_dead: int = 0


# ------------------------------------------------------------------------------ recipients


@dataclass(frozen=True, slots=True)
class CheckedRecipient:
    kind: str
    """cms | openpgp"""
    public_key: str
    fingerprint: str

    @property
    def suffix(self) -> str:
        return ".p7m" if self.kind == "cms" else ".gpg"


def _check_certificate(pem: str, now: datetime) -> str:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise RecipientError("the X.509 certificate does not parse") from None
    if now < cert.not_valid_before_utc:
        raise RecipientError(f"the certificate is not valid before "
                             f"{cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise RecipientError(f"the certificate expired on {cert.not_valid_after_utc.isoformat()}")
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def _check_openpgp(armored: str, now: datetime) -> str:
    fingerprint = check_openpgp_key(armored)  # one public key that can encrypt at all
    home = Path(tempfile.mkdtemp(prefix="siprec-gpg-"))
    home.chmod(0o700)
    try:
        done = subprocess.run(
            ["gpg", "--batch", "--homedir", str(home), "--with-colons", "--show-keys"],
            input=armored.encode("utf-8"), capture_output=True, timeout=30, check=False)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    usable = False
    expired_at: list[int] = []
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        fields = line.split(":")
        if fields[0] not in ("pub", "sub") or len(fields) < 12:
            continue
        validity, expires, caps = fields[1], fields[6], fields[11]
        if "e" not in caps or validity in ("r", "d", "i"):
            continue
        if validity == "e" or (expires and int(expires) <= now.timestamp()):
            if expires:
                expired_at.append(int(expires))
            continue
        usable = True
    if not usable:
        when = (f" on {datetime.fromtimestamp(max(expired_at), UTC).isoformat()}"
                if expired_at else "")
        raise RecipientError(f"the OpenPGP key has no valid encryption key (expired{when}, "
                             "revoked or disabled)")
    return "openpgp:" + fingerprint


def check_recipient(text: str, now: datetime) -> CheckedRecipient:
    """The recipient a destination's key file names, checked for use at `now`; RecipientError
    for a key that is not usable (and so must not be delivered to)."""
    if len(text) > MAX_PUBLIC_KEY:
        raise RecipientError("the recipient key file is too large")
    if "-----BEGIN CERTIFICATE-----" in text:
        return CheckedRecipient("cms", text, _check_certificate(text, now))
    if "-----BEGIN PGP PUBLIC KEY BLOCK-----" in text:
        return CheckedRecipient("openpgp", text, _check_openpgp(text, now))
    raise RecipientError("neither a PEM X.509 certificate nor an armored OpenPGP public key")


# ------------------------------------------------------------------------------ webhooks


def sign_webhook(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body,
                   hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_webhook(secret: str, body: bytes, header: str, now: int,
                   tolerance: int = SIGNATURE_TOLERANCE_S) -> bool:
    """What a receiver does (a reference for integrators, and for our tests)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign_webhook(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def _payload(event: store.RecordingEvent) -> dict[str, Any]:
    """What a CRM gets: the event and ids to correlate it with; no names or numbers (it asks
    the API, with its own permissions, for more). A restricted or erased recording names only
    its id."""
    payload: dict[str, Any] = {
        "event_id": f"evt-{event.seq}", "event": f"recording.{event.event}",
        "recording_id": str(event.recording_id),
        "at": event.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "restricted": event.restricted,
    }
    if not event.restricted and event.event != "erased" and event.state != "erased":
        payload["call_id"] = event.call_id
        payload["session_id"] = event.session_id
    return payload


# ------------------------------------------------------------------------------ metadata


def _xml_value(parent: ET.Element, name: str, value: Any) -> None:
    tag = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "value"
    if tag[0].isdigit() or tag[0] == "-":
        tag = "_" + tag
    child = ET.SubElement(parent, tag)
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _xml_value(child, str(key), sub)
    elif isinstance(value, list | tuple):
        for item in value:
            _xml_value(child, "item", item)
    elif value is None:
        child.set("nil", "true")
    else:
        child.text = str(value).lower() if isinstance(value, bool) else str(value)


def metadata_xml(detail: Mapping[str, Any], documents: Sequence[Mapping[str, Any]]) -> bytes:
    """The delivered description of a recording: the API's detail view as XML, and every
    rs-metadata document the SRC sent, as received (escaped)."""
    root = ET.Element("recording", {"xmlns": "urn:x-siprec-server:delivery:1",
                                    "id": str(detail.get("id"))})
    for key, value in detail.items():
        _xml_value(root, key, value)
    src = ET.SubElement(root, "src_metadata")
    for doc in documents:
        element = ET.SubElement(src, "document", {
            "method": str(doc["sip_method"]), "datamode": str(doc["datamode"]),
            "received_at": doc["received_at"].astimezone(UTC).isoformat()})
        element.text = str(doc["document"])
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body


# ------------------------------------------------------------------------------ the service


@dataclass
class DeliveryService:
    db: asyncpg.Pool
    keys: KeyRing
    deliveries: DeliveriesConfig
    webhooks: WebhooksConfig
    node_id: str
    work_dir: Path
    describe: RecordingRenderer
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    counters: DeliveryCounters = field(default_factory=DeliveryCounters)
    _loop: Periodic | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return bool(self.deliveries.destinations or self.webhooks.endpoints)

    def destination(self, name: str) -> DeliveryDestination | None:
        return self.deliveries.destinations.get(name)

    # -------------------------------------------------------------- loop

    def start(self) -> None:
        # Also without destinations or endpoints: the outbox is drained either way.
        if self._loop is None:
            self._loop = Periodic(self.run_until_idle, self.deliveries.poll_interval, log=log,
                                  failure="delivery_poll_failed")
            self._loop.start()

    def wake(self) -> None:
        if self._loop is not None:
            self._loop.wake()

    async def close(self) -> None:
        if self._loop is not None:
            await self._loop.close()
            self._loop = None

    async def run_until_idle(self) -> int:
        """Fan out and work until nothing is due now; how many rows were worked."""
        worked = 0
        while True:
            await self.fan_out()
            did = await self.deliver_one() + await self.send_one()
            if not did:
                return worked
            worked += did

    async def fan_out(self) -> int:
        destinations = {name: d.include_restricted
                        for name, d in self.deliveries.destinations.items()}
        endpoints = {name: (frozenset(e.events), _payload)
                     for name, e in self.webhooks.endpoints.items()}
        events = await store.fan_out(self.db, now=self.clock(), batch=FAN_OUT_BATCH,
                                     destinations=destinations, endpoints=endpoints)
        return len(events)

    def _backoff(self, attempts: int, base: int, ceiling: int) -> timedelta:
        return timedelta(seconds=min(ceiling, base * 2 ** max(0, attempts - 1)))

    # -------------------------------------------------------------- deliveries

    async def deliver_one(self) -> int:
        if not self.deliveries.destinations:
            return 0
        delivery = await store.claim_delivery(
            self.db, destinations=list(self.deliveries.destinations), now=self.clock(),
            lease=timedelta(seconds=self.deliveries.lease), node_id=self.node_id)
        if delivery is None:
            return 0
        await self._attempt(delivery)
        return 1

    async def _attempt(self, delivery: store.Delivery) -> None:
        dest = self.deliveries.destinations[delivery.destination]
        rid = delivery.recording_id
        now = self.clock()
        try:
            text = await asyncio.get_running_loop().run_in_executor(
                None, lambda: Path(dest.recipient_key_file).read_text("utf-8"))
            recipient = await asyncio.get_running_loop().run_in_executor(
                None, check_recipient, text, now)
        except (OSError, UnicodeDecodeError, RecipientError) as exc:
            # Fail closed: nothing leaves unencrypted, nor encrypted to a key that must not be
            # used any more. Retried only when an operator asks (after fixing the key).
            self.counters.recipient_key_refusals += 1
            error = f"recipient key refused: {exc}"
            await store.delivery_failed(self.db, delivery.id, now=now, error=error,
                                        retry_at=None)
            await self._audit(rid, "failure", delivery, {"error": error[:300]})
            log.error("delivery_recipient_refused", recording_id=str(rid),
                      destination=delivery.destination, error=str(exc)[:200])
            return
        found = await find_recording(self.db, rid, None)
        if found is None or found.row["state"] == "erased":
            await store.delivery_failed(self.db, delivery.id, now=now,
                                        error="the recording was erased", retry_at=None,
                                        state="cancelled")
            return
        work = self.work_dir / str(delivery.id)
        try:
            files = await self._encrypt(found, recipient, work)
            target: DeliveryTarget = target_for(dest)
            await target.put([(name, path) for name, path, _size, _digest in files])
        except (TargetError, RecordingUnreadable, OSError, RuntimeError) as exc:
            await self._retry_or_give_up(delivery, f"{type(exc).__name__}: {exc}",
                                         recipient.fingerprint)
            return
        finally:
            shutil.rmtree(work, ignore_errors=True)
        described = [{"name": name, "bytes": size, "sha256": digest}
                     for name, _path, size, digest in files]
        await store.delivery_done(self.db, delivery.id, now=self.clock(), files=described,
                                  fingerprint=recipient.fingerprint)
        self.counters.deliveries_delivered += 1
        self.counters.delivered_bytes += sum(size for _n, _p, size, _d in files)
        await self._audit(rid, "success", delivery,
                          {"recipient": recipient.fingerprint, "files": described})
        log.info("recording_delivered", recording_id=str(rid),
                 destination=delivery.destination)

    async def _retry_or_give_up(self, delivery: store.Delivery, error: str,
                                fingerprint: str) -> None:
        self.counters.deliveries_failed_attempts += 1
        now = self.clock()
        retry_at = None
        if delivery.attempts < self.deliveries.max_attempts:
            retry_at = now + self._backoff(delivery.attempts, self.deliveries.retry_base,
                                           self.deliveries.retry_max)
        else:
            self.counters.deliveries_given_up += 1
        await store.delivery_failed(self.db, delivery.id, now=now, error=error,
                                    retry_at=retry_at, fingerprint=fingerprint)
        log.warning("delivery_attempt_failed", recording_id=str(delivery.recording_id),
                    destination=delivery.destination, attempts=delivery.attempts,
                    given_up=retry_at is None, error=error[:200])
        if retry_at is None:
            await self._audit(delivery.recording_id, "failure", delivery,
                              {"error": error[:300], "attempts": delivery.attempts})

    async def _encrypt(self, found: FoundRecording, recipient: CheckedRecipient,
                       work: Path) -> list[tuple[str, Path, int, str]]:
        """The two ciphertext files: audio and metadata, each encrypted to the recipient."""
        rid = found.id
        opened = await open_recording(self.db, self.keys, rid)
        documents = await store.metadata_documents(self.db, rid)
        xml = metadata_xml(self.describe(found), documents)
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = Recipient(recipient.kind, {"public_key": recipient.public_key})

        def encrypt(name: str, pieces: Any) -> tuple[str, Path, int, str]:
            path = work / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                encryptor = open_encryptor(target, out)
                try:
                    for piece in pieces:
                        encryptor.write(piece)
                except BaseException:
                    abort = getattr(encryptor, "abort", None)
                    if abort is not None:
                        abort()
                    raise
                encryptor.close()
            digest = hashlib.sha256()
            with open(path, "rb") as done:
                while chunk := done.read(1 << 20):
                    digest.update(chunk)
            return name, path, path.stat().st_size, digest.hexdigest()

        loop = asyncio.get_running_loop()
        audio = await loop.run_in_executor(
            None, encrypt, f"{rid}.ogg{recipient.suffix}", opened.read())
        meta = await loop.run_in_executor(
            None, encrypt, f"{rid}.xml{recipient.suffix}", iter([xml]))
        # Audio first: the metadata file's arrival tells a pick-up job the pair is complete.
        return [audio, meta]

    async def _audit(self, rid: UUID, outcome: str, delivery: store.Delivery,
                     details: Mapping[str, Any]) -> None:
        await record_audit(self.db, AuditEvent(
            actor=f"node:{self.node_id}", action="recording.deliver", outcome=outcome,
            target=str(rid), source=f"delivery:{delivery.destination}",
            details={"destination": delivery.destination, "attempts": delivery.attempts,
                     **details}))

    # -------------------------------------------------------------- webhooks

    async def send_one(self) -> int:
        if not self.webhooks.endpoints:
            return 0
        hook = await store.claim_webhook(self.db, endpoints=list(self.webhooks.endpoints),
                                         now=self.clock(),
                                         lease=timedelta(seconds=self.webhooks.timeout * 3))
        if hook is None:
            return 0
        endpoint = self.webhooks.endpoints[hook.endpoint]
        body = json.dumps(hook.payload, separators=(",", ":"), sort_keys=True).encode()
        timestamp = int(datetime.now(UTC).timestamp())
        headers = {"Content-Type": "application/json", "User-Agent": "siprec-server",
                   "X-Siprec-Event": hook.event, "X-Siprec-Delivery": str(hook.id),
                   SIGNATURE_HEADER: sign_webhook(endpoint.secret, body, timestamp)}
        status: int | None = None
        error = ""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                    total=self.webhooks.timeout)) as session, \
                    session.post(endpoint.url, data=body, headers=headers) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if status is not None and 200 <= status < 300:
            await store.webhook_done(self.db, hook.id, now=self.clock(), status=status)
            self.counters.webhooks_delivered += 1
            return 1
        self.counters.webhooks_failed_attempts += 1
        now = self.clock()
        retry_at = None
        if hook.attempts < self.webhooks.max_attempts:
            retry_at = now + self._backoff(hook.attempts, self.webhooks.retry_base,
                                           self.webhooks.retry_max)
        else:
            self.counters.webhooks_dead += 1
        await store.webhook_failed(self.db, hook.id, now=now, status=status,
                                   error=error or f"HTTP {status}", retry_at=retry_at)
        log.warning("webhook_failed", endpoint=hook.endpoint, recording_event=hook.event,
                    status=status, dead=retry_at is None)
        return 1
