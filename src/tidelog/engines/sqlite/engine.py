"""The embedded default engine: one SQLite file (`sqlite:///path.db`).

URLs: `sqlite:///tidelog-data/x.db` is relative to the working directory,
`sqlite:////abs/x.db` (four slashes) is absolute; parent directories are
created. Options in the query string (`SQLiteConfig`): `synchronous=full`
(default; `normal` is faster but may lose the last commits on power loss),
`partitions` (fixed when the file is created; reopening with a different value
raises `InvalidURL`, leaving it out uses the stored one), `busy_timeout`
(seconds a write waits for another process's lock before `StoreUnavailable`).

How it works:

- **One writer thread** owns the write connection. Appends, deletes and group
  operations are queued with a future (the requests of one turn of the event
  loop together); the thread drains everything queued (up to a cap) and runs
  ONE `BEGIN IMMEDIATE` ... `COMMIT` (one sync) for all of them. Each request
  is isolated, so a conflict (`WrongExpectedVersion`, `StreamDeleted`,
  `DuplicateEventId`, `StaleGeneration`) fails only that request: consecutive
  appends are checked in Python before anything is written and then written
  with one insert (`writer._AppendRun`); an append the database must
  decide (a conflict that may be a retry, an id already stored) and every
  other operation runs in its own SAVEPOINT. Futures are resolved on their
  loop only after COMMIT returned.
  Positions are assigned by the writer under the write lock, so position order
  is commit order and readers can never skip an event.
- **Reads** run on a small pool of threads, each with its own read-only
  connection, in pages (growing from `PAGE_SIZE` rows), so `read_all` streams lazily and
  the event loop never waits on the disk.
- **Other processes** may use the same file: `BEGIN IMMEDIATE` takes the write
  lock up front, the busy timeout waits for it and SQLITE_BUSY is retried
  (never shown to the caller) until `busy_timeout`. A poller thread, started
  with the first subscription, watches `PRAGMA data_version` every
  `CHANGE_POLL_INTERVAL` seconds and wakes subscribers on commits made
  elsewhere; this process's own commits wake them at once.
- **Durability**: WAL with `synchronous=FULL` by default. A failed commit is
  reported as `StoreUnavailable` and never retried-then-acknowledged (only
  SQLITE_BUSY, which means nothing was written, is retried).
- **WAL growth**: SQLite's automatic checkpoint (every ~1000 pages) copies
  the WAL back; readers hold a snapshot only for one page, so checkpoints
  can complete, and `journal_size_limit` truncates the file afterwards.
- **Schema**: versioned migrations in `db.MIGRATIONS`, applied on
  open; `migrate(path)` runs them without opening a store (`tidelog
  migrate-schema`). A file from a newer tidelog is refused with `NotSupported`.
- **fork()**: connections and threads do not survive it; a forked child sees
  the parent's stores as closed (`StoreClosed`) and must open its own.
- One host only: WAL needs shared memory, so no network file systems.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import sqlite3
import threading
import urllib.parse
import weakref
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import Any, Final, Literal, TypeVar
from uuid import UUID

import msgspec

from tidelog.engines._kit.checks import (
    DEFAULT_PARTITIONS,
    MAX_POSITION,
    LogFilter,
    prepare_delete,
    prepare_purge,
    validate_group_key,
    validate_group_name,
)
from tidelog.engines._kit.retention_hooks import StreamStates
from tidelog.engines._kit.urls import config_from_url
from tidelog.engines._kit.watch import HeadWatch
from tidelog.engines.contract import GroupEngine, Write
from tidelog.engines.sqlite import db, scheduled
from tidelog.engines.sqlite.reads import (
    COLUMNS,
    DECODE_CHUNK,
    PAGE_GROWTH,
    PAGE_SIZE,
    count_plan,
    decode_rows,
    read_all_plan,
)
from tidelog.engines.sqlite.writer import HEAD_SQL, Appends, CommitThenRaise, Request, Writer
from tidelog.errors import (
    InvalidURL,
    StaleGeneration,
    StoreClosed,
    StreamDeleted,
)
from tidelog.model import (
    ANY,
    AppendResult,
    ExpectedVersion,
    Membership,
    RecordedEvent,
    ScheduledEvent,
    StreamInfo,
)

__all__ = ["CHANGE_POLL_INTERVAL", "SQLiteConfig", "SQLiteEngine", "open_engine"]

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANGE_POLL_INTERVAL: Final = 0.02
"""Seconds between checks for commits made by other processes."""
_READ_THREADS: Final = 4


class SQLiteConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Options of the SQLite engine, from the URL's query string."""

    path: str
    synchronous: Literal["full", "normal"] = "full"
    """`full` syncs the WAL on every commit; `normal` may lose recent commits on power loss."""
    partitions: int | None = None
    """Partition count for a new file (default 16); must match the stored one if given."""
    busy_timeout: float = 30.0
    """Seconds a write waits for another process's write lock before failing."""


