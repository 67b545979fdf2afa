"""`siprec-server users add` as an operator runs it: a real process against a real database."""

from __future__ import annotations

import asyncio
import json
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


async def test_users_list_passwd_unlock_disable_as_an_operator_runs_them(
    db_dsn: str, db_pool: asyncpg.Pool
) -> None:
    code, out, err = await siprec_server(db_dsn, "users", "add", "sam", "--role", "supervisor",
                                         "--password-stdin", stdin=b"first sound password\n")
    assert code == 0, err
    # A lock-out after failed logins, as the API would leave it.
    async with db_pool.acquire() as conn:
        await conn.execute("UPDATE users SET failed_logins = 5, locked_until = now() + "
                           "interval '30 minutes' WHERE username = 'sam'")
    code, out, err = await siprec_server(db_dsn, "users", "list")
    assert code == 0, err
    (line,) = [row for row in out.splitlines() if row.startswith("sam ")]
    assert "supervisor" in line and "locked" in line and "never" in line

    code, out, err = await siprec_server(db_dsn, "users", "unlock", "sam")
    assert code == 0, err
    sam = await users.find_user_by_name(db_pool, "sam")
    assert sam is not None and sam.locked_until is None

    for weak in (b"password123456\n", b"sam sam sam sam sam\n", b"qwertyuiopasdf\n"):
        code, _out, err = await siprec_server(db_dsn, "users", "passwd", "sam",
                                              "--password-stdin", stdin=weak)
        assert code == 2 and err.strip(), (weak, err)
    code, out, err = await siprec_server(db_dsn, "users", "passwd", "sam")
    assert code == 0, err
    generated = out.split("password: ", 1)[1].strip()
    sam = await users.find_user_by_name(db_pool, "sam")
    assert sam is not None and DEFAULT_PASSWORD_HASHING.verify(sam.password_hash, generated)

    code, out, err = await siprec_server(db_dsn, "users", "disable", "sam")
    assert code == 0, err
    code, out, err = await siprec_server(db_dsn, "users", "list", "--json")
    rows = {row["username"]: row for row in json.loads(out)}
    assert rows["sam"]["state"] == "disabled"
    code, _out, err = await siprec_server(db_dsn, "users", "unlock", "nobody")
    assert code == 1 and "nobody" in err

    events = await db_pool.fetch(
        "SELECT action, details FROM audit_events WHERE target = $1 ORDER BY seq", str(sam.id))
    assert [e["action"] for e in events] == [
        "users.create", "users.update", "users.update", "auth.token_revoked",
        "users.disable", "auth.token_revoked"]
    assert all(e["details"].get("username") == "sam" for e in events[1:3])
    trail = json.dumps([dict(e["details"]) for e in events])
    assert generated not in trail and "first sound password" not in trail
    assert (await verify_audit_chain(db_pool)).ok
