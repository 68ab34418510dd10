"""Structured logs and W3C trace context, through a live server where it matters."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from uuid import uuid4

import httpx
import pytest

import tidelog
from support.server import ADMIN_KEY, Serve
from tidelog import telemetry

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
async def api(serve: Serve) -> AsyncIterator[tuple[httpx.AsyncClient, tidelog.Store]]:
    server, store = await serve()
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{server.port}",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ) as client:
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


@pytest.mark.skipif(not telemetry.HAVE_OTEL, reason="opentelemetry-api is not installed")
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"traceparent": TRACEPARENT}, id="traceparent"),
        pytest.param({"Traceparent": TRACEPARENT, "TraceState": "a=1,b=2"}, id="mixed-case"),
        pytest.param({"traceparent": "00-" + "0" * 32 + "-" + "1" * 16 + "-01"}, id="invalid"),
        pytest.param({"traceparent": "garbage", "tracestate": "a=1"}, id="garbage"),
        pytest.param({"host": "x"}, id="none-in-headers"),
        pytest.param(None, id="no-headers"),
    ],
)
@pytest.mark.parametrize("active", [False, True], ids=["no-active-span", "active-span"])
def test_fast_path_passes_the_same_context_as_the_no_op_span(
    headers: dict[str, str] | None, active: bool
) -> None:
    """Without a tracer provider `publish_span` skips the no-op span: same context out."""
    import opentelemetry.trace as otel

    provider = otel.get_tracer_provider()
    if not isinstance(provider, (otel.ProxyTracerProvider, otel.NoOpTracerProvider)):
        pytest.skip("a tracer provider is set in this process")
    outer = otel.NonRecordingSpan(
        otel.SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=otel.TraceFlags(1))
    )
    with otel.use_span(outer) if active else contextlib.nullcontext():
        with telemetry.publish_span(["order"], headers) as fast:
            fast_span = otel.get_current_span()
        # what the API's no-op span yields (the code path a provider takes)
        parent = None
        if not active and headers is not None:
            parent = telemetry._otel_propagate.extract({k.lower(): v for k, v in headers.items()})
        with telemetry._publish_span(["order"], parent, 1) as slow:
            assert not otel.get_current_span().is_recording()
    assert fast == slow
    assert not fast_span.is_recording()
    if active:
        assert fast["traceparent"] == f"00-{0xABC:032x}-{0xDEF:016x}-01"
    elif headers is not None and headers.get("traceparent") == TRACEPARENT:
        assert fast["traceparent"] == TRACEPARENT


def test_spans_are_recorded_once_a_tracer_provider_is_set() -> None:
    """The fast path must not outlive the no-op tracer: set a provider, get real spans.

    A fresh interpreter, because the global provider can be set only once per
    process. The provider is a small recording one written against the API
    (the SDK is not a dependency)."""
    if not telemetry.HAVE_OTEL:
        pytest.skip("opentelemetry-api is not installed")
    code = r"""
import contextlib, random
from datetime import UTC, datetime
from uuid import uuid4
import opentelemetry.trace as trace
import tidelog
from tidelog import telemetry

TRACE, PARENT = "1" * 32, "2" * 16
headers = {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "k=v"}
with telemetry.publish_span(["order"], headers) as tc:  # no provider yet: passed through
    assert tc == headers, tc
    assert not trace.get_current_span().is_recording()

finished = []

class Span(trace.Span):
    def __init__(self, name, context, kind, attributes, links, parent):
        self.name, self.kind, self.parent, self.ended = name, kind, parent, False
        self.attributes, self.links = dict(attributes or {}), list(links or ())
        self._context = context
    def get_span_context(self): return self._context
    def set_attributes(self, attributes): self.attributes.update(attributes)
    def set_attribute(self, key, value): self.attributes[key] = value
    def add_event(self, name, attributes=None, timestamp=None): pass
    def update_name(self, name): self.name = name
    def is_recording(self): return not self.ended
    def set_status(self, status, description=None): pass
    def record_exception(self, exception, attributes=None, timestamp=None, escaped=False): pass
    def end(self, end_time=None):
        self.ended = True
        finished.append(self)

