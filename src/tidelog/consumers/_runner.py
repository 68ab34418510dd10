"""The consuming runtime: one `_GroupConsumer` per handler, one `_PartitionRun` per owned partition.

Delivery, in short:

- A consumer joins its (group, category) and heartbeats; each membership it
  gets back names its partitions and the generation. Partitions it gained are
  started from their committed checkpoint; partitions it lost are abandoned.
- One reader per consumer reads the category in pages for all owned
  partitions (`read_all(partitions=owned)`) and hands each event to its
  partition's run, taking one credit per event from the consumer's `_Credits`:
  at `max_in_flight` unfinished events reading pauses, so a burst of a million
  events never sits in memory.
- Each run hands its events, in log order, to a few long-lived workers
  (`_work_streams`); a stream is held by one worker at a time, so per-stream
  order holds while other streams flow in parallel. A handler that returns
  without waiting costs no task switch; one that waits holds up only its own
  stream, as a spare worker takes the rest (handler calls at once bounded by
  `concurrency`, over all partitions).
- The checkpoint of a partition is the position just below its lowest
  unfinished event, committed every `commit_every` events, and otherwise at
  most once per `commit_interval` (sooner when the partition caught up), never
  per event. After a crash everything above it is redelivered: delivery is
  at-least-once.
- A handler's `ctx.append`s are committed with `commit(..., appends=...)`:
  atomically with the checkpoint and fenced by the generation. Their ids are
  deterministic, so a redelivery (or the fallback to plain `append_many` on
  engines that refuse transactional commits) writes nothing twice.
- A commit refused with `StaleGeneration` (this member was fenced: its lease
  ran out or the group rebalanced) is never retried blindly: the consumer
  heartbeats first, and retries only with the new generation if it still owns
  the partition; if its lease was gone it drops every partition and rejoins.
- A failing event is retried with backoff, then parked in `$dlq-<group>`
  (see `_dlq`), which also records the events held behind it, so the
  checkpoint can move past a blocked stream without losing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tidelog.engines.contract import GroupEngine
from tidelog.errors import NotSupported, StaleGeneration, StoreClosed, StoreUnavailable
from tidelog.model import AppendRequest, Membership, NewEvent, RecordedEvent, partition_of

from ._app import Context, DeliveryScope
from ._dlq import (
    DlqState,
    ParkedStatus,
    dlq_stream,
    held_entry,
    load_state,
    parked_entry,
    resolved_entry,
)

if TYPE_CHECKING:
    from ._app import App, Handler

__all__ = ["Runtime", "Stats"]

log = logging.getLogger("tidelog.consumers")


def emit(level: int, event: str, **fields: Any) -> None:
    """A structured log line: `event` is the message, `fields` ride in `extra`."""
    if log.isEnabledFor(level):
        log.log(level, event, extra={"tidelog": fields})


@dataclass(slots=True)
class Stats:
    """Counters of one run, for tests, benchmarks and `tidelog worker` logs."""

    handled: int = 0
    """Successful handler calls (events, or batches)."""
    events_handled: int = 0
    retries: int = 0
    parked: int = 0
    held: int = 0
    skipped_parked: int = 0
    """Redelivered events that the DLQ already holds or settled."""
    commits: int = 0
    refused_commits: int = 0
    """Commits the engine refused with StaleGeneration (this member was fenced)."""
    stale_heartbeats: int = 0
    rejoins: int = 0
    partitions_started: int = 0
    partitions_revoked: int = 0
    peak_in_flight: int = 0
    """The highest number of fetched but unfinished events seen."""


class _Credits:
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


class _Limiter:
    """Bounds the handler calls running at once in a process (`concurrency`).

    A FIFO counting semaphore whose uncontended `acquire` neither suspends nor
    allocates: it runs once per handled event, where `asyncio.Semaphore`'s
    `async with` would cost about as much as a trivial handler itself.

    `free` is above 0 only while nobody waits (`release` hands its slot to the
    longest waiter before it frees one), so the hot path in
    `_PartitionRun._work_streams` takes a slot with `free -= 1` when `free`
    allows, and calls `acquire` only otherwise.
    """

    def __init__(self, limit: int) -> None:
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


class _Settle:
    """A queue item: settle the DLQ head of `stream` (a retry or a held event)."""

    __slots__ = ("stream",)

    def __init__(self, stream: str) -> None:
        self.stream = stream


_Item = RecordedEvent | _Settle

_NOT_THE_EVENTS_FAULT = (asyncio.CancelledError, StaleGeneration, StoreUnavailable, StoreClosed)
"""Fenced, or the store is down: no attempt is spent; the event is tried again later
(or redelivered elsewhere)."""

_KNOWN_STREAMS = 100_000
"""How many streams' partitions a reader remembers (a few MB at most)."""

_new_context = object.__new__
"""Makes a `Context` without `__init__`: see `Context._deliver`."""


