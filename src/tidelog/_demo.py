"""`tidelog demo`: a realistic event-sourced workload, written and then replayed.

The demo is a small shop. Customers register; each order is a shopping cart
that is created, gets items added (and sometimes removed), is placed, and then
paid, shipped and delivered, or cancelled. Every user action is one append to
the order's stream with the exact expected version, as an aggregate would do.
Paying an order also credits loyalty points on the customer's stream, which
many concurrent writers share: those appends meet real optimistic-concurrency
conflicts, which are retried with the actual version the store reports.

After writing, the whole log is replayed from position 0 into a read model
(orders by status, revenue, loyalty points) and compared with what was
written, so the demo checks the store as much as it shows it off.

The workload is deterministic for a given seed and event count; only the
timings differ between runs.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from uuid import UUID, uuid5

import msgspec

import tidelog
from tidelog._connect import resolved_url
from tidelog._redact import redact_url
from tidelog.errors import WrongExpectedVersion
from tidelog.model import NO_STREAM, ExpectedVersion, NewEvent

__all__ = ["DemoReport", "plan_workload", "run_demo"]

_NAMESPACE: Final = UUID("6f1d7a52-3c1e-4b8e-9a51-2f0f4f3e9c11")
_CATALOG: Final = (
    ("tea-green", 450),
    ("tea-black", 390),
    ("mug", 1200),
    ("kettle", 3900),
    ("honey", 650),
    ("biscuits", 280),
    ("teapot", 2900),
    ("strainer", 340),
)
_CARRIERS: Final = ("postnl", "dhl", "ups", "bpost")
_encode: Final = msgspec.json.encode


@dataclass(frozen=True)
class Step:
    """One append of the plan: events for one stream, at the version the writer knows."""

    stream: str
    events: tuple[NewEvent, ...]
    shared: bool = False
    """True for customer streams, which several writers append to concurrently."""


@dataclass
class Expected:
    """What the read model must show after replay, computed while planning."""

    events: int = 0
    status: Counter[str] = field(default_factory=Counter)
    revenue_cents: int = 0
    loyalty_points: int = 0
    customers: int = 0


@dataclass
class DemoReport:
    """What the demo did, how fast, and whether the replayed read model matched."""

    store: str
    engine: str
    events: int
    appends: int
    streams: int
    orders: int
    customers: int
    conflicts_retried: int
    append_seconds: float
    replay_seconds: float
    replayed: int
    status: dict[str, int]
    revenue_cents: int
    loyalty_points: int
    matches: bool
    sample_stream: str
    sample_history: list[str]

    @property
    def append_rate(self) -> float:
        return self.events / self.append_seconds if self.append_seconds > 0 else float("inf")

    @property
    def replay_rate(self) -> float:
        return self.replayed / self.replay_seconds if self.replay_seconds > 0 else float("inf")


def _event(seed: str, type_: str, data: dict[str, Any], correlation: str) -> NewEvent:
    # Deterministic ids: re-running a step is an idempotent retry, as it would
    # be for a command handler that derives ids from the command.
    return NewEvent(
        id=uuid5(_NAMESPACE, seed),
        type=type_,
        data=_encode(data),
        metadata={"correlationid": correlation},
    )


def plan_workload(events: int, seed: int = 42) -> tuple[list[Step], list[list[Step]], Expected]:
    """The demo's appends: customer registrations, then one step list per order.

    Orders get about 20 events each, so 20,000 events make about 1,000 order
    streams. The last order is cut short so the total is exactly `events`.
    """
    if events < 1:
        raise tidelog.InvalidInput("the demo needs at least one event")
    rng = random.Random(seed)
    expected = Expected()
    n_customers = max(1, events // 100)
    customers = [f"customer-{i:05d}" for i in range(n_customers)]
    registrations = [
        Step(
            c,
            (
                _event(
                    f"{c}/registered",
                    "CustomerRegistered",
                    {"customer": c, "name": f"Customer {i}", "email": f"c{i}@example.test"},
                    c,
                ),
            ),
        )
        for i, c in enumerate(customers)
    ]
    budget = events - len(registrations)
    expected.customers = len(registrations)
    orders: list[list[Step]] = []
    n = 0
    while budget > 0:
        order = f"order-{n:06d}"
        customer = rng.choice(customers)
        steps: list[Step] = []
        items: dict[str, int] = {}

        def add(
            type_: str,
            data: dict[str, Any],
            stream: str | None = None,
            shared: bool = False,
            steps: list[Step] = steps,
            order: str = order,
        ) -> None:
            event = _event(f"{order}/{len(steps)}", type_, data, order)
            steps.append(Step(stream or order, (event,), shared=shared))

        add("OrderCreated", {"order": order, "customer": customer})
        for _ in range(rng.randint(4, 14)):
            sku, price = rng.choice(_CATALOG)
            qty = rng.randint(1, 3)
            items[sku] = items.get(sku, 0) + qty
            add("ItemAdded", {"sku": sku, "quantity": qty, "price_cents": price})
        if rng.random() < 0.3:
            sku = rng.choice(sorted(items))
            add("ItemRemoved", {"sku": sku, "quantity": items.pop(sku)})
        prices = dict(_CATALOG)
        total = sum(prices[s] * q for s, q in items.items())
        add("OrderPlaced", {"total_cents": total, "lines": len(items)})
        roll = rng.random()
        if roll < 0.1:
            add("OrderCancelled", {"reason": "customer changed their mind"})
        elif roll < 0.85:
            add("OrderPaid", {"amount_cents": total, "method": rng.choice(("card", "ideal"))})
            add("LoyaltyPointsEarned", {"order": order, "points": total // 100}, customer, True)
            add("OrderShipped", {"carrier": rng.choice(_CARRIERS), "parcel": f"P{n:08d}"})
            if rng.random() < 0.8:
                add("OrderDelivered", {})
        steps = steps[:budget]
        budget -= len(steps)
        orders.append(steps)
        n += 1
        _expect(steps, expected)
    expected.events = events
    return registrations, orders, expected


def _expect(steps: list[Step], expected: Expected) -> None:
    """Fold an order's planned steps into the expected read model."""
    status = None
    for step in steps:
        event = step.events[0]
        if event.type == "LoyaltyPointsEarned":
            expected.loyalty_points += msgspec.json.decode(event.data)["points"]
            continue
        status = _STATUS.get(event.type, status)
        if event.type == "OrderPaid":
            expected.revenue_cents += msgspec.json.decode(event.data)["amount_cents"]
    if status is not None:
        expected.status[status] += 1


