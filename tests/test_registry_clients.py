"""Issue #15: Confluent Schema Registry clients, unchanged, against a live tidelog server.

Both Python clients run with their stock configuration: `confluent-kafka`'s
`SchemaRegistryClient` with its JSON and Avro serializers, and
`python-schema-registry-client` with its message serializers. They are
synchronous, so each scenario runs in a thread while the server serves on the
test's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Generator
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import (
    ConfigCompatibilityLevel,
    Schema,
    SchemaRegistryClient,
    ServerConfig,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from schema_registry.client import SchemaRegistryClient as PySchemaRegistryClient
from schema_registry.client import schema as py_schema
from schema_registry.client.errors import ClientError
from schema_registry.serializers import AvroMessageSerializer, JsonMessageSerializer

import tidelog
from support.server import ADMIN_KEY, Serve
from tidelog.schemas import SchemaRegistry, ValidatingStore

KEY = "k-registry-client"
READER_KEY = "k-registry-reader"

ORDER_JSON = {
    "type": "object",
    "properties": {"order_id": {"type": "string"}, "total": {"type": "integer"}},
    "required": ["order_id", "total"],
    "additionalProperties": False,
}
ORDER_JSON_V2 = {
    **ORDER_JSON,
    "properties": {**ORDER_JSON["properties"], "note": {"type": "string"}},  # type: ignore[dict-item]
}

ORDER_AVRO = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [{"name": "order_id", "type": "string"}, {"name": "total", "type": "long"}],
}
# a new field with a default: BACKWARD and FORWARD compatible (FULL)
ORDER_AVRO_V2 = {
    **ORDER_AVRO,
    "fields": [*ORDER_AVRO["fields"], {"name": "note", "type": "string", "default": ""}],  # type: ignore[list-item]
}
# a new field without a default: old data cannot be read (not BACKWARD), FORWARD is fine
ORDER_AVRO_REQUIRED = {
    **ORDER_AVRO,
    "fields": [*ORDER_AVRO["fields"], {"name": "coupon", "type": "string"}],  # type: ignore[list-item]
}
# a field's type changed from long to string: neither way
ORDER_AVRO_BROKEN = {
    **ORDER_AVRO,
    "fields": [{"name": "order_id", "type": "string"}, {"name": "total", "type": "string"}],
}


@pytest.fixture
async def url(serve: Serve) -> str:
    srv, _ = await serve(
        keys={KEY: "registry-client", READER_KEY: "registry-reader"},
        grants=(
            "registry-client=write:stream:$schemas",
            "registry-client=read:stream:$schemas",
            "registry-reader=read:stream:$schemas",
        ),
    )
    return f"http://127.0.0.1:{srv.port}"


class Clients:
    """confluent-kafka clients on one server, all closed at the end (`with`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._open: list[SchemaRegistryClient] = []

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self._open:
            client.close()

    def _keep(self, client: SchemaRegistryClient) -> SchemaRegistryClient:
        self._open.append(client)
        return client

    def basic(self, key: str = KEY, user: str = "anyone") -> SchemaRegistryClient:
        """The stock Basic configuration: `basic.auth.user.info`, any user name."""
        return self._keep(
            SchemaRegistryClient({"url": self.url, "basic.auth.user.info": f"{user}:{key}"})
        )

    def bearer(self, key: str = KEY) -> SchemaRegistryClient:
        """A static bearer token; the client insists on a logical cluster, which
        tidelog ignores."""
        return self._keep(
            SchemaRegistryClient(
                {
                    "url": self.url,
                    "bearer.auth.credentials.source": "STATIC_TOKEN",
                    "bearer.auth.token": key,
                    "bearer.auth.logical.cluster": "tidelog",
                }
            )
        )


async def run(scenario: Callable[[Clients], None], url: str) -> None:
    """Run a synchronous client scenario in a thread: the server serves on this loop."""

    def scenario_with_clients() -> None:
        with Clients(url) as clients:
            scenario(clients)

    await asyncio.to_thread(scenario_with_clients)


def error_code(call: Callable[[], Any]) -> int:
    with pytest.raises(SchemaRegistryError) as info:
        call()
    return int(info.value.error_code)


VALUE = SerializationContext("orders", MessageField.VALUE)
AVRO_VALUE = SerializationContext("payments", MessageField.VALUE)


def confluent_json_round_trip(c: Clients) -> None:
    client = c.basic()
    serializer = JSONSerializer(json.dumps(ORDER_JSON), client)
    order = {"order_id": "o-1", "total": 42}
    framed = serializer(order, VALUE)
    assert framed is not None and framed[0] == 0  # Confluent's wire format: magic byte, id
    schema_id = int.from_bytes(framed[1:5], "big")
    assert JSONDeserializer(None, schema_registry_client=client)(framed, VALUE) == order
    assert client.get_subjects() == ["orders-value"]
    latest = client.get_latest_version("orders-value")
    assert (latest.schema_id, latest.version) == (schema_id, 1)
    assert latest.schema.schema_type == "JSON"
    assert json.loads(latest.schema.schema_str) == ORDER_JSON

    # auto.register.schemas=False looks the schema up (POST /subjects/{s}) and never registers
    fresh = c.basic()
    lookup_only = JSONSerializer(
        json.dumps(ORDER_JSON), fresh, conf={"auto.register.schemas": False}
    )
    assert lookup_only(order, VALUE) == framed
    unknown = JSONSerializer(
        json.dumps(ORDER_JSON_V2), fresh, conf={"auto.register.schemas": False}
    )
    assert error_code(lambda: unknown({**order, "note": "x"}, VALUE)) == 40403
    assert fresh.get_versions("orders-value") == [1]
    found = fresh.lookup_schema("orders-value", Schema(json.dumps(ORDER_JSON), "JSON"))
    assert (found.schema_id, found.version, found.subject) == (schema_id, 1, "orders-value")
    assert (
        error_code(
            lambda: fresh.lookup_schema("nope-value", Schema(json.dumps(ORDER_JSON), "JSON"))
        )
        == 40401
    )


def confluent_avro_round_trip(c: Clients) -> None:
    client = c.bearer()
    serializer = AvroSerializer(client, json.dumps(ORDER_AVRO))
    order = {"order_id": "o-2", "total": 7}
    framed = serializer(order, AVRO_VALUE)
    assert framed is not None and framed[0] == 0
    assert AvroDeserializer(client)(framed, AVRO_VALUE) == order
    latest = client.get_latest_version("payments-value")
    assert latest.schema.schema_type == "AVRO" and latest.version == 1
    assert json.loads(latest.schema.schema_str) == ORDER_AVRO

    # the same schema written differently (spacing, key order) is the same version
    reordered = json.dumps(dict(reversed(list(ORDER_AVRO.items()))), indent=2)
    same = client.register_schema("payments-value", Schema(reordered, "AVRO"))
    assert same == latest.schema_id
    lookup_only = AvroSerializer(c.bearer(), reordered, conf={"auto.register.schemas": False})
    assert lookup_only(order, AVRO_VALUE) == framed

    # a compatible evolution registers; a reader of v2 reads v1 data (the default fills in)
    v2 = AvroSerializer(client, json.dumps(ORDER_AVRO_V2))
    framed_v2 = v2({**order, "note": "gift"}, AVRO_VALUE)
    assert client.get_versions("payments-value") == [1, 2]
    reader = AvroDeserializer(client, json.dumps(ORDER_AVRO_V2))
    assert reader(framed, AVRO_VALUE) == {**order, "note": ""}
    assert reader(framed_v2, AVRO_VALUE) == {**order, "note": "gift"}

    # an incompatible one is refused with 409 and registers nothing
    broken = Schema(json.dumps(ORDER_AVRO_BROKEN), "AVRO")
    assert not client.test_compatibility("payments-value", broken)
    assert error_code(lambda: client.register_schema("payments-value", broken)) == 409
    assert client.get_versions("payments-value") == [1, 2]
    # invalid Avro is 42201, as is Protobuf, which tidelog does not take
    bad = Schema(json.dumps({"type": "record", "name": "X", "fields": [{"name": "a"}]}), "AVRO")
    assert error_code(lambda: client.register_schema("payments-value", bad)) == 42201
    proto = Schema('syntax = "proto3"; message M { string a = 1; }', "PROTOBUF")
    assert error_code(lambda: client.register_schema("proto-value", proto)) == 42201
    assert client.get_schema_types() == ["AVRO", "JSON"]


async def test_confluent_kafka_json_and_avro_round_trips(url: str) -> None:
    await run(confluent_json_round_trip, url)
    await run(confluent_avro_round_trip, url.replace("127.0.0.1", "localhost"))


def avro_modes(c: Clients) -> None:
    """Each Confluent mode decided by avro's reader/writer checker, transitive ones too."""
    client = c.basic()

    def schema(value: dict[str, Any]) -> Schema:
        return Schema(json.dumps(value), "AVRO")

    v1 = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}
    v2 = {**v1, "fields": [*v1["fields"], {"name": "b", "type": "string", "default": "x"}]}
    required_b = {**v1, "fields": [*v1["fields"], {"name": "b", "type": "string"}]}
    no_a = {"type": "record", "name": "R", "fields": []}
    widened = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "long"}]}

    cases = [
        # (mode, candidate, compatible?)
        ("BACKWARD", required_b, False),  # a reader with a new required field
        ("BACKWARD", widened, True),  # int data read as long: promotion
        ("FORWARD", required_b, True),  # old readers ignore the new field
        ("FORWARD", widened, False),  # long data cannot be read as int
        ("FORWARD", no_a, False),  # old readers need a, which has no default
        ("BACKWARD", no_a, True),  # a new reader ignores a
        ("FULL", v2, True),
        ("FULL", widened, False),
        ("NONE", {"type": "string"}, True),
    ]
    for i, (mode, candidate, compatible) in enumerate(cases):
        subject = f"modes-{i}-value"
        client.register_schema(subject, schema(v1))
        client.set_compatibility(subject, mode)
        assert client.get_compatibility(subject) == mode
        got = client.test_compatibility(subject, schema(candidate))
        assert got is compatible, (mode, candidate)
        assert client.test_compatibility_all_versions(subject, schema(candidate)) is compatible

    # transitive: compatible with the latest, not with the first
    client.register_schema("chain-value", schema(v1))
    client.set_compatibility("chain-value", "BACKWARD")
    client.register_schema("chain-value", schema(v2))  # b with a default
    without_default = {**v1, "fields": [*v1["fields"], {"name": "b", "type": "string"}]}
    # reads v2 data (b present) but not v1 data (b missing, no default)
    assert client.test_compatibility("chain-value", schema(without_default), "latest")
    assert not client.test_compatibility("chain-value", schema(without_default), 1)
    assert client.test_compatibility_all_versions("chain-value", schema(without_default))
    client.set_compatibility("chain-value", "BACKWARD_TRANSITIVE")
    assert not client.test_compatibility_all_versions("chain-value", schema(without_default))
    assert error_code(lambda: client.register_schema("chain-value", schema(without_default))) == 409
    client.set_compatibility("chain-value", "FORWARD_TRANSITIVE")
    assert client.test_compatibility_all_versions("chain-value", schema(without_default))
    client.set_compatibility("chain-value", "FULL_TRANSITIVE")
    assert not client.test_compatibility_all_versions("chain-value", schema(without_default))
    # the subject's own mode removed: the global one again
    assert client.delete_config("chain-value").compatibility_level is not None
    assert client.get_compatibility("chain-value") == client.get_compatibility()
    assert error_code(lambda: client.delete_config("chain-value")) == 40408


