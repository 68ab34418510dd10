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

import functools
from importlib import resources

import msgspec
from litestar import Response, get
from litestar.datastructures import State
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

import tidelog
from tidelog.engines.contract import Engine
from tidelog.errors import NotSupported
from tidelog.security.acl import Access, Permission
from tidelog.server._deps import AccessDep, runtime

__all__ = ["CSP", "ROUTES", "Stats"]

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


class Stats(msgspec.Struct, kw_only=True):
    engine: str
    version: str
    partition_count: int
    head: int
    categories: list[CategoryStats]
    groups: list[GroupStats]
    scheduled: int | None = None
    """Pending scheduled events; null if the engine has none or the caller may not read
    the whole log (a count across streams)."""


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


@get("/v1/stats", summary="Counts per category, the head, and groups with lag (the dashboard's)")
async def stats(state: State, access: AccessDep) -> Stats:
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
    parked = await rt.metrics.parked_by_group(store)
    groups: list[GroupStats] = []
    for group, category in sorted(await store.list_groups()):
        if not access.can_category(category, Permission.READ):
            continue
        groups.append(await _group_stats(rt.store, group, category, head, parked.get(group, 0)))
    return Stats(
        engine=store.name,
        version=tidelog.__version__,
        partition_count=store.partition_count,
        head=head,
        categories=sorted(per_category.values(), key=lambda c: c.category),
        groups=groups,
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
    store: Engine, group: str, category: str, head: int, parked: int
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
        parked=parked,
    )


ROUTES = [dashboard_page, dashboard_asset, stats]
