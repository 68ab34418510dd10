"""The test plumbing that the speed of the suite rests on does what it claims.

`SharedServers` lends running servers to remote stores instead of starting one
per store; the remote conformance suite is only as good as the isolation of
those stores, so it is checked here: each store starts empty, a store opened
while another is open gets a server of its own, and a returned server is reused.
"""

from __future__ import annotations

import json

import httpx

import tidelog
from support.server import ADMIN_KEY, SharedServers, _LentRemote

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


async def test_shared_servers_lend_fresh_stores_and_reuse_servers(
    shared_servers: SharedServers,
) -> None:
    first = await shared_servers.open("memory://")
    await first.append("order-1", [tidelog.NewEvent(type="A")])
    await first.join_group("g", "order", "m1")
    second = await shared_servers.open("memory://")
    assert await second.last_position() == 0
    started = shared_servers.started
    await first.close()
    third = await shared_servers.open("memory://?partitions=3")
    assert shared_servers.started == started  # the first store's server, lent again
    assert await third.last_position() == 0
    assert [e async for e in third.read_all()] == []
    assert await third.list_groups() == []
    assert third.partition_count == 3
    await third.append("order-1", [tidelog.NewEvent(type="B")])
    assert [e.type async for e in third.read_stream("order-1")] == ["B"]
    await second.close()
    await third.close()


async def test_a_lent_server_forgets_the_previous_store(shared_servers: SharedServers) -> None:
    """What the app cached for one store (its schema registry) never answers for the next."""
    first = await shared_servers.open("memory://")
    assert isinstance(first, _LentRemote)
    url = f"http://127.0.0.1:{first.server.port}"
    schema = {"schema": json.dumps({"type": "object"}), "schemaType": "JSON"}
    async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        registered = await client.post("/subjects/OrderPlaced/versions", json=schema)
        assert registered.status_code == 200, registered.text
        assert (await client.get("/subjects")).json() == ["OrderPlaced"]
        await first.close()
        second = await shared_servers.open("memory://")
        assert isinstance(second, _LentRemote)
        assert second.server is first.server
        assert (await client.get("/subjects")).json() == []
        await second.close()