async def test_avro_compatibility_in_every_mode(url: str) -> None:
    await run(avro_modes, url)


def json_modes(c: Clients) -> None:
    client = c.bearer()
    client.set_compatibility(level="BACKWARD_TRANSITIVE")
    assert client.get_compatibility() == "BACKWARD_TRANSITIVE"
    client.register_schema("events-value", Schema(json.dumps(ORDER_JSON), "JSON"))
    client.register_schema("events-value", Schema(json.dumps(ORDER_JSON_V2), "JSON"))
    narrowed = {**ORDER_JSON, "properties": {"order_id": {"type": "integer"}}}
    assert not client.test_compatibility_all_versions(
        "events-value", Schema(json.dumps(narrowed), "JSON")
    )
    # set_config sends `compatibilityLevel` (set_compatibility sends `compatibility`)
    level = ServerConfig(compatibility_level=ConfigCompatibilityLevel.NONE)
    client.set_config("events-value", level)
    assert client.get_config("events-value").compatibility_level == ConfigCompatibilityLevel.NONE
    assert client.test_compatibility_all_versions(
        "events-value", Schema(json.dumps(narrowed), "JSON")
    )
    # the boolean schemas
    assert client.register_schema("anything-value", Schema("true", "JSON")) > 0
    assert client.get_latest_version("anything-value").schema.schema_str == "true"
    refused = client.register_schema("nothing-value", Schema("false", "JSON"))
    assert client.lookup_schema("nothing-value", Schema("false", "JSON")).schema_id == refused
    # `true` accepts everything, so it reads what `false` (which admits nothing) wrote
    assert client.test_compatibility("nothing-value", Schema("true", "JSON"))
    client.set_compatibility(level="BACKWARD")


