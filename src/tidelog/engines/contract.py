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

What engines share lives beside it in `tidelog.engines._kit`, so that each
rule has one definition: input validation, the group state machine
(`GroupState`), the live-head notifier (`HeadWatch`) and config-from-URL
parsing.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Final, NamedTuple, Self

import msgspec

from tidelog.engines._kit.checks import (
    DEFAULT_PARTITIONS,
    MAX_EVENTS_PER_APPEND,
    LogFilter,
    check_checkpoint,
    log_filter,
    prepare_append,
    prepare_append_many,
    prepare_read_all,
    prepare_read_stream,
    validate_group_key,
)
from tidelog.engines._kit.retention import (
    RETENTION_STREAM,
    RULE_TYPE,
    SCAVENGER_GROUP,
    RetentionCache,
    RetentionPolicy,
    RetentionRule,
    RetentionView,
    ScavengeReport,
    make_rule,
    static_floor,
)
from tidelog.engines._kit.retention_hooks import RetentionHooks
from tidelog.engines._kit.scavenger import (
    kept,
    look_for_rules,
    scavenge_forever,
    scavenge_leased,
    stream_states,
    visible,
)
from tidelog.engines._kit.watch import HeadWatch
from tidelog.errors import (
    InvalidInput,
    NotSupported,
    StoreClosed,
    StreamDeleted,
)
from tidelog.model import (
    ANY,
    AppendRequest,
    AppendResult,
    ExpectedVersion,
    Membership,
    NewEvent,
    RecordedEvent,
    StreamInfo,
    category_of,
    validate_stream_name,
)

__all__ = [
    "DEFAULT_PARTITIONS",
    "MAX_EVENTS_PER_APPEND",
    "Checked",
    "Checkpoint",
    "Engine",
    "GroupEngine",
    "HeadWatch",
    "LogEngine",
    "LogFilter",
    "StreamEngine",
    "Write",
    "prepare_append",
]


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
        self._check_open()
        if not self._wrote:
            self._first_write()
        name, checked, expected = prepare_append(stream, events, expected_version)
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
        from_version: int = 0,
        backwards: bool = False,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Events of one stream from `from_version` (inclusive), in version order.

        Backwards reads start at `from_version` and go down; there a
        `from_version` of -1 means "from the end". A stream with no events
        yields nothing; a deleted one raises `StreamDeleted`.

        The arguments are checked here, when the call is made, and the engine's
        `_read_stream` does the reading: an iterator that re-yielded the
        engine's events would cost a step per event on every replay.
        """
        self._check_open()
        name = prepare_read_stream(stream, from_version, backwards, limit)
        if self._retention_idle():
            return self._read_stream(name, from_version, backwards, limit)
        return self._read_stream_retained(name, from_version, backwards, limit)

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
        """The engine's read of one stream; `read_stream` checked the arguments."""

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
        events are yielded. Checked here, read by the engine's `_read_all`.
        """
        self._check_open()
        filters = prepare_read_all(from_position, categories, types, limit, partitions)
        if self._retention_idle():
            return self._read_all(from_position, filters, limit)
        return self._read_all_retained(from_position, filters, limit)

    def _read_all_retained(
        self, from_position: int, filters: LogFilter, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        """`read_all` under the retention rules (`GroupEngine` applies them)."""
        return self._read_all(from_position, filters, limit)

    @abc.abstractmethod
    def _read_all(
        self, from_position: int, filters: LogFilter, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        """The engine's read of the log; `read_all` checked the arguments."""

    async def read_page(
        self,
        from_position: int,
        categories: Collection[str] | None,
        types: Collection[str] | None,
        limit: int,
        partitions: Collection[int] | None,
    ) -> list[RecordedEvent]:
        """What `read_all` yields with these arguments, as one list: a consumer's read.

        A consumer group's reader takes the log a page at a time.
        """
        self._check_open()
        filters = prepare_read_all(from_position, categories, types, limit, partitions)
        if self._retention_idle():
            return await self._read_page(from_position, filters, limit)
        return await self._read_page_retained(from_position, filters, limit)

    async def _read_page_retained(
        self, from_position: int, filters: LogFilter, limit: int
    ) -> list[RecordedEvent]:
        """`read_page` under the retention rules (`GroupEngine` applies them)."""
        return await self._read_page(from_position, filters, limit)

    async def _read_page(
        self, from_position: int, filters: LogFilter, limit: int
    ) -> list[RecordedEvent]:
        """The engine's page read. Engines that fetch a page in one go override this
        to skip the async iterator's step per event, a good share of a delivery
        when the handler does little."""
        return [e async for e in self._read_all(from_position, filters, limit)]

    async def count_events(
        self,
        from_position: int = 0,
        categories: Collection[str] | None = None,
        partitions: Collection[int] | None = None,
    ) -> int:
        """How many events `read_all` would yield with these filters (consumer lag)."""
        self._check_open()
        filters = prepare_read_all(from_position, categories, None, None, partitions)
        if self._retention_idle():
            return await self._count_events(from_position, filters)
        return await self._count_retained(from_position, filters)

    async def _count_retained(self, from_position: int, filters: LogFilter) -> int:
        """`count_events` under the retention rules (`GroupEngine` applies them)."""
        return await self._count_events(from_position, filters)

    async def _count_events(self, from_position: int, filters: LogFilter) -> int:
        """The engine's count. The default reads the events; engines with an index
        answer with one query."""
        count = 0
        async for _ in self._read_all(from_position, filters, None):
            count += 1
        return count

    @abc.abstractmethod
    async def last_position(self) -> int:
        """The position of the newest visible event, 0 when the log is empty."""

    async def first_position(self) -> int:
        """The low-water mark: the position of the oldest event still stored.

        Retention's scavenger deletes the oldest events; positions below this one
        are gone for good and never reused. An empty log answers
        `last_position() + 1`, where the next event will be.
        """
        self._check_open()
        async for event in self._read_all(0, _NO_FILTER, 1):
            return event.position
        return await self.last_position() + 1

    @property
    @abc.abstractmethod
    def partition_count(self) -> int:
        """Partitions per category; fixed when the store is created."""

    @abc.abstractmethod
    def head_watch(self) -> HeadWatch:
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
        watch = self.head_watch()
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


