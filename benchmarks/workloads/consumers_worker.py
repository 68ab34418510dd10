"""The app the `group_throughput` benchmark runs in each worker process.

`tidelog worker consumers_worker:app` with BENCH_STORE, BENCH_GROUP, BENCH_LEASE
and BENCH_GO (a file: handlers wait until it exists, so that every member has
joined and learned its final assignment before the clock starts).
"""

from __future__ import annotations

import asyncio
import os

import tidelog
from tidelog.consumers import App, Context, RunnerOptions

GO = os.environ.get("BENCH_GO", "")
_started: list[bool] = []

app = App(
    "bench",
    os.environ.get("BENCH_STORE"),
    # the default options but the lease: the figure is what users get
    options=RunnerOptions(lease=float(os.environ.get("BENCH_LEASE", "3.0"))),
)


@app.handler("bench", group=os.environ.get("BENCH_GROUP", "bench"))
async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
    while not _started:
        if GO and os.path.exists(GO):  # noqa: ASYNC240 - polled only until the start
            _started.append(True)
        else:
            await asyncio.sleep(0.005)
