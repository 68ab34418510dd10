"""The store workloads: `append_batch`, `append_single`, `replay_all`, `subscribe_latency`.

Each takes the `Backend` of the engine under test and the `Sizes` of the run,
and returns at least `value`, `unit` and `baseline` (the plain driver's figure
for the same work, measured in the same run; see benchmarks/README.md).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from benchmarks.backends import Backend
from benchmarks.common import Sizes
from tidelog import NO_STREAM, NewEvent, category_of, partition_of
from tidelog.engines.contract import DEFAULT_PARTITIONS


def payload(i: int, size: int) -> bytes:
    """A JSON object of exactly `size` bytes (when size allows), like a small domain event."""
    head = b'{"account":%d,"amount":%d,"note":"' % (i, (i * 7919) % 100_000)
    tail = b'"}'
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


def make_batches(
    events: int, streams: int, batch: int, size: int
) -> list[tuple[str, list[NewEvent]]]:
    """`events` events over `streams` streams, as appends of `batch` events to one stream each.

    Streams are visited round-robin so consecutive appends hit different streams.
    """
    out: list[tuple[str, list[NewEvent]]] = []
    n = 0
    while n < events:
        for s in range(streams):
            if n >= events:
                break
            count = min(batch, events - n)
            out.append(
                (
                    f"account-{s}",
                    [NewEvent(type="Deposited", data=payload(n + k, size)) for k in range(count)],
                )
            )
            n += count
    return out


async def open_loop(n: int, per_second: float, start: Callable[[int], Awaitable[None]]) -> float:
    """Start `start(i)` for i in 0..n-1, each as its own task, at `per_second` (an open
    loop: a slow one does not hold back the next); wait for them all.

    Returns the seconds the offering took (compare with n / per_second to see if
    the loop kept up). On failure or cancellation the tasks still running are
    cancelled and awaited.
    """
    tasks: set[asyncio.Task[None]] = set()
    sent = 0
    t0 = time.perf_counter()
    try:
        while sent < n:
            due = min(n, int((time.perf_counter() - t0) * per_second) + 1)
            while sent < due:
                task = asyncio.ensure_future(start(sent))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(0.001)
        offered = time.perf_counter() - t0
        while tasks:
            await asyncio.gather(*list(tasks))
        return offered
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of `values` (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def rows_for(batches: Sequence[tuple[str, Sequence[NewEvent]]]) -> list[list[tuple[Any, ...]]]:
    """The baseline's rows for `batches`, one list per append, in the engine's column order.

    (id, stream, version, type, data, metadata, recorded_at, schema_version,
    category, partition)
    """
    versions: dict[str, int] = {}
    now = time.time_ns() // 1000
    out = []
    for stream, events in batches:
        rows = []
        for e in events:
            v = versions.get(stream, -1) + 1
            versions[stream] = v
            rows.append(
                (
                    e.id.bytes,
                    stream,
                    v,
                    e.type,
                    e.data,
                    b"{}",
                    now,
                    e.schema_version,
                    category_of(stream),
                    partition_of(stream, DEFAULT_PARTITIONS),
                )
            )
        out.append(rows)
    return out


# --------------------------------------------------------------------------- workloads


async def append_batch(backend: Backend, sizes: Sizes) -> dict[str, Any]:
    """`batch_events` events over `batch_streams` streams, `batch_size` per append, N callers."""
    batches = make_batches(
        sizes.batch_events, sizes.batch_streams, sizes.batch_size, sizes.event_bytes
    )
    rows = rows_for(batches)
    half = len(rows) // 2
    # The baseline brackets the engine (half before, half after, same table) so
    # that a change of machine load during the run weighs on both sides alike.
    c0 = time.process_time()
    base_seconds = await backend.baseline_batch(rows[:half], fresh=True)
    base_cpu = time.process_time() - c0

    store = await backend.open_store()
    try:
        queue = iter(batches)

        async def caller() -> None:
            for stream, events in queue:  # the shared iterator hands out each batch once
                await store.append(stream, events)

        c0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(sizes.batch_callers)))
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
        written = await store.last_position()
    finally:
        await store.close()
    c0 = time.process_time()
    base_seconds += await backend.baseline_batch(rows[half:], fresh=False)
    base_cpu += time.process_time() - c0
    if written != sizes.batch_events:
        raise RuntimeError(f"store holds {written} events, expected {sizes.batch_events}")
    return {
        "value": round(sizes.batch_events / seconds),
        "unit": "events/s",
        "baseline": round(sizes.batch_events / base_seconds),
        "seconds": round(seconds, 3),
        "baseline_seconds": round(base_seconds, 3),
        "cpu_us_per_event": round(cpu / sizes.batch_events * 1e6, 2),
        "baseline_cpu_us_per_event": round(base_cpu / sizes.batch_events * 1e6, 2),
        "callers": sizes.batch_callers,
        "events": sizes.batch_events,
    }


async def append_single(backend: Backend, sizes: Sizes) -> dict[str, Any]:
    """N callers, each appending one event at a time to its own stream with an exact version."""
    per = sizes.single_events_per_caller
    total = sizes.single_callers * per
    latencies: list[float] = []
    base_batches = make_batches(
        sizes.single_baseline_events, sizes.single_callers, 1, sizes.event_bytes
    )
    base_rows = [rows[0] for rows in rows_for(base_batches)]
    half = len(base_rows) // 2
    c0 = time.process_time()
    base_lat = await backend.baseline_single(base_rows[:half], fresh=True)  # before and after
    base_cpu = time.process_time() - c0

    store = await backend.open_store()
    try:

        async def caller(i: int) -> None:
            stream = f"single-{i}"
            for v in range(per):
                event = NewEvent(type="Deposited", data=payload(v, sizes.event_bytes))
                t = time.perf_counter()
                await store.append(stream, [event], NO_STREAM if v == 0 else v - 1)
                latencies.append(time.perf_counter() - t)

        c0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(sizes.single_callers)))
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
    finally:
        await store.close()

    c0 = time.process_time()
    base_lat += await backend.baseline_single(base_rows[half:], fresh=False)
    base_cpu += time.process_time() - c0
    base_seconds = sum(base_lat)
    # The ceiling of group commit: the same rows written by the plain driver in
    # transactions of exactly one row per caller (round-robin rows: one per
    # stream), with no version checks and nothing above the driver. No engine
    # that syncs once per such batch can go faster on this machine and schema.
    per_tx = sizes.single_callers
    chunks = [base_rows[i : i + per_tx] for i in range(0, len(base_rows), per_tx)]
    ceiling_seconds = await backend.baseline_batch(chunks, fresh=True)
    ceiling = len(base_rows) / ceiling_seconds
    return {
        "value": round(total / seconds),
        "unit": "events/s",
        "baseline": round(len(base_rows) / base_seconds),
        "p50_ms": ms(percentile(latencies, 50)),
        "p99_ms": ms(percentile(latencies, 99)),
        "baseline_p50_ms": ms(percentile(base_lat, 50)),
        "baseline_p99_ms": ms(percentile(base_lat, 99)),
        "cpu_us_per_event": round(cpu / total * 1e6, 2),
        "baseline_cpu_us_per_event": round(base_cpu / len(base_rows) * 1e6, 2),
        "group_commit_ceiling": round(ceiling),
        "ceiling_ratio": round(ceiling / (len(base_rows) / base_seconds), 3),
        "callers": sizes.single_callers,
        "events": total,
        "baseline_events": len(base_rows),
    }


async def replay_all(backend: Backend, sizes: Sizes) -> dict[str, Any]:
    """Read every event from position 0 through the engine, and with a plain paged scan."""
    store = await backend.open_store()
    try:
        batches = make_batches(sizes.replay_events, 100, 250, sizes.event_bytes)
        queue = iter(batches)

        async def filler() -> None:
            for stream, events in queue:
                await store.append(stream, events)

        await asyncio.gather(*(filler() for _ in range(4)))
        c0 = time.process_time()
        base_count, base_seconds = await backend.baseline_scan(store)
        base_cpu = time.process_time() - c0

        count = 0
        c0 = time.process_time()
        t0 = time.perf_counter()
        async for _event in store.read_all(from_position=0):
            count += 1
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
        # Scan again after the engine: load drift weighs on both sides alike.
        c0 = time.process_time()
        again, more_seconds = await backend.baseline_scan(store)
        base_cpu = (base_cpu + time.process_time() - c0) / 2
        base_count, base_seconds = (base_count + again) // 2, (base_seconds + more_seconds) / 2
    finally:
        await store.close()
    if count != sizes.replay_events or base_count != count:
        raise RuntimeError(f"replayed {count}, baseline scanned {base_count}")
    return {
        "value": round(count / seconds),
        "unit": "events/s",
        "baseline": round(base_count / base_seconds),
        "seconds": round(seconds, 3),
        "baseline_seconds": round(base_seconds, 3),
        "cpu_us_per_event": round(cpu / count * 1e6, 3),
        "baseline_cpu_us_per_event": round(base_cpu / count * 1e6, 3),
        "events": count,
    }


async def subscribe_latency(backend: Backend, sizes: Sizes) -> dict[str, Any]:
    """Append acknowledged -> delivered to a live subscriber, at a fixed offered load.

    Each append (one event, from its own task, so the load is open-loop) stamps
    its acknowledgement time; the subscriber stamps delivery. The baseline is an
    `asyncio.Queue` handoff started at the same acknowledgement on the same
    loop under the same load: the floor any in-process delivery can reach.
    """
    n = sizes.subscribe_events
    store = await backend.open_store()
    acked: dict[uuid.UUID, float] = {}
    delivered: dict[uuid.UUID, float] = {}
    ack_lat: list[float] = []
    queue_lat: list[float] = []
    handoff: asyncio.Queue[float] = asyncio.Queue()
    early = 0
    background: set[asyncio.Task[None]] = set()
    try:
        start = await store.last_position()
        all_delivered = asyncio.Event()

        async def subscriber() -> None:
            async for event in store.subscribe(from_position=start + 1):
                delivered[event.id] = time.perf_counter()
                if len(delivered) >= n:
                    all_delivered.set()
                    return

        async def queue_consumer() -> None:
            for _ in range(n):
                put_at = await handoff.get()
                queue_lat.append(time.perf_counter() - put_at)

        async def one(i: int) -> None:
            event = NewEvent(type="Deposited", data=payload(i, sizes.event_bytes))
            t = time.perf_counter()
            await store.append(f"live-{i % 100}", [event])
            now = time.perf_counter()
            acked[event.id] = now
            ack_lat.append(now - t)
            handoff.put_nowait(now)

        sub = asyncio.create_task(subscriber())
        qc = asyncio.create_task(queue_consumer())
        background.update((sub, qc))
        await asyncio.sleep(0.1)  # let the subscription catch up and go live
        offered_seconds = await open_loop(n, sizes.subscribe_rate, one)
        await asyncio.wait_for(all_delivered.wait(), 60)
        await asyncio.wait_for(qc, 60)
    finally:
        # On success only the subscriber is left; on failure, stop everything we started.
        pending = [t for t in background if not t.done()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await store.close()
    lat = []
    for event_id, at in delivered.items():
        d = at - acked[event_id]
        if d < 0:  # the subscriber ran before the appending task resumed
            early += 1
            d = 0.0
        lat.append(d)
    p99 = percentile(lat, 99)
    return {
        "value": ms(p99),
        "unit": "ms (p99)",
        "baseline": ms(percentile(queue_lat, 99)),
        "p50_ms": ms(percentile(lat, 50)),
        "p99_ms": ms(p99),
        "max_ms": ms(max(lat)),
        "baseline_p50_ms": ms(percentile(queue_lat, 50)),
        "append_ack_p50_ms": ms(percentile(ack_lat, 50)),
        "append_ack_p99_ms": ms(percentile(ack_lat, 99)),
        "delivered_before_ack": early,
        "offered_rate": sizes.subscribe_rate,
        "achieved_rate": round(n / offered_seconds),
        "events": n,
    }
