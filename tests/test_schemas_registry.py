"""The schema registry stored in the store, and write-time validation."""

from __future__ import annotations

from typing import Annotated

import msgspec
import pytest

import tidelog
from tidelog.codec import EventRegistry
from tidelog.schemas import (
    SCHEMAS_STREAM,
    Compatibility,
    SchemaRegistry,
    ValidatingStore,
    schema_of,
)

REG = EventRegistry()


@tidelog.event("ItemAdded", version=1, registry=REG)
class ItemAddedV1(msgspec.Struct):
    sku: str
    qty: Annotated[int, msgspec.Meta(ge=1)]


@tidelog.event("ItemAdded", version=2, registry=REG)
class ItemAddedV2(msgspec.Struct):
    sku: str
    qty: Annotated[int, msgspec.Meta(ge=1)]
    gift: bool = False


class ItemAddedBad(msgspec.Struct):
    sku: str
    qty: int
    price: int  # required, no default


@pytest.fixture
def store(contract_store: tidelog.Store) -> tidelog.Store:
    """The registry lives in the store: the same tests on several engines."""
    return contract_store


async def test_register_versions_ids_and_storage_in_the_store(store: tidelog.Store) -> None:
    schemas = SchemaRegistry(store)
    v1 = await schemas.register_event(ItemAddedV1, registry=REG)
    v2 = await schemas.register_event(ItemAddedV2, registry=REG)
    assert (v1.subject, v1.version, v1.id) == ("ItemAdded", 1, 1)
    assert (v2.version, v2.id) == (2, 2)
    # idempotent: the same schema again returns the same version
    assert await schemas.register_event(ItemAddedV2, registry=REG) == v2
    # a second registry object on the same store sees everything (state is in the store)
    other = SchemaRegistry(store)
    assert await other.subjects() == ["ItemAdded"]
    assert await other.versions("ItemAdded") == [1, 2]
    assert (await other.get("ItemAdded")).schema == schema_of(ItemAddedV2)
    assert (await other.get("ItemAdded", 1)).schema == schema_of(ItemAddedV1)
    assert await other.get_by_id(2) == v2
    stored = [e async for e in store.read_stream(SCHEMAS_STREAM)]
    assert len(stored) == 2
    with pytest.raises(tidelog.UnknownEventType):
        await other.get("Nope")
    with pytest.raises(tidelog.UnknownEventType):
        await other.get("ItemAdded", 7)


async def test_incompatible_schema_is_refused_with_every_problem(store: tidelog.Store) -> None:
    schemas = SchemaRegistry(store)
    await schemas.register_event(ItemAddedV1, registry=REG)
    problems = await schemas.check("ItemAdded", schema_of(ItemAddedBad))
    assert problems and any("price" in p for p in problems)
    with pytest.raises(tidelog.IncompatibleSchema) as info:
        await schemas.register("ItemAdded", schema_of(ItemAddedBad))
    assert info.value.mode == "BACKWARD" and info.value.subject == "ItemAdded"
    assert any("$.price" in p for p in info.value.problems)
    assert isinstance(info.value, tidelog.InvalidInput)
    assert await schemas.versions("ItemAdded") == [1]


async def test_compatibility_modes_per_subject_and_global(store: tidelog.Store) -> None:
    schemas = SchemaRegistry(store)
    assert await schemas.compatibility() is Compatibility.BACKWARD
    await schemas.register_event(ItemAddedV1, registry=REG)
    await schemas.set_compatibility("NONE", subject="ItemAdded")
    assert await schemas.compatibility("ItemAdded") is Compatibility.NONE
    assert await schemas.compatibility("Other") is Compatibility.BACKWARD
    bad = await schemas.register("ItemAdded", schema_of(ItemAddedBad))
    assert bad.version == 2
    await schemas.set_compatibility(Compatibility.FULL)
    assert await SchemaRegistry(store).compatibility("Other") is Compatibility.FULL
    with pytest.raises(tidelog.InvalidInput):
        await schemas.set_compatibility("SOMETIMES")


