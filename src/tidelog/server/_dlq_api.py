"""Parked events over HTTP, for admins: list, show, retry and drop (the dashboard's).

The same functions as `tidelog dlq list|show|retry|drop` (`consumers._dlq`):
the state of a parked event is the fold of `$dlq-<group>`, and a retry or a
drop is an entry appended to it, which the partition's owner acts on. Only an
admin may call these: a retry runs a handler again and a drop gives up on an
event for good.

The event itself (in `show`) has the shape of every other read of the API
(`wire.WireEvent`): its data as the JSON value it is, else `data_base64`.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from litestar import get, post
from litestar.datastructures import State
from litestar.params import FromPath, QueryParameter

from tidelog import wire
from tidelog.consumers._dlq import (
    ParkedEvent,
    drop_parked,
    find_parked,
    list_parked,
    retry_parked,
)
from tidelog.errors import InvalidInput
from tidelog.security.acl import Access
from tidelog.server._deps import AccessDep, need_admin, page_limit, runtime

__all__ = ["ROUTES"]


def _event_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise InvalidInput(f"invalid event id {text[:80]!r}: a UUID expected") from None


def _with_event(parked: ParkedEvent) -> dict[str, Any]:
    return {**parked.summary(), "event": wire.WireEvent.from_recorded(parked.event)}


async def _settle(
    fn: Callable[..., Awaitable[ParkedEvent]],
    action: str,
    group: str,
    event_id: str,
    state: State,
    access: Access,
) -> dict[str, Any]:
    """Retry and drop differ only in the function: both append one entry to the DLQ."""
    need_admin(access)
    parked = await fn(runtime(state).store, group, _event_id(event_id), by=access.principal)
    return {"event_id": str(parked.event.id), "action": action, "stream": parked.event.stream}


@get("/v1/admin/dlq/{group:str}", summary="A group's parked and held events, oldest first")
async def list_dlq(
    group: FromPath[str],
    state: State,
    access: AccessDep,
    settled: Annotated[bool, QueryParameter(name="all")] = False,
    limit: Annotated[int | None, QueryParameter(ge=0, le=2**62)] = None,
) -> dict[str, Any]:
    """`total` counts every listed event; `events` holds the first `limit` of them."""
    need_admin(access)
    rt = runtime(state)
    parked = await list_parked(rt.store, group, include_settled=settled)
    counts: dict[str, int] = {}
    for p in parked:
        counts[p.status.value] = counts.get(p.status.value, 0) + 1
    shown = parked[: page_limit(rt, limit)]
    return {"total": len(parked), "counts": counts, "events": [p.summary() for p in shown]}


@get("/v1/admin/dlq/{group:str}/{event_id:str}", summary="One parked event, with the event")
async def show_dlq(
    group: FromPath[str], event_id: FromPath[str], state: State, access: AccessDep
) -> dict[str, Any]:
    need_admin(access)
    return _with_event(await find_parked(runtime(state).store, group, _event_id(event_id)))


@post("/v1/admin/dlq/{group:str}/{event_id:str}/retry", status_code=200, summary="Retry it")
async def retry_dlq(
    group: FromPath[str], event_id: FromPath[str], state: State, access: AccessDep
) -> dict[str, Any]:
    return await _settle(retry_parked, "retry", group, event_id, state, access)


@post("/v1/admin/dlq/{group:str}/{event_id:str}/drop", status_code=200, summary="Give up on it")
async def drop_dlq(
    group: FromPath[str], event_id: FromPath[str], state: State, access: AccessDep
) -> dict[str, Any]:
    return await _settle(drop_parked, "drop", group, event_id, state, access)


ROUTES = [list_dlq, show_dlq, retry_dlq, drop_dlq]
