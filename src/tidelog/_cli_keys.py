"""Commands: `tidelog keys create|list|revoke` and `tidelog grants add|remove|list`.

Keys and grants live in the store (`tidelog.security.keystore`), so they can
change while servers run: every server process of the store picks a change
up within a second. Against a store URL (`sqlite:///…`, `postgresql://…`, …)
the commands write the store directly, as its owner; against a server URL
(`http(s)://…`, with an admin's `--token`) they call the server's
`/v1/admin/` routes, which only an admin may use. Either way a created key is
printed once, here, and stored only as a digest.

Loaded by `tidelog.cli` (its command modules), which turns `TidelogError`s
into one-line errors.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tidelog._cli_kit import command_group, emit_rows, open_store, run, say

__all__ = ["register"]

_Grant = Annotated[
    str, typer.Argument(help="PRINCIPAL=PERMISSION:RESOURCE, as in the config file.")
]

_BY = "cli"
"""Who a change made directly on the store is recorded as (a server records the principal)."""


async def _create(ctx: typer.Context, principal: str, admin: bool) -> dict[str, Any]:
    from tidelog.engines.remote import RemoteEngine
    from tidelog.security import keystore

    async with open_store(ctx) as store:
        if isinstance(store, RemoteEngine):
            body = {"principal": principal, "admin": admin}
            return await store.call("POST", "/v1/admin/keys", body=body)
        key, stored = await keystore.create_key(store, principal, by=_BY, admin=admin)
        return keystore.created(key, stored, admin=admin)


async def _list_keys(ctx: typer.Context, include_revoked: bool) -> list[dict[str, Any]]:
    from tidelog.engines.remote import RemoteEngine
    from tidelog.security import keystore

    async with open_store(ctx, reads_only=True) as store:
        if isinstance(store, RemoteEngine):
            answer = await store.call("GET", "/v1/admin/keys", params={"all": include_revoked})
            return list(answer["keys"])
        creds = await keystore.load(store)
        return [k.public() for k in creds.key_list(include_revoked=include_revoked)]


async def _revoke(ctx: typer.Context, key_id: str) -> dict[str, Any]:
    from tidelog.engines.remote import RemoteEngine
    from tidelog.security import keystore

    async with open_store(ctx) as store:
        if isinstance(store, RemoteEngine):
            return await store.call("DELETE", f"/v1/admin/keys/{_segment(key_id)}")
        return (await keystore.revoke_key(store, key_id, by=_BY)).public()


async def _change_grant(ctx: typer.Context, grant: str, add: bool) -> dict[str, Any]:
    from tidelog.engines.remote import RemoteEngine
    from tidelog.security import keystore

    async with open_store(ctx) as store:
        if isinstance(store, RemoteEngine):
            if add:
                return await store.call("POST", "/v1/admin/grants", body={"grant": grant})
            return await store.call("DELETE", "/v1/admin/grants", params={"grant": grant})
        change = keystore.add_grant if add else keystore.remove_grant
        done = await change(store, grant, by=_BY)
        return {"grant": keystore.format_grant(done), "source": "store"}


async def _list_grants(ctx: typer.Context) -> list[dict[str, Any]]:
    from tidelog.engines.remote import RemoteEngine
    from tidelog.security import keystore

    async with open_store(ctx, reads_only=True) as store:
        if isinstance(store, RemoteEngine):
            return list((await store.call("GET", "/v1/admin/grants"))["grants"])
        creds = await keystore.load(store)
        return [g.public() for g in creds.grants.values()]


def _segment(value: str) -> str:
    import urllib.parse

    return urllib.parse.quote(value, safe="")


def register(app: typer.Typer) -> None:
    keys = command_group(
        app, "keys", "API keys kept in the store: effective on every server within a second."
    )
    grants = command_group(
        app, "grants", "Grants kept in the store, beside the config file's (same syntax)."
    )

    @keys.command("create")
    def keys_create(
        ctx: typer.Context,
        principal: Annotated[str, typer.Option("--principal", help="Who the key speaks for.")],
        admin: Annotated[
            bool, typer.Option("--admin", help="Also grant PRINCIPAL admin on * (everything).")
        ] = False,
    ) -> None:
        """Create a key for PRINCIPAL and print it, once: only its digest is stored."""
        made = run(_create(ctx, principal, admin))
        say(
            ctx,
            made,
            f"key (shown once, keep it): {made['key']}\n"
            f"  id {made['key_id']}  principal {made['principal']}"
            + ("  (admin on *)" if admin else ""),
        )

    @keys.command("list")
    def keys_list(
        ctx: typer.Context,
        all_: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    ) -> None:
        """Keys of the store: id, principal, first characters; never the key itself."""
        rows = run(_list_keys(ctx, all_))
        if emit_rows(
            ctx, rows, empty="no keys in the store (keys of the config file are not listed)"
        ):
            return
        for k in rows:
            revoked = f"  revoked {k['revoked_at']}" if k.get("revoked_at") else ""
            typer.echo(
                f"{k['key_id']}  {k['principal']}  {k['prefix']}…  "
                f"created {k['created_at']} by {k['created_by']}{revoked}"
            )

    @keys.command("revoke")
    def keys_revoke(
        ctx: typer.Context,
        key_id: Annotated[str, typer.Argument(help="The key's id (from `keys list`).")],
    ) -> None:
        """Revoke a key: every server of the store refuses it within a second."""
        done = run(_revoke(ctx, key_id))
        say(ctx, done, f"revoked key {done['key_id']} ({done['principal']})")

    @grants.command("add")
    def grants_add(ctx: typer.Context, grant: _Grant) -> None:
        """Add a grant, e.g. `billing=read:category:order`."""
        done = run(_change_grant(ctx, grant, add=True))
        say(ctx, done, f"added grant {done['grant']}")

    @grants.command("remove")
    def grants_remove(ctx: typer.Context, grant: _Grant) -> None:
        """Remove a grant added with `grants add` (the config file's are changed there)."""
        done = run(_change_grant(ctx, grant, add=False))
        say(ctx, done, f"removed grant {done['grant']}")

    @grants.command("list")
    def grants_list(ctx: typer.Context) -> None:
        """Grants in force: the store's, and through a server the config file's too."""
        rows = run(_list_grants(ctx))
        if emit_rows(ctx, rows, empty="no grants in the store"):
            return
        for g in rows:
            typer.echo(f"{g['grant']}  ({g['source']})")
