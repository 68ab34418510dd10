"""`ProjectionRunner`: reads the log, hands batches to each projection's driver.

The runner owns the reading (catch-up in pages, then live through
`store.subscribe`) and nothing of the writing: a driver per projection, chosen
by the projection's kind, applies each batch and keeps the checkpoint. A
driver that finds its checkpoint moved (another runner, or a rebuild) makes
the runner resume from the stored one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Self

from tidelog.codec import DEFAULT_REGISTRY, EventCipher, EventRegistry
from tidelog.engines.contract import Engine
from tidelog.errors import InvalidInput, UnknownEventType
from tidelog.model import RecordedEvent
from tidelog.projections._core import (
    CheckpointMoved,
    Driver,
    Item,
    Progress,
    Projection,
    ProjectionStatus,
    with_recorded,
)
from tidelog.projections.checkpoints import CheckpointStore, StoreDriver, StreamCheckpoints
from tidelog.projections.postgres import PostgresDriver, PostgresProjection, postgres_target
from tidelog.projections.sqlite import SQLiteDriver, SQLiteProjection, sqlite_path

__all__ = ["ProjectionRunner"]

log = logging.getLogger(__name__)


def _system_only(events: Sequence[RecordedEvent]) -> bool:
    return all(e.stream.startswith("$") for e in events)


class ProjectionRunner:
    """Runs projections: catch up from their checkpoints, then follow the log live.

    `checkpoints` is where the other (non-SQL) projections keep theirs (default:
    `StreamCheckpoints(store)`). `batch_size` is the page size of catch-up and
    the largest batch committed at once while live.
    """

    def __init__(
        self,
        store: Engine,
        projections: Sequence[Projection],
        *,
        registry: EventRegistry | None = None,
        cipher: EventCipher | None = None,
        checkpoints: CheckpointStore | None = None,
        batch_size: int = 500,
    ) -> None:
        if batch_size < 1:
            raise InvalidInput("batch_size must be >= 1")
        names = [p.name for p in projections]
        if len(set(names)) != len(names):
            raise InvalidInput(f"projection names must be unique: {names}")
        self.store = store
        self.registry = registry or DEFAULT_REGISTRY
        self.cipher = cipher
        self.batch_size = batch_size
        self.checkpoints = checkpoints or StreamCheckpoints(store)
        self.projections = {p.name: p for p in projections}
        self._drivers: dict[str, Driver] = {}
        self._wanted: dict[str, dict[str, Callable[..., Any]]] = {}
        for p in projections:
            wanted: dict[str, Callable[..., Any]] = {}
            for cls, fn in p._handlers.items():
                try:
                    type_name, _ = self.registry.type_of(cls)
                except UnknownEventType:
                    raise InvalidInput(
                        f"{p.name}: handler for {cls.__qualname__}, which is not registered "
                        "in the runner's event registry"
                    ) from None
                wanted[type_name] = with_recorded(fn)
            self._wanted[p.name] = wanted

    def _driver(self, name: str) -> Driver:
        driver = self._drivers.get(name)
        if driver is None:
            projection = self.projections.get(name)
            if projection is None:
                raise InvalidInput(f"no projection named {name!r}")
            if isinstance(projection, SQLiteProjection):
                driver = SQLiteDriver(projection, sqlite_path(self.store))
            elif isinstance(projection, PostgresProjection):
                driver = PostgresDriver(projection, *postgres_target(self.store))
            else:
                driver = StoreDriver(projection, self.checkpoints)
            self._drivers[name] = driver
        return driver

    async def close(self) -> None:
        for driver in self._drivers.values():
            await driver.aclose()
        self._drivers.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ batches

    async def _items(self, name: str, events: Sequence[RecordedEvent]) -> list[Item]:
        wanted = self._wanted[name]
        items: list[Item] = []
        for stored in events:
            fn = wanted.get(stored.type)
            if fn is None or stored.stream.startswith("$"):
                continue
            recorded = stored if self.cipher is None else await self.cipher.unseal(stored)
            items.append((fn, self.registry.decode(recorded), recorded))
        return items

    async def _catch_up(self, name: str, driver: Driver, progress: Progress | None = None) -> int:
        position = await driver.load()
        while True:
            head = await self.store.last_position()
            page = [
                e
                async for e in self.store.read_all(
                    from_position=position + 1, limit=self.batch_size
                )
            ]
            if not page:
                await driver.flush()
                if progress is not None:
                    progress(position, head)
                return position
            end = page[-1].position
            try:
                await driver.apply(await self._items(name, page), position, end, _system_only(page))
            except CheckpointMoved:  # another runner or a rebuild moved it: resume from there
                position = await driver.load()
                continue
            position = end
            if progress is not None:
                progress(position, max(head, position))

    async def catch_up(self, name: str | None = None, *, progress: Progress | None = None) -> int:
        """Bring one projection (or all) up to the head; returns the lowest position reached."""
        names = [name] if name is not None else list(self.projections)
        reached = []
        for n in names:
            reached.append(await self._catch_up(n, self._driver(n), progress))
        return min(reached, default=0)

    async def rebuild(self, name: str, *, progress: Progress | None = None) -> int:
        """Rebuild a projection from position 0 into a fresh read model, then swap it in."""
        driver = self._driver(name)

        async def catch_up(shadow: Driver) -> int:
            return await self._catch_up(name, shadow, progress)

        return await driver.rebuild(catch_up)

    async def status(self) -> list[ProjectionStatus]:
        """Checkpoint, head and lag of every projection."""
        head = await self.store.last_position()
        out = []
        for name in self.projections:
            driver = self._driver(name)
            position = await driver.load()
            out.append(
                ProjectionStatus(
                    name=name,
                    position=position,
                    head=head,
                    lag=max(head - position, 0),
                    kind=driver.kind,
                )
            )
        return out

    # ------------------------------------------------------------------ live

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Catch every projection up, then follow the log live until `stop` is set."""
        stop = stop or asyncio.Event()
        tasks = [asyncio.create_task(self._follow(name, stop)) for name in self.projections]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, name: str, stop: asyncio.Event) -> None:
        driver = self._driver(name)
        while not stop.is_set():
            position = await self._catch_up(name, driver)
            try:
                await self._live(name, driver, position, stop)
            except CheckpointMoved:
                log.info("projection %s: checkpoint moved (rebuilt elsewhere); reloading", name)

    async def _live(self, name: str, driver: Driver, position: int, stop: asyncio.Event) -> None:
        queue: asyncio.Queue[RecordedEvent] = asyncio.Queue(maxsize=self.batch_size * 2)

        async def pump() -> None:
            async for event in self.store.subscribe(from_position=position + 1):
                await queue.put(event)

        pump_task = asyncio.create_task(pump())
        stop_task = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                get = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait(
                    {get, pump_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
                )
                if get not in done:
                    get.cancel()
                    if pump_task in done:
                        pump_task.result()  # re-raise StoreClosed and the like
                    return
                batch = [get.result()]
                while len(batch) < self.batch_size and not queue.empty():
                    batch.append(queue.get_nowait())
                end = batch[-1].position
                await driver.apply(
                    await self._items(name, batch), position, end, _system_only(batch)
                )
                position = end
        finally:
            pump_task.cancel()
            stop_task.cancel()
            await asyncio.gather(pump_task, stop_task, return_exceptions=True)
            with contextlib.suppress(Exception):  # the store may be closing: best effort
                await driver.flush()