class Tracer(trace.Tracer):
    def start_span(self, name, context=None, kind=trace.SpanKind.INTERNAL, attributes=None,
                   links=None, start_time=None, record_exception=True,
                   set_status_on_exception=True):
        parent = trace.get_current_span(context).get_span_context()
        parent = parent if parent.is_valid else None
        own = trace.SpanContext(
            parent.trace_id if parent else random.getrandbits(128), random.getrandbits(64),
            is_remote=False, trace_flags=trace.TraceFlags(1),
            trace_state=parent.trace_state if parent else None)
        return Span(name, own, kind, attributes, links, parent)
    @contextlib.contextmanager
    def start_as_current_span(self, name, context=None, kind=trace.SpanKind.INTERNAL,
                              attributes=None, links=None, start_time=None,
                              record_exception=True, set_status_on_exception=True,
                              end_on_exit=True):
        span = self.start_span(name, context, kind, attributes, links)
        with trace.use_span(span, end_on_exit=end_on_exit):
            yield span

class Provider(trace.TracerProvider):
    def get_tracer(self, *args, **kwargs): return Tracer()

trace.set_tracer_provider(Provider())

events = [tidelog.NewEvent(type="A"), tidelog.NewEvent(type="B")]
with telemetry.publish_span(["order"], headers, count=2) as tc:
    span = trace.get_current_span()
    assert span.is_recording() and span.name == "publish order", span
    telemetry.record_append("order-1", events, tidelog.AppendResult(1, 2))
[published] = finished
assert published is span and published.kind == trace.SpanKind.PRODUCER
assert (f"{published.parent.trace_id:032x}", f"{published.parent.span_id:016x}") == (TRACE, PARENT)
own = published.get_span_context()
assert tc == {"traceparent": f"00-{TRACE}-{own.span_id:016x}-01", "tracestate": "k=v"}, tc
assert published.attributes["messaging.system"] == "tidelog"
assert published.attributes["messaging.destination.name"] == "order"
assert published.attributes["messaging.batch.message_count"] == 2
assert published.attributes["tidelog.stream"] == "order-1"
assert published.attributes["tidelog.position"] == 2

event = tidelog.RecordedEvent(id=uuid4(), stream="order-1", version=0, position=1, type="A",
    data=b"", metadata=dict(tc), recorded_at=datetime.now(UTC))
with telemetry.process_span(event, "billing"):
    assert trace.get_current_span().is_recording()
processed = finished[1]
assert processed.name == "process order" and processed.kind == trace.SpanKind.CONSUMER
# no span of the consumer's own: the producer's context is the parent, and the link
assert (processed.parent.trace_id, processed.parent.span_id) == (own.trace_id, own.span_id)
assert [link.context.span_id for link in processed.links] == [own.span_id]
outer = trace.NonRecordingSpan(trace.SpanContext(7, 8, is_remote=False))
with trace.use_span(outer), telemetry.process_span(event):
    pass
assert finished[2].parent.span_id == 8  # under the application's own span: linked only
assert [link.context.span_id for link in finished[2].links] == [own.span_id]
other = tidelog.RecordedEvent(id=uuid4(), stream="order-2", version=0, position=2, type="A",
    data=b"", metadata={"traceparent": f"00-{'3' * 32}-{'4' * 16}-01"},
    recorded_at=event.recorded_at)
with telemetry.process_span([event, other], "billing"):
    pass
batch = finished[3]  # one span for a batch: linked to each event's context, no parent of theirs
assert batch.parent is None and batch.attributes["messaging.batch.message_count"] == 2
assert [link.context.span_id for link in batch.links] == [own.span_id, int("4" * 16, 16)]
assert processed.attributes["messaging.consumer.group.name"] == "billing"
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
