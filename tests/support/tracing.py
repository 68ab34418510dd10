"""One trace across the wire, recorded by the OpenTelemetry SDK: `python -m support.tracing`.

The global tracer provider can be set once per process, and a test run shares
one process: so the scenario runs in a fresh interpreter, with the SDK's
`TracerProvider` and `InMemorySpanExporter`, and prints the finished spans as
JSON for `tests/test_tracing.py` to judge. Everything in it is real: a server
on a loopback port in this process (its spans reach the same exporter), a
remote store (`tidelog.connect("http://...")`) appending inside an
application span, a CloudEvent posted with the trace context the global
propagator writes, and a consumer group member (an `App` on a second remote
store) handling the event.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tidelog
from support.server import ADMIN_KEY, config, running
from tidelog.consumers import App, Context, RunnerOptions


def _span(s: ReadableSpan) -> dict[str, Any]:
    context = s.get_span_context()
    assert context is not None
    return {
        "name": s.name,
        "kind": s.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent": f"{s.parent.span_id:016x}" if s.parent is not None else None,
        "links": [f"{link.context.span_id:016x}" for link in s.links],
        "attributes": dict(s.attributes or {}),
    }


async def scenario() -> dict[str, Any]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    app_tracer = trace.get_tracer("the-application")

    async with running(config()) as (server, _):
        url = f"http://127.0.0.1:{server.port}"
        handled: list[dict[str, Any]] = []
        done = asyncio.Event()
        async with (
            await tidelog.connect(url, token=ADMIN_KEY) as producer,
            await tidelog.connect(url, token=ADMIN_KEY) as consumer_store,
            httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            ) as client,
        ):
            with app_tracer.start_as_current_span("place order") as placing:
                result = await producer.append("order-1", [tidelog.NewEvent(type="OrderPlaced")])
            with app_tracer.start_as_current_span("forward cloudevent"):
                headers = {"Content-Type": "application/cloudevents+json"}
                propagate.inject(headers)
                r = await client.post(
                    "/v1/cloudevents",
                    content=json.dumps(
                        {
                            "specversion": "1.0",
                            "id": "ce-1",
                            "source": "/shop",
                            "type": "PaymentTaken",
                            "subject": "payment-7",
                        }
                    ),
                    headers=headers,
                )
                assert r.status_code == 200, r.text

            app = App("traced", consumer_store, options=RunnerOptions(lease=3.0))

            @app.handler("order", group="billing")
            async def bill(event: tidelog.RecordedEvent, ctx: Context) -> None:
                current = trace.get_current_span().get_span_context()
                handled.append({"stream": event.stream, "span_id": f"{current.span_id:016x}"})
                done.set()

            run = asyncio.create_task(app.run())
            try:
                await asyncio.wait_for(done.wait(), 60)
            finally:
                app.request_stop()
                await asyncio.wait_for(run, 60)
    provider.shutdown()
    placing_id = f"{placing.get_span_context().span_id:016x}"
    return {
        "spans": [_span(s) for s in exporter.get_finished_spans()],
        "application_span": placing_id,
        "handled": handled,
        "append_position": result.position,
    }


if __name__ == "__main__":
    json.dump(asyncio.run(scenario()), sys.stdout)
