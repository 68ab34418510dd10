"""Shared helpers of the consumer, producer and worker tests.

`CONSUMER_URLS` lists the engines the consumer tests run on. Add one by
setting `TIDELOG_CONSUMER_TEST_URLS` (space separated, `{tmp}` is replaced by
a fresh directory, `{uid}` by a fresh id), e.g.
`postgresql://postgres@127.0.0.1:5432/test?schema=tc_{uid}&partitions=8`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

import tidelog
from support.nats import NatsServer

ENGINE_KINDS = ["memory", "sqlite", *os.environ.get("TIDELOG_CONSUMER_TEST_URLS", "").split()]


def url_for(kind: str, tmp: pathlib.Path) -> str:
    if kind == "memory":
        return "memory://?partitions=8"
    if kind == "sqlite":
        return f"sqlite:///{tmp}/store.db?partitions=8&synchronous=normal"
    return kind.replace("{tmp}", str(tmp)).replace("{uid}", uuid.uuid4().hex[:12])


async def eventually(cond: Callable[[], bool], within: float = 60.0, what: str = "") -> None:
    """Wait for `cond` (a hang guard, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + within
    while not cond():
        if loop.time() > until:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.02)


STORE_KINDS = [
    "memory",
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    *os.environ.get("TIDELOG_CONSUMER_TEST_URLS", "").split(),
]
"""The engines of the in-process tests (the multi-process ones use `ENGINE_KINDS`)."""


@contextlib.asynccontextmanager
async def open_store(kind: str, tmp: pathlib.Path) -> AsyncIterator[tidelog.Store]:
    """A fresh store of `kind`; PostgreSQL gets its own schema, dropped afterwards."""
    if kind != "postgres":
        async with tidelog.connect(url_for(kind, tmp)) as store:
            yield store
        return
    from support.postgres import Schemas, require_postgres

    await require_postgres()
    schemas = Schemas()
    try:
        async with await schemas.open("partitions=8&pool_max=4") as store:
            yield store
    finally:
        await schemas.drop()


def nats_store_url(server: NatsServer, options: str = "partitions=8") -> str:
    """A fresh store (its own JetStream stream) on `server`; a generous timeout for busy CI."""
    return f"{server.url}?store=c{uuid.uuid4().hex[:16]}&timeout=10&{options}"
