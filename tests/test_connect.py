"""Choosing an engine from a URL."""

from __future__ import annotations

from typing import Any, cast

import pytest

import tidelog


@pytest.mark.parametrize(
    "url",
    ["foo://x", "mysql://localhost/db", "", "memory", "file:///tmp/x.db", "MEMORY-x://"],
)
def test_unknown_scheme_is_invalid_url(url: str) -> None:
    with pytest.raises(tidelog.InvalidURL) as info:
        tidelog.connect(url)
    assert info.value.url == url
    assert isinstance(info.value, ValueError)


def test_non_string_url_is_invalid() -> None:
    with pytest.raises(tidelog.InvalidURL):
        tidelog.connect(cast(Any, 42))


@pytest.mark.parametrize(
    "url",
    [
        "memory://?nonsense=1",
        "memory://?partitions=many",
        "memory://?partitions=1&partitions=2",
    ],
)
async def test_bad_query_option_is_invalid_url(url: str) -> None:
    with pytest.raises(tidelog.InvalidURL):
        await tidelog.connect(url)


async def test_bad_partition_count_is_invalid_input() -> None:
    with pytest.raises(tidelog.InvalidInput):
        await tidelog.connect("memory://?partitions=0")


async def test_await_connect() -> None:
    store = await tidelog.connect("memory://")
    try:
        assert isinstance(store, tidelog.Store)
        assert (await store.append("order-1", [tidelog.NewEvent(type="Created")])).position == 1
    finally:
        await store.close()
    with pytest.raises(tidelog.StoreClosed):
        await store.last_position()


async def test_async_with_connect_closes() -> None:
    async with tidelog.connect("memory://?partitions=4") as store:
        assert store.partition_count == 4
        await store.append("order-1", [tidelog.NewEvent(type="Created")])
        assert await store.last_position() == 1
    with pytest.raises(tidelog.StoreClosed):
        await store.last_position()


async def test_each_memory_connect_is_a_new_store() -> None:
    async with tidelog.connect("memory://") as first, tidelog.connect("memory://") as second:
        await first.append("order-1", [tidelog.NewEvent(type="Created")])
        assert await second.last_position() == 0


async def test_sqlite_url_opens_a_file_store(tmp_path: Any) -> None:
    path = tmp_path / "store.db"
    async with tidelog.connect(f"sqlite:///{path}") as store:
        await store.append("order-1", [tidelog.NewEvent(type="Created")])
    assert path.exists()
    async with tidelog.connect(f"sqlite:///{path}") as store:
        assert [e.stream async for e in store.read_all()] == ["order-1"]


def test_default_url_is_sqlite() -> None:
    assert tidelog.DEFAULT_STORE_URL == "sqlite:///tidelog-data/tidelog.db"
