"""Encrypted media file: chunked AES-256-GCM over a binary stream.

Every recording is written through `RecordingFileWriter` into a file that is unreadable
without the recording's data key (DEK) and that proves its own integrity: a bit flip,
a truncation, a dropped, duplicated or reordered chunk, or a chunk or header taken from
another file is detected before a single byte of plaintext is released.  The DEK is
never in the file (it lives, wrapped, in PostgreSQL), so destroying the wrapped DEK makes
every copy of the file unreadable (crypto-shredding, GDPR erasure).

The module does no I/O of its own: it reads from and writes to the `BinaryIO` objects it
is given, and never writes plaintext to them.

File format, version 1
======================

All integers are unsigned big-endian.  ``File = Header Chunk* FinalChunk``.

Header (39 + K bytes)::

    offset  size  field
    0       8     magic: 89 53 52 45 43 0D 0A 1A  (b"\\x89SREC\\r\\n\\x1a"; the high byte
                  and CR LF catch 7-bit and newline-mangling transfers)
    8       2     format version = 1
    10      16    recording id (UUID, ``uuid.UUID.bytes`` order)
    26      1     K = length of the key id, 1..255
    27      K     key id, UTF-8: names the key this file's DEK belongs to (opaque here;
                  `storage.keys.data_key_id` gives a stable, non-secret id of the DEK)
    27+K    4     M = maximum plaintext bytes per chunk, 1..16 MiB (bounds a reader's memory)
    31+K    8     nonce prefix, random per file

Chunk (5 + L bytes)::

    offset  size  field
    0       1     kind: 0 = more chunks follow
                        1 = final chunk written by the writer's close()
                        2 = final chunk appended by crash recovery (`seal_interrupted`)
    1       4     L = ciphertext length including the 16-byte GCM tag, 16 <= L <= M + 16
                  (a kind 2 chunk is always empty: L = 16)
    5       L     AES-256-GCM(DEK, nonce, plaintext, aad): ciphertext || tag

    index  = number of chunks before this one; a kind 2 chunk uses that number + 1
             (the chunk the crash interrupted may already have used the number as a nonce
             in a partial write; GCM must never see a nonce twice under one key)
    nonce  = nonce prefix (8) || u32 index                                    12 bytes
    aad    = SHA-256(header bytes) (32) || u32 index || u8 kind               37 bytes

What this gives:

- the header (recording id, key id, M, nonce prefix) is authenticated by every chunk's
  AAD, so a header swapped in from another file fails the first chunk;
- the index in nonce and AAD detects reordering, dropping and duplication of chunks, the
  header hash detects chunks spliced in from another file under the same DEK;
- the kind in the AAD detects truncation (the last chunk is not final) and appended data
  (bytes after a final chunk);
- a writer that crashes leaves every flushed chunk readable; `seal_interrupted` cuts the
  partial tail and closes the file with a kind 2 chunk, so a recovered recording stays
  distinguishable from a cleanly closed one.

`read_header` needs no key but its result is unauthenticated until a chunk has been
verified with the DEK (every decrypting function here does that).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_CHUNK_LIMIT",
    "FileHeader",
    "FileSummary",
    "RecordingFileError",
    "RecordingFileWriter",
    "TamperedRecording",
    "TruncatedRecording",
    "UnsupportedFormat",
    "decrypt_chunks",
    "decrypt_range",
    "read_header",
    "seal_interrupted",
    "summarize",
]

MAGIC = b"\x89SREC\r\n\x1a"
FORMAT_VERSION = 1
MAX_CHUNK_LIMIT = 16 * 1024 * 1024
DEFAULT_MAX_CHUNK = 65536

KIND_MORE = 0
KIND_FINAL = 1
KIND_SEALED = 2

_TAG_SIZE = 16
_NONCE_PREFIX_SIZE = 8
_DATA_KEY_SIZE = 32
_MAX_INDEX = 0xFFFFFFFF
_CHUNK_HEAD = struct.Struct(">BI")
_HEADER_FIXED = struct.Struct(">8sH16sB")  # magic, version, recording id, key id length
_HEADER_TAIL = struct.Struct(">I8s")  # max chunk, nonce prefix
_AAD_TAIL = struct.Struct(">IB")
_NONCE_INDEX = struct.Struct(">I")


class RecordingFileError(ValueError):
    """A recording file cannot be read as what it claims to be."""


class TruncatedRecording(RecordingFileError):
    """The file ends before its final chunk (or inside its header)."""


class TamperedRecording(RecordingFileError):
    """Authentication failed: altered bytes, wrong key, wrong recording, chunks moved."""


class UnsupportedFormat(RecordingFileError):
    """The file has our magic but a format version this code does not read."""


@dataclass(frozen=True, slots=True)
class FileHeader:
    """The unauthenticated header of a recording file."""

    version: int
    """Format version (1)."""
    recording_id: UUID
    """The recording this file claims to belong to."""
    key_id: str
    """Names the key this file's data key belongs to."""
    max_chunk: int
    """Largest plaintext size of one chunk."""
    nonce_prefix: bytes
    """Random 8 bytes, first part of every chunk nonce."""

    def to_bytes(self) -> bytes:
        """The header exactly as it is stored at the start of the file."""
        key_id = self.key_id.encode("utf-8")
        return (
            _HEADER_FIXED.pack(MAGIC, self.version, self.recording_id.bytes, len(key_id))
            + key_id
            + _HEADER_TAIL.pack(self.max_chunk, self.nonce_prefix)
        )


