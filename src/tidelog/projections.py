"""Projections: read models built from the log, with checkpoints, lag and rebuild.

A projection has one handler per event class (found by the class, never by a
string: `@handles` reads the annotation, or takes the class):

    class OrderTotals(Projection):
        name = "order_totals"

        def __init__(self) -> None:
            self.totals: dict[str, int] = {}

        @handles
        def _placed(self, e: OrderPlaced, recorded: tidelog.RecordedEvent) -> None:
            self.totals[e.order_id] = e.total

A `ProjectionRunner` reads the global log from the projection's checkpoint
(catch-up, in pages), then follows it live (`store.subscribe`), and commits a
checkpoint after every batch. Handlers may be plain or `async` functions.

**Where the checkpoint lives decides the guarantee.**

- `SQLiteProjection`: the read model is tables in the *same SQLite file* as
  the store. The runner opens its own `sqlite3` connection to that file and,
  for every batch, writes the rows *and* the checkpoint in one transaction
  (checking the stored checkpoint is the one it started from). A crash or an
  exception between two events rolls the whole batch back, so no event is
  ever applied twice or skipped: exactly-once effects.
- `PostgresProjection`: the same guarantee on PostgreSQL. The read model is
  tables in the *store's own schema*; the runner opens its own asyncpg
  connection (its `search_path` is that schema) and writes the rows and the
  checkpoint in one transaction, after locking the checkpoint row
  (`SELECT … FOR UPDATE`) and checking it is the one the batch started from.
  Its handlers are `async` and write through `await self.db.execute(...)`.
- Any other `Projection`: its checkpoint goes to a `CheckpointStore`
  (`MemoryCheckpoints`, or `StreamCheckpoints` which keeps it in the store's
  `$projection-<name>` system stream). The read model and the checkpoint are
  two writes, so delivery is at-least-once: make handlers idempotent (upsert
  by key, or remember `recorded.position`).

**Rebuild** (`runner.rebuild(name)`, `tidelog projections rebuild NAME`)
builds a fresh read model from position 0 beside the live one, then swaps it
in: for SQLite and PostgreSQL projections, shadow tables renamed over the old
ones in one transaction together with the checkpoint; for others, `fresh()` builds a new
instance and `swap()` moves its state in.

**A new component that needs the whole history** is just a projection
started with no checkpoint: `await runner.catch_up(progress=callback)` replays
the log in pages and reports (position, head) after each one; `run()` then
follows live.

Events of system streams (`$...`) and events no handler wants are skipped
without being decoded; the checkpoint still moves past them, so the lag
(`head - checkpoint`, in log positions) drops to 0 once caught up.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import logging
import re
import secrets
import sqlite3
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar, Final, Protocol, Self, TypeVar

import msgspec

from tidelog.aggregates import applies, collect_handlers
from tidelog.codec import DEFAULT_REGISTRY, EventCipher, EventRegistry
from tidelog.engines.contract import Engine
from tidelog.errors import InvalidInput, NotSupported, UnknownEventType
from tidelog.model import NewEvent, RecordedEvent

__all__ = [
    "CheckpointStore",
    "MemoryCheckpoints",
    "PostgresProjection",
    "Projection",
    "ProjectionRunner",
    "ProjectionStatus",
    "SQLiteProjection",
    "StreamCheckpoints",
    "handles",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

handles = applies
"""Mark a projection method as the handler of one event class (see `tidelog.aggregates.applies`)."""

CHECKPOINT_TABLE: Final = "tidelog_projection_checkpoints"
_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,62}")
Progress = Callable[[int, int], None]
"""Called with (position reached, head) after each page of a catch-up."""


class Projection:
    """Base class of projections; `name` identifies its checkpoint and read model."""

    name: ClassVar[str] = ""
    _handlers: ClassVar[dict[type[msgspec.Struct], Callable[..., Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
        if _NAME_RE.fullmatch(cls.name) is None:
            raise InvalidInput(
                f"projection name {cls.name!r}: lower-case letters, digits and '_', "
                "starting with a letter, at most 63 characters"
            )
        cls._handlers = collect_handlers(cls)

    def fresh(self) -> Self:
        """An empty instance to rebuild into (default: the class called with no arguments)."""
        return type(self)()

    def swap(self, rebuilt: Self) -> None:
        """Take the state of a rebuilt instance (default: its attributes)."""
        self.__dict__.clear()
        self.__dict__.update(rebuilt.__dict__)


class SQLiteProjection(Projection):
    """A projection whose read model is tables in the store's own SQLite file.

    `tables` maps each logical table name to its DDL, written with `{table}`
    where the name goes (`"CREATE TABLE {table} (id TEXT PRIMARY KEY, n INT)"`;
    more statements, such as indexes named `{table}_by_x`, separated by `;`).
    Handlers are plain functions that write through `self.db` (the runner's
    connection, inside the batch transaction) to `self.table("logical")`,
    which is the shadow table during a rebuild. Never commit in a handler.
    """

    tables: ClassVar[Mapping[str, str]] = {}
    db: sqlite3.Connection

    def table(self, logical: str) -> str:
        return _table_name(self, self.tables, logical)


class PostgresProjection(Projection):
    """A projection whose read model is tables in the store's own PostgreSQL schema.

    `tables` works as in `SQLiteProjection` (DDL with `{table}`, statements
    separated by `;`). Handlers are `async` functions that write through
    `self.db`, the runner's own asyncpg connection, inside the batch
    transaction: `await self.db.execute(f"INSERT INTO {self.table('t')} ...", ...)`.
    The connection's `search_path` is the store's schema, so unqualified names
    (tables, and indexes named `{table}_by_x`) land there. Never commit or open
    a transaction of your own in a handler; an exception rolls the batch back.
    """

    tables: ClassVar[Mapping[str, str]] = {}
    db: Any
    """An `asyncpg.Connection` (typed loosely: asyncpg is an optional extra)."""

    def table(self, logical: str) -> str:
        return _table_name(self, self.tables, logical)


def _table_name(projection: Projection, tables: Mapping[str, str], logical: str) -> str:
    """The physical name of a logical table: itself, or its shadow during a rebuild."""
    names: dict[str, str] = projection.__dict__.setdefault("_table_names", {})
    if logical not in tables:
        raise InvalidInput(f"{type(projection).__qualname__} declares no table {logical!r}")
    return names.get(logical, logical)


# --------------------------------------------------------------------------- checkpoints


class CheckpointStore(Protocol):
    """Where non-SQL projections keep their checkpoint (the last position handled)."""

    async def load(self, name: str) -> int: ...

    async def save(self, name: str, position: int) -> None: ...


class MemoryCheckpoints:
    """Checkpoints in this process only: for read models that live in memory too."""

    def __init__(self) -> None:
        self.positions: dict[str, int] = {}

    async def load(self, name: str) -> int:
        return self.positions.get(name, 0)

    async def save(self, name: str, position: int) -> None:
        self.positions[name] = position


class StreamCheckpoints:
    """Checkpoints kept in the store, one small event per batch in `$projection-<name>`."""

    TYPE: Final = "tidelog.checkpoint"

    def __init__(self, store: Engine) -> None:
        self.store = store

    async def load(self, name: str) -> int:
        async for e in self.store.read_stream(f"$projection-{name}", -1, backwards=True, limit=1):
            position: int = msgspec.json.decode(e.data, type=dict[str, int])["position"]
            return position
        return 0

    async def save(self, name: str, position: int) -> None:
        data = msgspec.json.encode({"position": position})
        await self.store.append(f"$projection-{name}", [NewEvent(type=self.TYPE, data=data)])


# --------------------------------------------------------------------------- drivers


class ProjectionStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A projection's checkpoint, the log's head and the lag between them (positions)."""

    name: str
    position: int
    head: int
    lag: int
    kind: str


