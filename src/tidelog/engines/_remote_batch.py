"""The remote engine's appends, several callers' at a time, in one request.

Profiling `http_append` (issue #17) showed where the server's time per event
went beside HTTP itself: the store behind it committed about 3.7 appends per
transaction where the same 8 callers in-process got 8, because requests
reach the server one by one and the first wakes the writer. Each request
also costs a fixed share of parsing, routing and checks on both sides.

So a remote engine sends one single-stream append request at a time
(`in_flight`); appends that come while it is under way wait, and go together,
as one `POST /v1/append-many`, on the turn of the event loop after it ends
(so the callers it answered, who append again at once, join them: a group
commit). A caller that finds the slot free sends at once: a lone writer waits
for nothing. One in flight measured better than two (batches of 8 appends,
800 events per transaction behind the server like in-process, against 3 and
300), the server being the bottleneck of the pipeline.

`append-many` is atomic, and the callers' appends are independent: when the
server refuses the batch (a wrong expected version, a duplicate id, a name or
a grant refused: anything but an outage) it wrote none of it, and each append
is sent again alone, so each caller gets exactly the answer it would have got
without batching. An unreachable server fails the whole batch with
`StoreUnavailable`, as it would have failed each request. A batch never holds
two appends to one stream (their order would be the batch's, not the
callers'), nor more events or bytes than a server's default limits take in
one request (a server whose limits are tighter refuses a batch whose appends
it then takes one by one: the engine halves its bounds each time). A caller
cancelled before its batch is sent is left out of it.

Callers inside a trace are not batched: each request carries its caller's
trace context (`traceparent`), and a batch can carry only one.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from tidelog import wire
from tidelog.errors import NotSupported, StoreClosed, StoreUnavailable, TidelogError
from tidelog.model import AppendResult

__all__ = ["AppendBatcher"]

SendOne = Callable[[str, wire.WireAppend], Awaitable[AppendResult]]
SendMany = Callable[[dict[str, wire.WireAppend]], Awaitable[dict[str, AppendResult]]]

MAX_EVENTS = 1000
"""Events per batch: the server's default `max_events_per_append` (per request)."""
MAX_BYTES = 1 << 20
"""Event bytes per batch: a quarter of the server's default `max_body_bytes`."""


class _Pending(NamedTuple):
    stream: str
    body: wire.WireAppend
    events: int
    size: int
    answer: asyncio.Future[AppendResult]


class AppendBatcher:
    """Single-stream appends of one engine: at most `in_flight` requests at once."""

    def __init__(self, send_one: SendOne, send_many: SendMany, *, in_flight: int = 1) -> None:
        self._send_one = send_one
        self._send_many = send_many
        self._limit = in_flight
        self._busy = 0
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._batching = True
        """False once the server's store refused a multi-stream append (`NotSupported`)."""
        self._max_events = MAX_EVENTS
        self._max_bytes = MAX_BYTES
        """Halved each time a server refuses a batch whose appends it then takes one by
        one: its limits (`max_events_per_append`, `max_body_bytes`) are tighter."""
        self._closed = False

    async def append(self, stream: str, body: wire.WireAppend, size: int) -> AppendResult:
        """Append `body` to `stream` (`size`: its events' bytes on the wire)."""
        if self._closed:
            raise StoreClosed()
        if self._busy < self._limit and not self._waiting:
            self._busy += 1
            try:
                return await self._send_one(stream, body)
            finally:
                self._busy -= 1
                asyncio.get_running_loop().call_soon(self._flush)
        answer: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(stream, body, len(body.events), size, answer))
        self._flush()
        return await answer

    def _flush(self) -> None:
        """Send what waits, a batch per free slot."""
        while self._waiting and self._busy < self._limit and not self._closed:
            batch = self._take()
            if not batch:
                continue
            self._busy += 1
            # a context of its own: the request must not carry the trace of whichever
            # caller's request happened to end last (`trace_headers`)
            task = asyncio.get_running_loop().create_task(
                self._send(batch), context=contextvars.Context()
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Pending]:
        """The next batch: in order, one append per stream, within the size bounds."""
        batch: list[_Pending] = []
        streams: set[str] = set()
        events = size = 0
        skipped: list[_Pending] = []
        while self._waiting:
            p = self._waiting.popleft()
            if p.answer.done():  # its caller was cancelled: never sent
                continue
            if batch and (
                not self._batching
                or p.stream in streams
                or events + p.events > self._max_events
                or size + p.size > self._max_bytes
            ):
                skipped.append(p)
                if not self._batching or len(skipped) > 64:
                    break
                continue
            batch.append(p)
            streams.add(p.stream)
            events += p.events
            size += p.size
        self._waiting.extendleft(reversed(skipped))
        return batch

    async def _send(self, batch: list[_Pending]) -> None:
        try:
            if len(batch) == 1:
                await self._alone(batch[0])
                return
            try:
                results = await self._send_many({p.stream: p.body for p in batch})
            except (StoreUnavailable, StoreClosed) as exc:
                for p in batch:
                    _settle_error(p.answer, exc)
                return
            except TidelogError as exc:  # refused, so nothing of it was written
                if isinstance(exc, NotSupported):
                    self._batching = False
                alone = await asyncio.gather(*(self._alone(p) for p in batch))
                if all(alone):  # the batch itself was refused: a server with tighter limits
                    self._max_events = max(1, self._max_events // 2)
                    self._max_bytes = max(1, self._max_bytes // 2)
                return
            for p in batch:
                if not p.answer.done():
                    p.answer.set_result(results[p.stream])
        except BaseException as exc:  # cancelled by `close`, or a bug: nobody waits forever
            for p in batch:
                _settle_error(p.answer, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._busy -= 1
            # on the next turn of the loop: the callers just answered append again
            # first (a writer's next append comes at once) and join this batch
            asyncio.get_running_loop().call_soon(self._flush)

    async def _alone(self, p: _Pending) -> bool:
        """Send one append by itself; whether it was stored."""
        if p.answer.done():
            return False
        try:
            result = await self._send_one(p.stream, p.body)
        except Exception as exc:
            _settle_error(p.answer, exc)
            return False
        if not p.answer.done():
            p.answer.set_result(result)
        return True

    def close(self) -> None:
        """Fail what waits with `StoreClosed` and stop the batches under way."""
        self._closed = True
        while self._waiting:
            _settle_error(self._waiting.popleft().answer, StoreClosed())
        for task in list(self._tasks):
            task.cancel()


def _settle_error(answer: asyncio.Future[AppendResult], exc: BaseException) -> None:
    """Fail one caller's append with an exception of its own (a shared instance would
    collect every caller's traceback)."""
    if answer.done():
        return
    if isinstance(exc, StoreClosed):
        answer.set_exception(StoreClosed())
    elif isinstance(exc, StoreUnavailable):
        mine = StoreUnavailable(str(exc))
        mine.__cause__ = exc.__cause__
        answer.set_exception(mine)
    elif isinstance(exc, asyncio.CancelledError):
        answer.set_exception(StoreClosed())
    elif isinstance(exc, Exception):
        answer.set_exception(exc)
    else:
        answer.set_exception(StoreUnavailable(f"append interrupted: {exc!r}"))
