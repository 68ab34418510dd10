"""`tidelog copy` of a store whose retention deleted events (issue #16).

Copying replays every event with its source version as the expected version,
so a stream whose first events a scavenge deleted used to fail half-way with
`WrongExpectedVersion`. The copy now starts such streams at the version of
their first kept event (`_start_stream_at`), keeps the version of streams with
no event left, and carries the rules, so the destination shows what the source
shows, and goes on from the same versions.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

import tidelog
from support.postgres import Schemas, schemas
from tidelog.copy import copy_store
from tidelog.errors import NotSupported
from tidelog.retention import RetentionPolicy
from tidelog.testing.conformance import ev

pytestmark = pytest.mark.asyncio
__all__ = ["schemas"]  # the fixture, re-exported for pytest


async def scavenged(store: tidelog.Store) -> None:
    """A source after a scavenge: count-capped streams, a group that protects what it has
    not read, a stream with no event left, a tombstoned stream with a truncated start."""
    for i in range(3):
        await store.append(f"order-{i}", [ev() for _ in range(6)])
    await store.append("temp-1", [ev() for _ in range(3)])
    await store.append("old-1", [ev() for _ in range(4)])
    membership = await store.join_group("billing", "order", "m1")
    head = await store.last_position()
    # billing read everything but the end of order-0's partition: what is past
    # the rules there from position 5 on is protected, and kept.
    mine = tidelog.partition_of("order-0", store.partition_count)
    for partition in membership.partitions:
        await store.commit(
            "billing",
            "order",
            partition,
            4 if partition == mine else head,
            member="m1",
            generation=membership.generation,
        )
    await store.leave_group("billing", "order", "m1")
    await store.set_retention(RetentionPolicy(max_count=2), category="order")
    await store.set_retention(RetentionPolicy(truncate_before=10), stream="temp-1")
    await store.set_retention(RetentionPolicy(truncate_before=2), stream="old-1")
    await store.delete_stream("old-1")
    report = await store.scavenge()
    assert report.deleted > 0


async def visible(store: tidelog.Store) -> list[tuple[object, ...]]:
    return [(e.id, e.stream, e.version, e.type) async for e in store.read_all()]


async def check_copy(src: tidelog.Store, dst: tidelog.Store) -> None:
    await scavenged(src)
    versions = {s: [e.version async for e in src.read_stream(s)] for s in ("order-0", "temp-1")}
    assert versions == {"order-0": [4, 5], "temp-1": []}
    report = await copy_store(src, dst, batch_events=3)
    assert report.verified, report.mismatches
    assert await visible(dst) == await visible(src)
    assert [s async for s in dst.list_streams()] == [s async for s in src.list_streams()]
    assert await dst.retention() == await src.retention()
    assert await dst.checkpoints("billing", "order") != {}
    # The destination's scavenger keeps what the source keeps (the group's unread events).
    await dst.scavenge()
    assert await visible(dst) == await visible(src)
    # Versions go on where the source's do, in a stream with no event left too.
    assert (await dst.append("order-0", [ev()], expected_version=5)).version == 6
    assert (await dst.append("temp-1", [ev()], expected_version=2)).version == 3
    with pytest.raises(tidelog.StreamDeleted):
        await dst.append("old-1", [ev()])


async def test_memory_to_memory() -> None:
    async with tidelog.connect("memory://") as src, tidelog.connect("memory://") as dst:
        await check_copy(src, dst)


async def test_sqlite_to_sqlite(tmp_path: Path) -> None:
    async with (
        tidelog.connect(f"sqlite:///{tmp_path}/a.db") as src,
        tidelog.connect(f"sqlite:///{tmp_path}/b.db") as dst,
    ):
        await check_copy(src, dst)


@pytest.mark.postgres
async def test_sqlite_to_postgres(tmp_path: Path, schemas: Schemas) -> None:
    async with (
        tidelog.connect(f"sqlite:///{tmp_path}/a.db") as src,
        await schemas.open("pool_max=2") as dst,
    ):
        await check_copy(src, dst)


async def test_an_interrupted_copy_of_a_scavenged_store_resumes(tmp_path: Path) -> None:
    async with (
        tidelog.connect(f"sqlite:///{tmp_path}/a.db") as src,
        tidelog.connect(f"sqlite:///{tmp_path}/b.db") as dst,
    ):
        await scavenged(src)
        calls = 0

        def stop(done: int, end: int) -> None:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            await copy_store(src, dst, batch_events=2, progress=stop)
        report = await copy_store(src, dst, batch_events=2)
        assert report.verified, report.mismatches
        assert await visible(dst) == await visible(src)


async def test_a_destination_that_cannot_start_streams_is_refused_up_front(
    tmp_path: Path, nats_server: Any
) -> None:
    async with (
        tidelog.connect(f"sqlite:///{tmp_path}/a.db") as src,
        tidelog.connect(f"{nats_server.url}?store=t{uuid.uuid4().hex[:16]}&timeout=10") as dst,
    ):
        await scavenged(src)
        with pytest.raises(NotSupported, match="order-0"):
            await copy_store(src, dst)
        assert await dst.last_position() == 0  # nothing was written
