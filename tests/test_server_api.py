"""The HTTP API through a live server: appends, reads, SSE resume, groups, operations."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import tidelog
from support.server import ADMIN_KEY, Serve, config, running


@pytest.fixture
async def api(serve: Serve) -> AsyncIterator[tuple[httpx.AsyncClient, tidelog.Store]]:
    server, store = await serve()
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.port}",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ) as client:
        yield client, store


async def test_append_and_read_keep_json_and_binary_data_exactly(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    client, store = api
    body = (
        b'{"events": [{"type": "OrderPlaced", "data": {"total":  10}},'
        b' {"type": "Blob", "data_base64": "AAE="}], "expected_version": "no_stream"}'
    )
    r = await client.post("/v1/streams/order-1/events", content=body)
    assert r.status_code == 200, r.text
    assert r.json() == {"version": 1, "position": 2}
    stored = [e.data async for e in store.read_stream("order-1")]
    assert stored == [b'{"total":  10}', b"\x00\x01"]
    page = (await client.get("/v1/streams/order-1/events")).json()["events"]
    assert page[0]["data"] == {"total": 10} and page[0]["data_base64"] is None
    assert page[1]["data"] is None and page[1]["data_base64"] == "AAE="


async def test_a_backwards_page_without_a_start_is_the_newest_events(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    """`?backwards=true` alone means "the latest events"; an explicit start is kept."""
    client, store = api
    await store.append("order-1", [tidelog.NewEvent(type=f"T{i}") for i in range(5)])

    async def versions(**params: object) -> list[int]:
        r = await client.get("/v1/streams/order-1/events", params=params)
        assert r.status_code == 200, r.text
        return [e["version"] for e in r.json()["events"]]

    assert await versions(backwards="true", limit=1) == [4]
    assert await versions(backwards="true") == [4, 3, 2, 1, 0]
    assert await versions(backwards="true", from_version=1) == [1, 0]
    assert await versions(backwards="true", from_version=-1, limit=2) == [4, 3]
    assert await versions(limit=2) == [0, 1]
    r = await client.get("/v1/streams/order-1/events", params={"from_version": -1})
    assert r.status_code == 400 and r.json()["code"] == "invalid_input"


async def test_data_that_json_would_change_travels_as_base64_on_every_read(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    """The documented rule: `data` only when embedding keeps every byte, else `data_base64`."""
    client, store = api
    kept = [b'{"a": 1}', b"[1,\n2]", '"caf\u00e9 \u2028"'.encode()]
    spoiled = [b' {"a": 1} ', b'{"a": 1}\n', b'{\r\n"a": 1}', b'"\xff"', b"\x00\x01", b""]
    for i, data in enumerate(kept + spoiled):
        body = {"events": [{"type": "T", "data_base64": base64.b64encode(data).decode()}]}
        r = await client.post(f"/v1/streams/order-{i}/events", json=body)
        assert r.status_code == 200, r.text
    # data sent as JSON is stored as the value's bytes: the whitespace around it is not data
    r = await client.post(
        "/v1/streams/order-99/events", content=b'{"events": [{"type": "T", "data":  {"a": 1}\n}]}'
    )
    assert r.status_code == 200, r.text
    assert [e.data async for e in store.read_stream("order-99")] == [b'{"a": 1}']

    def decoded(event: dict[str, object]) -> bytes:
        assert event["data"] is None
        return base64.b64decode(str(event["data_base64"]))

    page = (await client.get("/v1/log", params={"limit": len(kept + spoiled)})).json()["events"]
    assert [e["data_base64"] is None for e in page] == [True] * len(kept) + [False] * len(spoiled)
    assert [e["data"] for e in page[: len(kept)]] == [json.loads(d) for d in kept]
    assert [decoded(e) for e in page[len(kept) :]] == spoiled
    raw = (await client.get("/v1/log", params={"limit": len(kept)})).content
    for data in kept:  # embedded byte for byte, not re-encoded
        assert data in raw
    # the live stream says the same; a multi-line value spans several `data:` lines, and
    # lines end at CR LF only (`aiter_lines` would also split at the U+2028 in a string)
    received: list[dict[str, object]] = []
    buffer = b""
    async with client.stream("GET", "/v1/subscribe") as response:
        async for chunk in response.aiter_bytes():
            *frames, buffer = (buffer + chunk).split(b"\r\n\r\n")
            for frame in frames:
                data = [line[6:] for line in frame.split(b"\r\n") if line.startswith(b"data: ")]
                if data:
                    received.append(json.loads(b"\n".join(data)))
            if len(received) >= len(page):
                break
    assert [e["data"] for e in received[: len(kept)]] == [json.loads(d) for d in kept]
    # one chunk may carry several events, and order-99 (after the page) with them
    assert [decoded(e) for e in received[len(kept) : len(page)]] == spoiled
    # CloudEvents with a JSON content type follow the same rule
    ce = (await client.get("/v1/streams/order-3/cloudevents")).json()
    assert base64.b64decode(ce[0]["data_base64"]) == spoiled[0] and "data" not in ce[0]


async def test_conflict_is_409_with_actual_version(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    client, _ = api
    ok = await client.post("/v1/streams/a-1/events", json={"events": [{"type": "X"}]})
    assert ok.status_code == 200
    r = await client.post(
        "/v1/streams/a-1/events", json={"events": [{"type": "X"}], "expected_version": 7}
    )
    assert r.status_code == 409
    assert r.json()["code"] == "wrong_expected_version"
    assert r.json()["actual"] == 0


async def test_idempotent_retry_over_http(api: tuple[httpx.AsyncClient, tidelog.Store]) -> None:
    client, store = api
    event = {"type": "X", "id": "6f1c1f5e-8d35-4a4e-9f0e-2b8f9f0b1c11"}
    first = await client.post(
        "/v1/streams/a-1/events", json={"events": [event], "expected_version": "no_stream"}
    )
    again = await client.post(
        "/v1/streams/a-1/events", json={"events": [event], "expected_version": "no_stream"}
    )
    assert first.json() == again.json() == {"version": 0, "position": 1}
    assert await store.last_position() == 1


async def test_sse_ids_are_positions_and_last_event_id_resumes_exactly(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    client, store = api
    for i in range(5):
        await store.append(f"order-{i}", [tidelog.NewEvent(type="T")])

    async def first_ids(headers: dict[str, str], count: int) -> list[int]:
        ids: list[int] = []
        async with client.stream("GET", "/v1/subscribe", headers=headers) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.startswith("id:"):
                    ids.append(int(line[3:].strip()))
                    if len(ids) == count:
                        return ids
        return ids

    assert await asyncio.wait_for(first_ids({}, 3), 10) == [1, 2, 3]
    assert await asyncio.wait_for(first_ids({"Last-Event-ID": "3"}, 2), 10) == [4, 5]
    bad = await client.get("/v1/subscribe", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400


async def test_groups_over_http(api: tuple[httpx.AsyncClient, tidelog.Store]) -> None:
    client, _ = api
    events = {"events": [{"type": "X"} for _ in range(5)]}
    assert (await client.post("/v1/streams/order-1/events", json=events)).status_code == 200
    joined = await client.post("/v1/groups/billing/order/members/m1", json={"lease": 5})
    assert joined.status_code == 200
    generation = joined.json()["generation"]
    ok = await client.post(
        "/v1/groups/billing/order/commit",
        json={"partition": 0, "position": 4, "member": "m1", "generation": generation},
    )
    assert ok.status_code == 200
    stale = await client.post(
        "/v1/groups/billing/order/commit",
        json={"partition": 0, "position": 5, "member": "m1", "generation": generation + 1},
    )
    assert stale.status_code == 409 and stale.json()["code"] == "stale_generation"
    beyond = await client.post(
        "/v1/groups/billing/order/commit",
        json={"partition": 0, "position": 6, "member": "m1", "generation": generation},
    )
    assert beyond.status_code == 400 and beyond.json()["code"] == "invalid_input"
    described = (await client.get("/v1/groups/billing/order")).json()
    assert described["checkpoints"] == {"0": 4}


async def _scrape_until(client: httpx.AsyncClient, line: str) -> str:
    """Scrape /metrics until `line` shows up (a bounded wait); return the last text."""
    deadline = time.monotonic() + 30
    while line not in (text := (await client.get("/metrics")).text):
        assert time.monotonic() < deadline, f"{line!r} not in /metrics"
        await asyncio.sleep(0.2)
    return text


async def test_health_and_metrics(api: tuple[httpx.AsyncClient, tidelog.Store]) -> None:
    client, store = api
    await client.post("/v1/streams/order-1/events", json={"events": [{"type": "X"}]})
    member = await store.join_group("billing", "order", "m1")
    home = tidelog.partition_of("order-1", store.partition_count)
    await store.commit("billing", "order", home, 0, member="m1", generation=member.generation)
    assert (await client.get("/livez")).status_code == 200
    assert (await client.get("/readyz")).json() == {"status": "ok"}
    lag = f'tidelog_consumer_lag_events{{category="order",group="billing",partition="{home}"}}'
    # lag is refreshed in the background, soon after a scrape asks for it
    text = await _scrape_until(client, f"{lag} 1.0")
    assert 'tidelog_appended_events_total{category="order"} 1.0' in text
    other = (home + 1) % store.partition_count
    assert f'partition="{other}"}} 0.0' in text  # lag counts only that partition's events
    assert "tidelog_http_requests_total" in text
    assert "order-1" not in text  # never labelled by stream id


async def test_group_hand_over_over_http_and_its_bad_input(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    """A cooperative join and a release travel in the bodies; bad ones get 400 and
    change nothing (#14 item 11)."""
    client, store = api
    path = "/v1/groups/billing/order/members"
    r = await client.post(f"{path}/m1", json={"lease": 60, "cooperative": True})
    assert r.status_code == 200, r.text
    r = await client.post(f"{path}/m2", json={"lease": 60, "cooperative": True})
    assert r.status_code == 200 and r.json()["partitions"] == [], r.text
    awaiting = r.json()["awaiting"]
    assert awaiting
    r = await client.post(f"{path}/m1/heartbeat", json={"lease": 60})
    assert r.json()["revoking"] == awaiting
    generation = r.json()["generation"]
    for body in (
        {"release": [store.partition_count]},
        {"release": [-1]},
        {"release": "0"},
        {"release": [0], "bogus": 1},
    ):
        r = await client.post(f"{path}/m1/heartbeat", json={"lease": 60, **body})
        assert r.status_code == 400, (body, r.text)
    r = await client.post(f"{path}/m3", json={"lease": 60, "cooperative": "yes"})
    assert r.status_code == 400, r.text
    described = await store.describe_group("billing", "order")
    assert described is not None and described.generation == generation
    assert [m.member for m in described.members] == ["m1", "m2"]
    r = await client.post(f"{path}/m1/heartbeat", json={"lease": 60, "release": awaiting})
    assert r.status_code == 200 and r.json()["revoking"] == [], r.text
    r = await client.post(f"{path}/m2/heartbeat", json={"lease": 60})
    assert r.json()["partitions"] == awaiting


async def test_readyz_is_503_when_the_engine_is_down(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    client, store = api
    await store.close()
    r = await client.get("/readyz")
    assert r.status_code == 503


async def test_openapi_schema_is_served(api: tuple[httpx.AsyncClient, tidelog.Store]) -> None:
    client, _ = api
    doc = (await client.get("/schema/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    assert "/v1/streams/{stream}/events" in doc["paths"]


async def test_remote_engine_round_trip(api: tuple[httpx.AsyncClient, tidelog.Store]) -> None:
    client, _ = api
    url = str(client.base_url)
    async with tidelog.connect(url, token=ADMIN_KEY) as remote:
        r = await remote.append(
            "order-9", [tidelog.NewEvent(type="X", data=json.dumps({"a": 1}).encode())]
        )
        assert r.version == 0
        with pytest.raises(tidelog.WrongExpectedVersion) as info:
            await remote.append("order-9", [tidelog.NewEvent(type="X")], expected_version=5)
        assert info.value.actual == 0
    with pytest.raises(tidelog.AccessDenied) as denied:
        await tidelog.connect(url, token="wrong")
    assert denied.value.status == 401


async def test_websocket_subscription_with_first_message_auth() -> None:
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed

    async with running(config()) as (server, store):
        await store.append("order-1", [tidelog.NewEvent(type="A")])
        await store.append("cart-1", [tidelog.NewEvent(type="B")])
        await store.append("order-2", [tidelog.NewEvent(type="C")])
        url = f"ws://127.0.0.1:{server.port}/v1/ws/subscribe"
        async with ws_connect(url + "?category=order") as ws:
            await ws.send(json.dumps({"token": ADMIN_KEY}))
            first = json.loads(await asyncio.wait_for(ws.recv(), 5))
            second = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert [first["stream"], second["stream"]] == ["order-1", "order-2"]
            assert [first["position"], second["position"]] == [1, 3]
            await store.append("order-3", [tidelog.NewEvent(type="D")])
            live = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert live["stream"] == "order-3"
        async with ws_connect(url) as denied:
            await denied.send(json.dumps({"token": "wrong"}))
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(denied.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_remote_consumer_fetch_ack_and_nack(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    client, store = api
    for i in range(6):
        await store.append(f"order-{i}", [tidelog.NewEvent(type="Placed")])
    await store.append("cart-1", [tidelog.NewEvent(type="Other")])
    joined = (await client.post("/v1/groups/billing/order/members/m1", json={"lease": 5})).json()
    gen = joined["generation"]
    page = await client.get(
        "/v1/groups/billing/order/fetch", params={"member": "m1", "generation": gen, "max": 10}
    )
    assert page.status_code == 200
    events = page.json()["events"]
    assert [e["position"] for e in events] == [1, 2, 3, 4, 5, 6]
    first = events[0]
    partition = tidelog.partition_of(first["stream"], store.partition_count)
    ack = await client.post(
        "/v1/groups/billing/order/commit",
        json={"partition": partition, "position": 1, "member": "m1", "generation": gen},
    )
    assert ack.status_code == 200
    nack = await client.post(
        "/v1/groups/billing/order/nack",
        json={"member": "m1", "generation": gen, "position": 2, "error": "boom", "attempts": 3},
    )
    assert nack.status_code == 200, nack.text
    parked = [e async for e in store.read_stream("$dlq-billing")]
    assert [e.type for e in parked] == ["tidelog.Parked"]
    assert b"boom" in parked[0].data
    after = await client.get(
        "/v1/groups/billing/order/fetch", params={"member": "m1", "generation": gen, "max": 10}
    )
    assert [e["position"] for e in after.json()["events"]] == [3, 4, 5, 6]
    # events 3..6 were fetched before and not committed: they are redeliveries
    metrics = (await client.get("/metrics")).text
    assert 'tidelog_redelivered_events_total{category="order",group="billing"} 4.0' in metrics
    stale = await client.get(
        "/v1/groups/billing/order/fetch", params={"member": "m1", "generation": gen + 5}
    )
    assert stale.status_code == 409 and stale.json()["code"] == "stale_generation"


def test_tidelog_serve_first_start_prints_key_once_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The README's first command: `tidelog serve` on the embedded default."""

    def start() -> tuple[subprocess.Popen[str], str, list[str]]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tidelog", "serve", "--port", "0"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        lines: list[str] = []
        while not any("tidelog serving" in line for line in lines):
            line = proc.stderr.readline()
            assert line, f"server exited: {lines}"
            lines.append(line)
        url = re.search(r"at (http://127\.0\.0\.1:\d+)/", "".join(lines))
        assert url is not None
        return proc, url.group(1), lines

    def stop(proc: subprocess.Popen[str]) -> int:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(30)
        finally:
            assert proc.stderr is not None
            proc.stderr.close()

    proc, url, lines = start()
    try:
        key_lines = [line for line in lines if "shown once" in line]
        assert len(key_lines) == 1
        key = key_lines[0].rsplit(" ", 1)[1].strip()
        assert httpx.get(f"{url}/livez").status_code == 200
        assert httpx.get(f"{url}/v1/info").status_code == 401
        info = httpx.get(f"{url}/v1/info", headers={"Authorization": f"Bearer {key}"})
        assert info.json()["engine"] == "sqlite"
    finally:
        assert stop(proc) == 0
    assert (tmp_path / "tidelog-data" / "tidelog.db").exists()
    # the second start reuses the stored key digest and does not print a key again
    proc, url, lines = start()
    try:
        assert not any("shown once" in line for line in lines)
        info = httpx.get(f"{url}/v1/info", headers={"Authorization": f"Bearer {key}"})
        assert info.status_code == 200
    finally:
        assert stop(proc) == 0


async def test_join_without_a_body_and_fetched_events_carry_their_partition(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    """`WireJoin` has no required field, so no body is a join with the default lease;
    each fetched event names its partition, which its ack (a commit) needs (#14 item 8)."""
    client, store = api
    for i in range(6):
        await store.append(f"order-{i}", [tidelog.NewEvent(type="Placed")])
    joined = await client.post("/v1/groups/billing/order/members/m1")
    assert joined.status_code == 200, joined.text
    gen = joined.json()["generation"]
    beat = await client.post("/v1/groups/billing/order/members/m1/heartbeat")
    assert beat.status_code == 200, beat.text
    bad = await client.post("/v1/groups/billing/order/members/m1", json={"lease": "soon"})
    assert bad.status_code == 400, bad.text
    page = await client.get(
        "/v1/groups/billing/order/fetch", params={"member": "m1", "generation": gen}
    )
    events = page.json()["events"]
    assert len(events) == 6
    for e in events:
        assert e["partition"] == tidelog.partition_of(e["stream"], store.partition_count)
        ack = await client.post(
            "/v1/groups/billing/order/commit",
            json={
                "partition": e["partition"],
                "position": e["position"],
                "member": "m1",
                "generation": gen,
            },
        )
        assert ack.status_code == 200, ack.text
    expected: dict[int, int] = {}
    for e in events:
        expected[e["partition"]] = max(expected.get(e["partition"], 0), e["position"])
    points = await store.checkpoints("billing", "order")
    assert {p: points.get(p) for p in expected} == expected
    again = await client.get(
        "/v1/groups/billing/order/fetch", params={"member": "m1", "generation": gen}
    )
    assert again.json()["events"] == []


async def test_a_remote_member_commits_the_partition_a_fetch_names(serve: Serve) -> None:
    """The same through the remote engine: it joins and commits what the fetch route gave."""
    server, store = await serve()
    base = f"http://127.0.0.1:{server.port}"
    for i in range(4):
        await store.append(f"order-{i}", [tidelog.NewEvent(type="Placed")])
    async with (
        tidelog.connect(base, token=ADMIN_KEY) as remote,
        httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c,
    ):
        m = await remote.join_group("billing", "order", "m1")
        page = await c.get(
            "/v1/groups/billing/order/fetch", params={"member": "m1", "generation": m.generation}
        )
        fetched = page.json()["events"]
        assert len(fetched) == 4
        for e in fetched:
            await remote.commit(
                "billing", "order", e["partition"], e["position"], member="m1",
                generation=m.generation,
            )  # fmt: skip
        expected: dict[int, int] = {}
        for e in fetched:
            expected[e["partition"]] = max(expected.get(e["partition"], 0), e["position"])
        points = await remote.checkpoints("billing", "order")
        assert {p: points.get(p) for p in expected} == expected


async def test_errors_use_the_words_of_the_http_api(
    api: tuple[httpx.AsyncClient, tidelog.Store], serve: Serve
) -> None:
    """`no_stream` as the API takes it, never `StreamState.NO_STREAM`; an invalid name's
    explanation in `reason`, not in `field` (#14 item 9). The remote engine raises them
    in Python's words again."""
    client, store = api
    await store.append("order-1", [tidelog.NewEvent(type="X")])
    one = {"events": [{"type": "X", "data": {}}]}
    r = await client.post(
        "/v1/streams/order-1/events", json={**one, "expected_version": "no_stream"}
    )
    assert r.status_code == 409
    body = r.json()
    assert "expected no_stream, actual 0" in body["message"]
    assert (body["expected"], body["actual"]) == ("no_stream", 0)
    r = await client.post("/v1/streams/order-1/events", json={**one, "expected_version": "latest"})
    assert r.status_code == 400
    assert '"any", "no_stream", "stream_exists" or an integer >= 0' in r.json()["message"]
    assert "NO_STREAM" not in r.text and "StreamState" not in r.text
    r = await client.post("/v1/streams/$bad name/events", json=one)
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == "invalid_stream_name" and "field" not in body
    assert body["reason"] and body["reason"] in body["message"]

    server, _ = await serve(store=store)
    async with tidelog.connect(f"http://127.0.0.1:{server.port}", token=ADMIN_KEY) as remote:
        with pytest.raises(tidelog.WrongExpectedVersion) as caught:
            await remote.append("order-1", [tidelog.NewEvent(type="X")], tidelog.NO_STREAM)
        assert "expected NO_STREAM, actual 0" in str(caught.value)
        assert caught.value.expected is tidelog.NO_STREAM


async def test_a_malformed_query_parameter_is_invalid_input_in_plain_words(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    """`?limit=abc` or `?from_position=-5` is a 400 `invalid_input` naming the parameter,
    not an `http_error` carrying Litestar's Python repr (`<ParamType.QUERY: 'query'>`)."""
    client, _ = api
    r = await client.get("/v1/streams/order-1/events", params={"limit": "abc"})
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == "invalid_input"
    assert body["message"].startswith("invalid query parameter 'limit': ")
    assert "ParamType" not in r.text and "Validation failed" not in r.text
    r = await client.get("/v1/log", params={"from_position": "-5"})
    assert r.status_code == 400
    assert r.json() == {
        "code": "invalid_input",
        "message": "invalid query parameter 'from_position': Expected `int` >= 0",
    }


async def test_a_remote_store_without_a_token_says_where_the_key_goes(serve: Serve) -> None:
    """`tidelog.AccessDenied: authentication required` left a newcomer guessing; without
    a token the message says where one goes, in Python's words. A wrong token is not
    told to give one, and the HTTP answer itself is unchanged (#14 walk-through)."""
    server, _ = await serve()
    base = f"http://127.0.0.1:{server.port}"
    with pytest.raises(tidelog.AccessDenied) as refused:
        await tidelog.connect(base)
    assert str(refused.value).startswith("authentication required (the server wants a key: ")
    assert "tidelog.connect(url, token=...) or token_file=..." in str(refused.value)
    assert refused.value.status == 401 and refused.value.no_token
    with pytest.raises(tidelog.AccessDenied) as wrong:
        await tidelog.connect(base, token="nope")
    assert str(wrong.value) == "invalid credentials" and not wrong.value.no_token
    async with httpx.AsyncClient(base_url=base) as client:
        r = await client.get("/v1/info")
    assert r.json() == {"code": "unauthorized", "message": "authentication required"}
