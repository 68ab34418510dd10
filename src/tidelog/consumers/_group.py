"""The group consumer: one handler's membership in its group, and the reader that feeds it.

- A consumer joins its (group, category) and heartbeats; each membership it
  gets back names its partitions and the generation. Partitions it gained are
  started from their committed checkpoint (a `PartitionRun` each); partitions
  it lost are abandoned.
- One reader per consumer reads the category in pages for all owned
  partitions (`store.read_page(..., partitions=owned)`) and hands each event
  to its partition's run, taking one credit per event from the consumer's
  `Credits`: at `max_in_flight` unfinished events reading pauses, so a burst
  of a million events never sits in memory.
- Partitions move cooperatively: the consumer joins with `cooperative=True`,
  so a partition the assignment gives another member stays this member's
  (in its membership's `revoking`) until it hands it over (`_hand_over`): its
  run abandons the events no handler has started, lets those being handled
  finish, commits, and the next heartbeat releases the partition. Only then
  does the new owner get it (it waits with the partition in its `awaiting`,
  heartbeating often), so a graceful join or leave handles no event twice.
- A commit refused with `StaleGeneration` makes the consumer heartbeat at once
  (`request_heartbeat`, `await_membership`); if its lease was gone it drops
  every partition and rejoins.
- The group's DLQ state is read here, once for all partitions
  (`refresh_dlq`), and followed for retries and drops requested elsewhere.

The consumer is what its runs know as `Group` and its checkpoints as `Fence`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from tidelog import codec
from tidelog.engines.contract import GroupEngine
from tidelog.errors import StaleGeneration, StoreClosed, StoreUnavailable
from tidelog.model import Membership, RecordedEvent, partition_of

from ._checkpoints import Checkpoint, Committer
from ._context import DeliveryScope
from ._delivery import Shared
from ._dlq import DlqState, ParkedStatus, load_state
from ._flow import Credits, Limiter, cancel_and_wait, first, sleep_unless
from ._handler import Handler
from ._health import Health
from ._options import RunnerOptions
from ._partition import PartitionRun
from ._stats import Stats, emit, log

__all__ = ["GroupConsumer", "Process"]

_KNOWN_STREAMS = 100_000
"""How many streams' partitions a reader remembers (a few MB at most)."""


class Process(Protocol):
    """What every group consumer of one process shares (the runtime is one)."""

    @property
    def store(self) -> GroupEngine: ...
    @property
    def member(self) -> str: ...
    @property
    def options(self) -> RunnerOptions: ...
    @property
    def registry(self) -> codec.EventRegistry | None: ...
    @property
    def stats(self) -> Stats: ...
    @property
    def running(self) -> Limiter: ...
    @property
    def stopping(self) -> asyncio.Event: ...
    @property
    def health(self) -> Health: ...


