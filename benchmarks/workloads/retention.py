"""Benchmark workload of retention: `retention_steady_state`.

Registered in `WORKLOADS` (`benchmarks/workloads/__init__.py`).

A queue workload run twice on fresh stores of the engine under test, each for
`sizes.retention_seconds` (60 s in a full run): 4 producers append 10-event
batches to 100 streams of the category `q` as fast as they can, and a
consumer group (`tidelog.App`, one member, a trivial handler) keeps up.

- with retention: `max_age` of `MAX_AGE` seconds on the category, the
  background scavenger every `INTERVAL` seconds (consumer-aware: it never
  deletes what the group has not checkpointed past);
- the baseline: the same workload without retention, measured in the same run,
  half of the time before the retention run and half after (the two rates
  averaged, both in `baseline_rates`).

`value` is the append rate (events/s) with retention and `baseline` the rate
without; goal: ratio >= 0.8. Once a second both runs sample the store's files
(database + WAL, SQLite only) and the process's RSS: `size_mb` and `rss_mb`
are those curves for the retention run, `baseline_size_mb` the file's for the
first run without (half as long). `size_flat_ratio` is the largest size after the first quarter of
the run over the largest size within it (about 1.0 when the file stays flat
once the first `max_age` of events has aged out; the baseline's keeps growing),
and `rss_flat_ratio` the same for RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import resource
import time
from typing import Any

import tidelog
from tidelog.consumers import App, Context, RunnerOptions
from tidelog.retention import RetentionPolicy

__all__ = ["retention_steady_state"]

MAX_AGE = 3.0
INTERVAL = 1.0
PRODUCERS = 4
BATCH = 10
STREAMS = 100


def _rss_mb() -> float:
    try:
        pages = int(pathlib.Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # not Linux: the peak is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _size_mb(path: str | None) -> float | None:
    if path is None:
        return None
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += os.path.getsize(path + suffix)
    return total / 2**20


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values)) if values else None


def _flat(curve: list[float | None]) -> float | None:
    values = [v for v in curve if v is not None]
    if len(values) < 4:
        return None
    first = max(values[: len(values) // 4]) or 1e-9
    return round(max(values[len(values) // 4 :]) / first, 3)


async def _run(backend: Any, seconds: float, retention: bool) -> dict[str, Any]:
    store = await backend.open_store()
    path = getattr(backend, "last_store", None)
    path = None if path is None else str(path)
    payload = b"x" * 200
    appended = 0
    handled = 0
    app = App("retention-bench", store, options=RunnerOptions(commit_interval=0.1, page_size=500))

    @app.handler("q", group="workers")
    async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
        nonlocal handled
        handled += 1

    stop = asyncio.Event()

    async def produce(k: int) -> None:
        nonlocal appended
        i = k
        while not stop.is_set():
            events = [tidelog.NewEvent(type="Job", data=payload) for _ in range(BATCH)]
            await store.append(f"q-{i % STREAMS}", events)
            appended += BATCH
            i += PRODUCERS

    sizes: list[float | None] = []
    rss: list[float | None] = []
    rates: list[float] = []
    try:
        if retention:
            store.scavenge_interval = INTERVAL
            await store.set_retention(RetentionPolicy(max_age=MAX_AGE), category="q")
        runner = asyncio.create_task(app.run())
        await asyncio.sleep(0.5)  # the member joined
        producers = [asyncio.create_task(produce(k)) for k in range(PRODUCERS)]
        start = time.perf_counter()
        deadline = start + seconds
        mark, counted = start, 0
        while (now := time.perf_counter()) < deadline:
            await asyncio.sleep(min(1.0, deadline - now))
            sizes.append(_size_mb(path))
            rss.append(_rss_mb())
            now, count = time.perf_counter(), appended
            rates.append((count - counted) / (now - mark))
            mark, counted = now, count
        stop.set()
        await asyncio.gather(*producers)
        elapsed = time.perf_counter() - start
        app.request_stop()
        await runner
        stats = dict(store.retention_stats)
    finally:
        await store.close()
    return {
        "rate": appended / elapsed,
        "appended": appended,
        "handled": handled,
        "sizes": sizes,
        "rss": rss,
        "rates": rates,
        "stats": stats,
    }


async def retention_steady_state(backend: Any, sizes: Any) -> dict[str, Any]:
    seconds = float(sizes.retention_seconds)
    # The baseline brackets the measured run (half before, half after), so that a
    # change of the machine's load weighs on both sides alike.
    before = await _run(backend, seconds / 2, retention=False)
    with_retention = await _run(backend, seconds, retention=True)
    after = await _run(backend, seconds / 2, retention=False)
    without = {**before, "rate": (before["rate"] + after["rate"]) / 2}

    def rounded(curve: list[float | None]) -> list[float | None]:
        return [None if v is None else round(v, 2) for v in curve]

    return {
        "value": round(with_retention["rate"]),
        "unit": "events/s",
        "baseline": round(without["rate"]),
        "baseline_rates": [round(before["rate"]), round(after["rate"])],
        "seconds": seconds,
        "max_age": MAX_AGE,
        "scavenge_interval": INTERVAL,
        "size_mb": rounded(with_retention["sizes"]),
        "baseline_size_mb": rounded(without["sizes"]),
        "rss_mb": rounded(with_retention["rss"]),
        "size_flat_ratio": _flat(with_retention["sizes"]),
        "baseline_size_flat_ratio": _flat(without["sizes"]),
        "rss_flat_ratio": _flat(with_retention["rss"]),
        "rates": [round(r) for r in with_retention["rates"]],
        "baseline_rates_curve": [[round(r) for r in run["rates"]] for run in (before, after)],
        "rate_until_first_scavenge": _mean(with_retention["rates"][: int(MAX_AGE)]),
        "rate_after_first_scavenge": _mean(with_retention["rates"][int(MAX_AGE) :]),
        "appended": with_retention["appended"],
        "handled": with_retention["handled"],
        "scavenged": with_retention["stats"].get("deleted", 0),
        "scavenger_runs": with_retention["stats"].get("runs", 0),
    }
