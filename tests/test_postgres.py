"""The PostgreSQL engine: the conformance suite, the model test, and what is its own.

Needs the PostgreSQL server on 127.0.0.1:5432 (database `test`); every store
lives in a fresh schema that is dropped after its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import random
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

import tidelog
from support.postgres import PG_DSN, Schemas, new_schema, require_postgres
from support.scheduling import check_old_claims_upgraded, schedule_pending_and_claimed
from tidelog.engines.postgres import engine as postgres
from tidelog.engines.postgres.errors import pg_errors, translate
from tidelog.engines.postgres.schema import (
    LATEST_VERSION,
    MIGRATIONS,
    advisory_keys,
    current_version,
    migrate,
)
from tidelog.testing.conformance import EngineSuite
from tidelog.testing.retention import RetentionSuite
from tidelog.testing.retention_model import RetentionModelSuite
from tidelog.testing.scheduling import SchedulingSuite
from tidelog.testing.stateful import ModelSuite

pytestmark = pytest.mark.postgres

_created = Schemas()
"""Schemas of the stores opened by the current test."""


@pytest_asyncio.fixture(autouse=True)
async def _drop_schemas() -> AsyncIterator[None]:
    await require_postgres()
    try:
        yield
    finally:
        await _created.drop()


class TestPostgresEngine(EngineSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await _created.open("pool_max=4")


class TestPostgresRetention(RetentionSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await _created.open("pool_max=4")


class TestPostgresRetentionModel(RetentionModelSuite):
    max_examples = 10

    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await _created.open("pool_max=2")


class TestPostgresScheduling(SchedulingSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await _created.open("pool_max=4")

    async def open_same(self, store: tidelog.Store) -> tidelog.Store:
        assert isinstance(store, postgres.PostgresEngine)
        return await tidelog.connect(f"{PG_DSN}?schema={store.config.schema}&pool_max=4")


class TestPostgresModel(ModelSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        # Each example closes its store before the next opens one: they reuse one schema.
        return await _created.open("pool_max=2&partitions=4", reuse=True)


def ev(type: str = "Happened", data: bytes = b"") -> tidelog.NewEvent:
    return tidelog.NewEvent(type=type, data=data)


# --------------------------------------------------------------------------- URL and config


def test_split_url_keeps_driver_options_and_takes_ours() -> None:
    dsn, config = postgres.split_url(
        "postgresql://u@127.0.0.1:5432/db?schema=s1&partitions=8&sslmode=disable&pool_max=3"
    )
    assert dsn == "postgresql://u@127.0.0.1:5432/db?sslmode=disable"
    assert (config.schema, config.partitions, config.pool_max) == ("s1", 8, 3)


@pytest.mark.parametrize(
    "query",
    [
        "schema=Bad-Name",
        "schema=",
        "partitions=0",
        "partitions=x",
        "pool_max=0",
        "schema=a&schema=b",
    ],
)
def test_bad_options_are_refused(query: str) -> None:
    with pytest.raises(tidelog.InvalidURL):
        postgres.split_url(f"postgresql://127.0.0.1/db?{query}")


async def test_partitions_are_fixed_at_creation() -> None:
    url = _created.url("partitions=8")
    async with tidelog.connect(url) as store:
        assert store.partition_count == 8
    base = url.split("&partitions")[0]
    async with tidelog.connect(base) as store:
        assert store.partition_count == 8
    with pytest.raises(tidelog.InvalidURL):
        await tidelog.connect(base + "&partitions=4")


async def test_unreachable_server_is_store_unavailable() -> None:
    with pytest.raises(tidelog.StoreUnavailable):
        await tidelog.connect("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")


# --------------------------------------------------------------------------- errors


def test_driver_errors_are_translated_in_one_place() -> None:
    assert isinstance(translate(ConnectionRefusedError()), tidelog.StoreUnavailable)
    assert isinstance(translate(TimeoutError()), tidelog.StoreUnavailable)
    assert isinstance(translate(asyncpg.AdminShutdownError("x")), tidelog.StoreUnavailable)
    assert isinstance(
        translate(asyncpg.exceptions.ConnectionDoesNotExistError("gone")), tidelog.StoreUnavailable
    )
    unique = asyncpg.UniqueViolationError("dup")
    unique.constraint_name = "events_id_key"
    assert isinstance(translate(unique, "order-1"), tidelog.DuplicateEventId)
    unique.constraint_name = "events_stream_version_key"
    assert isinstance(translate(unique, "order-1"), tidelog.WrongExpectedVersion)
    assert isinstance(translate(asyncpg.DataError("bad")), tidelog.InvalidInput)
    with pytest.raises(tidelog.StoreUnavailable), pg_errors():
        raise asyncpg.exceptions.TooManyConnectionsError("full")
    with pytest.raises(KeyError), pg_errors():
        raise KeyError("not a driver error: passes through")


async def test_server_side_errors_become_tidelog_errors() -> None:
    store = await _created.open()
    try:
        assert isinstance(store, postgres.PostgresEngine)
        conn = await asyncpg.connect(PG_DSN)
        try:  # a table the engine needs disappears: the driver error must not escape
            await conn.execute(f'DROP TABLE "{store.config.schema}".streams CASCADE')
        finally:
            await conn.close()
        with pytest.raises(tidelog.StoreUnavailable):
            await store.append("order-1", [ev()])
        with pytest.raises(tidelog.StoreUnavailable):
            [s async for s in store.list_streams()]
    finally:
        await store.close()


# --------------------------------------------------------------------------- migrations


async def test_migrations_are_recorded_and_rerunning_is_a_no_op() -> None:
    url = _created.url()
    version, applied = await postgres.migrate_url(url)
    assert (version, applied) == (LATEST_VERSION, [m[0] for m in MIGRATIONS])
    assert await postgres.migrate_url(url) == (LATEST_VERSION, [])


async def test_upgrade_from_version_1_keeps_data() -> None:
    url = _created.url()
    schema = _created.names[-1]
    conn = await asyncpg.connect(PG_DSN)
    try:
        assert await migrate(conn, schema, target=1) == [1]
        assert await current_version(conn, schema) == 1
        # A store written by a version-1 tidelog: one stream, one event.
        event_id = uuid.uuid4()
        await conn.execute(f'INSERT INTO "{schema}".meta VALUES ($1, $2)', "partitions", "4")
        await conn.execute(
            f'INSERT INTO "{schema}".events VALUES (1, $1, $2, 0, $3, $4, $5, 1, now(), $6, $7)',
            event_id,
            "order-1",
            "Placed",
            b"data",
            '{"a": 1}',
            "order",
            tidelog.partition_of("order-1", 4),
        )
        await conn.execute(f"INSERT INTO \"{schema}\".streams VALUES ('order-1', 'order', 0)")
    finally:
        await conn.close()
    async with tidelog.connect(url) as store:
        assert isinstance(store, postgres.PostgresEngine)
        assert store.schema_version == LATEST_VERSION
        assert store.partition_count == 4
        [old] = [e async for e in store.read_stream("order-1")]
        assert (old.id, old.data, old.metadata, old.position) == (event_id, b"data", {"a": 1}, 1)
        result = await store.append("order-1", [ev()], expected_version=0)
        assert result == tidelog.AppendResult(version=1, position=2)
        membership = await store.join_group("g", "order", "m")  # tables of version 2
        await store.commit("g", "order", 0, 2, member="m", generation=membership.generation)
        assert await store.checkpoints("g", "order") == {0: 2}


async def test_a_store_newer_than_the_code_is_refused() -> None:
    url = _created.url()
    schema = _created.names[-1]
    await postgres.migrate_url(url)
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(
            f"INSERT INTO \"{schema}\".schema_migrations VALUES ($1, 'from the future')",
            LATEST_VERSION + 1,
        )
    finally:
        await conn.close()
    with pytest.raises(tidelog.NotSupported):
        await tidelog.connect(url)


async def test_concurrent_first_opens_create_the_schema_once() -> None:
    url = _created.url("pool_max=1&listen=false")
    stores = await asyncio.gather(*(tidelog.connect(url) for _ in range(4)))
    try:
        results = await asyncio.gather(
            *(s.append(f"order-{i}", [ev()]) for i, s in enumerate(stores))
        )
        assert sorted(r.position for r in results) == [1, 2, 3, 4]
    finally:
        for s in stores:
            await s.close()


# --------------------------------------------------------------------------- group commit


async def test_concurrent_appends_share_a_commit_and_a_conflict_fails_only_itself() -> None:
    store = await _created.open()
    try:
        assert isinstance(store, postgres.PostgresEngine)
        commits = 0

        async def count_commit() -> None:
            nonlocal commits
            commits += 1

        store._before_commit = count_commit
        await store.append("order-0", [ev()])
        commits = 0
        outcomes = await asyncio.gather(
            *(
                store.append(f"order-{i}", [ev()], expected_version=tidelog.NO_STREAM)
                for i in range(40)
            ),
            return_exceptions=True,
        )
        conflicts = [o for o in outcomes if isinstance(o, tidelog.WrongExpectedVersion)]
        assert len(conflicts) == 1 and conflicts[0].stream == "order-0"
        positions = sorted(o.position for o in outcomes if isinstance(o, tidelog.AppendResult))
        assert positions == list(range(2, 41))
        assert commits < 40  # gathered into fewer transactions than appends
        assert [e.position async for e in store.read_all()] == list(range(1, 41))
    finally:
        await store.close()


async def test_a_failed_commit_fails_every_append_of_the_batch_and_writes_nothing() -> None:
    store = await _created.open()
    try:
        assert isinstance(store, postgres.PostgresEngine)

        async def fail() -> None:
            raise asyncpg.exceptions.AdminShutdownError("injected")

        store._before_commit = fail
        outcomes = await asyncio.gather(
            *(store.append(f"order-{i}", [ev()]) for i in range(10)), return_exceptions=True
        )
        assert all(isinstance(o, tidelog.StoreUnavailable) for o in outcomes)
        store._before_commit = None
        assert await store.last_position() == 0
        assert (await store.append("order-1", [ev()])).position == 1
    finally:
        await store.close()


async def test_the_writer_releases_its_connection_once_no_append_waits() -> None:
    """The group commit keeps its connection across back-to-back batches only."""
    store = await _created.open("pool_min=0&pool_max=3")
    try:
        assert isinstance(store, postgres.PostgresEngine)

        async def appender(i: int) -> None:
            for v in range(5):
                await store.append(f"order-{i}", [ev()], tidelog.NO_STREAM if v == 0 else v - 1)

        await asyncio.gather(*(appender(i) for i in range(8)))
        assert store._drainer is not None
        await store._drainer
        assert store._pool.get_idle_size() == store._pool.get_size()
        assert await store.last_position() == 40
    finally:
        await store.close()


async def test_ids_and_timestamps_read_as_the_driver_decodes_them() -> None:
    """Reads take id and recorded_at in binary form and decode them themselves."""
    store = await _created.open()
    try:
        for i in range(3):
            await store.append(f"order-{i}", [ev(), ev()])
        events = [e async for e in store.read_all()]
        conn = await asyncpg.connect(PG_DSN)
        try:
            rows = await conn.fetch(
                f'SELECT id, recorded_at FROM "{_created.names[-1]}".events ORDER BY position'
            )
            stamps = await conn.fetch(
                "SELECT timestamptz_send(t), t FROM unnest($1::timestamptz[]) AS t",
                [r[1] for r in rows]
                + [
                    datetime(1999, 12, 31, 23, 59, 59, 999999, UTC),
                    datetime(1970, 1, 1, tzinfo=UTC),
                ],
            )
        finally:
            await conn.close()
        assert [(e.id, e.recorded_at) for e in events] == [(r[0], r[1]) for r in rows]
        assert all(type(e.id) is uuid.UUID and e.recorded_at.tzinfo is UTC for e in events)
        assert all(events[i].recorded_at == events[i + 1].recorded_at for i in (0, 2, 4))
        decoded = postgres._Timestamps()
        assert [decoded[raw] for raw, _ in stamps] == [t for _, t in stamps]
    finally:
        await store.close()


async def test_notify_wakes_a_subscriber_of_another_engine() -> None:
    url = _created.url("poll_interval=30")  # polling would take 30 s: only NOTIFY is fast
    async with tidelog.connect(url) as reader, tidelog.connect(url) as writer:
        subscription = reader.subscribe()
        first = asyncio.ensure_future(anext(subscription))
        await asyncio.sleep(0.2)
        await writer.append("order-1", [ev()])
        async with asyncio.timeout(10):
            event = await first
        assert event.position == 1
        await subscription.aclose()


async def test_a_schema_is_a_separate_store() -> None:
    async with tidelog.connect(_created.url()) as a, tidelog.connect(_created.url()) as b:
        await a.append("order-1", [ev()])
        assert await b.last_position() == 0
        assert new_schema() not in _created.names


async def test_lost_listener_reconnects_and_notify_works_again() -> None:
    url = _created.url("poll_interval=30")  # only NOTIFY can wake the subscriber in time
    async with tidelog.connect(url) as reader, tidelog.connect(url) as writer:
        assert isinstance(reader, postgres.PostgresEngine)
        conn = await asyncpg.connect(PG_DSN)
        try:
            pid = reader._listener.get_server_pid()
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await conn.close()
        async with asyncio.timeout(10):
            while reader._listener is None or reader._listener.get_server_pid() == pid:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        subscription = reader.subscribe()
        first = asyncio.ensure_future(anext(subscription))
        await asyncio.sleep(0.2)
        await writer.append("order-1", [ev()])
        async with asyncio.timeout(10):
            assert (await first).position == 1
        await subscription.aclose()


async def _poison_trigger(schema: str) -> None:
    """Make the insert of an event of type `Poison` fail, a failure no check foresees."""
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(
            f"""CREATE FUNCTION "{schema}".poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.type = 'Poison' THEN RAISE EXCEPTION 'poisoned'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER poison BEFORE INSERT ON "{schema}".events
            FOR EACH ROW EXECUTE FUNCTION "{schema}".poison();"""
        )
    finally:
        await conn.close()


async def test_an_unforeseen_write_error_fails_only_its_own_append() -> None:
    """A failure the engine's checks cannot predict (here a trigger) is pinned on its append
    by redoing the batch with a SAVEPOINT per append; the others still commit."""
    store = await _created.open()
    try:
        assert isinstance(store, postgres.PostgresEngine)
        await _poison_trigger(store.config.schema)
        outcomes = await asyncio.gather(
            *(store.append(f"order-{i}", [ev("Poison" if i == 7 else "Fine")]) for i in range(20)),
            return_exceptions=True,
        )
        assert isinstance(outcomes[7], tidelog.StoreUnavailable)
        good = [o for i, o in enumerate(outcomes) if i != 7]
        assert all(isinstance(o, tidelog.AppendResult) for o in good)
        events = [e async for e in store.read_all()]
        assert [e.position for e in events] == list(range(1, 20))
        assert "order-7" not in {e.stream for e in events}
    finally:
        await store.close()


SEEDED = 902
"""Events written before the commits below, so that every position they commit is in the log."""


@pytest.mark.parametrize("isolate", [False, True], ids=["one-write", "savepoints"])
async def test_transactional_commits_share_a_group_commit_and_fail_alone(isolate: bool) -> None:
    """Transactional commits of two groups wait behind a held group commit, then go
    in one batch. A stale member, a version conflict and (redone with a savepoint
    each) a failed write fail only their own commit: none of their appends and
    checkpoints is written. Every other commit's appends are, and its partition's
    checkpoint moves to the greatest position, never back."""
    store = await _created.open("partitions=4")
    try:
        assert isinstance(store, postgres.PostgresEngine)
        if isolate:
            await _poison_trigger(store.config.schema)
        # Events to commit up to: a checkpoint beyond the head is refused (issue #18).
        seeded = await store.append("seed-1", [ev() for _ in range(SEEDED)])
        assert seeded.position == SEEDED
        billing = await store.join_group("billing", "order", "m1", lease=600)
        audit = await store.join_group("audit", "order", "m1", lease=600)
        await store.commit("billing", "order", 3, 100, member="m1", generation=billing.generation)
        commits = 0
        holding, gate = asyncio.Event(), asyncio.Event()

        async def held_commit() -> None:
            nonlocal commits
            commits += 1
            holding.set()
            await gate.wait()

        store._before_commit = held_commit
        held = asyncio.ensure_future(store.append("invoice-taken", [ev()]))
        await holding.wait()

        def commit(group: str, partition: int, position: int, stream: str, **kw: Any) -> Any:
            generation = (billing if group == "billing" else audit).generation
            request = tidelog.AppendRequest(
                [ev(kw.get("type", "Issued"))], kw.get("expected", tidelog.ANY)
            )
            return store.commit(
                group,
                "order",
                partition,
                position,
                member="m1",
                generation=kw.get("generation", generation),
                appends={stream: request},
            )

        calls = [commit("billing", i % 4, 10 + i, f"invoice-b{i}") for i in range(20)]
        calls += [commit("audit", i % 2, 50 - i, f"invoice-a{i}") for i in range(10)]
        failing = {
            len(calls): tidelog.StaleGeneration,
            len(calls) + 1: tidelog.WrongExpectedVersion,
        }
        calls.append(commit("billing", 0, 900, "invoice-stale", generation=billing.generation + 1))
        calls.append(commit("billing", 1, 901, "invoice-taken", expected=tidelog.NO_STREAM))
        if isolate:
            failing[len(calls)] = tidelog.StoreUnavailable
            calls.append(commit("audit", 0, 902, "invoice-poison", type="Poison"))
        tasks = [asyncio.ensure_future(c) for c in calls]
        for _ in range(1000):  # each commit creates its group row first
            if len(store._pending) == len(tasks):
                break
            await asyncio.sleep(0.01)
        assert len(store._pending) == len(tasks)
        gate.set()
        assert (await held).position == SEEDED + 1
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)

        for i, outcome in enumerate(outcomes):
            if i in failing:
                assert isinstance(outcome, failing[i]), (i, outcome)
            else:
                assert isinstance(outcome, dict) and len(outcome) == 1, (i, outcome)
        assert commits == 2  # the held append's transaction, and one for all the commits
        assert await store.checkpoints("billing", "order") == {0: 26, 1: 27, 2: 28, 3: 100}
        assert await store.checkpoints("audit", "order") == {0: 50, 1: 49}
        events = [e async for e in store.read_all(SEEDED + 1)]
        assert [e.position for e in events] == list(range(SEEDED + 1, SEEDED + 32))
        assert {e.stream for e in events} == {"invoice-taken"} | {
            f"invoice-{g}{i}" for g, n in (("b", 20), ("a", 10)) for i in range(n)
        }
    finally:
        await store.close()


async def test_a_retried_transactional_commit_writes_its_checkpoint_alone() -> None:
    """A commit whose appends are all retries writes no event, and still its checkpoint."""
    store = await _created.open()
    try:
        await store.append("order-1", [ev() for _ in range(9)])  # positions to commit
        member = await store.join_group("g", "order", "m1", lease=600)
        appends = {"receipt-1": tidelog.AppendRequest([ev("Issued")])}
        first = await store.commit(
            "g", "order", 0, 5, member="m1", generation=member.generation, appends=appends
        )
        again = await store.commit(
            "g", "order", 0, 9, member="m1", generation=member.generation, appends=appends
        )
        assert again == first
        assert await store.last_position() == 10
        assert await store.checkpoints("g", "order") == {0: 9}
    finally:
        await store.close()


async def test_concurrent_joins_from_several_engines_lose_no_update() -> None:
    """GroupState changes run under SELECT … FOR UPDATE: no join overwrites another."""
    url = _created.url("pool_max=2&listen=false")
    stores = [await tidelog.connect(url) for _ in range(3)]
    try:
        members = [f"m{i}" for i in range(12)]
        await asyncio.gather(
            *(
                stores[i % len(stores)].join_group("g", "order", m, lease=60)
                for i, m in enumerate(members)
            )
        )
        described = await stores[0].describe_group("g", "order")
        assert described is not None
        assert [m.member for m in described.members] == sorted(members)
        assert described.generation == len(members)
        owned = sorted(p for m in described.members for p in m.partitions)
        assert owned == list(range(stores[0].partition_count))
    finally:
        for store in stores:
            await store.close()


# --------------------------------------------------------------------------- cancellation


async def _open_transactions(store: postgres.PostgresEngine) -> list[tuple[int, str, str]]:
    """Backends of `store` inside a transaction, or holding its append lock, seen from
    another connection: the pool's connections, and any backend whose last statement
    was one of the store's (a terminated connection's backend, if it lingered)."""
    lock_class, lock_key = advisory_keys(store.config.schema)
    pids = [h._con.get_server_pid() for h in store._pool._holders if h._con is not None]
    conn = await asyncpg.connect(PG_DSN)
    try:
        rows = await conn.fetch(
            """SELECT a.pid, a.state, a.query FROM pg_stat_activity a
               WHERE a.pid <> pg_backend_pid() AND (
                 (a.state LIKE 'idle in transaction%' AND (a.pid = ANY($1::int[])
                  OR strpos(a.query, $2) > 0 OR strpos(a.query, $3) > 0))
                 OR EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid
                   AND l.locktype = 'advisory' AND l.classid::bigint = $4
                   AND l.objid::bigint = $5 AND l.granted))""",
            pids,
            f'"{store.config.schema}"',
            f"pg_advisory_xact_lock({lock_class}, {lock_key})",
            lock_class % 2**32,
            lock_key % 2**32,
        )
    finally:
        await conn.close()
    return [(r[0], r[1], r[2]) for r in rows]


async def _until_no_open_transactions(store: postgres.PostgresEngine, note: str = "") -> None:
    """Wait (boundedly) until `_open_transactions` finds none: the session of a dropped
    connection ends on the server when the statement it was running ends."""
    for _ in range(100):
        leaked = await _open_transactions(store)
        if not leaked:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{note} transactions left open: {leaked}")


async def test_cancelled_writes_leave_no_transaction_open_and_lose_or_repeat_nothing() -> None:
    """Appends, transactional commits and group changes are cancelled at random points,
    and so is the group commit's own task in the middle of its transactions. Afterwards
    no connection is left inside a transaction, the store works, every write that
    returned a result is stored exactly once where it said, no caller that was not
    cancelled saw a CancelledError, and retrying what had an unknown outcome is safe."""
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    # sslmode=disable: asyncpg's CancelRequest connection would first probe for TLS, and
    # logs a "Future exception was never retrieved" when the server closes it.
    store = await _created.open("pool_max=3&listen=false&sslmode=disable")
    assert isinstance(store, postgres.PostgresEngine)
    done: dict[uuid.UUID, tuple[str, int]] = {}  # event id -> (stream, position) returned
    unknown: dict[uuid.UUID, tuple[str, tidelog.NewEvent]] = {}
    surprises: list[BaseException] = []
    interrupted = 0
    # asyncpg reports a connection released to the pool inside a transaction here
    # ("Resetting connection with an active transaction") before rolling it back.
    loop = asyncio.get_running_loop()
    reports: list[str] = []

    def report(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        reports.append(str(context.get("message")))
        loop.default_exception_handler(context)

    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(report)
    try:
        member = await store.join_group("g", "order", "m1", lease=600)
        partition = member.partitions[0]

        async def append(i: int, patient: bool) -> None:
            stream = f"order-{i % 7}"
            event = ev()
            unknown[event.id] = (stream, event)
            try:
                if patient:
                    result = await store.append(stream, [event])
                else:
                    result = await asyncio.wait_for(
                        store.append(stream, [event]), rng.uniform(0, 0.01)
                    )
            except (TimeoutError, tidelog.StoreUnavailable):
                return
            except BaseException as exc:  # a CancelledError here is a leak
                surprises.append(exc)
                return
            del unknown[event.id]
            done[event.id] = (stream, result.position)

        async def commit(i: int) -> None:
            stream = f"invoice-{i % 5}"
            event = ev("Issued")
            unknown[event.id] = (stream, event)
            try:
                results = await asyncio.wait_for(
                    store.commit(
                        "g",
                        "order",
                        partition,
                        min(i + 1, store.head_watch().head),  # never beyond the head
                        member="m1",
                        generation=member.generation,
                        appends={stream: tidelog.AppendRequest([event])},
                    ),
                    rng.uniform(0, 0.03),
                )
            except (TimeoutError, tidelog.StoreUnavailable):
                return
            except BaseException as exc:
                surprises.append(exc)
                return
            del unknown[event.id]
            done[event.id] = (stream, results[stream].position)

        async def heartbeat() -> None:
            with contextlib.suppress(TimeoutError, tidelog.StoreUnavailable):
                await asyncio.wait_for(
                    store.heartbeat("g", "order", "m1", lease=600), rng.uniform(0, 0.01)
                )

        async def interrupt_the_writer(stop: asyncio.Event) -> None:
            nonlocal interrupted
            while not stop.is_set():
                await asyncio.sleep(rng.uniform(0, 0.06))
                drainer = store._drainer
                if drainer is not None and not drainer.done():
                    drainer.cancel()
                    interrupted += 1

        stop = asyncio.Event()
        interrupter = asyncio.create_task(interrupt_the_writer(stop))
        async with asyncio.timeout(60):
            for round_ in range(40):
                jobs = [append(round_ * 20 + k, patient=k % 4 == 0) for k in range(20)]
                jobs += [commit(round_ * 3 + k) for k in range(3)]
                jobs.append(heartbeat())
                rng.shuffle(jobs)
                await asyncio.gather(*jobs)
            stop.set()
            await interrupter
            if store._drainer is not None:
                await asyncio.wait([store._drainer])

        assert not surprises, f"seed {seed}: {surprises!r}"
        assert not [m for m in reports if "transaction" in m], f"seed {seed}: {reports}"
        # Writes were cut off with an unknown outcome. (On a loaded machine every
        # write of the chaos may end so; those are retried and checked below.)
        assert interrupted > 0 and unknown, f"seed {seed}: nothing was interrupted"
        await _until_no_open_transactions(store, f"seed {seed}")
        assert not any(h._con.is_in_transaction() for h in store._pool._holders if h._con)

        # The store still works: appends, group changes and commits, promptly.
        async with asyncio.timeout(10):
            member = await store.heartbeat("g", "order", "m1", lease=600)
            head = await store.last_position()
            await store.commit(
                "g", "order", partition, head, member="m1", generation=member.generation
            )
            assert (await store.checkpoints("g", "order"))[partition] == head
            # What had an unknown outcome is retried with the same ids: stored once.
            retried = await asyncio.gather(*(store.append(s, [e]) for s, e in unknown.values()))
            for (stream, event), result in zip(unknown.values(), retried, strict=True):
                done[event.id] = (stream, result.position)

        events = [e async for e in store.read_all()]
        assert [e.position for e in events] == list(range(1, len(events) + 1)), f"seed {seed}"
        assert len(events) == len(done), f"seed {seed}"
        assert {e.id: (e.stream, e.position) for e in events} == done, f"seed {seed}"
        for stream in {s for s, _ in done.values()}:
            versions = [e.version async for e in store.read_stream(stream)]
            assert versions == list(range(len(versions)))
    finally:
        loop.set_exception_handler(previous_handler)
        await store.close()


def _pool_pids(store: postgres.PostgresEngine) -> set[int]:
    return {h._con.get_server_pid() for h in store._pool._holders if h._con is not None}


async def _committing(store: postgres.PostgresEngine) -> set[int]:
    """The pool's connections running a COMMIT, once one is (polled, up to 10 s).

    Polled rather than looked at after a fixed sleep: on a loaded machine the
    append may not have reached its COMMIT yet when a sleep ends."""
    conn = await asyncpg.connect(PG_DSN)
    try:
        async with asyncio.timeout(10):
            while True:
                rows = await conn.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])"
                    " AND state = 'active' AND query = 'COMMIT'",
                    list(_pool_pids(store)),
                )
                if rows:
                    return {r[0] for r in rows}
                await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def test_a_cancelled_commit_is_an_unknown_outcome_and_its_connection_is_dropped() -> None:
    """COMMIT made slow by a deferred trigger, and cancelled while it runs: the group
    commit's callers (appends and transactional commits alike) get `StoreUnavailable`
    (not a CancelledError they never asked for), the connection is dropped rather
    than reused, a caller cancelled in `commit` gets its own CancelledError (the
    group commit it joined goes on), and retrying with the same ids is safe."""
    store = await _created.open("pool_max=2&listen=false&sslmode=disable")
    assert isinstance(store, postgres.PostgresEngine)
    schema = store.config.schema
    try:
        member = await store.join_group("g", "order", "m1", lease=600)
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(
                f"""CREATE FUNCTION "{schema}".slow() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN PERFORM pg_sleep(1.0); RETURN NULL; END $$;
                CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON "{schema}".events
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "{schema}".slow();"""
            )
        finally:
            await conn.close()

        # The group commit's own task is cancelled during COMMIT.
        event = ev()
        appending = asyncio.ensure_future(store.append("order-1", [event]))
        busy = await _committing(store)
        assert len(busy) == 1 and store._drainer is not None
        store._drainer.cancel()
        with pytest.raises(tidelog.StoreUnavailable):
            await appending
        assert not busy & _pool_pids(store)
        await _until_no_open_transactions(store)  # the dropped session ends on the server

        def commit(
            position: int, receipt: tidelog.NewEvent
        ) -> Awaitable[dict[str, tidelog.AppendResult]]:
            appends = {f"receipt-{position}": tidelog.AppendRequest([receipt])}
            return store.commit(
                "g",
                "order",
                0,
                position,
                member="m1",
                generation=member.generation,
                appends=appends,
            )

        # A transactional commit joins the group commit: so does its outcome.
        receipt = ev("Issued")
        committing = asyncio.ensure_future(commit(1, receipt))
        busy = await _committing(store)
        assert len(busy) == 1 and store._drainer is not None
        store._drainer.cancel()
        with pytest.raises(tidelog.StoreUnavailable):
            await committing
        assert not busy & _pool_pids(store)
        await _until_no_open_transactions(store)

        # A transactional commit is cancelled during COMMIT, in its caller's task.
        receipt2 = ev("Issued")
        committing = asyncio.ensure_future(commit(2, receipt2))
        busy = await _committing(store)
        assert len(busy) == 1 and store._drainer is not None
        committing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await committing
        await asyncio.wait([store._drainer])
        await _until_no_open_transactions(store)
        # Retries with the same ids: each event is stored exactly once.
        assert (await store.append("order-1", [event])).version == 0
        for position, stored in ((1, receipt), (2, receipt2)):
            again = await commit(position, stored)
            assert again[f"receipt-{position}"].version == 0
        events = [e async for e in store.read_all()]
        assert sorted(e.id for e in events) == sorted([event.id, receipt.id, receipt2.id])
        assert await store.checkpoints("g", "order") == {0: 2}
    finally:
        await store.close()


async def test_scheduling_keeps_pending_and_claimed_events_of_a_schema_from_before_claim_rows() -> (
    None
):
    """A schema scheduled by the first version (no `scheduled_claims`; a claim moved the
    rows' ready time past their due time) loses nothing and delivers nothing twice."""
    url = _created.url()
    async with await tidelog.connect(url) as store:
        assert isinstance(store, postgres.PostgresEngine)
        schema = store.config.schema
        pending, claimed = await schedule_pending_and_claimed(store)
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP TABLE "{schema}".scheduled_claims')
        await conn.execute(
            f'UPDATE "{schema}".scheduled SET ready_at = due_at + 7200000000 WHERE id = $1',
            claimed.id,
        )
    finally:
        await conn.close()
    await check_old_claims_upgraded(url, pending, claimed)


async def test_scheduling_table_creation_takes_no_table_lock_once_the_tables_exist() -> None:
    """The first schedules of a store each make sure the tables exist; once they do, that
    check must not lock them: `CREATE INDEX IF NOT EXISTS` waits for a SHARE lock, and
    against a scheduler's forget (claims, then rows, locked in one transaction) it
    deadlocked (`40P01` in `scheduled_lateness`)."""
    url = _created.url()
    async with await tidelog.connect(url) as store:
        assert isinstance(store, postgres.PostgresEngine)
        schema = store.config.schema
        await store.append("order-1", [ev("Later")], deliver_after=timedelta(hours=1))
        conn = await asyncpg.connect(PG_DSN)
        try:
            async with conn.transaction():  # a forget in progress holds this lock
                await conn.execute(f'DELETE FROM "{schema}".scheduled_claims WHERE false')
                # A hang guard, not a timing assertion: before, this waited for the lock.
                await asyncio.wait_for(store._pending_table._create(), 30)
        finally:
            await conn.close()
        assert await store.count_scheduled() == 1
