"""Projections: catch-up, live, checkpoints, lag, rebuild; the SQLite same-transaction path."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

import tidelog
from tidelog.codec import EventRegistry
from tidelog.projections import (
    MemoryCheckpoints,
    PostgresProjection,
    Projection,
    ProjectionRunner,
    SQLiteProjection,
    StreamCheckpoints,
    handles,
)

REG = EventRegistry()


@tidelog.event("OrderPlaced", registry=REG)
class Placed(msgspec.Struct):
    order_id: str
    total: int


@tidelog.event("OrderCancelled", registry=REG)
class Cancelled(msgspec.Struct):
    order_id: str


class Totals(Projection):
    name = "totals"

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.positions: list[int] = []

    @handles
    def _placed(self, e: Placed, recorded: tidelog.RecordedEvent) -> None:
        self.totals[e.order_id] = e.total
        self.positions.append(recorded.position)

    @handles
    async def _cancelled(self, e: Cancelled) -> None:
        self.totals.pop(e.order_id, None)


class TotalsTable(SQLiteProjection):
    name = "totals_table"
    tables = {  # noqa: RUF012
        "totals": "CREATE TABLE {table} (order_id TEXT PRIMARY KEY, total INTEGER NOT NULL);"
        "CREATE INDEX {table}_by_total ON {table} (total)",
        "applied": "CREATE TABLE {table} (position INTEGER PRIMARY KEY)",
    }
    fail_on: str | None = None

    @handles
    def _placed(self, e: Placed, recorded: tidelog.RecordedEvent) -> None:
        if e.order_id == self.fail_on:
            raise RuntimeError("crash between events")
        # a plain INSERT: applying an event twice would raise (PRIMARY KEY), skipping one
        # would leave a hole in `applied`
        self.db.execute(f"INSERT INTO {self.table('totals')} VALUES (?, ?)", (e.order_id, e.total))
        self.db.execute(f"INSERT INTO {self.table('applied')} VALUES (?)", (recorded.position,))

    @handles
    def _cancelled(self, e: Cancelled, recorded: tidelog.RecordedEvent) -> None:
        self.db.execute(f"DELETE FROM {self.table('totals')} WHERE order_id = ?", (e.order_id,))
        self.db.execute(f"INSERT INTO {self.table('applied')} VALUES (?)", (recorded.position,))


@pytest.fixture
def store(contract_store: tidelog.Store) -> tidelog.Store:
    """Projections work on the engine contract: the same tests on several engines."""
    return contract_store


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[tidelog.Store]:
    async with tidelog.connect(f"sqlite:///{tmp_path}/store.db") as s:
        yield s


async def place(store: tidelog.Store, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        await store.append(f"order-{i}", [REG.encode(Placed(f"o{i}", i))])


async def test_catch_up_checkpoint_and_lag(store: tidelog.Store) -> None:
    await place(store, 5)
    await store.append("order-0", [REG.encode(Cancelled("o0"))])
    await store.append("other-1", [tidelog.NewEvent(type="Unrelated")])
    totals = Totals()
    checkpoints = MemoryCheckpoints()
    runner = ProjectionRunner(store, [totals], registry=REG, checkpoints=checkpoints, batch_size=2)
    [before] = await runner.status()
    assert (before.position, before.head, before.lag) == (0, 7, 7)
    seen: list[tuple[int, int]] = []
    await runner.catch_up(progress=lambda pos, head: seen.append((pos, head)))
    assert totals.totals == {f"o{i}": i for i in range(1, 5)}
    assert seen[-1] == (7, 7) and [p for p, _ in seen] == sorted(p for p, _ in seen)
    [after] = await runner.status()
    assert (after.position, after.lag) == (7, 0)

    # a second runner with the same checkpoints resumes, it does not start over
    again = Totals()
    runner2 = ProjectionRunner(store, [again], registry=REG, checkpoints=checkpoints)
    await place(store, 1, start=10)
    await runner2.catch_up()
    assert again.totals == {"o10": 10}


async def test_live_follow_then_stop(store: tidelog.Store) -> None:
    await place(store, 3)
    totals = Totals()
    runner = ProjectionRunner(store, [totals], registry=REG, checkpoints=MemoryCheckpoints())
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await place(store, 3, start=3)
    for _ in range(200):
        if len(totals.totals) == 6:
            break
        await asyncio.sleep(0.01)
    assert totals.totals == {f"o{i}": i for i in range(6)}
    assert totals.positions == sorted(set(totals.positions))
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_stream_checkpoints_live_in_the_store_and_do_not_feed_themselves(
    store: tidelog.Store,
) -> None:
    await place(store, 2)
    totals = Totals()
    runner = ProjectionRunner(store, [totals], registry=REG)  # StreamCheckpoints by default
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    for _ in range(200):
        if len(totals.totals) == 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    head = await store.last_position()
    await asyncio.sleep(0.2)
    assert await store.last_position() == head  # no checkpoint-event feedback loop
    await place(store, 30, start=100)
    for _ in range(300):
        if len(totals.totals) == 32:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert len(totals.totals) == 32
    # saves are throttled: far fewer checkpoint events than handled events
    saved = [e async for e in store.read_stream("$projection-totals")]
    assert 1 <= len(saved) < 15
    assert await StreamCheckpoints(store).load("totals") >= 32


async def test_rebuild_generic_projection_swaps_a_fresh_model(store: tidelog.Store) -> None:
    await place(store, 3)
    totals = Totals()
    runner = ProjectionRunner(store, [totals], registry=REG, checkpoints=MemoryCheckpoints())
    await runner.catch_up()
    totals.totals["corrupted"] = -1
    assert await runner.rebuild("totals") == 3
    assert totals.totals == {"o0": 0, "o1": 1, "o2": 2}


async def test_bad_runner_configurations() -> None:
    async with tidelog.connect("memory://") as store:
        await _bad_runner_configurations(store)


async def _bad_runner_configurations(store: tidelog.Store) -> None:
    with pytest.raises(tidelog.InvalidInput):
        ProjectionRunner(store, [Totals(), Totals()], registry=REG)
    with pytest.raises(tidelog.InvalidInput):
        ProjectionRunner(store, [Totals()], registry=EventRegistry())  # handlers unregistered
    with pytest.raises(tidelog.InvalidInput):

        class BadName(Projection):
            name = "Has Spaces"

    runner = ProjectionRunner(store, [TotalsTable()], registry=REG)
    with pytest.raises(tidelog.NotSupported):
        await runner.catch_up()
    runner = ProjectionRunner(store, [PgTotals()], registry=REG)
    with pytest.raises(tidelog.NotSupported):
        await runner.catch_up()
    with pytest.raises(tidelog.InvalidInput):
        await runner.rebuild("nope")


def rows(path: str, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def test_sqlite_rows_and_checkpoint_commit_together(
    sqlite_store: tidelog.Store, tmp_path: Path
) -> None:
    path = str(tmp_path / "store.db")
    await place(sqlite_store, 6)
    projection = TotalsTable()
    projection.fail_on = "o4"
    runner = ProjectionRunner(sqlite_store, [projection], registry=REG, batch_size=3)
    with pytest.raises(RuntimeError):
        await runner.catch_up()  # batch 1 (o0..o2) commits; batch 2 fails at o4
    assert rows(path, "SELECT position FROM tidelog_projection_checkpoints") == [(3,)]
    assert rows(path, "SELECT order_id FROM totals ORDER BY order_id") == [
        ("o0",),
        ("o1",),
        ("o2",),
    ]
    await runner.close()

    # "restart": the fixed projection resumes exactly after the committed batch
    fixed = TotalsTable()
    runner = ProjectionRunner(sqlite_store, [fixed], registry=REG, batch_size=3)
    await runner.catch_up()
    await sqlite_store.append("order-0", [REG.encode(Cancelled("o0"))])
    await runner.catch_up()
    assert rows(path, "SELECT position FROM applied ORDER BY position") == [
        (p,) for p in range(1, 8)
    ]
    assert rows(path, "SELECT count(*) FROM totals") == [(5,)]
    [status] = await runner.status()
    assert (status.position, status.lag, status.kind) == (7, 0, "sqlite-transaction")
    await runner.close()


async def test_sqlite_live_and_rebuild_swap(sqlite_store: tidelog.Store, tmp_path: Path) -> None:
    path = str(tmp_path / "store.db")
    await place(sqlite_store, 4)
    async with ProjectionRunner(sqlite_store, [TotalsTable()], registry=REG) as runner:
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        await place(sqlite_store, 2, start=4)
        for _ in range(300):
            with contextlib.suppress(sqlite3.OperationalError):  # not created yet
                if rows(path, "SELECT count(*) FROM totals") == [(6,)]:
                    break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE totals SET total = -1")  # damage the read model
    progress: list[int] = []
    async with ProjectionRunner(sqlite_store, [TotalsTable()], registry=REG) as runner:
        assert await runner.rebuild("totals_table", progress=lambda p, h: progress.append(p)) == 6
        assert progress[-1] == 6
        assert rows(path, "SELECT sum(total) FROM totals") == [(15,)]
        # rebuilding twice works (index names do not collide) and leaves no shadow table
        await runner.rebuild("totals_table")
    names = {n for (n,) in rows(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not any("__r" in n for n in names)
    assert rows(path, "SELECT position FROM tidelog_projection_checkpoints") == [(6,)]


async def test_sqlite_checkpoint_moved_by_another_runner_is_detected(
    sqlite_store: tidelog.Store, tmp_path: Path
) -> None:
    path = str(tmp_path / "store.db")
    await place(sqlite_store, 3)
    async with (
        ProjectionRunner(sqlite_store, [TotalsTable()], registry=REG, batch_size=2) as a,
        ProjectionRunner(sqlite_store, [TotalsTable()], registry=REG, batch_size=3) as b,
    ):
        # both read the same pages at once; the checkpoint check inside each batch
        # transaction makes the loser resume from the winner's checkpoint
        await asyncio.gather(a.catch_up(), b.catch_up())
        await place(sqlite_store, 20, start=3)
        await asyncio.gather(a.catch_up(), b.catch_up(), a.catch_up())
    assert rows(path, "SELECT count(*), min(position), max(position) FROM applied") == [(23, 1, 23)]


class PgTotals(PostgresProjection):
    """TotalsTable on PostgreSQL: the same plain INSERTs detect double or skipped events."""

    name = "pg_totals"
    tables = {  # noqa: RUF012
        "totals": "CREATE TABLE {table} (order_id TEXT PRIMARY KEY, total BIGINT NOT NULL);"
        "CREATE INDEX {table}_by_total ON {table} (total)",
        "applied": "CREATE TABLE {table} (position BIGINT PRIMARY KEY)",
    }
    fail_on: str | None = None

    @handles
    async def _placed(self, e: Placed, recorded: tidelog.RecordedEvent) -> None:
        if e.order_id == self.fail_on:
            raise RuntimeError("crash between events")
        await self.db.execute(
            f"INSERT INTO {self.table('totals')} VALUES ($1, $2)", e.order_id, e.total
        )
        await self.db.execute(f"INSERT INTO {self.table('applied')} VALUES ($1)", recorded.position)

    @handles
    async def _cancelled(self, e: Cancelled, recorded: tidelog.RecordedEvent) -> None:
        await self.db.execute(f"DELETE FROM {self.table('totals')} WHERE order_id = $1", e.order_id)
        await self.db.execute(f"INSERT INTO {self.table('applied')} VALUES ($1)", recorded.position)


@pytest.fixture
async def pg_store() -> AsyncIterator[tuple[tidelog.Store, str]]:
    """A PostgreSQL store in a schema of its own, and its URL."""
    from support.postgres import Schemas, require_postgres

    await require_postgres()
    schemas = Schemas()
    url = schemas.url()
    try:
        async with tidelog.connect(url) as s:
            yield s, url
    finally:
        await schemas.drop()


async def pg_rows(url: str, sql: str) -> list[tuple[object, ...]]:
    """Rows of a query in the store's schema, on a connection of the test's own."""
    import asyncpg

    from tidelog.engines.postgres import split_url

    dsn, config = split_url(url)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": config.schema})
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_postgres_rows_and_checkpoint_commit_together(
    pg_store: tuple[tidelog.Store, str],
) -> None:
    store, url = pg_store
    await place(store, 6)
    projection = PgTotals()
    projection.fail_on = "o4"
    runner = ProjectionRunner(store, [projection], registry=REG, batch_size=3)
    with pytest.raises(RuntimeError):
        await runner.catch_up()  # batch 1 (o0..o2) commits; batch 2 fails at o4
    assert await pg_rows(url, "SELECT position FROM tidelog_projection_checkpoints") == [(3,)]
    assert await pg_rows(url, "SELECT order_id FROM totals ORDER BY order_id") == [
        ("o0",),
        ("o1",),
        ("o2",),
    ]
    assert await pg_rows(url, "SELECT position FROM applied ORDER BY position") == [
        (1,),
        (2,),
        (3,),
    ]
    await runner.close()

    # "restart": the fixed projection resumes exactly after the committed batch
    fixed = PgTotals()
    runner = ProjectionRunner(store, [fixed], registry=REG, batch_size=3)
    await runner.catch_up()
    await store.append("order-0", [REG.encode(Cancelled("o0"))])
    await runner.catch_up()
    assert await pg_rows(url, "SELECT position FROM applied ORDER BY position") == [
        (p,) for p in range(1, 8)
    ]
    assert await pg_rows(url, "SELECT count(*) FROM totals") == [(5,)]
    [status] = await runner.status()
    assert (status.position, status.lag, status.kind) == (7, 0, "postgres-transaction")
    await runner.close()


@pytest.mark.postgres
async def test_postgres_live_and_rebuild_swap(pg_store: tuple[tidelog.Store, str]) -> None:
    import asyncpg

    store, url = pg_store
    await place(store, 4)
    async with ProjectionRunner(store, [PgTotals()], registry=REG) as runner:
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        await place(store, 2, start=4)
        for _ in range(300):
            with contextlib.suppress(asyncpg.UndefinedTableError):  # not created yet
                if await pg_rows(url, "SELECT count(*) FROM totals") == [(6,)]:
                    break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)
        [status] = await runner.status()
        assert (status.position, status.lag) == (6, 0)
    await pg_rows(url, "UPDATE totals SET total = -1")  # damage the read model
    progress: list[int] = []
    async with ProjectionRunner(store, [PgTotals()], registry=REG) as runner:
        assert await runner.rebuild("pg_totals", progress=lambda p, h: progress.append(p)) == 6
        assert progress[-1] == 6
        assert await pg_rows(url, "SELECT sum(total) FROM totals") == [(15,)]
        # rebuilding twice works (index names do not collide) and leaves no shadow table
        await runner.rebuild("pg_totals")
        await place(store, 1, start=6)
        await runner.catch_up()  # the swapped-in tables are the live ones now
    tables = await pg_rows(
        url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    )
    assert not any("__r" in str(n) for (n,) in tables)
    assert {"totals", "applied"} <= {n for (n,) in tables}
    assert await pg_rows(url, "SELECT name, position FROM tidelog_projection_checkpoints") == [
        ("pg_totals", 7)
    ]
    assert await pg_rows(url, "SELECT count(*), min(position), max(position) FROM applied") == [
        (7, 1, 7)
    ]


@pytest.mark.postgres
async def test_postgres_checkpoint_moved_by_another_runner_is_detected(
    pg_store: tuple[tidelog.Store, str],
) -> None:
    store, url = pg_store
    await place(store, 3)
    async with (
        ProjectionRunner(store, [PgTotals()], registry=REG, batch_size=2) as a,
        ProjectionRunner(store, [PgTotals()], registry=REG, batch_size=3) as b,
    ):
        # both read the same pages at once; the checkpoint row locked at the start of
        # each batch transaction makes the loser resume from the winner's checkpoint
        await asyncio.gather(a.catch_up(), b.catch_up())
        await place(store, 20, start=3)
        await asyncio.gather(a.catch_up(), b.catch_up(), a.catch_up())
    assert await pg_rows(url, "SELECT count(*), min(position), max(position) FROM applied") == [
        (23, 1, 23)
    ]


CLI_MODULE = """
import msgspec
import tidelog
from tidelog.projections import SQLiteProjection, handles


