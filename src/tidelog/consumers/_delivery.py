"""Delivery: how a partition's events go through the handler, and what happens when it fails.

- An event goes to the handler unless the group's DLQ already has it, or
  blocks its stream (`gate`): then it is held behind the parked one
  (`on_park="block"`) or parked too (`"park_stream"`), and the entry written
  to `$dlq-<group>` records it, so the checkpoint can move past a blocked
  stream without losing anything.
- A handler that raises is retried with exponential backoff and jitter
  (`handle`), then parked with its error after `max_attempts` (`park`); a
  batch that fails is split into its events, each with its own attempts.
- A fenced member or an unreachable store is not the event's fault: no
  attempt is spent, the worker waits and tries again (or the event is
  redelivered elsewhere).
- Each handler call runs in a `process <category>` span (`tidelog.telemetry`)
  in the trace the event was published in, when tracing is on.
- Nor is a dead dependency: failures of many distinct streams in a row open
  the handler's circuit breaker (`_breaker`), which pauses its calls; the
  failures it puts down to the dependency spend no attempt and park nothing.
- A retry requested with `tidelog dlq retry`, or an event held behind one
  that was resolved, is run again from the DLQ (`settle`).

One `Delivery` per partition run; the run's workers decide which event goes
when (`PartitionRun`), this decides what becomes of it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tidelog.errors import StaleGeneration, StoreClosed, StoreUnavailable
from tidelog.model import AppendRequest, NewEvent, RecordedEvent

from ._breaker import Breaker
from ._checkpoints import Checkpoint
from ._context import Context, DeliveryScope
from ._dlq import (
    DlqState,
    ParkedStatus,
    dlq_stream,
    held_entry,
    parked_entry,
    resolved_entry,
)
from ._flow import Credits, Limiter
from ._handler import Handler
from ._stats import Stats, emit

__all__ = ["NOT_THE_EVENTS_FAULT", "Delivery", "DeliveryGroup", "PartitionPart", "Shared"]

NOT_THE_EVENTS_FAULT = (asyncio.CancelledError, StaleGeneration, StoreUnavailable, StoreClosed)
"""Fenced, or the store is down: no attempt is spent; the event is tried again later
(or redelivered elsewhere)."""


class DeliveryGroup(Protocol):
    """What delivering an event needs of its group consumer: the generation and the DLQ."""

    @property
    def generation(self) -> int:
        """The generation of the current membership: each delivery carries it."""
        ...

    @property
    def dlq(self) -> DlqState:
        """The group's DLQ state, as of the last `refresh_dlq`."""
        ...

    async def refresh_dlq(self) -> None:
        """Fold the DLQ entries written since the last read (this run's own ones too)."""


