"""The write-behind journal: database writes a node could not make yet, encrypted on local disk.

While the database is away, what live recordings must write (metadata events, the data key and
file of a new stream, the final row and its signed summary, audit events) waits in memory and,
so that a crash in the meantime loses none of it, in this journal. When every waiting write has
reached the database the journal is deleted; at start-up a journal left behind is replayed.

The writes hold personal data (numbers, names in metadata), so the journal is encrypted like a
recording: a fresh data key per journal file, wrapped by the master key (so an HSM-held master key
works the same) and kept in the file's header; each record is AES-256-GCM-sealed with the file id
and its sequence number as associated data, so records cannot be reordered, dropped from the
middle or moved between files unnoticed. A record torn by a crash mid-write ends the journal.

    header:  b"SRWJ" | version (1) | file id (16) | wrapped key length (2) | wrapped key
    record:  length (4) | nonce (12) | ciphertext+tag      (length = 12 + ciphertext+tag)

A record's plaintext is JSON built by `encode` from plain values and the few dataclasses the
write-behind sends (a closed set: decoding never instantiates anything else).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
import struct
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.keys import KeyRing, new_data_key, wrap_data_key, wrapped_key_id

MAGIC = b"SRWJ"
VERSION = 1
_NONCE = 12
_MAX_RECORD = 16 * 1024 * 1024
SUFFIX = ".journal"


class JournalError(Exception):
    """A journal cannot be written, or read back."""


# ---------------------------------------------------------------------------- values <-> JSON


class Codec:
    """JSON for the values a journaled write carries: UUIDs, datetimes, bytes, tuples, dicts
    with any keys, and the registered dataclasses."""

    def __init__(self, types: tuple[type[Any], ...]) -> None:
        self._types = {t.__name__: t for t in types}

    def encode(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, UUID):
            return {"$uuid": str(value)}
        if isinstance(value, datetime):
            return {"$dt": value.isoformat()}
        if isinstance(value, bytes | bytearray | memoryview):
            return {"$b": base64.b64encode(bytes(value)).decode("ascii")}
        if isinstance(value, tuple):
            return {"$t": [self.encode(v) for v in value]}
        if isinstance(value, list):
            return [self.encode(v) for v in value]
        if isinstance(value, Mapping):
            return {"$m": [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            name = type(value).__name__
            if self._types.get(name) is not type(value):
                raise JournalError(f"{name} is not a journaled type")
            return {"$dc": name, "f": {f.name: self.encode(getattr(value, f.name))
                                       for f in dataclasses.fields(value)}}
        raise JournalError(f"cannot journal a {type(value).__name__}")

    def decode(self, data: Any) -> Any:
        if isinstance(data, list):
            return [self.decode(v) for v in data]
        if not isinstance(data, dict):
            return data
        if "$uuid" in data:
            return UUID(data["$uuid"])
        if "$dt" in data:
            return datetime.fromisoformat(data["$dt"])
        if "$b" in data:
            return base64.b64decode(data["$b"])
        if "$t" in data:
            return tuple(self.decode(v) for v in data["$t"])
        if "$m" in data:
            return {self.decode(k): self.decode(v) for k, v in data["$m"]}
        if "$dc" in data:
            cls = self._types.get(data["$dc"])
            if cls is None:
                raise JournalError(f"unknown journaled type {data['$dc']!r}")
            return cls(**{k: self.decode(v) for k, v in data["f"].items()})
        raise JournalError("unknown journal value")


# ---------------------------------------------------------------------------- files


def _aad(file_id: bytes, seq: int) -> bytes:
    return MAGIC + file_id + seq.to_bytes(8, "big")


class JournalWriter:
    """One journal file, created on the first record and appended to with fsync."""

    def __init__(self, directory: Path, keys: Callable[[], KeyRing]) -> None:
        self._directory = directory
        self._keys = keys
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._aead: AESGCM | None = None
        self._file_id = b""
        self._seq = 0

    @property
    def path(self) -> Path | None:
        return self._path

    def append(self, record: Mapping[str, Any]) -> None:
        """Seal one JSON record and make it durable before returning."""
        if self._file is None:
            self._open()
        assert self._file is not None and self._aead is not None
        plaintext = json.dumps(record, separators=(",", ":")).encode()
        nonce = secrets.token_bytes(_NONCE)
        sealed = self._aead.encrypt(nonce, plaintext, _aad(self._file_id, self._seq))
        try:
            self._file.write(struct.pack(">I", _NONCE + len(sealed)) + nonce + sealed)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise JournalError(f"cannot write the journal {self._path}: {exc.strerror}") from exc
        self._seq += 1

    def _open(self) -> None:
        try:
            self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            file_id = secrets.token_bytes(16)
            key = new_data_key()
            wrapped = wrap_data_key(self._keys().current, key, UUID(bytes=file_id))
            # Names sort in creation order: replay goes oldest first.
            name = f"{datetime.now().strftime('%Y%m%dT%H%M%S%f')}-{file_id.hex()[:8]}{SUFFIX}"
            path = self._directory / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            file = os.fdopen(fd, "wb")
            file.write(MAGIC + bytes([VERSION]) + file_id + struct.pack(">H", len(wrapped))
                       + wrapped)
            file.flush()
            os.fsync(fd)
        except OSError as exc:
            raise JournalError(f"cannot create a journal in {self._directory}: "
                               f"{exc.strerror}") from exc
        self._file, self._path, self._file_id, self._seq = file, path, file_id, 0
        self._aead = AESGCM(key)

    def discard(self) -> None:
        """Every record reached the database: the file goes."""
        if self._file is not None:
            self._file.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        self._file = self._path = self._aead = None

    def close(self) -> None:
        """Stop appending; the file stays for the next start to replay."""
        if self._file is not None:
            self._file.close()
        self._file = self._path = self._aead = None


def journal_files(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.name.endswith(SUFFIX))
    except FileNotFoundError:
        return []


def read_journal(path: Path, keys: KeyRing) -> Iterator[dict[str, Any]]:
    """The records of one journal file in order; a torn last record ends it quietly, anything
    else that does not authenticate raises JournalError."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 1 + 16 + 2)
        if len(head) < len(MAGIC) + 19 or head[:4] != MAGIC or head[4] != VERSION:
            if not head:
                return  # created, then the crash: nothing in it
            raise JournalError(f"{path} is not a write-behind journal")
        file_id = head[5:21]
        (wrapped_len,) = struct.unpack(">H", head[21:23])
        wrapped = f.read(wrapped_len)
        if len(wrapped) < wrapped_len:
            return
        aead = AESGCM(keys.unwrap(wrapped, UUID(bytes=file_id)))
        seq = 0
        while True:
            prefix = f.read(4)
            if len(prefix) < 4:
                return
            (length,) = struct.unpack(">I", prefix)
            if not _NONCE + 16 <= length <= _MAX_RECORD:
                raise JournalError(f"{path}: record {seq} has an impossible length")
            body = f.read(length)
            if len(body) < length:
                return  # torn by a crash while it was being written
            try:
                plaintext = aead.decrypt(body[:_NONCE], body[_NONCE:], _aad(file_id, seq))
            except InvalidTag:
                raise JournalError(f"{path}: record {seq} does not authenticate") from None
            yield json.loads(plaintext)
            seq += 1


def rewrap_journals(directory: Path, keys: KeyRing, from_version: str) -> int:
    """Key rotation: a journal still waiting to be replayed keeps its data key, re-wrapped under
    the ring's current master key in place (same length), so destroying `from_version` loses no
    waiting write. Returns how many journals were re-wrapped."""
    count = 0
    for path in journal_files(directory):
        with open(path, "r+b") as f:
            head = f.read(len(MAGIC) + 1 + 16 + 2)
            if len(head) < len(MAGIC) + 19 or head[:4] != MAGIC:
                continue
            file_id = head[5:21]
            (wrapped_len,) = struct.unpack(">H", head[21:23])
            wrapped = f.read(wrapped_len)
            if len(wrapped) < wrapped_len or wrapped_key_id(wrapped) != from_version:
                continue
            journal_id = UUID(bytes=file_id)
            rewrapped = wrap_data_key(keys.current, keys.unwrap(wrapped, journal_id), journal_id)
            if len(rewrapped) != wrapped_len:
                raise JournalError(f"{path}: the new wrapped key differs in length")
            f.seek(len(head))
            f.write(rewrapped)
            f.flush()
            os.fsync(f.fileno())
            count += 1
    return count
