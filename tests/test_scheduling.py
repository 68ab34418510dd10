"""Scheduled delivery at the edges: the CLI, the server's metrics, a validating store.

The engines' behaviour is the conformance suite's (`tidelog.testing.scheduling`,
run by each engine's test module). No test asserts on time: waits are bounded
and check eventual visibility only.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from typer.testing import CliRunner, Result

import tidelog
from support.scheduling import check_old_claims_upgraded, schedule_pending_and_claimed
from support.server import ADMIN_KEY, Serve
from tidelog.cli import app
from tidelog.engines._kit.scheduling import FAILED_STREAM, Scheduler
from tidelog.schemas import SchemaRegistry, ValidatingStore
from tidelog.testing.conformance import collect

LATER = timedelta(hours=1)
WAIT = 30.0


def _cli(url: str, *args: str) -> Result:
    return CliRunner().invoke(app, ["--store", url, *args])


def _lines(result: Result) -> list[Any]:
    return [msgspec.json.decode(line) for line in result.stdout.splitlines() if line.strip()]


async def _schedule(url: str, *streams: str) -> list[tidelog.NewEvent]:
    events = []
    async with await tidelog.connect(url) as store:
        for stream in streams:
            event = tidelog.NewEvent(type="Reminder")
            await store.append(stream, [event], 0, deliver_after=LATER)
            events.append(event)
    return events


def test_cli_lists_and_cancels_scheduled_events(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    first, second = asyncio.run(_schedule(url, "order-1", "order-2"))
    listed = _cli(url, "--json", "scheduled", "list")
    assert listed.exit_code == 0, listed.output
    rows = _lines(listed)
    assert [r["id"] for r in rows] == [str(first.id), str(second.id)]
    assert rows[0]["stream"] == "order-1" and rows[0]["expected_version"] == 0
    only = _lines(_cli(url, "--json", "scheduled", "list", "--stream", "order-2"))
    assert [r["id"] for r in only] == [str(second.id)]
    people = _cli(url, "scheduled", "list")
    assert people.exit_code == 0 and "2 pending" in people.stdout

    cancelled = _cli(url, "--json", "scheduled", "cancel", str(first.id))
    assert cancelled.exit_code == 0, cancelled.output
    assert _lines(cancelled) == [{"id": str(first.id), "cancelled": True}]
    again = _cli(url, "--json", "scheduled", "cancel", str(first.id))
    assert again.exit_code == 1 and _lines(again) == [{"id": str(first.id), "cancelled": False}]
    assert [r["id"] for r in _lines(_cli(url, "--json", "scheduled", "list"))] == [str(second.id)]
    bad = _cli(url, "scheduled", "cancel", "not-a-uuid")
    assert bad.exit_code == 1 and bad.stderr.startswith("error: ")


def test_cli_on_a_missing_file_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/missing.db"
    result = _cli(url, "scheduled", "list")
    assert result.exit_code == 1 and "no store" in result.stderr
    assert not (tmp_path / "missing.db").exists()


async def _metric(client: httpx.AsyncClient, needle: str) -> None:
    deadline = time.monotonic() + WAIT
    while needle not in (await client.get("/metrics")).text:
        assert time.monotonic() < deadline, f"{needle!r} never appeared on /metrics"
        await asyncio.sleep(0.1)


async def test_server_delivers_and_reports_pending_and_lateness(serve: Serve) -> None:
    server, store = await serve()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        await store.append("order-1", [tidelog.NewEvent(type="Later")], deliver_after=LATER)
        await _metric(client, "tidelog_scheduled_pending_events 1.0")
        due = tidelog.NewEvent(type="Now")
        await store.append("order-2", [due], deliver_after=timedelta(0))
        await _metric(client, "tidelog_scheduled_lateness_seconds_count 1.0")
    assert [e.id async for e in store.read_stream("order-2")] == [due.id]


async def test_a_validating_store_refuses_a_bad_scheduled_event_when_scheduled() -> None:
    store = await tidelog.connect("memory://")
    schemas = SchemaRegistry(store)
    await schemas.register(
        "Paid", {"type": "object", "properties": {"amount": {"type": "integer"}}}
    )
    checked = ValidatingStore(store, schemas)
    try:
        bad = tidelog.NewEvent(type="Paid", data=b'{"amount": "ten"}')
        with pytest.raises(tidelog.SchemaViolation):
            await checked.append("order-1", [bad], deliver_after=LATER)
        assert await checked.count_scheduled() == 0
        good = tidelog.NewEvent(type="Paid", data=b'{"amount": 10}')
        await checked.append("order-1", [good], deliver_after=LATER)
        # Stored unchecked below the wrapper: delivery through the wrapper parks it.
        worse = tidelog.NewEvent(type="Paid", data=b'{"amount": []}')
        await store.append("order-2", [worse], deliver_after=LATER)
        await Scheduler(checked).run_once(now=time.time() + 7200)
        assert [e.id async for e in checked.read_stream("order-1")] == [good.id]
        [parked] = [e async for e in checked.read_stream(FAILED_STREAM)]
        assert parked.id == worse.id
        assert parked.metadata["scheduled_error"] == "SchemaViolation"
    finally:
        await checked.close()


# --------------------------------------------------------------------------- over HTTP


async def test_the_remote_engine_schedules_lists_and_cancels_through_the_server(
    serve: Serve,
) -> None:
    server, backing = await serve()
    url = f"http://127.0.0.1:{server.port}"
    async with await tidelog.connect(url, token=ADMIN_KEY) as remote:
        assert not remote.supports_scheduling  # the server's scheduler delivers
        await remote.append("order-1", [tidelog.NewEvent(type="Placed")])
        later = tidelog.NewEvent(type="Remind", data=b'{"n": 1}', metadata={"k": "v"})
        binary = tidelog.NewEvent(type="Blob", data=b"\x00\xff")
        result = await remote.append("order-1", [later, binary], 0, deliver_after=LATER)
        assert isinstance(result, tidelog.ScheduledResult)
        assert (result.version, result.ids) == (-1, (later.id, binary.id))
        assert [e.type async for e in remote.read_stream("order-1")] == ["Placed"]
        listed = await remote.scheduled()
        assert listed == await backing.scheduled()
        assert [(e.id, e.data, e.expected_version) for e in listed] == [
            (later.id, b'{"n": 1}', 0),
            (binary.id, b"\x00\xff", 0),
        ]
        assert await remote.count_scheduled() == 2
        assert await remote.cancel_scheduled(binary.id) is True
        assert await remote.cancel_scheduled(binary.id) is False
        assert [e.id for e in await remote.scheduled(stream="order-1")] == [later.id]

        now = tidelog.NewEvent(type="Now")
        await remote.append("order-2", [now], deliver_at=datetime.now(UTC))
        deadline = time.monotonic() + WAIT
        while not [e async for e in remote.read_stream("order-2")]:
            assert time.monotonic() < deadline, "the server never delivered"
            await asyncio.sleep(0.05)
        assert [e.id async for e in remote.read_stream("order-2")] == [now.id]


async def test_http_refuses_bad_schedules_and_changes_nothing(serve: Serve) -> None:
    server, backing = await serve(
        keys={"writer-key": "writer"}, grants=("writer=write:category:order",)
    )
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    event = {"type": "T", "data": {}}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        for body in (
            {"events": [event], "deliver_at": "2030-01-01T00:00:00"},  # no offset
            {"events": [event], "deliver_after": -1},
            {"events": [event], "deliver_after": 1e300},
            {"events": [event], "deliver_after": "soon"},
            {"events": [event], "deliver_after": 5, "deliver_at": "2030-01-01T00:00:00Z"},
        ):
            response = await client.post("/v1/streams/order-1/events", json=body, headers=auth)
            assert response.status_code in (400, 422), (body, response.text)
        many = {"streams": {"order-1": {"events": [event], "deliver_after": 5}}}
        response = await client.post("/v1/append-many", json=many, headers=auth)
        assert response.status_code == 400, response.text
        assert (await client.delete("/v1/scheduled/nope", headers=auth)).status_code == 400
        writer = {"Authorization": "Bearer writer-key"}
        ok = await client.post(
            "/v1/streams/order-1/events",
            json={"events": [event], "deliver_after": 3600},
            headers=writer,
        )
        assert ok.status_code == 200 and ok.json()["version"] == -1, ok.text
        [scheduled_id] = ok.json()["ids"]
        # cancelling and listing everything need the whole log
        assert (
            await client.delete(f"/v1/scheduled/{scheduled_id}", headers=writer)
        ).status_code == 403
        assert (await client.get("/v1/scheduled", headers=writer)).status_code == 403
    assert await backing.count_scheduled() == 1
    assert [e async for e in backing.read_all()] == []


async def test_cloudevents_deliverat_schedules_the_event(serve: Serve) -> None:
    server, backing = await serve()
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def ce(i: int, stream: str, deliverat: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "specversion": "1.0",
            "id": f"e{i}",
            "source": "/test",
            "type": "Reminder",
            "subject": stream,
            "data": {"i": i},
        }
        if deliverat is not None:
            body["deliverat"] = deliverat
        return body

    later = (datetime.now(UTC) + LATER).isoformat()
    structured = {"Content-Type": "application/cloudevents+json", **auth}
    batch = {"Content-Type": "application/cloudevents-batch+json", **auth}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        ok = await client.post(
            "/v1/cloudevents",
            content=msgspec.json.encode(ce(1, "order-1", later)),
            headers=structured,
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["results"]["order-1"]["version"] == -1
        [pending] = await backing.scheduled()
        assert str(pending.id) == ok.json()["ids"][0]
        assert pending.metadata["deliverat"] == later
        for body, headers in (
            (ce(2, "order-2", "2030-01-01T00:00:00"), structured),  # no offset
            (ce(3, "order-3", "tomorrow"), structured),
            ([ce(4, "order-4", later), ce(5, "order-5", later)], batch),  # two streams
            ([ce(6, "order-6", later), ce(7, "order-6", None)], batch),  # now and later
        ):
            bad = await client.post(
                "/v1/cloudevents", content=msgspec.json.encode(body), headers=headers
            )
            assert bad.status_code == 400, (body, bad.text)
        binary = await client.post(
            "/v1/cloudevents",
            content=b'{"i": 8}',
            headers={
                "Content-Type": "application/json",
                "ce-specversion": "1.0",
                "ce-id": "e8",
                "ce-source": "/test",
                "ce-type": "Reminder",
                "ce-subject": "order-8",
                "ce-deliverat": datetime.now(UTC).isoformat(),
                **auth,
            },
        )
        assert binary.status_code == 200, binary.text
    deadline = time.monotonic() + WAIT
    while not [e async for e in backing.read_stream("order-8")]:
        assert time.monotonic() < deadline, "the due CloudEvent was never delivered"
        await asyncio.sleep(0.05)
    # Delivered, then forgotten (by id, idempotently): the two steps are not one
    # on every engine, so the count may trail the read by a moment.
    while await backing.count_scheduled() != 1:
        assert time.monotonic() < deadline, "the delivered CloudEvent stayed pending"
        await asyncio.sleep(0.05)
    assert [e.stream async for e in backing.read_all()] == ["order-8"]


# --------------------------------------------------------------------------- producers and handlers


async def test_producer_send_schedules_at_once(tmp_path: Path) -> None:
    async with (
        await tidelog.connect(f"sqlite:///{tmp_path}/p.db") as store,
        tidelog.Producer(store) as producer,
    ):
        now = tidelog.NewEvent(type="Now")
        later = tidelog.NewEvent(type="Later")
        first = await producer.send("order-1", now)
        result = await (await producer.send("order-1", later, 0, deliver_after=LATER))
        assert isinstance(result, tidelog.ScheduledResult) and result.ids == (later.id,)
        assert (await first).version == 0
        with pytest.raises(tidelog.InvalidEvent):
            await producer.send("order-1", tidelog.NewEvent(type="X"), deliver_after=-LATER)
        await producer.flush()
        assert [e.id async for e in store.read_stream("order-1")] == [now.id]
        assert [e.id for e in await store.scheduled()] == [later.id]
        await Scheduler(store).run_once(now=time.time() + 7200)
        assert [e.id async for e in store.read_stream("order-1")] == [now.id, later.id]


async def test_a_handler_schedules_a_retry_of_its_business_step(tmp_path: Path) -> None:
    """`ctx.append(..., deliver_after=...)`: scheduled when the handler has returned (a
    failed attempt schedules nothing), once per handled event, beside its other effects."""
    from tidelog.consumers import App, Context, HandlerOptions, RunnerOptions

    store = await tidelog.connect(f"sqlite:///{tmp_path}/h.db")
    app = App(
        "t", store, options=RunnerOptions(lease=3.0, commit_interval=0.05, dlq_poll_interval=0.05)
    )
    attempts: dict[str, int] = {}

    @app.handler(
        "order",
        group="payments",
        options=HandlerOptions(max_attempts=3, backoff_initial=0.001, backoff_max=0.005),
    )
    async def charge(event: tidelog.RecordedEvent, ctx: Context) -> None:
        attempts[event.stream] = attempts.get(event.stream, 0) + 1
        ctx.append(
            "payment-" + event.stream.split("-", 1)[1],
            [tidelog.NewEvent(type="RetryCharge")],
            deliver_after=LATER,
        )
        ctx.append("audit-" + event.stream.split("-", 1)[1], [tidelog.NewEvent(type="Tried")])
        if attempts[event.stream] == 1:
            raise RuntimeError("the card issuer is down")  # retried; nothing scheduled

    for i in range(3):
        await store.append(f"order-{i}", [tidelog.NewEvent(type="Placed")])
    task = asyncio.create_task(app.run())
    try:
        deadline = time.monotonic() + WAIT
        while len([s async for s in store.list_streams("audit")]) < 3:
            assert time.monotonic() < deadline, "the handler's effects never appeared"
            await asyncio.sleep(0.05)
    finally:
        app.request_stop()
        await task
    try:
        assert all(n == 2 for n in attempts.values())
        pending = await store.scheduled()
        assert sorted(e.stream for e in pending) == ["payment-0", "payment-1", "payment-2"]
        assert all(e.type == "RetryCharge" for e in pending)
        assert all(e.metadata["causationid"] for e in pending)
        await Scheduler(store).run_once(now=time.time() + 7200)
        for i in range(3):
            assert [e.type async for e in store.read_stream(f"payment-{i}")] == ["RetryCharge"]
    finally:
        await store.close()


DOCS_PAGE = (Path(__file__).resolve().parent.parent / "docs" / "scheduling.md").read_text()


async def test_the_example_of_docs_scheduling_runs(tmp_path: Path) -> None:
    page = DOCS_PAGE
    block = page.split("```python\n", 1)[1].split("```", 1)[0]
    body = block.replace("sqlite:///shop.db", f"sqlite:///{tmp_path}/shop.db")
    source = "async def example():\n" + "".join(f"    {line}\n" for line in body.splitlines())
    source += "    await store.close()\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, "docs/scheduling.md", "exec"), namespace)
    await namespace["example"]()


async def test_the_dashboard_counts_pending_scheduled_events(serve: Serve) -> None:
    server, store = await serve(
        keys={"reader-key": "reader"}, grants=("reader=read:category:order",)
    )
    await store.append("order-1", [tidelog.NewEvent(type="Later")], deliver_after=LATER)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        admin = await client.get("/v1/stats", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert admin.json()["scheduled"] == 1
        reader = await client.get("/v1/stats", headers={"Authorization": "Bearer reader-key"})
        assert reader.json()["scheduled"] is None  # a count across streams needs $all
        page = (await client.get("/")).text
        assert 'id="scheduled"' in page


def _to_earlier_layout(conn: sqlite3.Connection, claims: bool) -> None:
    """Turn a file's pending events back into an earlier layout: one table with four
    indexes, and (`claims`, the second layout) an empty `scheduled_claims` table."""
    conn.execute("DROP TABLE scheduled_batches")
    conn.execute("DROP INDEX scheduled_batch_seq")
    conn.execute("CREATE INDEX scheduled_ready ON scheduled (ready_at)")
    conn.execute("CREATE INDEX scheduled_batch ON scheduled (batch)")
    conn.execute("CREATE INDEX scheduled_due ON scheduled (due_at, batch, seq)")
    if claims:
        conn.execute(
            "CREATE TABLE scheduled_claims (batch BLOB PRIMARY KEY, until INTEGER NOT NULL)"
            " WITHOUT ROWID"
        )
        conn.execute("CREATE INDEX scheduled_claims_until ON scheduled_claims (until)")


@pytest.mark.parametrize("layout", ["first", "claim rows"])
async def test_a_sqlite_file_from_before_batch_rows_keeps_its_pending_and_claimed_events(
    tmp_path: Path, layout: str
) -> None:
    """A file scheduled by the first version (no `scheduled_claims`; a claim moved the
    rows' ready time past their due time) or by the second (a claim row per batch in
    `scheduled_claims`) loses nothing and delivers nothing twice once converted."""
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    async with await tidelog.connect(url) as store:
        pending, claimed = await schedule_pending_and_claimed(store)
    hour_us = 3_600_000_000
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        _to_earlier_layout(conn, claims=layout == "claim rows")
        if layout == "first":
            conn.execute(
                "UPDATE scheduled SET ready_at = due_at + ? WHERE id = ?",
                (2 * hour_us, claimed.id.bytes),
            )
        else:
            conn.execute(
                "INSERT INTO scheduled_claims (batch, until)"
                " SELECT batch, due_at + ? FROM scheduled WHERE id = ?",
                (2 * hour_us, claimed.id.bytes),
            )
    async with await tidelog.connect(url) as store:
        # Read before any write converts the file: the old table alone answers.
        assert [e.id for e in await store.scheduled()] == [pending.id, claimed.id]
    await check_old_claims_upgraded(url, pending, claimed)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert {"scheduled", "scheduled_batches", "scheduled_batch_seq"} <= names
        # What the converted layout no longer uses is gone (four indexes per event were
        # the writer's largest cost at 10,000 events/s due).
        assert not names & {"scheduled_claims", "scheduled_ready", "scheduled_due"}
        assert conn.execute("SELECT count(*) FROM scheduled_batches").fetchone()[0] == 0


async def test_sqlite_claims_read_only_ready_batches_and_lists_in_due_order(
    tmp_path: Path,
) -> None:
    """A claim takes the earliest ready batches whole, and the list stays in due order
    (then batch, then position) across batches scheduled out of order."""
    url = f"sqlite:///{tmp_path / 'order.db'}"
    base = datetime.now(UTC) + LATER
    async with await tidelog.connect(url) as store:
        late = [tidelog.NewEvent(type=f"L{i}") for i in range(3)]
        early = [tidelog.NewEvent(type=f"E{i}") for i in range(2)]
        await store.append("order-l", late, deliver_at=base + timedelta(seconds=2))
        await store.append("order-e", early, deliver_at=base)
        listed = await store.scheduled()
        assert [e.type for e in listed] == ["E0", "E1", "L0", "L1", "L2"]
        assert [e.type for e in await store.scheduled("order-l", limit=2)] == ["L0", "L1"]
        # A limit of one row still takes the whole first batch, and only it.
        now = base.timestamp() + 3
        rows = await store._take_due(now, 1, 60.0)
        assert sorted(r.type for r in rows) == ["E0", "E1"]
        assert not await store.cancel_scheduled(early[0].id)  # claimed
        assert await store.cancel_scheduled(late[1].id)  # not claimed
        rows = await store._take_due(now, 100, 60.0)
        assert sorted(r.type for r in rows) == ["L0", "L2"]
        assert await store._take_due(now, 100, 60.0) == []  # everything is claimed
        assert await store._next_due() == pytest.approx(now + 60.0)  # the leases' end
        await store._forget_scheduled([r.id for r in rows])
        assert await store.count_scheduled() == 2
        await store._forget_scheduled([early[0].id, early[1].id])
        assert await store.count_scheduled() == 0
        assert await store._next_due() is None


@pytest.mark.parametrize("engine", ["memory", "sqlite"])
async def test_a_large_due_round_is_delivered_in_parts_in_each_streams_order(
    tmp_path: Path, engine: str
) -> None:
    """Thousands of events due at once go out as several append_many (of different
    streams each); every stream still gets its batches whole and in scheduled order."""
    url = "memory://" if engine == "memory" else f"sqlite:///{tmp_path / 'big.db'}"
    due = datetime.now(UTC) + LATER
    async with await tidelog.connect(url) as store:
        expected: dict[str, list[str]] = {}
        for round_ in range(2):
            for s in range(3):
                stream = f"big-{s}"
                events = [tidelog.NewEvent(type=f"R{round_}-{i}") for i in range(1_000)]
                # Its own due time per round: same-time batches go in id order.
                later = due + timedelta(milliseconds=round_)
                await store.append(stream, events, deliver_at=later)
                expected.setdefault(stream, []).extend(e.type for e in events)
        scheduler = Scheduler(store, batch=10_000)
        assert await scheduler.run_once(now=due.timestamp() + 1) == 6_000
        assert scheduler.delivered == 6_000
        for stream, types in expected.items():
            assert [e.type for e in await collect(store.read_stream(stream))] == types
        assert await store.count_scheduled() == 0
