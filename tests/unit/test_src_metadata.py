"""SRC metadata extraction at write time (migration 0009): the leaves of every extensiondata
element and the call direction land on the recording, whatever vendor sent them; XML that does
not parse changes nothing and is still stored."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg

from storage import recordings
from tests.sip_client import interop_case

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


async def _recording(db: asyncpg.Pool) -> uuid.UUID:
    rid = uuid.uuid4()
    await db.execute(
        """INSERT INTO recordings (id, node_id, call_id, state, started_at, transport,
                                   src_address) VALUES ($1, 'n1', 'c', 'complete', $2, 'udp', 'x')""",
        rid, T0)
    return rid


def _metadata(case: str) -> str:
    raw = interop_case(case).decode("utf-8", "replace")
    start = raw.index("<?xml") if "<?xml" in raw else raw.index("<recording")
    end = raw.find("\n--", start)
    return raw[start:end if end > 0 else None].strip()


async def _facts(db: asyncpg.Pool, rid: uuid.UUID) -> tuple[dict[str, list[str]], str | None]:
    row = await db.fetchrow("SELECT src_metadata, direction FROM recordings WHERE id = $1", rid)
    return row["src_metadata"], row["direction"]


async def test_broadworks_group_and_direction_are_extracted(db_pool: asyncpg.Pool) -> None:
    rid = await _recording(db_pool)
    await recordings.add_metadata_event(db_pool, rid, T0, "INVITE", "complete",
                                        _metadata("broadworks_2"))
    metadata, direction = await _facts(db_pool, rid)
    assert metadata["groupid"] == ["corporate"]
    assert direction in ("inbound", "outbound")


async def test_metaswitch_business_group_and_call_type(db_pool: asyncpg.Pool) -> None:
    rid = await _recording(db_pool)
    await recordings.add_metadata_event(db_pool, rid, T0, "INVITE", "complete",
                                        _metadata("metaswitch_1"))
    metadata, direction = await _facts(db_pool, rid)
    assert metadata["businessgroup"] == ["miarec inc. - 00004803"]
    assert direction == "outbound"


async def test_updates_merge_and_bad_xml_is_stored_untouched(db_pool: asyncpg.Pool) -> None:
    rid = await _recording(db_pool)
    doc = ('<recording xmlns="urn:ietf:params:xml:ns:recording:1"><extensiondata>'
           '<q:queue xmlns:q="urn:example">Sales</q:queue><direction>inbound</direction>'
           '</extensiondata></recording>')
    await recordings.add_metadata_event(db_pool, rid, T0, "INVITE", "complete", doc)
    await recordings.add_metadata_event(db_pool, rid, T0, "UPDATE", "partial",
                                        doc.replace("Sales", "Retention"))
    await recordings.add_metadata_event(db_pool, rid, T0, "UPDATE", "partial", "<not xml")
    metadata, direction = await _facts(db_pool, rid)
    assert metadata == {"queue": ["retention", "sales"], "direction": ["inbound"]}
    assert direction == "inbound"
    assert await db_pool.fetchval(
        "SELECT count(*) FROM metadata_events WHERE recording_id = $1", rid) == 3
