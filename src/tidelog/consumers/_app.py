"""`App`: handlers registered per (category, group), and the `Context` they receive.

    app = tidelog.App("billing", "sqlite:///data.db")

    @app.handler("order", group="billing")
    async def on_order(event: tidelog.RecordedEvent, ctx: tidelog.Context) -> None:
        ctx.append(f"invoice-{event.stream}", [tidelog.NewEvent(type="Invoiced")])

`app.run()` (or `tidelog worker module:app`) joins each handler's group and
delivers the partitions this process owns; see `tidelog.consumers._runner`.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import secrets
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, get_type_hints

import msgspec

from tidelog import codec
from tidelog.engines.contract import GroupEngine
from tidelog.errors import InvalidInput
from tidelog.model import (
    ANY,
    AppendRequest,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    validate_stream_name,
)

from ._dlq import DLQ_NAMESPACE

if TYPE_CHECKING:
    from ._runner import Runtime, Stats

__all__ = ["App", "Context", "HandlerOptions", "RunnerOptions"]


@dataclass(frozen=True, kw_only=True)
class HandlerOptions:
    """How one handler is retried, parked and batched."""

    max_attempts: int = 5
    """Attempts before the event is parked in `$dlq-<group>` (1 = no retry)."""
    backoff_initial: float = 0.05
    """Seconds before the first retry; doubles (`backoff_multiplier`) each attempt."""
    backoff_multiplier: float = 2.0
    backoff_max: float = 5.0
    jitter: float = 0.5
    """Each delay is scaled by a random factor in [1 - jitter, 1]: retries of many
    events do not fire in lockstep."""
    on_park: Literal["block", "park_stream"] = "block"
    """What happens to later events of a stream after one of its events is parked:
    `block` holds them in the DLQ and releases them in order once the parked one is
    retried or dropped; `park_stream` parks each of them too (retry or drop each)."""
    batch: int | None = None
    """Deliver lists of up to this many events of one partition (in log order)."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidInput("max_attempts must be >= 1")
        if self.batch is not None and self.batch < 1:
            raise InvalidInput("batch must be None or >= 1")
        if self.on_park not in ("block", "park_stream"):
            raise InvalidInput("on_park must be 'block' or 'park_stream'")
        if not 0 <= self.jitter <= 1:
            raise InvalidInput("jitter must be within [0, 1]")

    def backoff(self, attempt: int, rand: float) -> float:
        """The delay after failed attempt number `attempt` (1-based); `rand` in [0, 1)."""
        base = min(
            self.backoff_max, self.backoff_initial * self.backoff_multiplier ** (attempt - 1)
        )
        return base * (1 - self.jitter * rand)


@dataclass(frozen=True, kw_only=True)
class RunnerOptions:
    """How a process consumes: leases, buffers, pages and commit cadence."""

    lease: float = 10.0
    """Seconds a member stays in its group without a heartbeat."""
    heartbeat_interval: float | None = None
    """Default: a third of the lease."""
    concurrency: int = 64
    """Handler calls running at once in this process, over all partitions."""
    max_in_flight: int = 2000
    """Events fetched but not yet finished, per group consumer: reading pauses at
    this bound, so memory stays bounded whatever the backlog. Twice `page_size`:
    the handlers work through one page while the next is read."""
    page_size: int = 1000
    """Events per read, at most. A read costs a query and a wake-up of every
    partition's worker, so a backlog is read in big pages; a consumer that has
    caught up gets what is there, one event or more, as soon as it is there."""
    commit_interval: float = 0.2
    """Seconds between checkpoint commits of a partition that made progress."""
    commit_every: int = 500
    """Commit sooner once this many events of a partition finished."""
    dlq_poll_interval: float = 0.25
    """How often the DLQ is re-read for retries and drops requested elsewhere."""
    shutdown_timeout: float = 10.0
    """On stop: seconds to let in-flight events finish before abandoning them."""

    @property
    def heartbeat_every(self) -> float:
        return self.heartbeat_interval or self.lease / 3


@dataclass(frozen=True, slots=True)
class DeliveryScope:
    """What every `Context` of one partition run shares: built once, not per event."""

    store: GroupEngine
    group: str
    category: str
    handler: str
    member: str
    partition: int
    claim: int
    registry: codec.EventRegistry | None


_new_object = object.__new__


