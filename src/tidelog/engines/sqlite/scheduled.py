"""The SQLite engine's pending scheduled events: the `scheduled` tables and their statements.

Pending events live in the file, so a million of them cost disk, not memory.
Times are microseconds since the epoch (UTC). Two tables:

- `scheduled`: a row per pending event (its id, its batch, that is its
  scheduled append, and what to append), indexed by id (cancel, idempotent
  scheduling) and by (batch, seq) (a claim takes whole batches);
- `scheduled_batches`: a row per scheduled append (batch): its stream, due
  time, event count, whether a scheduler claimed it, and `ready_at`, the time
  it may be taken: its due time, or, once claimed, the end of the claim's
  lease. A claim moves `ready_at` of each batch it takes, so unclaimed work
  is always at the front of the `ready_at` index.

A claim runs in one transaction of the writer (`BEGIN IMMEDIATE`): two
schedulers (threads or processes) never claim the same batch, and a cancel
(which refuses a claimed batch) never races one.

Why a row per batch (the third layout). The first moved every event row's
ready time at each claim; the second wrote a claim row per batch into
`scheduled_claims` and left the event rows in their `ready_at` index, so every
claim scanned past all rows claimed and not yet delivered, with a lookup of
the claim for each (profile of `scheduled_lateness` at 10,000 events/s: with
4,000 to 16,000 rows in flight, the scan cost grew with exactly the backlog it
had to clear). Here a claim reads only ready batches, an event row has two
indexes instead of four (scheduling and forgetting an event were the writer's
largest costs, ahead of appending it), and the due-time order of the list
comes from the batches.

A file written by an earlier layout is converted by the first write that
touches the tables (`ensure_table`), in that write's transaction: a batch per
group of rows, its claim from the `scheduled_claims` row or from the rows'
ready times (the first layout), and the indexes no longer used dropped. Until
then, reads fall back to the old table alone.

The tables are created by the first write that needs them (`CREATE TABLE IF
NOT EXISTS`) rather than by a numbered migration: a store that never
schedules keeps its schema as it was, and reads of a store without them see
no pending events.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Final

from tidelog.engines._kit.scheduling import ROW_COLUMNS, from_rows, to_micros, to_row
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
    "CREATE INDEX IF NOT EXISTS scheduled_batch_seq ON scheduled (batch, seq)",
    """CREATE TABLE IF NOT EXISTS scheduled_batches (
        batch BLOB PRIMARY KEY,
        stream TEXT NOT NULL,
        due_at INTEGER NOT NULL,
        ready_at INTEGER NOT NULL,
        n INTEGER NOT NULL,
        claimed INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS scheduled_batches_ready ON scheduled_batches (ready_at)",
    "CREATE INDEX IF NOT EXISTS scheduled_batches_due ON scheduled_batches (due_at, batch)",
)
_UPGRADE: Final = (
    # One batch per group of rows; a row of the first layout whose ready time was
    # moved past its due time was claimed until then.
    """INSERT INTO scheduled_batches (batch, stream, due_at, ready_at, n, claimed)
        SELECT batch, min(stream), min(due_at), max(ready_at), count(*),
               max(ready_at > due_at)
        FROM scheduled GROUP BY batch""",
    # The second layout's claims, with their lease.
    """UPDATE scheduled_batches SET claimed = 1, ready_at = max(ready_at,
        (SELECT c.until FROM scheduled_claims c WHERE c.batch = scheduled_batches.batch))
        WHERE batch IN (SELECT batch FROM scheduled_claims)""",
    "DROP TABLE scheduled_claims",
    "DROP INDEX IF EXISTS scheduled_ready",
    "DROP INDEX IF EXISTS scheduled_due",
    "DROP INDEX IF EXISTS scheduled_batch",
)
_CHUNK: Final = 500
"""Batches or ids per `IN (...)` list (far below SQLite's limit on parameters)."""
_COLUMNS: Final = ROW_COLUMNS


def _exists(conn: sqlite3.Connection, table: str = "scheduled") -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    return row is not None


def ensure_table(conn: sqlite3.Connection) -> None:
    """Create the tables, converting a file of an earlier layout (on the writer,
    inside its transaction)."""
    upgrade = _exists(conn) and not _exists(conn, "scheduled_batches")
    for statement in _DDL:
        conn.execute(statement)
    if upgrade:
        if not _exists(conn, "scheduled_claims"):  # the first layout had none
            conn.execute("CREATE TABLE scheduled_claims (batch BLOB PRIMARY KEY, until INTEGER)")
        for statement in _UPGRADE:
            conn.execute(statement)


def _writable(conn: sqlite3.Connection) -> bool:
    """Whether there are pending-event tables (brought to this layout if so)."""
    if not _exists(conn):
        return False
    ensure_table(conn)
    return True


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


