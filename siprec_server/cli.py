"""`siprec-server`: run the recorder and its operator commands (INTERFACES.md)."""

from __future__ import annotations

import argparse
import os
import sys

import uvloop

from siprec_server import cli_users, keys_cli
from siprec_server.config import Config, ConfigError, StartupError, load_config
from siprec_server.data_dir import DataDirInUse
from siprec_server.logs import configure_logging
from storage.database import DatabaseError
from storage.embedded_postgres import EmbeddedPostgresError

OPERATOR_ERRORS = (StartupError, DataDirInUse, DatabaseError, EmbeddedPostgresError, OSError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="siprec-server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start SIP, media and the API")
    run.add_argument("-c", "--config", help="TOML config file (default: $SIPREC_CONFIG)")
    verify = commands.add_parser(
        "verify", help="tamper checks of recordings or of the audit chain (exit 0 if all pass)"
    )
    target = verify.add_mutually_exclusive_group(required=True)
    target.add_argument("recording_id", nargs="?", help="one recording's id")
    target.add_argument("--all", action="store_true", help="every recording")
    target.add_argument("--audit", action="store_true", help="the audit trail's hash chain")
    verify.add_argument("-c", "--config", help="TOML config file (default: $SIPREC_CONFIG)")
    users = commands.add_parser("users", help="API accounts")
    cli_users.add_parsers(users, _config_option)
    retention = commands.add_parser("retention", help="retention of recordings")
    retention_commands = retention.add_subparsers(dest="retention_command", required=True)
    run_retention = retention_commands.add_parser(
        "run", help="erase every expired recording now (a JSON report per policy)")
    run_retention.add_argument("--dry-run", action="store_true",
                               help="only count what would be erased, per policy")
    run_retention.add_argument("-c", "--config", help="TOML config file (default: $SIPREC_CONFIG)")
    keys_cli.add_parser(commands)
    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    migrate = db_commands.add_parser("migrate", help="apply pending schema migrations")
    migrate.add_argument("-c", "--config", help="TOML config file (default: $SIPREC_CONFIG)")
    return parser


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="TOML config file (default: $SIPREC_CONFIG)")


def _config(path: str | None) -> Config:
    return load_config(path or os.environ.get("SIPREC_CONFIG") or None)


async def _migrate(config: Config) -> None:
    from siprec_server.services.database import open_command_database

    database = await open_command_database(config, "db migrate")
    await database.close()


async def _verify(config: Config, args: argparse.Namespace) -> int:
    from uuid import UUID

    from siprec_server.config import audit_checkpoint_file
    from siprec_server.services.database import open_command_database
    from storage.audit import verify_audit_chain
    from storage.audit_checkpoints import read_checkpoints, verify_against_checkpoints
    from storage.keys import KeyRing, KeyStoreError, LocalKeyStore
    from storage.signing import PIN_FILE, SigningError, parse_pins
    from storage.verification import verify_all, verify_recording

    # Trust comes from outside the database: pins in the config, else the pins the server
    # exported to data_dir/keys/signing-keys.pub.
    pin_file = config.server.data_dir / "keys" / PIN_FILE
    try:
        if config.keys.signing_key_pins:
            trusted = parse_pins(config.keys.signing_key_pins)
        else:
            trusted = parse_pins(pin_file.read_text().splitlines()) if pin_file.exists() else {}
    except SigningError as exc:
        print(f"siprec-server: keys.signing_key_pins: {exc}", file=sys.stderr)
        return 2
    database = await open_command_database(config, "verify")
    pool = database.pool
    try:
        if args.audit:
            report = await verify_audit_chain(pool)
            broken = not report.ok
            if report.ok:
                print(f"audit chain OK: {report.events} events")
            else:
                print(f"audit chain BROKEN at event {report.first_bad_seq}: {report.problem}")
            path = audit_checkpoint_file(config)
            checkpoints = read_checkpoints(path) if path.exists() else []
            if not checkpoints:
                print(f"no audit checkpoints in {path}: a truncated or rewritten chain would "
                      "go unnoticed")
            else:
                result = await verify_against_checkpoints(pool, checkpoints, trusted)
                for problem in result.problems:
                    print(f"audit checkpoint FAILED: {problem}")
                if result.ok:
                    print(f"audit checkpoints OK: {result.checkpoints} signed checkpoints match")
                broken = broken or not result.ok
            return 1 if broken else 0
        keys: KeyRing | None = None
        if config.keys.custody == "local":
            key_dir = config.server.data_dir / "keys"
            try:
                found = LocalKeyStore(key_dir).load() if key_dir.is_dir() else []
            except KeyStoreError as exc:
                print(f"siprec-server: {exc}", file=sys.stderr)
                return 2
            if found:
                newest = max(found, key=lambda k: (k.created_at, k.key_id))
                keys = KeyRing(newest, {k.key_id: k for k in found})
        if keys is None:
            print("master key not at hand (sealed or token custody): files are checked by "
                  "their ciphertext hash, not decrypted")
        if args.all:
            checks = await verify_all(pool, keys, trusted=trusted)
        else:
            try:
                recording_id = UUID(args.recording_id)
            except ValueError:
                print(f"siprec-server: not a recording id: {args.recording_id!r}",
                      file=sys.stderr)
                return 2
            checks = [await verify_recording(pool, keys, recording_id, trusted=trusted)]
        failed = 0
        for check in checks:
            if check.skipped:
                print(f"{check.recording_id} SKIPPED ({check.skipped})")
            elif check.ok:
                print(f"{check.recording_id} OK")
            else:
                failed += 1
                print(f"{check.recording_id} FAILED: {'; '.join(check.problems)}")
        print(f"{len(checks)} checked, {failed} failed")
        return 1 if failed else 0
    finally:
        await database.close()


