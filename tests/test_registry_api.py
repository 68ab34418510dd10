"""The Confluent-style schema registry REST API on a live server, backed by `tidelog.schemas`."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tidelog
from support.server import ADMIN_KEY, Serve
from tidelog.schemas import Compatibility, SchemaRegistry, compatibility_problems
from tidelog.schemas.compatibility import schema_problem

CT = "application/vnd.schemaregistry.v1+json"

V1 = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}, "total": {"type": "integer"}},
    "required": ["order_id", "total"],
    "additionalProperties": False,
}
# adds an optional field to a closed model: BACKWARD-compatible
V2 = {
    **V1,
    "properties": {**V1["properties"], "note": {"type": "string"}},  # type: ignore[dict-item]
}
# narrows a type: incompatible
BAD = {**V1, "properties": {"order_id": {"type": "integer"}, "total": {"type": "integer"}}}


@pytest.fixture
async def server(serve: Serve) -> tuple[str, tidelog.Store]:
    srv, store = await serve(
        keys={"k-schemas": "schemas", "k-reader": "reader", "k-app": "app"},
        grants=(
            "schemas=write:stream:$schemas",
            "reader=read:stream:$schemas",
            "app=write:category:order",
            "app=read:category:order",
        ),
    )
    return f"http://127.0.0.1:{srv.port}", store


def _client(url: str, key: str = ADMIN_KEY) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}", "Content-Type": CT}
    )


def _body(schema: dict[str, Any]) -> bytes:
    """Confluent's form: the schema as a JSON *string*."""
    return json.dumps({"schema": json.dumps(schema), "schemaType": "JSON"}).encode()


async def test_register_read_and_list_like_confluent(server: tuple[str, tidelog.Store]) -> None:
    url, store = server
    async with _client(url) as client:
        r1 = await client.post("/subjects/OrderPlaced/versions", content=_body(V1))
        assert r1.status_code == 200, r1.text
        assert r1.headers["content-type"].startswith(CT)
        assert r1.json() == {"id": 1}
        # the same schema again is idempotent: the same id
        again = await client.post("/subjects/OrderPlaced/versions", content=_body(V1))
        assert again.json() == {"id": 1}
        r2 = await client.post("/subjects/OrderPlaced/versions", content=_body(V2))
        assert r2.json() == {"id": 2}
        # an object schema is accepted too, and plain application/json
        r3 = await client.post(
            "/subjects/OrderShipped/versions",
            json={"schema": V1},
            headers={"Content-Type": "application/json"},
        )
        # one schema, one id: V1 under another subject keeps V1's id, as in Confluent
        assert r3.json() == {"id": 1}

        assert (await client.get("/subjects")).json() == ["OrderPlaced", "OrderShipped"]
        assert (await client.get("/subjects/OrderPlaced/versions")).json() == [1, 2]
        latest = (await client.get("/subjects/OrderPlaced/versions/latest")).json()
        assert latest["subject"] == "OrderPlaced" and latest["version"] == 2
        assert latest["id"] == 2 and latest["schemaType"] == "JSON"
        assert json.loads(latest["schema"]) == V2
        first = (await client.get("/subjects/OrderPlaced/versions/1")).json()
        assert json.loads(first["schema"]) == V1
        by_id = await client.get("/schemas/ids/1")
        assert by_id.status_code == 200 and json.loads(by_id.json()["schema"]) == V1
        uses = await client.get("/schemas/ids/1/versions")
        assert uses.json() == [
            {"subject": "OrderPlaced", "version": 1},
            {"subject": "OrderShipped", "version": 1},
        ]
    # it is the store's registry: a library user sees the same thing
    registry = SchemaRegistry(store)
    assert (await registry.get("OrderPlaced")).schema == V2
    assert await registry.versions("OrderPlaced") == [1, 2]


async def test_incompatible_schema_is_409_and_compatibility_checks(
    server: tuple[str, tidelog.Store],
) -> None:
    url, store = server
    async with _client(url) as client:
        await client.post("/subjects/OrderPlaced/versions", content=_body(V1))
        head = await store.last_position()
        refused = await client.post("/subjects/OrderPlaced/versions", content=_body(BAD))
        assert refused.status_code == 409
        assert refused.headers["content-type"].startswith(CT)
        assert refused.json()["error_code"] == 409
        assert "order_id" in refused.json()["message"]
        assert await store.last_position() == head  # nothing registered

        path = "/compatibility/subjects/OrderPlaced/versions"
        ok = await client.post(f"{path}/latest", content=_body(V2))
        assert ok.status_code == 200 and ok.json() == {"is_compatible": True}
        no = await client.post(f"{path}/1?verbose=true", content=_body(BAD))
        assert no.json()["is_compatible"] is False and no.json()["messages"]
        missing = await client.post(f"{path}/7", content=_body(V2))
        assert missing.status_code == 404 and missing.json()["error_code"] == 40402


