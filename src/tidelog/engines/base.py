"""The engine contract, layered by capability.

    StreamEngine   streams: append with expected versions, idempotent retries,
       │           atomic multi-stream appends, read a stream, tombstones
    LogEngine      the global log: read every stream in commit order by
       │           position, and subscribe (catch up, then follow live)
    GroupEngine    consumer groups: membership by lease and heartbeat,
                   deterministic partition assignment, generations that fence
                   stale members, checkpoints that only move forward, and
                   checkpoints committed atomically with the handler's appends

Every engine implements all three layers, or raises `NotSupported` for a
feature with a documented reason. `tidelog.testing` holds the conformance
suite that proves an engine keeps this contract.

What engines share is here too, so that each rule has one definition: input
validation (`prepare_append`), the group state machine (`GroupState`), the
live-head notifier (`HeadWatch`), the catch-up-then-live subscription loop and
config-from-URL parsing.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any, NamedTuple, Self, TypeVar, cast
from uuid import UUID

import msgspec

from tidelog.errors import (
    DuplicateEventId,
    GroupError,
    InvalidEvent,
    InvalidInput,
    InvalidURL,
    NotSupported,
    StaleGeneration,
    StoreClosed,
)
from tidelog.model import (
    ANY,
    AppendRequest,
    AppendResult,
    ExpectedVersion,
    GroupMember,
    Membership,
    NewEvent,
    RecordedEvent,
    StreamInfo,
    validate_event,
    validate_expected_version,
    validate_stream_name,
)

__all__ = [
    "DEFAULT_PARTITIONS",
    "Engine",
    "GroupEngine",
    "GroupState",
    "HeadWatch",
    "LogEngine",
    "LogFilter",
    "MAX_POSITION",
    "StreamEngine",
    "assign_partitions",
    "check_checkpoint",
    "check_position",
    "check_read_args",
    "config_from_url",
    "log_filter",
    "prepare_append",
    "prepare_append_many",
    "prepare_delete",
    "prepare_purge",
    "prepare_read_all",
    "prepare_read_stream",
    "resolve_retry",
    "validate_filters",
    "validate_group_key",
    "validate_group_name",
    "validate_partitions",
]

DEFAULT_PARTITIONS = 16
MAX_EVENTS_PER_APPEND = 10_000

C = TypeVar("C", bound=msgspec.Struct)


# --------------------------------------------------------------------------- input


def prepare_append(
    stream: object, events: object, expected_version: object
) -> tuple[str, tuple[NewEvent, ...], ExpectedVersion]:
    """Validate one append's input identically for every engine."""
    name = validate_stream_name(stream)
    expected = validate_expected_version(expected_version)
    if isinstance(events, (str, bytes, NewEvent)) or not isinstance(events, Sequence):
        raise InvalidEvent("events must be a sequence of tidelog.NewEvent")
    if not events:
        raise InvalidEvent("an append needs at least one event")
    if len(events) > MAX_EVENTS_PER_APPEND:
        raise InvalidEvent(f"at most {MAX_EVENTS_PER_APPEND} events per append")
    checked = tuple([validate_event(e) for e in events])
    if len(checked) > 1 and len({e.id for e in checked}) != len(checked):
        raise InvalidEvent(f"an append to {name!r} repeats an event id")
    return name, checked, expected


def prepare_append_many(
    requests: object,
) -> dict[str, tuple[tuple[NewEvent, ...], ExpectedVersion]]:
    """Validate an `append_many` (or a transactional commit's appends)."""
    if not isinstance(requests, Mapping):
        raise InvalidEvent("append_many takes a mapping of stream name to tidelog.AppendRequest")
    if not requests:
        raise InvalidEvent("append_many needs at least one stream")
    out: dict[str, tuple[tuple[NewEvent, ...], ExpectedVersion]] = {}
    seen: set[UUID] = set()
    for stream, request in requests.items():
        if not isinstance(request, AppendRequest):
            raise InvalidEvent("append_many values must be tidelog.AppendRequest")
        name, events, expected = prepare_append(stream, request.events, request.expected_version)
        for e in events:
            if e.id in seen:
                raise InvalidEvent(f"append_many repeats event id {e.id}")
            seen.add(e.id)
        out[name] = (events, expected)
    return out