class _CheckpointMoved(Exception):
    """The stored checkpoint is not the one this batch started from (a rebuild swapped)."""


_Item = tuple[Callable[..., Any], msgspec.Struct, RecordedEvent]


def _call(owner: Projection, item: _Item) -> Any:
    fn, event, recorded = item
    return fn(owner, event, recorded)


def _with_recorded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Handlers take (self, event) or (self, event, recorded); call them all the same way."""
    if len(inspect.signature(fn).parameters) >= 3:
        return fn

    def call(owner: Projection, event: msgspec.Struct, recorded: RecordedEvent) -> Any:
        return fn(owner, event)

    return call


class _Driver(abc.ABC):
    """Applies batches and keeps the checkpoint of one projection."""

    kind = "checkpoint-store"

    def __init__(self, projection: Projection) -> None:
        self.projection = projection

    @abc.abstractmethod
    async def load(self) -> int:
        """The checkpoint: the last position handled (0: none)."""

    @abc.abstractmethod
    async def apply(
        self, items: list[_Item], start: int, end: int, system_only: bool = False
    ) -> None:
        """Apply the handled events of positions (start, end] and move the checkpoint to end.

        `system_only`: the batch holds only system-stream events. A checkpoint
        store that writes to the log itself must then not write, or its own
        checkpoint events would feed it forever.
        """

    @abc.abstractmethod
    async def rebuild(self, catch_up: Callable[[_Driver], Awaitable[int]]) -> int:
        """Build a fresh read model with `catch_up`, swap it in; returns its position."""

    async def flush(self) -> None:  # noqa: B027 - a no-op unless the driver throttles saves
        """Persist a checkpoint held back (drivers that throttle their saves)."""

    async def aclose(self) -> None:
        return None


class _StoreDriver(_Driver):
    """Handlers, then the checkpoint in a `CheckpointStore` (at-least-once).

    The checkpoint is persisted at most every `save_every` positions or
    `save_seconds` seconds, and whenever the runner flushes (end of a catch-up,
    stop): a store that keeps checkpoints in the log then grows by a bounded
    number of events, not one per batch. After a crash, at most that much is
    handled again, which at-least-once handlers accept anyway.
    """

    def __init__(
        self,
        projection: Projection,
        checkpoints: CheckpointStore,
        save_every: int = 1000,
        save_seconds: float = 1.0,
    ) -> None:
        super().__init__(projection)
        self.checkpoints = checkpoints
        self.save_every = save_every
        self.save_seconds = save_seconds
        self._position: int | None = None
        self._saved = 0
        self._saved_at = 0.0

    async def load(self) -> int:
        if self._position is None:
            self._position = self._saved = await self.checkpoints.load(self.projection.name)
            self._saved_at = time.monotonic()
        return self._position

    async def apply(
        self, items: list[_Item], start: int, end: int, system_only: bool = False
    ) -> None:
        for item in items:
            result = _call(self.projection, item)
            if inspect.isawaitable(result):
                await result
        self._position = end
        due = end - self._saved >= self.save_every or (
            time.monotonic() - self._saved_at >= self.save_seconds
        )
        if due and not system_only:
            await self.flush()

    async def flush(self) -> None:
        if self._position is not None and self._position != self._saved:
            await self.checkpoints.save(self.projection.name, self._position)
            self._saved, self._saved_at = self._position, time.monotonic()

    async def rebuild(self, catch_up: Callable[[_Driver], Awaitable[int]]) -> int:
        fresh = self.projection.fresh()
        shadow = _StoreDriver(fresh, MemoryCheckpoints())
        position = await catch_up(shadow)
        self.projection.swap(fresh)
        self._position = position
        await self.flush()
        return position

    async def aclose(self) -> None:
        await self.flush()


class _SQLiteDriver(_Driver):
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
        self.lock = asyncio.Lock()  # one transaction at a time on this connection
        self._inflight: asyncio.Future[Any] | None = None

    async def _run(self, work: Callable[[], T]) -> T:
        """Run `work` on a thread, one at a time; a cancelled caller never leaves it running."""
        async with self.lock:
            future = asyncio.ensure_future(asyncio.to_thread(work))
            self._inflight = future
            return await asyncio.shield(future)

    async def aclose(self) -> None:
        if self._inflight is not None:
            await asyncio.wait([self._inflight])
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

    def _names(self) -> dict[str, str]:
        names: dict[str, str] = self.sqlp.__dict__.setdefault("_table_names", {})
        return {t: names.get(t, t) for t in self.sqlp.tables}

    @contextlib.contextmanager
    def _transaction(self) -> Any:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    async def apply(
        self, items: list[_Item], start: int, end: int, system_only: bool = False
    ) -> None:
        def work() -> None:
            with self._transaction():
                if self._stored() != start:
                    raise _CheckpointMoved
                for item in items:
                    result = _call(self.sqlp, item)
                    if inspect.isawaitable(result):
                        raise InvalidInput("SQLiteProjection handlers must not be async")
                self.conn.execute(
                    f"INSERT INTO {CHECKPOINT_TABLE} (name, position) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                    (self.key, end),
                )

        await self._run(work)

    async def rebuild(self, catch_up: Callable[[_Driver], Awaitable[int]]) -> int:
        token = secrets.token_hex(4)
        shadow_key = f"{self.key}#rebuild"
        shadow_names = {t: f"{t}__r{token}" for t in self.sqlp.tables}
        live_names = self._names()
        previous: dict[str, str] = dict(self.sqlp.__dict__.get("_table_names", {}))
        self.sqlp.__dict__["_table_names"] = shadow_names
        self.key, live_key = shadow_key, self.key
        try:

            def reset() -> None:
                with self._transaction():
                    self.conn.execute(
                        f"DELETE FROM {CHECKPOINT_TABLE} WHERE name = ?", (shadow_key,)
                    )
                    self._create_tables(shadow_names)

            await self._run(reset)
            position = await catch_up(self)

            def swap() -> None:
                with self._transaction():
                    for logical, live in live_names.items():
                        self.conn.execute(f'DROP TABLE IF EXISTS "{live}"')
                        self.conn.execute(
                            f'ALTER TABLE "{shadow_names[logical]}" RENAME TO "{live}"'
                        )
                    self.conn.execute(
                        f"DELETE FROM {CHECKPOINT_TABLE} WHERE name = ?", (shadow_key,)
                    )
                    self.conn.execute(
                        f"INSERT INTO {CHECKPOINT_TABLE} (name, position) VALUES (?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                        (live_key, position),
                    )

            await self._run(swap)
            return position
        except BaseException:

            def drop() -> None:
                with self._transaction():
                    for shadow in shadow_names.values():
                        self.conn.execute(f'DROP TABLE IF EXISTS "{shadow}"')
                    self.conn.execute(
                        f"DELETE FROM {CHECKPOINT_TABLE} WHERE name = ?", (shadow_key,)
                    )

            with contextlib.suppress(Exception):
                await self._run(drop)
            raise
        finally:
            self.key = live_key
            self.sqlp.__dict__["_table_names"] = previous


_PG_LOCK_CLASS: Final = 0x74647072  # "tdpr": projection DDL of one store (not its appends)
_PG_SETTINGS: Final = {
    "synchronous_commit": "on",
    "application_name": "tidelog-projection",
    "idle_in_transaction_session_timeout": "60000",
}


class _HandlerFailed(Exception):
    """Carries a handler's exception past the driver-error translation, unchanged."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(exc)
        self.exc = exc


