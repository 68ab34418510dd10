"""Consumer groups: join, heartbeat, leave, commit (with appends), describe, list.

Fetch and nack, for remote consumers, are in `_consumers_api`. Membership and
commits change a group, so they need a grant on the group itself besides read
on its category (`need_group`, checked by the `target` dependency); describing
and listing only look, and need read on the category.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody

import tidelog
from tidelog import wire
from tidelog.errors import InvalidInput
from tidelog.security.acl import Permission
from tidelog.server._deps import (
    AccessDep,
    GroupDep,
    append_requests,
    decode_body,
    need_categories,
    runtime,
)

__all__ = ["ROUTES"]


@post("/v1/groups/{group:str}/{category:str}/members/{member:str}", status_code=200)
async def join_group(
    target: GroupDep,
    member: FromPath[str],
    state: State,
    access: AccessDep,
    data: JSONBody[wire.WireJoin | None] = None,
) -> tidelog.Membership:
    group, category = target.group, target.category
    rt = runtime(state)
    await rt.group_quota.claim(rt.store, access.principal, group, category)
    body = data or _DEFAULT_JOIN
    return await rt.store.join_group(
        group, category, member, _lease(body.lease), cooperative=body.cooperative
    )


@post("/v1/groups/{group:str}/{category:str}/members/{member:str}/heartbeat", status_code=200)
async def heartbeat(
    target: GroupDep,
    member: FromPath[str],
    state: State,
    data: JSONBody[wire.WireHeartbeat | None] = None,
) -> tidelog.Membership:
    body = data or _DEFAULT_HEARTBEAT
    return await runtime(state).store.heartbeat(
        target.group, target.category, member, _lease(body.lease), release=body.release
    )


@delete("/v1/groups/{group:str}/{category:str}/members/{member:str}", status_code=204)
async def leave_group(target: GroupDep, member: FromPath[str], state: State) -> None:
    await runtime(state).store.leave_group(target.group, target.category, member)


@post("/v1/groups/{group:str}/{category:str}/commit", status_code=200)
async def commit(
    target: GroupDep, request: Request[Any, Any, Any], state: State, access: AccessDep
) -> wire.WireResults:
    rt = runtime(state)
    data = await decode_body(request, wire.WireCommit)
    appends = append_requests(rt, access, data.appends, names=False) if data.appends else None
    results = await rt.store.commit(
        target.group,
        target.category,
        data.partition,
        data.position,
        member=data.member,
        generation=data.generation,
        appends=appends,
    )
    return wire.WireResults(results=results)


@get("/v1/groups/{group:str}/{category:str}")
async def describe_group(
    group: FromPath[str], category: FromPath[str], state: State, access: AccessDep
) -> wire.WireGroup:
    need_categories(access, [category], Permission.READ)
    rt = runtime(state)
    return wire.WireGroup(
        membership=await rt.store.describe_group(group, category),
        checkpoints=await rt.store.checkpoints(group, category),
    )


@get("/v1/groups")
async def list_groups(state: State, access: AccessDep) -> wire.WireGroups:
    groups = await runtime(state).store.list_groups()
    return wire.WireGroups(groups=[g for g in groups if access.can_category(g[1], Permission.READ)])


_DEFAULT_JOIN = wire.WireJoin()
"""A join without a body: every field of `WireJoin` has a default."""
_DEFAULT_HEARTBEAT = wire.WireHeartbeat()
"""A heartbeat without a body: every field of `WireHeartbeat` has a default."""


def _lease(lease: float) -> float:
    if not 0.05 <= lease <= 3600:
        raise InvalidInput("lease must be between 0.05 and 3600 seconds")
    return lease


ROUTES = [join_group, heartbeat, leave_group, commit, describe_group, list_groups]
