"""A catalogue of bad inputs and attacks against a live server.

Every answer must be a clear 4xx (never a 5xx, never a crash), and nothing
may change in the store. The number of bad inputs tried is reported at the
end of the test run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import socket
import ssl
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

import tidelog
from support.server import ADMIN_KEY, Serve, config, running
from tidelog.errors import InvalidInput
from tidelog.security.tokens import JWTConfig
from tidelog.server import Limits, Server
from tidelog.server._deps import check_depth as _check_depth

BAD_INPUTS_TRIED: list[str] = []


def _tried(label: str) -> None:
    BAD_INPUTS_TRIED.append(label)


@pytest.fixture(scope="module", autouse=True)
def report_count() -> Any:
    yield
    print(f"\n[security catalogue] bad inputs tried: {len(BAD_INPUTS_TRIED)}")


@pytest.fixture
async def server(serve: Serve) -> tuple[str, tidelog.Store]:
    srv, store = await serve(
        keys={"k-alice": "alice", "k-bob": "bob"},
        grants=(
            "alice=write:stream:orders",
            "alice=read:stream:orders",
            "alice=write:prefix:carts-",
            "bob=read:category:order",
        ),
    )
    return f"http://127.0.0.1:{srv.port}", store


def _client(url: str, key: str = ADMIN_KEY) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"})


async def _assert_4xx_and_unchanged(
    store: tidelog.Store, response: httpx.Response, label: str
) -> None:
    _tried(label)
    assert 400 <= response.status_code < 500, (label, response.status_code, response.text)
    assert await store.last_position() == 0, label


HOSTILE_NAMES = [
    "..%2Fx",
    "%2e%2e",
    "%2E%2E%2Fetc%2Fpasswd",
    "a%00b",
    "a%01b",
    "a%0Ab",
    "a%E2%80%AEb",  # right-to-left override
    "a%E2%80%8Bb",  # zero-width space
    "%D0%BErder-1",  # Cyrillic o
    "orde%CC%81r",  # combining accent (NFD)
    "a*b",
    "a%3Eb",
    "a.b",
    "a%20b",
    "%5C",
    "x" * 201,
    "-leading",
    "%24",
]


async def test_hostile_stream_names_are_refused(server: tuple[str, tidelog.Store]) -> None:
    url, store = server
    async with _client(url) as client:
        for name in HOSTILE_NAMES:
            r = await client.post(f"/v1/streams/{name}/events", json={"events": [{"type": "X"}]})
            await _assert_4xx_and_unchanged(store, r, f"name {name[:30]}")
            r = await client.get(f"/v1/streams/{name}/events")
            await _assert_4xx_and_unchanged(store, r, f"read name {name[:30]}")


BAD_BODIES: list[tuple[str, bytes]] = [
    ("malformed json", b'{"events": [{"type": "X"}'),
    ("not an object", b"[1, 2, 3]"),
    ("empty", b""),
    ("NaN", b'{"events": [{"type": "X", "data": NaN}]}'),
    ("bad utf-8", b'{"events": [{"type": "\xff\xfe"}]}'),
    ("deep nesting", b'{"events": [{"type": "X", "data": ' + b"[" * 10000 + b"]" * 10000 + b"}]}"),
    ("huge integer", b'{"events": [{"type": "X", "metadata": {"n": ' + b"9" * 5000 + b"}}]}"),
    ("unknown field", b'{"events": [{"type": "X", "evil": 1}]}'),
    ("no events", b'{"events": []}'),
    ("bad type", b'{"events": [{"type": "a b"}]}'),
    ("bad id", b'{"events": [{"type": "X", "id": "not-a-uuid"}]}'),
    ("bad base64", b'{"events": [{"type": "X", "data_base64": "***"}]}'),
    ("both data forms", b'{"events": [{"type": "X", "data": 1, "data_base64": "AA=="}]}'),
    (
        "duplicate ids",
        b'{"events": [{"type": "X", "id": "6f1c1f5e-8d35-4a4e-9f0e-2b8f9f0b1c11"},'
        b' {"type": "X", "id": "6f1c1f5e-8d35-4a4e-9f0e-2b8f9f0b1c11"}]}',
    ),
    ("schema version 0", b'{"events": [{"type": "X", "schema_version": 0}]}'),
]

BAD_EXPECTED = [-1, 2**63, 1.5, "abc", True, None, [], "-5", "1e3"]


async def test_bad_bodies_and_expected_versions(server: tuple[str, tidelog.Store]) -> None:
    url, store = server
    async with _client(url) as client:
        for label, body in BAD_BODIES:
            r = await client.post(
                "/v1/streams/order-1/events",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            await _assert_4xx_and_unchanged(store, r, label)
        for value in BAD_EXPECTED:
            body = json.dumps({"events": [{"type": "X"}], "expected_version": value}).encode()
            r = await client.post("/v1/streams/order-1/events", content=body)
            await _assert_4xx_and_unchanged(store, r, f"expected {value!r}")
        for query in ["from_version=-5", "limit=-1", "from_version=abc", "limit=1.5"]:
            r = await client.get(f"/v1/streams/order-1/events?{query}")
            await _assert_4xx_and_unchanged(store, r, query)
        for value in ["-1", "99999999999999999999999", "x"]:
            r = await client.delete(f"/v1/streams/order-1?expected_version={value}")
            await _assert_4xx_and_unchanged(store, r, f"delete expected {value}")


_BAD_UTF8_DATA = [  # each inside a JSON `data` value, which is kept as raw bytes
    ("lone continuation byte in a string", b'"\x80"'),
    ("invalid start byte in a string", b'"\xff\xfe"'),
    ("truncated sequence in a string", b'"caf\xc3"'),
    ("surrogate encoded in UTF-8", b'"\xed\xa0\x80"'),
    ("overlong encoding of /", b'"\xc0\xaf"'),
    ("invalid UTF-8 in an object key", b'{"\xff": 1}'),
]


async def test_invalid_utf8_in_json_data_is_refused(server: tuple[str, tidelog.Store]) -> None:
    url, store = server
    structured = {"Content-Type": "application/cloudevents+json"}
    batch = {"Content-Type": "application/cloudevents-batch+json"}
    ce = b'{"specversion": "1.0", "id": "1", "source": "urn:t", "type": "X", "data": '
    ingest = "/v1/cloudevents?stream=order-1"
    async with _client(url) as client:
        for label, data in _BAD_UTF8_DATA:
            event = b'{"type": "X", "data": ' + data + b"}"
            for route, path, body, headers in [
                ("append", "/v1/streams/order-1/events", b'{"events": [' + event + b"]}", {}),
                (
                    "append-many",
                    "/v1/append-many",
                    b'{"streams": {"order-1": {"events": [' + event + b"]}}}",
                    {},
                ),
                ("CloudEvent", ingest, ce + data + b"}", structured),
                ("CloudEvents batch", ingest, b"[" + ce + data + b"}]", batch),
            ]:
                r = await client.post(
                    path, content=body, headers={"Content-Type": "application/json", **headers}
                )
                await _assert_4xx_and_unchanged(store, r, f"{route}: {label}")
                assert r.status_code == 400, (route, label, r.text)
        # valid UTF-8 beyond ASCII is kept byte for byte, spacing inside the value too
        data = '{"name":  "Zoë ⛵ 🐳", "k": ["ä"]}'.encode()
        r = await client.post(
            "/v1/streams/order-1/events",
            content=b'{"events": [{"type": "X", "data": ' + data + b"}]}",
        )
        assert r.status_code == 200, r.text
    stored = [e async for e in store.read_stream("order-1")]
    assert [e.data for e in stored] == [data]


async def test_oversized_body_and_too_many_events(server: tuple[str, tidelog.Store]) -> None:
    url, store = server
    async with _client(url) as client:
        big = json.dumps({"events": [{"type": "X", "data": "x" * (5 * 1024 * 1024)}]}).encode()
        r = await client.post("/v1/streams/order-1/events", content=big)
        await _assert_4xx_and_unchanged(store, r, "oversized body")
        assert r.status_code == 413
        event = {"type": "X", "data": "y" * (1024 * 1024 + 10)}
        r = await client.post("/v1/streams/order-1/events", json={"events": [event]})
        await _assert_4xx_and_unchanged(store, r, "oversized event")
        many = {"events": [{"type": "X"}] * 1001}
        r = await client.post("/v1/streams/order-1/events", json=many)
        await _assert_4xx_and_unchanged(store, r, "too many events")


def _raw_http(port: int, payload: bytes, timeout: float = 5.0, half_close: bool = True) -> bytes:
    """Send raw bytes; `half_close` ends our side so the server sees the body end early."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