class Context:
    """What a handler gets beside its event(s).

    `append` buffers the handler's writes; they are committed when the handler
    returns, atomically with the group's checkpoint on engines with
    transactions. Their event ids are derived from the group and the source
    event (`idempotency_key`), so a redelivered event writes nothing twice.
    """

    __slots__ = {
        "_appends": "Created by the first `append`: most handlings append nothing.",
        "_count": "Effects appended so far: the number of the next one (part of its id).",
        "_key": "`idempotency_key`, once asked for.",
        "_scope": "What every delivery of the partition run shares.",
        "_source": "The event(s) delivered.",
        "attempt": "1 on first delivery to the handler in this process, then 2, 3 ... on retries.",
        "generation": "The group generation this delivery belongs to.",
    }
    _scope: DeliveryScope
    generation: int
    attempt: int
    _source: tuple[RecordedEvent, ...]
    _appends: dict[str, tuple[list[NewEvent], ExpectedVersion]] | None
    _count: int
    _key: str | None

    def __init__(
        self,
        *,
        store: GroupEngine,
        group: str,
        category: str,
        handler: str,
        member: str,
        generation: int,
        partition: int,
        claim: int,
        attempt: int,
        source: Sequence[RecordedEvent],
        registry: codec.EventRegistry | None,
    ) -> None:
        self._scope = DeliveryScope(
            store, group, category, handler, member, partition, claim, registry
        )
        self.generation = generation
        self.attempt = attempt
        self._source = tuple(source)
        self._appends = None
        self._count = 0
        self._key = None

    @classmethod
    def _deliver(
        cls,
        scope: DeliveryScope,
        generation: int,
        attempt: int,
        source: tuple[RecordedEvent, ...],
    ) -> Context:
        """The runtime's constructor, once per handler call: sets what `__init__` sets.

        It takes the run's scope as is and skips `__init__` (a call less): this
        runs once per delivered event (`_PartitionRun._work_streams` has it
        written out: keep the two alike).
        """
        self = _new_object(cls)
        self._scope = scope
        self.generation = generation
        self.attempt = attempt
        self._source = source
        self._appends = None
        self._count = 0
        self._key = None
        return self

    @property
    def store(self) -> GroupEngine:
        """The store, for reads. Write through `append` to keep effects exactly-once."""
        return self._scope.store

    @property
    def group(self) -> str:
        return self._scope.group

    @property
    def category(self) -> str:
        return self._scope.category

    @property
    def handler(self) -> str:
        return self._scope.handler

    @property
    def member(self) -> str:
        return self._scope.member

    @property
    def partition(self) -> int:
        return self._scope.partition

    @property
    def claim(self) -> int:
        """Increases each time this process (re)starts a partition from its checkpoint."""
        return self._scope.claim

    @property
    def idempotency_key(self) -> str:
        """Stable across redeliveries of the same event (for a batch: of the same list).

        Derived on first use: most handlers never ask, and formatting a UUID
        would cost as much as the rest of a delivery.
        """
        if self._key is None:
            if len(self._source) == 1:
                key = str(self._source[0].id)
            else:
                key = str(uuid.uuid5(DLQ_NAMESPACE, ",".join(str(e.id) for e in self._source)))
            self._key = f"{self.group}:{key}"
        return self._key

    @property
    def event(self) -> RecordedEvent:
        """The (first) source event."""
        return self._source[0]

    def append(
        self,
        stream: str,
        events: Sequence[NewEvent | msgspec.Struct],
        expected_version: ExpectedVersion = ANY,
    ) -> None:
        """Buffer an append, committed when the handler returns successfully.

        Typed events (`@tidelog.event` Structs) are encoded. Each event gets a
        deterministic id; causation and correlation ids are set from the source
        event. Appends to the same stream within one handling are merged (the
        first expected version counts). A conflict fails the handling: it is
        retried, and parked after `max_attempts`.
        """
        name = validate_stream_name(stream)
        source = self._source[0]
        correlation = source.metadata.get("correlationid", str(source.id))
        registry = self._scope.registry
        out: list[NewEvent] = []
        for e in events:
            new = e if isinstance(e, NewEvent) else codec.encode(e, registry=registry)
            meta = {"causationid": str(source.id), "correlationid": correlation, **new.metadata}
            event_id = uuid.uuid5(DLQ_NAMESPACE, f"{self.idempotency_key}\x00effect:{self._count}")
            self._count += 1
            out.append(replace_event(new, id=event_id, metadata=meta))
        if self._appends is None:
            self._appends = {}
        if name in self._appends:
            self._appends[name][0].extend(out)
        else:
            self._appends[name] = (out, expected_version)

    def _requests(self) -> dict[str, AppendRequest]:
        return {
            s: AppendRequest(events=tuple(evs), expected_version=ev)
            for s, (evs, ev) in (self._appends or {}).items()
        }


def replace_event(event: NewEvent, **changes: Any) -> NewEvent:
    return msgspec.structs.replace(event, **changes)


