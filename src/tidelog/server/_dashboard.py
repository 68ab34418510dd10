"""The web dashboard: one static page, its script and stylesheet, and `GET /v1/stats`.

The page is plain HTML with a vanilla JavaScript module (no build step, no CDN:
it must work on a closed network). It holds no data itself, so it is served
without authentication; it asks for an API key (kept in `sessionStorage`) and
sends it as `Authorization: Bearer` on every fetch, so the ACLs of the API
apply to everything it shows. Live tail reads `/v1/subscribe` through
`fetch()` streaming, because `EventSource` cannot send that header.

Safety: the script only ever writes event content with `textContent`, and every
dashboard response carries a strict Content-Security-Policy (same-origin
scripts, styles and connections only; no inline code, no framing).

`/v1/stats` gathers in one request what the page refreshes every couple of
seconds: per-category counts, the head, and each group's members, partition
owners, checkpoints, lag (events of the partition after the checkpoint, as
`tidelog_consumer_lag_events`)
and open parked events. Its cost is one listing of the streams plus one
checkpoint read per group, which is fine for the thousands of streams a
dashboard is useful for; on stores with millions of streams, prefer the
Prometheus metrics (which never list streams) to leaving the page open.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Final

import msgspec
from litestar import Response, get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery

import tidelog
from tidelog.consumers._dlq import ParkedStatus
from tidelog.engines.contract import Engine
from tidelog.errors import NotSupported
from tidelog.security.acl import Access, Permission
from tidelog.server._deps import AccessDep, runtime
from tidelog.server._rounds import one_round

__all__ = ["CSP", "HISTORY_KEY", "ROUTES", "History", "Stats"]

log = logging.getLogger(__name__)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Same-origin only, no inline script or style: event content can never run."""

_SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

_ASSETS: dict[str, str] = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
"""The only files served under /ui/: a fixed list, so no path from a request reaches the disk."""


@functools.cache
def _static(name: str) -> bytes:
    """A file of the page, read once per process (they ship inside the package)."""
    return (resources.files("tidelog.server") / "static" / name).read_bytes()


class CategoryStats(msgspec.Struct, kw_only=True):
    category: str
    streams: int
    events: int
    """Events in the category's streams (a deleted stream's events still count)."""
    deleted: int


class PartitionStats(msgspec.Struct, kw_only=True):
    partition: int
    owner: str | None
    checkpoint: int
    lag: int


class MemberStats(msgspec.Struct, kw_only=True):
    member: str
    partitions: tuple[int, ...]
    lease_expires_at: float


class GroupStats(msgspec.Struct, kw_only=True):
    group: str
    category: str
    generation: int | None
    members: list[MemberStats]
    partitions: list[PartitionStats]
    lag: int
    parked: int
    """Events that failed (or were parked with their stream) and wait for an operator."""
    held: int = 0
    """Events waiting behind a parked event of their stream: released when it is settled."""
    retrying: int = 0
    """Parked events an operator asked to retry, not yet run again."""


class Sample(msgspec.Struct, kw_only=True, array_like=True):
    """One point of the dashboard's history: `[time, head, [[group, category, lag], ...]]`."""

    t: float
    """Seconds since the epoch."""
    head: int
    lag: list[tuple[str, str, int]]


class Stats(msgspec.Struct, kw_only=True):
    engine: str
    version: str
    partition_count: int
    head: int
    first_position: int = 0
    """The low-water mark: the oldest position still stored (see docs/retention.md)."""
    categories: list[CategoryStats]
    groups: list[GroupStats]
    principal: str = ""
    admin: bool = False
    """Whether the caller may manage parked events (the page shows their panel)."""
    history: list[Sample] | None = None
    """With `?history=true`: the server's samples of the last hour, oldest first."""
    time: float = 0.0
    """The server's clock (seconds since the epoch): the page places the history's samples
    by it, so a browser whose clock is off still draws them at the right distance."""

    scheduled: int | None = None
    """Pending scheduled events; null if the engine has none or the caller may not read
    the whole log (a count across streams)."""


HISTORY_SECONDS: Final = 3600.0
SAMPLE_INTERVAL: Final = 5.0
_SAMPLE_DUTY: Final = 4.0


