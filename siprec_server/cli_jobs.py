"""`siprec-server jobs show JOB_ID [--watch]`: a background job of any kind (key custody's,
retention runs, subject requests) as JSON, or followed with a progress bar until it ends.
`siprec-server keys job` is the same command under the key custody's name."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO
from uuid import UUID

from siprec_server.config import Config

if TYPE_CHECKING:
    from storage.database import Executor

__all__ = ["add_parser", "progress_bar", "run", "show_job"]

WATCH_INTERVAL_S = 0.5


def add_parser(commands: Any) -> None:
    jobs = commands.add_parser("jobs", help="background jobs of every kind")
    sub = jobs.add_subparsers(dest="jobs_command", required=True)
    show = sub.add_parser("show", help="a job's state, progress and result (JSON)")
    add_job_arguments(show)


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job_id")
    parser.add_argument("--watch", action="store_true", help="follow it with a progress bar")
    parser.add_argument("-c", "--config", help="TOML config file (default: $SIPREC_CONFIG)")


def run(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_show(config, args.job_id, watch=args.watch))


async def _show(config: Config, job_id: str, *, watch: bool) -> int:
    from siprec_server.services.database import open_command_database

    try:
        parsed = UUID(job_id)
    except ValueError:
        print(f"siprec-server: not a job id: {job_id!r}", file=sys.stderr)
        return 2
    database = await open_command_database(config, "jobs show")
    try:
        return await show_job(database.pool, parsed, watch=watch)
    finally:
        await database.close()


async def show_job(db: Executor, job_id: UUID, *, watch: bool, out: TextIO | None = None) -> int:
    """The job as JSON; with `watch`, a progress bar first, redrawn until the job ends. Exit
    status 1 for a failed or unknown job."""
    from storage.jobs import PgJobStore

    out = out or sys.stdout
    store = PgJobStore(db)
    while True:
        job = await store.get(job_id)
        if job is None:
            print(f"siprec-server: no job {job_id}", file=sys.stderr)
            return 1
        line = f"{progress_bar(job.done, job.total)} {job.kind} {job.state}"
        finished = job.state in ("done", "failed")
        if watch and not finished:
            print("\r" + line, end="", file=out, flush=True)
            await asyncio.sleep(WATCH_INTERVAL_S)
            continue
        if watch:
            print("\r" + line, file=out, flush=True)
        print(json.dumps({"id": str(job.id), "kind": job.kind, "state": job.state,
                          "done": job.done, "total": job.total, "result": job.result,
                          "error": job.error}, indent=2), file=out)
        return 1 if job.state == "failed" else 0


def progress_bar(done: int, total: int | None, width: int = 30) -> str:
    """`[#######.......] 700/1500  46.7%`; the count alone while the total is not known."""
    if not total:
        return f"[{'.' * width}] {done}/{'?' if total is None else total}"
    fraction = min(done / total, 1.0)
    filled = int(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {fraction:6.1%}"
