"""The remote engine's transport: the lean HTTP/1.1 pool and the batching of appends.

Against real servers: `tidelog serve`'s app on uvicorn for the behaviour a user
sees, and bare asyncio servers for what a tidelog server never does (answer
nothing, answer garbage, hang up).
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator, Callable

import pytest
import trustme

import tidelog
from support.server import ADMIN_KEY, Serve
from tidelog import NewEvent
from tidelog.engines.remote import RemoteConfig, RemoteEngine
from tidelog.errors import StoreClosed, StoreUnavailable, WrongExpectedVersion
from tidelog.model import NO_STREAM
from tidelog.server import Limits


def _requests(server: object, route: str, status: str | None = None) -> float:
    """How many requests the server answered on `route` (its own metrics registry)."""
    registry = server._app.state.runtime.metrics.registry  # type: ignore[attr-defined]
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if (
                sample.name == "tidelog_http_requests_total"
                and sample.labels["route"] == route
                and status in (None, sample.labels["status"])
            ):
                total += sample.value
    return total


@contextlib.asynccontextmanager
async def _remote(url: str, **options: float) -> AsyncIterator[RemoteEngine]:
    engine = RemoteEngine(url, RemoteConfig(**options), token=ADMIN_KEY)  # type: ignore[arg-type]
    try:
        yield engine
    finally:
        await engine.close()


def _events(n: int, tag: str = "x") -> list[NewEvent]:
    return [
        NewEvent(type="T", data=b'{"tag": "%s", "i": %d}' % (tag.encode(), i)) for i in range(n)
    ]


# --------------------------------------------------------------------------- batching


async def test_concurrent_appends_share_requests_and_each_gets_its_own_result(
    serve: Serve,
) -> None:
    server, _ = await serve()
    async with _remote(f"http://127.0.0.1:{server.port}") as store:
        await store._start()
        results = await asyncio.gather(
            *(store.append(f"s-{i}", _events(3, str(i))) for i in range(40))
        )
        for i, result in enumerate(results):
            got = [e async for e in store.read_stream(f"s-{i}")]
            assert [e.data for e in got] == [e.data for e in _events(3, str(i))]
            assert result.version == 2
            assert result.position == got[-1].position
        # 40 appends, one request in flight: the rest went together
        single = _requests(server, "/v1/streams/{stream:str}/events")
        many = _requests(server, "/v1/append-many")
        assert many >= 1
        assert single + many < 40


async def test_a_refused_append_fails_alone_and_the_others_are_stored(serve: Serve) -> None:
    server, _ = await serve()
    async with _remote(f"http://127.0.0.1:{server.port}") as store:
        await store._start()
        await store.append("taken-1", _events(1))
        calls = [store.append(f"free-{i}", _events(2, str(i))) for i in range(20)]
        calls.insert(10, store.append("taken-1", _events(1), NO_STREAM))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        refused = outcomes.pop(10)
        assert isinstance(refused, WrongExpectedVersion)
        assert refused.stream == "taken-1"
        for i, outcome in enumerate(outcomes):
            assert not isinstance(outcome, BaseException), outcome
            assert [e.data async for e in _data(store, f"free-{i}")] == [
                e.data for e in _events(2, str(i))
            ]
        assert len([e async for e in store.read_stream("taken-1")]) == 1


async def test_a_server_with_tighter_limits_gets_smaller_batches(serve: Serve) -> None:
    server, _ = await serve(limits=Limits(max_events_per_append=150))
    async with _remote(f"http://127.0.0.1:{server.port}") as store:
        await store._start()
        for round_ in range(10):
            calls = [store.append(f"r{round_}-{i}", _events(100, str(i))) for i in range(8)]
            await asyncio.gather(*calls)
        for round_ in range(10):
            for i in range(8):
                assert len([e async for e in store.read_stream(f"r{round_}-{i}")]) == 100
        # refused batches of 8, 5 and 2 appends (1,000, 500, 250 events allowed), then alone
        assert 1 <= _requests(server, "/v1/append-many", status="400") <= 3


async def _data(store: tidelog.Store, stream: str) -> AsyncIterator[NewEvent]:
    async for e in store.read_stream(stream):
        yield NewEvent(type=e.type, data=e.data)


async def test_concurrent_appends_to_one_stream_are_all_stored_in_version_order(
    serve: Serve,
) -> None:
    server, _ = await serve()
    async with _remote(f"http://127.0.0.1:{server.port}") as store:
        await store._start()
        results = await asyncio.gather(
            *(store.append("one-1", _events(1, str(i))) for i in range(30))
        )
        assert sorted(r.version for r in results) == list(range(30))
        stored = [e async for e in store.read_stream("one-1")]
        by_version = {r.version: r.position for r in results}
        assert [by_version[e.version] for e in stored] == [e.position for e in stored]


async def test_a_caller_cancelled_while_waiting_is_never_sent(serve: Serve) -> None:
    server, _ = await serve()
    async with _remote(f"http://127.0.0.1:{server.port}") as store:
        await store._start()
        first = [asyncio.create_task(store.append(f"a-{i}", _events(1))) for i in range(2)]
        waiting = asyncio.create_task(store.append("cancelled-1", _events(1)))
        for _ in range(100):  # until the first is sent and the others wait for the slot
            if len(store._batcher._waiting) == 2:
                break
            await asyncio.sleep(0)
        assert [p.stream for p in store._batcher._waiting] == ["a-1", "cancelled-1"]
        waiting.cancel()
        await asyncio.gather(*first)
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await store.append("after-1", _events(1))  # the slot it held is free
        assert [e async for e in store.read_stream("cancelled-1")] == []
        assert len([e async for e in store.read_stream("after-1")]) == 1


async def test_closing_fails_waiting_appends_with_store_closed(serve: Serve) -> None:
    server, _ = await serve()
    store = RemoteEngine(f"http://127.0.0.1:{server.port}", RemoteConfig(), token=ADMIN_KEY)
    await store._start()
    tasks = [asyncio.create_task(store.append(f"c-{i}", _events(1))) for i in range(10)]
    await asyncio.sleep(0)
    await store.close()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        assert (
            outcome is None
            or not isinstance(outcome, BaseException)
            or isinstance(outcome, (StoreClosed, StoreUnavailable))
        ), outcome
    with pytest.raises(StoreClosed):
        await store.append("c-late", _events(1))


# --------------------------------------------------------------------------- the pool


@contextlib.asynccontextmanager
async def _raw_server(
    answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], object],
) -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await answer(reader, writer)  # type: ignore[misc]
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    finally:
        srv.close()
        await srv.wait_closed()


async def _head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def test_a_server_that_never_answers_times_out_as_unavailable() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _head(reader)
        await asyncio.sleep(30)

    async with _raw_server(silent) as url, _remote(url, timeout=0.3) as store:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await store.last_position()


async def test_an_answer_that_is_not_http_is_unavailable() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _head(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with _raw_server(garbage) as url, _remote(url, timeout=5) as store:
        with pytest.raises(StoreUnavailable):
            await store.last_position()


async def test_a_server_hanging_up_mid_answer_is_unavailable() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _head(reader)
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"posi')
        await writer.drain()

    async with _raw_server(cut) as url, _remote(url, timeout=5) as store:
        with pytest.raises(StoreUnavailable):
            await store.last_position()


async def test_nothing_listening_is_unavailable() -> None:
    async with _raw_server(_head) as url:
        pass  # closed: nothing listens on its port now
    async with _remote(url, timeout=5) as store:
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await store.last_position()


async def test_connections_are_kept_alive_and_replaced_when_the_server_closes_them() -> None:
    connections = 0

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for _ in range(3):  # three answers, then this connection is closed
            await _head(reader)
            writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 14\r\n\r\n{"position":7}')
            await writer.drain()

    async with _raw_server(keep_alive) as url, _remote(url, timeout=5) as store:
        for _ in range(7):
            assert await store.last_position() == 7
            await asyncio.sleep(0.01)  # the close reaches the client between requests
        assert connections == 3


async def test_a_chunked_answer_is_read_whole() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b'6\r\n{"posi\r\n8\r\ntion":42\r\n1\r\n}\r\n0\r\n\r\n'
        )
        await writer.drain()
        await asyncio.sleep(1)

    async with _raw_server(chunked) as url, _remote(url, timeout=5) as store:
        assert await store.last_position() == 42


async def test_requests_carry_the_credentials_and_a_length() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _head(reader))
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 14\r\n\r\n{"position":1}')
        await writer.drain()

    async with _raw_server(record) as url, _remote(url, timeout=5) as store:
        await store.last_position()
    head = seen[0].decode("latin-1")
    assert head.startswith("GET /v1/log/head HTTP/1.1\r\n")
    assert f"Authorization: Bearer {ADMIN_KEY}\r\n" in head
    assert f"Host: {url.removeprefix('http://')}\r\n" in head


async def test_tls_verifies_the_server_against_the_given_ca_only(
    serve: Serve, tmp_path: pathlib.Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_pem, key_pem, ca_pem = tmp_path / "s.pem", tmp_path / "s.key", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    server, _ = await serve(tls_cert=str(cert_pem), tls_key=str(key_pem))
    url = f"https://127.0.0.1:{server.port}"
    with pytest.raises(StoreUnavailable):  # the default trust store does not know this CA
        await tidelog.connect(url, token=ADMIN_KEY)
    async with await tidelog.connect(url, token=ADMIN_KEY, verify=str(ca_pem)) as store:
        await asyncio.gather(*(store.append(f"tls-{i}", _events(2)) for i in range(10)))
        assert await store.last_position() == 20
