"""The SQLite engine's pending scheduled events: the `scheduled` table and its statements.

Pending events live in the file, indexed by the time they may be taken
(`ready_at`), so a million of them cost disk, not memory. Times are
microseconds since the epoch (UTC). `ready_at` starts as the due time; a
scheduler's claim moves it to the end of its lease (`take_due`), so the claim
and the selection are one statement under the writer's `BEGIN IMMEDIATE`:
two schedulers (threads or processes) never claim the same row at once.

The table is created by the first write that needs it (`CREATE TABLE IF NOT
EXISTS`) rather than by a numbered migration: a store that never schedules
keeps its schema as it was, and reads of a store without it see no pending
events.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from typing import Any, Final

from tidelog.engines._kit.scheduling import ROW_COLUMNS, from_row, to_row
from tidelog.model import ScheduledEvent

__all__ = [
    "cancel",
    "count",
    "ensure_table",
    "forget",
    "insert",
    "list_rows",
    "next_ready",
    "take_due",
]

_DDL: Final = (
    """CREATE TABLE IF NOT EXISTS scheduled (
        id BLOB PRIMARY KEY,
        batch BLOB NOT NULL,
        seq INTEGER NOT NULL,
        stream TEXT NOT NULL,
        expected INTEGER NOT NULL,
        due_at INTEGER NOT NULL,
        ready_at INTEGER NOT NULL,
        type TEXT NOT NULL,
        data BLOB NOT NULL,
        metadata BLOB NOT NULL,
        schema_version INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS scheduled_ready ON scheduled (ready_at)",
    "CREATE INDEX IF NOT EXISTS scheduled_batch ON scheduled (batch)",
    "CREATE INDEX IF NOT EXISTS scheduled_due ON scheduled (due_at, batch, seq)",
)
_COLUMNS: Final = ROW_COLUMNS


def ensure_table(conn: sqlite3.Connection) -> None:
    for statement in _DDL:
        conn.execute(statement)


def _exists(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'scheduled'"
    ).fetchone()
    return row is not None


def insert(conn: sqlite3.Connection, rows: Sequence[ScheduledEvent]) -> None:
    ensure_table(conn)
    conn.executemany(
        f"INSERT INTO scheduled ({_COLUMNS}, ready_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO NOTHING",
        [(r.id.bytes, r.batch.bytes, *row[2:], row[5]) for r in rows for row in [to_row(r)]],
    )


def take_due(
    conn: sqlite3.Connection, now: float, limit: int, lease: float
) -> list[ScheduledEvent]:
    """Claim the rows of whole batches ready at `now`: their ready time becomes `now + lease`."""
    if not _exists(conn):
        return []
    now_us = int(now * 1_000_000)
    rows = conn.execute(
        f"UPDATE scheduled SET ready_at = ? WHERE ready_at <= ? AND batch IN"
        " (SELECT batch FROM scheduled WHERE ready_at <= ? ORDER BY ready_at LIMIT ?)"
        f" RETURNING {_COLUMNS}",
        (now_us + int(lease * 1_000_000), now_us, now_us, limit),
    ).fetchall()
    return [from_row(r) for r in rows]


def next_ready(conn: sqlite3.Connection) -> float | None:
    if not _exists(conn):
        return None
    value = conn.execute("SELECT min(ready_at) FROM scheduled").fetchone()[0]
    return None if value is None else value / 1_000_000


def forget(conn: sqlite3.Connection, ids: Sequence[uuid.UUID]) -> None:
    if _exists(conn):
        conn.executemany("DELETE FROM scheduled WHERE id = ?", [(i.bytes,) for i in ids])


def cancel(conn: sqlite3.Connection, event_id: uuid.UUID) -> bool:
    """Delete the row unless a scheduler claimed it (its ready time moved past its due time)."""
    if not _exists(conn):
        return False
    cursor = conn.execute(
        "DELETE FROM scheduled WHERE id = ? AND ready_at <= due_at", (event_id.bytes,)
    )
    return cursor.rowcount > 0


def list_rows(conn: sqlite3.Connection, stream: str | None, limit: int) -> list[ScheduledEvent]:
    if not _exists(conn):
        return []
    where = "" if stream is None else " WHERE stream = ?"
    args: tuple[Any, ...] = (limit,) if stream is None else (stream, limit)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM scheduled{where} ORDER BY due_at, batch, seq LIMIT ?", args
    ).fetchall()
    return [from_row(r) for r in rows]


def count(conn: sqlite3.Connection) -> int:
    if not _exists(conn):
        return 0
    value: int = conn.execute("SELECT count(*) FROM scheduled").fetchone()[0]
    return value
