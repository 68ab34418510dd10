"""The SQLite engine: the conformance suite, the model test, and what only SQLite has.

SQLite-specific behaviour tested here: group commit (many concurrent appends in
one transaction, a conflict failing only its own append), durability across
reopening, the URL options, schema migrations, and error translation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import random
import sqlite3
from collections.abc import Awaitable
from uuid import uuid4

import msgspec
import pytest

import tidelog
from tidelog import (
    NO_STREAM,
    AppendRequest,
    DuplicateEventId,
    InvalidURL,
    NewEvent,
    NotSupported,
    StoreClosed,
    StoreUnavailable,
    StreamDeleted,
    WrongExpectedVersion,
)
from tidelog.engines.sqlite import SQLiteEngine
from tidelog.engines.sqlite import engine as sqlite_engine
from tidelog.engines.sqlite.db import MIGRATIONS, SCHEMA_VERSION, migrate, schema_version
from tidelog.retention import RetentionPolicy
from tidelog.testing.conformance import EngineSuite
from tidelog.testing.retention import RetentionSuite
from tidelog.testing.retention_model import RetentionModelSuite
from tidelog.testing.scheduling import SchedulingSuite
from tidelog.testing.stateful import ModelSuite


def _url(path: pathlib.Path, query: str = "") -> str:
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


class TestSQLiteEngine(EngineSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect(_url(tmp_path / f"{uuid4()}.db"))


class TestSQLiteRetention(RetentionSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect(_url(tmp_path / f"{uuid4()}.db"))


async def test_retention_gives_the_space_back(tmp_path: pathlib.Path) -> None:
    """A new file has incremental auto-vacuum: the scavenger's deletes shrink it."""
    path = tmp_path / "queue.db"
    async with await _open(path) as store:
        payload = os.urandom(4000)
        for i in range(200):  # 8 MB: more free pages than appends would soon reuse
            await store.append(f"job-{i}", [NewEvent(type="Job", data=payload) for _ in range(10)])
        await db_truncate(path)
        full = path.stat().st_size
        await store.set_retention(RetentionPolicy(max_count=1), category="job")
        report = await store.scavenge()
        assert report.deleted == 200 * 9
        await db_truncate(path)
        # Given back but a slack (4 MiB, or a quarter of the file) kept for appends.
        assert path.stat().st_size < full / 2
        assert [e.version async for e in store.read_stream("job-7")] == [9]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL


async def db_truncate(path: pathlib.Path) -> None:
    from tidelog.engines.sqlite.db import truncate_wal

    await asyncio.to_thread(truncate_wal, str(path), 5.0)


