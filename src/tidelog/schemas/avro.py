"""Avro subjects: parsing, canonical form and compatibility, by the Apache `avro` package.

Confluent clients (`AvroSerializer`) register Avro schemas, so the registry
takes them beside JSON Schema. Nothing here is written by hand: the schema is
parsed by `avro.schema.parse` (which refuses what the Avro specification
refuses: unknown types, bad names, defaults that do not match their type) and
compatibility is decided by `avro.compatibility.ReaderWriterCompatibilityChecker`,
the port of Avro's own Java checker that Confluent's registry uses.

The mode logic is Confluent's: BACKWARD asks whether the new schema, as the
reader, can read data written under the old one; FORWARD the reverse; FULL
both; the `_TRANSITIVE` modes ask it of every live version, the others of the
latest only.

The stored form of an Avro schema is its parsed form written back as JSON
(`to_json`): names are resolved and the layout is the library's, so two texts
of one schema (spacing, key order) compare equal, while docs, defaults and
aliases, which matter to readers, are kept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import avro.compatibility
import avro.errors
import avro.io
import avro.schema

from tidelog.errors import InvalidInput
from tidelog.schemas.compatibility import Compatibility

__all__ = ["avro_problems", "parse_avro"]


def _parse(value: Any) -> avro.schema.Schema:
    try:
        return avro.schema.parse(json.dumps(value))
    except RecursionError:
        raise InvalidInput("invalid Avro schema: nested too deeply") from None
    except (avro.errors.AvroException, TypeError, ValueError, KeyError, AttributeError) as exc:
        # the parser raises a few builtins on shapes it does not expect
        # (a field that is not an object, a `fields` that is not a list)
        raise InvalidInput(f"invalid Avro schema: {exc}") from None


def _datum(schema: avro.schema.Schema, value: Any) -> Any:
    """A field default (JSON) as the Python datum `avro.io.validate` expects.

    JSON writes `bytes` and `fixed` defaults as strings of code points 0-255.
    """
    if isinstance(schema, (avro.schema.BytesDecimalSchema, avro.schema.FixedSchema)) or (
        schema.type == "bytes"
    ):
        try:
            return value.encode("latin-1") if isinstance(value, str) else value
        except UnicodeEncodeError:
            return value
    if isinstance(schema, avro.schema.ArraySchema) and isinstance(value, list):
        return [_datum(schema.items, v) for v in value]
    if isinstance(schema, avro.schema.MapSchema) and isinstance(value, dict):
        return {k: _datum(schema.values, v) for k, v in value.items()}
    if isinstance(schema, avro.schema.RecordSchema) and isinstance(value, dict):
        fields = {f.name: f for f in schema.fields}
        return {k: _datum(fields[k].type, v) if k in fields else v for k, v in value.items()}
    return value


def _field_default_problem(field: avro.schema.Field) -> str | None:
    if not field.has_default:
        return None
    target = field.type
    if isinstance(target, avro.schema.UnionSchema):
        target = target.schemas[0]
    if avro.io.validate(target, _datum(target, field.default)):
        return None
    return f"the default of field {field.name!r} is not a {target.type}"


def _default_problem(schema: avro.schema.Schema, seen: set[str]) -> str | None:
    """The first field whose default does not match its type, or None.

    The parser keeps such defaults; Confluent's registry refuses them (a reader
    would fail on the first record lacking the field). A union's default
    matches its first branch, as the specification says.
    """
    if isinstance(schema, avro.schema.NamedSchema):
        if schema.fullname in seen:
            return None
        seen.add(schema.fullname)
    if isinstance(schema, avro.schema.RecordSchema):
        for field in schema.fields:
            if problem := _field_default_problem(field) or _default_problem(field.type, seen):
                return problem
    elif isinstance(schema, avro.schema.UnionSchema):
        for branch in schema.schemas:
            if problem := _default_problem(branch, seen):
                return problem
    elif isinstance(schema, avro.schema.ArraySchema):
        return _default_problem(schema.items, seen)
    elif isinstance(schema, avro.schema.MapSchema):
        return _default_problem(schema.values, seen)
    return None


def parse_avro(value: Any) -> Any:
    """The stored form of the Avro schema `value` (a decoded JSON value), or `InvalidInput`.

    Defaults are checked against their fields' types too (`_default_problem`).
    """
    parsed = _parse(value)
    try:
        problem = _default_problem(parsed, set())
    except RecursionError:
        raise InvalidInput("invalid Avro schema: nested too deeply") from None
    if problem:
        raise InvalidInput(f"invalid Avro schema: {problem}")
    stored: Any = parsed.to_json()
    # `to_json` returns ordered dicts and lists; plain JSON values are stored
    return json.loads(json.dumps(stored))


def _reader_problems(
    checker: avro.compatibility.ReaderWriterCompatibilityChecker,
    reader: avro.schema.Schema,
    writer: avro.schema.Schema,
) -> list[str]:
    result = checker.get_compatibility(reader, writer)
    if result.compatibility is avro.compatibility.SchemaCompatibilityType.compatible:
        return []
    kinds = ", ".join(sorted({i.value for i in result.incompatibilities})) or "incompatible"
    where = ", ".join(sorted(result.locations))
    what = "; ".join(sorted(result.messages))
    return [f"{kinds} at {where}" + (f": {what}" if what else "")]


def avro_problems(new: Any, previous: Sequence[Any], mode: Compatibility) -> list[str]:
    """Why the Avro schema `new` breaks `mode` against `previous` (oldest first); empty if none.

    The schemas are stored forms (`parse_avro`), so they parse.
    """
    if mode is Compatibility.NONE or not previous:
        return []
    olds = list(previous) if mode.transitive else [previous[-1]]
    checker = avro.compatibility.ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]
    parsed_new = _parse(new)
    problems: list[str] = []
    for old in olds:
        parsed_old = _parse(old)
        if mode.backward:
            problems += [
                f"backward: {p}" for p in _reader_problems(checker, parsed_new, parsed_old)
            ]
        if mode.forward:
            problems += [f"forward: {p}" for p in _reader_problems(checker, parsed_old, parsed_new)]
    return list(dict.fromkeys(problems))
