"""Waveform peaks beside a recording: `<recording id>.peaks` next to `<recording id>.srec`, in the
same encrypted file format (storage/recording_file.py), never plaintext on disk.

The key is derived from the recording's data key (HKDF-SHA256, its own label), not the data key
itself: the recording and its peaks then never share a GCM key, so no nonce can ever be used
twice under one key whatever the two files' random nonce prefixes are, and destroying the
recording's wrapped data key (erasure) makes the peaks unreadable too.

Recordings made before peaks existed, or whose peaks could not be written, simply have no
file: `read_peaks` answers None and the browser draws a lane without a waveform.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from uuid import UUID

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from storage.keys import data_key_id
from storage.recording_file import RecordingFileError, RecordingFileWriter, decrypt_chunks

__all__ = ["MAX_PEAKS_BYTES", "peaks_key", "peaks_path", "read_peaks", "rekey_peaks",
           "remove_peaks", "write_peaks"]

SUFFIX = ".peaks"
MAX_PEAKS_BYTES = 64 * 1024 * 1024
"""Refuse to read more than this (about 90 hours of a four-party call)."""
_LABEL = b"siprec-server peaks v1"


def peaks_key(data_key: bytes, recording_id: UUID) -> bytes:
    """The peaks file's AES-256-GCM key: HKDF of the recording's data key, bound to the id."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_LABEL + recording_id.bytes).derive(data_key)


def peaks_path(recording_path: Path) -> Path:
    """Where the peaks of the recording stored at `recording_path` live."""
    return recording_path.with_suffix(SUFFIX)


def write_peaks(recording_path: Path, recording_id: UUID, data_key: bytes,
                payload: bytes) -> Path:
    """Encrypt `payload` (siprec_server.media.peaks.Peaks.to_bytes) beside the recording, via a
    temporary name renamed into place, so a crash leaves no half-written peaks file."""
    target = peaks_path(recording_path)
    temporary = target.with_suffix(SUFFIX + ".tmp")
    key = peaks_key(data_key, recording_id)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            writer = RecordingFileWriter(f, recording_id=recording_id, data_key=key,
                                         key_id=data_key_id(key))
            writer.write(payload)
            writer.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return target


def read_peaks(recording_path: Path, recording_id: UUID, data_key: bytes) -> bytes | None:
    """The decrypted, authenticated peaks, or None when the recording has none.
    RecordingFileError when the file is damaged or not this recording's."""
    path = peaks_path(recording_path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below; absence is the common case
    except FileNotFoundError:
        return None
    with f:
        parts: list[bytes] = []
        size = 0
        for chunk in decrypt_chunks(f, recording_id=recording_id,
                                    data_key=peaks_key(data_key, recording_id)):
            size += len(chunk)
            if size > MAX_PEAKS_BYTES:
                raise ValueError("peaks file is implausibly large")
            parts.append(chunk)
    return b"".join(parts)


def rekey_peaks(recording_path: Path, recording_id: UUID, old_data_key: bytes,
                new_data_key: bytes) -> None:
    """The peaks under the recording's new data key (storage/reencryption.py). Peaks already
    under the new key are left alone (a second run after a crash); peaks that open with
    neither key are removed: nothing may stay under a key being retired."""
    if not peaks_path(recording_path).exists():
        return
    try:
        read_peaks(recording_path, recording_id, new_data_key)
        return
    except (RecordingFileError, ValueError):
        pass
    try:
        payload = read_peaks(recording_path, recording_id, old_data_key)
    except (RecordingFileError, ValueError):
        payload = None
    if payload is None:
        remove_peaks(recording_path)
        return
    write_peaks(recording_path, recording_id, new_data_key, payload)


def remove_peaks(recording_path: Path) -> None:
    """Erasure's hygiene step for the peaks (the key is already gone with the data key)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(peaks_path(recording_path))
