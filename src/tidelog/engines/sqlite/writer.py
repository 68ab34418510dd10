"""The sqlite engine's writer thread: group commit, each request isolated.

Every write (appends, deletes, group changes, checkpoints) is an operation, a
function of the `Writer` run on its thread. The thread drains what is queued
(up to a cap), runs ONE `BEGIN IMMEDIATE` ... `COMMIT` for the whole batch and
so one sync. Runs of appends are checked in Python and written in bulk
(`_AppendRun`): a failing append has written nothing. Every other request, and
an append the database must decide, runs inside its own SAVEPOINT: a request
that raises rolls back to its savepoint and fails alone. Futures are resolved on their
event loop only after COMMIT returned. SQLITE_BUSY (another process holds the
write lock; nothing was written) is retried until the busy timeout; any other
sqlite3 error fails the whole batch with `StoreUnavailable` and is never
retried, so nothing is acknowledged that a failed sync may have lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, Final, Generic, TypeVar, cast
from uuid import UUID

import msgspec

from tidelog.engines._kit.checks import resolve_retry
from tidelog.engines._kit.groups import GroupState
from tidelog.engines.contract import Checked
from tidelog.engines.sqlite import db
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

__all__ = ["HEAD_SQL", "Appends", "CommitThenRaise", "Request", "Writer"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_BATCH_REQUESTS: Final = 1024
_MAX_BATCH_EVENTS: Final = 50_000
_ID_CHUNK: Final = 500
_INCREMENTAL: Final = 2
"""`PRAGMA auto_vacuum` of a file that gives freed pages back on demand."""
_MAX_VACUUM_PAGES: Final = 50_000
_VACUUM_SLACK_PAGES: Final = 1024
"""Pages one retention delete gives back at most (the rest go with the next one)."""
_EMPTY_JSON: Final = b"{}"
_UPSERT_STREAM: Final = (
    "INSERT INTO streams (name, category, version, deleted) VALUES (?, ?, ?, 0)"
    " ON CONFLICT (name) DO UPDATE SET version = excluded.version"
)
_INSERT_OR_IGNORE: Final = (
    "INSERT OR IGNORE INTO events (position, id, stream, version, type, data, metadata,"
    " recorded_at, schema_version, category, partition) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)
"""The bulk path's insert: a stored id shows as a row not inserted (see `_AppendRun`)."""
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


class Appends:
    """The appends of an `append` or `append_many`: one atomic request.

    The writer recognises these to run a whole run of them with a handful of
    statements (see `_AppendRun`) instead of five per request. Called like any
    other operation, it takes the one-request path.
    """

    __slots__ = ("checked",)

    def __init__(self, checked: Checked) -> None:
        self.checked = checked

    def __call__(self, writer: Writer) -> dict[str, AppendResult]:
        return writer.append_many(self.checked)


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