async def _retention_run(config: Config, dry_run: bool) -> int:
    import json

    from siprec_server.app import node_id_of
    from siprec_server.services.database import open_command_database
    from siprec_server.services.jobs import JobRunner
    from siprec_server.services.lifecycle import build_lifecycle
    from siprec_server.services.retention import RETENTION_JOB
    from storage.audit import AuditEvent, record_audit

    database = await open_command_database(config, "retention run")
    try:
        services = build_lifecycle(database.pool, config, keys=None, node_id=node_id_of(config),
                                   data_dir=config.server.data_dir, background=False)
        operator = cli_users.operator()
        if dry_run:
            report = await services.retention.dry_run()
            await record_audit(database.pool, AuditEvent(
                actor=operator, action="retention.dry_run", source="cli",
                details={"total": report["total"], "held": report["held"]}))
        else:
            job = await services.retention.start_run(dry_run=False, actor=operator)
            assert job is not None
            runner = JobRunner(services.jobs, {RETENTION_JOB: services.retention.handle_job},
                               services.retention.clock)
            finished = None
            while (ran := await runner.run_once()) is not None:
                if ran.id == job.id:
                    finished = ran
                    break
            if finished is None or finished.state != "done" or finished.result is None:
                print(f"siprec-server: retention run {job.id} did not finish here "
                      f"({'another node runs it' if finished is None else finished.error})",
                      file=sys.stderr)
                return 1
            report = dict(finished.result)
        print(json.dumps(report, indent=2))
        return 0
    finally:
        await database.close()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _config(args.config)
    except ConfigError as exc:
        print(f"siprec-server: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.server.log_format, config.server.log_level)
    try:
        return _dispatch(args, config)
    except ConfigError as exc:
        print(f"siprec-server: configuration error: {exc}", file=sys.stderr)
        return 2
    except OPERATOR_ERRORS as exc:
        # Something the operator can fix (a busy data_dir or port, an unreachable database):
        # one line, no traceback.
        print(f"siprec-server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, config: Config) -> int:
    if args.command == "run":
        from siprec_server.app import run_until_signalled

        uvloop.run(run_until_signalled(config))
        return 0
    if args.command == "verify":
        return uvloop.run(_verify(config, args))
    if args.command == "users":
        return uvloop.run(cli_users.run(config, args))
    if args.command == "retention" and args.retention_command == "run":
        return uvloop.run(_retention_run(config, args.dry_run))
    if args.command == "keys":
        return keys_cli.run(args, config)
    if args.command == "db" and args.db_command == "migrate":
        uvloop.run(_migrate(config))
        print("siprec-server: database is up to date")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
