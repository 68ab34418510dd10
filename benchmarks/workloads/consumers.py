"""Benchmark workloads of consumer groups: `group_throughput` and `end_to_end_latency`.

Registered in `WORKLOADS` (`benchmarks/workloads/__init__.py`).

`group_throughput`: N events (`sizes.replay_events`, at most 100,000) in 1,000
streams of one category are handled by a group of 1, 2 and 4 `tidelog worker`
processes with a trivial handler (a fresh group and category each time, on the
same store). The members join while their category is still empty, so the
cooperative hand-overs of the joins finish at once; the events are appended
once every member holds its final share of the partitions and heartbeated
after the last change (handlers wait for a go file until then). The clock
starts with the go file and stops when every partition's checkpoint reached
its last event.
`value` is the 1-worker rate, `baseline` a plain `read_all` of the same events
in one process; `by_workers` gives all three rates. Needs an engine that
several processes can open (SQLite file, PostgreSQL, NATS).

`end_to_end_latency`: events appended at a steady 2,000/s (each from its own
task, open-loop); latency is append acknowledged -> handler called, in the same
process. `value` is the p99 in ms; `baseline` the p99 of a plain
`store.subscribe` reader measured at the same time on the same loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import tidelog
from benchmarks.common import fill
from benchmarks.workloads.store import open_loop
from tidelog.consumers import App, Context, RunnerOptions

__all__ = ["end_to_end_latency", "group_throughput"]

HERE = pathlib.Path(__file__).parent
LATENCY_RATE = 2_000
LEASE = 3.0
"""The workers' lease (`BENCH_LEASE`); they heartbeat every third of it."""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _run_group(url: str, store: tidelog.Store, workers: int, n: int) -> float:
    group = category = f"g{workers}"
    with tempfile.TemporaryDirectory() as tmp:
        return await _timed_group(
            url,
            store,
            workers,
            group,
            pathlib.Path(tmp) / "go",
            category,
            fill=lambda: fill(store, category, n),
        )


