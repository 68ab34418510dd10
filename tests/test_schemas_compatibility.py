"""Compatibility rules, one test each, on schemas generated from msgspec classes and by hand."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import msgspec
import pytest

from tidelog.schemas import Compatibility, compatibility_problems, reader_problems, schema_of

B = Compatibility.BACKWARD
F = Compatibility.FORWARD


def obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required or [], **extra}


def closed(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return obj(props, required, additionalProperties=False)


class V1(msgspec.Struct):
    order_id: str
    total: int


class V2Optional(msgspec.Struct):
    order_id: str
    total: int
    note: str = ""


class V2Required(msgspec.Struct):
    order_id: str
    total: int
    currency: str


class V2Widened(msgspec.Struct):
    order_id: str
    total: float


class V2Narrowed(msgspec.Struct):
    order_id: str
    total: Annotated[int, msgspec.Meta(le=1000)]


def test_generated_schemas_are_closed() -> None:
    schema = schema_of(V1)
    assert schema["$defs"]["V1"]["additionalProperties"] is False


def test_adding_optional_field_with_default_is_backward_compatible() -> None:
    assert compatibility_problems(schema_of(V2Optional), [schema_of(V1)], B) == []


def test_adding_required_field_without_default_is_refused_under_backward() -> None:
    problems = compatibility_problems(schema_of(V2Required), [schema_of(V1)], B)
    assert len(problems) == 1 and "currency" in problems[0] and "required" in problems[0]


def test_adding_required_field_is_forward_compatible() -> None:
    # old readers (closed model) would refuse the unknown field: FORWARD is refused too
    problems = compatibility_problems(schema_of(V2Required), [schema_of(V1)], F)
    assert any("currency" in p for p in problems)
    # ...but with an open old model, old readers ignore it: FORWARD accepts
    old = obj({"a": {"type": "integer"}}, ["a"])
    new = obj({"a": {"type": "integer"}, "b": {"type": "string"}}, ["a", "b"])
    assert compatibility_problems(new, [old], F) == []
    assert compatibility_problems(new, [old], B) != []


def test_adding_property_to_open_content_model_is_refused() -> None:
    old = obj({"a": {"type": "integer"}})
    new = obj({"a": {"type": "integer"}, "b": {"type": "string"}})
    [problem] = reader_problems(new, old)
    assert "$.b" in problem and "open content model" in problem
    # a new property that accepts anything is safe even in an open model
    assert reader_problems(obj({"a": {"type": "integer"}, "b": {}}), old) == []


def test_adding_property_to_closed_content_model_is_accepted() -> None:
    old = closed({"a": {"type": "integer"}})
    new = closed({"a": {"type": "integer"}, "b": {"type": "string"}})
    assert reader_problems(new, old) == []


def test_removing_property_from_closed_reader_is_refused() -> None:
    old = closed({"a": {"type": "integer"}, "b": {"type": "string"}})
    new = closed({"a": {"type": "integer"}})
    [problem] = reader_problems(new, old)
    assert "$.b" in problem and "closed" in problem
    # with an open new model, old data carrying b is still valid
    assert reader_problems(obj({"a": {"type": "integer"}}), old) == []


def test_deleting_optional_field_is_forward_compatible_and_full_needs_both() -> None:
    assert compatibility_problems(schema_of(V1), [schema_of(V2Optional)], F) == []
    assert compatibility_problems(schema_of(V1), [schema_of(V2Optional)], B) != []
    assert compatibility_problems(schema_of(V1), [schema_of(V2Optional)], Compatibility.FULL)
    assert compatibility_problems(schema_of(V2Optional), [schema_of(V1)], Compatibility.FULL)


def test_type_change_is_refused_and_widening_int_to_number_is_accepted() -> None:
    assert compatibility_problems(schema_of(V2Widened), [schema_of(V1)], B) == []
    narrowing = compatibility_problems(schema_of(V1), [schema_of(V2Widened)], B)
    assert len(narrowing) == 1 and "$.total" in narrowing[0]
    changed = reader_problems(closed({"a": {"type": "string"}}), closed({"a": {"type": "integer"}}))
    assert len(changed) == 1 and "type changed" in changed[0]


def test_narrowing_a_bound_is_refused_and_loosening_accepted() -> None:
    problems = compatibility_problems(schema_of(V2Narrowed), [schema_of(V1)], B)
    assert len(problems) == 1 and "maximum" in problems[0]
    assert compatibility_problems(schema_of(V1), [schema_of(V2Narrowed)], B) == []
    for key, old, new in [
        ("minimum", 0, 1),
        ("maxLength", 10, 5),
        ("minLength", 1, 2),
        ("maxItems", 3, 2),
        ("exclusiveMaximum", 10, 9),
    ]:
        assert reader_problems({key: new}, {key: old}), key
        assert reader_problems({key: old}, {key: new}) == [], key
    assert reader_problems({"type": "string", "pattern": "^a"}, {"type": "string"})
    assert reader_problems({"type": "string"}, {"type": "string", "pattern": "^a"}) == []


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Color3(enum.Enum):
    RED = "red"
    BLUE = "blue"
    GREEN = "green"


class WithColor(msgspec.Struct):
    color: Color


class WithColor3(msgspec.Struct):
    color: Color3


class WithLiteral(msgspec.Struct):
    kind: Literal["a", "b"]


class WithLiteralNarrow(msgspec.Struct):
    kind: Literal["a"]


def test_narrowing_an_enum_is_refused_and_growing_it_is_backward() -> None:
    assert compatibility_problems(schema_of(WithColor3), [schema_of(WithColor)], B) == []
    [problem] = compatibility_problems(schema_of(WithColor), [schema_of(WithColor3)], B)
    assert "enum narrowed" in problem and "green" in problem
    assert compatibility_problems(schema_of(WithLiteralNarrow), [schema_of(WithLiteral)], B)
    assert compatibility_problems(schema_of(WithLiteral), [schema_of(WithLiteralNarrow)], B) == []


class Line(msgspec.Struct):
    qty: int


class LineStr(msgspec.Struct):
    qty: str


class Order1(msgspec.Struct):
    lines: list[Line]


class Order2(msgspec.Struct):
    lines: list[LineStr]


class Opt(msgspec.Struct):
    a: int | None = None


class NotOpt(msgspec.Struct):
    a: int = 0


def test_unions_removing_a_branch_narrows() -> None:
    [problem] = compatibility_problems(schema_of(NotOpt), [schema_of(Opt)], B)
    assert "$.a" in problem and "null" in problem
    assert compatibility_problems(schema_of(Opt), [schema_of(NotOpt)], B) == []


def test_optional_becoming_required_is_refused() -> None:
    old = closed({"a": {"type": "integer"}})
    new = closed({"a": {"type": "integer"}}, ["a"])
    [problem] = reader_problems(new, old)
    assert "became required" in problem


def test_nested_structs_and_arrays_are_checked() -> None:
    [problem] = reader_problems(schema_of(Order2), schema_of(Order1))
    assert problem.startswith("$.lines[].qty")


def test_closing_an_open_model_is_refused() -> None:
    problems = reader_problems(closed({"a": {}}), obj({"a": {}}))
    assert any("closed" in p for p in problems)


@pytest.mark.parametrize(
    ("mode", "ok"),
    [
        (Compatibility.BACKWARD, True),
        (Compatibility.BACKWARD_TRANSITIVE, False),
        (Compatibility.NONE, True),
    ],
)
def test_transitive_modes_check_every_version(mode: Compatibility, ok: bool) -> None:
    # v3 reads v2 data (max 20) but not v1 data (max 30)
    v1 = closed({"a": {"type": "string", "maxLength": 30}})
    v2 = closed({"a": {"type": "string", "maxLength": 20}})
    v3 = closed({"a": {"type": "string", "maxLength": 20}})
    problems = compatibility_problems(v3, [v1, v2], mode)
    assert (problems == []) is ok


def test_forward_transitive_and_full_transitive() -> None:
    v1 = closed({"a": {"type": "integer", "maximum": 10}})
    v2 = closed({"a": {"type": "integer", "maximum": 100}})
    v3 = closed({"a": {"type": "integer", "maximum": 50}})
    # old readers must read new data: v3 <= 50 breaks v1's <= 10 but not v2's <= 100
    assert compatibility_problems(v3, [v1, v2], Compatibility.FORWARD) == []
    assert compatibility_problems(v3, [v1, v2], Compatibility.FORWARD_TRANSITIVE)
    assert compatibility_problems(v3, [v1, v2], Compatibility.FULL)  # v3 cannot read v2
    v4 = closed({"a": {"type": "integer", "maximum": 10}})
    assert compatibility_problems(v4, [v1], Compatibility.FULL_TRANSITIVE) == []
    assert compatibility_problems(v4, [v1, v2], Compatibility.FULL_TRANSITIVE)


def test_no_previous_version_is_always_compatible() -> None:
    assert compatibility_problems(schema_of(V1), [], Compatibility.FULL_TRANSITIVE) == []
