"""The partition run: delivers one partition this member owns, from its checkpoint on.

- The group consumer's reader hands each run its events of a page, in log
  order (`accept`); their credits (`Credits`) are the run's until each event
  finishes.
- The run hands them to a few long-lived workers (`_work_streams`); a stream
  is held by one worker at a time, so per-stream order holds while other
  streams flow in parallel. A handler that returns without waiting costs no
  task switch; one that waits holds up only its own stream, as a spare worker
  takes the rest (handler calls at once bounded by `concurrency` over all
  partitions, `Limiter`).
- What becomes of an event (the DLQ gate, retries with backoff, parking) is
  its `Delivery`'s (`_delivery`): the run decides which event goes when.
- What finished moves the partition's `Checkpoint`, which commits it.

A run knows its group consumer only through `Group` (the live membership: the
generation, the DLQ state, whether the reader caught up, and two calls) and
`Shared` (what every run of the consumer shares): all it needs of the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import ClassVar, Protocol

from tidelog.errors import StaleGeneration, StoreClosed, StoreUnavailable
from tidelog.model import RecordedEvent

from ._checkpoints import Checkpoint
from ._context import Context, DeliveryScope
from ._delivery import NOT_THE_EVENTS_FAULT, Delivery, DeliveryGroup, PartitionPart, Shared
from ._flow import cancel_and_wait
from ._stats import emit, log

__all__ = ["Group", "PartitionRun"]


class Group(DeliveryGroup, Protocol):
    """What a partition run asks of its group consumer while it runs."""

    @property
    def caught_up(self) -> bool:
        """The reader's last read found less than it asked for: the log ends about here."""
        ...

    async def still_owner(self, partition: int) -> bool:
        """Heartbeat now (while stopping); True if `partition` is still this member's."""
        ...

    def run_started(self, run: PartitionRun) -> None:
        """`run` loaded its checkpoint: hand it its DLQ retries, and read for it."""


class _Settle:
    """A queue item: settle the DLQ head of `stream` (a retry or a held event)."""

    __slots__ = ("stream",)

    def __init__(self, stream: str) -> None:
        self.stream = stream


_Item = RecordedEvent | _Settle

_new_context = object.__new__
"""Makes a `Context` without `__init__`: see `Context._deliver`."""


