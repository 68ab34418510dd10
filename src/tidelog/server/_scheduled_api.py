"""Scheduled events: list the pending ones, cancel one (`docs/scheduling.md`).

Scheduling itself is an append with `deliver_at` or `deliver_after`
(`POST /v1/streams/{stream}/events`, and CloudEvents' `deliverat` extension).

Access: listing one stream's pending events needs read on that stream, listing
them all read on the whole log (`$all`); cancelling needs write on the whole
log, because an id alone does not say which stream the event is for and a
cancel must not reach another tenant's schedule.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from litestar import delete, get
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, QueryParameter

from tidelog import wire
from tidelog.errors import InvalidInput
from tidelog.model import validate_stream_name
from tidelog.security.acl import Permission
from tidelog.server._deps import AccessDep, need_categories, need_stream, page_limit, runtime

__all__ = ["ROUTES"]


@get("/v1/scheduled", summary="List pending scheduled events, earliest due first")
async def list_scheduled(
    state: State,
    access: AccessDep,
    stream: FromQuery[str | None] = None,
    limit: Annotated[int | None, QueryParameter(ge=0)] = None,
) -> wire.WireScheduled:
    rt = runtime(state)
    if stream is not None:
        validate_stream_name(stream)
        need_stream(access, stream, Permission.READ)
    else:
        need_categories(access, None, Permission.READ)
    events = await rt.store.scheduled(stream, min(page_limit(rt, limit), 10_000))
    pending = await rt.store.count_scheduled() if access.can_all(Permission.READ) else None
    return wire.WireScheduled(
        events=[wire.WireScheduledEvent.of(e) for e in events], pending=pending
    )


@delete("/v1/scheduled/{event_id:str}", status_code=200, summary="Cancel a scheduled event")
async def cancel_scheduled(
    event_id: FromPath[str], state: State, access: AccessDep
) -> wire.WireCancelled:
    need_categories(access, None, Permission.WRITE)
    try:
        target = UUID(event_id)
    except ValueError:
        raise InvalidInput(f"{event_id!r} is not a UUID") from None
    return wire.WireCancelled(cancelled=await runtime(state).store.cancel_scheduled(target))


ROUTES = [list_scheduled, cancel_scheduled]
