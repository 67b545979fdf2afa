"""Search latency at a million recordings.

Builds a throwaway embedded PostgreSQL cluster in a temporary directory, applies the real
migrations, bulk-loads N recordings (default 1,000,000) over a year with 2-3 parties each (an
agent out of 500 extensions, a customer out of 300,000 E.164 numbers, sometimes a second agent or
customer) and two streams each — with COPY (triggers stay on: participants take their
recording's started_at from 0005's trigger), secondary indexes dropped during the load and
rebuilt after it, then ANALYZE — and times the searches the API runs (storage.search, the same
statements, child rows included) for typical filters, with and without a user scope.

    .venv/bin/python bench/search_bench.py [--recordings 1000000] [--runs 40] [--keep DIR]

Prints p50/p95 per search in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402

from siprec_server.access import Principal, scope_filter  # noqa: E402
from storage.database import create_pool, ensure_database, migrate  # noqa: E402
from storage.embedded_postgres import EmbeddedPostgres  # noqa: E402
from storage.search import Cursor, RecordingQuery, ScopeSql, search_recordings  # noqa: E402

AGENTS = 500
CUSTOMERS = 300_000
YEAR_START = datetime(2024, 1, 1, tzinfo=UTC)
SECONDS_IN_YEAR = 365 * 86400
BATCH = 50_000

_SYLLABLES = ["an", "ber", "cal", "dor", "el", "fin", "gar", "hol", "is", "jen", "kar", "lin",
              "mor", "nel", "os", "par", "quin", "ros", "sten", "tor", "ul", "ver", "wil",
              "xan", "yor", "zel", "smi", "th", "son", "ley", "ton", "ward"]
_FIRST = ["Alice", "Bob", "Carol", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas",
          "Kira", "Liam", "Maya", "Noah", "Olga", "Pavel", "Rosa", "Sven", "Tara", "Umar",
          "Vera", "Wen", "Yusuf", "Zoe"]


def surname(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()


def agent_party(n: int) -> tuple[str, str, str]:
    ext = str(2000 + n)
    return f"sip:{ext}@pbx.example.com", f"Agent {_FIRST[n % len(_FIRST)]} {n}", ext


class Population:
    def __init__(self, rng: random.Random) -> None:
        self.numbers = [f"+4420{rng.randrange(10**8):08d}" for _ in range(CUSTOMERS)]
        self.names = [f"{rng.choice(_FIRST)} {surname(rng)}" for _ in range(CUSTOMERS)]

    def customer(self, i: int, rng: random.Random) -> tuple[str, str, str]:
        number = self.numbers[i]
        aor = f"sip:{number}@sbc.example.com" if rng.random() < 0.7 else f"tel:{number}"
        return aor, self.names[i], number


def _ts(value: datetime) -> str:
    return value.isoformat()


async def _rows(
    n: int, pop: Population, seed: int, table: str
) -> AsyncIterator[bytes]:
    """COPY text rows of one table. `rng` draws the same sequence for every table (the same
    recordings); `extra` draws what only this table needs."""
    rng = random.Random(seed)
    extra = random.Random(f"{seed}-{table}")
    lines: list[str] = []
    for i in range(n):
        rid = uuid.UUID(int=rng.getrandbits(128), version=4)
        started = YEAR_START + timedelta(seconds=rng.random() * SECONDS_IN_YEAR)
        duration = rng.randint(5, 1800)
        agent = rng.randrange(AGENTS)
        customer = rng.randrange(CUSTOMERS)
        third = rng.random()
        if table == "recordings":
            state = ("complete" if extra.random() < 0.97
                     else extra.choice(["interrupted", "failed"]))
            ended = started + timedelta(seconds=duration)
            lines.append(
                f"{rid}\tn1\t{rid.hex[:16]}@10.0.{i % 250}.{i % 199}\t"
                f"{rid.hex[16:]}\t{state}\t{_ts(started)}\t{_ts(ended)}\t{duration * 1000}\t"
                f"udp\t10.0.0.1\t[]\t[]\n"
            )
        elif table == "participants":
            parties = [agent_party(agent), pop.customer(customer, extra)]
            if third < 0.15:
                parties.append(agent_party((agent + 1 + extra.randrange(AGENTS - 1)) % AGENTS))
            elif third < 0.3:
                parties.append(pop.customer(extra.randrange(CUSTOMERS), extra))
            for k, (aor, name, number) in enumerate(parties):
                lines.append(f"{rid}\tp{k}\t{aor}\t{aor}\t{name}\tt\t{number}\n")
        else:
            for m in range(2):
                lines.append(f"{rid}\t{m}\t{m + 1}\taudio\tt\tPCMU/8000\t{m}\t"
                             f'{{"packets_received": {duration * 50}, "packets_lost": 0}}\n')
        if len(lines) >= BATCH:
            yield "".join(lines).encode()
            lines.clear()
            await asyncio.sleep(0)
    if lines:
        yield "".join(lines).encode()


COLUMNS = {
    "recordings": ["id", "node_id", "call_id", "session_id", "state", "started_at", "ended_at",
                   "duration_ms", "transport", "src_address", "channels", "pauses"],
    "participants": ["recording_id", "participant_id", "aor", "aor_raw", "name", "present",
                     "number"],
    "streams": ["recording_id", "m_index", "label", "kind", "accepted", "codec", "channel",
                "stats"],
}


async def load(conn: asyncpg.Connection, n: int, pop: Population, seed: int) -> None:
    indexes = await conn.fetch(
        """SELECT indexname, indexdef FROM pg_indexes
           WHERE tablename = ANY($1::text[]) AND indexname NOT LIKE '%pkey'""",
        list(COLUMNS),
    )
    # Statistics targets set on expression index columns (0005) go with the index.
    targets = await conn.fetch(
        """SELECT c.relname, a.attnum, a.attstattarget FROM pg_attribute a
           JOIN pg_class c ON c.oid = a.attrelid
           WHERE c.relname = ANY($1::text[]) AND a.attstattarget > 0""",
        [index["indexname"] for index in indexes],
    )
    for index in indexes:
        await conn.execute(f'DROP INDEX "{index["indexname"]}"')
    for table, columns in COLUMNS.items():
        started = time.perf_counter()
        await conn.copy_to_table(table, source=_rows(n, pop, seed, table), columns=columns,
                                 format="text")
        count = await conn.fetchval(f"SELECT count(*) FROM {table}")
        print(f"  loaded {count:>9,} {table} in {time.perf_counter() - started:.1f} s",
              flush=True)
    started = time.perf_counter()
    await conn.execute("SET maintenance_work_mem = '512MB'")
    for index in indexes:
        await conn.execute(index["indexdef"])
    for target in targets:
        await conn.execute(f'ALTER INDEX "{target["relname"]}" ALTER COLUMN {target["attnum"]} '
                           f'SET STATISTICS {target["attstattarget"]}')
    print(f"  rebuilt {len(indexes)} indexes in {time.perf_counter() - started:.1f} s",
          flush=True)
    started = time.perf_counter()
    await conn.execute("VACUUM ANALYZE recordings")
    await conn.execute("VACUUM ANALYZE participants")
    await conn.execute("VACUUM ANALYZE streams")
    print(f"  vacuum analyze in {time.perf_counter() - started:.1f} s", flush=True)


def scope_of(role: str, *scopes: str) -> ScopeSql:
    principal = Principal.of(uuid.uuid4(), "bench", role, scopes)
    return lambda alias, first: scope_filter(principal, alias, first)


async def timed(pool: asyncpg.Pool, runs: int,
                make: Callable[[random.Random], tuple[RecordingQuery, ScopeSql | None]]
                ) -> tuple[list[float], float]:
    rng = random.Random(7)
    times: list[float] = []
    found = 0
    for _ in range(runs):
        query, scope = make(rng)
        started = time.perf_counter()
        page = await search_recordings(pool, query, scope)
        times.append((time.perf_counter() - started) * 1000)
        found += len(page.items)
    return times, found / runs


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


async def bench(args: argparse.Namespace) -> None:
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="siprec-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    cluster = EmbeddedPostgres(root / "pg", durable=False)
    try:
        admin_dsn = cluster.start()
        dsn = await ensure_database(admin_dsn, "search_bench")
        conn = await asyncpg.connect(dsn)
        pop = Population(random.Random(1))
        try:
            fresh = await migrate(conn)
            if fresh or not await conn.fetchval("SELECT count(*) FROM recordings"):
                print(f"loading {args.recordings:,} recordings ...", flush=True)
                await load(conn, args.recordings, pop, seed=2)
            trgm = await conn.fetchval(
                "SELECT count(*) FROM pg_indexes WHERE indexname = 'participants_name_trgm'")
            size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size('search_bench'))")
            print(f"database {size}; trigram name index: {'yes' if trgm else 'no'}")
        finally:
            await conn.close()
        pool = await create_pool(dsn, min_size=1, max_size=2)
        day = timedelta(days=1)

        def when(rng: random.Random) -> datetime:
            return YEAR_START + timedelta(seconds=rng.random() * (SECONDS_IN_YEAR - 86400))

        def agent(rng: random.Random) -> str:
            return agent_party(rng.randrange(AGENTS))[2]

        def name_part(rng: random.Random) -> str:
            full = pop.names[rng.randrange(CUSTOMERS)].split(" ")[1]
            start = rng.randrange(max(1, len(full) - 4))
            return full[start : start + rng.randint(4, 6)]

        def one_day(rng: random.Random, **filters: Any) -> RecordingQuery:
            start = when(rng)
            return RecordingQuery(started_from=start, started_to=start + day, **filters)

        def customer(rng: random.Random) -> str:
            return pop.numbers[rng.randrange(CUSTOMERS)]

        Make = Callable[[random.Random], tuple[RecordingQuery, ScopeSql | None]]
        cases: list[tuple[str, Make]] = [
            ("customer number (any party)",
             lambda r: (RecordingQuery(numbers=(customer(r),)), None)),
            ("agent number (~2,500 calls each)",
             lambda r: (RecordingQuery(numbers=(agent(r),)), None)),
            ("customer AOR",
             lambda r: (RecordingQuery(aors=(f"sip:{customer(r)}@sbc.example.com",)), None)),
            ("name substring (4-6 chars)",
             lambda r: (RecordingQuery(names=(name_part(r),)), None)),
            ("full name",
             lambda r: (RecordingQuery(names=(pop.names[r.randrange(CUSTOMERS)],)), None)),
            ("one day (time range)", lambda r: (one_day(r), None)),
            ("latest page, no filter", lambda r: (RecordingQuery(), None)),
            ("call_id (a miss)",
             lambda r: (RecordingQuery(call_id=f"{r.getrandbits(64):016x}@10.0.0.0"), None)),
            ("agent scope: own calls, latest",
             lambda r: (RecordingQuery(), scope_of("agent", agent(r)))),
            ("agent scope: one day", lambda r: (one_day(r), scope_of("agent", agent(r)))),
            ("agent scope: customer number",
             lambda r: (RecordingQuery(numbers=(customer(r),)), scope_of("agent", agent(r)))),
            ("team scope (10-agent prefix): one day",
             lambda r: (one_day(r), scope_of("supervisor", f"2{r.randrange(50):02d}*"))),
            ("agent scope: own failed calls",
             lambda r: (RecordingQuery(states=("failed", "interrupted")),
                        scope_of("agent", agent(r)))),
            ("agent scope: page from mid-year (cursor)",
             lambda r: (RecordingQuery(after=Cursor(when(r), uuid.UUID(int=0))),
                        scope_of("agent", agent(r)))),
            ("team scope (10-agent prefix): latest",
             lambda r: (RecordingQuery(), scope_of("supervisor", f"2{r.randrange(50):02d}*"))),
            ("AOR-glob scope (all agents): latest",
             lambda r: (RecordingQuery(), scope_of("supervisor", "sip:*@pbx.example.com"))),
            ("AOR-glob scope (all agents): name substring",
             lambda r: (RecordingQuery(names=(name_part(r),)),
                        scope_of("supervisor", "sip:*@pbx.example.com"))),
        ]
        try:
            print(f"\n{'search':<44} {'p50 ms':>8} {'p95 ms':>8} {'rows/page':>10}")
            for label, make in cases:
                await timed(pool, 3, make)  # warm the plan cache and the buffers
                times, rows = await timed(pool, args.runs, make)
                print(f"{label:<44} {statistics.median(times):>8.2f} {_pct(times, 0.95):>8.2f}"
                      f" {rows:>10.1f}", flush=True)
        finally:
            await pool.close()
    finally:
        cluster.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recordings", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--keep", help="keep (and reuse) the cluster in this directory")
    args = parser.parse_args()
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
