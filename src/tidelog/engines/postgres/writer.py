"""The PostgreSQL engine's writer: the group commit and the transactions it runs.

Concurrent appends of one engine (transactional commits too) are queued in a
`GroupCommit` (`tidelog.engines._kit.batching`, which states the batching and
cancellation rules) and committed a batch per transaction: one lock
acquisition and one commit (one WAL flush), in four round trips. BEGIN takes
the store's append lock; one read (`Writer._load`) fetches the head and the
ids, streams and group rows involved; one statement (`Writer._insert`) writes
the events, stream heads, checkpoints and NOTIFY; then COMMIT. Each append is
checked on its own against that read (`Writer._plan`), so a conflict fails
only that append; a write error the checks cannot foresee redoes the batch
with a SAVEPOINT per append (`Writer._write_each`), so the failure is pinned
on the append that caused it.

A transactional commit is such an append with a checkpoint: its member is
fenced first (`Fences.check`: a stale one fails before its appends are
checked, as on every engine), and its checkpoint is written only if its
appends are. The group rows of a batch's commits are locked after the append
lock, in key order; group changes and commits without appends lock one group
row and never the append lock (see the engine), so no two transactions each
hold a lock the other waits for.

`transaction` is the one way the engine runs a transaction: it ends every
transaction it begins, or terminates the connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

import asyncpg
import msgspec

from tidelog.engines._kit.batching import Commit, GroupCommit
from tidelog.engines._kit.checks import resolve_retry
from tidelog.engines._kit.groups import GroupState
from tidelog.engines._kit.watch import HeadWatch
from tidelog.engines.contract import Checked, Checkpoint, Write
from tidelog.engines.postgres.errors import is_driver_error, pg_errors, translate
from tidelog.engines.postgres.schema import Sql
from tidelog.errors import StreamDeleted, TidelogError
from tidelog.model import (
    AppendResult,
    NewEvent,
    category_of,
    check_expected_version,
    encode_metadata,
    partition_of,
)

__all__ = ["EMPTY_JSON", "GROUP_DECODER", "Fences", "Writer", "transaction"]

EMPTY_JSON: Final = "{}"
"""Metadata of an event without any, as stored (and as reads recognise it)."""
GROUP_DECODER: Final = msgspec.json.Decoder(GroupState)
"""A stored group row's document."""
_MAX_BATCH_WEIGHT: Final = 10_000
"""A group commit takes writes until their `Write.weight` (events, and one per
checkpoint) would pass this; at least one write, however heavy."""

Clock = Callable[[], float]
"""The engine's clock (`GroupEngine._now`), that leases are judged by."""
Outcome = dict[str, AppendResult] | TidelogError
"""An append's results, or the error that failed it alone."""


# --------------------------------------------------------------------------- transactions


_SAVEPOINT: Final = (
    "SAVEPOINT tidelog_append",
    "RELEASE SAVEPOINT tidelog_append",
    "ROLLBACK TO SAVEPOINT tidelog_append",
)


@contextlib.asynccontextmanager
async def transaction(
    conn: Any, begin: str, end: str = "COMMIT", undo: str = "ROLLBACK"
) -> AsyncIterator[None]:
    """A transaction (or savepoint) of plain statements: unlike asyncpg's
    `conn.transaction()`, which sends BEGIN alone, `begin` carries the first
    statements too, in the same round trip.

    Safe against cancellation. The exception that ended the block propagates,
    never one of the rollback (unless the rollback itself was cancelled: a
    cancellation is not swallowed). A connection whose state is unknown (a
    statement was interrupted by a cancellation or a timeout, the connection
    broke, or `undo` or `end` failed) is terminated, not rolled back and reused:
    the server rolls back what its session left open, and the pool connects
    anew. After a failed `end` the outcome is unknown: callers report it as
    `StoreUnavailable` (or the caller's own cancellation).
    """
    try:
        await conn.execute(begin)
        yield
    except BaseException as exc:
        if not _answered(exc):
            _terminate(conn)
            raise
        try:
            await conn.execute(undo)
        except BaseException as undo_failed:
            _terminate(conn)
            if not isinstance(undo_failed, Exception):
                raise  # cancelled (or interrupted) while rolling back
        raise
    try:
        await conn.execute(end)
    except BaseException as exc:
        if not _answered(exc):
            _terminate(conn)
        raise


