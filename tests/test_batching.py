"""The asyncio group-commit queue (`tidelog.engines._kit.batching`), without an engine.

Each test drives a `GroupCommit` whose batch commit is a test double, and checks
one of the rules its module docstring states.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from tidelog.engines._kit.batching import Commit, GroupCommit
from tidelog.errors import StoreUnavailable


class _Log:
    """A batch commit that records its batches: an odd item fails alone, an even one
    returns itself doubled. `gate`, when set, holds each batch until it opens."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.sessions = 0
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def commit(self, items: list[int]) -> Sequence[int | Exception]:
        self.batches.append(items)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        return [ValueError(i) if i % 2 else 2 * i for i in items]

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Commit[int, int]]:
        self.sessions += 1
        yield self.commit


def _queue(log: _Log, max_items: int = 100, max_weight: int = 1000) -> GroupCommit[int, int]:
    return GroupCommit(log.session, max_items=max_items, max_weight=max_weight)


async def test_each_caller_gets_its_own_outcome_and_one_session_serves_a_steady_load() -> None:
    log = _Log()
    queue = _queue(log)
    futures = [queue.submit(i) for i in range(6)]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert outcomes[0::2] == [0, 4, 8]
    assert [type(o) for o in outcomes[1::2]] == [ValueError] * 3
    assert log.batches == [[0, 1, 2, 3, 4, 5]]
    assert log.sessions == 1
    assert len(queue) == 0


async def test_batches_are_bounded_by_count_and_weight_and_hold_at_least_one_write() -> None:
    log = _Log()
    log.gate = asyncio.Event()
    queue = _queue(log, max_items=3, max_weight=10)
    held = queue.submit(0)
    await log.started.wait()  # the writer is busy: what follows queues up
    futures = [queue.submit(i, weight) for i, weight in ((2, 4), (4, 4), (6, 4), (8, 50))]
    futures += [queue.submit(i) for i in (10, 12, 14, 16)]
    assert len(queue) == 8
    log.gate.set()
    await asyncio.gather(held, *futures)
    # 4+4 fit, +4 would pass 10; 50 alone; then three by count, then the rest.
    assert log.batches == [[0], [2, 4], [6], [8], [10, 12, 14], [16]]
    assert log.sessions == 1


async def test_a_caller_cancelled_while_waiting_is_skipped() -> None:
    log = _Log()
    log.gate = asyncio.Event()
    queue = _queue(log)
    held = queue.submit(0)
    await log.started.wait()
    waiting = asyncio.ensure_future(queue.submit(2))
    kept = queue.submit(4)
    await asyncio.sleep(0)
    waiting.cancel()
    log.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (await held, await kept) == (0, 8)
    assert log.batches == [[0], [4]]


async def test_a_caller_cancelled_while_its_batch_commits_is_cancelled_alone() -> None:
    log = _Log()
    log.gate = asyncio.Event()
    queue = _queue(log)
    cancelled = asyncio.ensure_future(queue.submit(2))
    other = queue.submit(4)
    await log.started.wait()
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert queue.task is not None and not queue.task.done()
    log.gate.set()
    assert await other == 8
    assert log.batches == [[2, 4]]


async def test_a_commit_that_raises_fails_its_batch_and_the_writer_goes_on() -> None:
    calls = 0

    async def commit(items: list[int]) -> Sequence[int | Exception]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("lost")
        return items

    queue: GroupCommit[int, int] = GroupCommit(
        lambda: contextlib.nullcontext(commit), max_items=1, max_weight=10
    )
    first, second = queue.submit(1), queue.submit(2)
    with pytest.raises(RuntimeError, match="lost"):
        await first
    assert await second == 2


async def test_an_interrupted_writer_fails_its_batch_as_unknown_and_the_queued_as_unwritten() -> (
    None
):
    log = _Log()
    log.gate = asyncio.Event()
    queue = _queue(log, max_items=1)
    in_flight, queued = queue.submit(0), queue.submit(2)
    await log.started.wait()
    assert queue.task is not None
    queue.task.cancel()
    with pytest.raises(StoreUnavailable, match="unknown"):
        await in_flight
    with pytest.raises(StoreUnavailable, match="not written"):
        await queued
    # A later write starts a new writer.
    log.gate.set()
    assert await queue.submit(4) == 8


async def test_a_cancelled_close_does_not_cancel_the_commit_in_flight() -> None:
    log = _Log()
    log.gate = asyncio.Event()
    queue = _queue(log)
    write = queue.submit(2)
    await log.started.wait()
    closing = asyncio.ensure_future(queue.close())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    log.gate.set()
    assert await write == 4
    await queue.close()
    assert queue.task is not None and queue.task.done()


async def test_close_after_its_grace_cancels_a_busy_writer() -> None:
    log = _Log()
    log.gate = asyncio.Event()  # never opened
    queue = _queue(log)
    write = queue.submit(2)
    await log.started.wait()
    await queue.close(grace=0)
    with pytest.raises(StoreUnavailable, match="unknown"):
        await write


async def test_fail_waiting_fails_only_the_writes_not_taken() -> None:
    log = _Log()
    log.gate = asyncio.Event()
    queue = _queue(log, max_items=1)
    in_flight, waiting = queue.submit(2), queue.submit(4)
    await log.started.wait()
    queue.fail_waiting(StoreUnavailable("closed"))
    assert len(queue) == 0
    log.gate.set()
    assert await in_flight == 4
    with pytest.raises(StoreUnavailable, match="closed"):
        await waiting
    assert log.batches == [[2]]
