"""PostgreSQL test plumbing: the shared server, a schema per store, dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

import tidelog
from support.services import service_missing

PG_DSN = os.environ.get("TIDELOG_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

_reachable: dict[str, bool] = {}


async def require_postgres() -> None:
    """Skip (or fail under TIDELOG_REQUIRE_SERVICES=1) when the test server is unreachable."""
    if PG_DSN not in _reachable:
        try:
            conn = await asyncpg.connect(PG_DSN, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            _reachable[PG_DSN] = False
        else:
            await conn.close()
            _reachable[PG_DSN] = True
    if not _reachable[PG_DSN]:
        service_missing(f"PostgreSQL is not reachable at {PG_DSN}")


def new_schema() -> str:
    return f"t_{uuid.uuid4().hex}"


class Schemas:
    """Schemas created by one test; `drop` removes them all."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def url(self, options: str = "") -> str:
        schema = new_schema()
        self.names.append(schema)
        return f"{PG_DSN}?schema={schema}" + (f"&{options}" if options else "")

    async def open(self, options: str = "pool_max=4") -> tidelog.Store:
        return await tidelog.connect(self.url(options))

    async def drop(self) -> None:
        if not self.names:
            return
        conn = await asyncpg.connect(PG_DSN, timeout=10)
        try:
            for name in self.names:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()
        self.names.clear()


@pytest_asyncio.fixture
async def schemas() -> AsyncIterator[Schemas]:
    await require_postgres()
    created = Schemas()
    try:
        yield created
    finally:
        await created.drop()
