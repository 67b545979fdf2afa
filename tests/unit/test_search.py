"""Search at the storage level: filters against real PostgreSQL rows, keyset pages that cover
every match exactly once, the opaque cursor, and scopes that hide everything outside them."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.views import detail_view, recording_view
from siprec_server.access import Principal, scope_filter
from storage.search import (
    MAX_LIMIT,
    Cursor,
    RecordingQuery,
    ScopeSql,
    SearchError,
    find_recording,
    like_substring,
    search_recordings,
    visible_recording_ids,
)

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


async def insert_call(
    db: asyncpg.Pool,
    *,
    started_at: datetime,
    parties: list[tuple[str | None, str | None, str | None]],
    call_id: str | None = None,
    session_id: str | None = None,
    state: str = "complete",
) -> uuid.UUID:
    """A finished recording with parties given as (aor, name, number)."""
    rid = uuid.uuid4()
    await db.execute(
        """INSERT INTO recordings (id, node_id, call_id, session_id, state, started_at,
                                   ended_at, duration_ms, transport, src_address, channels)
           VALUES ($1, 'n1', $2, $3, $4, $5::timestamptz,
                   $5::timestamptz + interval '30 seconds', 30000, 'udp', '192.0.2.1', '[]')""",
        rid, call_id or f"call-{rid.hex[:8]}", session_id, state, started_at,
    )
    for i, (aor, name, number) in enumerate(parties):
        await db.execute(
            """INSERT INTO participants (recording_id, participant_id, aor, name, number,
                                         present)
               VALUES ($1, $2, $3, $4, $5, true)""",
            rid, f"p{i}", aor, name, number,
        )
    return rid


def principal(role: str, scopes: tuple[str, ...] = ()) -> Principal:
    return Principal.of(uuid.uuid4(), f"u-{role}", role, scopes)


def scope_of(p: Principal) -> ScopeSql:
    return lambda alias, first: scope_filter(p, alias, first)


async def all_ids(db: asyncpg.Pool, query: RecordingQuery, scope: ScopeSql | None = None
                  ) -> list[str]:
    page = await search_recordings(db, query, scope)
    return [str(item.id) for item in page.items]


@pytest.fixture
async def calls(db_pool: asyncpg.Pool) -> dict[str, Any]:
    """Three calls: Alice (+442079460000) with agent 2001, Bob (+33142685300) with agent 2002,
    and Alice again with Bob."""
    ids = {
        "alice_2001": await insert_call(
            db_pool, started_at=T0, call_id="c-1", session_id="s-1",
            parties=[("sip:+442079460000@sbc.example.com", "Alice Smith", "+442079460000"),
                     ("sip:2001@pbx.example.com", "Agent One", "2001")]),
        "bob_2002": await insert_call(
            db_pool, started_at=T0 + timedelta(minutes=5), call_id="c-2", state="interrupted",
            parties=[("tel:+33142685300", "Bob O'Neil", "+33142685300"),
                     ("sip:2002@pbx.example.com", "Agent Two", "2002")]),
        "alice_bob": await insert_call(
            db_pool, started_at=T0 + timedelta(minutes=10), call_id="c-3",
            parties=[("sip:+442079460000@sbc.example.com", "Alice Smith", "+442079460000"),
                     ("tel:+33142685300", "Bob O'Neil", "+33142685300"),
                     ("sip:Carol@Example.COM", "100% Carol_X", None)]),
    }
    return {k: str(v) for k, v in ids.items()}


# --- the cursor --------------------------------------------------------------------------------


def test_cursor_round_trips_time_and_id() -> None:
    cursor = Cursor(datetime(2024, 5, 1, 9, 0, 0, 123456, tzinfo=UTC), uuid.uuid4())
    assert Cursor.decode(cursor.encode()) == cursor


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_text_as_cursor_is_a_search_error_or_a_cursor(text: str) -> None:
    with contextlib.suppress(SearchError):
        Cursor.decode(text)


def test_cursor_of_another_version_is_refused() -> None:
    good = Cursor(T0, uuid.uuid4()).encode()
    import base64

    raw = bytearray(base64.urlsafe_b64decode(good + "=" * (-len(good) % 4)))
    raw[0] = 9
    with pytest.raises(SearchError):
        Cursor.decode(base64.urlsafe_b64encode(bytes(raw)).decode())


# --- the query value ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"limit": 0}, {"limit": MAX_LIMIT + 1}, {"states": ("deleted",)},
     {"started_from": datetime(2024, 1, 1)},
     {"started_from": T0, "started_to": T0}, {"names": (" ",)}],
)
def test_impossible_searches_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(SearchError):
        RecordingQuery(**kwargs)


def test_the_audit_sees_filter_kinds_not_values() -> None:
    query = RecordingQuery(numbers=("+442079460000",), names=("smith",), started_from=T0)
    assert query.filter_kinds == ["number", "name", "from"]
    assert "+442079460000" not in repr(query.filter_kinds)


def test_like_wildcards_in_a_name_are_literal() -> None:
    assert like_substring("100%_a\\") == "%100\\%\\_a\\\\%"


# --- filters -----------------------------------------------------------------------------------


async def test_a_number_finds_the_calls_of_that_party_on_any_side(
    db_pool: asyncpg.Pool, calls: dict[str, str]
) -> None:
    found = await all_ids(db_pool, RecordingQuery(numbers=("+442079460000",)))
    assert found == [calls["alice_bob"], calls["alice_2001"]]  # newest first
    assert await all_ids(db_pool, RecordingQuery(numbers=("2002",))) == [calls["bob_2002"]]


async def test_two_numbers_find_the_calls_between_them(
    db_pool: asyncpg.Pool, calls: dict[str, str]
) -> None:
    query = RecordingQuery(numbers=("+442079460000", "+33142685300"))
    assert await all_ids(db_pool, query) == [calls["alice_bob"]]


async def test_an_aor_matches_whatever_its_case(
    db_pool: asyncpg.Pool, calls: dict[str, str]
) -> None:
    assert await all_ids(db_pool, RecordingQuery(aors=("sip:carol@example.com",))) == [
        calls["alice_bob"]]


async def test_a_name_matches_as_a_case_insensitive_substring(
    db_pool: asyncpg.Pool, calls: dict[str, str]
) -> None:
    assert await all_ids(db_pool, RecordingQuery(names=("SMITH",))) == [
        calls["alice_bob"], calls["alice_2001"]]
    assert await all_ids(db_pool, RecordingQuery(names=("o'neil",))) == [
        calls["alice_bob"], calls["bob_2002"]]
    # % and _ are characters here, not wildcards.
    assert await all_ids(db_pool, RecordingQuery(names=("100%",))) == [calls["alice_bob"]]
    assert await all_ids(db_pool, RecordingQuery(names=("1_0",))) == []


async def test_time_range_is_from_inclusive_to_exclusive(
    db_pool: asyncpg.Pool, calls: dict[str, str]
) -> None:
    query = RecordingQuery(started_from=T0, started_to=T0 + timedelta(minutes=10))
    assert await all_ids(db_pool, query) == [calls["bob_2002"], calls["alice_2001"]]


async def test_call_id_session_id_and_state_filter_exactly(
    db_pool: asyncpg.Pool, calls: dict[str, str]
) -> None:
    assert await all_ids(db_pool, RecordingQuery(call_id="c-2")) == [calls["bob_2002"]]
    assert await all_ids(db_pool, RecordingQuery(session_id="s-1")) == [calls["alice_2001"]]
    assert await all_ids(db_pool, RecordingQuery(states=("interrupted",))) == [
        calls["bob_2002"]]
    assert await all_ids(db_pool, RecordingQuery(call_id="c-2", states=("complete",))) == []


async def test_results_have_the_recording_shape(
    db_pool: asyncpg.Pool, calls: dict[str, str]
) -> None:
    page = await search_recordings(db_pool, RecordingQuery(call_id="c-1"), None)
    (found,) = page.items
    item = recording_view(found)
    assert item["id"] == calls["alice_2001"]
    assert item["started_at"] == "2024-05-01T09:00:00Z"
    assert item["ended_at"] == "2024-05-01T09:00:30Z"
    assert item["duration_s"] == 30.0
    assert [p["id"] for p in item["participants"]] == ["p0", "p1"]
    assert item["participants"][0]["aor"] == "sip:+442079460000@sbc.example.com"
    assert page.next_cursor is None


# --- pages -------------------------------------------------------------------------------------


async def test_pages_cover_every_match_once_even_with_equal_start_times(
    db_pool: asyncpg.Pool,
) -> None:
    expected = []
    for i in range(23):
        # Groups of three calls starting at the same microsecond.
        rid = await insert_call(db_pool, started_at=T0 + timedelta(seconds=i // 3),
                                parties=[("sip:2001@pbx", None, "2001")])
        expected.append(rid)
    seen: list[str] = []
    order: list[tuple[str, str]] = []
    cursor = None
    pages = 0
    while True:
        page = await search_recordings(db_pool, RecordingQuery(limit=5, after=cursor), None)
        seen += [str(item.id) for item in page.items]
        order += [(item.row["started_at"], str(item.id)) for item in page.items]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = Cursor.decode(page.next_cursor)
    assert pages == 5
    assert sorted(seen) == sorted(str(r) for r in expected)
    assert len(seen) == len(set(seen))
    # Newest first; among equal times, by id.
    assert order == sorted(order, key=lambda o: (-o[0].timestamp(), o[1]))
    page = await search_recordings(db_pool, RecordingQuery(limit=MAX_LIMIT), None)
    assert [str(item.id) for item in page.items] == seen


async def test_an_exact_last_page_has_no_next_cursor(
    db_pool: asyncpg.Pool, calls: dict[str, str]
) -> None:
    page = await search_recordings(db_pool, RecordingQuery(limit=3), None)
    assert len(page.items) == 3 and page.next_cursor is None
    page = await search_recordings(db_pool, RecordingQuery(limit=2), None)
    assert page.next_cursor is not None


# --- scopes ------------------------------------------------------------------------------------


async def test_an_agent_sees_only_calls_with_a_party_in_scope(
    db_pool: asyncpg.Pool, calls: dict[str, str]
) -> None:
    agent = scope_of(principal("agent", ("2001",)))
    assert await all_ids(db_pool, RecordingQuery(), agent) == [calls["alice_2001"]]
    # Searching for someone outside the scope finds nothing, and says nothing more.
    page = await search_recordings(db_pool, RecordingQuery(numbers=("2002",)), agent)
    assert page.items == [] and page.next_cursor is None
    # Within scope, every party of the call is shown: it is the agent's call.
    page = await search_recordings(db_pool, RecordingQuery(numbers=("+442079460000",)), agent)
    assert [p["number"] for p in page.items[0].participants] == ["+442079460000", "2001"]


async def test_a_paged_scope_gives_no_cursor_past_its_last_visible_row(
    db_pool: asyncpg.Pool, calls: dict[str, str]
) -> None:
    agent = scope_of(principal("agent", ("2001",)))
    page = await search_recordings(db_pool, RecordingQuery(limit=1), agent)
    assert [str(i.id) for i in page.items] == [calls["alice_2001"]]
    assert page.next_cursor is None  # two newer calls exist, out of scope: no hint of them


async def test_prefix_and_aor_scopes(db_pool: asyncpg.Pool, calls: dict[str, str]) -> None:
    uk = scope_of(principal("supervisor", ("+44*",)))
    assert set(await all_ids(db_pool, RecordingQuery(), uk)) == {
        calls["alice_2001"], calls["alice_bob"]}
    carol = scope_of(principal("supervisor", ("sip:carol@example.com",)))
    assert await all_ids(db_pool, RecordingQuery(), carol) == [calls["alice_bob"]]


async def test_an_agent_without_scope_sees_nothing(
    db_pool: asyncpg.Pool, calls: dict[str, str]
) -> None:
    agent = scope_of(principal("agent"))
    assert await all_ids(db_pool, RecordingQuery(), agent) == []
    assert await find_recording(db_pool, uuid.UUID(calls["alice_2001"]), agent) is None


async def test_unrestricted_users_also_see_calls_without_parties(
    db_pool: asyncpg.Pool, calls: dict[str, str]
) -> None:
    lonely = await insert_call(db_pool, started_at=T0 - timedelta(days=1), parties=[])
    admin = scope_of(principal("admin"))
    assert str(lonely) in await all_ids(db_pool, RecordingQuery(), admin)
    scoped = scope_of(principal("supervisor", ("2001",)))
    assert str(lonely) not in await all_ids(db_pool, RecordingQuery(), scoped)


async def test_detail_and_visibility_respect_the_scope(
    db_pool: asyncpg.Pool, calls: dict[str, str]
) -> None:
    agent = scope_of(principal("agent", ("2002",)))
    mine, other = uuid.UUID(calls["bob_2002"]), uuid.UUID(calls["alice_2001"])
    detail = await find_recording(db_pool, mine, agent)
    assert detail is not None and detail.id == mine
    assert detail_view(detail)["signature"]["state"] == "unsigned"
    assert await find_recording(db_pool, other, agent) is None
    assert await visible_recording_ids(db_pool, [mine, other], agent) == {mine}