async def _timed_group(
    url: str,
    store: tidelog.Store,
    workers: int,
    group: str,
    go: pathlib.Path,
    category: str = "bench",
    extra_env: dict[str, str] | None = None,
    fill: Callable[[], Awaitable[None]] | None = None,
) -> float:
    """Seconds from the go signal until `workers` processes committed all of `category`.

    `fill` appends the category's events once the group settled, so the members
    join an empty category: a join's cooperative hand-over waits for the
    handlers of the partitions it moves, and before the go file those wait for
    it, so with the events already there the old holder kept the partitions
    until after the start and the new member began late (#17: in a quick
    `group_scaling` run the second process started 0.1-0.2 s after the first).

    The processes are stopped with SIGTERM before returning (they finish their
    in-flight events and exit normally, so their `atexit` records are written).
    """
    env = dict(
        os.environ,
        BENCH_STORE=url,
        BENCH_GROUP=group,
        BENCH_GO=str(go),
        BENCH_LEASE=str(LEASE),
        BENCH_CATEGORY=category,
        **(extra_env or {}),
    )
    tidelog_bin = str(pathlib.Path(sys.executable).parent / "tidelog")
    procs = [
        subprocess.Popen(  # noqa: ASYNC220 - started once, before the clock
            [
                tidelog_bin,
                "worker",
                "consumers_worker:app",
                "--log-level",
                os.environ.get("BENCH_LOG", "warning"),
            ],
            cwd=HERE,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    last: dict[int, int] = {}
    try:
        await _settled(store, group, workers, category)
        if fill is not None:
            await fill()
        async for e in store.read_all(categories=[category]):
            last[tidelog.partition_of(e.stream, store.partition_count)] = e.position
        t0 = time.perf_counter()
        go.touch()  # noqa: ASYNC240 - the start signal, once
        while await store.checkpoints(group, category) != last:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return time.perf_counter() - t0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=30)
            if p.poll() is None:
                p.kill()


async def _settled(store: tidelog.Store, group: str, workers: int, category: str = "bench") -> None:
    """Wait until `workers` members joined, every partition was handed over to its final
    holder, and each member heartbeated after that.

    A heartbeat returns the member's final assignment. Before it, a member may
    still handle partitions it lost; the new owner then handles them again (its
    commits refused), which a fixed pause cannot rule out on a busy machine.
    Members join cooperatively, so a partition moves only once its old holder
    released it: until every member holds its share (the counts differ by at
    most one and cover every partition), the clock would time the hand-over.
    """
    settled_at = generation = None
    while True:
        desc = await store.describe_group(group, category)
        held = [] if desc is None else [len(m.partitions) for m in desc.members]
        balanced = (
            len(held) == workers
            and sum(held) == store.partition_count
            and max(held) - min(held) <= 1
        )
        if desc is None or not balanced:
            settled_at = None
        elif settled_at is None or desc.generation != generation:
            settled_at, generation = time.time(), desc.generation
        elif all(m.lease_expires_at - LEASE > settled_at for m in desc.members):
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # the heartbeat's answer is applied just after its commit


async def group_throughput(backend: Any, sizes: Any) -> dict[str, Any]:
    if not hasattr(backend, "store_url"):
        raise tidelog.NotSupported(backend.name, "group_throughput", "needs a shared store URL")
    n = min(sizes.replay_events, 100_000)
    url = backend.store_url()
    async with tidelog.connect(url) as store:
        await fill(store, "bench", n)
        t = time.perf_counter()
        count = 0
        async for _ in store.read_all(categories=["bench"]):
            count += 1
        baseline = count / (time.perf_counter() - t)
        rates = {}
        for workers in (1, 2, 4):
            seconds = await _run_group(url, store, workers, n)
            rates[str(workers)] = round(n / seconds)
    return {
        "value": rates["1"],
        "unit": "events/s",
        "baseline": round(baseline),
        "events": n,
        "by_workers": rates,
    }


async def end_to_end_latency(backend: Any, sizes: Any) -> dict[str, Any]:
    n = sizes.subscribe_events
    store = await backend.open_store()
    acked: dict[Any, float] = {}
    handled: dict[Any, float] = {}
    plain: dict[Any, float] = {}
    done = asyncio.Event()
    app = App("latency", store, options=RunnerOptions(commit_interval=0.1, page_size=500))

    @app.handler("lat", group="latency")
    async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
        handled.setdefault(event.id, time.perf_counter())
        if len(handled) >= n:
            done.set()

    async def subscriber(start: int) -> None:
        async for event in store.subscribe(from_position=start + 1, categories=["lat"]):
            plain.setdefault(event.id, time.perf_counter())
            if len(plain) >= n:
                return

    async def one(i: int) -> None:
        event = tidelog.NewEvent(type="Tick", data=b"x" * 100)
        await store.append(f"lat-{i % 100}", [event])
        acked[event.id] = time.perf_counter()

    try:
        runner = asyncio.create_task(app.run())
        sub = asyncio.create_task(subscriber(await store.last_position()))
        await asyncio.sleep(0.5)  # members joined, subscription live
        await open_loop(n, LATENCY_RATE, one)
        await asyncio.wait_for(done.wait(), 60)
        await asyncio.wait_for(sub, 60)
        app.request_stop()
        await runner
    finally:
        await store.close()
    # delivered before the appender's task resumed: 0 (never negative)
    lat = [max(0.0, handled[i] - t) * 1000 for i, t in acked.items()]
    base = [max(0.0, plain[i] - t) * 1000 for i, t in acked.items()]
    return {
        "value": round(_percentile(lat, 0.99), 3),
        "unit": "ms",
        "baseline": round(_percentile(base, 0.99), 3),
        "p50_ms": round(_percentile(lat, 0.5), 3),
        "p99_ms": round(_percentile(lat, 0.99), 3),
        "baseline_p50_ms": round(_percentile(base, 0.5), 3),
        "rate": LATENCY_RATE,
        "events": n,
    }
