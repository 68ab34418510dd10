"""Prometheus metrics for the server, on a registry of its own (no global state).

Names follow Prometheus conventions: the `tidelog_` prefix, base units,
counters ending in `_total`. Labels are categories, groups and partitions,
never stream ids, so cardinality stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

import tidelog
from tidelog.consumers._dlq import DlqState, load_state
from tidelog.engines._kit.scheduling import Scheduler
from tidelog.engines.contract import Engine
from tidelog.errors import NotSupported

__all__ = ["Metrics"]

log = logging.getLogger(__name__)

_MIN_REFRESH_GAP = 1.0
_REFRESH_DUTY = 4.0
"""After a refresh that took d seconds, the next starts no sooner than 4 d later: however
many groups there are, computing their lag takes at most a fifth of the time."""

_DLQ_CATEGORY = "$dlq"
"""The category of the `$dlq-<group>` streams where consumer groups park events."""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Info("tidelog_build", "tidelog build information", registry=r).info(
            {"version": tidelog.__version__}
        )
        self.appends = Counter(
            "tidelog_appended_events", "Events appended", ["category"], registry=r
        )
        self.append_seconds = Histogram(
            "tidelog_append_duration_seconds",
            "Time to a durable append",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.events_read = Counter("tidelog_events_read", "Events sent to readers", registry=r)
        self.subscriptions = Gauge("tidelog_subscriptions", "Open live subscriptions", registry=r)
        self.requests = Counter(
            "tidelog_http_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.lag = Gauge(
            "tidelog_consumer_lag_events",
            "Events between a group's checkpoint and the head of the log",
            ["group", "category", "partition"],
            registry=r,
        )
        self.head = Gauge("tidelog_log_head_position", "Newest position in the log", registry=r)
        self.redelivered = Counter(
            "tidelog_redelivered_events",
            "Events a remote consumer group fetched again (fetched before, not committed)",
            ["group", "category"],
            registry=r,
        )
        self._fetched: dict[tuple[str, str, int], int] = {}
        """Highest position fetched per (group, category, partition), for redeliveries."""
        self.parked = Gauge(
            "tidelog_parked_events",
            "Open parked events (parked, held or retrying) in a group's $dlq- stream",
            ["group"],
            registry=r,
        )
        self.scheduled_pending = Gauge(
            "tidelog_scheduled_pending_events",
            "Scheduled events waiting for their due time (not yet delivered or cancelled)",
            registry=r,
        )
        self.scheduled_lateness = Histogram(
            "tidelog_scheduled_lateness_seconds",
            "Due time to append of the scheduled events this server's scheduler delivered",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
            registry=r,
        )
        self._dlq: dict[str, DlqState] = {}
        self._dlq_lock = asyncio.Lock()
        self._stale = asyncio.Event()
        """Set by a scrape: refresh the store-derived gauges soon (see `run_refresh`)."""

    def appended(self, category: str, count: int, seconds: float) -> None:
        self.appends.labels(category).inc(count)
        if seconds:
            self.append_seconds.observe(seconds)

    def fetched(self, group: str, category: str, partition: int, positions: list[int]) -> None:
        """Count the fetched events at or below what this partition had fetched before."""
        key = (group, category, partition)
        seen = self._fetched.get(key, 0)
        again = sum(1 for p in positions if p <= seen)
        if again:
            self.redelivered.labels(group, category).inc(again)
        if positions:
            self._fetched[key] = max(seen, *positions)

    def read(self, count: int) -> None:
        self.events_read.inc(count)

    async def refresh_lag(self, store: Engine) -> None:
        """Lag per (group, category, partition): the events of that category and
        partition after the group's checkpoint, as Kafka counts a partition's lag.

        One `count_events` per group and partition (an indexed count on the SQL
        engines): its cost grows with the number of groups, so it runs in the
        background (`run_refresh`), never in a scrape.
        """
        head = await store.last_position()
        self.head.set(head)
        self.lag.clear()
        for group, category in await store.list_groups():
            points = await store.checkpoints(group, category)
            for partition in range(store.partition_count):
                lag = await store.count_events(
                    points.get(partition, 0) + 1, [category], [partition]
                )
                self.lag.labels(group, category, str(partition)).set(lag)
        self.parked.clear()
        for group, count in (await self.parked_by_group(store)).items():
            self.parked.labels(group).set(count)
        with contextlib.suppress(NotSupported):  # an engine without scheduled delivery
            self.scheduled_pending.set(await store.count_scheduled())

    def observe_scheduler(self, scheduler: Scheduler) -> None:
        """Put the lateness of every event `scheduler` delivers in the histogram."""
        scheduler.observers.append(lambda late: self.scheduled_lateness.observe(max(0.0, late)))

    async def parked_by_group(self, store: Engine) -> dict[str, int]:
        """Open parked events per group, from every `$dlq-<group>` stream.

        Each DLQ's fold is kept between calls and only new entries are read, so a
        scrape costs one stream listing plus what was parked since the last one.
        """
        async with self._dlq_lock:
            counts: dict[str, int] = {}
            async for info in store.list_streams(_DLQ_CATEGORY):
                group = info.name[len(_DLQ_CATEGORY) + 1 :]
                if not group or info.deleted:
                    continue
                state = self._dlq.get(group) or DlqState(group)
                self._dlq[group] = await load_state(store, group, state)
                counts[group] = sum(p.status.open for p in state.entries.values())
            return counts

    def scraped(self) -> None:
        """A scrape was served from the cache: have the background refresh run soon."""
        self._stale.set()

    async def run_refresh(self, store: Callable[[], Engine], interval: float) -> None:
        """Refresh lag, head and parked counts every `interval` seconds, or sooner after a
        scrape, but never more than a fifth of the time (`_REFRESH_DUTY`).

        A scrape renders what the last refresh found, so its cost does not depend
        on the number of groups (500 groups made each scrape compute 8,000 counts
        on the request path); the values are at most one refresh old.
        """
        while True:
            started = time.monotonic()
            try:
                await self.refresh_lag(store())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store may be down; the next round retries
                log.warning("metrics refresh failed: %s", exc)
            took = time.monotonic() - started
            await asyncio.sleep(max(_MIN_REFRESH_GAP, _REFRESH_DUTY * took))
            self._stale.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stale.wait(), max(0.0, interval - _MIN_REFRESH_GAP))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """ASGI middleware counting requests by route template, method and status."""

        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            status = 500

            async def send_wrapper(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            finally:
                route: Any = scope.get("path_template") or "unmatched"
                self.requests.labels(route, scope.get("method", ""), str(status)).inc()

        return counted
