"""A reader of the `scale_curve` store, run as a child process so its RSS is its own.

    python scale_child.py subscribe STORE_URL COUNT
    python scale_child.py group STORE_URL COUNT CATEGORY GROUP

`subscribe`: `store.subscribe(from_position=0)` until COUNT events arrived.
`group`: one worker of a new consumer group GROUP (`tidelog.consumers.App`,
default options) handling CATEGORY from its start until COUNT events were
handled, then stopping (which commits the checkpoints; the parent checks them).
Prints one JSON line: events, seconds, and `rss_peak_mb` (the process's
VmHWM: the most it ever held, including the interpreter and imports),
beside `rss_start_mb` (after the imports and the store's open).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

import tidelog
from tidelog.consumers import App, Context


def _peak_mb() -> float:
    """The peak RSS of this process's memory (VmHWM).

    Not `ru_maxrss`: Linux carries it across `exec`, so a child forked from a
    big parent reports the parent's size (every child read 105 MB, the parent's).
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _rss_mb() -> float:
    """The current resident set (not the peak), from /proc."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return round(pages * resource.getpagesize() / 2**20, 1)


async def subscribe(url: str, count: int) -> dict[str, float]:
    async with tidelog.connect(url) as store:
        start_rss = _rss_mb()
        seen = 0
        t0 = time.perf_counter()
        async for _ in store.subscribe(from_position=0):
            seen += 1
            if seen >= count:
                break
        seconds = time.perf_counter() - t0
    return {"events": seen, "seconds": seconds, "rss_start_mb": start_rss}


async def group(url: str, count: int, category: str, name: str) -> dict[str, float]:
    async with tidelog.connect(url) as store:
        start_rss = _rss_mb()
        handled = 0
        app = App("scale", store)

        @app.handler(category, group=name)
        async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
            nonlocal handled
            handled += 1
            if handled == count:
                app.request_stop()  # commits what was handled, then leaves the group

        t0 = time.perf_counter()
        await app.run()
        seconds = time.perf_counter() - t0
    return {"events": handled, "seconds": seconds, "rss_start_mb": start_rss}


def main() -> None:
    mode, url, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "subscribe":
        out = asyncio.run(subscribe(url, count))
    else:
        out = asyncio.run(group(url, count, sys.argv[4], sys.argv[5]))
    print(json.dumps({**out, "rss_peak_mb": _peak_mb()}), flush=True)


if __name__ == "__main__":
    main()
