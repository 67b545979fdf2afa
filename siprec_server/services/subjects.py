"""Data-subject requests (GDPR Art. 15 and 17), shared by the API and the command line.

- Making a request: the person is named by number (any spelling), AOR or name; the recipient
  of an access bundle by a passphrase (age) or a public key (OpenPGP, X.509). The request and
  its job are rows; any node's job runner carries it out.
- Access: every recording of the person — metadata as JSON and CSV, annotations, the audio as
  Ogg Opus — in one ZIP streamed through the encryptor into the bundle file.
- Erasure: every recording of the person is erased unless a legal hold or a legal obligation to
  keep it refuses it; the report says which, with the matter or the end date.

Audit events never carry the person's identifiers (ARCHITECTURE principle 4): the request id.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import io
import json
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from siprec_server.compliance import ComplianceError
from siprec_server.compliance.retention import RetentionLimits, obligations_of
from siprec_server.compliance.subjects import (
    KINDS,
    Decision,
    RecordingStatus,
    parse_subject,
    plan_erasure,
)
from siprec_server.logs import get_logger
from siprec_server.services.bundles import (
    DEFAULT_SCRYPT_WORK_FACTOR,
    Recipient,
    RecipientError,
    age_passphrase_header,
    check_openpgp_key,
    check_x509_certificate,
    open_encryptor,
)
from siprec_server.services.jobs import Clock, JobContext, JobRunner
from storage import retention as retention_store
from storage import subjects as store
from storage.annotations import annotations_of
from storage.audit import AuditEvent, record_audit
from storage.erasure import ErasureError, RecordingHeld, erase_recording
from storage.holds import held_matters
from storage.jobs import JobStore
from storage.keys import KeyRing, new_data_key, wrap_data_key
from storage.playback import RecordingUnreadable, open_recording
from storage.search import FoundRecording, find_recording

__all__ = ["SUBJECT_JOBS", "RecordingRenderer", "SubjectCounters", "SubjectService",
           "request_view"]

RecordingRenderer = Callable[[FoundRecording], dict[str, Any]]

log = get_logger("subjects")

ACCESS_JOB = "subject.access"
ERASURE_JOB = "subject.erasure"
SUBJECT_JOBS = (ACCESS_JOB, ERASURE_JOB)
CSV_COLUMNS = ("id", "call_id", "session_id", "state", "started_at", "ended_at", "duration_s",
               "participant_aors", "participant_names", "participant_numbers", "tags", "flags",
               "comments", "audio_file")


@dataclass
class SubjectCounters:
    subject_requests: int = 0
    bundles_built: int = 0
    bundle_bytes: int = 0
    subject_erased: int = 0
    subject_refused: int = 0


def request_view(request: store.SubjectRequest, items: list[Decision] | None = None
                 ) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": str(request.id), "kind": request.kind, "state": request.state,
        "job_id": None if request.job_id is None else str(request.job_id),
        "subject": request.subject.as_dict(), "recipient": request.recipient_kind,
        "found": request.found, "erased": request.erased, "refused": request.refused,
        "error": request.error, "created_by": request.created_by,
        "created_at": request.created_at.isoformat(),
        "finished_at": None if request.finished_at is None else request.finished_at.isoformat(),
        "bundle": None,
    }
    if request.bundle_path is not None:
        view["bundle"] = {
            "href": f"/api/v1/subject-requests/{request.id}/bundle",
            "bytes": request.bundle_bytes,
            "sha256": None if request.bundle_sha256 is None else request.bundle_sha256.hex(),
            "encryption": {"passphrase": "age", "openpgp": "openpgp",
                           "cms": "cms"}.get(request.recipient_kind or ""),
        }
    if items is not None:
        view["recordings"] = [d.as_dict() for d in items]
    return view


def _parse_recipient(raw: object, request_id: UUID, keys: KeyRing | None,
                     work_factor: int) -> Recipient:
    if not isinstance(raw, Mapping) or len(raw) != 1 or not (
            set(raw) <= {"passphrase", "public_key"}):
        raise ComplianceError('recipient: {"passphrase": "..."} or {"public_key": "..."}')
    if "passphrase" in raw:
        if keys is None:
            raise ComplianceError("recipient: this server has no key ring to keep the bundle's "
                                  "file key")
        # The age file key is the first half of a data key, kept wrapped like a recording's.
        secret = new_data_key()
        try:
            header = age_passphrase_header(raw["passphrase"], secret[:16], work_factor)
        except RecipientError as exc:
            raise ComplianceError(str(exc)) from None
        wrapped = wrap_data_key(keys.current, secret, request_id)
        return Recipient("passphrase", {
            "age_header": base64.b64encode(header).decode("ascii"),
            "wrapped_file_key": base64.b64encode(wrapped).decode("ascii")})
    public_key = raw["public_key"]
    if not isinstance(public_key, str):
        raise ComplianceError("recipient.public_key: a string")
    try:
        if "BEGIN PGP PUBLIC KEY BLOCK" in public_key:
            return Recipient("openpgp", {"public_key": public_key,
                                         "fingerprint": check_openpgp_key(public_key)})
        return Recipient("cms", {"public_key": public_key,
                                 "fingerprint": check_x509_certificate(public_key)})
    except RecipientError as exc:
        raise ComplianceError(str(exc)) from None


def _digest(path: Path) -> tuple[int, bytes]:
    """Size and SHA-256 of a finished bundle (ciphertext)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.digest()


