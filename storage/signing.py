"""Tamper evidence for recordings: Ed25519 signatures over recording summaries.

MiFID II wants proof that a recording was not altered.  When a recording is finished the
node signs its summary (ids, hashes, sizes; see `storage.recording_file.FileSummary`) with
its own Ed25519 key.  The raw 32-byte public key is stored in PostgreSQL next to the
signature and exported as a pin (`verify` trusts pinned keys, never the database's copy: whoever
can write the database could otherwise insert a key of their own and re-sign a summary).

What is signed is ``SIGNATURE_CONTEXT + canonical_summary_bytes(summary)``.  The context
prefix keeps a summary signature from being valid for anything else this key may sign.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from storage.keys import (
    KeyEncryptionKey,
    KeyRing,
    KeyStoreError,
    Sealed,
    ensure_private_dir,
    read_secret_file,
    write_secret_file,
)

__all__ = [
    "PIN_FILE",
    "SIGNATURE_CONTEXT",
    "SIGNING_KEY_FILE",
    "NodeSigningKey",
    "SigningError",
    "SigningKeyHolder",
    "canonical_summary_bytes",
    "load_or_create_sealed_signing_key",
    "load_or_create_signing_key",
    "open_signing_key",
    "parse_pins",
    "pin_line",
    "reseal_signing_keys",
    "seal_signing_key",
    "public_key_id",
    "verify_signature",
]

SIGNATURE_CONTEXT = b"siprec recording summary v1\n"
SIGNING_KEY_FILE = "node-signing.key"
_PUBLIC_KEY_SIZE = 32
_SIGNATURE_SIZE = 64


class SigningError(Exception):
    """A summary cannot be encoded, or the node signing key cannot be loaded or created."""


def _canonical_value(value: object, path: str) -> object:
    # bool before int: bool is an int subclass and must stay true/false.
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise SigningError(f"{path}: datetime must be timezone-aware")
        return value.astimezone(UTC).isoformat()
    if isinstance(value, float):
        # Float text differs between JSON implementations; a verifier in another
        # language could not rebuild the same bytes.
        raise SigningError(f"{path}: floats are not signable, use integers (e.g. ms)")
    if isinstance(value, Mapping):
        return _canonical_mapping(value, path)
    if isinstance(value, Sequence):
        return [_canonical_value(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise SigningError(f"{path}: {type(value).__name__} is not signable")


def _canonical_mapping(mapping: Mapping[Any, object], path: str) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise SigningError(f"{path}: keys must be strings")
        result[key] = _canonical_value(value, f"{path}.{key}")
    return result


def canonical_summary_bytes(summary: Mapping[str, object]) -> bytes:
    """The one byte string a summary is signed as.

    JSON with keys sorted, separators ``,`` and ``:`` and no whitespace, non-ASCII text as
    UTF-8 (not ``\\u`` escapes).  Values: null, booleans, integers, strings, lists and
    objects as such; ``bytes`` as lowercase hex strings; ``UUID`` as its canonical
    hyphenated lowercase string; timezone-aware ``datetime`` converted to UTC in ISO 8601
    (``2024-05-01T12:00:00+00:00``).  Floats, naive datetimes and any other type raise
    `SigningError`.
    """
    document = _canonical_mapping(summary, "summary")
    try:
        return json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:
        raise SigningError(f"summary cannot be encoded: {exc}") from None


def public_key_id(public_key: bytes) -> str:
    """A short public name of a node key: 16 hex chars of SHA-256 of the raw public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


class NodeSigningKey:
    """This node's Ed25519 key.  Its repr never shows the private key."""

    __slots__ = ("_private", "_public", "key_id")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self._public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = public_key_id(self._public)

    def __repr__(self) -> str:
        return f"NodeSigningKey(key_id={self.key_id!r})"

    def public_key_bytes(self) -> bytes:
        """The raw 32-byte Ed25519 public key, to store where verifiers can read it."""
        return self._public

    def sign(self, summary: Mapping[str, object]) -> bytes:
        """A 64-byte Ed25519 signature over the summary's canonical bytes."""
        return self._private.sign(SIGNATURE_CONTEXT + canonical_summary_bytes(summary))

    def sign_bytes(self, message: bytes) -> bytes:
        """A signature over a message that carries its own context prefix (audit
        checkpoints); never a summary's context."""
        if message.startswith(SIGNATURE_CONTEXT):
            raise SigningError("a message may not imitate a recording summary")
        return self._private.sign(message)