class PartitionRun(PartitionPart):
    """Delivers one partition owned by this member, from its checkpoint on."""

    group: Group

    inline: ClassVar[bool] = True
    """Handle the common case written out in `_work_streams`; False sends every event
    through `_deliver`, the plain path it stands for (the test of their equality
    runs both)."""

    def __init__(
        self, group: Group, shared: Shared, scope: DeliveryScope, checkpoint: Checkpoint
    ) -> None:
        super().__init__(group, shared, scope, checkpoint)
        self.credits = shared.credits
        self.p = scope.partition
        self.by_stream = self.handler.options.batch is None
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
        self.max_workers = self.running.limit if self.by_stream else 1
        self.delivery = Delivery(group, shared, scope, checkpoint)
        self.settle_queued: set[str] = set()
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

    async def stop(self, deadline: float | None, drain: bool = True) -> None:
        """Stop reading; let events finish until `deadline` (None: abandon), commit.

        With `drain`, the workers go on through every event already fetched (a
        member that leaves: nothing it took is left over). Without it, events no
        handler has started yet are abandoned at once and only those being handled
        finish (a partition handed over to another member: its new owner handles
        the rest from the checkpoint committed here, and the hand-over is quick).
        """
        self.stopping = True
        if self.idle is not None:
            self.idle.set_result(None)  # the waiting worker ends: nothing more comes
            self.idle = None
        if not drain:
            self._abandon_queued()
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
        self.credits.give(self.outstanding)  # abandoned: `pending` keeps them for the commit
        if self.committer is not None:
            await cancel_and_wait(self.committer)
        if (
            self.started.is_set()
            and not await self.checkpoint.commit(final=True)
            and deadline is not None
            and await self.group.still_owner(self.p)
        ):
            # another member left meanwhile (a rolling shutdown): commit with the
            # generation that the heartbeat just returned
            await self.checkpoint.commit(final=True)
        self.checkpoint.committer.forget(self.checkpoint)

    def _abandon_queued(self) -> None:
        """Drop the events no handler has started: those ready and those set aside
        behind a stream being handled. They stay unfinished (in `pending`), so the
        checkpoint stops below the first of them."""
        self.ready.clear()
        self.settle_queued.clear()
        for stream in self.held:
            self.held[stream] = None

    # ---------------------------------------------------------------- reading

    async def _start(self) -> None:
        """Load the checkpoint (and the DLQ); then the consumer's reader feeds this run."""
        scope = self.scope
        try:
            checkpoints = await scope.store.checkpoints(scope.group, scope.category)
            # after the checkpoint: every DLQ entry the previous owner committed with
            # (or before) that checkpoint is seen, so its parked and held events are
            # not handled again; its later writes are fenced
            await self.group.refresh_dlq()
        except (StoreUnavailable, StoreClosed) as exc:
            self.failed = exc
            return
        start = checkpoints.get(self.p, 0)
        self.checkpoint.start(start)
        self.next_position = start + 1
        self.started.set()
        self.committer = asyncio.create_task(self.checkpoint.run(), name=f"commit-{self.p}")
        emit(
            logging.INFO,
            "partition_started",
            group=scope.group,
            category=scope.category,
            partition=self.p,
            checkpoint=start,
            member=scope.member,
        )
        self.stats.partitions_started += 1
        self.group.run_started(self)

    @property
    def outstanding(self) -> int:
        """Events taken from the reader and not finished: their credits are this run's."""
        return self.checkpoint.outstanding

    def accept(self, events: list[RecordedEvent]) -> None:
        """Take fetched events in log order (their credits are this run's until each finishes)."""
        self.checkpoint.taken(events)
        self.next_position = events[-1].position + 1
        self.ready.extend(events)
        self._staff()

    def reader_caught_up(self) -> None:
        """The reader found nothing more: with nothing in flight, commit soon."""
        if not self.outstanding:
            self.checkpoint.on_caught_up()

    def enqueue_settle(self, stream: str) -> None:
        if stream not in self.settle_queued and self.reading:
            self.settle_queued.add(stream)
            self.ready.append(_Settle(stream))
            self._staff()

    def _finished(self, position: int) -> None:
        """An event is done with (handled, parked, held or skipped): its credit goes back."""
        credits = self.credits
        credits.used -= 1  # `credits.give(1)`, inline: this runs once per event
        if credits.waiting:
            credits.freed.set()
        self.checkpoint.finish(position, self.group.caught_up)

    # ---------------------------------------------------------------- workers

    def _staff(self) -> None:
        """Start a worker if items are ready and every worker is inside a handling.

        Workers are loops over the ready items, not a task per stream or per
        event: a handler that returns without waiting costs no task switch, so
        a page of events is handled in one pass of one worker. A worker that
        takes an item when no spare is left has this called as soon as it
        yields (`_staff_soon`), so a spare one is there whenever a handler does
        wait (I/O): it holds up only its own stream. At most `concurrency`
        workers per partition (one in batch mode); `Limiter` bounds the
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

    async def _work_streams(self) -> None:  # noqa: PLR0912, PLR0915 (the per-event hot path, inlined; test_consumers_hot_path pins it to _deliver)
        """Handle items until none is left for this worker; per stream one worker at a time.

        This loop runs once per event, and with a handler that returns at once a
        call of ours costs a good share of a delivery: so the common path is
        written out here. What it does per event is `_deliver`: the first
        attempt runs as in `Delivery.handle`, a failing one goes on in `retry`; a
        finished event is accounted for as in `_finished`. The next item is
        taken as in `_take` when it is first in line and nobody holds its stream.

        A handler slot (`Limiter`) is kept from one handling to the next (in
        between no other task runs): it is given back when someone waits for
        one (FIFO), before anything that may wait on something else than a
        handler (the DLQ, a commit, a retry), and when the worker stops.
        """
        group, checkpoint = self.group, self.checkpoint
        delivery = self.delivery
        running, dlq, stats, scope, direct, h = (
            self.running,
            group.dlq,
            self.stats,
            self.scope,
            delivery.direct,
            self.handler,
        )
        # traced: every event the plain way, whose `Delivery.handle` opens the process span
        # (decided per run of work: a provider set meanwhile counts from the next one).
        # Imported here, not with `import tidelog`, like `Delivery.process_span`.
        from tidelog.telemetry import tracing

        new_context, inline = _new_context, self.inline and not tracing()
        ready, held, waiters = self.ready, self.held, running.waiters
        credits, settle_queued = self.credits, self.settle_queued
        breaker = delivery.breaker
        pending, done, progress = checkpoint.pending, checkpoint.done, checkpoint.progress
        commit_every = checkpoint.commit_every
        committer = checkpoint.committer
        slot = False
        item = self._take()
        try:
            while item is not None:
                if slot and (waiters or settle_queued or dlq.entries or not breaker.closed):
                    running.release()
                    slot = False
                try:
                    if settle_queued and type(item) is _Settle:
                        await self._settle(item.stream)
                    elif not inline or not breaker.closed:  # paused: `handle` waits
                        # a slot is kept only by the inline path: none is held here
                        await self._deliver(item)  # type: ignore[arg-type]
                    else:
                        # a `_Settle` is in line only while its stream is in `settle_queued`
                        event: RecordedEvent = item  # type: ignore[assignment]
                        # an empty DLQ (the usual case) can neither hold nor skip an event
                        if not dlq.entries or await delivery.gate(event):
                            events = (event,)
                            # `Context._deliver(scope, group.generation, 1, events)`, inline
                            ctx = new_context(Context)
                            ctx._scope = scope
                            ctx.generation = group.generation
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
                                    await h.invoke(events, ctx, scope.registry)
                                if ctx._appends:
                                    running.release()
                                    slot = False
                                    await checkpoint.commit_with(ctx._requests())
                            except NOT_THE_EVENTS_FAULT:
                                raise
                            except Exception as exc:
                                if slot:
                                    running.release()  # each retry takes one
                                    slot = False
                                await delivery.retry(event, exc)
                            else:
                                stats.handled += 1
                                stats.events_handled += 1
                                if breaker.streams or not breaker.closed:
                                    breaker.succeeded()
                        # finished (handled, parked, held or skipped): `_finished`, inline
                        position = event.position
                        if pending[0] == position:
                            pending.popleft()
                        else:
                            done.add(position)
                        credits.used -= 1
                        if credits.waiting:
                            credits.freed.set()
                        checkpoint.since_commit += 1
                        committer.unsaved += 1
                        if checkpoint.since_commit >= commit_every:
                            progress.set()
                        elif committer.unsaved >= commit_every and not committer.round_due:
                            committer.commit_round()
                        elif group.caught_up and not checkpoint.outstanding:
                            checkpoint.on_caught_up()
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
        size = self.handler.options.batch or 1
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
                await self.delivery.batch(batch)
            except StoreUnavailable as exc:
                ready.extendleft(reversed(batch))
                await self._store_unavailable(exc)
                continue
            for e in batch:
                self._finished(e.position)

    # ---------------------------------------------------------------- handling

    async def _deliver(self, event: RecordedEvent) -> None:
        """One event, the plain way: what `_work_streams` does for it, written out there.

        Past the DLQ (`Delivery.gate`), through the handler with its retries
        (`Delivery.handle`), parked if it keeps failing, then finished.
        """
        delivery = self.delivery
        if await delivery.gate(event):
            error, attempts = await delivery.handle((event,))
            if error is not None:
                await delivery.park(event, error, attempts, 0)
        self._finished(event.position)

    async def _settle(self, stream: str) -> None:
        """Run the DLQ head of `stream` through the handler while it is a retry or held."""
        self.settle_queued.discard(stream)
        await self.delivery.settle(stream)

    async def _store_unavailable(self, exc: StoreUnavailable) -> None:
        """Writing the DLQ or a handler's effects failed: wait, then the caller tries again."""
        emit(logging.WARNING, "store_unavailable", partition=self.p, error=repr(exc))
        await asyncio.sleep(0.5)