@dataclass
class SubjectService:
    db: asyncpg.Pool
    jobs: JobStore
    limits: RetentionLimits
    clock: Clock
    bundle_dir: Path
    keys: KeyRing | None = None
    node_id: str = ""
    scrypt_work_factor: int = DEFAULT_SCRYPT_WORK_FACTOR
    describe: RecordingRenderer | None = None
    """How a recording is described in an access bundle: the API's detail view, handed in by
    the composition root (services do not import the HTTP layer)."""
    counters: SubjectCounters = field(default_factory=SubjectCounters)

    async def _audit(self, actor: str, action: str, target: str | None,
                     details: Mapping[str, Any], source: str | None = None,
                     outcome: str = "success") -> None:
        await record_audit(self.db, AuditEvent(actor=actor, action=action, outcome=outcome,
                                               target=target, source=source, details=details),
                           self.clock())

    async def create(self, body: Mapping[str, Any], *, actor: str,
                     source: str | None = None,
                     include_restricted: bool = True) -> store.SubjectRequest:
        """A request and its queued job. ComplianceError for a body that cannot be one."""
        unknown = sorted(set(body) - {"kind", "participant", "name", "recipient"})
        if unknown:
            raise ComplianceError(f"unknown fields: {', '.join(unknown)[:200]}")
        kind = body.get("kind")
        if kind not in KINDS:
            raise ComplianceError("kind: access or erasure")
        subject = parse_subject(body)
        request_id = uuid4()
        recipient: Recipient | None = None
        if kind == "access":
            if "recipient" not in body:
                raise ComplianceError("recipient: an access bundle is encrypted to a passphrase "
                                      "or a public key")
            # scrypt and gpg take a while: off the event loop.
            recipient = await asyncio.get_running_loop().run_in_executor(
                None, _parse_recipient, body["recipient"], request_id, self.keys,
                self.scrypt_work_factor)
        elif "recipient" in body:
            raise ComplianceError("recipient: only an access request has one")
        now = self.clock()
        request = await store.create_request(
            self.db, request_id, kind, subject,
            recipient_kind=None if recipient is None else recipient.kind,
            recipient=None if recipient is None else dict(recipient.details),
            job_id=None, actor=actor, now=now)
        job = await self.jobs.create(ACCESS_JOB if kind == "access" else ERASURE_JOB,
                                     {"request_id": str(request_id),
                                      "include_restricted": include_restricted},
                                     created_by=actor, now=now)
        assert job is not None
        await self.db.execute("UPDATE subject_requests SET job_id = $2 WHERE id = $1",
                              request_id, job.id)
        self.counters.subject_requests += 1
        await self._audit(actor, "subject.request", str(request_id),
                          {"kind": kind, "recipient": request.recipient_kind,
                           "identifiers": {"numbers": len(subject.numbers),
                                           "aors": len(subject.aors),
                                           "names": len(subject.names)}}, source)
        fresh = await store.get_request(self.db, request_id)
        assert fresh is not None
        return fresh

    # ---------------------------------------------------------------- jobs

    def register_jobs(self, runner: JobRunner) -> None:
        for kind in SUBJECT_JOBS:
            runner.register(kind, self.handle_job)

    async def handle_job(self, context: JobContext) -> Mapping[str, Any]:
        request_id = UUID(str(context.job.params["request_id"]))
        request = await store.get_request(self.db, request_id)
        if request is None:
            raise LookupError(f"subject request {request_id} is gone")
        await store.update_request(self.db, request_id, state="running")
        try:
            if request.kind == "access":
                result = await self._access(request, context)
            else:
                result = await self._erasure(request, context)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                await store.update_request(self.db, request_id, state="failed",
                                           error=type(exc).__name__,
                                           finished_at=self.clock())
            raise
        return result

    async def _access(self, request: store.SubjectRequest,
                      context: JobContext) -> Mapping[str, Any]:
        ids = await store.find_subject_recordings(
            self.db, request.subject,
            include_restricted=bool(context.job.params.get("include_restricted", True)))
        await context.progress(0, len(ids))
        recipient = Recipient(str(request.recipient_kind), request.recipient or {})
        file_key: bytes | None = None
        if recipient.kind == "passphrase":
            if self.keys is None:
                raise RuntimeError("no key ring: the bundle's file key cannot be opened")
            wrapped = base64.b64decode(recipient.details["wrapped_file_key"])
            file_key = self.keys.unwrap(wrapped, request.id)[:16]
        self.bundle_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = self.bundle_dir / f"{request.id}{recipient.suffix}"
        partial = final.with_name(final.name + ".partial")
        loop = asyncio.get_running_loop()
        with open(partial, "wb") as raw:  # a resumed job starts the file again
            encryptor = await loop.run_in_executor(None, open_encryptor, recipient, raw,
                                                   file_key)
            try:
                await self._write_bundle(request, ids, encryptor, context)
                await loop.run_in_executor(None, encryptor.close)
            except BaseException:
                abort = getattr(encryptor, "abort", None)
                if abort is not None:
                    await loop.run_in_executor(None, abort)
                raise
            await loop.run_in_executor(None, os.fsync, raw.fileno())
        os.replace(partial, final)
        size, sha256 = await loop.run_in_executor(None, _digest, final)
        await store.save_items(self.db, request.id,
                               [Decision(rid, "included") for rid in ids])
        now = self.clock()
        # The bundle exists: the wrapped file key has done its work and goes (a new bundle
        # needs a new request, and so the requester's passphrase again).
        kept = {k: v for k, v in (request.recipient or {}).items() if k != "wrapped_file_key"}
        await store.update_request(self.db, request.id, state="done", bundle_path=str(final),
                                   bundle_node=self.node_id, bundle_bytes=size,
                                   bundle_sha256=sha256, found=len(ids),
                                   finished_at=now, recipient=kept)
        self.counters.bundles_built += 1
        self.counters.bundle_bytes += size
        await self._audit(context.job.created_by or "system", "subject.access_bundle",
                          str(request.id), {"recordings": len(ids), "bytes": size,
                                            "encryption": recipient.kind}, "subject-request")
        return {"request_id": str(request.id), "recordings": len(ids), "bytes": size}

    async def _write_bundle(self, request: store.SubjectRequest, ids: list[UUID],
                            encryptor: Any, context: JobContext) -> None:
        loop = asyncio.get_running_loop()
        views: list[dict[str, Any]] = []
        notes = await annotations_of(self.db, ids)
        archive = zipfile.ZipFile(encryptor, mode="w", compression=zipfile.ZIP_DEFLATED)
        try:
            for done, rid in enumerate(ids, start=1):
                found = await find_recording(self.db, rid, None)
                if found is None:
                    continue
                if self.describe is None:
                    raise RuntimeError("access bundles need a recording renderer")
                view = self.describe(found)
                view["annotations"] = [a.as_dict() for a in notes.get(rid, [])]
                view["audio_file"] = None
                if view.get("has_audio") and self.keys is not None:
                    try:
                        opened = await open_recording(self.db, self.keys, rid)
                    except RecordingUnreadable:
                        opened = None
                    if opened is not None:
                        name = f"audio/{rid}.opus"
                        await loop.run_in_executor(None, _copy_audio, archive, name, opened)
                        view["audio_file"] = name
                views.append(view)
                await self._audit(context.job.created_by or "system", "recording.export",
                                  str(rid), {"request": str(request.id),
                                             "format": "subject-access bundle",
                                             "audio": view["audio_file"] is not None},
                                  "subject-request")
                await context.progress(done, len(ids))
            document = {
                "request": {"id": str(request.id), "kind": "access",
                            "created_at": request.created_at.isoformat(),
                            "generated_at": self.clock().isoformat()},
                "subject": request.subject.as_dict(),
                "recordings": views,
            }
            await loop.run_in_executor(None, _write_entries, archive, document, views)
        finally:
            await loop.run_in_executor(None, archive.close)

    async def _erasure(self, request: store.SubjectRequest,
                       context: JobContext) -> Mapping[str, Any]:
        ids = await store.find_subject_recordings(self.db, request.subject)
        already = {d.recording_id: d for d in await store.list_items(self.db, request.id)}
        ids += [rid for rid in already if rid not in ids]  # resumed: erased ones are not found
        await context.progress(0, len(ids))
        policies = await retention_store.list_policies(self.db)
        actor = context.job.created_by or "system:subject-request"
        decisions: list[Decision] = []
        for done, rid in enumerate(ids, start=1):
            if rid in already and already[rid].outcome == "erased":
                decisions.append(already[rid])
                continue
            decision = await self._erase_one(request, rid, policies, actor)
            decisions.append(decision)
            await store.save_items(self.db, request.id, [decision])
            await context.progress(done, len(ids))
        erased = sum(d.outcome == "erased" for d in decisions)
        refused = sum(d.outcome == "refused" for d in decisions)
        await store.update_request(self.db, request.id, state="done", found=len(ids),
                                   erased=erased, refused=refused, finished_at=self.clock())
        self.counters.subject_erased += erased
        self.counters.subject_refused += refused
        await self._audit(actor, "subject.erasure", str(request.id),
                          {"found": len(ids), "erased": erased, "refused": refused},
                          "subject-request")
        return {"request_id": str(request.id), "found": len(ids), "erased": erased,
                "refused": refused}

    async def _erase_one(self, request: store.SubjectRequest, rid: UUID,
                         policies: list[Any], actor: str) -> Decision:
        now = self.clock()
        facts = await retention_store.recording_facts(self.db, [rid])
        if rid not in facts:
            return Decision(rid, "failed", "not_found")
        state, recording = facts[rid]
        status = RecordingStatus(rid, state, await held_matters(self.db, rid),
                                 obligations_of(recording, policies, self.limits, now))
        decision = plan_erasure(status)
        if decision.outcome == "erase":
            try:
                await erase_recording(self.db, rid, actor=actor,
                                      reason=f"GDPR Art. 17 request {request.id}",
                                      now=now, source="subject-request")
            except RecordingHeld as exc:
                decision = Decision(rid, "refused", "legal_hold", matter=exc.matters[0])
            except ErasureError as exc:
                decision = Decision(rid, "failed", type(exc).__name__)
            else:
                decision = Decision(rid, "erased")
        if decision.outcome == "refused":
            await self._audit(actor, "recording.erase", str(rid),
                              {"request": str(request.id), "refused": decision.reason,
                               "retained_until": None if decision.until is None
                               else decision.until.isoformat()},
                              "subject-request", outcome="failure")
        return decision

    # ---------------------------------------------------------------- bundles

    async def expire_bundles(self, max_age: timedelta) -> int:
        """Delete bundle files older than `max_age` (they are encrypted, but a bundle is a
        copy of personal data that should not outlive its delivery)."""
        cutoff = self.clock() - max_age
        rows = await self.db.fetch(
            """SELECT id, bundle_path FROM subject_requests
               WHERE bundle_path IS NOT NULL AND finished_at < $1 AND bundle_node = $2""",
            cutoff, self.node_id)
        for row in rows:
            path = Path(row["bundle_path"])
            if path.parent == self.bundle_dir:
                path.unlink(missing_ok=True)
            await store.update_request(self.db, row["id"], bundle_path=None)
        return len(rows)


