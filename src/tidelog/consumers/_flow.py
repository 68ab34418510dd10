"""Flow control: how much is fetched (`Credits`) and how much runs (`Limiter`) at once.

Also the few waiting primitives the runtime's loops share (`first`,
`sleep_unless`, `cancel_and_wait`): how a loop waits for one of several
things, and how it is stopped for sure.

Both bounds are touched once per delivered event, so both are written to cost
nothing when nobody waits: the partition run's hot path
(`PartitionRun._work_streams`) even reads and writes their fields directly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

from ._stats import Stats

__all__ = ["Credits", "Limiter", "cancel_and_wait", "first", "sleep_unless"]


class Credits:
    """Bounds the events fetched but not finished by one consumer."""

    def __init__(self, limit: int, stats: Stats) -> None:
        self.limit = max(1, limit)
        self.used = 0
        self.freed = asyncio.Event()
        self.waiting = False
        """The reader waits in `take` (read where credits are given back)."""
        self._stats = stats

    async def take(self, want: int) -> int:
        while self.used >= self.limit:
            self.freed.clear()
            self.waiting = True
            try:
                await self.freed.wait()
            finally:
                self.waiting = False
        n = min(want, self.limit - self.used)
        self.used += n
        self._stats.peak_in_flight = max(self._stats.peak_in_flight, self.used)
        return n

    def give(self, n: int) -> None:
        """Give back `n` credits: wakes the reader only if it waits."""
        self.used -= n
        if self.waiting:
            self.freed.set()


class Limiter:
    """Bounds the handler calls running at once in a process (`concurrency`).

    A FIFO counting semaphore whose uncontended `acquire` neither suspends nor
    allocates: it runs once per handled event, where `asyncio.Semaphore`'s
    `async with` would cost about as much as a trivial handler itself.

    `free` is above 0 only while nobody waits (`release` hands its slot to the
    longest waiter before it frees one), so the hot path in
    `PartitionRun._work_streams` takes a slot with `free -= 1` when `free`
    allows, and calls `acquire` only otherwise.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        """The configured bound (`concurrency`): also the most workers a partition starts."""
        self.free = max(1, limit)
        self.waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Take a slot if one is free (never suspends)."""
        if self.free > 0:
            self.free -= 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # a slot was handed over just as we were cancelled
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Hand the slot to the longest waiter, or give it back."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


async def first(*aws: Any) -> None:
    """Wait until the first of `aws` is done; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


async def sleep_unless(event: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `event` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it is done.

    Cancels again until it takes: on Python 3.11 `asyncio.wait_for` can swallow a
    cancellation that arrives as its inner wait completes (gh-86296), which would
    leave a loop like the fetcher running and a plain `await task` hanging.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.result()
