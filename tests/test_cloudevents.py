"""CloudEvents 1.0 over HTTP against a live server: the three modes, the mapping, reading back,
and a catalogue of malformed CloudEvents that must each get a 4xx and change nothing."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx
import pytest

import tidelog
from support.server import ADMIN_KEY, Serve
from tidelog.server._cloudevents import CLOUDEVENTS_NAMESPACE, cloudevent_id

STRUCTURED = {"content-type": "application/cloudevents+json"}
BATCH = {"content-type": "application/cloudevents-batch+json"}

BAD_CLOUDEVENTS_TRIED: list[str] = []
_ABSENT: Any = object()  # leaves the attribute out of `_ce`


@pytest.fixture(scope="module", autouse=True)
def report_count() -> Any:
    yield
    print(f"\n[security catalogue] bad CloudEvents tried: {len(BAD_CLOUDEVENTS_TRIED)}")


@pytest.fixture
async def server(serve: Serve) -> tuple[str, tidelog.Store]:
    srv, store = await serve(
        keys={"k-writer": "writer", "k-reader": "reader", "k-billing": "billing"},
        grants=(
            "writer=write:category:order",
            "reader=read:category:order",
            "billing=write:category:invoice",
            "billing=read:category:invoice",
        ),
    )
    return f"http://127.0.0.1:{srv.port}", store


def _client(url: str, key: str = ADMIN_KEY) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"})


def _ce(**changes: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": "evt-1",
        "source": "/shop/orders",
        "type": "OrderPlaced",
        "subject": "order-1",
        "data": {"total": 10},
    }
    event.update(changes)
    return {k: v for k, v in event.items() if v is not _ABSENT}


async def test_structured_mode_maps_attributes_and_keeps_json_data_byte_exact(
    server: tuple[str, tidelog.Store],
) -> None:
    url, store = server
    body = (
        b'{"specversion": "1.0", "id": "A-1", "source": "urn:shop", "type": "OrderPlaced",'
        b' "subject": "order-7", "time": "2026-01-02T03:04:05Z",'
        b' "dataschema": "https://example.com/order.json", "correlationid": "c-1",'
        b' "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",'
        b' "data": {"total" :  10, "items": [ 1,2 ]}}'
    )
    async with _client(url) as client:
        r = await client.post("/v1/cloudevents", content=body, headers=STRUCTURED)
    assert r.status_code == 200, r.text
    # uuid5 over the principal ("admin", the test key's), source and id, stamped version 8
    hashed = uuid.uuid5(CLOUDEVENTS_NAMESPACE, "5:admin:8:urn:shop:A-1").int
    expected_id = uuid.UUID(int=(hashed & ~(0xF << 76)) | (8 << 76))
    assert expected_id.version == 8
    assert r.json() == {
        "results": {"order-7": {"version": 0, "position": 1}},
        "ids": [str(expected_id)],
    }
    [event] = [e async for e in store.read_stream("order-7")]
    assert event.id == expected_id == cloudevent_id("admin", "urn:shop", "A-1")
    assert event.type == "OrderPlaced"
    assert event.data == b'{"total" :  10, "items": [ 1,2 ]}'
    assert event.metadata == {
        "id": "A-1",
        "source": "urn:shop",
        "subject": "order-7",
        "time": "2026-01-02T03:04:05Z",
        "dataschema": "https://example.com/order.json",
        "correlationid": "c-1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }


async def test_resending_a_cloudevent_is_an_idempotent_retry(
    server: tuple[str, tidelog.Store],
) -> None:
    url, store = server
    async with _client(url) as client:
        first = await client.post("/v1/cloudevents", json=_ce(), headers=STRUCTURED)
        again = await client.post("/v1/cloudevents", json=_ce(), headers=STRUCTURED)
        # the same source+id aimed at another stream is not a retry: refused
        other = await client.post(
            "/v1/cloudevents", json=_ce(subject="order-2"), headers=STRUCTURED
        )
        # the same id from another source is another CloudEvent
        new = await client.post(
            "/v1/cloudevents", json=_ce(source="/elsewhere"), headers=STRUCTURED
        )
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert other.status_code == 409 and other.json()["code"] == "duplicate_event_id"
    # said as it is (#15): this id is stored in another stream, not "mixes new events"
    assert other.json()["in_other_stream"] is True
    assert "already stored in another stream" in other.json()["message"]
    assert "mixes" not in other.json()["message"]
    assert new.status_code == 200 and new.json()["results"]["order-1"]["version"] == 1
    assert [e.metadata["source"] async for e in store.read_stream("order-1")] == [
        "/shop/orders",
        "/elsewhere",
    ]
    assert [e async for e in store.read_stream("order-2")] == []


async def test_batch_mode_appends_to_several_streams_atomically(
    server: tuple[str, tidelog.Store],
) -> None:
    url, store = server
    batch = [
        _ce(id="1", subject="order-1"),
        _ce(id="2", subject="order-2", type="OrderShipped"),
        _ce(id="3", subject="order-1", type="OrderPaid", data=_ABSENT, data_base64="AAEC"),
    ]
    async with _client(url) as client:
        r = await client.post("/v1/cloudevents", json=batch, headers=BATCH)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert (results["order-1"]["version"], results["order-2"]["version"]) == (1, 0)
        assert len(r.json()["ids"]) == 3
        # one bad member refuses the whole batch
        bad = [_ce(id="4", subject="order-3"), _ce(id="5", specversion="0.3")]
        refused = await client.post("/v1/cloudevents", json=bad, headers=BATCH)
        assert refused.status_code == 400
        empty = await client.post("/v1/cloudevents", json=[], headers=BATCH)
        assert empty.status_code == 200 and empty.json() == {"results": {}, "ids": []}
    assert [(e.type, e.data) async for e in store.read_stream("order-1")] == [
        ("OrderPlaced", b'{"total":10}'),
        ("OrderPaid", b"\x00\x01\x02"),
    ]
    assert [e async for e in store.read_stream("order-3")] == []
    assert await store.last_position() == 3


async def test_binary_mode_takes_ce_headers_and_the_body_as_data(
    server: tuple[str, tidelog.Store],
) -> None:
    url, store = server
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "bin-1",
        "ce-source": "/sensors/%C3%A9t%C3%A9",  # percent-encoded UTF-8
        "ce-type": "Reading",
        "ce-subject": "sensor-9",
        "ce-causationid": "cause-1",
        "content-type": "text/plain; charset=utf-8",
    }
    async with _client(url) as client:
        r = await client.post("/v1/cloudevents", content=b"21.5 C\n", headers=headers)
        assert r.status_code == 200, r.text
        # ?stream= wins over the subject
        r2 = await client.post(
            "/v1/cloudevents?stream=sensor-10",
            content=b"\x00\xff",
            headers={**headers, "ce-id": "bin-2", "content-type": "application/octet-stream"},
        )
        assert r2.status_code == 200, r2.text
    [event] = [e async for e in store.read_stream("sensor-9")]
    assert event.data == b"21.5 C\n"
    assert event.metadata["source"] == "/sensors/été"
    assert event.metadata["datacontenttype"] == "text/plain; charset=utf-8"
    assert event.metadata["causationid"] == "cause-1"
    [raw] = [e async for e in store.read_stream("sensor-10")]
    assert raw.data == b"\x00\xff" and raw.metadata["subject"] == "sensor-9"


async def test_text_data_in_structured_mode_is_stored_as_its_utf8_bytes(
    server: tuple[str, tidelog.Store],
) -> None:
    url, store = server
    async with _client(url) as client:
        r = await client.post(
            "/v1/cloudevents",
            json=_ce(datacontenttype="text/plain", data="héllo"),
            headers=STRUCTURED,
        )
    assert r.status_code == 200, r.text
    [event] = [e async for e in store.read_stream("order-1")]
    assert event.data == "héllo".encode()


async def test_events_read_back_as_the_same_cloudevents(
    server: tuple[str, tidelog.Store],
) -> None:
    url, store = server
    sent = [
        _ce(id="1", data={"a": [1, 2]}, correlationid="corr", time="2026-01-01T00:00:00Z"),
        _ce(id="2", data=_ABSENT, data_base64=base64.b64encode(b"\x00\x01").decode()),
        _ce(id="3", datacontenttype="text/plain", data="plain text"),
    ]
    async with _client(url) as client:
        assert (await client.post("/v1/cloudevents", json=sent, headers=BATCH)).status_code == 200
        await store.append("order-1", [tidelog.NewEvent(type="Native", data=b'{"n": 1}')])
        r = await client.get("/v1/streams/order-1/cloudevents", params={"limit": 10})
        tail = await client.get("/v1/streams/order-1/cloudevents", params={"from_version": 3})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/cloudevents-batch+json")
    got = r.json()
    assert [g["id"] for g in got[:3]] == ["1", "2", "3"]
    for original, back in zip(sent, got, strict=False):
        for attribute in ("specversion", "id", "source", "type", "subject"):
            assert back[attribute] == original[attribute]
    assert got[0]["data"] == {"a": [1, 2]} and got[0]["correlationid"] == "corr"
    assert got[0]["time"] == "2026-01-01T00:00:00Z"
    assert got[1]["data_base64"] == "AAE=" and "data" not in got[1]
    assert got[2]["data"] == "plain text" and got[2]["datacontenttype"] == "text/plain"
    native = got[3]
    recorded = [e async for e in store.read_stream("order-1")][3]
    assert native["id"] == str(recorded.id)
    assert native["source"] == "/tidelog/streams/order-1"
    assert native["type"] == "Native" and native["data"] == {"n": 1}
    assert (native["tidelogstream"], native["tidelogversion"]) == ("order-1", 3)
    assert native["tidelogposition"] == recorded.position
    assert [g["id"] for g in tail.json()] == [str(recorded.id)]


async def test_access_control_applies_to_cloudevents(
    server: tuple[str, tidelog.Store],
) -> None:
    url, store = server
    async with (
        _client(url, "k-reader") as reader,
        _client(url, "k-writer") as writer,
        httpx.AsyncClient(base_url=url) as nobody,
    ):
        anonymous = await nobody.post("/v1/cloudevents", json=_ce(), headers=STRUCTURED)
        denied = await reader.post("/v1/cloudevents", json=_ce(), headers=STRUCTURED)
        other_category = await writer.post(
            "/v1/cloudevents", json=_ce(subject="invoice-1"), headers=STRUCTURED
        )
        ok = await writer.post("/v1/cloudevents", json=_ce(), headers=STRUCTURED)
        no_read = await writer.get("/v1/streams/order-1/cloudevents")
        read = await reader.get("/v1/streams/order-1/cloudevents")
    assert denied.status_code == 403
    assert other_category.status_code == 403
    assert anonymous.status_code == 401
    assert ok.status_code == 200
    assert no_read.status_code == 403
    assert read.status_code == 200 and len(read.json()) == 1
    assert await store.last_position() == 1


async def test_cloudevent_ids_cannot_be_squatted_or_probed_across_principals(
    server: tuple[str, tidelog.Store],
) -> None:
    """Issue #18 item 5: ids are unique store-wide, so with ids derived from
    `source` + `id` alone a principal allowed to write only `order-*` could
    pre-write billing's next CloudEvent (billing's ingest then fails with 409)
    and probe billing's streams (409 versus 200). Ids are per principal now."""
    url, store = server
    invoice = _ce(source="urn:billing", id="INV-2001", subject="invoice-2001")
    async with _client(url, "k-writer") as squatter, _client(url, "k-billing") as billing:
        # the squatter pre-writes billing's (source, id) into its own stream
        squat = await squatter.post(
            "/v1/cloudevents", json={**invoice, "subject": "order-666"}, headers=STRUCTURED
        )
        assert squat.status_code == 200, squat.text
        # ... and cannot store billing's derived id through the /v1 API either
        billing_id = cloudevent_id("billing", "urn:billing", "INV-2001")
        forged = await squatter.post(
            "/v1/streams/order-667/events",
            json={"events": [{"type": "X", "id": str(billing_id)}]},
        )
        assert forged.status_code == 400 and "reserved" in forged.text
        # an admin may (copying a store onto a server keeps its ids)
        async with _client(url) as admin:
            copied = await admin.post(
                "/v1/streams/order-669/events",
                json={"events": [{"type": "X", "id": str(cloudevent_id("x", "y", "z"))}]},
            )
        assert copied.status_code == 200, copied.text
        # the real producer's ingest succeeds, and its retry is idempotent
        real = await billing.post("/v1/cloudevents", json=invoice, headers=STRUCTURED)
        retry = await billing.post("/v1/cloudevents", json=invoice, headers=STRUCTURED)
        assert real.status_code == retry.status_code == 200, real.text
        assert real.json() == retry.json() and real.json()["ids"] == [str(billing_id)]
        # probing: INV-2002 exists in billing's stream, INV-NEVER nowhere; the
        # squatter gets the same answer for both (each lands in its own id space)
        second = {**invoice, "id": "INV-2002"}
        assert (await billing.post("/v1/cloudevents", json=second, headers=STRUCTURED)).is_success
        answers = [
            await squatter.post(
                "/v1/cloudevents",
                json={**invoice, "id": i, "subject": "order-668"},
                headers=STRUCTURED,
            )
            for i in ("INV-2002", "INV-NEVER")
        ]
        assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert [e.id async for e in store.read_stream("invoice-2001")] == [
        billing_id,
        cloudevent_id("billing", "urn:billing", "INV-2002"),
    ]
    assert [e.metadata["source"] async for e in store.read_stream("order-666")] == ["urn:billing"]
    assert [e async for e in store.read_stream("order-667")] == []


