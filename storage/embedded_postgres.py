"""The private PostgreSQL cluster `make run` uses when `[database] url` is empty.

The cluster lives under one directory (the server passes `data_dir/pg`):

    root/data                 PGDATA, created once by initdb and reused on every start
    root/run                  the unix socket (no TCP listener at all)
    root/log/postgresql.log   the server's log

Start-up must survive what a crashed or killed server leaves behind (a stale postmaster.pid,
orphaned backends still attached to shared memory, or a postmaster still running for this data
directory), because an operator restarting the recorder expects it to come back on its own.
PostgreSQL refuses to run as root, so under root the cluster runs as an unprivileged user.

The API is synchronous: it runs once at start-up and shutdown, from an executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

from storage.database import dsn_with_database, ensure_database

__all__ = [
    "APP_DATABASE",
    "SUPERUSER",
    "ClusterUser",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "cluster_root_for",
    "find_bin_dir",
]

log = logging.getLogger(__name__)

APP_DATABASE = "siprec"
SUPERUSER = "siprec"
# With no TCP listener the port only names the socket file (.s.PGSQL.<port>).
SOCKET_PORT = 5432
# sizeof(sockaddr_un.sun_path) is 108 on Linux, one byte of which is the terminating NUL.
SUN_PATH_MAX = 107
PG_PACKAGE_HINT = (
    "install the PostgreSQL server binaries (Debian/Ubuntu: `apt-get install postgresql`; "
    "`make system-deps` does it) or set [database] url to an existing server"
)

_INITDB_TIMEOUT_S = 120.0
_PG_CTL_START_WAIT_S = 60
_PG_CTL_STOP_WAIT_S = 60
# pg_ctl itself waits up to -t seconds; give it a margin before we give up on the process.
_SUBPROCESS_MARGIN_S = 15.0
_QUICK_TIMEOUT_S = 10.0
_ORPHAN_GRACE_S = 5.0
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_LOG_TAIL_BYTES = 4096
_CONF_FILE = "siprec-embedded.conf"
_SHORT_SOCKET_PARENT = Path("/tmp")
SYSTEM_CLUSTER_PARENT = Path("/var/lib/siprec-server")
_THROWAWAY_SETTINGS = (
    "# durable=False: a throwaway cluster, speed over crash safety.\n"
    "fsync = off\n"
    "synchronous_commit = off\n"
    "full_page_writes = off\n"
)

_T = TypeVar("_T")


class EmbeddedPostgresError(RuntimeError):
    """The embedded cluster could not be set up, started or stopped."""


@dataclass(frozen=True, slots=True)
class ClusterUser:
    """The operating-system account the postgres processes run as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    """Supplementary group ids (used for the traversal check and when dropping privileges)."""

    @classmethod
    def by_name(cls, name: str) -> ClusterUser:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EmbeddedPostgresError(f"no such user {name!r} to run PostgreSQL as") from None
        groups = tuple(g for g in os.getgrouplist(entry.pw_name, entry.pw_gid) if g != entry.pw_gid)
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)

    @classmethod
    def current(cls) -> ClusterUser:
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return cls(name, uid, os.getegid(), tuple(g for g in os.getgroups() if g != os.getegid()))

    def can_traverse(self, st: os.stat_result) -> bool:
        """Whether this user may search a directory with these permissions (ACLs aside)."""
        if self.uid == 0:
            return True
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid == self.gid or st.st_gid in self.groups:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)


def _version_key(name: str) -> tuple[int, ...] | None:
    if not re.fullmatch(r"\d+(\.\d+)*", name):
        return None
    return tuple(int(part) for part in name.split("."))