def _copy_audio(archive: zipfile.ZipFile, name: str, opened: Any) -> None:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_STORED  # Opus does not compress
    with archive.open(info, mode="w", force_zip64=True) as entry:
        for piece in opened.read():
            entry.write(piece)


def _csv_cell(value: object) -> str:
    text = "" if value is None else str(value)
    if text.startswith(("=", "+", "-", "@", "\t", "\r")) and not text.lstrip("+-").replace(
            ".", "").isdigit():
        return "'" + text
    return text


def _write_entries(archive: zipfile.ZipFile, document: Mapping[str, Any],
                   views: list[dict[str, Any]]) -> None:
    archive.writestr("recordings.json", json.dumps(document, indent=2, ensure_ascii=False))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for v in views:
        parties = v["participants"]
        notes = v["annotations"]
        writer.writerow([_csv_cell(x) for x in (
            v["id"], v["call_id"], v["session_id"], v["state"], v["started_at"],
            v["ended_at"], v["duration_s"],
            "; ".join(p["aor"] or "" for p in parties),
            "; ".join(p["name"] or "" for p in parties),
            "; ".join(p["number"] or "" for p in parties),
            "; ".join(a["value"] for a in notes if a["kind"] == "tag"),
            "; ".join(a["value"] for a in notes if a["kind"] == "flag"),
            " | ".join(a["value"] for a in notes if a["kind"] == "comment"),
            v["audio_file"] or "",
        )])
    archive.writestr("recordings.csv", buffer.getvalue())
    archive.writestr("README.txt", (
        "Your personal data in call recordings (GDPR Art. 15).\n"
        "recordings.json: every recording's metadata, parties and annotations.\n"
        "recordings.csv: the same, one line per recording.\n"
        "audio/: each recording's audio, Ogg Opus (one channel per party).\n"))
