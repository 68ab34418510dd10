"""One live tail of the store per server, fanned out to every live subscriber.

With a store subscription per SSE or WebSocket subscriber, a server with a
thousand subscribers read every event from the store a thousand times and
encoded it a thousand times: at 1,000 events/s the server's CPU went to that
and delivery fell seconds behind. Here one `Hub` per server process follows
the log once (`store.subscribe`), wraps each event in a `Delivery` whose
encodings are made on first use and then shared by every subscriber, and
hands each batch to every `Member` (one per subscriber) whose `Selector`
(its filters and its principal's read grants) lets the events through. Members
with the same selector share its work: a batch is filtered once per kind of
subscriber, not once per subscriber.

A member is fed from two places, in position order and without a gap:

- the store, read by the member itself a page at a time (`read_page`), while
  it catches up from an old position (`from`, `Last-Event-ID`) and whenever
  it fell behind;
- the hub, once it caught up: the hub puts each batch in the member's
  bounded list of pending events, without ever waiting for it.

A member that lets more than `bound` events wait is dropped by the hub at
once (the hub never waits for a slow subscriber, so the others never do
either) and goes back to reading the store from the first position it did not
get; nothing is lost and the order holds, since the store has every event the
hub had. It rejoins when its reads reach the end of the log.

Joining is exact: the hub's `position` is the last position it handed on,
and a member that joins (a synchronous step, with no await between reading
`position` and being counted) gets every later event from the hub. What lies
between the member's read cursor and that position is in the store (the hub
saw it there), so the member reads up to it before it takes the hub's
events, and drops any hub event its own reads already gave it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import msgspec

from tidelog import wire
from tidelog.engines.contract import Engine, LogFilter
from tidelog.model import RecordedEvent, category_of, partition_of
from tidelog.security.acl import Access, Permission

__all__ = ["Delivery", "Hub", "Member", "Part"]

_ENCODER = msgspec.json.Encoder()


class Delivery:
    """One event as the live routes send it; each encoding is made once, then shared.

    The hub makes one per event and every subscriber holds the same object, so
    an event read once is also encoded once however many subscribers get it.
    """

    __slots__ = ("_json", "_sse", "_text", "event")

    def __init__(self, event: RecordedEvent) -> None:
        self.event = event
        self._json: bytes | None = None
        self._sse: bytes | None = None
        self._text: str | None = None

    def json(self) -> bytes:
        """The event as the wire's JSON (`wire.WireEvent`)."""
        data = self._json
        if data is None:
            data = self._json = _ENCODER.encode(wire.WireEvent.from_recorded(self.event))
        return data

    def text(self) -> str:
        """The JSON as text: a WebSocket text frame."""
        text = self._text
        if text is None:
            text = self._text = self.json().decode()
        return text

    def sse(self) -> bytes:
        """The event as one Server-Sent Events message, its id the position.

        Event data embedded as JSON may hold line feeds (JSON whitespace; never
        a carriage return, see `wire.embeds_as_json`): each line becomes a
        `data` line of its own, which a client joins back with line feeds.
        """
        chunk = self._sse
        if chunk is None:
            data = self.json()
            if 10 in data:
                data = data.replace(b"\n", b"\r\ndata: ")
            chunk = self._sse = b"id: %d\r\nevent: event\r\ndata: %b\r\n\r\n" % (
                self.event.position,
                data,
            )
        return chunk


class Part:
    """The deliveries one kind of subscriber gets from one hand-out (or one store read),
    with their SSE messages joined once: every subscriber of that kind sends the same
    bytes, so a subscriber's send costs the same for one event as for a thousand."""

    __slots__ = ("_sse", "deliveries")

    def __init__(self, deliveries: list[Delivery]) -> None:
        self.deliveries = deliveries
        self._sse: bytes | None = None

    def sse(self) -> bytes:
        chunk = self._sse
        if chunk is None:
            chunk = self._sse = b"".join([d.sse() for d in self.deliveries])
        return chunk