@dataclass(frozen=True, slots=True)
class Shared:
    """What every partition run of one group consumer shares, fixed for the consumer's life."""

    handler: Handler
    stats: Stats
    running: Limiter
    """Handler calls at once, over every partition of the process."""
    credits: Credits
    """Events fetched and not finished, over every partition of the group consumer."""
    breaker: Breaker = field(init=False)
    """The handler's circuit breaker, shared by its partitions (one dependency, one state)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "breaker", Breaker(self.handler, self.stats))


class PartitionPart:
    """What a partition run and its delivery both hold, from the same four arguments."""

    def __init__(
        self, group: DeliveryGroup, shared: Shared, scope: DeliveryScope, checkpoint: Checkpoint
    ) -> None:
        self.group = group
        self.handler = shared.handler
        self.stats = shared.stats
        self.running = shared.running
        self.scope = scope
        self.checkpoint = checkpoint


class Delivery(PartitionPart):
    """Puts one partition's events through the handler: attempts, backoff, the DLQ."""

    def __init__(
        self,
        group: DeliveryGroup,
        shared: Shared,
        scope: DeliveryScope,
        checkpoint: Checkpoint,
    ) -> None:
        super().__init__(group, shared, scope, checkpoint)
        self.breaker = shared.breaker
        h = self.handler
        self.direct = h.fn if h.options.batch is None and h.event_class is None else None
        """The handler itself when it takes the `RecordedEvent` as is (skips `Handler.invoke`)."""
        # imported when a consumer runs, not with `import tidelog` (which leaves the
        # tools, and OpenTelemetry, unloaded: tests/test_public_api.py)
        from tidelog.telemetry import process_span

        self.process_span = process_span
        """`tidelog.telemetry.process_span`: each handler call runs in one."""

    async def gate(self, event: RecordedEvent) -> bool:
        """True if `event` must go to the handler; else it was parked, held or settled."""
        state = self.group.dlq
        if not state.entries:
            return True  # nothing parked in this group: the common case, decided at once
        stats = self.stats
        if event.id in state.entries:
            stats.skipped_parked += 1
            return False
        if state.blocked(event.stream, event.position):
            h = self.handler
            if h.options.on_park == "block":
                entry = held_entry(h.group, event, handler=h.name)
            else:
                entry = parked_entry(
                    h.group, event, handler=h.name, error=None, attempts=0, reason="stream_parked"
                )
            await self._write_dlq(entry)
            # counted once written: a count seen by callers is in the DLQ already
            if h.options.on_park == "block":
                stats.held += 1
            else:
                stats.parked += 1
            return False
        return True

    async def retry(self, event: RecordedEvent, failed: Exception) -> None:
        """The first attempt at `event` raised `failed`: retry it; park it if it keeps failing."""
        error, attempts = await self.handle((event,), failed=failed)
        if error is not None:
            await self.park(event, error, attempts, 0)

    async def batch(self, batch: Sequence[RecordedEvent]) -> None:
        """One handler call for the events of `batch` the DLQ lets through.

        If it keeps failing, each of them is handled alone, with its own
        attempts, so only the failing ones are parked.
        """
        todo = [e for e in batch if await self.gate(e)]
        if not todo:
            return
        error, _ = await self.handle(tuple(todo))
        if error is None:
            return
        # isolate the failing events: one at a time, each with its own attempts
        for event in todo:
            if not await self.gate(event):
                continue
            one_error, attempts = await self.handle((event,))
            if one_error is not None:
                await self.park(event, one_error, attempts, 0)

    async def handle(  # noqa: PLR0912, PLR0915 (attempts, breaker, commit: one loop, in order)
        self,
        events: tuple[RecordedEvent, ...],
        extra: dict[str, list[NewEvent]] | None = None,
        failed: Exception | None = None,
    ) -> tuple[BaseException | None, int]:
        """Run the handler with retries; commit its appends. Returns (last error, attempts).

        `failed`: the first attempt already ran, inline in
        `PartitionRun._work_streams`, and raised this; the retries go on from there.
        """
        h = self.handler
        running = self.running
        direct = self.direct
        stats = self.stats
        scope = self.scope
        process_span = self.process_span
        breaker = self.breaker
        attempt = 0 if failed is None else 1
        error = failed
        if failed is not None and breaker.failed(events[0].stream, failed, fresh=True, probe=False):
            attempt, error = 0, None  # the dependency's fault: no attempt spent
        probed = False
        while True:
            if error is not None:
                if attempt >= h.options.max_attempts:
                    return error, attempt
                await self._back_off(events, attempt, error)
            probe = fresh_probe = False
            if not breaker.closed:  # paused: wait, or go as the probe
                fresh_probe = attempt == 0 and not probed
                probe = await breaker.admit(fresh=fresh_probe)
                probed = probed or probe
            attempt += 1
            ctx = Context._deliver(scope, self.group.generation, attempt, events)
            try:
                if not running.try_acquire():
                    await running.acquire()
                try:
                    # in the trace of the event's producer (one event) or linked to each
                    with process_span(events, h.group):
                        if direct is not None:
                            await direct(events[0], ctx)
                        else:
                            await h.invoke(events, ctx, scope.registry)
                finally:
                    running.release()
                if ctx._appends or extra:
                    requests = ctx._requests()
                    for stream, evs in (extra or {}).items():
                        requests[stream] = AppendRequest(events=tuple(evs))
                    await self.checkpoint.commit_with(requests)
                stats.handled += 1
                stats.events_handled += len(events)
                breaker.succeeded()
                return None, attempt
            except NOT_THE_EVENTS_FAULT:
                raise
            except Exception as exc:
                fresh = fresh_probe if probe else attempt == 1
                if breaker.failed(events[0].stream, exc, fresh=fresh, probe=probe):
                    attempt -= 1  # the dependency's fault: this attempt is not spent
                    error = None
                else:
                    error = exc

    async def _back_off(
        self, events: tuple[RecordedEvent, ...], attempt: int, error: Exception
    ) -> None:
        """Wait before the next attempt: exponential backoff with jitter."""
        h = self.handler
        self.stats.retries += 1
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

    async def park(
        self, event: RecordedEvent, error: BaseException, attempts: int, round_: int
    ) -> None:
        h = self.handler
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
        self.stats.parked += 1  # once written, as in `gate`

    async def _write_dlq(self, entry: NewEvent) -> None:
        await self.checkpoint.commit_with(
            {dlq_stream(self.handler.group): AppendRequest(events=(entry,))}
        )
        await self.group.refresh_dlq()

    async def settle(self, stream: str) -> None:
        """Run the DLQ head of `stream` through the handler while it is a retry or held."""
        group = self.group
        dlq_name = dlq_stream(self.handler.group)
        while True:
            await group.refresh_dlq()
            head = group.dlq.head(stream)
            if head is None or head.status is ParkedStatus.PARKED:
                return
            event = head.event
            round_ = group.dlq.rounds.get(event.id, 0)
            resolution = resolved_entry(self.handler.group, event.id, round_)
            emit(
                logging.INFO,
                "dlq_settle",
                group=self.handler.group,
                event_id=str(event.id),
                stream=stream,
                status=head.status.value,
            )
            error, attempts = await self.handle((event,), extra={dlq_name: [resolution]})
            if error is not None:
                await self.park(event, error, attempts, round_ + 1)
            else:
                await group.refresh_dlq()
