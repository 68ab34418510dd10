"""The partition run's inlined hot path (`_work_streams`) gives the outcomes of its plain form.

`_work_streams` writes out, for speed, what `PartitionRun._deliver` does per
event (the DLQ gate, the first attempt of `Delivery.handle`, the retries,
parking, the accounting of a finished event). Here one scripted set of events (successes,
transient failures, poison events and the events held or parked behind them,
handlers that wait and handlers that append) runs once through each, and every
outcome must be the same: the handler calls and their attempts, the counters,
the DLQ, the effects written and the committed checkpoints.
"""

from __future__ import annotations

import asyncio
import pathlib
import uuid
from collections import defaultdict
from dataclasses import asdict
from typing import Any, Literal

import pytest

import tidelog
from tidelog.consumers import App, Context, HandlerOptions, RunnerOptions, list_parked
from tidelog.consumers._partition import PartitionRun

STREAMS = 12
PER_STREAM = 8
NAMESPACE = uuid.UUID("0b6f7c56-3d1e-4c1a-9a55-5a1f0c2e7d11")
OPTIONS = RunnerOptions(
    lease=3.0,
    commit_interval=0.05,
    dlq_poll_interval=0.05,
    concurrency=3,  # fewer handler slots than streams that wait: the limiter queues
    page_size=7,
    max_in_flight=14,
    commit_every=5,
)
# Transient failures of many streams in a row may open the circuit breaker, at a
# moment that depends on scheduling; this test compares the two delivery paths'
# retries and parking, so the breaker (tests/test_consumers_breaker.py) is off.
RETRY = dict(max_attempts=3, backoff_initial=0.001, backoff_max=0.002, breaker_threshold=None)


def script(stream: int, version: int) -> str:
    """What the handler does with an event: its data."""
    if stream % 4 == 1 and version == 3:
        return "poison"  # fails every attempt: parked, the rest of its stream behind it
    if (stream + version) % 5 == 0:
        return "flaky-1"  # fails once
    if (stream + version) % 7 == 0:
        return "flaky-2"  # fails twice, succeeds on the last attempt
    if (stream * version) % 3 == 1:
        return "wait"  # awaits: a spare worker takes the other streams
    if version % 2:
        return "append"  # writes an effect, committed with the checkpoint
    return "ok"


async def fill(store: tidelog.Store) -> None:
    """The same events, with the same ids, in every store."""
    for version in range(PER_STREAM):
        await store.append_many(
            {
                f"order-{s}": tidelog.AppendRequest(
                    events=[
                        tidelog.NewEvent(
                            id=uuid.uuid5(NAMESPACE, f"{s}:{version}"),
                            type="Placed",
                            data=script(s, version).encode(),
                        )
                    ]
                )
                for s in range(STREAMS)
            }
        )


async def outcomes(url: str, on_park: Literal["block", "park_stream"]) -> dict[str, Any]:
    """Run one group over the scripted events until each is finished; what came of them."""
    calls: defaultdict[str, list[tuple[int, bytes, int]]] = defaultdict(list)
    async with tidelog.connect(url) as store:
        await fill(store)
        app = App("t", store, options=OPTIONS)

        @app.handler("order", group="g", options=HandlerOptions(on_park=on_park, **RETRY))
        async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
            calls[event.stream].append((event.version, event.data, ctx.attempt))
            what = event.data.decode()
            if what == "poison":
                raise ValueError("poison")
            if what.startswith("flaky-") and ctx.attempt <= int(what[-1]):
                raise RuntimeError("transient")
            if what == "wait":
                await asyncio.sleep(0.002)
            if what == "append":
                ctx.append(f"invoice-{event.stream}", [tidelog.NewEvent(type="Invoiced")])

        task = asyncio.create_task(app.run())
        total = STREAMS * PER_STREAM
        for _ in range(3000):  # a hang guard, not a timing assertion
            stats = app.stats
            if stats is not None and stats.events_handled + stats.parked + stats.held == total:
                break
            await asyncio.sleep(0.01)
        app.request_stop()
        await asyncio.wait_for(task, 60)
        stats = app.stats
        assert stats is not None
        counters = asdict(stats)
        for timing in ("commits", "peak_in_flight", "partitions_started", "partitions_revoked"):
            del counters[timing]  # how often and how much at once: the clock's, not the path's
        parked = sorted(
            (str(p.event.id), p.status.value, p.attempts) for p in await list_parked(store, "g")
        )
        effects: defaultdict[str, list[tuple[int, uuid.UUID, str, Any]]] = defaultdict(list)
        async for e in store.read_all(categories=["invoice"]):
            effects[e.stream].append((e.version, e.id, e.type, e.metadata))
        last: dict[int, int] = {}  # the position of each partition's last event
        async for e in store.read_all(categories=["order"]):
            last[tidelog.partition_of(e.stream, store.partition_count)] = e.position
        return {
            "calls": dict(calls),
            "stats": counters,
            "parked": parked,
            "effects": dict(effects),
            "checkpoints": await store.checkpoints("g", "order"),
            "last": last,
        }


@pytest.mark.parametrize("on_park", ["block", "park_stream"])
@pytest.mark.parametrize("engine", ["memory", "sqlite"])
async def test_inlined_and_plain_delivery_give_the_same_outcomes(
    engine: str,
    on_park: Literal["block", "park_stream"],
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def url(name: str) -> str:
        if engine == "memory":
            return "memory://?partitions=4"
        return f"sqlite:///{tmp_path}/{name}.db?partitions=4&synchronous=normal"

    delivered: list[int] = []
    plain_deliver = PartitionRun._deliver

    async def counted(self: PartitionRun, event: tidelog.RecordedEvent) -> None:
        delivered.append(event.position)
        await plain_deliver(self, event)

    monkeypatch.setattr(PartitionRun, "_deliver", counted)
    inline = await outcomes(url("inline"), on_park)
    assert delivered == []  # the inlined loop handled every event itself
    monkeypatch.setattr(PartitionRun, "inline", False)
    plain = await outcomes(url("plain"), on_park)
    assert len(delivered) == STREAMS * PER_STREAM  # every event went the plain way

    assert inline == plain
    # and the script did what it says, so the comparison covers each outcome
    stats = inline["stats"]
    poisoned = [s for s in range(STREAMS) if s % 4 == 1]
    behind = len(poisoned) * (PER_STREAM - 4)
    assert stats["parked"] == len(poisoned) + (behind if on_park == "park_stream" else 0)
    assert stats["held"] == (behind if on_park == "block" else 0)
    assert stats["retries"] > stats["parked"]  # transient failures were retried
    assert stats["events_handled"] == STREAMS * PER_STREAM - len(poisoned) - behind
    assert inline["effects"]
    assert inline["checkpoints"] == inline["last"]  # every event finished and committed
    assert len(inline["checkpoints"]) == 4
    for s in poisoned:  # three attempts at the poison event, nothing of its stream after it
        assert inline["calls"][f"order-{s}"][-3:] == [(3, b"poison", a) for a in (1, 2, 3)]
