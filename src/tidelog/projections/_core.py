"""What every projection driver shares: the `Projection` base, batch items, the driver ABC.

A driver applies batches of one projection and keeps its checkpoint; the
runner (`tidelog.projections.runner`) only reads the log and hands batches to
drivers. The two SQL drivers differ only in how they run a transaction, so
their common shape (logical and shadow table names, one transaction at a
time, the reset/swap/drop steps of a rebuild) is written once here, in
`TablesDriver`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import inspect
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Self, TypeVar

import msgspec

from tidelog.aggregates import applies, collect_handlers
from tidelog.errors import InvalidInput
from tidelog.model import RecordedEvent

T = TypeVar("T")

handles = applies
"""Mark a projection method as the handler of one event class (see `tidelog.aggregates.applies`)."""

CHECKPOINT_TABLE: Final = "tidelog_projection_checkpoints"
_NAME_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,62}")
Progress = Callable[[int, int], None]
"""Called with (position reached, head) after each page of a catch-up."""


class Projection:
    """Base class of projections; `name` identifies its checkpoint and read model."""

    name: ClassVar[str] = ""
    _handlers: ClassVar[dict[type[msgspec.Struct], Callable[..., Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
        if _NAME_RE.fullmatch(cls.name) is None:
            raise InvalidInput(
                f"projection name {cls.name!r}: lower-case letters, digits and '_', "
                "starting with a letter, at most 63 characters"
            )
        cls._handlers = collect_handlers(cls)

    def fresh(self) -> Self:
        """An empty instance to rebuild into (default: the class called with no arguments)."""
        return type(self)()

    def swap(self, rebuilt: Self) -> None:
        """Take the state of a rebuilt instance (default: its attributes)."""
        self.__dict__.clear()
        self.__dict__.update(rebuilt.__dict__)


class TablesProjection(Projection):
    """A projection whose read model is tables of the store's own database.

    `tables` maps each logical table name to its DDL, written with `{table}`
    where the name goes; `table("logical")` is the physical name to write to,
    which is the shadow table during a rebuild. The SQLite and PostgreSQL
    projections are its two kinds.
    """

    tables: ClassVar[Mapping[str, str]] = {}

    def table(self, logical: str) -> str:
        """The physical name of a logical table: itself, or its shadow during a rebuild."""
        names: dict[str, str] = self.__dict__.setdefault("_table_names", {})
        if logical not in self.tables:
            raise InvalidInput(f"{type(self).__qualname__} declares no table {logical!r}")
        return names.get(logical, logical)


class ProjectionStatus(msgspec.Struct, frozen=True, kw_only=True):
    """A projection's checkpoint, the log's head and the lag between them (positions)."""

    name: str
    position: int
    head: int
    lag: int
    kind: str


class CheckpointMoved(Exception):
    """The stored checkpoint is not the one this batch started from (a rebuild swapped)."""


Item = tuple[Callable[..., Any], msgspec.Struct, RecordedEvent]
"""One handled event of a batch: the handler, the decoded event, the recorded event."""


def call(owner: Projection, item: Item) -> Any:
    """Call an item's handler on `owner` (its result may be awaitable)."""
    fn, event, recorded = item
    return fn(owner, event, recorded)


def with_recorded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Handlers take (self, event) or (self, event, recorded); call them all the same way."""
    if len(inspect.signature(fn).parameters) >= 3:
        return fn

    def call(owner: Projection, event: msgspec.Struct, recorded: RecordedEvent) -> Any:
        return fn(owner, event)

    return call


class Driver(abc.ABC):
    """Applies batches and keeps the checkpoint of one projection."""

    kind = "checkpoint-store"

    def __init__(self, projection: Projection) -> None:
        self.projection = projection

    @abc.abstractmethod
    async def load(self) -> int:
        """The checkpoint: the last position handled (0: none)."""

    @abc.abstractmethod
    async def apply(
        self, items: list[Item], start: int, end: int, system_only: bool = False
    ) -> None:
        """Apply the handled events of positions (start, end] and move the checkpoint to end.

        `system_only`: the batch holds only system-stream events. A checkpoint
        store that writes to the log itself must then not write, or its own
        checkpoint events would feed it forever.
        """

    @abc.abstractmethod
    async def rebuild(self, catch_up: Callable[[Driver], Awaitable[int]]) -> int:
        """Build a fresh read model with `catch_up`, swap it in; returns its position."""

    async def flush(self) -> None:  # noqa: B027 - a no-op unless the driver throttles saves
        """Persist a checkpoint held back (drivers that throttle their saves)."""

    async def aclose(self) -> None:
        return None


@dataclass(frozen=True)
class Shadow:
    """The names a rebuild builds into, beside the live ones it replaces at the end."""

    key: str
    live_key: str
    names: dict[str, str]
    live_names: dict[str, str]


class TablesDriver(Driver):
    """A SQL driver: rows and checkpoint in one transaction, one transaction at a time.

    A subclass says how a transaction runs (`_reset`, `_swap`, `_drop` of a
    rebuild each run one). Transactions run as their own task, shielded from
    the caller: a cancelled caller never leaves one half done, and `aclose`
    waits for the last one.
    """

    def __init__(self, projection: TablesProjection) -> None:
        super().__init__(projection)
        self.tp = projection
        self.key = projection.name
        self.lock = asyncio.Lock()  # one transaction at a time on this connection
        self._inflight: asyncio.Future[Any] | None = None

    async def _one_at_a_time(self, start: Callable[[], Awaitable[T]]) -> T:
        """Await `start()` as a task of its own, after the previous one ended."""
        async with self.lock:
            future = asyncio.ensure_future(start())
            self._inflight = future
            return await asyncio.shield(future)

    async def _settle(self) -> None:
        """Wait for the transaction in flight (a cancelled caller's) to commit or roll back."""
        if self._inflight is not None:
            await asyncio.wait([self._inflight])

    def _names(self) -> dict[str, str]:
        names: dict[str, str] = self.tp.__dict__.setdefault("_table_names", {})
        return {t: names.get(t, t) for t in self.tp.tables}

    @contextlib.contextmanager
    def _shadowed(self) -> Iterator[Shadow]:
        """Point the handlers and the checkpoint key at fresh shadow names, then back."""
        token = secrets.token_hex(4)
        shadow = Shadow(
            key=f"{self.key}#rebuild",
            live_key=self.key,
            names={t: f"{t}__r{token}" for t in self.tp.tables},
            live_names=self._names(),
        )
        previous: dict[str, str] = dict(self.tp.__dict__.get("_table_names", {}))
        self.tp.__dict__["_table_names"] = shadow.names
        self.key = shadow.key
        try:
            yield shadow
        finally:
            self.key = shadow.live_key
            self.tp.__dict__["_table_names"] = previous

    @abc.abstractmethod
    async def _reset(self, shadow: Shadow) -> None:
        """Forget an earlier rebuild's checkpoint; create the shadow tables."""

    @abc.abstractmethod
    async def _swap(self, shadow: Shadow, position: int) -> None:
        """Replace the live tables by the shadow ones and set the live checkpoint, atomically."""

    @abc.abstractmethod
    async def _drop(self, shadow: Shadow) -> None:
        """Remove what a failed rebuild left (shadow tables and checkpoint)."""

    async def rebuild(self, catch_up: Callable[[Driver], Awaitable[int]]) -> int:
        with self._shadowed() as shadow:
            try:
                await self._reset(shadow)
                position = await catch_up(self)
                await self._swap(shadow, position)
                return position
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._drop(shadow)
                raise