async def test_lying_content_length_and_endless_chunks(server: tuple[str, tidelog.Store]) -> None:
    url, store = server
    port = urllib.parse.urlsplit(url).port
    assert port is not None
    auth = f"Authorization: Bearer {ADMIN_KEY}\r\n".encode()
    lying = (
        b"POST /v1/streams/order-1/events HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        + b'{"events": [{"type": "X"}]}'
    )
    answer = await asyncio.to_thread(_raw_http, port, lying)
    _tried("lying content-length")
    assert not answer.startswith(b"HTTP/1.1 2") and not answer.startswith(b"HTTP/1.1 5")
    huge_length = (
        b"POST /v1/streams/order-1/events HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Content-Length: 99999999999\r\n\r\n{}"
    )
    # the connection stays open: the server must refuse on the declared length alone
    answer = await asyncio.to_thread(_raw_http, port, huge_length, 5.0, False)
    _tried("huge declared content-length")
    assert answer.startswith(b"HTTP/1.1 4"), answer[:80]
    chunked = (
        b"POST /v1/streams/order-1/events HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"100000\r\n" + b"[" * 0x100000 + b"\r\n" for _ in range(6))
    )
    answer = await asyncio.to_thread(_raw_http, port, chunked)
    _tried("endless chunked body")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
    assert await store.last_position() == 0


async def test_acl_prefix_confusion_and_global_log(server: tuple[str, tidelog.Store]) -> None:
    url, store = server
    async with _client(url, "k-alice") as alice, _client(url, "k-bob") as bob:
        ok = await alice.post("/v1/streams/orders/events", json={"events": [{"type": "X"}]})
        assert ok.status_code == 200
        ok = await alice.post("/v1/streams/carts-1/events", json={"events": [{"type": "X"}]})
        assert ok.status_code == 200
        before = await store.last_position()
        for stream in ["orders-secret", "ORDERS", "orders_x", "carts", "cartsx-1", "$dlq-x"]:
            r = await alice.post(f"/v1/streams/{stream}/events", json={"events": [{"type": "X"}]})
            _tried(f"acl {stream}")
            assert r.status_code == 403, (stream, r.text)
        assert await store.last_position() == before
        # the global log needs its own grant
        r = await alice.get("/v1/log")
        _tried("global log without grant")
        assert r.status_code == 403
        r = await bob.get("/v1/log?category=order")
        assert r.status_code == 200
        r = await bob.get("/v1/log?category=carts")
        _tried("category without grant")
        assert r.status_code == 403
        r = await bob.get("/v1/subscribe")
        _tried("subscribe global without grant")
        assert r.status_code == 403
        # counts need the categories' read grant too, and a category at all
        await store.append("order-1", [tidelog.NewEvent(type="X"), tidelog.NewEvent(type="Y")])
        r = await bob.get("/v1/log/count?category=order")
        assert (r.status_code, r.json()) == (200, {"count": 2})
        r = await bob.get("/v1/log/count?category=order&from_position=999")
        assert r.json() == {"count": 0}
        for query, status in [
            ("category=carts", 403),
            ("category=order&category=carts", 403),
            ("", 400),
            ("category=order&partition=-1", 400),
            ("category=order&from_position=-1", 400),
            ("category=order&partition=x", 400),
            ("category=..%2Fx", 403),  # refused before it is validated, as for reads
        ]:
            r = await bob.get(f"/v1/log/count?{query}")
            _tried(f"count {query}")
            assert r.status_code == status, (query, r.status_code, r.text)
        async with _client(url) as admin:
            r = await admin.get("/v1/log/count")
            _tried("count of the whole log")
            assert r.status_code == 400, r.text
            r = await admin.get("/v1/log/count?category=..%2Fx")
            assert r.json() == {"count": 0}  # no such category, as `/v1/log` reads it
        r = await bob.delete("/v1/streams/order-1")
        _tried("delete without admin")
        assert r.status_code == 403


async def test_subscriptions_deliver_only_readable_events(
    server: tuple[str, tidelog.Store],
) -> None:
    url, store = server
    await store.append("order-1", [tidelog.NewEvent(type="A")])
    await store.append("secret-1", [tidelog.NewEvent(type="B")])
    await store.append("order-2", [tidelog.NewEvent(type="C")])
    cfg_url = url
    async with _client(cfg_url, "k-bob") as bob:
        seen: list[str] = []
        async with bob.stream("GET", "/v1/subscribe?category=order") as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    seen.append(json.loads(line[5:])["stream"])
                    if len(seen) == 2:
                        break
        assert seen == ["order-1", "order-2"]


async def _settled(srv: Server, principal: str, expected: int) -> None:
    """Wait (bounded) until the server has noticed hang-ups: they arrive asynchronously."""
    for _ in range(500):
        if srv.open_connections(principal) == expected:
            return
        await asyncio.sleep(0.01)
    assert srv.open_connections(principal) == expected, principal


async def test_connections_per_principal_are_bounded() -> None:
    from websockets.asyncio.client import connect as ws_connect

    cfg = config(
        keys={"k-alice": "alice", "k-bob": "bob"},
        grants=("alice=read:category:order", "bob=read:category:order"),
        limits=Limits(max_connections_per_principal=3),
    )
    async with (
        running(cfg) as (srv, _),
        contextlib.AsyncExitStack() as stack,
    ):
        url = f"http://127.0.0.1:{srv.port}"
        alice = await stack.enter_async_context(_client(url, "k-alice"))
        bob = await stack.enter_async_context(_client(url, "k-bob"))
        streams: list[contextlib.AsyncExitStack] = []
        for _ in range(3):
            sub = await stack.enter_async_context(contextlib.AsyncExitStack())
            r = await sub.enter_async_context(alice.stream("GET", "/v1/subscribe?category=order"))
            assert r.status_code == 200
            streams.append(sub)
        assert srv.open_connections("alice") == 3
        for label, path in [
            ("4th connection: a plain request", "/v1/info"),
            ("4th connection: a subscription", "/v1/subscribe?category=order"),
        ]:
            r = await alice.get(path)
            _tried(label)
            assert r.status_code == 429, (label, r.text)
            assert r.json()["code"] == "too_many_connections"
        ws_url = f"ws://127.0.0.1:{srv.port}/v1/ws/subscribe?category=order"
        bearer = {"Authorization": "Bearer k-alice"}
        async with ws_connect(ws_url, additional_headers=bearer) as ws:
            _tried("4th connection: a WebSocket (header auth)")
            assert await _ws_close_code(ws) == 1008
        async with ws_connect(ws_url) as ws:
            await ws.send(json.dumps({"token": "k-alice"}))
            _tried("4th connection: a WebSocket (first-message auth)")
            assert await _ws_close_code(ws) == 1008
        # unauthenticated requests are not counted against anyone: 401, not 429
        r = await alice.get("/v1/info", headers={"Authorization": "Bearer wrong"})
        _tried("bad key while the principal is at its limit")
        assert r.status_code == 401
        # another principal is unaffected, and its finished requests give slots back
        assert (await bob.get("/v1/info")).status_code == 200
        assert (await bob.get("/v1/streams/secret-1/events")).status_code == 403
        await _settled(srv, "bob", 0)
        # hanging up one subscription frees a slot
        await streams.pop().aclose()
        await _settled(srv, "alice", 2)
        assert (await alice.get("/v1/info")).status_code == 200
        for sub in streams:
            await sub.aclose()
        await _settled(srv, "alice", 0)
        # a WebSocket authenticated by its first message holds a slot while open
        async with ws_connect(ws_url) as ws:
            await ws.send(json.dumps({"token": "k-alice"}))
            await _settled(srv, "alice", 1)
        await _settled(srv, "alice", 0)


async def _ws_close_code(ws: Any) -> int | None:
    from websockets.exceptions import ConnectionClosed

    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    return closed.value.rcvd.code if closed.value.rcvd else None


# --------------------------------------------------------------------------- subscription slots
#
# A subscription holds a slot of its principal's quota from the moment it is
# accepted until its response ends, however it ends. Stalled readers used to
# keep theirs until the garbage collector found their generators (150 s and
# more at 429), and a burst could pass the check before any slot was counted.

_SLOTS = 4


def _stalled_reader(port: int, request: bytes) -> socket.socket:
    """A client that sends `request` and never reads: the server's sends end up blocked."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills sooner
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


def _ws_upgrade(path: str, key: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    ).encode()


async def _subscribes(url: str, key: str) -> bool:
    """Whether a new SSE subscription of `key`'s principal is accepted now."""
    async with (
        _client(url, key) as client,
        client.stream("GET", "/v1/subscribe?category=order") as r,
    ):
        assert r.status_code in (200, 429), r.status_code
        return r.status_code == 200


@pytest.mark.parametrize("kind", ["sse", "websocket"])
async def test_stalled_subscribers_give_their_slots_back(serve: Serve, kind: str) -> None:
    srv, store = await serve(
        keys={"k-alice": "alice"},
        grants=("alice=read:category:order",),
        limits=Limits(max_subscriptions_per_principal=_SLOTS, send_timeout=0.5),
    )
    big = b'"' + b"x" * 500_000 + b'"'
    for _ in range(4):  # 8 MB of events: more than the socket buffers take
        await store.append("order-1", [tidelog.NewEvent(type="X", data=big) for _ in range(4)])
    url = f"http://127.0.0.1:{srv.port}"
    path = "/v1/subscribe?category=order" if kind == "sse" else "/v1/ws/subscribe?category=order"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k-alice\r\n\r\n".encode()
        if kind == "sse"
        else _ws_upgrade(path, "k-alice")
    )
    stalled = [await asyncio.to_thread(_stalled_reader, srv.port, request) for _ in range(_SLOTS)]
    try:
        _tried(f"{_SLOTS} stalled {kind} subscribers, then a new subscription")
        for _ in range(600):  # a bounded wait: each is dropped after its send timeout
            if await _subscribes(url, "k-alice"):
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the stalled subscribers' slots were never given back")
    finally:
        for sock in stalled:
            sock.close()