def _structured(event: Any) -> tuple[dict[str, str], bytes]:
    return STRUCTURED, json.dumps(event).encode()


_LONG = "x" * 5000
_BINARY = {
    "ce-specversion": "1.0",
    "ce-id": "b",
    "ce-source": "/s",
    "ce-type": "T",
    "ce-subject": "order-1",
}

# (label, headers, body, query)
BAD: list[tuple[str, dict[str, str], bytes, str]] = [
    ("specversion missing", *_structured(_ce(specversion=_ABSENT)), ""),
    ("specversion 0.3", *_structured(_ce(specversion="0.3")), ""),
    ("specversion number", *_structured(_ce(specversion=1.0)), ""),
    ("id missing", *_structured(_ce(id=_ABSENT)), ""),
    ("id empty", *_structured(_ce(id="")), ""),
    ("id number", *_structured(_ce(id=5)), ""),
    ("id null", *_structured(_ce(id=None)), ""),
    ("source missing", *_structured(_ce(source=_ABSENT)), ""),
    ("source empty", *_structured(_ce(source="")), ""),
    ("source object", *_structured(_ce(source={"a": 1})), ""),
    ("type missing", *_structured(_ce(type=_ABSENT)), ""),
    ("type empty", *_structured(_ce(type="")), ""),
    ("type with space", *_structured(_ce(type="Order Placed")), ""),
    ("type with slash", *_structured(_ce(type="a/b")), ""),
    ("type too long", *_structured(_ce(type="T" * 201)), ""),
    ("no subject, no ?stream", *_structured(_ce(subject=_ABSENT)), ""),
    ("subject not a stream name", *_structured(_ce(subject="../etc")), ""),
    ("subject with space", *_structured(_ce(subject="order 1")), ""),
    ("subject a system stream", *_structured(_ce(subject="$schemas")), ""),
    ("subject not a string", *_structured(_ce(subject=12)), ""),
    ("?stream invalid", *_structured(_ce()), "stream=a%2Fb"),
    ("?stream empty", *_structured(_ce()), "stream="),
    ("time not RFC 3339", *_structured(_ce(time="yesterday")), ""),
    ("time without offset", *_structured(_ce(time="2026-01-01T00:00:00")), ""),
    ("time a number", *_structured(_ce(time=1700000000)), ""),
    ("datacontenttype a number", *_structured(_ce(datacontenttype=3)), ""),
    ("dataschema a bool", *_structured(_ce(dataschema=True)), ""),
    ("extension uppercase", *_structured(_ce(CorrelationId="x")), ""),
    ("extension underscore", *_structured(_ce(correlation_id="x")), ""),
    ("extension too long", *_structured(_ce(abcdefghijklmnopqrstu="x")), ""),
    ("extension empty name", *_structured(_ce(**{"": "x"})), ""),
    ("extension unicode name", *_structured(_ce(**{"corrélation": "x"})), ""),
    ("extension value object", *_structured(_ce(correlationid={"a": 1})), ""),
    ("extension value list", *_structured(_ce(correlationid=[1])), ""),
    ("extension value float", *_structured(_ce(retries=1.5)), ""),
    ("extension int out of range", *_structured(_ce(retries=2**40)), ""),
    ("extension value too long", *_structured(_ce(traceparent=_LONG)), ""),
    ("data and data_base64", *_structured(_ce(data_base64="AA==")), ""),
    ("data_base64 invalid", *_structured(_ce(data=_ABSENT, data_base64="%%%")), ""),
    ("data_base64 not a string", *_structured(_ce(data=_ABSENT, data_base64=5)), ""),
    ("text data not a string", *_structured(_ce(datacontenttype="text/plain", data={})), ""),
    ("structured body not JSON", STRUCTURED, b"{not json", ""),
    ("structured body a list", STRUCTURED, b"[]", ""),
    ("structured body not UTF-8", STRUCTURED, b'{"id": "\xff"}', ""),
    ("structured body empty", STRUCTURED, b"", ""),
    ("structured body deeply nested", *_structured(_ce(data=json.loads("[" * 60 + "]" * 60))), ""),
    ("batch not a list", BATCH, json.dumps(_ce()).encode(), ""),
    ("batch of non-objects", BATCH, b"[1, 2]", ""),
    ("batch with a bad member", BATCH, json.dumps([_ce(), _ce(id="")]).encode(), ""),
    ("batch repeating an id", BATCH, json.dumps([_ce(), _ce(type="Other")]).encode(), ""),
    ("batch too large", BATCH, json.dumps([_ce(id=str(i)) for i in range(1001)]).encode(), ""),
    ("plain JSON, no ce headers", {"content-type": "application/json"}, b"{}", ""),
    ("no content type at all", {}, b"", ""),
    (
        "binary without ce-specversion",
        {k: v for k, v in _BINARY.items() if k != "ce-specversion"}
        | {"content-type": "application/json"},
        b"{}",
        "",
    ),
    ("binary specversion 2.0", _BINARY | {"ce-specversion": "2.0"}, b"{}", ""),
    ("binary missing ce-id", {k: v for k, v in _BINARY.items() if k != "ce-id"}, b"", ""),
    ("binary missing ce-source", {k: v for k, v in _BINARY.items() if k != "ce-source"}, b"", ""),
    ("binary missing ce-type", {k: v for k, v in _BINARY.items() if k != "ce-type"}, b"", ""),
    ("binary bad type", _BINARY | {"ce-type": "a%20b"}, b"", ""),
    ("binary bad subject", _BINARY | {"ce-subject": "%2E%2E%2Fx"}, b"", ""),
    ("binary bad extension name", _BINARY | {"ce-trace_parent": "x"}, b"", ""),
    ("binary datacontenttype header", _BINARY | {"ce-datacontenttype": "text/plain"}, b"", ""),
    ("binary not UTF-8 percent-encoding", _BINARY | {"ce-source": "%FF%FE"}, b"", ""),
    ("binary bad time", _BINARY | {"ce-time": "noon"}, b"", ""),
    ("binary data too large", _BINARY, b"x" * (1024 * 1024 + 1), ""),
]


