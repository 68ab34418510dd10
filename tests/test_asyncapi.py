"""The AsyncAPI 3.0 document at /asyncapi.json, written from the store and its schema registry."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

import tidelog
from support.server import ADMIN_KEY, Serve
from support.services import service_missing
from tidelog.codec import EventRegistry
from tidelog.schemas import SchemaRegistry

EVENTS = EventRegistry()


class Line(msgspec.Struct):
    sku: str
    quantity: int


@tidelog.event("OrderPlaced", registry=EVENTS)
class OrderPlaced(msgspec.Struct):
    order_id: str
    lines: list[Line]


@tidelog.event("user@Registered", registry=EVENTS)
class UserRegistered(msgspec.Struct):
    email: str


@pytest.fixture
async def server(serve: Serve) -> tuple[str, tidelog.Store]:
    srv, store = await serve(keys={"k-orders": "orders"}, grants=("orders=read:category:order",))
    registry = SchemaRegistry(store)
    await registry.register_event(OrderPlaced, registry=EVENTS)
    await registry.register_event(UserRegistered, registry=EVENTS)
    for stream in ("order-1", "order-2", "user-7", "payment-3"):
        await store.append(stream, [tidelog.NewEvent(type="Seen")])
    return f"http://127.0.0.1:{srv.port}", store


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"unresolvable {ref}"
        node = node[part]
    return node


async def test_document_describes_categories_and_registered_types(
    server: tuple[str, tidelog.Store],
) -> None:
    url, _ = server
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as client:
        r = await client.get("/asyncapi.json")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["asyncapi"] == "3.0.0"
    assert {"info", "servers", "channels", "operations", "components"} <= set(doc)
    assert doc["info"]["title"] == "tidelog" and doc["info"]["version"] == tidelog.__version__
    assert {s["protocol"] for s in doc["servers"].values()} == {"http", "ws"}

    # one channel per category and transport; system streams ($schemas) are not categories
    assert set(doc["channels"]) == {
        f"{c}.{t}" for c in ("order", "payment", "user") for t in ("sse", "ws")
    }
    assert doc["channels"]["order.sse"]["address"] == "/v1/subscribe?category=order"
    assert doc["channels"]["order.ws"]["address"] == "/v1/ws/subscribe?category=order"
    for name, operation in doc["operations"].items():
        assert operation["action"] == "receive", name
        assert operation["messages"], name

    # every registered type is a message whose payload holds its stored JSON Schema
    schemas = doc["components"]["schemas"]
    messages = doc["components"]["messages"]
    assert {m["name"] for m in messages.values()} == {"OrderPlaced", "user@Registered"}
    assert "OrderPlaced" in schemas and "user_Registered" in schemas
    placed = _resolve(doc, schemas["OrderPlaced"]["$ref"])
    assert placed["required"] == ["order_id", "lines"]
    assert placed["additionalProperties"] is False
    line = _resolve(doc, placed["properties"]["lines"]["items"]["$ref"])
    assert line["properties"]["quantity"] == {"type": "integer"}
    for channel in doc["channels"].values():
        assert set(channel["messages"]) == set(messages)

    # the document is self-contained: every reference resolves inside it
    refs = _refs(doc)
    assert len(refs) > 20
    for ref in refs:
        _resolve(doc, ref)
    assert not any("$defs" in s for s in schemas.values())


async def test_document_shows_only_what_the_caller_may_read(
    server: tuple[str, tidelog.Store],
) -> None:
    url, _ = server
    async with (
        httpx.AsyncClient(base_url=url, headers={"Authorization": "Bearer k-orders"}) as client,
        httpx.AsyncClient(base_url=url) as nobody,
    ):
        r = await client.get("/asyncapi.json")
        anonymous = await nobody.get("/asyncapi.json")
    assert anonymous.status_code == 401
    doc = r.json()
    assert set(doc["channels"]) == {"order.sse", "order.ws"}
    # no read grant on $schemas: the registered types are not disclosed
    assert [m["name"] for m in doc["components"]["messages"].values()] == ["WireEvent"]
    for ref in _refs(doc):
        _resolve(doc, ref)


# ---------------------------------------------------------------- the official parser

ROOT = Path(__file__).resolve().parents[1]
NPM_CACHE = ROOT / ".cache" / "npm"
"""Where the parser is installed, once per machine (git ignores `.cache/`)."""
PARSER = "@asyncapi/parser@3"
PARSE_SCRIPT = Path(__file__).parent / "support" / "asyncapi_parse.js"

DRAFT_07 = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "$id": "https://example.com/schemas/order-shipped",
    "type": "object",
    "required": ["lines", "address"],
    "properties": {
        "lines": {"type": "array", "items": {"$ref": "#/definitions/Line"}},
        "address": {"$ref": "#address"},
        "first_sku": {"$ref": "#/definitions/Line/properties/sku"},
    },
    "definitions": {
        "Line": {
            "type": "object",
            "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}},
        },
        "Address": {
            "$id": "#address",
            "type": "object",
            "properties": {"city": {"type": "string"}},
        },
    },
}
"""draft-07: `definitions`, a pointer into one of them, and a plain-name `$id`."""

DRAFT_2020 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "payment": {
            "oneOf": [
                {"$ref": "#/$defs/Card"},
                {"$ref": "#/$defs/Transfer"},
                {"$ref": "#/$defs/Card/$defs/Token"},
            ]
        },
        "note": {"$ref": "#/$defs/free~1text"},
        "any": {"$ref": "#/$defs/Anything"},
        "transfer": {"$ref": "#transfer"},
    },
    "$defs": {
        "Card": {
            "type": "object",
            "properties": {"token": {"$ref": "#/$defs/Card/$defs/Token"}},
            "$defs": {"Token": {"type": "string", "minLength": 4}},
        },
        "Transfer": {"$anchor": "transfer", "type": "object"},
        "free/text": {"type": "string"},
        "Anything": True,
    },
}
"""2020-12: `$defs` nested in a `$defs`, `oneOf`, an escaped pointer, a boolean schema."""

RECURSIVE = {
    "$schema": "https://json-schema.org/draft/2019-09/schema",
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "children": {"type": "array", "items": {"$ref": "#"}},
        "parent": {"$ref": "#/$defs/Node"},
        "sibling": {"$ref": "#/properties/parent"},
    },
    "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
}
"""Recursion: the whole schema (`#`), a definition referring to itself, a pointer to a property."""


def _npm_parser() -> Path:
    """The folder holding `node_modules/@asyncapi/parser`, installed from npm on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        service_missing("node and npm are needed to run the official @asyncapi/parser")
    if not (NPM_CACHE / "node_modules" / "@asyncapi" / "parser" / "package.json").exists():
        NPM_CACHE.mkdir(parents=True, exist_ok=True)
        install = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(NPM_CACHE), PARSER],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert install.returncode == 0, f"npm install {PARSER} failed:\n{install.stderr[-2000:]}"
    return NPM_CACHE


