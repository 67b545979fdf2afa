"""Scoped search as an agent or a team lead uses it: the newest page of their own calls, a day of
them, page after page — against real PostgreSQL, compared with a plain Python reading of the
scope rules; the participants' copy of started_at (migration 0005) that makes those pages cheap;
and scope predicates an index can serve."""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import asyncpg

from siprec_server.access import Principal, scope_filter, validate_scope
from storage.search import Cursor, RecordingQuery, ScopeSql, SearchPage, search_recordings

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)

# Parties chosen so that scopes overlap, nest and nearly miss: 2001 vs 20011, a London range,
# a domain in two spellings, LIKE's metacharacters in user parts.
PARTIES = [
    ("sip:2001@pbx.example.com", "2001"),
    ("sips:2001@pbx.example.com", "2001"),
    ("sip:20011@pbx.example.com", "20011"),
    ("sip:2002@pbx.example.com", "2002"),
    ("tel:+442079460012", "+442079460012"),
    ("sip:+442079469999@carrier.example.net", "+442079469999"),
    ("sip:+15551234567@c.example.net", "+15551234567"),
    ("sip:alice@Sales.Example.com", None),
    ("sips:bob@sales.example.com", None),
    ("sip:carol@presales.example.com", None),
    ("sip:100_@lab.example.com", None),
    ("sip:100%@lab.example.com", None),
    ("sip:1000@lab.example.com", "1000"),
]
SCOPES = [
    "2001", "2001*", "200*", "+44207946*", "+4420794600*", "1000", "+1*",
    "sip:*@pbx.example.com", "*@sales.example.com", "sips:bob@sales.example.com",
    "sip:100_@lab.example.com", "sip:100*@lab.example.com", "tel:*", "sip:2001@pbx.example.com",
]


@dataclass(frozen=True, slots=True)
class Call:
    id: uuid.UUID
    started_at: datetime
    state: str
    parties: tuple[tuple[str, str | None], ...]


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def party_in_scope(aor: str, number: str | None, scope: str) -> bool:
    """The scope rules of siprec_server.access, read plainly: digits compare with the number,
    globs with the lower-cased AOR, and sip:/sips:/no scheme are one address."""
    if ":" not in scope and "@" not in scope:
        return number is not None and _glob(scope).fullmatch(number) is not None
    address = aor.lower()
    for scheme in ("sips:", "sip:"):
        if address.startswith(scheme):
            address = "sip:" + address[len(scheme):]
            break
    glob = scope.lower()
    scheme, colon, rest = glob.partition(":")
    if not colon or ("@" in glob and glob.index(":") > glob.index("@")):
        glob = "sip:" + glob
    elif scheme == "sips":
        glob = "sip:" + rest
    return _glob(glob).fullmatch(address) is not None


def newest_first(calls: list[Call]) -> list[str]:
    return [str(c.id) for c in sorted(calls, key=lambda c: (-c.started_at.timestamp(), c.id))]


async def insert_calls(db: asyncpg.Pool, rng: random.Random, count: int) -> list[Call]:
    calls: list[Call] = []
    for _ in range(count):
        # Whole minutes within two hours: many calls share a start time, so the id breaks ties.
        started = T0 + timedelta(minutes=rng.randrange(120))
        # The same party twice in one call happens (a transfer back): the page must not show
        # that call twice.
        parties = tuple(rng.choice(PARTIES) for _ in range(rng.randint(0, 3)))
        call = Call(uuid.UUID(int=rng.getrandbits(128), version=4), started,
                    rng.choice(["complete", "complete", "failed"]), parties)
        await db.execute(
            """INSERT INTO recordings (id, node_id, call_id, state, started_at, transport,
                                       src_address)
               VALUES ($1, 'n1', $2, $3, $4, 'udp', '192.0.2.1')""",
            call.id, f"c-{call.id.hex[:8]}", call.state, call.started_at,
        )
        await db.executemany(
            """INSERT INTO participants (recording_id, participant_id, aor, present, number)
               VALUES ($1, $2, $3, true, $4)""",
            [(call.id, f"p{i}", aor, number) for i, (aor, number) in enumerate(parties)],
        )
        calls.append(call)
    return calls


def scope_of(role: str, *patterns: str) -> ScopeSql:
    who = Principal.of(uuid.uuid4(), "u", role, tuple(validate_scope(p) for p in patterns))
    return lambda alias, first: scope_filter(who, alias, first)


async def every_page(db: asyncpg.Pool, query: RecordingQuery, scope: ScopeSql | None
                     ) -> list[str]:
    """Follow the cursor to the end; every page but the last is full."""
    seen: list[str] = []
    page: SearchPage = await search_recordings(db, query, scope)
    for _ in range(1000):
        seen.extend(str(item.id) for item in page.items)
        if page.next_cursor is None:
            return seen
        assert len(page.items) == query.limit
        after = Cursor.decode(page.next_cursor)
        page = await search_recordings(db, replace(query, after=after), scope)
    raise AssertionError("paging did not end")


