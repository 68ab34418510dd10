"""The scheduled-delivery workload: `scheduled_lateness`.

`scheduled_events` events (100,000 in full runs) are scheduled over
`scheduled_seconds` (10 s), 100 per scheduled append (one stream each), at an
even, open-loop rate; each append is due `LEAD` (1 s) after the moment it is
planned to be sent. The store's own scheduler delivers them while more are
being scheduled; a live subscriber stamps when each becomes visible.
Lateness = visible at - due at, per event.

The baseline, measured on the same loop at the same time: an `asyncio` timer
(`loop.call_at`) per due time, stamping how late it fires: the floor any
in-process delivery at a due time can reach under the same load.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from benchmarks.backends import Backend
from benchmarks.common import Sizes
from benchmarks.workloads.store import ms, open_loop, payload, percentile
from tidelog import NewEvent

PER_APPEND = 100
LEAD = 1.0
"""Seconds from an append's planned send time to its due time."""


async def scheduled_lateness(backend: Backend, sizes: Sizes) -> dict[str, Any]:
    n = sizes.scheduled_events
    appends = max(1, n // PER_APPEND)
    step = sizes.scheduled_seconds / appends
    store = await backend.open_store()
    visible: dict[uuid.UUID, float] = {}
    due_of: dict[uuid.UUID, float] = {}
    timer_lateness: list[float] = []
    ack_lateness: list[float] = []
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    sub: asyncio.Task[None] | None = None
    try:
        start = await store.last_position()

        async def subscriber() -> None:
            async for event in store.subscribe(from_position=start + 1):
                visible[event.id] = time.time()
                if len(visible) >= n:
                    done.set()
                    return

        def timer(due: float) -> None:
            timer_lateness.append(time.time() - due)

        async def schedule(i: int, due: float) -> None:
            count = min(PER_APPEND, n - i * PER_APPEND)
            events = [
                NewEvent(type="Reminder", data=payload(i * PER_APPEND + k, sizes.event_bytes))
                for k in range(count)
            ]
            for e in events:
                due_of[e.id] = due
            loop.call_later(max(0.0, due - time.time()), timer, due)
            await store.append(
                f"reminder-{i % 1000}", events, deliver_at=datetime.fromtimestamp(due, UTC)
            )
            ack_lateness.append(time.time() - (due - LEAD))

        sub = asyncio.create_task(subscriber())
        await asyncio.sleep(0.1)  # let the subscription go live
        origin = time.time()
        offered_seconds = await open_loop(
            appends, 1 / step, lambda i: schedule(i, origin + i * step + LEAD)
        )
        await asyncio.wait_for(done.wait(), 120)
        await sub
    finally:
        if sub is not None and not sub.done():
            sub.cancel()
            await asyncio.gather(sub, return_exceptions=True)
        await store.close()
    lateness = [visible[i] - due_of[i] for i in visible]
    p99 = percentile(lateness, 99)
    p50 = percentile(lateness, 50)
    return {
        "value": ms(p99),
        "unit": "ms (p99)",
        "baseline": ms(percentile(timer_lateness, 99)),
        "p50_ms": ms(p50),
        "p99_ms": ms(p99),
        "max_ms": ms(max(lateness)),
        "p50_goal": "< 20.0",
        "p50_met": ms(p50) < 20.0,
        "baseline_p50_ms": ms(percentile(timer_lateness, 50)),
        "delivered_early": sum(1 for d in lateness if d < 0),
        "schedule_ack_p99_ms": ms(percentile(ack_lateness, 99)),
        "events": n,
        "scheduled_over_s": round(offered_seconds, 2),
    }


def _rss_mb() -> float:
    """Resident memory of this process (Linux `/proc`), in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def scheduled_memory(backend: Backend, sizes: Sizes) -> dict[str, Any]:
    """Memory growth while `scheduled_pending` events are pending (1,000,000 in full runs).

    Scheduled 1,000 per append (400 on NATS, whose appends hold 499), due in an
    hour; the store's scheduler runs meanwhile (nothing is due). `value` is the
    growth of the process's resident memory from after the first 10 appends to
    the end, in MB. The baseline is
    the same growth for the same events appended to the log now, on another
    store of the engine: both hold their events on disk, not in memory.
    """
    per = 1_000
    appends = max(1, sizes.scheduled_pending // per)

    async def fill(schedule: bool) -> tuple[float, float]:
        nonlocal per, appends
        store = await backend.open_store()
        if store.max_write_events is not None and store.max_write_events < per:
            # NATS: one append holds 499 events (an atomic batch's 1,000 messages)
            per = 400
            appends = max(1, sizes.scheduled_pending // per)
        try:
            start = time.perf_counter()
            base = _rss_mb()
            for i in range(appends):
                events = [NewEvent(type="Reminder", data=b'{"n":1}') for _ in range(per)]
                if schedule:
                    later = datetime.fromtimestamp(time.time() + 3600, UTC)
                    await store.append(f"reminder-{i % 1000}", events, deliver_at=later)
                else:
                    await store.append(f"reminder-{i % 1000}", events)
                if i == min(9, appends - 1):
                    base = _rss_mb()
            if schedule:
                await asyncio.sleep(1.0)  # the scheduler looks (nothing is due)
                assert await store.count_scheduled() == appends * per
            return _rss_mb() - base, time.perf_counter() - start
        finally:
            await store.close()

    growth, seconds = await fill(True)
    baseline, baseline_seconds = await fill(False)
    return {
        "value": round(growth, 1),
        "unit": "MB (resident memory growth)",
        "baseline": round(baseline, 1),
        "pending": appends * per,
        "schedule_events_per_s": round(appends * per / seconds),
        "append_events_per_s": round(appends * per / baseline_seconds),
    }
