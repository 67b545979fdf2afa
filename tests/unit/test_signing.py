"""Signed recording summaries: MiFID II evidence that a recording was not altered."""

from __future__ import annotations

import hashlib
import io
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from uuid import UUID

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from storage.recording_file import RecordingFileWriter
from storage.signing import (
    SIGNATURE_CONTEXT,
    SIGNING_KEY_FILE,
    SigningError,
    canonical_summary_bytes,
    load_or_create_signing_key,
    verify_signature,
)

RECORDING = UUID("6f1c1d3e-8b0a-4c55-9a57-2f4d3f7f9e21")


def recording_summary() -> dict[str, object]:
    """The summary of a real encrypted recording, as the storage layer would sign it."""
    sink = io.BytesIO()
    writer = RecordingFileWriter(
        sink, recording_id=RECORDING, data_key=bytes(32), key_id="0123456789abcdef"
    )
    writer.write(b"some Ogg Opus pages")
    summary = writer.close()
    return {
        "recording_id": RECORDING,
        "ciphertext_sha256": summary.ciphertext_sha256,
        "plaintext_sha256": summary.plaintext_sha256,
        "ciphertext_bytes": summary.ciphertext_bytes,
        "plaintext_bytes": summary.plaintext_bytes,
        "chunks": summary.chunks,
        "recovered": summary.recovered,
        "ended_at": datetime(2025, 3, 1, 9, 30, tzinfo=UTC),
        "participants": ["sip:+15551230001@pbx", "sip:agent7@cc"],
    }


def changed(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, bytes):
        return bytes([value[0] ^ 1]) + value[1:]
    if isinstance(value, UUID):
        return UUID(int=value.int ^ 1)
    if isinstance(value, datetime):
        return value + timedelta(seconds=1)
    if isinstance(value, list):
        return [*value[:-1], value[-1] + "x"]
    raise AssertionError(value)


def test_signed_summary_verifies_with_the_public_key_alone(tmp_path: Path) -> None:
    node = load_or_create_signing_key(tmp_path / "keys")
    summary = recording_summary()
    signature = node.sign(summary)
    assert len(signature) == 64
    assert len(node.public_key_bytes()) == 32
    assert verify_signature(node.public_key_bytes(), summary, signature)


def test_changing_any_summary_field_breaks_the_signature(tmp_path: Path) -> None:
    node = load_or_create_signing_key(tmp_path / "keys")
    summary = recording_summary()
    signature = node.sign(summary)
    for field in summary:
        altered = dict(summary)
        altered[field] = changed(summary[field])
        assert not verify_signature(node.public_key_bytes(), altered, signature), field
    for field in summary:
        removed = {k: v for k, v in summary.items() if k != field}
        assert not verify_signature(node.public_key_bytes(), removed, signature), field
    added = {**summary, "note": "edited"}
    assert not verify_signature(node.public_key_bytes(), added, signature)


def test_a_damaged_signature_or_another_nodes_key_does_not_verify(tmp_path: Path) -> None:
    node = load_or_create_signing_key(tmp_path / "a")
    other = load_or_create_signing_key(tmp_path / "b")
    summary = recording_summary()
    signature = node.sign(summary)
    for offset in range(len(signature)):
        damaged = bytearray(signature)
        damaged[offset] ^= 0x01
        assert not verify_signature(node.public_key_bytes(), summary, bytes(damaged))
    assert not verify_signature(other.public_key_bytes(), summary, signature)
    assert not verify_signature(node.public_key_bytes(), summary, signature[:-1])
    assert not verify_signature(node.public_key_bytes()[:-1], summary, signature)
    assert not verify_signature(b"", summary, b"")


def test_signature_is_over_context_and_canonical_json(tmp_path: Path) -> None:
    node = load_or_create_signing_key(tmp_path / "keys")
    summary = recording_summary()
    public = Ed25519PublicKey.from_public_bytes(node.public_key_bytes())
    # Raises if the documented message is not what was signed.
    public.verify(node.sign(summary), SIGNATURE_CONTEXT + canonical_summary_bytes(summary))


def test_canonical_encoding_is_sorted_compact_utf8_with_hex_bytes() -> None:
    encoded = canonical_summary_bytes(
        {
            "z": 1,
            "a": b"\x00\xff",
            "name": "Zoë",
            "id": RECORDING,
            "at": datetime(2025, 3, 1, 10, 30, tzinfo=timezone(timedelta(hours=1))),
            "ok": True,
            "none": None,
            "nested": {"b": [1, 2], "a": "x"},
        }
    )
    assert (
        encoded
        == (
            '{"a":"00ff","at":"2025-03-01T09:30:00+00:00",'
            '"id":"6f1c1d3e-8b0a-4c55-9a57-2f4d3f7f9e21","name":"Zoë",'
            '"nested":{"a":"x","b":[1,2]},"none":null,"ok":true,"z":1}'
        ).encode()
    )


def test_canonical_encoding_does_not_depend_on_insertion_order() -> None:
    summary = recording_summary()
    reversed_summary = dict(reversed(list(summary.items())))
    assert canonical_summary_bytes(summary) == canonical_summary_bytes(reversed_summary)


@pytest.mark.parametrize(
    "summary",
    [
        {"duration": 1.5},
        {"at": datetime(2025, 1, 1)},
        {"thing": object()},
        {"nested": {1: "non-string key"}},
        {"text": "\ud800"},
    ],
)
def test_unsignable_summaries_are_refused(summary: dict[str, object]) -> None:
    with pytest.raises(SigningError):
        canonical_summary_bytes(summary)


def test_node_key_file_is_private_and_reused(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    first = load_or_create_signing_key(directory)
    path = directory / SIGNING_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    second = load_or_create_signing_key(directory)
    assert second.public_key_bytes() == first.public_key_bytes()
    assert (
        second.key_id == first.key_id == hashlib.sha256(first.public_key_bytes()).hexdigest()[:16]
    )


def test_node_key_repr_shows_no_secret(tmp_path: Path) -> None:
    node = load_or_create_signing_key(tmp_path / "keys")
    pem = (tmp_path / "keys" / SIGNING_KEY_FILE).read_bytes()
    assert b"PRIVATE KEY" in pem
    assert repr(node) == f"NodeSigningKey(key_id={node.key_id!r})"


def test_a_world_readable_signing_key_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    load_or_create_signing_key(directory)
    (directory / SIGNING_KEY_FILE).chmod(0o644)
    with pytest.raises(SigningError, match="group/others"):
        load_or_create_signing_key(directory)


def test_a_damaged_signing_key_file_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    load_or_create_signing_key(directory)
    path = directory / SIGNING_KEY_FILE
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SigningError, match="damaged"):
        load_or_create_signing_key(directory)
