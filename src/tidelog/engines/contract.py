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
from collections.abc import AsyncIterator, Collection, Mapping

import msgspec

from tidelog.engines._contract_log import LogEngine
from tidelog.engines._contract_streams import Checked, Checkpoint, StreamEngine, Write
from tidelog.engines._kit.checks import (
    DEFAULT_PARTITIONS,
    MAX_EVENTS_PER_APPEND,
    LogFilter,
    check_checkpoint,
    prepare_append,
    prepare_append_many,
    validate_group_key,
)
from tidelog.engines._kit.groups import check_cooperative, check_release
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
from tidelog.engines._kit.scheduling import due_time
from tidelog.engines._kit.watch import HeadWatch
from tidelog.errors import (
    InvalidInput,
    NotSupported,
    StreamDeleted,
)
from tidelog.model import (
    AppendRequest,
    AppendResult,
    Membership,
    NewEvent,
    RecordedEvent,
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
    "due_time",
    "prepare_append",
]


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

    async def join_group(
        self,
        group: str,
        category: str,
        member: str,
        lease: float = 10.0,
        *,
        cooperative: bool = False,
    ) -> Membership:
        """Join (or rejoin) a group; returns the member's partitions and the generation.

        A `cooperative` member hands partitions over without duplicates: when the
        assignment moves one of its partitions to another member, it keeps the
        partition (listed in its `revoking`) until it releases it by a heartbeat,
        and the new owner waits for it (its `awaiting`); a holder that does not
        release it loses it when its lease runs out or one lease after the
        hand-over began. A member that is not cooperative loses moved partitions
        at once (see `tidelog.engines._kit.groups`). The flag is checked here,
        before the engine's `_join_group` names the group.
        """
        self._check_open()
        check_cooperative(cooperative)
        return await self._join_group(group, category, member, lease, cooperative)

    @abc.abstractmethod
    async def _join_group(
        self, group: str, category: str, member: str, lease: float, cooperative: bool
    ) -> Membership:
        """The engine's join (`GroupState.join`); `join_group` checked `cooperative`."""

    async def heartbeat(
        self,
        group: str,
        category: str,
        member: str,
        lease: float = 10.0,
        *,
        release: Collection[int] = (),
    ) -> Membership:
        """Renew the lease. Raises `StaleGeneration` if the member expired or left: rejoin.

        `release`: partitions of its `revoking` that the member gave up (it
        finished or abandoned their events and committed them): they go to their
        new owner now. Partitions it is not asked to give up are ignored; one
        outside 0..partition_count-1 raises `InvalidInput` here, before the
        engine's `_heartbeat` changes anything.
        """
        self._check_open()
        released = check_release(release, self.partition_count)
        return await self._heartbeat(group, category, member, lease, released)

    @abc.abstractmethod
    async def _heartbeat(
        self, group: str, category: str, member: str, lease: float, release: tuple[int, ...]
    ) -> Membership:
        """The engine's heartbeat (`GroupState.heartbeat`); `release` is checked."""

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
        return await self._set_rule(make_rule(policy, stream, category))

    async def _set_rule(self, rule: RetentionRule) -> RetentionRule:
        """The hook behind `set_retention`: store a checked rule and apply it here.

        The remote engine sends it to the server instead, and a wrapper forwards
        it, so `make_rule`'s checks run once, in `set_retention`.
        """
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

    async def start_stream_at(self, stream: str, version: int) -> None:
        """Make the absent `stream` start at `version`: an empty stream whose versions
        below `version` are gone, the state a scavenge that deleted a whole stream leaves.

        Its next append gets `version` (and expects `version - 1`). `tidelog copy`
        uses it to copy a store whose retention deleted events, so that appends go
        on from the same versions. A no-op for version 0 and for a stream that
        exists or is tombstoned. Engines that cannot raise `NotSupported` with the
        reason (NATS: a stream's version lives in its last message; remote: the
        HTTP API has no route for it).
        """
        self._check_open()
        name = validate_stream_name(stream)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise InvalidInput(f"version must be an int >= 0, got {version!r}")
        if version > 0:
            await self._start_stream_at(name, version)

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