class _PostgresDriver(_Driver):
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
        self.key = projection.name
        self.dsn = dsn
        self.config = config
        self.schema: str = config.schema
        self.checkpoints = f'"{self.schema}".{CHECKPOINT_TABLE}'
        self.lock_key = zlib.crc32(self.schema.encode("ascii")) - 2**31
        self.conn: Any = None
        self.lock = asyncio.Lock()  # one transaction at a time on this connection
        self._inflight: asyncio.Future[Any] | None = None

    async def _connection(self) -> Any:
        """The driver's connection, (re)opened if it is missing or was lost."""
        if self.conn is None or self.conn.is_closed():
            import asyncpg

            self.conn = await asyncpg.connect(
                self.dsn,
                timeout=self.config.connect_timeout,
                command_timeout=self.config.command_timeout,
                server_settings={**_PG_SETTINGS, "search_path": f'"{self.schema}", public'},
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

        async with self.lock:
            future = asyncio.ensure_future(transaction())
            self._inflight = future
            return await asyncio.shield(future)

    async def aclose(self) -> None:
        if self._inflight is not None:
            await asyncio.wait([self._inflight])
        if self.conn is not None:
            conn, self.conn = self.conn, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 10)

    def _names(self) -> dict[str, str]:
        names: dict[str, str] = self.pgp.__dict__.setdefault("_table_names", {})
        return {t: names.get(t, t) for t in self.pgp.tables}

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
        self, items: list[_Item], start: int, end: int, system_only: bool = False
    ) -> None:
        async def work(conn: Any) -> None:
            if await self._stored(conn, lock=True) != start:
                raise _CheckpointMoved
            for item in items:
                try:
                    result = _call(self.pgp, item)
                    if inspect.isawaitable(result):
                        await result
                except Exception as exc:
                    raise _HandlerFailed(exc) from exc
            await self._save(conn, self.key, end)

        await self._run(work)

    async def rebuild(self, catch_up: Callable[[_Driver], Awaitable[int]]) -> int:
        token = secrets.token_hex(4)
        shadow_key = f"{self.key}#rebuild"
        shadow_names = {t: f"{t}__r{token}" for t in self.pgp.tables}
        live_names = self._names()
        previous: dict[str, str] = dict(self.pgp.__dict__.get("_table_names", {}))
        self.pgp.__dict__["_table_names"] = shadow_names
        self.key, live_key = shadow_key, self.key
        quoted = f'"{self.schema}"'
        try:

            async def reset(conn: Any) -> None:
                await self._ddl_lock(conn)
                if await conn.fetchval("SELECT to_regclass($1)", self.checkpoints) is not None:
                    await conn.execute(
                        f"DELETE FROM {self.checkpoints} WHERE name = $1", shadow_key
                    )
                await self._create_tables(conn, shadow_names)

            await self._run(reset)
            position = await catch_up(self)

            async def swap(conn: Any) -> None:
                # the live checkpoint row first, then the tables: a concurrent batch
                # (which locks that row first too) waits, then sees the checkpoint moved
                await conn.execute(
                    f"SELECT 1 FROM {self.checkpoints} WHERE name = $1 FOR UPDATE", live_key
                )
                await self._ddl_lock(conn)
                for logical, live in live_names.items():
                    await conn.execute(f'DROP TABLE IF EXISTS {quoted}."{live}"')
                    await conn.execute(
                        f'ALTER TABLE {quoted}."{shadow_names[logical]}" RENAME TO "{live}"'
                    )
                await conn.execute(f"DELETE FROM {self.checkpoints} WHERE name = $1", shadow_key)
                await self._save(conn, live_key, position)

            await self._run(swap)
            return position
        except BaseException:

            async def drop(conn: Any) -> None:
                await self._ddl_lock(conn)
                for shadow in shadow_names.values():
                    await conn.execute(f'DROP TABLE IF EXISTS {quoted}."{shadow}"')
                if await conn.fetchval("SELECT to_regclass($1)", self.checkpoints) is not None:
                    await conn.execute(
                        f"DELETE FROM {self.checkpoints} WHERE name = $1", shadow_key
                    )

            with contextlib.suppress(Exception):
                await self._run(drop)
            raise
        finally:
            self.key = live_key
            self.pgp.__dict__["_table_names"] = previous


