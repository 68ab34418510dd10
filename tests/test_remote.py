"""The remote engine passes the whole conformance suite through a live server.

Each store is a fresh engine behind a real uvicorn server on a free loopback
port, reached over HTTP by `RemoteEngine`. The servers are shared by the module
(`shared_servers`, see `support.server.SharedServers`): a store borrows one for
its lifetime, and closing the store closes the engine behind it and gives the
server back. Starting a server per store made this module most of the quick run.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from uuid import uuid4

import httpx
import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import given, settings
from litestar.response import ServerSentEventMessage

import tidelog
from support.server import ADMIN_KEY, SharedServers, config
from tidelog import wire
from tidelog.engines.remote import RemoteConfig, RemoteEngine, _sse_data
from tidelog.server import Server
from tidelog.testing.conformance import EngineSuite
from tidelog.testing.retention import RetentionSuite
from tidelog.testing.retention_model import RetentionModelSuite
from tidelog.testing.stateful import ModelSuite


class _ServedRemote(RemoteEngine):
    """A remote store that owns the server (and the engine) behind it."""

    server: Server
    backing: tidelog.Store

    async def close(self) -> None:
        if self._closed:
            return
        await super().close()
        await self.server.stop()
        await self.backing.close()


async def _served(backing_url: str) -> tidelog.Store:
    backing = await tidelog.connect(backing_url)
    server = Server(config(), backing)
    await server.start()
    remote = _ServedRemote(f"http://127.0.0.1:{server.port}", RemoteConfig(page=7), token=ADMIN_KEY)
    remote.server, remote.backing = server, backing
    await remote._start()
    return remote


class _OnSharedServers:
    """The suites' stores are served by the module's shared servers."""

    servers: SharedServers

    @pytest.fixture(autouse=True)
    def _servers(self, shared_servers: SharedServers) -> None:
        self.servers = shared_servers


class TestRemoteEngine(_OnSharedServers, EngineSuite):
    """In front of the memory engine; a small page size exercises paging."""

    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await self.servers.open("memory://", RemoteConfig(page=7))


class TestRemoteRetention(_OnSharedServers, RetentionSuite):
    """The rules through the admin routes; the server's store applies them."""

    supports_start_stream_at = False  # no HTTP route for it

    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await self.servers.open("memory://", RemoteConfig(page=7))

    def shift_clock(self, store: tidelog.Store, seconds: float) -> None:
        super().shift_clock(self.servers._lent[store.server], seconds)  # type: ignore[attr-defined]


class TestRemoteRetentionModel(_OnSharedServers, RetentionModelSuite):
    max_examples = 10

    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await self.servers.open("memory://", RemoteConfig(page=7))


