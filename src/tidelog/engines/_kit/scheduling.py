"""Scheduled delivery, written once: the checks of a scheduled append and the scheduler.

An append whose events carry `deliver_at` (or that is given `deliver_at=` or
`deliver_after=`) is not written to the log: the contract checks it here
(`prepare_schedule`) and hands the engine `ScheduledEvent` rows to store as
pending (`_schedule`). The `Scheduler` below moves them into the log when they
are due, through the contract's own `append_many`, so every engine's write path,
checks and idempotency apply unchanged. An engine only stores, claims and
forgets rows (the `_schedule`, `_take_due`, `_next_due`, `_forget_scheduled`,
`_cancel_scheduled`, `_list_scheduled` and `_count_scheduled` hooks).

Exactly once, across processes and crashes:

1. `_take_due` *claims* the due rows of whole batches: it records a lease
   per batch (the SQL engines write a claim row per batch in one transaction;
   SQLite's single writer and a PostgreSQL advisory lock keep two schedulers
   from claiming the same batch), so a second scheduler skips them while the
   first works;
2. the events are appended with their own ids: an append whose ids are all
   stored in that stream returns the original result and writes nothing, so a
   move repeated after a crash (the lease ran out before the rows were
   forgotten) or by a scheduler whose lease ran out writes nothing twice;
3. the rows are forgotten (deleted by id: repeating it is harmless).

A batch whose append is refused (`WrongExpectedVersion`, `StreamDeleted`, or
an id stored in another stream) is *parked*: appended to `$scheduled-failed`
with the reason in its metadata, under the same ids (so a repeated move finds
them there, is refused with `DuplicateEventId` and parks again: an idempotent
retry), or under ids derived from them when those ids belong to another
stream's events. The other streams of the same pass are still delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID, SafeUUID

from tidelog.errors import (
    DuplicateEventId,
    InvalidEvent,
    InvalidInput,
    StoreClosed,
    StreamDeleted,
    TidelogError,
    WrongExpectedVersion,
)
from tidelog.model import (
    ANY,
    NO_STREAM,
    STREAM_EXISTS,
    AppendRequest,
    ExpectedVersion,
    NewEvent,
    ScheduledEvent,
    decode_metadata,
    encode_metadata,
)

if TYPE_CHECKING:
    from tidelog.engines.contract import StreamEngine

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_IN_FLIGHT",
    "DEFAULT_LEASE",
    "DEFAULT_LOOKAHEAD",
    "DEFAULT_MAX_LOOKAHEAD",
    "DEFAULT_POLL",
    "FAILED_STREAM",
    "ROW_COLUMNS",
    "Row",
    "Scheduler",
    "decode_expected",
    "due_time",
    "encode_expected",
    "from_micros",
    "from_row",
    "from_rows",
    "prepare_schedule",
    "to_micros",
    "to_row",
]

log = logging.getLogger(__name__)

FAILED_STREAM: Final = "$scheduled-failed"
"""Where a scheduled append refused at its due time is parked, with the reason."""
DEFAULT_BATCH: Final = 1_000
"""Rows a scheduler claims per pass: hundreds per append round, few queries per event
(10,000 events/s due is ten claims a second)."""
DEFAULT_IN_FLIGHT: Final = 16_000
"""Rows claimed but not yet delivered and forgotten, at most (the scheduler's memory
bound, a few MB): claims run ahead of deliveries up to this, so a slow claim
transaction does not delay the appends due meanwhile (a lookahead grown to 1 s at
10,000 events/s due is 10,000 rows), and a scheduler that fell behind claims up
to four batches at once (`batch` is the least a claim waits room for): 10,000
events/s due with a claim taking 300 ms under CPU load is 3,000 rows a claim just
to keep up."""
DEFAULT_LEASE: Final = 30.0
"""Seconds a claim lasts; after a crash, another scheduler retries the rows then."""
DEFAULT_POLL: Final = 0.05
"""Seconds between looks for rows scheduled by other processes (or other stores)."""
DEFAULT_LOOKAHEAD: Final = 0.1
"""Seconds before their due time that rows are claimed, so only the append is left at it."""
DEFAULT_MAX_LOOKAHEAD: Final = 1.0
"""How far the lookahead grows when claims are slow: to twice the last claim's time,
at most this (it shrinks back as claims get fast again). Profiled at 10,000
events/s due under CPU load, a claim took 150-300 ms: rows claimed 100 ms ahead
were already late when claimed, and every claim after them inherited the delay."""
_PARKED_NAMESPACE: Final = UUID("5b0f3c1e-8f7a-4a53-9d1f-6a51f0c2e7d4")

_STATES: Final = {ANY: -1, NO_STREAM: -2, STREAM_EXISTS: -3}
_STATE_OF: Final = {v: k for k, v in _STATES.items()}


def encode_expected(expected: ExpectedVersion) -> int:
    """An expected version as one integer column: a version, or -1/-2/-3 for the states."""
    return expected if isinstance(expected, int) else _STATES[expected]


def decode_expected(value: int) -> ExpectedVersion:
    return _STATE_OF[value] if value < 0 else value


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch: how the SQL engines store due times (exact, sortable)."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def from_micros(value: int) -> datetime:
    # Seconds and microseconds given apart: `timedelta(microseconds=...)` of a
    # present-day time takes a slow path (normalising a 16-digit float-sized
    # count); this is a third of its cost, and exact.
    return _EPOCH + timedelta(0, value // 1_000_000, value % 1_000_000)


ROW_COLUMNS: Final = (
    "id, batch, seq, stream, expected, due_at, type, data, metadata, schema_version"
)
"""The columns of a SQL engine's `scheduled` table that `to_row`/`from_row` map, in order
(besides them, each table has `ready_at`)."""

Row = tuple[UUID, UUID, int, str, int, int, str, bytes, bytes, int]


def to_row(r: ScheduledEvent, due: int | None = None) -> Row:
    """A pending event as the SQL engines store it: due time in microseconds (`due`,
    when the caller converted it once for a whole scheduled append), the expected
    version as one integer, metadata as compact JSON bytes."""
    return (
        r.id,
        r.batch,
        r.seq,
        r.stream,
        encode_expected(r.expected_version),
        to_micros(r.due_at) if due is None else due,
        r.type,
        r.data,
        encode_metadata(r.metadata) if r.metadata else _NO_METADATA[0],
        r.schema_version,
    )


def from_row(raw: Sequence[Any]) -> ScheduledEvent:
    """`to_row` undone; ids may come as UUIDs or as their 16 bytes (SQLite)."""
    return from_rows([raw])[0]


_new_object: Final = object.__new__
_set_attribute: Final = object.__setattr__
_NO_METADATA: Final = (b"{}", "{}")


def _uuid(value: UUID | bytes) -> UUID:
    """A stored id as a UUID without `UUID.__init__`'s argument parsing (a third of
    its cost), as `new_event_id` builds them."""
    if isinstance(value, UUID):
        return value
    made = _new_object(UUID)
    _set_attribute(made, "int", int.from_bytes(value))
    _set_attribute(made, "is_safe", SafeUUID.unknown)
    return made


def from_rows(raws: Iterable[Sequence[Any]]) -> list[ScheduledEvent]:
    """`from_row` of many rows, decoding what the rows of one scheduled append share
    (its batch id and due time) once: a claim decodes thousands of rows on the
    store's writer (SQLite's thread), where every microsecond per row is taken
    from the appends due meanwhile (profile of `scheduled_lateness`)."""
    dues: dict[int, datetime] = {}
    batches: dict[Any, UUID] = {}
    out: list[ScheduledEvent] = []
    for id_, batch, seq, stream, expected, due, type_, data, metadata, schema_version in raws:
        due_at = dues.get(due)
        if due_at is None:
            due_at = dues[due] = from_micros(due)
        batch_id = batches.get(batch)
        if batch_id is None:
            batch_id = batches[batch] = _uuid(batch)
        out.append(
            ScheduledEvent(
                id=_uuid(id_),
                batch=batch_id,
                seq=seq,
                stream=stream,
                expected_version=decode_expected(expected),
                due_at=due_at,
                type=type_,
                data=data,
                metadata={} if metadata in _NO_METADATA else decode_metadata(metadata),
                schema_version=schema_version,
            )
        )
    return out


def prepare_schedule(
    stream: str,
    events: Sequence[NewEvent],
    expected: ExpectedVersion,
    deliver_at: object,
    deliver_after: object,
) -> list[ScheduledEvent] | None:
    """The rows of a scheduled append, or None when the append is for now.

    One append is one unit: every event of it is due at the same time (given
    once by `deliver_at`/`deliver_after`, or the same `deliver_at` on each
    event), so the batch is appended at once with the expected version given
    here. An append mixing events for now and for later, or for different
    times, is refused with `InvalidEvent` and changes nothing: its expected
    version could not mean one thing. A due time in the past is allowed (it is
    delivered at once, by the scheduler).
    """
    due = due_time(deliver_at, deliver_after)
    if due is None:
        for e in events:
            if e.deliver_at is not None:
                break
        else:
            return None
    own = {e.deliver_at for e in events}
    if due is None:
        if None in own or len(own) != 1:
            raise InvalidEvent(
                "every event of a scheduled append must have the same deliver_at: "
                "append events for now and for later in separate calls"
            )
        due = _aware(own.pop())
    elif own - {None, deliver_at}:
        raise InvalidEvent("an event's deliver_at differs from the append's due time")
    batch = events[0].id
    code = encode_expected(expected)
    return [
        ScheduledEvent(
            id=e.id,
            stream=stream,
            due_at=due,
            type=e.type,
            data=e.data,
            metadata=dict(e.metadata),
            schema_version=e.schema_version,
            expected_version=decode_expected(code),
            batch=batch,
            seq=i,
        )
        for i, e in enumerate(events)
    ]


def due_time(deliver_at: object, deliver_after: object) -> datetime | None:
    """The due time `deliver_at=` or `deliver_after=` give (UTC), checked; None if neither."""
    if deliver_at is not None and deliver_after is not None:
        raise InvalidEvent("give deliver_at or deliver_after, not both")
    if deliver_after is not None:
        if not isinstance(deliver_after, timedelta) or deliver_after < timedelta(0):
            raise InvalidEvent(f"deliver_after must be a timedelta >= 0, got {deliver_after!r}")
        try:
            return datetime.now(UTC) + deliver_after
        except OverflowError:
            raise InvalidEvent(f"deliver_after {deliver_after!r} is too far") from None
    if deliver_at is not None:
        return _aware(deliver_at)
    return None


def _aware(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidEvent(f"deliver_at must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidEvent("deliver_at must be timezone-aware (a naive time is ambiguous)")
    return value.astimezone(UTC)


_STOP_WAIT: Final = 5.0
"""Seconds `Scheduler.stop` keeps cancelling its loop before it goes on without it."""


def _setter(event: asyncio.Event) -> Callable[[asyncio.Task[None]], None]:
    return lambda _: event.set()


_CLAIM_BATCHES: Final = 4
"""A claim takes at most this many times `batch` rows (see `Scheduler._pass`)."""
_ROUND_EVENTS: Final = 2_000
"""Events per append_many when a round of due batches is larger (see `_deliver_group`)."""


def _split(
    round_: dict[str, list[ScheduledEvent]], most: int
) -> list[dict[str, list[ScheduledEvent]]]:
    """A round's batches in parts of about `most` events (a batch is never split)."""
    parts: list[dict[str, list[ScheduledEvent]]] = [{}]
    size = 0
    for name, batch in round_.items():
        if size and size + len(batch) > most:
            parts.append({})
            size = 0
        parts[-1][name] = batch
        size += len(batch)
    return parts


