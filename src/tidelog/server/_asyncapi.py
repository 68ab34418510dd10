"""An AsyncAPI 3.0 document of what a subscriber can receive, written from the store.

Channels are the categories the caller may read (from `list_streams`), one for
the Server-Sent Events endpoint and one for the WebSocket endpoint each; the
messages are the event types registered in the schema registry, their payload
schemas are the stored JSON Schemas, moved into `components.schemas` (each
schema's `$defs` become sibling components, and `#/$defs/...` references are
rewritten to `#/components/schemas/...` so they resolve in this document).

Each channel lists every registered type: a category may carry any of them,
and tidelog does not record which types a category has seen.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from litestar import Request, get
from litestar.datastructures import State

import tidelog
from tidelog import wire
from tidelog.schemas import SCHEMAS_STREAM, SchemaVersion
from tidelog.security.acl import Permission
from tidelog.server._deps import AccessDep, registry_of, runtime

__all__ = ["ROUTES", "asyncapi_document"]

_KEY_RE: Final = re.compile(r"[^A-Za-z0-9._\-]")
_ENVELOPE: Final = wire.WireEvent.__name__
_AVRO_FORMAT: Final = "application/vnd.apache.avro;version=1.9.0"


def _key(name: str) -> str:
    """A component or channel key (AsyncAPI allows letters, digits, `.`, `_`, `-`)."""
    return _KEY_RE.sub("_", name)


_DEFINITIONS: Final = ("$defs", "definitions")
"""Where a schema keeps its named subschemas: `$defs` since 2019-09, `definitions` before."""


def _unique(name: str, taken: set[str]) -> str:
    """`name`, or `name_2`, `name_3`…: the first not in `taken`, which it joins."""
    unique, n = name, 1
    while unique in taken:
        n += 1
        unique = f"{name}_{n}"
    taken.add(unique)
    return unique


def _pointer(parts: Sequence[str]) -> str:
    """An RFC 6901 JSON pointer (`~` and `/` escaped) from its reference tokens."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _tokens(pointer: str) -> list[str]:
    """The reference tokens of a URI fragment holding a JSON pointer (`/a/b~1c%25`)."""
    return [
        urllib.parse.unquote(t).replace("~1", "/").replace("~0", "~")
        for t in pointer.split("/")[1:]
    ]


class _Relocation:
    """Where one registered schema's parts land in `components.schemas`, and its refs with them.

    The schema itself becomes the component `key`; each named subschema under
    `$defs` or `definitions` (draft-07 and older use the latter), at any depth
    of that chain, becomes a sibling component `key.Name` (`key.Name.Inner`
    for one nested in another), so tools show it as a model of its own. Every
    local reference is rewritten to the component it now points at: a JSON
    pointer (`#/definitions/Line`, `#/$defs/Line/properties/sku`,
    `#/properties/lines`), the whole schema (`#`, recursion) and a plain-name
    fragment (`#line`, declared by `$anchor` or by a draft-07 `$id: "#line"`).
    A reference left as it was would point into a document that no longer
    holds it, and the official parser refuses the whole document for one
    (`invalid-ref`). References to other documents are left alone.

    `$id` is dropped from the moved schemas: a base URI inside this document
    would make a JSON-Schema-aware reader resolve the rewritten `#/components/...`
    against that URI instead of this document.
    """

    def __init__(self, schema: dict[str, Any], key: str, taken: set[str]) -> None:
        self.components: dict[str, Any] = {}
        self._taken = taken
        """Component names in use (other subjects', the envelope's); ours are added."""
        self._names: dict[tuple[str, ...], str] = {}
        """The path (pairs of container and name) of each hoisted subschema -> its component."""
        self._anchors: dict[str, list[str]] = {}
        """Plain-name fragment -> the JSON pointer tokens of the subschema declaring it."""
        self._find_anchors(schema, [])
        self._hoist(schema, key, ())
        self.root = self._names[()]
        """The component holding the schema itself (`key`, unless another had it)."""
        for path, name in list(self._names.items()):
            node = self._node(schema, path)
            self.components[name] = self._rewrite(node, top=True)

    def _hoist(self, node: dict[str, Any], name: str, path: tuple[str, ...]) -> None:
        unique = _unique(name, self._taken)
        self._names[path] = unique
        for container in _DEFINITIONS:
            defs = node.get(container)
            if not isinstance(defs, dict):
                continue
            for def_name, definition in defs.items():
                if isinstance(definition, dict):
                    self._hoist(
                        definition, f"{unique}.{_key(def_name)}", (*path, container, def_name)
                    )

    @staticmethod
    def _node(schema: dict[str, Any], path: Sequence[str]) -> dict[str, Any]:
        node = schema
        for part in path:
            node = node[part]
        return node

    def _find_anchors(self, node: Any, at: list[str]) -> None:
        if isinstance(node, dict):
            anchor = node.get("$anchor")
            legacy = node.get("$id")
            for name in (
                anchor,
                legacy[1:] if isinstance(legacy, str) and legacy[:1] == "#" else None,
            ):
                if isinstance(name, str) and name:
                    self._anchors.setdefault(name, list(at))
            for k, v in node.items():
                self._find_anchors(v, [*at, k])
        elif isinstance(node, list):
            for i, v in enumerate(node):
                self._find_anchors(v, [*at, str(i)])

    def target(self, ref: str) -> str:
        """Where the local reference `ref` points once the schema is moved (others: `ref`)."""
        if not ref.startswith("#"):
            return ref
        fragment = ref[1:]
        if fragment and not fragment.startswith("/"):
            tokens = self._anchors.get(urllib.parse.unquote(fragment))
            if tokens is None:
                return ref  # an unknown anchor: left for the reader to report
        else:
            tokens = _tokens(fragment)
        # the longest chain of $defs/definitions names decides the component
        path: tuple[str, ...] = ()
        i = 0
        while i + 1 < len(tokens) and tokens[i] in _DEFINITIONS:
            candidate = (*path, tokens[i], tokens[i + 1])
            if candidate not in self._names:
                break
            path, i = candidate, i + 2
        return f"#/components/schemas/{self._names[path]}{_pointer(tokens[i:])}"

    def _rewrite(self, node: Any, *, top: bool = False) -> Any:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for k, v in node.items():
                if top and k in _DEFINITIONS and isinstance(v, dict):
                    # the object subschemas are components of their own now; a boolean
                    # schema (`true`, `false`) stays, and its references point here
                    rest = {n: d for n, d in v.items() if not isinstance(d, dict)}
                    if rest:
                        out[k] = rest
                    continue
                if k == "$id":
                    continue
                if k == "$ref" and isinstance(v, str):
                    out[k] = self.target(v)
                else:
                    out[k] = self._rewrite(v)
            return out
        if isinstance(node, list):
            return [self._rewrite(v) for v in node]
        return node


