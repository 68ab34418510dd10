"""Reads under count-based rules ask the SQL engines for stream heads in batches and
count without reading (issue #16's follow-up): SQLite and PostgreSQL; and the
`--hard-max-bytes` option of the command line.

Each stream's last version used to cost one read per stream per read, and
`count_events` read every event. These tests take the slow paths away from the
store (`_stream_state`, `_read_all`) and check the answers still come, from the
engine's own queries (`_stream_heads`, `_count_below`). Agreement with
`read_all` under every filter is the conformance suite's
(`test_count_events_agrees_with_reads_under_count_rules`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import tidelog
from support.postgres import Schemas, schemas
from tidelog.cli import app
from tidelog.retention import RetentionPolicy
from tidelog.testing.conformance import ev

pytestmark = pytest.mark.asyncio
__all__ = ["schemas"]  # the fixture, re-exported for pytest


async def check_batched(store: tidelog.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the slow paths taken away, reads and counts still answer, from the engine's
    batched queries."""
    await store.append_many(
        {f"order-{i}": tidelog.AppendRequest([ev() for _ in range(4)]) for i in range(300)}
    )
    await store.set_retention(RetentionPolicy(max_count=2), category="order")

    def one_stream_at_a_time(*args: Any) -> Any:
        raise AssertionError("a stream's head was asked alone")

    monkeypatch.setattr(store, "_stream_state", one_stream_at_a_time)
    read = [(e.stream, e.version) async for e in store.read_all(categories=["order"])]
    assert len(read) == 600
    assert {v for _, v in read} == {2, 3}
    page = await store.read_page(0, ["order"], None, 450, None)
    assert len(page) == 450 and {e.version for e in page} == {2, 3}

    def no_reading(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("count_events read the events")

    monkeypatch.setattr(store, "_read_all", no_reading)
    assert await store.count_events(0, ["order"]) == 600
    assert await store.count_events() == 600 + 1  # and the rule in $retention
    position = page[100].position
    assert await store.count_events(position, ["order"]) == 600 - 100


async def test_sqlite_reads_heads_in_batches_and_counts_with_sql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with tidelog.connect(f"sqlite:///{tmp_path}/s.db") as store:
        await check_batched(store, monkeypatch)


@pytest.mark.postgres
async def test_postgres_reads_heads_in_batches_and_counts_with_sql(
    schemas: Schemas, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await schemas.open("pool_max=2") as store:
        await check_batched(store, monkeypatch)


async def test_cli_sets_a_hard_byte_cap_and_the_scavenger_applies_it(tmp_path: Path) -> None:
    """`tidelog retention set --hard-max-bytes`: the rule is stored, reads still show
    every event (a size is applied by the scavenger), `tidelog scavenge` deletes the
    oldest down to the cap."""
    url = f"sqlite:///{tmp_path}/s.db"
    async with tidelog.connect(url) as store:
        await store.append("order-1", [ev(data=b"x" * 98) for _ in range(5)])

    def cli(*args: str) -> Any:
        return CliRunner().invoke(app, ["--store", url, *args])

    result = await asyncio.to_thread(
        cli, "retention", "set", "-c", "order", "--hard-max-bytes", "250"
    )
    assert result.exit_code == 0, result.output
    assert "hard_max_bytes=250" in result.output
    report = json.loads((await asyncio.to_thread(cli, "--json", "scavenge")).output)
    assert report["deleted"] == 3  # 5 events of 100 bytes, 2 fit in 250
    async with tidelog.connect(url) as store:
        assert [e.version async for e in store.read_stream("order-1")] == [3, 4]
    refused = await asyncio.to_thread(cli, "retention", "set", "--hard-max-bytes", "0")
    assert refused.exit_code == 1 and "InvalidInput" in refused.output
