"""Re-wrap throughput of a master key rotation: data keys per second, at 1,000,000 data keys.

Starts a private PostgreSQL (durable: fsync on, like production) in a temporary directory,
migrates it, loads N recordings with a data key each wrapped under master key A (COPY), then
runs exactly what the rotation job runs (storage.rewrap.rewrap_batch, one transaction per batch)
until every key is under master key B, and prints the rate. Also prints the crypto alone
(unwrap + wrap in memory) to show how much of the time is the database.

    .venv/bin/python bench/rewrap_throughput.py [--keys 1000000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import asyncpg

from storage.database import create_pool, migrate
from storage.embedded_postgres import EmbeddedPostgres
from storage.keys import (
    KeyRing,
    MasterKey,
    new_data_key,
    rewrap_data_key,
    wrap_data_key,
)
from storage.rewrap import rewrap_batch

LOAD_CHUNK = 100_000


async def load(pool: asyncpg.Pool, master: MasterKey, count: int) -> None:
    now = datetime.now(UTC)
    loaded = 0
    async with pool.acquire() as conn:
        while loaded < count:
            n = min(LOAD_CHUNK, count - loaded)
            ids = [uuid4() for _ in range(n)]
            await conn.copy_records_to_table(
                "recordings", columns=["id", "node_id", "call_id", "state", "started_at",
                                       "transport", "src_address"],
                records=[(i, "bench", "bench", "complete", now, "udp", "192.0.2.1")
                         for i in ids])
            await conn.copy_records_to_table(
                "recording_keys", columns=["recording_id", "master_key_id", "wrapped_key"],
                records=[(i, master.key_id, wrap_data_key(master, new_data_key(), i))
                         for i in ids])
            loaded += n
            print(f"\rloaded {loaded}/{count}", end="", flush=True)
    print()
    async with pool.acquire() as conn:
        await conn.execute("VACUUM ANALYZE recording_keys")


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()

    now = datetime.now(UTC)
    old, new = MasterKey.generate(now), MasterKey.generate(now)
    ring = KeyRing(new, {old.key_id: old, new.key_id: new})

    # The crypto alone.
    sample = [(uuid4(), None) for _ in range(50_000)]
    wrapped = [(rid, wrap_data_key(old, new_data_key(), rid)) for rid, _ in sample]
    started = time.perf_counter()
    for rid, w in wrapped:
        rewrap_data_key(ring, w, rid)
    crypto_rate = len(wrapped) / (time.perf_counter() - started)
    print(f"crypto only (unwrap + wrap, AES-256-GCM): {crypto_rate:,.0f} keys/s")

    root = Path(tempfile.mkdtemp(prefix="siprec-bench-pg-"))
    root.chmod(0o755)
    cluster = EmbeddedPostgres(root / "pg", durable=True)
    try:
        dsn = await asyncio.get_running_loop().run_in_executor(None, cluster.start)
        pool = await create_pool(dsn, max_size=2, statement_timeout_s=3600)
        await migrate(pool)
        started = time.perf_counter()
        await load(pool, old, args.keys)
        print(f"load: {time.perf_counter() - started:.1f} s")
        done = 0
        started = time.perf_counter()
        while True:
            count = await rewrap_batch(pool, ring, old.key_id, args.batch)
            if count == 0:
                break
            done += count
            if done % (args.batch * 50) == 0:
                elapsed = time.perf_counter() - started
                print(f"\rre-wrapped {done}/{args.keys} ({done / elapsed:,.0f}/s)", end="",
                      flush=True)
        elapsed = time.perf_counter() - started
        left = await pool.fetchval("SELECT count(*) FROM recording_keys WHERE master_key_id = $1",
                                   old.key_id)
        print(f"\nre-wrap of {done:,} data keys in batches of {args.batch}: {elapsed:.1f} s, "
              f"{done / elapsed:,.0f} keys/s ({left} left under the old key)")
        started = time.perf_counter()
        async with pool.acquire() as conn:
            await conn.execute("VACUUM recording_keys")
        print(f"VACUUM recording_keys afterwards: {time.perf_counter() - started:.1f} s")
        await pool.close()
    finally:
        await asyncio.get_running_loop().run_in_executor(None, cluster.stop)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