HEAD_SQL: Final = (
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
        loop: asyncio.AbstractEventLoop,
        on_commit: Callable[[int], None],
    ) -> None:
        """`on_commit(head)` runs on `loop` after each commit that moved the head."""
        self._path = path
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self.partitions = partitions
        self._loop = loop
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[list[Request[Any]] | None] = queue.SimpleQueue()
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
        # Savepoints keep the original of every page they change in a
        # sub-journal, which SQLite spills to a temporary file past 64 KiB: a
        # bulk run of appends would create, write and delete a file in every
        # transaction. In memory it is a copy; a batch is bounded (_MAX_BATCH_*).
        conn.execute("PRAGMA temp_store = MEMORY")
        return conn

    def submit(self, requests: list[Request[Any]]) -> None:
        """Queue `requests` (in order) for the writer thread; one wake-up for all of them."""
        with self._lock:
            if self._stopping:
                raise StoreClosed()
            self._queue.put(requests)

    def stop(self) -> None:
        """Finish every request accepted so far, then stop the thread and close the connection."""
        with self._lock:
            if not self._stopping:
                self._stopping = True
                self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        backlog: collections.deque[Request[Any]] = collections.deque()
        stop = False
        while backlog or not stop:
            if not backlog:
                item = self._queue.get()
                if item is None:
                    stop = True
                    continue
                backlog.extend(item)
            while not stop:  # take everything queued meanwhile: one transaction for all
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                else:
                    backlog.extend(item)
            batch: list[Request[Any]] = []
            weight = 0
            while backlog and len(batch) < _MAX_BATCH_REQUESTS and weight < _MAX_BATCH_EVENTS:
                request = backlog.popleft()
                batch.append(request)
                weight += request.weight
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
        if new_head is not None:
            by_loop.setdefault(self._loop, [])
        for loop, items in by_loop.items():
            # One wake-up per loop and commit: the results, and the new head for
            # subscribers. RuntimeError: that loop is closed, nobody is waiting.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(
                    self._deliver, items, new_head if loop is self._loop else None
                )

    def _deliver(
        self, items: list[tuple[asyncio.Future[Any], Any, BaseException | None]], head: int | None
    ) -> None:
        _settle(items)
        if head is not None:
            self._on_commit(head)

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
        start: int = conn.execute(HEAD_SQL).fetchone()[0]
        self.head = start
        outcomes: list[tuple[Request[Any], Any, BaseException | None]] = []
        i = 0
        while i < len(batch):
            j = i
            while j < len(batch) and isinstance(batch[j].op, Appends):
                j += 1
            if j > i:
                outcomes.extend(_AppendRun(self, batch[i:j]).execute())
                i = j
            else:
                outcomes.append(self._one(batch[i]))
                i += 1
        conn.execute("COMMIT")
        self.transactions += 1
        return outcomes, (self.head if self.head > start else None)

    def _one(self, request: Request[Any]) -> tuple[Request[Any], Any, BaseException | None]:
        """Run one request inside its own savepoint: if it raises, it fails alone."""
        conn = self.conn
        mark = self.head
        conn.execute("SAVEPOINT request")
        try:
            result = request.op(self)
        except sqlite3.Error:
            raise
        except CommitThenRaise as exc:
            conn.execute("RELEASE request")
            return request, None, exc.error
        except Exception as exc:
            conn.execute("ROLLBACK TO request")
            conn.execute("RELEASE request")
            self.head = mark
            return request, None, exc
        conn.execute("RELEASE request")
        return request, result, None

    # ------------------------------------------------------------------ operations
    # Run on the writer thread inside the batch transaction and a savepoint.

    def _stream_row(self, stream: str) -> tuple[int | None, bool]:
        return self.stream_rows((stream,)).get(stream, (None, False))

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

    def stream_rows(self, streams: Collection[str]) -> dict[str, tuple[int | None, bool]]:
        """(version, deleted) of each of `streams` that has a row, in one query per 500."""
        names = list(streams)
        found: dict[str, tuple[int | None, bool]] = {}
        for i in range(0, len(names), _ID_CHUNK):
            chunk = names[i : i + _ID_CHUNK]
            marks = ",".join("?" * len(chunk))
            for name, version, deleted in self.conn.execute(
                f"SELECT name, version, deleted FROM streams WHERE name IN ({marks})", chunk
            ):
                found[name] = (version, bool(deleted))
        return found

    def event_rows(
        self, stream: str, first: int, events: Sequence[NewEvent], head: int, now_us: int
    ) -> list[tuple[Any, ...]]:
        """The `events` rows of an append: versions from `first`, positions after `head`."""
        category = category_of(stream)
        partition = partition_of(stream, self.partitions)
        return [
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
        rows = self.event_rows(stream, first, events, head, time.time_ns() // 1000)
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
        self.conn.execute(_UPSERT_STREAM, (stream, category_of(stream), last))
        self.head = head + len(events)
        return AppendResult(version=last, position=self.head)

    def append_many(self, checked: Checked) -> dict[str, AppendResult]:
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
        self.set_high_water()
        self.conn.execute("DELETE FROM events WHERE stream = ?", (stream,))
        self.conn.execute("DELETE FROM streams WHERE name = ?", (stream,))

    def delete_before(self, cuts: Mapping[str, int]) -> int:
        """Retention: delete the events of each stream below its version; how many went.

        The head is recorded as the high-water mark first (the newest events may
        go), so their positions are never handed out again. Unlike a purge this
        need not zero the freed bytes (`secure_delete` is off for it). When
        the free pages are more than later appends will soon reuse, they go back
        to the file system in the same transaction (a file with
        `auto_vacuum=INCREMENTAL`): `PRAGMA incremental_vacuum` frees one page
        per step, and sqlite3's `execute` takes one step, so it runs per page.
        """
        self.set_high_water()
        self.conn.execute("PRAGMA secure_delete = OFF")
        count = 0
        try:
            for stream, version in cuts.items():
                count += self.conn.execute(
                    "DELETE FROM events WHERE stream = ? AND version < ?", (stream, version)
                ).rowcount
        finally:
            self.conn.execute("PRAGMA secure_delete = ON")
        if count and self.conn.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL:
            free: int = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
            pages: int = self.conn.execute("PRAGMA page_count").fetchone()[0]
            # Free pages are what the next appends write into: give back only a
            # surplus (a quarter of the file, at least 4 MiB at 4 KiB pages), so a
            # steady queue reuses its pages instead of moving them around.
            if free > max(_VACUUM_SLACK_PAGES, pages // 4):
                for _ in range(min(free, _MAX_VACUUM_PAGES)):
                    self.conn.execute("PRAGMA incremental_vacuum(1)")
        return count

    def forget_stream(self, stream: str) -> None:
        """Retention (`keep_tombstone=False`): drop a tombstoned stream with no event left."""
        self.conn.execute(
            "DELETE FROM streams WHERE name = ? AND deleted = 1"
            " AND NOT EXISTS (SELECT 1 FROM events WHERE stream = ?)",
            (stream, stream),
        )

    def start_stream(self, stream: str, head: int) -> None:
        """Retention (`tidelog copy`): an absent stream whose last version is `head`."""
        self.conn.execute(
            "INSERT INTO streams (name, category, version, deleted) VALUES (?, ?, ?, 0)"
            " ON CONFLICT (name) DO NOTHING",
            (stream, category_of(stream), head),
        )

    def set_high_water(self) -> None:
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES ('high_water', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(self.head),),
        )

    def load_group(self, group: str, category: str) -> GroupState:
        row = self.conn.execute(
            "SELECT state FROM groups WHERE grp = ? AND category = ?", (group, category)
        ).fetchone()
        return db.group_state(None if row is None else row[0])

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


Outcome = tuple[Request[Any], Any, BaseException | None]


class _AppendRun:
    """Consecutive append requests of a batch, checked in Python and written in bulk.

    Under concurrent single-event appends the one-request path costs five
    statements per append (savepoint, stream lookup, insert, upsert, release)
    and the savepoint copies every page it touches. Here a run costs one query
    for its streams, one insert and one stream update, and no savepoint:
    expected versions are checked in Python against the stream rows read once
    and kept up to date, so a request that fails has written nothing.

    Rows go to the database with `INSERT OR IGNORE` when the run ends, or
    earlier, before a request whose expected version fails (or whose stream
    is deleted) runs on the one-request path: it may be an idempotent retry,
    even of an append earlier in this very run, and that path decides it
    against the database as it is then. If a flush inserts fewer rows than it
    holds, an id was already stored (a retry without a version conflict, or a
    mix): the flush's rows are deleted and its requests run again one at a
    time. Either way every outcome is the one the requests would have had,
    run one by one in order.
    """

    def __init__(self, writer: Writer, run: list[Request[Any]]) -> None:
        self.writer = writer
        self.run = run
        self.ops = [cast(Appends, r.op) for r in run]
        self.outcomes: list[Outcome | None] = [None] * len(run)
        self.streams: dict[str, tuple[int | None, bool]] = {}
        self.now_us = time.time_ns() // 1000
        # What the next flush writes, and what it takes to undo it.
        self.rows: list[tuple[Any, ...]] = []
        self.versions: dict[str, tuple[str, int]] = {}
        self.pending: list[tuple[int, dict[str, tuple[int | None, bool] | None]]] = []
        self.pending_head = writer.head

    def execute(self) -> list[Outcome]:
        self.streams = self.writer.stream_rows({s for op in self.ops for s in op.checked})
        for index, request in enumerate(self.run):
            try:
                self._request(index)
            except TidelogError as exc:
                self.outcomes[index] = (request, None, exc)
        self.flush()
        return [cast(Outcome, outcome) for outcome in self.outcomes]

    def _request(self, index: int) -> None:
        """Take one request; raises a `TidelogError` (having written nothing) when it fails."""
        writer = self.writer
        op = self.ops[index]
        head = writer.head
        rows: list[tuple[Any, ...]] = []
        results: dict[str, AppendResult] = {}
        changed: dict[str, int] = {}
        for stream, (events, expected) in op.checked.items():
            current, deleted = self.streams.get(stream, (None, False))
            conflict = deleted
            if not deleted:
                try:
                    check_expected_version(stream, expected, current)
                except WrongExpectedVersion:
                    conflict = True
            if conflict:
                # A conflict may still be an idempotent retry, of an append earlier in
                # this run too: write what is pending, then let the one-request path
                # decide against the database as it now is.
                self.flush()
                self._one(index)
                return
            first = 0 if current is None else current + 1
            rows += writer.event_rows(stream, first, events, head, self.now_us)
            head += len(events)
            changed[stream] = first + len(events) - 1
            results[stream] = AppendResult(version=changed[stream], position=head)
        # Every stream of the request passed: only now does it take effect.
        if not self.pending:
            self.pending_head = writer.head
        self.pending.append((index, {s: self.streams.get(s) for s in changed}))
        self.rows += rows
        writer.head = head
        for stream, last in changed.items():
            self.streams[stream] = (last, False)
            self.versions[stream] = (category_of(stream), last)
        self.outcomes[index] = (self.run[index], results, None)

    def _one(self, index: int) -> None:
        """Run one request on the one-request path, then re-read the streams it may change."""
        self.outcomes[index] = self.writer._one(self.run[index])
        self.streams.update(self.writer.stream_rows(self.ops[index].checked))

    def flush(self) -> None:
        """Write the pending rows; if an id was already stored, redo them one at a time."""
        if not self.rows:
            return
        conn = self.writer.conn
        inserted = conn.executemany(_INSERT_OR_IGNORE, self.rows).rowcount
        if inserted == len(self.rows):
            conn.executemany(
                _UPSERT_STREAM, [(name, cat, last) for name, (cat, last) in self.versions.items()]
            )
            self.rows, self.versions, self.pending = [], {}, []
            return
        # Positions above pending_head were given to the pending requests only.
        conn.execute("DELETE FROM events WHERE position > ?", (self.pending_head,))
        pending = self.pending
        for _, before in reversed(pending):
            for stream, state in before.items():
                if state is None:
                    self.streams.pop(stream, None)
                else:
                    self.streams[stream] = state
        self.writer.head = self.pending_head
        self.rows, self.versions, self.pending = [], {}, []
        for index, _ in pending:
            self._one(index)
