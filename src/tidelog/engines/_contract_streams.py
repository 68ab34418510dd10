"""The contract's first layer: streams, and the values a write is made of.

Split from `tidelog.engines.contract` (which re-exports every name here) only
to keep modules short: read the contract there; this is its first part.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final, NamedTuple, Self
from uuid import UUID

import msgspec

from tidelog.engines._kit.checks import (
    LogFilter,
    prepare_append,
    prepare_append_many,
    prepare_read_stream,
)
from tidelog.engines._kit.scheduling import Scheduler, prepare_schedule
from tidelog.errors import InvalidInput, NotSupported, StoreClosed
from tidelog.model import (
    ANY,
    AppendRequest,
    AppendResult,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    ScheduledEvent,
    ScheduledResult,
    StreamInfo,
)

__all__ = ["Checked", "Checkpoint", "StreamEngine", "Write"]


_NO_FILTER: Final = LogFilter(None, None, None)


class Checkpoint(NamedTuple):
    """A consumer-group checkpoint to commit, with the fence it must pass."""

    group: str
    category: str
    partition: int
    position: int
    member: str
    generation: int


Checked = Mapping[str, tuple[tuple[NewEvent, ...], ExpectedVersion]]
"""Appends after their checks: stream name -> (events, expected version)."""


class Write(msgspec.Struct, frozen=True):
    """One checked write, the single value an engine's write hook receives.

    - `appends`: the streams to append to, each with its events and expected
      version, all checked (names, events, versions, no repeated ids); empty
      for a commit without appends;
    - `checkpoint`: the checkpoint of a `commit`, or None for an append. The
      engine fences it (`GroupState.check`) before anything else, in the same
      transaction that writes it and the appends;
    - `fence_only`: fence `checkpoint` and write nothing. The contract sends
      this when a commit's appends failed their checks or its position is beyond
      the head of the log, so that a stale member learns it is stale before it
      learns its input was bad.

    Everything in one `Write` is durable together or not at all. A frozen
    msgspec Struct: one is made per append, and it is built several times faster
    than a frozen dataclass (a few percent of a small append).
    """

    appends: Checked
    checkpoint: Checkpoint | None = None
    fence_only: bool = False

    @property
    def weight(self) -> int:
        """Events to write, plus one for a checkpoint: what batching writers count."""
        count = 0 if self.checkpoint is None else 1
        for events, _ in self.appends.values():
            count += len(events)
        return count


class StreamEngine(abc.ABC):
    """Layer 1: streams.

    Versions are 0-based within a stream; positions are 1-based in the log.
    """

    name: str = "engine"

    _closed: bool = False

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def append(
        self,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
        *,
        deliver_at: datetime | None = None,
        deliver_after: timedelta | None = None,
    ) -> AppendResult:
        """Append `events` to `stream` atomically if its version satisfies `expected_version`.

        Scheduled: with `deliver_at` (a timezone-aware time), `deliver_after`
        (a delay) or events that carry `deliver_at`, the events are stored as
        pending instead and the call returns a `ScheduledResult` (version and
        position -1) once they are durable; at their time the store's scheduler
        appends them here, checking `expected_version` then (see
        `docs/scheduling.md`). Every event of one call is due at the same time.

        Returns the version and position of the last event written. If every
        event id is already stored in this stream, nothing is written and the
        original result (of the last of those events) is returned, even when
        `expected_version` no longer matches: that is an idempotent retry. A mix
        of stored and new ids, or ids stored in another stream, raises
        `DuplicateEventId`. Raises `WrongExpectedVersion`, `StreamDeleted`.
        Returns only once the events are durable.
        """
        self._check_open()
        if not self._wrote:
            self._first_write()
        name, checked, expected = prepare_append(stream, events, expected_version)
        rows = prepare_schedule(name, checked, expected, deliver_at, deliver_after)
        if rows is not None:
            return await self._schedule_append(name, rows)
        return (await self._apply_write(Write({name: (checked, expected)})))[name]

    async def append_many(self, requests: Mapping[str, AppendRequest]) -> dict[str, AppendResult]:
        """Append to several streams in one atomic commit: all or nothing."""
        self._check_open()
        if not self._wrote:
            self._first_write()
        return await self._apply_write(Write(prepare_append_many(requests)))

    @abc.abstractmethod
    async def _apply_write(self, write: Write) -> dict[str, AppendResult]:
        """The engine's one write hook: make `write` durable, atomically, or raise.

        `append`, `append_many` and `commit` check the store is open and every
        argument before they call it, so `write` holds only valid, named values
        (see `Write`). It returns the result of each stream appended to, and only
        once the write is durable. A wrapper store (`ValidatingStore`) overrides
        this hook alone and inherits the front ends.
        """

    def read_stream(
        self,
        stream: str,
        from_version: int | None = None,
        backwards: bool = False,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Events of one stream from `from_version` (inclusive), in version order.

        Without `from_version` a read starts where its direction begins: a
        forwards read at the first event, a backwards read at the last, so
        `read_stream(s, backwards=True, limit=1)` is the latest event (as in
        KurrentDB and the eventsourcing library). An explicit `from_version`
        is where the read starts, in either direction; backwards, -1 also means
        "from the end" and a version past the end starts at the last event. A
        stream with no events yields nothing; a deleted one raises
        `StreamDeleted`.

        The default is resolved here, once, so engines, the HTTP route and the
        CLI agree: an engine's `_read_stream` always gets a start, -1 for the
        end. The arguments are checked here, when the call is made, and the
        engine's `_read_stream` does the reading: an iterator that re-yielded
        the engine's events would cost a step per event on every replay.
        """
        self._check_open()
        start = (-1 if backwards else 0) if from_version is None else from_version
        name = prepare_read_stream(stream, start, backwards, limit)
        if self._retention_idle():
            return self._read_stream(name, start, backwards, limit)
        return self._read_stream_retained(name, start, backwards, limit)

    def _retention_idle(self) -> bool:
        """True when reads may skip retention (no rule is set): the reads' fast path.
        A store without retention (this layer alone) always is."""
        return True

    _wrote: bool = False

    def _first_write(self) -> None:
        """Called at this process's first append: `GroupEngine` looks for retention
        rules then, so that a process that only writes runs a scavenger too."""
        self._wrote = True

    def _read_stream_retained(
        self, stream: str, from_version: int, backwards: bool, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        """`read_stream` under the retention rules (`GroupEngine` applies them)."""
        return self._read_stream(stream, from_version, backwards, limit)

    @abc.abstractmethod
    def _read_stream(
        self, stream: str, from_version: int, backwards: bool, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        """The engine's read of one stream; `read_stream` checked the arguments.

        `from_version` is always given: -1 (backwards only) means from the end.
        """

    @abc.abstractmethod
    async def delete_stream(self, stream: str, expected_version: ExpectedVersion = ANY) -> None:
        """Tombstone a stream: later reads raise `StreamDeleted`, appends are refused.

        Its events stay in the global log, which is immutable.
        """

    @abc.abstractmethod
    def list_streams(self, category: str | None = None) -> AsyncIterator[StreamInfo]:
        """Every stream (optionally of one category), in name order."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release every resource; later calls raise `StoreClosed`. Idempotent."""

    # ------------------------------------------------------------ scheduled delivery

    _scheduler: Scheduler | None = None
    max_write_events: int | None = None
    """Events one all-or-nothing write can hold (None: no limit of the engine's own).
    The scheduler splits the appends it joins into one `append_many` to fit (NATS:
    an atomic batch holds 1,000 messages, two per event)."""

    @property
    def supports_scheduling(self) -> bool:
        """Whether this store keeps scheduled events (else they raise `NotSupported`)."""
        return type(self)._take_due is not StreamEngine._take_due

    async def _schedule_append(self, stream: str, rows: list[ScheduledEvent]) -> ScheduledResult:
        """Store `rows` as pending, then make sure this process delivers them."""
        await self._schedule(rows)
        self.start_scheduler().wake()
        return ScheduledResult(
            -1, -1, stream=stream, due_at=rows[0].due_at, ids=tuple(r.id for r in rows)
        )

    def start_scheduler(self) -> Scheduler:
        """Run this store's scheduler in this process (idempotent); returns it.

        A store starts it by itself when it schedules an event; a process that
        only serves a store (the server, `tidelog worker`) calls this so that
        events scheduled by other processes are delivered too. Several
        processes may run one on the same store: each event is delivered once.
        Stopped by `close()`. Raises `NotSupported` on an engine without scheduling.
        """
        self._check_open()
        if not self.supports_scheduling:
            raise self._schedule_refused()
        if self._scheduler is None:
            self._scheduler = Scheduler(self)
        self._scheduler.start()
        return self._scheduler

    async def _stop_scheduler(self) -> None:
        """Engines call this first in `close()`."""
        if self._scheduler is not None:
            await self._scheduler.stop()

    async def cancel_scheduled(self, event_id: UUID) -> bool:
        """Cancel a pending scheduled event; True if it was pending and is now gone.

        False if it is unknown, already delivered, or being delivered right now
        (a scheduler has claimed it): then it may still appear in its stream.
        The other events of its scheduled append are still delivered.
        """
        self._check_open()
        if not isinstance(event_id, UUID):
            raise InvalidInput(f"an event id is a UUID, got {type(event_id).__name__}")
        return await self._cancel_scheduled(event_id)

    async def scheduled(self, stream: str | None = None, limit: int = 100) -> list[ScheduledEvent]:
        """Pending scheduled events (of one stream, or all), earliest due first."""
        self._check_open()
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= 10_000:
            raise InvalidInput("limit must be an int from 0 to 10000")
        name = None if stream is None else prepare_read_stream(stream, 0, False, None)
        return await self._list_scheduled(name, limit)

    async def count_scheduled(self) -> int:
        """How many scheduled events are pending (not yet delivered or cancelled)."""
        self._check_open()
        return await self._count_scheduled()

    # The engine's hooks. The defaults refuse: an engine that stores no pending
    # events raises `NotSupported` (with its reason) for every scheduling call.

    def _schedule_refused(self) -> NotSupported:
        return NotSupported(self.name, "scheduled delivery", "this engine stores no pending events")

    async def _schedule(self, rows: Sequence[ScheduledEvent]) -> None:
        """Store `rows` durably as pending, ready at their `due_at`.

        A row whose id is already pending is left as it is (a retried schedule).
        """
        raise self._schedule_refused()

    async def _take_due(self, now: float, limit: int, lease: float) -> list[ScheduledEvent]:
        """Claim whole batches of rows ready at `now` (up to about `limit` rows).

        Claiming makes them not ready until `now + lease` in the same atomic
        step that selects them (the SQL engines record a claim row per batch),
        so no other scheduler takes them until the lease runs out (after a
        crash, someone retries them then), and a cancel then answers False.
        """
        raise self._schedule_refused()

    async def _next_due(self) -> float | None:
        """The earliest ready time (seconds since the epoch) of any row, or None."""
        raise self._schedule_refused()

    async def _forget_scheduled(self, ids: Sequence[UUID]) -> None:
        """Delete the rows of `ids` (delivered or parked); ids already gone are skipped."""
        raise self._schedule_refused()

    async def _cancel_scheduled(self, event_id: UUID) -> bool:
        """Delete the row of `event_id` unless it is claimed; whether it was deleted."""
        raise self._schedule_refused()

    async def _list_scheduled(self, stream: str | None, limit: int) -> list[ScheduledEvent]:
        """Up to `limit` pending rows (of `stream`), by due time then scheduling order."""
        raise self._schedule_refused()

    async def _count_scheduled(self) -> int:
        raise self._schedule_refused()

    async def purge_stream(self, stream: str) -> None:
        """Erase every event of a *system* stream (`$...`) from storage, for real.

        Unlike `delete_stream` (a tombstone: the events stay in the log), the
        events' bytes must be gone from the storage afterwards, including
        journals, WAL files and free pages; a purged stream reads as empty and
        may be written again, and its positions become gaps in the global log.
        Only system streams can be purged: the log of user streams stays
        immutable. This exists for crypto-shredding
        (`tidelog.security.encryption` keeps each data subject's key in its own
        system stream and purges it to forget the subject). Optional: the
        default raises `NotSupported`. Raises `InvalidInput` for a user stream.
        """
        raise NotSupported(self.name, "purge_stream", "this engine cannot erase events")