async def test_subscriptions_give_their_slots_back_on_hang_up(serve: Serve) -> None:
    """A client that hangs up, from SSE or a WebSocket, frees its slot at once."""
    from websockets.asyncio.client import connect as ws_connect

    srv, _ = await serve(keys={"k-alice": "alice"}, grants=("alice=read:category:order",))
    url = f"http://127.0.0.1:{srv.port}"
    ws_url = f"ws://127.0.0.1:{srv.port}/v1/ws/subscribe?category=order"
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(_client(url, "k-alice"))
        for _ in range(2):
            r = await stack.enter_async_context(
                client.stream("GET", "/v1/subscribe?category=order")
            )
            assert r.status_code == 200
        for bearer in ({"Authorization": "Bearer k-alice"}, None):
            ws = await stack.enter_async_context(ws_connect(ws_url, additional_headers=bearer))
            if bearer is None:
                await ws.send(json.dumps({"token": "k-alice"}))
        for _ in range(500):  # the WebSockets subscribe after their handshakes
            if srv.open_subscriptions("alice") == 4:
                break
            await asyncio.sleep(0.01)
        assert srv.open_subscriptions("alice") == 4
    for _ in range(500):  # hang-ups arrive asynchronously
        if srv.open_subscriptions("alice") == 0:
            break
        await asyncio.sleep(0.01)
    assert srv.open_subscriptions("alice") == 0