def asyncapi_document(
    host: str, secure: bool, categories: list[str], schemas: list[SchemaVersion]
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document for these categories and registered schemas (latest versions)."""
    # the envelope is the wire type the endpoints send, so it cannot drift from them
    _, envelope = msgspec.json.schema_components(
        [wire.WireEvent], ref_template="#/components/schemas/{name}"
    )
    components_schemas: dict[str, Any] = dict(envelope)
    messages: dict[str, Any] = {}
    taken = set(components_schemas)
    for sv in schemas:
        if sv.schema_type == "AVRO":  # a registry-only subject: its Avro schema as it is
            key = _unique(_key(sv.subject), taken)
            messages[key] = {
                "name": sv.subject,
                "title": sv.subject,
                "summary": f"{sv.subject} v{sv.version} (schema id {sv.id}), Avro",
                "contentType": "application/vnd.apache.avro+binary",
                "payload": {"schemaFormat": _AVRO_FORMAT, "schema": sv.schema},
            }
            continue
        if isinstance(sv.schema, dict):
            moved = _Relocation(sv.schema, _key(sv.subject), taken)
            components_schemas.update(moved.components)
            key = moved.root  # unique, like the message key made from it
        else:  # the boolean schemas `true` and `false`: nothing to relocate
            key = _unique(_key(sv.subject), taken)
            components_schemas[key] = sv.schema
        messages[key] = {
            "name": sv.subject,
            "title": sv.subject,
            "summary": f"{sv.subject} v{sv.version} (schema id {sv.id}), in the `data` field",
            "contentType": "application/json",
            "payload": {
                "allOf": [
                    {"$ref": f"#/components/schemas/{_ENVELOPE}"},
                    {
                        "type": "object",
                        "properties": {
                            "type": {"const": sv.subject},
                            "data": {"$ref": f"#/components/schemas/{key}"},
                        },
                    },
                ]
            },
        }
    if not messages:
        messages[_ENVELOPE] = {
            "name": _ENVELOPE,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{_ENVELOPE}"},
        }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for category in categories:
        for transport, address, server in (
            ("sse", f"/v1/subscribe?category={category}", "http"),
            ("ws", f"/v1/ws/subscribe?category={category}", "ws"),
        ):
            channel = f"{_key(category)}.{transport}"
            channels[channel] = {
                "address": address,
                "title": f"category {category} ({transport.upper()})",
                "description": f"Events of the streams `{category}-*`, live, from a position.",
                "servers": [{"$ref": f"#/servers/{server}"}],
                "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in messages},
            }
            operations[f"receive.{channel}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{channel}"},
                "summary": f"Subscribe to category {category} over {transport.upper()}",
                "messages": [{"$ref": f"#/channels/{channel}/messages/{m}"} for m in messages],
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "tidelog",
            "version": tidelog.__version__,
            "description": "Live events of a tidelog store, per category. Authenticate with "
            "'Authorization: Bearer <key or JWT>'. The SSE id is the event's position; "
            "send Last-Event-ID to resume.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "http": {
                "host": host,
                "protocol": "https" if secure else "http",
                "description": "Server-Sent Events (text/event-stream)",
                "security": [{"$ref": "#/components/securitySchemes/bearer"}],
            },
            "ws": {
                "host": host,
                "protocol": "wss" if secure else "ws",
                "description": "WebSocket, one JSON text frame per event",
                "security": [{"$ref": "#/components/securitySchemes/bearer"}],
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": components_schemas,
            "messages": messages,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "API key or JWT"}
            },
        },
    }


@get("/asyncapi.json", summary="AsyncAPI 3.0: categories and registered event types")
async def asyncapi(
    request: Request[Any, Any, Any], state: State, access: AccessDep
) -> dict[str, Any]:
    """Categories the caller may read; event types if it may read the registry."""
    rt = runtime(state)
    categories = sorted(
        {
            s.category
            async for s in rt.store.list_streams()
            if not s.name.startswith("$") and access.can_stream(s.name, Permission.READ)
        }
    )
    schemas: list[SchemaVersion] = []
    if access.can_stream(SCHEMAS_STREAM, Permission.READ):
        registry, lock = registry_of(state)
        async with lock:
            for subject in await registry.subjects():
                schemas.append(await registry.get(subject))
    host = request.headers.get("host") or f"{rt.config.host}:{rt.config.port}"
    return asyncapi_document(host, request.url.scheme == "https", categories, schemas)


ROUTES = [asyncapi]