async def test_json_compatibility_and_boolean_schemas(url: str) -> None:
    await run(json_modes, url)


def deletes(c: Clients) -> None:
    client = c.basic()
    s1 = client.register_schema("pay-value", Schema(json.dumps(ORDER_JSON), "JSON"))
    s2 = client.register_schema("pay-value", Schema(json.dumps(ORDER_JSON_V2), "JSON"))
    assert client.get_schema_versions(s2)[0].subject == "pay-value"

    # a version: soft, then permanent
    assert error_code(lambda: client.delete_version("pay-value", 2, permanent=True)) == 40407
    assert client.delete_version("pay-value", 2) == 2
    assert client.get_versions("pay-value") == [1]
    assert error_code(lambda: client.get_version("pay-value", 2)) == 40402
    assert client.get_version("pay-value", 2, deleted=True).schema_id == s2
    assert client.get_schema(s2).schema_type == "JSON"  # its id still resolves for readers
    assert error_code(lambda: client.delete_version("pay-value", 2)) == 40406
    assert client.delete_version("pay-value", 2, permanent=True) == 2
    fresh = c.basic()  # the client caches what it read; the server has forgotten it
    assert error_code(lambda: fresh.get_version("pay-value", 2, deleted=True)) == 40402
    assert error_code(lambda: fresh.get_schema(s2)) == 40403

    # a subject: soft, then permanent
    assert error_code(lambda: client.delete_subject("pay-value", permanent=True)) == 40405
    assert client.delete_subject("pay-value") == [1]
    assert "pay-value" not in client.get_subjects()
    assert "pay-value" in client.get_subjects(deleted=True)
    assert client.get_subjects(deleted_only=True) == ["pay-value"]
    assert client.get_subjects(subject_prefix="pay", deleted=True) == ["pay-value"]
    assert client.get_subjects(subject_prefix="nothing", deleted=True) == []
    assert error_code(lambda: client.get_versions("pay-value")) == 40401
    assert error_code(lambda: client.delete_subject("pay-value")) == 40404
    assert client.delete_subject("pay-value", permanent=True) == [1]
    assert error_code(lambda: client.delete_subject("pay-value", permanent=True)) == 40401
    assert error_code(lambda: c.basic().get_schema(s1)) == 40403
    # registering again starts the subject anew
    assert client.register_schema("pay-value", Schema(json.dumps(ORDER_JSON), "JSON")) > 0
    assert client.get_versions("pay-value") == [1]