async def test_stopping_the_server_ends_its_subscriptions(serve: Serve) -> None:
    """A stop ends open SSE streams and WebSockets (it used to wait for them forever)."""
    from websockets.asyncio.client import connect as ws_connect

    srv, _ = await serve(keys={"k-alice": "alice"}, grants=("alice=read:category:order",))
    ws_url = f"ws://127.0.0.1:{srv.port}/v1/ws/subscribe?category=order"
    async with (
        _client(f"http://127.0.0.1:{srv.port}", "k-alice") as client,
        client.stream("GET", "/v1/subscribe?category=order") as r,
        ws_connect(ws_url, additional_headers={"Authorization": "Bearer k-alice"}) as ws,
    ):
        for _ in range(500):
            if srv.open_subscriptions("alice") == 2:
                break
            await asyncio.sleep(0.01)
        assert r.status_code == 200
        await asyncio.wait_for(srv.stop(), 60)  # a bounded wait, not a timing
        assert srv.open_subscriptions("alice") == 0
        assert await _ws_close_code(ws) == 1001
        assert [line async for line in r.aiter_lines() if line.startswith("data:")] == []


async def test_a_burst_of_subscriptions_never_exceeds_the_quota(serve: Serve) -> None:
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed

    srv, _ = await serve(
        keys={"k-alice": "alice"},
        grants=("alice=read:category:order",),
        limits=Limits(max_subscriptions_per_principal=_SLOTS, keepalive_interval=0.2),
    )
    url = f"http://127.0.0.1:{srv.port}"
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(_client(url, "k-alice"))

        async def sse() -> bool:
            r = await stack.enter_async_context(
                client.stream("GET", "/v1/subscribe?category=order")
            )
            return r.status_code == 200

        accepted = sum(await asyncio.gather(*(sse() for _ in range(20))))
        _tried("a burst of 20 SSE subscriptions over a quota of 4")
        assert accepted == _SLOTS
    ws_url = f"ws://127.0.0.1:{srv.port}/v1/ws/subscribe?category=order"

    async def websocket() -> bool:
        async with ws_connect(ws_url, additional_headers={"Authorization": "Bearer k-alice"}) as ws:
            try:
                await asyncio.wait_for(ws.recv(), 10)  # a keep-alive, when accepted
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == 1008
                return False
            await asyncio.sleep(1)  # hold the slot while the rest of the burst arrives
            return True

    accepted = sum(await asyncio.gather(*(websocket() for _ in range(20))))
    _tried("a burst of 20 WebSocket subscriptions over a quota of 4")
    assert accepted == _SLOTS


