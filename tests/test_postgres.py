"""The PostgreSQL engine: the conformance suite, the model test, and what is its own.

Needs the PostgreSQL server on 127.0.0.1:5432 (database `test`); every store
lives in a fresh schema that is dropped after its test.
"""

from __future__ import annotations

import asyncio
import pathlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
import pytest_asyncio

import tidelog
from _pg_util import PG_DSN, Schemas, new_schema, require_postgres
from tidelog.engines import postgres
from tidelog.engines._pg_errors import pg_errors, translate
from tidelog.engines._pg_schema import LATEST_VERSION, MIGRATIONS, current_version, migrate
from tidelog.testing.conformance import EngineSuite
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


class TestPostgresModel(ModelSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await _created.open("pool_max=2&partitions=4")


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


async def test_an_unforeseen_write_error_fails_only_its_own_append() -> None:
    """A failure the engine's checks cannot predict (here a trigger) is pinned on its append
    by redoing the batch with a SAVEPOINT per append; the others still commit."""
    store = await _created.open()
    try:
        assert isinstance(store, postgres.PostgresEngine)
        schema = store.config.schema
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