class _PartitionRun:
    """Delivers one partition owned by this member, from its checkpoint on."""

    def __init__(self, consumer: _GroupConsumer, partition: int, claim: int) -> None:
        self.c = consumer
        self.p = partition
        self.claim = claim
        self.pending: deque[int] = deque()
        """Positions taken from the reader, in log order, from the first unfinished one on.

        Positions, not the events: behind an event that takes long (a handler
        that waits, retries with backoff), the finished ones pile up here until
        it finishes, and they must not keep their data alive.
        """
        self.done: set[int] = set()
        """Finished positions still in `pending` (finished out of log order)."""
        self.fetched_upto = 0
        self.committed = 0
        self.since_commit = 0
        self.commit_every = consumer.options.commit_every
        self.quiet_commit_at = -float("inf")
        """When a commit last came from the clock or from catching up (not from `commit_every`)."""
        self.catch_up_due = False
        self.by_stream = consumer.handler.options.batch is None
        """Streams are handled in parallel; batches go one after the other, in log order."""
        self.ready: deque[_Item] = deque()
        """Fetched events (and settle requests) in log order, not yet taken by a worker."""
        self.held: dict[str, deque[_Item] | None] = {}
        """Streams a worker is handling, each with the items of it taken meanwhile."""
        self.workers: set[asyncio.Task[None]] = set()
        self.spare = 0
        """Workers not inside a handling: the next ready item needs no new task."""
        self.idle: asyncio.Future[None] | None = None
        """Set while a worker waits for items (at most one does; it counts as spare)."""
        self.staff_due = False
        """A `_staff` call is scheduled for when the running worker yields (see `_take`)."""
        self.running = consumer.running
        self.credits = consumer.credits
        self.max_workers = consumer.options.concurrency if self.by_stream else 1
        h = consumer.handler
        self.direct = h.fn if self.by_stream and h.event_class is None else None
        """The handler itself when it takes the `RecordedEvent` as is (skips `Handler.invoke`)."""
        self.settle_queued: set[str] = set()
        self.scope = DeliveryScope(
            consumer.store,
            h.group,
            h.category,
            h.name,
            consumer.member,
            partition,
            claim,
            consumer.registry,
        )
        self.progress = asyncio.Event()
        self.started = asyncio.Event()
        self.starter: asyncio.Task[None] | None = None
        self.next_position = 0
        """The next position this run needs from the consumer's reader."""
        self.committer: asyncio.Task[None] | None = None
        self.failed: BaseException | None = None
        self.stopping = False

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self.starter = asyncio.create_task(self._start(), name=f"start-{self.p}")

    @property
    def alive(self) -> bool:
        """Starting or started; False once stopped or when loading its checkpoint failed."""
        return (
            not self.stopping
            and self.starter is not None
            and (not self.starter.done() or self.started.is_set())
        )

    @property
    def reading(self) -> bool:
        return self.started.is_set() and not self.stopping

    async def stop(self, deadline: float | None) -> None:
        """Stop reading; let queued events finish until `deadline` (None: abandon), commit."""
        self.stopping = True
        if self.idle is not None:
            self.idle.set_result(None)  # the waiting worker ends: nothing more comes
            self.idle = None
        if self.starter is not None:
            await cancel_and_wait(self.starter)
        while deadline is not None and (left := deadline - time.monotonic()) > 0:
            # a worker may start a spare one meanwhile: wait until none is left
            workers = [t for t in self.workers if not t.done()]
            if not workers:
                break
            await asyncio.wait(workers, timeout=left)
        self.ready.clear()  # first: no worker starts for, or takes, anything more
        while running := [t for t in self.workers if not t.done()]:
            for t in running:
                await cancel_and_wait(t)
        self.workers.clear()
        self.held.clear()
        self.c.credits.give(self.outstanding)  # abandoned: `pending` keeps them for the commit
        if self.committer is not None:
            await cancel_and_wait(self.committer)
        if (
            self.started.is_set()
            and not await self._commit_checkpoint(final=True)
            and deadline is not None
            and await self.c.still_owner(self.p)
        ):
            # another member left meanwhile (a rolling shutdown): commit with the
            # generation that the heartbeat just returned
            await self._commit_checkpoint(final=True)

    # ---------------------------------------------------------------- reading

    async def _start(self) -> None:
        """Load the checkpoint (and the DLQ); then the consumer's reader feeds this run."""
        c = self.c
        try:
            checkpoints = await c.store.checkpoints(c.handler.group, c.handler.category)
            # after the checkpoint: every DLQ entry the previous owner committed with
            # (or before) that checkpoint is seen, so its parked and held events are
            # not handled again; its later writes are fenced
            await c.refresh_dlq()
        except (StoreUnavailable, StoreClosed) as exc:
            self.failed = exc
            return
        start = checkpoints.get(self.p, 0)
        self.committed = self.fetched_upto = start
        self.next_position = start + 1
        self.started.set()
        self.committer = asyncio.create_task(self._commit_loop(), name=f"commit-{self.p}")
        emit(
            logging.INFO,
            "partition_started",
            group=c.handler.group,
            category=c.handler.category,
            partition=self.p,
            checkpoint=start,
            member=c.member,
        )
        c.stats.partitions_started += 1
        c.enqueue_settles(self)
        c.wake_reader()

    @property
    def outstanding(self) -> int:
        """Events taken from the reader and not finished: their credits are this run's."""
        return len(self.pending) - len(self.done)

    def accept(self, events: list[RecordedEvent]) -> None:
        """Take fetched events in log order (their credits are this run's until each finishes)."""
        self.pending.extend([e.position for e in events])
        self.fetched_upto = events[-1].position
        self.next_position = self.fetched_upto + 1
        self.ready.extend(events)
        self._staff()

    def enqueue_settle(self, stream: str) -> None:
        if stream not in self.settle_queued and self.reading:
            self.settle_queued.add(stream)
            self.ready.append(_Settle(stream))
            self._staff()

    def _finished(self, position: int) -> None:
        """An event is done with (handled, parked, held or skipped): its credit goes back."""
        pending = self.pending
        if pending[0] == position:
            pending.popleft()  # finished in log order, as most are: `done` stays out of it
        else:
            self.done.add(position)
        credits = self.credits
        credits.used -= 1  # `credits.give(1)`, inline: this runs once per event
        if credits.waiting:
            credits.freed.set()
        self.since_commit += 1
        if self.since_commit >= self.commit_every:
            self.progress.set()
        elif self.c.caught_up and not self.outstanding:
            self.on_caught_up()

    def on_caught_up(self) -> None:
        """Nothing in flight and the reader found nothing more: commit now, not at the next tick.

        A consumer that caught up then shows no lag and redelivers nothing after
        a restart. It shares `commit_interval` with the clock-driven commits
        (`_commit_loop`), so a trickle of events still costs at most one commit
        per interval.
        """
        if (
            self.fetched_upto > self.committed
            and time.monotonic() - self.quiet_commit_at >= self.c.options.commit_interval
        ):
            self.catch_up_due = True
            self.progress.set()

    # ---------------------------------------------------------------- workers

    def _staff(self) -> None:
        """Start a worker if items are ready and every worker is inside a handling.

        Workers are loops over the ready items, not a task per stream or per
        event: a handler that returns without waiting costs no task switch, so
        a page of events is handled in one pass of one worker. A worker that
        takes an item when no spare is left has this called as soon as it
        yields (`_staff_soon`), so a spare one is there whenever a handler does
        wait (I/O): it holds up only its own stream. At most `concurrency`
        workers per partition (one in batch mode); `_Limiter` bounds the
        handler calls over all partitions.
        """
        if self.spare:
            idle = self.idle
            if idle is not None and self.ready:
                self.idle = None
                idle.set_result(None)
            return
        if not self.ready or len(self.workers) >= self.max_workers:
            return
        if self.workers and not self.running.free:
            return  # a spare would only queue for a slot
        self.spare += 1
        worker = asyncio.create_task(self._work(), name=f"work-{self.p}")
        self.workers.add(worker)
        worker.add_done_callback(self._worker_done)

    def _worker_done(self, worker: asyncio.Task[None]) -> None:
        self.workers.discard(worker)
        self.spare -= 1
        if worker.cancelled():
            return
        exc = worker.exception()
        if exc is not None and not isinstance(exc, StoreClosed):
            log.error("tidelog consumer worker failed", exc_info=exc)
        self._staff()  # items it left ready get a worker

    async def _work(self) -> None:
        """Work until nothing is ready; then wait for more, unless another worker already does.

        Waiting rather than ending keeps a task alive between pages: the next
        page wakes it (`_staff`) instead of starting a task, and a task's start
        and end cost more than handling a few dozen events.
        """
        try:
            while not self.stopping:
                if self.by_stream:
                    await self._work_streams()
                else:
                    await self._work_batches()
                if self.idle is not None or self.ready or self.stopping:
                    return  # items left ready are another worker's (see `_take`)
                self.idle = idle = asyncio.get_running_loop().create_future()
                try:
                    await idle
                finally:
                    if self.idle is idle:
                        self.idle = None
        except StaleGeneration:
            return  # fenced while stopping: what is unfinished is redelivered

    def _staff_soon(self) -> None:
        """`_staff` once the running worker yields, not now.

        A spare is needed only if the worker waits inside a handling; a handler
        that returns at once lets it go through all ready items in one pass, and
        a spare task started for it would find nothing to do. The call runs
        before anything else the loop had scheduled after the worker's step, so
        the items behind a waiting handler get a worker as soon as before.
        """
        if not self.staff_due:
            self.staff_due = True
            asyncio.get_running_loop().call_soon(self._staff_due)

    def _staff_due(self) -> None:
        self.staff_due = False
        self._staff()

    def _take(self) -> _Item | None:
        """The next ready item whose stream no worker holds: the caller holds it now.

        Items of a held stream are set aside for the worker holding it. None:
        nothing is ready, or every slot is taken and another worker of this
        partition goes on (queueing here too would cost a task switch per
        event: a convoy).
        """
        ready, held = self.ready, self.held
        while ready:
            if not self.running.free and len(self.workers) > 1:
                return None
            item = ready.popleft()
            stream = item.stream
            if stream not in held:
                held[stream] = None
                self.spare -= 1
                if not self.spare:
                    self._staff_soon()
                return item
            backlog = held[stream]
            if backlog is None:
                backlog = held[stream] = deque()
            backlog.append(item)
        return None

    async def _work_streams(self) -> None:
        """Handle items until none is left for this worker; per stream one worker at a time.

        This loop runs once per event, and with a handler that returns at once a
        call of ours costs a good share of a delivery: so the common path is
        written out here. The first attempt at an event runs as in `_handle`;
        a finished event is accounted for as in `_finished`; the next item is
        taken as in `_take` when it is first in line and nobody holds its stream.

        A handler slot (`_Limiter`) is kept from one handling to the next (in
        between no other task runs): it is given back when someone waits for
        one (FIFO), before anything that may wait on something else than a
        handler (the DLQ, a commit, a retry), and when the worker stops.
        """
        c = self.c
        running, dlq, stats, scope, direct, h = (
            self.running,
            c.dlq,
            c.stats,
            self.scope,
            self.direct,
            c.handler,
        )
        new_context = _new_context
        ready, held, waiters = self.ready, self.held, running.waiters
        pending, credits, settle_queued = self.pending, self.credits, self.settle_queued
        slot = False
        item = self._take()
        try:
            while item is not None:
                if slot and (waiters or settle_queued or dlq.entries):
                    running.release()
                    slot = False
                try:
                    if settle_queued and type(item) is _Settle:
                        await self._settle(item.stream)
                    else:
                        # a `_Settle` is in line only while its stream is in `settle_queued`
                        event: RecordedEvent = item  # type: ignore[assignment]
                        # an empty DLQ (the usual case) can neither hold nor skip an event
                        if not dlq.entries or await self._gate(event):
                            events = (event,)
                            # `Context._deliver(scope, c.generation, 1, events)`, inline
                            ctx = new_context(Context)
                            ctx._scope = scope
                            ctx.generation = c.generation
                            ctx.attempt = 1
                            ctx._source = events
                            ctx._appends = None
                            ctx._count = 0
                            ctx._key = None
                            if not slot:
                                if running.free:
                                    running.free -= 1
                                else:
                                    await running.acquire()
                                slot = True
                            try:
                                if direct is not None:
                                    await direct(event, ctx)
                                else:
                                    await h.invoke(events, ctx, c.registry)
                                if ctx._appends:
                                    running.release()
                                    slot = False
                                    await self._commit_with(ctx._requests())
                            except _NOT_THE_EVENTS_FAULT:
                                raise
                            except Exception as exc:
                                if slot:
                                    running.release()  # each retry takes one
                                    slot = False
                                await self._retry(event, exc)
                            else:
                                stats.handled += 1
                                stats.events_handled += 1
                        # finished (handled, parked, held or skipped)
                        position = event.position
                        if pending[0] == position:
                            pending.popleft()
                        else:
                            self.done.add(position)
                        credits.used -= 1
                        if credits.waiting:
                            credits.freed.set()
                        self.since_commit += 1
                        if self.since_commit >= self.commit_every:
                            self.progress.set()
                        elif c.caught_up and not self.outstanding:
                            self.on_caught_up()
                except StoreUnavailable as exc:
                    if slot:
                        running.release()
                        slot = False
                    await self._store_unavailable(exc)
                    continue  # the same item again
                # next: an item of the same stream set aside meanwhile, else release it
                stream = item.stream
                backlog = held[stream]
                if backlog:
                    item = backlog.popleft()
                    continue
                del held[stream]
                # with a slot kept or a free one (else `_take` may leave it to another worker)
                if (
                    ready
                    and (running.free or (slot and not waiters))
                    and ready[0].stream not in held
                ):
                    item = ready.popleft()
                    held[item.stream] = None
                    if not self.spare and not self.staff_due:
                        self._staff_soon()
                else:
                    if slot:
                        running.release()
                        slot = False
                    self.spare += 1
                    item = self._take()
        finally:
            if slot:
                running.release()
            if item is not None:
                self.spare += 1  # fenced or cancelled while holding a stream

    async def _work_batches(self) -> None:
        """The partition's one worker in batch mode: lists of up to `batch` events."""
        ready = self.ready
        size = self.c.handler.options.batch or 1
        while ready:
            if isinstance(ready[0], _Settle):
                ready.popleft()
                for stream in list(self.settle_queued):
                    await self._settle(stream)
                continue
            batch: list[RecordedEvent] = []
            while ready and len(batch) < size:
                item = ready[0]
                if not isinstance(item, RecordedEvent):
                    break
                ready.popleft()
                batch.append(item)
            try:
                await self._process_batch(batch)
            except StoreUnavailable as exc:
                ready.extendleft(reversed(batch))
                await self._store_unavailable(exc)
                continue
            for e in batch:
                self._finished(e.position)

    # ---------------------------------------------------------------- handling

    async def _gate(self, event: RecordedEvent) -> bool:
        """True if `event` must go to the handler; else it was parked, held or settled."""
        c = self.c
        state = c.dlq
        if not state.entries:
            return True  # nothing parked in this group: the common case, decided at once
        if event.id in state.entries:
            c.stats.skipped_parked += 1
            return False
        if state.blocked(event.stream, event.position):
            h = c.handler
            if h.options.on_park == "block":
                entry = held_entry(h.group, event, handler=h.name)
            else:
                entry = parked_entry(
                    h.group, event, handler=h.name, error=None, attempts=0, reason="stream_parked"
                )
            await self._write_dlq(entry)
            # counted once written: a count seen by callers is in the DLQ already
            if h.options.on_park == "block":
                c.stats.held += 1
            else:
                c.stats.parked += 1
            return False
        return True

    async def _retry(self, event: RecordedEvent, failed: Exception) -> None:
        """The first attempt at `event` raised `failed`: retry it; park it if it keeps failing."""
        error, attempts = await self._handle((event,), failed=failed)
        if error is not None:
            await self._park(event, error, attempts, 0)

    async def _store_unavailable(self, exc: StoreUnavailable) -> None:
        """Writing the DLQ or a handler's effects failed: wait, then the caller tries again."""
        emit(logging.WARNING, "store_unavailable", partition=self.p, error=repr(exc))
        await asyncio.sleep(0.5)

    async def _process_batch(self, batch: Sequence[RecordedEvent]) -> None:
        todo = [e for e in batch if await self._gate(e)]
        if not todo:
            return
        error, _ = await self._handle(tuple(todo))
        if error is None:
            return
        # isolate the failing events: one at a time, each with its own attempts
        for event in todo:
            if not await self._gate(event):
                continue
            one_error, attempts = await self._handle((event,))
            if one_error is not None:
                await self._park(event, one_error, attempts, 0)

    async def _handle(
        self,
        events: tuple[RecordedEvent, ...],
        extra: dict[str, list[NewEvent]] | None = None,
        failed: Exception | None = None,
    ) -> tuple[BaseException | None, int]:
        """Run the handler with retries; commit its appends. Returns (last error, attempts).

        `failed`: the first attempt already ran, inline in `_work_streams`, and
        raised this; the retries go on from there.
        """
        c = self.c
        h = c.handler
        running = c.running
        direct = self.direct
        stats = c.stats
        attempt = 0 if failed is None else 1
        error = failed
        while True:
            if error is not None:
                if attempt >= h.options.max_attempts:
                    return error, attempt
                await self._back_off(events, attempt, error)
            attempt += 1
            ctx = Context._deliver(self.scope, c.generation, attempt, events)
            try:
                if not running.try_acquire():
                    await running.acquire()
                try:
                    if direct is not None:
                        await direct(events[0], ctx)
                    else:
                        await h.invoke(events, ctx, c.registry)
                finally:
                    running.release()
                if ctx._appends or extra:
                    requests = ctx._requests()
                    for stream, evs in (extra or {}).items():
                        requests[stream] = AppendRequest(events=tuple(evs))
                    await self._commit_with(requests)
                stats.handled += 1
                stats.events_handled += len(events)
                return None, attempt
            except _NOT_THE_EVENTS_FAULT:
                raise
            except Exception as exc:
                error = exc

    async def _back_off(
        self, events: tuple[RecordedEvent, ...], attempt: int, error: Exception
    ) -> None:
        """Wait before the next attempt: exponential backoff with jitter."""
        h = self.c.handler
        self.c.stats.retries += 1
        delay = h.options.backoff(attempt, random.random())
        emit(
            logging.INFO,
            "retry",
            group=h.group,
            handler=h.name,
            event_id=str(events[0].id),
            stream=events[0].stream,
            attempt=attempt,
            delay=round(delay, 3),
            error=repr(error)[:500],
        )
        await asyncio.sleep(delay)

    async def _park(
        self, event: RecordedEvent, error: BaseException, attempts: int, round_: int
    ) -> None:
        h = self.c.handler
        emit(
            logging.WARNING,
            "parked",
            group=h.group,
            handler=h.name,
            event_id=str(event.id),
            stream=event.stream,
            position=event.position,
            attempts=attempts,
            error=repr(error)[:500],
        )
        await self._write_dlq(
            parked_entry(
                h.group, event, handler=h.name, error=error, attempts=attempts, round_=round_
            )
        )
        self.c.stats.parked += 1  # once written, as in `_gate`

    async def _write_dlq(self, entry: NewEvent) -> None:
        await self._commit_with({dlq_stream(self.c.handler.group): AppendRequest(events=(entry,))})
        await self.c.refresh_dlq()

    async def _settle(self, stream: str) -> None:
        """Run the DLQ head of `stream` through the handler while it is a retry or held."""
        c = self.c
        self.settle_queued.discard(stream)
        while True:
            await c.refresh_dlq()
            head = c.dlq.head(stream)
            if head is None or head.status is ParkedStatus.PARKED:
                return
            event = head.event
            round_ = c.dlq.rounds.get(event.id, 0)
            resolution = resolved_entry(c.handler.group, event.id, round_)
            emit(
                logging.INFO,
                "dlq_settle",
                group=c.handler.group,
                event_id=str(event.id),
                stream=stream,
                status=head.status.value,
            )
            error, attempts = await self._handle(
                (event,), extra={dlq_stream(c.handler.group): [resolution]}
            )
            if error is not None:
                await self._park(event, error, attempts, round_ + 1)
            else:
                await c.refresh_dlq()

    # ---------------------------------------------------------------- commits

    def committable(self) -> int:
        pending, done = self.pending, self.done
        while pending and pending[0] in done:
            done.discard(pending.popleft())
        return pending[0] - 1 if pending else self.fetched_upto

    async def _commit_with(self, appends: dict[str, AppendRequest]) -> None:
        """Commit appends with this partition's checkpoint; fenced, or idempotent without tx."""
        c = self.c
        h = c.handler
        while True:
            if c.no_transactions:
                await c.store.append_many(appends)
                return
            generation = c.generation
            position = max(self.committable(), 0)
            try:
                await c.store.commit(
                    h.group,
                    h.category,
                    self.p,
                    position,
                    member=c.member,
                    generation=generation,
                    appends=appends,
                )
                self.committed = max(self.committed, position)
                c.stats.commits += 1
                return
            except NotSupported:
                c.no_transactions = True
            except StaleGeneration as exc:
                self._refused(exc, position)
                await c.await_membership(generation)

    async def _commit_checkpoint(self, final: bool = False) -> bool:
        """Commit the partition's progress; False if the engine refused (fenced)."""
        position = self.committable()
        if position <= self.committed:
            return True
        c = self.c
        counted = self.since_commit  # events finishing during the commit count for the next
        try:
            await c.store.commit(
                c.handler.group,
                c.handler.category,
                self.p,
                position,
                member=c.member,
                generation=c.generation,
            )
            self.committed = position
            self.since_commit -= counted
            c.stats.commits += 1
        except StaleGeneration as exc:
            self._refused(exc, position)
            if not final:
                c.request_heartbeat()
            return False
        except (StoreUnavailable, StoreClosed) as exc:
            emit(logging.WARNING, "commit_failed", partition=self.p, error=repr(exc))
        return True

    def _refused(self, exc: StaleGeneration, position: int) -> None:
        self.c.stats.refused_commits += 1
        emit(
            logging.WARNING,
            "commit_refused",
            group=exc.group,
            category=exc.category,
            member=exc.member,
            partition=self.p,
            position=position,
            generation=exc.generation,
            current=exc.current,
        )

    async def _commit_loop(self) -> None:
        """Commit every `commit_every` finished events; else once per `commit_interval` at most.

        The latter happen `commit_interval` after the previous commit, or as soon
        as the partition caught up (`on_caught_up`) if the previous one of them
        is that long ago.
        """
        options = self.c.options
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), options.commit_interval)
            self.progress.clear()
            self.catch_up_due = False
            quiet = self.since_commit < options.commit_every
            before = self.committed
            await self._commit_checkpoint()
            if quiet and self.committed != before:
                self.quiet_commit_at = time.monotonic()
            if self.since_commit < options.commit_every and not self.catch_up_due:
                # set by events that finished during the commit: not due yet
                self.progress.clear()