def find_bin_dir(
    *,
    search_root: Path = Path("/usr/lib/postgresql"),
    path: str | None = None,
    prefer_version: str | None = None,
) -> Path:
    """Where initdb, pg_ctl and postgres live.

    The highest `search_root/<version>/bin` holding initdb wins, except that `prefer_version`
    (the PG_VERSION of an existing data directory) wins when installed, so that installing a
    newer major version does not make an existing cluster unstartable. Otherwise initdb on PATH.
    """
    candidates: list[tuple[tuple[int, ...], Path]] = []
    with contextlib.suppress(OSError):
        for entry in search_root.iterdir():
            key = _version_key(entry.name)
            bin_dir = entry / "bin"
            if key is not None and os.access(bin_dir / "initdb", os.X_OK):
                candidates.append((key, bin_dir))
    if prefer_version is not None:
        for key, bin_dir in candidates:
            if key == _version_key(prefer_version):
                return bin_dir
    if candidates:
        return max(candidates)[1]
    on_path = shutil.which("initdb", path=path)
    if on_path is not None:
        return Path(on_path).resolve().parent
    raise EmbeddedPostgresError(
        f"PostgreSQL server binaries not found (no {search_root}/*/bin/initdb, no initdb on "
        f"PATH): {PG_PACKAGE_HINT}"
    )


def _run_coroutine_in_thread(coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
    """Run a coroutine to completion whether or not the calling thread has an event loop."""

    async def bounded() -> _T:
        return await asyncio.wait_for(coro, timeout)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, bounded()).result()


def _conf_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _is_postgres_of(pid: int, data_dir: Path) -> bool:
    """Whether pid is a live postgres process working in data_dir (its cwd is PGDATA)."""
    proc = Path("/proc") / str(pid)
    try:
        comm = (proc / "comm").read_text().strip()
        state = (proc / "stat").read_text().rpartition(")")[2].split()[0]
        cwd = os.readlink(proc / "cwd")
    except (OSError, IndexError):
        # Gone, or another user's process: in both cases not a server we can use.
        return False
    if state in ("Z", "X"):  # killed, not yet reaped
        return False
    return comm in ("postgres", "postmaster") and Path(cwd) == data_dir


