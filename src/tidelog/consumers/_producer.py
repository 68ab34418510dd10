"""`Producer`: high-rate publishing by buffering sends into batched appends.

    async with tidelog.Producer(store, linger=0.002) as producer:
        fut = await producer.send("order-42", [tidelog.NewEvent(type="OrderPlaced")])
        ...
        result = await fut          # AppendResult of that send

Sends gathered within `linger` seconds (or until `max_batch` events) are
written with one `append_many` per round: a round holds at most one send per
stream, so each send keeps its own exact `AppendResult` and the sends of one
stream are written in the order they were made. If a round's atomic
`append_many` fails (one send's expected version conflicts), its sends are
retried one by one so that only the guilty send fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tidelog.engines.contract import (
    MAX_EVENTS_PER_APPEND,
    GroupEngine,
    due_time,
    prepare_append,
)
from tidelog.errors import InvalidInput, StoreClosed, TidelogError
from tidelog.model import ANY, AppendRequest, AppendResult, ExpectedVersion, NewEvent

__all__ = ["BufferFull", "Producer"]


class BufferFull(TidelogError):
    """The producer's buffer is full and it was created with `block=False`."""

    def __init__(self, buffered: int, limit: int) -> None:
        self.buffered = buffered
        self.limit = limit
        super().__init__(f"producer buffer full ({buffered} of {limit} events)")


@dataclass(slots=True)
class _Send:
    stream: str
    events: tuple[NewEvent, ...]
    expected: ExpectedVersion
    future: asyncio.Future[AppendResult]


class Producer:
    """Buffers sends and writes them in batches; bounded, flushed on close."""

    def __init__(
        self,
        store: GroupEngine,
        *,
        linger: float = 0.002,
        max_batch: int = 1000,
        max_buffered: int = 10_000,
        block: bool = True,
    ) -> None:
        if not 1 <= max_batch <= MAX_EVENTS_PER_APPEND:
            raise InvalidInput(f"max_batch must be within 1..{MAX_EVENTS_PER_APPEND}")
        if max_buffered < max_batch:
            raise InvalidInput("max_buffered must be >= max_batch")
        self.store = store
        self.linger = linger
        self.max_batch = max_batch
        self.max_buffered = max_buffered
        self.block = block
        self._buffer: deque[_Send] = deque()
        self._buffered = 0
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0
        """Appends issued so far (for tests and benchmarks)."""
        self.peak_buffered = 0

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def buffered(self) -> int:
        """Events accepted but not yet written."""
        return self._buffered

    async def send(
        self,
        stream: str,
        events: NewEvent | Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
        *,
        deliver_at: datetime | None = None,
        deliver_after: timedelta | None = None,
    ) -> asyncio.Future[AppendResult]:
        """Buffer an append; returns a future of its `AppendResult`.

        Input is validated here, so a bad send raises at once. When the buffer
        holds `max_buffered` events, waits for room (`block=True`) or raises
        `BufferFull`.

        A scheduled send (`deliver_at`, `deliver_after`, or events carrying
        `deliver_at`) is not batched: it is stored as pending at once, and the
        future (already done) holds its `ScheduledResult`.
        """
        if self._closed:
            raise StoreClosed()
        batch = (events,) if isinstance(events, NewEvent) else events
        name, checked, expected = prepare_append(stream, batch, expected_version)
        due = due_time(deliver_at, deliver_after)
        if due is not None or any(e.deliver_at is not None for e in checked):
            done: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
            done.set_result(await self.store.append(name, checked, expected, deliver_at=due))
            return done
        if len(checked) > self.max_batch:
            raise InvalidInput(f"a send holds at most max_batch={self.max_batch} events")
        while self._buffered + len(checked) > self.max_buffered:
            if not self.block:
                raise BufferFull(self._buffered, self.max_buffered)
            self._space.clear()
            await self._space.wait()
            if self._closed:
                raise StoreClosed()
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._buffer.append(_Send(name, checked, expected, future))
        self._buffered += len(checked)
        self.peak_buffered = max(self.peak_buffered, self._buffered)
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tidelog-producer")
        return future

    async def flush(self) -> None:
        """Wait until everything sent so far is written (or failed)."""
        if self._task is None:
            return
        self._wake.set()
        await self._idle.wait()

    async def close(self) -> None:
        """Flush, then refuse further sends. Idempotent."""
        if self._closed:
            return
        await self.flush()
        self._closed = True
        self._space.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            if not self._buffer:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.linger > 0 and self._buffered < self.max_batch and not self._closed:
                await asyncio.sleep(self.linger)
            batch: list[_Send] = []
            size = 0
            while self._buffer and size + len(self._buffer[0].events) <= self.max_batch:
                send = self._buffer.popleft()
                batch.append(send)
                size += len(send.events)
            try:
                await self._write(batch)
            finally:
                self._buffered -= size
                self._space.set()

    async def _write(self, batch: list[_Send]) -> None:
        rounds: list[dict[str, _Send]] = []
        for send in batch:
            for r in rounds:
                if send.stream not in r:
                    r[send.stream] = send
                    break
            else:
                rounds.append({send.stream: send})
        for r in rounds:
            live = {s: send for s, send in r.items() if not send.future.cancelled()}
            if not live:
                continue
            self.batches += 1
            if len(live) == 1:
                await self._one(next(iter(live.values())))
                continue
            try:
                results = await self.store.append_many(
                    {
                        s: AppendRequest(events=send.events, expected_version=send.expected)
                        for s, send in live.items()
                    }
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                for send in live.values():
                    await self._one(send)
                continue
            for s, send in live.items():
                if not send.future.done():
                    send.future.set_result(results[s])

    async def _one(self, send: _Send) -> None:
        try:
            result = await self.store.append(send.stream, send.events, send.expected)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not send.future.done():
                send.future.set_exception(exc)
            return
        if not send.future.done():
            send.future.set_result(result)
