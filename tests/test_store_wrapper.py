"""Store wrappers forward the whole contract: none answers from a base-class default.

A contract default (`read_page`, `count_events` read every event) is correct
but slow; a wrapper that inherits it instead of asking the store it wraps
silently undoes the inner engine's indexes. So every public method and
property of the contract, and the write hook, must be answered by the
wrapper's own classes, and a method added to the contract later makes these
tests fail until `StoreWrapper` forwards it.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import tidelog
from tidelog.engines.contract import GroupEngine, LogEngine, StreamEngine
from tidelog.engines.wrapper import StoreWrapper
from tidelog.schemas import SchemaRegistry, ValidatingStore
from tidelog.testing.conformance import EngineSuite
from tidelog.testing.retention import RetentionSuite
from tidelog.testing.scheduling import SchedulingSuite

CONTRACT_CLASSES = (StreamEngine, LogEngine, GroupEngine, abc.ABC, object)
FRONT_ENDS = frozenset(
    {
        "append",
        "append_many",
        "commit",
        "read_stream",
        "read_all",
        "read_page",
        "count_events",
        "subscribe",
        "join_group",
        "heartbeat",
        "cancel_scheduled",
        "scheduled",
        "count_scheduled",
        "start_scheduler",
        "set_retention",
        "start_stream_at",
    }
)
"""Written once in the contract; each checks its arguments and calls an engine hook,
which wrappers forward."""
HOOKS = frozenset(
    {
        "_apply_write",
        "_read_stream",
        "_read_all",
        "_read_page",
        "_count_events",
        "_subscribe",
        "_check_open",
        "_join_group",
        "_heartbeat",
        "_schedule",
        "_take_due",
        "_next_due",
        "_forget_scheduled",
        "_cancel_scheduled",
        "_list_scheduled",
        "_count_scheduled",
        "_set_rule",
        "_start_stream_at",
    }
)
"""The engine hooks behind the front ends, and the closed-store check they ask."""


def contract_members() -> set[str]:
    """Every public method and property of the full contract, plus the hooks a wrapper
    must forward (the engine hooks, the closed-store check), minus the front ends."""
    public = {n for n in dir(GroupEngine) if not n.startswith("_")}
    return (public | HOOKS) - FRONT_ENDS - {"name"}


def answered_by_contract(wrapper: type[Any]) -> list[str]:
    """The contract members that `wrapper` answers from a class of the contract itself."""
    found = []
    for member in sorted(contract_members()):
        owner = next(k for k in wrapper.__mro__ if member in vars(k))
        if owner in CONTRACT_CLASSES:
            found.append(member)
    return found


def all_wrappers() -> list[type[StoreWrapper]]:
    found: list[type[StoreWrapper]] = []
    todo: list[type[StoreWrapper]] = [StoreWrapper]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_the_enumeration_covers_the_whole_contract() -> None:
    members = contract_members()
    for name in ("_read_page", "_count_events", "head_watch", "last_position", "partition_count"):
        assert name in members
    for name in ("purge_stream", "close", "_subscribe", "checkpoints", "poll_interval"):
        assert name in members
    assert "_apply_write" in members
    assert not members & FRONT_ENDS


def test_a_wrapper_written_by_hand_that_misses_methods_is_caught() -> None:
    """What `ValidatingStore` used to be: a handful of methods forwarded, the rest inherited."""

    class ByHand(GroupEngine):
        def __init__(self, inner: tidelog.Store) -> None:
            self.inner = inner

        def _read_all(self, *args: Any, **kwargs: Any) -> AsyncIterator[tidelog.RecordedEvent]:
            return self.inner._read_all(*args, **kwargs)

    missed = answered_by_contract(ByHand)
    assert "_read_page" in missed
    assert "_count_events" in missed
    assert "_apply_write" in missed
    assert "_read_all" not in missed


def test_validating_store_is_a_store_wrapper() -> None:
    assert ValidatingStore in all_wrappers()


@pytest.mark.parametrize("wrapper", all_wrappers(), ids=lambda w: w.__name__)
def test_wrapper_answers_no_contract_method_from_a_default(wrapper: type[StoreWrapper]) -> None:
    assert answered_by_contract(wrapper) == []


@pytest.mark.parametrize("wrapper", all_wrappers(), ids=lambda w: w.__name__)
def test_wrapper_overrides_no_front_end(wrapper: type[StoreWrapper]) -> None:
    """The front ends (`append`, `read_all`, ...) stay the contract's, so their checks run once."""
    for name in FRONT_ENDS:
        owner = next(k for k in wrapper.__mro__ if name in vars(k))
        assert owner in CONTRACT_CLASSES, name


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[tidelog.Store]:
    async with tidelog.connect(f"sqlite:///{tmp_path}/store.db?partitions=4") as store:
        yield store


