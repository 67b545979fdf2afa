"""Master keys (KEK) and per-recording data keys (DEK).

Every recording is encrypted with its own fresh 256-bit data key.  The data key is stored
only wrapped (AES-256-GCM) under a master key, in PostgreSQL, never next to the media: so
deleting the wrapped key erases every copy of the recording (crypto-shredding), and
rotating the master key re-wraps small data keys instead of rewriting media.

A wrapped key is bound to its recording id and its master key id, so it cannot be
copied onto another recording's row to decrypt that recording's file.

A master key is anything with a key id that can AES-256-GCM-seal and open bytes
(`KeyEncryptionKey`): `MasterKey` holds the 32 bytes in memory; a PKCS#11 token key
(storage/pkcs11_keys.py) never leaves its token. The wrapped layout is the same for both.

`KeyRing` is the one holder of the master keys a process knows. It is created before the keys
exist (sealed) and filled by the key custody (storage/custody.py) at unseal and at every
rotation, so everything that was handed the ring at start-up (media, write-behind journal, API)
sees the keys of the moment without being rewired. `LocalKeyStore` keeps master keys as files
with mode 0600 in a 0700 directory: the development custody only.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import json
import os
import secrets
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Protocol
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KeyEncryptionKey",
    "KeyRing",
    "KeyStoreError",
    "KeyUnwrapError",
    "LocalKeyStore",
    "MasterKey",
    "Sealed",
    "UnknownMasterKey",
    "data_key_id",
    "key_commitment",
    "ensure_private_dir",
    "master_key_id",
    "new_data_key",
    "read_secret_file",
    "rewrap_data_key",
    "unwrap_data_key",
    "wrap_data_key",
    "wrapped_key_id",
    "write_secret_file",
]

KEY_SIZE = 32
_WRAP_VERSION = 1
_WRAP_CONTEXT = b"siprec data key wrap v1"
_NONCE_SIZE = 12
_WRAPPED_DEK_SIZE = KEY_SIZE + 16
_KEY_FILE_PREFIX = "master-"
_KEY_FILE_SUFFIX = ".key"


class KeyStoreError(Exception):
    """A key cannot be created, loaded, found or unwrapped."""


class KeyUnwrapError(KeyStoreError):
    """A wrapped data key does not open with this master key for this recording."""


class UnknownMasterKey(KeyStoreError):
    """No master key with that id is loaded."""


class Sealed(KeyStoreError):
    """The master keys are not in memory: the server waits for its custodians' shares."""

    def __init__(self, message: str = "the key store is sealed: the custodians' shares are "
                                      "needed (siprec-server keys unseal)") -> None:
        super().__init__(message)


def _derive_id(key: bytes, label: bytes) -> str:
    # A MAC of a fixed label under the key names the key without revealing it.
    return hmac.new(key, label, hashlib.sha256).hexdigest()[:16]


def master_key_id(key: bytes) -> str:
    """The public name of a master key: 16 hex chars of HMAC-SHA256(key, "siprec key id")."""
    return _derive_id(key, b"siprec key id")


def key_commitment(key: bytes) -> bytes:
    """A 256-bit commitment to a master key, stored with its version: a key rebuilt from shares
    is used only if it matches (a wrong share silently gives a wrong key)."""
    return hmac.new(key, b"siprec master key commitment v1", hashlib.sha256).digest()


def data_key_id(dek: bytes) -> str:
    """A public name for a data key, suitable as the media file header's key id."""
    return _derive_id(dek, b"siprec data key id")


@dataclass(frozen=True, slots=True)
class MasterKey:
    """A key-encryption key.  Its repr never shows the key bytes."""

    key_id: str
    key: bytes = field(repr=False)
    created_at: datetime

    def __post_init__(self) -> None:
        if len(self.key) != KEY_SIZE:
            raise ValueError("master key must be 32 bytes")
        if self.created_at.tzinfo is None:
            raise ValueError("created_at must be timezone-aware")
        if self.key_id != master_key_id(self.key):
            raise ValueError("master key id does not match the key")

    @classmethod
    def from_key(cls, key: bytes, created_at: datetime) -> MasterKey:
        return cls(key_id=master_key_id(key), key=key, created_at=created_at)

    @classmethod
    def generate(cls, created_at: datetime) -> MasterKey:
        return cls.from_key(secrets.token_bytes(KEY_SIZE), created_at)

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return _aead(self.key).encrypt(nonce, data, aad)

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        try:
            return _aead(self.key).decrypt(nonce, data, aad)
        except InvalidTag:
            raise KeyUnwrapError("does not authenticate under this master key") from None


