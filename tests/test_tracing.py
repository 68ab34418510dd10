"""Traces across the wire (#15): one trace from an application's span, through the
server's `publish` span, to a consumer's `process` span.

The scenario (`support/tracing.py`) runs in a fresh interpreter with the
OpenTelemetry SDK's in-memory exporter, because the global tracer provider can
be set only once per process; the spans it recorded are judged here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK (dev extra)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "support.tracing"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        env=env,
        cwd=TESTS,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _named(spans: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [s for s in spans if s["name"] == name]


def test_an_append_through_the_remote_engine_continues_the_callers_trace(
    recorded: dict[str, Any],
) -> None:
    spans = recorded["spans"]
    [placing] = _named(spans, "place order")
    assert placing["span_id"] == recorded["application_span"]
    publishes = [s for s in _named(spans, "publish order")]
    [publish] = [s for s in publishes if s["attributes"].get("tidelog.stream") == "order-1"]
    # the server's span is the application span's child: the remote client sent traceparent
    assert publish["parent"] == placing["span_id"]
    assert publish["trace_id"] == placing["trace_id"]
    assert publish["kind"] == "PRODUCER"
    assert publish["attributes"]["tidelog.position"] == recorded["append_position"]

    # the consumer's process span is in that trace too, the publish span its parent and link
    [handled] = recorded["handled"]
    assert handled["stream"] == "order-1"
    [process] = [s for s in _named(spans, "process order") if s["span_id"] == handled["span_id"]]
    assert process["kind"] == "CONSUMER"
    assert process["trace_id"] == placing["trace_id"]
    assert process["parent"] == publish["span_id"]
    assert process["links"] == [publish["span_id"]]
    assert process["attributes"]["messaging.consumer.group.name"] == "billing"
    assert process["attributes"]["tidelog.stream"] == "order-1"


def test_a_cloudevent_ingest_span_carries_stream_and_position(recorded: dict[str, Any]) -> None:
    spans = recorded["spans"]
    [forward] = _named(spans, "forward cloudevent")
    [ingest] = _named(spans, "publish payment")
    assert ingest["parent"] == forward["span_id"]
    assert ingest["trace_id"] == forward["trace_id"]
    assert ingest["attributes"]["tidelog.stream"] == "payment-7"
    assert ingest["attributes"]["tidelog.position"] == recorded["append_position"] + 1
    assert ingest["attributes"]["tidelog.version"] == 0
