"""Proof that PostgreSQL readers never skip events, and a control run that must skip.

On PostgreSQL a position is allocated before commit but becomes visible at
commit. A reader that reads the head, then everything up to it, and goes on
from head + 1 can pass a position whose transaction commits later and never
see it (the "skipped events" bug of several event stores). The engine
serializes its write transactions with an advisory lock, so allocation order
is commit order.

The same race harness runs twice:

- the engine: 8 writers (each its own engine) with random delays before
  commit and 10% rolled-back commits, 4 subscribers (`store.subscribe`):
  every subscriber must see every committed event exactly once, in log order;
- the naive method (here only, never in the engine): writers take positions
  from a sequence without serializing, the reader follows `max(position)`:
  the harness must catch a skip, proving that it can fail.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Protocol

import asyncpg
import pytest

import tidelog
from support.postgres import PG_DSN, Schemas, schemas
from tidelog.engines.postgres import PostgresEngine

pytestmark = pytest.mark.postgres
__all__ = ["schemas"]  # the fixture, re-exported for pytest

WRITERS = 8
SUBSCRIBERS = 4
APPENDS_PER_WRITER = 20
ROLLBACK_RATE = 0.1
MAX_DELAY = 0.008
WAIT = 30.0


class InjectedRollback(Exception):
    """Raised before commit to roll the write back."""


class Method(Protocol):
    async def append(self, writer: int, event_id: uuid.UUID, rng: random.Random) -> None:
        """Append one event; raise InjectedRollback if it was rolled back."""

    def subscribe(self) -> AsyncIterator[tuple[int, uuid.UUID]]: ...

    async def log(self) -> list[uuid.UUID]:
        """Every committed event id, in position order, read after the race."""


async def _delay_and_maybe_roll_back(rng: random.Random) -> None:
    await asyncio.sleep(rng.uniform(0, MAX_DELAY))
    if rng.random() < ROLLBACK_RATE:
        raise InjectedRollback


class EngineMethod:
    """The real engine: its own writers and its own subscription loop."""

    def __init__(self, writers: list[PostgresEngine], readers: list[tidelog.Store]) -> None:
        self.writers = writers
        self.readers = readers
        self._next_reader = 0

    async def append(self, writer: int, event_id: uuid.UUID, rng: random.Random) -> None:
        store = self.writers[writer]

        async def before_commit() -> None:
            await _delay_and_maybe_roll_back(rng)

        store._before_commit = before_commit
        await store.append(f"race-{writer}", [tidelog.NewEvent(type="Raced", id=event_id)])

    async def subscribe(self) -> AsyncIterator[tuple[int, uuid.UUID]]:
        reader = self.readers[self._next_reader % len(self.readers)]
        self._next_reader += 1
        async for event in reader.subscribe():
            yield event.position, event.id

    async def log(self) -> list[uuid.UUID]:
        return [e.id async for e in self.readers[0].read_all()]


class NaiveMethod:
    """What not to do: sequence positions, unserialized writers, a max(position) reader."""

    def __init__(self, schema: str, connections: list[asyncpg.Connection]) -> None:
        self.table = f'"{schema}".naive_events'
        self.connections = connections
        self._next_reader = WRITERS

    @classmethod
    async def create(cls, schema: str) -> NaiveMethod:
        connections = [await asyncpg.connect(PG_DSN) for _ in range(WRITERS + SUBSCRIBERS)]
        await connections[0].execute(f'CREATE SCHEMA "{schema}"')
        await connections[0].execute(
            f'CREATE TABLE "{schema}".naive_events (position bigserial PRIMARY KEY, id uuid)'
        )
        return cls(schema, connections)

    async def close(self) -> None:
        for conn in self.connections:
            await conn.close()

    async def append(self, writer: int, event_id: uuid.UUID, rng: random.Random) -> None:
        conn = self.connections[writer]
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {self.table} (id) VALUES ($1)", event_id)
            await _delay_and_maybe_roll_back(rng)

    async def subscribe(self) -> AsyncIterator[tuple[int, uuid.UUID]]:
        conn = self.connections[self._next_reader]
        self._next_reader += 1
        next_position = 1
        while True:  # the shape of the generic subscription loop, on a naive log
            head = await conn.fetchval(f"SELECT coalesce(max(position), 0) FROM {self.table}")
            rows = await conn.fetch(
                f"SELECT position, id FROM {self.table} WHERE position >= $1 ORDER BY position",
                next_position,
            )
            for position, event_id in rows:
                next_position = position + 1
                yield position, event_id
            next_position = max(next_position, head + 1)
            await asyncio.sleep(0.001)

    async def log(self) -> list[uuid.UUID]:
        rows = await self.connections[0].fetch(f"SELECT id FROM {self.table} ORDER BY position")
        return [r[0] for r in rows]


async def run_race(method: Method, seed: int) -> list[tuple[str, str]]:
    """Race the writers against the subscribers; returns every problem found as (kind, detail)."""
    rng = random.Random(seed)
    acked: set[uuid.UUID] = set()
    rolled_back: set[uuid.UUID] = set()
    seen: list[list[tuple[int, uuid.UUID]]] = [[] for _ in range(SUBSCRIBERS)]

    progress = asyncio.Event()

    async def follow(index: int) -> None:
        async for item in method.subscribe():
            seen[index].append(item)
            progress.set()

    async def write(writer: int) -> None:
        writer_rng = random.Random(rng.random())
        for _ in range(APPENDS_PER_WRITER):
            event_id = uuid.uuid4()
            await asyncio.sleep(writer_rng.uniform(0, MAX_DELAY / 4))
            try:
                await method.append(writer, event_id, writer_rng)
            except InjectedRollback:
                rolled_back.add(event_id)
            else:
                acked.add(event_id)

    followers = [asyncio.create_task(follow(i)) for i in range(SUBSCRIBERS)]
    try:
        await asyncio.gather(*(write(w) for w in range(WRITERS)))
        log = await method.log()
        final = len(log)
        async with asyncio.timeout(WAIT):  # a broken reader fails, never hangs
            while any(len(s) < final and not _passed(s, log) for s in seen):
                progress.clear()
                await progress.wait()
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)

    problems = []
    if set(log) != acked:
        problems.append(("lost", f"log != acked appends: {len(set(log) ^ acked)} differ"))
    if set(log) & rolled_back:
        problems.append(("phantom", "a rolled-back event is in the log"))
    for index, items in enumerate(seen):
        ids = [event_id for _, event_id in items]
        missing = set(log) - set(ids)
        if missing:
            problems.append(("skipped", f"subscriber {index} skipped {len(missing)} events"))
        if len(ids) != len(set(ids)):
            problems.append(("duplicated", f"subscriber {index} saw an event twice"))
        if ids != log:
            problems.append(("reordered", f"subscriber {index} did not see the log in order"))
    return problems


def _passed(items: list[tuple[int, uuid.UUID]], log: list[uuid.UUID]) -> bool:
    """The subscriber has seen the log's last event (events it skipped are gone for good)."""
    return bool(items) and bool(log) and items[-1][1] == log[-1]


