"""Benchmark workload `sse_fanout`: many live SSE subscribers on one server.

Registered in `benchmarks/workloads/__init__.py`. For each subscriber count in
`sizes.fanout_subscribers` a fresh store is put behind `tidelog serve` (a
child process, limits raised so one principal may hold every subscription);
client processes (`fanout_client`, raw asyncio sockets, `sizes.fanout_clients`
of them) open the subscriptions on category `fan`, and once all are live the
appender appends single events through the server (the remote engine) at
`sizes.fanout_rate` events/s for `sizes.fanout_seconds`, open loop (each
append its own task, started on schedule whether or not the last one
returned). Each event carries its send time; a subscriber measures delivery
from it (the append call, not its acknowledgement: `append_ack_p99_ms` is
reported beside). Every subscriber must get every event, in position order.
`server_cpu_s` is the CPU time the server used from the first append to the
last delivery, and `server_cpu_us_per_delivery` that per event per subscriber:
on a shared machine the work's cost, where latency also shows the others' load.
`fell_behind` is the server's count of subscribers that let too many events
wait and read the store themselves (`tidelog_subscriber_fell_behind_total`).

Reported per count (`steps`): p50/p99 delivery, whether every subscriber got
every event in order, the server's resident memory (RSS) idle before the
subscribers, with them connected, and at its peak during the run (sampled
from /proc twice a second); `growth` lines up p99 and RSS per count, to see
how they grow from 100 to 1,000 to 5,000 subscribers. `value` is the p99 of the step with the most
subscribers up to 1,000 (the issue's definition); the baseline is the p99
of one subscriber under the same append rate, in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

import tidelog
from benchmarks.common import FANOUT_BUCKET_MS as BUCKET_MS
from benchmarks.common import log
from benchmarks.workloads.store import percentile
from benchmarks.workloads.via_server import _store_url, serve_process

__all__ = ["sse_fanout"]

_ROOT = Path(__file__).resolve().parent.parent.parent
"""The repository: client processes run `-m benchmarks.workloads.fanout_client` from it."""


def _rss_mb(pid: int) -> float:
    """Resident memory of process `pid` in MB (Linux /proc); 0 when unknown."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _cpu_s(pid: int) -> float:
    """CPU time (user + system) process `pid` has used, in seconds (Linux /proc); 0 when
    unknown. On a shared machine this says what the server's work cost, where wall
    clock latency also says how much CPU the others left it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(histogram: dict[int, int], q: float) -> float:
    """The q-th percentile (0..100) of a bucket histogram, in ms (the bucket's upper edge)."""
    total = sum(histogram.values())
    if not total:
        return float("nan")
    rank = q / 100 * total
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return round((bucket + 1) * BUCKET_MS, 1)
    return round((max(histogram) + 1) * BUCKET_MS, 1)


async def _appends(
    store: tidelog.Store, rate: int, seconds: float
) -> tuple[int, float, list[float]]:
    """Append `rate` events/s for `seconds`, `_BATCH` events per append, each on its schedule.

    At most `_IN_FLIGHT` appends wait at once: a server that falls behind makes
    the achieved rate (returned: count, achieved events/s, each ack's latency
    in seconds) lower instead of queueing thousands of requests in the client.
    """
    appends = max(1, int(rate * seconds) // _BATCH)
    acks: list[float] = []
    upcoming = iter(range(appends))
    start = time.monotonic()

    async def sender() -> None:
        for i in upcoming:
            delay = start + i * _BATCH / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent = time.time()
            data = b'{"t":%.6f}' % sent
            events = [tidelog.NewEvent(type="Tick", data=data) for _ in range(_BATCH)]
            await store.append(f"fan-{i % 100}", events)
            acks.append(time.time() - sent)

    await asyncio.gather(*(sender() for _ in range(_IN_FLIGHT)))
    total = appends * _BATCH
    return total, round(total / (time.monotonic() - start)), acks


_BATCH = 10
"""Events per append: 1,000 events/s as 100 appends/s, which a server under load sustains
(single-event appends measured the HTTP append path, not the fan-out)."""
_IN_FLIGHT = 16


async def _step(backend: Any, sizes: Any, subscribers: int, clients: int) -> dict[str, Any]:
    """One run: `subscribers` SSE subscriptions spread over `clients` processes."""
    limits = {
        "max_subscriptions_per_principal": subscribers + 16,
        "max_connections_per_principal": subscribers + 64,
        "max_connections_per_address": 0,
    }
    clients = max(1, min(clients, subscribers))
    shares = [
        subscribers // clients + (1 if c < subscribers % clients else 0) for c in range(clients)
    ]
    async with (
        serve_process(_store_url(backend), limits) as served,
        # a server saturated by its subscribers may take long to acknowledge an append
        tidelog.connect(f"{served.url}?timeout=120", token=served.key) as store,
    ):
        await store.append("fan-warm", [tidelog.NewEvent(type="Warm")])
        rss_idle = _rss_mb(served.pid)
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.workloads.fanout_client",
                served.url,
                served.key,
                "fan",
                str(share),
                cwd=_ROOT,
                stdout=asyncio.subprocess.PIPE,
                limit=1 << 24,  # the report is one line: counts and a histogram
            )
            for share in shares
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), 60 + subscribers / 20)
                if line.strip() != b"ready":
                    raise RuntimeError(f"a client failed to subscribe: {line!r}")
            rss_connected = _rss_mb(served.pid)
            peak = rss_connected

            async def sample() -> None:
                nonlocal peak
                while True:
                    await asyncio.sleep(0.5)
                    peak = max(peak, _rss_mb(served.pid))

            sampler = asyncio.create_task(sample())
            cpu_before = _cpu_s(served.pid)
            try:
                total, achieved, acks = await _appends(
                    store, sizes.fanout_rate, sizes.fanout_seconds
                )
                await store.append("fan-end", [tidelog.NewEvent(type="End")])
                reports = []
                for proc in procs:
                    assert proc.stdout is not None
                    line = await asyncio.wait_for(proc.stdout.readline(), 120 + subscribers / 10)
                    reports.append(json.loads(line))
                cpu = _cpu_s(served.pid) - cpu_before
            finally:
                sampler.cancel()
            fell_behind = await _fell_behind(served.url)
        finally:
            for proc in procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
    histogram: dict[int, int] = {}
    for report in reports:
        for bucket, n in report["histogram"].items():
            histogram[int(bucket)] = histogram.get(int(bucket), 0) + n
    counts = [c for report in reports for c in report["counts"]]
    return {
        "subscribers": subscribers,
        "client_processes": clients,
        "events": total,
        "achieved_rate": achieved,
        "all_delivered": counts == [total] * subscribers,
        "fewest_delivered": min(counts),
        "in_order": sum(r["disorder"] for r in reports) == 0,
        "p50_ms": _percentile(histogram, 50),
        "p99_ms": _percentile(histogram, 99),
        "max_ms": _percentile(histogram, 100),
        "append_ack_p50_ms": round(percentile(acks, 50) * 1000, 1),
        "append_ack_p99_ms": round(percentile(acks, 99) * 1000, 1),
        "server_rss_mb": {"idle": rss_idle, "connected": rss_connected, "peak": peak},
        "fell_behind": fell_behind,
        "server_cpu_s": round(cpu, 2),
        "server_cpu_us_per_delivery": round(cpu / max(1, total * subscribers) * 1e6, 2),
    }