class TestRemoteOverSQLite(_OnSharedServers, EngineSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await self.servers.open(
            f"sqlite:///{tmp_path}/{uuid4().hex}.db", RemoteConfig(page=7)
        )


class TestRemoteModel(_OnSharedServers, ModelSuite):
    """The memory engine behind the server, so what the sequences test is the wire.

    Every step is one or more HTTP round trips (pages of 7 events), which made
    this the costliest model test at 40 sequences; 20 sequences of 30 steps still
    send every operation and every error the model produces many times over.
    """

    max_examples = 20

    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await self.servers.open("memory://?partitions=4", RemoteConfig(page=7))


# --------------------------------------------------------------------------- event data

# JSON a decoder keeps only part of (whitespace around the value), JSON in other
# encodings, line ends Server-Sent Events or Python split at, and binary data
AWKWARD_DATA = [
    b' {"a": 1} ',
    b'{"a": 1}\n',
    b"\t[]",
    b"\r\n0\r\n",
    b'{\r"a":\r\n1}',
    b"[1,\n2]",
    b'"\xff"',
    b'"\xed\xa0\x80"',
    b'"a\xe2\x80\xa8b\xc2\x85c"',
    b'{"a": 1}',
    b"null",
    b"",
    b"\x00\xff",
]
AWKWARD_METADATA = {"note": "a\u2028b\x85c\rd", "n": 1}


async def test_event_data_round_trips_byte_exactly_on_every_read_path() -> None:
    remote = await _served("memory://")
    assert isinstance(remote, _ServedRemote)
    try:
        live = remote.subscribe()
        for i, data in enumerate(AWKWARD_DATA):
            await remote.append(
                f"d-{i}", [tidelog.NewEvent(type="A", data=data, metadata=AWKWARD_METADATA)]
            )
        await remote.append_many(
            {
                "e-1": tidelog.AppendRequest(
                    [tidelog.NewEvent(type="B", data=d) for d in AWKWARD_DATA]
                )
            }
        )
        expected = [*AWKWARD_DATA, *AWKWARD_DATA]
        # what the engine behind the server stored
        assert [e.data async for e in remote.backing.read_all()] == expected
        assert [e.data async for e in remote.read_all()] == expected
        by_stream = [e.data for i in range(len(AWKWARD_DATA)) for e in await _read(remote, i)]
        assert by_stream == AWKWARD_DATA
        assert [e.data async for e in remote.read_stream("e-1")] == AWKWARD_DATA
        async with asyncio.timeout(10):
            received = [await anext(live) for _ in expected]
        assert [e.data for e in received] == expected
        assert received[0].metadata == AWKWARD_METADATA
        await live.aclose()
    finally:
        await remote.close()


async def _read(store: tidelog.Store, i: int) -> list[tidelog.RecordedEvent]:
    return [e async for e in store.read_stream(f"d-{i}")]


class _Chunks(httpx.AsyncByteStream):
    def __init__(self, body: bytes, size: int) -> None:
        self.body, self.size = body, size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), self.size):
            yield self.body[start : start + self.size]


json_texts = st.builds(
    lambda value, indent, crlf, before, after: (
        before
        + json.dumps(value, indent=indent, ensure_ascii=False)
        .encode()
        .replace(b"\n", b"\r\n" if crlf else b"\n")
        + after
    ),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.text(st.characters(exclude_categories=["Cs"])),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=6,
    ),
    st.sampled_from([None, 1]),
    st.booleans(),
    st.sampled_from([b"", b" ", b"\n", b"\r\n", b"\t"]),
    st.sampled_from([b"", b" ", b"\n", b"\r\n", b"\t"]),
)


@given(
    data=st.binary() | json_texts,
    note=st.text(st.characters(exclude_categories=["Cs"])),
    size=st.integers(1, 64),
)
@settings(max_examples=300, deadline=None)
def test_wire_event_keeps_every_byte_through_json_and_server_sent_events(
    data: bytes, note: str, size: int
) -> None:
    """The server's encoding, its SSE framing (Litestar's) cut into chunks anywhere,
    and the remote engine's parsing give back the bytes and metadata written."""
    event = tidelog.RecordedEvent(
        id=uuid4(),
        stream="order-1",
        version=0,
        position=1,
        type="A",
        data=data,
        metadata={"note": note},
        recorded_at=datetime.now(UTC),
    )
    encoded = msgspec.json.encode(wire.WireEvent.from_recorded(event))
    assert msgspec.json.decode(encoded, type=wire.WireEvent).to_recorded() == event
    new = wire.WireNewEvent.from_new_event(
        tidelog.NewEvent(type="A", data=data, metadata={"note": note})
    )
    assert (
        msgspec.json.decode(msgspec.json.encode(new), type=wire.WireNewEvent).to_new_event().data
        == data
    )
    frame = ServerSentEventMessage(data=encoded.decode(), id=1, event="event").encode()
    parsed = asyncio.run(_parse_sse(frame * 2, size))
    assert [msgspec.json.decode(p, type=wire.WireEvent).to_recorded() for p in parsed] == [
        event
    ] * 2


async def _parse_sse(body: bytes, size: int) -> list[bytes]:
    response = httpx.Response(200, stream=_Chunks(body, size))
    return [data async for data in _sse_data(response)]
