"""Recording rules, opt-out and restriction, shared by the recorder, the API and the CLI.

- The recorder asks `decide` before it answers an INVITE. The rules are cached per node and
  reloaded when their version (bumped by a trigger on every change, read in the same round trip
  as the INVITE's metadata facts) moves, so a rule changed on any node applies to the next call
  on every node.
- An opt-out (the caller withdrew consent) stops the recording on the node that holds the call,
  stamps the recording, and — when the request or the deciding rule says discard — erases what
  was recorded by crypto-shredding, unless a legal hold or a legal obligation to keep it refuses
  (then it is kept and the answer says why, as a data subject's erasure would).
- Restriction: a recording marked restricted (by a rule, or here) is visible only to users with
  the `restricted` permission (siprec_server/access.py, storage/search.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID, uuid4

import asyncpg

from siprec_server.compliance import ComplianceError
from siprec_server.compliance.retention import (
    RecordingFacts,
    RetentionLimits,
    obligations_of,
    parse_match,
)
from siprec_server.compliance.rules import Rule, RuleDecision, check_rule_fields, decide
from siprec_server.compliance.subjects import RecordingStatus, plan_erasure
from siprec_server.logs import get_logger
from storage import retention as retention_store
from storage import rules as store
from storage.audit import AuditEvent, record_audit
from storage.erasure import RecordingHeld, erase_recording
from storage.errors import guarded
from storage.holds import held_matters

__all__ = [
    "CallControl",
    "CallFactsLike",
    "OptOutError",
    "OptOutResult",
    "RecordingRulesService",
    "RuleNotFound",
    "RulesCounters",
    "rule_view",
]

log = get_logger("recording_rules")

OPT_OUT_REASON = "caller withdrew consent (opt-out)"
_NO_RECORDING = UUID(int=0)


class RuleNotFound(LookupError):
    pass


class OptOutError(Exception):
    """An opt-out that cannot be done; `code` and `status` say how the API answers."""

    def __init__(self, message: str, code: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class CallControl(Protocol):
    """The node's live calls (siprec_server.recorder.Recorder)."""

    async def opt_out(self, recording_id: UUID, *, keep: bool) -> bool | None: ...


class CallFactsLike(Protocol):
    """siprec_server.recorder.CallFacts (the recorder imports this layer's neighbours, not it)."""

    @property
    def numbers(self) -> frozenset[str]: ...

    @property
    def aors(self) -> frozenset[str]: ...

    @property
    def metadata_xml(self) -> str | None: ...

    @property
    def started_at(self) -> datetime: ...


@dataclass
class RulesCounters:
    decisions_record: int = 0
    decisions_metadata_only: int = 0
    decisions_do_not_record: int = 0
    restricted_by_rule: int = 0
    opt_outs_kept: int = 0
    opt_outs_discarded: int = 0
    opt_outs_refused_erasure: int = 0


@dataclass(frozen=True, slots=True)
class OptOutResult:
    recording_id: UUID
    already: bool
    keep: bool
    """What was asked (or what the rule said)."""
    erased: bool
    refused: str | None = None
    """legal_hold | legal_obligation: why a discard kept the recording."""
    matter: str | None = None
    until: datetime | None = None


def rule_view(rule: Rule) -> dict[str, Any]:
    return {"id": str(rule.id), "name": rule.name, "action": rule.action,
            "restricted": rule.restricted, "opt_out": rule.opt_out, "priority": rule.priority,
            "match": rule.match.as_dict()}


