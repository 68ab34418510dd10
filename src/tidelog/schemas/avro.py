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


def parse_avro(value: Any) -> Any:
    """The stored form of the Avro schema `value` (a decoded JSON value), or `InvalidInput`."""
    stored: Any = _parse(value).to_json()
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
