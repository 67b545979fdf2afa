"""Custodians' shares of a master key: their text form, their digests, and the envelope each one
travels in (encrypted to its custodian's age or OpenPGP public key, or to a passphrase).

A share as a custodian holds it (after decrypting the envelope) is one line of text:

    srs-share1:<base64url of: format (1, =1) | key id length (1) | key id (ASCII) |
                threshold (1) | x (1) | y (32) | check (4)>

`check` is the first 4 bytes of SHA-256 over everything before it: a mistyped or truncated
share is refused at once with a clear message. A share that was altered with care (a valid
check) is refused by its digest: the server keeps SHA-256("siprec share digest v1" | key id |
x | y) of every share it handed out, and nothing else about it. A digest reveals nothing of the
key: for a threshold of two or more every single share is uniformly random.

Envelopes: age (X25519 recipients `age1...`, or scrypt for a passphrase) through pyrage, the
Python binding of the Rust `rage` implementation, armored so that the `age` command line opens
them (`age -d -i key.txt share.age`); OpenPGP through the `gpg` command line in a throw-away
home directory (`gpg -d share.asc` opens it). The server never writes a share in clear anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Any

import pyrage

from storage.keys import KeyStoreError

__all__ = [
    "SHARE_PREFIX",
    "Recipient",
    "Share",
    "ShareError",
    "parse_recipient",
    "seal_share",
    "share_digest",
]

SHARE_PREFIX = "srs-share1:"
_FORMAT = 1
_Y_SIZE = 32
_CHECK_SIZE = 4
_DIGEST_LABEL = b"siprec share digest v1"
MIN_PASSPHRASE = 12
_GPG_TIMEOUT_S = 30


class ShareError(KeyStoreError):
    """A share or a recipient that cannot be used."""


@dataclass(frozen=True, slots=True)
class Share:
    """One custodian's share of one master key version. Its repr never shows y."""

    key_id: str
    threshold: int
    x: int
    y: bytes = field(repr=False)

    def text(self) -> str:
        key_id = self.key_id.encode("ascii")
        body = bytes([_FORMAT, len(key_id)]) + key_id + bytes([self.threshold, self.x]) + self.y
        check = hashlib.sha256(body).digest()[:_CHECK_SIZE]
        return SHARE_PREFIX + base64.urlsafe_b64encode(body + check).decode("ascii").rstrip("=")

    @classmethod
    def parse(cls, text: str) -> Share:
        """ShareError for anything that is not a well-formed share (typo, truncation)."""
        text = "".join(text.split())  # line breaks and spaces from copying are harmless
        if not text.startswith(SHARE_PREFIX):
            raise ShareError(f"not a key share (it should start with {SHARE_PREFIX})")
        encoded = text[len(SHARE_PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except ValueError:
            raise ShareError("the share is damaged (not base64url)") from None
        if len(raw) < 2 + 2 + _Y_SIZE + _CHECK_SIZE or raw[0] != _FORMAT:
            raise ShareError("the share is damaged or of an unknown format")
        body, check = raw[:-_CHECK_SIZE], raw[-_CHECK_SIZE:]
        if hashlib.sha256(body).digest()[:_CHECK_SIZE] != check:
            raise ShareError("the share is damaged or mistyped (its check does not match)")
        id_end = 2 + body[1]
        if len(body) != id_end + 2 + _Y_SIZE:
            raise ShareError("the share is damaged (wrong length)")
        try:
            key_id = body[2:id_end].decode("ascii")
        except UnicodeDecodeError:
            raise ShareError("the share is damaged (bad key id)") from None
        threshold, x = body[id_end], body[id_end + 1]
        if threshold < 2 or x < 1:
            raise ShareError("the share is damaged (bad threshold or index)")
        return cls(key_id, threshold, x, body[id_end + 2:])


def share_digest(key_id: str, x: int, y: bytes) -> bytes:
    """What the server keeps of a share: enough to recognise it, nothing to rebuild it."""
    return hashlib.sha256(_DIGEST_LABEL + key_id.encode("ascii") + bytes([x]) + y).digest()


# ------------------------------------------------------------------------------ envelopes


@dataclass(frozen=True, slots=True)
class Recipient:
    """Whom a share is encrypted to. `value` is a public key, or the passphrase itself (held in
    memory only, never stored; its repr hides it)."""

    kind: str
    """"age", "openpgp" or "passphrase"."""
    value: str = field(repr=False)
    fingerprint: str = ""
    """age: the recipient itself; OpenPGP: the key's fingerprint; passphrase: empty."""

    @property
    def public(self) -> str | None:
        """What may be stored to encrypt to this custodian again (rotation); None for a
        passphrase."""
        return None if self.kind == "passphrase" else self.value

    def describe(self) -> dict[str, str]:
        """For the audit trail and the API: never the passphrase."""
        return {"kind": self.kind, "fingerprint": self.fingerprint}


def parse_recipient(spec: Any) -> Recipient:
    """{"age": "age1..."} | {"openpgp": "-----BEGIN PGP PUBLIC KEY BLOCK-----..."} |
    {"passphrase": "..."}, checked now so that a ceremony never fails half way."""
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ShareError('a recipient is one of {"age": ...}, {"openpgp": ...}, '
                         '{"passphrase": ...}')
    ((kind, value),) = spec.items()
    if not isinstance(value, str) or not value.strip():
        raise ShareError(f"recipient {kind!r} needs a non-empty string")
    if kind == "age":
        value = value.strip()
        try:
            pyrage.x25519.Recipient.from_str(value)
        except Exception:  # noqa: BLE001 - pyrage raises its own kinds for bad keys
            raise ShareError("not an age X25519 recipient (age1...)") from None
        return Recipient("age", value, value)
    if kind == "openpgp":
        return Recipient("openpgp", value, _gpg_fingerprint(value))
    if kind == "passphrase":
        if len(value) < MIN_PASSPHRASE or "\x00" in value:
            raise ShareError(f"a share passphrase needs at least {MIN_PASSPHRASE} characters")
        return Recipient("passphrase", value)
    raise ShareError(f"unknown recipient kind {kind!r} (age, openpgp or passphrase)")


def seal_share(recipient: Recipient, share: Share) -> str:
    """The share's text encrypted to the recipient, ASCII-armored."""
    plaintext = (share.text() + "\n").encode("ascii")
    if recipient.kind == "age":
        sealed = pyrage.encrypt(plaintext, [pyrage.x25519.Recipient.from_str(recipient.value)],
                                armored=True)
        return bytes(sealed).decode("ascii")
    if recipient.kind == "passphrase":
        return bytes(pyrage.passphrase.encrypt(plaintext, recipient.value,
                                               armored=True)).decode("ascii")
    if recipient.kind == "openpgp":
        return _gpg_encrypt(recipient, plaintext)
    raise ShareError(f"unknown recipient kind {recipient.kind!r}")


class _GpgHome:
    """A private, empty GnuPG home for one operation; nothing of the system's keyrings."""

    def __enter__(self) -> str:
        if shutil.which("gpg") is None:
            raise ShareError("OpenPGP recipients need the gpg command (Debian: gnupg)")
        self.path = tempfile.mkdtemp(prefix="siprec-gpg-")
        os.chmod(self.path, 0o700)
        return self.path

    def __exit__(self, *exc: object) -> None:
        # gpg-agent may have been started for this home: ask it to go.
        subprocess.run(["gpgconf", "--homedir", self.path, "--kill", "all"],
                       capture_output=True, check=False, timeout=_GPG_TIMEOUT_S)
        shutil.rmtree(self.path, ignore_errors=True)


def _gpg(home: str, args: list[str], data: bytes | None = None) -> bytes:
    try:
        result = subprocess.run(
            ["gpg", "--homedir", home, "--batch", "--no-tty", "--quiet", *args],
            input=data, capture_output=True, check=False, timeout=_GPG_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ShareError(f"gpg could not be run: {exc}") from None
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ShareError(f"gpg failed: {message[-1] if message else result.returncode}")
    return result.stdout


def _import_key(home: str, armored: str) -> str:
    _gpg(home, ["--import"], armored.encode("utf-8"))
    listing = _gpg(home, ["--with-colons", "--list-keys"]).decode("utf-8", "replace")
    fingerprints = [line.split(":")[9] for line in listing.splitlines()
                    if line.startswith("fpr:")]
    primaries = [line for line in listing.splitlines() if line.startswith("pub:")]
    if len(primaries) != 1 or not fingerprints:
        raise ShareError("an OpenPGP recipient must be exactly one public key")
    return fingerprints[0]


def _gpg_fingerprint(armored: str) -> str:
    with _GpgHome() as home:
        return _import_key(home, armored)


def _gpg_encrypt(recipient: Recipient, plaintext: bytes) -> str:
    with _GpgHome() as home:
        fingerprint = _import_key(home, recipient.value)
        return _gpg(home, ["--trust-model", "always", "--armor", "--encrypt",
                           "--recipient", fingerprint], plaintext).decode("ascii")