@tidelog.event("CliProjPlaced")
class Placed(msgspec.Struct):
    order_id: str
    total: int


class CliTotals(SQLiteProjection):
    name = "cli_totals"
    tables = {"cli_totals": "CREATE TABLE {table} (order_id TEXT PRIMARY KEY, total INT)"}

    @handles
    def _placed(self, e: Placed) -> None:
        self.db.execute(
            f"INSERT OR REPLACE INTO {self.table('cli_totals')} VALUES (?, ?)",
            (e.order_id, e.total),
        )
"""


def test_projections_cli_list_status_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from typer.testing import CliRunner

    from tidelog.cli import app

    (tmp_path / "cli_projections_mod.py").write_text(CLI_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    db = tmp_path / "p.db"
    base = ["--store", f"sqlite:///{db}", "--json"]
    runner = CliRunner()
    for i in range(3):
        data = json.dumps({"order_id": f"o{i}", "total": i})
        result = runner.invoke(
            app, [*base, "append", f"order-{i}", "-t", "CliProjPlaced", "-d", data]
        )
        assert result.exit_code == 0, result.output
    mod = ["--module", "cli_projections_mod"]

    result = runner.invoke(app, [*base, "projections", "list", *mod])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "name": "cli_totals",
        "kind": "sqlite-transaction",
        "handles": ["CliProjPlaced"],
    }
    result = runner.invoke(app, [*base, "projections", "status", *mod])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert (status["position"], status["head"], status["lag"]) == (0, 3, 3)

    result = runner.invoke(app, [*base, "projections", "rebuild", "cli_totals", *mod])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"name": "cli_totals", "position": 3}
    assert rows(str(db), "SELECT sum(total) FROM cli_totals") == [(3,)]
    result = runner.invoke(app, [*base, "projections", "status", *mod])
    assert json.loads(result.output)["lag"] == 0

    result = runner.invoke(app, [*base, "projections", "rebuild", "nope", *mod])
    assert result.exit_code == 1 and "nope" in result.output
    result = runner.invoke(app, [*base, "projections", "status"])
    assert result.exit_code == 1 and "--module" in result.output


CRASH_CHILD = """
import asyncio, os, sys
import msgspec
import tidelog
from tidelog.projections import ProjectionRunner, SQLiteProjection, handles


