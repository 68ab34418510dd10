"""Checkpoints: which fetched events of a partition finished, and the commits that record it.

The checkpoint of a partition is the position just below its lowest unfinished
event. It is committed every `commit_every` finished events, and otherwise at
most once per `commit_interval` (sooner when the partition caught up), never
per event: a commit is a durable write. After a crash everything above it is
redelivered, so delivery is at-least-once.

`commit_every` bounds the finished-but-uncommitted events of the whole group
consumer, not of each partition (#17): a member that owns four partitions
could otherwise hold 4 x 500 finished events uncommitted beside its
`max_in_flight` unfinished ones, and a SIGKILL made the group handle all of
them again. When the consumer's count reaches `commit_every`, every partition
with finished events commits (a commit round; the engines write concurrent
commits together), so what a killed member makes the group handle twice is at
most `max_in_flight + commit_every` plus what finished during that round.

A handler's appends ride on a commit (`Checkpoint.commit_with`): atomically
with the checkpoint and fenced by the generation. A commit refused with
`StaleGeneration` (this member was fenced: its lease ran out or the group
rebalanced) is never retried blindly: the group consumer heartbeats first, and
the commit is retried only with the new generation.

Two classes: `Committer` is the group consumer's side of every commit (who
commits, under which generation; shared by its partitions), `Checkpoint` one
partition's positions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from tidelog.engines.contract import GroupEngine
from tidelog.errors import NotSupported, StaleGeneration, StoreClosed, StoreUnavailable
from tidelog.model import AppendRequest, NewEvent, RecordedEvent

from ._options import RunnerOptions
from ._stats import Stats, emit

__all__ = ["Checkpoint", "Committer", "Fence"]


class Fence(Protocol):
    """What a commit needs of its group's membership: the generation that fences it."""

    @property
    def generation(self) -> int:
        """The generation of this member's current membership."""
        ...

    def request_heartbeat(self) -> None:
        """Heartbeat soon: a commit was refused, the membership may have changed."""

    async def await_membership(self, generation: int) -> None:
        """Wait until a heartbeat brought a membership newer than `generation`."""


@dataclass(eq=False)
class Committer:
    """The group consumer's side of every commit: who commits, fenced by which generation.

    Shared by the consumer's partitions, so an engine that refuses transactional
    commits (`NotSupported`) is found out once for all of them. Compared by
    identity (`eq=False`), as one consumer's committer is one object.
    """

    store: GroupEngine
    group: str
    category: str
    member: str
    stats: Stats
    fence: Fence
    commit_every: int = field(default=500, init=False)
    """`RunnerOptions.commit_every` (set by each `Checkpoint`: the same options)."""
    unsaved: int = field(default=0, init=False)
    """Finished events of all the consumer's partitions not yet committed: at
    `commit_every` a commit round starts (`finished`)."""
    round_due: bool = field(default=False, init=False)
    """A commit round was asked for and no commit finished since."""
    checkpoints: set[Checkpoint] = field(default_factory=set, init=False)
    """The consumer's live partitions (`Checkpoint` registers, `forget` removes)."""
    no_transactions: bool = field(default=False, init=False)
    """The engine refused a commit with appends: appends go alone (their ids are
    deterministic, so a redelivery writes nothing twice)."""

    async def commit(
        self,
        partition: int,
        position: int,
        generation: int,
        appends: Mapping[str, AppendRequest] | None = None,
    ) -> None:
        """Commit `partition` up to `position` (with `appends`) as member of `generation`."""
        await self.store.commit(
            self.group,
            self.category,
            partition,
            position,
            member=self.member,
            generation=generation,
            appends=appends,
        )
        self.stats.commits += 1

    def commit_round(self) -> None:
        """Enough of the consumer's finished events are uncommitted: commit every partition.

        Called from the per-event path only when `unsaved` reached
        `commit_every` and no round is pending, so its loop over the partitions
        runs once per round, not once per event.
        """
        self.round_due = True
        for checkpoint in self.checkpoints:
            if checkpoint.since_commit:
                checkpoint.round_asked = True
                checkpoint.progress.set()

    def forget(self, checkpoint: Checkpoint) -> None:
        """A partition run ended: its uncommitted events no longer count (they are redelivered)."""
        if checkpoint in self.checkpoints:
            self.checkpoints.discard(checkpoint)
            self.unsaved -= checkpoint.since_commit

    def refused(self, exc: StaleGeneration, partition: int, position: int) -> None:
        self.stats.refused_commits += 1
        emit(
            logging.WARNING,
            "commit_refused",
            group=exc.group,
            category=exc.category,
            member=exc.member,
            partition=partition,
            position=position,
            generation=exc.generation,
            current=exc.current,
        )