async def test_a_websocket_first_message_must_be_a_token_object(serve: Serve) -> None:
    from websockets.asyncio.client import connect as ws_connect

    srv, _ = await serve(keys={"k-alice": "alice"}, grants=("alice=read:category:order",))
    ws_url = f"ws://127.0.0.1:{srv.port}/v1/ws/subscribe?category=order"
    for label, first in [
        ("an array", '["k-alice"]'),
        ("a string", '"k-alice"'),
        ("a number", "7"),
        ("null", "null"),
        ("a token that is not a string", '{"token": ["k-alice"]}'),
        ("not JSON", "{token: k-alice}"),
        ("deep nesting", "[" * 10000),
        ("over 16 KB", json.dumps({"token": "k-alice", "pad": "x" * 20000})),
        ("bytes", b'{"token": "k-alice"}'),
    ]:
        async with ws_connect(ws_url) as ws:
            await ws.send(first)
            _tried(f"WebSocket first message: {label}")
            assert await _ws_close_code(ws) == 1008, label
            assert ws.close_reason, label
    async with ws_connect(ws_url) as ws:  # the object it expects is accepted
        await ws.send(json.dumps({"token": "k-alice"}))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.5)


def _rsa_pem() -> tuple[Any, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public


async def test_jwt_checks(tmp_path: Path) -> None:
    key, public = _rsa_pem()
    other_key, _ = _rsa_pem()
    pem = tmp_path / "jwt.pem"
    pem.write_bytes(public)
    jwt_cfg = JWTConfig(
        algorithms=("RS256",), audience="tidelog", issuer="https://issuer", public_key_file=str(pem)
    )
    cfg = config(jwt=jwt_cfg, grants=("carol=admin:*",))
    now = int(time.time())
    good_claims = {"sub": "carol", "aud": "tidelog", "iss": "https://issuer", "exp": now + 60}

    def token(claims: dict[str, Any], signer: Any = key, alg: str = "RS256") -> str:
        return jwt.encode(claims, signer, algorithm=alg)

    unsigned = (
        base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
        + "."
        + base64.urlsafe_b64encode(json.dumps(good_claims).encode()).rstrip(b"=").decode()
        + "."
    )
    good = token(good_claims)
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    bad_tokens = {
        "alg none": unsigned,
        "hs256 with the public key (confusion)": _hs256_with_public_key(good_claims, public),
        "expired": token({**good_claims, "exp": now - 3600}),
        "future nbf": token({**good_claims, "nbf": now + 3600}),
        "wrong audience": token({**good_claims, "aud": "other"}),
        "wrong issuer": token({**good_claims, "iss": "https://evil"}),
        "no exp": token({k: v for k, v in good_claims.items() if k != "exp"}),
        "other key": token(good_claims, other_key),
        "tampered": tampered,
        "64 KB token": "a." + "b" * 65536 + ".c",
        "garbage": "not.a.jwt",
    }
    async with running(cfg) as (srv, store):
        base = f"http://127.0.0.1:{srv.port}"
        async with httpx.AsyncClient(base_url=base) as client:
            ok = await client.get("/v1/info", headers={"Authorization": f"Bearer {good}"})
            assert ok.status_code == 200
            for label, bad in bad_tokens.items():
                _tried(f"jwt {label}")
                try:
                    r = await client.post(
                        "/v1/streams/order-1/events",
                        json={"events": [{"type": "X"}]},
                        headers={"Authorization": f"Bearer {bad}"},
                    )
                except httpx.HTTPError:
                    # headers over the HTTP parser's limit: the connection is refused
                    assert label == "64 KB token"
                    continue
                assert r.status_code in (400, 401, 431), (label, r.text)
            r = await client.get("/v1/info")
            _tried("no credentials")
            assert r.status_code == 401
            r = await client.get("/v1/info", headers={"Authorization": "Basic abc"})
            _tried("basic auth")
            assert r.status_code == 401
        assert await store.last_position() == 0


def _hs256_with_public_key(claims: dict[str, Any], public: bytes) -> str:
    import hashlib
    import hmac

    header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    signing_input = header + b"." + body
    sig = hmac.new(public, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(sig).rstrip(b"=")).decode()


async def test_mutual_tls_principal_from_client_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_pem, key_pem = tmp_path / "server.pem", tmp_path / "server.key"
    server_cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    server_cert.private_key_pem.write_to_path(str(key_pem))
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    client_cert = ca.issue_cert("dave@example.com", common_name="dave")
    client_pem = tmp_path / "client.pem"
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(client_pem))
    rogue_ca = trustme.CA()
    rogue = rogue_ca.issue_cert("mallory@example.com", common_name="dave")
    rogue_pem = tmp_path / "rogue.pem"
    rogue.private_key_and_cert_chain_pem.write_to_path(str(rogue_pem))

    cfg = config(
        tls_cert=str(cert_pem),
        tls_key=str(key_pem),
        tls_client_ca=str(ca_pem),
        grants=("dave=write:category:order", "dave=read:category:order"),
    )
    async with running(cfg) as (srv, store):
        url = f"https://127.0.0.1:{srv.port}"
        ctx = ssl.create_default_context(cafile=str(ca_pem))
        ctx.load_cert_chain(str(client_pem))
        async with httpx.AsyncClient(base_url=url, verify=ctx) as client:
            r = await client.post("/v1/streams/order-1/events", json={"events": [{"type": "X"}]})
            assert r.status_code == 200, r.text
            # the principal is dave: no grant on other categories
            r = await client.post("/v1/streams/cart-1/events", json={"events": [{"type": "X"}]})
            assert r.status_code == 403
        # an untrusted client certificate fails the handshake
        rogue_ctx = ssl.create_default_context(cafile=str(ca_pem))
        rogue_ctx.load_cert_chain(str(rogue_pem))
        async with httpx.AsyncClient(base_url=url, verify=rogue_ctx) as client:
            _tried("untrusted client certificate")
            with pytest.raises(httpx.HTTPError):
                await client.get("/v1/info")
        # no client certificate at all
        async with httpx.AsyncClient(
            base_url=url, verify=ssl.create_default_context(cafile=str(ca_pem))
        ) as client:
            _tried("no client certificate")
            with pytest.raises(httpx.HTTPError):
                await client.get("/v1/info")
        # plaintext HTTP to the TLS port gets no answer that could be mistaken for success
        answer = await asyncio.to_thread(
            _raw_http, srv.port, b"GET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        _tried("plaintext to the TLS port")
        assert b"HTTP/1.1 200" not in answer
        # the remote engine works over mutual TLS
        async with tidelog.connect(
            url, verify=str(ca_pem), cert=(str(client_pem), str(client_pem))
        ) as remote:
            got = [e.stream async for e in remote.read_stream("order-1")]
            assert got == ["order-1"]
        assert await store.last_position() == 1


async def test_jwt_from_a_jwks_file_picks_the_key_by_kid(tmp_path: Path) -> None:
    key, _ = _rsa_pem()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}))
    cfg = config(
        jwt=JWTConfig(algorithms=("RS256",), audience="tidelog", jwks_file=str(jwks)),
        grants=("erin=read:category:order",),
    )
    claims = {"sub": "erin", "aud": "tidelog", "exp": int(time.time()) + 60}
    async with (
        running(cfg) as (srv, _),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}") as client,
    ):
        good = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
        r = await client.get("/v1/log?category=order", headers={"Authorization": f"Bearer {good}"})
        assert r.status_code == 200
        for label, headers in (("unknown kid", {"kid": "k2"}), ("no kid", None)):
            bad = jwt.encode(claims, key, algorithm="RS256", headers=headers)
            r = await client.get("/v1/info", headers={"Authorization": f"Bearer {bad}"})
            _tried(f"jwks {label}")
            assert r.status_code == 401, label


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


