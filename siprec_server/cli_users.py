"""`siprec-server users add | list | passwd | unlock | disable`: API accounts from the command
line, through the same service (siprec_server/services/accounts.py) and audit as the API. They
work while the server runs (they use its database) and are audited as `cli:<os user>`."""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime
from typing import Any

from siprec_server.config import Config


def operator() -> str:
    """Who ran the command, for the audit trail."""
    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def add_parsers(users: argparse.ArgumentParser, config_option: Any) -> None:
    commands = users.add_subparsers(dest="users_command", required=True)
    add = commands.add_parser("add", help="create an account (a generated password is printed "
                                          "once)")
    add.add_argument("name", help="the login name")
    add.add_argument("--role", required=True,
                     help="admin, supervisor, auditor, agent, integration or custodian")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input")
    add.add_argument(
        "--scope", action="append", default=[], metavar="PATTERN",
        help='restrict to numbers ("+4420794600*", "2001") or AORs ("sip:*@sales.example.com");'
        " repeatable",
    )
    config_option(add)
    listing = commands.add_parser("list", help="every account: role, state, last login")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    config_option(listing)
    passwd = commands.add_parser(
        "passwd", help="set a new password (generated and printed once unless --password-stdin); "
                       "ends the account's sessions")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true")
    config_option(passwd)
    unlock = commands.add_parser("unlock", help="lift a lock-out after failed logins")
    unlock.add_argument("name")
    config_option(unlock)
    disable = commands.add_parser("disable", help="disable an account and end its sessions "
                                                  "(accounts are never deleted: the audit trail "
                                                  "keeps naming them)")
    disable.add_argument("name")
    config_option(disable)


def read_password(args: argparse.Namespace) -> str | None:
    """The password from stdin when asked for; None = generate one."""
    if not getattr(args, "password_stdin", False):
        return None
    password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise ValueError("no password on standard input")
    return password


async def run(config: Config, args: argparse.Namespace) -> int:
    from siprec_server.access import AccessError
    from siprec_server.services.accounts import AccountNotFound
    from siprec_server.services.database import open_command_database
    from storage.users import LastAdminError, UsernameTakenError

    try:
        password = read_password(args)
    except ValueError as exc:
        print(f"siprec-server: {exc}", file=sys.stderr)
        return 2
    try:
        _check_early(args, password)
    except AccessError as exc:
        print(f"siprec-server: {exc}", file=sys.stderr)
        return 2
    database = await open_command_database(config, f"users {args.users_command}")
    try:
        return await _COMMANDS[args.users_command](database.pool, args, password)
    except AccessError as exc:
        print(f"siprec-server: {exc}", file=sys.stderr)
        return 2
    except (AccountNotFound, UsernameTakenError, LastAdminError) as exc:
        print(f"siprec-server: {exc}", file=sys.stderr)
        return 1
    finally:
        await database.close()


def _check_early(args: argparse.Namespace, password: str | None) -> None:
    """Before starting anything: a typo is answered at once."""
    from siprec_server.access import (
        validate_password,
        validate_role,
        validate_scopes,
        validate_username,
    )

    if args.users_command == "add":
        validate_username(args.name)
        validate_role(args.role)
        validate_scopes(args.scope)
    if password is not None:
        validate_password(password, username=getattr(args, "name", None))


async def _add(db: Any, args: argparse.Namespace, password: str | None) -> int:
    from siprec_server.services.accounts import create_account

    user, generated = await create_account(
        db, actor=operator(), username=args.name, role=args.role, scopes=args.scope,
        password=password, source="cli")
    assert user is not None
    print(f"created user {user.username} ({user.role}) id {user.id}")
    if generated is not None:
        # The only time this password is shown; it is stored only as an argon2id hash.
        print(f"password: {generated}")
    return 0


async def _list(db: Any, args: argparse.Namespace, password: str | None) -> int:
    import json

    from storage import users

    now = datetime.now(UTC)
    accounts = await users.list_users(db)
    rows: list[dict[str, Any]] = [{
        "username": u.username, "id": str(u.id), "role": u.role, "scopes": list(u.scopes),
        "state": ("disabled" if u.disabled
                  else "locked" if u.locked_until is not None and u.locked_until > now
                  else "active"),
        "last_login": u.last_login_at.isoformat() if u.last_login_at else None,
    } for u in accounts]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'USER':<24} {'ROLE':<12} {'STATE':<9} {'LAST LOGIN':<26} SCOPES")
    for row in rows:
        print(f"{row['username']:<24} {row['role']:<12} {row['state']:<9} "
              f"{row['last_login'] or 'never':<26} {' '.join(row['scopes']) or '-'}")
    return 0


async def _passwd(db: Any, args: argparse.Namespace, password: str | None) -> int:
    from siprec_server.access import generate_password
    from siprec_server.services.accounts import account_by_name, change_account, hash_password

    user = await account_by_name(db, args.name)
    clear = password if password is not None else generate_password()
    new_hash = await hash_password(clear, username=user.username)
    await change_account(db, actor=operator(), user_id=user.id,
                         changes={"password_hash": new_hash}, action="users.update",
                         source="cli")
    print(f"password of {user.username} changed; its sessions are ended")
    if password is None:
        print(f"password: {clear}")
    return 0


async def _unlock(db: Any, args: argparse.Namespace, password: str | None) -> int:
    from siprec_server.services.accounts import account_by_name, change_account

    user = await account_by_name(db, args.name)
    await change_account(db, actor=operator(), user_id=user.id, changes={}, unlock=True,
                         action="users.update", source="cli")
    print(f"{user.username} unlocked")
    return 0


async def _disable(db: Any, args: argparse.Namespace, password: str | None) -> int:
    from siprec_server.services.accounts import account_by_name, change_account

    user = await account_by_name(db, args.name)
    await change_account(db, actor=operator(), user_id=user.id, changes={"disabled": True},
                         action="users.disable", source="cli")
    print(f"{user.username} disabled; its sessions are ended")
    return 0


_COMMANDS = {"add": _add, "list": _list, "passwd": _passwd, "unlock": _unlock,
             "disable": _disable}
