"""The asyncio group-commit queue: many callers' writes, one commit per batch.

A durable commit costs a round trip and a sync whatever it holds, so an engine
that committed each write alone would be bound by that latency. `GroupCommit`
queues the writes of concurrent callers and has ONE writer task commit them a
batch at a time; each caller awaits the outcome of its own write. The engine
supplies only what is its own: how to commit a batch (one outcome per write,
so that one conflict fails only its own write) and, optionally, a session held
across consecutive batches (a pooled connection).

The rules, which every engine using it keeps:

- **Batches.** The writer takes queued writes in order, at most `max_items`
  of them, and stops before the write whose weight (events, messages: what
  the engine counts) would take the batch past `max_weight`; a batch always
  holds at least one write, however heavy. A write whose caller is gone is
  skipped: it is never committed.
- **One outcome per write.** The commit returns, in batch order, each write's
  result, or the `Exception` that failed that write alone. Each caller is
  settled once its batch is committed, and before the next batch is taken;
  the writer then yields one turn of the loop, so the callers can queue their
  next writes into that batch.
- **A caller's cancellation is its own.** A caller cancelled while its write
  waits gets `CancelledError` and its write is skipped; cancelled while its
  batch commits, it gets `CancelledError` and the batch goes on (the write may
  be committed: an idempotent retry tells). Cancelling a caller, or `close()`,
  never cancels the writer task.
- **A failed batch.** A commit that raises instead of returning outcomes fails
  every caller of its batch with `failure(exc)`; the writer goes on with the
  next batch (and a new session).
- **An interrupted batch.** If the writer task itself is cancelled (the loop
  shuts down, say) or interrupted mid-batch, the outcome of that batch is
  unknown: its callers get `failure(exc)`, by default `StoreUnavailable`
  ("outcome unknown; retrying with the same event ids is safe"), never a
  `CancelledError` they did not ask for. Writes still queued get
  `StoreUnavailable` ("not written").
- **Close.** `close()` waits until every write queued so far is settled;
  being cancelled itself does not cancel the commit in flight. Given a
  `grace` period, it cancels a writer still busy when that runs out (the rule
  above). An engine that refuses what is still queued at close calls
  `fail_waiting(error)` first.

An engine keeps its own front: it checks the write and computes its weight,
calls `submit`, and awaits the future it gets::

    self._queue = GroupCommit(
        lambda: contextlib.nullcontext(self._commit_batch),  # or a pooled connection
        max_items=500,
        max_weight=10_000,
    )
    ...
    result = await self._queue.submit(write, weight)
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeAlias, TypeVar

from tidelog.errors import StoreUnavailable

__all__ = ["Commit", "GroupCommit", "Session", "unknown_outcome"]

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

Commit: TypeAlias = Callable[[list[ItemT]], Awaitable[Sequence[ResultT | Exception]]]
"""Commits one batch, atomically or write by write; returns one outcome per write,
in order: its result, or the exception that failed it alone."""
Session: TypeAlias = Callable[[], AbstractAsyncContextManager[Commit[ItemT, ResultT]]]
"""Opens what consecutive batches share and yields the batch commit. An engine with
nothing to hold passes `lambda: contextlib.nullcontext(commit)`."""


def unknown_outcome(exc: BaseException) -> Exception:
    """The default `failure`: an `Exception` fails the batch's callers as it is; an
    interruption (a cancelled writer) becomes `StoreUnavailable`, outcome unknown."""
    if isinstance(exc, Exception):
        return exc
    return StoreUnavailable(
        f"the outcome of the append is unknown: the store's writer was interrupted "
        f"({type(exc).__name__}); retrying it is safe"
    )


class _Waiter(Generic[ItemT, ResultT]):
    """One queued write and the future its caller awaits."""

    __slots__ = ("future", "item", "weight")

    def __init__(self, item: ItemT, weight: int, future: asyncio.Future[ResultT]) -> None:
        self.item = item
        self.weight = weight
        self.future = future


class GroupCommit(Generic[ItemT, ResultT]):
    """A queue of writes committed in batches by one writer task (module docstring).

    `len()` is the number of writes waiting to be taken into a batch.
    """

    def __init__(
        self,
        session: Session[ItemT, ResultT],
        *,
        max_items: int,
        max_weight: int,
        failure: Callable[[BaseException], Exception] = unknown_outcome,
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self._session = session
        self._max_items = max_items
        self._max_weight = max_weight
        self._failure = failure
        self._queue: collections.deque[_Waiter[ItemT, ResultT]] = collections.deque()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The writer task, while or since it last ran (None before the first write)."""
        return self._task

    def submit(self, item: ItemT, weight: int = 1) -> asyncio.Future[ResultT]:
        """Queue `item` for the next batch; the future settles with its outcome.

        Starts the writer task if it is not running. Await the future in the
        caller's task: cancelling that task then cancels the future, which is
        how the writer learns the caller is gone.
        """
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiter(item, weight, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
            self._task.add_done_callback(self._stopped)
        return future

    def fail_waiting(self, error: Exception) -> None:
        """Fail every write not yet taken into a batch with `error` (they are not written)."""
        waiting, self._queue = self._queue, collections.deque()
        for waiter in waiting:
            if not waiter.future.done():
                waiter.future.set_exception(error)

    async def close(self, grace: float | None = None) -> None:
        """Wait until the writer has committed every write queued so far.

        `asyncio.wait`, unlike awaiting the task, neither cancels the writer if
        `close` is cancelled nor raises its error. After `grace` seconds (None:
        no limit) a writer still busy is cancelled: its batch's outcome is unknown.
        """
        task = self._task
        if task is None or task.done():
            return
        done, _ = await asyncio.wait([task], timeout=grace)
        if not done:
            task.cancel()
            await asyncio.wait([task])

    async def _drain(self) -> None:
        """The writer task: commit batches until no write waits.

        One session serves consecutive batches, so a steady load opens it once
        (for a pooled connection: no acquire, and no release with its reset
        round trip, per batch).
        """
        while batch := self._take():
            try:
                async with self._session() as commit:
                    while batch:
                        outcomes = await commit([w.item for w in batch])
                        _settle(batch, outcomes)
                        await asyncio.sleep(0)
                        batch = self._take()
            except BaseException as exc:
                error = self._failure(exc)
                for waiter in batch:
                    if not waiter.future.done():
                        waiter.future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise

    def _take(self) -> list[_Waiter[ItemT, ResultT]]:
        """The next writes to commit together, in queue order; [] when none waits."""
        batch: list[_Waiter[ItemT, ResultT]] = []
        weight = 0
        queue = self._queue
        while queue and len(batch) < self._max_items:
            waiter = queue[0]
            if not waiter.future.done():  # else its caller is gone: skip it
                weight += waiter.weight
                if batch and weight > self._max_weight:
                    break
                batch.append(waiter)
            queue.popleft()
        return batch

    def _stopped(self, task: asyncio.Task[None]) -> None:
        """When the writer task is cancelled (say, as the event loop shuts down; even
        before it ran), fail the writes it left waiting: no one would commit them."""
        if not task.cancelled() and task.exception() is None:
            return
        self.fail_waiting(
            StoreUnavailable("the append was not written: the store's writer was stopped")
        )


def _settle(batch: list[_Waiter[ItemT, ResultT]], outcomes: Sequence[ResultT | Exception]) -> None:
    """Hand each caller its outcome; a caller that is gone (cancelled) is skipped."""
    for waiter, outcome in zip(batch, outcomes, strict=True):
        if waiter.future.done():
            continue
        if isinstance(outcome, Exception):
            waiter.future.set_exception(outcome)
        else:
            waiter.future.set_result(outcome)
