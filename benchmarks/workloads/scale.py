"""The `scale_curve` workload: does the store stay as fast when it holds 100 times more?

One store is filled once per run, through the engine, in two steps: to
`scale_small` events (100,000), then on to `scale_events` (10 million); about
200-byte events, 100 per stream (so 100,000 streams at 10 million), appended
100 at a time (one stream each) by `batch_callers` concurrent callers. At both
points the same figures are taken on the same store:

- `append`: `scale_probe` more events (to streams of their own) appended 100
  per call by `batch_callers` callers; events/s. `value` is the rate at the
  large size, `baseline` the rate at the small size (goal: ratio >= 0.8).
- `read_p99_ms`: `read_stream` of `scale_reads` streams of 100 events, picked
  at random among all the streams filled so far (cold pages at 10 million),
  one at a time; the p99 (goal: large within 2x of small).
- `replay_rate`: `read_all(from_position=0)` of the whole store; events/s
  (linear: the rate at the large size >= 0.8 of the rate at the small one).
- `subscribe_rss_mb`, `group_rss_mb`: the peak RSS of a child process that
  catches up the whole log with `subscribe(from_position=0)`, and of one
  consumer-group worker (`tidelog.consumers.App`, default options) handling
  every filled event (goal: under 300 MB each).
- `bytes_per_event`: the store's files (SQLite: the database and its WAL;
  PostgreSQL: tables, indexes and TOAST of the store's schema) over the events
  it holds, beside the plain-driver baseline's (`scale_small` rows written with
  `Backend.baseline_batch` into a table from the engine's own migrations) and
  the events' own payload bytes.

Every figure goes into the entry; `checks` says which of the issue's goals
were met. The runner keeps its usual `value`/`baseline` ratio for the append
goal. The full size takes a long time: run it alone with `--timeout`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tidelog
from benchmarks.common import Sizes, log
from benchmarks.workloads.store import ms, payload, percentile, rows_for
from tidelog import NewEvent

__all__ = ["scale_curve"]

PER_STREAM = 100
"""Events per filled stream: `read_stream` reads streams of exactly this length."""
CATEGORY = "scale"
RSS_LIMIT_MB = 300.0
CHILD = Path(__file__).with_name("scale_child.py")
ROOT = str(Path(__file__).resolve().parents[2])
"""The repository: the child imports `tidelog` from the same place as this process."""


class _Filler:
    """Appends the fill in order, stream by stream, and remembers where each partition ends."""

    def __init__(self, store: tidelog.Store, size: int) -> None:
        self.store = store
        self.size = size
        self.streams = 0
        self.events = 0
        self.last_in_partition: dict[int, int] = {}

    def _plan(self, upto: int) -> Iterator[tuple[str, list[NewEvent]]]:
        while self.events < upto:
            count = min(PER_STREAM, upto - self.events)
            base = self.events
            self.events += count
            stream = f"{CATEGORY}-{self.streams}"
            self.streams += 1
            yield (
                stream,
                [
                    NewEvent(type="Deposited", data=payload(base + k, self.size))
                    for k in range(count)
                ],
            )

    async def fill(self, upto: int, callers: int) -> float:
        plan = self._plan(upto)
        parts = self.store.partition_count
        step = max(1, upto // 10)
        started = self.events
        t0 = time.perf_counter()

        async def caller() -> None:
            for stream, events in plan:  # one shared generator: each append once, in order
                result = await self.store.append(stream, events)
                p = tidelog.partition_of(stream, parts)
                if result.position > self.last_in_partition.get(p, 0):
                    self.last_in_partition[p] = result.position
                if self.events % step < len(events):
                    log(f"scale_curve fill: {self.events:,} events")

        await asyncio.gather(*(caller() for _ in range(callers)))
        seconds = time.perf_counter() - t0
        log(f"scale_curve fill to {upto:,}: {(self.events - started) / seconds:,.0f} events/s")
        return seconds


async def _append_probe(store: tidelog.Store, sizes: Sizes, tag: str) -> float:
    """Events/s of `scale_probe` events appended 100 per call to streams of their own."""
    n = sizes.scale_probe
    streams = max(1, n // PER_STREAM)
    plan = iter(
        [
            (
                f"probe{tag}-{i}",
                [
                    NewEvent(type="Deposited", data=payload(k, sizes.event_bytes))
                    for k in range(PER_STREAM)
                ],
            )
            for i in range(streams)
        ]
    )

    async def caller() -> None:
        for stream, events in plan:
            await store.append(stream, events)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(sizes.batch_callers)))
    return streams * PER_STREAM / (time.perf_counter() - t0)


async def _read_latencies(store: tidelog.Store, streams: int, samples: int) -> list[float]:
    """Seconds of each `read_stream` of a full stream, picked at random among `streams`."""
    rng = random.Random(streams)
    out = []
    for _ in range(samples):
        name = f"{CATEGORY}-{rng.randrange(streams)}"
        t0 = time.perf_counter()
        got = [e async for e in store.read_stream(name)]
        out.append(time.perf_counter() - t0)
        if len(got) != PER_STREAM:
            raise RuntimeError(f"{name} holds {len(got)} events, expected {PER_STREAM}")
    return out


async def _replay_rate(store: tidelog.Store) -> tuple[int, float]:
    count = 0
    t0 = time.perf_counter()
    async for _ in store.read_all(from_position=0):
        count += 1
    return count, count / (time.perf_counter() - t0)


async def _child(*args: str) -> dict[str, Any]:
    """Run scale_child.py (a process of its own, so the RSS is the reader's alone)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"scale_child {args[0]} failed: {err.decode()[-2000:]}")
    got: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return got


async def _store_bytes(backend: Any, which: str) -> int:
    """Bytes on disk of the engine's store (`which="store"`) or of the last baseline table."""
    if backend.name == "sqlite":
        path = Path(backend.last_store if which == "store" else backend._baseline_path)
        files = [path, Path(f"{path}-wal")]
        return sum(f.stat().st_size for f in files if f.exists())
    if backend.name == "postgres":
        schema = backend.last_schema if which == "store" else backend._baseline.split(".")[0]
        size: int = await backend.conn.fetchval(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relkind IN ('r', 'm')",
            schema.strip('"'),
        )
        return size
    raise tidelog.NotSupported(backend.name, "scale_curve", "bytes on disk: sqlite or postgres")


async def _point(
    backend: Any, store: tidelog.Store, filler: _Filler, url: str, sizes: Sizes, tag: str
) -> dict[str, Any]:
    """Every figure at the store's current size."""
    log(f"scale_curve at {filler.events:,}: append probe, reads, replay, catch-ups")
    rate = await _append_probe(store, sizes, tag)
    log(f"scale_curve append probe: {rate:,.0f} events/s")
    lat = await _read_latencies(store, filler.streams, sizes.scale_reads)
    log(f"scale_curve read_stream p99: {ms(percentile(lat, 99))} ms")
    held, replay = await _replay_rate(store)
    log(f"scale_curve replay: {replay:,.0f} events/s")
    sub = await _child("subscribe", url, str(held))
    log(f"scale_curve subscribe catch-up: {sub}")
    grp = await _child("group", url, str(filler.events), CATEGORY, f"catch-up-{tag}")
    got = await store.checkpoints(f"catch-up-{tag}", CATEGORY)
    if got != filler.last_in_partition:
        raise RuntimeError("the group worker stopped before committing every partition's end")
    disk = await _store_bytes(backend, "store")
    point = {
        "events": held,
        "append_rate": round(rate),
        "read_p50_ms": ms(percentile(lat, 50)),
        "read_p99_ms": ms(percentile(lat, 99)),
        "replay_rate": round(replay),
        "subscribe_rate": round(sub["events"] / sub["seconds"]),
        "subscribe_rss_mb": sub["rss_peak_mb"],
        "subscribe_rss_start_mb": sub["rss_start_mb"],
        "group_rate": round(grp["events"] / grp["seconds"]),
        "group_rss_mb": grp["rss_peak_mb"],
        "group_rss_start_mb": grp["rss_start_mb"],
        "bytes_on_disk": disk,
        "bytes_per_event": round(disk / held, 1),
    }
    log(f"scale_curve at {filler.events:,}: {json.dumps(point)}")  # a long run's figures so far
    return point


def _store_url(backend: Any) -> str:
    make = getattr(backend, "store_url", None)
    if make is None or backend.name not in ("sqlite", "postgres"):
        raise tidelog.NotSupported(backend.name, "scale_curve", "runs on sqlite and postgres")
    url: str = make()
    return url


async def scale_curve(backend: Any, sizes: Sizes) -> dict[str, Any]:
    url = _store_url(backend)
    # the raw baseline's bytes per event: the same kind of rows, plain driver, same schema
    base_rows = rows_for(
        [
            (
                f"{CATEGORY}-{i}",
                [
                    NewEvent(type="Deposited", data=payload(i * PER_STREAM + k, sizes.event_bytes))
                    for k in range(PER_STREAM)
                ],
            )
            for i in range(max(1, sizes.scale_small // PER_STREAM))
        ]
    )
    await backend.baseline_batch(base_rows, fresh=True)
    base_events = sum(len(r) for r in base_rows)
    base_bytes = await _store_bytes(backend, "baseline")
    del base_rows
    async with tidelog.connect(url) as store:
        filler = _Filler(store, sizes.event_bytes)
        small_fill = await filler.fill(sizes.scale_small, sizes.batch_callers)
        small = await _point(backend, store, filler, url, sizes, "s")
        large_fill = await filler.fill(sizes.scale_events, sizes.batch_callers)
        large = await _point(backend, store, filler, url, sizes, "l")
    read_ratio = large["read_p99_ms"] / small["read_p99_ms"] if small["read_p99_ms"] else None
    replay_ratio = large["replay_rate"] / small["replay_rate"]
    append_ratio = large["append_rate"] / small["append_rate"]
    checks = {
        "append_large_over_small >= 0.8": append_ratio >= 0.8,
        "read_p99_large_over_small <= 2": read_ratio is not None and read_ratio <= 2,
        "replay_rate_large_over_small >= 0.8 (linear)": replay_ratio >= 0.8,
        f"subscribe_rss_mb < {RSS_LIMIT_MB:g}": large["subscribe_rss_mb"] < RSS_LIMIT_MB,
        f"group_rss_mb < {RSS_LIMIT_MB:g}": large["group_rss_mb"] < RSS_LIMIT_MB,
    }
    return {
        "value": large["append_rate"],
        "unit": "events/s",
        "baseline": small["append_rate"],
        "read_p99_ratio": round(read_ratio, 3) if read_ratio is not None else None,
        "replay_rate_ratio": round(replay_ratio, 3),
        "checks": checks,
        "all_checks_met": all(checks.values()),
        "small": small,
        "large": large,
        "fill_seconds": round(small_fill + large_fill, 1),
        "fill_rate": round(filler.events / (small_fill + large_fill)),
        "baseline_bytes_per_event": round(base_bytes / base_events, 1),
        "payload_bytes_per_event": sizes.event_bytes,
        "streams": filler.streams,
    }