def _diagnostics(document: dict[str, Any]) -> list[dict[str, Any]]:
    """What the official parser says of `document` (every severity)."""
    folder = _npm_parser()
    run = subprocess.run(
        ["node", str(PARSE_SCRIPT), str(folder)],
        input=json.dumps(document),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, f"the parser script failed:\n{run.stderr[-2000:]}"
    found: list[dict[str, Any]] = json.loads(run.stdout)
    return found


def test_the_parser_script_reports_a_broken_reference() -> None:
    """The judge works: a reference to nowhere is an `invalid-ref` error."""
    broken = {
        "asyncapi": "3.0.0",
        "info": {"title": "x", "version": "1"},
        "components": {
            "schemas": {"A": {"type": "object", "properties": {"b": {"$ref": "#/definitions/B"}}}}
        },
    }
    errors = [d for d in _diagnostics(broken) if d["severity"] == 0]
    assert [d["code"] for d in errors] == ["invalid-ref"]


async def test_the_official_parser_accepts_the_document_with_schemas_of_every_draft(
    serve: Serve,
) -> None:
    srv, store = await serve()
    registry = SchemaRegistry(store)
    await registry.register_event(OrderPlaced, registry=EVENTS)
    await registry.register("OrderShipped", DRAFT_07)
    await registry.register("PaymentTaken", DRAFT_2020)
    await registry.register("tree@Node", RECURSIVE)
    await registry.register("tree_Node", {"type": "object"})  # the same component key
    await store.append("order-1", [tidelog.NewEvent(type="OrderShipped")])
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{srv.port}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as client:
        r = await client.get("/asyncapi.json")
    assert r.status_code == 200, r.text
    doc = r.json()

    errors = [d for d in _diagnostics(doc) if d["severity"] == 0]
    assert errors == []

    # where the references went (the parser checked they resolve; these check the targets)
    schemas = doc["components"]["schemas"]
    shipped = schemas["OrderShipped"]
    assert shipped["properties"]["lines"]["items"] == {
        "$ref": "#/components/schemas/OrderShipped.Line"
    }
    assert shipped["properties"]["address"] == {"$ref": "#/components/schemas/OrderShipped.Address"}
    assert shipped["properties"]["first_sku"] == {
        "$ref": "#/components/schemas/OrderShipped.Line/properties/sku"
    }
    assert "definitions" not in shipped and "$id" not in shipped
    payment = schemas["PaymentTaken"]["properties"]
    assert [b["$ref"] for b in payment["payment"]["oneOf"]] == [
        "#/components/schemas/PaymentTaken.Card",
        "#/components/schemas/PaymentTaken.Transfer",
        "#/components/schemas/PaymentTaken.Card.Token",
    ]
    assert schemas["PaymentTaken.Card"]["properties"]["token"] == {
        "$ref": "#/components/schemas/PaymentTaken.Card.Token"
    }
    assert schemas["PaymentTaken.free_text"] == {"type": "string"}
    assert payment["note"] == {"$ref": "#/components/schemas/PaymentTaken.free_text"}
    assert payment["transfer"] == {"$ref": "#/components/schemas/PaymentTaken.Transfer"}
    assert payment["any"] == {"$ref": "#/components/schemas/PaymentTaken/$defs/Anything"}
    tree = schemas["tree_Node"]["properties"]
    assert tree["children"]["items"] == {"$ref": "#/components/schemas/tree_Node"}
    assert schemas["tree_Node.Node"]["properties"]["next"] == {
        "$ref": "#/components/schemas/tree_Node.Node"
    }
    assert tree["sibling"] == {"$ref": "#/components/schemas/tree_Node/properties/parent"}
    # two subjects with one key: the second gets its own component, not the first's
    assert schemas["tree_Node_2"] == {"type": "object"}
    second = doc["components"]["messages"]["tree_Node_2"]
    assert second["name"] == "tree_Node"
    assert second["payload"]["allOf"][1]["properties"]["data"] == {
        "$ref": "#/components/schemas/tree_Node_2"
    }
    for ref in _refs(doc):
        _resolve(doc, ref)