def _path_from_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise InvalidURL(url, "not a sqlite:// URL")
    if parts.netloc:
        raise InvalidURL(
            url, "use sqlite:///relative/path.db or sqlite:////absolute/path.db (no host)"
        )
    path = urllib.parse.unquote(parts.path)
    if len(path) < 2 or path.endswith("/"):
        raise InvalidURL(url, "no database file path")
    return path[1:]


# --------------------------------------------------------------------------- engine

_OPEN_ENGINES: weakref.WeakSet[SQLiteEngine] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child inherits engines whose threads did not survive the fork.

    SQLite connections must not cross `fork()`; mark them closed so the child
    gets `StoreClosed` (and opens its own store) instead of hanging forever.
    """
    for engine in list(_OPEN_ENGINES):
        engine._closed = True


os.register_at_fork(after_in_child=_after_fork_in_child)


class SQLiteEngine(GroupEngine):
    """The SQLite engine; open it with `tidelog.connect("sqlite:///path.db")`."""

    name = "sqlite"

    def __init__(self, config: SQLiteConfig, partitions: int) -> None:
        self.config = config
        self._partitions = partitions
        self._loop = asyncio.get_running_loop()
        self._watch = HeadWatch()
        self._outbox: list[Request[Any]] = []
        """Requests of this turn of the loop, for the writer (see `_write`)."""
        self._writer = Writer(
            config.path,
            config.synchronous,
            config.busy_timeout,
            partitions,
            self._loop,
            self._watch.advance,
        )
        self._readers = concurrent.futures.ThreadPoolExecutor(
            max_workers=_READ_THREADS, thread_name_prefix="tidelog-sqlite-read"
        )
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()
        _OPEN_ENGINES.add(self)

    @property
    def transaction_count(self) -> int:
        """Write transactions committed by this engine (each is one sync): shows group commit."""
        return self._writer.transactions

    # ------------------------------------------------------------------ plumbing

    def _on_commit(self, head: int) -> None:
        """Called on the writer thread after a commit moved the head."""
        with contextlib.suppress(RuntimeError):  # the engine's loop is closed
            self._loop.call_soon_threadsafe(self._watch.advance, head)

    async def _write(self, op: Callable[[Writer], T], weight: int = 1) -> T:
        self._check_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        request = Request(op, future, loop, weight)
        if loop is self._loop:
            # Requests made in one turn of the loop (say, by the tasks one commit
            # woke) reach the writer together, at the end of the turn: it would
            # otherwise start a transaction on the first and leave the rest for
            # the next, and every transaction costs a sync.
            self._outbox.append(request)
            if len(self._outbox) == 1:
                loop.call_soon(self._send_outbox)
        else:
            self._writer.submit([request])
        return await future

    def _send_outbox(self) -> None:
        requests, self._outbox = self._outbox, []
        if not requests:
            return
        try:
            self._writer.submit(requests)
        except StoreClosed:
            for request in requests:
                if not request.future.done():
                    request.future.set_exception(StoreClosed())

    def _reader_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = db.connect(
                self.config.path, busy_timeout=self.config.busy_timeout, read_only=True
            )
            self._local.conn = conn
            with self._conns_lock:
                self._reader_conns.append(conn)
        return conn

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with db.db_errors():
            return fn(self._reader_conn())

    def _submit_read(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Start `fn(conn)` on a reader thread with that thread's connection."""
        self._check_open()
        try:
            return asyncio.get_running_loop().run_in_executor(self._readers, self._run_read, fn)
        except RuntimeError:  # the pool was shut down by close()
            raise StoreClosed() from None

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._submit_read(fn)

    def _poll_changes(self) -> None:
        """Poller thread: wake subscribers when another process commits."""
        conn: sqlite3.Connection | None = None
        last_version = None
        while not self._stop_polling.wait(CHANGE_POLL_INTERVAL):
            try:
                if conn is None:
                    conn = db.connect(self.config.path, read_only=True)
                data_version = conn.execute("PRAGMA data_version").fetchone()[0]
                if data_version != last_version:
                    last_version = data_version
                    head = conn.execute("SELECT coalesce(max(position), 0) FROM events")
                    self._on_commit(head.fetchone()[0])
            except sqlite3.Error as exc:
                log.warning("tidelog sqlite change poller: %s (reconnecting)", exc)
                if conn is not None:
                    conn.close()
                    conn = None
        if conn is not None:
            conn.close()

    def _shutdown(self) -> None:
        self._stop_polling.set()
        if self._poller is not None:
            self._poller.join()
        self._writer.stop()
        self._readers.shutdown(wait=True)
        with self._conns_lock:
            conns, self._reader_conns = self._reader_conns, []
        for conn in conns:
            conn.close()

    async def close(self) -> None:
        if self._closed:
            return
        await self._stop_scheduler()
        self._closed = True
        self._watch.close()
        self._send_outbox()  # accepted before close: they complete
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown)

    # ------------------------------------------------------------------ layer 1

    async def _apply_write(self, write: Write) -> dict[str, AppendResult]:
        """One writer request per write, weighted by its events for the batch cap.

        Appends go as `Appends`, so a run of them is checked in Python and
        written in bulk (`writer._AppendRun`). A commit is one operation in its
        own savepoint: it fences the member first; a refused one still saves
        the group (it now exists, as in memory) and fails alone; a fence-only
        write stops there; a current member's appends and checkpoint are then
        written together.
        """
        cp = write.checkpoint
        if cp is None:
            return await self._write(Appends(write.appends), write.weight)
        now = self._now()

        def op(w: Writer) -> dict[str, AppendResult]:
            state = w.load_group(cp.group, cp.category)
            try:
                state.check(
                    cp.group, cp.category, cp.member, cp.generation, cp.partition, w.partitions, now
                )
            except StaleGeneration as exc:
                w.save_group(cp.group, cp.category, state)
                raise CommitThenRaise(exc) from None
            if write.fence_only:
                return {}
            results = w.append_many(write.appends) if write.appends else {}
            w.commit_checkpoint(cp.group, cp.category, cp.partition, cp.position)
            return results

        return await self._write(op, write.weight)

    async def _read_stream(
        self, stream: str, from_version: int, backwards: bool, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        order = (
            "version <= ? ORDER BY version DESC" if backwards else "version >= ? ORDER BY version"
        )
        sql = f"SELECT {COLUMNS} FROM events WHERE stream = ? AND {order} LIMIT ?"
        # SQLite integers are 64-bit: a start beyond any version is the same as its end
        version = min(from_version, MAX_POSITION) if from_version >= 0 else MAX_POSITION
        remaining = limit
        first_page = True
        page_size = PAGE_SIZE
        # The first page always runs, even for limit=0: it checks the tombstone.
        while first_page or remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size, remaining)
            page_size = min(page_size * 2, PAGE_SIZE * PAGE_GROWTH)

            def page(
                conn: sqlite3.Connection,
                version: int = version,
                size: int = size,
                check: bool = first_page,
            ) -> list[RecordedEvent]:
                if check:
                    row = conn.execute(
                        "SELECT deleted FROM streams WHERE name = ?", (stream,)
                    ).fetchone()
                    if row is not None and row[0]:
                        raise StreamDeleted(stream)
                return decode_rows(conn.execute(sql, (stream, version, size)).fetchall())

            events = await self._read(page)
            first_page = False
            for event in events:
                yield event
                self._check_open()
            if not events or len(events) < size:
                return
            version = events[-1].version + (-1 if backwards else 1)
            if version < 0:
                return
            if remaining is not None:
                remaining -= len(events)

    async def delete_stream(self, stream: str, expected_version: ExpectedVersion = ANY) -> None:
        self._check_open()
        name, expected = prepare_delete(stream, expected_version)
        await self._write(lambda w: w.delete_stream(name, expected))

    async def purge_stream(self, stream: str) -> None:
        """Erase a system stream for real: rows deleted under `secure_delete`, then the
        WAL checkpointed and truncated, so no page image of them is left in any file.

        The head is kept as a high-water mark, so purged positions are never reused.
        """
        self._check_open()
        name = prepare_purge(stream)
        await self._write(lambda w: w.purge_stream(name))
        await asyncio.to_thread(db.truncate_wal, self.config.path, self.config.busy_timeout)

    async def _delete_before(self, stream: str, version: int) -> int:
        """Retention's hook: one writer request (bounded: the scavenger asks a batch at a
        time) that deletes and gives the freed pages back (`Writer.delete_before`)."""
        return await self._delete_many({stream: version})

    async def _read_deleted(
        self, stream: str, from_version: int, limit: int
    ) -> list[RecordedEvent]:
        sql = (
            f"SELECT {COLUMNS} FROM events WHERE stream = ? AND version >= ?"
            " ORDER BY version LIMIT ?"
        )

        def page(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(sql, (stream, from_version, limit)).fetchall()

        return decode_rows(await self._read(page))

    async def _forget_stream(self, stream: str) -> None:
        self._check_open()
        await self._write(lambda w: w.forget_stream(stream))

    async def _stream_heads(self, streams: Collection[str]) -> StreamStates:
        """Retention's states of many streams from the `streams` table, 500 names a query."""
        names = list(streams)

        def rows(conn: sqlite3.Connection) -> list[Any]:
            found = []
            for i in range(0, len(names), 500):
                chunk = names[i : i + 500]
                marks = ",".join("?" * len(chunk))
                found += conn.execute(
                    f"SELECT name, version, deleted FROM streams WHERE name IN ({marks})", chunk
                ).fetchall()
            return found

        states: StreamStates = dict.fromkeys(names, (None, False))
        for name, version, deleted in await self._read(rows):
            states[name] = (None, True) if deleted else (version, False)
        return states

    async def _stream_bytes(self, category: str | None) -> dict[str, int]:
        """`hard_max_bytes`: data plus metadata bytes per stream, one aggregate query
        (`length` of a blob reads no overflow page)."""
        where = "substr(stream, 1, 1) <> '$'" if category is None else "category = ?"
        sql = (
            "SELECT stream, sum(length(data) + length(metadata)) FROM events"
            f" WHERE {where} GROUP BY stream"
        )
        args = () if category is None else (category,)

        def rows(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(sql, args).fetchall()

        return {stream: int(size) for stream, size in await self._read(rows)}

    async def _count_below(self, floors: Mapping[str, int], from_position: int) -> int:
        """Events below each stream's floor, by the (stream, version) index, 500 streams
        a query."""
        pairs = list(floors.items())

        def count(conn: sqlite3.Connection) -> int:
            total = 0
            for i in range(0, len(pairs), 500):
                chunk = pairs[i : i + 500]
                values = ",".join("(?, ?)" for _ in chunk)
                total += conn.execute(
                    f"WITH f(stream, below) AS (VALUES {values}) SELECT count(*) FROM f"
                    " JOIN events e ON e.stream = f.stream AND e.version < f.below"
                    " WHERE e.position >= ?",
                    [x for pair in chunk for x in pair] + [from_position],
                ).fetchone()[0]
            return total

        return await self._read(count)

    async def _start_stream_at(self, stream: str, version: int) -> None:
        """A `streams` row with the version below `version` and no events: what a
        scavenge that deleted the whole stream leaves."""
        self._check_open()
        if version > 0:
            await self._write(lambda w: w.start_stream(stream, version - 1))

    async def _delete_many(self, cuts: Mapping[str, int]) -> int:
        """Every stream's delete in one writer request: one transaction, one sync."""
        self._check_open()
        return await self._write(lambda w: w.delete_before(cuts))

    async def list_streams(self, category: str | None = None) -> AsyncIterator[StreamInfo]:
        self._check_open()
        where = "" if category is None else " AND category = ?"
        sql = (
            f"SELECT name, version, deleted FROM streams WHERE name > ?{where}"
            " ORDER BY name LIMIT ?"
        )
        after = ""
        while True:
            params = (after, PAGE_SIZE) if category is None else (after, category, PAGE_SIZE)

            def page(conn: sqlite3.Connection, params: tuple[Any, ...] = params) -> list[Any]:
                return conn.execute(sql, params).fetchall()

            rows = await self._read(page)
            for name, version, deleted in rows:
                yield StreamInfo(name=name, version=version, deleted=bool(deleted))
                self._check_open()
            if len(rows) < PAGE_SIZE:
                return
            after = rows[-1][0]

    # ------------------------------------------------------------------ layer 2

    async def _read_all(
        self, from_position: int, filters: LogFilter, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        plan = read_all_plan(from_position, filters, limit, self._partitions)
        if plan is None:
            return
        sql, params, position = plan
        remaining = limit

        def page(conn: sqlite3.Connection, args: tuple[Any, ...]) -> list[Any]:
            return conn.execute(sql, args).fetchall()

        # The next page is fetched while the caller consumes this one. The
        # reader thread only fetches: rows become events here, `DECODE_CHUNK`
        # at a time as the caller consumes them, so few events are alive at
        # once (see `DECODE_CHUNK`) and they are made and freed by one thread.
        page_size = PAGE_SIZE
        size = page_size if remaining is None else min(page_size, remaining)
        pending: asyncio.Future[list[Any]] | None = self._submit_read(
            functools.partial(page, args=(position, *params, size))
        )
        try:
            while pending is not None:
                rows = await pending
                pending = None
                if remaining is not None:
                    remaining -= len(rows)
                if len(rows) == size and (remaining is None or remaining > 0):
                    page_size = min(page_size * 2, PAGE_SIZE * PAGE_GROWTH)
                    size = page_size if remaining is None else min(page_size, remaining)
                    args = (rows[-1][0] + 1, *params, size)
                    pending = self._submit_read(functools.partial(page, args=args))
                for start in range(0, len(rows), DECODE_CHUNK):
                    for event in decode_rows(rows[start : start + DECODE_CHUNK]):
                        yield event
                        if self._closed:
                            raise StoreClosed()
        finally:
            if pending is not None:
                pending.cancel()

    async def _read_page(
        self, from_position: int, filters: LogFilter, limit: int
    ) -> list[RecordedEvent]:
        """One query of up to `limit` rows, decoded at once (the events are all kept)."""
        plan = read_all_plan(from_position, filters, limit, self._partitions)
        if plan is None:
            return []
        sql, params, position = plan
        args = (position, *params, limit)

        def page(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(sql, args).fetchall()

        return decode_rows(await self._read(page))

    async def _count_events(self, from_position: int, filters: LogFilter) -> int:
        """One `count(*)` over the same index `read_all` would walk."""
        plan = count_plan(from_position, filters, self._partitions)
        if plan is None:
            return 0
        sql, args = plan

        def count(conn: sqlite3.Connection) -> int:
            value: int = conn.execute(sql, args).fetchone()[0]
            return value

        return await self._read(count)

    async def last_position(self) -> int:
        """The newest position given out: retention may have deleted the newest events,
        whose positions stay taken (the high-water mark)."""

        def head(conn: sqlite3.Connection) -> int:
            value: int = conn.execute(HEAD_SQL).fetchone()[0]
            return value

        return await self._read(head)

    @property
    def partition_count(self) -> int:
        return self._partitions

    async def _beyond_head(self, position: int) -> bool:
        # The watch is advanced by this process's own writes too, so it is read
        # without `head_watch()`, which would start the poller thread for a
        # process that only commits.
        return position > self._watch.head and position > await self.last_position()

    def head_watch(self) -> HeadWatch:
        if self._poller is None and not self._closed:
            self._poller = threading.Thread(
                target=self._poll_changes, name="tidelog-sqlite-poller", daemon=True
            )
            self._poller.start()
        return self._watch

    # ------------------------------------------------------------------ layer 3

    async def _join_group(
        self, group: str, category: str, member: str, lease: float, cooperative: bool
    ) -> Membership:
        self._check_open()
        validate_group_name(member, "member")
        validate_group_key(group, category)
        now = self._now()

        def op(w: Writer) -> Membership:
            state = w.load_group(group, category)
            state.join(member, now, lease, w.partitions, cooperative)
            w.save_group(group, category, state)
            return state.membership(group, category, member, w.partitions)

        return await self._write(op)

    async def _heartbeat(
        self, group: str, category: str, member: str, lease: float, release: tuple[int, ...]
    ) -> Membership:
        self._check_open()
        validate_group_key(group, category)
        now = self._now()

        def op(w: Writer) -> Membership:
            state = w.load_group(group, category)
            try:
                state.heartbeat(group, category, member, now, lease, w.partitions, release)
            except StaleGeneration as exc:
                w.save_group(group, category, state)  # keep the expiries it applied
                raise CommitThenRaise(exc) from None
            w.save_group(group, category, state)
            return state.membership(group, category, member, w.partitions)

        return await self._write(op)

    async def leave_group(self, group: str, category: str, member: str) -> None:
        self._check_open()
        validate_group_key(group, category)
        now = self._now()

        def op(w: Writer) -> None:
            state = w.load_group(group, category)
            state.leave(member, now, w.partitions)
            w.save_group(group, category, state)

        await self._write(op)

    async def checkpoints(self, group: str, category: str) -> dict[int, int]:
        def read(conn: sqlite3.Connection) -> dict[int, int]:
            rows = conn.execute(
                "SELECT partition, position FROM checkpoints WHERE grp = ? AND category = ?",
                (group, category),
            )
            return dict(rows.fetchall())

        return await self._read(read)

    async def describe_group(self, group: str, category: str) -> Membership | None:
        def read(conn: sqlite3.Connection) -> tuple[bytes | None, bool]:
            row = conn.execute(
                "SELECT state FROM groups WHERE grp = ? AND category = ?", (group, category)
            ).fetchone()
            has_points = conn.execute(
                "SELECT 1 FROM checkpoints WHERE grp = ? AND category = ? LIMIT 1",
                (group, category),
            ).fetchone()
            return (None if row is None else row[0]), has_points is not None

        raw, has_points = await self._read(read)
        if raw is None and not has_points:
            return None
        state = db.group_state(raw)
        return state.described(group, category, self._partitions, self._now())

    async def list_groups(self) -> list[tuple[str, str]]:
        def read(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            rows = conn.execute(
                "SELECT grp, category FROM groups UNION SELECT grp, category FROM checkpoints"
                " ORDER BY 1, 2"
            )
            return [(g, c) for g, c in rows.fetchall()]

        return await self._read(read)

    # ------------------------------------------------------------ scheduled delivery
    # The statements are in `scheduled`; writes go through the one writer thread.

    async def _schedule(self, rows: Sequence[ScheduledEvent]) -> None:
        await self._write(lambda w: scheduled.insert(w.conn, rows), len(rows))

    async def _take_due(self, now: float, limit: int, lease: float) -> list[ScheduledEvent]:
        return await self._write(lambda w: scheduled.take_due(w.conn, now, limit, lease))

    async def _next_due(self) -> float | None:
        return await self._read(scheduled.next_ready)

    async def _forget_scheduled(self, ids: Sequence[UUID]) -> None:
        await self._write(lambda w: scheduled.forget(w.conn, ids), len(ids))

    async def _cancel_scheduled(self, event_id: UUID) -> bool:
        return await self._write(lambda w: scheduled.cancel(w.conn, event_id))

    async def _list_scheduled(self, stream: str | None, limit: int) -> list[ScheduledEvent]:
        return await self._read(lambda conn: scheduled.list_rows(conn, stream, limit))

    async def _count_scheduled(self) -> int:
        return await self._read(scheduled.count)


# --------------------------------------------------------------------------- opening


def _absolute(path: str) -> str:
    """`path` made absolute: a relative one depends on where the process runs."""
    return os.path.abspath(path)


async def open_engine(url: str, *, must_exist: bool = False) -> SQLiteEngine:
    """Open (creating or migrating) the store at `sqlite:///path.db`.

    `must_exist=True` refuses a file that is not there (`InvalidURL` naming its
    absolute path) instead of creating it: for commands that only read, where
    a mistyped path would otherwise show an empty store and exit 0.
    """
    config = config_from_url(SQLiteConfig, url, path=_path_from_url(url))
    if config.partitions is not None and config.partitions < 1:
        raise InvalidURL(url, "partitions must be >= 1")
    if not config.busy_timeout > 0:
        raise InvalidURL(url, "busy_timeout must be > 0 seconds")
    partitions = await asyncio.get_running_loop().run_in_executor(
        None,
        functools.partial(
            db.prepare_file,
            config.path,
            config.busy_timeout,
            config.partitions or DEFAULT_PARTITIONS,
            must_exist=must_exist,
        ),
    )
    if partitions is None:
        raise InvalidURL(
            url,
            f"no store at {_absolute(config.path)} (this command only reads; "
            "check the path, or write to create a store)",
        )
    if config.partitions is not None and config.partitions != partitions:
        raise InvalidURL(
            url, f"the store was created with partitions={partitions}; the count cannot change"
        )
    engine = SQLiteEngine(config, partitions)
    # Open two reader connections now (a read and its prefetch), so that the
    # first reads do not pay for threads and connections.
    try:
        await asyncio.gather(engine.last_position(), engine.last_position())
    except BaseException:
        await engine.close()
        raise
    return engine
