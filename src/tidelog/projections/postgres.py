"""`PostgresProjection`: a read model in the store's own PostgreSQL schema, exactly-once.

The driver opens its own asyncpg connection (its `search_path` is the store's
schema) and writes the rows and the checkpoint in one transaction, after
locking the checkpoint row (`SELECT … FOR UPDATE`) and checking it is the one
the batch started from. asyncpg is imported only when a driver connects: it
is an optional extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

from tidelog.engines.contract import Engine
from tidelog.errors import NotSupported
from tidelog.projections._core import (
    CHECKPOINT_TABLE,
    CheckpointMoved,
    Item,
    Shadow,
    TablesDriver,
    TablesProjection,
    call,
)

__all__ = ["PostgresProjection"]

T = TypeVar("T")

_PG_LOCK_CLASS: Final = 0x74647072  # "tdpr": projection DDL of one store (not its appends)
_PG_SETTINGS: Final = {
    "synchronous_commit": "on",
    "application_name": "tidelog-projection",
    "idle_in_transaction_session_timeout": "60000",
}


class PostgresProjection(TablesProjection):
    """A projection whose read model is tables in the store's own PostgreSQL schema.

    `tables` works as in `SQLiteProjection` (DDL with `{table}`, statements
    separated by `;`). Handlers are `async` functions that write through
    `self.db`, the runner's own asyncpg connection, inside the batch
    transaction: `await self.db.execute(f"INSERT INTO {self.table('t')} ...", ...)`.
    The connection's `search_path` is the store's schema, so unqualified names
    (tables, and indexes named `{table}_by_x`) land there. Never commit or open
    a transaction of your own in a handler; an exception rolls the batch back.
    """

    db: Any
    """An `asyncpg.Connection` (typed loosely: asyncpg is an optional extra)."""


def postgres_target(store: Engine) -> tuple[str, Any]:
    """The DSN and config of a PostgreSQL store (its config names the schema)."""
    config = getattr(store, "config", None)
    dsn = getattr(store, "dsn", None)  # `PostgresEngine.dsn`, without importing asyncpg
    if store.name != "postgres" or not isinstance(dsn, str) or config is None:
        raise NotSupported(
            store.name,
            "PostgresProjection",
            "its read model must live in the store's own PostgreSQL schema; use a Projection "
            "with a CheckpointStore on other engines",
        )
    return dsn, config


class _HandlerFailed(Exception):
    """Carries a handler's exception past the driver-error translation, unchanged."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(exc)
        self.exc = exc