def verify_signature(public_key: bytes, summary: Mapping[str, object], signature: bytes) -> bool:
    """True only if `signature` is this key's signature over exactly this summary.

    A malformed public key or signature (from the database, say) is simply not valid.
    A summary that cannot be encoded raises `SigningError`: it is a caller's mistake.
    """
    message = SIGNATURE_CONTEXT + canonical_summary_bytes(summary)
    if len(public_key) != _PUBLIC_KEY_SIZE or len(signature) != _SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def load_or_create_signing_key(directory: Path) -> NodeSigningKey:
    """Load ``node-signing.key`` (PKCS#8 PEM, mode 0600) from `directory`, creating it once.

    The directory is created 0700 if missing; a directory or key file open to group or
    others is refused with a message saying how to fix it.
    """
    directory = Path(directory)
    path = directory / SIGNING_KEY_FILE
    try:
        ensure_private_dir(directory)
        if not os.path.lexists(path):
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            try:
                write_secret_file(path, pem)
            except KeyStoreError:
                if not os.path.lexists(path):
                    raise
                # Another process created it first: use theirs.
        raw = read_secret_file(path)
    except KeyStoreError as exc:
        raise SigningError(str(exc)) from None
    try:
        private = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise SigningError(f"signing key file {path} is damaged or encrypted") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningError(f"signing key file {path} does not hold an Ed25519 key")
    return NodeSigningKey(private)


# ------------------------------------------------------------------------------ sealed versions
#
# A node's signing key is a row of signing_keys whose private half is sealed (AES-256-GCM) under
# a master key version: it is as safe as the master key, travels with the database, and is
# re-sealed when the master key rotates. Its public half is exported (the pin file below and
# `siprec-server keys status`) so that `verify` can trust keys pinned outside the database.

_SEAL_CONTEXT = b"siprec signing key v1"
PIN_FILE = "signing-keys.pub"


def _seal_aad(key_id: str, master_id: str) -> bytes:
    return _SEAL_CONTEXT + key_id.encode() + b"|" + master_id.encode()


