"""The PostgreSQL engine: `postgresql://user@host:5432/db?schema=tidelog`.

How it keeps the contract:

- **No skipped positions.** Every write transaction first takes a
  transaction-level advisory lock of its store
  (`pg_advisory_xact_lock`), then reads the head and allocates the next
  positions. The lock is held until commit, so positions are allocated in
  commit order and a reader's snapshot always holds a gap-free prefix of the
  log: a reader that has seen position p can never later find an event below
  p. Positions are dense (a rolled-back append leaves no hole).
- **Group commit.** Concurrent appends of one engine (transactional commits
  too) are gathered into one transaction, one lock acquisition and one commit
  (one WAL flush): see `writer.py`. Each append is checked on its own, so a
  conflict fails only that append.
- **Durability.** `synchronous_commit=on` is set on every connection and again
  on every write transaction; an append returns only after its commit.
- **Live subscriptions.** Commits `pg_notify` the new head on the store's
  channel; a listening connection wakes subscribers through `HeadWatch`. The
  generic subscription loop also polls every `poll_interval`, so a lost
  listener delays but never stalls a subscriber.
- **Groups.** One `GroupState` document per (group, category), changed under
  `SELECT … FOR UPDATE`; checkpoints move forward with `greatest()`. A commit
  with appends joins the group commit: the batch locks the group rows of its
  commits after the append lock (in key order), fences each member before its
  appends are checked, and writes the checkpoint only with the appends. Group
  changes and commits without appends lock their group row alone, never the
  append lock, so no two transactions wait for each other's locks.

Options (query string; every other option goes to asyncpg unchanged):
`schema` (PostgreSQL schema of the store, default `tidelog`), `partitions`
(default 16, fixed when the store is created), `pool_min`, `pool_max`,
`poll_interval`, `max_batch` (appends per group commit), `listen`
(LISTEN/NOTIFY, default true), `connect_timeout` and `command_timeout`
(seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Mapping,
    Sequence,
    Sized,
)
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import msgspec

from tidelog.engines._kit.checks import (
    DEFAULT_PARTITIONS,
    LogFilter,
    prepare_delete,
    prepare_purge,
    validate_group_key,
    validate_group_name,
)
from tidelog.engines._kit.groups import GroupState
from tidelog.engines._kit.retention_hooks import StreamStates
from tidelog.engines._kit.urls import config_from_url
from tidelog.engines._kit.watch import HeadWatch
from tidelog.engines.contract import GroupEngine, Write
from tidelog.engines.postgres.errors import pg_errors
from tidelog.engines.postgres.scheduled import PendingTable
from tidelog.engines.postgres.schema import (
    Sql,
    current_version,
    migrate,
    validate_schema_name,
)
from tidelog.engines.postgres.writer import EMPTY_JSON, GROUP_DECODER, Writer, transaction
from tidelog.errors import (
    InvalidURL,
    StoreClosed,
    StreamDeleted,
    TidelogError,
)
from tidelog.model import (
    ANY,
    AppendResult,
    ExpectedVersion,
    Membership,
    RecordedEvent,
    ScheduledEvent,
    StreamInfo,
    category_of,
    check_expected_version,
    decode_metadata,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_PAGE = 1000
"""Rows per read query. Not more for a long `read_all` either: asyncpg Records are
GC-tracked, and a bigger page keeps more of them alive while the caller consumes
it, for the cyclic GC to promote and traverse (measured in a process holding
200k other objects: 4000-row pages spent a third of a replay in full
collections, 1000-row pages none; 500-row pages cost 15% more CPU per event in
per-query overhead). `read_all` hides the round trips instead, by fetching the
next page while the caller consumes this one."""
_DECODE_CHUNK = 256
"""Rows `read_all` turns into events at a time, as the caller consumes them: the
UUIDs of a chunk (GC-tracked too) are then usually freed before a collection
sees them, instead of a page's worth being alive at once."""
_UUID_LIST = list[UUID]
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_SERVER_SETTINGS = {
    "synchronous_commit": "on",
    "application_name": "tidelog",
    # A client that hangs inside a write transaction holds the store's append
    # lock; the server ends such a session instead of stalling every writer.
    "idle_in_transaction_session_timeout": "60000",
}


