"""Reading the audit trail back at the storage level: filters, the prefix match that takes
LIKE's own characters literally, and keyset pages in both orders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from storage.audit import AuditEvent, AuditQuery, read_audit, record_audit

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


async def _trail(db: asyncpg.Pool) -> None:
    actions = ["auth.login", "auth.login_failed", "authXlogin", "users.create", "auth_login"]
    for i, action in enumerate(actions):
        await record_audit(db, AuditEvent(actor=f"u{i % 2}", action=action), T0 + timedelta(i))


async def test_a_prefix_is_literal_and_filters_combine(db_pool: asyncpg.Pool) -> None:
    await _trail(db_pool)
    page = await read_audit(db_pool, AuditQuery(action_prefix="auth."))
    assert [e.action for e in page.events] == ["auth.login_failed", "auth.login"]
    page = await read_audit(db_pool, AuditQuery(action_prefix="auth_"))
    assert [e.action for e in page.events] == ["auth_login"]
    page = await read_audit(db_pool, AuditQuery(actor="u0", at_from=T0 + timedelta(1)))
    assert [e.action for e in page.events] == ["auth_login", "authXlogin"]
    assert all(len(e.hash) == 32 and isinstance(e.details, dict) for e in page.events)


async def test_pages_cover_the_trail_once_in_either_order(db_pool: asyncpg.Pool) -> None:
    await _trail(db_pool)
    for newest_first in (True, False):
        seen: list[int] = []
        after = None
        while True:
            page = await read_audit(db_pool, AuditQuery(
                limit=2, after_seq=after, newest_first=newest_first))
            seen += [e.seq for e in page.events]
            if not page.more:
                break
            after = page.events[-1].seq
        assert seen == sorted(seen, reverse=newest_first) and len(set(seen)) == 5
