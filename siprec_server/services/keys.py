"""Key custody operations the API and the command line share: status, unseal, dual-control
ceremonies (init, rotate, re-encrypt), the jobs they start (re-wrap every data key under the new
master key version and destroy the old one; re-encrypt recordings under fresh data keys), and the
cryptoperiod watch (a reminder before a version is due, an alert every day once it is overdue).

Every operation writes an audit event (`key.*`). A ceremony needs `needed` distinct users holding
keys.manage, each re-entering their own password, before it expires; its action then runs as a
job on the node's one job runner (services/jobs.py; a row in `jobs`, resumable: a rotation
re-wraps what is still under the old version, a re-encryption resumes from the recording's
pending key).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from siprec_server.access import AccessError, PasswordHashing, Permission, Principal
from siprec_server.logs import get_logger
from siprec_server.services.jobs import JobContext, JobRunner
from siprec_server.services.notifications import Notifier
from siprec_server.services.periodic import Periodic
from storage import key_versions as kv
from storage import users
from storage.audit import AuditEvent, record_audit
from storage.custody import (
    MAX_CUSTODIANS,
    Custodian,
    CustodyError,
    KeyCustody,
    ShamirCustody,
    ShareRefused,
    UnsealProgress,
)
from storage.jobs import PgJobStore
from storage.journal import rewrap_journals
from storage.key_shares import Recipient, ShareError, parse_recipient
from storage.reencryption import reencrypt_recording
from storage.rewrap import rewrap_batch
from storage.roles import vacuum
from storage.signing import reseal_signing_keys

__all__ = ["CeremonyError", "KeyCounters", "KeyService", "KeySettings"]

log = get_logger("keys")

_CEREMONY_EXPIRY_S = 1.0
_VACUUMED = ("recording_keys", "master_key_versions", "key_shares", "signing_keys")


class CeremonyError(Exception):
    """A ceremony request that cannot be done: `status` and `code` say how the API answers."""

    def __init__(self, message: str, *, status: int = 409, code: str = "conflict") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class KeySettings:
    node_id: str
    cryptoperiod_days: int = 365
    reminder_days: int = 15
    approvals: int = 2
    ceremony_window: timedelta = timedelta(minutes=15)
    rewrap_batch: int = 1000


@dataclass
class KeyCounters:
    unseal_shares_accepted: int = 0
    unseal_shares_refused: int = 0
    ceremonies_approved: int = 0
    data_keys_rewrapped: int = 0
    recordings_reencrypted: int = 0
    versions_destroyed: int = 0
    rotation_reminders: int = 0
    cryptoperiod_alerts: int = 0


def utcnow() -> datetime:
    return datetime.now(UTC)


def _rfc3339(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class KeyService:
    db: asyncpg.Pool
    custody: KeyCustody
    settings: KeySettings
    notifier: Notifier = field(default_factory=Notifier)
    clock: Callable[[], datetime] = utcnow
    on_unsealed: Callable[[], Awaitable[None]] | None = None
    """Start-up work that needs the keys (journal replay, recovery), run once after unseal."""
    hashing: PasswordHashing = field(default_factory=PasswordHashing)
    signer: Any = None
    """The node's signing key holder (re-encryption signs the changed summaries)."""
    owner_dsn: str | None = None
    """The database owner's DSN: VACUUM needs the owner (PostgreSQL 15)."""
    journal_dir: Path | None = None
    """This node's write-behind journal: waiting writes are re-wrapped before a destruction."""
    counters: KeyCounters = field(default_factory=KeyCounters)
    ready: bool = False
    """Unsealed, and the start-up work that needed the keys is done: calls are taken."""
    _passphrases: dict[UUID, dict[UUID, Recipient]] = field(default_factory=dict)
    _after_unseal_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _wake_jobs: Callable[[], None] = field(default=lambda: None)
    """Tells the node's job runner that a key job was queued or can run now (register_jobs)."""
    _expiry: Periodic | None = None

    # ------------------------------------------------------------------ status

    async def status(self) -> dict[str, Any]:
        status = await status_of(self.db, self.settings, self.clock())
        progress = self.custody.progress()
        status.update({"custody": self.custody.mode, "sealed": self.custody.sealed,
                       "initialised": not self.custody.needs_init,
                       "progress": [progress.submitted, progress.threshold]})
        return status

    def version_json(self, version: kv.KeyVersion, now: datetime) -> dict[str, Any]:
        return version_json(version, now, self.settings.reminder_days)

    # ------------------------------------------------------------------ unseal

    async def unseal(self, share_text: str, source: str | None) -> UnsealProgress:
        """One custodian's share. ShareRefused / CustodyError for a share that is refused."""
        if isinstance(self.custody, ShamirCustody) and self.custody.needs_init:
            await self.custody.open(self.db, self.clock())  # the CLI may have run the init
        try:
            progress = await self.custody.submit_share(self.db, share_text)
        except (ShareRefused, CustodyError) as exc:
            self.counters.unseal_shares_refused += 1
            await self._audit("key.unseal_share", source=source, outcome="failure",
                              details={"reason": str(exc)[:200]})
            raise
        self.counters.unseal_shares_accepted += 1
        await self._audit("key.unseal_share", actor=str(progress.custodian_id or "anonymous"),
                          source=source, target=progress.version_id,
                          details={"submitted": progress.submitted,
                                   "threshold": progress.threshold})
        if not progress.sealed:
            await self._audit("key.unsealed", target=progress.version_id, source=source,
                              details={"custody": self.custody.mode})
            log.warning("unsealed", version=progress.version_id)
            await self.after_unseal()
        return progress

    async def after_unseal(self) -> None:
        async with self._after_unseal_lock:
            if self.ready:
                return
            if self.on_unsealed is not None:
                await self.on_unsealed()
            self.ready = True
            self._wake_jobs()  # rotations and re-encryptions queued while sealed

    async def take_shares(self, user_id: UUID, source: str | None) -> list[dict[str, Any]]:
        """The caller's share envelopes, each handed out once."""
        taken = await kv.take_envelopes(self.db, user_id, self.clock())
        for version_id, x, _ in taken:
            await self._audit("key.share_fetched", actor=str(user_id), target=version_id,
                              source=source, details={"x": x})
        return [{"version_id": v, "x": x, "envelope": e} for v, x, e in taken]

    # ------------------------------------------------------------------ ceremonies

    async def create_ceremony(self, actor: str, body: Mapping[str, Any],
                              source: str | None) -> kv.Ceremony:
        kind = body.get("kind")
        now = self.clock()
        params: dict[str, Any]
        secrets_: dict[UUID, Recipient] = {}
        if kind == "init":
            if not self.custody.needs_init:
                raise CeremonyError("a master key exists already: rotate instead")
            threshold, custodians = await self._custodians(body, required=True)
            needed = threshold
            params = {"threshold": threshold, "custodians": custodians}
        elif kind == "rotate":
            if self.custody.needs_init:
                raise CeremonyError("no master key exists yet: run the init ceremony")
            threshold, custodians = await self._custodians(body, required=False)
            if isinstance(self.custody, ShamirCustody) and not custodians:
                threshold, custodians = await self._previous_custodians()
            needed = self._needed()
            params = {"threshold": threshold, "custodians": custodians}
        elif kind == "reencrypt":
            ids = body.get("recording_ids")
            if (not isinstance(ids, list) or not ids or len(ids) > 100000
                    or not all(isinstance(i, str) for i in ids)):
                raise CeremonyError("recording_ids: a list of 1 to 100000 recording ids",
                                    status=400, code="bad_request")
            try:
                params = {"recording_ids": sorted({str(UUID(i)) for i in ids})}
            except ValueError:
                raise CeremonyError("recording_ids: not a recording id", status=400,
                                    code="bad_request") from None
            needed = self._needed()
        else:
            raise CeremonyError("kind: expected init, rotate or reencrypt", status=400,
                                code="bad_request")
        for entry in params.get("custodians", []):
            recipient = entry.pop("_recipient")
            if recipient.kind == "passphrase":
                secrets_[UUID(entry["user_id"])] = recipient
        ceremony_id = await kv.create_ceremony(
            self.db, kind=kind, needed=needed, params=params, created_by=actor, now=now,
            window=self.settings.ceremony_window)
        if secrets_:
            self._passphrases[ceremony_id] = secrets_
        await self._audit("key.ceremony_created", actor=actor, target=str(ceremony_id),
                          source=source, details={"kind": kind, "needed": needed,
                                                  **_public_params(params)})
        ceremony = await kv.get_ceremony(self.db, ceremony_id)
        assert ceremony is not None
        return ceremony

    def _needed(self) -> int:
        if isinstance(self.custody, ShamirCustody):
            return max(2, self.custody.progress().threshold or self.settings.approvals)
        return self.settings.approvals

    async def _custodians(self, body: Mapping[str, Any], *,
                          required: bool) -> tuple[int, list[dict[str, Any]]]:
        raw = body.get("custodians")
        if raw is None and not required:
            return 0, []
        if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_CUSTODIANS:
            raise CeremonyError(f"custodians: a list of 2 to {MAX_CUSTODIANS}", status=400,
                                code="bad_request")
        threshold = body.get("threshold", 2)
        if not isinstance(threshold, int) or isinstance(threshold, bool) or not (
                2 <= threshold <= len(raw)):
            raise CeremonyError("threshold: 2 to the number of custodians", status=400,
                                code="bad_request")
        result: list[dict[str, Any]] = []
        for entry in raw:
            if not isinstance(entry, dict) or not isinstance(entry.get("user"), str):
                raise CeremonyError('each custodian is {"user": NAME, "age" | "openpgp" | '
                                    '"passphrase": ...}', status=400, code="bad_request")
            user = await users.find_user_by_name(self.db, entry["user"])
            if user is None or user.disabled or not _can_manage_keys(user):
                raise CeremonyError(f"custodian {entry['user']!r}: no enabled user with "
                                    "keys.manage", status=400, code="bad_request")
            spec = {k: v for k, v in entry.items() if k != "user"}
            try:
                recipient = await asyncio.get_running_loop().run_in_executor(
                    None, parse_recipient, spec)
            except ShareError as exc:
                raise CeremonyError(f"custodian {user.username}: {exc}", status=400,
                                    code="bad_request") from None
            result.append({"user_id": str(user.id), "username": user.username,
                           "kind": recipient.kind, "recipient": recipient.public,
                           "fingerprint": recipient.fingerprint, "_recipient": recipient})
        if len({c["user_id"] for c in result}) != len(result):
            raise CeremonyError("each custodian receives one share", status=400,
                                code="bad_request")
        return threshold, result

    async def _previous_custodians(self) -> tuple[int, list[dict[str, Any]]]:
        active = next(v for v in await kv.list_versions(self.db) if v.state == "active")
        result = []
        for share in await kv.shares_of(self.db, active.id):
            if share.recipient is None:
                raise CeremonyError(
                    "a custodian of the active version received a passphrase-encrypted share; "
                    "name the custodians again (a passphrase is never stored)", status=400,
                    code="bad_request")
            user = await users.find_user(self.db, share.custodian_id)
            if user is None or user.disabled or not _can_manage_keys(user):
                raise CeremonyError(f"custodian {share.custodian_id} can no longer hold a "
                                    "share; name the custodians again", status=400,
                                    code="bad_request")
            recipient = Recipient(share.recipient_kind, share.recipient, share.fingerprint)
            result.append({"user_id": str(user.id), "username": user.username,
                           "kind": recipient.kind, "recipient": recipient.public,
                           "fingerprint": recipient.fingerprint, "_recipient": recipient})
        return active.threshold or 2, result

    async def approve(self, ceremony_id: UUID, user_id: UUID, password: str,
                      source: str | None) -> kv.Ceremony:
        """An approval by `user_id`, who re-entered `password`. CeremonyError: 403 wrong
        password or no keys.manage, 404 unknown, 409 same user twice or not pending."""
        now = self.clock()
        user = await users.find_user(self.db, user_id)
        ok = user is not None and not user.disabled and await asyncio.get_running_loop(
            ).run_in_executor(None, self.hashing.verify, user.password_hash, password)
        if user is None or not ok or (user.locked_until and user.locked_until > now):
            await self._audit("key.ceremony_approve", actor=str(user_id),
                              target=str(ceremony_id), source=source, outcome="failure",
                              details={"reason": "bad_password"})
            raise CeremonyError("wrong password", status=403, code="invalid_credentials")
        if not _can_manage_keys(user):
            await self._audit("key.ceremony_approve", actor=str(user_id),
                              target=str(ceremony_id), source=source, outcome="denied",
                              details={"permission": Permission.KEYS_MANAGE.value})
            raise CeremonyError("this needs the keys.manage permission", status=403,
                                code="forbidden")
        async with self.db.acquire() as conn, conn.transaction():
            ceremony = await kv.get_ceremony(conn, ceremony_id, for_update=True)
            if ceremony is None:
                raise CeremonyError("no such ceremony", status=404, code="not_found")
            if ceremony.state == "pending" and now >= ceremony.expires_at:
                await kv.set_ceremony_state(conn, ceremony_id, "expired")
                ceremony = await kv.get_ceremony(conn, ceremony_id)
                assert ceremony is not None
            if ceremony.state != "pending":
                raise CeremonyError(f"the ceremony is {ceremony.state}", code=ceremony.state)
            if not await kv.add_approval(conn, ceremony_id, user_id, now, source):
                raise CeremonyError("you approved this ceremony already: it needs another "
                                    "person", code="already_approved")
            approvals = len(ceremony.approvals) + 1
            job_id = None
            if approvals >= ceremony.needed:
                job = await PgJobStore(conn).create(
                    ceremony.kind, {**ceremony.params, "ceremony_id": str(ceremony_id)},
                    created_by=f"ceremony:{ceremony_id}", now=now)
                assert job is not None
                job_id = job.id
                await kv.set_ceremony_state(conn, ceremony_id, "approved", job_id)
            await record_audit(conn, AuditEvent(
                actor=str(user_id), action="key.ceremony_approve", target=str(ceremony_id),
                source=source, details={"kind": ceremony.kind, "approvals": approvals,
                                        "needed": ceremony.needed,
                                        "job_id": str(job_id) if job_id else None}), now)
        if job_id is not None:
            self.counters.ceremonies_approved += 1
            self._wake_jobs()
        result = await kv.get_ceremony(self.db, ceremony_id)
        assert result is not None
        return result

    async def expire_ceremonies(self) -> int:
        now = self.clock()
        expired = 0
        for ceremony_id in await kv.pending_ceremonies(self.db):
            ceremony = await kv.get_ceremony(self.db, ceremony_id)
            if ceremony is not None and now >= ceremony.expires_at:
                await kv.set_ceremony_state(self.db, ceremony_id, "expired")
                self._passphrases.pop(ceremony_id, None)
                await self._audit("key.ceremony_expired", target=str(ceremony_id),
                                  details={"kind": ceremony.kind,
                                           "approvals": len(ceremony.approvals),
                                           "needed": ceremony.needed})
                expired += 1
        return expired

    # ------------------------------------------------------------------ jobs

    async def rotation_plan(self) -> dict[str, Any]:
        """The dry run of a rotation: what it would re-wrap."""
        data_keys = await self.db.fetchval("SELECT count(*) FROM recording_keys")
        signing = await self.db.fetchval(
            "SELECT count(*) FROM signing_keys WHERE sealed_private IS NOT NULL")
        active = next((v for v in await kv.list_versions(self.db) if v.state == "active"),
                      None)
        return {"dry_run": True, "custody": self.custody.mode,
                "from_version": active.id if active else None, "data_keys": data_keys,
                "signing_keys": signing, "needed": self._needed()}

    def start(self) -> None:
        """Expire ceremonies whose window passed (their audit event, their passphrases gone
        from memory) as soon as they do."""
        if self._expiry is None:
            self._expiry = Periodic(self.expire_ceremonies, _CEREMONY_EXPIRY_S, log=log,
                                    failure="ceremony_expiry_failed")
            self._expiry.start()

    async def close(self) -> None:
        if self._expiry is not None:
            await self._expiry.close()
            self._expiry = None

    def register_jobs(self, runner: JobRunner) -> None:
        """Key custody's jobs run on the node's job runner, one job at a time like every other
        kind: an init whenever it is approved (it is what ends the seal of a new server), a
        rotation or a re-encryption only while the master key is at hand."""
        runner.register("init", self.handle_job)
        for kind in ("rotate", "reencrypt"):
            runner.register(kind, self.handle_job, ready=self._unsealed)
        self._wake_jobs = runner.wake

    def _unsealed(self) -> bool:
        return not self.custody.sealed

    async def handle_job(self, context: JobContext) -> Mapping[str, Any]:
        """The job of an approved ceremony: init and rotate make a new master key version
        (rotate then re-wraps every data key under it and destroys the old one); reencrypt
        rewrites recordings under fresh data keys. A failure is audited, then fails the job."""
        job = context.job
        try:
            if job.kind == "reencrypt":
                return await self._reencrypt(context)
            return await self._new_version_job(context)
        except Exception as exc:
            log.error("key_job_failed", job_id=str(job.id), kind=job.kind,
                      error=str(exc)[:300])
            await self._audit(f"key.{job.kind}_failed", target=str(job.id), outcome="failure",
                              details={"error": str(exc)[:200]})
            raise

    async def _new_version_job(self, context: JobContext) -> dict[str, Any]:
        job = context.job
        if "to_version" not in job.params:
            new = await self._new_version(UUID(job.params["ceremony_id"]), job.params)
            # Recorded before anything else: a resumed job must not make another version.
            await context.progress(context.done, params={
                **job.params, "to_version": new.version.id, "from_version": new.previous})
            if job.kind == "init":
                await self.after_unseal()
        if job.kind == "init":
            return {"version": context.job.params["to_version"]}
        return await self._rewrap(context)

    async def _new_version(self, ceremony_id: UUID, params: Mapping[str, Any]) -> Any:
        custodians = []
        held = self._passphrases.get(ceremony_id, {})
        for entry in params.get("custodians", []):
            user_id = UUID(entry["user_id"])
            if entry["kind"] == "passphrase":
                recipient = held.get(user_id)
                if recipient is None:
                    raise CeremonyError(f"the passphrase for {entry['username']} was held by a "
                                        "server that stopped; create the ceremony again")
            else:
                recipient = Recipient(entry["kind"], entry["recipient"], entry["fingerprint"])
            custodians.append(Custodian(user_id, entry["username"], recipient))
        now = self.clock()
        new = await self.custody.new_version(
            self.db, now, custodians=custodians, threshold=params.get("threshold") or None)
        self._passphrases.pop(ceremony_id, None)
        await self._audit("key.version_created", target=new.version.id,
                          details={"custody": self.custody.mode, "previous": new.previous,
                                   "ceremony_id": str(ceremony_id),
                                   "shares": len(custodians),
                                   "threshold": params.get("threshold") or None,
                                   "custodians": [c.username for c in custodians]})
        if new.previous:
            await self._audit("key.version_retiring", target=new.previous,
                              details={"replaced_by": new.version.id})
        log.warning("master_key_version_created", version=new.version.id,
                    previous=new.previous)
        return new

    async def _rewrap(self, context: JobContext) -> dict[str, Any]:
        params = context.job.params
        old, new = params.get("from_version"), params["to_version"]
        if old is None:
            return {"version": new, "rewrapped": 0}
        ring = self.custody.ring
        done = context.done
        remaining = await self.db.fetchval(
            "SELECT count(*) FROM recording_keys WHERE master_key_id = $1", old)
        await context.progress(done, done + remaining)
        while True:
            count = await rewrap_batch(self.db, ring, old, self.settings.rewrap_batch)
            if count == 0:
                break
            done += count
            self.counters.data_keys_rewrapped += count
            await context.progress(done)
            await asyncio.sleep(0)  # calls keep their share of the loop
        resealed = await reseal_signing_keys(self.db, ring, old)
        if self.journal_dir is not None:
            rewrap_journals(self.journal_dir, ring, old)
        await self.custody.destroy(self.db, old, self.clock())
        self.counters.versions_destroyed += 1
        await self.vacuum(_VACUUMED)
        await context.progress(done, done)
        await self._audit("key.version_destroyed", target=old,
                          details={"replaced_by": new, "rewrapped": done,
                                   "signing_keys_resealed": resealed,
                                   "custody": self.custody.mode})
        if isinstance(self.custody, ShamirCustody):
            await self.notifier.send(
                "key.version_destroyed",
                f"Master key version {old} was destroyed after its data keys were re-wrapped "
                f"under {new}. Custodians: destroy your shares of {old} and fetch your share "
                f"of {new} if you have not.", {"version": old, "replaced_by": new})
        log.warning("master_key_version_destroyed", version=old, rewrapped=done)
        return {"from_version": old, "to_version": new, "rewrapped": done,
                "signing_keys_resealed": resealed, "destroyed": old}

    async def _reencrypt(self, context: JobContext) -> dict[str, Any]:
        job = context.job
        ids = [UUID(i) for i in job.params["recording_ids"]]
        total = len(ids)
        done = context.done
        outcomes: dict[str, str] = dict((job.result or {}).get("outcomes", {}))
        await context.progress(done, total)
        for recording_id in ids[done:]:
            outcome = await reencrypt_recording(self.db, self.custody.ring, recording_id,
                                                self.signer)
            outcomes[str(recording_id)] = outcome
            if outcome == "reencrypted":
                self.counters.recordings_reencrypted += 1
            done += 1
            await context.progress(done)
            await self._audit("recording.reencrypted", target=str(recording_id),
                              outcome="success" if outcome == "reencrypted" else "failure",
                              details={"job_id": str(job.id), "outcome": outcome})
        await self.vacuum(("recording_keys",))
        return {"outcomes": outcomes}

    async def vacuum(self, tables: Sequence[str]) -> None:
        """Dead rows of destroyed keys leave the table files (they would linger until some
        later VACUUM). Best effort: a table that could not be vacuumed is logged, not fatal."""
        skipped = await vacuum(self.owner_dsn or self.db, tables)
        if skipped:
            log.warning("vacuum_skipped", tables=skipped,
                        hint="set database.migration_url to the owner role")

    # ------------------------------------------------------------------ cryptoperiods

    async def check_cryptoperiods(self) -> list[dict[str, Any]]:
        """Reminders due now: once when the active version enters its last reminder_days, then
        an alert every day once it is past its cryptoperiod (it keeps working)."""
        now = self.clock()
        sent = []
        for version in await kv.list_versions(self.db):
            if version.state != "active":
                continue
            due = version.rotation_due_at()
            remind_from = due - timedelta(days=self.settings.reminder_days)
            last = version.reminded_at
            if now >= due:
                if last is not None and last >= due and now - last < timedelta(days=1):
                    continue
                action, outcome = "key.cryptoperiod_expired", "alert"
                self.counters.cryptoperiod_alerts += 1
                text = (f"Master key version {version.id} is past its cryptoperiod (due "
                        f"{_rfc3339(due)}). Recording goes on; rotate it: "
                        "siprec-server keys rotate")
            elif now >= remind_from:
                if last is not None and last >= remind_from:
                    continue
                action, outcome = "key.rotation_due", "success"
                self.counters.rotation_reminders += 1
                text = (f"Master key version {version.id} is due for rotation on "
                        f"{_rfc3339(due)} ({(due - now).days} days).")
            else:
                continue
            details = {"version": version.id, "rotation_due_at": _rfc3339(due),
                       "age_days": version.age_days(now)}
            await self._audit(action, target=version.id, outcome=outcome, details=details)
            await kv.mark_reminded(self.db, version.id, now)
            await self.notifier.send(action, text, details)
            log.warning(action.replace(".", "_"), **details)
            sent.append({"action": action, **details})
        return sent

    def gauges(self, versions: Sequence[kv.KeyVersion]) -> dict[str, float]:
        now = self.clock()
        active = next((v for v in versions if v.state == "active"), None)
        if active is None:
            return {"sealed": float(self.custody.sealed)}
        due = active.rotation_due_at()
        return {
            "sealed": float(self.custody.sealed),
            "active_age_days": float(active.age_days(now)),
            "rotation_due_in_days": (due - now).total_seconds() / 86400,
            "rotation_due": float(now >= due - timedelta(days=self.settings.reminder_days)),
            "cryptoperiod_expired": float(now >= due),
            "live_versions": float(sum(1 for v in versions if v.live)),
        }

    # ------------------------------------------------------------------ audit

    async def _audit(self, action: str, *, actor: str | None = None, target: str | None = None,
                     source: str | None = None, outcome: str = "success",
                     details: Mapping[str, Any] | None = None) -> None:
        await record_audit(self.db, AuditEvent(
            actor=actor or f"node:{self.settings.node_id}", action=action, outcome=outcome,
            target=target, source=source, details=details))