async def _fell_behind(url: str) -> float | None:
    """How often a subscriber fell back to reading the store (`/metrics`; None: a server
    without the metric)."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith("tidelog_subscriber_fell_behind_total "):
            return float(line.split()[-1])
    return None


async def sse_fanout(backend: Any, sizes: Any) -> dict[str, Any]:
    baseline = await _step(backend, sizes, 1, 1)
    steps: dict[str, Any] = {}
    for n in sizes.fanout_subscribers:
        log(f"sse_fanout: {n} subscribers ...")
        try:
            steps[str(n)] = await _step(backend, sizes, n, sizes.fanout_clients)
        except Exception as exc:  # an overloaded server: report it, go on with the next count
            steps[str(n)] = {"error": repr(exc)}
        log(f"sse_fanout: {n} subscribers: {json.dumps(steps[str(n)])}")
    headline = max((n for n in sizes.fanout_subscribers if n <= 1000), default=1)
    chosen = steps[str(headline)]
    if "error" in chosen:
        raise RuntimeError(f"{headline} subscribers: {chosen['error']}")
    return {
        "value": chosen["p99_ms"],
        "unit": "ms",
        "baseline": baseline["p99_ms"],
        "subscribers": headline,
        "rate": sizes.fanout_rate,
        "seconds": sizes.fanout_seconds,
        "all_delivered": chosen["all_delivered"],
        "in_order": chosen["in_order"],
        "server_rss_mb": chosen["server_rss_mb"],
        "growth": {
            n: {
                "p99_ms": step.get("p99_ms"),
                "achieved_rate": step.get("achieved_rate"),
                "all_delivered": step.get("all_delivered"),
                "server_rss_connected_mb": step.get("server_rss_mb", {}).get("connected"),
                "server_rss_peak_mb": step.get("server_rss_mb", {}).get("peak"),
                "error": step.get("error"),
            }
            for n, step in steps.items()
        },
        "baseline_step": baseline,
        "steps": steps,
    }
