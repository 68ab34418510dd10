"""The app the worker tests run in separate processes (`tidelog worker chaos_app:app`).

Each `job` event is handled by writing one effect event to `effect-<entity>`
through `ctx.append`, with the expected version equal to the source event's
version - 1: an effect can only be written after the previous event of the same
stream was handled, so the effect streams prove both exactly-once effects and
per-stream order. Events whose data is `poison` always fail. Every successful
handling is also logged to `$VIEW_DIR/<pid>.view` (claim, stream, version), the
handler's own view, checked for order by the test.
"""

from __future__ import annotations

import os

import tidelog
from tidelog.consumers import App, Context, HandlerOptions, RunnerOptions

VIEW_DIR = os.environ.get("VIEW_DIR", "")
_view = open(os.path.join(VIEW_DIR, f"{os.getpid()}.view"), "a", buffering=1) if VIEW_DIR else None  # noqa: SIM115

app = App(
    "chaos",
    os.environ.get("CHAOS_STORE"),
    options=RunnerOptions(
        lease=float(os.environ.get("CHAOS_LEASE", "1.5")),
        commit_interval=0.1,
        concurrency=64,
        max_in_flight=2000,
        shutdown_timeout=5.0,
    ),
)


@app.handler(
    "job",
    group="chaos",
    # No circuit breaker: the producer writes the 500 poison events of version 2
    # back to back, which the breaker reads as an outage (distinct streams failing
    # in a row) and would pause on; this soak is about kills and pauses, the
    # breaker has tests of its own (test_consumers_breaker.py).
    options=HandlerOptions(
        max_attempts=3, backoff_initial=0.01, backoff_max=0.05, breaker_threshold=None
    ),
)
async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
    if event.data == b"poison":
        raise ValueError(f"poison event {event.stream}@{event.version}")
    entity = event.stream.split("-", 1)[1]
    ctx.append(
        f"effect-{entity}",
        [tidelog.NewEvent(type="Done", data=str(event.version).encode())],
        expected_version=event.version - 1 if event.version else tidelog.NO_STREAM,
    )
    if _view is not None:
        _view.write(f"{ctx.claim} {ctx.partition} {event.stream} {event.version}\n")