def insert(conn: sqlite3.Connection, rows: Sequence[ScheduledEvent]) -> None:
    """Store `rows` (an id already pending keeps its first schedule) and their batches."""
    ensure_table(conn)
    by_batch: dict[uuid.UUID, list[ScheduledEvent]] = defaultdict(list)
    for r in rows:
        by_batch[r.batch].append(r)
    for batch, members in by_batch.items():
        due = to_micros(members[0].due_at)  # one scheduled append: one due time
        stored = conn.executemany(
            f"INSERT INTO scheduled ({_COLUMNS}, ready_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
            [(r.id.bytes, batch.bytes, *row[2:], due) for r in members for row in [to_row(r, due)]],
        ).rowcount
        if stored > 0:
            conn.execute(
                "INSERT INTO scheduled_batches (batch, stream, due_at, ready_at, n)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (batch) DO UPDATE SET n = n + excluded.n",
                (batch.bytes, members[0].stream, due, due, stored),
            )


def take_due(
    conn: sqlite3.Connection, now: float, limit: int, lease: float
) -> list[ScheduledEvent]:
    """Claim the whole batches of (about, at least one batch) `limit` rows ready at
    `now`: each batch's `ready_at` moves to `now + lease`; returns their rows."""
    if not _writable(conn):
        return []
    now_us = int(now * 1_000_000)
    batches: list[bytes] = []
    total = 0
    cursor = conn.execute(
        "SELECT batch, n FROM scheduled_batches WHERE ready_at <= ? ORDER BY ready_at",
        (now_us,),
    )
    for batch, n in cursor:
        batches.append(batch)
        total += n
        if total >= limit:
            break
    cursor.close()
    until = now_us + int(lease * 1_000_000)
    raws: list[Any] = []
    for i in range(0, len(batches), _CHUNK):
        chunk = batches[i : i + _CHUNK]
        marks = _marks(chunk)
        conn.execute(
            f"UPDATE scheduled_batches SET ready_at = ?, claimed = 1 WHERE batch IN ({marks})",
            [until, *chunk],
        )
        cursor = conn.execute(f"SELECT {_COLUMNS} FROM scheduled WHERE batch IN ({marks})", chunk)
        raws.extend(cursor)
    return from_rows(raws)


def next_ready(conn: sqlite3.Connection) -> float | None:
    """The earliest time a batch may be taken: an unclaimed one's due time, or a claim's end."""
    if _exists(conn, "scheduled_batches"):
        value = conn.execute("SELECT min(ready_at) FROM scheduled_batches").fetchone()[0]
    elif _exists(conn):  # a file of an earlier layout that no write has converted yet
        value = conn.execute("SELECT min(ready_at) FROM scheduled").fetchone()[0]
    else:
        return None
    return None if value is None else value / 1_000_000


def forget(conn: sqlite3.Connection, ids: Sequence[uuid.UUID]) -> None:
    """Delete delivered rows (by id), and their batches once no row of them is left:
    a few statements per `_CHUNK` ids, not one per id (the writer thread is what all
    scheduling shares)."""
    if not _writable(conn):
        return
    keys = [i.bytes for i in ids]
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        batches = [
            b
            for (b,) in conn.execute(
                f"SELECT DISTINCT batch FROM scheduled WHERE id IN ({_marks(chunk)})", chunk
            )
        ]
        conn.execute(f"DELETE FROM scheduled WHERE id IN ({_marks(chunk)})", chunk)
        if batches:
            conn.execute(
                f"DELETE FROM scheduled_batches WHERE batch IN ({_marks(batches)}) AND NOT EXISTS"
                " (SELECT 1 FROM scheduled r WHERE r.batch = scheduled_batches.batch)",
                batches,
            )


def cancel(conn: sqlite3.Connection, event_id: uuid.UUID) -> bool:
    """Delete the row unless a scheduler claimed its batch."""
    if not _writable(conn):
        return False
    found = conn.execute(
        "SELECT b.batch, b.n FROM scheduled r JOIN scheduled_batches b ON b.batch = r.batch"
        " WHERE r.id = ? AND b.claimed = 0",
        (event_id.bytes,),
    ).fetchone()
    if found is None:
        return False
    batch, n = found
    conn.execute("DELETE FROM scheduled WHERE id = ?", (event_id.bytes,))
    if n <= 1:
        conn.execute("DELETE FROM scheduled_batches WHERE batch = ?", (batch,))
    else:
        conn.execute("UPDATE scheduled_batches SET n = n - 1 WHERE batch = ?", (batch,))
    return True


def list_rows(conn: sqlite3.Connection, stream: str | None, limit: int) -> list[ScheduledEvent]:
    """Pending events in due order (then batch, then their order in it)."""
    if not _exists(conn):
        return []
    args: tuple[Any, ...] = (limit,) if stream is None else (stream, limit)
    if not _exists(conn, "scheduled_batches"):  # an earlier layout, not converted yet
        where = "" if stream is None else " WHERE stream = ?"
        query = f"SELECT {_COLUMNS} FROM scheduled{where} ORDER BY due_at, batch, seq LIMIT ?"
    else:
        where = "" if stream is None else " WHERE b.stream = ?"
        columns = ", ".join(f"r.{c.strip()}" for c in _COLUMNS.split(","))
        query = (
            f"SELECT {columns} FROM scheduled_batches b JOIN scheduled r ON r.batch = b.batch"
            f"{where} ORDER BY b.due_at, b.batch, r.seq LIMIT ?"
        )
    return from_rows(conn.execute(query, args).fetchall())


def count(conn: sqlite3.Connection) -> int:
    if not _exists(conn):
        return 0
    value: int = conn.execute("SELECT count(*) FROM scheduled").fetchone()[0]
    return value
