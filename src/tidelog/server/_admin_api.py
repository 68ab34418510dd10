"""Keys and grants at runtime: `/v1/admin/keys` and `/v1/admin/grants`, for admins only.

The routes are a thin edge over `tidelog.security.keystore`, which the CLI
also uses directly on a store URL: the keys and grants land in the store's
`$keys` and `$grants` streams, and every server process of the store picks
them up within a second (`StoreCredentials.run`). A created key is in the
response of its creation and nowhere else; it is never logged.

Only an admin principal (`admin` on `*`) may call these: a key or grant is
worth whatever it can be given.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from tidelog.security import keystore
from tidelog.server._deps import AccessDep, need_admin, runtime

__all__ = ["ROUTES", "GrantChange", "KeyRequest"]


class KeyRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    principal: str
    """Who the key authenticates as (letters, digits and `_ . @ : / + -`)."""
    admin: bool = False
    """Also add the grant `PRINCIPAL=admin:*`."""


class GrantChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    grant: str
    """In the config file's syntax: `PRINCIPAL=PERMISSION:RESOURCE`."""


@get("/v1/admin/keys", summary="The keys created at runtime (never the keys themselves)")
async def list_keys(
    state: State,
    access: AccessDep,
    revoked: Annotated[bool, QueryParameter(name="all")] = False,
) -> dict[str, Any]:
    need_admin(access)
    creds = await keystore.load(runtime(state).store)
    return {"keys": [k.public() for k in creds.key_list(include_revoked=revoked)]}


@post("/v1/admin/keys", status_code=201, summary="Create a key; the response is its only copy")
async def create_key(state: State, access: AccessDep, data: JSONBody[KeyRequest]) -> dict[str, Any]:
    need_admin(access)
    key, stored = await keystore.create_key(
        runtime(state).store, data.principal, by=access.principal, admin=data.admin
    )
    return keystore.created(key, stored, admin=data.admin)


@delete("/v1/admin/keys/{key_id:str}", status_code=200, summary="Revoke a key")
async def revoke_key(state: State, access: AccessDep, key_id: FromPath[str]) -> dict[str, Any]:
    need_admin(access)
    return (await keystore.revoke_key(runtime(state).store, key_id, by=access.principal)).public()


@get("/v1/admin/grants", summary="Grants in force: the config file's and the store's")
async def list_grants(state: State, access: AccessDep) -> dict[str, Any]:
    need_admin(access)
    rt = runtime(state)
    config = [
        {
            "grant": keystore.format_grant(g),
            "principal": g.principal,
            "permission": g.permission.value,
            "resource": g.resource,
            "source": "config",
        }
        for g in rt.config.grants
    ]
    creds = await keystore.load(rt.store)
    return {"grants": config + [g.public() for g in creds.grants.values()]}


@post("/v1/admin/grants", status_code=201, summary="Add a grant (to the store)")
async def add_grant(state: State, access: AccessDep, data: JSONBody[GrantChange]) -> dict[str, Any]:
    need_admin(access)
    grant = await keystore.add_grant(runtime(state).store, data.grant, by=access.principal)
    return {"grant": keystore.format_grant(grant), "source": "store"}


@delete("/v1/admin/grants", status_code=200, summary="Remove a grant added to the store")
async def remove_grant(state: State, access: AccessDep, grant: FromQuery[str]) -> dict[str, Any]:
    need_admin(access)
    removed = await keystore.remove_grant(runtime(state).store, grant, by=access.principal)
    return {"grant": keystore.format_grant(removed), "source": "store"}


ROUTES = [list_keys, create_key, revoke_key, list_grants, add_grant, remove_grant]
