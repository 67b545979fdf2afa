"""`siprec-server keys ...`: key custody from the command line (INTERFACES.md, Key custody).

    keys status                       JSON: custody, sealed, threshold, shares, versions, pins
    keys unseal [--url URL]           one share from stdin to the running server; repeat
    keys init --threshold T --custodian NAME=age:age1... | NAME=openpgp:@key.asc ...
    keys rotate [--dry-run] [--user NAME]   a rotation ceremony (dual control)
    keys reencrypt RECORDING_ID... [--user NAME]
    keys approve CEREMONY_ID --user NAME    password from stdin (re-entered: dual control)
    keys job JOB_ID [--watch]         a job's progress, with a progress bar

Ceremonies and jobs are rows in the database: the running server picks an approved ceremony's
job up. Only `unseal` talks to the server itself (the share must reach its memory), through the
API. A passphrase custodian can only be named through the API: a passphrase never goes into the
database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any
from uuid import UUID

from siprec_server.cli_users import operator
from siprec_server.config import Config, parse_host_port

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    keys = commands.add_parser("keys", help="key custody: status, unseal, ceremonies, jobs")
    sub = keys.add_subparsers(dest="keys_command", required=True)

    def with_config(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("-c", "--config", help="TOML config file (default: $SIPREC_CONFIG)")
        return parser

    with_config(sub.add_parser("status", help="custody, seal state and key versions (JSON)"))
    unseal = with_config(sub.add_parser(
        "unseal", help="submit one custodian's share (read from stdin) to the running server"))
    unseal.add_argument("--url", help="the server's API (default: from api.listen)")
    init = with_config(sub.add_parser("init", help="start the init ceremony (shamir custody)"))
    init.add_argument("--threshold", type=int, default=2)
    init.add_argument("--custodian", action="append", default=[], required=True,
                      metavar="NAME=age:RECIPIENT|NAME=openpgp:@FILE")
    init.add_argument("--user", help="approve at once as this user (password from stdin)")
    rotate = with_config(sub.add_parser("rotate", help="start a rotation ceremony"))
    rotate.add_argument("--dry-run", action="store_true", help="only say what would be done")
    rotate.add_argument("--user", help="approve at once as this user (password from stdin)")
    reencrypt = with_config(sub.add_parser(
        "reencrypt", help="start a re-encryption ceremony for recordings"))
    reencrypt.add_argument("recording_ids", nargs="+")
    reencrypt.add_argument("--user", help="approve at once as this user (password from stdin)")
    approve = with_config(sub.add_parser("approve", help="approve a ceremony"))
    approve.add_argument("ceremony_id")
    approve.add_argument("--user", required=True)
    job = with_config(sub.add_parser("job", help="a job's progress"))
    job.add_argument("job_id")
    job.add_argument("--watch", action="store_true", help="follow it with a progress bar")


def _password() -> str:
    line = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not line:
        raise SystemExit("siprec-server: no password on standard input")
    return line


def run(args: argparse.Namespace, config: Config) -> int:
    if args.keys_command == "unseal":
        return _unseal(args, config)
    password = _password() if getattr(args, "user", None) and args.keys_command != "job" else None
    return asyncio.run(_run_db(args, config, password))


def _api_base(config: Config, url: str | None) -> tuple[str, ssl.SSLContext | None]:
    if url:
        return url.rstrip("/"), None
    host, port = parse_host_port(config.api.listen)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if config.api.tls.cert_file:
        context = ssl.create_default_context(cafile=config.api.tls.cert_file)
        context.check_hostname = False  # our own certificate, reached on a local address
        return f"https://{host}:{port}", context
    return f"http://{host}:{port}", None


def _request(base: str, context: ssl.SSLContext | None, method: str, path: str,
             body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _unseal(args: argparse.Namespace, config: Config) -> int:
    share = sys.stdin.read().strip()
    if not share:
        print("siprec-server: no share on standard input", file=sys.stderr)
        return 2
    base, context = _api_base(config, args.url)
    try:
        status, body = _request(base, context, "POST", "/api/v1/keys/unseal", {"share": share})
    except (urllib.error.URLError, OSError) as exc:
        print(f"siprec-server: cannot reach the server at {base}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"siprec-server: share refused: {body.get('error', {}).get('message', status)}",
              file=sys.stderr)
        return 1
    submitted, needed = body["progress"]
    if body["sealed"]:
        print(f"share accepted: {submitted} of {needed}; still sealed")
    else:
        print("share accepted: unsealed")
    return 0


async def _run_db(args: argparse.Namespace, config: Config, password: str | None) -> int:
    from siprec_server.services.database import open_command_database
    from siprec_server.services.keys import CeremonyError, KeyService, KeySettings, status_of
    from storage import users
    from storage.custody import KeyCustody, ShamirCustody
    from storage.keys import KeyRing

    database = await open_command_database(config, f"keys {args.keys_command}")
    db = database.pool
    custody: KeyCustody
    if config.keys.custody == "shamir":
        custody = ShamirCustody(KeyRing.sealed())
    else:
        # The keys stay with the server: the command line only writes rows.
        custody = KeyCustody(KeyRing.sealed())
        custody.mode = config.keys.custody
    try:
        if isinstance(custody, ShamirCustody):
            await custody.open(db, _now())  # reads the versions; no key is touched
        settings = KeySettings(node_id="cli", cryptoperiod_days=config.keys.cryptoperiod_days,
                               reminder_days=config.keys.reminder_days,
                               approvals=config.keys.approvals)
        service = KeyService(db, custody, settings)
        actor = operator()
        if args.keys_command == "status":
            status = await status_of(db, settings, _now())
            status["custody"] = config.keys.custody
            base, context = _api_base(config, None)
            try:
                _code, seal = _request(base, context, "GET", "/api/v1/keys/seal")
                status["sealed"] = seal.get("sealed")
                status["progress"] = seal.get("progress")
            except (urllib.error.URLError, OSError):
                status["sealed"] = None  # no server running here
            status["signing_key_pins"] = await _pins(db)
            print(json.dumps(status, indent=2))
            return 0
        if args.keys_command == "job":
            return await _job(db, UUID(args.job_id), watch=args.watch)
        if args.keys_command == "rotate" and args.dry_run:
            print(json.dumps(await service.rotation_plan(), indent=2))
            return 0
        if args.keys_command == "approve":
            ceremony_id = UUID(args.ceremony_id)
        else:
            body: dict[str, Any] = {"kind": args.keys_command}
            if args.keys_command == "init":
                body["threshold"] = args.threshold
                body["custodians"] = [_custodian_spec(text) for text in args.custodian]
            if args.keys_command == "reencrypt":
                body["recording_ids"] = args.recording_ids
            ceremony = await service.create_ceremony(actor, body, "cli")
            ceremony_id = ceremony.id
            print(f"ceremony {ceremony_id} ({ceremony.kind}) needs {ceremony.needed} approvals "
                  f"by {ceremony.expires_at.isoformat()}: "
                  f"siprec-server keys approve {ceremony_id} --user NAME")
            if not args.user:
                return 0
        user = await users.find_user_by_name(db, args.user)
        if user is None or password is None:
            print("siprec-server: wrong user or password", file=sys.stderr)
            return 1
        result = await service.approve(ceremony_id, user.id, password, "cli")
        print(f"approved by {user.username}: {len(result.approvals)} of {result.needed}"
              + (f"; job {result.job_id} queued: siprec-server keys job {result.job_id} "
                 "--watch" if result.job_id else ""))
        return 0
    except CeremonyError as exc:
        print(f"siprec-server: {exc}", file=sys.stderr)
        return 1
    finally:
        await database.close()


def _custodian_spec(text: str) -> dict[str, str]:
    name, _, rest = text.partition("=")
    kind, _, value = rest.partition(":")
    if not name or kind not in ("age", "openpgp") or not value:
        raise SystemExit(f"siprec-server: --custodian {text!r}: expected NAME=age:RECIPIENT or "
                         "NAME=openpgp:@FILE (passphrases only through the API)")
    if value.startswith("@"):
        with open(value[1:], encoding="utf-8") as f:
            value = f.read()
    return {"user": name, kind: value}


async def _pins(db: Any) -> list[str]:
    from storage.signing import pin_line

    rows = await db.fetch("SELECT key_id, public_key FROM signing_keys ORDER BY created_at")
    return [pin_line((r["key_id"], bytes(r["public_key"]))) for r in rows]


async def _job(db: Any, job_id: UUID, *, watch: bool) -> int:
    from storage import key_versions as kv

    while True:
        job = await kv.get_job(db, job_id)
        if job is None:
            print(f"siprec-server: no job {job_id}", file=sys.stderr)
            return 1
        line = _bar(job.done, job.total) + f" {job.kind} {job.state}"
        if not watch or job.state in ("done", "failed"):
            if watch:
                print("\r" + line, flush=True)
            print(json.dumps({"id": str(job.id), "kind": job.kind, "state": job.state,
                              "done": job.done, "total": job.total, "result": job.result,
                              "error": job.error}, indent=2))
            return 0 if job.state != "failed" else 1
        print("\r" + line, end="", flush=True)
        await asyncio.sleep(0.5)


def _bar(done: int, total: int, width: int = 30) -> str:
    fraction = done / total if total else 0.0
    filled = int(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {fraction:6.1%}"


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
