"""Re-encryption of one recording under a fresh data key (a data key suspected compromised).

The file is rewritten chunk by chunk: decrypted with the old data key in memory and encrypted
straight into a new file with the new one, never as plaintext on disk. Order, so that a crash at
any point leaves the recording readable and a second run finishes it:

1. the new data key, wrapped, is stored beside the old one (recording_keys.next_wrapped_key);
2. the new file is written next to the old (mode 0600), its decrypted hash must equal the signed
   plaintext hash, it is fsynced and renamed over the old file; the waveform peaks beside it
   (storage/peaks.py, keyed from the data key) are re-encrypted the same way;
3. in one transaction: the new wrapped key replaces the old, and the summary, whose ciphertext
   hash and size changed, is signed again (only after the old signature verified);
4. the recording is verified again, signature included.

A file that already opens with the pending key was renamed before a crash: step 2 is skipped.
There is no way to "stop encrypting" or "decrypt in place": plaintext never rests on disk.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID

import asyncpg

from storage.audit import AuditEvent, record_audit
from storage.keys import KeyRing, KeyStoreError, data_key_id, new_data_key, wrap_data_key
from storage.peaks import rekey_peaks
from storage.recording_file import (
    RecordingFileError,
    RecordingFileWriter,
    decrypt_chunks,
    read_header,
)
from storage.recording_summary import summary_digest
from storage.signing import canonical_summary_bytes, verify_signature

__all__ = ["reencrypt_recording"]


class SummarySigner(Protocol):
    @property
    def key_id(self) -> str: ...

    def public_key_bytes(self) -> bytes: ...

    def sign(self, summary: Any) -> bytes: ...


async def reencrypt_recording(db: asyncpg.Pool, ring: KeyRing, recording_id: UUID,
                              signer: SummarySigner | None = None) -> str:
    """One recording; returns the outcome: "reencrypted", or why it was not."""
    row = await db.fetchrow(
        """SELECT r.state, r.file_path, r.summary, r.signature, r.signing_key_id,
                  k.wrapped_key, k.next_wrapped_key, s.public_key
           FROM recordings r JOIN recording_keys k ON k.recording_id = r.id
           LEFT JOIN signing_keys s ON s.key_id = r.signing_key_id
           WHERE r.id = $1""", recording_id)
    if row is None:
        return "no data key (erased, or no audio)"
    if row["state"] in ("offered", "recording"):
        return "still recording"
    if row["file_path"] is None or row["summary"] is None or row["signature"] is None:
        return "no signed file"
    summary = dict(row["summary"])
    if row["public_key"] is None or not verify_signature(
            bytes(row["public_key"]), summary, bytes(row["signature"])):
        return "signature does not verify: not re-encrypting a recording that may be altered"
    if signer is None:
        return "no signing key loaded"
    try:
        old_dek = ring.unwrap(bytes(row["wrapped_key"]), recording_id)
        if row["next_wrapped_key"] is None:
            new_dek = new_data_key()
            pending = wrap_data_key(ring.current, new_dek, recording_id)
            await db.execute("UPDATE recording_keys SET next_wrapped_key = $2 "
                             "WHERE recording_id = $1", recording_id, pending)
        else:
            new_dek = ring.unwrap(bytes(row["next_wrapped_key"]), recording_id)
    except KeyStoreError as exc:
        return f"data key cannot be unwrapped: {exc}"
    path = Path(row["file_path"])
    try:
        with open(path, "rb") as f:
            rewritten = read_header(f).key_id == data_key_id(new_dek)
        if not rewritten:
            _rewrite(path, recording_id, old_dek, new_dek, summary["plaintext_sha256"])
        # The waveform's key derives from the data key: it moves with it.
        rekey_peaks(path, recording_id, old_dek, new_dek)
        with open(path, "rb") as f:
            data = f.read()
    except (OSError, RecordingFileError, ValueError) as exc:
        return f"file not re-encrypted: {exc}"
    new_summary = {**summary, "ciphertext_sha256": hashlib.sha256(data).hexdigest(),
                   "ciphertext_bytes": len(data), "reencrypted": True}
    canonical_summary_bytes(new_summary)  # raises before anything is written if unsignable
    signature = signer.sign(new_summary)
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO signing_keys (key_id, node_id, public_key) VALUES ($1, $2, $3)
               ON CONFLICT (key_id) DO NOTHING""",
            signer.key_id, str(summary.get("node_id", "")), signer.public_key_bytes())
        await conn.execute(
            """UPDATE recording_keys SET wrapped_key = next_wrapped_key,
                   next_wrapped_key = NULL, master_key_id = $2
               WHERE recording_id = $1 AND next_wrapped_key IS NOT NULL""",
            recording_id, ring.current.key_id)
        await conn.execute(
            """UPDATE recordings SET summary = $2, signature = $3, signing_key_id = $4,
                   ciphertext_sha256 = $5, ciphertext_bytes = $6 WHERE id = $1""",
            recording_id, new_summary, signature, signer.key_id,
            bytes.fromhex(new_summary["ciphertext_sha256"]), len(data))
        await record_audit(conn, AuditEvent(
            actor="system:reencrypt", action="recording.sealed", target=str(recording_id),
            details={"summary_sha256": summary_digest(new_summary),
                     "signing_key_id": signer.key_id, "reencrypted": True}))
    if not verify_signature(signer.public_key_bytes(), new_summary, signature):
        return "signature does not verify after re-encryption"
    return "reencrypted"


def _rewrite(path: Path, recording_id: UUID, old_dek: bytes, new_dek: bytes,
             plaintext_sha256: str) -> None:
    temp = path.with_name(path.name + ".reencrypting")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, open(path, "rb") as source:
            writer = RecordingFileWriter(out, recording_id=recording_id, data_key=new_dek,
                                         key_id=data_key_id(new_dek))
            for chunk in decrypt_chunks(source, recording_id=recording_id, data_key=old_dek):
                writer.write(chunk)
            result = writer.close()
            if result.plaintext_sha256.hex() != plaintext_sha256:
                raise RecordingFileError("the decrypted audio differs from the signed hash")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