_STATUS: Final = {
    "OrderCreated": "cart",
    "OrderPlaced": "placed",
    "OrderPaid": "paid",
    "OrderShipped": "shipped",
    "OrderDelivered": "delivered",
    "OrderCancelled": "cancelled",
}


class _ReadModel:
    """The projection the replay rebuilds: order status, revenue, loyalty points."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.revenue_cents = 0
        self.loyalty_points = 0
        self.customers = 0
        self.events = 0

    def apply(self, event: tidelog.RecordedEvent) -> None:
        self.events += 1
        status = _STATUS.get(event.type)
        if status is not None:
            self.status[event.stream] = status
        if event.type == "OrderPaid":
            self.revenue_cents += msgspec.json.decode(event.data)["amount_cents"]
        elif event.type == "LoyaltyPointsEarned":
            self.loyalty_points += msgspec.json.decode(event.data)["points"]
        elif event.type == "CustomerRegistered":
            self.customers += 1


async def run_demo(
    store_url: str,
    events: int = 20_000,
    *,
    writers: int = 32,
    on_progress: Callable[[str, int], None] | None = None,
    options: Mapping[str, Any] | None = None,
) -> DemoReport:
    """Write the workload with `writers` concurrent writers, then replay the whole log.

    `on_progress(phase, n)` is called with phase "append" or "replay" and the
    number of events just done; `options` go to `tidelog.connect` (a remote
    store's token).
    """
    registrations, orders, expected = plan_workload(events)
    progress = on_progress or (lambda phase, n: None)
    versions: dict[str, int] = {}
    conflicts = 0
    appends = 0

    async with tidelog.connect(store_url, **(options or {})) as store:
        if await store.last_position() != 0:
            raise tidelog.InvalidInput(
                f"the demo needs an empty store and {redact_url(store_url)} has events; "
                "leave out --store to use a fresh file"
            )

        async def append(step: Step) -> None:
            nonlocal conflicts, appends
            while True:
                known = versions.get(step.stream)
                expected_version: ExpectedVersion = NO_STREAM if known is None else known
                try:
                    result = await store.append(step.stream, step.events, expected_version)
                except WrongExpectedVersion as exc:
                    if not step.shared or exc.actual is None:
                        raise
                    # Another writer got there first: take its version and retry.
                    conflicts += 1
                    versions[step.stream] = max(versions.get(step.stream, -1), exc.actual)
                    continue
                appends += 1
                versions[step.stream] = max(versions.get(step.stream, -1), result.version)
                progress("append", len(step.events))
                return

        queue: asyncio.Queue[list[Step]] = asyncio.Queue()
        for order in orders:
            queue.put_nowait(order)

        async def writer() -> None:
            while not queue.empty():
                for step in queue.get_nowait():
                    await append(step)

        started = time.perf_counter()
        await asyncio.gather(*(append(step) for step in registrations))
        await asyncio.gather(*(writer() for _ in range(max(1, writers))))
        append_seconds = time.perf_counter() - started

        model = _ReadModel()
        started = time.perf_counter()
        batch = 0
        async for event in store.read_all(from_position=0):
            model.apply(event)
            batch += 1
            if batch == 500:
                progress("replay", batch)
                batch = 0
        progress("replay", batch)
        replay_seconds = time.perf_counter() - started

        sample = orders[0][0].stream if orders else registrations[0].stream
        history = [
            f"v{e.version} {e.type} {e.data.decode('utf-8', 'replace')}"
            async for e in store.read_stream(sample)
        ]
        engine = store.name

    status = dict(sorted(Counter(model.status.values()).items()))
    return DemoReport(
        store=resolved_url(store_url),
        engine=engine,
        events=expected.events,
        appends=appends,
        streams=len(registrations) + len(orders),
        orders=len(orders),
        customers=len(registrations),
        conflicts_retried=conflicts,
        append_seconds=append_seconds,
        replay_seconds=replay_seconds,
        replayed=model.events,
        status=status,
        revenue_cents=model.revenue_cents,
        loyalty_points=model.loyalty_points,
        matches=(
            model.events == expected.events
            and status == dict(sorted(expected.status.items()))
            and model.revenue_cents == expected.revenue_cents
            and model.loyalty_points == expected.loyalty_points
            and model.customers == expected.customers
        ),
        sample_stream=sample,
        sample_history=history,
    )
