"""Retention enforcement at a million recordings: erasures per second through the real
crypto-shredding path, and the cost of the dry run's count.

Builds a throwaway embedded PostgreSQL cluster, loads N recordings over 2024 (default
1,000,000; the same data as bench/search_bench.py, by COPY), gives each a wrapped data key,
adds two policies (a longer one for extensions 20xx, a metadata one that matches nothing) and
two legal holds (explicit members and a saved search), then picks "now" so that about --erase
recordings are expired under the 365-day default, and runs:

- the dry run (counts per policy over the whole table),
- the enforcement run (storage.retention batches + storage.erasure.erase_recording for each,
  one audit event per erasure, as the scheduled job does),

    .venv/bin/python bench/retention_bench.py [--recordings 1000000] [--erase 20000]
                                              [--batch 200] [--keep DIR]

Prints the dry run's time and the run's erasures per second.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg  # noqa: E402
from search_bench import YEAR_START, Population, load  # noqa: E402

from siprec_server.compliance.retention import RetentionLimits  # noqa: E402
from siprec_server.services.retention import RetentionService  # noqa: E402
from storage.database import create_pool, ensure_database, migrate  # noqa: E402
from storage.embedded_postgres import EmbeddedPostgres  # noqa: E402
from storage.jobs import PgJobStore  # noqa: E402

LIMITS = RetentionLimits(default_days=365, floor_days=0, ceiling_days=3650)


async def prepare(conn: asyncpg.Connection, n: int) -> None:
    print(f"loading {n:,} recordings ...", flush=True)
    await load(conn, n, Population(random.Random(1)), seed=2)
    started = time.perf_counter()
    await conn.execute(
        """INSERT INTO recording_keys (recording_id, master_key_id, wrapped_key)
           SELECT id, 'bench', '\\x00'::bytea FROM recordings""")
    print(f"  data keys for every recording in {time.perf_counter() - started:.1f} s",
          flush=True)
    now = datetime.now(UTC)
    for name, days, match in (
        ("extensions 20xx", 1826, '{"parties": ["20*"]}'),
        ("queue vip", 2557, '{"metadata": {"queue": ["vip"]}}'),
    ):
        await conn.execute(
            """INSERT INTO retention_policies (id, name, days, match, legal_obligation,
                                               created_by, created_at, updated_at)
               VALUES ($1, $2, $3, $4::jsonb, true, 'bench', $5, $5)""",
            uuid.uuid4(), name, days, match, now)
    hold = uuid.uuid4()
    await conn.execute(
        """INSERT INTO legal_holds (id, matter, reason, created_by, created_at)
           VALUES ($1, 'Smith v Bank', 'bench', 'bench', $2)""", hold, now)
    await conn.execute(
        """INSERT INTO legal_hold_recordings (hold_id, recording_id, added_at)
           SELECT $1, id, $2 FROM recordings ORDER BY id LIMIT 500""", hold, now)
    await conn.execute(
        """INSERT INTO legal_holds (id, matter, reason, query, created_by, created_at)
           VALUES ($1, 'Regulator inquiry', 'bench', '{"number": ["2499"]}', 'bench', $2)""",
        uuid.uuid4(), now)
    await conn.execute("ANALYZE")


async def bench(args: argparse.Namespace) -> None:
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="siprec-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    cluster = EmbeddedPostgres(root / "pg", durable=False)
    try:
        admin_dsn = cluster.start()
        dsn = await ensure_database(admin_dsn, "retention_bench")
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
            if not await conn.fetchval("SELECT count(*) FROM recordings"):
                await prepare(conn, args.recordings)
            total = await conn.fetchval("SELECT count(*) FROM recordings")
            # The args.erase-th oldest recording sets "now": everything older is past 365 days.
            edge = await conn.fetchval(
                "SELECT started_at FROM recordings ORDER BY started_at OFFSET $1 LIMIT 1",
                args.erase)
        finally:
            await conn.close()
        now = (edge or YEAR_START) + timedelta(days=365)
        pool = await create_pool(dsn, min_size=1, max_size=4)
        try:
            service = RetentionService(pool, PgJobStore(pool), LIMITS, lambda: now,
                                       batch_size=args.batch)
            started = time.perf_counter()
            report = await service.dry_run(now)
            dry_s = time.perf_counter() - started
            print(f"{total:,} recordings; now = {now:%Y-%m-%d %H:%M}")
            print(f"dry run: {dry_s:.2f} s -> default {report['default']['recordings']:,}, "
                  + ", ".join(f"{p['name']} {p['recordings']:,}" for p in report["policies"])
                  + f", held {report['held']:,}, total {report['total']:,}", flush=True)
            started = time.perf_counter()
            result = await service.run(now)
            run_s = time.perf_counter() - started
            erased = sum(p["erased"] for p in result["policies"]) + result["default"]["erased"]
            print(f"run: erased {erased:,} in {run_s:.1f} s = {erased / run_s:,.0f} erasures/s "
                  f"(batch {args.batch}; failed {result['failed']}, held {result['held']:,})")
            audit = await pool.fetchval(
                "SELECT count(*) FROM audit_events WHERE action = 'recording.erase'")
            print(f"audit events recording.erase: {audit:,}")
            assert erased == report["total"], (erased, report["total"])
        finally:
            await pool.close()
    finally:
        cluster.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=1_000_000)
    parser.add_argument("--erase", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--keep", help="keep the cluster in DIR (reused when it has data)")
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
