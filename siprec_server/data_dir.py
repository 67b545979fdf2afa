"""One owner per data_dir.

`siprec-server run` holds an exclusive lock on `data_dir/siprec.lock` for as long as it runs, taken
before it touches anything else: a second `run` on the same data_dir fails at once, naming the
first, and changes nothing. Operator commands (`verify`, `users ...`, `db migrate`) take the same
lock only when nobody holds it; otherwise they know a server owns the data_dir and use what it
runs (its embedded PostgreSQL) without starting or stopping anything.

The lock is an `flock(2)` on an open file, so it is released by the kernel when the holder dies
(SIGKILL included): a crashed server never leaves a stale lock behind. The file names its holder
(pid, command, host, start time) for the message the next comer prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

LOCK_FILE = "siprec.lock"


class DataDirInUse(Exception):
    """Another process owns the data_dir; the message names it."""


@dataclass(frozen=True, slots=True)
class LockHolder:
    pid: int
    command: str
    host: str
    since: str

    def describe(self) -> str:
        return f"`siprec-server {self.command}` (pid {self.pid} on {self.host}, since {self.since})"


def prepare_data_dir(data_dir: Path) -> None:
    """Create data_dir; 0711: nobody else may list it, but the embedded cluster's unprivileged
    user may pass through to data_dir/pg. Keys and recordings below it are 0700."""
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o711)


class DataDirLock:
    """The exclusive lock on one data_dir (not reentrant; one per process)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self, command: str) -> bool:
        """Take the lock if it is free, record ourselves as its holder; False if taken."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        record = {
            "pid": os.getpid(),
            "command": command,
            "host": socket.gethostname(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd = fd
        return True

    def acquire(self, command: str) -> None:
        """Take the lock or raise DataDirInUse naming who holds it."""
        if not self.try_acquire(command):
            holder = self.holder()
            who = holder.describe() if holder else "another process"
            raise DataDirInUse(
                f"data_dir {self.path.parent} is in use by {who}; stop it first, or give this "
                f"server another [server] data_dir"
            )

    def holder(self) -> LockHolder | None:
        """Who recorded themselves in the lock file (only meaningful while it is locked)."""
        try:
            record = json.loads(self.path.read_text())
            return LockHolder(int(record["pid"]), str(record["command"]), str(record["host"]),
                              str(record["since"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None
