"""Aggregates, repositories and snapshots, on the engine contract.

An aggregate's state changes only by applying events. Commands check
invariants and `record` new events, which are applied at once and kept as
pending until the repository saves them:

    class Order(Aggregate):
        category = "order"            # stream "order-<id>"
        snapshot_every = 100          # optional
        status: str = "new"           # state: msgspec fields, with defaults
        total: int = 0

        def place(self, total: int) -> None:            # a command
            if self.status != "new":
                raise ValueError("already placed")
            self.record(OrderPlaced(order_id=self.id, total=total))

        @applies
        def _placed(self, e: OrderPlaced) -> None:       # state change
            self.status, self.total = "placed", e.total

Handlers are found by the event's class, never by a string: `@applies` reads
the annotation of the event parameter (or takes the class, `@applies(OrderPlaced)`)
and the table is built once when the class is created.

`Repository(store, Order)` loads (`get(id)`, `get(id, version=n)`,
`get(id, at=datetime)`) and saves with the expected version taken from what
was loaded, so a concurrent edit raises `WrongExpectedVersion`; `save(a, b)`
commits several aggregates in one atomic `append_many`.

Snapshots: with `snapshot_every = N`, a save that crosses a multiple of N
appends (in the same commit) the aggregate's state to the system stream
`$snapshot-<stream>`. A snapshot records the aggregate version it reflects, the
class's `state_version` and a fingerprint of the state's JSON Schema; loading
uses the newest snapshot only when both match the current class (otherwise
`upcast_snapshot` may lift it, or it is ignored and the stream replayed in
full). Snapshots are a cache, never the source of truth.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar, Final, Generic, Self, TypeVar, overload
from uuid import UUID

import msgspec

from tidelog.codec import DEFAULT_REGISTRY, EventCipher, EventRegistry
from tidelog.engines.contract import Engine
from tidelog.errors import AggregateNotFound, InvalidEvent, InvalidInput, StreamDeleted
from tidelog.model import (
    MAX_NAME_LENGTH,
    NO_STREAM,
    AppendRequest,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    new_event_id,
    validate_stream_name,
)

__all__ = [
    "SNAPSHOT_PREFIX",
    "SNAPSHOT_TYPE",
    "Aggregate",
    "Repository",
    "applies",
    "collect_handlers",
    "snapshot_stream",
]

log = logging.getLogger(__name__)

SNAPSHOT_PREFIX: Final = "$snapshot-"
SNAPSHOT_TYPE: Final = "tidelog.snapshot"

A = TypeVar("A", bound="Aggregate")
E = TypeVar("E", bound=msgspec.Struct)
Handler = Callable[[Any, Any], None]

_APPLIES_ATTR: Final = "__tidelog_applies__"
_INFERRED: Final = object()


@overload
def applies(fn: Callable[[A, E], None], /) -> Callable[[A, E], None]: ...
@overload
def applies(
    event_type: type[msgspec.Struct], /
) -> Callable[[Callable[[A, E], None]], Callable[[A, E], None]]: ...
def applies(arg: Any, /) -> Any:
    """Mark a method as the state change for one event class.

    Bare (`@applies`) the class comes from the annotation of the method's
    event parameter; `@applies(OrderPlaced)` names it explicitly (needed when
    the annotation cannot be resolved at class creation, e.g. a local class).
    """
    if isinstance(arg, type):
        event_type = arg

        def mark(fn: Callable[[A, E], None]) -> Callable[[A, E], None]:
            setattr(fn, _APPLIES_ATTR, event_type)
            return fn

        return mark
    setattr(arg, _APPLIES_ATTR, _INFERRED)
    return arg


def _event_type_of_handler(owner: type, fn: Callable[..., Any]) -> type[msgspec.Struct]:
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < 2:
        raise InvalidInput(f"{owner.__qualname__}.{fn.__name__}: @applies takes (self, event)")
    try:
        hints = typing.get_type_hints(fn)
    except NameError as exc:
        raise InvalidInput(
            f"{owner.__qualname__}.{fn.__name__}: cannot resolve the event annotation ({exc}); "
            "use @applies(EventClass)"
        ) from None
    hint = hints.get(params[1].name)
    if not (isinstance(hint, type) and issubclass(hint, msgspec.Struct)):
        raise InvalidInput(
            f"{owner.__qualname__}.{fn.__name__}: annotate the event parameter with a "
            "msgspec.Struct event class, or use @applies(EventClass)"
        )
    return hint


def collect_handlers(cls: type) -> dict[type[msgspec.Struct], Callable[..., Any]]:
    """The event class -> method table of a class's `@applies` methods (subclasses win)."""
    table: dict[type[msgspec.Struct], Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__):
        for fn in vars(klass).values():
            marker = getattr(fn, _APPLIES_ATTR, None)
            if marker is None:
                continue
            event_type = _event_type_of_handler(klass, fn) if marker is _INFERRED else marker
            table[event_type] = fn
    return table


