"""Tamper evidence for recordings: Ed25519 signatures over recording summaries.

MiFID II wants proof that a recording was not altered.  When a recording is finished the
node signs its summary (ids, hashes, sizes; see `storage.recording_file.FileSummary`) with
its own Ed25519 key.  The raw 32-byte public key is stored in PostgreSQL next to the
signature, so `verify` needs no secret: anyone with read access to the database can check
that the summary is what the node wrote, and then that the file still hashes to it.

What is signed is ``SIGNATURE_CONTEXT + canonical_summary_bytes(summary)``.  The context
prefix keeps a summary signature from being valid for anything else this key may sign.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from storage.keys import KeyStoreError, ensure_private_dir, read_secret_file, write_secret_file

__all__ = [
    "SIGNATURE_CONTEXT",
    "SIGNING_KEY_FILE",
    "NodeSigningKey",
    "SigningError",
    "canonical_summary_bytes",
    "load_or_create_signing_key",
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
