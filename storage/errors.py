"""The storage layer's own failure for "the database cannot be reached now".

Callers above storage (the recorder, the media service, the API) never see asyncpg's exception
zoo: a lost connection, a refused connect, a server shutting down or out of resources, or a
statement that did not answer in time all become `StorageUnavailable`, which means "retry later;
nothing about the request itself was wrong". Every other database error is a bug or bad data
and keeps its own type.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import asyncpg

_T = TypeVar("_T")

DEFAULT_OPERATION_TIMEOUT_S = 5.0


class StorageUnavailable(Exception):
    """The database cannot be reached now; the operation may be retried later."""


_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, no such socket file, unreachable
    TimeoutError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.CannotConnectNowError,  # 57P03: starting up / in recovery
    asyncpg.exceptions.OperatorInterventionError,  # class 57: admin or crash shutdown
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: disk full, too many connections
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,  # the connection or the pool is closed under us
    # "cannot switch to state ...; another operation is in progress": a statement on this
    # connection was cut off (the server died, or our timeout cancelled it) and the connection
    # can run nothing more; the pool replaces it, a retry on a fresh one will do.
    asyncpg.exceptions.InternalClientError,
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether a database failure means "not reachable now" rather than "this was wrong"."""
    # QueryCanceledError (statement_timeout: an overloaded server) is in class 57 too.
    return isinstance(exc, _UNAVAILABLE)


async def guarded(work: Awaitable[_T], timeout: float = DEFAULT_OPERATION_TIMEOUT_S) -> _T:
    """Run one database operation within `timeout`, translating unavailability.

    A transaction whose connection died (or whose statement the timeout cancelled) fails in its
    clean-up with whatever the broken connection says; the cause is still that the database
    stopped answering, so that is unavailability too."""
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await work
    except StorageUnavailable:
        raise
    except Exception as exc:
        if deadline.expired() or _caused_by_unavailability(exc):
            raise StorageUnavailable(f"{type(exc).__name__}: {exc}"[:300]) from exc
        raise


def _caused_by_unavailability(exc: BaseException) -> bool:
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if is_unavailable(current):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False