async def test_validating_store_reads_pages_and_counts_through_the_inner_engine(
    sqlite_store: tidelog.Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same answers as the SQLite engine, and from its own queries: with its `_read_all`
    taken away, the contract's defaults (which iterate `_read_all`) could not answer."""
    checked = ValidatingStore(sqlite_store, SchemaRegistry(sqlite_store))
    for i in range(6):
        await checked.append(f"order-{i}", [tidelog.NewEvent(type="Placed")])
        await checked.append(f"invoice-{i}", [tidelog.NewEvent(type="Sent")])
    expected_count = await sqlite_store.count_events(3, ["order"], None)
    expected_page = await sqlite_store.read_page(2, ["order", "invoice"], None, 5, None)
    expected_part = await sqlite_store.read_page(0, ["order"], ["Placed"], 100, [1, 2])
    assert expected_count == 5
    assert len(expected_page) == 5

    def no_read_all(*args: Any, **kwargs: Any) -> AsyncIterator[tidelog.RecordedEvent]:
        raise AssertionError("answered from read_all, not the engine's own query")

    monkeypatch.setattr(sqlite_store, "_read_all", no_read_all)
    assert await checked.count_events(3, ["order"], None) == expected_count
    assert await checked.count_events() == 12
    assert await checked.read_page(2, ["order", "invoice"], None, 5, None) == expected_page
    assert await checked.read_page(0, ["order"], ["Placed"], 100, [1, 2]) == expected_part
    assert checked.head_watch() is sqlite_store.head_watch()
    assert checked.poll_interval == sqlite_store.poll_interval
    assert checked.name == sqlite_store.name == "sqlite"


async def test_a_wrapper_is_closed_when_its_inner_store_is() -> None:
    """The contract's front ends check the inner store, not a flag of the wrapper's own.

    On the memory engine, whose write hook trusts the front end's check.
    """
    inner = await tidelog.connect("memory://")
    wrapper = StoreWrapper(inner)
    await inner.close()
    with pytest.raises(tidelog.StoreClosed):
        await wrapper.append("order-1", [tidelog.NewEvent(type="Placed")])
    with pytest.raises(tidelog.StoreClosed):
        await wrapper.append_many({"order-1": tidelog.AppendRequest([tidelog.NewEvent(type="P")])})
    with pytest.raises(tidelog.StoreClosed):
        await wrapper.commit("g", "order", 0, 1, member="m1", generation=1)


async def test_validating_store_fences_a_commit_before_judging_its_events(
    sqlite_store: tidelog.Store,
) -> None:
    """As on every engine: a stale member gets `StaleGeneration` whatever it appends; a
    current one gets the `SchemaViolation`; neither writes anything."""
    schemas = SchemaRegistry(sqlite_store)
    await schemas.register(
        "Placed", {"type": "object", "properties": {"qty": {"type": "integer", "minimum": 1}}}
    )
    checked = ValidatingStore(sqlite_store, schemas)
    bad = {"order-1": tidelog.AppendRequest([tidelog.NewEvent(type="Placed", data=b'{"qty": 0}')])}
    m1 = await checked.join_group("billing", "order", "m1", lease=60.0)
    m2 = await checked.join_group("billing", "order", "m2", lease=60.0)
    with pytest.raises(tidelog.StaleGeneration) as info:
        await checked.commit(
            "billing", "order", 0, 1, member="m1", generation=m1.generation, appends=bad
        )
    assert info.value.current == m2.generation
    current = await checked.heartbeat("billing", "order", "m1", lease=60.0)
    with pytest.raises(tidelog.SchemaViolation):
        await checked.commit(
            "billing",
            "order",
            current.partitions[0],
            1,
            member="m1",
            generation=current.generation,
            appends=bad,
        )
    assert [s.name async for s in checked.list_streams("order")] == []
    assert await checked.checkpoints("billing", "order") == {}


class TestStoreWrapperConformance(EngineSuite):
    """The bare wrapper passes the whole suite: every forwarded member answers as the
    store it wraps (its members are `inner`'s own, looked up at each access)."""

    async def open_store(self, tmp_path: Path) -> tidelog.Store:
        return StoreWrapper(await tidelog.connect("memory://"))


class TestStoreWrapperRetention(RetentionSuite):
    async def open_store(self, tmp_path: Path) -> tidelog.Store:
        return StoreWrapper(await tidelog.connect("memory://"))

    def shift_clock(self, store: tidelog.Store, seconds: float) -> None:
        """The rules are the inner store's, so is the clock they decide with."""
        assert isinstance(store, StoreWrapper)
        super().shift_clock(store.inner, seconds)


class TestStoreWrapperScheduling(SchedulingSuite):
    async def open_store(self, tmp_path: Path) -> tidelog.Store:
        return StoreWrapper(await tidelog.connect("memory://"))