class _GroupConsumer:
    """One handler's membership in its group: joins, heartbeats, starts and stops partitions."""

    def __init__(self, runtime: Runtime, handler: Handler) -> None:
        self.runtime = runtime
        self.store: GroupEngine = runtime.store
        self.handler = handler
        self.member = runtime.member
        self.options = runtime.options
        self.registry = runtime.app.registry
        self.stats = runtime.stats
        self.running = runtime.running
        self.credits = _Credits(self.options.max_in_flight, self.stats)
        self.generation = -1
        self.runs: dict[int, _PartitionRun] = {}
        self.claims = 0
        self.dlq = DlqState(handler.group)
        self._dlq_lock = asyncio.Lock()
        self._dlq_asked = 0
        """Calls of `refresh_dlq` so far; `_dlq_read` is how many of them the last read covers."""
        self._dlq_read = 0
        self._beat = asyncio.Event()
        self._reader_wake = asyncio.Event()
        self._epoch = 0
        self._epoch_changed = asyncio.Event()
        self.no_transactions = False
        self.caught_up = False
        """The reader's last read found less than it asked for: the log ends about here."""

    # ---------------------------------------------------------------- membership

    def request_heartbeat(self) -> None:
        self._beat.set()

    async def await_membership(self, generation: int) -> None:
        """Wait until a heartbeat brought a membership newer than `generation`."""
        while self.generation == generation:
            self._beat.set()
            changed = self._epoch_changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self.options.heartbeat_every)
            if self.runtime.stopping.is_set() and self.generation == generation:
                raise StaleGeneration(
                    self.handler.group, self.handler.category, self.member, generation, None
                )

    async def still_owner(self, partition: int) -> bool:
        """Heartbeat now (while stopping); True if `partition` is still this member's."""
        h = self.handler
        try:
            membership = await self.store.heartbeat(
                h.group, h.category, self.member, self.options.lease
            )
        except (StaleGeneration, StoreUnavailable, StoreClosed):
            return False
        self.generation = membership.generation
        return partition in membership.partitions

    async def refresh_dlq(self) -> None:
        """Fold the DLQ entries written since the last read (also those of other members).

        Single flight: a read that began after this call (so after whatever its
        caller wrote) covers it, and the callers waiting meanwhile share it. Each
        parked or held event makes its worker refresh; one read per call made a
        burst of them queue on the lock, each read finding the others' entries.
        """
        self._dlq_asked += 1
        ticket = self._dlq_asked
        async with self._dlq_lock:
            if self._dlq_read >= ticket:
                return
            covered = self._dlq_asked
            await load_state(self.store, self.handler.group, self.dlq)
            self._dlq_read = covered

    def enqueue_settles(self, run: _PartitionRun | None = None) -> None:
        """Hand each stream whose DLQ head awaits a retry or release to its partition's run."""
        count = self.store.partition_count
        for stream in self.dlq.open_streams():
            head = self.dlq.head(stream)
            if head is None or head.status is ParkedStatus.PARKED:
                continue
            target = self.runs.get(partition_of(stream, count))
            if target is not None and (run is None or target is run):
                target.enqueue_settle(stream)

    async def _apply(self, membership: Membership) -> None:
        self.generation = membership.generation
        owned = set(membership.partitions)
        for p in sorted(set(self.runs) - owned):
            run = self.runs.pop(p)
            self.stats.partitions_revoked += 1
            emit(logging.INFO, "partition_revoked", group=self.handler.group, partition=p)
            await run.stop(None)
        for p in sorted(owned):
            current = self.runs.get(p)
            if current is None or not current.alive:
                if current is not None:
                    await current.stop(None)
                self.claims += 1
                fresh = self.runs[p] = _PartitionRun(self, p, self.claims)
                fresh.start()
        self._epoch += 1
        self._epoch_changed.set()
        self._epoch_changed = asyncio.Event()

    async def _drop_all(self, deadline: float | None) -> None:
        runs = list(self.runs.values())
        self.runs.clear()
        await asyncio.gather(*(r.stop(deadline) for r in runs))

    async def run(self) -> None:
        h = self.handler
        stopping = self.runtime.stopping
        follower = asyncio.create_task(self._follow_dlq())
        reader = asyncio.create_task(self._read(), name=f"read-{h.group}")
        try:
            while not stopping.is_set():
                try:
                    membership = await self.store.join_group(
                        h.group, h.category, self.member, self.options.lease
                    )
                    await self.refresh_dlq()
                except StoreUnavailable as exc:
                    emit(logging.WARNING, "join_failed", group=h.group, error=repr(exc))
                    await _sleep_unless(stopping, 1.0)
                    continue
                emit(
                    logging.INFO,
                    "joined",
                    group=h.group,
                    category=h.category,
                    member=self.member,
                    generation=membership.generation,
                    partitions=list(membership.partitions),
                )
                await self._apply(membership)
                await self._heartbeats()
            await self._drop_all(time.monotonic() + self.options.shutdown_timeout)
        finally:
            await cancel_and_wait(reader)
            await cancel_and_wait(follower)
            with contextlib.suppress(BaseException):
                await self._drop_all(None)
            with contextlib.suppress(Exception):
                await self.store.leave_group(h.group, h.category, self.member)
                emit(logging.INFO, "left", group=h.group, category=h.category, member=self.member)

    async def _heartbeats(self) -> None:
        """Heartbeat until stopping; return to rejoin when this member's lease was lost."""
        h = self.handler
        stopping = self.runtime.stopping
        while not stopping.is_set():
            beat = self._beat
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    _first(stopping.wait(), beat.wait()), self.options.heartbeat_every
                )
            if stopping.is_set():
                return
            self._beat = asyncio.Event()
            try:
                membership = await self.store.heartbeat(
                    h.group, h.category, self.member, self.options.lease
                )
            except StaleGeneration as exc:
                self.stats.stale_heartbeats += 1
                self.stats.rejoins += 1
                emit(
                    logging.WARNING,
                    "lease_lost",
                    group=h.group,
                    category=h.category,
                    member=self.member,
                    generation=self.generation,
                    current=exc.current,
                )
                # try to commit what finished: a fenced member's commit is refused
                await self._drop_all(None)
                return
            except StoreUnavailable as exc:
                emit(logging.WARNING, "heartbeat_failed", group=h.group, error=repr(exc))
                continue
            if membership.generation != self.generation:
                emit(
                    logging.INFO,
                    "rebalanced",
                    group=h.group,
                    category=h.category,
                    member=self.member,
                    generation=membership.generation,
                    partitions=list(membership.partitions),
                )
            await self._apply(membership)

    def wake_reader(self) -> None:
        self._reader_wake.set()

    async def _read(self) -> None:
        """One reader for every partition this member owns: pages of the category's log.

        Reading once for all partitions (instead of once per partition) keeps the
        number of queries per new event at one, whatever the partition count.
        Each run takes the events at or after its `next_position`; a run that
        starts late (a partition gained in a rebalance) pulls the read position
        back to its checkpoint, and the others skip what they already have.
        """
        store = self.store
        watch = store.head_watch()
        page = self.options.page_size
        categories = (self.handler.category,)
        count = store.partition_count
        sorter = _Sorter(count)
        behind = False
        while True:
            live = {p: r for p, r in self.runs.items() if r.reading}
            if not live:
                self._reader_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._reader_wake.wait(), 0.1)
                continue
            start = min(r.next_position for r in live.values())
            n = await self.credits.take(page)
            events: list[RecordedEvent] = []
            head: int | None = None
            try:
                if not behind:  # the head bounds the wait below if this read finds nothing
                    head = await store.last_position()
                events = await store.read_page(
                    start,
                    categories,
                    self.handler.types,
                    n,
                    # every partition: no filter to apply to each event
                    None if len(live) == count else tuple(live),
                )
            except StoreUnavailable as exc:
                emit(logging.WARNING, "read_failed", group=self.handler.group, error=repr(exc))
                await asyncio.sleep(0.5)
            except StoreClosed:
                return
            except Exception:  # a bug must not silently stop delivery: log, go on
                log.exception("tidelog consumer reader failed; retrying")
                await asyncio.sleep(1.0)
            finally:
                self.credits.give(n - _hand_over(sorter.sort(events, live)))
            # a full page: more is probably there, so the next read skips the head query
            behind = len(events) >= n
            self.caught_up = not behind
            if self.caught_up:
                for run in live.values():
                    if not run.outstanding:
                        run.on_caught_up()
            if events:
                last = events[-1].position
                for run in live.values():  # every live run has seen the log up to `last`
                    run.next_position = max(run.next_position, last + 1)
            elif head is not None:
                self._reader_wake.clear()
                await _first(watch.wait_beyond(head, store.poll_interval), self._reader_wake.wait())

    async def _follow_dlq(self) -> None:
        while True:
            await asyncio.sleep(self.options.dlq_poll_interval)
            try:
                await self.refresh_dlq()
            except (StoreUnavailable, StoreClosed):
                continue
            self.enqueue_settles()