@tidelog.event("CrashPlaced")
class Placed(msgspec.Struct):
    n: int


class Applied(SQLiteProjection):
    name = "crash_applied"
    tables = {"crash_applied": "CREATE TABLE {table} (position INTEGER PRIMARY KEY, n INT)"}

    @handles
    def _placed(self, e: Placed, recorded: tidelog.RecordedEvent) -> None:
        self.db.execute(
            f"INSERT INTO {self.table('crash_applied')} VALUES (?, ?)", (recorded.position, e.n)
        )
        if e.n == int(sys.argv[2]):
            os._exit(17)  # die mid-batch: no rollback, no cleanup, like kill -9


async def main() -> None:
    async with tidelog.connect(sys.argv[1]) as store:
        async with ProjectionRunner(store, [Applied()], batch_size=4) as runner:
            await runner.catch_up()


asyncio.run(main())
"""


async def test_sqlite_projection_survives_a_process_crash_mid_batch(tmp_path: Path) -> None:
    import subprocess
    import sys

    child = tmp_path / "crash_child.py"
    child.write_text(CRASH_CHILD)
    url = f"sqlite:///{tmp_path}/crash.db"
    async with tidelog.connect(url) as s:
        for n in range(10):
            await s.append(f"c-{n}", [tidelog.NewEvent(type="CrashPlaced", data=b'{"n": %d}' % n)])

    def run_child(crash_at: int) -> int:
        return subprocess.run(
            [sys.executable, str(child), url, str(crash_at)], timeout=120, check=False
        ).returncode

    # dies while handling n=6: batch 1 (1..4) is committed, batch 2 (5..8) is not
    assert await asyncio.to_thread(run_child, 6) == 17
    path = str(tmp_path / "crash.db")
    assert rows(path, "SELECT position FROM crash_applied") == [(p,) for p in range(1, 5)]
    assert rows(path, "SELECT position FROM tidelog_projection_checkpoints") == [(4,)]
    assert await asyncio.to_thread(run_child, -1) == 0  # restart: resumes after position 4
    assert rows(path, "SELECT position FROM crash_applied") == [(p,) for p in range(1, 11)]


PG_CRASH_CHILD = """
import asyncio, os, sys
import msgspec
import tidelog
from tidelog.projections import PostgresProjection, ProjectionRunner, handles