def resolve_retry(
    stream: str,
    events: Sequence[NewEvent],
    stored: Mapping[UUID, tuple[str, int, int]],
) -> AppendResult | None:
    """Decide whether an append is an idempotent retry, from the ids already stored.

    `stored` maps each of the append's ids that is already in the store to its
    (stream, version, position). Returns None when no id is stored (a fresh
    append), the original result when all are stored in `stream`, and raises
    `DuplicateEventId` otherwise.
    """
    if not stored:
        return None
    if len(stored) != len(events) or any(s != stream for s, _, _ in stored.values()):
        raise DuplicateEventId(stream, list(stored))
    _, version, position = max(stored.values(), key=lambda row: row[2])
    return AppendResult(version=version, position=position)


def validate_group_name(value: object, what: str = "group") -> str:
    """Group, member and category names follow the stream-name rules."""
    try:
        return validate_stream_name(value)
    except InvalidInput as exc:
        raise GroupError(f"invalid {what} name {value!r}") from exc


def validate_group_key(group: object, category: object) -> None:
    """The group and category names every group operation takes."""
    validate_group_name(group)
    validate_group_name(category, "category")


def validate_filters(
    categories: Collection[str] | None, types: Collection[str] | None
) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    if isinstance(categories, str) or isinstance(types, str):
        raise InvalidInput("categories and types take a collection of names, not one string")
    cats = None if categories is None else frozenset(categories)
    tys = None if types is None else frozenset(types)
    return cats, tys


def validate_partitions(partitions: object) -> frozenset[int] | None:
    """The `partitions` filter of a read or subscription: None (no filter) or a
    collection of partition numbers, ints >= 0.

    A number at or above the store's partition count is no error: no stream is
    in that partition, so it matches nothing (`LogFilter.within` drops it).
    """
    if partitions is None:
        return None
    if isinstance(partitions, str | bytes | bytearray | memoryview):
        raise InvalidInput("partitions take a collection of ints, not a string or bytes")
    try:
        numbers = frozenset(cast(Collection[object], partitions))
    except TypeError:
        raise InvalidInput(
            f"partitions take a collection of ints, not {type(partitions).__name__}"
        ) from None
    for p in numbers:
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise InvalidInput(f"invalid partition {p!r}: an int >= 0")
    return cast(frozenset[int], numbers)


class LogFilter(NamedTuple):
    """The filters of a log read, as sets; None is no filter on that field."""

    categories: frozenset[str] | None
    types: frozenset[str] | None
    partitions: frozenset[int] | None

    @property
    def matches_nothing(self) -> bool:
        """A filter given as an empty collection: no event can match, so no query is needed."""
        return frozenset() in (self.categories, self.types, self.partitions)

    def within(self, partition_count: int) -> LogFilter:
        """This filter without the partition numbers a store of `partition_count`
        partitions does not have: they match nothing, and need not reach a query
        (where a number too big for the column would be an error)."""
        if self.partitions is None or all(p < partition_count for p in self.partitions):
            return self
        kept = frozenset(p for p in self.partitions if p < partition_count)
        return self._replace(partitions=kept)


def log_filter(
    categories: Collection[str] | None,
    types: Collection[str] | None,
    partitions: Collection[int] | None,
) -> LogFilter:
    """Validate the filters of `subscribe` (`prepare_read_all` for a read)."""
    cats, tys = validate_filters(categories, types)
    return LogFilter(cats, tys, validate_partitions(partitions))


def prepare_read_all(
    from_position: object,
    categories: Collection[str] | None,
    types: Collection[str] | None,
    limit: object,
    partitions: Collection[int] | None,
) -> LogFilter:
    """Validate the arguments of `read_all` (and `count_events`) identically for every engine.

    The order of the checks decides which error a call with several bad
    arguments gets; it is the same everywhere because it is written once.
    """
    cats, tys = validate_filters(categories, types)
    parts = validate_partitions(partitions)
    check_read_args(from_position, limit, False)
    return LogFilter(cats, tys, parts)


def prepare_read_stream(
    stream: object, from_version: object, backwards: bool, limit: object
) -> str:
    """Validate the arguments of `read_stream`; returns the stream name."""
    name = validate_stream_name(stream)
    check_read_args(from_version, limit, backwards)
    return name