_JSON_TEXT = st.text(alphabet=st.sampled_from('ab[]{}"\\:, '), max_size=8)
_JSON_VALUES = st.recursive(
    st.none() | st.integers() | _JSON_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_JSON_TEXT, inner, max_size=3),
    max_leaves=40,
)


@settings(max_examples=500, deadline=None, database=None)
@given(value=_JSON_VALUES, limit=st.integers(min_value=1, max_value=8), ascii_only=st.booleans())
def test_the_depth_check_agrees_with_the_parsed_depth(
    value: Any, limit: int, ascii_only: bool
) -> None:
    """Brackets and quotes inside strings, escaped or not, never count as nesting."""
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    if _depth(value) > limit:
        with pytest.raises(InvalidInput):
            _check_depth(raw, limit)
    else:
        _check_depth(raw, limit)


# --------------------------------------------------------------------------- one-request freeze
#
# The depth check runs on the event loop before the grant check, so its cost is
# what any authenticated principal can make every client wait. It used to cut
# strings with a regex retried at every quote after an unterminated string:
# 4 s at 32 KB, hours at the 4 MiB body limit. These bodies are the worst we
# know for each part of the check, each just under the body limit.

_PEELING_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_PEELING_NOT_SKELETON = bytes(b for b in range(256) if b not in b'[]{}"\\')


def _peeling_refuses(raw: bytes, limit: int) -> bool:
    """The check as it was (quadratic on some bodies): the reference for its decisions."""
    skeleton = raw.translate(None, _PEELING_NOT_SKELETON)
    if b"\\" in skeleton:
        skeleton = _PEELING_STRING.sub(b"", raw).translate(None, _PEELING_NOT_SKELETON)
    nesting = b"".join(skeleton.split(b'"')[::2]).translate(bytes.maketrans(b"[{]}", b"(())"))
    if len(nesting) <= limit:
        return False
    for _ in range(limit):
        peeled = nesting.replace(b"()", b"")
        if len(peeled) == len(nesting):
            return False
        nesting = peeled
    return bool(nesting)


_SKELETON_TOKENS = st.sampled_from(
    [b"[", b"]", b"{", b"}", b"[[[[", b"]]]]", b'"', b"\\", b'\\"', b"a", b","]
)


@settings(max_examples=2000, deadline=None, database=None)
@given(
    parts=st.lists(_SKELETON_TOKENS, max_size=60),
    limit=st.integers(min_value=-1, max_value=8),
)
def test_the_linear_depth_check_decides_as_peeling_did(parts: list[bytes], limit: int) -> None:
    """Valid JSON or not, unterminated strings, stray backslashes and unbalanced
    brackets included: the same bodies are refused, with the same error."""
    raw = b"".join(parts)
    if _peeling_refuses(raw, limit):
        with pytest.raises(InvalidInput, match=f"JSON nested deeper than {limit} levels"):
            _check_depth(raw, limit)
    else:
        _check_depth(raw, limit)


@pytest.mark.parametrize(
    ("raw", "limit", "refused"),
    [
        # few rounds of peeling shrink these, so the one-pass measure decides
        (b"[" * 60 + b"[" * 5 + b"]" * 5, 4, True),
        (b"[" * 60 + b"[" * 4 + b"]" * 4, 4, True),  # as tall as the limit, and unbalanced
        (b"[" * 4 + b"]" * 4 + b"\\" * 60, 4, True),  # a stray backslash is never matched
        (b"[" * 60 + b"[" * 3 + b"]" * 3, 4, False),
        (b"[" * 34 + b"]" * 34, 33, True),
        (b"[" * 33 + b"]" * 33, 33, False),
        (b"]" * 60 + b"[" * 4 + b"\\" + b"]" * 4, 2, False),  # the backslash parts them
    ],
)
def test_the_depth_check_measures_what_peeling_leaves(
    raw: bytes, limit: int, refused: bool
) -> None:
    assert _peeling_refuses(raw, limit) is refused
    if refused:
        with pytest.raises(InvalidInput):
            _check_depth(raw, limit)
    else:
        _check_depth(raw, limit)