class PostgresConfig(msgspec.Struct, frozen=True, kw_only=True):
    """tidelog's options of a `postgresql://` URL."""

    schema: str = "tidelog"
    partitions: int | None = None
    """Partition count of a new store (default 16); an existing store keeps its own."""
    pool_min: int = 1
    pool_max: int = 10
    poll_interval: float = 0.25
    max_batch: int = 500
    listen: bool = True
    connect_timeout: float = 10.0
    command_timeout: float = 120.0
    """Seconds before a statement that gets no answer fails with `StoreUnavailable`."""


_OPTION_NAMES = frozenset(PostgresConfig.__struct_fields__)


def split_url(url: str) -> tuple[str, PostgresConfig]:
    """Split a store URL into the DSN for asyncpg and tidelog's own options."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("postgresql", "postgres"):
        raise InvalidURL(url, "expected a postgresql:// URL")
    pairs = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
    ours = [(k, v) for k, v in pairs if k in _OPTION_NAMES]
    theirs = [(k, v) for k, v in pairs if k not in _OPTION_NAMES]
    config = config_from_url(
        PostgresConfig, urllib.parse.urlunsplit(("x", "", "", urllib.parse.urlencode(ours), ""))
    )
    validate_schema_name(url, config.schema)
    if config.partitions is not None and config.partitions < 1:
        raise InvalidURL(url, "partitions must be >= 1")
    if config.pool_min < 0 or config.pool_max < max(config.pool_min, 1):
        raise InvalidURL(url, "need 0 <= pool_min <= pool_max and pool_max >= 1")
    if min(config.max_batch, config.poll_interval, config.connect_timeout) <= 0 or (
        config.command_timeout <= 0
    ):
        raise InvalidURL(url, "max_batch, poll_interval and the timeouts must be positive")
    dsn = urllib.parse.urlunsplit(parsed._replace(query=urllib.parse.urlencode(theirs)))
    return dsn, config


class _Timestamps(dict[bytes, datetime]):
    """Datetimes of timestamptz values in PostgreSQL's binary form (microseconds
    since 2000-01-01 UTC), each decoded once: the events of a commit share one."""

    def __missing__(self, raw: bytes) -> datetime:
        value = _PG_EPOCH + timedelta(microseconds=int.from_bytes(raw, "big", signed=True))
        self[raw] = value
        return value


def _events(rows: Sequence[Any]) -> list[RecordedEvent]:
    """Rows of the event reads (`Sql`: id and recorded_at as bytea, stream, version,
    position, type, data, metadata, schema_version) to events.

    The standard UUIDs of all rows come from one msgspec call (`UUID(bytes=...)`
    per row would cost more than the rest of the row); each distinct timestamp
    becomes a datetime once (the driver decoding one per row took a third of a
    replay's time); metadata `{}`, the common case, skips the JSON decoder.
    Records are unpacked, not indexed: that is half the cost.
    """
    ids = msgspec.convert([row[0] for row in rows], _UUID_LIST)
    times = _Timestamps()
    return [
        RecordedEvent(
            id=id_,
            stream=stream,
            version=version,
            position=position,
            type=type_,
            data=data,
            metadata={} if meta == EMPTY_JSON else decode_metadata(meta),
            recorded_at=times[at],
            schema_version=sv,
        )
        for (_, stream, version, position, type_, data, meta, at, sv), id_ in zip(
            rows, ids, strict=True
        )
    ]


def _abandon(task: asyncio.Future[Any]) -> None:
    """Cancel a prefetched page nobody will read, and take its outcome so that
    asyncio does not report an exception that no one retrieved."""
    task.add_done_callback(_take_outcome)
    task.cancel()


def _take_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


_EMPTY_GROUP = msgspec.json.encode(GroupState()).decode()


class PostgresEngine(GroupEngine):
    name = "postgres"

    def __init__(
        self, config: PostgresConfig, dsn: str, pool: Any, partitions: int, schema_version: int
    ) -> None:
        self.config = config
        self.poll_interval = config.poll_interval
        self.schema_version = schema_version
        self._dsn = dsn
        self._pool = pool
        self._partitions = partitions
        self._sql = Sql(config.schema)
        self._watch = HeadWatch()
        self._writer = Writer(pool, self._sql, partitions, self._now, self._watch, config.max_batch)
        self._listener: Any = None
        self._relistener: asyncio.Future[None] | None = None
        self._pending_table = PendingTable(pool, config.schema)

    @property
    def dsn(self) -> str:
        """The asyncpg DSN of the store: its URL without tidelog's own options.

        For code that needs its own connection to the store's database, such as
        `PostgresProjection` keeping its read model in the store's schema
        (`config.schema`). It holds the password if the URL did: do not log it.
        """
        return self._dsn

    # The tests reach into the group commit through these.

    @property
    def _before_commit(self) -> Callable[[], Awaitable[None]] | None:
        """Fault injection (`Writer.before_commit`): awaited in each group commit's
        transaction just before COMMIT, with the append lock held."""
        return self._writer.before_commit

    @_before_commit.setter
    def _before_commit(self, hook: Callable[[], Awaitable[None]] | None) -> None:
        self._writer.before_commit = hook

    @property
    def _drainer(self) -> asyncio.Task[None] | None:
        """The group commit's writer task."""
        return self._writer.batches.task

    @property
    def _pending(self) -> Sized:
        """The writes waiting for the next group commit."""
        return self._writer.batches

    # ------------------------------------------------------------------ setup

    async def _start_listener(self) -> bool:
        """LISTEN on the store's channel; without it subscribers fall back to polling."""
        try:
            with pg_errors():
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=self.config.connect_timeout,
                    server_settings=_SERVER_SETTINGS,
                )
                try:
                    await conn.add_listener(self._sql.channel, self._on_notify)
                except BaseException:
                    conn.terminate()
                    raise
        except TidelogError as exc:
            log.warning("tidelog postgres: LISTEN failed, subscriptions poll: %s", exc)
            return False
        if self._closed:
            conn.terminate()
            return False
        conn.add_termination_listener(self._on_listener_lost)
        self._listener = conn
        return True

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self._watch.advance(int(payload))

    def _on_listener_lost(self, _conn: object) -> None:
        self._listener = None
        if not self._closed:
            log.warning("tidelog postgres: LISTEN connection lost; reconnecting")
            self._relistener = asyncio.ensure_future(self._relisten())

    async def _relisten(self) -> None:
        """Reconnect the listener with backoff; subscribers poll meanwhile."""
        delay = 0.2
        while not self._closed:
            await asyncio.sleep(delay)
            if self._closed or await self._start_listener():
                break
            delay = min(delay * 2, 10.0)
        if not self._closed:
            # Notifications sent while no one listened are lost: wake up to the head.
            with contextlib.suppress(TidelogError):
                self._watch.advance(await self.last_position())

    async def close(self) -> None:
        if self._closed:
            return
        await self._stop_scheduler()
        self._closed = True
        # Appends accepted before close complete; a cancelled close leaves them be.
        await self._writer.batches.close()
        await self._pending_table.close()
        self._watch.close()
        if self._relistener is not None:
            self._relistener.cancel()
            with contextlib.suppress(BaseException):
                await self._relistener
        if self._listener is not None:
            listener, self._listener = self._listener, None
            listener.remove_termination_listener(self._on_listener_lost)
            with contextlib.suppress(Exception):
                await listener.close(timeout=5)
        try:
            await asyncio.wait_for(self._pool.close(), 10)
        except Exception:  # a dead server or a stuck query: drop the connections
            self._pool.terminate()

    # ------------------------------------------------------------------ layer 1

    async def _apply_write(self, write: Write) -> dict[str, AppendResult]:
        """Appends, and transactional commits, join the group commit (`Writer`).

        A consumer makes a commit per handled event: one transaction each would
        bound a group's throughput by the commit latency. A commit without
        appends is a short transaction of its own on the group row, without the
        append lock. Every commit creates its group's row first (a refused one
        too: `list_groups` knows it).
        """
        cp = write.checkpoint
        if cp is not None:
            await self._ensure_group(cp.group, cp.category)
            if write.fence_only:
                await self._writer.fence(cp)
                return {}
            if not write.appends:
                await self._writer.checkpoint(cp)
                return {}
        return await self._writer.submit(write)

    async def _read_stream(
        self, stream: str, from_version: int, backwards: bool, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        with pg_errors(stream):
            row = await self._pool.fetchrow(self._sql.find_stream, stream)
        if row is not None and row[1]:
            raise StreamDeleted(stream)
        remaining = limit
        cursor = from_version if from_version >= 0 or not backwards else 2**62
        while remaining is None or remaining > 0:
            page = _PAGE if remaining is None else min(_PAGE, remaining)
            sql = self._sql.read_stream_backward if backwards else self._sql.read_stream_forward
            with pg_errors(stream):
                rows = await self._pool.fetch(sql, stream, min(cursor, 2**62), page)
            for event in _events(rows):
                self._check_open()
                yield event
            if remaining is not None:
                remaining -= len(rows)
            if len(rows) < page:
                return
            cursor = rows[-1][2] + (-1 if backwards else 1)
            if cursor < 0:
                return

    async def delete_stream(self, stream: str, expected_version: ExpectedVersion = ANY) -> None:
        self._check_open()
        name, expected = prepare_delete(stream, expected_version)
        with pg_errors(name):
            async with self._pool.acquire() as conn, transaction(conn, self._sql.begin_append):
                row = await conn.fetchrow(self._sql.find_stream, name)
                if row is not None and row[1]:
                    raise StreamDeleted(name)
                check_expected_version(name, expected, None if row is None else row[0])
                await conn.execute(self._sql.tombstone, name, category_of(name))

    async def purge_stream(self, stream: str) -> None:
        """Erase a system stream's rows, then VACUUM so their space is reclaimed.

        The rows are deleted under the append lock with the head recorded as a
        high-water mark, so purged positions are never handed out again. The
        bytes leave the table's live pages at VACUUM; PostgreSQL's WAL, WAL
        archives and replicas keep history of their own (see docs/engines).
        """
        self._check_open()
        name = prepare_purge(stream)
        with pg_errors(name):
            async with self._pool.acquire() as conn:
                async with transaction(conn, self._sql.begin_append):
                    head = await conn.fetchval(self._sql.head)
                    await conn.execute(self._sql.set_high_water, str(head))
                    await conn.execute(self._sql.purge_events, name)
                    await conn.execute(self._sql.purge_stream, name)
                await conn.execute(self._sql.vacuum_events)

    async def _delete_before(self, stream: str, version: int) -> int:
        """Retention's hook: one short transaction per batch (the scavenger asks at most
        `scavenge_batch` events at a time), without the append lock: appends go on.

        The head is raised into the high-water mark in the same transaction, so
        if the newest events go their positions are still never reused. The rows'
        space is reclaimed by autovacuum, with no long lock.
        """
        self._check_open()
        with pg_errors(stream):
            async with (
                self._pool.acquire() as conn,
                transaction(conn, self._sql.begin_delete),
            ):
                head = await conn.fetchval(self._sql.head)
                await conn.execute(self._sql.raise_high_water, str(head))
                status: str = await conn.execute(self._sql.delete_before, stream, version)
        return int(status.rsplit(" ", 1)[-1])

    async def _read_deleted(
        self, stream: str, from_version: int, limit: int
    ) -> list[RecordedEvent]:
        self._check_open()
        with pg_errors(stream):
            rows = await self._pool.fetch(
                self._sql.read_stream_forward, stream, from_version, limit
            )
        return _events(rows)

    async def _forget_stream(self, stream: str) -> None:
        self._check_open()
        with pg_errors(stream):
            await self._pool.execute(self._sql.forget_stream, stream)

    async def _stream_heads(self, streams: Collection[str]) -> StreamStates:
        """Retention's states of many streams in one query of the `streams` table."""
        self._check_open()
        names = list(streams)
        states: StreamStates = dict.fromkeys(names, (None, False))
        with pg_errors():
            rows = await self._pool.fetch(self._sql.stream_heads, names)
        for name, version, deleted in rows:
            states[name] = (None, True) if deleted else (version, False)
        return states

    async def _stream_bytes(self, category: str | None) -> dict[str, int]:
        """`hard_max_bytes`: data plus metadata bytes per stream, one aggregate query."""
        self._check_open()
        with pg_errors():
            rows = await self._pool.fetch(self._sql.stream_bytes, category)
        return {r[0]: int(r[1]) for r in rows}

    async def _count_below(self, floors: Mapping[str, int], from_position: int) -> int:
        """Events below each stream's floor, in one query by the (stream, version) key."""
        self._check_open()
        with pg_errors():
            found = await self._pool.fetchval(
                self._sql.count_below, list(floors), list(floors.values()), from_position
            )
        return int(found)

    async def _start_stream_at(self, stream: str, version: int) -> None:
        """A `streams` row with the version below `version` and no events: what a
        scavenge that deleted the whole stream leaves."""
        self._check_open()
        if version > 0:
            with pg_errors(stream):
                await self._pool.execute(
                    self._sql.start_stream, stream, category_of(stream), version - 1
                )

    async def list_streams(self, category: str | None = None) -> AsyncIterator[StreamInfo]:
        self._check_open()
        after = ""
        while True:
            with pg_errors():
                rows = await self._pool.fetch(self._sql.list_streams, category, after, _PAGE)
            for r in rows:
                yield StreamInfo(name=r[0], version=r[1], deleted=r[2])
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    # ------------------------------------------------------------------ layer 2

    async def _read_all(
        self, from_position: int, filters: LogFilter, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        filters = filters.within(self._partitions)
        if limit == 0 or filters.matches_nothing:
            return
        cats, tys, parts = filters
        args = [sorted(f) for f in (cats, tys, parts) if f is not None]
        sql = self._sql.read_all(cats is not None, tys is not None, parts is not None)

        def fetch(cursor: int, size: int) -> asyncio.Task[list[Any]]:
            return asyncio.ensure_future(self._fetch(sql, min(cursor, 2**63 - 1), size, *args))

        # The next page is fetched while the caller consumes this one. Each
        # page is its own snapshot; the commit-order lock makes every snapshot
        # a gap-free prefix of the log, so going on from the last position + 1
        # cannot skip a position, whenever the next query runs.
        remaining = limit
        size = _PAGE if remaining is None else min(_PAGE, remaining)
        pending: asyncio.Task[list[Any]] | None = fetch(max(from_position, 1), size)
        try:
            while pending is not None:
                rows = await pending
                pending = None
                if remaining is not None:
                    remaining -= len(rows)
                if len(rows) == size and (remaining is None or remaining > 0):
                    size = _PAGE if remaining is None else min(_PAGE, remaining)
                    pending = fetch(rows[-1][3] + 1, size)
                    # One turn of the loop sends the query, so the server works
                    # on it even while the caller consumes without awaiting.
                    await asyncio.sleep(0)
                for start in range(0, len(rows), _DECODE_CHUNK):
                    for event in _events(rows[start : start + _DECODE_CHUNK]):
                        yield event
                        if self._closed:
                            raise StoreClosed()
        finally:
            if pending is not None:
                _abandon(pending)

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        """One read query on a pooled connection."""
        with pg_errors():
            rows: list[Any] = await self._pool.fetch(sql, *args)
        return rows

    async def _count_events(self, from_position: int, filters: LogFilter) -> int:
        """One indexed count instead of reading the events (consumer lag)."""
        filters = filters.within(self._partitions)
        if filters.matches_nothing:
            return 0
        cats, _, parts = filters
        args = [sorted(f) for f in (cats, parts) if f is not None]
        sql = self._sql.count_events(cats is not None, parts is not None)
        with pg_errors():
            count: int = await self._pool.fetchval(
                sql, min(max(from_position, 1), 2**63 - 1), *args
            )
        return count

    async def last_position(self) -> int:
        self._check_open()
        with pg_errors():
            head: int = await self._pool.fetchval(self._sql.head)
        return head

    @property
    def partition_count(self) -> int:
        return self._partitions

    def head_watch(self) -> HeadWatch:
        return self._watch

    # ------------------------------------------------------------------ layer 3

    async def _ensure_group(self, group: str, category: str) -> None:
        """Create the group's row (like the memory engine, every group call does)."""
        validate_group_key(group, category)
        with pg_errors():
            await self._pool.execute(self._sql.ensure_group, group, category, _EMPTY_GROUP)

    async def _change_group(
        self, group: str, category: str, change: Callable[[GroupState], T]
    ) -> T:
        """Apply `change` to the stored state under `SELECT … FOR UPDATE`.

        The state is saved even when `change` raises (as the memory engine
        keeps an expiry that happened before a refused heartbeat).
        """
        await self._ensure_group(group, category)
        failure: TidelogError | None = None
        with pg_errors():
            async with self._pool.acquire() as conn, transaction(conn, "BEGIN"):
                raw = await conn.fetchval(self._sql.lock_group, group, category)
                state = GROUP_DECODER.decode(raw)
                try:
                    result = change(state)
                except TidelogError as exc:
                    failure = exc
                await conn.execute(
                    self._sql.save_group, group, category, msgspec.json.encode(state).decode()
                )
        if failure is not None:
            raise failure
        return result

    async def _join_group(
        self, group: str, category: str, member: str, lease: float, cooperative: bool
    ) -> Membership:
        self._check_open()
        validate_group_name(member, "member")

        def change(state: GroupState) -> Membership:
            state.join(member, self._now(), lease, self._partitions, cooperative)
            return state.membership(group, category, member, self._partitions)

        return await self._change_group(group, category, change)

    async def _heartbeat(
        self, group: str, category: str, member: str, lease: float, release: tuple[int, ...]
    ) -> Membership:
        self._check_open()

        def change(state: GroupState) -> Membership:
            now, count = self._now(), self._partitions
            state.heartbeat(group, category, member, now, lease, count, release)
            return state.membership(group, category, member, self._partitions)

        return await self._change_group(group, category, change)

    async def leave_group(self, group: str, category: str, member: str) -> None:
        self._check_open()
        await self._change_group(
            group, category, lambda state: state.leave(member, self._now(), self._partitions)
        )

    async def checkpoints(self, group: str, category: str) -> dict[int, int]:
        self._check_open()
        with pg_errors():
            rows = await self._pool.fetch(self._sql.get_checkpoints, group, category)
        return {r[0]: r[1] for r in rows}

    async def describe_group(self, group: str, category: str) -> Membership | None:
        self._check_open()
        with pg_errors():
            raw = await self._pool.fetchval(self._sql.get_group, group, category)
            if raw is None and not await self._pool.fetchval(
                self._sql.has_checkpoints, group, category
            ):
                return None
        state = GroupState() if raw is None else GROUP_DECODER.decode(raw)
        return state.described(group, category, self._partitions, self._now())

    async def list_groups(self) -> list[tuple[str, str]]:
        self._check_open()
        with pg_errors():
            rows = await self._pool.fetch(self._sql.list_groups)
        return sorted((r[0], r[1]) for r in rows)

    # ------------------------------------------------------------ scheduled delivery
    # The statements are in `scheduled.PendingTable`.

    async def _schedule(self, rows: Sequence[ScheduledEvent]) -> None:
        await self._pending_table.insert(rows)

    async def _take_due(self, now: float, limit: int, lease: float) -> list[ScheduledEvent]:
        return await self._pending_table.take_due(now, limit, lease)

    async def _next_due(self) -> float | None:
        return await self._pending_table.next_ready()

    async def _forget_scheduled(self, ids: Sequence[UUID]) -> None:
        await self._pending_table.forget(ids)

    async def _cancel_scheduled(self, event_id: UUID) -> bool:
        return await self._pending_table.cancel(event_id)

    async def _list_scheduled(self, stream: str | None, limit: int) -> list[ScheduledEvent]:
        return await self._pending_table.list_rows(stream, limit)

    async def _count_scheduled(self) -> int:
        return await self._pending_table.count()


async def _keep_session(_conn: Any) -> None:
    """The pool's reset of a released connection: nothing beyond asyncpg's own rollback
    of an open transaction (after waiting for a cancelled statement; it terminates
    the connection if that fails). The engine does not rely on it: `transaction`
    ends every transaction or terminates the connection.

    The engine leaves no session state on its pooled connections (its settings
    are `SET LOCAL`, its locks transaction-level advisory locks, it runs no
    LISTEN and no cursors), so asyncpg's default reset query (`RESET ALL`,
    `UNLISTEN *`, ...) would only cost a round trip per release: one per
    page of a read, as many as the query itself.
    """


async def _prepare_store(conn: Any, url: str, config: PostgresConfig) -> tuple[int, int]:
    """Migrate the store and settle its partition count; returns (partitions, schema version)."""
    await migrate(conn, config.schema)
    sql = Sql(config.schema)
    wanted = config.partitions or DEFAULT_PARTITIONS
    await conn.execute(sql.put_meta, "partitions", str(wanted))
    stored = int(await conn.fetchval(sql.get_meta, "partitions"))
    if config.partitions is not None and stored != config.partitions:
        raise InvalidURL(
            url, f"the store has {stored} partitions (fixed at creation), not {config.partitions}"
        )
    return stored, await current_version(conn, config.schema)


async def open_engine(url: str) -> PostgresEngine:
    """Open (creating or upgrading its schema if needed) the store at a `postgresql://` URL."""
    dsn, config = split_url(url)
    with pg_errors():
        pool = await asyncpg.create_pool(
            dsn,
            min_size=config.pool_min,
            max_size=config.pool_max,
            timeout=config.connect_timeout,
            command_timeout=config.command_timeout,
            server_settings=_SERVER_SETTINGS,
            reset=_keep_session,
        )
    try:
        with pg_errors():
            async with pool.acquire() as conn:
                partitions, version = await _prepare_store(conn, url, config)
    except BaseException:
        await pool.close()
        raise
    engine = PostgresEngine(config, dsn, pool, partitions, version)
    if config.listen:
        await engine._start_listener()
    return engine


async def migrate_url(url: str, target: int | None = None) -> tuple[int, list[int]]:
    """Run the store's migrations explicitly (`tidelog migrate-schema`).

    Returns the schema version afterwards and the versions applied now.
    """
    dsn, config = split_url(url)
    with pg_errors():
        conn = await asyncpg.connect(
            dsn, timeout=config.connect_timeout, server_settings=_SERVER_SETTINGS
        )
        try:
            applied = await migrate(conn, config.schema, target)
            return await current_version(conn, config.schema), applied
        finally:
            await conn.close()