def _batches(rows: Sequence[ScheduledEvent]) -> list[list[ScheduledEvent]]:
    """Claimed rows as batches (one scheduled append each), in due order (then by
    batch id, as `str` of the ids would sort them).

    Grouped first and sorted per batch: a key per row built from `str(UUID)` was
    a visible share of the event loop's time at 10,000 events/s due."""
    by_batch: dict[UUID, list[ScheduledEvent]] = defaultdict(list)
    for row in rows:
        by_batch[row.batch].append(row)
    batches = list(by_batch.values())
    for batch in batches:
        batch.sort(key=lambda r: r.seq)
    batches.sort(key=lambda b: (b[0].due_at, b[0].batch.int))
    return batches


class Scheduler:
    """The delivery loop of one store in one process (`store.start_scheduler()`).

    It sleeps until the earliest due time it knows (a scheduled append of this
    process wakes it at once if it is earlier), but never longer than `poll`,
    so rows scheduled by other processes are seen within `poll`. Each pass
    claims the due rows (at least `batch`, up to four times that as far as
    `in_flight` leaves room) and moves them (see the module docstring); a pass that got all it
    asked for is followed by the next at once, without a look first. Rows are
    claimed `lookahead` seconds before they are due, longer (up to
    `max_lookahead`) while claims take longer than half of that.
    `observers` receive each delivered event's lateness (appended at - due at, seconds).
    """

    def __init__(
        self,
        store: StreamEngine,
        *,
        batch: int = DEFAULT_BATCH,
        lease: float = DEFAULT_LEASE,
        poll: float = DEFAULT_POLL,
        lookahead: float = DEFAULT_LOOKAHEAD,
        in_flight: int = DEFAULT_IN_FLIGHT,
        max_lookahead: float = DEFAULT_MAX_LOOKAHEAD,
    ) -> None:
        self.store = store
        self.batch = batch
        self.lease = lease
        self.poll = poll
        self.lookahead = lookahead
        self.delivered = 0
        """Events this scheduler appended to their streams (a repeated move counts again)."""
        self.parked = 0
        self.observers: list[Callable[[float], None]] = []
        self.in_flight = max(in_flight, batch)
        self.max_lookahead = max(max_lookahead, lookahead)
        self._ahead = lookahead
        """The lookahead in use: `lookahead`, or more while claims are slow."""
        self._full = False
        """The last pass claimed all it asked for: more is due, claim again at once."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._moving: dict[asyncio.Task[None], int] = {}
        """The running loop's claimed passes being delivered (then forgotten): rows each."""
        self._placed: asyncio.Event | None = None
        """Set once the last pass has started all its appends (the next one waits for it)."""
        self._last_due: dict[asyncio.Task[None], float] = {}
        """The latest due time of each pass in `_moving` (`stop` lets due passes end)."""
        self._busy: dict[str, asyncio.Task[None]] = {}
        """The last delivery task per stream, across passes: each stream keeps its order."""

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"tidelog-scheduler-{self.store.name}"
            )

    def wake(self) -> None:
        """A new row was scheduled here: look again now (it may be due sooner)."""
        self._wake.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            # Cancelled again until done: a cancel that lands as the loop's own
            # `asyncio.timeout` fires can be swallowed as that timeout (seen on
            # Python 3.11 in the NATS conformance runs: the loop went on polling,
            # "cancelling", and `stop` waited for it forever).
            # Bounded: a loop stuck in a call that swallows every cancel (a client
            # library mid-reconnect while a NATS cluster elects a leader) must not
            # hold `close` for ever; closing the store's connection next ends it.
            deadline = time.monotonic() + _STOP_WAIT
            while not task.done() and time.monotonic() < deadline:
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            if task.done():
                with contextlib.suppress(asyncio.CancelledError, TidelogError):
                    task.result()
            else:
                log.warning("scheduler loop did not stop within %.0f s; left cancelled", _STOP_WAIT)
        moving, self._moving = list(self._moving), {}
        now = time.time()
        for pass_ in moving:  # a pass with rows due later is not waited for...
            if self._last_due.get(pass_, now) > now:
                pass_.cancel()
        # ...but one whose rows are all due ends its appends and forgets its rows: else
        # they would wait for their lease (and be moved again, writing nothing).
        await asyncio.gather(*moving, return_exceptions=True)
        self._last_due.clear()
        self._busy.clear()
        self._placed = None
        self._full = False

    async def _run(self) -> None:
        """Look (a read) before claiming (a write): an idle store costs one indexed read
        per `poll`, not a write transaction and its sync."""
        while True:
            self._wake.clear()  # before the look: a wake during it is not lost
            try:
                if self._full:  # behind: the look would only cost a round trip
                    await self._pass()
                    continue
                next_ready = await self.store._next_due()
                if next_ready is not None and next_ready <= time.time() + self._ahead:
                    await self._pass()
                    continue  # look again at once: more may be due soon
            except StoreClosed:
                return
            except TidelogError as exc:  # the store is unavailable for now: try again
                log.warning("tidelog scheduler: %s (retrying)", exc)
                next_ready = None
            timeout = self.poll
            if next_ready is not None:
                timeout = min(self.poll, max(0.0, next_ready - self._ahead - time.time()))
            if timeout > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()

    async def run_once(self, now: float | None = None) -> int:
        """One pass: claim the rows due by `now` and move them; how many were claimed.

        On the real clock (`now` None) it claims what is due within `lookahead`
        seconds too and appends each batch at its due time: the claim's
        transaction is then off the path from due time to visibility. Given a
        `now` (tests and tools driving a schedule step by step), it moves what
        is due by then at once.
        """
        real = now is None
        clock = time.time() if now is None else now
        rows = await self.store._take_due(
            clock + (self.lookahead if real else 0.0), self.batch, self.lease
        )
        if rows:
            await self.store._forget_scheduled(await self._move(rows, real))
        return len(rows)

    async def _pass(self) -> int:
        """`run_once` of the running loop, pipelined: a claim does not wait for the
        deliveries of the claims before it, so the claim's transaction (a sync) is
        off the path of the appends due meanwhile; at most `in_flight` rows are
        claimed and not yet forgotten (the passes' order per stream is kept by
        `_busy`). Profiled at 10,000 events/s due, a claim that waited for the
        previous pass's last append made every pass's first appends late by a
        claim's time, and lateness grew pass after pass."""
        while self._moving and sum(self._moving.values()) + self.batch > self.in_flight:
            await asyncio.wait(list(self._moving), return_when=asyncio.FIRST_COMPLETED)
        # What the in-flight bound leaves room for, but at most a few batches: one
        # pass of 16,000 rows held the event loop for tens of ms (sorting, tasks).
        limit = min(self.in_flight - sum(self._moving.values()), _CLAIM_BATCHES * self.batch)
        start = time.time()
        rows = await self.store._take_due(start + self._ahead, limit, self.lease)
        took = time.time() - start
        # Twice the claim's time ahead, so the next claim is done before its rows are
        # due; shrinking by a quarter a pass, so one slow claim is not paid for long.
        self._ahead = min(self.max_lookahead, max(self.lookahead, 2 * took, 0.75 * self._ahead))
        self._full = len(rows) >= limit
        if rows:
            after, self._placed = self._placed, asyncio.Event()
            task = asyncio.get_running_loop().create_task(
                self._deliver_pass(rows, after, self._placed)
            )
            self._moving[task] = len(rows)
            self._last_due[task] = max(r.due_at for r in rows).timestamp()
            task.add_done_callback(self._passed)
            # Also when the task is cancelled before its first step (`stop`), where its
            # own `finally` never runs: the next pass waits for this event.
            task.add_done_callback(_setter(self._placed))
        return len(rows)

    async def _deliver_pass(
        self, rows: Sequence[ScheduledEvent], after: asyncio.Event | None, placed: asyncio.Event
    ) -> None:
        """Move one claimed pass at its due times, then forget its rows (by id).

        It starts its appends once the pass before it has started all of its own
        (`after`): a stream's order across passes must not hang on which of two
        sleeping tasks the loop wakes first (a timer set a few ms late under load
        reordered them)."""
        try:
            if after is not None:
                await after.wait()
            done = await self._move(rows, True, placed)
        finally:
            placed.set()  # also when it failed or was cancelled: the next pass goes on
        await self.store._forget_scheduled(done)

    def _passed(self, task: asyncio.Task[None]) -> None:
        self._moving.pop(task, None)
        self._last_due.pop(task, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Its rows stay claimed: another pass retries them when the lease ends.
            log.warning("tidelog scheduler: delivery failed: %s (retried after the lease)", exc)
        for name in [n for n, t in self._busy.items() if t.done()]:
            del self._busy[name]

    async def _move(
        self, rows: Sequence[ScheduledEvent], real: bool, placed: asyncio.Event | None = None
    ) -> list[UUID]:
        """Append (or park) every batch of `rows`, each at its due time if `real`;
        returns the ids moved, for the caller to forget.

        On the real clock the batches due at one moment are appended while the
        next ones wait for their time: a group's append does not hold back
        the next due time (the engine's group commit then joins them), but
        waits for the groups before it that share one of its streams, so each
        stream keeps its scheduled order.
        """
        batches = _batches(rows)
        done: list[UUID] = []
        busy = self._busy if real else {}
        tasks: list[asyncio.Task[None]] = []
        i = 0
        try:
            while i < len(batches):
                if real:
                    delay = batches[i][0].due_at.timestamp() - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                cutoff = time.time()
                streams: dict[str, list[list[ScheduledEvent]]] = defaultdict(list)
                while i < len(batches) and (not real or batches[i][0].due_at.timestamp() <= cutoff):
                    streams[batches[i][0].stream].append(batches[i])
                    done.extend(r.id for r in batches[i])
                    i += 1
                if not real:
                    await self._deliver_group(streams, [])
                    continue
                before = [busy[name] for name in streams if name in busy]
                task = asyncio.get_running_loop().create_task(self._deliver_group(streams, before))
                tasks.append(task)
                for name in streams:
                    busy[name] = task
        finally:
            if placed is not None:  # every append of this pass is started (or never will be)
                placed.set()
            if tasks:  # every started append ends before the rows can be forgotten
                results = await asyncio.gather(*tasks, return_exceptions=True)
                for result in results:
                    if isinstance(result, BaseException):
                        raise result
        return done

    async def _deliver_group(
        self,
        streams: dict[str, list[list[ScheduledEvent]]],
        before: list[asyncio.Task[None]],
    ) -> None:
        """The batches due at one moment, after the groups `before` that share a stream.

        One append_many per round: the first waiting batch of each stream (a
        stream appears once per append_many).
        """
        if before:  # a failed one fails this one too: its stream's order must hold
            await asyncio.gather(*before)
        while streams:
            round_ = {name: waiting.pop(0) for name, waiting in streams.items()}
            streams = {name: waiting for name, waiting in streams.items() if waiting}
            # Parts no larger than the engine's largest write either (NATS: 499).
            limit = self.store.max_write_events
            parts = _split(round_, _ROUND_EVENTS if limit is None else min(limit, _ROUND_EVENTS))
            if len(parts) == 1:
                await self._deliver_round(round_)
                continue
            # A scheduler that fell behind has thousands of events due at once: as
            # one append_many, its checks held the event loop for tens of ms at a
            # time (every timer and subscriber of the process waited), and on NATS
            # one write holds at most 499 messages. In parts, of different streams
            # each, the engine's group commit still joins them.
            results = await asyncio.gather(
                *(self._deliver_round(part) for part in parts), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result

    async def _deliver_round(self, round_: dict[str, list[ScheduledEvent]]) -> None:
        pending = dict(round_)
        while pending:
            requests = {
                name: AppendRequest([r.to_new_event() for r in batch], batch[0].expected_version)
                for name, batch in pending.items()
            }
            try:
                await self.store.append_many(requests)
            except (WrongExpectedVersion, StreamDeleted, DuplicateEventId) as exc:
                refused = pending.pop(exc.stream, None)
                if refused is None:  # not one of ours: the error is the store's
                    raise
                await self._park(refused, exc)
                continue
            except InvalidInput as exc:
                # Refused input that names no stream (a wrapper's `SchemaViolation`):
                # alone, the batch is parked; in a round, each stream goes alone.
                if len(pending) > 1:
                    for name, batch in pending.items():
                        await self._deliver_round({name: batch})
                    return
                [batch] = pending.values()
                await self._park(batch, exc)
                return
            now = datetime.now(UTC)
            for batch in pending.values():
                self.delivered += len(batch)
                for row in batch:
                    lateness = (now - row.due_at).total_seconds()
                    for observe in self.observers:
                        observe(lateness)
            return

    async def _park(self, batch: list[ScheduledEvent], error: TidelogError) -> None:
        """Append a refused batch to `$scheduled-failed` with the reason."""
        reason = {
            "scheduled_stream": batch[0].stream,
            "scheduled_due_at": batch[0].due_at.isoformat(),
            "scheduled_error": type(error).__name__,
            "scheduled_reason": str(error),
        }

        def parked(derive: bool) -> list[NewEvent]:
            return [
                NewEvent(
                    id=uuid.uuid5(_PARKED_NAMESPACE, str(r.id)) if derive else r.id,
                    type=r.type,
                    data=r.data,
                    metadata={**r.metadata, **reason, "scheduled_id": str(r.id)},
                    schema_version=r.schema_version,
                )
                for r in batch
            ]

        try:
            await self.store.append(FAILED_STREAM, parked(False))
        except DuplicateEventId:  # the ids belong to events of another stream
            await self.store.append(FAILED_STREAM, parked(True))
        self.parked += len(batch)
        log.warning(
            "tidelog scheduler: parked %d event(s) for %r in %s: %s",
            len(batch),
            batch[0].stream,
            FAILED_STREAM,
            error,
        )