_SERVE = """
import asyncio, sys
import tidelog
from tidelog.security.acl import parse_grant
from tidelog.security.tokens import hash_api_key
from tidelog.server import Server, ServerConfig

async def main():
    keys = {hash_api_key("k-admin"): "admin", hash_api_key("k-nobody"): "nobody"}
    config = ServerConfig(port=0, api_keys=keys, grants=(parse_grant("admin=admin:*"),))
    server = Server(config, await tidelog.connect("memory://"))
    await server.start()
    print(server.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop()

asyncio.run(main())
"""

_BODY = Limits().max_body_bytes - 1024
_ONE_REQUEST = 20.0
"""Seconds any one of these requests may take on a loaded machine (about 0.5 s idle)."""
_LIVEZ = 10.0
"""Seconds `/livez` may wait meanwhile (the quadratic check made it wait for hours)."""


def _fill(head: bytes, unit: bytes, tail: bytes = b"") -> bytes:
    return head + unit * ((_BODY - len(head) - len(tail)) // len(unit)) + tail


_APPEND, _CLOUDEVENTS, _SCHEMAS = (
    "/v1/streams/order-1/events",
    "/v1/cloudevents",
    "/subjects/X/versions",
)
_EVENT_DATA = b'{"events": [{"type": "X", "data": "'

_WORST_BODIES: list[tuple[str, str, bytes]] = [
    ('unterminated string of \\"', _APPEND, _fill(_EVENT_DATA, b'\\"')),
    ("unterminated string of \\\\", _APPEND, _fill(_EVENT_DATA, b"\\\\")),
    ("backslashes and quotes", _APPEND, _fill(b'"', b'\\"\\\\"')),
    ("deep nesting, never closed", _APPEND, _fill(b"", b"[")),
    ("deep nesting, closed", _APPEND, b"[" * (_BODY // 2) + b"]" * (_BODY // 2)),
    ("towers one level too deep", _APPEND, _fill(b"", b"[" * 33 + b"]" * 33)),
    ("unclosed brackets, then a tower", _APPEND, _fill(b"", b"[", b"[" * 40 + b"]" * 40)),
    ("stray backslashes between towers", _APPEND, _fill(b"[" * 40 + b"]" * 40, b"[\\]")),
    ("many small strings", _APPEND, _fill(b"[", b'"",', b'""]')),
    ("many escaped strings", _APPEND, _fill(b"[", b'"\\"",', b'""]')),
    ("a long run of backslashes", _APPEND, _fill(b'["', b"\\\\", b'"]')),
    (
        "a huge number",
        _APPEND,
        _fill(b'{"events": [{"type": "X", "metadata": {"n": ', b"9", b"}}]}"),
    ),
    ("non-ASCII, one bad byte at the end", _APPEND, _fill(_EVENT_DATA, "é".encode(), b'\xff"}]}')),
    ("CloudEvent, unterminated string", _CLOUDEVENTS, _fill(b'{"data": "', b'\\"')),
    ("CloudEvent, deep nesting never closed", _CLOUDEVENTS, _fill(b'{"data": ', b"[")),
    (
        "schema, unterminated inside its string",
        _SCHEMAS,
        _fill(b'{"schema": "\\"', b'\\\\\\"', b'"}'),
    ),
    ("schema, deep nesting never closed", _SCHEMAS, _fill(b'{"schema": {"a": ', b"[")),
]
"""(label, path, body). The event API and CloudEvents are sent by "nobody", who is
authenticated and holds no grant at all; the registry checks grants before bodies."""


async def _poll_livez(url: str, latencies: list[float], stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=_LIVEZ * 3) as client:
        while not stop.is_set():
            started = time.monotonic()
            r = await client.get("/livez")
            latencies.append(time.monotonic() - started)
            assert r.status_code == 200
            await asyncio.sleep(0.05)


async def test_no_body_freezes_the_server() -> None:
    """The worst bodies at the limit are answered in linear time while `/livez` keeps answering.

    The server runs in its own process: a check that holds the interpreter for
    hours would freeze a server in this one, and the test with it.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SERVE, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdin is not None
    latencies: list[float] = []
    stop = asyncio.Event()
    poller: asyncio.Task[None] | None = None
    try:
        port = int(await asyncio.wait_for(proc.stdout.readline(), 60))
        url = f"http://127.0.0.1:{port}"
        poller = asyncio.create_task(_poll_livez(url, latencies, stop))
        async with httpx.AsyncClient(base_url=url, timeout=_ONE_REQUEST) as client:
            for label, path, body in _WORST_BODIES:
                assert len(body) <= Limits().max_body_bytes, label
                key = "k-admin" if path == _SCHEMAS else "k-nobody"
                json_type = "cloudevents+json" if path == _CLOUDEVENTS else "json"
                r = await client.post(
                    path,
                    content=body,
                    headers={
                        "Authorization": f"Bearer {key}",
                        "Content-Type": f"application/{json_type}",
                    },
                )
                _tried(f"at the body limit: {label}")
                assert 400 <= r.status_code < 500 and r.status_code != 413, (label, r.text[:200])
        stop.set()
        await poller
        assert latencies, "the poller never got an answer"
        assert max(latencies) < _LIVEZ, max(latencies)
    finally:
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def _group_state(store: tidelog.Store, group: str) -> tuple[Any, ...]:
    """What a takeover would change: generation, members and their partitions, checkpoints."""
    described = await store.describe_group(group, "order")
    assert described is not None
    members = [(m.member, m.partitions) for m in described.members]
    return described.generation, members, await store.checkpoints(group, "order")


async def test_read_on_a_category_does_not_take_over_its_groups(serve: Serve) -> None:
    """Issue #18 item 2: `read category:order` used to let a principal join another
    team's group, evict its member and commit 10**12 (the group then skipped every
    event). A group is a resource of its own: each step is a 403, the group is
    unchanged, and a principal with a grant on its own group does all of it."""
    srv, store = await serve(
        keys={"k-billing": "billing", "k-mallory": "mallory", "k-audit": "audit", "k-eve": "eve"},
        grants=(
            "billing=read:category:order",
            "billing=read:group:billing",
            "billing=write:category:$dlq",
            "mallory=read:category:order",
            "mallory=write:category:$dlq",
            "audit=read:category:order",
            "audit=read:group-prefix:audit-",
            "eve=read:group:billing",  # a group grant alone does not open the category
        ),
    )
    url = f"http://127.0.0.1:{srv.port}"
    await store.append("order-1", [tidelog.NewEvent(type="X") for _ in range(5)])
    head = await store.last_position()
    async with (
        _client(url, "k-billing") as billing,
        _client(url, "k-mallory") as mallory,
        _client(url, "k-audit") as audit,
        _client(url, "k-eve") as eve,
    ):
        joined = await billing.post("/v1/groups/billing/order/members/b1", json={"lease": 60})
        assert joined.status_code == 200, joined.text
        gen = joined.json()["generation"]
        ok = await billing.post(
            "/v1/groups/billing/order/commit",
            json={"partition": 0, "position": 3, "member": "b1", "generation": gen},
        )
        assert ok.status_code == 200, ok.text
        before = await _group_state(store, "billing")

        group = "/v1/groups/billing/order"
        attacks: list[tuple[str, httpx.AsyncClient, str, str, Any]] = [
            ("join", mallory, "POST", f"{group}/members/m1", {"lease": 60}),
            ("heartbeat", mallory, "POST", f"{group}/members/b1/heartbeat", {"lease": 60}),
            ("leave another member", mallory, "DELETE", f"{group}/members/b1", None),
            (
                "commit 10**12",
                mallory,
                "POST",
                f"{group}/commit",
                {"partition": 0, "position": 10**12, "member": "b1", "generation": gen},
            ),
            ("fetch", mallory, "GET", f"{group}/fetch?member=b1&generation={gen}", None),
            (
                "nack",
                mallory,
                "POST",
                f"{group}/nack",
                {"member": "b1", "generation": gen, "position": 4},
            ),
            ("group grant without the category", eve, "POST", f"{group}/members/e1", {}),
            ("a grant on other groups", audit, "POST", f"{group}/members/a1", {}),
            (
                "a prefix that is not the group",
                audit,
                "POST",
                "/v1/groups/auditx/order/members/a1",
                {},
            ),
        ]
        for label, client, method, path, body in attacks:
            r = await client.request(method, path, json=body)
            _tried(f"group takeover: {label}")
            assert r.status_code == 403, (label, r.status_code, r.text)
            assert r.json()["code"] == "forbidden", label
            assert await _group_state(store, "billing") == before, label
        assert await store.last_position() == head
        assert await store.describe_group("auditx", "order") is None

        # The owner of a grant on its own groups does all of it; a checkpoint beyond
        # the head is refused there too (400), and one at the head is fine.
        mine = "/v1/groups/audit-1/order"
        joined = await audit.post(f"{mine}/members/a1", json={"lease": 60})
        assert joined.status_code == 200, joined.text
        gen = joined.json()["generation"]
        r = await audit.post(f"{mine}/members/a1/heartbeat", json={"lease": 60})
        assert r.status_code == 200, r.text
        r = await audit.get(f"{mine}/fetch?member=a1&generation={gen}")
        assert r.status_code == 200 and len(r.json()["events"]) == 5, r.text
        commit = {"partition": 0, "member": "a1", "generation": gen}
        r = await audit.post(f"{mine}/commit", json={**commit, "position": 10**12})
        _tried("group takeover: commit beyond the head of an own group")
        assert (r.status_code, r.json()["code"]) == (400, "invalid_input"), r.text
        r = await audit.post(f"{mine}/commit", json={**commit, "position": head})
        assert r.status_code == 200, r.text
        assert await store.checkpoints("audit-1", "order") == {0: head}
        r = await audit.delete(f"{mine}/members/a1")
        assert r.status_code == 204, r.text
        # and the admin's `*` covers every group
        async with _client(url) as admin:
            r = await admin.post(f"{group}/members/root", json={"lease": 60})
            assert r.status_code == 200, r.text


def test_group_grants_are_parsed_like_stream_grants() -> None:
    """`group:NAME` is validated as a name; `group-prefix:` must end at a delimiter,
    so no grant on `team` can cover `teamx`; group grants never cover streams."""
    from tidelog.security.acl import Access, Permission, parse_grant

    for bad in (
        "p=read:group:bad name",
        "p=read:group:",
        "p=read:group-prefix:team",
        "p=read:groups:x",
    ):
        _tried(f"grant {bad}")
        with pytest.raises(InvalidInput):
            parse_grant(bad)
    access = Access(
        "p", [parse_grant("p=read:group:billing"), parse_grant("p=read:group-prefix:team-")]
    )
    assert access.can_group("billing", Permission.READ)
    assert access.can_group("team-a", Permission.READ)
    for other in ("billing-x", "BILLING", "teamx", "team"):
        assert not access.can_group(other, Permission.READ), other
    assert not access.can_group("billing", Permission.WRITE)
    assert not access.can_stream("billing", Permission.READ)
    assert not access.can_category("billing", Permission.READ)
    assert not Access("q", [parse_grant("q=read:$all")]).can_group("billing", Permission.READ)
    assert Access("a", [parse_grant("a=admin:*")]).can_group("billing", Permission.READ)
