"""The conformance suite: the contract every tidelog engine must pass.

An engine's test module subclasses `EngineSuite` under a name pytest collects
and gives it a factory::

    class TestSQLiteEngine(EngineSuite):
        async def open_store(self, tmp_path):
            return await tidelog.connect(f"sqlite:///{tmp_path}/{uuid4()}.db")

The bases are plain classes (no `Test` prefix) so pytest does not collect the
abstract suite itself; a subclass named `Test*` inherits every `test_*` method.
Each call of `open_store` must return a fresh, empty store (tests may call it
more than once). Features an engine refuses are switched off with the
`supports_*` flags; the suite then asserts that they raise
`tidelog.NotSupported` instead of silently doing something else.

The tests never assert on wall-clock time; waits are bounded only so that a
broken engine fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import pathlib
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import Any, cast
from uuid import UUID, uuid4

import pytest
import pytest_asyncio

import tidelog
from tidelog.engines._kit.groups import assign_partitions

__all__ = ["EngineSuite", "GroupsSuite", "LogSuite", "StreamsSuite", "SuiteBase"]

WAIT = 10.0
"""Upper bound for any wait on the engine: a hang becomes a failure, never a pass."""

LONG_LEASE = 60.0


def ev(type: str = "Happened", data: bytes = b"", **kwargs: Any) -> tidelog.NewEvent:
    """A new event with a fresh id unless one is given."""
    return tidelog.NewEvent(type=type, data=data, **kwargs)


async def collect(iterator: AsyncIterator[tidelog.RecordedEvent]) -> list[tidelog.RecordedEvent]:
    return [e async for e in iterator]


async def stream_versions(store: tidelog.Store, stream: str, **kwargs: Any) -> list[int]:
    return [e.version for e in await collect(store.read_stream(stream, **kwargs))]


async def all_positions(store: tidelog.Store, **kwargs: Any) -> list[int]:
    return [e.position for e in await collect(store.read_all(**kwargs))]


async def stream_names(store: tidelog.Store, category: str | None = None) -> list[str]:
    return [s.name async for s in store.list_streams(category)]


async def take(
    subscription: AsyncIterator[tidelog.RecordedEvent], count: int
) -> list[tidelog.RecordedEvent]:
    """The next `count` events of a subscription (bounded wait)."""
    out: list[tidelog.RecordedEvent] = []
    async with asyncio.timeout(WAIT):
        while len(out) < count:
            out.append(await anext(subscription))
    return out


@contextlib.asynccontextmanager
async def subscribed(
    store: tidelog.Store, **kwargs: Any
) -> AsyncIterator[AsyncIterator[tidelog.RecordedEvent]]:
    """A subscription that is closed (its generator finalised) when the block ends."""
    subscription = store.subscribe(**kwargs)
    try:
        yield subscription
    finally:
        aclose = getattr(subscription, "aclose", None)
        if aclose is not None:
            await aclose()


def commit_billing(
    store: tidelog.Store,
    partition: int,
    position: int,
    generation: int,
    member: str = "m1",
    appends: Mapping[str, tidelog.AppendRequest] | None = None,
) -> Coroutine[Any, Any, dict[str, tidelog.AppendResult]]:
    """`store.commit` for the group most tests use: "billing" on category "order".

    The fencing and checkpoint tests vary the partition, position, generation,
    member and appends; the group and category they commit for stay the same.
    """
    return store.commit(
        "billing",
        "order",
        partition,
        position,
        member=member,
        generation=generation,
        appends=appends,
    )


async def exhaust(result: object) -> None:
    """Await a coroutine or drain an async iterator, whichever a store method returned."""
    if inspect.isawaitable(result):
        await result
    else:
        async for _ in cast(AsyncIterator[object], result):
            pass


class SuiteBase:
    """The factory, the feature flags and the `store` fixture shared by every layer."""

    pytestmark = pytest.mark.asyncio

    supports_multi_stream_atomic: bool = True
    """False: `append_many` over several streams raises `NotSupported`."""
    supports_transactional_commit: bool = True
    """False: `commit(..., appends=...)` raises `NotSupported`."""

    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        """Return a fresh, empty, open store. May be called several times per test."""
        raise NotImplementedError

    @pytest_asyncio.fixture
    async def store(self, tmp_path: pathlib.Path) -> AsyncIterator[tidelog.Store]:
        store = await self.open_store(tmp_path)
        try:
            yield store
        finally:
            await store.close()


# =========================================================================== layer 1

INVALID_NAMES: list[tuple[str, str]] = [
    ("empty", ""),
    ("too-long", "a" * 201),
    ("dotdot-slash", "../x"),
    ("percent-encoded-dot", "%2e"),
    ("percent-encoded-dotdot", "%2e%2e"),
    ("slash", "a/b"),
    ("only-slash", "/"),
    ("backslash", "a\\b"),
    ("nul", "a\x00b"),
    ("control-char", "a\x01b"),
    ("newline", "a\nb"),
    ("tab", "a\tb"),
    ("delete-char", "a\x7fb"),
    ("rtl-override", "order\u202e-42"),
    ("zero-width-space", "order\u200b-42"),
    ("zero-width-joiner", "order\u200d-42"),
    ("bom", "\ufefforder-42"),
    ("cyrillic-o", "\u043erder-42"),
    ("fullwidth", "\uff4frder-42"),
    ("nfc-accent", "caf\u00e9-1"),
    ("nfd-accent", "cafe\u0301-1"),
    ("star", "order-*"),
    ("gt", "order.>"),
    ("only-gt", ">"),
    ("dot", "order.42"),
    ("only-dot", "."),
    ("space", "order 42"),
    ("leading-space", " order-42"),
    ("trailing-space", "order-42 "),
    ("leading-dash", "-order"),
    ("dollar-alone", "$"),
    ("dollar-twice", "$$order"),
    ("dollar-inside", "order$-1"),
]

VALID_NAMES: list[str] = [
    "$dlq-x",
    "a:b@c_d-1",
    "order-42",
    "order",
    "Order_Item-9f1c:1@eu",
    "a" * 200,
]


def _twice(event: tidelog.NewEvent) -> list[tidelog.NewEvent]:
    return [event, event]


def _same_id_twice(event_id: UUID) -> list[tidelog.NewEvent]:
    return [ev(id=event_id), ev("Other", id=event_id)]


class StreamsSuite(SuiteBase):
    """Layer 1: appends, expected versions, idempotency, reads, tombstones, names."""

    # ------------------------------------------------------------- append basics

    async def test_append_returns_version_and_position_and_round_trips(
        self, store: tidelog.Store
    ) -> None:
        first = ev("Created", b"\x00\xff raw bytes", metadata={"correlationid": "c-1", "n": 1})
        second = ev(
            "Renamed",
            b'{"name": "x"}',
            metadata={"nested": {"a": [1, 2.5, None, True]}},
            schema_version=3,
        )
        result = await store.append("order-1", [first, second])
        assert result == tidelog.AppendResult(version=1, position=2)

        events = await collect(store.read_stream("order-1"))
        assert [(e.id, e.type, e.data, e.metadata) for e in events] == [
            (first.id, "Created", b"\x00\xff raw bytes", {"correlationid": "c-1", "n": 1}),
            (second.id, "Renamed", b'{"name": "x"}', {"nested": {"a": [1, 2.5, None, True]}}),
        ]
        assert [(e.stream, e.version, e.position) for e in events] == [
            ("order-1", 0, 1),
            ("order-1", 1, 2),
        ]
        assert [e.schema_version for e in events] == [1, 3]
        assert all(isinstance(e.recorded_at, datetime) for e in events)
        assert all(e.recorded_at.tzinfo is not None for e in events)
        assert events[0].category == "order"
        assert await store.last_position() == 2

    async def test_expected_version_any(self, store: tidelog.Store) -> None:
        assert (await store.append("s-1", [ev()], tidelog.ANY)).version == 0
        assert (await store.append("s-1", [ev()], tidelog.ANY)).version == 1
        assert (await store.append("s-1", [ev()])).version == 2  # ANY is the default

    async def test_expected_version_no_stream(self, store: tidelog.Store) -> None:
        assert (await store.append("s-1", [ev()], tidelog.NO_STREAM)).version == 0
        with pytest.raises(tidelog.WrongExpectedVersion) as info:
            await store.append("s-1", [ev()], tidelog.NO_STREAM)
        assert info.value.stream == "s-1"
        assert info.value.expected == tidelog.NO_STREAM
        assert info.value.actual == 0

    async def test_expected_version_stream_exists(self, store: tidelog.Store) -> None:
        with pytest.raises(tidelog.WrongExpectedVersion) as info:
            await store.append("s-1", [ev()], tidelog.STREAM_EXISTS)
        assert info.value.stream == "s-1"
        assert info.value.expected == tidelog.STREAM_EXISTS
        assert info.value.actual is None
        await store.append("s-1", [ev()])
        assert (await store.append("s-1", [ev()], tidelog.STREAM_EXISTS)).version == 1

    async def test_expected_version_exact(self, store: tidelog.Store) -> None:
        with pytest.raises(tidelog.WrongExpectedVersion) as info:
            await store.append("s-1", [ev()], 0)
        assert info.value.actual is None
        await store.append("s-1", [ev(), ev()])
        assert (await store.append("s-1", [ev()], 1)).version == 2
        assert (await store.append("s-1", [ev(), ev()], 2)).version == 4

    async def test_wrong_expected_version_carries_actual_and_writes_nothing(
        self, store: tidelog.Store
    ) -> None:
        await store.append("s-1", [ev(), ev()])
        for expected in (0, 5):
            with pytest.raises(tidelog.WrongExpectedVersion) as info:
                await store.append("s-1", [ev()], expected)
            assert (info.value.stream, info.value.expected, info.value.actual) == (
                "s-1",
                expected,
                1,
            )
        assert await stream_versions(store, "s-1") == [0, 1]
        assert await store.last_position() == 2

    @pytest.mark.parametrize(
        "value",
        [-1, True, False, 1.5, "3", 2**63, None, b"1", [0]],
        ids=["minus-one", "true", "false", "float", "str", "2^63", "none", "bytes", "list"],
    )
    async def test_invalid_expected_version(self, store: tidelog.Store, value: object) -> None:
        await store.append("s-1", [ev()])
        with pytest.raises(tidelog.InvalidExpectedVersion) as info:
            await store.append("s-1", [ev()], cast(Any, value))
        assert info.value.value is value or info.value.value == value
        assert isinstance(info.value, ValueError)
        with pytest.raises(tidelog.InvalidExpectedVersion):
            await store.delete_stream("s-1", cast(Any, value))
        assert await stream_versions(store, "s-1") == [0]

    async def test_concurrent_writers_on_one_version_exactly_one_wins(
        self, store: tidelog.Store
    ) -> None:
        await store.append("race-1", [ev()])
        writers = 20
        outcomes = await asyncio.gather(
            *(store.append("race-1", [ev(f"W{i}")], 0) for i in range(writers)),
            return_exceptions=True,
        )
        wins = [o for o in outcomes if isinstance(o, tidelog.AppendResult)]
        losses = [o for o in outcomes if isinstance(o, tidelog.WrongExpectedVersion)]
        assert len(wins) == 1, outcomes
        assert len(losses) == writers - 1, outcomes
        assert wins[0].version == 1
        assert all(loss.actual == 1 for loss in losses)
        assert await stream_versions(store, "race-1") == [0, 1]

    # ------------------------------------------------------------- multi-stream

    async def test_append_many_returns_results_per_stream(self, store: tidelog.Store) -> None:
        await store.append("a-1", [ev()])
        requests = {
            "a-1": tidelog.AppendRequest([ev(), ev()], 0),
            "b-1": tidelog.AppendRequest([ev()], tidelog.NO_STREAM),
        }
        if not self.supports_multi_stream_atomic:
            with pytest.raises(tidelog.NotSupported):
                await store.append_many(requests)
            assert await store.last_position() == 1
            return
        results = await store.append_many(requests)
        assert set(results) == {"a-1", "b-1"}
        assert results["a-1"].version == 2
        assert results["b-1"].version == 0
        assert sorted([results["a-1"].position, results["b-1"].position]) == [3, 4]
        assert await stream_versions(store, "a-1") == [0, 1, 2]
        assert await stream_versions(store, "b-1") == [0]
        events = await collect(store.read_all())
        for name, result in results.items():
            last = [e for e in events if e.stream == name][-1]
            assert (last.version, last.position) == (result.version, result.position)

    async def test_append_many_is_all_or_nothing(self, store: tidelog.Store) -> None:
        if not self.supports_multi_stream_atomic:
            with pytest.raises(tidelog.NotSupported):
                await store.append_many(
                    {"a-1": tidelog.AppendRequest([ev()]), "b-1": tidelog.AppendRequest([ev()])}
                )
            return
        await store.append("b-1", [ev()])
        with pytest.raises(tidelog.WrongExpectedVersion) as info:
            await store.append_many(
                {
                    "a-1": tidelog.AppendRequest([ev(), ev()], tidelog.NO_STREAM),
                    "b-1": tidelog.AppendRequest([ev()], 7),
                    "c-1": tidelog.AppendRequest([ev()]),
                }
            )
        assert (info.value.stream, info.value.expected, info.value.actual) == ("b-1", 7, 0)
        assert await stream_versions(store, "a-1") == []
        assert await stream_versions(store, "b-1") == [0]
        assert await stream_versions(store, "c-1") == []
        assert await store.last_position() == 1
        assert await stream_names(store) == ["b-1"]

    async def test_append_many_refuses_deleted_stream_atomically(
        self, store: tidelog.Store
    ) -> None:
        if not self.supports_multi_stream_atomic:
            pytest.skip("engine refuses multi-stream appends (checked elsewhere)")
        await store.append("b-1", [ev()])
        await store.delete_stream("b-1")
        with pytest.raises(tidelog.StreamDeleted):
            await store.append_many(
                {"a-1": tidelog.AppendRequest([ev()]), "b-1": tidelog.AppendRequest([ev()])}
            )
        assert await stream_versions(store, "a-1") == []
        assert await store.last_position() == 1

    # ------------------------------------------------------------- idempotency

    async def test_idempotent_retry_returns_original_result_and_writes_nothing(
        self, store: tidelog.Store
    ) -> None:
        batch = [ev(), ev()]
        original = await store.append("order-1", batch, tidelog.NO_STREAM)
        await store.append("other-1", [ev()])
        # The same events again: the original result, even though NO_STREAM is now wrong.
        assert await store.append("order-1", batch, tidelog.NO_STREAM) == original
        assert await store.append("order-1", batch, 0) == original
        assert await store.append("order-1", batch) == original
        # A retry of the first event alone returns that event's own result.
        assert await store.append("order-1", batch[:1], 42) == tidelog.AppendResult(0, 1)
        assert await stream_versions(store, "order-1") == [0, 1]
        assert await store.last_position() == 3

    async def test_idempotent_retry_after_later_appends_and_tombstone(
        self, store: tidelog.Store
    ) -> None:
        batch = [ev()]
        original = await store.append("order-1", batch)
        await store.append("order-1", [ev()])
        assert await store.append("order-1", batch, tidelog.NO_STREAM) == original
        await store.delete_stream("order-1")
        # The retry is recognised before the tombstone: it did succeed, once.
        assert await store.append("order-1", batch) == original
        assert await store.last_position() == 2

    async def test_mix_of_stored_and_new_ids_raises_duplicate_event_id(
        self, store: tidelog.Store
    ) -> None:
        stored = ev()
        await store.append("order-1", [stored])
        fresh = ev()
        with pytest.raises(tidelog.DuplicateEventId) as info:
            await store.append("order-1", [stored, fresh])
        assert info.value.stream == "order-1"
        assert set(info.value.event_ids) == {stored.id}
        assert not info.value.in_other_stream
        assert isinstance(info.value, tidelog.InvalidEvent)
        assert await stream_versions(store, "order-1") == [0]
        assert await store.last_position() == 1

    async def test_id_stored_in_another_stream_raises_duplicate_event_id(
        self, store: tidelog.Store
    ) -> None:
        stored = ev()
        await store.append("order-1", [stored])
        with pytest.raises(tidelog.DuplicateEventId) as info:
            await store.append("order-2", [stored])
        assert info.value.stream == "order-2"
        assert set(info.value.event_ids) == {stored.id}
        # said as it is: not "mixes new events", and not which stream holds it
        assert info.value.in_other_stream
        assert "already stored in another stream" in str(info.value)
        assert "order-1" not in str(info.value)
        assert await stream_versions(store, "order-2") == []
        assert await stream_names(store) == ["order-1"]

    async def test_append_many_with_a_retried_stream(self, store: tidelog.Store) -> None:
        if not self.supports_multi_stream_atomic:
            pytest.skip("engine refuses multi-stream appends (checked elsewhere)")
        batch = [ev()]
        original = await store.append("a-1", batch)
        results = await store.append_many(
            {"a-1": tidelog.AppendRequest(batch, 9), "b-1": tidelog.AppendRequest([ev()])}
        )
        assert results["a-1"] == original
        assert results["b-1"] == tidelog.AppendResult(0, 2)
        assert await store.last_position() == 2

    # ------------------------------------------------------------- ordering

    async def test_versions_contiguous_and_positions_gap_free(self, store: tidelog.Store) -> None:
        await store.append("a-1", [ev(), ev()])
        await store.append("b-1", [ev()])
        with pytest.raises(tidelog.WrongExpectedVersion):
            await store.append("a-1", [ev()], 7)
        with pytest.raises(tidelog.InvalidEvent):
            await store.append("a-1", [ev("bad type")])
        await store.append("a-1", [ev()])
        await store.append("b-1", [ev(), ev(), ev()])
        events = await collect(store.read_all())
        # A fresh store numbers the log 1..n; failed appends leave no gaps.
        assert [e.position for e in events] == list(range(1, 8))
        assert [(e.stream, e.version) for e in events] == [
            ("a-1", 0),
            ("a-1", 1),
            ("b-1", 0),
            ("a-1", 2),
            ("b-1", 1),
            ("b-1", 2),
            ("b-1", 3),
        ]
        assert [e.position for e in await collect(store.read_stream("b-1"))] == [3, 5, 6, 7]

    async def test_events_keep_their_order_within_an_append(self, store: tidelog.Store) -> None:
        batch = [ev(f"T{i}") for i in range(50)]
        await store.append("big-1", batch)
        events = await collect(store.read_stream("big-1"))
        assert [e.id for e in events] == [e.id for e in batch]
        assert [e.type for e in events] == [f"T{i}" for i in range(50)]
        assert [e.version for e in events] == list(range(50))

    # ------------------------------------------------------------- read_stream

    async def test_read_stream_forwards_backwards_from_version_limit(
        self, store: tidelog.Store
    ) -> None:
        await store.append("s-1", [ev() for _ in range(5)])
        await store.append("other-1", [ev()])
        assert await stream_versions(store, "s-1") == [0, 1, 2, 3, 4]
        assert await stream_versions(store, "s-1", from_version=2) == [2, 3, 4]
        assert await stream_versions(store, "s-1", from_version=5) == []
        assert await stream_versions(store, "s-1", from_version=99) == []
        assert await stream_versions(store, "s-1", limit=2) == [0, 1]
        assert await stream_versions(store, "s-1", from_version=1, limit=3) == [1, 2, 3]
        assert await stream_versions(store, "s-1", limit=0) == []
        assert await stream_versions(store, "s-1", backwards=True, from_version=-1) == [
            4,
            3,
            2,
            1,
            0,
        ]
        assert await stream_versions(store, "s-1", backwards=True, from_version=3, limit=2) == [
            3,
            2,
        ]
        assert await stream_versions(store, "s-1", backwards=True, from_version=0) == [0]
        assert await stream_versions(store, "s-1", backwards=True, from_version=99) == [
            4,
            3,
            2,
            1,
            0,
        ]
        assert await stream_versions(store, "s-1", backwards=True, from_version=-1, limit=1) == [4]

    async def test_backwards_read_without_a_start_begins_at_the_end(
        self, store: tidelog.Store
    ) -> None:
        """A backwards read with no start is "the latest events", as in KurrentDB."""
        await store.append("s-1", [ev() for _ in range(5)])
        assert await stream_versions(store, "s-1", backwards=True, limit=1) == [4]
        assert await stream_versions(store, "s-1", backwards=True, limit=2) == [4, 3]
        assert await stream_versions(store, "s-1", backwards=True) == [4, 3, 2, 1, 0]
        assert await stream_versions(store, "s-1", backwards=True, limit=0) == []
        assert await stream_versions(store, "nothing-1", backwards=True, limit=1) == []
        # an explicit start keeps its meaning, and forwards still starts at the beginning
        assert await stream_versions(store, "s-1", backwards=True, from_version=0) == [0]
        assert await stream_versions(store, "s-1", backwards=True, from_version=2) == [2, 1, 0]
        assert await stream_versions(store, "s-1", from_version=None, limit=2) == [0, 1]
        await store.append("s-1", [ev()])
        assert await stream_versions(store, "s-1", backwards=True, limit=1) == [5]

    async def test_read_stream_of_missing_stream_is_empty(self, store: tidelog.Store) -> None:
        assert await stream_versions(store, "nothing-1") == []
        assert await stream_versions(store, "nothing-1", backwards=True, from_version=-1) == []

    @pytest.mark.parametrize(
        ("start", "limit"),
        [(-1, None), (True, None), ("0", None), (0, -1), (0, 1.5), (0, True)],
        ids=["negative-start", "bool-start", "str-start", "negative-limit", "float-limit", "bool"],
    )
    async def test_read_stream_invalid_arguments(
        self, store: tidelog.Store, start: object, limit: object
    ) -> None:
        await store.append("s-1", [ev()])
        with pytest.raises(tidelog.InvalidInput):
            await collect(
                store.read_stream("s-1", from_version=cast(Any, start), limit=cast(Any, limit))
            )

    # ------------------------------------------------------------- tombstones

    async def test_deleted_stream_refuses_reads_and_appends(self, store: tidelog.Store) -> None:
        await store.append("order-1", [ev(), ev()])
        await store.append("order-2", [ev()])
        await store.delete_stream("order-1")
        with pytest.raises(tidelog.StreamDeleted) as info:
            await collect(store.read_stream("order-1"))
        assert info.value.stream == "order-1"
        with pytest.raises(tidelog.StreamDeleted):
            await collect(store.read_stream("order-1", backwards=True, from_version=-1))
        for expected in (tidelog.ANY, tidelog.STREAM_EXISTS, 1, tidelog.NO_STREAM):
            with pytest.raises(tidelog.StreamDeleted) as info:
                await store.append("order-1", [ev()], expected)
            assert info.value.stream == "order-1"
        with pytest.raises(tidelog.StreamDeleted):
            await store.delete_stream("order-1")
        # The log is immutable: the events stay there.
        events = await collect(store.read_all())
        assert [(e.stream, e.version) for e in events] == [
            ("order-1", 0),
            ("order-1", 1),
            ("order-2", 0),
        ]
        assert await store.last_position() == 3
        # Other streams are untouched.
        assert await stream_versions(store, "order-2") == [0]
        infos = [s async for s in store.list_streams()]
        assert infos == [
            tidelog.StreamInfo(name="order-1", version=1, deleted=True),
            tidelog.StreamInfo(name="order-2", version=0, deleted=False),
        ]

    async def test_delete_checks_expected_version(self, store: tidelog.Store) -> None:
        await store.append("order-1", [ev(), ev()])
        with pytest.raises(tidelog.WrongExpectedVersion) as info:
            await store.delete_stream("order-1", 0)
        assert (info.value.stream, info.value.actual) == ("order-1", 1)
        with pytest.raises(tidelog.WrongExpectedVersion):
            await store.delete_stream("order-1", tidelog.NO_STREAM)
        assert await stream_versions(store, "order-1") == [0, 1]
        await store.delete_stream("order-1", 1)
        with pytest.raises(tidelog.StreamDeleted):
            await collect(store.read_stream("order-1"))

    async def test_delete_of_missing_stream_tombstones_the_name(self, store: tidelog.Store) -> None:
        with pytest.raises(tidelog.WrongExpectedVersion) as info:
            await store.delete_stream("ghost-1", tidelog.STREAM_EXISTS)
        assert info.value.actual is None
        assert await stream_names(store) == []
        await store.delete_stream("ghost-1")
        with pytest.raises(tidelog.StreamDeleted):
            await collect(store.read_stream("ghost-1"))
        with pytest.raises(tidelog.StreamDeleted):
            await store.append("ghost-1", [ev()])
        infos = [s async for s in store.list_streams()]
        assert infos == [tidelog.StreamInfo(name="ghost-1", version=None, deleted=True)]
        assert await store.last_position() == 0

    @pytest.mark.parametrize(
        "read",
        [
            pytest.param({"limit": 0}, id="limit-0"),
            pytest.param({"limit": 1}, id="limit-1"),
            pytest.param({"from_version": 99}, id="past-the-end"),
            pytest.param({"from_version": 99, "limit": 0}, id="past-the-end-limit-0"),
            pytest.param({"backwards": True, "from_version": -1, "limit": 0}, id="back-limit-0"),
        ],
    )
    async def test_deleted_stream_refuses_reads_whatever_the_range(
        self, store: tidelog.Store, read: dict[str, Any]
    ) -> None:
        """The tombstone is checked before the range: even a read of nothing raises."""
        await store.append("order-1", [ev(), ev()])
        await store.delete_stream("order-1")
        await store.delete_stream("ghost-1")  # a tombstone on a name never written
        for name in ("order-1", "ghost-1"):
            with pytest.raises(tidelog.StreamDeleted) as info:
                await collect(store.read_stream(name, **read))
            assert info.value.stream == name
        # a stream that does not exist is no error: it reads as empty
        assert await stream_versions(store, "nothing-1", **read) == []

    async def test_purge_system_stream_erases_it_or_is_not_supported(
        self, store: tidelog.Store
    ) -> None:
        """`purge_stream` is optional; where offered it really erases a `$` stream."""
        await store.append("order-1", [ev()])
        key = ev("KeyCreated", b"secret")
        await store.append("$keys-1", [key, ev()])
        await store.append("order-1", [ev()])
        try:
            await store.purge_stream("$keys-1")
        except tidelog.NotSupported:
            assert await stream_versions(store, "$keys-1") == [0, 1]
            assert await all_positions(store) == [1, 2, 3, 4]
            return
        assert await stream_versions(store, "$keys-1") == []
        logged = await collect(store.read_all())
        assert [e.position for e in logged] == [1, 4]
        assert all(e.stream == "order-1" for e in logged)
        assert await stream_names(store) == ["order-1"]
        # The ids are forgotten too: the stream can be written again from version 0.
        again = await store.append("$keys-1", [key], tidelog.NO_STREAM)
        assert again.version == 0
        assert again.position > 4
        with pytest.raises(tidelog.InvalidInput):
            await store.purge_stream("order-1")
        with pytest.raises(tidelog.InvalidStreamName):
            await store.purge_stream("$../x")
        assert await stream_versions(store, "order-1") == [0, 1]

    # ------------------------------------------------------------- names

    @pytest.mark.parametrize(
        "name", [n for _, n in INVALID_NAMES], ids=[i for i, _ in INVALID_NAMES]
    )
    async def test_invalid_stream_names_are_refused(self, store: tidelog.Store, name: str) -> None:
        with pytest.raises(tidelog.InvalidStreamName) as info:
            await store.append(name, [ev()])
        assert info.value.name is not None
        assert isinstance(info.value, ValueError)
        with pytest.raises(tidelog.InvalidStreamName):
            await collect(store.read_stream(name))
        with pytest.raises(tidelog.InvalidStreamName):
            await store.delete_stream(name)
        if self.supports_multi_stream_atomic:
            with pytest.raises(tidelog.InvalidStreamName):
                await store.append_many(
                    {"ok-1": tidelog.AppendRequest([ev()]), name: tidelog.AppendRequest([ev()])}
                )
        assert await store.last_position() == 0
        assert await stream_names(store) == []

    async def test_non_string_stream_name_is_refused(self, store: tidelog.Store) -> None:
        for name in (None, 42, b"order-1"):
            with pytest.raises(tidelog.InvalidStreamName):
                await store.append(cast(Any, name), [ev()])
        assert await store.last_position() == 0

    @pytest.mark.parametrize("name", VALID_NAMES, ids=[n[:20] for n in VALID_NAMES])
    async def test_valid_stream_names_round_trip(self, store: tidelog.Store, name: str) -> None:
        event = ev()
        await store.append(name, [event])
        [read] = await collect(store.read_stream(name))
        assert (read.id, read.stream) == (event.id, name)
        [logged] = await collect(store.read_all())
        assert logged.stream == name
        assert await stream_names(store) == [name]

    # ------------------------------------------------------------- invalid events

    @pytest.mark.parametrize(
        "make_events",
        [
            pytest.param(lambda: [ev("bad type")], id="type-with-space"),
            pytest.param(lambda: [ev("")], id="empty-type"),
            pytest.param(lambda: [ev("T/../x")], id="type-with-slash"),
            pytest.param(lambda: [ev("T" * 201)], id="type-too-long"),
            pytest.param(lambda: [ev(cast(Any, 7))], id="type-not-str"),
            pytest.param(lambda: [ev(data=cast(Any, "text"))], id="data-str"),
            pytest.param(lambda: [ev(data=cast(Any, bytearray(b"x")))], id="data-bytearray"),
            pytest.param(lambda: [ev(metadata={"x": object()})], id="metadata-not-json"),
            pytest.param(lambda: [ev(metadata=cast(Any, {1: "x"}))], id="metadata-int-key"),
            pytest.param(lambda: [ev(metadata=cast(Any, ["x"]))], id="metadata-list"),
            pytest.param(lambda: [ev(id=cast(Any, "not-a-uuid"))], id="id-not-uuid"),
            pytest.param(lambda: [ev(schema_version=0)], id="schema-version-zero"),
            pytest.param(lambda: [ev(schema_version=cast(Any, True))], id="schema-version-bool"),
            pytest.param(lambda: _twice(ev()), id="duplicate-ids"),
            pytest.param(lambda: _same_id_twice(uuid4()), id="same-id-twice"),
            pytest.param(lambda: [], id="empty-list"),
            pytest.param(ev, id="single-event-not-list"),
            pytest.param(lambda: [ev(), {"type": "Happened"}], id="dict-not-event"),
            pytest.param(lambda: "Happened", id="string"),
            pytest.param(lambda: [ev(), None], id="none-in-list"),
        ],
    )
    async def test_invalid_events_are_refused_and_nothing_is_written(
        self, store: tidelog.Store, make_events: Callable[[], object]
    ) -> None:
        await store.append("order-1", [ev()])
        with pytest.raises(tidelog.InvalidEvent):
            await store.append("order-1", cast(Any, make_events()))
        with pytest.raises(tidelog.InvalidEvent):
            await store.append("order-2", cast(Any, make_events()))
        assert await stream_versions(store, "order-1") == [0]
        assert await stream_names(store) == ["order-1"]
        assert await store.last_position() == 1

    async def test_append_many_invalid_input(self, store: tidelog.Store) -> None:
        with pytest.raises(tidelog.InvalidEvent):
            await store.append_many({})
        with pytest.raises(tidelog.InvalidEvent):
            await store.append_many(cast(Any, [("a-1", tidelog.AppendRequest([ev()]))]))
        with pytest.raises(tidelog.InvalidEvent):
            await store.append_many({"a-1": cast(Any, [ev()])})
        shared = ev()
        if self.supports_multi_stream_atomic:
            with pytest.raises(tidelog.InvalidEvent):
                await store.append_many(
                    {
                        "a-1": tidelog.AppendRequest([shared]),
                        "b-1": tidelog.AppendRequest([shared]),
                    }
                )
        assert await store.last_position() == 0

    # ------------------------------------------------------------- list_streams

    async def test_list_streams(self, store: tidelog.Store) -> None:
        assert [s async for s in store.list_streams()] == []
        await store.append("order-2", [ev()])
        await store.append("invoice-1", [ev(), ev(), ev()])
        await store.append("order-10", [ev(), ev()])
        await store.append("order", [ev()])
        infos = [s async for s in store.list_streams()]
        assert infos == [
            tidelog.StreamInfo(name="invoice-1", version=2),
            tidelog.StreamInfo(name="order", version=0),
            tidelog.StreamInfo(name="order-10", version=1),
            tidelog.StreamInfo(name="order-2", version=0),
        ]
        assert await stream_names(store, "order") == ["order", "order-10", "order-2"]
        assert await stream_names(store, "invoice") == ["invoice-1"]
        assert await stream_names(store, "missing") == []
        assert [s.category for s in infos] == ["invoice", "order", "order", "order"]

    # ------------------------------------------------------------- closed store

    async def test_closed_store_refuses_every_operation(self, tmp_path: pathlib.Path) -> None:
        store = await self.open_store(tmp_path)
        await store.append("order-1", [ev()])
        membership = await store.join_group("g", "order", "m1", lease=LONG_LEASE)
        await store.close()
        await store.close()  # idempotent
        calls: list[Callable[[], object]] = [
            lambda: store.append("order-1", [ev()]),
            lambda: store.append_many({"order-1": tidelog.AppendRequest([ev()])}),
            lambda: store.read_stream("order-1"),
            lambda: store.delete_stream("order-1"),
            store.list_streams,
            store.read_all,
            store.last_position,
            store.subscribe,
            lambda: store.join_group("g", "order", "m2"),
            lambda: store.heartbeat("g", "order", "m1"),
            lambda: store.leave_group("g", "order", "m1"),
            lambda: store.commit("g", "order", 0, 1, member="m1", generation=membership.generation),
            lambda: store.checkpoints("g", "order"),
            lambda: store.describe_group("g", "order"),
            store.list_groups,
        ]
        for call in calls:
            with pytest.raises(tidelog.StoreClosed):
                await exhaust(call())

    async def test_async_context_manager_closes(self, tmp_path: pathlib.Path) -> None:
        async with await self.open_store(tmp_path) as store:
            await store.append("order-1", [ev()])
        with pytest.raises(tidelog.StoreClosed):
            await store.append("order-1", [ev()])

    async def test_each_open_store_is_fresh_and_isolated(self, tmp_path: pathlib.Path) -> None:
        first = await self.open_store(tmp_path)
        second = await self.open_store(tmp_path)
        try:
            await first.append("order-1", [ev()])
            assert await second.last_position() == 0
            assert await stream_names(second) == []
        finally:
            await first.close()
            await second.close()


# =========================================================================== layer 2


class LogSuite(SuiteBase):
    """Layer 2: the global log, its filters and subscriptions."""

    async def _populate(self, store: tidelog.Store) -> list[tidelog.RecordedEvent]:
        await store.append("order-1", [ev("Created"), ev("Paid")])
        await store.append("invoice-1", [ev("Created")])
        await store.append("order-2", [ev("Created")])
        await store.append("user-7", [ev("Registered"), ev("Renamed")])
        await store.append("order-1", [ev("Shipped")])
        await store.append("invoice-2", [ev("Paid")])
        return await collect(store.read_all())

    async def test_read_all_in_position_order(self, store: tidelog.Store) -> None:
        assert await all_positions(store) == []
        assert await store.last_position() == 0
        events = await self._populate(store)
        assert [e.position for e in events] == list(range(1, 9))
        assert await store.last_position() == 8
        assert [(e.stream, e.version, e.type) for e in events] == [
            ("order-1", 0, "Created"),
            ("order-1", 1, "Paid"),
            ("invoice-1", 0, "Created"),
            ("order-2", 0, "Created"),
            ("user-7", 0, "Registered"),
            ("user-7", 1, "Renamed"),
            ("order-1", 2, "Shipped"),
            ("invoice-2", 0, "Paid"),
        ]

    async def test_read_all_from_position_and_limit(self, store: tidelog.Store) -> None:
        await self._populate(store)
        assert await all_positions(store, from_position=0) == list(range(1, 9))
        assert await all_positions(store, from_position=1) == list(range(1, 9))
        assert await all_positions(store, from_position=4) == list(range(4, 9))
        assert await all_positions(store, from_position=8) == [8]
        assert await all_positions(store, from_position=9) == []
        assert await all_positions(store, from_position=1000) == []
        assert await all_positions(store, limit=3) == [1, 2, 3]
        assert await all_positions(store, from_position=5, limit=2) == [5, 6]
        assert await all_positions(store, limit=0) == []
        with pytest.raises(tidelog.InvalidInput):
            await all_positions(store, from_position=-1)
        with pytest.raises(tidelog.InvalidInput):
            await all_positions(store, limit=-1)

    async def test_read_all_filters(self, store: tidelog.Store) -> None:
        events = await self._populate(store)

        def expect(pred: Callable[[tidelog.RecordedEvent], bool]) -> list[int]:
            return [e.position for e in events if pred(e)]

        assert await all_positions(store, categories=["order"]) == expect(
            lambda e: e.category == "order"
        )
        assert await all_positions(store, categories={"order", "user"}) == expect(
            lambda e: e.category in ("order", "user")
        )
        assert await all_positions(store, categories=[]) == []
        assert await all_positions(store, categories=["nothing"]) == []
        assert await all_positions(store, types=["Created"]) == expect(
            lambda e: e.type == "Created"
        )
        assert await all_positions(store, types=("Paid", "Renamed")) == expect(
            lambda e: e.type in ("Paid", "Renamed")
        )
        assert await all_positions(store, categories=["order"], types=["Created"]) == expect(
            lambda e: e.category == "order" and e.type == "Created"
        )
        assert (
            await all_positions(store, categories=["order"], types=["Created", "Shipped"], limit=2)
            == expect(lambda e: e.category == "order" and e.type in ("Created", "Shipped"))[:2]
        )
        assert await all_positions(store, categories=["order"], from_position=3) == expect(
            lambda e: e.category == "order" and e.position >= 3
        )
        with pytest.raises(tidelog.InvalidInput):
            await all_positions(store, categories=cast(Any, "order"))
        with pytest.raises(tidelog.InvalidInput):
            await all_positions(store, types=cast(Any, "Created"))

    async def test_read_page_is_read_all_as_a_list(self, store: tidelog.Store) -> None:
        """`read_page`, the consumer reader's call, returns what `read_all` yields."""
        await self._populate(store)
        partition = tidelog.partition_of("order-1", store.partition_count)
        cases: list[tuple[int, list[str] | None, list[str] | None, int, list[int] | None]] = [
            (0, None, None, 100, None),
            (3, None, None, 2, None),
            (0, ["order"], None, 100, None),
            (2, ["order", "user"], ["Created", "Renamed"], 100, None),
            (0, ["order"], None, 100, [partition]),
            (0, [], None, 100, None),
            (0, None, None, 0, None),
            (9, None, None, 100, None),
            (2**70, None, None, 100, None),
        ]
        for start, cats, tys, limit, parts in cases:
            page = await store.read_page(start, cats, tys, limit, parts)
            assert isinstance(page, list)
            assert page == await collect(store.read_all(start, cats, tys, limit, parts)), (
                start,
                cats,
                tys,
                limit,
                parts,
            )
        for bad in (
            (-1, None, None, 10, None),
            (0, None, None, -1, None),
            (0, cast(Any, "order"), None, 10, None),
            (0, None, None, 10, [-1]),
        ):
            with pytest.raises(tidelog.InvalidInput):
                await store.read_page(*bad)

    async def test_count_events_agrees_with_read_all(self, store: tidelog.Store) -> None:
        events = await self._populate(store)
        assert await store.count_events() == len(events)
        assert await store.count_events(4) == 5
        assert await store.count_events(0, ["order"]) == 4
        assert await store.count_events(5, ["order", "user"]) == 3
        partition = tidelog.partition_of("order-1", store.partition_count)
        expected = [
            e
            for e in events
            if e.category == "order"
            and tidelog.partition_of(e.stream, store.partition_count) == partition
        ]
        assert await store.count_events(0, ["order"], [partition]) == len(expected)
        assert await store.count_events(0, [], None) == 0
        assert await store.count_events(99) == 0

    async def test_reads_from_beyond_any_position_find_nothing(self, store: tidelog.Store) -> None:
        """A start past the largest storable position or version (2**63 - 1) is no
        error (a driver's integer overflow must not leak out): nothing is there."""
        await store.append("order-1", [ev(), ev()])
        for start in (2**63 - 1, 2**63, 2**70):
            assert [e async for e in store.read_all(from_position=start)] == []
            assert await store.count_events(start) == 0
            assert [e async for e in store.read_stream("order-1", from_version=start)] == []
            backwards = store.read_stream("order-1", from_version=start, backwards=True)
            assert [e.version async for e in backwards] == [1, 0]

    async def test_read_all_partition_filter(self, store: tidelog.Store) -> None:
        count = store.partition_count
        assert isinstance(count, int)
        assert count >= 1
        for i in range(24):
            await store.append(f"item-{i}", [ev()])
        events = await collect(store.read_all())
        by_partition: dict[int, list[int]] = {}
        for e in events:
            by_partition.setdefault(tidelog.partition_of(e.stream, count), []).append(e.position)
        for partition, positions in by_partition.items():
            assert await all_positions(store, partitions=[partition]) == positions
        some = sorted(by_partition)[:2]
        assert await all_positions(store, partitions=some) == sorted(
            p for part in some for p in by_partition[part]
        )
        assert await all_positions(store, partitions=[]) == []
        assert await all_positions(store, partitions=[count + 5]) == []
        first = sorted(by_partition)[0]
        assert (
            await all_positions(store, partitions=[first], categories=["nothing"], types=None) == []
        )
        assert await all_positions(store, partitions=[first], limit=1) == by_partition[first][:1]
        # Numbers the store has no partition for match nothing, however big.
        for missing in (count, 2**31, 2**63, 2**70):
            assert await all_positions(store, partitions=[missing]) == []
            assert await store.count_events(partitions=[missing, first]) == len(by_partition[first])

    @pytest.mark.parametrize(
        "partitions",
        [
            pytest.param(0, id="int"),
            pytest.param("0", id="str"),
            pytest.param(b"\x00", id="bytes"),
            pytest.param(["0"], id="str-item"),
            pytest.param([0.0], id="float-item"),
            pytest.param([True], id="bool-item"),
            pytest.param([None], id="none-item"),
            pytest.param([0, -1], id="negative-item"),
            pytest.param([[0]], id="unhashable-item"),
        ],
    )
    async def test_invalid_partitions_filter_is_refused(
        self, store: tidelog.Store, partitions: object
    ) -> None:
        """The same `InvalidInput` on every engine, from reads, counts and subscriptions."""
        await store.append("order-1", [ev()])
        bad = cast(Any, partitions)
        with pytest.raises(tidelog.InvalidInput):
            await collect(store.read_all(partitions=bad))
        with pytest.raises(tidelog.InvalidInput):
            await store.count_events(partitions=bad)
        async with subscribed(store, partitions=bad) as subscription:
            with pytest.raises(tidelog.InvalidInput):
                await take(subscription, 1)

    async def test_reader_never_finds_an_event_below_what_it_has_seen(
        self, store: tidelog.Store
    ) -> None:
        """Concurrent writers, one reader paging from its last position: nothing is skipped."""
        writers, appends_each = 4, 15
        done = asyncio.Event()

        async def writer(index: int) -> None:
            for n in range(appends_each):
                stream = f"w{index}-{n % 3}"
                await store.append(stream, [ev("A"), ev("B")] if n % 2 else [ev("A")])
                await asyncio.sleep(0)

        seen: list[tidelog.RecordedEvent] = []

        async def reader() -> None:
            next_position = 0
            while True:
                finished = done.is_set()
                async for e in store.read_all(from_position=next_position):
                    if seen:
                        assert e.position > seen[-1].position, (e.position, seen[-1].position)
                    seen.append(e)
                    next_position = e.position + 1
                if finished:
                    return
                await asyncio.sleep(0)

        total = writers * (appends_each + appends_each // 2)
        async with asyncio.timeout(WAIT * 3), subscribed(store) as subscription:
            read_task = asyncio.create_task(reader())
            subscribed_task = asyncio.create_task(take(subscription, total))
            await asyncio.gather(*(writer(i) for i in range(writers)))
            done.set()
            await read_task
            live = await subscribed_task
        final = await collect(store.read_all())
        assert [e.id for e in seen] == [e.id for e in final]
        assert [e.id for e in live] == [e.id for e in final]
        assert len(final) == total
        assert [e.position for e in final] == list(range(1, len(final) + 1))

    # ------------------------------------------------------------- subscriptions

    async def test_subscription_catch_up_then_live_without_loss_or_repeat(
        self, store: tidelog.Store
    ) -> None:
        await store.append("order-1", [ev() for _ in range(10)])
        async with subscribed(store) as sub:
            got = await take(sub, 1)
            # Appended while the subscription is still catching up.
            await store.append("order-2", [ev() for _ in range(5)])
            got += await take(sub, 14)
            # Now live: appended after the subscriber has caught up.
            await store.append("order-3", [ev(), ev()])
            got += await take(sub, 2)
            await store.append("order-1", [ev()])
            got += await take(sub, 1)
        assert [e.position for e in got] == list(range(1, 19))
        assert [e.id for e in got] == [e.id for e in await collect(store.read_all())]

    async def test_long_backlog_pages_without_loss_or_repeat(self, store: tidelog.Store) -> None:
        """Engines read in pages: a backlog longer than any page, with writers still going."""
        for n in range(12):
            await store.append(f"bulk-{n % 3}", [ev(f"T{n % 2}") for _ in range(100)])
        assert await all_positions(store) == list(range(1, 1201))
        versions = await stream_versions(store, "bulk-0", backwards=True, from_version=-1)
        assert versions == list(range(399, -1, -1))
        assert (
            await all_positions(store, types=["T1"], from_position=150, limit=250)
            == [p for p in range(150, 1201) if ((p - 1) // 100) % 2 == 1][:250]
        )

        async def writer() -> None:
            for n in range(3):
                await store.append(f"late-{n}", [ev() for _ in range(100)])
                await asyncio.sleep(0)

        async with subscribed(store) as subscription:
            writing = asyncio.create_task(writer())
            got = await take(subscription, 1500)
            await writing
        assert [e.position for e in got] == list(range(1, 1501))

    async def test_subscription_live_from_empty_store(self, store: tidelog.Store) -> None:
        async with subscribed(store) as sub:
            pending = asyncio.create_task(take(sub, 3))
            await asyncio.sleep(0.05)
            await store.append("order-1", [ev()])
            await store.append("order-2", [ev(), ev()])
            got = await pending
        assert [(e.stream, e.position) for e in got] == [
            ("order-1", 1),
            ("order-2", 2),
            ("order-2", 3),
        ]

    async def test_subscription_from_position(self, store: tidelog.Store) -> None:
        await store.append("order-1", [ev() for _ in range(6)])
        async with subscribed(store, from_position=4) as sub:
            got = await take(sub, 3)
            await store.append("order-1", [ev()])
            got += await take(sub, 1)
        assert [e.position for e in got] == [4, 5, 6, 7]

    async def test_subscription_filters(self, store: tidelog.Store) -> None:
        count = store.partition_count
        await store.append("order-1", [ev("Created"), ev("Paid")])
        await store.append("invoice-1", [ev("Created")])
        target = tidelog.partition_of("order-1", count)
        async with (
            subscribed(store, categories=["order"]) as by_category,
            subscribed(store, types=["Created"]) as by_type,
            subscribed(store, categories=["order", "invoice"], types=["Paid"]) as combined,
            subscribed(store, partitions=[target]) as by_partition,
        ):
            cat_got = await take(by_category, 2)
            type_got = await take(by_type, 2)
            combined_got = await take(combined, 1)
            await store.append("user-1", [ev("Created"), ev("Paid")])
            await store.append("order-2", [ev("Paid")])
            await store.append("invoice-2", [ev("Paid")])
            cat_got += await take(by_category, 1)
            type_got += await take(by_type, 1)
            combined_got += await take(combined, 2)
            everything = await collect(store.read_all())
            in_target = [
                e.position for e in everything if tidelog.partition_of(e.stream, count) == target
            ]
            part_got = await take(by_partition, len(in_target))
        assert [(e.stream, e.type) for e in cat_got] == [
            ("order-1", "Created"),
            ("order-1", "Paid"),
            ("order-2", "Paid"),
        ]
        assert [(e.stream, e.type) for e in type_got] == [
            ("order-1", "Created"),
            ("invoice-1", "Created"),
            ("user-1", "Created"),
        ]
        assert [(e.stream, e.type) for e in combined_got] == [
            ("order-1", "Paid"),
            ("order-2", "Paid"),
            ("invoice-2", "Paid"),
        ]
        assert [e.position for e in part_got] == in_target

    @pytest.mark.parametrize(
        "empty",
        [
            pytest.param({"categories": []}, id="categories"),
            pytest.param({"types": ()}, id="types"),
            pytest.param({"partitions": set()}, id="partitions"),
        ],
    )
    async def test_subscription_with_an_empty_filter_yields_nothing(
        self, tmp_path: pathlib.Path, empty: dict[str, Any]
    ) -> None:
        """An empty filter matches nothing (as in `read_all`); it is not "no filter"."""
        store = await self.open_store(tmp_path)
        await store.append("order-1", [ev("Created")])
        received: list[tidelog.RecordedEvent] = []

        async def consume() -> None:
            async for e in store.subscribe(**empty):
                received.append(e)

        # a subscription without that filter gets the events, live ones too
        async with _until_store_closed(store, consume), subscribed(store) as everything:
            await take(everything, 1)
            await store.append("order-2", [ev("Created")])
            await take(everything, 1)
        assert received == []

    async def test_multiple_subscribers_each_get_everything(self, store: tidelog.Store) -> None:
        await store.append("order-1", [ev(), ev()])
        async with subscribed(store) as s1, subscribed(store) as s2, subscribed(store) as s3:
            tasks = [asyncio.create_task(take(sub, 6)) for sub in (s1, s2, s3)]
            await asyncio.sleep(0.05)
            await store.append("order-2", [ev(), ev()])
            await store.append("order-3", [ev(), ev()])
            results = await asyncio.gather(*tasks)
        for got in results:
            assert [e.position for e in got] == [1, 2, 3, 4, 5, 6]

    async def test_subscription_ends_with_store_closed(self, tmp_path: pathlib.Path) -> None:
        store = await self.open_store(tmp_path)
        await store.append("order-1", [ev()])
        received: list[tidelog.RecordedEvent] = []
        caught_up = asyncio.Event()

        async def consume() -> None:
            async for e in store.subscribe():
                received.append(e)
                caught_up.set()

        async with _until_store_closed(store, consume), asyncio.timeout(WAIT):
            await caught_up.wait()
        assert [e.position for e in received] == [1]


@contextlib.asynccontextmanager
async def _until_store_closed(
    store: tidelog.Store, consume: Callable[[], Coroutine[Any, Any, None]]
) -> AsyncIterator[None]:
    """Run `consume` (a subscriber) as a task during the block; then close the
    store, and the subscription must end with `StoreClosed`."""
    task = asyncio.create_task(consume())
    try:
        yield
        await store.close()
        with pytest.raises(tidelog.StoreClosed):
            async with asyncio.timeout(WAIT):
                await task
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await store.close()


# =========================================================================== layer 3


class GroupsSuite(SuiteBase):
    """Layer 3: consumer groups, leases, fencing and checkpoints."""

    async def test_sole_member_gets_every_partition(self, store: tidelog.Store) -> None:
        m = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        count = store.partition_count
        assert (m.group, m.category, m.member) == ("billing", "order", "m1")
        assert m.partitions == tuple(range(count))
        assert m.partition_count == count
        assert m.generation >= 1
        assert [g.member for g in m.members] == ["m1"]
        assert m.members[0].partitions == tuple(range(count))

    async def test_rejoin_keeps_generation(self, store: tidelog.Store) -> None:
        first = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        again = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        assert again.generation == first.generation
        assert again.partitions == first.partitions

    async def test_second_member_bumps_generation_and_splits_deterministically(
        self, store: tidelog.Store
    ) -> None:
        count = store.partition_count
        m1 = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        m2 = await store.join_group("billing", "order", "m2", lease=LONG_LEASE)
        assert m2.generation > m1.generation
        expected = assign_partitions(["m1", "m2"], count)
        assert m2.partitions == expected["m2"]
        m1_now = await store.heartbeat("billing", "order", "m1", lease=LONG_LEASE)
        assert m1_now.generation == m2.generation
        assert m1_now.partitions == expected["m1"]
        assert set(m1_now.partitions).isdisjoint(m2.partitions)
        assert sorted(m1_now.partitions + m2.partitions) == list(range(count))
        assert [(g.member, g.partitions) for g in m1_now.members] == [
            ("m1", expected["m1"]),
            ("m2", expected["m2"]),
        ]
        # Partition p goes to the (p mod n)-th member in name order.
        assert expected["m1"] == tuple(range(0, count, 2))
        # Groups on other categories or with other names are independent.
        other = await store.join_group("billing", "invoice", "m9", lease=LONG_LEASE)
        assert other.partitions == tuple(range(count))
        other = await store.join_group("audit", "order", "m9", lease=LONG_LEASE)
        assert other.partitions == tuple(range(count))

    async def test_heartbeat_renews_lease(self, store: tidelog.Store) -> None:
        joined = await store.join_group("billing", "order", "m1", lease=5.0)
        renewed = await store.heartbeat("billing", "order", "m1", lease=LONG_LEASE)
        assert renewed.generation == joined.generation
        assert renewed.partitions == joined.partitions
        assert renewed.members[0].lease_expires_at > joined.members[0].lease_expires_at

    async def test_heartbeat_of_unknown_member_is_stale(self, store: tidelog.Store) -> None:
        await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        with pytest.raises(tidelog.StaleGeneration) as info:
            await store.heartbeat("billing", "order", "stranger", lease=LONG_LEASE)
        assert (info.value.group, info.value.category, info.value.member) == (
            "billing",
            "order",
            "stranger",
        )
        assert isinstance(info.value, tidelog.GroupError)

    async def _wait_for_members(
        self, store: tidelog.Store, group: str, category: str, members: Sequence[str]
    ) -> tidelog.Membership:
        async with asyncio.timeout(WAIT):
            while True:
                described = await store.describe_group(group, category)
                assert described is not None
                if [g.member for g in described.members] == list(members):
                    return described
                await asyncio.sleep(0.05)

    async def test_lease_expiry_removes_member_and_bumps_generation(
        self, store: tidelog.Store
    ) -> None:
        await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        # "m0" sorts first, so it owns partition 0 whatever the partition count.
        short = await store.join_group("billing", "order", "m0", lease=0.3)
        assert 0 in short.partitions
        await asyncio.sleep(0.35)
        described = await self._wait_for_members(store, "billing", "order", ["m1"])
        assert described.generation > short.generation
        with pytest.raises(tidelog.StaleGeneration):
            await store.heartbeat("billing", "order", "m0", lease=LONG_LEASE)
        with pytest.raises(tidelog.StaleGeneration):
            await commit_billing(store, short.partitions[0], 1, short.generation, member="m0")
        m1 = await store.heartbeat("billing", "order", "m1", lease=LONG_LEASE)
        assert m1.partitions == tuple(range(store.partition_count))
        assert m1.generation >= described.generation
        assert await store.checkpoints("billing", "order") == {}

    async def test_leave_moves_partitions_at_once(self, store: tidelog.Store) -> None:
        await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        m2 = await store.join_group("billing", "order", "m2", lease=LONG_LEASE)
        await store.leave_group("billing", "order", "m2")
        described = await store.describe_group("billing", "order")
        assert described is not None
        assert [g.member for g in described.members] == ["m1"]
        assert described.generation > m2.generation
        m1 = await store.heartbeat("billing", "order", "m1", lease=LONG_LEASE)
        assert m1.partitions == tuple(range(store.partition_count))
        assert m1.generation == described.generation
        with pytest.raises(tidelog.StaleGeneration):
            await store.heartbeat("billing", "order", "m2", lease=LONG_LEASE)
        # Leaving twice (or a member never seen) changes nothing.
        await store.leave_group("billing", "order", "m2")
        await store.leave_group("billing", "order", "never")
        after = await store.describe_group("billing", "order")
        assert after is not None
        assert after.generation == described.generation

    # ------------------------------------------------------------- cooperative hand-over

    async def test_a_cooperative_holder_keeps_a_moved_partition_until_it_releases_it(
        self, store: tidelog.Store
    ) -> None:
        """The hand-over that makes a graceful join cost no duplicate (#14 item 11): the
        new owner waits while the holder commits what it handled and releases it."""
        count = store.partition_count
        if count < 2:
            pytest.skip("needs at least two partitions")
        everything = tuple(range(count))
        target = assign_partitions(["m1", "m2"], count)
        moved = target["m2"][0]
        await store.append("order-1", [ev() for _ in range(5)])
        m1 = await store.join_group("billing", "order", "m1", lease=LONG_LEASE, cooperative=True)
        assert (m1.partitions, m1.revoking, m1.awaiting) == (everything, (), ())
        m2 = await store.join_group("billing", "order", "m2", lease=LONG_LEASE, cooperative=True)
        assert m2.generation > m1.generation
        assert (m2.partitions, m2.revoking, m2.awaiting) == ((), (), target["m2"])
        with pytest.raises(tidelog.StaleGeneration):  # it waits: not its partition yet
            await store.commit("billing", "order", moved, 2, member="m2", generation=m2.generation)
        m1 = await store.heartbeat("billing", "order", "m1", lease=LONG_LEASE)
        assert m1.generation == m2.generation
        assert (m1.partitions, m1.revoking, m1.awaiting) == (everything, target["m2"], ())
        assert [(g.member, g.partitions) for g in m1.members] == [("m1", everything), ("m2", ())]
        # the holder commits what it handled, then releases the partition
        await store.commit("billing", "order", moved, 3, member="m1", generation=m1.generation)
        released = await store.heartbeat(
            "billing", "order", "m1", lease=LONG_LEASE, release=m1.revoking
        )
        assert released.generation > m1.generation
        assert (released.partitions, released.revoking) == (target["m1"], ())
        with pytest.raises(tidelog.StaleGeneration):
            await store.commit(
                "billing", "order", moved, 4, member="m1", generation=released.generation
            )
        m2 = await store.heartbeat("billing", "order", "m2", lease=LONG_LEASE)
        assert (m2.partitions, m2.awaiting) == (target["m2"], ())
        assert m2.generation == released.generation
        assert (await store.checkpoints("billing", "order"))[moved] == 3
        await store.commit("billing", "order", moved, 5, member="m2", generation=m2.generation)
        assert (await store.checkpoints("billing", "order"))[moved] == 5
        # releasing again, or a partition it is not asked to give up, changes nothing
        again = await store.heartbeat(
            "billing", "order", "m1", lease=LONG_LEASE, release=everything
        )
        assert (again.generation, again.partitions) == (m2.generation, target["m1"])

    async def test_a_cooperative_holder_that_leaves_or_never_releases_loses_its_partitions(
        self, store: tidelog.Store
    ) -> None:
        count = store.partition_count
        if count < 2:
            pytest.skip("needs at least two partitions")
        target = assign_partitions(["m1", "m2"], count)
        # leaving hands everything over at once: nothing of it is in flight any more
        await store.join_group("billing", "order", "m1", lease=LONG_LEASE, cooperative=True)
        await store.join_group("billing", "order", "m2", lease=LONG_LEASE, cooperative=True)
        await store.leave_group("billing", "order", "m1")
        m2 = await store.heartbeat("billing", "order", "m2", lease=LONG_LEASE)
        assert (m2.partitions, m2.awaiting) == (tuple(range(count)), ())
        # a holder that heartbeats but never releases loses them one of its leases after
        # the hand-over began (its lease when it began: a short one here, yet long enough
        # that m1's next heartbeat, two calls later, lands within it on a loaded machine)
        await store.leave_group("billing", "order", "m2")
        await store.join_group("audit", "order", "m1", lease=2.0, cooperative=True)
        m2 = await store.join_group("audit", "order", "m2", lease=LONG_LEASE, cooperative=True)
        assert m2.awaiting == target["m2"]
        began = m2.generation
        m1 = await store.heartbeat("audit", "order", "m1", lease=LONG_LEASE)  # alive, long
        assert m1.revoking == target["m2"]
        async with asyncio.timeout(WAIT):
            while m2.partitions != target["m2"]:
                await asyncio.sleep(0.05)
                m2 = await store.heartbeat("audit", "order", "m2", lease=LONG_LEASE)
        assert m2.awaiting == ()
        assert m2.generation > began  # the partitions changed hands: a new generation
        m1 = await store.heartbeat("audit", "order", "m1", lease=LONG_LEASE)
        assert (m1.partitions, m1.revoking) == (target["m1"], ())
        # a member that did not join cooperatively loses a moved partition at once
        await store.join_group("eager", "order", "m1", lease=LONG_LEASE)
        m2 = await store.join_group("eager", "order", "m2", lease=LONG_LEASE, cooperative=True)
        assert (m2.partitions, m2.awaiting) == (target["m2"], ())

    async def test_a_bad_release_or_cooperative_flag_is_refused_and_changes_nothing(
        self, store: tidelog.Store
    ) -> None:
        m1 = await store.join_group("billing", "order", "m1", lease=LONG_LEASE, cooperative=True)
        for bad in ([store.partition_count], [-1], [True], ["0"], 3, "0"):
            with pytest.raises(tidelog.InvalidInput):
                await store.heartbeat(
                    "billing", "order", "m1", lease=LONG_LEASE, release=cast(Any, bad)
                )
        with pytest.raises(tidelog.InvalidInput):
            await store.join_group(
                "billing", "order", "m2", lease=LONG_LEASE, cooperative=cast(Any, "yes")
            )
        described = await store.describe_group("billing", "order")
        assert described is not None
        assert described.generation == m1.generation
        assert [g.member for g in described.members] == ["m1"]
        # refused before anything is written: a group never named stays unknown
        with pytest.raises(tidelog.InvalidInput):
            await store.heartbeat("fresh", "order", "m1", lease=LONG_LEASE, release=[-1])
        with pytest.raises(tidelog.InvalidInput):
            await store.join_group("fresh", "order", "m1", cooperative=cast(Any, 1))
        assert await store.describe_group("fresh", "order") is None

    # ------------------------------------------------------------- fencing

    async def test_commit_with_stale_generation_is_fenced(self, store: tidelog.Store) -> None:
        await store.append("order-1", [ev() for _ in range(9)])
        m1 = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        await commit_billing(store, 0, 5, m1.generation)
        m2 = await store.join_group("billing", "order", "m2", lease=LONG_LEASE)
        with pytest.raises(tidelog.StaleGeneration) as info:
            await commit_billing(store, 0, 9, m1.generation)
        assert info.value.generation == m1.generation
        assert info.value.current == m2.generation
        assert info.value.member == "m1"
        assert await store.checkpoints("billing", "order") == {0: 5}
        current = await store.heartbeat("billing", "order", "m1", lease=LONG_LEASE)
        assert 0 in current.partitions
        await commit_billing(store, 0, 9, current.generation)
        assert await store.checkpoints("billing", "order") == {0: 9}

    async def test_commit_of_an_unstorable_position_is_refused(self, store: tidelog.Store) -> None:
        m = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        await commit_billing(store, 0, 0, m.generation)
        for position in (2**63 - 1, 2**63, 2**70, -1):
            with pytest.raises(tidelog.InvalidInput):
                await commit_billing(
                    store,
                    0,
                    position,
                    m.generation,
                    appends={"invoice-1": tidelog.AppendRequest([ev()])},
                )
        assert await store.checkpoints("billing", "order") == {0: 0}
        assert [e async for e in store.read_all()] == []

    async def test_commit_beyond_the_head_is_refused(self, store: tidelog.Store) -> None:
        """A checkpoint past the newest event would make the group skip every event
        written up to it (issue #18): refused with `InvalidInput` before anything is
        written. The member is fenced first: a stale one learns `StaleGeneration`."""
        await store.append("order-1", [ev() for _ in range(5)])
        m = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        await commit_billing(store, 0, 0, m.generation)
        await commit_billing(store, 0, 2, m.generation)
        appends = {"invoice-1": tidelog.AppendRequest([ev()])}
        for position, with_appends in ((6, None), (999, None), (10_000, appends), (10**12, None)):
            if with_appends and not self.supports_transactional_commit:
                continue
            with pytest.raises(tidelog.InvalidInput):
                await commit_billing(store, 0, position, m.generation, appends=with_appends)
        assert await store.checkpoints("billing", "order") == {0: 2}
        assert await store.last_position() == 5
        assert await stream_names(store) == ["order-1"]
        # The head itself is fine.
        await commit_billing(store, 0, 5, m.generation)
        assert await store.checkpoints("billing", "order") == {0: 5}
        # A stale member beyond the head is told it is stale, not that its position is bad.
        await store.leave_group("billing", "order", "m1")
        with pytest.raises(tidelog.StaleGeneration):
            await commit_billing(store, 0, 999, m.generation)
        assert await store.checkpoints("billing", "order") == {0: 5}

    async def test_commit_by_non_owner_is_fenced(self, store: tidelog.Store) -> None:
        if store.partition_count < 2:
            pytest.skip("needs at least two partitions")
        await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        m2 = await store.join_group("billing", "order", "m2", lease=LONG_LEASE)
        foreign = next(p for p in range(store.partition_count) if p not in m2.partitions)
        with pytest.raises(tidelog.StaleGeneration):
            await commit_billing(store, foreign, 3, m2.generation, member="m2")
        with pytest.raises(tidelog.StaleGeneration):
            await commit_billing(store, 0, 3, m2.generation, member="stranger")
        with pytest.raises(tidelog.StaleGeneration):
            await commit_billing(store, store.partition_count, 3, m2.generation, member="m2")
        assert await store.checkpoints("billing", "order") == {}

    async def test_commit_after_leave_is_fenced(self, store: tidelog.Store) -> None:
        m1 = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        await store.leave_group("billing", "order", "m1")
        with pytest.raises(tidelog.StaleGeneration):
            await commit_billing(store, 0, 1, m1.generation)
        assert await store.checkpoints("billing", "order") == {}

    # ------------------------------------------------------------- checkpoints

    async def test_commit_only_moves_forward(self, store: tidelog.Store) -> None:
        await store.append("order-1", [ev() for _ in range(7)])
        m = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        assert await store.checkpoints("billing", "order") == {}
        for position, expected in ((5, 5), (3, 5), (5, 5), (7, 7), (0, 7)):
            result = await commit_billing(store, 0, position, m.generation)
            assert result == {}
            assert await store.checkpoints("billing", "order") == {0: expected}
        with pytest.raises(tidelog.InvalidInput):
            await commit_billing(store, 0, -1, m.generation)

    async def test_checkpoints_are_per_partition_group_and_category(
        self, store: tidelog.Store
    ) -> None:
        count = store.partition_count
        await store.append("order-1", [ev() for _ in range(10)])
        m = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        await commit_billing(store, 0, 10, m.generation)
        last = count - 1
        await commit_billing(store, last, 4, m.generation)
        expected = {0: 10, last: 4} if last else {0: 10}
        assert await store.checkpoints("billing", "order") == expected
        other = await store.join_group("audit", "order", "m1", lease=LONG_LEASE)
        await store.commit("audit", "order", 0, 2, member="m1", generation=other.generation)
        inv = await store.join_group("billing", "invoice", "m1", lease=LONG_LEASE)
        await store.commit("billing", "invoice", 0, 1, member="m1", generation=inv.generation)
        assert await store.checkpoints("billing", "order") == expected
        assert await store.checkpoints("audit", "order") == {0: 2}
        assert await store.checkpoints("billing", "invoice") == {0: 1}
        assert await store.checkpoints("unknown", "order") == {}
        # Checkpoints outlive membership.
        await store.leave_group("billing", "order", "m1")
        assert await store.checkpoints("billing", "order") == expected

    # ------------------------------------------------------------- transactional

    async def test_transactional_commit_writes_appends_with_checkpoint(
        self, store: tidelog.Store
    ) -> None:
        await store.append("order-1", [ev()])
        m = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        appends = {"invoice-1": tidelog.AppendRequest([ev("Issued")], tidelog.NO_STREAM)}
        if not self.supports_transactional_commit:
            with pytest.raises(tidelog.NotSupported):
                await commit_billing(store, 0, 1, m.generation, appends=appends)
            assert await store.last_position() == 1
            return
        results = await commit_billing(store, 0, 1, m.generation, appends=appends)
        assert results == {"invoice-1": tidelog.AppendResult(0, 2)}
        assert await store.checkpoints("billing", "order") == {0: 1}
        assert [e.type for e in await collect(store.read_stream("invoice-1"))] == ["Issued"]
        # A retry of the same handler output is idempotent and still moves nothing back.
        again = await commit_billing(store, 0, 1, m.generation, appends=appends)
        assert again == results
        assert await store.last_position() == 2

    async def test_stale_transactional_commit_writes_no_appends(self, store: tidelog.Store) -> None:
        if not self.supports_transactional_commit:
            pytest.skip("engine refuses transactional commits (checked elsewhere)")
        m1 = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        await store.join_group("billing", "order", "m2", lease=LONG_LEASE)
        with pytest.raises(tidelog.StaleGeneration):
            await commit_billing(
                store, 0, 1, m1.generation, appends={"invoice-1": tidelog.AppendRequest([ev()])}
            )
        assert await store.last_position() == 0
        assert await stream_names(store) == []
        assert await store.checkpoints("billing", "order") == {}

    @pytest.mark.parametrize(
        ("appends", "error"),
        [
            pytest.param(
                lambda: {"invoice 1": tidelog.AppendRequest([ev()])},
                tidelog.InvalidStreamName,
                id="invalid-stream-name",
            ),
            pytest.param(
                lambda: {"invoice-1": tidelog.AppendRequest([ev("bad type")])},
                tidelog.InvalidEvent,
                id="invalid-event",
            ),
            pytest.param(
                lambda: {"invoice-1": tidelog.AppendRequest([ev()], tidelog.NO_STREAM)},
                tidelog.WrongExpectedVersion,
                id="wrong-expected-version",
            ),
            pytest.param(
                lambda: {"invoice-1": tidelog.AppendRequest([ev()], 5)},
                tidelog.WrongExpectedVersion,
                id="wrong-exact-version",
            ),
        ],
    )
    async def test_stale_member_is_fenced_before_its_appends_are_checked(
        self,
        store: tidelog.Store,
        appends: Callable[[], dict[str, tidelog.AppendRequest]],
        error: type[tidelog.TidelogError],
    ) -> None:
        """Fencing comes first: a stale member gets `StaleGeneration`, not the error its
        appends would get from a current member, and nothing is written."""
        if not self.supports_transactional_commit:
            pytest.skip("engine refuses transactional commits (checked elsewhere)")
        await store.append("invoice-1", [ev()])
        m1 = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        await commit_billing(store, 0, 1, m1.generation)
        m2 = await store.join_group("billing", "order", "m2", lease=LONG_LEASE)
        for member, generation in (("m1", m1.generation), ("stranger", m2.generation)):
            with pytest.raises(tidelog.StaleGeneration) as info:
                await commit_billing(store, 0, 9, generation, member=member, appends=appends())
            assert (info.value.member, info.value.current) == (member, m2.generation)
        assert await store.last_position() == 1
        assert await stream_names(store) == ["invoice-1"]
        assert await store.checkpoints("billing", "order") == {0: 1}
        # A current member gets the appends' own error, and nothing is written either.
        current = await store.heartbeat("billing", "order", "m1", lease=LONG_LEASE)
        owned = current.partitions[0]
        with pytest.raises(error):
            await commit_billing(store, owned, 1, current.generation, appends=appends())
        assert await store.last_position() == 1
        assert await store.checkpoints("billing", "order") == {0: 1}

    async def test_concurrent_commits_are_decided_each_on_its_own(
        self, store: tidelog.Store
    ) -> None:
        """Engines may write concurrent commits together (one batch, one transaction):
        a stale member, a version conflict or a plain checkpoint decide only their own
        commit, and a refused commit moves no checkpoint."""
        if not self.supports_transactional_commit:
            pytest.skip("engine refuses transactional commits (checked elsewhere)")
        await store.append("invoice-2", [ev() for _ in range(9)])
        m = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        count = store.partition_count
        p = [i % count for i in range(4)]

        def commit(
            partition: int,
            position: int,
            appends: dict[str, tidelog.AppendRequest] | None,
            generation: int = m.generation,
        ) -> Coroutine[Any, Any, dict[str, tidelog.AppendResult]]:
            return commit_billing(store, partition, position, generation, appends=appends)

        outcomes = await asyncio.gather(
            commit(p[0], 5, {"invoice-1": tidelog.AppendRequest([ev()], tidelog.NO_STREAM)}),
            commit(p[1], 6, {"invoice-3": tidelog.AppendRequest([ev()], 4)}),
            commit(p[2], 7, {"invoice-4": tidelog.AppendRequest([ev()])}, m.generation + 1),
            commit(p[3], 8, None),
            commit(p[0], 9, {"invoice-5": tidelog.AppendRequest([ev(), ev()])}),
            return_exceptions=True,
        )
        first, conflict, stale, plain, last = outcomes
        assert isinstance(first, dict) and first["invoice-1"].version == 0
        assert isinstance(conflict, tidelog.WrongExpectedVersion)
        assert isinstance(stale, tidelog.StaleGeneration)
        assert plain == {}
        assert isinstance(last, dict) and last["invoice-5"].version == 1
        assert await stream_names(store) == ["invoice-1", "invoice-2", "invoice-5"]
        assert await store.last_position() == 12
        expected: dict[int, int] = {}
        for partition, position in ((p[0], 5), (p[3], 8), (p[0], 9)):
            expected[partition] = max(expected.get(partition, 0), position)
        assert await store.checkpoints("billing", "order") == expected

    async def test_failed_appends_leave_checkpoint_unchanged(self, store: tidelog.Store) -> None:
        if not self.supports_transactional_commit:
            pytest.skip("engine refuses transactional commits (checked elsewhere)")
        await store.append("order-1", [ev() for _ in range(8)])
        m = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        await commit_billing(store, 0, 3, m.generation)
        await store.append("invoice-1", [ev()])
        with pytest.raises(tidelog.WrongExpectedVersion) as info:
            await commit_billing(
                store, 0, 8, m.generation, appends={"invoice-1": tidelog.AppendRequest([ev()], 5)}
            )
        assert info.value.actual == 0
        assert await store.checkpoints("billing", "order") == {0: 3}
        assert await stream_versions(store, "invoice-1") == [0]
        if self.supports_multi_stream_atomic:
            with pytest.raises(tidelog.WrongExpectedVersion):
                await commit_billing(
                    store,
                    0,
                    8,
                    m.generation,
                    appends={
                        "receipt-1": tidelog.AppendRequest([ev()]),
                        "invoice-1": tidelog.AppendRequest([ev()], tidelog.NO_STREAM),
                    },
                )
            assert await stream_names(store) == ["invoice-1", "order-1"]
            assert await store.checkpoints("billing", "order") == {0: 3}
        with pytest.raises(tidelog.InvalidEvent):
            await commit_billing(
                store,
                0,
                8,
                m.generation,
                appends={"invoice-1": tidelog.AppendRequest([ev("bad type")])},
            )
        assert await store.checkpoints("billing", "order") == {0: 3}
        assert await store.last_position() == 9

    # ------------------------------------------------------------- describe / list

    async def test_describe_group(self, store: tidelog.Store) -> None:
        assert await store.describe_group("billing", "order") is None
        await store.join_group("billing", "order", "m2", lease=LONG_LEASE)
        m1 = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        described = await store.describe_group("billing", "order")
        assert described is not None
        assert (described.group, described.category, described.member) == (
            "billing",
            "order",
            "",
        )
        assert described.generation == m1.generation
        assert described.partitions == ()
        assert described.partition_count == store.partition_count
        expected = assign_partitions(["m1", "m2"], store.partition_count)
        assert [(g.member, g.partitions) for g in described.members] == [
            ("m1", expected["m1"]),
            ("m2", expected["m2"]),
        ]
        assert all(g.lease_expires_at > 0 for g in described.members)
        assert await store.describe_group("billing", "invoice") is None
        assert await store.describe_group("other", "order") is None

    async def test_list_groups(self, store: tidelog.Store) -> None:
        assert await store.list_groups() == []
        await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        await store.join_group("audit", "order", "m1", lease=LONG_LEASE)
        m = await store.join_group("billing", "invoice", "m1", lease=LONG_LEASE)
        await store.commit("billing", "invoice", 0, 0, member="m1", generation=m.generation)
        await store.leave_group("billing", "invoice", "m1")
        assert await store.list_groups() == [
            ("audit", "order"),
            ("billing", "invoice"),
            ("billing", "order"),
        ]

    @pytest.mark.parametrize("operation", ["heartbeat", "leave", "commit"])
    async def test_group_operations_on_an_unknown_group_register_it(
        self, store: tidelog.Store, operation: str
    ) -> None:
        """As in the memory engine: any group operation makes the group known (generation 0).

        A refused heartbeat or commit still persists the group's state, because
        it may have applied lease expiries (generation bumps) that must not be
        lost; so the group is listed and described from then on.
        """
        if operation == "heartbeat":
            with pytest.raises(tidelog.StaleGeneration) as info:
                await store.heartbeat("billing", "order", "m1", lease=LONG_LEASE)
            assert info.value.current == 0
        elif operation == "commit":
            with pytest.raises(tidelog.StaleGeneration):
                await commit_billing(store, 0, 1, 0)
        else:
            await store.leave_group("billing", "order", "m1")
        described = await store.describe_group("billing", "order")
        assert described is not None
        assert (described.generation, described.members) == (0, ())
        assert await store.list_groups() == [("billing", "order")]
        assert await store.checkpoints("billing", "order") == {}

    async def test_group_names_are_validated(self, store: tidelog.Store) -> None:
        for group, category, member in (
            ("bad group", "order", "m1"),
            ("billing", "or/der", "m1"),
            ("billing", "order", "m\x001"),
            ("", "order", "m1"),
        ):
            with pytest.raises(tidelog.TidelogError):
                await store.join_group(group, category, member, lease=LONG_LEASE)
        assert await store.list_groups() == []


class EngineSuite(StreamsSuite, LogSuite, GroupsSuite):
    """The whole contract. Subclass as `Test<Engine>` and implement `open_store`."""
