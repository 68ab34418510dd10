"""Scheduled delivery at the edges: the CLI, the server's metrics, a validating store.

The engines' behaviour is the conformance suite's (`tidelog.testing.scheduling`,
run by each engine's test module). No test asserts on time: waits are bounded
and check eventual visibility only.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from typer.testing import CliRunner, Result

import tidelog
from support.server import Serve
from tidelog.cli import app
from tidelog.engines._kit.scheduling import FAILED_STREAM, Scheduler
from tidelog.schemas import SchemaRegistry, ValidatingStore

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
