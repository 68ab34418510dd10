"""The app of `tests/test_worker_sigkill.py` (`tidelog worker kill_app:app`).

A plain at-least-once handler (no `ctx.append`: its checkpoints are committed
lazily, every `commit_every` events or `commit_interval`) that records every
event it handled as a fixed-width line `<position>` in `$RECORD_DIR/<pid>.rec`,
written with one `os.write` on an `O_APPEND` descriptor: the kernel keeps it
when the process is killed with SIGKILL right after. It awaits 20 ms per event
(a handler calling a service) so that a run outlasts the killed worker's lease:
the survivors still have work when its partitions are handed over, and
handles nothing before the file `$GO` exists (the test creates it once every
member joined and heartbeated on its final assignment).
"""

from __future__ import annotations

import asyncio
import os

import tidelog
from tidelog.consumers import App, Context, RunnerOptions

RECORD_DIR = os.environ.get("RECORD_DIR", "")
GO = os.environ.get("GO", "")
_started: list[bool] = []
_fd = (
    os.open(os.path.join(RECORD_DIR, f"{os.getpid()}.rec"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    if RECORD_DIR
    else -1
)
WIDTH = 11
"""Bytes per record line: the test counts handled events by file size."""

app = App(
    "kill",
    os.environ.get("KILL_STORE"),
    # commits by count only (`commit_every`): the interval is longer than the run
    options=RunnerOptions(lease=1.5, commit_interval=10.0, shutdown_timeout=5.0),
)


@app.handler("job", group="kill")
async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
    while not _started:
        if not GO or os.path.exists(GO):  # noqa: ASYNC240 - polled only until the start
            _started.append(True)
        else:
            await asyncio.sleep(0.005)
    await asyncio.sleep(0.02)
    if _fd >= 0:
        os.write(_fd, f"{event.position:10d}\n".encode())