class _Sorter:
    """Sorts a read's events out by partition, in log order.

    Each stream seen maps to its partition's bucket (its `append`): one lookup
    per event, where hashing the name (`partition_of`) would cost far more.
    The buckets live as long as the reader, so the mapping stays valid; each
    sort empties them.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.buckets: list[list[RecordedEvent]] = [[] for _ in range(count)]
        self.sinks: dict[str, Callable[[RecordedEvent], None]] = {}

    def sort(
        self, events: list[RecordedEvent], live: dict[int, _PartitionRun]
    ) -> dict[_PartitionRun, list[RecordedEvent]]:
        """Each live run's events of `events`: those it does not have yet.

        A run started after the others (a partition gained in a rebalance)
        pulled the read back to its checkpoint; the others skip what they
        already have.
        """
        sinks = self.sinks
        for event in events:
            try:
                sinks[event.stream](event)
            except KeyError:
                sink = self.buckets[partition_of(event.stream, self.count)].append
                if len(sinks) < _KNOWN_STREAMS:
                    sinks[event.stream] = sink
                sink(event)
        fetched: dict[_PartitionRun, list[RecordedEvent]] = {}
        for partition, bucket in enumerate(self.buckets):
            if not bucket:
                continue
            run = live.get(partition)  # None: a partition this read did not ask for
            if run is not None:
                taken = bucket.copy()
                if taken[0].position < run.next_position:
                    taken = [e for e in taken if e.position >= run.next_position]
                fetched[run] = taken
            bucket.clear()
        return fetched


def _hand_over(fetched: dict[_PartitionRun, list[RecordedEvent]]) -> int:
    """Give each run its events of a read, one call per run; return how many were taken.

    Per run, not per event: a page costs each run one `accept` and at most one
    new worker. A run revoked while the read was under way takes nothing.
    """
    taken = 0
    for run, events in fetched.items():
        if events and run.reading:
            run.accept(events)
            taken += len(events)
    return taken


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


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


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


class Runtime:
    """One `App.run`: the store, the shared limits and a consumer per handler."""

    def __init__(self, app: App, stop: asyncio.Event | None) -> None:
        from ._app import default_member

        self.app = app
        self.options = app.options
        self.member = app.member or default_member(app.name)
        self.stopping = stop or asyncio.Event()
        self.stats = Stats()
        self.running = _Limiter(self.options.concurrency)
        self.store: GroupEngine = None  # type: ignore[assignment]

    def request_stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        from tidelog._connect import connect

        app = self.app
        if not app.handlers:
            raise ValueError(f"app {app.name!r} has no handlers")
        owned = not isinstance(app.store, GroupEngine)
        if isinstance(app.store, GroupEngine):
            self.store = app.store
        else:
            self.store = await (connect(app.store) if app.store else connect())
        emit(logging.INFO, "worker_started", app=app.name, member=self.member)
        try:
            consumers = [_GroupConsumer(self, h) for h in app.handlers]
            await asyncio.gather(*(c.run() for c in consumers))
        finally:
            emit(logging.INFO, "worker_stopped", app=app.name, member=self.member)
            if owned:
                await self.store.close()
