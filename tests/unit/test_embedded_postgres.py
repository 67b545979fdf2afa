"""The embedded cluster as `make run` uses it: first start, restarts, crash leftovers, root."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from storage.embedded_postgres import (
    SUN_PATH_MAX,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    find_bin_dir,
)

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def cluster_root() -> Iterator[Path]:
    """A 0755 scratch directory (pytest's tmp dirs are 0700 and the postgres user could not
    enter them); whatever cluster a test leaves running there is stopped afterwards."""
    base = Path(tempfile.mkdtemp(prefix="siprec-pg-test-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for data_dir in base.glob("**/data"):
            if (data_dir / "PG_VERSION").exists():
                try:
                    EmbeddedPostgres(data_dir.parent).stop()
                except EmbeddedPostgresError:
                    for pid in postgres_processes(data_dir):
                        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def pristine_cluster() -> Iterator[Path]:
    """One initialised, stopped cluster; tests copy it rather than pay for initdb each."""
    base = Path(tempfile.mkdtemp(prefix="siprec-pg-pristine-"))
    base.chmod(0o755)
    try:
        with EmbeddedPostgres(base / "pg", durable=False):
            pass
        yield base / "pg"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def copy_cluster(pristine: Path, to: Path) -> Path:
    """A stopped cluster at `to`, as a previous run of the server would have left it."""
    to.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(pristine), str(to)], check=True, timeout=60)
    return to


def execute(dsn: str, sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def query(dsn: str, sql: str) -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def postgres_processes(data_dir: Path) -> dict[int, int]:
    """pid -> uid of every postgres process working in data_dir."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            if Path(os.readlink(entry / "cwd")) != data_dir:
                continue
            found[int(entry.name)] = entry.stat().st_uid
        except OSError:
            continue
    return found


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_first_start_initialises_and_later_starts_reuse_the_cluster(cluster_root: Path) -> None:
    pg = EmbeddedPostgres(cluster_root / "pg")
    dsn = pg.start()
    assert query(dsn, "SELECT current_database()") == "siprec"
    assert query(dsn, "SELECT current_user") == "siprec"
    identity = query(dsn, "SELECT system_identifier FROM pg_control_system()")
    execute(dsn, "CREATE TABLE survives (x int)")
    pg_version = os.stat(pg.data_dir / "PG_VERSION")
    pg.stop()
    assert not postgres_processes(pg.data_dir)

    again = EmbeddedPostgres(cluster_root / "pg")
    dsn = again.start()
    assert query(dsn, "SELECT system_identifier FROM pg_control_system()") == identity
    assert query(dsn, "SELECT to_regclass('survives') IS NOT NULL")
    assert os.stat(again.data_dir / "PG_VERSION").st_ino == pg_version.st_ino
    # No TCP listener, only the private socket.
    assert query(dsn, "SHOW listen_addresses") == ""
    assert (cluster_root / "pg" / "log" / "postgresql.log").stat().st_size > 0
    again.stop()


