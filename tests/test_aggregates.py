"""Aggregates, repositories, time travel, atomic multi-aggregate saves, snapshots."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
import pytest

import tidelog
from tidelog.aggregates import Aggregate, Repository, applies, snapshot_stream
from tidelog.codec import EventRegistry

REG = EventRegistry()


@tidelog.event("AccountOpened", registry=REG)
class Opened(msgspec.Struct):
    owner: str


@tidelog.event("Deposited", registry=REG)
class Deposited(msgspec.Struct):
    amount: int


@tidelog.event("Withdrawn", registry=REG)
class Withdrawn(msgspec.Struct):
    amount: int


class Account(Aggregate):
    category = "account"
    owner: str = ""
    balance: int = 0
    history: list[int] = msgspec.field(default_factory=list)

    def open(self, owner: str) -> None:
        if self.version is not None:
            raise ValueError("already open")
        self.record(Opened(owner))

    def deposit(self, amount: int) -> None:
        self.record(Deposited(amount))

    def withdraw(self, amount: int) -> None:
        if amount > self.balance:
            raise ValueError("insufficient funds")
        self.record(Withdrawn(amount))

    @applies
    def _opened(self, e: Opened) -> None:
        self.owner = e.owner

    @applies
    def _deposited(self, e: Deposited) -> None:
        self.balance += e.amount
        self.history.append(e.amount)

    @applies(Withdrawn)
    def _withdrawn(self, e: Withdrawn) -> None:
        self.balance -= e.amount
        self.history.append(-e.amount)


class SnapAccount(Account):
    category = "snapacct"
    snapshot_every = 10


@pytest.fixture
def store(contract_store: tidelog.Store) -> tidelog.Store:
    """The toolkit works on the engine contract: the same tests on several engines."""
    return contract_store


async def test_commands_record_events_and_repository_roundtrips(store: tidelog.Store) -> None:
    repo = Repository(store, Account, registry=REG)
    acct = repo.create("1")
    acct.open("ada")
    acct.deposit(50)
    acct.withdraw(20)
    assert acct.balance == 30 and acct.version == 2 and len(acct.pending) == 3
    with pytest.raises(ValueError):
        acct.withdraw(1000)
    await repo.save(acct)
    assert acct.pending == ()
    stored = [e async for e in store.read_stream("account-1")]
    assert [e.type for e in stored] == ["AccountOpened", "Deposited", "Withdrawn"]

    loaded = await repo.get("1")
    assert (loaded.owner, loaded.balance, loaded.history, loaded.version) == (
        "ada",
        30,
        [50, -20],
        2,
    )
    loaded.deposit(5)
    await repo.save(loaded)
    assert (await repo.get("1")).balance == 35


async def test_missing_aggregate_and_new_over_existing(store: tidelog.Store) -> None:
    repo = Repository(store, Account, registry=REG)
    with pytest.raises(tidelog.AggregateNotFound):
        await repo.get("nope")
    fresh = await repo.get_or_create("nope")
    assert fresh.version is None
    a = repo.create("2")
    a.open("x")
    await repo.save(a)
    b = repo.create("2")
    b.open("y")
    with pytest.raises(tidelog.WrongExpectedVersion) as info:
        await repo.save(b)
    assert info.value.actual == 0


async def test_concurrent_edit_raises_wrong_expected_version(store: tidelog.Store) -> None:
    repo = Repository(store, Account, registry=REG)
    a = repo.create("3")
    a.open("x")
    await repo.save(a)
    first, second = await repo.get("3"), await repo.get("3")
    first.deposit(1)
    second.deposit(2)
    await repo.save(first)
    with pytest.raises(tidelog.WrongExpectedVersion) as info:
        await repo.save(second)
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert (await repo.get("3")).balance == 1


async def test_save_several_aggregates_atomically(store: tidelog.Store) -> None:
    repo = Repository(store, Account, registry=REG)
    a, b = repo.create("a"), repo.create("b")
    a.open("a")
    b.open("b")
    await repo.save(a, b)
    a, b = await repo.get("a"), await repo.get("b")
    stale_b = await repo.get("b")
    stale_b.deposit(1)
    await repo.save(stale_b)
    a.deposit(10)
    b.deposit(10)
    with pytest.raises(tidelog.WrongExpectedVersion):
        await repo.save(a, b)  # b is stale: a must not be written either
    assert (await repo.get("a")).balance == 0
    assert (await repo.get("b")).balance == 1


async def test_time_travel_by_version_and_time(store: tidelog.Store) -> None:
    repo = Repository(store, Account, registry=REG)
    a = repo.create("tt")
    a.open("t")
    a.deposit(10)
    await repo.save(a)
    await asyncio.sleep(0.01)
    between = datetime.now(UTC)
    await asyncio.sleep(0.01)
    a.deposit(5)
    await repo.save(a)
    assert (await repo.get("tt", version=1)).balance == 10
    assert (await repo.get("tt", version=0)).balance == 0
    past = await repo.get("tt", at=between)
    assert (past.balance, past.version) == (10, 1)
    with pytest.raises(tidelog.InvalidInput):
        past.deposit(1)
    with pytest.raises(tidelog.AggregateNotFound):
        await repo.get("tt", at=datetime(2000, 1, 1, tzinfo=UTC))
    with pytest.raises(tidelog.InvalidInput):
        await repo.get("tt", version=1, at=between)


async def test_missing_handler_and_bad_declarations() -> None:
    class NoHandlers(Aggregate):
        pass

    agg = NoHandlers.create("1")
    with pytest.raises(tidelog.InvalidEvent):
        agg.record(Deposited(1))
    with pytest.raises(tidelog.InvalidInput):

        class BadCategory(Aggregate):
            category = "has-dash"

    with pytest.raises(tidelog.InvalidInput):

        class BadSnapshots(Aggregate):
            snapshot_every = 0

    with pytest.raises(tidelog.InvalidInput):

        class BadHandler(Aggregate):
            @applies
            def _x(self, e: int) -> None:
                pass


async def test_snapshots_are_written_and_used(store: tidelog.Store) -> None:
    repo = Repository(store, SnapAccount, registry=REG)
    a = repo.create("s")
    a.open("s")
    for _ in range(24):
        a.deposit(1)
    await repo.save(a)  # versions 0..24: crosses 10 and 20 -> one snapshot at 24
    snaps = [e async for e in store.read_stream(snapshot_stream("snapacct-s"))]
    assert len(snaps) == 1 and snaps[0].metadata["aggregate_version"] == 24
    for _ in range(6):
        b = await repo.get("s")
        b.deposit(1)
        await repo.save(b)  # version 30 crosses the next multiple
    snaps = [e async for e in store.read_stream(snapshot_stream("snapacct-s"))]
    assert [s.metadata["aggregate_version"] for s in snaps] == [24, 29]

    loaded = await repo.get("s")
    assert (loaded.balance, loaded.version, len(loaded.history)) == (30, 30, 30)
    # an old version below the newest snapshot still loads exactly
    assert (await repo.get("s", version=26)).balance == 26
    assert (await repo.get("s", version=3)).balance == 3


async def test_snapshot_really_is_used_for_loading(store: tidelog.Store) -> None:
    """A doctored snapshot shows the loader trusted it (and replayed only the rest)."""
    repo = Repository(store, SnapAccount, registry=REG)
    a = repo.create("d")
    a.open("d")
    for _ in range(9):
        a.deposit(1)
    await repo.save(a)
    [snap] = [e async for e in store.read_stream(snapshot_stream("snapacct-d"))]
    doctored = msgspec.json.decode(snap.data)
    doctored["balance"] = 1000
    await store.append(
        snapshot_stream("snapacct-d"),
        [
            tidelog.NewEvent(
                type=snap.type, data=msgspec.json.encode(doctored), metadata=snap.metadata
            )
        ],
    )
    assert (await repo.get("d")).balance == 1000


async def test_snapshot_of_another_state_schema_is_ignored(store: tidelog.Store) -> None:
    repo = Repository(store, SnapAccount, registry=REG)
    a = repo.create("v")
    a.open("v")
    for _ in range(9):
        a.deposit(1)
    await repo.save(a)

    class SnapAccountV2(Account):
        category = "snapacct"
        snapshot_every = 10
        state_version = 2  # same shape, new meaning: old snapshots must not be trusted

    class SnapAccountNewShape(Account):
        category = "snapacct"
        snapshot_every = 10
        note: str = "n/a"  # new state field: the fingerprint changes

    [snap] = [e async for e in store.read_stream(snapshot_stream("snapacct-v"))]
    doctored = msgspec.json.decode(snap.data)
    doctored["balance"] = 1000
    await store.append(
        snapshot_stream("snapacct-v"),
        [
            tidelog.NewEvent(
                type=snap.type, data=msgspec.json.encode(doctored), metadata=snap.metadata
            )
        ],
    )
    assert (await Repository(store, SnapAccountV2, registry=REG).get("v")).balance == 9
    assert (await Repository(store, SnapAccountNewShape, registry=REG).get("v")).balance == 9

    class Lifting(SnapAccountNewShape):
        category = "snapacct"

        @classmethod
        def upcast_snapshot(
            cls, state: dict[str, object], state_version: int, fingerprint: str
        ) -> dict[str, object] | None:
            return {**state, "note": "lifted"}

    lifted = await Repository(store, Lifting, registry=REG).get("v")
    assert (lifted.balance, lifted.note) == (1000, "lifted")


async def test_aggregates_of_different_classes_commit_together(store: tidelog.Store) -> None:
    accounts = Repository(store, Account, registry=REG)
    snaps = Repository(store, SnapAccount, registry=REG)
    a, b = accounts.create("x"), snaps.create("x")
    a.open("a")
    b.open("b")
    await accounts.save(a, b)
    assert [s.name async for s in store.list_streams()] == ["account-x", "snapacct-x"]
    b.deposit(1)
    stale = await accounts.get("x")
    a.deposit(1)
    await accounts.save(a)
    stale.deposit(5)
    with pytest.raises(tidelog.WrongExpectedVersion):
        await accounts.save(b, stale)
    assert (await snaps.get("x")).balance == 0