@dataclass(frozen=True, slots=True)
class FileSummary:
    """What `verify` compares and what gets signed: hashes and sizes of one file."""

    ciphertext_sha256: bytes
    """SHA-256 of the whole file as stored, header included."""
    plaintext_sha256: bytes
    """SHA-256 of the decrypted media."""
    plaintext_bytes: int
    ciphertext_bytes: int
    """Size of the whole file as stored."""
    chunks: int
    """Number of chunks, the final one included."""
    recovered: bool = False
    """True when the final chunk was appended by `seal_interrupted` after a crash."""


def _check_data_key(data_key: bytes) -> None:
    if len(data_key) != _DATA_KEY_SIZE:
        raise ValueError("data key must be 32 bytes (AES-256)")


def _aad(header_hash: bytes, index: int, kind: int) -> bytes:
    return header_hash + _AAD_TAIL.pack(index, kind)


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + _NONCE_INDEX.pack(index)


def _write_all(sink: BinaryIO, data: bytes) -> None:
    # Raw (unbuffered) streams may accept only part of a write.
    view = memoryview(data)
    while view:
        written = sink.write(view)
        if written is None:  # non-blocking raw stream that cannot take bytes now
            raise BlockingIOError("recording sink would block")
        view = view[written:]


def _read_up_to(source: BinaryIO, size: int) -> bytes:
    """Read `size` bytes, fewer only at end of file."""
    first = source.read(size)
    if first is None:
        raise BlockingIOError("recording source would block")
    if len(first) == size or not first:
        return first
    parts = [first]
    missing = size - len(first)
    while missing:
        part = source.read(missing)
        if not part:
            break
        parts.append(part)
        missing -= len(part)
    return b"".join(parts)


