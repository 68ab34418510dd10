"""The one place where asyncpg errors become tidelog errors.

Every call into asyncpg made by the PostgreSQL engine runs inside
`pg_errors()`, so no driver exception escapes the engine. The mapping:

- lost or refused connections, server shutdown, too many clients, timeouts,
  serialization failures and deadlocks -> `StoreUnavailable` (the outcome of
  a write is unknown; retrying with the same event ids is safe);
- a unique violation on the event id -> `DuplicateEventId`; on
  (stream, version) -> `WrongExpectedVersion` (both are prevented by the
  engine's own checks under its lock; the constraints are the last line);
- invalid values (class 22, data exceptions) -> `InvalidInput`;
- anything else from the server or driver -> `StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from tidelog.errors import (
    DuplicateEventId,
    InvalidInput,
    StoreUnavailable,
    TidelogError,
    WrongExpectedVersion,
)

__all__ = ["is_driver_error", "pg_errors", "translate"]


def is_driver_error(exc: BaseException) -> bool:
    """True for the exceptions that `translate` handles (driver, network and timeouts)."""
    return isinstance(
        exc,
        asyncpg.PostgresError
        | asyncpg.InterfaceError
        | asyncpg.exceptions.InternalClientError
        | OSError
        | asyncio.TimeoutError,
    )


def translate(exc: BaseException, stream: str | None = None) -> TidelogError:
    """The tidelog error for a driver exception (`stream` names the append it hit, if any)."""
    if isinstance(exc, TidelogError):
        return exc
    if isinstance(exc, asyncpg.UniqueViolationError):
        constraint = getattr(exc, "constraint_name", None) or ""
        if constraint.endswith("events_id_key"):
            return DuplicateEventId(stream or "", [])
        if constraint.endswith("events_stream_version_key"):
            return WrongExpectedVersion(stream or "", None, None)
    if isinstance(exc, asyncpg.DataError):
        return InvalidInput(f"PostgreSQL refused a value: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", "?")
        return StoreUnavailable(f"PostgreSQL error {sqlstate}: {exc}")
    if isinstance(exc, asyncio.TimeoutError):
        return StoreUnavailable("PostgreSQL did not answer in time")
    return StoreUnavailable(f"PostgreSQL is unreachable: {type(exc).__name__}: {exc}")


@contextmanager
def pg_errors(stream: str | None = None) -> Iterator[None]:
    """Translate driver exceptions raised inside the block; tidelog errors pass through."""
    try:
        yield
    except TidelogError:
        raise
    except BaseException as exc:
        if is_driver_error(exc):
            raise translate(exc, stream) from exc
        raise