async def test_soft_and_permanent_deletes_like_confluent(url: str) -> None:
    await run(deletes, url)


async def test_a_deleted_version_no_longer_validates_writes_and_events_stay(
    serve: Serve,
) -> None:
    srv, store = await serve()
    url = f"http://127.0.0.1:{srv.port}"
    v1 = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    v2 = {**v1, "properties": {"n": {"type": "integer"}, "m": {"type": "string"}}}
    validating = ValidatingStore(store, SchemaRegistry(store))
    with Clients(url) as c:
        client = c.basic(ADMIN_KEY)
        for schema in (v1, v2):
            await asyncio.to_thread(
                client.register_schema, "Counted", Schema(json.dumps(schema), "JSON")
            )
        await validating.append("count-1", [tidelog.NewEvent(type="Counted", data=b'{"n": 1}')])
        with pytest.raises(tidelog.SchemaViolation):
            await validating.append("count-1", [tidelog.NewEvent(type="Counted", data=b"{}")])
        await asyncio.to_thread(client.delete_version, "Counted", 1)
        with pytest.raises(tidelog.SchemaViolation, match="deleted"):
            await validating.append("count-1", [tidelog.NewEvent(type="Counted", data=b'{"n": 2}')])
        await validating.append(
            "count-1", [tidelog.NewEvent(type="Counted", data=b'{"n": 2}', schema_version=2)]
        )
        await asyncio.to_thread(client.delete_subject, "Counted")
        await asyncio.to_thread(client.delete_subject, "Counted", True)
    # deleting schemas never deletes events
    assert [e.data async for e in store.read_stream("count-1")] == [b'{"n": 1}', b'{"n": 2}']


