"""Reaching the database for the server and for operator commands.

With `[database] url` set, both connect to it. Otherwise the data_dir's embedded cluster is used:
- the server (`run`, which holds the data_dir lock) starts it, or adopts the one its crashed
  predecessor left running, and stops it when it exits;
- a command that finds the data_dir locked by a running server attaches to the cluster that
  server runs and stops nothing; a command that finds the data_dir free takes the lock for its
  own duration (so no server starts underneath it), starts the cluster if it is not running,
  and stops it afterwards only if it started it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import asyncpg

from siprec_server.config import Config
from siprec_server.data_dir import DataDirLock, prepare_data_dir
from siprec_server.logs import get_logger
from storage.database import create_pool, migrate
from storage.embedded_postgres import EmbeddedPostgres, cluster_root_for
from storage.roles import APP_ROLE, apply_app_grants, dsn_as, ensure_app_role

log = get_logger("database")


_CHECK_INTERVAL_S = 1.0
_RESTART_BACKOFF_MAX_S = 30.0


@dataclass
class DatabaseCounters:
    embedded_restarts: int = 0
    """Times the embedded PostgreSQL was found dead and started again."""
    embedded_restart_failures: int = 0
    """Attempts to start it again that failed (retried with back-off)."""


class ClusterSupervisor:
    """Keeps the embedded cluster running: when its postmaster dies (OOM killer, an operator's
    kill, a crash), it is started again, with back-off while starting fails. Calls in progress
    keep recording meanwhile; their writes wait in the write-behind."""

    def __init__(self, cluster: EmbeddedPostgres, counters: DatabaseCounters) -> None:
        self._cluster = cluster
        self._counters = counters
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_CHECK_INTERVAL_S)
            if self._cluster.is_running():
                continue
            log.error("embedded_postgres_died", data=str(self._cluster.data_dir))
            backoff = 1.0
            while True:
                try:
                    await loop.run_in_executor(None, self._cluster.start)
                except Exception as exc:  # noqa: BLE001 - logged, counted, retried
                    self._counters.embedded_restart_failures += 1
                    log.error("embedded_postgres_restart_failed", error=str(exc)[:300],
                              retry_in_s=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _RESTART_BACKOFF_MAX_S)
                    continue
                self._counters.embedded_restarts += 1
                log.warning("embedded_postgres_restarted",
                            restarts=self._counters.embedded_restarts)
                break


@dataclass
class DatabaseHandle:
    """An open pool, and what must be undone when it is closed."""

    pool: asyncpg.Pool
    cluster: EmbeddedPostgres | None = None
    """The embedded cluster, if one is used."""
    stop_cluster: bool = False
    """Whether closing stops the cluster: only the process that owns it does."""
    lock: DataDirLock | None = field(default=None, repr=False)
    """A lock a command took for its own duration, released on close."""
    counters: DatabaseCounters = field(default_factory=DatabaseCounters)
    owner_dsn: str | None = None
    """The owner role's DSN when the pool runs as a least-privilege role (VACUUM needs it)."""
    _supervisor: ClusterSupervisor | None = field(default=None, repr=False)

    def supervise(self) -> None:
        """The server's own embedded cluster is restarted when it dies."""
        if self.cluster is not None and self.stop_cluster and self._supervisor is None:
            self._supervisor = ClusterSupervisor(self.cluster, self.counters)
            self._supervisor.start()

    async def close(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.close()
        try:
            await asyncio.wait_for(self.pool.close(), timeout=10)
        except TimeoutError:
            self.pool.terminate()
        finally:
            try:
                if self.cluster is not None and self.stop_cluster:
                    await asyncio.get_running_loop().run_in_executor(None, self.cluster.stop)
            finally:
                if self.lock is not None:
                    self.lock.release()


def embedded_cluster(config: Config) -> EmbeddedPostgres:
    return EmbeddedPostgres(cluster_root_for(config.server.data_dir.resolve()))


async def _pool(dsn: str, config: Config, owner_dsn: str | None = None) -> asyncpg.Pool:
    """Migrations as the owner (when there is one), then the application role's grants, then
    the pool as the application role."""
    if owner_dsn is None:
        pool = await create_pool(dsn, max_size=config.database.pool_max)
        try:
            applied = await migrate(pool)
        except BaseException:
            await pool.close()
            raise
    else:
        owner = await asyncpg.connect(owner_dsn, timeout=10)
        try:
            applied = await migrate(owner)
            pool = await create_pool(dsn, max_size=config.database.pool_max)
            try:
                role = await pool.fetchval("SELECT current_user")
                if role != await owner.fetchval("SELECT current_user"):
                    await apply_app_grants(owner, role)
            except BaseException:
                await pool.close()
                raise
        finally:
            await owner.close()
    if applied:
        log.info("database_migrated", applied=applied)
    return pool


async def _embedded_pool(owner_dsn: str, config: Config) -> asyncpg.Pool:
    """The embedded cluster: the owner is its superuser, the server works as siprec_app."""
    owner = await asyncpg.connect(owner_dsn, timeout=10)
    try:
        await ensure_app_role(owner)
    finally:
        await owner.close()
    return await _pool(dsn_as(owner_dsn, APP_ROLE), config, owner_dsn)


def _external_owner(config: Config) -> str | None:
    return config.database.migration_url or None


async def open_server_database(config: Config) -> DatabaseHandle:
    """For `run`, which already holds the data_dir lock: the database, started if need be."""
    if config.database.url:
        owner = _external_owner(config)
        return DatabaseHandle(await _pool(config.database.url, config, owner), owner_dsn=owner)
    cluster = embedded_cluster(config)
    dsn = await asyncio.get_running_loop().run_in_executor(None, cluster.start)
    try:
        pool = await _embedded_pool(dsn, config)
    except BaseException:
        await asyncio.get_running_loop().run_in_executor(None, cluster.stop)
        raise
    # The data_dir is ours, so an adopted cluster (our crashed predecessor's) is ours too.
    return DatabaseHandle(pool, cluster, stop_cluster=True, owner_dsn=dsn)


async def open_command_database(config: Config, command: str) -> DatabaseHandle:
    """For an operator command: the running server's database, or one of its own."""
    if config.database.url:
        owner = _external_owner(config)
        return DatabaseHandle(await _pool(config.database.url, config, owner), owner_dsn=owner)
    data_dir = config.server.data_dir.resolve()
    prepare_data_dir(data_dir)
    lock = DataDirLock(data_dir)
    loop = asyncio.get_running_loop()
    if not lock.try_acquire(command):
        # A server runs here: use its cluster as it is.
        cluster = embedded_cluster(config)
        dsn = await loop.run_in_executor(None, cluster.attach)
        return DatabaseHandle(await _embedded_pool(dsn, config), cluster, stop_cluster=False,
                              owner_dsn=dsn)
    try:
        cluster = embedded_cluster(config)
        dsn = await loop.run_in_executor(None, cluster.start)
        try:
            pool = await _embedded_pool(dsn, config)
        except BaseException:
            if cluster.launched:
                await loop.run_in_executor(None, cluster.stop)
            raise
    except BaseException:
        lock.release()
        raise
    return DatabaseHandle(pool, cluster, stop_cluster=cluster.launched, lock=lock,
                          owner_dsn=dsn)