def prepare_delete(stream: object, expected_version: object) -> tuple[str, ExpectedVersion]:
    """Validate the arguments of `delete_stream`."""
    return validate_stream_name(stream), validate_expected_version(expected_version)


def prepare_purge(stream: object) -> str:
    """Validate the argument of `purge_stream`: only system streams can be erased."""
    name = validate_stream_name(stream)
    if not name.startswith("$"):
        raise InvalidInput(f"only system streams ($...) can be purged, not {name!r}")
    return name


def check_read_args(start: object, limit: object, backwards: bool) -> None:
    """Validate a read's start (version or position) and limit; negative starts only backwards."""
    if isinstance(start, bool) or not isinstance(start, int) or (start < 0 and not backwards):
        raise InvalidInput(f"invalid start {start!r}: an int >= 0")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidInput(f"invalid limit {limit!r}: None or an int >= 0")


def check_position(position: object) -> None:
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise InvalidInput(f"invalid position {position!r}: an int >= 0")


MAX_POSITION = 2**63 - 1
"""The largest position or version an engine can store (SQLite and PostgreSQL keep
64-bit integers). A read may start beyond it and finds nothing there."""


def check_checkpoint(position: object) -> None:
    """A position to commit as a checkpoint: one an engine can store, 0 to `MAX_POSITION`.

    Checked before anything is written, so every engine refuses the same values.
    """
    if (
        isinstance(position, bool)
        or not isinstance(position, int)
        or not 0 <= position <= MAX_POSITION
    ):
        raise InvalidInput(f"invalid position {position!r}: an int from 0 to 2**63 - 1")


# --------------------------------------------------------------------------- config


