"""Avro subjects of the registry: parsing, canonical form, and the compatibility table of
docs/schema-evolution.md, decided by the Apache `avro` package's reader/writer checker."""

from __future__ import annotations

from typing import Any

import pytest

import tidelog
from tidelog.schemas import Compatibility, SchemaRegistry
from tidelog.schemas.avro import avro_problems, parse_avro


def record(*fields: dict[str, Any], name: str = "R", **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": list(fields), **extra}


A = {"name": "a", "type": "int"}
B_DEFAULT = {"name": "b", "type": "string", "default": ""}
B_REQUIRED = {"name": "b", "type": "string"}
COLOR = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN"]}

# (old, new, backward ok, forward ok): the table of docs/schema-evolution.md
TABLE = [
    ("add a field with a default", record(A), record(A, B_DEFAULT), True, True),
    ("add a field without a default", record(A), record(A, B_REQUIRED), False, True),
    ("remove a field with a default", record(A, B_DEFAULT), record(A), True, True),
    ("remove a field without a default", record(A, B_REQUIRED), record(A), True, False),
    ("promote int to long", record(A), record({"name": "a", "type": "long"}), True, False),
    (
        "string to bytes (each reads the other)",
        record(B_REQUIRED),
        record({"name": "b", "type": "bytes"}),
        True,
        True,
    ),
    (
        "add an enum symbol",
        record({"name": "c", "type": COLOR}),
        record({"name": "c", "type": {**COLOR, "symbols": ["RED", "GREEN", "BLUE"]}}),
        True,
        False,
    ),
    (
        "add a union branch",
        record({"name": "a", "type": ["null", "int"]}),
        record({"name": "a", "type": ["null", "int", "string"]}),
        True,
        False,
    ),
    ("rename the record", record(A), record(A, name="S"), False, False),
    ("rename a field", record(A), record({"name": "z", "type": "int"}), False, False),
    (
        "rename with aliases",
        record(A),
        record({"name": "z", "type": "int", "aliases": ["a"]}, name="S", aliases=["R"]),
        True,
        False,
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "backward", "forward"),
    [case[1:] for case in TABLE],
    ids=[case[0] for case in TABLE],
)
def test_the_documented_avro_compatibility_table(
    old: dict[str, Any], new: dict[str, Any], backward: bool, forward: bool
) -> None:
    old, new = parse_avro(old), parse_avro(new)
    assert (avro_problems(new, [old], Compatibility.BACKWARD) == []) is backward
    assert (avro_problems(new, [old], Compatibility.FORWARD) == []) is forward
    assert (avro_problems(new, [old], Compatibility.FULL) == []) is (backward and forward)
    assert avro_problems(new, [old], Compatibility.NONE) == []


def test_enum_symbols_added_with_a_default_read_old_readers() -> None:
    """The table's "unless the enum has a default": old readers map unknown symbols to it."""
    old = parse_avro(record({"name": "c", "type": {**COLOR, "default": "RED"}}))
    new = parse_avro(
        record(
            {"name": "c", "type": {**COLOR, "symbols": ["RED", "GREEN", "BLUE"], "default": "RED"}}
        )
    )
    assert avro_problems(new, [old], Compatibility.FULL) == []


def test_problems_name_the_incompatibility_and_where() -> None:
    problems = avro_problems(
        parse_avro(record(A, B_REQUIRED)), [parse_avro(record(A))], Compatibility.BACKWARD
    )
    assert problems == ["backward: reader_field_missing_default_value at /fields/1: b"]


def test_transitive_modes_check_every_version() -> None:
    v1, v2 = parse_avro(record(A)), parse_avro(record(A, B_DEFAULT))
    candidate = parse_avro(record(A, B_REQUIRED))  # reads v2's data, not v1's
    assert avro_problems(candidate, [v1, v2], Compatibility.BACKWARD) == []
    assert avro_problems(candidate, [v1, v2], Compatibility.BACKWARD_TRANSITIVE)
    assert avro_problems(candidate, [v1, v2], Compatibility.FULL_TRANSITIVE)


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "nope"},
        {"type": "record", "name": "R"},
        {"type": "record", "name": "R", "fields": [{"name": "a"}]},
        {"type": "record", "name": "R", "fields": [5]},
        {"type": "record", "name": "R", "fields": {"a": "int"}},
        {"type": "record", "name": "1bad", "fields": []},
        {"type": "record", "name": "R", "fields": [A, A]},
        {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int", "default": "x"}]},
        {"type": "enum", "name": "E", "symbols": ["A", "A"]},
        ["int", "int"],
        5,
        None,
    ],
)
def test_invalid_avro_schemas_are_invalid_input(bad: Any) -> None:
    with pytest.raises(tidelog.InvalidInput, match="invalid Avro schema"):
        parse_avro(bad)


