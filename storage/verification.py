"""Tamper checks of recordings (MiFID II: prove a recording was not altered).

A recording passes when the node's Ed25519 signature over its summary verifies with a trusted
public key (pinned outside the database; the database's copy only when no pins are given, as the
API's quick check does), the database's hash columns, pauses, participants and metadata events
equal what the summary signed, the audit trail's `recording.sealed` names this exact summary,
and the file on disk authenticates chunk by chunk and hashes to the signed values. Without the
master key (a sealed-custody server's keys live only in its memory) the file's ciphertext hash is
checked instead of decrypting it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from storage import recordings
from storage.keys import KeyRing, KeyStoreError
from storage.recording_file import RecordingFileError, summarize
from storage.recording_summary import summary_digest
from storage.signing import verify_signature


@dataclass(frozen=True, slots=True)
class RecordingCheck:
    recording_id: UUID
    problems: tuple[str, ...] = ()
    skipped: str | None = None
    """Why the recording was not checked (still recording, no audio)."""

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class _Problems:
    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.items.append(text)


async def verify_recording(db: asyncpg.Pool, keys: KeyRing | None, recording_id: UUID, *,
                           trusted: Mapping[str, bytes] | None = None) -> RecordingCheck:
    row: Any = await db.fetchrow(
        """SELECT state, file_path, summary, signature, signing_key_id, plaintext_sha256,
                  ciphertext_sha256, plaintext_bytes, ciphertext_bytes, pauses
           FROM recordings WHERE id = $1""",
        recording_id,
    )
    if row is None:
        return RecordingCheck(recording_id, ("no such recording",))
    if row["state"] in ("offered", "recording"):
        return RecordingCheck(recording_id, skipped=f"still {row['state']}")
    if row["file_path"] is None:
        return RecordingCheck(recording_id, skipped="no audio was recorded")
    problems = _Problems()
    summary = row["summary"]
    if summary is None or row["signature"] is None:
        problems.add("no signed summary")
        return RecordingCheck(recording_id, tuple(problems.items))
    if trusted is not None:
        public_key = trusted.get(row["signing_key_id"] or "")
    else:
        public_key = await recordings.get_signing_key(db, row["signing_key_id"] or "")
    if public_key is None:
        problems.add(f"signing key {row['signing_key_id']!r} is not "
                     + ("pinned (a key inserted into the database is not trusted)"
                        if trusted is not None else "registered"))
    elif not verify_signature(public_key, summary, bytes(row["signature"])):
        problems.add("signature does not match the summary (summary or signature altered)")
    for column in ("plaintext_sha256", "ciphertext_sha256"):
        stored = row[column]
        if stored is None or bytes(stored).hex() != summary.get(column):
            problems.add(f"{column} in the database differs from the signed summary")
    for column in ("plaintext_bytes", "ciphertext_bytes"):
        if row[column] != summary.get(column):
            problems.add(f"{column} in the database differs from the signed summary")
    if "pauses" in summary and row["pauses"] != summary["pauses"]:
        problems.add("pauses in the database differ from the signed summary")
    if "metadata_sha256" in summary:
        participants, digests = await recordings.recording_evidence(db, recording_id)
        if participants != summary.get("participants"):
            problems.add("participants in the database differ from the signed summary")
        if digests != summary.get("metadata_sha256"):
            problems.add("metadata events in the database differ from the signed summary")
        sealed = await db.fetchval(
            """SELECT details->>'summary_sha256' FROM audit_events
               WHERE action = 'recording.sealed' AND target = $1 ORDER BY seq DESC LIMIT 1""",
            str(recording_id))
        if sealed is None:
            problems.add("the audit trail has no recording.sealed event for it")
        elif sealed != summary_digest(summary):
            problems.add("the summary is not the one the audit trail recorded when it was "
                         "sealed (summary replaced and re-signed?)")
    if keys is None or keys.is_sealed:
        _check_ciphertext(Path(row["file_path"]), summary, problems)
        return RecordingCheck(recording_id, tuple(problems.items))
    key = await recordings.get_recording_key(db, recording_id)
    if key is None:
        problems.add("the data key is gone (erased?)")
        return RecordingCheck(recording_id, tuple(problems.items))
    try:
        data_key = keys.unwrap(key[1], recording_id)
    except KeyStoreError as exc:
        problems.add(f"data key cannot be unwrapped: {exc}")
        return RecordingCheck(recording_id, tuple(problems.items))
    try:
        with open(Path(row["file_path"]), "rb") as f:
            actual = summarize(f, recording_id=recording_id, data_key=data_key)
    except FileNotFoundError:
        problems.add(f"file missing: {row['file_path']}")
    except RecordingFileError as exc:
        problems.add(f"file does not authenticate: {exc}")
    else:
        if not hmac.compare_digest(actual.plaintext_sha256.hex(),
                                   str(summary.get("plaintext_sha256"))):
            problems.add("decrypted audio differs from the signed hash")
        if not hmac.compare_digest(actual.ciphertext_sha256.hex(),
                                   str(summary.get("ciphertext_sha256"))):
            problems.add("file bytes differ from the signed hash")
        if actual.ciphertext_bytes != summary.get("ciphertext_bytes"):
            problems.add("file size differs from the signed size")
    return RecordingCheck(recording_id, tuple(problems.items))


def _check_ciphertext(path: Path, summary: Mapping[str, Any], problems: _Problems) -> None:
    """Without the data key: the file's bytes must still hash to the signed value."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
                size += len(block)
    except FileNotFoundError:
        problems.add(f"file missing: {path}")
        return
    if not hmac.compare_digest(digest.hexdigest(), str(summary.get("ciphertext_sha256"))):
        problems.add("file bytes differ from the signed hash")
    if size != summary.get("ciphertext_bytes"):
        problems.add("file size differs from the signed size")


async def verify_all(db: asyncpg.Pool, keys: KeyRing | None, *,
                     trusted: Mapping[str, bytes] | None = None) -> list[RecordingCheck]:
    return [await verify_recording(db, keys, rid, trusted=trusted)
            for rid in await recordings.recording_ids(db)]
