"""PostgreSQL test plumbing: the shared server, a schema per store, dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

import tidelog
from support.services import service_missing
from tidelog.engines.postgres.schema import migrate

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


_RECYCLED: list[str] = []
"""Schemas of closed stores, migrated and emptied, for the next store `Schemas.open` opens."""

_SHAPE = """
SELECT md5(coalesce(string_agg(item, ',' ORDER BY item), '')) FROM (
    SELECT 'rel:' || c.relname || ':' || c.relkind::text AS item
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1
  UNION ALL
    SELECT 'col:' || c.relname || '.' || a.attname || ':'
        || format_type(a.atttypid, a.atttypmod) || ':' || a.attnotnull::text
        || ':' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE n.nspname = $1 AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
    SELECT 'con:' || c.conname || ':' || pg_get_constraintdef(c.oid)
    FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = $1
  UNION ALL
    SELECT 'trg:' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1
  UNION ALL
    SELECT 'fn:' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname = $1
) items
"""
"""A digest of everything a schema holds but its rows: tables, indexes, columns,
defaults, constraints, triggers, functions. Equal to a fresh store's only if a test
changed nothing of the schema itself."""

_fresh_shape: list[str] = []
"""The digest of a freshly migrated store's schema, computed once."""

_DATA_TABLES = ("events", "streams", "groups", "checkpoints", "meta")
"""Every table a store writes rows to (`meta` included: `partitions` and the
high-water mark are set again by the next store that opens the schema)."""


async def _shape(conn: asyncpg.Connection, schema: str) -> str:
    migrations = await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')
    digest: str = await conn.fetchval(_SHAPE, schema)
    return f"{sorted(r[0] for r in migrations)}:{digest}"


async def _reusable(conn: asyncpg.Connection, schema: str) -> bool:
    """Whether `schema` is exactly a fresh store's schema once its rows are deleted."""
    if not _fresh_shape:
        reference = new_schema()
        try:
            await migrate(conn, reference)
            _fresh_shape.append(await _shape(conn, reference))
        finally:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{reference}" CASCADE')
    try:
        return await _shape(conn, schema) == _fresh_shape[0]
    except asyncpg.PostgresError:  # no migrations table: not a store's schema
        return False


class Schemas:
    """Schemas created by one test; `drop` removes them all.

    A store opened with `open` and closed by the end of the test gives its
    schema back instead: its rows are deleted and the next `open` uses it, so
    most tests skip creating a schema (migrations) and dropping it, which was
    most of their cost. Only a schema whose structure is still exactly a fresh
    store's is reused (a test that altered a table, added a trigger or rolled
    migrations drops its schema); a store left open (crash tests) is dropped
    too. What `url` names is always a new schema, dropped afterwards.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self._stores: dict[str, tidelog.Store] = {}

    def url(self, options: str = "") -> str:
        return self._url(new_schema(), options)

    def _url(self, schema: str, options: str) -> str:
        self.names.append(schema)
        return f"{PG_DSN}?schema={schema}" + (f"&{options}" if options else "")

    async def open(self, options: str = "pool_max=4", *, reuse: bool = False) -> tidelog.Store:
        """A store in a schema of its own.

        `reuse=True` first gives back the schemas of this test's stores that are
        closed already, so that a test opening store after store (the model
        test: one per example) reuses one schema instead of creating one each
        time. Only for tests that never look into a store after closing it.
        """
        if reuse:
            await self._give_back(closed_only=True)
        schema = _RECYCLED.pop() if _RECYCLED else new_schema()
        store = await tidelog.connect(self._url(schema, options))
        self._stores[schema] = store
        return store

    async def drop(self) -> None:
        await self._give_back(closed_only=False)

    async def _give_back(self, *, closed_only: bool) -> None:
        """Reuse or drop the schemas of this test (with `closed_only`, only those
        of stores opened by `open` and closed since)."""
        names = [
            name
            for name in self.names
            if not closed_only or (name in self._stores and self._stores[name]._closed)
        ]
        if not names:
            return
        conn = await asyncpg.connect(PG_DSN, timeout=10)
        try:
            for name in names:
                store = self._stores.pop(name, None)
                self.names.remove(name)
                if store is not None and store._closed and await _reusable(conn, name):
                    async with conn.transaction():
                        for table in _DATA_TABLES:
                            await conn.execute(f'DELETE FROM "{name}".{table}')
                    _RECYCLED.append(name)
                else:
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()


async def drop_recycled() -> None:
    """Drop the schemas kept for reuse: at the end of the session."""
    if not _RECYCLED:
        return
    conn = await asyncpg.connect(PG_DSN, timeout=10)
    try:
        while _RECYCLED:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{_RECYCLED.pop()}" CASCADE')
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def schemas() -> AsyncIterator[Schemas]:
    await require_postgres()
    created = Schemas()
    try:
        yield created
    finally:
        await created.drop()
