"""The sqlite engine's writer thread: group commit with a savepoint per request.

Every write (appends, deletes, group changes, checkpoints) is an operation, a
function of the `Writer` run on its thread. The thread drains what is queued
(up to a cap), runs ONE `BEGIN IMMEDIATE` ... `COMMIT` for the whole batch and
so one sync, with each request inside its own SAVEPOINT: a request that raises
rolls back to its savepoint and fails alone. Futures are resolved on their
event loop only after COMMIT returned. SQLITE_BUSY (another process holds the
write lock; nothing was written) is retried until the busy timeout; any other
sqlite3 error fails the whole batch with `StoreUnavailable` and is never
retried, so nothing is acknowledged that a failed sync may have lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Generic, TypeVar
from uuid import UUID

import msgspec

from tidelog.engines import _sqlite_db as db
from tidelog.engines.base import GroupState, resolve_retry
from tidelog.errors import (
    StoreClosed,
    StoreUnavailable,
    StreamDeleted,
    TidelogError,
    WrongExpectedVersion,
)
from tidelog.model import (
    AppendResult,
    ExpectedVersion,
    NewEvent,
    category_of,
    check_expected_version,
    encode_metadata,
    partition_of,
)

__all__ = ["CommitThenRaise", "Request", "Writer"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_BATCH_REQUESTS: Final = 1024
_MAX_BATCH_EVENTS: Final = 50_000
_ID_CHUNK: Final = 500
_EMPTY_JSON: Final = b"{}"
_GROUP_DECODER: Final = msgspec.json.Decoder(GroupState)
_INSERT: Final = (
    "INSERT INTO events (position, id, stream, version, type, data, metadata, recorded_at,"
    " schema_version, category, partition) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)


class CommitThenRaise(Exception):
    """Raised by an operation whose changes must be kept although the caller gets an error.

    The memory engine keeps the effects of lease expiry even when a heartbeat
    is refused; this keeps the two engines in agreement.
    """

    def __init__(self, error: TidelogError) -> None:
        super().__init__(str(error))
        self.error = error


class Request(Generic[T]):
    __slots__ = ("future", "loop", "op", "weight")

    def __init__(
        self,
        op: Callable[[Writer], T],
        future: asyncio.Future[T],
        loop: asyncio.AbstractEventLoop,
        weight: int,
    ) -> None:
        self.op = op
        self.future = future
        self.loop = loop
        self.weight = weight


def _settle(items: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in items:
        if future.done():  # the caller was cancelled; the outcome is unknown to it
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


_HEAD_SQL: Final = (
    "SELECT max((SELECT coalesce(max(position), 0) FROM events),"
    " (SELECT coalesce(max(CAST(value AS INTEGER)), 0) FROM meta WHERE key = 'high_water'))"
)
"""The last position given out. `purge_stream` may erase the newest events; the
high-water mark it leaves in `meta` keeps their positions from being reused."""


class Writer:
    """The thread that owns the write connection and commits requests in batches."""

    def __init__(
        self,
        path: str,
        synchronous: str,
        busy_timeout: float,
        partitions: int,
        on_commit: Callable[[int], None],
    ) -> None:
        self._path = path
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self.partitions = partitions
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[Request[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopping = False
        self.conn = self._connect()
        self.head = 0
        self.transactions = 0
        """Committed write transactions (one sync each): lets tests see group commit."""
        self._thread = threading.Thread(target=self._run, name="tidelog-sqlite-writer", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        conn = db.connect(
            self._path, synchronous=self._synchronous, busy_timeout=self._busy_timeout
        )
        # Deleted content is overwritten with zeros: `purge_stream` must leave no
        # bytes behind. Only purges delete rows, so it costs nothing elsewhere.
        conn.execute("PRAGMA secure_delete = ON")
        return conn

    def submit(self, request: Request[Any]) -> None:
        with self._lock:
            if self._stopping:
                raise StoreClosed()
            self._queue.put(request)

    def stop(self) -> None:
        """Finish every request accepted so far, then stop the thread and close the connection."""
        with self._lock:
            if not self._stopping:
                self._stopping = True
                self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch: list[Request[Any]] = [first]
            weight = first.weight
            while len(batch) < _MAX_BATCH_REQUESTS and weight < _MAX_BATCH_EVENTS:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
                weight += item.weight
            try:
                self._execute(batch)
            except Exception:  # a bug must not kill the thread and hang every caller
                log.exception("tidelog sqlite writer failed on a batch")
                self._abort()
                self._fail(batch, lambda: StoreUnavailable("sqlite writer failed; see the log"))
        self.conn.close()

    def _fail(self, batch: list[Request[Any]], error: Callable[[], BaseException]) -> None:
        for request in batch:
            with contextlib.suppress(RuntimeError):
                items: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = [
                    (request.future, None, error())
                ]
                request.loop.call_soon_threadsafe(_settle, items)

    def _execute(self, batch: list[Request[Any]]) -> None:
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.001
        while True:
            try:
                outcomes, new_head = self._transaction(batch)
                break
            except sqlite3.Error as exc:
                self._abort()
                if db.is_busy(exc) and time.monotonic() < deadline:
                    # Nothing was written: another process holds the lock. Try again.
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
                    continue
                # A real failure (I/O, disk full, corruption): fail the whole batch,
                # never retry a failed commit and acknowledge it.
                outcomes = [(r, None, db.translate(exc)) for r in batch]
                new_head = None
                break
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for request, result, error in outcomes:
            by_loop.setdefault(request.loop, []).append((request.future, result, error))
        for loop, items in by_loop.items():
            # RuntimeError: that loop is closed, nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, items)
        if new_head is not None:
            self._on_commit(new_head)

    def _abort(self) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            # The connection is in an unknown state: start over with a fresh one.
            try:
                self.conn.close()
            finally:
                self.conn = self._connect()

    def _transaction(
        self, batch: list[Request[Any]]
    ) -> tuple[list[tuple[Request[Any], Any, BaseException | None]], int | None]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        start: int = conn.execute(_HEAD_SQL).fetchone()[0]
        self.head = start
        outcomes: list[tuple[Request[Any], Any, BaseException | None]] = []
        for request in batch:
            mark = self.head
            conn.execute("SAVEPOINT request")
            try:
                result = request.op(self)
            except sqlite3.Error:
                raise
            except CommitThenRaise as exc:
                conn.execute("RELEASE request")
                outcomes.append((request, None, exc.error))
            except Exception as exc:
                conn.execute("ROLLBACK TO request")
                conn.execute("RELEASE request")
                self.head = mark
                outcomes.append((request, None, exc))
            else:
                conn.execute("RELEASE request")
                outcomes.append((request, result, None))
        conn.execute("COMMIT")
        self.transactions += 1
        return outcomes, (self.head if self.head > start else None)

    # ------------------------------------------------------------------ operations
    # Run on the writer thread inside the batch transaction and a savepoint.

    def _stream_row(self, stream: str) -> tuple[int | None, bool]:
        row = self.conn.execute(
            "SELECT version, deleted FROM streams WHERE name = ?", (stream,)
        ).fetchone()
        return (None, False) if row is None else (row[0], bool(row[1]))

    def _find_retry(self, stream: str, events: Sequence[NewEvent]) -> AppendResult | None:
        stored: dict[UUID, tuple[str, int, int]] = {}
        ids = [e.id.bytes for e in events]
        for i in range(0, len(ids), _ID_CHUNK):
            chunk = ids[i : i + _ID_CHUNK]
            marks = ",".join("?" * len(chunk))
            for id_, s, v, p in self.conn.execute(
                f"SELECT id, stream, version, position FROM events WHERE id IN ({marks})", chunk
            ):
                stored[UUID(bytes=id_)] = (s, v, p)
        return resolve_retry(stream, events, stored)

    def append(
        self, stream: str, events: Sequence[NewEvent], expected: ExpectedVersion
    ) -> AppendResult:
        current, deleted = self._stream_row(stream)
        conflict: WrongExpectedVersion | None = None
        try:
            check_expected_version(stream, expected, current)
        except WrongExpectedVersion as exc:
            conflict = exc
        if deleted or conflict is not None:
            # An idempotent retry wins over the tombstone and the expected version.
            retry = self._find_retry(stream, events)
            if retry is not None:
                return retry
            if deleted:
                raise StreamDeleted(stream)
            assert conflict is not None
            raise conflict
        first = 0 if current is None else current + 1
        head = self.head
        now_us = time.time_ns() // 1000
        category = category_of(stream)
        partition = partition_of(stream, self.partitions)
        rows = [
            (
                head + i,
                e.id.bytes,
                stream,
                first + i - 1,
                e.type,
                e.data,
                encode_metadata(e.metadata) if e.metadata else _EMPTY_JSON,
                now_us,
                e.schema_version,
                category,
                partition,
            )
            for i, e in enumerate(events, 1)
        ]
        try:
            self.conn.executemany(_INSERT, rows)
        except sqlite3.IntegrityError:
            # An id is already stored. executemany kept the rows before the failing
            # one: remove them (positions above the head are this append's only).
            self.conn.execute("DELETE FROM events WHERE position > ?", (head,))
            retry = self._find_retry(stream, events)
            if retry is None:
                raise
            return retry
        last = first + len(events) - 1
        self.conn.execute(
            "INSERT INTO streams (name, category, version, deleted) VALUES (?, ?, ?, 0)"
            " ON CONFLICT (name) DO UPDATE SET version = excluded.version",
            (stream, category, last),
        )
        self.head = head + len(events)
        return AppendResult(version=last, position=self.head)

    def append_many(
        self, checked: Mapping[str, tuple[tuple[NewEvent, ...], ExpectedVersion]]
    ) -> dict[str, AppendResult]:
        return {s: self.append(s, events, expected) for s, (events, expected) in checked.items()}

    def delete_stream(self, stream: str, expected: ExpectedVersion) -> None:
        current, deleted = self._stream_row(stream)
        if deleted:
            raise StreamDeleted(stream)
        check_expected_version(stream, expected, current)
        self.conn.execute(
            "INSERT INTO streams (name, category, version, deleted) VALUES (?, ?, NULL, 1)"
            " ON CONFLICT (name) DO UPDATE SET deleted = 1",
            (stream, category_of(stream)),
        )

    def purge_stream(self, stream: str) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('high_water', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(self.head),),
        )
        self.conn.execute("DELETE FROM events WHERE stream = ?", (stream,))
        self.conn.execute("DELETE FROM streams WHERE name = ?", (stream,))

    def load_group(self, group: str, category: str) -> GroupState:
        row = self.conn.execute(
            "SELECT state FROM groups WHERE grp = ? AND category = ?", (group, category)
        ).fetchone()
        return GroupState() if row is None else _GROUP_DECODER.decode(row[0])

    def save_group(self, group: str, category: str, state: GroupState) -> None:
        self.conn.execute(
            "INSERT INTO groups (grp, category, state) VALUES (?, ?, ?)"
            " ON CONFLICT (grp, category) DO UPDATE SET state = excluded.state",
            (group, category, msgspec.json.encode(state)),
        )

    def commit_checkpoint(self, group: str, category: str, partition: int, position: int) -> None:
        self.conn.execute(
            "INSERT INTO checkpoints (grp, category, partition, position) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (grp, category, partition)"
            " DO UPDATE SET position = max(position, excluded.position)",
            (group, category, partition, position),
        )