def test_the_stored_form_ignores_layout_but_keeps_defaults_and_docs() -> None:
    one = record(A, {**B_DEFAULT, "doc": "a note"}, namespace="shop")
    other = {"fields": [A, {**B_DEFAULT, "doc": "a note"}], "name": "shop.R", "type": "record"}
    assert parse_avro(one) == parse_avro(other)
    assert parse_avro(one)["fields"][1]["default"] == ""
    assert parse_avro(one)["fields"][1]["doc"] == "a note"
    assert parse_avro("string") == "string"


async def test_registry_keeps_avro_subjects_apart_from_json(
    contract_store: tidelog.Store,
) -> None:
    registry = SchemaRegistry(contract_store)
    v1 = await registry.register("pay-value", record(A), schema_type="AVRO")
    again = await registry.register(
        "pay-value", {"name": "R", "fields": [A], "type": "record"}, schema_type="AVRO"
    )
    assert again == v1 and v1.schema_type == "AVRO"
    with pytest.raises(tidelog.IncompatibleSchema):
        await registry.register("pay-value", record(A, B_REQUIRED), schema_type="AVRO")
    with pytest.raises(tidelog.IncompatibleSchema, match="schema type"):
        await registry.register("pay-value", {"type": "object"})
    assert await registry.lookup("pay-value", record(A), "AVRO") == v1
    assert await registry.lookup("pay-value", record(A, B_DEFAULT), "AVRO") is None
    # an Avro subject named like an event type does not judge its appends
    await registry.register("Paid", record(A), schema_type="AVRO")
    await registry.validate(tidelog.NewEvent(type="Paid", data=b"\x00\x00\x00\x00\x01\x02"))


def test_defaults_of_every_kind_that_match_their_type_are_accepted() -> None:
    fields = [
        {"name": "b", "type": "bytes", "default": "\u00ff\u0000"},
        {"name": "f", "type": {"type": "fixed", "name": "F", "size": 2}, "default": "ab"},
        {"name": "u", "type": ["null", "string"], "default": None},
        {"name": "d", "type": "double", "default": 1},
        {"name": "l", "type": "long", "default": 2**40},
        {"name": "arr", "type": {"type": "array", "items": "int"}, "default": []},
        {"name": "m", "type": {"type": "map", "values": "bytes"}, "default": {"k": "v"}},
        {"name": "e", "type": COLOR, "default": "RED"},
        {"name": "r", "type": record(A, name="Inner"), "default": {"a": 1}},
        {"name": "self", "type": ["null", "R"], "default": None},  # a recursive type
    ]
    assert len(parse_avro(record(*fields))["fields"]) == len(fields)
    # the union's default must match its first branch
    with pytest.raises(tidelog.InvalidInput, match="default"):
        parse_avro(record({"name": "u", "type": ["null", "string"], "default": "x"}))


async def test_a_permanent_delete_forgets_only_soft_deleted_versions(
    contract_store: tidelog.Store,
) -> None:
    registry = SchemaRegistry(contract_store)
    await registry.register("s-value", record(A), schema_type="AVRO")
    await registry.register("s-value", record(A, B_DEFAULT), schema_type="AVRO")
    assert await registry.delete("s-value", permanent=True) == []  # nothing soft-deleted yet
    assert await registry.delete("s-value", 1) == [1]
    assert await registry.delete("s-value", 1) == []  # already
    # the subject at once: only version 1 is soft-deleted, so only it is forgotten
    assert await registry.delete("s-value", permanent=True) == [1]
    assert await registry.versions("s-value", deleted=True) == [2]
    assert (await SchemaRegistry(contract_store).get("s-value")).version == 2