class Checkpoint:
    """One partition's progress: the positions taken and finished, and when to commit them.

    The partition run's hot path (`PartitionRun._work_streams`) updates
    `pending`, `done`, `since_commit` and `progress` itself, as `finish` does.
    """

    def __init__(self, committer: Committer, partition: int, options: RunnerOptions) -> None:
        self.committer = committer
        self.p = partition
        self.commit_every = options.commit_every
        self.commit_interval = options.commit_interval
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
        self.quiet_commit_at = -float("inf")
        """When a commit last came from the clock or from catching up (not from `commit_every`)."""
        self.catch_up_due = False
        self.round_asked = False
        """A commit round (`Committer.commit_round`) asked this partition to commit.

        Such a commit is not a quiet one: counting it as one made the partition's
        catch-up commit, moments later, wait for `commit_interval` (#17: a
        quick `group_throughput` of 0.1 s of handling took 0.3 s to commit)."""
        self.progress = asyncio.Event()
        """Set when a commit is due before the next tick of `run`."""
        committer.checkpoints.add(self)
        committer.commit_every = options.commit_every

    def start(self, position: int) -> None:
        """Begin at the committed checkpoint `position`."""
        self.committed = self.fetched_upto = position

    def taken(self, events: list[RecordedEvent]) -> None:
        """`events` (in log order) were taken from the reader: each is unfinished now."""
        self.pending.extend([e.position for e in events])
        self.fetched_upto = events[-1].position

    @property
    def outstanding(self) -> int:
        """Events taken and not finished."""
        return len(self.pending) - len(self.done)

    def finish(self, position: int, caught_up: bool) -> None:
        """An event is done with; `caught_up`: the reader found nothing more to read."""
        pending = self.pending
        if pending[0] == position:
            pending.popleft()  # finished in log order, as most are: `done` stays out of it
        else:
            self.done.add(position)
        self.since_commit += 1
        committer = self.committer
        committer.unsaved += 1
        if self.since_commit >= self.commit_every:
            self.progress.set()
        elif committer.unsaved >= committer.commit_every and not committer.round_due:
            committer.commit_round()
        elif caught_up and not self.outstanding:
            self.on_caught_up()

    def on_caught_up(self) -> None:
        """Nothing in flight and the reader found nothing more: commit now, not at the next tick.

        A consumer that caught up then shows no lag and redelivers nothing after
        a restart. It shares `commit_interval` with the clock-driven commits
        (`run`), so a trickle of events still costs at most one commit per
        interval.
        """
        if (
            self.fetched_upto > self.committed
            and time.monotonic() - self.quiet_commit_at >= self.commit_interval
        ):
            self.catch_up_due = True
            self.progress.set()

    def committable(self) -> int:
        pending, done = self.pending, self.done
        while pending and pending[0] in done:
            done.discard(pending.popleft())
        return pending[0] - 1 if pending else self.fetched_upto

    async def commit_with(self, appends: dict[str, AppendRequest]) -> None:
        """Commit appends with this partition's checkpoint; fenced, or idempotent without tx.

        A handler's scheduled appends (`ctx.append(..., deliver_after=...)`) are
        scheduled first, each on its own: a schedule is not part of a
        transactional commit. Their ids are deterministic, so if the commit then
        fails and the handling is retried, scheduling them again keeps one.
        """
        committer = self.committer
        appends = await schedule_later(committer.store, appends)
        if not appends:
            return  # only scheduled: the checkpoint moves as after a handling without appends
        fence = committer.fence
        while True:
            if committer.no_transactions:
                await committer.store.append_many(appends)
                return
            generation = fence.generation
            position = max(self.committable(), 0)
            try:
                await committer.commit(self.p, position, generation, appends)
                self.committed = max(self.committed, position)
                return
            except NotSupported:
                committer.no_transactions = True
            except StaleGeneration as exc:
                committer.refused(exc, self.p, position)
                await fence.await_membership(generation)

    async def commit(self, final: bool = False) -> bool:
        """Commit the partition's progress; False if the engine refused (fenced)."""
        position = self.committable()
        if position <= self.committed:
            return True
        committer = self.committer
        counted = self.since_commit  # events finishing during the commit count for the next
        try:
            await committer.commit(self.p, position, committer.fence.generation)
            self.committed = position
            self.since_commit -= counted
            if self in committer.checkpoints:  # a forgotten run's count was taken back
                committer.unsaved -= counted
            committer.round_due = False
        except StaleGeneration as exc:
            committer.refused(exc, self.p, position)
            if not final:
                committer.fence.request_heartbeat()
            return False
        except (StoreUnavailable, StoreClosed) as exc:
            emit(logging.WARNING, "commit_failed", partition=self.p, error=repr(exc))
        return True

    async def run(self) -> None:
        """Commit every `commit_every` finished events; else once per `commit_interval` at most.

        The latter happen `commit_interval` after the previous commit, or as soon
        as the partition caught up (`on_caught_up`) if the previous one of them
        is that long ago.
        """
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), self.commit_interval)
            self.progress.clear()
            self.catch_up_due = False
            quiet = self.since_commit < self.commit_every and not self.round_asked
            self.round_asked = False  # a round asking during the commit counts for the next
            before = self.committed
            await self.commit()
            if quiet and self.committed != before:
                self.quiet_commit_at = time.monotonic()
            if self.since_commit < self.commit_every and not self.catch_up_due:
                # set by events that finished during the commit: not due yet
                self.progress.clear()


async def schedule_later(
    store: GroupEngine, appends: dict[str, AppendRequest]
) -> dict[str, AppendRequest]:
    """Schedule the events of `appends` that carry `deliver_at` (one scheduled append per
    stream and due time, with the stream's expected version); return the rest.

    Most commits schedule nothing: those are returned as they are after one look."""
    if not any(e.deliver_at is not None for r in appends.values() for e in r.events):
        return appends
    now: dict[str, AppendRequest] = {}
    for stream, request in appends.items():
        later: dict[object, list[NewEvent]] = {}
        rest: list[NewEvent] = []
        for event in request.events:
            if event.deliver_at is None:
                rest.append(event)
            else:
                later.setdefault(event.deliver_at, []).append(event)
        for events in later.values():
            await store.append(stream, events, request.expected_version)
        if rest:
            now[stream] = request if not later else AppendRequest(rest, request.expected_version)
    return now
