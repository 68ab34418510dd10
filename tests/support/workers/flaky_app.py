"""An app for the CLI tests: `order` events whose data is `bad` fail while FAIL_FILE exists."""

from __future__ import annotations

import os

import tidelog
from tidelog.consumers import App, Context, HandlerOptions, RunnerOptions

FAIL_FILE = os.environ.get("FAIL_FILE", "")

app = App(
    "flaky",
    os.environ.get("FLAKY_STORE"),
    options=RunnerOptions(lease=2.0, commit_interval=0.05, dlq_poll_interval=0.05),
)


@app.handler(
    "order",
    group="billing",
    options=HandlerOptions(max_attempts=2, backoff_initial=0.001, backoff_max=0.002),
)
async def bill(event: tidelog.RecordedEvent, ctx: Context) -> None:
    if event.data == b"bad" and FAIL_FILE and os.path.exists(FAIL_FILE):  # noqa: ASYNC240
        raise RuntimeError("card declined")
    ctx.append(
        "invoice-" + event.stream.split("-", 1)[1],
        [tidelog.NewEvent(type="Invoiced", data=str(event.version).encode())],
    )