def test_stale_pid_file_of_a_dead_process_does_not_block_start(
    cluster_root: Path, pristine_cluster: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy_cluster(pristine_cluster, cluster_root / "pg")
    pg = EmbeddedPostgres(cluster_root / "pg")
    pg.start()
    pid_file = (pg.data_dir / "postmaster.pid").read_text().splitlines()
    pg.stop()
    pid_file[0] = str(dead_pid())
    (pg.data_dir / "postmaster.pid").write_text("\n".join(pid_file) + "\n")

    caplog.set_level(logging.WARNING, logger="storage.embedded_postgres")
    dsn = pg.start()
    assert query(dsn, "SELECT 1") == 1
    assert "stale" in caplog.text
    pg.stop()


def test_pid_file_naming_an_unrelated_live_process_does_not_block_start(
    cluster_root: Path,
    pristine_cluster: Path,
) -> None:
    copy_cluster(pristine_cluster, cluster_root / "pg")
    # After a container restart the old postmaster's pid often belongs to someone else.
    pg = EmbeddedPostgres(cluster_root / "pg")
    pg.start()
    pid_file = (pg.data_dir / "postmaster.pid").read_text().splitlines()
    pg.stop()
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        pid_file[0] = str(stranger.pid)
        (pg.data_dir / "postmaster.pid").write_text("\n".join(pid_file) + "\n")
        assert query(pg.start(), "SELECT 1") == 1
        assert stranger.poll() is None, "an unrelated process must not be touched"
    finally:
        stranger.kill()
        stranger.wait()
    pg.stop()


def test_start_after_postmaster_was_killed_with_sigkill(
    cluster_root: Path, pristine_cluster: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy_cluster(pristine_cluster, cluster_root / "pg")
    pg = EmbeddedPostgres(cluster_root / "pg")
    dsn = pg.start()
    execute(dsn, "CREATE TABLE calls (id int); INSERT INTO calls VALUES (7)")

    async def kill_postmaster_under_open_sessions() -> None:
        idle = await asyncpg.connect(dsn)
        busy = await asyncpg.connect(dsn)
        # A backend stuck in a long computation does not notice its postmaster's death and
        # keeps the old shared memory attached: stand-in with a stopped backend.
        os.kill(await busy.fetchval("SELECT pg_backend_pid()"), signal.SIGSTOP)
        postmaster = postmaster_pid(pg.data_dir)
        os.kill(postmaster, signal.SIGKILL)
        while postmaster in postgres_processes(pg.data_dir):
            await asyncio.sleep(0.01)
        idle.terminate()
        busy.terminate()

    asyncio.run(kill_postmaster_under_open_sessions())
    assert postgres_processes(pg.data_dir), "the stopped backend outlives its postmaster"

    restarted = EmbeddedPostgres(cluster_root / "pg")
    restarted.orphan_grace_s = 0.5
    caplog.set_level(logging.WARNING, logger="storage.embedded_postgres")
    dsn = restarted.start()
    assert query(dsn, "SELECT id FROM calls") == 7
    assert "killing orphaned postgres process" in caplog.text
    restarted.stop()
    assert not postgres_processes(pg.data_dir)


def test_postgres_already_running_for_the_data_dir_is_adopted(
    cluster_root: Path, pristine_cluster: Path
) -> None:
    copy_cluster(pristine_cluster, cluster_root / "pg")
    crashed = EmbeddedPostgres(cluster_root / "pg")
    crashed.start()
    pid = postmaster_pid(crashed.data_dir)
    # Our process "crashed": nobody called stop(). The next start must reuse that server.
    successor = EmbeddedPostgres(cluster_root / "pg")
    assert query(successor.start(), "SELECT 1") == 1
    assert postmaster_pid(successor.data_dir) == pid
    successor.stop()
    assert not postgres_processes(successor.data_dir)


@as_root
def test_under_root_postgres_runs_as_the_postgres_user(
    cluster_root: Path, pristine_cluster: Path
) -> None:
    copy_cluster(pristine_cluster, cluster_root / "pg")
    try:
        expected = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        expected = pwd.getpwnam("nobody").pw_uid
    with EmbeddedPostgres(cluster_root / "pg") as pg:
        processes = postgres_processes(pg.data_dir)
        assert len(processes) >= 2  # postmaster and its auxiliary processes
        assert set(processes.values()) == {expected}
        assert pg.data_dir.stat().st_uid == expected
        socket_dir = Path(pg.dsn.split("host=")[1].split("&")[0])
        assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700


@as_root
def test_run_as_names_the_account_postgres_runs_as(
    cluster_root: Path, pristine_cluster: Path
) -> None:
    copy_cluster(pristine_cluster, cluster_root / "pg")
    nobody = pwd.getpwnam("nobody").pw_uid
    with EmbeddedPostgres(cluster_root / "pg", run_as="nobody") as pg:
        assert set(postgres_processes(pg.data_dir).values()) == {nobody}
        assert query(pg.dsn, "SELECT 1") == 1


def test_too_long_socket_path_moves_the_socket_to_a_private_tmp_dir(
    cluster_root: Path, pristine_cluster: Path, caplog: pytest.LogCaptureFixture
) -> None:
    deep = cluster_root / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    for d in (deep, deep.parent):
        d.chmod(0o755)
    pg = EmbeddedPostgres(copy_cluster(pristine_cluster, deep / "pg"))
    assert len(str(pg.root / "run" / ".s.PGSQL.5432")) > SUN_PATH_MAX
    caplog.set_level(logging.INFO, logger="storage.embedded_postgres")
    dsn = pg.start()
    socket_dir = Path(dsn.split("host=")[1].split("&")[0])
    try:
        assert socket_dir.parent == Path("/tmp")
        st = socket_dir.stat()
        assert stat.S_IMODE(st.st_mode) == 0o700
        assert st.st_uid == pg.data_dir.stat().st_uid
        assert query(dsn, "SELECT 1") == 1
        assert str(socket_dir) in caplog.text
    finally:
        pg.stop()
    assert not socket_dir.exists()


@as_root
def test_data_dir_the_postgres_user_cannot_reach_is_refused_naming_the_directory(
    cluster_root: Path,
) -> None:
    locked = cluster_root / "locked"
    locked.mkdir(mode=0o700)
    with pytest.raises(EmbeddedPostgresError, match=f"chmod o\\+x {locked}"):
        EmbeddedPostgres(locked / "var" / "pg", run_as="nobody").start()


def test_start_failure_reports_the_server_log(cluster_root: Path, pristine_cluster: Path) -> None:
    copy_cluster(pristine_cluster, cluster_root / "pg")
    pg = EmbeddedPostgres(cluster_root / "pg")
    with (pg.data_dir / "postgresql.conf").open("a") as conf:
        conf.write("shared_buffers = 'plenty'\n")
    with pytest.raises(EmbeddedPostgresError) as failure:
        pg.start()
    assert "shared_buffers" in str(failure.value)
    assert "postgresql.log" in str(failure.value)


def test_missing_server_binaries_name_the_package_to_install(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedPostgresError, match="apt-get install postgresql"):
        EmbeddedPostgres(tmp_path / "pg", bin_dir=tmp_path).start()
    with pytest.raises(EmbeddedPostgresError, match="apt-get install postgresql"):
        find_bin_dir(search_root=tmp_path / "nothing", path=str(tmp_path))


def test_bin_dir_is_the_highest_version_unless_the_cluster_is_older(tmp_path: Path) -> None:
    for version, has_initdb in (("9.6", True), ("13", True), ("15", True), ("16", False)):
        bin_dir = tmp_path / version / "bin"
        bin_dir.mkdir(parents=True)
        if has_initdb:
            (bin_dir / "initdb").write_text("#!/bin/sh\n")
            (bin_dir / "initdb").chmod(0o755)
    assert find_bin_dir(search_root=tmp_path, path="") == tmp_path / "15" / "bin"
    assert find_bin_dir(search_root=tmp_path, path="", prefer_version="13") == (
        tmp_path / "13" / "bin"
    )
    # A cluster from a version no longer installed: the newest one (pg_ctl then explains).
    assert find_bin_dir(search_root=tmp_path, path="", prefer_version="12") == (
        tmp_path / "15" / "bin"
    )


def test_dsn_is_only_available_while_started(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedPostgresError, match="not started"):
        _ = EmbeddedPostgres(tmp_path / "pg").dsn
