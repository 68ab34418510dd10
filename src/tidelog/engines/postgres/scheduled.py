"""The PostgreSQL engine's pending scheduled events: the `scheduled` table of a store.

Pending events live in the store's schema, indexed by the time they may be
taken (`ready_at`, microseconds since the epoch), so a million of them cost
disk, not memory. A scheduler claims the due rows of whole batches in one
`UPDATE … RETURNING` that moves their ready time to the end of its lease; the
claims of one store are serialised by a transaction-scoped advisory lock, so two
schedulers (in any processes) never claim the same row, and no two claims can
deadlock on the rows of a batch (as two `FOR UPDATE SKIP LOCKED` claims that
each picked part of one batch could). Every change is committed with
`synchronous_commit = on`: a scheduled append is acknowledged once durable.

The table is created by the first scheduling write (`CREATE TABLE IF NOT
EXISTS` under the store's migration lock), not by a numbered migration: a
store that never schedules keeps its schema, and reads of a store without the
table see no pending events.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any, Final

from tidelog.engines._kit.scheduling import ROW_COLUMNS, from_row, to_row
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


class PendingTable:
    """The statements of one store's `scheduled` table, run on the engine's pool."""

    def __init__(self, pool: Any, schema: str) -> None:
        self._pool = pool
        s = f'"{schema}"'
        self._table = f"{s}.scheduled"
        key = advisory_keys(schema)[1]
        self._ready = False
        self._looked_at = -_RECHECK
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
        )
        self._claim_lock = f"SELECT pg_advisory_xact_lock({_CLAIM_LOCK_CLASS}, {key})"
        self._insert = (
            f"INSERT INTO {s}.scheduled ({_COLUMNS}, ready_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $6) ON CONFLICT (id) DO NOTHING"
        )
        self._take = (
            f"UPDATE {s}.scheduled SET ready_at = $2 WHERE ready_at <= $1 AND batch IN"
            f" (SELECT batch FROM {s}.scheduled WHERE ready_at <= $1 ORDER BY ready_at LIMIT $3)"
            f" RETURNING {_COLUMNS}"
        )
        self._next = f"SELECT min(ready_at) FROM {s}.scheduled"
        self._forget = f"DELETE FROM {s}.scheduled WHERE id = any($1::uuid[])"
        self._cancel = f"DELETE FROM {s}.scheduled WHERE id = $1 AND ready_at <= due_at"
        self._count = f"SELECT count(*) FROM {s}.scheduled"

    async def _exists(self) -> bool:
        """Whether the table exists; while it does not, asked at most once a second (an
        idle scheduler looks every 50 ms, and another process may create it any time)."""
        if not self._ready and time.monotonic() - self._looked_at >= _RECHECK:
            self._looked_at = time.monotonic()
            with pg_errors():
                self._ready = bool(
                    await self._pool.fetchval("SELECT to_regclass($1) IS NOT NULL", self._table)
                )
        return self._ready

    async def _ensure(self) -> None:
        if await self._exists():
            return
        with pg_errors():
            async with self._pool.acquire() as conn, transaction(conn, "BEGIN"):
                for statement in self._ddl:
                    await conn.execute(statement)
        self._ready = True

    async def insert(self, rows: Sequence[ScheduledEvent]) -> None:
        await self._ensure()
        args = [(*row[:8], row[8].decode(), row[9]) for row in map(to_row, rows)]
        with pg_errors():
            async with self._pool.acquire() as conn, transaction(conn, _BEGIN):
                await conn.executemany(self._insert, args)

    async def take_due(self, now: float, limit: int, lease: float) -> list[ScheduledEvent]:
        if not await self._exists():
            return []
        now_us = int(now * 1_000_000)
        with pg_errors():
            async with self._pool.acquire() as conn, transaction(conn, _BEGIN):
                await conn.execute(self._claim_lock)
                rows = await conn.fetch(self._take, now_us, now_us + int(lease * 1_000_000), limit)
        return [from_row(r) for r in rows]

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

    async def cancel(self, event_id: uuid.UUID) -> bool:
        if not await self._exists():
            return False
        with pg_errors():
            async with self._pool.acquire() as conn, transaction(conn, _BEGIN):
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
        return [from_row(r) for r in rows]

    async def count(self) -> int:
        if not await self._exists():
            return 0
        with pg_errors():
            value: int = await self._pool.fetchval(self._count)
        return value
