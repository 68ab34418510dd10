"""Benchmark workload `aggregate_load`: load a 10,000-event aggregate, with and without snapshots.

Registered in `WORKLOADS` (`benchmarks/workloads/__init__.py`). Two aggregates of the same
class shape get the same 10,000 events, saved through a `Repository` in
commands of 64 events (so the snapshotting one writes a snapshot every 128
events, as an application would). `value` is the median time to
`Repository.get` the snapshotting aggregate (newest snapshot + the events
after it), `baseline` the median time to load the same state by replaying
all 10,000 events. Lower is better; `ratio = value / baseline`.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import msgspec

import tidelog
from tidelog.aggregates import Aggregate, Repository, applies
from tidelog.codec import EventRegistry

__all__ = ["AGGREGATE_EVENTS", "aggregate_load"]

AGGREGATE_EVENTS = 10_000
SNAPSHOT_EVERY = 128
COMMAND_EVENTS = 64
LOADS = 5

_REGISTRY = EventRegistry()


@tidelog.event("BenchDeposited", registry=_REGISTRY)
class Deposited(msgspec.Struct):
    amount: int
    memo: str


class Account(Aggregate):
    category = "benchacct"
    balance: int = 0
    deposits: int = 0

    def deposit(self, amount: int) -> None:
        self.record(Deposited(amount, "salary and other income"))

    @applies
    def _deposited(self, e: Deposited) -> None:
        self.balance += e.amount
        self.deposits += 1


class SnapshottedAccount(Account):
    category = "benchsnap"
    snapshot_every = SNAPSHOT_EVERY


async def _fill(store: tidelog.Store, cls: type[Account], events: int) -> None:
    repo = Repository(store, cls, registry=_REGISTRY)
    agg = repo.create("1")
    written = 0
    while written < events:
        for _ in range(min(COMMAND_EVENTS, events - written)):
            agg.deposit(1)
            written += 1
        await repo.save(agg)


async def _median_load(store: tidelog.Store, cls: type[Account], events: int) -> float:
    repo = Repository(store, cls, registry=_REGISTRY)
    times = []
    for _ in range(LOADS):
        start = time.perf_counter()
        agg = await repo.get("1")
        times.append(time.perf_counter() - start)
        if agg.deposits != events:
            raise AssertionError(f"{cls.__name__} loaded {agg.deposits} of {events} events")
    return statistics.median(times)


async def aggregate_load(backend: Any, sizes: Any) -> dict[str, Any]:
    """The `aggregate_load` workload (see the module docstring)."""
    events = getattr(sizes, "aggregate_events", AGGREGATE_EVENTS)
    store = await backend.open_store()
    try:
        await _fill(store, Account, events)
        await _fill(store, SnapshottedAccount, events)
        without = await _median_load(store, Account, events)
        with_snapshots = await _median_load(store, SnapshottedAccount, events)
    finally:
        await store.close()
    return {
        "value": round(with_snapshots * 1000, 3),
        "unit": "ms (median load)",
        "baseline": round(without * 1000, 3),
        "events": events,
        "snapshot_every": SNAPSHOT_EVERY,
        "replayed_after_snapshot": events % SNAPSHOT_EVERY,
    }