@dataclass
class RecordingRulesService:
    db: asyncpg.Pool
    clock: Callable[[], datetime]
    limits: RetentionLimits
    node_id: str = ""
    default_action: str = "record"
    default_opt_out: str = "discard"
    counters: RulesCounters = field(default_factory=RulesCounters)
    _rules: list[Rule] = field(default_factory=list, repr=False)
    _version: int = field(default=-1, repr=False)

    # ------------------------------------------------------------------ the recorder's port

    async def decide(self, call: CallFactsLike) -> RuleDecision:
        facts = await guarded(store.metadata_facts(self.db, call.metadata_xml))
        if facts.rules_version != self._version:
            self._rules = await guarded(store.list_rules(self.db))
            self._version = facts.rules_version
        decision = decide(
            RecordingFacts(_NO_RECORDING, call.started_at, call.numbers, call.aors,
                           facts.direction, facts.metadata),
            self._rules, default_action=self.default_action,
            default_opt_out=self.default_opt_out)
        if decision.action == "record":
            self.counters.decisions_record += 1
        elif decision.action == "metadata_only":
            self.counters.decisions_metadata_only += 1
        else:
            self.counters.decisions_do_not_record += 1
        if decision.restricted:
            self.counters.restricted_by_rule += 1
        return decision

    async def not_recorded(self, decision: RuleDecision, at: datetime) -> None:
        # Nothing about the call itself: it was not to be kept, not even its identifiers.
        await record_audit(self.db, AuditEvent(
            actor=f"node:{self.node_id}", action="recording.not_recorded",
            target=None if decision.rule is None else f"rule:{decision.rule.id}",
            source="recording-rules",
            details={"rule_id": None if decision.rule is None else str(decision.rule.id),
                     "action": decision.action}), at)

    # ------------------------------------------------------------------ rules

    async def rules(self) -> list[Rule]:
        return await store.list_rules(self.db)

    async def rule(self, rule_id: UUID) -> Rule:
        found = await store.get_rule(self.db, rule_id)
        if found is None:
            raise RuleNotFound(str(rule_id))
        return found

    async def create_rule(self, body: Mapping[str, Any], *, actor: str,
                          source: str | None) -> Rule:
        fields = check_rule_fields(body)
        rule = Rule(uuid4(), fields["name"], fields["action"], parse_match(body.get("match")),
                    fields["restricted"], fields["opt_out"], fields["priority"])
        created = await store.insert_rule(self.db, rule, created_by=actor, now=self.clock())
        await self._audit(actor, "rule.create", created, source)
        return created

    async def change_rule(self, rule_id: UUID, body: Mapping[str, Any], *, actor: str,
                          source: str | None) -> Rule:
        old = await self.rule(rule_id)
        fields = check_rule_fields(body, partial=True)
        if "match" in body:
            fields["match"] = parse_match(body["match"])
        new = replace(old, **fields)
        changed = await store.update_rule(self.db, new, now=self.clock())
        if changed is None:
            raise RuleNotFound(str(rule_id))
        await self._audit(actor, "rule.change", changed, source,
                          {"before": rule_view(old)})
        return changed

    async def delete_rule(self, rule_id: UUID, *, actor: str, source: str | None) -> Rule:
        old = await self.rule(rule_id)
        if not await store.delete_rule(self.db, rule_id):
            raise RuleNotFound(str(rule_id))
        await self._audit(actor, "rule.delete", old, source)
        return old

    async def _audit(self, actor: str, action: str, rule: Rule, source: str | None,
                     extra: Mapping[str, Any] | None = None) -> None:
        await record_audit(self.db, AuditEvent(
            actor=actor, action=action, target=f"rule:{rule.id}", source=source,
            details={"rule": rule_view(rule), **(extra or {})}))

    # ------------------------------------------------------------------ recordings

    async def set_restricted(self, recording_id: UUID, restricted: bool, *, actor: str,
                             source: str | None) -> bool:
        """The flag's previous value; RuleNotFound-like LookupError when there is no such
        recording."""
        before = await store.set_restricted(self.db, recording_id, restricted)
        if before is None:
            raise LookupError(str(recording_id))
        await record_audit(self.db, AuditEvent(
            actor=actor, action="recording.restrict" if restricted else "recording.unrestrict",
            target=str(recording_id), source=source,
            details={"restricted": restricted, "was": before}))
        return before

    async def opt_out(self, recording_id: UUID, *, keep: bool | None, actor: str,
                      source: str | None, calls: CallControl | None) -> OptOutResult:
        info = await store.opt_out_of(self.db, recording_id)
        if info is None:
            raise OptOutError("no such call", "not_found", 404)
        if info["opted_out_at"] is not None:
            return OptOutResult(recording_id, True, info["opt_out"] == "keep",
                                info["state"] == "erased")
        if info["state"] not in ("offered", "recording"):
            raise OptOutError(f"the call has ended ({info['state']})", "call_ended", 409)
        if keep is None:
            keep = (info["opt_out"] or self.default_opt_out) == "keep"
        stopped = None if calls is None else await calls.opt_out(recording_id, keep=keep)
        if stopped is None:
            raise OptOutError("the call is not being recorded on this server", "no_media", 409)
        now = self.clock()
        await store.mark_opted_out(self.db, recording_id, by=actor, keep=keep, now=now)
        result = OptOutResult(recording_id, False, keep, False)
        if not keep:
            result = await self._discard(recording_id, actor, source, now)
        if result.erased:
            self.counters.opt_outs_discarded += 1
        elif not keep:
            self.counters.opt_outs_refused_erasure += 1
        else:
            self.counters.opt_outs_kept += 1
        details: dict[str, Any] = {"keep": keep, "erased": result.erased}
        if result.refused is not None:
            details["refused"] = result.refused
        await record_audit(self.db, AuditEvent(
            actor=actor, action="recording.opt_out", target=str(recording_id), source=source,
            details=details))
        log.info("opt_out", recording_id=str(recording_id), keep=keep, erased=result.erased)
        return result

    async def _discard(self, recording_id: UUID, actor: str, source: str | None,
                       now: datetime) -> OptOutResult:
        """Erase what was recorded, unless a hold or a legal obligation keeps it (the same
        plan as a data subject's erasure: compliance/subjects.py)."""
        facts = await retention_store.recording_facts(self.db, [recording_id])
        state, recording = facts[recording_id]
        policies = await retention_store.list_policies(self.db)
        decision = plan_erasure(RecordingStatus(
            recording_id, state, await held_matters(self.db, recording_id),
            obligations_of(recording, policies, self.limits, now)))
        if decision.outcome != "erase":
            return OptOutResult(recording_id, False, False, False, decision.reason,
                                decision.matter, decision.until)
        try:
            await erase_recording(self.db, recording_id, actor=actor, reason=OPT_OUT_REASON,
                                  now=now, source=source)
        except RecordingHeld as exc:
            return OptOutResult(recording_id, False, False, False, "legal_hold",
                                exc.matters[0])
        return OptOutResult(recording_id, False, False, True)


def check_defaults(default_action: str, default_opt_out: str) -> None:
    if default_action not in ("record", "metadata_only", "do_not_record"):
        raise ComplianceError("rules.default_action: record, metadata_only or do_not_record")
    if default_opt_out not in ("keep", "discard"):
        raise ComplianceError("rules.opt_out_default: keep or discard")