def _postgres_processes_of(data_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_postgres_of(int(entry.name), data_dir):
            pids.append(int(entry.name))
    return pids


@dataclass(frozen=True, slots=True)
class _PidFile:
    """The fields of postmaster.pid we need (see pidfile.h)."""

    pid: int
    port: int | None
    socket_dir: Path | None
    status: str

    @classmethod
    def read(cls, path: Path) -> _PidFile | None:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EmbeddedPostgresError(f"cannot read {path}: {exc}") from exc
        try:
            pid = int(lines[0])
        except (IndexError, ValueError):
            # A torn write from a crash during start-up: there is no pid to respect.
            return cls(pid=0, port=None, socket_dir=None, status="")
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        socket_dir = Path(lines[4]) if len(lines) > 4 and lines[4].strip() else None
        status = lines[7].strip() if len(lines) > 7 else ""
        return cls(pid=pid, port=port, socket_dir=socket_dir, status=status)


class EmbeddedPostgres:
    """A PostgreSQL cluster owned by this server, reachable only over a private unix socket."""

    def __init__(
        self,
        root: Path,
        *,
        bin_dir: Path | None = None,
        run_as: str | None = None,
        durable: bool = True,
    ):
        """`durable=False` turns off fsync: only for throwaway clusters (tests), where it
        makes initdb and CREATE DATABASE several times faster; a crash can corrupt it."""
        self.root = Path(os.path.abspath(root))
        self.durable = durable
        self.orphan_grace_s = _ORPHAN_GRACE_S
        """How long backends of a dead postmaster get to exit on their own before SIGKILL."""
        self.data_dir = self.root / "data"
        self.log_file = self.root / "log" / "postgresql.log"
        self._bin_dir = bin_dir
        self._run_as = run_as
        self._dsn: str | None = None
        self._private_socket_dir: Path | None = None
        self.launched = False
        """Whether start() launched the postmaster (rather than adopting a running one)."""

    # -- public API -------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """The asyncpg DSN of the application database; only valid after start()."""
        if self._dsn is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL cluster is not started")
        return self._dsn

    @property
    def user(self) -> ClusterUser:
        """The account postgres runs as: ourselves, or an unprivileged user under root."""
        if os.geteuid() != 0:
            return ClusterUser.current()
        if self._run_as is not None:
            return ClusterUser.by_name(self._run_as)
        for name in ("postgres", "nobody"):
            with contextlib.suppress(EmbeddedPostgresError):
                return ClusterUser.by_name(name)
        raise EmbeddedPostgresError(
            "running as root and neither a 'postgres' nor a 'nobody' user exists: "
            "create an unprivileged user and name it with run_as"
        )

    def _data_dir_owner(self) -> ClusterUser:
        """Who may signal the running server: the data directory's owner (when we are root)."""
        if os.geteuid() != 0:
            return ClusterUser.current()
        uid = self._owner_uid(self.data_dir)
        try:
            return ClusterUser.by_name(pwd.getpwuid(uid).pw_name)
        except KeyError:
            return ClusterUser(str(uid), uid, self.data_dir.stat().st_gid, ())

    def start(self) -> str:
        """Initialise the cluster if needed, start it (or adopt a running one); return the DSN."""
        try:
            return self._start()
        except OSError as exc:
            raise EmbeddedPostgresError(
                f"cannot prepare the embedded PostgreSQL cluster in {self.root}: {exc}"
            ) from exc

    def _start(self) -> str:
        user = self.user
        bin_dir = self._resolve_bin_dir()
        self._prepare_directories(user)
        running = self._running_pid_file()
        if running is not None:
            # Our previous incarnation died without stopping it; it is healthy, so use it.
            log.warning(
                "adopting PostgreSQL already running for %s (pid %d)", self.data_dir, running.pid
            )
            socket_dir = running.socket_dir or self.root / "run"
            port = running.port or SOCKET_PORT
            if socket_dir.parent == _SHORT_SOCKET_PARENT:
                self._private_socket_dir = socket_dir
        else:
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(bin_dir, user)
            elif self._owner_uid(self.data_dir) != user.uid:
                if os.geteuid() != 0:
                    raise EmbeddedPostgresError(
                        f"{self.data_dir} belongs to uid {self._owner_uid(self.data_dir)}, "
                        f"not to {user.name}: run the server as that user, or chown it"
                    )
                self._chown_tree(self.data_dir, user)
            socket_dir = self._choose_socket_dir(user)
            port = SOCKET_PORT
            self._clear_crash_leftovers(socket_dir, port)
            self._write_config(socket_dir, port, user)
            self._rotate_log()
            self._pg_ctl_start(bin_dir, user)
            self.launched = True

        admin_dsn = self._dsn_for(socket_dir, port, "postgres")
        try:
            _run_coroutine_in_thread(ensure_database(admin_dsn, APP_DATABASE), _QUICK_TIMEOUT_S * 3)
        except Exception as exc:
            raise EmbeddedPostgresError(
                f"PostgreSQL started but database {APP_DATABASE!r} could not be created: "
                f"{exc}{self._log_tail()}"
            ) from exc
        self._dsn = dsn_with_database(admin_dsn, APP_DATABASE)
        log.info("embedded PostgreSQL ready on %s (data %s)", socket_dir, self.data_dir)
        return self._dsn

    def attach(self) -> str:
        """The DSN of the cluster another process runs; never starts or initialises anything."""
        if not (self.data_dir / "PG_VERSION").exists():
            raise EmbeddedPostgresError(f"no PostgreSQL cluster in {self.data_dir}")
        running = self._running_pid_file()
        if running is None:
            raise EmbeddedPostgresError(
                f"the PostgreSQL cluster in {self.data_dir} is not running (the server that owns "
                f"it may still be starting, or be restarting it)"
            )
        socket_dir = running.socket_dir or self.root / "run"
        dsn = dsn_with_database(
            self._dsn_for(socket_dir, running.port or SOCKET_PORT, "postgres"), APP_DATABASE
        )
        self._dsn = dsn
        return dsn

    def is_running(self) -> bool:
        """Whether a postmaster serves this data directory right now (no waiting)."""
        pid_file = _PidFile.read(self.data_dir / "postmaster.pid")
        return pid_file is not None and _is_postgres_of(pid_file.pid, self.data_dir)

    def stop(self) -> None:
        """Stop the cluster if it runs (fast shutdown: sessions are ended, data is flushed)."""
        self._dsn = None
        if self._running_pid_file() is not None:
            bin_dir = self._resolve_bin_dir()
            user = self._data_dir_owner()
            try:
                self._pg_ctl(
                    bin_dir,
                    user,
                    ["stop", "-m", "fast", "-w", "-t", str(_PG_CTL_STOP_WAIT_S)],
                    timeout=_PG_CTL_STOP_WAIT_S + _SUBPROCESS_MARGIN_S,
                )
            except EmbeddedPostgresError as fast_failure:
                log.error("fast shutdown of PostgreSQL failed, trying immediate: %s", fast_failure)
                self._pg_ctl(
                    bin_dir,
                    user,
                    ["stop", "-m", "immediate", "-w", "-t", "30"],
                    timeout=30 + _SUBPROCESS_MARGIN_S,
                )
        if self._private_socket_dir is not None:
            shutil.rmtree(self._private_socket_dir, ignore_errors=True)
            self._private_socket_dir = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- directories and ownership -------------------------------------------------------

    def _resolve_bin_dir(self) -> Path:
        if self._bin_dir is not None:
            if not os.access(self._bin_dir / "initdb", os.X_OK) or not os.access(
                self._bin_dir / "pg_ctl", os.X_OK
            ):
                raise EmbeddedPostgresError(
                    f"no initdb/pg_ctl in {self._bin_dir}: {PG_PACKAGE_HINT}"
                )
            return self._bin_dir
        try:
            version: str | None = (self.data_dir / "PG_VERSION").read_text().strip()
        except OSError:
            version = None
        return find_bin_dir(prefer_version=version)

    def _prepare_directories(self, user: ClusterUser) -> None:
        dropping = user.uid != os.geteuid()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if dropping:
            self._check_traversable(user)
        for directory in (self.root, self.root / "run", self.log_file.parent):
            directory.mkdir(mode=0o700, exist_ok=True)
            if dropping:
                os.chown(directory, user.uid, user.gid)
            directory.chmod(0o700)
        if dropping and self.log_file.exists():
            os.chown(self.log_file, user.uid, user.gid)

    def _check_traversable(self, user: ClusterUser) -> None:
        for parent in reversed(self.root.parents):
            st = parent.stat()
            if not user.can_traverse(st):
                raise EmbeddedPostgresError(
                    f"PostgreSQL runs as user {user.name!r}, who cannot enter {parent} "
                    f"(mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid}): "
                    f"`chmod o+x {parent}`, or choose a data_dir outside it"
                )

    @staticmethod
    def _owner_uid(path: Path) -> int:
        return path.stat().st_uid

    @staticmethod
    def _chown_tree(top: Path, user: ClusterUser) -> None:
        log.info("handing %s to user %s", top, user.name)
        os.chown(top, user.uid, user.gid)
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                os.chown(os.path.join(dirpath, name), user.uid, user.gid, follow_symlinks=False)

    def _choose_socket_dir(self, user: ClusterUser) -> Path:
        preferred = self.root / "run"
        if len(os.fsencode(preferred / f".s.PGSQL.{SOCKET_PORT}")) <= SUN_PATH_MAX:
            return preferred
        # Named after the root so a restart finds the same directory; only reused when it is
        # provably ours, because anyone may create names under /tmp.
        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:12]
        # /tmp itself rather than $TMPDIR, which may be long or private to root.
        short = _SHORT_SOCKET_PARENT / f"siprec-pg-{digest}"
        try:
            short.mkdir(mode=0o700)
            os.chown(short, user.uid, user.gid)
        except FileExistsError:
            st = short.lstat()
            if not (stat.S_ISDIR(st.st_mode) and st.st_uid == user.uid and st.st_mode & 0o077 == 0):
                short = Path(tempfile.mkdtemp(prefix="siprec-pg-", dir=_SHORT_SOCKET_PARENT))
                os.chown(short, user.uid, user.gid)
        short.chmod(0o700)
        log.info(
            "socket path under %s would exceed the %d-byte unix socket limit; "
            "using private socket directory %s",
            self.root,
            SUN_PATH_MAX,
            short,
        )
        self._private_socket_dir = short
        return short

    # -- processes ---------------------------------------------------------------------

    def _subprocess_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        return env

    def _run(
        self, argv: Sequence[str], user: ClusterUser, *, timeout: float, what: str
    ) -> subprocess.CompletedProcess[str]:
        privileges: Mapping[str, Any] = {}
        if user.uid != os.geteuid():
            privileges = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
        try:
            result = subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                cwd=self.root,
                env=self._subprocess_env(),
                umask=0o077,
                timeout=timeout,
                check=False,
                **privileges,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(
                f"{what} did not finish within {timeout:.0f} s{self._log_tail()}"
            ) from exc
        except OSError as exc:
            raise EmbeddedPostgresError(f"{what} could not be run: {exc}") from exc
        if result.returncode != 0:
            output = (result.stderr.strip() or result.stdout.strip())[-_LOG_TAIL_BYTES:]
            raise EmbeddedPostgresError(
                f"{what} failed (exit {result.returncode}): {output}{self._log_tail()}"
            )
        return result

    def _pg_ctl(self, bin_dir: Path, user: ClusterUser, args: list[str], *, timeout: float) -> None:
        argv = [str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-s", *args]
        self._run(argv, user, timeout=timeout, what=f"pg_ctl {args[0]}")

    def _initdb(self, bin_dir: Path, user: ClusterUser) -> None:
        # initdb into a scratch directory and rename, so a crash mid-way never leaves a
        # half-initialised PGDATA that later starts would mistake for a cluster.
        scratch = self.root / "data.initdb"
        if scratch.exists():
            shutil.rmtree(scratch)
        log.info("initialising PostgreSQL cluster in %s as user %s", self.data_dir, user.name)
        self._run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(scratch),
                "-U",
                SUPERUSER,
                "--encoding=UTF8",
                "--locale=C",
                "--auth=trust",
                *([] if self.durable else ["--no-sync"]),
            ],
            user,
            timeout=_INITDB_TIMEOUT_S,
            what="initdb",
        )
        # Only the private socket, and only for those who can open it (the directory is 0700).
        (scratch / "pg_hba.conf").write_text(
            "# Written by siprec-server: local socket connections only.\n"
            "local   all   all   trust\n"
        )
        with (scratch / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\n# Settings owned by siprec-server, rewritten on every start.\n"
                f"include_if_exists = '{_CONF_FILE}'\n"
            )
        os.replace(scratch, self.data_dir)

    def _write_config(self, socket_dir: Path, port: int, user: ClusterUser) -> None:
        path = self.data_dir / _CONF_FILE
        path.write_text(
            "# Written by siprec-server on every start; edits here are lost.\n"
            "listen_addresses = ''\n"
            f"port = {port}\n"
            f"unix_socket_directories = {_conf_quote(str(socket_dir))}\n"
            "unix_socket_permissions = 0700\n"
            "shared_buffers = 64MB\n"
            "max_connections = 100\n"
            "log_line_prefix = '%m [%p] %q%u@%d '\n"
            "log_timezone = 'UTC'\n"
            "timezone = 'UTC'\n" + ("" if self.durable else _THROWAWAY_SETTINGS)
        )
        if user.uid != os.geteuid():
            os.chown(path, user.uid, user.gid)
            os.chown(self.data_dir / "pg_hba.conf", user.uid, user.gid)
        path.chmod(0o600)

    def _rotate_log(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            if self.log_file.stat().st_size > _LOG_ROTATE_BYTES:
                os.replace(self.log_file, self.log_file.with_suffix(".log.1"))

    def _pg_ctl_start(self, bin_dir: Path, user: ClusterUser) -> None:
        self._pg_ctl(
            bin_dir,
            user,
            ["start", "-w", "-t", str(_PG_CTL_START_WAIT_S), "-l", str(self.log_file)],
            timeout=_PG_CTL_START_WAIT_S + _SUBPROCESS_MARGIN_S,
        )

    # -- crash recovery ------------------------------------------------------------------

    def _running_pid_file(self) -> _PidFile | None:
        """postmaster.pid of a live server for this data dir (after it is ready), else None."""
        pid_path = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + _PG_CTL_START_WAIT_S
        while True:
            pid_file = _PidFile.read(pid_path)
            if pid_file is None or not _is_postgres_of(pid_file.pid, self.data_dir):
                return None
            # No status line at all: a server older than PostgreSQL 10.
            if pid_file.status in ("ready", ""):
                return pid_file
            # Starting, or stopping: wait until it settles one way or the other.
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"PostgreSQL (pid {pid_file.pid}) for {self.data_dir} stayed in state "
                    f"{pid_file.status!r} for {_PG_CTL_START_WAIT_S} s{self._log_tail()}"
                )
            time.sleep(0.1)

    def _clear_crash_leftovers(self, socket_dir: Path, port: int) -> None:
        pid_path = self.data_dir / "postmaster.pid"
        stale = _PidFile.read(pid_path)
        if stale is not None:
            # Its pid is dead or now belongs to an unrelated process (common after a container
            # restart); postgres itself would refuse to start over a live foreign pid.
            log.warning("removing stale %s (pid %d is not our postgres)", pid_path, stale.pid)
            pid_path.unlink(missing_ok=True)
        self._end_orphans()
        for name in (f".s.PGSQL.{port}", f".s.PGSQL.{port}.lock"):
            (socket_dir / name).unlink(missing_ok=True)

    def _end_orphans(self) -> None:
        """Wait for (then kill) backends left behind by a postmaster that died.

        They still hold the old shared memory segment, and postgres refuses to start while it
        is in use. Without their postmaster they exit on their own within moments.
        """
        deadline = time.monotonic() + self.orphan_grace_s
        orphans = _postgres_processes_of(self.data_dir)
        if orphans:
            log.warning("waiting for %d orphaned postgres processes to exit", len(orphans))
        while orphans and time.monotonic() < deadline:
            time.sleep(0.1)
            orphans = _postgres_processes_of(self.data_dir)
        for pid in orphans:
            log.warning("killing orphaned postgres process %d", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + _ORPHAN_GRACE_S
        while orphans and time.monotonic() < deadline:
            time.sleep(0.05)
            orphans = _postgres_processes_of(self.data_dir)
        if orphans:
            raise EmbeddedPostgresError(
                f"old postgres processes {orphans} for {self.data_dir} do not exit"
            )

    # -- reporting -------------------------------------------------------------------------

    def _log_tail(self) -> str:
        try:
            with self.log_file.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
                tail = f.read().decode(errors="replace")
        except OSError:
            return ""
        if not tail.strip():
            return ""
        return f"\n--- last lines of {self.log_file} ---\n{tail.rstrip()}"

    @staticmethod
    def _dsn_for(socket_dir: Path, port: int, database: str) -> str:
        return (
            f"postgresql://{SUPERUSER}@/{quote(database, safe='')}"
            f"?host={quote(str(socket_dir), safe='/')}&port={port}"
        )


def cluster_root_for(data_dir: Path, *, run_as: str | None = None) -> Path:
    """Where the embedded cluster of a data_dir lives: data_dir/pg, unless we are root and the
    unprivileged user postgres runs as cannot enter data_dir (a root user's clone under a 0700
    home, or `mktemp -d`). Then, as long as no cluster exists at data_dir/pg yet, a directory of
    its own under /var/lib/siprec-server named after data_dir: loosening the permissions of the
    operator's home would be the worse surprise."""
    data_dir = Path(os.path.abspath(data_dir))
    preferred = data_dir / "pg"
    if os.geteuid() != 0 or (preferred / "data" / "PG_VERSION").exists():
        return preferred
    user = EmbeddedPostgres(preferred, run_as=run_as).user
    # Directories still to be made will be made traversable (0711/0755); the existing ones decide.
    existing = [p for p in (data_dir, *data_dir.parents) if p.exists()]
    if all(user.can_traverse(parent.stat()) for parent in existing if parent != data_dir):
        return preferred
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    SYSTEM_CLUSTER_PARENT.mkdir(mode=0o711, parents=True, exist_ok=True)
    SYSTEM_CLUSTER_PARENT.chmod(0o711)
    relocated = SYSTEM_CLUSTER_PARENT / f"pg-{digest}"
    log.warning(
        "user %s cannot enter %s: the embedded PostgreSQL cluster lives in %s instead",
        user.name, data_dir, relocated,
    )
    return relocated
