"""The AsyncAPI 3.0 document at /asyncapi.json, written from the store and its schema registry."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import pytest

import tidelog
from support.server import ADMIN_KEY, Serve
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
