"""Projections: read models built from the log, with checkpoints, lag and rebuild.

A projection has one handler per event class (found by the class, never by a
string: `@handles` reads the annotation, or takes the class):

    class OrderTotals(Projection):
        name = "order_totals"

        def __init__(self) -> None:
            self.totals: dict[str, int] = {}

        @handles
        def _placed(self, e: OrderPlaced, recorded: tidelog.RecordedEvent) -> None:
            self.totals[e.order_id] = e.total

A `ProjectionRunner` reads the global log from the projection's checkpoint
(catch-up, in pages), then follows it live (`store.subscribe`), and commits a
checkpoint after every batch. Handlers may be plain or `async` functions.

**Where the checkpoint lives decides the guarantee.**

- `SQLiteProjection`: the read model is tables in the *same SQLite file* as
  the store. The runner opens its own `sqlite3` connection to that file and,
  for every batch, writes the rows *and* the checkpoint in one transaction
  (checking the stored checkpoint is the one it started from). A crash or an
  exception between two events rolls the whole batch back, so no event is
  ever applied twice or skipped: exactly-once effects.
- `PostgresProjection`: the same guarantee on PostgreSQL. The read model is
  tables in the *store's own schema*; the runner opens its own asyncpg
  connection (its `search_path` is that schema) and writes the rows and the
  checkpoint in one transaction, after locking the checkpoint row
  (`SELECT … FOR UPDATE`) and checking it is the one the batch started from.
  Its handlers are `async` and write through `await self.db.execute(...)`.
- Any other `Projection`: its checkpoint goes to a `CheckpointStore`
  (`MemoryCheckpoints`, or `StreamCheckpoints` which keeps it in the store's
  `$projection-<name>` system stream). The read model and the checkpoint are
  two writes, so delivery is at-least-once: make handlers idempotent (upsert
  by key, or remember `recorded.position`).

**Rebuild** (`runner.rebuild(name)`, `tidelog projections rebuild NAME`)
builds a fresh read model from position 0 beside the live one, then swaps it
in: for SQLite and PostgreSQL projections, shadow tables renamed over the old
ones in one transaction together with the checkpoint; for others, `fresh()` builds a new
instance and `swap()` moves its state in.

**A new component that needs the whole history** is just a projection
started with no checkpoint: `await runner.catch_up(progress=callback)` replays
the log in pages and reports (position, head) after each one; `run()` then
follows live.

The package: `_core` (the `Projection` base, the driver interface, the SQL
drivers' shared rebuild), `checkpoints` (checkpoint stores and their
at-least-once driver), `sqlite` and `postgres` (the exactly-once drivers),
`runner` (`ProjectionRunner`), `_cli` (`tidelog projections ...`).

Events of system streams (`$...`) and events no handler wants are skipped
without being decoded; the checkpoint still moves past them, so the lag
(`head - checkpoint`, in log positions) drops to 0 once caught up.
"""

from tidelog.projections._core import Projection, ProjectionStatus, handles
from tidelog.projections.checkpoints import CheckpointStore, MemoryCheckpoints, StreamCheckpoints
from tidelog.projections.postgres import PostgresProjection
from tidelog.projections.runner import ProjectionRunner
from tidelog.projections.sqlite import SQLiteProjection

__all__ = [
    "CheckpointStore",
    "MemoryCheckpoints",
    "PostgresProjection",
    "Projection",
    "ProjectionRunner",
    "ProjectionStatus",
    "SQLiteProjection",
    "StreamCheckpoints",
    "handles",
]