@tidelog.event("PgCrashPlaced")
class Placed(msgspec.Struct):
    n: int


class Applied(PostgresProjection):
    name = "pg_crash_applied"
    tables = {"pg_crash_applied": "CREATE TABLE {table} (position BIGINT PRIMARY KEY, n INT)"}

    @handles
    async def _placed(self, e: Placed, recorded: tidelog.RecordedEvent) -> None:
        await self.db.execute(
            f"INSERT INTO {self.table('pg_crash_applied')} VALUES ($1, $2)", recorded.position, e.n
        )
        if e.n == int(sys.argv[2]):
            os._exit(17)  # die mid-batch: no rollback, no cleanup, like kill -9


async def main() -> None:
    async with tidelog.connect(sys.argv[1]) as store:
        async with ProjectionRunner(store, [Applied()], batch_size=4) as runner:
            await runner.catch_up()


asyncio.run(main())
"""


@pytest.mark.postgres
async def test_postgres_projection_survives_a_process_crash_mid_batch(
    pg_store: tuple[tidelog.Store, str], tmp_path: Path
) -> None:
    import subprocess
    import sys

    store, url = pg_store
    child = tmp_path / "pg_crash_child.py"
    child.write_text(PG_CRASH_CHILD)
    for n in range(10):
        await store.append(
            f"c-{n}", [tidelog.NewEvent(type="PgCrashPlaced", data=b'{"n": %d}' % n)]
        )

    def run_child(crash_at: int) -> int:
        return subprocess.run(
            [sys.executable, str(child), url, str(crash_at)], timeout=120, check=False
        ).returncode

    # dies while handling n=6: batch 1 (1..4) is committed, batch 2 (5..8) is not
    assert await asyncio.to_thread(run_child, 6) == 17
    applied = "SELECT position FROM pg_crash_applied ORDER BY position"
    assert await pg_rows(url, applied) == [(p,) for p in range(1, 5)]
    checkpoint = "SELECT position FROM tidelog_projection_checkpoints"
    assert await pg_rows(url, checkpoint) == [(4,)]
    assert await asyncio.to_thread(run_child, -1) == 0  # restart: resumes after position 4
    assert await pg_rows(url, applied) == [(p,) for p in range(1, 11)]
