"""Prometheus metrics for the server, on a registry of its own (no global state).

Names follow Prometheus conventions: the `tidelog_` prefix, base units,
counters ending in `_total`. Labels are categories, groups and partitions,
never stream ids, so cardinality stays bounded.

Beside the lag, the server exports a ready-made scaling signal per group and
category, `tidelog_group_desired_members` (`desired_members`), so that an
autoscaler (KEDA's Prometheus trigger, or an HPA on an external metric; see
deploy/kubernetes) needs no hand-written PromQL and no knowledge of the
handler's speed: the server measures it from how fast the checkpoints move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

import tidelog
from tidelog.consumers._dlq import DlqState, load_state
from tidelog.engines._kit.scheduling import Scheduler
from tidelog.engines.contract import Engine
from tidelog.errors import NotSupported
from tidelog.server._config import Scaling
from tidelog.server._rounds import one_round

__all__ = ["Metrics", "desired_members"]

log = logging.getLogger(__name__)

_MIN_REFRESH_GAP = 1.0
_REFRESH_DUTY = 4.0
"""After a refresh that took d seconds, the next starts no sooner than 4 d later: however
many groups there are, computing their lag takes at most a fifth of the time."""

_DLQ_CATEGORY = "$dlq"


def desired_members(
    lag: int, per_member_rate: float | None, members: int, partitions: int, drain_seconds: float
) -> int:
    """The members a group needs to drain `lag` events within `drain_seconds`.

    Each member handles `per_member_rate` events per second (as measured), so
    `ceil(lag / (per_member_rate * drain_seconds))` of them drain it in time;
    never more than `partitions` (a member without a partition does nothing)
    and at least one while there is lag. No lag: 0 (an autoscaler keeps its
    minimum). No measured rate (nothing was consumed in the window: no member,
    or a stalled one): the members there are, at least one - a stalled
    handler is not helped by more of it, and a first member gives the rate.
    """
    if lag <= 0:
        return 0
    if per_member_rate is None or per_member_rate <= 0:
        return min(partitions, max(members, 1))
    return min(partitions, max(1, math.ceil(lag / (per_member_rate * drain_seconds))))


class _Sample(NamedTuple):
    """A group's checkpoints and member count at one refresh (monotonic seconds)."""

    at: float
    checkpoints: dict[int, int]
    members: int


"""The category of the `$dlq-<group>` streams where consumer groups park events."""


