"""`siprec-server users add` as an operator runs it: a real process against a real database."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import asyncpg

from siprec_server.access import DEFAULT_PASSWORD_HASHING
from storage import users
from storage.audit import verify_audit_chain

ROOT = Path(__file__).resolve().parents[2]


async def siprec_server(db_dsn: str, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPREC_")}
    env.update({"SIPREC_DATABASE__URL": db_dsn, "SIPREC_SERVER__LOG_FORMAT": "json"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "siprec_server", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_users_add_creates_accounts_with_given_or_generated_passwords(
    db_dsn: str, db_pool: asyncpg.Pool
) -> None:
    code, out, err = await siprec_server(
        db_dsn, "users", "add", "agent7", "--role", "agent", "--scope", "0044 20 7946 00*",
        "--scope", "sip:*@sales.example.com", "--password-stdin",
        stdin=b"piped password 123\n",
    )
    assert code == 0, err
    agent = await users.find_user_by_name(db_pool, "agent7")
    assert agent is not None and agent.role == "agent"
    assert agent.scopes == ("+4420794600*", "sip:*@sales.example.com")
    assert DEFAULT_PASSWORD_HASHING.verify(agent.password_hash, "piped password 123")
    assert "piped password" not in out + err

    code, out, err = await siprec_server(db_dsn, "users", "add", "gateway", "--role",
                                         "integration")
    assert code == 0, err
    password = out.split("password: ", 1)[1].strip()
    gateway = await users.find_user_by_name(db_pool, "gateway")
    assert gateway is not None and DEFAULT_PASSWORD_HASHING.verify(gateway.password_hash, password)
    assert password not in err  # shown once on stdout, never logged

    events = await db_pool.fetch("SELECT * FROM audit_events WHERE action = 'users.create'")
    assert [e["target"] for e in events] == [str(agent.id), str(gateway.id)]
    assert all(e["actor"].startswith("cli") for e in events)
    assert (await verify_audit_chain(db_pool)).ok


async def test_users_add_refuses_bad_input_and_taken_names(
    db_dsn: str, db_pool: asyncpg.Pool
) -> None:
    async with db_pool.acquire() as conn:
        await users.create_user(conn, username="taken", role="agent", password_hash="x",
                                scopes=(), now=await conn.fetchval("SELECT now()"))
    for args, stdin, expected in [
        (["TAKEN", "--role", "auditor"], b"", 1),
        (["newbie", "--role", "root"], b"", 2),
        (["newbie", "--role", "agent", "--scope", "20*01"], b"", 2),
        (["newbie", "--role", "agent", "--password-stdin"], b"short\n", 2),
    ]:
        code, _out, err = await siprec_server(db_dsn, "users", "add", *args, stdin=stdin)
        assert code == expected, (args, err)
        assert err.strip()
    assert [u.username for u in await users.list_users(db_pool)] == ["taken"]