class Selector:
    """Which events one kind of subscriber gets: its filters and its principal's grants.

    The hub keeps one per distinct (principal, grants, filters), shared by the
    members that have them, so a batch is filtered once per kind and the answer
    "may this principal read this stream" is remembered once per kind: checking
    grants was an eighth of the server's time per event when each subscriber
    did it for itself. `Access` is a fixed snapshot of the grants, so the
    answers stay true; a grant change ends every subscription (`end_subscriptions`).
    """

    def __init__(self, access: Access, filters: LogFilter, partitions: int) -> None:
        self.access = access
        self.filters = filters
        self._partitions = partitions
        self._readable: dict[str, bool] = {}

    def select(self, batch: Sequence[Delivery]) -> list[Delivery]:
        """The deliveries of `batch` this kind of subscriber gets, in order."""
        cats, types, parts = self.filters
        readable = self._readable
        out: list[Delivery] = []
        for d in batch:
            e = d.event
            if cats is not None and category_of(e.stream) not in cats:
                continue
            if types is not None and e.type not in types:
                continue
            if parts is not None and partition_of(e.stream, self._partitions) not in parts:
                continue
            allowed = readable.get(e.stream)
            if allowed is None:
                if len(readable) >= _READABLE_CACHE:
                    readable.clear()  # bounded: a log of many streams cannot grow it
                allowed = readable[e.stream] = self.access.can_stream(e.stream, Permission.READ)
            if allowed:
                out.append(d)
        return out


_READABLE_CACHE = 4096
"""Streams whose read permission one selector remembers at most."""

_PAGE = 500
"""Events per store read while a member catches up."""

_RECENT = 10_000
"""Recent events the hub keeps at least (it trims at twice as many): about ten
seconds at 1,000 events/s, shared by every member that fell behind."""


def _position(d: Delivery) -> int:
    return d.event.position


_TAIL_BUFFER = 10_000
"""Events the hub's store subscription may read ahead of its hand-out before it waits."""