async def status_of(db: asyncpg.Pool, settings: KeySettings, now: datetime) -> dict[str, Any]:
    """Threshold, shares and versions as the database has them (no seal state)."""
    versions = await kv.list_versions(db)
    active = next((v for v in versions if v.state == "active"), None)
    return {
        "threshold": active.threshold if active and active.threshold else (
            settings.approvals if active else 0),
        "shares": active.shares if active and active.shares else 0,
        "versions": [version_json(v, now, settings.reminder_days) for v in versions],
    }


def version_json(version: kv.KeyVersion, now: datetime, reminder_days: int) -> dict[str, Any]:
    due = version.rotation_due_at()
    remind_from = due - timedelta(days=reminder_days)
    live = version.live
    return {
        "id": version.id,
        "seq": version.seq,
        "custody": version.custody,
        "state": version.state,
        "created_at": _rfc3339(version.created_at),
        "activated_at": _rfc3339(version.activated_at),
        "retired_at": _rfc3339(version.retired_at),
        "destroyed_at": _rfc3339(version.destroyed_at),
        "age_days": version.age_days(now),
        "cryptoperiod_days": version.cryptoperiod_days,
        "rotation_due_at": _rfc3339(due),
        "rotation_due": live and version.state == "active" and now >= remind_from,
        "expired": live and now >= due,
        "threshold": version.threshold,
        "shares": version.shares,
    }


def _can_manage_keys(user: users.User) -> bool:
    try:
        return Principal.of(user.id, user.username, user.role, user.scopes, user.grants).can(
            Permission.KEYS_MANAGE)
    except AccessError:
        return False


def _public_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "threshold" in params:
        out["threshold"] = params["threshold"]
    if params.get("custodians"):
        out["custodians"] = [{"username": c["username"], "kind": c["kind"],
                              "fingerprint": c["fingerprint"]} for c in params["custodians"]]
    if "recording_ids" in params:
        out["recordings"] = len(params["recording_ids"])
    return out