def config_from_url(config_type: type[C], url: str, **fixed: Any) -> C:
    """Build an engine's config Struct from a URL's query string.

    `sqlite:///data.db?synchronous=normal&partitions=32` sets the fields
    `synchronous` and `partitions`; unknown or malformed options raise
    `InvalidURL` instead of being silently ignored.
    """
    parsed = urllib.parse.urlsplit(url)
    options: dict[str, Any] = dict(fixed)
    for key, value in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True):
        if key in options:
            raise InvalidURL(url, f"option {key!r} given twice")
        options[key] = value
    known = {f.encode_name for f in msgspec.structs.fields(config_type)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidURL(url, f"unknown option(s) {', '.join(unknown)}; known: {sorted(known)}")
    try:
        return msgspec.convert(options, config_type, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidURL(url, str(exc)) from None


# --------------------------------------------------------------------------- live head


class HeadWatch:
    """Wakes subscribers when the log's head moves past what they have seen.

    In-process appends call `advance`; engines that learn of appends from
    elsewhere (other processes, LISTEN/NOTIFY) call it too.
    """

    def __init__(self) -> None:
        self._head = 0
        self._changed = asyncio.Event()
        self._closed = False

    @property
    def head(self) -> int:
        return self._head

    def advance(self, position: int) -> None:
        if position > self._head:
            self._head = position
            self._changed.set()
            self._changed = asyncio.Event()

    def close(self) -> None:
        self._closed = True
        self._changed.set()

    async def wait_beyond(self, position: int, within: float | None) -> None:
        """Return when the head passes `position`, after `within` seconds, or on close."""
        if self._head > position or self._closed:
            return
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
        # cancellation that arrives as the event fires, so a cancelled
        # subscription task could run on forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._changed.wait()


# --------------------------------------------------------------------------- groups


class GroupState(msgspec.Struct, kw_only=True):
    """One consumer group on one category, as every engine stores it.

    Engines persist this small document (a row, a key-value entry) and change it
    only through the methods below inside a transaction or compare-and-set, so
    the rules of membership, assignment and fencing are written once.
    """

    generation: int = 0
    members: dict[str, float] = msgspec.field(default_factory=dict)
    """member id -> lease expiry, seconds since the epoch."""

    def _expire(self, now: float) -> None:
        expired = [m for m, until in self.members.items() if until <= now]
        for m in expired:
            del self.members[m]
        if expired:
            self.generation += 1

    def join(self, member: str, now: float, lease: float) -> None:
        self._expire(now)
        if member not in self.members:
            self.generation += 1
        self.members[member] = now + lease

    def heartbeat(self, group: str, category: str, member: str, now: float, lease: float) -> None:
        self._expire(now)
        if member not in self.members:
            raise StaleGeneration(group, category, member, -1, self.generation)
        self.members[member] = now + lease

    def leave(self, member: str, now: float) -> None:
        self._expire(now)
        if self.members.pop(member, None) is not None:
            self.generation += 1

    def check(
        self,
        group: str,
        category: str,
        member: str,
        generation: int,
        partition: int,
        partition_count: int,
        now: float,
    ) -> None:
        """Raise `StaleGeneration` unless `member` may commit `partition` now."""
        until = self.members.get(member)
        if (
            until is None
            or until <= now
            or generation != self.generation
            or partition not in assign_partitions(self.members, partition_count).get(member, ())
        ):
            raise StaleGeneration(group, category, member, generation, self.generation)

    def described(self, group: str, category: str, partition_count: int, now: float) -> Membership:
        """The group as `describe_group` shows it: lapsed leases expired, without joining
        anyone (`member` is empty). Works on a copy, so reading a group never changes it."""
        live = GroupState(generation=self.generation, members=dict(self.members))
        live._expire(now)
        return live.membership(group, category, "", partition_count)

    def membership(
        self, group: str, category: str, member: str, partition_count: int
    ) -> Membership:
        assignment = assign_partitions(self.members, partition_count)
        return Membership(
            group=group,
            category=category,
            member=member,
            generation=self.generation,
            partitions=assignment.get(member, ()),
            partition_count=partition_count,
            members=tuple(
                GroupMember(member=m, partitions=assignment[m], lease_expires_at=self.members[m])
                for m in sorted(self.members)
            ),
        )


def assign_partitions(members: Collection[str], partition_count: int) -> dict[str, tuple[int, ...]]:
    """Deterministic assignment: partition p goes to the (p mod n)-th member in sorted order."""
    ordered = sorted(members)
    out: dict[str, list[int]] = {m: [] for m in ordered}
    if ordered:
        for p in range(partition_count):
            out[ordered[p % len(ordered)]].append(p)
    return {m: tuple(ps) for m, ps in out.items()}


# --------------------------------------------------------------------------- layers


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

    @abc.abstractmethod
    async def append(
        self,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        """Append `events` to `stream` atomically if its version satisfies `expected_version`.

        Returns the version and position of the last event written. If every
        event id is already stored in this stream, nothing is written and the
        original result (of the last of those events) is returned, even when
        `expected_version` no longer matches: that is an idempotent retry. A mix
        of stored and new ids, or ids stored in another stream, raises
        `DuplicateEventId`. Raises `WrongExpectedVersion`, `StreamDeleted`.
        Returns only once the events are durable.
        """

    @abc.abstractmethod
    async def append_many(self, requests: Mapping[str, AppendRequest]) -> dict[str, AppendResult]:
        """Append to several streams in one atomic commit: all or nothing."""

    @abc.abstractmethod
    def read_stream(
        self,
        stream: str,
        from_version: int = 0,
        backwards: bool = False,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Events of one stream from `from_version` (inclusive), in version order.

        Backwards reads start at `from_version` and go down; there a
        `from_version` of -1 means "from the end". A stream with no events
        yields nothing; a deleted one raises `StreamDeleted`.
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


class LogEngine(StreamEngine):
    """Layer 2: the global log, in commit order.

    A reader that has seen position p never later finds an event below p.
    """

    poll_interval: float = 0.05
    """How long a live subscription waits on the head watch before checking again."""

    @abc.abstractmethod
    def read_all(
        self,
        from_position: int = 0,
        categories: Collection[str] | None = None,
        types: Collection[str] | None = None,
        limit: int | None = None,
        partitions: Collection[int] | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Events of every stream with position >= `from_position`, in position order.

        Filters combine with AND: `categories` (stream categories), `types`
        (event types) and `partitions` (stream partitions). `limit` caps how many
        events are yielded.
        """

    async def _read_page(
        self,
        from_position: int,
        categories: Collection[str] | None,
        types: Collection[str] | None,
        limit: int,
        partitions: Collection[int] | None,
    ) -> list[RecordedEvent]:
        """What `read_all` yields with these arguments, as one list: a consumer's read.

        A consumer group's reader takes the log a page at a time. Engines that
        fetch a page in one go override this to skip the async iterator's step
        per event, a good share of a delivery when the handler does little.
        """
        return [e async for e in self.read_all(from_position, categories, types, limit, partitions)]

    async def count_events(
        self,
        from_position: int = 0,
        categories: Collection[str] | None = None,
        partitions: Collection[int] | None = None,
    ) -> int:
        """How many events `read_all` would yield with these filters (consumer lag).

        The default reads them; engines with an index answer with one query.
        """
        count = 0
        async for _ in self.read_all(from_position, categories, None, None, partitions):
            count += 1
        return count

    @abc.abstractmethod
    async def last_position(self) -> int:
        """The position of the newest visible event, 0 when the log is empty."""

    @property
    @abc.abstractmethod
    def partition_count(self) -> int:
        """Partitions per category; fixed when the store is created."""

    @abc.abstractmethod
    def _head_watch(self) -> HeadWatch:
        """The notifier that wakes live subscriptions."""

    async def subscribe(
        self,
        from_position: int = 0,
        categories: Collection[str] | None = None,
        types: Collection[str] | None = None,
        partitions: Collection[int] | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Catch up from `from_position`, then follow live; never ends by itself.

        Each matching event is yielded exactly once and in position order,
        across the switch from catch-up to live. Raises `StoreClosed` when the
        store closes.
        """
        cats, tys, parts = log_filter(categories, types, partitions)
        watch = self._head_watch()
        next_position = max(from_position, 0)
        while True:
            self._check_open()
            head = await self.last_position()
            async for event in self.read_all(
                from_position=next_position, categories=cats, types=tys, partitions=parts
            ):
                next_position = event.position + 1
                yield event
            next_position = max(next_position, head + 1)
            await watch.wait_beyond(next_position - 1, self.poll_interval)


class GroupEngine(LogEngine):
    """Layer 3: consumer groups and checkpoints.

    A group shares a category's partitions among its live members. Membership
    is a lease renewed by heartbeats; every change of the set of live members
    bumps the generation, and only a live member of the current generation
    that owns a partition may commit it (fencing).
    """

    @staticmethod
    def _now() -> float:
        return time.time()

    @abc.abstractmethod
    async def join_group(
        self, group: str, category: str, member: str, lease: float = 10.0
    ) -> Membership:
        """Join (or rejoin) a group; returns the member's partitions and the generation."""

    @abc.abstractmethod
    async def heartbeat(
        self, group: str, category: str, member: str, lease: float = 10.0
    ) -> Membership:
        """Renew the lease. Raises `StaleGeneration` if the member expired or left: rejoin."""

    @abc.abstractmethod
    async def leave_group(self, group: str, category: str, member: str) -> None:
        """Leave at once so the member's partitions move without waiting for its lease."""

    @abc.abstractmethod
    async def commit(
        self,
        group: str,
        category: str,
        partition: int,
        position: int,
        *,
        member: str,
        generation: int,
        appends: Mapping[str, AppendRequest] | None = None,
    ) -> dict[str, AppendResult]:
        """Record that the group handled `partition` up to `position` (inclusive).

        Refused with `StaleGeneration` unless `member` is live, in the current
        `generation`, and owns `partition`. The checkpoint only moves forward: a
        lower position leaves it unchanged. `appends` (the handler's own writes)
        are committed in the same transaction as the checkpoint, so effects are
        exactly-once; engines without transactions raise `NotSupported` for them.
        """

    @abc.abstractmethod
    async def checkpoints(self, group: str, category: str) -> dict[int, int]:
        """The committed position per partition (partitions never committed are absent)."""

    @abc.abstractmethod
    async def describe_group(self, group: str, category: str) -> Membership | None:
        """The group's generation and live members (`member` is empty), or None if unknown.

        Unknown: no group operation ever named it and it has no checkpoints
        (see `list_groups`).
        """

    @abc.abstractmethod
    async def list_groups(self) -> list[tuple[str, str]]:
        """Every (group, category) the store knows, in order.

        A group is known once any group operation named it (join, heartbeat,
        leave or commit, even a refused one: it may have applied lease
        expiries) or it has checkpoints; it stays known after its members leave.
        """


Engine = GroupEngine
"""The full contract; `tidelog.Store` in the public API."""