async def test_versions_must_increase(store: tidelog.Store) -> None:
    schemas = SchemaRegistry(store)
    await schemas.register_event(ItemAddedV2, registry=REG)
    with pytest.raises(tidelog.InvalidInput):
        await schemas.register_event(ItemAddedV1, registry=REG)


async def test_concurrent_registrations_recheck_instead_of_both_winning(
    store: tidelog.Store,
) -> None:
    a, b = SchemaRegistry(store), SchemaRegistry(store)
    await a.register("S", {"type": "object", "properties": {}, "additionalProperties": False})
    await b.refresh()
    await a.register(
        "S",
        {"type": "object", "properties": {"x": {"type": "integer"}}, "additionalProperties": False},
    )
    # b's view is stale; its append conflicts, it re-reads and registers as version 3
    third = await b.register(
        "S",
        {
            "type": "object",
            "properties": {"x": {"type": "integer"}, "y": {"type": "string"}},
            "additionalProperties": False,
        },
    )
    assert third.version == 3 and third.id == 3


async def test_write_time_validation_names_the_field(store: tidelog.Store) -> None:
    schemas = SchemaRegistry(store)
    await schemas.register_event(ItemAddedV1, registry=REG)
    checked = ValidatingStore(store, schemas)
    await checked.append("cart-1", [REG.encode(ItemAddedV1("a", 2))])

    bad_qty = tidelog.NewEvent(type="ItemAdded", data=b'{"sku": "a", "qty": 0}')
    with pytest.raises(tidelog.SchemaViolation) as info:
        await checked.append("cart-1", [bad_qty])
    assert (info.value.path, info.value.subject, info.value.version) == ("$.qty", "ItemAdded", 1)
    assert isinstance(info.value, tidelog.InvalidEvent)

    missing = tidelog.NewEvent(type="ItemAdded", data=b'{"qty": 1}')
    with pytest.raises(tidelog.SchemaViolation) as info:
        await checked.append_many({"cart-2": tidelog.AppendRequest([missing])})
    assert info.value.path == "$.sku"

    extra = tidelog.NewEvent(type="ItemAdded", data=b'{"sku": "a", "qty": 1, "zzz": 1}')
    with pytest.raises(tidelog.SchemaViolation) as info:
        await checked.append("cart-1", [extra])
    assert info.value.path == "$.zzz"

    unregistered_version = tidelog.NewEvent(type="ItemAdded", data=b"{}", schema_version=5)
    with pytest.raises(tidelog.SchemaViolation):
        await checked.append("cart-1", [unregistered_version])

    # types without a subject pass; nothing invalid was written
    await checked.append("cart-1", [tidelog.NewEvent(type="Free", data=b"[1]")])
    assert [e.type async for e in checked.read_stream("cart-1")] == ["ItemAdded", "Free"]


async def test_validating_store_is_a_full_store(store: tidelog.Store) -> None:
    checked = ValidatingStore(store, SchemaRegistry(store))
    await checked.append("x-1", [tidelog.NewEvent(type="A")])
    assert await checked.last_position() == 1
    assert [s.name async for s in checked.list_streams("x")] == ["x-1"]
    assert [e.position async for e in checked.read_all()] == [1]
    m = await checked.join_group("g", "x", "m1")
    await checked.commit(
        "g",
        "x",
        m.partitions[0],
        1,
        member="m1",
        generation=m.generation,
        appends={"y-1": tidelog.AppendRequest([tidelog.NewEvent(type="B")])},
    )
    assert await checked.checkpoints("g", "x") == {m.partitions[0]: 1}
    await checked.heartbeat("g", "x", "m1")
    assert await checked.describe_group("g", "x") is not None
    assert await checked.list_groups() == [("g", "x")]
    await checked.leave_group("g", "x", "m1")
    await checked.delete_stream("x-1")
    assert checked.partition_count == store.partition_count
    await checked.close()
    with pytest.raises(tidelog.StoreClosed):
        await store.last_position()


