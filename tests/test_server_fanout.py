"""Live fan-out (issue #17): one store subscription per server for every SSE and
WebSocket subscriber, each event read and encoded once.

Real servers on real stores (memory, SQLite, PostgreSQL), real HTTP clients. The
store is wrapped in a `StoreWrapper` that counts the subscriptions opened on it,
so "one per server" is checked on the store itself, not on the hub's word.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

import tidelog
from support.server import ADMIN_KEY, Serve
from tidelog.engines._kit.checks import log_filter
from tidelog.engines.contract import Engine, LogFilter
from tidelog.engines.wrapper import StoreWrapper
from tidelog.model import RecordedEvent, category_of, partition_of
from tidelog.security.acl import CREDENTIAL_STREAMS, Access, parse_grant
from tidelog.server import Limits, Server, _fanout
from tidelog.server._fanout import Hub, Member


class CountingStore(StoreWrapper):
    """A real store that counts the live subscriptions opened on it."""

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner)
        self.subscriptions = 0
        self.page_reads = 0

    def _subscribe(self, from_position: int, filters: LogFilter) -> AsyncIterator[RecordedEvent]:
        self.subscriptions += 1
        return self.inner._subscribe(from_position, filters)

    async def _read_page(
        self, from_position: int, filters: LogFilter, limit: int
    ) -> list[RecordedEvent]:
        self.page_reads += 1
        return await self.inner._read_page(from_position, filters, limit)


def _hub(server: Server) -> Hub:
    hub = server._app.state.runtime.hub
    assert isinstance(hub, Hub)
    return hub


async def _sse(
    client: httpx.AsyncClient,
    until: Callable[[list[dict[str, Any]]], bool],
    params: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    opened: asyncio.Event | None = None,
) -> list[dict[str, Any]]:
    """The events of one SSE subscription (each its JSON, plus `_id` the SSE id) until
    `until` says enough."""
    received: list[dict[str, Any]] = []
    buffer = b""
    async with client.stream("GET", "/v1/subscribe", params=params, headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        if opened is not None:
            opened.set()
        async for chunk in r.aiter_bytes():
            *frames, buffer = (buffer + chunk).split(b"\r\n\r\n")
            for frame in frames:
                lines = frame.split(b"\r\n")
                data = [line[6:] for line in lines if line.startswith(b"data: ")]
                if not data:
                    continue  # a keep-alive
                event = json.loads(b"\n".join(data))
                [sse_id] = [int(line[4:]) for line in lines if line.startswith(b"id: ")]
                event["_id"] = sse_id
                received.append(event)
            if until(received):
                return received
    return received


def _reached(position: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda got: bool(got) and got[-1]["position"] >= position


async def test_many_subscribers_share_one_store_subscription_and_get_every_event_in_order(
    serve: Serve, contract_store: tidelog.Store
) -> None:
    """Forty SSE subscribers (some from the start, some resuming with Last-Event-ID
    from the middle of the history) while events are appended: each gets exactly
    every event from its start, in order, with the data as stored; the store saw
    one live subscription for all of them."""
    store = CountingStore(contract_store)
    server, _ = await serve(store=store)
    for i in range(20):  # history the subscribers catch up from
        await store.append(f"order-{i % 3}", [tidelog.NewEvent(type="Old", data=b'{"i":%d}' % i)])
    total = 20 + 30 * 7
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.port}",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        limits=httpx.Limits(max_connections=100),
        timeout=60,
    ) as client:
        opened = [asyncio.Event() for _ in range(40)]
        subscribers = [
            asyncio.create_task(
                _sse(
                    client,
                    _reached(total),
                    headers={"Last-Event-ID": "9"} if n % 4 == 0 else None,
                    opened=opened[n],
                )
            )
            for n in range(40)
        ]
        await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 60)
        for i in range(30):  # appends of 1 to 13 events while they follow
            await store.append(
                f"order-{i % 5}",
                [tidelog.NewEvent(type="New", data=b'{"i":%d}' % (i * 7 + j)) for j in range(7)],
            )
            if i % 3 == 0:
                await asyncio.sleep(0.01)
        results = await asyncio.wait_for(asyncio.gather(*subscribers), 120)
    stored = [e async for e in store.read_all()]
    assert [e.position for e in stored][-1] == total
    for n, got in enumerate(results):
        first = 10 if n % 4 == 0 else 1
        expected = [e for e in stored if e.position >= first]
        assert [e["position"] for e in got] == [e.position for e in expected], n
        assert [e["_id"] for e in got] == [e.position for e in expected]
        assert [(e["stream"], e["type"], e["data"]) for e in got] == [
            (e.stream, e.type, json.loads(e.data)) for e in expected
        ]
    assert store.subscriptions == 1
    assert _hub(server).opened == 1


async def test_filters_and_grants_apply_per_subscriber(serve: Serve, tmp_path: Path) -> None:
    """Subscribers with different filters and principals on one hub each get exactly
    the events their filters select and their grants let them read: a principal
    that may read everything (`read:*`) but is no admin never sees the key store's
    `$keys` events, which the admin's subscription of the same log gets."""
    async with tidelog.connect(f"sqlite:///{tmp_path}/store.db?partitions=4") as inner:
        store = CountingStore(inner)
        server, _ = await serve(
            store=store,
            keys={"orders-key": "orders", "wide-key": "wide"},
            grants=("orders=read:category:order", "wide=read:*"),
        )
        streams = ["order-1", "order-2", "invoice-1", "invoice-7", "order-3"]
        partition = partition_of("order-2", store.partition_count)
        kinds: dict[str, tuple[str, dict[str, Any], Callable[[RecordedEvent], bool]]] = {
            "all (admin)": (ADMIN_KEY, {}, lambda e: True),
            "category order": (ADMIN_KEY, {"category": "order"}, lambda e: e.category == "order"),
            "type Shipped": (ADMIN_KEY, {"type": "Shipped"}, lambda e: e.type == "Shipped"),
            "partition": (
                ADMIN_KEY,
                {"partition": partition},
                lambda e: partition_of(e.stream, store.partition_count) == partition,
            ),
            "orders principal": (
                "orders-key",
                {"category": "order"},
                lambda e: e.category == "order",
            ),
            "wide principal": ("wide-key", {}, lambda e: e.stream not in CREDENTIAL_STREAMS),
        }
        base = f"http://127.0.0.1:{server.port}"
        async with contextlib.AsyncExitStack() as stack:
            clients = {
                name: await stack.enter_async_context(
                    httpx.AsyncClient(
                        base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60
                    )
                )
                for name, (key, _, _) in kinds.items()
            }
            # the last event every subscriber sees: an order Shipped in partition `partition`
            end_stream = next(
                f"order-{n}"
                for n in range(100, 1000)
                if partition_of(f"order-{n}", store.partition_count) == partition
            )
            opened = {name: asyncio.Event() for name in kinds}
            tasks = {
                name: asyncio.create_task(
                    _sse(
                        clients[name],
                        lambda got: bool(got) and got[-1]["stream"] == end_stream,
                        params,
                        opened=opened[name],
                    )
                )
                for name, (_, params, _) in kinds.items()
            }
            await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened.values())), 60)
            for i in range(60):
                stream = streams[i % len(streams)]
                kind = ("Placed", "Shipped", "Paid")[i % 3]
                await store.append(stream, [tidelog.NewEvent(type=kind)])
                if i == 30:  # an event in `$keys`, through the admin API
                    created = await clients["all (admin)"].post(
                        "/v1/admin/keys", json={"principal": "later"}
                    )
                    assert created.status_code == 201
            await store.append(end_stream, [tidelog.NewEvent(type="Shipped")])
            results = {name: await asyncio.wait_for(task, 60) for name, task in tasks.items()}
        stored = [e async for e in store.read_all()]
        assert any(e.stream == "$keys" for e in stored)
        for name, (_, _, wanted) in kinds.items():
            expected = [e.position for e in stored if wanted(e)]
            assert [e["position"] for e in results[name]] == expected, name
        assert store.subscriptions == 1


