"""Schemas of event types: a registry in the store, compatibility rules, upcasting.

- `SchemaRegistry(store)`: subjects (event type names, or any other name for
  Confluent's clients), versions (the events' schema versions), global ids,
  compatibility modes and soft/permanent deletes, kept in the system stream
  `$schemas`; `register` refuses an incompatible schema with
  `IncompatibleSchema`, naming every broken rule. Schemas are JSON Schema, or
  Avro (`schema_type="AVRO"`, checked by the `avro` package: `schemas.avro`).
- `Compatibility`: Confluent's modes (BACKWARD by default); the rules are in
  `tidelog.schemas.compatibility` and docs/schema-evolution.md.
- `ValidatingStore(store, registry)`: optional write-time validation; an
  append of a registered type whose data breaks its schema raises
  `SchemaViolation` naming the field.
- Upcasting lives with the codec (`tidelog.upcaster`, `EventRegistry.upcaster`):
  functions from version n to n + 1, chained on read; stored events are
  never rewritten.
"""

from tidelog.codec import upcaster
from tidelog.schemas.compatibility import Compatibility, compatibility_problems, reader_problems
from tidelog.schemas.registry import (
    SCHEMAS_STREAM,
    SchemaRegistry,
    SchemaVersion,
    ValidatingStore,
    schema_of,
)

__all__ = [
    "SCHEMAS_STREAM",
    "Compatibility",
    "SchemaRegistry",
    "SchemaVersion",
    "ValidatingStore",
    "compatibility_problems",
    "reader_problems",
    "schema_of",
    "upcaster",
]