def python_client_round_trips(url: str, key: str) -> None:
    """python-schema-registry-client: Basic from the URL, and `auth=` (Basic or Bearer)."""
    host = url.removeprefix("http://")
    clients = [
        PySchemaRegistryClient(f"http://anyone:{key}@{host}"),
        PySchemaRegistryClient(url, auth=httpx.BasicAuth("anyone", key)),
        PySchemaRegistryClient(url, auth=_Bearer(key)),
    ]
    for i, client in enumerate(clients):
        subject = f"py-{i}-value"
        avro = py_schema.AvroSchema(ORDER_AVRO)
        schema_id = client.register(subject, avro)
        assert client.check_version(subject, avro).schema_id == schema_id  # type: ignore[union-attr]
        assert client.get_by_id(schema_id) == avro
        serializer = AvroMessageSerializer(client)
        framed = serializer.encode_record_with_schema(subject, avro, {"order_id": "o", "total": 1})
        assert serializer.decode_message(framed) == {"order_id": "o", "total": 1}
        assert client.test_compatibility(subject, py_schema.AvroSchema(ORDER_AVRO_V2))
        assert not client.test_compatibility(subject, py_schema.AvroSchema(ORDER_AVRO_BROKEN))
        assert client.update_compatibility("FULL", subject)
        assert client.get_compatibility(subject) == "FULL"

        json_subject = f"py-{i}-json-value"
        json_schema = py_schema.JsonSchema(ORDER_JSON)
        json_id = client.register(json_subject, json_schema)
        json_serializer = JsonMessageSerializer(client)
        order = {"order_id": "o", "total": 2}
        framed = json_serializer.encode_record_with_schema(json_subject, json_schema, order)
        assert json_serializer.decode_message(framed) == order
        assert client.get_schema(json_subject).schema_id == json_id  # type: ignore[union-attr]
        assert client.get_versions(json_subject) == [1]
        assert client.get_schema_subject_versions(json_id)[0].subject == json_subject  # type: ignore[index]
        assert client.delete_version(json_subject, 1) == 1
        assert client.delete_subject(subject) == [1]
        # not found: None, as documented (a fresh client: this one caches what it saw)
        assert PySchemaRegistryClient(url, auth=_Bearer(key)).check_version(subject, avro) is None