async def test_compatibility_config_global_and_per_subject(
    server: tuple[str, tidelog.Store],
) -> None:
    url, _ = server
    async with _client(url) as client:
        got = (await client.get("/config")).json()
        assert got["compatibility"] == got["compatibilityLevel"] == "BACKWARD"
        put = await client.put("/config/OrderPlaced", json={"compatibility": "NONE"})
        assert put.status_code == 200 and put.json() == {"compatibility": "NONE"}
        assert (await client.get("/config/OrderPlaced")).json()["compatibility"] == "NONE"
        assert (await client.get("/config/Other")).json()["compatibility"] == "BACKWARD"
        # with NONE, the breaking change is accepted for that subject only
        await client.post("/subjects/OrderPlaced/versions", content=_body(V1))
        r = await client.post("/subjects/OrderPlaced/versions", content=_body(BAD))
        assert r.status_code == 200 and r.json() == {"id": 2}
        await client.put("/config", json={"compatibility": "full_transitive"})
        assert (await client.get("/config")).json()["compatibility"] == "FULL_TRANSITIVE"
        assert (await client.get("/config/Other")).json()["compatibility"] == "FULL_TRANSITIVE"


async def test_not_found_and_invalid_inputs_use_confluent_error_codes(
    server: tuple[str, tidelog.Store],
) -> None:
    url, store = server
    async with _client(url) as client:
        await client.post("/subjects/OrderPlaced/versions", content=_body(V1))
        head = await store.last_position()
        cases: list[tuple[str, str, bytes | None, int, int]] = [
            ("GET", "/subjects/Nope/versions", None, 404, 40401),
            ("GET", "/subjects/Nope/versions/latest", None, 404, 40401),
            ("GET", "/subjects/OrderPlaced/versions/9", None, 404, 40402),
            ("GET", "/subjects/OrderPlaced/versions/0", None, 422, 42202),
            ("GET", "/subjects/OrderPlaced/versions/abc", None, 422, 42202),
            ("GET", "/subjects/OrderPlaced/versions/99999999999", None, 422, 42202),
            ("GET", "/schemas/ids/99", None, 404, 40403),
            ("POST", "/subjects/OrderPlaced/versions", b"{not json", 400, 400),
            ("POST", "/subjects/OrderPlaced/versions", b'{"schema": "{bad"}', 422, 42201),
            ("POST", "/subjects/OrderPlaced/versions", b'{"schema": "[1]"}', 422, 42201),
            ("POST", "/subjects/OrderPlaced/versions", b'{"schema": 5}', 400, 400),
            ("POST", "/subjects/OrderPlaced/versions", b"{}", 400, 400),
            (
                "POST",
                "/subjects/OrderPlaced/versions",
                b'{"schema": "{}", "schemaType": "AVRO"}',
                422,
                42201,
            ),
            (
                "POST",
                "/subjects/OrderPlaced/versions",
                b'{"schema": "{}", "references": [{"name": "x"}]}',
                422,
                42201,
            ),
            # Confluent's rule: no control characters, at most 255 characters
            ("POST", "/subjects/bad%01subject/versions", _body(V1), 422, 42208),
            ("POST", "/subjects/" + "s" * 256 + "/versions", _body(V1), 422, 42208),
            ("POST", "/subjects/OrderPlaced/versions", b'{"schema": ' + b"[" * 50, 400, 400),
            ("PUT", "/config", b'{"compatibility": "SIDEWAYS"}', 422, 42203),
            ("PUT", "/config", b'{"compat": "NONE"}', 422, 42203),
            ("PUT", "/config/OrderPlaced", b"[]", 400, 400),
            ("POST", "/compatibility/subjects/Nope/versions/latest", _body(V1), 404, 40401),
        ]
        for method, path, content, status, code in cases:
            r = await client.request(method, path, content=content)
            assert (r.status_code, r.json().get("error_code")) == (status, code), (
                method,
                path,
                r.text,
            )
            assert r.json()["message"]
        assert await store.last_position() == head