def _answered(exc: BaseException) -> bool:
    """Whether the connection is known to be idle after `exc`: an error the server
    answered, or one raised in Python between statements. Not so after a
    cancellation or a timeout (a statement may still run), a lost connection, or
    another driver error."""
    if isinstance(exc, asyncpg.PostgresError):
        return not _is_connection_error(exc)
    return isinstance(exc, Exception) and not is_driver_error(exc)


def _terminate(conn: Any) -> None:
    """Close a pooled connection at once, without a word to the server; the pool
    replaces it. A connection terminated before is released already: nothing to do."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


def _is_connection_error(exc: BaseException) -> bool:
    return isinstance(
        exc, asyncpg.PostgresConnectionError | asyncpg.exceptions.OperatorInterventionError
    )


# --------------------------------------------------------------------------- a batch's state


class Fences:
    """The group states transactional commits are fenced against (each row locked
    and decoded once per batch), and the checkpoints of the commits accepted."""

    __slots__ = ("checkpoints", "now", "partitions", "states")

    def __init__(
        self, states: dict[tuple[str, str], GroupState], partitions: int, now: float
    ) -> None:
        self.states = states
        self.partitions = partitions
        self.now = now
        self.checkpoints: dict[tuple[str, str, int], int] = {}

    def check(self, cp: Checkpoint) -> None:
        """Raise `StaleGeneration` unless the member may commit its partition now
        (a group without a stored state has no members: no one may)."""
        state = self.states.get((cp.group, cp.category))
        (GroupState() if state is None else state).check(
            cp.group, cp.category, cp.member, cp.generation, cp.partition, self.partitions, self.now
        )

    def accept(self, cp: Checkpoint) -> None:
        """Move the checkpoint (forward only) with the batch's writes."""
        key = (cp.group, cp.category, cp.partition)
        self.checkpoints[key] = max(self.checkpoints.get(key, cp.position), cp.position)


class _Overlay:
    """Stored ids and stream heads, updated as a batch's appends are accepted."""

    __slots__ = ("states", "stored")

    def __init__(
        self,
        stored: dict[UUID, tuple[str, int, int]],
        states: dict[str, tuple[int | None, bool]],
    ) -> None:
        self.stored = stored
        self.states = states


class _Rows:
    """The events to insert (positions from `start` + 1 on), and the new head of each stream."""

    __slots__ = ("events", "head", "start", "streams")

    def __init__(self, head: int) -> None:
        self.start = self.head = head
        self.events: list[tuple[Any, ...]] = []
        self.streams: dict[str, tuple[str, int]] = {}

    def add(self, e: NewEvent, stream: str, version: int, category: str, partition: int) -> int:
        """Queue one event; returns its position."""
        meta = encode_metadata(e.metadata).decode() if e.metadata else EMPTY_JSON
        self.events.append(
            (e.id, stream, version, e.type, e.data, meta, e.schema_version, category, partition)
        )
        self.head += 1
        return self.head


def _uuid(value: UUID) -> UUID:
    # asyncpg returns its own UUID subclass; hand out the standard type.
    return value if type(value) is UUID else UUID(bytes=value.bytes)


class _WriteFailed(Exception):
    """A batch's write statement failed: redo the batch with a savepoint per append."""


# --------------------------------------------------------------------------- the writer


