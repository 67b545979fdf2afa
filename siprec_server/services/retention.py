"""Retention, shared by the API and the command line: policy changes (audited; those that
could shorten retention wait for a second user), the dry run, and the enforcement job that
erases expired recordings in batches through the crypto-shredding path (storage/erasure.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from siprec_server.compliance import ComplianceError
from siprec_server.compliance.retention import (
    PRESETS,
    Policy,
    RetentionLimits,
    change_needs_approval,
    check_name,
    parse_match,
    preset_policy,
)
from siprec_server.logs import get_logger
from siprec_server.services.jobs import Clock, JobContext, JobRunner
from siprec_server.services.periodic import Periodic
from storage import retention as store
from storage.audit import AuditEvent, record_audit
from storage.erasure import ErasureError, RecordingHeld, erase_recording
from storage.jobs import Job, JobStore

__all__ = [
    "RETENTION_JOB",
    "PolicyNotFound",
    "RetentionCounters",
    "RetentionScheduler",
    "RetentionService",
    "policy_view",
]

log = get_logger("retention")

RETENTION_JOB = "retention.run"
RETENTION_ACTOR = "system:retention"
_POLICY_FIELDS = frozenset({"name", "days", "match", "legal_obligation", "basis", "preset"})


class PolicyNotFound(LookupError):
    pass


@dataclass
class RetentionCounters:
    runs: int = 0
    dry_runs: int = 0
    erased: int = 0
    held: int = 0
    """Expired recordings kept because a legal hold keeps them (seen by runs)."""
    failures: int = 0


def policy_view(policy: Policy, pending: store.PendingChange | None = None) -> dict[str, Any]:
    return {
        "id": str(policy.id), "name": policy.name, "days": policy.days,
        "match": policy.match.as_dict(), "legal_obligation": policy.legal_obligation,
        "basis": policy.basis, "preset": policy.preset,
        "pending_change": None if pending is None else pending.as_dict(),
    }


def _policy_from(body: Mapping[str, Any], policy_id: UUID, limits: RetentionLimits,
                 base: Policy | None = None) -> Policy:
    unknown = sorted(set(body) - _POLICY_FIELDS)
    if unknown:
        raise ComplianceError(f"unknown fields: {', '.join(unknown)[:200]}")
    preset = body.get("preset")
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ComplianceError(f"preset: one of {', '.join(PRESETS)}")
        policy = preset_policy(policy_id, None, preset,
                               parse_match(body.get("match", {} if base is None
                                                    else base.match.as_dict())))
        if "name" in body:
            policy = replace(policy, name=check_name(body["name"]))
        elif base is not None:
            policy = replace(policy, name=base.name)
        if "days" in body:
            days = limits.check_days(body["days"])
            if days < policy.days:
                raise ComplianceError(f"days: the {preset} preset keeps at least {policy.days}")
            policy = replace(policy, days=days)
        limits.check_days(policy.days)
        return policy
    if base is None:
        for required in ("name", "days"):
            if required not in body:
                raise ComplianceError(f"{required}: required (or give a preset)")
        base = Policy(policy_id, "", 1)
    legal = body.get("legal_obligation", base.legal_obligation)
    if not isinstance(legal, bool):
        raise ComplianceError("legal_obligation: true or false")
    basis = body.get("basis", base.basis)
    if basis is not None and (not isinstance(basis, str) or len(basis) > 500):
        raise ComplianceError("basis: up to 500 characters")
    return Policy(
        policy_id,
        check_name(body["name"]) if "name" in body else base.name,
        limits.check_days(body["days"]) if "days" in body else base.days,
        parse_match(body["match"]) if "match" in body else base.match,
        legal, basis, base.preset if "preset" not in body else None,
    )


@dataclass
class RetentionService:
    db: asyncpg.Pool
    jobs: JobStore
    limits: RetentionLimits
    clock: Clock
    batch_size: int = 200
    counters: RetentionCounters = field(default_factory=RetentionCounters)

    async def _audit(self, actor: str, action: str, target: str | None,
                     details: Mapping[str, Any], source: str | None,
                     outcome: str = "success") -> None:
        await record_audit(self.db, AuditEvent(actor=actor, action=action, outcome=outcome,
                                               target=target, source=source, details=details),
                           self.clock())

    # ---------------------------------------------------------------- policies

    async def policies(self) -> list[tuple[Policy, store.PendingChange | None]]:
        found = await store.list_policies(self.db)
        return [(p, await store.get_pending(self.db, p.id)) for p in found]

    async def policy(self, policy_id: UUID) -> tuple[Policy, store.PendingChange | None]:
        policy = await store.get_policy(self.db, policy_id)
        if policy is None:
            raise PolicyNotFound(str(policy_id))
        return policy, await store.get_pending(self.db, policy_id)

    async def create_policy(self, body: Mapping[str, Any], *, actor: str,
                            source: str | None = None) -> Policy:
        """A new policy applies at once: it can only make retention longer."""
        policy = _policy_from(body, uuid4(), self.limits)
        await store.insert_policy(self.db, policy, actor=actor, now=self.clock())
        await self._audit(actor, "retention.policy_create", str(policy.id),
                          {"days": policy.days, "preset": policy.preset,
                           "legal_obligation": policy.legal_obligation}, source)
        return policy

    async def change_policy(self, policy_id: UUID, body: Mapping[str, Any] | None, *,
                            actor: str, source: str | None = None
                            ) -> tuple[Policy, store.PendingChange | None, bool]:
        """Apply a change (body None: delete) that only lengthens retention; park one that
        could shorten it until a second user approves. Returns the policy as it now is, the
        change waiting for approval (if any) and whether this change was applied."""
        old, pending = await self.policy(policy_id)
        new = None if body is None else _policy_from(body, policy_id, self.limits, old)
        if not change_needs_approval(old, new):
            assert new is not None
            await store.update_policy(self.db, new, now=self.clock())
            await self._audit(actor, "retention.policy_change", str(policy_id),
                              {"days": [old.days, new.days], "approval": "not needed"}, source)
            return new, pending, True
        action = "delete" if body is None else "update"
        change = {} if body is None else dict(body)
        parked = await store.request_change(self.db, policy_id, action, change, actor=actor,
                                            now=self.clock())
        await self._audit(actor, "retention.policy_change_requested", str(policy_id),
                          {"action": action, "days": [old.days, None if new is None
                                                      else new.days]}, source)
        return old, parked, False

    async def approve_change(self, policy_id: UUID, *, actor: str, source: str | None = None
                             ) -> Policy | None:
        """A second user approves the pending change; returns the policy as it now is (None
        when it was deleted). PolicyConflict for the requester approving their own change,
        LookupError when nothing is pending."""
        old, pending = await self.policy(policy_id)
        if pending is None:
            raise LookupError("no change of this policy waits for approval")
        async with self.db.acquire() as conn, conn.transaction():
            await store.apply_change(conn, pending, actor=actor, now=self.clock())
            if pending.action == "delete":
                await store.delete_policy(conn, policy_id)
                result: Policy | None = None
            else:
                result = _policy_from(pending.change, policy_id, self.limits, old)
                await store.update_policy(conn, result, now=self.clock())
        await self._audit(actor, "retention.policy_change_approved", str(policy_id),
                          {"action": pending.action, "requested_by": pending.requested_by,
                           "days": [old.days, None if result is None else result.days]},
                          source)
        return result

    # ---------------------------------------------------------------- runs

    async def start_run(self, *, dry_run: bool, actor: str, unique: bool = False) -> Job | None:
        return await self.jobs.create(RETENTION_JOB, {"dry_run": dry_run}, created_by=actor,
                                      now=self.clock(), unique=unique)

    def _report(self, policies: list[Policy], counts: Mapping[str | None, int], held: int,
                now: datetime, dry_run: bool, key: str) -> dict[str, Any]:
        return {
            "dry_run": dry_run,
            "at": now.isoformat(),
            "limits": {"default_days": self.limits.default_days,
                       "floor_days": self.limits.floor_days,
                       "ceiling_days": self.limits.ceiling_days},
            "default": {"days": self.limits.minimum_days, key: counts.get(None, 0)},
            "policies": [{"id": str(p.id), "name": p.name, "days": self.limits.clamp(p.days),
                          key: counts.get(str(p.id), 0)} for p in policies],
            "held": held,
            "total": sum(counts.values()),
        }

    async def dry_run(self, now: datetime | None = None) -> dict[str, Any]:
        """What a run at `now` would erase, per governing policy, and how many more are held."""
        now = now or self.clock()
        policies = await store.list_policies(self.db)
        counts, held = await store.count_expired(self.db, policies, self.limits, now)
        self.counters.dry_runs += 1
        return self._report(policies, counts, held, now, True, "recordings")

    async def run(self, now: datetime | None = None, context: JobContext | None = None,
                  actor: str = RETENTION_ACTOR) -> dict[str, Any]:
        """Erase every recording expired at `now`, oldest first, in batches; the counts per
        policy name what was erased (equal to the dry run's at the same `now`)."""
        now = now or self.clock()
        policies = await store.list_policies(self.db)
        by_id = {str(p.id): p for p in policies}
        expected, _held = await store.count_expired(self.db, policies, self.limits, now)
        total = sum(expected.values())
        if context is not None:
            await context.progress(0, total)
        erased: dict[str | None, int] = {}
        held = failed = done = 0
        after: tuple[datetime, UUID] | None = None
        while True:
            batch = await store.expired_batch(self.db, policies, self.limits, now,
                                              self.batch_size, after)
            if not batch:
                break
            after = (batch[-1].started_at, batch[-1].recording_id)
            for expired in batch:
                rid, pid = expired.recording_id, expired.policy_id
                why = (f"retention expired: policy {by_id[pid].name} ({by_id[pid].days} days)"
                       if pid in by_id else
                       f"retention expired: default ({self.limits.minimum_days} days)")
                try:
                    await erase_recording(self.db, rid, actor=actor, reason=why[:500],
                                          now=self.clock(), source="retention")
                except RecordingHeld:
                    held += 1  # a hold that came after the batch was read
                except (ErasureError, ValueError) as exc:
                    failed += 1
                    log.error("retention_erase_failed", recording_id=str(rid),
                              error=type(exc).__name__)
                else:
                    erased[pid] = erased.get(pid, 0) + 1
                done += 1
            if context is not None:
                await context.progress(done, max(total, done))
        count = sum(erased.values())
        self.counters.runs += 1
        self.counters.erased += count
        self.counters.held += held
        self.counters.failures += failed
        _counts, still_held = await store.count_expired(self.db, policies, self.limits, now)
        report = self._report(policies, erased, still_held + held, now, False, "erased")
        report["failed"] = failed
        await self._audit(actor, "retention.run", None,
                          {"erased": count, "held": report["held"], "failed": failed,
                           "at": now.isoformat()}, "retention")
        log.info("retention_run", erased=count, held=report["held"], failed=failed)
        return report

    def register_jobs(self, runner: JobRunner) -> None:
        runner.register(RETENTION_JOB, self.handle_job)

    async def handle_job(self, context: JobContext) -> Mapping[str, Any]:
        """The job handler of RETENTION_JOB: {"dry_run": bool}."""
        job = context.job
        by_user = job.created_by and not job.created_by.startswith("system:")
        actor = f"{RETENTION_ACTOR}:{job.created_by}" if by_user else RETENTION_ACTOR
        if job.params.get("dry_run", True):
            report = await self.dry_run()
            await self._audit(job.created_by or RETENTION_ACTOR, "retention.dry_run", None,
                              {"total": report["total"], "held": report["held"]}, "retention")
            return report
        return await self.run(context=context, actor=actor)


class RetentionScheduler:
    """Queues an enforcement run every `interval_s` unless one is queued or running already
    (on any node); the job runner of whichever node is free picks it up."""

    def __init__(self, service: RetentionService, interval_s: float, *,
                 housekeeping: Callable[[], Awaitable[object]] | None = None) -> None:
        self.service = service
        self.housekeeping = housekeeping
        """Also run at every tick (expiring old subject-access bundles)."""
        self._loop = Periodic(self.tick, interval_s, log=log,
                              failure="retention_schedule_failed")

    async def tick(self) -> Job | None:
        if self.housekeeping is not None:
            await self.housekeeping()
        return await self.service.start_run(dry_run=False, actor="system:scheduler",
                                            unique=True)

    def start(self) -> None:
        self._loop.start()

    async def close(self) -> None:
        await self._loop.close()
