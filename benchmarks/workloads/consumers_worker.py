"""The app the `group_throughput` and `group_scaling` benchmarks run in each worker process.

`tidelog worker consumers_worker:app` with BENCH_STORE, BENCH_GROUP, BENCH_LEASE
and BENCH_GO (a file: handlers wait until it exists, so that every member has
joined and learned its final assignment before the clock starts). Optional:

- BENCH_CATEGORY: the category handled (default `bench`);
- BENCH_HANDLER: `trivial` (default) or `io`, which awaits 5 ms per event as
  a handler that calls a service does;
- BENCH_RECORD: a file (`{pid}` replaced by the process id) this process
  writes on exit: `count first last cpu`, the events it handled, the
  wall-clock times of its first and last one, and the CPU seconds the process
  used in between (`time.process_time`, read every 64 events). These are the handlers' own records
  the throughput is computed from: checkpoints lag the handling by up to
  `commit_interval`.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import time

import tidelog
from tidelog.consumers import App, Context, RunnerOptions

GO = os.environ.get("BENCH_GO", "")
IO = os.environ.get("BENCH_HANDLER", "trivial") == "io"
RECORD = os.environ.get("BENCH_RECORD", "").replace("{pid}", str(os.getpid()))
_started: list[bool] = []
_seen = [0, 0.0, 0.0, 0.0, 0.0]
"""count, first, last (time.time(): compared across processes), CPU at the first and the last."""

app = App(
    "bench",
    os.environ.get("BENCH_STORE"),
    # the default options but the lease: the figure is what users get
    options=RunnerOptions(lease=float(os.environ.get("BENCH_LEASE", "3.0"))),
)


@app.handler(
    os.environ.get("BENCH_CATEGORY", "bench"), group=os.environ.get("BENCH_GROUP", "bench")
)
async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
    while not _started:
        if GO and os.path.exists(GO):  # noqa: ASYNC240 - polled only until the start
            _started.append(True)
        else:
            await asyncio.sleep(0.005)
    if IO:
        await asyncio.sleep(0.005)
    now = time.time()
    if not _seen[0]:
        _seen[1] = now
        _seen[3] = time.process_time()
    _seen[0] += 1
    _seen[2] = now
    if not _seen[0] % 64:  # a system call: read it now and then, not per event
        _seen[4] = time.process_time()


@atexit.register
def _write_record() -> None:
    if RECORD:
        with open(RECORD, "w") as f:
            f.write(f"{_seen[0]} {_seen[1]!r} {_seen[2]!r} {_seen[4] - _seen[3]!r}\n")
