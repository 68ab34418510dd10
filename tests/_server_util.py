"""Starting a real tidelog server in-process for tests (uvicorn on a free loopback port)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec

import tidelog
from tidelog.security.acl import Grant, parse_grant
from tidelog.security.tokens import hash_api_key
from tidelog.server import Server, ServerConfig

ADMIN_KEY = "admin-key-for-tests"


def config(
    *,
    keys: dict[str, str] | None = None,
    grants: tuple[str, ...] = (),
    **changes: Any,
) -> ServerConfig:
    """A config on port 0 with API keys (plain key -> principal) and grant strings."""
    all_keys = {ADMIN_KEY: "admin", **(keys or {})}
    parsed: tuple[Grant, ...] = (
        parse_grant("admin=admin:*"),
        *(parse_grant(g) for g in grants),
    )
    base = ServerConfig(
        host="127.0.0.1",
        port=0,
        api_keys={hash_api_key(k): p for k, p in all_keys.items()},
        grants=parsed,
    )
    return msgspec.structs.replace(base, **changes)


@contextlib.asynccontextmanager
async def running(
    cfg: ServerConfig, store: tidelog.Store | None = None
) -> AsyncIterator[tuple[Server, tidelog.Store]]:
    own = store is None
    store = store or await tidelog.connect("memory://")
    server = Server(cfg, store)
    await server.start()
    try:
        yield server, store
    finally:
        await server.stop()
        if own:
            await store.close()
