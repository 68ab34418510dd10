"""Retention (admin): show, set and clear the rules, scavenge now, the low-water mark.

The same names as the store's methods and the `tidelog retention` commands:
a rule is `{"kind": "stream"|"category"|"store", "name": ..., "policy": {...}}`
and a `null` policy clears its scope. Setting or clearing a rule needs admin on
its scope (the stream, the category, or `$all` for the store); showing every
rule and scavenging need admin on `$all`; the low-water mark needs read on `$all`.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post, put
from litestar.datastructures import State
from litestar.params import FromQuery

from tidelog import wire
from tidelog.engines._kit.retention import RetentionRule, RetentionRules, ScavengeReport
from tidelog.errors import AccessDenied
from tidelog.security.acl import Access, Permission
from tidelog.server._deps import AccessDep, decode_body, need_stream, runtime

__all__ = ["ROUTES"]


def _need_all(access: Access, perm: Permission) -> None:
    if not access.can_all(perm):
        raise AccessDenied(f"{access.principal!r} lacks {perm.value} on the global log ($all)")


@get("/v1/retention", summary="Show the retention rules (one stream's with ?stream=)")
async def show_retention(
    state: State, access: AccessDep, stream: FromQuery[str | None] = None
) -> RetentionRules:
    if stream is None:
        _need_all(access, Permission.ADMIN)
    else:
        need_stream(access, stream, Permission.ADMIN)
    return RetentionRules(rules=await runtime(state).store.retention(stream))


@put("/v1/retention", summary="Set (or with a null policy, clear) a retention rule")
async def set_retention(
    request: Request[Any, Any, Any], state: State, access: AccessDep
) -> RetentionRule:
    rule = await decode_body(request, RetentionRule)
    if rule.kind == "stream":
        need_stream(access, rule.name, Permission.ADMIN)
    elif rule.kind == "category":
        if not access.can_category(rule.name, Permission.ADMIN):
            raise AccessDenied(f"{access.principal!r} lacks admin on category {rule.name!r}")
    else:
        _need_all(access, Permission.ADMIN)
    store = runtime(state).store
    if rule.kind == "stream":
        return await store.set_retention(rule.policy, stream=rule.name)
    if rule.kind == "category":
        return await store.set_retention(rule.policy, category=rule.name)
    return await store.set_retention(rule.policy)


@post("/v1/retention/scavenge", status_code=200, summary="Delete now what the rules hide")
async def scavenge(state: State, access: AccessDep) -> ScavengeReport:
    _need_all(access, Permission.ADMIN)
    return await runtime(state).store.scavenge()


@get("/v1/log/first", summary="The low-water mark: the oldest position still stored")
async def first_position(state: State, access: AccessDep) -> wire.WireHead:
    _need_all(access, Permission.READ)
    return wire.WireHead(position=await runtime(state).store.first_position())


ROUTES = [show_retention, set_retention, scavenge, first_position]