class Writer:
    """The writes of one engine (module docstring).

    `submit` queues a checked `Write` with appends (a transactional commit's
    checkpoint too) for the group commit and returns the awaitable of its
    results; `checkpoint` and `fence` are a commit without appends, and one
    whose appends failed their checks.
    """

    def __init__(
        self, pool: Any, sql: Sql, partitions: int, now: Clock, watch: HeadWatch, max_batch: int
    ) -> None:
        self._pool = pool
        self._sql = sql
        self._begin_checkpoint = f"BEGIN; {sql.sync_on}"
        self._partitions = partitions
        self._now = now
        self._watch = watch
        self.batches: GroupCommit[Write, dict[str, AppendResult]] = GroupCommit(
            self._session, max_items=max_batch, max_weight=_MAX_BATCH_WEIGHT
        )
        self.before_commit: Callable[[], Awaitable[None]] | None = None
        """Fault injection for tests: awaited inside each append transaction just
        before its commit (with the append lock held); raising rolls it back."""

    def submit(self, write: Write) -> Awaitable[dict[str, AppendResult]]:
        """Queue `write` for the next group commit; await the result for its outcome."""
        return self.batches.submit(write, write.weight)

    async def checkpoint(self, cp: Checkpoint) -> None:
        """A commit without appends: a short transaction of its own that locks the
        group row (never the append lock), fences the member and moves the checkpoint."""
        with pg_errors():
            async with self._pool.acquire() as conn, transaction(conn, self._begin_checkpoint):
                await self._fence(conn, self._sql.lock_group, cp)
                await self._put_checkpoint(conn, cp)

    async def fence(self, cp: Checkpoint) -> None:
        """Fence `cp` and write nothing: a commit whose appends failed their checks
        (a stale member learns it is stale before it learns its input was bad)."""
        with pg_errors():
            await self._fence(self._pool, self._sql.get_group, cp)

    async def _fence(self, conn: Any, sql: str, cp: Checkpoint) -> None:
        """`Fences.check` against the group's stored state, read (or locked) by `sql`."""
        raw = await conn.fetchval(sql, cp.group, cp.category)
        states = {} if raw is None else {(cp.group, cp.category): GROUP_DECODER.decode(raw)}
        Fences(states, self._partitions, self._now()).check(cp)

    async def _put_checkpoint(self, conn: Any, cp: Checkpoint) -> None:
        """Move one checkpoint forward (never back), in `conn`'s transaction."""
        await conn.execute(
            self._sql.put_checkpoint, cp.group, cp.category, cp.partition, cp.position
        )

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[Commit[Write, dict[str, AppendResult]]]:
        """One pooled connection for consecutive batches; driver errors translated."""
        with pg_errors():
            async with self._pool.acquire() as conn:
                yield lambda batch: self._commit_batch(conn, batch)

    async def _commit_batch(self, conn: Any, batch: list[Write]) -> list[Outcome]:
        """Commit many writes in one transaction; returns each one's outcome.

        The fast path checks every write in Python against state read once
        for the whole batch (under the append lock nothing else changes it),
        so a conflict fails only its own write, and writes all the accepted
        events with one statement. Should that statement fail anyway, the
        transaction is rolled back and the batch redone with each write in
        its own SAVEPOINT, so the failure is pinned on the write that caused it.
        """
        try:
            outcomes, head = await self._run_batch(conn, batch, isolate=False)
        except _WriteFailed:
            outcomes, head = await self._run_batch(conn, batch, isolate=True)
        self._watch.advance(head)
        return outcomes

    async def _run_batch(
        self, conn: Any, batch: list[Write], isolate: bool
    ) -> tuple[list[Outcome], int]:
        outcomes: list[Outcome] = []
        # The group rows are locked after the append lock, in key order (module docstring).
        groups = sorted(
            {(cp.group, cp.category) for w in batch if (cp := w.checkpoint) is not None}
        )
        async with transaction(conn, self._sql.begin_append):
            # (The savepoint path reads the state of each write itself.)
            units = [] if isolate else [w.appends for w in batch]
            head, overlay, states = await self._load(conn, units, groups)
            fences = Fences(states, self._partitions, self._now())
            if isolate:
                head = await self._write_each(conn, batch, fences, outcomes)
            else:
                rows = _Rows(head)
                for w in batch:
                    try:
                        if w.checkpoint is not None:
                            fences.check(w.checkpoint)
                        outcomes.append(self._plan(w.appends, overlay, rows))
                    except TidelogError as exc:
                        outcomes.append(exc)
                        continue
                    if w.checkpoint is not None:
                        fences.accept(w.checkpoint)
                try:
                    await self._insert(conn, rows, fences.checkpoints)
                except asyncpg.PostgresError as exc:
                    if len(batch) == 1 or _is_connection_error(exc):
                        raise
                    raise _WriteFailed from exc
                head = rows.head
            if self.before_commit is not None:
                await self.before_commit()
        return outcomes, head

    async def _write_each(
        self, conn: Any, batch: list[Write], fences: Fences, outcomes: list[Outcome]
    ) -> int:
        """Write the writes one by one, each in a SAVEPOINT (a transactional commit's
        fence and checkpoint too); returns the new head."""
        head = 0
        for w in batch:
            cp = w.checkpoint
            try:
                async with transaction(conn, *_SAVEPOINT):
                    if cp is not None:
                        fences.check(cp)
                    results, head = await self._write(conn, w.appends)
                    if cp is not None:
                        await self._put_checkpoint(conn, cp)
            except TidelogError as exc:
                outcomes.append(exc)
            except asyncpg.PostgresError as exc:
                if _is_connection_error(exc):
                    raise
                outcomes.append(translate(exc, next(iter(w.appends))))
            else:
                outcomes.append(results)
        return head

    async def _load(
        self, conn: Any, units: Sequence[Checked], groups: Sequence[tuple[str, str]] = ()
    ) -> tuple[int, _Overlay, dict[tuple[str, str], GroupState]]:
        """The head and the stored state the appends of `units` are checked against,
        and the states of `groups`, whose rows it locks (`FOR UPDATE`), in one round trip."""
        ids = [e.id for unit in units for events, _ in unit.values() for e in events]
        names = list({name for unit in units for name in unit})
        args: list[Any] = [ids, names]
        if groups:
            args += [[g for g, _ in groups], [c for _, c in groups]]
        sql = self._sql.load_locking_groups if groups else self._sql.load
        head = 0
        stored: dict[UUID, tuple[str, int, int]] = {}
        states: dict[str, tuple[int | None, bool]] = {}
        group_states: dict[tuple[str, str], GroupState] = {}
        for kind, id_, name, a, b, deleted in await conn.fetch(sql, *args):
            if kind == 1:
                stored[_uuid(id_)] = (name, a, b)
            elif kind == 2:
                states[name] = (a, deleted)
            elif kind == 3:
                group_states[groups[a - 1]] = GROUP_DECODER.decode(name)
            else:
                head = a
        return head, _Overlay(stored, states), group_states

    def _plan(self, unit: Checked, overlay: _Overlay, rows: _Rows) -> dict[str, AppendResult]:
        """Check one atomic append and queue its rows; returns its results.

        Same order of checks as the memory engine: for each stream, an
        idempotent retry first, then the tombstone, then the expected version.
        Nothing is queued or changed unless every stream of the append passes.
        """
        results: dict[str, AppendResult] = {}
        fresh: list[tuple[str, tuple[NewEvent, ...], int | None]] = []
        for stream, (events, expected) in unit.items():
            retry = resolve_retry(
                stream,
                events,
                {e.id: overlay.stored[e.id] for e in events if e.id in overlay.stored},
            )
            if retry is not None:
                results[stream] = retry
                continue
            version, deleted = overlay.states.get(stream, (None, False))
            if deleted:
                raise StreamDeleted(stream)
            check_expected_version(stream, expected, version)
            fresh.append((stream, events, version))
        for stream, events, last in fresh:
            category = category_of(stream)
            partition = partition_of(stream, self._partitions)
            version = -1 if last is None else last
            for e in events:
                version += 1
                position = rows.add(e, stream, version, category, partition)
                overlay.stored[e.id] = (stream, version, position)
            overlay.states[stream] = (version, False)
            rows.streams[stream] = (category, version)
            results[stream] = AppendResult(version=version, position=rows.head)
        return results

    async def _insert(
        self, conn: Any, rows: _Rows, checkpoints: Mapping[tuple[str, str, int], int]
    ) -> None:
        """Write the queued events and stream heads, and NOTIFY the new head at commit;
        and move the `checkpoints` forward, in the same statement."""
        points: list[list[Any]] = []
        if checkpoints:
            keys = sorted(checkpoints)
            points = [
                [group for group, _, _ in keys],
                [category for _, category, _ in keys],
                [partition for _, _, partition in keys],
                [checkpoints[k] for k in keys],
            ]
        if rows.events:
            names = list(rows.streams)
            await conn.execute(
                self._sql.insert_events_and_checkpoints if points else self._sql.insert_events,
                rows.start + 1,
                datetime.now(UTC),
                *zip(*rows.events, strict=True),
                names,
                [rows.streams[n][0] for n in names],
                [rows.streams[n][1] for n in names],
                self._sql.channel,
                str(rows.head),
                *points,
            )
        elif points:  # every append of the batch's commits was a retry
            await conn.execute(self._sql.put_checkpoints, *points)

    async def _write(self, conn: Any, unit: Checked) -> tuple[dict[str, AppendResult], int]:
        """Check and write one atomic append (under the append lock); returns the new head."""
        head, overlay, _ = await self._load(conn, [unit])
        rows = _Rows(head)
        results = self._plan(unit, overlay, rows)
        await self._insert(conn, rows, {})
        return results, rows.head
