"""Structured logs and W3C trace context, through a live server where it matters."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from uuid import uuid4

import httpx
import pytest

import tidelog
from _server_util import ADMIN_KEY, config, running
from tidelog import telemetry

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
async def api() -> AsyncIterator[tuple[httpx.AsyncClient, tidelog.Store]]:
    async with (
        running(config()) as (server, store),
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        ) as client,
    ):
        yield client, store


async def _first_sse_event(client: httpx.AsyncClient) -> dict[str, object]:
    async with client.stream("GET", "/v1/subscribe") as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                event: dict[str, object] = json.loads(line[5:])
                return event
    raise AssertionError("the subscription ended without an event")


@pytest.mark.skipif(not telemetry.HAVE_OTEL, reason="opentelemetry-api is not installed")
async def test_traceparent_header_is_stored_and_reaches_subscribers(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    client, store = api
    r = await client.post(
        "/v1/streams/order-1/events",
        json={"events": [{"type": "OrderPlaced", "data": {"n": 1}}]},
        headers={"traceparent": TRACEPARENT, "tracestate": "vendor=abc"},
    )
    assert r.status_code == 200, r.text
    [stored] = [e async for e in store.read_stream("order-1")]
    # without an SDK the no-op tracer passes the caller's context through unchanged
    assert stored.metadata == {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    received = await asyncio.wait_for(_first_sse_event(client), 10)
    assert received["metadata"] == {"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}


@pytest.mark.skipif(not telemetry.HAVE_OTEL, reason="opentelemetry-api is not installed")
async def test_a_producers_own_trace_context_wins_and_append_many_is_traced(
    api: tuple[httpx.AsyncClient, tidelog.Store],
) -> None:
    client, store = api
    own = "00-11111111111111111111111111111111-2222222222222222-01"
    r = await client.post(
        "/v1/streams/order-1/events",
        json={"events": [{"type": "A", "metadata": {"traceparent": own, "k": 1}}]},
        headers={"traceparent": TRACEPARENT},
    )
    assert r.status_code == 200
    r = await client.post(
        "/v1/append-many",
        json={
            "streams": {
                "cart-1": {"events": [{"type": "B"}]},
                "order-2": {"events": [{"type": "C"}]},
            }
        },
        headers={"traceparent": TRACEPARENT},
    )
    assert r.status_code == 200, r.text
    metadata = {e.stream: e.metadata async for e in store.read_all()}
    assert metadata["order-1"] == {"traceparent": own, "k": 1}
    assert metadata["cart-1"] == metadata["order-2"] == {"traceparent": TRACEPARENT}


async def test_no_trace_context_adds_nothing(api: tuple[httpx.AsyncClient, tidelog.Store]) -> None:
    client, store = api
    r = await client.post(
        "/v1/streams/order-1/events", json={"events": [{"type": "A", "metadata": {"k": 1}}]}
    )
    assert r.status_code == 200
    assert [e.metadata async for e in store.read_stream("order-1")] == [{"k": 1}]


async def test_append_is_logged_with_correlation_and_causation_ids(
    api: tuple[httpx.AsyncClient, tidelog.Store], caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = api
    with caplog.at_level(logging.DEBUG, logger="tidelog.telemetry"):
        r = await client.post(
            "/v1/streams/order-7/events",
            json={
                "events": [
                    {"type": "A", "metadata": {"correlationid": "c-1", "causationid": "e-0"}}
                ]
            },
        )
        assert r.status_code == 200
    [record] = [r for r in caplog.records if r.name == "tidelog.telemetry"]
    fields = record.__dict__
    assert (fields["stream"], fields["category"], fields["position"]) == ("order-7", "order", 1)
    assert (fields["correlation_id"], fields["causation_id"]) == ("c-1", "e-0")


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging changes the root logger: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def _event(metadata: dict[str, object]) -> tidelog.RecordedEvent:
    return tidelog.RecordedEvent(
        id=uuid4(),
        stream="order-42",
        version=3,
        position=17,
        type="OrderPaid",
        data=b"{}",
        metadata=metadata,
        recorded_at=datetime.now(UTC),
    )


def test_json_log_lines_parse_and_carry_event_fields(root_logging: None) -> None:
    out = io.StringIO()
    telemetry.configure_logging("auto", stream=out)  # not a terminal: JSON
    telemetry.configure_logging("json", stream=out)  # again: replaces, does not duplicate
    event = _event({"correlationid": "corr-9", "causationid": "cause-8"})
    logger = logging.getLogger("tidelog.consumers.test")
    logger.info("handled %s", "it", extra=telemetry.event_fields(event))
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra={"group": "billing", "partition": 3, "noise": "x"})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["message"] == "handled it" and first["level"] == "info"
    assert first["logger"] == "tidelog.consumers.test"
    assert first["ts"].endswith("Z")
    assert first["stream"] == "order-42" and first["position"] == 17
    assert first["event_id"] == str(event.id) and first["event_type"] == "OrderPaid"
    assert (first["correlation_id"], first["causation_id"]) == ("corr-9", "cause-8")
    assert second["exc_type"] == "ValueError" and "boom" in second["exc"]
    assert second["group"] == "billing" and second["partition"] == 3
    assert "noise" not in second


def test_text_log_lines_are_one_readable_line(root_logging: None) -> None:
    out = io.StringIO()
    telemetry.configure_logging("text", stream=out)
    logging.getLogger("tidelog.x").warning("slow", extra=telemetry.event_fields(_event({})))
    [line] = out.getvalue().splitlines()
    assert "WARNING" in line and "tidelog.x: slow" in line and "stream=order-42" in line
    with pytest.raises(ValueError):
        telemetry.configure_logging("yaml")


def test_everything_is_a_no_op_without_opentelemetry() -> None:
    """Block the package's import in a fresh interpreter: the functions still work."""
    code = """
import sys
sys.modules["opentelemetry"] = None
from datetime import UTC, datetime
from uuid import uuid4
import tidelog
from tidelog import telemetry
assert not telemetry.HAVE_OTEL
events = [tidelog.NewEvent(type="A")]
parent = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
with telemetry.publish_span(["order"], parent) as tc:
    assert tc == {}
    assert telemetry.with_trace_context(events, tc) == events
    telemetry.record_append("order-1", events, tidelog.AppendResult(0, 1))
e = tidelog.RecordedEvent(id=uuid4(), stream="order-1", version=0, position=1, type="A",
    data=b"", metadata={"traceparent": "x"}, recorded_at=datetime.now(UTC))
with telemetry.process_span(e, "billing"):
    pass
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
