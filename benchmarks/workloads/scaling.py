"""Benchmark workload `group_scaling`: does a consumer group grow with its worker processes?

Registered in `WORKLOADS` (`benchmarks/workloads/__init__.py`); the exact
definition is in benchmarks/README.md.

One store of the engine under test (a SQLite file, a PostgreSQL schema, a
store on the private nats-server: several processes open it by URL) gets, for
each handler kind and each process count (1, 2, 4; `--quick`: 1, 2), a fresh
category of events in 1,000 streams (`scale1`, `scale2`, ... for the trivial
handler, `scaleio1`, ... for the I/O-bound one, which awaits 5 ms per event),
handled by a fresh group of real `tidelog worker` processes
(`consumers_worker:app`). The members join while the category is empty; it is
filled once each holds its final share of the partitions and heartbeated on
it, and the handlers wait for a go file until then (`_timed_group`: with the
events there before the joins, a hand-over waited for handlers that waited for
the go file, and the second process started late). Each process then records
its handled count and the wall-clock times of its first and last event, and
writes them on exit.
Throughput = distinct events / (last handled event - first handled event) over
all the group's processes; `handled_twice` counts events handled more than once
(a sound run has 0: nothing crashes); `cpu_us_per_event` is the CPU time the
worker processes used between their first and last event, per event (the
engine's server not included): times the rate, it says how many cores the
workers kept busy.

Goals, all from the same run: I/O-bound, 4 processes >= 3x one process (quick:
2 >= 1.5x of 1); trivial, adding processes never lowers throughput (2 >= 1.0x
of 1, 4 >= 1.0x of 2); on PostgreSQL also trivial 2 >= 1.3x of 1. `value` is
the I/O-bound rate of the most processes and `baseline` one process's rate
times the process count (perfect scaling), so `ratio` is the scaling
efficiency and its goal 0.75 is "4 >= 3x of 1" (quick: "2 >= 1.5x of 1");
`goals` lists every goal with its ratio and `met`, and the entry's `met` is
true only when all of them are.
"""

from __future__ import annotations

import pathlib
import tempfile
from typing import Any

import tidelog
from benchmarks.common import fill
from benchmarks.workloads.consumers import _timed_group

__all__ = ["group_scaling"]

KINDS = {"trivial": "scale", "io": "scaleio"}
"""Handler kind -> the category its events are in."""


async def _one(url: str, store: tidelog.Store, kind: str, workers: int, n: int) -> dict[str, Any]:
    """Run one group of `workers` processes over a fresh category of `kind`; its figures.

    The category is filled once the group settled on it (`_timed_group`'s `fill`).
    """
    category = f"{KINDS[kind]}{workers}"
    with tempfile.TemporaryDirectory() as tmp:
        records = pathlib.Path(tmp)
        await _timed_group(
            url,
            store,
            workers,
            f"{kind}{workers}",
            records / "go",
            category=category,
            extra_env={"BENCH_HANDLER": kind, "BENCH_RECORD": str(records / "rec-{pid}")},
            fill=lambda: fill(store, category, n),
        )
        rows = [
            p.read_text().split()
            for p in records.iterdir()  # noqa: ASYNC240 - after the clock stopped
            if p.name.startswith("rec-")
        ]
    counts = [int(r[0]) for r in rows]
    if len(rows) != workers or sum(counts) < n:
        raise RuntimeError(f"{kind}/{workers}: records {rows} of {workers} processes, {n} events")
    first = min(float(r[1]) for r in rows if int(r[0]))
    last = max(float(r[2]) for r in rows if int(r[0]))
    return {
        "rate": round(n / max(last - first, 1e-6)),
        "handled_twice": sum(counts) - n,
        "per_process": sorted(counts),
        # the workers' CPU while handling, per event: where it stays flat and the rate
        # does not grow, the processes share too few cores (compare `uptime`)
        "cpu_us_per_event": round(sum(float(r[3]) for r in rows) / n * 1e6, 1),
    }


def _goal(name: str, num: float, den: float, at_least: float) -> dict[str, Any]:
    ratio = num / den if den else 0.0
    return {"goal": f"{name} >= {at_least}", "ratio": round(ratio, 3), "met": ratio >= at_least}


async def group_scaling(backend: Any, sizes: Any) -> dict[str, Any]:
    if not hasattr(backend, "store_url"):
        raise tidelog.NotSupported(backend.name, "group_scaling", "needs a shared store URL")
    quick = sizes.scaling_processes < 4
    counts = (1, 2, 4) if not quick else (1, 2)  # quick: 1 and 2 processes
    events = {"trivial": sizes.scaling_events, "io": sizes.scaling_io_events}
    url = backend.store_url()
    by_kind: dict[str, dict[str, Any]] = {}
    async with tidelog.connect(url) as store:
        for kind in KINDS:
            by_kind[kind] = {str(w): await _one(url, store, kind, w, events[kind]) for w in counts}
    rate = {k: {w: r["rate"] for w, r in runs.items()} for k, runs in by_kind.items()}
    top = str(counts[-1])
    goals = [
        _goal(f"io {top}/1", rate["io"][top], rate["io"]["1"], 0.75 * counts[-1]),
        _goal("trivial 2/1", rate["trivial"]["2"], rate["trivial"]["1"], 1.0),
    ]
    if not quick:
        goals.append(_goal("trivial 4/2", rate["trivial"]["4"], rate["trivial"]["2"], 1.0))
    if backend.name == "postgres":
        goals.append(_goal("postgres trivial 2/1", rate["trivial"]["2"], rate["trivial"]["1"], 1.3))
    return {
        "value": rate["io"][top],
        "unit": "events/s",
        "baseline": rate["io"]["1"] * counts[-1],
        "events": events,
        "by_processes": by_kind,
        "goals": goals,
        "all_goals_met": all(g["met"] for g in goals),
    }