class GroupConsumer:
    """One handler's membership in its group: joins, heartbeats, starts and stops partitions."""

    def __init__(self, process: Process, handler: Handler) -> None:
        self.stopping = process.stopping
        self.store = process.store
        self.handler = handler
        self.member = process.member
        self.options = process.options
        self.registry = process.registry
        self.stats = process.stats
        self.health = process.health.consumer(handler.group, handler.category)
        self.credits = Credits(self.options.max_in_flight, self.stats)
        self.shared = Shared(handler, self.stats, process.running, self.credits)
        self.committer = Committer(
            self.store, handler.group, handler.category, self.member, self.stats, self
        )
        self.generation = -1
        self.runs: dict[int, PartitionRun] = {}
        self.handing_over: dict[int, asyncio.Task[None]] = {}
        """Partitions being handed over: their run stops (`_hand_over`)."""
        self.released: set[int] = set()
        """Partitions handed over, to release with the next heartbeat (until it is
        acknowledged: they are no longer in the membership's `revoking`)."""
        self.awaiting = False
        """The last membership named partitions this member waits for."""
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
            if self.stopping.is_set() and self.generation == generation:
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

    def enqueue_settles(self, run: PartitionRun | None = None) -> None:
        """Hand each stream whose DLQ head awaits a retry or release to its partition's run."""
        count = self.store.partition_count
        for stream in self.dlq.open_streams():
            head = self.dlq.head(stream)
            if head is None or head.status is ParkedStatus.PARKED:
                continue
            target = self.runs.get(partition_of(stream, count))
            if target is not None and (run is None or target is run):
                target.enqueue_settle(stream)

    def run_started(self, run: PartitionRun) -> None:
        """`run` loaded its checkpoint: hand it its DLQ retries, and read for it."""
        self.enqueue_settles(run)
        self.wake_reader()

    def _new_run(self, partition: int) -> PartitionRun:
        """A run of `partition`, claimed afresh: from its committed checkpoint on."""
        h = self.handler
        self.claims += 1
        scope = DeliveryScope(
            self.store,
            h.group,
            h.category,
            h.name,
            self.member,
            partition,
            self.claims,
            self.registry,
        )
        checkpoint = Checkpoint(self.committer, partition, self.options)
        return PartitionRun(self, self.shared, scope, checkpoint)

    async def _apply(self, membership: Membership) -> None:
        self.generation = membership.generation
        revoking = set(membership.revoking)
        owned = set(membership.partitions) - revoking
        self.released &= revoking
        self.awaiting = bool(membership.awaiting)
        for p in sorted(set(self.runs) - owned - revoking):
            run = self.runs.pop(p)  # taken away without a hand-over (lease lost, deadline)
            self.stats.partitions_revoked += 1
            emit(logging.INFO, "partition_revoked", group=self.handler.group, partition=p)
            await run.stop(None)
        for p in sorted(revoking - self.released):
            if p in self.handing_over:
                continue
            moving = self.runs.pop(p) if p in self.runs else None
            self.stats.partitions_revoked += 1
            self.handing_over[p] = asyncio.create_task(
                self._hand_over(p, moving), name=f"hand-over-{p}"
            )
        for p in sorted(owned - set(self.handing_over)):
            current = self.runs.get(p)
            if current is None or not current.alive:
                if current is not None:
                    await current.stop(None)
                fresh = self.runs[p] = self._new_run(p)
                fresh.start()
        self._epoch += 1
        self._epoch_changed.set()
        self._epoch_changed = asyncio.Event()

    async def _hand_over(self, partition: int, run: PartitionRun | None) -> None:
        """Give `partition` up for its new owner: stop its run without draining (events
        being handled finish, within half a lease so the store's deadline of a lease is
        not reached), commit, then release it at once with a heartbeat."""
        try:
            if run is not None:
                await run.stop(time.monotonic() + self.options.lease / 2, drain=False)
        finally:
            del self.handing_over[partition]
        emit(logging.INFO, "partition_handed_over", group=self.handler.group, partition=partition)
        self.released.add(partition)
        self._beat.set()

    async def _drop_all(self, deadline: float | None) -> None:
        runs = list(self.runs.values())
        self.runs.clear()
        await asyncio.gather(*(r.stop(deadline) for r in runs))
        # hand-overs under way end by themselves (bounded): a cancelled one could
        # leave its run's workers going
        await asyncio.gather(*self.handing_over.values(), return_exceptions=True)
        self.released.clear()

    async def run(self) -> None:
        h = self.handler
        stopping = self.stopping
        follower = asyncio.create_task(self._follow_dlq())
        reader = asyncio.create_task(self._read(), name=f"read-{h.group}")
        try:
            while not stopping.is_set():
                try:
                    membership = await self.store.join_group(
                        h.group, h.category, self.member, self.options.lease, cooperative=True
                    )
                    await self.refresh_dlq()
                except StoreUnavailable as exc:
                    self.health.on_store_error(exc)
                    emit(logging.WARNING, "join_failed", group=h.group, error=repr(exc))
                    await sleep_unless(stopping, 1.0)
                    continue
                self._emit_membership("joined", membership)
                await self._apply(membership)
                self.health.on_joined()
                await self._heartbeats()
            await self._drop_all(time.monotonic() + self.options.shutdown_timeout)
        finally:
            self.health.on_left()
            await cancel_and_wait(reader)
            await cancel_and_wait(follower)
            with contextlib.suppress(BaseException):
                await self._drop_all(None)
            with contextlib.suppress(Exception):
                await self.store.leave_group(h.group, h.category, self.member)
                self._emit(logging.INFO, "left")

    async def _heartbeats(self) -> None:
        """Heartbeat until stopping; return to rejoin when this member's lease was lost."""
        h = self.handler
        stopping = self.stopping
        every = self.options.heartbeat_every
        while not stopping.is_set():
            beat = self._beat
            # a hand-over under way is followed closely: it holds up a partition
            busy = self.awaiting or self.released or self.handing_over
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    first(stopping.wait(), beat.wait()), max(every / 10, 0.02) if busy else every
                )
            if stopping.is_set():
                return
            self._beat = asyncio.Event()
            release = sorted(self.released)
            try:
                membership = await self.store.heartbeat(
                    h.group, h.category, self.member, self.options.lease, release=release
                )
            except StaleGeneration as exc:
                self.health.on_fenced()
                self.stats.stale_heartbeats += 1
                self.stats.rejoins += 1
                self._emit(
                    logging.WARNING, "lease_lost", generation=self.generation, current=exc.current
                )
                # try to commit what finished: a fenced member's commit is refused
                await self._drop_all(None)
                return
            except StoreUnavailable as exc:
                self.health.on_store_error(exc)
                emit(logging.WARNING, "heartbeat_failed", group=h.group, error=repr(exc))
                continue
            self.health.on_store_ok()
            if membership.generation != self.generation:
                self._emit_membership("rebalanced", membership)
            await self._apply(membership)

    def _emit(self, level: int, event: str, **fields: Any) -> None:
        """A log line of this member in its group: group, category and member, then `fields`."""
        h = self.handler
        emit(level, event, group=h.group, category=h.category, member=self.member, **fields)

    def _emit_membership(self, event: str, membership: Membership) -> None:
        self._emit(
            logging.INFO,
            event,
            generation=membership.generation,
            partitions=list(membership.partitions),
        )

    # ---------------------------------------------------------------- reading

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
                self.health.on_store_ok()
            except StoreUnavailable as exc:
                self.health.on_store_error(exc)
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
                    run.reader_caught_up()
            if events:
                last = events[-1].position
                for run in live.values():  # every live run has seen the log up to `last`
                    run.next_position = max(run.next_position, last + 1)
            elif head is not None:
                self._reader_wake.clear()
                await first(watch.wait_beyond(head, store.poll_interval), self._reader_wake.wait())

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
        self, events: list[RecordedEvent], live: dict[int, PartitionRun]
    ) -> dict[PartitionRun, list[RecordedEvent]]:
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
        fetched: dict[PartitionRun, list[RecordedEvent]] = {}
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


def _hand_over(fetched: dict[PartitionRun, list[RecordedEvent]]) -> int:
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