class GroupEngine(RetentionHooks, LogEngine):
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
        A position beyond the head of the log is refused with `InvalidInput`: a
        checkpoint there would make the group skip every event written up to it.

        The member is fenced before its input is judged: a stale member gets
        `StaleGeneration` whatever position or appends it sent, and only a current
        one learns that its position or appends are invalid.
        """
        self._check_open()
        check_checkpoint(position)
        validate_group_key(group, category)
        checkpoint = Checkpoint(group, category, partition, position, member, generation)
        try:
            checked = prepare_append_many(appends) if appends else {}
            if await self._beyond_head(position):
                raise InvalidInput(
                    f"checkpoint {position} is beyond the head of the log: "
                    "commit only positions that were read"
                )
        except InvalidInput:
            await self._apply_write(Write({}, checkpoint, fence_only=True))
            raise
        return await self._apply_write(Write(checked, checkpoint))

    async def _beyond_head(self, position: int) -> bool:
        """Whether `position` is past the newest event of the log, checked before the write.

        The head watch never runs ahead of the real head, so a position at or
        below it needs no query (a consumer commits what it read, which the
        watch has usually seen); only a position beyond it costs a
        `last_position`. Positions only grow, so a position found within the
        head stays within it when the checkpoint is written.
        """
        return position > self.head_watch().head and position > await self.last_position()

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

    # ------------------------------------------------------------------ retention
    # Rules live in `$retention` (see `tidelog.engines._kit.retention`); the read
    # front ends above apply them, the scavenger deletes what they hide. An
    # engine gives one hook, `_delete_before`; the rest is written here.

    applies_retention: bool = True
    """False for a client of a server (`remote`): the server applies the rules."""
    scavenge_interval: float = 10.0
    """Seconds between two rounds of the background scavenger."""
    scavenge_lease: float = 30.0
    """Seconds the scavenger's lease lasts unless renewed: how long a crashed
    scavenger keeps the others waiting."""
    scavenge_batch: int = 1000
    """Events examined (and at most deleted) per stream per step of a scavenge."""
    _retention: RetentionCache | None = None
    _scavenger: asyncio.Task[None] | None = None
    _scavenge_lock: asyncio.Lock | None = None
    _scavenger_member: str = ""

    @property
    def retention_stats(self) -> dict[str, int]:
        """Counters of this process's scavenges, for metrics: `deleted`, `lost`, `runs`,
        and `lost:<group>/<category>`, the events each group lost."""
        stats: dict[str, int] | None = self.__dict__.get("_retention_stats")
        if stats is None:
            stats = self.__dict__["_retention_stats"] = {"deleted": 0, "lost": 0, "runs": 0}
        return stats

    def _retention_idle(self) -> bool:
        """No rule known: reads take their usual path (a replay is never re-yielded).

        A cache that went stale without rules is refreshed in the background
        (a rule set by another process applies here from then on); a store never
        refreshed (opened without `connect`) takes the filtering path once.
        """
        cache = self._retention
        if not self.applies_retention:
            return True
        if cache is None or cache.rules:
            return False
        if cache.stale():
            cache.checked_at = time.monotonic()  # one refresh at a time
            with contextlib.suppress(RuntimeError):  # no running loop
                task = asyncio.get_running_loop().create_task(look_for_rules(self, force=True))
                self.__dict__["_looking"] = task  # a reference, so the task is not collected
        return True

    async def _retention_view(self, force: bool = False) -> RetentionView | None:
        """The rules now, or None if there are none; re-read when stale (or `force`)."""
        cache = self._retention
        if cache is None:
            cache = self._retention = RetentionCache()
        if force or cache.stale():
            cache.checked_at = time.monotonic()  # concurrent readers use what is cached
            try:
                events = [
                    e
                    async for e in self._read_stream(
                        RETENTION_STREAM, cache.version + 1, False, None
                    )
                ]
            except StreamDeleted:
                events = []
            if events:
                cache.version = events[-1].version
            groups: dict[tuple[str, str], dict[int, int]] = {}
            if cache.rules or any(e.type == RULE_TYPE for e in events):
                for key in await self.list_groups():
                    if key[0] != SCAVENGER_GROUP:
                        groups[key] = await self.checkpoints(*key)
                self._start_scavenger()
            cache.update(events, groups, self.partition_count)
        if not cache.rules:
            return None
        return RetentionView(cache, self._now(), self.partition_count)

    async def _stream_state(self, stream: str) -> tuple[int | None, bool]:
        """(last version or None, tombstoned) of `stream`, as retention decides with it."""
        try:
            async for e in self._read_stream(stream, -1, True, 1):
                return e.version, False
        except StreamDeleted:
            return None, True
        return None, False

    async def _read_stream_retained(
        self, stream: str, from_version: int, backwards: bool, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        view = await self._retention_view()
        policy = None if view is None else view.policy(stream)
        if view is None or policy is None or limit == 0:
            async for e in self._read_stream(stream, from_version, backwards, limit):
                yield e
            return
        head = (await self._stream_state(stream))[0] if policy.needs_head else None
        unprotected = policy.even_if_unconsumed or category_of(stream) not in view.cache.grouped
        if not backwards and unprotected:  # skip what the version-based conditions hide
            from_version = max(from_version, static_floor(policy, head))
        raw = self._read_stream(stream, from_version, backwards, None)
        async for e in visible(view, raw, limit, self._stream_heads):
            yield e

    async def _read_all_retained(
        self, from_position: int, filters: LogFilter, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        view = await self._retention_view()
        raw = self._read_all(from_position, filters, None if view else limit)
        if view is None:
            async for e in raw:
                yield e
            return
        async for e in visible(view, raw, limit, self._stream_heads):
            yield e

    async def _read_page_retained(
        self, from_position: int, filters: LogFilter, limit: int
    ) -> list[RecordedEvent]:
        """Pages of the engine until `limit` events are kept or the log ends."""
        view = await self._retention_view()
        page = await self._read_page(from_position, filters, limit)
        if view is None:
            return page
        out: list[RecordedEvent] = []
        while True:
            # A consumer's read: filtered as a list, without a step of an async
            # iterator per event (see `_read_page`).
            states = await stream_states(view, page, self._stream_heads)
            out += kept(view, page, states)[: limit - len(out)]
            if len(out) >= limit or len(page) < limit or not page:
                return out
            page = await self._read_page(page[-1].position + 1, filters, limit)

    async def set_retention(
        self,
        policy: RetentionPolicy | None,
        *,
        stream: str | None = None,
        category: str | None = None,
    ) -> RetentionRule:
        """Set (or with None, clear) the policy of one stream, one category, or the store.

        Reads honour it at once in this process, and in every other one within
        `REFRESH_INTERVAL`; the scavenger deletes what it hides later. The rule
        is an event of `$retention`, so `tidelog copy` carries it.
        """
        self._check_open()
        rule = make_rule(policy, stream, category)
        data = msgspec.json.encode(rule)
        await self.append(RETENTION_STREAM, [NewEvent(type=RULE_TYPE, data=data)])
        await self._retention_view(force=True)  # the rule, and the groups it protects
        assert self._retention is not None
        self._retention.apply(rule)
        self._start_scavenger()
        return rule

    async def retention(self, stream: str | None = None) -> list[RetentionRule]:
        """Every rule set, in scope order; with `stream`, the one rule that applies to it."""
        self._check_open()
        await self._retention_view(force=True)
        assert self._retention is not None
        rules = self._retention.rules
        if stream is None:
            return [rules[k] for k in sorted(rules)]
        name = validate_stream_name(stream)
        keys = [("stream", name), ("category", category_of(name))]
        if not name.startswith("$"):
            keys.append(("store", ""))
        for key in keys:
            if key in rules:
                return [rules[key]]
        return []

    async def _delete_before(self, stream: str, version: int) -> int:
        """The engine's retention hook: delete the events of `stream` below `version`.

        Physically, and durably before returning; the stream's version, its
        tombstone and the positions of the log stay as they were (a position is
        never reused). Returns how many events went. Engines that cannot delete
        raise `NotSupported` with the reason.
        """
        raise NotSupported(self.name, "retention", "this engine cannot delete events")

    async def _read_deleted(
        self, stream: str, from_version: int, limit: int
    ) -> list[RecordedEvent]:
        """Retention's hook for tombstoned streams: their stored events from
        `from_version`, at most `limit` (reads refuse them with `StreamDeleted`).
        Engines without it raise `NotSupported`: their tombstoned streams are
        not scavenged."""
        raise NotSupported(self.name, "scavenging deleted streams")

    async def _forget_stream(self, stream: str) -> None:
        """Retention's hook for `keep_tombstone=False`: drop a tombstoned stream whose
        events are all gone, so that its name can be used again (from version 0)."""
        raise NotSupported(self.name, "forgetting deleted streams")

    async def _delete_many(self, cuts: Mapping[str, int]) -> int:
        """`_delete_before` for several streams (stream -> version); how many events went.

        The scavenger deletes a few dozen streams' prefixes at a time; engines
        that can do it in one transaction override this, the rest inherit one
        `_delete_before` per stream.
        """
        deleted = 0
        for stream, version in cuts.items():
            deleted += await self._delete_before(stream, version)
        return deleted

    async def scavenge(self, *, release: bool = True) -> ScavengeReport:
        """Delete, for good, the events the retention rules hide; returns what it did.

        One scavenger at a time per store, across processes: the caller must
        hold the lease (`Lease`: partition 0 of the group `$scavenger` on
        `$retention`), else nothing happens (`ran` False); a scavenger that loses
        it midway stops. `release` leaves the group after.
        """
        self._check_open()
        if self._scavenge_lock is None:
            self._scavenge_lock = asyncio.Lock()
        async with self._scavenge_lock:
            report = await scavenge_leased(self, release)
        stats = self.retention_stats
        stats["runs"] += 1
        stats["deleted"] += report.deleted
        stats["lost"] += report.lost
        return report

    def _first_write(self) -> None:
        self._wrote = True
        if self.applies_retention and self._retention is None:
            with contextlib.suppress(RuntimeError):  # no running loop
                task = asyncio.get_running_loop().create_task(look_for_rules(self))
                self.__dict__["_looking"] = task

    def _start_scavenger(self) -> None:
        """Start the background scavenger of this process (once; it ends with the store)."""
        if self._scavenger is None and self.applies_retention and not self._closed:
            with contextlib.suppress(RuntimeError):  # no running loop
                self._scavenger = asyncio.get_running_loop().create_task(scavenge_forever(self))


Engine = GroupEngine
"""The full contract; `tidelog.Store` in the public API."""
