"""The SQLite engine's pending scheduled events: the `scheduled` table and its statements.

Pending events live in the file, indexed by the time they may be taken
(`ready_at`, the due time), so a million of them cost disk, not memory. Times
are microseconds since the epoch (UTC). A scheduler's claim writes one row per
batch (scheduled append) into `scheduled_claims`, with the end of its lease: a
row is ready when its `ready_at` has come and its batch has no claim whose
lease still runs. The claim's statements run in one transaction of the
writer (`BEGIN IMMEDIATE`): two schedulers (threads or processes) never claim
the same batch, and a cancel (which refuses a claimed batch) never races one.

Why a claim row per batch rather than moving each row's `ready_at` (the first
version): the claim then writes a row per scheduled append, not per event
(with four indexes each), and the single writer has that much more time for
the appends (profile of `scheduled_lateness`, 10,000 events/s). Rows claimed
by that first version (`ready_at` past their due time) read as claimed until
their lease ends, so a file upgraded mid-claim stays correct.

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

from tidelog.engines._kit.scheduling import ROW_COLUMNS, from_rows, to_row
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
    """CREATE TABLE IF NOT EXISTS scheduled_claims (
        batch BLOB PRIMARY KEY,
        until INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS scheduled_claims_until ON scheduled_claims (until)",
)
_LEASE_OF: Final = "(SELECT c.until FROM scheduled_claims c WHERE c.batch = r.batch)"
"""A row's batch's claim (its lease end), or NULL: a correlated subquery, so the
scans in `ready_at` order stay index scans that stop at their LIMIT."""
_CHUNK: Final = 500
"""Batches per `IN (...)` list (far below SQLite's limit on parameters)."""
_COLUMNS: Final = ROW_COLUMNS


def ensure_table(conn: sqlite3.Connection) -> None:
    for statement in _DDL:
        conn.execute(statement)


def _exists(conn: sqlite3.Connection, table: str = "scheduled") -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    return row is not None


def _writable(conn: sqlite3.Connection) -> bool:
    """Whether there is a `scheduled` table; on the writer, so a file made by a version
    without claim rows gets its `scheduled_claims` table here."""
    if not _exists(conn):
        return False
    ensure_table(conn)
    return True


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
    """Claim the whole batches of the (about `limit`) rows ready at `now`: each batch
    gets a claim row whose lease ends at `now + lease`; returns their rows."""
    if not _writable(conn):
        return []
    now_us = int(now * 1_000_000)
    batches = [
        b
        for (b,) in conn.execute(
            "SELECT DISTINCT batch FROM (SELECT r.batch FROM scheduled r WHERE r.ready_at <= ?"
            f" AND coalesce({_LEASE_OF}, 0) <= ? ORDER BY r.ready_at LIMIT ?)",
            (now_us, now_us, limit),
        )
    ]
    until = now_us + int(lease * 1_000_000)
    conn.executemany(
        "INSERT INTO scheduled_claims (batch, until) VALUES (?, ?)"
        " ON CONFLICT (batch) DO UPDATE SET until = excluded.until",
        [(b, until) for b in batches],
    )
    rows: list[ScheduledEvent] = []
    for i in range(0, len(batches), _CHUNK):
        chunk = batches[i : i + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        cursor = conn.execute(f"SELECT {_COLUMNS} FROM scheduled WHERE batch IN ({marks})", chunk)
        rows.extend(from_rows(cursor))
    return rows


def next_ready(conn: sqlite3.Connection) -> float | None:
    """The earliest time a row may be taken: an unclaimed row's, or a claim's end."""
    if not _exists(conn):
        return None
    if not _exists(conn, "scheduled_claims"):  # a file no claim has touched yet
        value = conn.execute("SELECT min(ready_at) FROM scheduled").fetchone()[0]
    else:
        value = conn.execute(
            "SELECT min(ifnull((SELECT r.ready_at FROM scheduled r"
            f" WHERE {_LEASE_OF} IS NULL ORDER BY r.ready_at LIMIT 1), 1e300),"
            " ifnull((SELECT until FROM scheduled_claims ORDER BY until LIMIT 1), 1e300))"
        ).fetchone()[0]
        value = None if value == 1e300 else value
    return None if value is None else value / 1_000_000


def forget(conn: sqlite3.Connection, ids: Sequence[uuid.UUID]) -> None:
    """Delete delivered rows (by id) and their batches' claims: a few statements per
    `_CHUNK` ids, not one per id (the writer thread is what all scheduling shares)."""
    if not _writable(conn):
        return
    keys = [i.bytes for i in ids]
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        conn.execute(
            "DELETE FROM scheduled_claims WHERE batch IN"
            f" (SELECT batch FROM scheduled WHERE id IN ({marks}))",
            chunk,
        )
        conn.execute(f"DELETE FROM scheduled WHERE id IN ({marks})", chunk)


def cancel(conn: sqlite3.Connection, event_id: uuid.UUID) -> bool:
    """Delete the row unless a scheduler claimed its batch (a claim row, or, from the
    first version, a ready time moved past its due time)."""
    if not _writable(conn):
        return False
    cursor = conn.execute(
        "DELETE FROM scheduled AS r WHERE r.id = ? AND r.ready_at <= r.due_at"
        f" AND {_LEASE_OF} IS NULL",
        (event_id.bytes,),
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
    return from_rows(rows)


def count(conn: sqlite3.Connection) -> int:
    if not _exists(conn):
        return 0
    value: int = conn.execute("SELECT count(*) FROM scheduled").fetchone()[0]
    return value