HandlerFn = Callable[[Any, Context], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class Handler:
    """A registered handler: what it consumes and how to call it."""

    name: str
    category: str
    group: str
    fn: HandlerFn
    options: HandlerOptions
    event_class: type[msgspec.Struct] | None = None
    """The annotated Struct type: events are decoded into it and filtered by its type name."""
    types: frozenset[str] | None = None

    def decode(self, event: RecordedEvent, registry: codec.EventRegistry | None) -> Any:
        if self.event_class is None:
            return event
        return codec.decode(event, registry=registry)

    def invoke(
        self,
        events: Sequence[RecordedEvent],
        ctx: Context,
        registry: codec.EventRegistry | None,
    ) -> Awaitable[None]:
        """The handler's awaitable for `events` (a plain call: no coroutine of its own)."""
        if self.options.batch is not None:
            return self.fn([self.decode(e, registry) for e in events], ctx)
        if self.event_class is None:
            return self.fn(events[0], ctx)
        return self.fn(self.decode(events[0], registry), ctx)


def _event_class(fn: Callable[..., Any], batch: bool) -> type[msgspec.Struct] | None:
    """The Struct a handler's first parameter is annotated with, if any."""
    try:
        hints = get_type_hints(fn)
    except Exception:  # unresolvable annotations: deliver RecordedEvent
        return None
    params = list(inspect.signature(fn).parameters)
    if not params:
        raise InvalidInput(f"handler {fn.__qualname__} must take (event, ctx)")
    hint = hints.get(params[0])
    if batch and hint is not None:
        args = getattr(hint, "__args__", None)
        hint = args[0] if args else None
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct) and hint is not RecordedEvent:
        return hint
    return None


_MEMBER_CHARS = re.compile(r"[^A-Za-z0-9_@:\-]")


def default_member(app_name: str) -> str:
    """A member id unique per process: app, host, pid and a random suffix."""
    host = _MEMBER_CHARS.sub("_", socket.gethostname())[:40]
    return f"{app_name}-{host}-{os.getpid()}-{secrets.token_hex(3)}"


class App:
    """A set of handlers consuming categories in consumer groups.

    `store` is a URL (opened by `run`) or an open store (left open).
    """

    def __init__(
        self,
        name: str,
        store: str | GroupEngine | None = None,
        *,
        options: RunnerOptions | None = None,
        registry: codec.EventRegistry | None = None,
        member: str | None = None,
    ) -> None:
        validate_stream_name(name)
        self.name = name
        self.store = store
        self.options = options or RunnerOptions()
        self.registry = registry
        self.member = member
        self.handlers: list[Handler] = []
        self._runtime: Runtime | None = None

    def handler(
        self,
        category: str,
        *,
        group: str,
        batch: int | None = None,
        max_attempts: int | None = None,
        on_park: Literal["block", "park_stream"] | None = None,
        options: HandlerOptions | None = None,
        name: str | None = None,
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Register `async def fn(event, ctx)` for `category` in consumer group `group`.

        Annotate `event` with a `@tidelog.event` Struct to receive decoded
        events of that type only; with `batch=N`, `fn` receives a list.
        """
        validate_stream_name(category)
        validate_stream_name(group)
        opts = options or HandlerOptions()
        changes: dict[str, Any] = {}
        if batch is not None:
            changes["batch"] = batch
        if max_attempts is not None:
            changes["max_attempts"] = max_attempts
        if on_park is not None:
            changes["on_park"] = on_park
        opts = replace(opts, **changes) if changes else opts

        def deco(fn: HandlerFn) -> HandlerFn:
            if not inspect.iscoroutinefunction(fn):
                raise InvalidInput(f"handler {fn.__qualname__} must be an async function")
            if any(h.group == group and h.category == category for h in self.handlers):
                raise InvalidInput(
                    f"group {group!r} already has a handler for {category!r}: "
                    "use one handler per (category, group)"
                )
            cls = _event_class(fn, opts.batch is not None)
            types = None
            if cls is not None:
                type_name, _ = (self.registry or codec.DEFAULT_REGISTRY).type_of(cls)
                types = frozenset({type_name})
            self.handlers.append(
                Handler(
                    name=name or f"{fn.__module__}.{fn.__qualname__}",
                    category=category,
                    group=group,
                    fn=fn,
                    options=opts,
                    event_class=cls,
                    types=types,
                )
            )
            return fn

        return deco

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume until `stop` is set (or `request_stop` is called), then leave cleanly."""
        from ._runner import Runtime

        self._runtime = runtime = Runtime(self, stop)
        await runtime.run()

    def request_stop(self) -> None:
        """Stop fetching, finish in-flight work (within the shutdown timeout), commit, leave."""
        if self._runtime is not None:
            self._runtime.request_stop()

    @property
    def stats(self) -> Stats | None:
        """Counters of the current (or last) run; None before `run`."""
        return None if self._runtime is None else self._runtime.stats
