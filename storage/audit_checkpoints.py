"""Signed checkpoints of the audit chain, kept outside the database.

The hash chain (storage/audit.py) shows an edit or a deletion in the middle of the trail, but
someone who can write the table can also delete its last events, or rewrite the chain from some
event on with consistent hashes. A checkpoint pins the trail as it was: the last sequence number,
the head hash, the number of events, the time, signed (Ed25519) by the node's signing key, and
written to a sink the database's writers cannot reach (an append-only file by default; syslog or
a webhook as well). `verify --audit` compares the table with every checkpoint: an event a
checkpoint covered that is gone, or whose hash changed, or a count that shrank, is tampering.
Events after the last checkpoint are covered by the next one: the window is the checkpoint
interval (audit.checkpoint_events / audit.checkpoint_interval).

    {"seq": 1234, "head": "<hex SHA-256>", "count": 1234, "at": "...Z", "node_id": "...",
     "key_id": "<signing key id>", "signature": "<hex Ed25519 over the canonical fields>"}
"""

from __future__ import annotations

import json
import os
import syslog
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "Checkpoint",
    "CheckpointReport",
    "FileSink",
    "SyslogSink",
    "make_checkpoint",
    "read_checkpoints",
    "verify_against_checkpoints",
]

CONTEXT = b"siprec audit checkpoint v1\n"


class Signer(Protocol):
    @property
    def key_id(self) -> str: ...

    def public_key_bytes(self) -> bytes: ...

    def sign_bytes(self, message: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    head: str
    count: int
    at: str
    node_id: str
    key_id: str
    signature: str = ""

    def message(self) -> bytes:
        fields = {"seq": self.seq, "head": self.head, "count": self.count, "at": self.at,
                  "node_id": self.node_id, "key_id": self.key_id}
        return CONTEXT + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def as_json(self) -> str:
        return json.dumps({"seq": self.seq, "head": self.head, "count": self.count,
                           "at": self.at, "node_id": self.node_id, "key_id": self.key_id,
                           "signature": self.signature}, sort_keys=True)

    def signed_by(self, public_key: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(
                bytes.fromhex(self.signature), self.message())
        except (InvalidSignature, ValueError):
            return False
        return True


async def make_checkpoint(db: asyncpg.Pool, signer: Signer, node_id: str,
                          now: datetime) -> Checkpoint | None:
    """A signed checkpoint of the trail's head; None while the trail is empty."""
    async with db.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        head = await conn.fetchrow("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        if head is None:
            return None
        count = await conn.fetchval("SELECT count(*) FROM audit_events WHERE seq <= $1",
                                    head["seq"])
    unsigned = Checkpoint(head["seq"], bytes(head["hash"]).hex(), count,
                          now.astimezone(UTC).isoformat().replace("+00:00", "Z"), node_id,
                          signer.key_id)
    signature = signer.sign_bytes(unsigned.message()).hex()
    return Checkpoint(unsigned.seq, unsigned.head, unsigned.count, unsigned.at,
                      unsigned.node_id, unsigned.key_id, signature)


class FileSink:
    """JSON lines appended to a file, fsynced: the default sink."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(self, checkpoint: Checkpoint) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, (checkpoint.as_json() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)


class SyslogSink:
    def write(self, checkpoint: Checkpoint) -> None:
        syslog.openlog("siprec-server", 0, syslog.LOG_AUTHPRIV)
        syslog.syslog(syslog.LOG_NOTICE, "audit-checkpoint " + checkpoint.as_json())


def read_checkpoints(path: Path) -> list[Checkpoint]:
    """The checkpoints of a file sink; a line that is not one is reported as such."""
    found = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            found.append(Checkpoint(int(data["seq"]), str(data["head"]), int(data["count"]),
                                    str(data["at"]), str(data["node_id"]), str(data["key_id"]),
                                    str(data["signature"])))
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}:{number} is not an audit checkpoint") from None
    return found


@dataclass(frozen=True, slots=True)
class CheckpointReport:
    checkpoints: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


async def verify_against_checkpoints(db: asyncpg.Pool | asyncpg.Connection,
                                     checkpoints: list[Checkpoint],
                                     trusted: Mapping[str, bytes]) -> CheckpointReport:
    problems: list[str] = []
    max_seq = await db.fetchval("SELECT max(seq) FROM audit_events") or 0
    for cp in checkpoints:
        public = trusted.get(cp.key_id)
        if public is None:
            problems.append(f"checkpoint at seq {cp.seq}: signing key {cp.key_id} is not pinned")
            continue
        if not cp.signed_by(public):
            problems.append(f"checkpoint at seq {cp.seq}: bad signature (checkpoint forged or "
                            "altered)")
            continue
        if cp.seq > max_seq:
            problems.append(f"events up to seq {cp.seq} were checkpointed but the trail ends "
                            f"at {max_seq}: its last events were deleted")
            continue
        row: Any = await db.fetchrow("SELECT hash FROM audit_events WHERE seq = $1", cp.seq)
        if row is None:
            problems.append(f"event {cp.seq} (checkpointed) is gone")
        elif bytes(row["hash"]).hex() != cp.head:
            problems.append(f"event {cp.seq} does not have the hash its checkpoint signed: the "
                            "chain was rewritten")
        count = await db.fetchval("SELECT count(*) FROM audit_events WHERE seq <= $1", cp.seq)
        if count != cp.count:
            problems.append(f"{cp.count} events up to seq {cp.seq} were checkpointed, "
                            f"{count} remain")
    return CheckpointReport(len(checkpoints), tuple(problems))
