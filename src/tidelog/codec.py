"""Typed events: `msgspec.Struct` classes in, `NewEvent` out, and back.

    @tidelog.event("OrderPlaced", version=2)
    class OrderPlaced(msgspec.Struct):
        order_id: str
        total: int

    new = tidelog.encode(OrderPlaced("o-1", 100))        # -> tidelog.NewEvent
    placed = tidelog.decode(recorded)                    # -> OrderPlaced

The decorator records the event's *type name* (what is stored, so renaming the
Python class never breaks old events) and its *schema version*. Older stored
versions are lifted to the newest class by upcasters, functions from version n
to n + 1 chained on read; stored events are never rewritten.

Registrations live in an `EventRegistry`. A default registry serves the
decorator and the module functions; tests and libraries that need isolation
create their own and pass `registry=` everywhere (decorator, encode, decode,
repositories, projections).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol, TypeVar, runtime_checkable
from uuid import UUID

import msgspec

from tidelog.errors import InvalidEvent, InvalidInput, UnknownEventType
from tidelog.model import MAX_TYPE_LENGTH, NewEvent, RecordedEvent, new_event_id

__all__ = [
    "DEFAULT_REGISTRY",
    "SEALED_PREFIX",
    "EventCipher",
    "EventRegistry",
    "Upcaster",
    "decode",
    "encode",
    "event",
    "event_type_of",
    "upcaster",
]

S = TypeVar("S", bound=msgspec.Struct)
T = TypeVar("T", bound=type[msgspec.Struct])

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
"""Lifts one event's JSON object from schema version n to n + 1."""

_ENCODER: Final = msgspec.json.Encoder()

SEALED_PREFIX: Final = "tidelog:sealed:"
"""Strings starting with this are values sealed by an `EventCipher` (encrypted fields)."""
_ATTR: Final = "__tidelog_event__"


class _Registration(msgspec.Struct, frozen=True):
    type_name: str
    version: int
    cls: type[msgspec.Struct]