def seal_signing_key(master: KeyEncryptionKey, key: NodeSigningKey) -> bytes:
    nonce = secrets.token_bytes(12)
    raw = key._private.private_bytes(serialization.Encoding.Raw,
                                     serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
    return nonce + master.encrypt(nonce, raw, _seal_aad(key.key_id, master.key_id))


def open_signing_key(master: KeyEncryptionKey, sealed: bytes, key_id: str) -> NodeSigningKey:
    raw = master.decrypt(sealed[:12], sealed[12:], _seal_aad(key_id, master.key_id))
    key = NodeSigningKey(Ed25519PrivateKey.from_private_bytes(raw))
    if key.key_id != key_id:
        raise SigningError(f"sealed signing key {key_id} opens to another key")
    return key


def pin_line(key: NodeSigningKey | tuple[str, bytes]) -> str:
    """`ed25519 <key id> <base64 public key>`: one line of a pin file or of signing_key_pins."""
    key_id, public = (key.key_id, key.public_key_bytes()) if isinstance(
        key, NodeSigningKey) else key
    return f"ed25519 {key_id} {base64.b64encode(public).decode('ascii')}"


def parse_pins(lines: Iterable[str]) -> dict[str, bytes]:
    """Pinned public keys by key id; SigningError for a line that is not a pin (a key id that
    does not match its public key included)."""
    pins: dict[str, bytes] = {}
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        if len(parts) == 1:
            parts = ["ed25519", "", parts[0]]
        try:
            public = base64.b64decode(parts[2], validate=True)
        except (ValueError, IndexError):
            raise SigningError(f"not a signing key pin: {text[:60]!r}") from None
        if len(parts) != 3 or parts[0] != "ed25519" or len(public) != _PUBLIC_KEY_SIZE:
            raise SigningError(f"not a signing key pin: {text[:60]!r}")
        if parts[1] and parts[1] != public_key_id(public):
            raise SigningError(f"pin {parts[1]} does not match its public key")
        pins[public_key_id(public)] = public
    return pins


def export_pin(directory: Path, key: NodeSigningKey) -> None:
    """Append the key's pin to directory/signing-keys.pub unless it is there."""
    path = Path(directory) / PIN_FILE
    line = pin_line(key)
    existing = path.read_text().splitlines() if path.exists() else []
    if line not in existing:
        with open(path, "a", encoding="ascii") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


async def load_or_create_sealed_signing_key(
    db: asyncpg.Pool, ring: KeyRing, node_id: str, key_dir: Path, now: datetime
) -> tuple[NodeSigningKey, bool]:
    """This node's signing key, unsealed with the ring; created (sealed under the current master
    key) on a node's first start. A key file left by an older release is taken over once and
    then overwritten and removed. Returns (key, created)."""
    row = await db.fetchrow(
        """SELECT key_id, sealed_private, sealed_under FROM signing_keys
           WHERE node_id = $1 AND sealed_private IS NOT NULL AND retired_at IS NULL
           ORDER BY created_at DESC LIMIT 1""", node_id)
    if row is not None:
        key = open_signing_key(ring.get(row["sealed_under"]), bytes(row["sealed_private"]),
                               row["key_id"])
        export_pin(key_dir, key)
        return key, False
    legacy = Path(key_dir) / SIGNING_KEY_FILE
    if legacy.exists():
        key = load_or_create_signing_key(key_dir)
    else:
        key = NodeSigningKey(Ed25519PrivateKey.generate())
    master = ring.current
    await db.execute(
        """INSERT INTO signing_keys (key_id, node_id, public_key, created_at, sealed_private,
                                     sealed_under)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (key_id) DO UPDATE SET sealed_private = EXCLUDED.sealed_private,
               sealed_under = EXCLUDED.sealed_under""",
        key.key_id, node_id, key.public_key_bytes(), now, seal_signing_key(master, key),
        master.key_id)
    ensure_private_dir(Path(key_dir))
    export_pin(key_dir, key)
    if legacy.exists():
        size = legacy.stat().st_size
        with open(legacy, "r+b") as f:
            f.write(bytes(size))
            f.flush()
            os.fsync(f.fileno())
        legacy.unlink()
    return key, True


async def reseal_signing_keys(db: asyncpg.Pool, ring: KeyRing, from_master: str) -> int:
    """Re-seal every signing key sealed under `from_master` under the ring's current key."""
    rows = await db.fetch("SELECT key_id, sealed_private FROM signing_keys "
                          "WHERE sealed_under = $1", from_master)
    for row in rows:
        key = open_signing_key(ring.get(from_master), bytes(row["sealed_private"]),
                               row["key_id"])
        current = ring.current
        await db.execute(
            "UPDATE signing_keys SET sealed_private = $2, sealed_under = $3 WHERE key_id = $1",
            row["key_id"], seal_signing_key(current, key), current.key_id)
    return len(rows)


class SigningKeyHolder:
    """The node's signing key as the media service holds it: there before the key is (sealed
    start), usable once the custody loaded it."""

    def __init__(self, key: NodeSigningKey | None = None) -> None:
        self._key = key

    def load(self, key: NodeSigningKey) -> None:
        self._key = key

    def _get(self) -> NodeSigningKey:
        if self._key is None:
            raise Sealed("the node's signing key is sealed")
        return self._key

    @property
    def key_id(self) -> str:
        return self._get().key_id

    def public_key_bytes(self) -> bytes:
        return self._get().public_key_bytes()

    def sign(self, summary: Mapping[str, object]) -> bytes:
        return self._get().sign(summary)

    def sign_bytes(self, message: bytes) -> bytes:
        return self._get().sign_bytes(message)

    @property
    def loaded(self) -> bool:
        return self._key is not None
