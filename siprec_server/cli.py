"""`siprec-server`: run the recorder and its operator commands (INTERFACES.md)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import uvloop

from siprec_server.config import Config, ConfigError, load_config
from siprec_server.logs import configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="siprec-server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start SIP, media and the API")
    run.add_argument("-c", "--config", help="TOML config file (default: $SIPREC_CONFIG)")
    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    migrate = db_commands.add_parser("migrate", help="apply pending schema migrations")
    migrate.add_argument("-c", "--config", help="TOML config file (default: $SIPREC_CONFIG)")
    return parser


def _config(path: str | None) -> Config:
    return load_config(path or os.environ.get("SIPREC_CONFIG") or None)


async def _migrate(config: Config) -> None:
    from siprec_server.app import open_database

    pool, cluster = await open_database(config)
    await pool.close()
    if cluster is not None:
        await asyncio.get_running_loop().run_in_executor(None, cluster.stop)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _config(args.config)
    except ConfigError as exc:
        print(f"siprec-server: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.server.log_format, config.server.log_level)
    if args.command == "run":
        from siprec_server.app import run_until_signalled

        uvloop.run(run_until_signalled(config))
        return 0
    if args.command == "db" and args.db_command == "migrate":
        uvloop.run(_migrate(config))
        print("siprec-server: database is up to date")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