class History:
    """The last hour of head and lag samples, so the page's charts are full when it opens.

    A ring buffer (`HISTORY_SECONDS / interval` samples, 720 by default): its
    memory is bounded whatever the uptime. Sampling costs what one `/v1/stats`
    does for its groups, and never more than a fifth of the time (a sample that
    took d seconds is followed by at least 4 d of rest), as the metrics refresh.
    """

    def __init__(self, interval: float = SAMPLE_INTERVAL) -> None:
        self.interval = interval
        self.samples: collections.deque[Sample] = collections.deque(
            maxlen=max(1, int(HISTORY_SECONDS / interval))
        )

    async def sample(self, store: Engine) -> None:
        head = await store.last_position()
        lag = []
        for group, category in sorted(await store.list_groups()):
            stats = await _group_stats(store, group, category, head, {})
            lag.append((group, category, stats.lag))
        self.samples.append(Sample(t=time.time(), head=head, lag=lag))

    def visible(self, access: Access) -> list[Sample]:
        """The samples with only the groups whose category `access` may read."""
        return [
            Sample(
                t=s.t,
                head=s.head,
                lag=[x for x in s.lag if access.can_category(x[1], Permission.READ)],
            )
            for s in self.samples
        ]

    async def run(self, store: Callable[[], Engine]) -> None:
        while True:
            took = await one_round(
                lambda: self.sample(store()), log, "dashboard history sample failed"
            )
            await asyncio.sleep(max(self.interval, _SAMPLE_DUTY * took))


HISTORY_KEY: Final = "dashboard_history"
"""Where `create_app` keeps the app's `History` in its state."""


@get("/", include_in_schema=False, media_type="text/html; charset=utf-8")
async def dashboard_page() -> Response[bytes]:
    return Response(
        _static("index.html"), media_type="text/html; charset=utf-8", headers=_SECURITY_HEADERS
    )


@get("/ui/{name:str}", include_in_schema=False)
async def dashboard_asset(name: FromPath[str]) -> Response[bytes]:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFoundException()
    return Response(_static(name), media_type=media_type, headers=_SECURITY_HEADERS)


@get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response[bytes]:
    """The page links `/ui/favicon.svg`; browsers and tools that ask here get the same icon
    (every current browser draws an SVG favicon), not a 404 in their console."""
    return Response(_static("favicon.svg"), media_type="image/svg+xml", headers=_SECURITY_HEADERS)


@get("/v1/stats", summary="Counts per category, the head, and groups with lag (the dashboard's)")
async def stats(state: State, access: AccessDep, history: FromQuery[bool] = False) -> Stats:
    rt = runtime(state)
    store = rt.store
    head = await store.last_position()
    per_category: dict[str, CategoryStats] = {}
    async for s in store.list_streams():
        if not access.can_stream(s.name, Permission.READ):
            continue
        c = per_category.setdefault(
            s.category, CategoryStats(category=s.category, streams=0, events=0, deleted=0)
        )
        c.streams += 1
        c.events += 0 if s.version is None else s.version + 1
        c.deleted += s.deleted
    dlq = await rt.metrics.dlq_states(store)
    groups: list[GroupStats] = []
    for group, category in sorted(await store.list_groups()):
        if not access.can_category(category, Permission.READ):
            continue
        counts = Counter(p.status for p in dlq[group].entries.values()) if group in dlq else {}
        groups.append(await _group_stats(rt.store, group, category, head, counts))
    samples: History | None = state.get(HISTORY_KEY)
    return Stats(
        engine=store.name,
        version=tidelog.__version__,
        partition_count=store.partition_count,
        head=head,
        first_position=await store.first_position(),
        categories=sorted(per_category.values(), key=lambda c: c.category),
        groups=groups,
        principal=access.principal,
        admin=access.is_admin,
        history=samples.visible(access) if history and samples is not None else None,
        time=time.time(),
        scheduled=await _scheduled(store, access),
    )


async def _scheduled(store: Engine, access: Access) -> int | None:
    if not access.can_all(Permission.READ):
        return None
    try:
        return await store.count_scheduled()
    except NotSupported:
        return None


async def _group_stats(
    store: Engine, group: str, category: str, head: int, dlq: Mapping[ParkedStatus, int]
) -> GroupStats:
    membership = await store.describe_group(group, category)
    points: dict[int, int] = await store.checkpoints(group, category)
    owners: dict[int, str] = {}
    members: list[MemberStats] = []
    if membership is not None:
        for m in membership.members:
            members.append(
                MemberStats(
                    member=m.member, partitions=m.partitions, lease_expires_at=m.lease_expires_at
                )
            )
            owners.update(dict.fromkeys(m.partitions, m.member))
    partitions = [
        PartitionStats(
            partition=p,
            owner=owners.get(p),
            checkpoint=points.get(p, 0),
            lag=await store.count_events(points.get(p, 0) + 1, [category], [p]),
        )
        for p in range(store.partition_count)
    ]
    return GroupStats(
        group=group,
        category=category,
        generation=None if membership is None else membership.generation,
        members=members,
        partitions=partitions,
        lag=sum(p.lag for p in partitions),
        parked=dlq.get(ParkedStatus.PARKED, 0),
        held=dlq.get(ParkedStatus.HELD, 0),
        retrying=dlq.get(ParkedStatus.RETRYING, 0),
    )


ROUTES = [dashboard_page, dashboard_asset, favicon, stats]
