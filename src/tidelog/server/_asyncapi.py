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


def _rewrite(node: Any, prefix: str) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$defs":
                continue
            if k == "$ref" and isinstance(v, str) and v.startswith("#/$defs/"):
                out[k] = f"#/components/schemas/{prefix}.{_key(v[len('#/$defs/') :])}"
            else:
                out[k] = _rewrite(v, prefix)
        return out
    if isinstance(node, list):
        return [_rewrite(v, prefix) for v in node]
    return node


def _schemas_of(sv: SchemaVersion) -> dict[str, Any]:
    """The components for one registered schema: itself under its subject's key, and its $defs."""
    key = _key(sv.subject)
    out = {key: _rewrite(sv.schema, key)}
    defs = sv.schema.get("$defs") if isinstance(sv.schema, dict) else None  # or true/false
    if isinstance(defs, dict):
        for name, definition in defs.items():
            out[f"{key}.{_key(name)}"] = _rewrite(definition, key)
    return out


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
    for sv in schemas:
        key = _key(sv.subject)
        if sv.schema_type == "AVRO":  # a registry-only subject: its Avro schema as it is
            messages[key] = {
                "name": sv.subject,
                "title": sv.subject,
                "summary": f"{sv.subject} v{sv.version} (schema id {sv.id}), Avro",
                "contentType": "application/vnd.apache.avro+binary",
                "payload": {"schemaFormat": _AVRO_FORMAT, "schema": sv.schema},
            }
            continue
        components_schemas.update(_schemas_of(sv))
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
