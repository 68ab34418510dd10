"""Validate an event's JSON data against its registered JSON Schema.

A small validator for the keywords that `msgspec.json.schema` emits and that
hand-written event schemas commonly use: `type`, `enum`, `const`, `anyOf`,
`oneOf`, `allOf`, `$ref` (to `#/...`), `properties`, `required`,
`additionalProperties`, `items`, `prefixItems`, numeric and length bounds,
`pattern` (its cost bounded, see `patterns`), `uniqueItems`. Unknown
keywords (`format`, `title`, `default`, ...) are annotations and accept
everything, as JSON Schema says for `format`.

Values sealed by `tidelog.security.encryption` (strings starting with
`SEALED_PREFIX`) are accepted wherever a personal field may be: the store
never sees their plaintext, so it cannot check it; the writer's own class did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from tidelog.codec import SEALED_PREFIX
from tidelog.schemas.patterns import pattern_error

__all__ = ["first_error"]

_MAX_DEPTH: Final = 128


def first_error(schema: Any, value: Any) -> tuple[str, str] | None:
    """The first (JSON path, reason) at which `value` breaks `schema`, or None."""
    return _Validator(schema).check(schema, value, "$", 0)


class _Validator:
    def __init__(self, root: Any) -> None:
        self.root = root

    def _resolve(self, schema: Any) -> Any:
        hops = 0
        while isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str):
            ref: str = schema["$ref"]
            target: Any = self.root
            if not ref.startswith("#"):
                return True
            for part in ref[2:].split("/") if ref != "#" else ():
                target = target.get(part, True) if isinstance(target, Mapping) else True
            schema = target
            hops += 1
            if hops > _MAX_DEPTH:
                return True
        return schema

    def check(self, schema: Any, value: Any, path: str, depth: int) -> tuple[str, str] | None:  # noqa: PLR0912 (one branch per JSON Schema keyword validated)
        schema = self._resolve(schema)
        if schema is True or depth > _MAX_DEPTH:
            return None
        if schema is False:
            return path, "no value is allowed here"
        if not isinstance(schema, Mapping):
            return None
        if isinstance(value, str) and value.startswith(SEALED_PREFIX):
            return None
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list):
                errors = [self.check(b, value, path, depth + 1) for b in branches]
                if all(e is not None for e in errors):
                    nested = [e for e in errors if e is not None and e[0] != path]
                    return nested[0] if len(nested) == 1 else (path, "matches no allowed type")
        for sub in schema.get("allOf") or ():
            err = self.check(sub, value, path, depth + 1)
            if err is not None:
                return err
        if "const" in schema and not _equal(value, schema["const"]):
            return path, f"must be {schema['const']!r}"
        if "enum" in schema and not any(_equal(value, v) for v in schema["enum"]):
            return path, f"must be one of {schema['enum']!r}"
        types = schema.get("type")
        if types is not None:
            allowed = [types] if isinstance(types, str) else list(types)
            if not any(_is_type(value, t) for t in allowed):
                return path, f"expected {' or '.join(allowed)}, got {_type_name(value)}"
        if isinstance(value, bool):
            return None
        if isinstance(value, (int, float)):
            return _check_number(schema, value, path)
        if isinstance(value, str):
            return _check_string(schema, value, path)
        if isinstance(value, list):
            return self._check_array(schema, value, path, depth)
        if isinstance(value, dict):
            return self._check_object(schema, value, path, depth)
        return None

    def _check_array(
        self, schema: Mapping[str, Any], value: list[Any], path: str, depth: int
    ) -> tuple[str, str] | None:
        if "minItems" in schema and len(value) < schema["minItems"]:
            return path, f"needs at least {schema['minItems']} items"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return path, f"allows at most {schema['maxItems']} items"
        prefix = schema.get("prefixItems") or []
        for i, item in enumerate(value):
            sub = prefix[i] if i < len(prefix) else schema.get("items", True)
            err = self.check(sub, item, f"{path}[{i}]", depth + 1)
            if err is not None:
                return err
        if schema.get("uniqueItems"):
            seen: list[Any] = []
            for item in value:
                if any(_equal(item, s) for s in seen):
                    return path, "items must be unique"
                seen.append(item)
        return None

    def _check_object(
        self, schema: Mapping[str, Any], value: dict[str, Any], path: str, depth: int
    ) -> tuple[str, str] | None:
        props: Mapping[str, Any] = schema.get("properties") or {}
        for name in schema.get("required") or ():
            if name not in value:
                return f"{path}.{name}", "required field is missing"
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            sub_path = f"{path}.{name}"
            if name in props:
                err = self.check(props[name], item, sub_path, depth + 1)
            elif extra is False:
                return sub_path, "unknown field (the schema allows no other fields)"
            else:
                err = self.check(extra, item, sub_path, depth + 1)
            if err is not None:
                return err
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            return path, f"needs at least {schema['minProperties']} fields"
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            return path, f"allows at most {schema['maxProperties']} fields"
        return None


def _check_number(schema: Mapping[str, Any], value: float, path: str) -> tuple[str, str] | None:
    if "minimum" in schema and value < schema["minimum"]:
        return path, f"must be >= {schema['minimum']}"
    if "maximum" in schema and value > schema["maximum"]:
        return path, f"must be <= {schema['maximum']}"
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        return path, f"must be > {schema['exclusiveMinimum']}"
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        return path, f"must be < {schema['exclusiveMaximum']}"
    m = schema.get("multipleOf")
    if m and (value / m) % 1:
        return path, f"must be a multiple of {m}"
    return None


def _check_string(schema: Mapping[str, Any], value: str, path: str) -> tuple[str, str] | None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        return path, f"must be at least {schema['minLength']} characters"
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        return path, f"must be at most {schema['maxLength']} characters"
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and (reason := pattern_error(pattern, value)):
        return path, reason
    return None


def _is_type(value: Any, t: str) -> bool:
    if t == "null":
        return value is None
    if t == "boolean":
        return isinstance(value, bool)
    if t == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "string":
        return isinstance(value, str)
    if t == "array":
        return isinstance(value, list)
    if t == "object":
        return isinstance(value, dict)
    return True


def _type_name(value: Any) -> str:
    for t in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is_type(value, t):
            return t
    return type(value).__name__


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)
