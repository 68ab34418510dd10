"""Consumer groups in one process: delivery, order, effects, retries, parking, backpressure."""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from uuid import UUID

import msgspec
import pytest

import tidelog
from support.consumers import STORE_KINDS, eventually, nats_store_url, open_store
from support.nats import NatsServer
from tidelog import codec
from tidelog.consumers import (
    App,
    Context,
    HandlerOptions,
    ParkedStatus,
    RunnerOptions,
    drop_parked,
    list_parked,
    retry_parked,
)

FAST = RunnerOptions(lease=3.0, commit_interval=0.05, dlq_poll_interval=0.05)
DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "consumers.md"
QUICK_RETRY = HandlerOptions(max_attempts=3, backoff_initial=0.001, backoff_max=0.005)


@pytest.fixture(params=[*STORE_KINDS, pytest.param("nats", marks=pytest.mark.nats)])
async def store(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> AsyncIterator[tidelog.Store]:
    if request.param == "nats":  # the server starts only when a NATS test runs
        server: NatsServer = request.getfixturevalue("nats_server")
        async with tidelog.connect(nats_store_url(server)) as s:
            yield s
        return
    async with open_store(request.param, tmp_path) as s:
        yield s


async def fill(
    store: tidelog.Store, streams: int, per_stream: int, category: str = "order"
) -> None:
    for v in range(per_stream):
        await store.append_many(
            {
                f"{category}-{s}": tidelog.AppendRequest(
                    events=[tidelog.NewEvent(type="Placed", data=f"{s}:{v}".encode())]
                )
                for s in range(streams)
            }
        )


class Running:
    """Runs an app in a task; `stop` asks it to leave cleanly and waits."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.task = asyncio.create_task(app.run())

    async def stop(self) -> None:
        self.app.request_stop()
        done, _ = await asyncio.wait([self.task], timeout=30)
        if not done:  # show where it hangs
            for task in asyncio.all_tasks():
                task.print_stack(limit=4)
            raise AssertionError("the app did not stop within 30 s")
        await self.task


async def test_delivers_every_event_in_stream_order_and_commits(store: tidelog.Store) -> None:
    await fill(store, streams=12, per_stream=25)
    seen: dict[str, list[int]] = defaultdict(list)
    app = App("t", store, options=FAST)

    @app.handler("order", group="g")
    async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
        seen[event.stream].append(event.version)

    run = Running(app)
    await eventually(lambda: sum(map(len, seen.values())) >= 300, what="300 events")
    await fill(store, streams=12, per_stream=1)  # live events after catch-up
    await eventually(lambda: sum(map(len, seen.values())) >= 312, what="live events")
    await run.stop()
    assert {s: v for s, v in seen.items()} == {f"order-{s}": list(range(26)) for s in range(12)}
    checkpoints = await store.checkpoints("g", "order")
    last = {}
    async for e in store.read_all(categories=["order"]):
        last[tidelog.partition_of(e.stream, store.partition_count)] = e.position
    assert checkpoints == last
    assert app.stats.commits < 312  # per batch, not per event
    assert await store.describe_group("g", "order") is not None
    assert (await store.describe_group("g", "order")).members == ()  # type: ignore[union-attr]


async def test_effects_exactly_once_across_an_abandoned_run(store: tidelog.Store) -> None:
    await fill(store, streams=6, per_stream=20)
    second_started = False
    calls = 0
    gate = asyncio.Event()
    never = asyncio.Event()

    def make_app() -> App:
        app = App("t", store, options=FAST)

        @app.handler("order", group="fx")
        async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
            nonlocal calls
            calls += 1
            if calls == 60:
                gate.set()
            if gate.is_set() and not second_started:
                await never.wait()  # the first run hangs here until it is killed
            ctx.append(
                "effect-" + event.stream.split("-", 1)[1],
                [tidelog.NewEvent(type="Seen", data=str(event.version).encode())],
                expected_version=event.version - 1 if event.version else tidelog.NO_STREAM,
            )
            assert ctx.idempotency_key == f"fx:{event.id}"

        return app

    first = Running(make_app())
    await gate.wait()
    first.task.cancel()  # a crash: no final commit, no leave
    with pytest.raises(asyncio.CancelledError):
        await first.task
    await store.leave_group("fx", "order", first.app._runtime.member)
    second_started = True
    second = make_app()
    run = Running(second)
    await eventually(lambda: second.stats is not None and second.stats.events_handled > 0)

    async def effects_done() -> bool:
        total = 0
        async for _ in store.read_all(categories=["effect"]):
            total += 1
        return total == 120

    deadline = time.monotonic() + 60
    while not await effects_done():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await run.stop()
    for s in range(6):
        versions = [int(e.data) async for e in store.read_stream(f"effect-{s}")]
        assert versions == list(range(20))
        async for e in store.read_stream(f"effect-{s}"):
            assert e.metadata["causationid"]


async def test_failures_retry_then_park_and_block_only_their_stream(store: tidelog.Store) -> None:
    await fill(store, streams=4, per_stream=5)
    poison = {("order-1", 2)}
    attempts: dict[tuple[str, int], int] = defaultdict(int)
    handled: dict[str, list[int]] = defaultdict(list)
    app = App("t", store, options=FAST)

    @app.handler("order", group="g", options=QUICK_RETRY)
    async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
        key = (event.stream, event.version)
        attempts[key] += 1
        if key in poison:
            raise RuntimeError(f"bad {key}")
        handled[event.stream].append(event.version)

    run = Running(app)
    await eventually(lambda: sum(map(len, handled.values())) >= 17, what="good events")
    await eventually(lambda: app.stats.held >= 2, what="held events")
    assert attempts[("order-1", 2)] == 3
    assert handled["order-1"] == [0, 1]
    for s in (0, 2, 3):
        assert handled[f"order-{s}"] == [0, 1, 2, 3, 4]
    parked = await list_parked(store, "g")
    assert [(p.stream, p.event.version, p.status) for p in parked] == [
        ("order-1", 2, ParkedStatus.PARKED),
        ("order-1", 3, ParkedStatus.HELD),
        ("order-1", 4, ParkedStatus.HELD),
    ]
    head = parked[0]
    assert head.attempts == 3
    assert head.error_type == "RuntimeError"
    assert head.error is not None and "bad" in head.error
    assert head.handler.endswith("handle")
    # later events of the blocked stream are held too, others still flow
    await fill(store, streams=4, per_stream=1)
    await eventually(lambda: all(len(handled[f"order-{s}"]) == 6 for s in (0, 2, 3)))
    await eventually(lambda: app.stats.held >= 3, what="new event held")
    # the handler is fixed; a retry releases the parked event, then the held ones in order
    poison.clear()
    await retry_parked(store, "g", head.event.id)
    await eventually(lambda: handled["order-1"] == [0, 1, 2, 3, 4, 5], what="release")
    # the last handler call ran; its resolution is committed just after it returns
    await eventually_async(lambda: list_parked(store, "g"), lambda ps: ps == [])
    settled = await list_parked(store, "g", include_settled=True)
    assert {p.status for p in settled} == {ParkedStatus.RESOLVED}
    # the stream is unblocked: new events are handled directly
    await fill(store, streams=4, per_stream=1)
    await eventually(lambda: handled["order-1"] == [0, 1, 2, 3, 4, 5, 6])
    await run.stop()


async def test_drop_releases_held_events_and_park_stream_parks_them(store: tidelog.Store) -> None:
    await fill(store, streams=2, per_stream=4)
    handled: dict[str, list[int]] = defaultdict(list)
    app = App("t", store, options=FAST)

    @app.handler("order", group="a", options=QUICK_RETRY)
    async def blocking(event: tidelog.RecordedEvent, ctx: Context) -> None:
        if (event.stream, event.version) == ("order-0", 1):
            raise ValueError("nope")
        handled[event.stream].append(event.version)

    parked_all: list[int] = []

    @app.handler("order", group="b", on_park="park_stream", max_attempts=1)
    async def parking(event: tidelog.RecordedEvent, ctx: Context) -> None:
        if (event.stream, event.version) == ("order-0", 1):
            raise ValueError("nope")
        parked_all.append(event.version) if event.stream == "order-0" else None

    run = Running(app)
    await eventually(lambda: len(handled["order-1"]) == 4 and app.stats.held == 2)
    await eventually(lambda: app.stats.parked >= 4, what="park_stream parks")
    entries = await list_parked(store, "b")
    assert [(p.event.version, p.status, p.reason) for p in entries] == [
        (1, ParkedStatus.PARKED, "failed"),
        (2, ParkedStatus.PARKED, "stream_parked"),
        (3, ParkedStatus.PARKED, "stream_parked"),
    ]
    assert entries[0].attempts == 1
    head = (await list_parked(store, "a"))[0]
    await drop_parked(store, "a", head.event.id)
    await eventually(lambda: handled["order-0"] == [0, 2, 3], what="held released after drop")
    # in park_stream mode, settling in order: drop the failure, retry the next
    await drop_parked(store, "b", entries[0].event.id)
    await retry_parked(store, "b", entries[1].event.id)
    await eventually(lambda: parked_all == [0, 2], what="retried parked event")
    # the handler ran; its resolution is committed just after it returns
    await eventually_async(
        lambda: list_parked(store, "b"), lambda ps: [p.event.version for p in ps] == [3]
    )
    await run.stop()


async def test_reading_pauses_at_the_in_flight_bound(store: tidelog.Store) -> None:
    total = 3000
    for start in range(0, total, 250):  # a NATS atomic batch holds at most 499 events
        await store.append_many(
            {
                f"burst-{i}": tidelog.AppendRequest(events=[tidelog.NewEvent(type="E")])
                for i in range(start, start + 250)
            }
        )
    release = asyncio.Event()
    count = 0
    opts = RunnerOptions(max_in_flight=40, page_size=16, concurrency=8, commit_interval=0.05)
    app = App("t", store, options=opts)

    @app.handler("burst", group="g")
    async def slow(event: tidelog.RecordedEvent, ctx: Context) -> None:
        nonlocal count
        await release.wait()
        count += 1

    run = Running(app)
    await eventually(lambda: app.stats is not None and app.stats.peak_in_flight >= 40)
    await asyncio.sleep(0.2)  # give a buggy reader time to overfill
    assert app.stats.peak_in_flight == 40
    release.set()
    await eventually(lambda: count == total, what="all burst events")
    await run.stop()
    assert app.stats.peak_in_flight <= 40


async def test_batches_keep_order_and_isolate_a_poison_event(store: tidelog.Store) -> None:
    await fill(store, streams=5, per_stream=30)
    sizes: list[int] = []
    seen: dict[str, list[int]] = defaultdict(list)
    app = App("t", store, options=FAST)

    @app.handler("order", group="stats", batch=50, options=QUICK_RETRY)
    async def batch(events: list[tidelog.RecordedEvent], ctx: Context) -> None:
        if any((e.stream, e.version) == ("order-3", 7) for e in events):
            raise RuntimeError("poison in batch")
        sizes.append(len(events))
        for e in events:
            seen[e.stream].append(e.version)

    run = Running(app)
    await eventually(lambda: sum(map(len, seen.values())) >= 4 * 30 + 7, what="batches")
    await eventually(lambda: app.stats.held >= 22, what="held behind poison")
    await run.stop()
    assert max(sizes) > 1
    for s in (0, 1, 2, 4):
        assert seen[f"order-{s}"] == list(range(30))
    assert seen["order-3"] == list(range(7))
    assert [p.event.version for p in await list_parked(store, "stats")][:1] == [7]


registry = codec.EventRegistry()


@codec.event("OrderPlaced", version=1, registry=registry)
class OrderPlaced(msgspec.Struct):
    order_id: str
    total: int


async def test_typed_handlers_get_decoded_events_of_their_type(store: tidelog.Store) -> None:
    for i in range(5):
        await store.append(
            f"order-{i}", [codec.encode(OrderPlaced(str(i), i * 10), registry=registry)]
        )
        await store.append(f"order-{i}", [tidelog.NewEvent(type="Other")])
    got: list[OrderPlaced] = []
    app = App("t", store, options=FAST, registry=registry)

    @app.handler("order", group="typed")
    async def placed(event: OrderPlaced, ctx: Context) -> None:
        got.append(event)
        ctx.append("audit-" + event.order_id, [OrderPlaced(event.order_id, event.total + 1)])

    run = Running(app)
    await eventually(lambda: len(got) == 5)
    await eventually(lambda: app.stats.commits >= 5)
    await run.stop()
    assert sorted(g.total for g in got) == [0, 10, 20, 30, 40]
    audit = [e async for e in store.read_stream("audit-3")]
    assert [codec.decode(e, registry=registry) for e in audit] == [OrderPlaced("3", 31)]


async def test_partitions_move_between_members_without_loss(store: tidelog.Store) -> None:
    seen: dict[str, list[tuple[str, int]]] = defaultdict(list)

    def make(name: str) -> App:
        app = App(name, store, options=FAST, member=f"m-{name}")

        @app.handler("order", group="shared")
        async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
            seen[event.stream].append((name, event.version))
            ctx.append(
                "done-" + event.stream.split("-", 1)[1],
                [tidelog.NewEvent(type="Done", data=str(event.version).encode())],
                expected_version=event.version - 1 if event.version else tidelog.NO_STREAM,
            )

        return app

    a = Running(make("a"))
    await fill(store, streams=16, per_stream=10)
    b = Running(make("b"))
    await fill(store, streams=16, per_stream=10)
    await eventually(lambda: {n for v in seen.values() for n, _ in v} == {"a", "b"})
    await a.stop()  # leaves: its partitions move to b at once
    await fill(store, streams=16, per_stream=10)

    async def count() -> int:
        return len([e async for e in store.read_all(categories=["done"])])

    deadline = time.monotonic() + 60
    while await count() < 16 * 30:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await b.stop()
    for s in range(16):
        assert [int(e.data) async for e in store.read_stream(f"done-{s}")] == list(range(30))
    assert await list_parked(store, "shared") == []


async def test_a_graceful_join_and_leave_handle_no_event_twice(store: tidelog.Store) -> None:
    """Scaling a group up by one member, then down again, under a steady producer
    (#14 item 11): each moved partition is handed over cooperatively (its holder
    commits what it handled, then releases it), so no event is handled twice. Before,
    the new owner started from the last commit while the old one went on, and each
    scale-up handled a few dozen events twice."""
    count = store.partition_count
    handled: Counter[UUID] = Counter()
    partitions: dict[str, set[int]] = defaultdict(set)
    """member -> the partitions of the events it handled."""
    # commits far apart: the old owner has handled many events beyond its last commit
    options = RunnerOptions(lease=3.0, commit_interval=0.3, dlq_poll_interval=0.05)

    def make(name: str) -> App:
        app = App(name, store, options=options, member=f"m-{name}")

        @app.handler("order", group="scale")
        async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
            handled[event.id] += 1
            partitions[name].add(tidelog.partition_of(event.stream, count))
            await asyncio.sleep(0.001)  # in flight for a moment, as real work is

        return app

    produced = 0
    producing = asyncio.Event()
    producing.set()

    async def produce() -> None:
        nonlocal produced
        while producing.is_set():
            await store.append_many(
                {
                    f"order-{s}": tidelog.AppendRequest([tidelog.NewEvent(type="T")])
                    for s in range(16)
                }
            )
            produced += 16
            await asyncio.sleep(0.01)

    producer = asyncio.create_task(produce())
    a = Running(make("a"))
    await eventually(lambda: len(handled) >= 300, what="a handles events")
    b = Running(make("b"))  # a graceful join
    await eventually(lambda: bool(partitions["b"]), what="b gets partitions from a")
    joined = len(handled)
    await eventually(lambda: len(handled) >= joined + 300, what="both handle events")
    await a.stop()  # a graceful leave
    left = len(handled)
    await eventually(lambda: len(handled) >= left + 300, what="b handles events alone")
    producing.clear()
    await producer
    await eventually(lambda: len(handled) == produced, what="every event handled")
    await b.stop()
    assert sorted(str(i) for i, n in handled.items() if n > 1) == []
    assert sum(handled.values()) == produced
    # the partitions did move: b took some of a's at the join, and all at the leave
    used = {tidelog.partition_of(f"order-{s}", count) for s in range(16)}
    assert partitions["a"] == partitions["b"] == used


async def test_a_paused_member_is_fenced_and_its_late_commit_refused(store: tidelog.Store) -> None:
    await fill(store, streams=8, per_stream=5)
    stalled = asyncio.Event()
    count = 0
    opts = RunnerOptions(lease=0.3, commit_interval=0.05, heartbeat_interval=0.05)
    app = App("t", store, options=opts, member="m-paused")

    @app.handler("order", group="fence")
    async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
        nonlocal count
        count += 1
        if count == 10 and not stalled.is_set():
            stalled.set()
            time.sleep(0.8)  # noqa: ASYNC251 - blocks the whole loop past the lease, like SIGSTOP

    run = Running(app)
    await eventually(lambda: count >= 40, what="all events after the pause")
    await eventually(lambda: app.stats.rejoins >= 1, what="rejoin after the lease was lost")
    assert app.stats.stale_heartbeats >= 1
    # its late commit with the old generation: made while it drops its partitions,
    # which may still be under way when the rejoin was counted
    await eventually(lambda: app.stats.refused_commits >= 1, what="the late commit refused")
    last = await store.last_position()
    # after rejoining it resumes from the committed checkpoints and commits again
    await eventually_async(lambda: checkpoint_total(store, "fence"), lambda v: v == last)
    await run.stop()


async def checkpoint_total(store: tidelog.Store, group: str) -> int:
    return max((await store.checkpoints(group, "order")).values(), default=0)


async def eventually_async(get, check, within: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not check(await get()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_the_docs_example_runs() -> None:
    """The first code block of docs/consumers.md, run on a memory store."""
    block = DOCS.read_text(encoding="utf-8").split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {"__name__": "__docs__"}
    exec(compile(block, str(DOCS), "exec"), namespace)
    app = namespace["app"]
    assert isinstance(app, App) and len(app.handlers) == 2
    async with tidelog.connect("memory://") as store:
        app.store = store
        app.options = FAST
        await store.append("order-7", [tidelog.NewEvent(type="Placed", data=b"{}")])
        run = Running(app)
        await eventually(lambda: app.stats is not None and app.stats.events_handled == 2)
        await run.stop()
        invoices = [e async for e in store.read_stream("invoice-7")]
        assert [e.type for e in invoices] == ["Invoiced"]


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    opts = HandlerOptions(backoff_initial=0.1, backoff_multiplier=2.0, backoff_max=1.0, jitter=0.5)
    assert [opts.backoff(a, 0.0) for a in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert opts.backoff(2, 0.999) == pytest.approx(0.2 * (1 - 0.5 * 0.999))
    with pytest.raises(ValueError):
        HandlerOptions(max_attempts=0)
    with pytest.raises(ValueError):
        HandlerOptions(on_park="later")  # type: ignore[arg-type]


def test_handler_registration_is_checked() -> None:
    app = App("t", "memory://")

    @app.handler("order", group="g")
    async def one(event: tidelog.RecordedEvent, ctx: Context) -> None: ...

    with pytest.raises(tidelog.InvalidInput):

        @app.handler("order", group="g")
        async def two(event: tidelog.RecordedEvent, ctx: Context) -> None: ...

    with pytest.raises(tidelog.InvalidInput):
        app.handler("order", group="h")(lambda e, c: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(tidelog.InvalidStreamName):
        app.handler("bad category", group="g")


def streams_sharing_a_partition(partitions: int, count: int, category: str = "order") -> list[str]:
    """`count` stream names of `category` that all fall in one partition."""
    by_partition: dict[int, list[str]] = defaultdict(list)
    for i in range(1000):
        name = f"{category}-{i}"
        group = by_partition[tidelog.partition_of(name, partitions)]
        group.append(name)
        if len(group) == count:
            return group
    raise AssertionError("no partition holds enough streams")


async def test_a_waiting_handler_holds_up_only_its_own_stream(store: tidelog.Store) -> None:
    slow, *others = streams_sharing_a_partition(store.partition_count, 5)
    for v in range(3):
        await store.append_many(
            {
                s: tidelog.AppendRequest(
                    events=[tidelog.NewEvent(type="Placed", data=str(v).encode())]
                )
                for s in (slow, *others)
            }
        )
    release = asyncio.Event()
    seen: dict[str, list[int]] = defaultdict(list)
    app = App("t", store, options=FAST)

    @app.handler("order", group="g")
    async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
        if event.stream == slow:
            await release.wait()
        seen[event.stream].append(event.version)

    run = Running(app)
    # the other streams of the same partition go past the waiting one
    await eventually(lambda: all(seen[s] == [0, 1, 2] for s in others), what="other streams")
    assert seen[slow] == []
    release.set()
    await eventually(lambda: seen[slow] == [0, 1, 2], what="the waiting stream, in order")
    await run.stop()
    assert await checkpoint_total(store, "g") == await store.last_position()


async def test_handler_calls_at_once_stay_within_concurrency(store: tidelog.Store) -> None:
    await fill(store, streams=40, per_stream=2)
    release = asyncio.Event()
    now = peak = handled = 0
    app = App("t", store, options=replace(FAST, concurrency=3))

    @app.handler("order", group="g")
    async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
        nonlocal now, peak, handled
        now += 1
        peak = max(peak, now)
        await release.wait()
        now -= 1
        handled += 1

    run = Running(app)
    await eventually(lambda: peak == 3, what="three handler calls at once")
    await asyncio.sleep(0.2)  # give a buggy limiter time to let more in
    assert peak == 3
    release.set()
    await eventually(lambda: handled == 80, what="every event")
    await run.stop()
    assert peak == 3


async def test_handlers_that_wait_and_that_do_not_share_the_slots_in_order(
    store: tidelog.Store,
) -> None:
    """Handlers that return at once keep their slot from one event to the next;
    those that wait must still get one, and the bound holds throughout."""
    await fill(store, streams=30, per_stream=10)
    now = peak = 0
    seen: dict[str, list[int]] = defaultdict(list)
    app = App("t", store, options=replace(FAST, concurrency=2))

    @app.handler("order", group="g")
    async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
        nonlocal now, peak
        now += 1
        peak = max(peak, now)
        if int(event.stream.split("-")[1]) % 3 == 0:
            await asyncio.sleep(0.001)  # every third stream waits
        seen[event.stream].append(event.version)
        now -= 1

    run = Running(app)
    await eventually(lambda: sum(map(len, seen.values())) == 300, what="every event")
    await run.stop()
    assert peak <= 2
    assert all(versions == list(range(10)) for versions in seen.values())
    assert await checkpoint_total(store, "g") == await store.last_position()


async def test_a_partition_that_caught_up_commits_without_waiting_for_the_interval(
    store: tidelog.Store,
) -> None:
    await fill(store, streams=12, per_stream=5)
    handled = 0
    # the clock would commit after an hour: only catching up can commit here
    app = App("t", store, options=replace(FAST, commit_interval=3600.0))

    @app.handler("order", group="g")
    async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
        nonlocal handled
        handled += 1

    last: dict[int, int] = {}
    async for e in store.read_all(categories=["order"]):
        last[tidelog.partition_of(e.stream, store.partition_count)] = e.position
    run = Running(app)
    await eventually_async(lambda: store.checkpoints("g", "order"), lambda cps: cps == last)
    assert handled == 60
    await run.stop()


async def test_catching_up_right_after_a_commit_round_commits_without_the_interval(
    store: tidelog.Store,
) -> None:
    """A commit round (the consumer's `commit_every` reached across its partitions)
    is not a quiet commit: a partition that catches up just after one still
    commits at once (#17: it waited for `commit_interval`, and a quick
    `group_throughput` spent two thirds of its time waiting)."""
    await fill(store, streams=12, per_stream=20)
    handled = 0
    # the consumer reaches commit_every with its first 120 events (no partition
    # alone does); the clock would commit after an hour
    app = App("t", store, options=replace(FAST, commit_interval=3600.0, commit_every=100))

    @app.handler("order", group="g")
    async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
        nonlocal handled
        if event.version == 10:  # the rest only once that round committed something
            while not await store.checkpoints("g", "order"):  # noqa: ASYNC110 - polls the store
                await asyncio.sleep(0.01)
        handled += 1

    last: dict[int, int] = {}
    async for e in store.read_all(categories=["order"]):
        last[tidelog.partition_of(e.stream, store.partition_count)] = e.position
    run = Running(app)
    await eventually_async(lambda: store.checkpoints("g", "order"), lambda cps: cps == last)
    assert handled == 240
    await run.stop()


async def test_waiting_workers_take_later_events_and_end_at_once_on_stop(
    store: tidelog.Store,
) -> None:
    """A worker that ran out of events waits for the next page instead of ending.

    `stop` ends a waiting worker at once: with an hour of grace, waiting for it
    would trip `Running.stop`'s 30 s guard.
    """
    await fill(store, streams=6, per_stream=2)
    seen: list[tuple[str, bytes]] = []
    app = App("t", store, options=replace(FAST, shutdown_timeout=3600.0))

    @app.handler("order", group="g")
    async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
        seen.append((event.stream, event.data))

    run = Running(app)
    await eventually(lambda: len(seen) == 12, what="the first events")
    await asyncio.sleep(0.1)  # every worker has run out of events by now
    await fill(store, streams=6, per_stream=2)
    await eventually(lambda: len(seen) == 24, what="the later events")
    await run.stop()
    by_stream: defaultdict[str, list[bytes]] = defaultdict(list)
    for stream, data in seen:
        by_stream[stream].append(data)
    assert by_stream == {
        f"order-{s}": [f"{s}:{v}".encode() for v in (0, 1, 0, 1)] for s in range(6)
    }


async def test_concurrent_dlq_refreshes_share_one_read_that_sees_every_write() -> None:
    """Each parked or held event makes its worker refresh the DLQ state; refreshes
    asked for while one reads share the next read, which begins after they were
    asked, so it sees whatever their callers wrote before asking."""
    from tidelog.consumers import _group, _runtime
    from tidelog.consumers._dlq import dlq_stream, parked_entry

    async with tidelog.connect("memory://") as store:
        app = App("t", store)

        @app.handler("order", group="g")
        async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None: ...

        runtime = _runtime.Runtime(app, None)
        runtime.store = store
        consumer = _group.GroupConsumer(runtime, app.handlers[0])
        reads = 0
        real = store.read_stream

        async def slow(*args: Any, **kwargs: Any) -> AsyncIterator[tidelog.RecordedEvent]:
            nonlocal reads
            reads += 1
            await asyncio.sleep(0.01)  # a read over the network
            async for event in real(*args, **kwargs):
                yield event

        store.read_stream = slow  # type: ignore[method-assign]
        await store.append("order-1", [tidelog.NewEvent(type="Placed") for _ in range(2)])
        events = [e async for e in real("order-1")]

        async def park(event: tidelog.RecordedEvent) -> None:
            entry = parked_entry("g", event, handler="h", error=ValueError("no"), attempts=1)
            await store.append(dlq_stream("g"), [entry])
            await consumer.refresh_dlq()

        first = asyncio.ensure_future(park(events[0]))
        await asyncio.sleep(0.001)  # its read is under way: the next calls wait for it
        await asyncio.gather(first, park(events[1]), *(consumer.refresh_dlq() for _ in range(10)))
        assert reads == 2
        assert set(consumer.dlq.entries) == {e.id for e in events}