class Member:
    """One live subscriber's place at the hub: its selector, its read cursor, its pending events.

    `batches` is the subscriber's side: it reads the store while catching up,
    then takes what the hub left. `offer` is the hub's side, synchronous: it
    never waits for the subscriber.
    """

    def __init__(self, hub: Hub, selector: Selector, from_position: int, bound: int) -> None:
        self.hub = hub
        self.selector = selector
        self.bound = bound
        self.joined = False
        self.closed = False
        self.error: BaseException | None = None
        self.fell_behind = 0
        """How many times the hub dropped this member for being too slow (tests, metrics)."""
        self._cursor = from_position
        self._until: int | None = None
        self._reading = True
        self._floor = 0
        self._pending: list[Part] = []
        self._waiting = 0
        """Events in `_pending`."""
        self._wake = asyncio.Event()

    def offer(self, part: Part) -> None:
        """Take a part of a hand-out (already selected); too many waiting: leave the hub.

        A part larger than the bound is taken when nothing waits: a burst, not a
        slow subscriber (and the part is shared, so it costs this member nothing).
        """
        deliveries = part.deliveries
        if deliveries[0].event.position < self._floor:  # own reads already gave these
            floor = self._floor
            deliveries = [d for d in deliveries if d.event.position >= floor]
            if not deliveries:
                return
            part = Part(deliveries)
        if self._waiting and self._waiting + len(deliveries) > self.bound:
            self.hub.leave(self)
            self.fell_behind += 1
            self.hub.on_fell_behind()
            self._wake.set()
            return
        self._pending.append(part)
        self._waiting += len(deliveries)
        self._floor = deliveries[-1].event.position + 1
        self._wake.set()

    def fail(self, exc: BaseException) -> None:
        """The hub's tail failed (the store closed, a database error): end this member."""
        self.error = exc
        self._wake.set()

    def close(self) -> None:
        """Leave the hub for good; `batches` ends."""
        self.closed = True
        self.hub.detach(self)
        self._wake.set()

    async def batches(self, keepalive: float) -> AsyncIterator[list[Part] | None]:
        """The subscriber's events in position order, in batches of parts; None every
        `keepalive` seconds of silence. Ends when the member is closed; raises the hub's
        error."""
        while not self.closed:
            if self.error is not None:
                raise self.error
            if self._reading:
                batch = await self._read()
                if batch:
                    yield batch
            elif self._pending:
                batch, self._pending, self._waiting = self._pending, [], 0
                yield batch
            elif not self.joined:  # dropped for falling behind: read the store from where it was
                self._reading, self._cursor, self._until = True, self._floor, None
            else:
                self._wake.clear()
                try:
                    async with asyncio.timeout(keepalive):
                        await self._wake.wait()
                except TimeoutError:
                    yield None

    async def _read(self) -> list[Part]:
        """One page of what this member missed, and the step to the hub once the reads
        reach its position: from the hub's recent events when they reach back far
        enough (memory, shared by every member), else from the store."""
        hub = self.hub
        if self._until is None and hub.recent_covers(self._cursor):
            return self._read_recent()
        cats, types, parts = self.selector.filters
        page = await hub.store.read_page(self._cursor, cats, types, _PAGE, parts)
        if self.closed:  # closed while reading (a hang-up, a stop): the hub may be gone
            return []
        done = len(page) < _PAGE
        if page:
            self._cursor = page[-1].position + 1
        until = self._until
        if until is not None:
            if page and page[-1].position >= until:
                done = True
                page = [e for e in page if e.position <= until]
        elif done:
            # the end of the log: on to the hub. What it handed on before is in the
            # store (and in its recent events when they reach back to the cursor):
            # read up to its position first (nothing between the check of the
            # position and the join: no await)
            if not await hub.ready(self):
                return []  # closed while the tail opened
            if hub.recent_covers(self._cursor):
                done = False  # the next read takes the rest from memory, then joins
            else:
                position = hub.join(self)
                if position >= self._cursor:
                    done = False
                    self._until = position
                self._floor = max(position + 1, self._cursor)
        if done:
            self._reading = False
            self._until = None
        selected = self.selector.select([Delivery(e) for e in page]) if page else []
        return [Part(selected)] if selected else []

    def _read_recent(self) -> list[Part]:
        """A page of the hub's recent events from the cursor; past the last one, join.
        Synchronous: the hub hands nothing out between the two."""
        hub = self.hub
        deliveries = hub.recent_from(self._cursor, _PAGE)
        if deliveries:
            self._cursor = deliveries[-1].event.position + 1
        if hub.position is not None and self._cursor > hub.position:
            hub.join(self)
            self._floor = self._cursor
            self._reading = False
        selected = self.selector.select(deliveries) if deliveries else []
        return [Part(selected)] if selected else []


