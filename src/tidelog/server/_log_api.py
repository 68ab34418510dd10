"""The global log: read a page, count (consumer lag), the head, and the engine's info."""

from __future__ import annotations

from typing import Annotated

from litestar import get
from litestar.datastructures import State
from litestar.params import FromQuery, QueryParameter

import tidelog
from tidelog import wire
from tidelog.security.acl import Permission
from tidelog.server._deps import AccessDep, LogFilterDep, need_categories, page_limit, runtime

__all__ = ["ROUTES"]


@get("/v1/log", summary="Read the global log (one page)")
async def read_all(
    state: State,
    access: AccessDep,
    log_filter: LogFilterDep,
    limit: Annotated[int | None, QueryParameter(ge=0, le=2**62)] = None,
) -> wire.WirePage:
    rt = runtime(state)
    f = log_filter
    events = [
        wire.WireEvent.from_recorded(e)
        async for e in rt.store.read_all(
            f.from_position, f.categories, f.types, page_limit(rt, limit), f.partitions
        )
        if access.can_stream(e.stream, Permission.READ)
    ]
    rt.metrics.read(len(events))
    return wire.WirePage(events=events)


@get("/v1/log/count", summary="Count the events of categories (consumer lag)")
async def count_events(
    state: State,
    access: AccessDep,
    category: FromQuery[list[str]],
    from_position: Annotated[int, QueryParameter(ge=0, le=2**62)] = 0,
    partition: FromQuery[list[int] | None] = None,
) -> wire.WireCount:
    """How many events of these categories (and partitions) are at `from_position` or later.

    Categories are required: a count of the whole log would include system
    streams that `$all` does not grant, so it is refused rather than filtered.
    """
    rt = runtime(state)
    need_categories(access, category, Permission.READ)
    return wire.WireCount(count=await rt.store.count_events(from_position, category, partition))


@get("/v1/log/head", summary="The newest position")
async def head(state: State, access: AccessDep) -> wire.WireHead:
    return wire.WireHead(position=await runtime(state).store.last_position())


@get("/v1/info", summary="Engine and partitioning")
async def info(state: State, access: AccessDep) -> wire.WireInfo:
    rt = runtime(state)
    return wire.WireInfo(
        engine=rt.store.name, partition_count=rt.store.partition_count, version=tidelog.__version__
    )


ROUTES = [read_all, count_events, head, info]
