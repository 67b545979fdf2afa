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
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether a database failure means "not reachable now" rather than "this was wrong"."""
    # QueryCanceledError (statement_timeout: an overloaded server) is in class 57 too.
    return isinstance(exc, _UNAVAILABLE)


async def guarded(work: Awaitable[_T], timeout: float = DEFAULT_OPERATION_TIMEOUT_S) -> _T:
    """Run one database operation within `timeout`, translating unavailability."""
    try:
        async with asyncio.timeout(timeout):
            return await work
    except StorageUnavailable:
        raise
    except Exception as exc:
        if is_unavailable(exc):
            raise StorageUnavailable(f"{type(exc).__name__}: {exc}"[:300]) from exc
        raise