def _system_only(events: Sequence[RecordedEvent]) -> bool:
    return all(e.stream.startswith("$") for e in events)


def _sqlite_path(store: Engine) -> str:
    """The file of a SQLite store: the one place this module looks at a concrete engine."""
    path = getattr(getattr(store, "config", None), "path", None)
    if store.name != "sqlite" or not isinstance(path, str):
        raise NotSupported(
            store.name,
            "SQLiteProjection",
            "its read model must live in the store's own SQLite file; use a Projection "
            "with a CheckpointStore on other engines",
        )
    return path


def _postgres_target(store: Engine) -> tuple[str, Any]:
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


# --------------------------------------------------------------------------- runner


class ProjectionRunner:
    """Runs projections: catch up from their checkpoints, then follow the log live.

    `checkpoints` is where the other (non-SQL) projections keep theirs (default:
    `StreamCheckpoints(store)`). `batch_size` is the page size of catch-up and
    the largest batch committed at once while live.
    """

    def __init__(
        self,
        store: Engine,
        projections: Sequence[Projection],
        *,
        registry: EventRegistry | None = None,
        cipher: EventCipher | None = None,
        checkpoints: CheckpointStore | None = None,
        batch_size: int = 500,
    ) -> None:
        if batch_size < 1:
            raise InvalidInput("batch_size must be >= 1")
        names = [p.name for p in projections]
        if len(set(names)) != len(names):
            raise InvalidInput(f"projection names must be unique: {names}")
        self.store = store
        self.registry = registry or DEFAULT_REGISTRY
        self.cipher = cipher
        self.batch_size = batch_size
        self.checkpoints = checkpoints or StreamCheckpoints(store)
        self.projections = {p.name: p for p in projections}
        self._drivers: dict[str, _Driver] = {}
        self._wanted: dict[str, dict[str, Callable[..., Any]]] = {}
        for p in projections:
            wanted: dict[str, Callable[..., Any]] = {}
            for cls, fn in p._handlers.items():
                try:
                    type_name, _ = self.registry.type_of(cls)
                except UnknownEventType:
                    raise InvalidInput(
                        f"{p.name}: handler for {cls.__qualname__}, which is not registered "
                        "in the runner's event registry"
                    ) from None
                wanted[type_name] = _with_recorded(fn)
            self._wanted[p.name] = wanted

    def _driver(self, name: str) -> _Driver:
        driver = self._drivers.get(name)
        if driver is None:
            projection = self.projections.get(name)
            if projection is None:
                raise InvalidInput(f"no projection named {name!r}")
            if isinstance(projection, SQLiteProjection):
                driver = _SQLiteDriver(projection, _sqlite_path(self.store))
            elif isinstance(projection, PostgresProjection):
                driver = _PostgresDriver(projection, *_postgres_target(self.store))
            else:
                driver = _StoreDriver(projection, self.checkpoints)
            self._drivers[name] = driver
        return driver

    async def close(self) -> None:
        for driver in self._drivers.values():
            await driver.aclose()
        self._drivers.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ batches

    async def _items(self, name: str, events: Sequence[RecordedEvent]) -> list[_Item]:
        wanted = self._wanted[name]
        items: list[_Item] = []
        for stored in events:
            fn = wanted.get(stored.type)
            if fn is None or stored.stream.startswith("$"):
                continue
            recorded = stored if self.cipher is None else await self.cipher.unseal(stored)
            items.append((fn, self.registry.decode(recorded), recorded))
        return items

    async def _catch_up(self, name: str, driver: _Driver, progress: Progress | None = None) -> int:
        position = await driver.load()
        while True:
            head = await self.store.last_position()
            page = [
                e
                async for e in self.store.read_all(
                    from_position=position + 1, limit=self.batch_size
                )
            ]
            if not page:
                await driver.flush()
                if progress is not None:
                    progress(position, head)
                return position
            end = page[-1].position
            try:
                await driver.apply(await self._items(name, page), position, end, _system_only(page))
            except _CheckpointMoved:  # another runner or a rebuild moved it: resume from there
                position = await driver.load()
                continue
            position = end
            if progress is not None:
                progress(position, max(head, position))

    async def catch_up(self, name: str | None = None, *, progress: Progress | None = None) -> int:
        """Bring one projection (or all) up to the head; returns the lowest position reached."""
        names = [name] if name is not None else list(self.projections)
        reached = []
        for n in names:
            reached.append(await self._catch_up(n, self._driver(n), progress))
        return min(reached, default=0)

    async def rebuild(self, name: str, *, progress: Progress | None = None) -> int:
        """Rebuild a projection from position 0 into a fresh read model, then swap it in."""
        driver = self._driver(name)

        async def catch_up(shadow: _Driver) -> int:
            return await self._catch_up(name, shadow, progress)

        return await driver.rebuild(catch_up)

    async def status(self) -> list[ProjectionStatus]:
        """Checkpoint, head and lag of every projection."""
        head = await self.store.last_position()
        out = []
        for name in self.projections:
            driver = self._driver(name)
            position = await driver.load()
            out.append(
                ProjectionStatus(
                    name=name,
                    position=position,
                    head=head,
                    lag=max(head - position, 0),
                    kind=driver.kind,
                )
            )
        return out

    # ------------------------------------------------------------------ live

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Catch every projection up, then follow the log live until `stop` is set."""
        stop = stop or asyncio.Event()
        tasks = [asyncio.create_task(self._follow(name, stop)) for name in self.projections]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, name: str, stop: asyncio.Event) -> None:
        driver = self._driver(name)
        while not stop.is_set():
            position = await self._catch_up(name, driver)
            try:
                await self._live(name, driver, position, stop)
            except _CheckpointMoved:
                log.info("projection %s: checkpoint moved (rebuilt elsewhere); reloading", name)

    async def _live(self, name: str, driver: _Driver, position: int, stop: asyncio.Event) -> None:
        queue: asyncio.Queue[RecordedEvent] = asyncio.Queue(maxsize=self.batch_size * 2)

        async def pump() -> None:
            async for event in self.store.subscribe(from_position=position + 1):
                await queue.put(event)

        pump_task = asyncio.create_task(pump())
        stop_task = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                get = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait(
                    {get, pump_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
                )
                if get not in done:
                    get.cancel()
                    if pump_task in done:
                        pump_task.result()  # re-raise StoreClosed and the like
                    return
                batch = [get.result()]
                while len(batch) < self.batch_size and not queue.empty():
                    batch.append(queue.get_nowait())
                end = batch[-1].position
                await driver.apply(
                    await self._items(name, batch), position, end, _system_only(batch)
                )
                position = end
        finally:
            pump_task.cancel()
            stop_task.cancel()
            await asyncio.gather(pump_task, stop_task, return_exceptions=True)
            with contextlib.suppress(Exception):  # the store may be closing: best effort
                await driver.flush()