async def test_access_needs_grants_on_the_schemas_stream(
    server: tuple[str, tidelog.Store],
) -> None:
    url, store = server
    async with (
        _client(url, "k-schemas") as writer,
        _client(url, "k-reader") as reader,
        _client(url, "k-app") as app,
        httpx.AsyncClient(base_url=url) as nobody,
    ):
        assert (await writer.post("/subjects/A/versions", content=_body(V1))).json() == {"id": 1}
        assert (await writer.put("/config/A", json={"compatibility": "FULL"})).status_code == 200
        head = await store.last_position()
        refused = await reader.post("/subjects/B/versions", content=_body(V1))
        assert refused.status_code == 403 and refused.json()["error_code"] == 40301
        assert (await reader.put("/config", json={"compatibility": "NONE"})).status_code == 403
        assert (await reader.get("/subjects")).json() == ["A"]
        assert (await reader.get("/schemas/ids/1")).status_code == 200
        for r in (
            await app.get("/subjects"),
            await app.post("/subjects/B/versions", content=_body(V1)),
            await app.get("/config"),
        ):
            assert r.status_code == 403, r.text
        anonymous = await nobody.get("/subjects")
        assert anonymous.status_code == 401 and anonymous.json()["error_code"] == 40101
        assert await store.last_position() == head


MALFORMED: list[dict[str, Any]] = [
    {"type": False},
    {"type": ["string", 5]},
    {"type": "text"},
    {"type": []},
    {"maxLength": [None]},
    {"maxLength": -1},
    {"minimum": "1"},
    {"maximum": True},
    {"multipleOf": 0},
    {"required": [{"a": 1}]},
    {"required": "a"},
    {"properties": []},
    {"properties": {"a": 5}},
    {"additionalProperties": "integer"},
    {"items": [None]},
    {"anyOf": {"a": {}}},
    {"enum": 5},
    {"pattern": {}},
    {"uniqueItems": "yes"},
    {"$defs": {"A": {"type": 4}}},
    # issue #18 item 11: regexes that do not compile or backtrack without bound
    {"type": "string", "pattern": "(("},
    {"type": "string", "pattern": "^(a+)+$"},
    {"patternProperties": {"((": {"type": "string"}}},
    {"properties": {"a": {"type": "string", "pattern": "(a)\\1"}}},
]


async def test_malformed_json_schemas_are_422_not_server_errors(
    server: tuple[str, tidelog.Store],
) -> None:
    """Regression: keyword values of the wrong JSON type crashed the compatibility
    checker (a 500) once a subject had a version to compare with."""
    url, store = server
    async with _client(url) as client:
        await client.post("/subjects/OrderPlaced/versions", content=_body(V1))
        head = await store.last_position()
        for schema in MALFORMED:
            for path in (
                "/subjects/OrderPlaced/versions",
                "/compatibility/subjects/OrderPlaced/versions/latest",
            ):
                r = await client.post(path, content=_body(schema))
                assert (r.status_code, r.json()["error_code"]) == (422, 42201), (schema, r.text)
                assert "invalid JSON Schema" in r.json()["message"]
        assert await store.last_position() == head


_TYPES = st.sampled_from(["object", "string", "integer", "number", "array", "null", "boolean"])
_NAMES = st.sampled_from(["a", "b", "c"])


def _extend(child: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    number = st.integers(-3, 3) | st.floats(-3, 3)
    count = st.integers(0, 4)
    return st.fixed_dictionaries(
        {},
        optional={
            "type": _TYPES | st.lists(_TYPES, min_size=1, max_size=3),
            "properties": st.dictionaries(_NAMES, child, max_size=3),
            "required": st.lists(_NAMES, max_size=3),
            "additionalProperties": st.booleans() | child,
            "items": child,
            "prefixItems": st.lists(child, max_size=2),
            "enum": st.lists(st.integers(0, 3) | st.text(max_size=1) | st.none(), max_size=3),
            "anyOf": st.lists(child, max_size=2),
            "oneOf": st.lists(child, max_size=2),
            "$ref": st.sampled_from(["#/$defs/A", "#/x", "#", "other.json"]),
            "$defs": st.dictionaries(st.sampled_from(["A", "B"]), child, max_size=2),
            "minimum": number,
            "maximum": number,
            "maxLength": count,
            "minItems": count,
            "pattern": st.sampled_from(["a", "^b"]),
            "multipleOf": st.sampled_from([0.5, 1, 3]),
            "uniqueItems": st.booleans(),
        },
    )


_SCHEMAS = st.recursive(st.just({}), _extend, max_leaves=10)


@settings(max_examples=300, deadline=None, database=None)
@given(
    new=_SCHEMAS,
    old=st.lists(_SCHEMAS, min_size=1, max_size=2),
    mode=st.sampled_from(Compatibility),
)
def test_well_formed_schemas_never_crash_the_compatibility_check(
    new: dict[str, Any], old: list[dict[str, Any]], mode: Compatibility
) -> None:
    """What the edge lets through (`schema_problem` is None), the checker can compare."""
    assert schema_problem(new) is None
    assert all(schema_problem(o) is None for o in old)
    problems = compatibility_problems(new, old, mode)
    assert isinstance(problems, list)