@pytest.mark.slow
async def test_engine_subscribers_never_skip_under_racing_writers(schemas: Schemas) -> None:
    for seed in (1, 2):
        url = schemas.url()
        writers = [await tidelog.connect(url + "&pool_max=1&listen=false") for _ in range(WRITERS)]
        readers = [await tidelog.connect(url + "&pool_max=2") for _ in range(2)]
        try:
            assert all(isinstance(w, PostgresEngine) for w in writers)
            method = EngineMethod([w for w in writers if isinstance(w, PostgresEngine)], readers)
            problems = await run_race(method, seed)
            assert problems == []
            assert len(await method.log()) > WRITERS * APPENDS_PER_WRITER // 2
        finally:
            for store in writers + readers:
                await store.close()


@pytest.mark.slow
async def test_naive_method_skips_events_so_the_race_test_can_fail(schemas: Schemas) -> None:
    found: list[tuple[str, str]] = []
    for seed in range(6):
        schema = schemas.url().split("schema=")[1]
        method = await NaiveMethod.create(schema)
        try:
            found = await run_race(method, seed)
        finally:
            await method.close()
        if any(kind == "skipped" for kind, _ in found):
            print(f"naive method skipped in round {seed}: {found}")
            break
    assert any(kind == "skipped" for kind, _ in found), "the naive reader never skipped"
