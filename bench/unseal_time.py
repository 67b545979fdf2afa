"""How long a sealed server takes to come back: start until it listens sealed, then the unseal
(two custodians' shares over the API) until it takes calls, with N recordings in the database.

    .venv/bin/python bench/unseal_time.py [--recordings 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pyrage

from siprec_server.access import PasswordHashing
from siprec_server.app import start_server
from siprec_server.config import load_config
from storage import users
from storage.embedded_postgres import EmbeddedPostgres
from storage.keys import new_data_key, wrap_data_key

PASSWORD = "custodian password 1"


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(json.loads(response.read()))


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--recordings", type=int, default=10000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="siprec-bench-unseal-"))
    root.chmod(0o755)
    cluster = EmbeddedPostgres(root / "pg", durable=True)
    dsn = await asyncio.get_running_loop().run_in_executor(None, cluster.start)
    env = {"SIPREC_SERVER__DATA_DIR": str(root / "data"), "SIPREC_DATABASE__URL": dsn,
           "SIPREC_KEYS__CUSTODY": "shamir", "SIPREC_SIP__LISTEN": "udp:127.0.0.1:0",
           "SIPREC_API__LISTEN": "127.0.0.1:0", "SIPREC_MEDIA__BIND_ADDRESS": "127.0.0.1",
           "SIPREC_SERVER__LOG_LEVEL": "error"}
    identities = {}
    try:
        server = await start_server(load_config(env=env))
        service = server.keys
        assert service is not None
        hashing = PasswordHashing(time_cost=1, memory_kib=8, parallelism=1)
        custodians = []
        for name in ("alice", "bob", "carol"):
            user = await users.create_user(server.db, username=name, role="custodian",
                                           password_hash=hashing.hash(PASSWORD), scopes=[],
                                           now=datetime.now(UTC))
            assert user is not None
            identities[user.id] = pyrage.x25519.Identity.generate()
            custodians.append({"user": name, "age": str(identities[user.id].to_public())})
        ceremony = await service.create_ceremony(
            "bench", {"kind": "init", "threshold": 2, "custodians": custodians}, None)
        for user_id in list(identities)[:2]:
            await service.approve(ceremony.id, user_id, PASSWORD, None)
        while not service.ready:  # the server's job runner runs the init
            await asyncio.sleep(0.05)
        shares = []
        for user_id, identity in identities.items():
            (item,) = await service.take_shares(user_id, None)
            shares.append(pyrage.decrypt(item["envelope"].encode(), [identity]).decode())
        ring = service.custody.ring
        now = datetime.now(UTC)
        rows = [uuid4() for _ in range(args.recordings)]
        await server.db.executemany(
            "INSERT INTO recordings (id, node_id, call_id, state, started_at, transport, "
            "src_address) VALUES ($1, 'other', 'c', 'complete', $2, 'udp', '192.0.2.1')",
            [(r, now) for r in rows])
        await server.db.executemany(
            "INSERT INTO recording_keys (recording_id, master_key_id, wrapped_key) "
            "VALUES ($1, $2, $3)",
            [(r, ring.current.key_id, wrap_data_key(ring.current, new_data_key(), r))
             for r in rows])
        await server.stop()

        started = time.perf_counter()
        server = await start_server(load_config(env=env))
        listening = time.perf_counter() - started
        host, port = server.api_address
        base = f"http://{host}:{port}"
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        await loop.run_in_executor(None, post, base + "/api/v1/keys/unseal",
                                   {"share": shares[0]})
        first = time.perf_counter() - started
        answer = await loop.run_in_executor(None, post, base + "/api/v1/keys/unseal",
                                            {"share": shares[1]})
        total = time.perf_counter() - started
        assert answer["sealed"] is False, answer
        print(f"recordings in the database: {args.recordings:,}")
        print(f"start until listening (sealed): {listening:.2f} s")
        print(f"first share accepted: {first * 1000:.0f} ms; both shares until ready for calls: "
              f"{total * 1000:.0f} ms")
        await server.stop()
    finally:
        await asyncio.get_running_loop().run_in_executor(None, cluster.stop)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