class Metrics:
    def __init__(
        self, scaling: Scaling | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.scaling = scaling or Scaling()
        self.clock = clock
        """Monotonic seconds, for the consumption rate (a test drives it)."""
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
        self.fell_behind = Counter(
            "tidelog_subscriber_fell_behind",
            "Times a live subscriber let too many events wait and read the store itself",
            registry=r,
        )
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
        self.desired = Gauge(
            "tidelog_group_desired_members",
            "Members needed to drain the group's lag within the target drain time at the "
            "measured per-member rate, at most the partition count (scale workers on this)",
            ["group", "category"],
            registry=r,
        )
        self.consumed_rate = Gauge(
            "tidelog_group_consumed_events_per_second",
            "Events per second the group's checkpoints passed over the rate window",
            ["group", "category"],
            registry=r,
        )
        self.members = Gauge(
            "tidelog_group_members", "Live members of the group", ["group", "category"], registry=r
        )
        self._samples: dict[tuple[str, str], deque[_Sample]] = {}
        """Per group: the refreshes within the rate window, and the newest one before it."""
        self.first = Gauge(
            "tidelog_log_first_position",
            "The low-water mark: the oldest position still stored (retention deletes below it)",
            registry=r,
        )
        self.scavenged = Gauge(
            "tidelog_retention_deleted_events",
            "Events this server's scavenger deleted since it started",
            registry=r,
        )
        self.lost = Gauge(
            "tidelog_retention_lost_events",
            "Events the scavenger deleted before a consumer group had read them"
            " (hard_max_age, hard_max_bytes or even_if_unconsumed; each is named in $system)",
            ["group", "category"],
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
        self.first.set(await store.first_position())
        stats = store.retention_stats
        self.scavenged.set(stats.get("deleted", 0))
        for name, count in stats.items():
            if name.startswith("lost:"):
                group, _, category = name[len("lost:") :].partition("/")
                self.lost.labels(group, category).set(count)
        self.lag.clear()
        for gauge in (self.desired, self.consumed_rate, self.members):
            gauge.clear()
        samples: dict[tuple[str, str], deque[_Sample]] = {}
        for group, category in await store.list_groups():
            points = await store.checkpoints(group, category)
            lags: dict[int, int] = {}
            for partition in range(store.partition_count):
                lag = await store.count_events(
                    points.get(partition, 0) + 1, [category], [partition]
                )
                lags[partition] = lag
                self.lag.labels(group, category, str(partition)).set(lag)
            key = (group, category)
            samples[key] = self._samples.get(key) or deque()
            await self._scaling_signal(store, key, points, lags, samples[key])
        self._samples = samples  # groups gone since are forgotten
        self.parked.clear()
        for group, count in (await self.parked_by_group(store)).items():
            self.parked.labels(group).set(count)
        with contextlib.suppress(NotSupported):  # an engine without scheduled delivery
            self.scheduled_pending.set(await store.count_scheduled())

    def observe_scheduler(self, scheduler: Scheduler) -> None:
        """Put the lateness of every event `scheduler` delivers in the histogram."""
        scheduler.observers.append(lambda late: self.scheduled_lateness.observe(max(0.0, late)))

    async def _scaling_signal(
        self,
        store: Engine,
        key: tuple[str, str],
        points: dict[int, int],
        lags: dict[int, int],
        samples: deque[_Sample],
    ) -> None:
        """`tidelog_group_desired_members` of one group, from its lag and measured rate.

        The rate is what the checkpoints passed since the oldest sample kept
        (about `rate_window_seconds` ago): per partition, the events after the
        old checkpoint less those after the new one, counted now. Divided by
        the members (their mean over the window), it is a member's rate.
        """
        group, category = key
        desc = await store.describe_group(group, category)
        members = 0 if desc is None else len(desc.members)
        now = self.clock()
        samples.append(_Sample(now, dict(points), members))
        window = self.scaling.rate_window_seconds
        while len(samples) > 2 and now - samples[1].at >= window:
            samples.popleft()  # keep the newest sample at least a window old
        oldest = samples[0]
        elapsed = now - oldest.at
        rate: float | None = None
        if elapsed > 0:
            consumed = 0
            for partition, position in points.items():
                before = oldest.checkpoints.get(partition, 0)
                if position > before:
                    after_before = await store.count_events(before + 1, [category], [partition])
                    consumed += after_before - lags.get(partition, 0)
            mean_members = sum(s.members for s in samples) / len(samples)
            self.consumed_rate.labels(group, category).set(consumed / elapsed)
            if consumed > 0 and mean_members > 0:
                rate = consumed / elapsed / mean_members
        self.members.labels(group, category).set(members)
        self.desired.labels(group, category).set(
            desired_members(
                sum(lags.values()),
                rate,
                members,
                store.partition_count,
                self.scaling.drain_seconds,
            )
        )

    async def parked_by_group(self, store: Engine) -> dict[str, int]:
        """Open parked events per group, from every `$dlq-<group>` stream.

        Each DLQ's fold is kept between calls and only new entries are read, so a
        scrape costs one stream listing plus what was parked since the last one.
        """
        states = await self.dlq_states(store)
        return {
            group: sum(p.status.open for p in state.entries.values())
            for group, state in states.items()
        }

    async def dlq_states(self, store: Engine) -> dict[str, DlqState]:
        """The fold of every group's `$dlq-<group>`, brought up to date (kept between calls:
        only what was parked or settled since is read). The dashboard counts parked and
        held events apart from it."""
        async with self._dlq_lock:
            states: dict[str, DlqState] = {}
            async for info in store.list_streams(_DLQ_CATEGORY):
                group = info.name[len(_DLQ_CATEGORY) + 1 :]
                if not group or info.deleted:
                    continue
                state = self._dlq.get(group) or DlqState(group)
                self._dlq[group] = states[group] = await load_state(store, group, state)
            return states

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
            took = await one_round(lambda: self.refresh_lag(store()), log, "metrics refresh failed")
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
