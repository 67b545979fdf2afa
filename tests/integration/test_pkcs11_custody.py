"""The HSM plug point against a real PKCS#11 implementation (SoftHSM2): master key versions are
non-extractable token keys, data keys are wrapped and unwrapped inside the token in the same
layout as software keys, a rotation re-wraps and destroys the old token object, and a server
started with keys.custody = pkcs11 records a call that plays back."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pkcs11
import pytest

from siprec_server.app import start_server
from siprec_server.config import load_config
from storage import key_versions as kv
from storage.custody import TokenCustody
from storage.keys import KeyRing, KeyUnwrapError, new_data_key, wrap_data_key
from storage.pkcs11_keys import Pkcs11Token, TokenError
from storage.playback import read_all
from storage.rewrap import rewrap_batch
from tests.integration.conftest import server_env
from tests.integration.test_interop import wait_for_state
from tests.integration.test_key_custody import record_call

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "4321-token-pin"


@pytest.fixture(scope="module")
def softhsm() -> Iterator[str]:
    """A SoftHSM2 token store of its own for this module (SOFTHSM2_CONF), one token per test
    (label) so tests do not see each other's keys."""
    directory = Path(tempfile.mkdtemp(prefix="siprec-softhsm-"))
    (directory / "tokens").mkdir()
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\n"
                    "objectstore.backend = file\nlog.level = ERROR\n")
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    for label in ("unit", "server"):
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label,
                        "--pin", PIN, "--so-pin", "8765-so-pin"], check=True,
                       capture_output=True)
    try:
        yield str(conf)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous
        subprocess.run(["rm", "-rf", str(directory)], check=False)


async def test_token_keys_wrap_unwrap_rotate_and_destroy(softhsm: str, db_pool: Any) -> None:
    token = Pkcs11Token(MODULE, "unit", PIN)
    ring = KeyRing.sealed()
    custody = TokenCustody(ring, token)
    now = datetime.now(UTC)
    await custody.open(db_pool, now)  # no version yet: the first is generated in the token
    first = ring.current
    assert custody.created_first == first.key_id
    (version,) = await kv.list_versions(db_pool)
    assert version.custody == "pkcs11" and version.token_label and version.commitment is None

    # The key never leaves the token.
    session_key = token._session.get_key(label=version.token_label)
    assert session_key[pkcs11.Attribute.EXTRACTABLE] is False
    with pytest.raises(pkcs11.PKCS11Error):
        session_key[pkcs11.Attribute.VALUE]

    # Wrap and unwrap by the token, bound to the recording like software wrapping.
    rid = uuid4()
    dek = new_data_key()
    wrapped = wrap_data_key(first, dek, rid)
    assert dek not in wrapped and ring.unwrap(wrapped, rid) == dek
    with pytest.raises(KeyUnwrapError):
        ring.unwrap(wrapped, uuid4())
    tampered = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    with pytest.raises(KeyUnwrapError):
        ring.unwrap(tampered, rid)

    # Rotation: a second token key, re-wrap, destroy the first in the token.
    await db_pool.execute(
        """INSERT INTO recordings (id, node_id, call_id, state, started_at, transport,
                                   src_address)
           VALUES ($1, 'n', 'c', 'complete', $2, 'udp', '192.0.2.1')""", rid, now)
    await db_pool.execute("INSERT INTO recording_keys (recording_id, master_key_id, wrapped_key)"
                          " VALUES ($1, $2, $3)", rid, first.key_id, wrapped)
    new = await custody.new_version(db_pool, now)
    assert new.previous == first.key_id and ring.current.key_id == new.version.id
    assert await rewrap_batch(db_pool, ring, first.key_id, 100) == 1
    await custody.destroy(db_pool, first.key_id, now)
    rewrapped = bytes(await db_pool.fetchval(
        "SELECT wrapped_key FROM recording_keys WHERE recording_id = $1", rid))
    assert ring.unwrap(rewrapped, rid) == dek
    with pytest.raises(TokenError):
        token.find(first.key_id, version.token_label, now)
    states = {v.id: v.state for v in await kv.list_versions(db_pool)}
    assert states == {first.key_id: "destroyed", new.version.id: "active"}
    token.close()


async def test_a_server_on_a_token_records_and_plays_back(
    softhsm: str, db_dsn: str, data_dir: Path, tmp_path: Path
) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    pin_file.chmod(0o600)
    env = server_env(db_dsn, data_dir, media__bind_address="127.0.0.1",
                     keys__custody="pkcs11", keys__pkcs11_token="server",
                     keys__pkcs11_pin_file=str(pin_file))
    server = await start_server(load_config(env=env))
    try:
        call_id, _ = await record_call(server)
        row = await wait_for_state(server, call_id, "complete")
        assert server.keys is not None
        ogg = await read_all(server.db, server.keys.custody.ring, row["id"])
        assert ogg.startswith(b"OggS")
        assert not list((data_dir / "keys").glob("master-*.key"))  # no key file at all
    finally:
        await server.stop()
    # A wrong PIN is one line for the operator.
    pin_file.write_text("0000\n")
    with pytest.raises(Exception, match="cannot open PKCS#11 token"):
        await start_server(load_config(env=env))
