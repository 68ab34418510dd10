"""Typed events: the @event decorator, encode/decode, upcasting on read."""

from __future__ import annotations

from uuid import uuid4

import msgspec
import pytest

import tidelog
from tidelog.codec import EventRegistry, event_type_of


@pytest.fixture
def registry() -> EventRegistry:
    return EventRegistry()


async def test_encode_decode_roundtrip_through_a_store(registry: EventRegistry) -> None:
    @tidelog.event("OrderPlaced", version=1, registry=registry)
    class OrderPlaced(msgspec.Struct):
        order_id: str
        total: int

    eid = uuid4()
    new = registry.encode(OrderPlaced("o-1", 100), id=eid, metadata={"correlationid": "c"})
    assert (new.type, new.schema_version, new.id) == ("OrderPlaced", 1, eid)
    assert new.metadata == {"correlationid": "c"}
    async with tidelog.connect("memory://") as store:
        await store.append("order-1", [new])
        [recorded] = [e async for e in store.read_stream("order-1")]
    assert registry.decode(recorded) == OrderPlaced("o-1", 100)
    assert event_type_of(OrderPlaced) == ("OrderPlaced", 1)


def test_default_registry_and_public_names() -> None:
    @tidelog.event("CodecTestDefaultRegistry", version=3)
    class Thing(msgspec.Struct):
        x: int

    new = tidelog.encode(Thing(1))
    assert (new.type, new.schema_version) == ("CodecTestDefaultRegistry", 3)
    assert tidelog.decode(new) == Thing(1)


def test_upcasters_chain_to_newest_version(registry: EventRegistry) -> None:
    @tidelog.event("Renamed", version=1, registry=registry)
    class V1(msgspec.Struct):
        name: str

    @tidelog.event("Renamed", version=3, registry=registry)
    class V3(msgspec.Struct):
        first: str
        last: str
        vip: bool

    @registry.upcaster("Renamed", 1)
    def one_to_two(d: dict[str, object]) -> dict[str, object]:
        first, _, last = str(d.pop("name")).partition(" ")
        return {"first": first, "last": last}

    @registry.upcaster("Renamed", 2)
    def two_to_three(d: dict[str, object]) -> dict[str, object]:
        return {**d, "vip": False}

    old = registry.encode(V1("Ada Lovelace"))
    assert old.schema_version == 1
    assert registry.decode(old) == V3("Ada", "Lovelace", False)
    # the stored bytes are untouched: upcasting happens on read only
    assert msgspec.json.decode(old.data) == {"name": "Ada Lovelace"}


def test_missing_upcaster_step_is_an_error(registry: EventRegistry) -> None:
    @tidelog.event("Gap", version=3, registry=registry)
    class V3(msgspec.Struct):
        a: int

    old = tidelog.NewEvent(type="Gap", data=b'{"a": 1}', schema_version=1)
    with pytest.raises(tidelog.InvalidEvent):
        registry.decode(old)


def test_registered_old_class_converts_without_upcaster(registry: EventRegistry) -> None:
    @tidelog.event("Grow", version=1, registry=registry)
    class V1(msgspec.Struct):
        a: int

    @tidelog.event("Grow", version=2, registry=registry)
    class V2(msgspec.Struct):
        a: int
        b: int = 0

    assert registry.decode(registry.encode(V1(5))) == V2(5, 0)


def test_newer_version_than_known_is_refused(registry: EventRegistry) -> None:
    @tidelog.event("Future", version=1, registry=registry)
    class V1(msgspec.Struct):
        a: int

    with pytest.raises(tidelog.InvalidEvent):
        registry.decode(tidelog.NewEvent(type="Future", data=b'{"a":1}', schema_version=2))


def test_unknown_types_and_classes(registry: EventRegistry) -> None:
    class Unregistered(msgspec.Struct):
        a: int

    with pytest.raises(tidelog.UnknownEventType):
        registry.encode(Unregistered(1))
    with pytest.raises(tidelog.UnknownEventType) as info:
        registry.decode(tidelog.NewEvent(type="Nope", data=b"{}"))
    assert info.value.type_name == "Nope"


def test_bad_data_and_bad_registrations(registry: EventRegistry) -> None:
    @tidelog.event("Strict", registry=registry)
    class Strict(msgspec.Struct):
        a: int

    with pytest.raises(tidelog.InvalidEvent):
        registry.decode(tidelog.NewEvent(type="Strict", data=b'{"a": "x"}'))
    with pytest.raises(tidelog.InvalidEvent):
        registry.decode(tidelog.NewEvent(type="Strict", data=b"not json"))

    with pytest.raises(tidelog.InvalidInput):

        @tidelog.event("Strict", version=1, registry=registry)
        class Clash(msgspec.Struct):
            b: int

    with pytest.raises(tidelog.InvalidInput):
        registry.register(int, "X")  # type: ignore[type-var]
    with pytest.raises(tidelog.InvalidInput):
        registry.register(Strict, "X", version=0)

    def first(d: dict[str, object]) -> dict[str, object]:
        return d

    def second(d: dict[str, object]) -> dict[str, object]:
        return d

    registry.add_upcaster("Strict", 1, first)
    with pytest.raises(tidelog.InvalidInput):
        registry.add_upcaster("Strict", 1, second)


def test_redefining_a_class_of_the_same_name_replaces_it(registry: EventRegistry) -> None:
    """A module reload defines the classes again: that must not be an error."""

    def define() -> type[msgspec.Struct]:
        @tidelog.event("Reloaded", registry=registry)
        class Reloaded(msgspec.Struct):
            a: int

        return Reloaded

    old, new = define(), define()
    assert old is not new
    assert isinstance(registry.decode(registry.encode(old(1))), new)