class Hub:
    """The server's one live tail of `store`, handed to every member.

    Its store subscription runs while it has members and stops with the last
    one; `opened` counts the subscriptions it opened (tests check there is one
    per server, not one per subscriber).
    """

    def __init__(self, store: Engine, on_fell_behind: Callable[[], object] = lambda: None) -> None:
        self.store = store
        self.on_fell_behind = on_fell_behind
        """Called each time a member falls behind (the server counts it in a metric)."""
        self.position: int | None = None
        """The last position handed to the joined members; None while the tail opens."""
        self.error: BaseException | None = None
        self.opened = 0
        self._members: set[Member] = set()
        self._joined: dict[Member, None] = {}
        self._selectors: dict[tuple[object, ...], Selector] = {}
        self._recent: list[Delivery] = []
        """The last events handed out (`_RECENT` to twice as many), for members that
        fell behind: they catch up from here, not from the store, while it reaches back."""
        self._evicted = 0
        """The newest position no longer in `_recent` (the tail's start at first)."""
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def members(self) -> int:
        return len(self._members)

    def attach(self, access: Access, filters: LogFilter, from_position: int, bound: int) -> Member:
        """A new member reading from `from_position`; starts the tail if it is the first."""
        key = (access.principal, access.grants, filters)
        selector = self._selectors.get(key)
        if selector is None:
            selector = self._selectors[key] = Selector(access, filters, self.store.partition_count)
        member = Member(self, selector, from_position, bound)
        if self._tasks and self.error is not None:
            self._stop()  # the tail failed; its members were told and are leaving
        self._members.add(member)
        if not self._tasks:
            self._start()
        return member

    def detach(self, member: Member) -> None:
        """Forget `member`; the last one to go stops the tail."""
        self._members.discard(member)
        self._joined.pop(member, None)
        member.joined = False
        if not self._members:
            self._stop()

    def join(self, member: Member) -> int:
        """Hand `member` every event after the position returned (synchronous: exact)."""
        assert self.position is not None
        self._joined[member] = None
        member.joined = True
        return self.position

    def leave(self, member: Member) -> None:
        """Stop handing events to `member` (it fell behind and reads the store again)."""
        self._joined.pop(member, None)
        member.joined = False

    def recent_covers(self, cursor: int) -> bool:
        """Whether every handed-out event from `cursor` on is in the recent events."""
        return self.position is not None and cursor > self._evicted

    def recent_from(self, cursor: int, limit: int) -> list[Delivery]:
        """At most `limit` recent events from position `cursor` on, in order."""
        recent = self._recent
        start = bisect.bisect_left(recent, cursor, key=_position)
        return recent[start : start + limit]

    async def ready(self, member: Member) -> bool:
        """Wait for the tail to be open: True, or False when `member` closed meanwhile.
        Raises the tail's error."""
        while True:
            if member.closed:
                return False
            if self.error is not None:
                raise self.error
            if self.position is not None:
                return True
            await self._ready.wait()

    def _start(self) -> None:
        self.error = None
        self.position = None
        task = asyncio.create_task(self._tail())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._tasks.append(task)

    def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        self._joined.clear()
        self._selectors.clear()
        self._recent = []
        self.position = None
        self._ready.set()  # wake whoever waits (closed members): they look again
        self._ready = asyncio.Event()

    async def _tail(self) -> None:
        """Follow the store; hand on what was read in batches: all that came since the last.

        The store subscription runs in a task of its own that only appends to a
        buffer, so while the hand-out is busy with a batch the next one gathers.
        """
        buffer: list[RecordedEvent] = []
        more = asyncio.Event()
        room = asyncio.Event()

        async def follow(start: int) -> None:
            async for event in self.store.subscribe(start):
                buffer.append(event)
                more.set()
                if len(buffer) >= _TAIL_BUFFER:
                    room.clear()
                    await room.wait()

        reader: asyncio.Task[None] | None = None
        try:
            head = await self.store.last_position()
            self.opened += 1
            reader = asyncio.create_task(follow(head + 1))
            self._recent, self._evicted = [], head
            self.position = head
            self._ready.set()
            while True:
                waiting = asyncio.ensure_future(more.wait())
                await asyncio.wait({waiting, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not waiting.done():
                    waiting.cancel()
                    reader.result()  # the subscription ended: its error
                    raise RuntimeError("the store subscription ended")
                more.clear()
                events = buffer[:]
                buffer.clear()
                room.set()
                if events:
                    self._hand_out([Delivery(e) for e in events])
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                self.error = exc
                self._ready.set()
                for member in list(self._members):
                    member.fail(exc)
            raise
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(BaseException):
                    await reader

    def _hand_out(self, batch: list[Delivery]) -> None:
        """Give each joined member its part of `batch`; one selection per selector."""
        chosen: dict[Selector, Part | None] = {}
        for member in list(self._joined):
            selector = member.selector
            if selector in chosen:
                part = chosen[selector]
            else:
                selected = selector.select(batch)
                part = chosen[selector] = Part(selected) if selected else None
            if part is not None:
                member.offer(part)
        self.position = batch[-1].event.position
        recent = self._recent
        recent.extend(batch)
        if len(recent) > 2 * _RECENT:
            cut = len(recent) - _RECENT
            self._evicted = recent[cut - 1].event.position
            del recent[:cut]
