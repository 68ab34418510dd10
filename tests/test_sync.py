"""The synchronous API, `tidelog.sync`: the contract through the facade, and what is its own.

The conformance suite runs unchanged through the facade (`support.sync_adapter`
turns it back into an async store by calling it from worker threads), on the
memory engine and on SQLite. The tests below it cover what only the facade
has: one loop thread per store, thread safety, closing iterators and the
store while threads wait in them, re-entrant calls, `Repository` and
`Producer`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import inspect
import pathlib
import threading
from collections.abc import Iterator
from uuid import uuid4

import msgspec
import pytest

import tidelog
import tidelog.sync
from support.sync_adapter import open_through_sync
from tidelog.testing.conformance import EngineSuite

WAIT = 10.0
"""Upper bound on any wait for another thread: a hang fails instead of stalling."""


class TestSyncOverMemory(EngineSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await open_through_sync("memory://")


class TestSyncOverSQLite(EngineSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await open_through_sync(f"sqlite:///{tmp_path}/{uuid4()}.db")


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Iterator[tidelog.sync.SyncStore]:
    with tidelog.sync.connect(f"sqlite:///{tmp_path}/sync.db") as opened:
        yield opened


def ev(type: str = "Happened", data: bytes = b"{}", **kwargs: object) -> tidelog.NewEvent:
    return tidelog.NewEvent(type=type, data=data, **kwargs)  # type: ignore[arg-type]


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tidelog-sync"]


def _finalised(source: object) -> bool:
    """Whether an async generator has run its `finally` blocks and released its frame."""
    assert inspect.isasyncgen(source), source
    return source.ag_frame is None


def _started(target: object, *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


# --------------------------------------------------------------------------- the facade


def test_the_facade_has_every_public_name_of_the_async_contract() -> None:
    """Fails when `tidelog.Store` gains a public method or attribute the facade lacks."""
    public = {name for name in dir(tidelog.Store) if not name.startswith("_")}
    missing = sorted(
        name
        for name in public
        if not hasattr(tidelog.sync.SyncStore, name) and name not in tidelog.sync.NOT_IN_SYNC
    )
    assert missing == []
    assert set(tidelog.sync.NOT_IN_SYNC) <= public, "a stale exclusion"
    for name in public - set(tidelog.sync.NOT_IN_SYNC):
        contract = inspect.getattr_static(tidelog.Store, name)
        facade = inspect.getattr_static(tidelog.sync.SyncStore, name)
        if callable(contract):
            # the same arguments and defaults; only the return type may differ
            arguments = inspect.signature(facade).parameters
            assert arguments == inspect.signature(contract).parameters, name
            assert not inspect.iscoroutinefunction(facade), name
    assert "SyncIterator" in str(inspect.signature(tidelog.sync.SyncStore.subscribe))


def test_plain_values_and_plain_iterators(store: tidelog.sync.SyncStore) -> None:
    result = store.append("order-1", [ev("Placed"), ev("Paid")], tidelog.NO_STREAM)
    assert result == tidelog.AppendResult(version=1, position=2)
    events = store.read_stream("order-1")
    assert isinstance(events, Iterator) and not hasattr(events, "__anext__")
    assert [(e.version, e.type) for e in events] == [(0, "Placed"), (1, "Paid")]
    assert [e.position for e in store.read_all(from_position=2)] == [2]
    assert [s.name for s in store.list_streams()] == ["order-1"]
    assert store.last_position() == 2
    assert store.count_events() == 2
    assert store.partition_count >= 1 and store.name == "sqlite"


def test_errors_are_the_async_store_errors_raised_where_async_raises_them(
    store: tidelog.sync.SyncStore,
) -> None:
    store.append("order-1", [ev()])
    with pytest.raises(tidelog.WrongExpectedVersion) as caught:
        store.append("order-1", [ev()], tidelog.NO_STREAM)
    assert caught.value.actual == 0
    with pytest.raises(tidelog.InvalidStreamName):
        store.read_stream("bad name")  # at the call, before any iteration, as in async code
    assert store.last_position() == 1


def test_one_loop_in_one_thread_per_store_stopped_by_close(tmp_path: pathlib.Path) -> None:
    before = len(_loop_threads())
    first = tidelog.sync.connect("memory://")
    second = tidelog.sync.connect(f"sqlite:///{tmp_path}/x.db")
    assert len(_loop_threads()) == before + 2

    async def loop_and_thread() -> tuple[asyncio.AbstractEventLoop, int]:
        return asyncio.get_running_loop(), threading.get_ident()

    seen = {first.run(loop_and_thread()) for _ in range(5)}
    first.append("order-1", [ev()])
    seen.add(first.run(loop_and_thread()))
    assert len(seen) == 1, "every call runs on the same loop (no asyncio.run per call)"
    assert seen != {second.run(loop_and_thread())}
    first.close()
    first.close()  # idempotent
    assert len(_loop_threads()) == before + 1
    with pytest.raises(tidelog.StoreClosed):
        first.append("order-1", [ev()])
    with pytest.raises(tidelog.StoreClosed):
        first.read_all()
    second.close()
    assert len(_loop_threads()) == before


def test_a_store_dropped_unclosed_warns_and_stops_its_thread() -> None:
    before = set(_loop_threads())
    store = tidelog.sync.connect("memory://")
    store.append("order-1", [ev()])
    (thread,) = set(_loop_threads()) - before
    with pytest.warns(ResourceWarning, match="not closed"):
        del store
        gc.collect()
    thread.join(WAIT)
    assert not thread.is_alive()


def test_an_iterator_keeps_its_store_open(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path}/kept.db"
    with tidelog.sync.connect(url) as store:
        store.append("order-1", [ev(), ev()])
    events = tidelog.sync.connect(url).read_all()  # the store is not named anywhere else
    gc.collect()
    assert [e.position for e in events] == [1, 2]
    events._owner.close()


def test_a_thread_that_reuses_the_closed_loop_threads_id_is_not_taken_for_it() -> None:
    """Thread ids are reused once a thread ends (glibc hands the next thread its
    stack): a call from such a thread is an ordinary call on a closed store."""
    before = set(_loop_threads())
    store = tidelog.sync.connect("memory://")
    (loop_thread,) = set(_loop_threads()) - before
    old_id = loop_thread.ident
    store.close()
    seen: list[tuple[int, BaseException | None]] = []

    def call() -> None:
        try:
            store.last_position()
        except BaseException as exc:
            seen.append((threading.get_ident(), exc))

    for _ in range(20):
        thread = _started(call)
        thread.join(WAIT)
    assert all(isinstance(exc, tidelog.StoreClosed) for _, exc in seen), seen
    assert old_id in {ident for ident, _ in seen}, "no thread reused the id: nothing tested"


def test_a_store_that_cannot_open_raises_and_leaves_no_thread() -> None:
    before = len(_loop_threads())
    with pytest.raises(tidelog.InvalidURL):
        tidelog.sync.connect("nosuch://x")
    assert len(_loop_threads()) == before


def test_many_threads_at_once(store: tidelog.sync.SyncStore) -> None:
    threads, appends_each = 8, 25

    def writer(index: int) -> None:
        for n in range(appends_each):
            # exact expected versions: a lost or repeated append would raise
            store.append(f"w{index}-a", [ev()], tidelog.NO_STREAM if n == 0 else n - 1)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for done in [pool.submit(writer, i) for i in range(threads)]:
            done.result(timeout=WAIT * 3)
    positions = [e.position for e in store.read_all()]
    assert positions == list(range(1, threads * appends_each + 1))
    for index in range(threads):
        versions = [e.version for e in store.read_stream(f"w{index}-a")]
        assert versions == list(range(appends_each))


def test_a_call_from_the_loop_thread_raises_instead_of_deadlocking(
    store: tidelog.sync.SyncStore,
) -> None:
    async def blocking_call_on_the_loop() -> None:
        store.append("order-1", [ev()])

    with pytest.raises(tidelog.sync.ReentrantCall) as caught:
        store.run(blocking_call_on_the_loop())
    assert "append()" in str(caught.value) and isinstance(caught.value, RuntimeError)

    async def close_on_the_loop() -> None:
        store.close()

    with pytest.raises(tidelog.sync.ReentrantCall):
        store.run(close_on_the_loop())

    async def iterate_on_the_loop() -> None:
        next(store.read_all())

    with pytest.raises(tidelog.sync.ReentrantCall):
        store.run(iterate_on_the_loop())
    # nothing was written, and the store still works
    assert store.append("order-1", [ev()]).position == 1


# --------------------------------------------------------------------------- iterators


def test_closing_an_unfinished_iterator_closes_its_async_generator(
    store: tidelog.sync.SyncStore,
) -> None:
    store.append("order-1", [ev() for _ in range(5)])
    for events in (store.read_all(), store.subscribe(), store.read_stream("order-1")):
        with events:
            assert next(events).position == 1
            source = events._source
        assert _finalised(source)
        assert next(events, None) is None  # a closed iterator is exhausted
        events.close()  # idempotent


def test_a_dropped_iterator_is_finalised_on_the_loop(store: tidelog.sync.SyncStore) -> None:
    store.append("order-1", [ev(), ev()])
    events = store.subscribe()
    next(events)
    source = events._source
    del events
    gc.collect()
    for _ in range(100):
        if _finalised(source):
            break
        store.run(asyncio.sleep(0.01))
    assert _finalised(source)


def test_closing_an_iterator_another_thread_waits_in_ends_that_thread(
    store: tidelog.sync.SyncStore,
) -> None:
    store.append("order-1", [ev()])
    subscription = store.subscribe()
    received: list[int] = []
    first = threading.Event()

    def consume() -> None:
        for event in subscription:  # waits live after the first event
            received.append(event.position)
            first.set()

    consumer = _started(consume)
    assert first.wait(WAIT)
    subscription.close()
    consumer.join(WAIT)
    assert not consumer.is_alive()
    assert received == [1]
    store.append("order-2", [ev()])  # the store is unaffected
    assert [e.position for e in store.read_all()] == [1, 2]


def test_closing_the_store_ends_waiting_subscribers_and_unfinished_iterators(
    tmp_path: pathlib.Path,
) -> None:
    store = tidelog.sync.connect(f"sqlite:///{tmp_path}/s.db")
    store.append("order-1", [ev() for _ in range(3)])
    half_read = store.read_all()
    next(half_read)
    outcome: list[BaseException] = []
    waiting = threading.Event()

    def consume() -> None:
        try:
            for _ in store.subscribe(from_position=4):
                pass
        except BaseException as exc:
            outcome.append(exc)

    consumer = _started(consume)
    waiting.wait(0.2)  # let it reach its live wait (either way it must end)
    store.close()
    consumer.join(WAIT)
    assert not consumer.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], tidelog.StoreClosed)
    assert _finalised(half_read._source)
    with pytest.raises(tidelog.StoreClosed):
        next(half_read)
    half_read.close()  # nothing left to do, and no error


# --------------------------------------------------------------------------- toolkit


class Counted(msgspec.Struct):
    by: int


class Counter(tidelog.Aggregate):
    category = "counter"
    total: int = 0

    def add(self, by: int) -> None:
        self.record(Counted(by))

    @tidelog.applies
    def _counted(self, e: Counted) -> None:
        self.total += e.by


REG = tidelog.EventRegistry()
REG.register(Counted, "Counted")


def test_repository_from_sync_code(store: tidelog.sync.SyncStore) -> None:
    repo = tidelog.sync.Repository(store, Counter, registry=REG)
    counter = repo.create("7")
    counter.add(2)
    counter.add(3)
    repo.save(counter)
    loaded = repo.get("7")
    assert (loaded.total, loaded.version) == (5, 1)
    assert [e.type for e in store.read_stream("counter-7")] == ["Counted", "Counted"]
    stale = repo.get("7")
    loaded.add(1)
    repo.save(loaded)
    stale.add(10)
    with pytest.raises(tidelog.WrongExpectedVersion):
        repo.save(stale)
    assert repo.get("7").total == 6
    assert repo.get_or_create("8").version is None
    with pytest.raises(tidelog.AggregateNotFound):
        repo.get("8")


def test_producer_from_sync_code_and_many_threads(store: tidelog.sync.SyncStore) -> None:
    with tidelog.sync.Producer(store, linger=0.01) as producer:
        futures: list[concurrent.futures.Future[tidelog.AppendResult]] = []
        lock = threading.Lock()

        def send(index: int) -> None:
            for _ in range(10):
                future = producer.send(f"thread-{index}", ev())
                with lock:
                    futures.append(future)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for done in [pool.submit(send, i) for i in range(4)]:
                done.result(timeout=WAIT)
        results = [f.result(timeout=WAIT) for f in futures]
        with pytest.raises(tidelog.InvalidStreamName):
            producer.send("bad name", ev())  # checked at the call
        conflict = producer.send("thread-0", ev(), tidelog.NO_STREAM)
        producer.flush()
        with pytest.raises(tidelog.WrongExpectedVersion):
            conflict.result(timeout=WAIT)
        assert producer.buffered == 0
    assert sorted(r.position for r in results) == list(range(1, 41))
    assert producer.producer.batches < 40  # sends from several threads shared batches
    with pytest.raises(tidelog.StoreClosed):
        producer.send("order-1", ev())
