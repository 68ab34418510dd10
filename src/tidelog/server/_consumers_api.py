"""Consumer-group operations for remote consumers: fetch, ack and nack.

Join, heartbeat, leave and commit are in `_groups_api`. A remote member fetches
the events of the partitions it owns after their checkpoints (or after the
position it has already taken), acks by committing a partition's position,
and nacks an event it gives up on: the event is parked in `$dlq-<group>` and
the checkpoint moves past it in one transaction, exactly as a local worker
parks after `max_attempts`. Every operation is fenced by the generation, and
needs read on the group as well as on its category (`need_group`, checked by
the `target` dependency).
"""

from __future__ import annotations

import heapq
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import FromQuery, QueryParameter

import tidelog
from tidelog import wire
from tidelog.consumers._dlq import dlq_stream, parked_entry
from tidelog.errors import InvalidInput, StaleGeneration
from tidelog.model import AppendRequest
from tidelog.security.acl import Permission
from tidelog.server._deps import AccessDep, GroupDep, decode_body, need_stream, runtime

__all__ = ["ROUTES"]

MAX_FETCH = 1000


class RemoteHandlerError(Exception):
    """The error a remote consumer reported when it gave up on an event."""


class WireNack(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    member: str
    generation: int
    position: int
    error: str = ""
    handler: str = "remote"
    attempts: int = 1


class WireFetched(wire.WireEvent, kw_only=True):
    """A fetched event with its partition: the partition a commit of its position names."""

    partition: int


class WireFetchPage(msgspec.Struct, kw_only=True):
    events: list[WireFetched]


def _fetched(event: tidelog.RecordedEvent, partition: int) -> WireFetched:
    return WireFetched(
        **msgspec.structs.asdict(wire.WireEvent.from_recorded(event)), partition=partition
    )


async def _owned(
    store: tidelog.Store, group: str, category: str, member: str, generation: int
) -> tuple[int, ...]:
    """The member's partitions, or `StaleGeneration` if it is not current."""
    membership = await store.describe_group(group, category)
    if membership is None or membership.generation != generation:
        current = None if membership is None else membership.generation
        raise StaleGeneration(group, category, member, generation, current)
    for m in membership.members:
        if m.member == member:
            return m.partitions
    raise StaleGeneration(group, category, member, generation, membership.generation)


@get("/v1/groups/{group:str}/{category:str}/fetch", summary="Fetch a member's next events")
async def fetch(
    target: GroupDep,
    state: State,
    member: FromQuery[str],
    generation: Annotated[int, QueryParameter(ge=0, le=2**62)],
    after: Annotated[int, QueryParameter(ge=0, le=2**62)] = 0,
    limit: Annotated[int, QueryParameter(name="max", ge=1, le=MAX_FETCH)] = 100,
) -> WireFetchPage:
    """Events of the member's partitions after max(checkpoint, `after`), in position order.

    Each event carries its `partition`: acking it is a commit of that partition.
    """
    group, category = target.group, target.category
    store = runtime(state).store
    partitions = await _owned(store, group, category, member, generation)
    points = await store.checkpoints(group, category)

    async def one(p: int) -> list[tidelog.RecordedEvent]:
        start = max(points.get(p, 0), after) + 1
        return [e async for e in store.read_all(start, [category], None, limit, [p])]

    pages = [[(e.position, p, e) for e in await one(p)] for p in partitions]
    merged = heapq.merge(*pages, key=lambda t: t[0])
    taken = [t for _, t in zip(range(limit), merged, strict=False)]
    metrics = runtime(state).metrics
    for p in partitions:
        metrics.fetched(group, category, p, [pos for pos, q, _ in taken if q == p])
    metrics.read(len(taken))
    return WireFetchPage(events=[_fetched(e, p) for _, p, e in taken])


@post("/v1/groups/{group:str}/{category:str}/nack", status_code=200, summary="Park an event")
async def nack(
    target: GroupDep, request: Request[Any, Any, Any], state: State, access: AccessDep
) -> wire.WireResults:
    """Park the event at `position` in `$dlq-<group>` and commit its partition past it."""
    group, category = target.group, target.category
    need_stream(access, dlq_stream(group), Permission.WRITE)
    data = await decode_body(request, WireNack)
    store = runtime(state).store
    events = [e async for e in store.read_all(data.position, [category], None, 1)]
    if not events or events[0].position != data.position:
        raise InvalidInput(f"no event of {category!r} at position {data.position}")
    event = events[0]
    partition = tidelog.partition_of(event.stream, store.partition_count)
    entry = parked_entry(
        group,
        event,
        handler=data.handler[:200],
        error=RemoteHandlerError(data.error[:4000]),
        attempts=max(1, data.attempts),
    )
    results = await store.commit(
        group,
        category,
        partition,
        data.position,
        member=data.member,
        generation=data.generation,
        appends={dlq_stream(group): AppendRequest([entry])},
    )
    return wire.WireResults(results=results)


ROUTES = [fetch, nack]