class TestSQLiteRetentionModel(RetentionModelSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect(_url(tmp_path / f"{uuid4()}.db"))


class TestSQLiteScheduling(SchedulingSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect(_url(tmp_path / f"{uuid4()}.db"))

    async def open_same(self, store: tidelog.Store) -> tidelog.Store:
        assert isinstance(store, SQLiteEngine)
        return await tidelog.connect(_url(pathlib.Path(store.config.path)))


class TestSQLiteModel(ModelSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect(_url(tmp_path / f"{uuid4()}.db", "partitions=4"))


async def _open(path: pathlib.Path, query: str = "") -> SQLiteEngine:
    store = await tidelog.connect(_url(path, query))
    assert isinstance(store, SQLiteEngine)
    return store


def _events(n: int, type_: str = "Happened") -> list[NewEvent]:
    return [NewEvent(type=type_, data=f"{i}".encode()) for i in range(n)]


# --------------------------------------------------------------------------- group commit


async def test_concurrent_appends_share_transactions(tmp_path: pathlib.Path) -> None:
    store = await _open(tmp_path / "g.db")
    try:
        before = store.transaction_count
        results = await asyncio.gather(*(store.append(f"order-{i}", _events(1)) for i in range(64)))
        used = store.transaction_count - before
        # 64 appends queued at once are gathered: far fewer transactions than appends.
        assert 1 <= used < 64 // 4
        assert sorted(r.position for r in results) == list(range(1, 65))
        assert all(r.version == 0 for r in results)
    finally:
        await store.close()


async def test_conflict_in_a_batch_fails_only_that_append(tmp_path: pathlib.Path) -> None:
    store = await _open(tmp_path / "c.db")
    try:
        await store.append("order-1", _events(2))
        taken = NewEvent(type="Taken")
        await store.append("order-9", [taken])
        await store.append("order-dead", _events(1))
        await store.delete_stream("order-dead")
        before = store.transaction_count
        outcomes = await asyncio.gather(
            store.append("order-2", _events(3)),
            store.append("order-1", _events(1), expected_version=0),  # actual is 1
            store.append("order-3", _events(2)),
            store.append("order-dead", _events(1)),
            store.append("order-4", [NewEvent(type="X"), taken]),  # taken lives in order-9
            store.append("order-1", _events(1), expected_version=1),
            return_exceptions=True,
        )
        assert store.transaction_count - before < len(outcomes)
        ok2, wrong, ok3, dead, dup, ok1 = outcomes
        assert isinstance(wrong, WrongExpectedVersion) and wrong.actual == 1
        assert isinstance(dead, StreamDeleted)
        assert isinstance(dup, DuplicateEventId)
        assert not isinstance(ok2, BaseException) and ok2.version == 2
        assert not isinstance(ok3, BaseException) and ok3.version == 1
        assert not isinstance(ok1, BaseException) and ok1.version == 2
        # The log holds exactly the successful appends, gap-free.
        log = [e async for e in store.read_all()]
        assert [e.position for e in log] == list(range(1, len(log) + 1))
        assert len(log) == 2 + 1 + 1 + 3 + 2 + 1
        assert [e async for e in store.read_stream("order-4")] == []
    finally:
        await store.close()


async def test_idempotent_retry_within_one_batch(tmp_path: pathlib.Path) -> None:
    """Two identical appends in one batch: the second is the retry of the first."""
    store = await _open(tmp_path / "r.db")
    try:
        events = _events(3)
        first, second = await asyncio.gather(
            store.append("order-1", events, expected_version=NO_STREAM),
            store.append("order-1", events, expected_version=NO_STREAM),
        )
        assert first == second
        assert len([e async for e in store.read_all()]) == 3
    finally:
        await store.close()


def _random_requests(rng: random.Random, n: int, reuse: float) -> list[tuple[str, object]]:
    """A mix of appends and append_many requests that conflict, retry and collide.

    Streams are few so that requests in one batch touch the same streams;
    ids are drawn from a small pool so that retries, mixes and duplicates
    across requests all happen.
    """
    pool = [uuid4() for _ in range(12)]
    streams = ["acct-1", "acct-2", "acct-3", "order-1"]
    expected_choices: list[object] = [tidelog.ANY, NO_STREAM, tidelog.STREAM_EXISTS, 0, 1, 2, 3]

    def events() -> list[NewEvent]:
        k = rng.randint(1, 3)
        ids = rng.sample(pool, k) if rng.random() < reuse else [uuid4() for _ in range(k)]
        return [NewEvent(type="T", data=b"%d" % i, id=id_) for i, id_ in enumerate(ids)]

    out: list[tuple[str, object]] = []
    for _ in range(n):
        if rng.random() < 0.15:
            chosen = rng.sample(streams, 2)
            many = {s: AppendRequest(events(), rng.choice(expected_choices)) for s in chosen}  # type: ignore[arg-type]
            out.append(("many", many))
        else:
            out.append(("one", (rng.choice(streams), events(), rng.choice(expected_choices))))
    return out


def _outcome(result: object) -> object:
    return type(result).__name__ if isinstance(result, BaseException) else result


@pytest.mark.parametrize("reuse", [0.0, 0.02, 0.3])
@pytest.mark.parametrize("seed", range(6))
async def test_batched_appends_agree_with_one_at_a_time(
    tmp_path: pathlib.Path, seed: int, reuse: float
) -> None:
    """Concurrent requests gathered into batches end exactly as if run one by one.

    The writer runs consecutive appends of a batch in bulk and falls back to
    one savepoint per request when an id is already stored; the memory engine
    applying the same requests in the same order is the reference. `reuse` is
    how often an append takes ids from a small shared pool (retries, mixes,
    duplicates), which sends its whole run down the fallback path.
    """
    rng = random.Random(seed)
    requests = _random_requests(rng, 160, reuse)
    store = await _open(tmp_path / "b.db")
    reference = await tidelog.connect("memory://")

    def call(target: tidelog.Store, request: tuple[str, object]) -> Awaitable[object]:
        kind, args = request
        if kind == "many":
            return target.append_many(args)  # type: ignore[arg-type]
        stream, events, expected = args  # type: ignore[misc]
        return target.append(stream, events, expected)

    try:
        batched: list[object] = []
        before = store.transaction_count
        for i in range(0, len(requests), 20):
            chunk = requests[i : i + 20]
            batched += await asyncio.gather(
                *(call(store, r) for r in chunk), return_exceptions=True
            )
        assert store.transaction_count - before < len(requests) // 2  # they really were batched
        one_by_one = []
        for r in requests:
            try:
                one_by_one.append(await call(reference, r))
            except tidelog.TidelogError as exc:
                one_by_one.append(exc)
        assert [_outcome(x) for x in batched] == [_outcome(x) for x in one_by_one]
        assert [e async for e in store.read_all()] == [
            msgspec.structs.replace(e, recorded_at=mine.recorded_at)
            for e, mine in zip(
                [e async for e in reference.read_all()],
                [e async for e in store.read_all()],
                strict=True,
            )
        ]
    finally:
        await store.close()
        await reference.close()


async def test_failed_commit_appends_roll_back_with_the_checkpoint(tmp_path: pathlib.Path) -> None:
    store = await _open(tmp_path / "t.db", "partitions=1")
    try:
        m = await store.join_group("g", "order", "m1")
        await store.append("invoice-1", _events(1))
        with pytest.raises(WrongExpectedVersion):
            await store.commit(
                "g",
                "order",
                0,
                1,
                member="m1",
                generation=m.generation,
                appends={
                    "invoice-2": AppendRequest(_events(1)),
                    "invoice-1": AppendRequest(_events(1), expected_version=NO_STREAM),
                },
            )
        assert await store.checkpoints("g", "order") == {}
        assert [s.name async for s in store.list_streams("invoice")] == ["invoice-1"]
    finally:
        await store.close()


# --------------------------------------------------------------------------- durability, options


async def test_reopen_keeps_everything(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "keep.db"
    store = await _open(path, "partitions=4")
    appended = [await store.append(f"order-{i % 3}", _events(2)) for i in range(10)]
    await store.delete_stream("order-2")
    m = await store.join_group("g", "order", "m1", lease=60)
    await store.commit("g", "order", 1, 7, member="m1", generation=m.generation)
    await store.close()

    again = await _open(path)
    try:
        assert again.partition_count == 4
        assert await again.last_position() == appended[-1].position == 20
        assert [e.position async for e in again.read_all()] == list(range(1, 21))
        with pytest.raises(StreamDeleted):
            [e async for e in again.read_stream("order-2")]
        assert [e.version async for e in again.read_stream("order-1")] == list(range(6))
        assert await again.checkpoints("g", "order") == {1: 7}
        described = await again.describe_group("g", "order")
        assert described is not None and [x.member for x in described.members] == ["m1"]
    finally:
        await again.close()


async def test_partition_count_is_fixed_at_creation(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.db"
    await (await _open(path, "partitions=8")).close()
    with pytest.raises(InvalidURL):
        await _open(path, "partitions=16")
    store = await _open(path, "partitions=8")
    assert store.partition_count == 8
    await store.close()


@pytest.mark.parametrize(("query", "expected"), [("", 2), ("synchronous=normal", 1)])
async def test_synchronous_option(tmp_path: pathlib.Path, query: str, expected: int) -> None:
    store = await _open(tmp_path / "s.db", query)
    try:
        assert store.config.synchronous == ("normal" if expected == 1 else "full")
        mode = store._writer.conn.execute("PRAGMA synchronous").fetchone()[0]
        assert mode == expected  # FULL = 2, NORMAL = 1
        journal = store._writer.conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert journal == "wal"
    finally:
        await store.close()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://host/x.db",
        "sqlite:///",
        "sqlite:///x.db?synchronous=off",
        "sqlite:///x.db?partitions=0",
        "sqlite:///x.db?busy_timeout=-1",
        "sqlite:///x.db?bogus=1",
    ],
)
async def test_bad_urls_are_refused(
    url: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a wrongly accepted URL must not litter the working tree
    with pytest.raises(InvalidURL):
        await tidelog.connect(url)


async def test_relative_path_is_relative_to_cwd_and_parents_are_created(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = await _open(pathlib.Path("nested/dir/rel.db"))
    await store.append("order-1", _events(1))
    await store.close()
    assert (tmp_path / "nested" / "dir" / "rel.db").is_file()
    absolute = await tidelog.connect(f"sqlite:///{tmp_path}/nested/dir/rel.db")
    assert await absolute.last_position() == 1
    await absolute.close()


async def test_close_is_idempotent_and_refuses_afterwards(tmp_path: pathlib.Path) -> None:
    store = await _open(tmp_path / "x.db")
    await store.close()
    await store.close()
    with pytest.raises(StoreClosed):
        await store.append("order-1", _events(1))
    with pytest.raises(StoreClosed):
        await store.last_position()


async def test_appends_queued_before_close_complete(tmp_path: pathlib.Path) -> None:
    store = await _open(tmp_path / "q.db")
    pending = [asyncio.ensure_future(store.append(f"order-{i}", _events(1))) for i in range(20)]
    await asyncio.sleep(0)  # let them all reach the writer's queue
    await store.close()
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(not isinstance(r, BaseException) for r in results)
    again = await _open(tmp_path / "q.db")
    assert await again.last_position() == 20
    await again.close()


# --------------------------------------------------------------------------- schema


async def test_migration_from_an_older_schema(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "old.db"
    assert migrate(path, target=1) == 1
    # A version-1 file written by hand: events and streams, no group tables yet.
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO meta VALUES ('partitions', '4')")
        conn.execute(
            "INSERT INTO events VALUES (1, ?, 'order-1', 0, 'Made', x'01', '{}', 0, 1, 'order', 0)",
            (uuid4().bytes,),
        )
        conn.execute("INSERT INTO streams VALUES ('order-1', 'order', 0, 0)")
    conn.close()
    assert schema_version(path) == 1

    store = await _open(path)
    try:
        assert schema_version(path) == SCHEMA_VERSION == MIGRATIONS[-1][0]
        assert store.partition_count == 4
        [old] = [e async for e in store.read_stream("order-1")]
        assert old.data == b"\x01" and old.position == 1
        assert (await store.append("order-1", _events(1), expected_version=0)).position == 2
        m = await store.join_group("g", "order", "m1")  # needs the version-2 tables
        await store.commit("g", "order", 0, 2, member="m1", generation=m.generation)
        assert await store.checkpoints("g", "order") == {0: 2}
    finally:
        await store.close()
    assert migrate(path) == SCHEMA_VERSION  # running it again changes nothing
    conn = sqlite3.connect(path)
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    conn.close()
    assert "events_category_partition_position" in indexes  # added by step 3


async def test_a_newer_schema_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "new.db"
    migrate(path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(NotSupported):
        await _open(path)


async def test_a_foreign_file_is_store_unavailable(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StoreUnavailable) as info:
        await _open(path)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)


# --------------------------------------------------------------------------- reads


async def test_reads_are_paged(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_engine, "PAGE_SIZE", 7)
    store = await _open(tmp_path / "page.db", "partitions=2")
    try:
        for i in range(5):
            await store.append(f"order-{i % 2}", _events(5))
            await store.append(f"user-{i}", _events(2, "Other"))
        everything = [e async for e in store.read_all()]
        assert [e.position for e in everything] == list(range(1, 36))
        orders = [e async for e in store.read_all(categories=["order"])]
        assert [e.position for e in orders] == [
            e.position for e in everything if e.category == "order"
        ]
        both = [e async for e in store.read_all(categories=["order", "user"], limit=20)]
        assert [e.position for e in both] == list(range(1, 21))
        assert [e.version async for e in store.read_stream("order-0")] == list(range(15))
        back = [e.version async for e in store.read_stream("order-0", -1, backwards=True, limit=9)]
        assert back == list(range(14, 5, -1))
        assert len([s async for s in store.list_streams()]) == 7
        part0 = [e async for e in store.read_all(partitions=[0])]
        assert {tidelog.partition_of(e.stream, 2) for e in part0} == {0}
    finally:
        await store.close()


# --------------------------------------------------------------------------- other processes' locks


async def test_a_briefly_held_lock_is_waited_out(tmp_path: pathlib.Path) -> None:
    """Another connection holding the write lock delays an append; SQLITE_BUSY never shows."""
    path = tmp_path / "lock.db"
    store = await _open(path, "busy_timeout=10")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        pending = asyncio.ensure_future(store.append("order-1", _events(1)))
        await asyncio.sleep(0.3)
        assert not pending.done()  # it waits for the lock
        other.execute("ROLLBACK")
        assert (await pending).position == 1
    finally:
        other.close()
        await store.close()


async def test_a_lock_held_past_busy_timeout_is_store_unavailable(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "stuck.db"
    store = await _open(path, "busy_timeout=0.3")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable) as info:
            await store.append("order-1", _events(1))
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        other.execute("ROLLBACK")
        # Nothing of the failed append was written; the store works again.
        assert (await store.append("order-1", _events(1), expected_version=NO_STREAM)).position == 1
    finally:
        other.close()
        await store.close()


async def test_limit_zero_read_of_a_deleted_stream_raises(tmp_path: pathlib.Path) -> None:
    """Found by the model test: the tombstone is checked even when nothing is to be read."""
    store = await _open(tmp_path / "z.db")
    try:
        await store.append("order-1", _events(1))
        await store.delete_stream("order-1")
        with pytest.raises(StreamDeleted):
            [e async for e in store.read_stream("order-1", limit=0)]
    finally:
        await store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # 3.12+: fork with threads
async def test_a_forked_child_cannot_use_the_parents_store(tmp_path: pathlib.Path) -> None:
    """Connections and threads do not survive fork(): the child gets StoreClosed, not a hang."""
    store = await _open(tmp_path / "f.db")
    try:
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code only
            try:
                store._check_open()
            except StoreClosed:
                os._exit(0)
            os._exit(1)
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert (await store.append("order-1", _events(1))).position == 1  # the parent is fine
    finally:
        await store.close()


@pytest.mark.parametrize("autocheckpoint", [True, False])
async def test_wal_stays_bounded_under_a_constant_reader(
    tmp_path: pathlib.Path, autocheckpoint: bool
) -> None:
    """SQLite's automatic checkpoints keep up although a subscriber reads all the time.

    The control (automatic checkpoints off) shows that the measure can fail.
    """
    path = tmp_path / "wal.db"
    store = await _open(path)
    if not autocheckpoint:
        store._writer.conn.execute("PRAGMA wal_autocheckpoint = 0")
    seen = 0

    async def follow() -> None:
        nonlocal seen
        async for _ in store.subscribe():
            seen += 1

    task = asyncio.ensure_future(follow())
    try:
        for i in range(200):  # 20 MB of events
            await store.append(
                f"order-{i % 20}", [NewEvent(type="Big", data=bytes(1000)) for _ in range(100)]
            )
        wal = path.with_name(path.name + "-wal").stat().st_size
        assert seen > 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
    if autocheckpoint:
        assert wal < 16 * 2**20, f"WAL grew to {wal} bytes"
    else:
        assert wal > 16 * 2**20


async def test_cancelling_a_subscription_task_ends_it(tmp_path: pathlib.Path) -> None:
    """A cancel that lands as the head watch fires must still end the subscription."""
    store = await _open(tmp_path / "cancel.db")

    async def follow() -> None:
        async for _ in store.subscribe():
            pass

    try:
        for i in range(30):
            task = asyncio.ensure_future(follow())
            for _ in range(3):
                await store.append(f"order-{i}", _events(1))
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=20)
            assert task in done, "the cancelled subscription kept running"
    finally:
        await store.close()


async def test_count_events_agrees_with_read_all(tmp_path: pathlib.Path) -> None:
    store = await _open(tmp_path / "count.db", "partitions=4")
    try:
        for i in range(12):
            await store.append(f"order-{i}", _events(i % 3 + 1))
            await store.append(f"user-{i}", _events(1))
        cases: list[tuple[int, list[str] | None, list[int] | None]] = [
            (0, None, None),
            (5, None, None),
            (0, ["order"], None),
            (7, ["order"], [1]),
            (0, ["order"], [0, 2]),
            (3, ["order", "user"], None),
            (0, None, [3]),
            (0, [], None),
            (0, ["order"], []),
        ]
        for start, cats, parts in cases:
            expected = len(
                [e async for e in store.read_all(start, categories=cats, partitions=parts)]
            )
            assert await store.count_events(start, cats, parts) == expected, (start, cats, parts)
    finally:
        await store.close()
