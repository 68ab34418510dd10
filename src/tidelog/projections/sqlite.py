"""`SQLiteProjection`: a read model in the store's own SQLite file, exactly-once.

The driver opens its own `sqlite3` connection to the store's file and, for
every batch, writes the rows *and* the checkpoint in one transaction, after
checking the stored checkpoint is the one the batch started from. A crash or
an exception between two events rolls the whole batch back.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from tidelog.engines.contract import Engine
from tidelog.errors import InvalidInput, NotSupported
from tidelog.projections._core import (
    CHECKPOINT_TABLE,
    CheckpointMoved,
    Item,
    Shadow,
    TablesDriver,
    TablesProjection,
    call,
)

__all__ = ["SQLiteProjection"]

T = TypeVar("T")


class SQLiteProjection(TablesProjection):
    """A projection whose read model is tables in the store's own SQLite file.

    `tables` maps each logical table name to its DDL, written with `{table}`
    where the name goes (`"CREATE TABLE {table} (id TEXT PRIMARY KEY, n INT)"`;
    more statements, such as indexes named `{table}_by_x`, separated by `;`).
    Handlers are plain functions that write through `self.db` (the runner's
    connection, inside the batch transaction) to `self.table("logical")`,
    which is the shadow table during a rebuild. Never commit in a handler.
    """

    db: sqlite3.Connection


def sqlite_path(store: Engine) -> str:
    """The file of a SQLite store: the one place projections look at a concrete engine."""
    path = getattr(getattr(store, "config", None), "path", None)
    if store.name != "sqlite" or not isinstance(path, str):
        raise NotSupported(
            store.name,
            "SQLiteProjection",
            "its read model must live in the store's own SQLite file; use a Projection "
            "with a CheckpointStore on other engines",
        )
    return path


class SQLiteDriver(TablesDriver):
    """Rows and checkpoint in one transaction of the store's own SQLite file."""

    kind = "sqlite-transaction"

    def __init__(self, projection: SQLiteProjection, path: str, key: str | None = None) -> None:
        super().__init__(projection)
        self.sqlp = projection
        self.key = key or projection.name
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout = 30000")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.sqlp.db = self.conn

    async def _run(self, work: Callable[[], T]) -> T:
        """Run `work` on a thread, one at a time; a cancelled caller never leaves it running."""
        return await self._one_at_a_time(lambda: asyncio.to_thread(work))

    async def aclose(self) -> None:
        await self._settle()
        self.conn.close()

    def _create_tables(self, names: Mapping[str, str]) -> None:
        for logical, ddl in self.sqlp.tables.items():
            exists = self.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (names[logical],)
            ).fetchone()
            if not exists:
                for statement in ddl.format(table=names[logical]).split(";"):
                    if statement.strip():
                        self.conn.execute(statement)

    def _stored(self) -> int:
        row = self.conn.execute(
            f"SELECT position FROM {CHECKPOINT_TABLE} WHERE name = ?", (self.key,)
        ).fetchone()
        return int(row[0]) if row else 0

    def _save(self, key: str, position: int) -> None:
        self.conn.execute(
            f"INSERT INTO {CHECKPOINT_TABLE} (name, position) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
            (key, position),
        )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    async def load(self) -> int:
        def work() -> int:
            with self._transaction():
                self.conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {CHECKPOINT_TABLE} "
                    "(name TEXT PRIMARY KEY, position INTEGER NOT NULL)"
                )
                self._create_tables(self._names())
                return self._stored()

        return await self._run(work)

    async def apply(
        self, items: list[Item], start: int, end: int, system_only: bool = False
    ) -> None:
        def work() -> None:
            with self._transaction():
                if self._stored() != start:
                    raise CheckpointMoved
                for item in items:
                    result = call(self.sqlp, item)
                    if inspect.isawaitable(result):
                        raise InvalidInput("SQLiteProjection handlers must not be async")
                self._save(self.key, end)

        await self._run(work)

    async def _reset(self, shadow: Shadow) -> None:
        def reset() -> None:
            with self._transaction():
                self.conn.execute(f"DELETE FROM {CHECKPOINT_TABLE} WHERE name = ?", (shadow.key,))
                self._create_tables(shadow.names)

        await self._run(reset)

    async def _swap(self, shadow: Shadow, position: int) -> None:
        def swap() -> None:
            with self._transaction():
                for logical, live in shadow.live_names.items():
                    self.conn.execute(f'DROP TABLE IF EXISTS "{live}"')
                    self.conn.execute(f'ALTER TABLE "{shadow.names[logical]}" RENAME TO "{live}"')
                self.conn.execute(f"DELETE FROM {CHECKPOINT_TABLE} WHERE name = ?", (shadow.key,))
                self._save(shadow.live_key, position)

        await self._run(swap)

    async def _drop(self, shadow: Shadow) -> None:
        def drop() -> None:
            with self._transaction():
                for name in shadow.names.values():
                    self.conn.execute(f'DROP TABLE IF EXISTS "{name}"')
                self.conn.execute(f"DELETE FROM {CHECKPOINT_TABLE} WHERE name = ?", (shadow.key,))

        await self._run(drop)