class RecordingFileWriter:
    """Encrypts a recording into `sink` as it is produced.

    `write` buffers and emits full chunks, `flush` pushes out what is buffered so that a
    crash loses at most what arrived since (call it at least once per second of audio),
    `close` writes the final chunk.  The sink is flushed but not fsynced: durability
    against power loss is the caller's `os.fsync`.  If the sink raises, the writer refuses
    further use; the file is then recovered at start-up by `seal_interrupted`.
    """

    __slots__ = (
        "_aead",
        "_broken",
        "_buffer",
        "_chunks",
        "_ciphertext_bytes",
        "_ciphertext_hash",
        "_closed",
        "_header_hash",
        "_max_chunk",
        "_nonce_prefix",
        "_plaintext_bytes",
        "_plaintext_hash",
        "_sink",
    )

    def __init__(
        self,
        sink: BinaryIO,
        *,
        recording_id: UUID,
        data_key: bytes,
        key_id: str,
        max_chunk: int = DEFAULT_MAX_CHUNK,
    ) -> None:
        _check_data_key(data_key)
        encoded_key_id = key_id.encode("utf-8")
        if not 1 <= len(encoded_key_id) <= 255:
            raise ValueError("key id must be 1..255 bytes of UTF-8")
        if not 1 <= max_chunk <= MAX_CHUNK_LIMIT:
            raise ValueError(f"max_chunk must be 1..{MAX_CHUNK_LIMIT}")
        self._sink = sink
        self._aead = AESGCM(data_key)
        self._max_chunk = max_chunk
        self._nonce_prefix = os.urandom(_NONCE_PREFIX_SIZE)
        header = FileHeader(
            version=FORMAT_VERSION,
            recording_id=recording_id,
            key_id=key_id,
            max_chunk=max_chunk,
            nonce_prefix=self._nonce_prefix,
        ).to_bytes()
        self._header_hash = hashlib.sha256(header).digest()
        self._buffer = bytearray()
        self._chunks = 0
        self._plaintext_hash = hashlib.sha256()
        self._plaintext_bytes = 0
        self._ciphertext_hash = hashlib.sha256()
        self._ciphertext_bytes = 0
        self._closed = False
        self._broken = False
        self._emit(header)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Add plaintext; whole chunks are encrypted and written as soon as they fill."""
        self._check_usable()
        self._plaintext_hash.update(data)
        self._plaintext_bytes += len(data)
        self._buffer += data
        # A full chunk is held back until more data follows, so that close() can mark it
        # final instead of appending an empty final chunk.
        while len(self._buffer) > self._max_chunk:
            chunk = bytes(self._buffer[: self._max_chunk])
            del self._buffer[: self._max_chunk]
            self._emit_chunk(chunk, KIND_MORE)

    def flush(self) -> None:
        """Write what is buffered as a (non-final) chunk and flush the sink."""
        self._check_usable()
        if self._buffer:
            chunk = bytes(self._buffer)
            self._buffer.clear()
            self._emit_chunk(chunk, KIND_MORE)
        self._guarded_flush()

    def close(self) -> FileSummary:
        """Write the final chunk, flush the sink and return the file's summary."""
        self._check_usable()
        chunk = bytes(self._buffer)
        self._buffer.clear()
        self._emit_chunk(chunk, KIND_FINAL)
        self._guarded_flush()
        self._closed = True
        return FileSummary(
            ciphertext_sha256=self._ciphertext_hash.digest(),
            plaintext_sha256=self._plaintext_hash.digest(),
            plaintext_bytes=self._plaintext_bytes,
            ciphertext_bytes=self._ciphertext_bytes,
            chunks=self._chunks,
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_usable(self) -> None:
        if self._closed:
            raise ValueError("recording file writer is closed")
        if self._broken:
            raise ValueError("recording file writer failed earlier; recover the file")

    def _emit_chunk(self, plaintext: bytes, kind: int) -> None:
        index = self._chunks
        if index > _MAX_INDEX:
            self._broken = True
            raise ValueError("recording file has reached the chunk limit")
        sealed = self._aead.encrypt(
            _nonce(self._nonce_prefix, index), plaintext, _aad(self._header_hash, index, kind)
        )
        self._emit(_CHUNK_HEAD.pack(kind, len(sealed)) + sealed)
        self._chunks += 1

    def _emit(self, record: bytes) -> None:
        try:
            _write_all(self._sink, record)
        except BaseException:
            self._broken = True
            raise
        self._ciphertext_hash.update(record)
        self._ciphertext_bytes += len(record)

    def _guarded_flush(self) -> None:
        try:
            self._sink.flush()
        except BaseException:
            self._broken = True
            raise


def _parse_header(source: BinaryIO) -> tuple[FileHeader, bytes]:
    fixed = _read_up_to(source, _HEADER_FIXED.size)
    if len(fixed) < _HEADER_FIXED.size:
        if not MAGIC.startswith(fixed[: len(MAGIC)]):
            raise TamperedRecording("not a recording file (bad magic)")
        raise TruncatedRecording("file ends inside the header")
    magic, version, recording_id, key_id_size = _HEADER_FIXED.unpack(fixed)
    if magic != MAGIC:
        raise TamperedRecording("not a recording file (bad magic)")
    if version != FORMAT_VERSION:
        raise UnsupportedFormat(f"recording file format version {version} is not supported")
    if key_id_size == 0:
        raise TamperedRecording("header has an empty key id")
    rest = _read_up_to(source, key_id_size + _HEADER_TAIL.size)
    if len(rest) < key_id_size + _HEADER_TAIL.size:
        raise TruncatedRecording("file ends inside the header")
    try:
        key_id = rest[:key_id_size].decode("utf-8")
    except UnicodeDecodeError:
        raise TamperedRecording("header key id is not UTF-8") from None
    max_chunk, nonce_prefix = _HEADER_TAIL.unpack(rest[key_id_size:])
    if not 1 <= max_chunk <= MAX_CHUNK_LIMIT:
        raise TamperedRecording("header has an impossible chunk size")
    header = FileHeader(
        version=version,
        recording_id=UUID(bytes=recording_id),
        key_id=key_id,
        max_chunk=max_chunk,
        nonce_prefix=nonce_prefix,
    )
    return header, fixed + rest


def read_header(source: BinaryIO) -> FileHeader:
    """Parse the header at the current position; needs no key, proves nothing."""
    header, _ = _parse_header(source)
    return header


class _Scan:
    """Running state of one pass over a file, kept for summaries and crash recovery."""

    __slots__ = (
        "chunks",
        "ciphertext_bytes",
        "ciphertext_hash",
        "final_kind",
        "plaintext_bytes",
        "plaintext_hash",
    )

    def __init__(self) -> None:
        self.chunks = 0
        self.ciphertext_bytes = 0  # only complete, verified records are counted
        self.ciphertext_hash = hashlib.sha256()
        self.plaintext_bytes = 0
        self.plaintext_hash = hashlib.sha256()
        self.final_kind: int | None = None

    def summary(self) -> FileSummary:
        return FileSummary(
            ciphertext_sha256=self.ciphertext_hash.digest(),
            plaintext_sha256=self.plaintext_hash.digest(),
            plaintext_bytes=self.plaintext_bytes,
            ciphertext_bytes=self.ciphertext_bytes,
            chunks=self.chunks,
            recovered=self.final_kind == KIND_SEALED,
        )


def _scan_chunks(
    source: BinaryIO,
    *,
    recording_id: UUID,
    data_key: bytes,
    allow_unfinished: bool,
    scan: _Scan,
    hash_plaintext: bool,
) -> Iterator[bytes]:
    _check_data_key(data_key)
    header, header_bytes = _parse_header(source)
    if header.recording_id != recording_id:
        raise TamperedRecording("file belongs to another recording")
    header_hash = hashlib.sha256(header_bytes).digest()
    scan.ciphertext_hash.update(header_bytes)
    scan.ciphertext_bytes += len(header_bytes)
    aead = AESGCM(data_key)
    limit = header.max_chunk + _TAG_SIZE
    while True:
        head = _read_up_to(source, _CHUNK_HEAD.size)
        if len(head) < _CHUNK_HEAD.size:
            if head and head[0] not in (KIND_MORE, KIND_FINAL, KIND_SEALED):
                raise TamperedRecording(f"chunk {scan.chunks} has an unknown kind")
            break
        kind, size = _CHUNK_HEAD.unpack(head)
        if kind not in (KIND_MORE, KIND_FINAL, KIND_SEALED):
            raise TamperedRecording(f"chunk {scan.chunks} has an unknown kind")
        if not _TAG_SIZE <= size <= limit or (kind == KIND_SEALED and size != _TAG_SIZE):
            raise TamperedRecording(f"chunk {scan.chunks} has an impossible length")
        sealed = _read_up_to(source, size)
        if len(sealed) < size:
            break
        index = scan.chunks + (1 if kind == KIND_SEALED else 0)
        if index > _MAX_INDEX:
            raise TamperedRecording("more chunks than the format allows")
        try:
            plaintext = aead.decrypt(
                _nonce(header.nonce_prefix, index), sealed, _aad(header_hash, index, kind)
            )
        except InvalidTag:
            raise TamperedRecording(
                f"chunk {scan.chunks} failed authentication (altered, moved, or wrong key)"
            ) from None
        scan.chunks += 1
        scan.ciphertext_hash.update(head)
        scan.ciphertext_hash.update(sealed)
        scan.ciphertext_bytes += len(head) + len(sealed)
        scan.plaintext_bytes += len(plaintext)
        if hash_plaintext:
            scan.plaintext_hash.update(plaintext)
        if kind != KIND_MORE:
            scan.final_kind = kind
            if _read_up_to(source, 1):
                raise TamperedRecording("data after the final chunk")
            if plaintext:
                yield plaintext
            return
        yield plaintext
    if not allow_unfinished:
        raise TruncatedRecording(f"file ends after {scan.chunks} chunks without a final chunk")


def decrypt_chunks(
    source: BinaryIO, *, recording_id: UUID, data_key: bytes, allow_unfinished: bool = False
) -> Iterator[bytes]:
    """Yield the plaintext chunk by chunk, each authenticated before it is yielded.

    Reads from the current position, which must be the start of the file.  Raises
    `TruncatedRecording` at the end of a file without a final chunk unless
    `allow_unfinished`, in which case every complete chunk is yielded and a trailing partial
    chunk is ignored (an interrupted recording).  A file must at least hold a whole header.
    """
    _check_data_key(data_key)
    return _scan_chunks(
        source,
        recording_id=recording_id,
        data_key=data_key,
        allow_unfinished=allow_unfinished,
        scan=_Scan(),
        hash_plaintext=False,
    )


def decrypt_range(
    source: BinaryIO,
    *,
    recording_id: UUID,
    data_key: bytes,
    start: int,
    end: int | None,
    allow_unfinished: bool = False,
) -> Iterator[bytes]:
    """Yield plaintext bytes ``[start, end)`` (end exclusive, None = to the end).

    An HTTP ``Range: bytes=a-b`` is ``start=a, end=b + 1``.  Chunks have no fixed plaintext
    size (flushes make short ones), so this decrypts and authenticates from the start,
    holding one chunk at a time.  With ``end=None`` the whole file is authenticated,
    truncation included; a bounded range stops reading once it is served.
    """
    if start < 0 or (end is not None and end < start):
        raise ValueError("range must satisfy 0 <= start <= end")
    _check_data_key(data_key)
    return _range(source, recording_id, data_key, start, end, allow_unfinished)


def _range(
    source: BinaryIO,
    recording_id: UUID,
    data_key: bytes,
    start: int,
    end: int | None,
    allow_unfinished: bool,
) -> Iterator[bytes]:
    if end == start:
        return
    position = 0
    for chunk in decrypt_chunks(
        source, recording_id=recording_id, data_key=data_key, allow_unfinished=allow_unfinished
    ):
        chunk_end = position + len(chunk)
        if chunk_end > start:
            piece = chunk[max(0, start - position) : None if end is None else end - position]
            if piece:
                yield piece
        position = chunk_end
        if end is not None and position >= end:
            return


def summarize(source: BinaryIO, *, recording_id: UUID, data_key: bytes) -> FileSummary:
    """Authenticate a complete file from its start and recompute its summary."""
    scan = _Scan()
    for _ in _scan_chunks(
        source,
        recording_id=recording_id,
        data_key=data_key,
        allow_unfinished=False,
        scan=scan,
        hash_plaintext=True,
    ):
        pass
    return scan.summary()


def seal_interrupted(f: BinaryIO, *, recording_id: UUID, data_key: bytes) -> FileSummary:
    """Close a file a crash left open, so it becomes a complete, verifiable recording.

    Every complete chunk is authenticated; a trailing partial chunk (a write cut short)
    is cut off and an empty final chunk of kind 2 is appended.  A file that already ends
    with a final chunk is left untouched and its summary returned.  Any complete chunk that
    fails authentication raises `TamperedRecording` and leaves the file as it was; a file
    without a whole header raises `TruncatedRecording`.  `f` must be open for reading and
    writing, seekable and truncatable; it is flushed, fsync is the caller's.
    """
    f.seek(0)
    scan = _Scan()
    for _ in _scan_chunks(
        f,
        recording_id=recording_id,
        data_key=data_key,
        allow_unfinished=True,
        scan=scan,
        hash_plaintext=True,
    ):
        pass
    if scan.final_kind is not None:
        return scan.summary()
    f.seek(0)
    header, header_bytes = _parse_header(f)
    index = scan.chunks + 1  # skips the index the interrupted chunk may have used
    if index > _MAX_INDEX:
        raise TamperedRecording("more chunks than the format allows")
    sealed = AESGCM(data_key).encrypt(
        _nonce(header.nonce_prefix, index),
        b"",
        _aad(hashlib.sha256(header_bytes).digest(), index, KIND_SEALED),
    )
    record = _CHUNK_HEAD.pack(KIND_SEALED, len(sealed)) + sealed
    f.seek(scan.ciphertext_bytes)
    f.truncate()
    _write_all(f, record)
    f.flush()
    scan.chunks += 1
    scan.ciphertext_hash.update(record)
    scan.ciphertext_bytes += len(record)
    scan.final_kind = KIND_SEALED
    return scan.summary()