class EventRegistry:
    """Event classes by type name and version, and the upcasters between versions.

    One type name has exactly one *current* class (the highest registered
    version); decoding always returns an instance of it. Older versions reach
    it through a complete chain of upcasters 1 -> 2 -> ... -> current, or, for
    versions whose class is still registered and whose fields are compatible,
    through plain conversion when no upcaster is registered for that step.
    """

    def __init__(self) -> None:
        self._current: dict[str, _Registration] = {}
        self._by_class: dict[type[msgspec.Struct], _Registration] = {}
        self._versions: dict[tuple[str, int], type[msgspec.Struct]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self._decoders: dict[type[msgspec.Struct], msgspec.json.Decoder[Any]] = {}

    # ------------------------------------------------------------------ registration

    def register(self, cls: T, type_name: str, version: int = 1) -> T:
        """Register `cls` as version `version` of event type `type_name`."""
        if not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)):
            raise InvalidInput(f"@event needs a msgspec.Struct class, got {cls!r}")
        if not isinstance(type_name, str) or not type_name or len(type_name) > MAX_TYPE_LENGTH:
            raise InvalidInput(f"invalid event type name {type_name!r}")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InvalidInput(f"event schema version must be an int >= 1, got {version!r}")
        reg = _Registration(type_name, version, cls)
        current = self._current.get(type_name)
        same = self._versions.get((type_name, version))
        if same is not None and same is not cls and same.__qualname__ != cls.__qualname__:
            raise InvalidInput(
                f"event type {type_name!r} version {version} is already registered "
                f"to {same.__qualname__}"
            )
        # a class of the same name again is a redefinition (a module reload): it replaces
        if current is None or version >= current.version:
            self._current[type_name] = reg
        self._by_class[cls] = reg
        self._versions[(type_name, version)] = cls
        return cls

    def add_upcaster(self, type_name: str, from_version: int, fn: Upcaster) -> Upcaster:
        """Register `fn` to lift `type_name` events from `from_version` to `from_version + 1`."""
        key = (type_name, from_version)
        existing = self._upcasters.get(key)
        if existing is not None and getattr(existing, "__qualname__", None) != getattr(
            fn, "__qualname__", ""
        ):  # the same function again is a module reload: it replaces
            raise InvalidInput(f"an upcaster for {type_name!r} v{from_version} already exists")
        self._upcasters[key] = fn
        return fn

    def upcaster(self, type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator form of `add_upcaster`."""

        def deco(fn: Upcaster) -> Upcaster:
            return self.add_upcaster(type_name, from_version, fn)

        return deco

    # ------------------------------------------------------------------ lookup

    def type_of(self, cls: type[msgspec.Struct]) -> tuple[str, int]:
        """The (type name, version) a class was registered as."""
        reg = self._by_class.get(cls)
        if reg is None:
            raise UnknownEventType(cls.__qualname__)
        return reg.type_name, reg.version

    def current(self, type_name: str) -> tuple[type[msgspec.Struct], int]:
        """The newest class and version of a type name."""
        reg = self._current.get(type_name)
        if reg is None:
            raise UnknownEventType(type_name)
        return reg.cls, reg.version

    def class_for(self, type_name: str, version: int) -> type[msgspec.Struct] | None:
        """The class registered for exactly this version, if any."""
        return self._versions.get((type_name, version))

    def knows(self, type_name: str) -> bool:
        return type_name in self._current

    def types(self) -> dict[str, tuple[type[msgspec.Struct], int]]:
        """Every registered type name with its current class and version."""
        return {name: (r.cls, r.version) for name, r in sorted(self._current.items())}

    # ------------------------------------------------------------------ codec

    def encode(
        self,
        struct: msgspec.Struct,
        *,
        id: UUID | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> NewEvent:
        """A `NewEvent` carrying `struct` as JSON, with its type name and schema version."""
        type_name, version = self.type_of(type(struct))
        return NewEvent(
            type=type_name,
            data=_ENCODER.encode(struct),
            metadata=dict(metadata or {}),
            id=id if id is not None else new_event_id(),
            schema_version=version,
        )

    def upcast(self, type_name: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
        """Lift a JSON object from `version` to the current version of `type_name`."""
        _, current = self.current(type_name)
        if version > current:
            raise InvalidEvent(
                f"event type {type_name!r} has schema version {version}, newer than the "
                f"newest known ({current}): upgrade this reader"
            )
        for v in range(version, current):
            fn = self._upcasters.get((type_name, v))
            if fn is not None:
                data = fn(data)
            elif self.class_for(type_name, v) is None:
                raise InvalidEvent(
                    f"no upcaster from {type_name!r} v{v} to v{v + 1} and no class for v{v}"
                )
        return data

    def decode_data(self, type_name: str, version: int, data: bytes) -> msgspec.Struct:
        """Decode raw event data of `type_name`/`version` into the current class."""
        cls, current = self.current(type_name)
        try:
            if version == current:
                decoded: msgspec.Struct = self._decoder(cls).decode(data)
                return decoded
            raw = msgspec.json.decode(data)
            if not isinstance(raw, dict):
                raise InvalidEvent(f"{type_name!r} data is not a JSON object")
            return msgspec.convert(self.upcast(type_name, version, raw), cls)
        except msgspec.ValidationError as exc:
            raise InvalidEvent(f"cannot decode {type_name!r} v{version}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise InvalidEvent(f"{type_name!r} data is not valid JSON: {exc}") from None

    def decode(self, recorded: RecordedEvent | NewEvent) -> msgspec.Struct:
        """The current-version Struct of a stored (or new) event."""
        return self.decode_data(recorded.type, recorded.schema_version, recorded.data)

    def _decoder(self, cls: type[msgspec.Struct]) -> msgspec.json.Decoder[Any]:
        dec = self._decoders.get(cls)
        if dec is None:
            dec = self._decoders[cls] = msgspec.json.Decoder(cls)
        return dec


DEFAULT_REGISTRY: Final = EventRegistry()
"""The registry `@tidelog.event` uses when none is given."""


def event(
    type_name: str, version: int = 1, *, registry: EventRegistry | None = None
) -> Callable[[T], T]:
    """Class decorator: register a `msgspec.Struct` as an event type and schema version."""

    def deco(cls: T) -> T:
        (registry or DEFAULT_REGISTRY).register(cls, type_name, version)
        setattr(cls, _ATTR, (type_name, version))
        return cls

    return deco


def upcaster(
    type_name: str, from_version: int, *, registry: EventRegistry | None = None
) -> Callable[[Upcaster], Upcaster]:
    """Decorator: a function lifting `type_name` data from `from_version` to the next."""
    return (registry or DEFAULT_REGISTRY).upcaster(type_name, from_version)


def event_type_of(cls: type[msgspec.Struct]) -> tuple[str, int]:
    """The (type name, version) given to a class by `@event`, whatever the registry."""
    found: tuple[str, int] | None = getattr(cls, _ATTR, None)
    if found is None:
        raise UnknownEventType(cls.__qualname__)
    return found


def encode(
    struct: msgspec.Struct,
    *,
    id: UUID | None = None,
    metadata: Mapping[str, Any] | None = None,
    registry: EventRegistry | None = None,
) -> NewEvent:
    """`struct` as a `tidelog.NewEvent` (JSON data, type name, schema version)."""
    return (registry or DEFAULT_REGISTRY).encode(struct, id=id, metadata=metadata)


def decode(
    recorded: RecordedEvent | NewEvent, *, registry: EventRegistry | None = None
) -> msgspec.Struct:
    """The stored event as its newest Struct class, upcasting older versions."""
    return (registry or DEFAULT_REGISTRY).decode(recorded)


@runtime_checkable
class EventCipher(Protocol):
    """Transforms event data on its way into and out of the store.

    `tidelog.security.encryption.PersonalData` is one: it encrypts fields marked
    personal on the way in and decrypts them (or shows a placeholder once the
    subject was forgotten) on the way out. Repositories and projection runners
    take one as `cipher=`.
    """

    async def seal(self, stream: str, event: NewEvent) -> NewEvent:
        """The event as it must be stored in `stream`."""
        ...

    async def unseal(self, event: RecordedEvent) -> RecordedEvent:
        """The stored event with its data readable again."""
        ...