async def test_bad_cloudevents_are_4xx_and_change_nothing(
    server: tuple[str, tidelog.Store],
) -> None:
    """One server for the whole catalogue (a server per case would cost seconds each)."""
    url, store = server
    statuses: dict[str, int] = {}
    async with _client(url) as client:
        for label, headers, body, query in BAD:
            r = await client.post(f"/v1/cloudevents?{query}", content=body, headers=headers)
            BAD_CLOUDEVENTS_TRIED.append(label)
            statuses[label] = r.status_code
            assert 400 <= r.status_code < 500, (label, r.status_code, r.text)
            assert r.json()["message"], label  # a clear reason, in the usual error body
            assert await store.last_position() == 0, label
    assert statuses["plain JSON, no ce headers"] == 415
    assert statuses["binary data too large"] == 400
    assert statuses["specversion 0.3"] == 400


async def test_bad_reads_are_4xx(server: tuple[str, tidelog.Store]) -> None:
    url, _ = server
    async with _client(url) as client:
        for path in (
            "/v1/streams/a%20b/cloudevents",
            "/v1/streams/order-1/cloudevents?from_version=-1",
            "/v1/streams/order-1/cloudevents?limit=x",
        ):
            r = await client.get(path)
            BAD_CLOUDEVENTS_TRIED.append(path)
            assert 400 <= r.status_code < 500, (path, r.status_code)