@functools.lru_cache(maxsize=8)
def _aead(key: bytes) -> AESGCM:
    # Building the cipher costs as much as using it once: a re-wrap of a million data keys
    # uses the same two master keys throughout.
    return AESGCM(key)


class KeyEncryptionKey(Protocol):
    """A master key: AES-256-GCM under a key that may live in memory or in a token."""

    @property
    def key_id(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        """Ciphertext with its 16-byte tag appended."""
        ...

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        """KeyUnwrapError when the data does not authenticate."""
        ...


class KeyRing:
    """The master keys a process knows; `current` wraps new data keys.

    Sealed (no keys) until the key custody loads it; every holder sees what was loaded last.
    """

    __slots__ = ("_by_id", "_current")

    def __init__(self, current: KeyEncryptionKey | None,
                 by_id: Mapping[str, KeyEncryptionKey]) -> None:
        self._current = current
        self._by_id: Mapping[str, KeyEncryptionKey] = MappingProxyType(dict(by_id))

    @classmethod
    def sealed(cls) -> KeyRing:
        return cls(None, {})

    def __repr__(self) -> str:
        if self._current is None:
            return "KeyRing(sealed)"
        return f"KeyRing(current={self._current.key_id!r}, ids={sorted(self._by_id)!r})"

    @property
    def is_sealed(self) -> bool:
        return self._current is None

    @property
    def current(self) -> KeyEncryptionKey:
        if self._current is None:
            raise Sealed()
        return self._current

    @property
    def by_id(self) -> Mapping[str, KeyEncryptionKey]:
        return self._by_id

    def load(self, current: KeyEncryptionKey, by_id: Mapping[str, KeyEncryptionKey]) -> None:
        """Replace what the ring holds (the key custody: unseal, rotation, destruction)."""
        if current.key_id not in by_id:
            raise ValueError("the current key must be one of the ring's keys")
        self._by_id = MappingProxyType(dict(by_id))
        self._current = current

    def seal(self) -> None:
        """Forget every key."""
        self._current = None
        self._by_id = MappingProxyType({})

    def get(self, key_id: str) -> KeyEncryptionKey:
        if self._current is None:
            raise Sealed()
        try:
            return self._by_id[key_id]
        except KeyError:
            raise UnknownMasterKey(f"master key {key_id!r} is not loaded") from None

    def unwrap(self, wrapped: bytes, recording_id: UUID) -> bytes:
        """Unwrap with whichever loaded master key the wrapped key names."""
        return unwrap_data_key(self.get(wrapped_key_id(wrapped)), wrapped, recording_id)


def new_data_key() -> bytes:
    """A fresh 256-bit data key for one recording."""
    return secrets.token_bytes(KEY_SIZE)


def _wrap_prefix(key_id: str) -> bytes:
    encoded = key_id.encode("utf-8")
    return struct.pack(">BB", _WRAP_VERSION, len(encoded)) + encoded


def _wrap_aad(prefix: bytes, recording_id: UUID) -> bytes:
    return _WRAP_CONTEXT + prefix + recording_id.bytes


def wrap_data_key(master: KeyEncryptionKey, dek: bytes, recording_id: UUID) -> bytes:
    """Encrypt a data key under a master key, bound to the recording and the master key id.

    Layout: version (1 byte, =1) || key id length (1) || master key id (ASCII) ||
    nonce (12) || AES-256-GCM ciphertext of the data key with tag (48);
    AAD = b"siprec data key wrap v1" || everything before the nonce || recording id (16).
    """
    if len(dek) != KEY_SIZE:
        raise ValueError("data key must be 32 bytes")
    prefix = _wrap_prefix(master.key_id)
    nonce = secrets.token_bytes(_NONCE_SIZE)
    sealed = master.encrypt(nonce, dek, _wrap_aad(prefix, recording_id))
    return prefix + nonce + sealed


def _split_wrapped(wrapped: bytes) -> tuple[str, bytes, bytes, bytes]:
    if len(wrapped) < 2 or wrapped[0] != _WRAP_VERSION:
        raise KeyUnwrapError("not a wrapped data key (unknown version)")
    key_id_end = 2 + wrapped[1]
    if len(wrapped) != key_id_end + _NONCE_SIZE + _WRAPPED_DEK_SIZE:
        raise KeyUnwrapError("wrapped data key has the wrong length")
    try:
        key_id = wrapped[2:key_id_end].decode("ascii")
    except UnicodeDecodeError:
        raise KeyUnwrapError("wrapped data key names an invalid master key id") from None
    nonce = wrapped[key_id_end : key_id_end + _NONCE_SIZE]
    return key_id, wrapped[:key_id_end], nonce, wrapped[key_id_end + _NONCE_SIZE :]


def wrapped_key_id(wrapped: bytes) -> str:
    """The id of the master key a wrapped data key claims to be wrapped under."""
    return _split_wrapped(bytes(wrapped))[0]


def unwrap_data_key(master: KeyEncryptionKey, wrapped: bytes, recording_id: UUID) -> bytes:
    """Recover a data key; `KeyUnwrapError` if the key, the recording or the bytes are wrong."""
    key_id, prefix, nonce, sealed = _split_wrapped(bytes(wrapped))
    if key_id != master.key_id:
        raise KeyUnwrapError(
            f"data key is wrapped under master key {key_id!r}, not {master.key_id!r}"
        )
    try:
        return master.decrypt(nonce, sealed, _wrap_aad(prefix, recording_id))
    except KeyUnwrapError:
        raise KeyUnwrapError("wrapped data key does not belong to this recording") from None


def rewrap_data_key(ring: KeyRing, wrapped: bytes, recording_id: UUID) -> bytes:
    """Key rotation: the same data key, wrapped under the ring's current master key."""
    return wrap_data_key(ring.current, ring.unwrap(wrapped, recording_id), recording_id)


def _check_private_dir(directory: Path) -> None:
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise KeyStoreError(f"cannot use key directory {directory}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise KeyStoreError(f"key directory {directory} is not a directory")
    if st.st_mode & 0o077:
        raise KeyStoreError(
            f"key directory {directory} is accessible by group/others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 700 {directory}"
        )


def ensure_private_dir(directory: Path) -> None:
    """Create `directory` with mode 0700 if missing; refuse one open to group/others."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyStoreError(f"cannot create key directory {directory}: {exc.strerror}") from None
    _check_private_dir(directory)


def write_secret_file(path: Path, data: bytes) -> None:
    """Create `path` atomically with mode 0600; never overwrites an existing file.

    The bytes go to a temporary name created with O_EXCL and mode 0600 (so they are never
    readable by others, not even for an instant), are fsynced, then linked to `path` and
    the directory is fsynced: after a crash `path` is either absent or complete.
    """
    directory = path.parent
    temp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(temp, flags, 0o600)
    except OSError as exc:
        raise KeyStoreError(f"cannot create key file in {directory}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask may only have removed bits; be exact
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() fails if `path` exists, where rename() would silently replace a key.
        os.link(temp, path)
    except FileExistsError:
        raise KeyStoreError(f"key file {path} already exists") from None
    except OSError as exc:
        raise KeyStoreError(f"cannot write key file {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise KeyStoreError(f"cannot open key directory {directory}: {exc.strerror}") from None
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_secret_file(path: Path, max_size: int = 65536) -> bytes:
    """Read a key file, refusing one that group or others could read or write."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise KeyStoreError(f"cannot open key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)  # of the opened file, so a swap after the check cannot fool us
        if not stat.S_ISREG(st.st_mode):
            raise KeyStoreError(f"key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyStoreError(
                f"key file {path} is accessible by group/others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it. "
                f"Run: chmod 600 {path}"
            )
        if st.st_size > max_size:
            raise KeyStoreError(f"key file {path} is too large to be a key file")
        chunks = []
        while chunk := os.read(fd, max_size + 1):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise KeyStoreError(f"cannot read key file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


class LocalKeyStore:
    """Master keys as one file each, ``master-<key id>.key``, in a private directory.

    A key file is JSON: {"key_id": ..., "key": base64 of 32 bytes, "created_at": RFC 3339}.
    The newest key (by created_at, then key id) is the current one; older keys stay
    loaded so that data keys wrapped under them still open until they are re-wrapped.
    """

    __slots__ = ("_directory",)

    def __init__(self, directory: Path) -> None:
        self._directory = Path(directory)

    @property
    def directory(self) -> Path:
        return self._directory

    def load_or_create(self, now: datetime) -> tuple[KeyRing, bool]:
        """Load every master key; create the first one at `now` if there is none."""
        ensure_private_dir(self._directory)
        keys = self._load_all()
        if keys:
            return _ring(keys), False
        self._store(MasterKey.generate(now))
        return _ring(self._load_all()), True

    def rotate(self, now: datetime) -> KeyRing:
        """Add a new master key, current from now on (data keys are re-wrapped elsewhere)."""
        ensure_private_dir(self._directory)
        self._store(MasterKey.generate(now))
        return _ring(self._load_all())

    def load(self) -> list[MasterKey]:
        """Every master key in the directory (none when it is new)."""
        ensure_private_dir(self._directory)
        return self._load_all()

    def create(self, now: datetime) -> MasterKey:
        """A new master key, stored."""
        ensure_private_dir(self._directory)
        master = MasterKey.generate(now)
        self._store(master)
        return master

    def destroy(self, key_id: str) -> bool:
        """Overwrite a master key's file with zeros, then unlink it; False if there was none.

        On a journaling or copy-on-write file system the old blocks may survive the overwrite:
        the guarantee of destruction is the sealed or PKCS#11 custody, never this one."""
        path = self._directory / f"{_KEY_FILE_PREFIX}{key_id}{_KEY_FILE_SUFFIX}"
        try:
            fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise KeyStoreError(f"cannot destroy key file {path}: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            os.write(fd, bytes(size))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(path)
        _fsync_dir(self._directory)
        return True

    def _store(self, master: MasterKey) -> None:
        if master.created_at.tzinfo is None:
            raise ValueError("created_at must be timezone-aware")
        document = {
            "key_id": master.key_id,
            "key": base64.b64encode(master.key).decode("ascii"),
            "created_at": master.created_at.isoformat(),
        }
        path = self._directory / f"{_KEY_FILE_PREFIX}{master.key_id}{_KEY_FILE_SUFFIX}"
        write_secret_file(path, json.dumps(document, sort_keys=True).encode("utf-8") + b"\n")

    def _load_all(self) -> list[MasterKey]:
        try:
            names = sorted(os.listdir(self._directory))
        except OSError as exc:
            raise KeyStoreError(f"cannot list key directory: {exc.strerror}") from None
        return [
            self._load(self._directory / name)
            for name in names
            if name.startswith(_KEY_FILE_PREFIX) and name.endswith(_KEY_FILE_SUFFIX)
        ]

    @staticmethod
    def _load(path: Path) -> MasterKey:
        raw = read_secret_file(path)
        try:
            document = json.loads(raw)
            key = base64.b64decode(document["key"], validate=True)
            master = MasterKey(
                key_id=document["key_id"],
                key=key,
                created_at=datetime.fromisoformat(document["created_at"]),
            )
        except (ValueError, KeyError, TypeError):
            # No detail: the message must not echo key material.
            raise KeyStoreError(f"key file {path} is damaged or not a master key") from None
        if path.name != f"{_KEY_FILE_PREFIX}{master.key_id}{_KEY_FILE_SUFFIX}":
            raise KeyStoreError(f"key file {path} holds key {master.key_id}, not its name's")
        return master


def _ring(keys: list[MasterKey]) -> KeyRing:
    current = max(keys, key=lambda k: (k.created_at, k.key_id))
    return KeyRing(current, {k.key_id: k for k in keys})
