"""Master keys and data keys: wrapping bound to the recording, and the local key store."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest

from storage.keys import (
    KeyRing,
    KeyStoreError,
    KeyUnwrapError,
    LocalKeyStore,
    MasterKey,
    UnknownMasterKey,
    data_key_id,
    new_data_key,
    read_secret_file,
    rewrap_data_key,
    unwrap_data_key,
    wrap_data_key,
    wrapped_key_id,
    write_secret_file,
)

RECORDING = UUID("6f1c1d3e-8b0a-4c55-9a57-2f4d3f7f9e21")
OTHER_RECORDING = UUID("0b6e9a4c-1d2f-4e3a-8c5b-7a9d1e2f3c4b")
NOW = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """A careless service environment: files would be world-readable by default."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- data keys and wrapping -----------------------------------------------------------------


def test_data_keys_are_fresh_256_bit_keys() -> None:
    keys = {new_data_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(len(k) == 32 for k in keys)


def test_wrapped_data_key_unwraps_for_its_recording() -> None:
    master = MasterKey.generate(NOW)
    dek = new_data_key()
    wrapped = wrap_data_key(master, dek, RECORDING)
    assert dek not in wrapped
    assert unwrap_data_key(master, wrapped, RECORDING) == dek
    assert wrapped_key_id(wrapped) == master.key_id


def test_wrapped_key_moved_to_another_recording_does_not_unwrap() -> None:
    master = MasterKey.generate(NOW)
    wrapped = wrap_data_key(master, new_data_key(), RECORDING)
    with pytest.raises(KeyUnwrapError):
        unwrap_data_key(master, wrapped, OTHER_RECORDING)


def test_wrong_master_key_does_not_unwrap() -> None:
    master = MasterKey.generate(NOW)
    other = MasterKey.generate(NOW)
    wrapped = wrap_data_key(master, new_data_key(), RECORDING)
    with pytest.raises(KeyUnwrapError):
        unwrap_data_key(other, wrapped, RECORDING)
    # Even if an attacker relabels the wrapped key with the other key's id.
    relabelled = wrapped[:2] + other.key_id.encode() + wrapped[2 + len(master.key_id) :]
    with pytest.raises(KeyUnwrapError):
        unwrap_data_key(other, relabelled, RECORDING)


def test_unwrap_errors_are_not_key_errors() -> None:
    assert not issubclass(KeyUnwrapError, KeyError)
    assert not issubclass(UnknownMasterKey, KeyError)


def test_any_damaged_wrapped_key_is_refused() -> None:
    master = MasterKey.generate(NOW)
    wrapped = wrap_data_key(master, new_data_key(), RECORDING)
    for offset in range(len(wrapped)):
        damaged = bytearray(wrapped)
        damaged[offset] ^= 0x01
        with pytest.raises(KeyUnwrapError):
            unwrap_data_key(master, bytes(damaged), RECORDING)
    for cut in range(len(wrapped)):
        with pytest.raises(KeyUnwrapError):
            unwrap_data_key(master, wrapped[:cut], RECORDING)
    with pytest.raises(KeyUnwrapError):
        unwrap_data_key(master, wrapped + b"\x00", RECORDING)


def test_wrapping_the_same_key_twice_gives_different_bytes() -> None:
    master = MasterKey.generate(NOW)
    dek = new_data_key()
    assert wrap_data_key(master, dek, RECORDING) != wrap_data_key(master, dek, RECORDING)


def test_master_key_id_names_the_key_without_revealing_it() -> None:
    key = bytes(range(32))
    master = MasterKey.from_key(key, NOW)
    assert master.key_id == hmac.new(key, b"siprec key id", hashlib.sha256).hexdigest()[:16]
    assert key.hex() not in repr(master)
    assert repr(key) not in repr(master)
    assert master.key_id in repr(master)
    with pytest.raises(ValueError):
        MasterKey(key_id="0" * 16, key=key, created_at=NOW)
    with pytest.raises(ValueError):
        MasterKey.from_key(key[:16], NOW)
    with pytest.raises(ValueError):
        MasterKey.from_key(key, datetime(2025, 1, 1))


def test_data_key_id_is_stable_and_differs_per_key() -> None:
    dek = new_data_key()
    assert data_key_id(dek) == data_key_id(dek)
    assert data_key_id(dek) != data_key_id(new_data_key())
    assert len(data_key_id(dek)) == 16


def test_rotation_rewraps_the_same_data_key_under_the_new_master_key() -> None:
    old = MasterKey.generate(NOW)
    new = MasterKey.generate(NOW + timedelta(days=365))
    ring = KeyRing(current=new, by_id={old.key_id: old, new.key_id: new})
    dek = new_data_key()
    wrapped = wrap_data_key(old, dek, RECORDING)
    rewrapped = rewrap_data_key(ring, wrapped, RECORDING)
    assert wrapped_key_id(rewrapped) == new.key_id
    assert unwrap_data_key(new, rewrapped, RECORDING) == dek
    assert ring.unwrap(rewrapped, RECORDING) == dek


def test_ring_refuses_an_unknown_master_key() -> None:
    master = MasterKey.generate(NOW)
    stranger = MasterKey.generate(NOW)
    ring = KeyRing(current=master, by_id={master.key_id: master})
    with pytest.raises(UnknownMasterKey):
        ring.get(stranger.key_id)
    with pytest.raises(UnknownMasterKey):
        ring.unwrap(wrap_data_key(stranger, new_data_key(), RECORDING), RECORDING)


# --- local key store ------------------------------------------------------------------------


def test_first_start_creates_a_private_master_key(tmp_path: Path, permissive_umask: None) -> None:
    directory = tmp_path / "keys"
    ring, created = LocalKeyStore(directory).load_or_create(NOW)
    assert created
    assert mode(directory) == 0o700
    files = list(directory.iterdir())
    assert [f.name for f in files] == [f"master-{ring.current.key_id}.key"]
    assert mode(files[0]) == 0o600
    assert ring.get(ring.current.key_id) is ring.current
    assert ring.current.created_at == NOW


def test_next_start_loads_the_same_master_key(tmp_path: Path) -> None:
    store = LocalKeyStore(tmp_path / "keys")
    first, _ = store.load_or_create(NOW)
    second, created = store.load_or_create(NOW + timedelta(hours=1))
    assert not created
    assert second.current == first.current
    dek = new_data_key()
    wrapped = wrap_data_key(first.current, dek, RECORDING)
    assert unwrap_data_key(second.current, wrapped, RECORDING) == dek


def test_a_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    ring, _ = LocalKeyStore(directory).load_or_create(NOW)
    key_file = directory / f"master-{ring.current.key_id}.key"
    key_file.chmod(0o644)
    with pytest.raises(KeyStoreError, match=r"group/others.*0644.*chmod 600"):
        LocalKeyStore(directory).load_or_create(NOW)


def test_a_key_file_readable_by_the_group_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    ring, _ = LocalKeyStore(directory).load_or_create(NOW)
    (directory / f"master-{ring.current.key_id}.key").chmod(0o640)
    with pytest.raises(KeyStoreError, match="group/others"):
        LocalKeyStore(directory).load_or_create(NOW)


def test_a_key_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    with pytest.raises(KeyStoreError, match="chmod 700"):
        LocalKeyStore(directory).load_or_create(NOW)
    assert list(directory.iterdir()) == []


def test_a_damaged_key_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    secret = "c2VjcmV0LWtleS1tYXRlcmlhbA=="
    path = directory / "master-0000000000000000.key"
    write_secret_file(path, json.dumps({"key": secret, "key_id": "x"}).encode())
    with pytest.raises(KeyStoreError) as caught:
        LocalKeyStore(directory).load_or_create(NOW)
    assert secret not in str(caught.value)


def test_a_key_file_renamed_to_another_id_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    ring, _ = LocalKeyStore(directory).load_or_create(NOW)
    (directory / f"master-{ring.current.key_id}.key").rename(
        directory / "master-ffffffffffffffff.key"
    )
    with pytest.raises(KeyStoreError):
        LocalKeyStore(directory).load_or_create(NOW)


def test_rotation_keeps_old_keys_and_makes_the_newest_current(tmp_path: Path) -> None:
    store = LocalKeyStore(tmp_path / "keys")
    first, _ = store.load_or_create(NOW)
    wrapped = wrap_data_key(first.current, b"k" * 32, RECORDING)
    rotated = store.rotate(NOW + timedelta(days=365))
    assert rotated.current != first.current
    reloaded, created = store.load_or_create(NOW + timedelta(days=366))
    assert not created
    assert reloaded.current == rotated.current
    assert set(reloaded.by_id) == {first.current.key_id, rotated.current.key_id}
    assert reloaded.unwrap(wrapped, RECORDING) == b"k" * 32


def test_secret_files_are_created_0600_atomically_and_never_overwritten(
    tmp_path: Path, permissive_umask: None
) -> None:
    path = tmp_path / "secret.key"
    write_secret_file(path, b"first")
    assert mode(path) == 0o600
    assert read_secret_file(path) == b"first"
    with pytest.raises(KeyStoreError, match="already exists"):
        write_secret_file(path, b"second")
    assert read_secret_file(path) == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.key"], "no temp files left"


def test_a_symlinked_key_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.key"
    write_secret_file(target, b"x")
    link = tmp_path / "link.key"
    link.symlink_to(target)
    with pytest.raises(KeyStoreError):
        read_secret_file(link)


def test_a_missing_key_file_is_a_key_store_error(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError):
        read_secret_file(tmp_path / "absent.key")