async def test_bad_filters_are_refused_before_a_slot_is_taken(serve: Serve) -> None:
    server, _ = await serve()
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.port}",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ) as client:
        r = await client.get("/v1/subscribe", params={"partition": -1})
        assert r.status_code == 400, r.text
        assert "partition" in r.json()["message"]
    assert server._app.state.runtime.subscriptions.open_for("admin") == 0


async def _take(member: Member, last: int) -> list[int]:
    """What a subscriber does: take the member's batches until position `last`."""
    got: list[int] = []
    async for batch in member.batches(keepalive=30):
        if batch is None:
            continue
        got.extend(d.event.position for part in batch for d in part.deliveries)
        if got and got[-1] >= last:
            return got
    return got


@pytest.mark.parametrize("recent", [10_000, 5], ids=["from-memory", "from-the-store"])
async def test_a_slow_member_falls_back_and_rejoins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recent: int
) -> None:
    """At the hub itself: a member that takes nothing while 300 events go by is
    dropped from the hand-out (the hub never waits for it), the others get
    everything without it; then it reads what it missed, in order and
    complete, and rejoins the hub for what comes next. It reads from the hub's
    recent events while they reach back far enough, else from the store (the
    hub keeping only 5 to 10 of them)."""
    monkeypatch.setattr(_fanout, "_RECENT", recent)
    access = Access("admin", (parse_grant("admin=admin:*"),))
    everything = log_filter(None, None, None)
    async with tidelog.connect(f"sqlite:///{tmp_path}/store.db") as inner:
        store = CountingStore(inner)
        hub = Hub(store)
        fast = [hub.attach(access, everything, 1, 16) for _ in range(3)]
        slow = hub.attach(access, everything, 1, 16)
        readers = [asyncio.create_task(_take(m, 300)) for m in fast]
        with contextlib.suppress(TimeoutError):  # the slow one reads the empty store, joins,
            await asyncio.wait_for(_take(slow, 0), 1)  # then takes nothing more for a while
        assert slow.joined
        for i in range(30):
            await store.append(f"order-{i}", [tidelog.NewEvent(type="T") for _ in range(10)])
            await asyncio.sleep(0)
        got_fast = await asyncio.wait_for(asyncio.gather(*readers), 60)
        assert got_fast == [list(range(1, 301))] * 3  # done while the slow one took nothing
        assert slow.fell_behind >= 1 and not slow.joined
        reads = store.page_reads
        assert await asyncio.wait_for(_take(slow, 300), 60) == list(range(1, 301))
        if recent == 5:
            assert store.page_reads > reads  # what it missed had left the hub's memory
        else:
            assert store.page_reads == reads  # all of it from the hub's recent events
        # caught up: it is back on the hub and gets the next events from it
        await store.append("order-x", [tidelog.NewEvent(type="T")])
        late = asyncio.create_task(_take(slow, 301))
        assert await asyncio.wait_for(late, 60) == [301]
        assert slow.joined
        assert store.subscriptions == 1
        for m in (*fast, slow):
            m.close()
        assert hub.members == 0  # the last one out stopped the tail