class Aggregate(msgspec.Struct, dict=True, kw_only=True):
    """Base class of aggregates: state as msgspec fields, changed only by events.

    Class settings (plain class attributes, not fields):

    - `category`: the stream category (default: the class name in lower case);
      the stream of aggregate `id` is `f"{category}-{id}"`.
    - `snapshot_every`: take a snapshot each time the version crosses a
      multiple of this (None: never).
    - `state_version`: bump it when the state's meaning changes without its
      JSON Schema changing; old snapshots are then ignored.

    Every state field needs a default: a new aggregate is the class with no
    arguments, and its state is built by applying its events.
    """

    category: ClassVar[str] = ""
    snapshot_every: ClassVar[int | None] = None
    state_version: ClassVar[int] = 1
    _handlers: ClassVar[dict[type[msgspec.Struct], Handler]] = {}
    _fingerprint: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("category"):
            cls.category = cls.__name__.lower()
        validate_stream_name(cls.category)
        if "-" in cls.category:
            raise InvalidInput(f"aggregate category {cls.category!r} must not contain '-'")
        every = cls.snapshot_every
        if every is not None and (
            isinstance(every, bool) or not isinstance(every, int) or every < 1
        ):
            raise InvalidInput(f"{cls.__qualname__}.snapshot_every must be None or an int >= 1")
        cls._handlers = collect_handlers(cls)

    # ------------------------------------------------------------------ identity

    @property
    def id(self) -> str:
        """The aggregate's id (the part of the stream name after the category)."""
        return str(self.__dict__.get("_id", ""))

    @property
    def version(self) -> int | None:
        """The version of the last event applied (None: no events yet)."""
        version: int | None = self.__dict__.get("_version")
        return version

    @property
    def stream(self) -> str:
        return f"{self.category}-{self.id}"

    @property
    def pending(self) -> tuple[msgspec.Struct, ...]:
        """Events recorded since the aggregate was loaded or last saved."""
        return tuple(e for e, _ in self.__dict__.get("_pending", ()))

    @classmethod
    def create(cls, id: str) -> Self:
        """A new aggregate with no events yet (its first save expects NO_STREAM)."""
        agg = cls()
        agg._bind(id, None, None)
        return agg

    def _bind(self, id: str, version: int | None, loaded: int | None) -> None:
        validate_stream_name(f"{self.category}-{id}")
        self.__dict__["_id"] = id
        self.__dict__["_version"] = version
        self.__dict__["_loaded"] = loaded
        self.__dict__["_pending"] = []
        self.__dict__["_historical"] = False

    # ------------------------------------------------------------------ events

    def record(
        self,
        event: msgspec.Struct,
        *,
        id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Apply a new event and keep it for the next save (commands call this)."""
        if self.__dict__.get("_historical"):
            raise InvalidInput("a historical (time-travel) aggregate is read-only")
        if "_id" not in self.__dict__:
            raise InvalidInput("create aggregates with Cls.create(id) or a Repository")
        self._apply(event)
        version = self.version
        self.__dict__["_version"] = 0 if version is None else version + 1
        self.__dict__["_pending"].append((event, (id or new_event_id(), dict(metadata or {}))))

    def _apply(self, event: msgspec.Struct) -> None:
        handler = self._handlers.get(type(event))
        if handler is None:
            raise InvalidEvent(
                f"{type(self).__qualname__} has no @applies handler for {type(event).__qualname__}"
            )
        handler(self, event)

    # ------------------------------------------------------------------ snapshots

    @classmethod
    def state_fingerprint(cls) -> str:
        """A hash of the state's JSON Schema: a changed state shape changes it."""
        cached: str | None = cls.__dict__.get("_fingerprint")
        if cached is None:
            schema = msgspec.json.encode(msgspec.json.schema(cls), order="sorted")
            cached = hashlib.sha256(schema).hexdigest()[:32]
            cls._fingerprint = cached
        return cached

    @classmethod
    def upcast_snapshot(
        cls, state: dict[str, Any], state_version: int, fingerprint: str
    ) -> dict[str, Any] | None:
        """Lift an old snapshot's state to the current shape, or None to ignore it.

        The default ignores every snapshot of another state version or shape,
        so the stream is replayed in full: always correct, only slower.
        """
        return None


class _SnapshotMeta(msgspec.Struct, frozen=True):
    aggregate_version: int
    state_version: int
    fingerprint: str


def snapshot_stream(stream: str) -> str:
    """The system stream that holds the snapshots of `stream`."""
    return SNAPSHOT_PREFIX + stream


class Repository(Generic[A]):
    """Loads and saves aggregates of one class through any `tidelog.Store`.

    `registry` decodes and encodes the event Structs (default: the default
    registry); `cipher` (for example `PersonalData`) seals events on save and
    unseals them on load.
    """

    def __init__(
        self,
        store: Engine,
        aggregate: type[A],
        *,
        registry: EventRegistry | None = None,
        cipher: EventCipher | None = None,
    ) -> None:
        self.store = store
        self.aggregate = aggregate
        self.registry = registry or DEFAULT_REGISTRY
        self.cipher = cipher
        self._decoder = msgspec.json.Decoder(aggregate)

    def create(self, id: str) -> A:
        """A new aggregate; saving it fails with `WrongExpectedVersion` if it exists."""
        return self.aggregate.create(id)

    async def get(self, id: str, *, version: int | None = None, at: datetime | None = None) -> A:
        """Load an aggregate: the newest state, or as of `version` / time `at`.

        Raises `AggregateNotFound` when there is no event (at that point).
        An aggregate loaded with `version` or `at` is read-only.
        """
        if version is not None and at is not None:
            raise InvalidInput("give version or at, not both")
        if version is not None and (isinstance(version, bool) or version < 0):
            raise InvalidInput(f"invalid version {version!r}")
        agg = self.aggregate()
        agg._bind(id, None, None)
        stream = agg.stream
        start = 0
        if at is None:
            snap = await self._load_snapshot(stream, version)
            if snap is not None:
                agg, snap_version = snap
                agg._bind(id, snap_version, snap_version)
                start = snap_version + 1
        limit = None if version is None else version + 1 - start
        if limit is None or limit > 0:
            async for recorded in self.store.read_stream(stream, from_version=start, limit=limit):
                if at is not None and recorded.recorded_at > at:
                    break
                agg._apply(await self._decode(recorded))
                agg.__dict__["_version"] = recorded.version
        if agg.version is None:
            raise AggregateNotFound(stream)
        agg.__dict__["_loaded"] = agg.version
        if version is not None or at is not None:
            agg.__dict__["_historical"] = True
        return agg

    async def get_or_create(self, id: str) -> A:
        try:
            return await self.get(id)
        except AggregateNotFound:
            return self.create(id)

    async def save(self, *aggregates: Aggregate) -> None:
        """Commit the pending events of one or more aggregates atomically.

        The aggregates may be of different classes (an order and its
        customer): all their events go into one `append_many`.

        Each stream's expected version is the version it was loaded at (NO_STREAM
        for a new one), so a concurrent change raises `WrongExpectedVersion` and
        nothing is written. Snapshots due are written in the same commit.
        """
        requests: dict[str, AppendRequest] = {}
        for agg in aggregates:
            if agg.__dict__.get("_historical"):
                raise InvalidInput("a historical (time-travel) aggregate is read-only")
            pending = agg.__dict__.get("_pending", [])
            if not pending:
                continue
            if agg.stream in requests:
                raise InvalidInput(f"{agg.stream!r} given twice to one save")
            loaded: int | None = agg.__dict__["_loaded"]
            expected: ExpectedVersion = NO_STREAM if loaded is None else loaded
            events = [
                await self._seal(agg.stream, self.registry.encode(e, id=eid, metadata=md))
                for e, (eid, md) in pending
            ]
            requests[agg.stream] = AppendRequest(events, expected)
            snap = self._snapshot_due(agg, loaded)
            if snap is not None:
                requests[snapshot_stream(agg.stream)] = AppendRequest([snap])
        if not requests:
            return
        await self.store.append_many(requests)
        for agg in aggregates:
            agg.__dict__["_pending"] = []
            agg.__dict__["_loaded"] = agg.version

    # ------------------------------------------------------------------ internals

    async def _decode(self, recorded: RecordedEvent) -> msgspec.Struct:
        if self.cipher is not None:
            recorded = await self.cipher.unseal(recorded)
        return self.registry.decode(recorded)

    async def _seal(self, stream: str, event: NewEvent) -> NewEvent:
        if self.cipher is None:
            return event
        return await self.cipher.seal(stream, event)

    def _snapshot_due(self, agg: Aggregate, loaded: int | None) -> NewEvent | None:
        every = agg.snapshot_every
        version = agg.version
        if every is None or version is None:
            return None
        before = 0 if loaded is None else (loaded + 1) // every
        if (version + 1) // every <= before:
            return None
        name = snapshot_stream(agg.stream)
        if len(name) > MAX_NAME_LENGTH:
            log.warning("no snapshot for %s: the snapshot stream name is too long", agg.stream)
            return None
        meta = _SnapshotMeta(version, agg.state_version, agg.state_fingerprint())
        return NewEvent(
            type=SNAPSHOT_TYPE,
            data=msgspec.json.encode(agg),
            metadata=msgspec.to_builtins(meta),
        )

    async def _load_snapshot(self, stream: str, at_most: int | None) -> tuple[A, int] | None:
        """The newest usable snapshot at or below `at_most`, with its aggregate version."""
        name = snapshot_stream(stream)
        if len(name) > MAX_NAME_LENGTH:
            return None
        try:
            async for recorded in self.store.read_stream(name, from_version=-1, backwards=True):
                try:
                    meta = msgspec.convert(recorded.metadata, _SnapshotMeta)
                except msgspec.ValidationError:
                    continue
                if at_most is not None and meta.aggregate_version > at_most:
                    continue
                return self._restore(recorded.data, meta)
        except StreamDeleted:
            return None
        return None

    def _restore(self, data: bytes, meta: _SnapshotMeta) -> tuple[A, int] | None:
        cls = self.aggregate
        try:
            if meta.state_version == cls.state_version and meta.fingerprint == (
                cls.state_fingerprint()
            ):
                return self._decoder.decode(data), meta.aggregate_version
            raw = msgspec.json.decode(data)
            lifted = cls.upcast_snapshot(raw, meta.state_version, meta.fingerprint)
            if lifted is None:
                return None
            return msgspec.convert(lifted, cls), meta.aggregate_version
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.warning("ignoring an unreadable snapshot of %s", cls.__qualname__)
            return None