async def test_malformed_schema_is_refused_before_any_check(store: tidelog.Store) -> None:
    registry = SchemaRegistry(store)
    await registry.register("Thing", {"type": "object", "properties": {"a": {"type": "string"}}})
    for bad in ({"type": False}, {"maxLength": [None]}, {"properties": {"a": {"minimum": "x"}}}):
        with pytest.raises(tidelog.InvalidInput, match="invalid JSON Schema"):
            await registry.register("Thing", bad)
    assert await registry.versions("Thing") == [1]


EVIL_PATTERNS = [
    "((",  # does not compile: re.error at validation, once
    r"^(a+)+$",  # nested quantifiers: exponential backtracking
    r"(a|aa)*$",  # overlapping alternatives under a quantifier
    r"(x+x+)+y",
    r"(a?){20}a{20}",  # the classic: 2**20 ways to split the a's
    r"(a)\1",  # backreference
    r"(?=a)a",  # lookaround
    "a" * 1001,  # over the length cap
]


@pytest.mark.parametrize("pattern", EVIL_PATTERNS)
async def test_invalid_or_unbounded_patterns_are_refused_at_registration(
    store: tidelog.Store, pattern: str
) -> None:
    """Issue #18 item 11: a tenant's `pattern` runs on every write, so one that
    does not compile or can backtrack without bound is refused up front."""
    registry = SchemaRegistry(store)
    for schema in (
        {"type": "string", "pattern": pattern},
        {"type": "object", "properties": {"a": {"type": "string", "pattern": pattern}}},
        {"type": "object", "patternProperties": {pattern: {"type": "string"}}},
    ):
        with pytest.raises(tidelog.InvalidInput, match="invalid JSON Schema"):
            await registry.register("Thing", schema)
    assert await registry.versions("Thing") == []


async def test_patterns_match_and_cost_stays_bounded(store: tidelog.Store) -> None:
    registry = SchemaRegistry(store)
    await registry.register(
        "Code",
        {
            "type": "object",
            "properties": {
                "code": {"type": "string", "pattern": r"^[A-Z]{3}-\d+$"},
                "tag": {"type": "string", "pattern": r"[a-z]+-[0-9]+$"},
            },
        },
    )
    checked = ValidatingStore(store, registry)
    await checked.append("c-1", [tidelog.NewEvent(type="Code", data=b'{"code": "ABC-12"}')])
    with pytest.raises(tidelog.SchemaViolation, match="must match") as info:
        await checked.append("c-1", [tidelog.NewEvent(type="Code", data=b'{"code": "abc-12"}')])
    assert info.value.path == "$.code"
    # a long value against a pattern whose backtracking grows with its length
    # is refused by its length, without running the regex
    long_tag = ("a" * 50_000 + "!").encode()
    with pytest.raises(tidelog.SchemaViolation, match="too long") as info:
        await checked.append(
            "c-1", [tidelog.NewEvent(type="Code", data=b'{"tag": "' + long_tag + b'"}')]
        )
    assert info.value.path == "$.tag"
    # an anchored single quantifier is linear: long values are still checked
    long_code = b"ABC-" + b"1" * 100_000
    await checked.append(
        "c-1", [tidelog.NewEvent(type="Code", data=b'{"code": "' + long_code + b'"}')]
    )


def test_a_stored_schema_with_a_bad_pattern_is_a_violation_not_a_crash() -> None:
    """A schema registered before the check existed still validates cleanly."""
    from tidelog.schemas.validation import first_error

    for pattern in ("((", r"^(a+)+$"):
        err = first_error({"type": "string", "pattern": pattern}, "a" * 40 + "!")
        assert err is not None and err[0] == "$" and "refused" in err[1]