async def test_a_stalled_client_does_not_hold_up_the_others(serve: Serve, tmp_path: Path) -> None:
    """Over HTTP: a client that stops reading (its socket buffers full) while 12 MB of
    events go by does not delay the other subscribers, who get everything; the
    server drops it from the hand-out, and once it reads again it still gets
    every event, in order, from the store."""
    async with tidelog.connect(f"sqlite:///{tmp_path}/store.db") as inner:
        store = CountingStore(inner)
        server, _ = await serve(store=store, limits=Limits(live_queue_events=8, send_timeout=300))
        total = 40 * 10
        stalled = await asyncio.to_thread(_subscribe_raw, server.port)  # then reads nothing
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{server.port}",
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=120,
            ) as client:
                opened = [asyncio.Event() for _ in range(3)]
                readers = [
                    asyncio.create_task(_sse(client, _reached(total), opened=opened[n]))
                    for n in range(3)
                ]
                await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 60)
                blob = json.dumps({"pad": "x" * 30_000}).encode()
                for i in range(40):
                    await store.append(
                        f"order-{i}", [tidelog.NewEvent(type="Big", data=blob) for _ in range(10)]
                    )
                results = await asyncio.wait_for(asyncio.gather(*readers), 120)
            assert [[e["position"] for e in got] for got in results] == [
                list(range(1, total + 1))
            ] * 3
            assert sum(m.fell_behind for m in _hub(server)._members) >= 1
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as plain:
                metrics = (await plain.get("/metrics")).text
            [counted] = [
                float(line.split()[-1])
                for line in metrics.splitlines()
                if line.startswith("tidelog_subscriber_fell_behind_total ")
            ]
            assert counted >= 1
            # now it reads: every event, in order
            positions = await asyncio.to_thread(_read_positions, stalled, total)
            assert positions == list(range(1, total + 1))
        finally:
            stalled.close()
        assert store.subscriptions == 1


def _subscribe_raw(port: int) -> socket.socket:
    """A blocking socket subscribed from the start, with a small receive buffer; the
    response head read, nothing more."""
    conn = socket.socket()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn.settimeout(60)
    conn.connect(("127.0.0.1", port))
    conn.sendall(
        b"GET /v1/subscribe HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + ADMIN_KEY.encode() + b"\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return conn


def _read_positions(conn: socket.socket, last: int) -> list[int]:
    """SSE ids read from a raw socket (chunked encoding left in: ids are lines of their
    own) until position `last`."""
    positions: list[int] = []
    buffer = b""
    while not positions or positions[-1] < last:
        chunk = conn.recv(1 << 20)
        if not chunk:
            break
        *lines, buffer = (buffer + chunk).split(b"\r\n")
        positions.extend(int(line[4:]) for line in lines if line.startswith(b"id: "))
    return positions


def test_delivery_encodes_once() -> None:
    """One `Delivery` per event: each encoding is made once and the same bytes are
    shared by every subscriber; the SSE message is the wire JSON on `data` lines."""
    from datetime import UTC, datetime
    from uuid import uuid4

    from tidelog.server._fanout import Delivery

    event = RecordedEvent(
        id=uuid4(),
        stream="order-1",
        version=0,
        position=7,
        type="T",
        data=b'{"a":\n1}',
        metadata={},
        recorded_at=datetime.now(UTC),
    )
    d = Delivery(event)
    assert d.sse() is d.sse() and d.json() is d.json() and d.text() is d.text()
    assert msgspec.json.decode(d.json())["position"] == 7
    assert d.sse().startswith(b"id: 7\r\nevent: event\r\ndata: ")
    assert d.sse().endswith(b"\r\n\r\n") and b"\r\ndata: " in d.sse()[30:]
    assert category_of(event.stream) == "order"