class PostgresDriver(TablesDriver):
    """Rows and checkpoint in one transaction of the store's own PostgreSQL schema.

    Each batch locks its checkpoint row (`FOR UPDATE`) before anything else, so
    two runners of one projection serialize on it: the second waits, then sees
    the moved checkpoint and resumes from there instead of applying the batch
    again. `load` creates that row, so there is always one to lock. DDL (tables,
    rebuild swaps) is serialized by a transaction-level advisory lock.
    """

    kind = "postgres-transaction"

    def __init__(self, projection: PostgresProjection, dsn: str, config: Any) -> None:
        super().__init__(projection)
        self.pgp = projection
        self.dsn = dsn
        self.config = config
        self.schema: str = config.schema
        self.quoted = f'"{self.schema}"'
        self.checkpoints = f"{self.quoted}.{CHECKPOINT_TABLE}"
        self.lock_key = zlib.crc32(self.schema.encode("ascii")) - 2**31
        self.conn: Any = None

    async def _connection(self) -> Any:
        """The driver's connection, (re)opened if it is missing or was lost."""
        if self.conn is None or self.conn.is_closed():
            import asyncpg

            self.conn = await asyncpg.connect(
                self.dsn,
                timeout=self.config.connect_timeout,
                command_timeout=self.config.command_timeout,
                server_settings={**_PG_SETTINGS, "search_path": f"{self.quoted}, public"},
            )
            self.pgp.db = self.conn
        return self.conn

    async def _run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run `work(conn)` in one transaction, one at a time; a cancelled caller
        never leaves it half done (it commits or rolls back in the background)."""
        from tidelog.engines.postgres.errors import pg_errors

        async def transaction() -> T:
            try:
                with pg_errors():
                    conn = await self._connection()
                    async with conn.transaction():
                        return await work(conn)
            except _HandlerFailed as failed:
                raise failed.exc from failed.exc.__cause__

        return await self._one_at_a_time(transaction)

    async def aclose(self) -> None:
        await self._settle()
        if self.conn is not None:
            conn, self.conn = self.conn, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 10)

    async def _ddl_lock(self, conn: Any) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _PG_LOCK_CLASS, self.lock_key)

    async def _create_tables(self, conn: Any, names: Mapping[str, str]) -> None:
        for logical, ddl in self.pgp.tables.items():
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = $1 AND tablename = $2",
                self.schema,
                names[logical],
            )
            if not exists:
                await conn.execute(ddl.format(table=names[logical]))

    async def _stored(self, conn: Any, lock: bool = False) -> int:
        position = await conn.fetchval(
            f"SELECT position FROM {self.checkpoints} WHERE name = $1"
            + (" FOR UPDATE" if lock else ""),
            self.key,
        )
        return int(position) if position is not None else 0

    async def _save(self, conn: Any, key: str, position: int) -> None:
        await conn.execute(
            f"INSERT INTO {self.checkpoints} (name, position) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            key,
            position,
        )

    async def _forget(self, conn: Any, key: str) -> None:
        """Delete the checkpoint `key`, if the checkpoint table exists yet."""
        if await conn.fetchval("SELECT to_regclass($1)", self.checkpoints) is not None:
            await conn.execute(f"DELETE FROM {self.checkpoints} WHERE name = $1", key)

    async def load(self) -> int:
        async def work(conn: Any) -> int:
            await self._ddl_lock(conn)
            if await conn.fetchval("SELECT to_regclass($1)", self.checkpoints) is None:
                await conn.execute(
                    f"CREATE TABLE {self.checkpoints} "
                    "(name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
                )
            await self._create_tables(conn, self._names())
            await conn.execute(
                f"INSERT INTO {self.checkpoints} (name, position) VALUES ($1, 0) "
                "ON CONFLICT (name) DO NOTHING",
                self.key,
            )
            return await self._stored(conn)

        return await self._run(work)

    async def apply(
        self, items: list[Item], start: int, end: int, system_only: bool = False
    ) -> None:
        async def work(conn: Any) -> None:
            if await self._stored(conn, lock=True) != start:
                raise CheckpointMoved
            for item in items:
                try:
                    result = call(self.pgp, item)
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    raise _HandlerFailed(exc) from exc
            await self._save(conn, self.key, end)

        await self._run(work)

    async def _reset(self, shadow: Shadow) -> None:
        async def reset(conn: Any) -> None:
            await self._ddl_lock(conn)
            await self._forget(conn, shadow.key)
            await self._create_tables(conn, shadow.names)

        await self._run(reset)

    async def _swap(self, shadow: Shadow, position: int) -> None:
        async def swap(conn: Any) -> None:
            # the live checkpoint row first, then the tables: a concurrent batch
            # (which locks that row first too) waits, then sees the checkpoint moved
            await conn.execute(
                f"SELECT 1 FROM {self.checkpoints} WHERE name = $1 FOR UPDATE", shadow.live_key
            )
            await self._ddl_lock(conn)
            for logical, live in shadow.live_names.items():
                await conn.execute(f'DROP TABLE IF EXISTS {self.quoted}."{live}"')
                await conn.execute(
                    f'ALTER TABLE {self.quoted}."{shadow.names[logical]}" RENAME TO "{live}"'
                )
            await conn.execute(f"DELETE FROM {self.checkpoints} WHERE name = $1", shadow.key)
            await self._save(conn, shadow.live_key, position)

        await self._run(swap)

    async def _drop(self, shadow: Shadow) -> None:
        async def drop(conn: Any) -> None:
            await self._ddl_lock(conn)
            for name in shadow.names.values():
                await conn.execute(f'DROP TABLE IF EXISTS {self.quoted}."{name}"')
            await self._forget(conn, shadow.key)

        await self._run(drop)