async def test_scoped_pages_show_exactly_the_calls_with_a_party_in_scope(
    db_pool: asyncpg.Pool,
) -> None:
    rng = random.Random(7866)
    calls = await insert_calls(db_pool, rng, 80)
    checked = 0
    for _ in range(60):
        patterns = rng.sample(SCOPES, rng.randint(1, 3))
        limit = rng.choice([1, 3, 7, 50])
        start = T0 + timedelta(minutes=rng.randrange(100))
        windows = [
            (None, None),
            (start, start + timedelta(minutes=rng.randint(1, 60))),
            (start, None),
        ]
        started_from, started_to = rng.choice(windows)
        states = rng.choice([(), (), ("failed",)])
        query = RecordingQuery(limit=limit, started_from=started_from, started_to=started_to,
                               states=states)
        expected = [
            c for c in calls
            if any(party_in_scope(a, n, s) for a, n in c.parties for s in patterns)
            and (started_from is None or c.started_at >= started_from)
            and (started_to is None or c.started_at < started_to)
            and (not states or c.state in states)
        ]
        got = await every_page(db_pool, query, scope_of("agent", *patterns))
        assert got == newest_first(expected), (patterns, query)
        checked += len(got)
    assert checked > 200  # the scopes did find calls, not only empty pages


async def test_a_number_or_aor_search_without_scope_pages_through_every_match_once(
    db_pool: asyncpg.Pool,
) -> None:
    rng = random.Random(3261)
    calls = await insert_calls(db_pool, rng, 60)
    for aor, number in PARTIES:
        if number is not None:
            got = await every_page(db_pool, RecordingQuery(numbers=(number,), limit=4), None)
            assert got == newest_first([c for c in calls if any(n == number
                                                                 for _, n in c.parties)])
        got = await every_page(db_pool, RecordingQuery(aors=(aor.lower(),), limit=4), None)
        assert got == newest_first([c for c in calls if any(a.lower() == aor.lower()
                                                             for a, _ in c.parties)])


async def test_a_scope_together_with_a_number_search_needs_both(db_pool: asyncpg.Pool) -> None:
    rng = random.Random(5)
    calls = await insert_calls(db_pool, rng, 60)
    query = RecordingQuery(numbers=("+442079460012",), limit=2)
    got = await every_page(db_pool, query, scope_of("agent", "2001"))
    assert got == newest_first([
        c for c in calls
        if any(n == "+442079460012" for _, n in c.parties)
        and any(n == "2001" for _, n in c.parties)
    ])


async def test_participants_carry_their_recordings_start_whatever_the_writer_says(
    db_pool: asyncpg.Pool,
) -> None:
    rid = uuid.uuid4()
    await db_pool.execute(
        """INSERT INTO recordings (id, node_id, call_id, state, started_at, transport)
           VALUES ($1, 'n1', 'c', 'recording', $2, 'udp')""", rid, T0)
    await db_pool.execute(
        """INSERT INTO participants (recording_id, participant_id, present, number)
           VALUES ($1, 'a', true, '2001')""", rid)
    await db_pool.execute(
        """INSERT INTO participants (recording_id, participant_id, present, number, started_at)
           VALUES ($1, 'b', true, '2002', $2)""", rid, T0 - timedelta(days=3))
    assert await db_pool.fetchval(
        "SELECT array_agg(DISTINCT started_at) FROM participants WHERE recording_id = $1", rid
    ) == [T0]
    await db_pool.execute("UPDATE participants SET started_at = now() WHERE recording_id = $1",
                          rid)
    later = T0 + timedelta(hours=1)
    await db_pool.execute("UPDATE recordings SET started_at = $2 WHERE id = $1", rid, later)
    assert await db_pool.fetchval(
        "SELECT array_agg(DISTINCT started_at) FROM participants WHERE recording_id = $1", rid
    ) == [later]
    page = await search_recordings(db_pool, RecordingQuery(started_from=later),
                                   scope_of("agent", "2002"))
    assert [item.id for item in page.items] == [rid]


async def test_a_participant_of_no_recording_is_still_refused(db_pool: asyncpg.Pool) -> None:
    try:
        await db_pool.execute(
            """INSERT INTO participants (recording_id, participant_id, present)
               VALUES ($1, 'a', true)""", uuid.uuid4())
    except asyncpg.ForeignKeyViolationError:
        return
    raise AssertionError("a participant without its recording was stored")


async def test_scope_predicates_can_be_answered_from_an_index(db_pool: asyncpg.Pool) -> None:
    """With sequential scans priced out, the planner still finds the participants in scope
    through the number and lower(aor) indexes: no pattern forces reading every participant
    (LIKE ANY (array) did)."""
    rng = random.Random(11)
    await insert_calls(db_pool, rng, 30)
    async with db_pool.acquire() as conn:
        await conn.execute("SET enable_seqscan = off")
        try:
            for patterns in (["2001"], ["200*"], ["sip:*@pbx.example.com"],
                             ["2001", "+44207946*", "*@sales.example.com", "tel:*"]):
                who = Principal.of(uuid.uuid4(), "u", "agent",
                                   tuple(validate_scope(p) for p in patterns))
                expr, params = scope_filter(who, "p", 1)
                assert "ANY" not in expr
                plan = "\n".join(row[0] for row in await conn.fetch(
                    f"EXPLAIN SELECT p.recording_id FROM participants p WHERE {expr}", *params))
                assert "Seq Scan" not in plan, (patterns, plan)
        finally:
            await conn.execute("RESET enable_seqscan")
