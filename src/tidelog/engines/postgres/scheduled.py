"""The PostgreSQL engine's pending scheduled events: the `scheduled` table of a store.

Pending events live in the store's schema, indexed by the time they may be
taken (`ready_at`, microseconds since the epoch), so a million of them cost
disk, not memory. A scheduler claims whole batches (scheduled appends) with
one statement that writes a row per batch into `scheduled_claims` (the batch
and the end of its lease) and returns the batches' rows: a row is ready when
its `ready_at` has come and its batch has no claim whose lease still runs.
The claims of one store, and cancels, are serialised by a transaction-scoped
advisory lock, so two schedulers (in any processes) never claim the same
batch, a cancel and a claim never both win, and nothing can deadlock.
Every change is committed with `synchronous_commit = on`: a scheduled
append is acknowledged once durable.

Why a claim row per batch rather than moving each row's `ready_at` (as the
first version did): measured on the development machine, an `UPDATE` of
1,000 rows (a new version of each, in four indexes) took 40 ms where reading
them took 4 ms, and the claims of one store run one at a time; at 10,000
events/s due the claim loop was saturated. Rows claimed by that first version
(their `ready_at` moved past their due time, no claim row) still read as
claimed until their lease ends, so a store upgraded mid-claim stays correct.

Scheduling writes join a group commit (`_kit.batching.GroupCommit`, on one
pooled connection held across batches): the scheduled appends of concurrent
callers are inserted by one `INSERT … SELECT FROM unnest(…)` in one
transaction and one sync. At 10,000 events/s scheduled (100 per append) a
transaction per append was the bottleneck the `scheduled_lateness` profile
showed; batched, the writes cost a commit per batch, not per append. Each
insert is idempotent (`ON CONFLICT (id) DO NOTHING`, the first row of an id
kept, within one statement too), so appends of one batch cannot conflict with
each other; a batch that fails (the server is gone) fails its callers alone.

The table is created by the first scheduling write (`CREATE TABLE IF NOT
EXISTS` under the store's migration lock), not by a numbered migration: a
store that never schedules keeps its schema, and reads of a store without the
table see no pending events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

from tidelog.engines._kit.batching import Commit, GroupCommit
from tidelog.engines._kit.scheduling import ROW_COLUMNS, from_rows, to_row
from tidelog.engines.postgres.errors import pg_errors
from tidelog.engines.postgres.schema import advisory_keys, migration_lock
from tidelog.engines.postgres.writer import transaction
from tidelog.model import ScheduledEvent

__all__ = ["PendingTable"]

_CLAIM_LOCK_CLASS: Final = 0x74647363  # "tdsc": scheduler claims of one store
_RECHECK: Final = 1.0
"""Seconds between looks for a table that did not exist yet."""
_BEGIN: Final = "BEGIN; SET LOCAL synchronous_commit = on"
_COLUMNS: Final = ROW_COLUMNS
_MAX_BATCH: Final = 500
"""Scheduled appends per insert transaction."""
_MAX_WEIGHT: Final = 20_000
"""Rows per insert transaction (a heavier single append still goes alone)."""
_Args = tuple[list[Any], ...]
"""One scheduled append as column arrays, in `ROW_COLUMNS` order (for `unnest`)."""


class PendingTable:
    """The statements of one store's `scheduled` table, run on the engine's pool."""

    def __init__(self, pool: Any, schema: str) -> None:
        self._pool = pool
        s = f'"{schema}"'
        self._table = f"{s}.scheduled"
        key = advisory_keys(schema)[1]
        self._ready = False
        self._looked_at = -_RECHECK
        self._creating = asyncio.Lock()
        self._ddl = (
            migration_lock(schema),
            f"""CREATE TABLE IF NOT EXISTS {s}.scheduled (
                id uuid PRIMARY KEY,
                batch uuid NOT NULL,
                seq integer NOT NULL,
                stream text NOT NULL,
                expected bigint NOT NULL,
                due_at bigint NOT NULL,
                ready_at bigint NOT NULL,
                type text NOT NULL,
                data bytea NOT NULL,
                metadata text NOT NULL,
                schema_version integer NOT NULL
            )""",
            f"CREATE INDEX IF NOT EXISTS scheduled_ready ON {s}.scheduled (ready_at)",
            f"CREATE INDEX IF NOT EXISTS scheduled_batch ON {s}.scheduled (batch)",
            f"CREATE INDEX IF NOT EXISTS scheduled_due ON {s}.scheduled (due_at, batch, seq)",
            f"""CREATE TABLE IF NOT EXISTS {s}.scheduled_claims (
                batch uuid PRIMARY KEY,
                until bigint NOT NULL
            )""",
            f"CREATE INDEX IF NOT EXISTS scheduled_claims_until ON {s}.scheduled_claims (until)",
        )
        self._claim_lock = f"SELECT pg_advisory_xact_lock({_CLAIM_LOCK_CLASS}, {key})"
        self._insert = (
            f"INSERT INTO {s}.scheduled ({_COLUMNS}, ready_at)"
            " SELECT u.*, u.due_at FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[],"
            " $5::bigint[], $6::bigint[], $7::text[], $8::bytea[], $9::text[], $10::int[])"
            f" AS u({_COLUMNS}) ON CONFLICT (id) DO NOTHING"
        )
        self.inserts: GroupCommit[_Args, None] = GroupCommit(
            self._session, max_items=_MAX_BATCH, max_weight=_MAX_WEIGHT
        )
        claims = f"{s}.scheduled_claims"
        # The claim checks are correlated subqueries, not NOT EXISTS: an anti-join
        # was planned as a scan of the whole table (a million pending rows), where
        # these stay index scans in `ready_at` order that stop at the LIMIT.
        lease_of = f"(SELECT c.until FROM {claims} c WHERE c.batch = r.batch)"
        self._take = (
            f"WITH due AS (SELECT r.batch FROM {s}.scheduled r WHERE r.ready_at <= $1"
            f" AND coalesce({lease_of}, 0) <= $1 ORDER BY r.ready_at LIMIT $3),"
            f" claimed AS (INSERT INTO {claims} (batch, until) SELECT DISTINCT batch, $2::bigint"
            " FROM due ON CONFLICT (batch) DO UPDATE SET until = excluded.until RETURNING batch)"
            f" SELECT {_COLUMNS} FROM {s}.scheduled"
            " WHERE batch = any(ARRAY(SELECT batch FROM claimed))"  # by its index
        )
        self._next = (
            f"SELECT least((SELECT r.ready_at FROM {s}.scheduled r WHERE {lease_of} IS NULL"
            f" ORDER BY r.ready_at LIMIT 1), (SELECT until FROM {claims} ORDER BY until LIMIT 1))"
        )
        self._forget = (
            f"DELETE FROM {claims} WHERE batch IN"
            f" (SELECT batch FROM {s}.scheduled WHERE id = any($1::uuid[]))"
        )
        self._forget_rows = f"DELETE FROM {s}.scheduled WHERE id = any($1::uuid[])"
        self._cancel = (
            f"DELETE FROM {s}.scheduled r WHERE r.id = $1 AND r.ready_at <= r.due_at"
            f" AND {lease_of} IS NULL"
        )
        self._count = f"SELECT count(*) FROM {s}.scheduled"

    async def _exists(self) -> bool:
        """Whether the table exists; while it does not, asked at most once a second (an
        idle scheduler looks every 50 ms, and another process may create it any time)."""
        if not self._ready and time.monotonic() - self._looked_at >= _RECHECK:
            self._looked_at = time.monotonic()
            with pg_errors():
                table, claims = await self._pool.fetchrow(
                    "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
                    self._table,
                    f"{self._table}_claims",
                )
            if table and not claims:  # made by a version without claim rows: add them
                await self._create()
            self._ready = bool(table)
        return self._ready

    async def _ensure(self) -> None:
        if not await self._exists():
            async with self._creating:  # the first schedules of a store arrive together
                if not self._ready:
                    await self._create()

    async def _create(self) -> None:
        """Create what is missing, under the migration lock; nothing if it all exists.

        `CREATE INDEX IF NOT EXISTS` takes its table's SHARE lock before it looks:
        run while a scheduler forgets rows (its transaction locks the claims, then the
        rows), it deadlocked with it (`40P01`, seen in `scheduled_lateness` when the
        first hundred scheduled appends of a new store each ran this).
        """
        with pg_errors():
            async with self._pool.acquire() as conn, transaction(conn, "BEGIN"):
                await conn.execute(self._ddl[0])  # the migration lock
                table, claims = await conn.fetchrow(
                    "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
                    self._table,
                    f"{self._table}_claims",
                )
                if not (table and claims):
                    for statement in self._ddl[1:]:
                        await conn.execute(statement)
        self._ready = True

    async def insert(self, rows: Sequence[ScheduledEvent]) -> None:
        """Store one scheduled append's rows; returns once they are durable (group commit)."""
        await self._ensure()
        columns: _Args = tuple([] for _ in range(10))
        for row in map(to_row, rows):
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        columns[8][:] = [m.decode() for m in columns[8]]
        await self.inserts.submit(columns, len(rows))

    async def close(self) -> None:
        """Wait until every scheduling write queued so far is settled."""
        await self.inserts.close()

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[Commit[_Args, None]]:
        """One pooled connection for consecutive insert batches; driver errors translated."""
        with pg_errors():
            async with self._pool.acquire() as conn:
                yield lambda batch: self._insert_batch(conn, batch)

    async def _insert_batch(self, conn: Any, batch: list[_Args]) -> list[None]:
        """The rows of many scheduled appends: one statement, one transaction, one sync."""
        merged: _Args = tuple([] for _ in range(10))
        for columns in batch:
            for into, column in zip(merged, columns, strict=True):
                into.extend(column)
        async with transaction(conn, _BEGIN):
            await conn.execute(self._insert, *merged)
        return [None] * len(batch)

    async def take_due(self, now: float, limit: int, lease: float) -> list[ScheduledEvent]:
        if not await self._exists():
            return []
        now_us = int(now * 1_000_000)
        with pg_errors():
            async with self._pool.acquire() as conn, transaction(conn, _BEGIN):
                await conn.execute(self._claim_lock)
                rows = await conn.fetch(self._take, now_us, now_us + int(lease * 1_000_000), limit)
        return from_rows(rows)

    async def next_ready(self) -> float | None:
        if not await self._exists():
            return None
        with pg_errors():
            value = await self._pool.fetchval(self._next)
        return None if value is None else int(value) / 1_000_000

    async def forget(self, ids: Sequence[uuid.UUID]) -> None:
        if not ids or not await self._exists():
            return
        with pg_errors():
            async with self._pool.acquire() as conn, transaction(conn, _BEGIN):
                await conn.execute(self._forget, list(ids))
                await conn.execute(self._forget_rows, list(ids))

    async def cancel(self, event_id: uuid.UUID) -> bool:
        if not await self._exists():
            return False
        with pg_errors():
            async with self._pool.acquire() as conn, transaction(conn, _BEGIN):
                await conn.execute(self._claim_lock)  # a claim and a cancel never both win
                status: str = await conn.execute(self._cancel, event_id)
        return status.endswith(" 1")

    async def list_rows(self, stream: str | None, limit: int) -> list[ScheduledEvent]:
        if not await self._exists():
            return []
        where = "" if stream is None else " WHERE stream = $2"
        sql = f"SELECT {_COLUMNS} FROM {self._table}{where} ORDER BY due_at, batch, seq LIMIT $1"
        args: tuple[Any, ...] = (limit,) if stream is None else (limit, stream)
        with pg_errors():
            rows = await self._pool.fetch(sql, *args)
        return from_rows(rows)

    async def count(self) -> int:
        if not await self._exists():
            return 0
        with pg_errors():
            value: int = await self._pool.fetchval(self._count)
        return value
