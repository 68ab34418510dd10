"""Checkpoints of projections that are not SQL tables, and the driver that keeps them.

The read model and the checkpoint are two writes here, so delivery is
at-least-once: handlers must be idempotent. In exchange the read model can
live anywhere (memory, a cache, another database).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import msgspec

from tidelog.engines.contract import Engine
from tidelog.model import NewEvent
from tidelog.projections._core import Driver, Item, Projection, call

__all__ = ["CheckpointStore", "MemoryCheckpoints", "StreamCheckpoints"]


class CheckpointStore(Protocol):
    """Where non-SQL projections keep their checkpoint (the last position handled)."""

    async def load(self, name: str) -> int: ...

    async def save(self, name: str, position: int) -> None: ...


class MemoryCheckpoints:
    """Checkpoints in this process only: for read models that live in memory too."""

    def __init__(self) -> None:
        self.positions: dict[str, int] = {}

    async def load(self, name: str) -> int:
        return self.positions.get(name, 0)

    async def save(self, name: str, position: int) -> None:
        self.positions[name] = position


class StreamCheckpoints:
    """Checkpoints kept in the store, one small event per batch in `$projection-<name>`."""

    TYPE: Final = "tidelog.checkpoint"

    def __init__(self, store: Engine) -> None:
        self.store = store

    async def load(self, name: str) -> int:
        async for e in self.store.read_stream(f"$projection-{name}", -1, backwards=True, limit=1):
            position: int = msgspec.json.decode(e.data, type=dict[str, int])["position"]
            return position
        return 0

    async def save(self, name: str, position: int) -> None:
        data = msgspec.json.encode({"position": position})
        await self.store.append(f"$projection-{name}", [NewEvent(type=self.TYPE, data=data)])


class StoreDriver(Driver):
    """Handlers, then the checkpoint in a `CheckpointStore` (at-least-once).

    The checkpoint is persisted at most every `save_every` positions or
    `save_seconds` seconds, and whenever the runner flushes (end of a catch-up,
    stop): a store that keeps checkpoints in the log then grows by a bounded
    number of events, not one per batch. After a crash, at most that much is
    handled again, which at-least-once handlers accept anyway.
    """

    def __init__(
        self,
        projection: Projection,
        checkpoints: CheckpointStore,
        save_every: int = 1000,
        save_seconds: float = 1.0,
    ) -> None:
        super().__init__(projection)
        self.checkpoints = checkpoints
        self.save_every = save_every
        self.save_seconds = save_seconds
        self._position: int | None = None
        self._saved = 0
        self._saved_at = 0.0

    async def load(self) -> int:
        if self._position is None:
            self._position = self._saved = await self.checkpoints.load(self.projection.name)
            self._saved_at = time.monotonic()
        return self._position

    async def apply(
        self, items: list[Item], start: int, end: int, system_only: bool = False
    ) -> None:
        for item in items:
            result = call(self.projection, item)
            if inspect.isawaitable(result):
                await result
        self._position = end
        due = end - self._saved >= self.save_every or (
            time.monotonic() - self._saved_at >= self.save_seconds
        )
        if due and not system_only:
            await self.flush()

    async def flush(self) -> None:
        if self._position is not None and self._position != self._saved:
            await self.checkpoints.save(self.projection.name, self._position)
            self._saved, self._saved_at = self._position, time.monotonic()

    async def rebuild(self, catch_up: Callable[[Driver], Awaitable[int]]) -> int:
        fresh = self.projection.fresh()
        shadow = StoreDriver(fresh, MemoryCheckpoints())
        position = await catch_up(shadow)
        self.projection.swap(fresh)
        self._position = position
        await self.flush()
        return position

    async def aclose(self) -> None:
        await self.flush()