class _Bearer(httpx.Auth):
    def __init__(self, token: str) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


async def test_python_schema_registry_client_round_trips(url: str) -> None:
    await asyncio.to_thread(python_client_round_trips, url, KEY)


def auth_failures(c: Clients) -> None:
    # a wrong key is 401 with Confluent's code and a challenge
    assert error_code(lambda: c.basic("wrong").get_subjects()) == 40101
    assert error_code(lambda: c.bearer("wrong").get_subjects()) == 40101
    # a reader may read but not register
    reader = c.basic(READER_KEY)
    assert reader.get_subjects() == []
    denied = lambda: reader.register_schema("r-value", Schema("true", "JSON"))  # noqa: E731
    assert error_code(denied) == 40301
    with pytest.raises(ClientError) as info:
        PySchemaRegistryClient(c.url, auth=httpx.BasicAuth("x", "wrong")).get_subjects()
    assert info.value.http_code == 401


async def test_basic_and_bearer_auth_refusals(url: str) -> None:
    await run(auth_failures, url)


SECRET = "S3cret-basic-key"


async def test_bad_basic_credentials_are_401_with_a_challenge_and_never_echoed(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    encoded = base64.b64encode(f"me:{SECRET}".encode()).decode()
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(base_url=url) as client:
        for path in ("/subjects", "/v1/streams"):
            for header in (
                f"Basic {encoded}",
                f"Basic {SECRET}",  # not base64 of user:key
                "Basic " + base64.b64encode(SECRET.encode()).decode(),  # no colon
                "Basic " + "A" * 40000,  # oversized
                f"Digest {SECRET}",
            ):
                r = await client.get(path, headers={"Authorization": header})
                assert r.status_code == 401, (path, header[:20], r.text)
                scheme = "Basic" if header.startswith("Basic") else "Bearer"
                assert r.headers["www-authenticate"].startswith(f"{scheme} realm=")
                assert SECRET not in r.text and encoded not in r.text
        # the /v1 API takes Basic like the registry does
        good = base64.b64encode(f"whoever:{ADMIN_KEY}".encode()).decode()
        ok = await client.get("/v1/streams", headers={"Authorization": f"Basic {good}"})
        assert ok.status_code == 200, ok.text
        assert (await client.get("/v1/streams")).headers["www-authenticate"] == (
            'Bearer realm="tidelog"'
        )
    assert SECRET not in caplog.text and encoded not in caplog.text


async def test_every_registry_path_answers_in_confluent_shape(url: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as client:
        cases = [
            ("GET", "/subjects/a/b/c/d", 404, 404),
            ("GET", "/schemas/nothing", 404, 404),
            ("GET", "/mode", 404, 404),
            ("PATCH", "/subjects", 405, 405),
            ("DELETE", "/config", 405, 405),
            ("PUT", "/schemas/types", 405, 405),
            ("GET", "/schemas/ids/abc", 404, 404),
            ("GET", "/config/bad%01name", 422, 42208),
            ("DELETE", "/config/never-configured", 404, 40408),
            ("DELETE", "/subjects/never-registered", 404, 40401),
            ("DELETE", "/subjects/never-registered/versions/1", 404, 40401),
            ("GET", "/schemas/ids/5/versions", 404, 40403),
        ]
        for method, path, status, code in cases:
            r = await client.request(method, path)
            assert (r.status_code, r.json()["error_code"]) == (status, code), (method, path, r.text)
            assert isinstance(r.json()["message"], str) and r.json()["message"]
        # the /v1 API keeps its own error shape
        r = await client.get("/v1/nothing-here")
        assert r.status_code == 404 and "error_code" not in r.json()


def slashes_and_long_subjects(c: Clients) -> None:
    client = c.basic()
    for subject in ("team/orders-value", "a" * 255, "with space%and percent", "ünï/cøde"):
        schema_id = client.register_schema(subject, Schema(json.dumps(ORDER_JSON), "JSON"))
        assert client.get_latest_version(subject).subject == subject
        assert client.get_versions(subject) == [1]
        assert client.lookup_schema(subject, Schema(json.dumps(ORDER_JSON), "JSON")).schema_id == (
            schema_id
        )
        client.set_compatibility(subject, "NONE")
        assert client.get_compatibility(subject) == "NONE"
        assert client.delete_subject(subject) == [1]
    assert (
        error_code(
            lambda: client.register_schema("a" * 256, Schema(json.dumps(ORDER_JSON), "JSON"))
        )
        == 42208
    )


async def test_subjects_with_slashes_and_up_to_255_characters(url: str) -> None:
    await run(slashes_and_long_subjects, url)


async def test_put_config_takes_compatibility_level_and_raw_schema_route(url: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as client:
        r = await client.put("/config", json={"compatibilityLevel": "forward"})
        assert r.status_code == 200 and r.json() == {"compatibility": "FORWARD"}
        assert (await client.get("/config")).json()["compatibilityLevel"] == "FORWARD"
        r = await client.post(
            "/subjects/raw-value/versions",
            json={"schema": json.dumps(ORDER_AVRO), "schemaType": "AVRO"},
        )
        assert r.status_code == 200, r.text
        raw = await client.get("/subjects/raw-value/versions/latest/schema")
        assert raw.status_code == 200 and raw.json() == ORDER_AVRO
        # an Avro schema sent without schemaType is JSON here: refused with a hint
        hinted = await client.post(
            "/subjects/hint-value/versions", json={"schema": json.dumps(ORDER_AVRO)}
        )
        assert hinted.status_code == 422 and "AVRO" in hinted.json()["message"]


async def test_asyncapi_document_carries_avro_and_boolean_subjects(url: str) -> None:
    """The AsyncAPI document reads registered schemas: Avro ones keep their format."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as client:
        for subject, body in (
            ("payments-value", {"schema": json.dumps(ORDER_AVRO), "schemaType": "AVRO"}),
            ("Anything", {"schema": "true"}),
            ("Nothing", {"schema": "false"}),
        ):
            r = await client.post(f"/subjects/{subject}/versions", json=body)
            assert r.status_code == 200, r.text
        doc = await client.get("/asyncapi.json")
        assert doc.status_code == 200, doc.text
        messages = doc.json()["components"]["messages"]
        assert messages["payments-value"]["payload"] == {
            "schemaFormat": "application/vnd.apache.avro;version=1.9.0",
            "schema": ORDER_AVRO,
        }
        assert doc.json()["components"]["schemas"]["Nothing"] is False
        assert "Anything" in messages


async def test_openapi_documents_the_bodies_of_the_new_registry_routes(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        paths = (await client.get("/schema/openapi.json")).json()["paths"]
    for path in ("/subjects/{subject}", "/compatibility/subjects/{subject}/versions"):
        content = paths[path]["post"]["requestBody"]["content"]
        assert content["application/vnd.schemaregistry.v1+json"]["schema"] == {
            "$ref": "#/components/schemas/RegisterSchema"
        }, path
    for path, method in (
        ("/subjects/{subject}", "delete"),
        ("/subjects/{subject}/versions/{version}", "delete"),
        ("/config/{subject}", "delete"),
        ("/schemas/ids/{schema_id}/versions", "get"),
        ("/subjects/{subject}/versions/{version}/schema", "get"),
        ("/schemas/types", "get"),
    ):
        assert method in paths[path], (path, method)
