"""The scavenger and the read filter of retention, written once over the contract.

`visible` is what the read front ends yield under retention; `scavenge_store`
deletes, stream by stream, the prefix that `visible` hides, through the one
engine hook `_delete_before`. Both decide with `RetentionView.hidden`, so a
reader sees the same events before and after a scavenge.

Consumer groups: an event a group of its category has not checkpointed past is
kept unless the policy says `even_if_unconsumed` or `hard_max_age` is passed.
When the scavenger deletes such an event anyway, the groups that lost it are
named: a warning log, the store's `retention_stats["lost"]` counter (exported as
a metric by the server) and a `RetentionLostEvents` event in `$system`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING

import msgspec

from tidelog.engines._kit.checks import LogFilter
from tidelog.engines._kit.retention import (
    LOST_EVENTS_TYPE,
    RETENTION_STREAM,
    SCAVENGER_GROUP,
    SYSTEM_STREAM,
    RetentionPolicy,
    RetentionView,
    ScavengeReport,
)
from tidelog.engines._kit.retention_hooks import StreamStates
from tidelog.errors import NotSupported, StaleGeneration, StoreClosed, StreamDeleted, TidelogError
from tidelog.model import (
    NewEvent,
    RecordedEvent,
    StreamInfo,
    category_of,
    encode_metadata,
    partition_of,
)

if TYPE_CHECKING:
    from tidelog.engines.contract import GroupEngine

__all__ = [
    "Lease",
    "LeaseLost",
    "LostEvents",
    "kept",
    "look_for_rules",
    "scavenge_forever",
    "scavenge_leased",
    "scavenge_store",
    "stream_states",
    "visible",
]

log = logging.getLogger("tidelog.retention")

_NEVER = 2**62
"""A position no log reaches: waiting beyond it is waiting for the timeout or a close."""


class LostEvents(msgspec.Struct, frozen=True, kw_only=True):
    """The data of a `RetentionLostEvents` event in `$system`."""

    group: str
    category: str
    partition: int
    count: int
    first_position: int
    last_position: int
    checkpoint: int


class LeaseLost(Exception):
    """The scavenger's lease went to another process: stop scavenging."""


class Lease:
    """The scavenger's lease: partition 0 of the group `$scavenger` on `$retention`.

    Kept in the store by the consumer-group machinery, so it works across
    processes on every engine. Member names sort in joining order (see
    `GroupEngine.scavenge`), so the oldest live member holds it; it renews it
    (a heartbeat) between batches and stops if it was lost meanwhile, so two
    scavengers never run at once for longer than one batch.
    """

    def __init__(self, store: GroupEngine, member: str, seconds: float) -> None:
        self.store = store
        self.member = member
        self.seconds = seconds
        self._renewed = -math.inf

    async def take(self) -> bool:
        held = await self.store.join_group(
            SCAVENGER_GROUP, RETENTION_STREAM, self.member, lease=self.seconds
        )
        self._renewed = time.monotonic()
        return 0 in held.partitions

    async def check(self) -> None:
        """Renew the lease if a third of it passed; raise `LeaseLost` if it is gone."""
        if time.monotonic() - self._renewed < self.seconds / 3:
            return
        try:
            held = await self.store.heartbeat(
                SCAVENGER_GROUP, RETENTION_STREAM, self.member, lease=self.seconds
            )
        except StaleGeneration:
            raise LeaseLost() from None
        if 0 not in held.partitions:
            raise LeaseLost()
        self._renewed = time.monotonic()

    async def release(self) -> None:
        await self.store.leave_group(SCAVENGER_GROUP, RETENTION_STREAM, self.member)


HeadsOf = Callable[[Collection[str]], Awaitable[StreamStates]]
"""The engine's `_stream_heads`: the state of several streams, asked at once."""

_READ_CHUNK = 256
"""Events `visible` gathers before it asks the states of their new streams at once."""


async def stream_states(
    view: RetentionView,
    events: list[RecordedEvent],
    heads_of: HeadsOf,
    known: StreamStates | None = None,
) -> StreamStates:
    """The state of each stream of `events` whose policy needs it and that `known`
    lacks, in one `heads_of` call (`known`, if given, gets them too)."""
    states: StreamStates = {} if known is None else known
    wanted: set[str] = set()
    for e in events:
        if e.stream not in states and e.stream not in wanted:
            policy = view.policy(e.stream)
            if policy is not None and policy.needs_head:
                wanted.add(e.stream)
    if wanted:
        states.update(await heads_of(wanted))
    return states


def kept(
    view: RetentionView,
    events: list[RecordedEvent],
    states: Mapping[str, tuple[int | None, bool]],
) -> list[RecordedEvent]:
    """The events of a page the rules keep (`states` from `stream_states`)."""
    out = []
    for e in events:
        policy = view.policy(e.stream)
        if policy is not None:
            head, deleted = states.get(e.stream, (None, False))
            if view.hidden(policy, e, head, deleted):
                continue
        out.append(e)
    return out


async def visible(
    view: RetentionView,
    events: AsyncIterator[RecordedEvent],
    limit: int | None,
    heads_of: HeadsOf,
) -> AsyncIterator[RecordedEvent]:
    """The events of `events` the rules keep, up to `limit` of them.

    A stream's last version and tombstone are asked once per stream per read,
    only for policies that need them (`max_count`, `keep_latest`,
    `scavenge_deleted`), and for the new streams of `_READ_CHUNK` events at a
    time in one `heads_of` call: one query on SQL engines where a read of many
    streams used to cost one per stream.
    """
    states: StreamStates = {}
    count = 0
    try:
        if limit == 0:
            return
        chunk: list[RecordedEvent] = []
        done = False
        while not done:
            chunk.clear()
            async for e in events:
                chunk.append(e)
                if len(chunk) >= _READ_CHUNK:
                    break
            else:
                done = True
            await stream_states(view, chunk, heads_of, states)
            for e in kept(view, chunk, states):
                yield e
                count += 1
                if limit is not None and count >= limit:
                    return
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def _streams(store: GroupEngine, view: RetentionView) -> AsyncIterator[StreamInfo]:
    """The streams some rule covers: every stream if a store-wide rule is set, else
    the streams of the categories and the streams named."""
    rules = view.cache.rules
    if ("store", "") in rules:
        async for info in store.list_streams():
            yield info
        return
    named = sorted(name for kind, name in rules if kind == "stream")
    categories = {name for kind, name in rules if kind == "category"}
    for category in sorted(categories):
        async for info in store.list_streams(category):
            yield info
    for name in named:
        if category_of(name) in categories:
            continue
        async for info in store.list_streams(category_of(name)):
            if info.name == name:
                yield info


async def _lost(store: GroupEngine, view: RetentionView, doomed: list[RecordedEvent]) -> int:
    """Name the groups that had not read the events in `doomed` (one stream's prefix)."""
    first = doomed[0]
    category = category_of(first.stream)
    partition = partition_of(first.stream, view.partitions)
    total = 0
    for (group, cat), points in view.cache.groups.items():
        if cat != category:
            continue
        checkpoint = points.get(partition, 0)
        missed = [e for e in doomed if e.position > checkpoint]
        if not missed:
            continue
        total = max(total, len(missed))
        lost = LostEvents(
            group=group,
            category=category,
            partition=partition,
            count=len(missed),
            first_position=missed[0].position,
            last_position=missed[-1].position,
            checkpoint=checkpoint,
        )
        log.warning(
            "retention deleted %d events of %s that group %r had not consumed"
            " (positions %d..%d, its checkpoint is %d)",
            lost.count,
            first.stream,
            group,
            lost.first_position,
            lost.last_position,
            checkpoint,
        )
        event = NewEvent(type=LOST_EVENTS_TYPE, data=msgspec.json.encode(lost))
        await store.append(SYSTEM_STREAM, [event])
        key = f"lost:{group}/{category}"
        store.retention_stats[key] = store.retention_stats.get(key, 0) + lost.count
    return total


_CHUNK = 32
"""Streams decided together: their pages are read at once and their deletes are
one `_delete_many` (one transaction on SQL engines)."""
_FIRST_PAGE = 32
"""The first page read of each stream. Most of a stream is usually kept, and
reading a page only to find its first event kept costs the decoding of the
page: pages start small and double while they are hidden whole, up to
`scavenge_batch`."""


async def _hidden_prefix(
    store: GroupEngine,
    view: RetentionView,
    policy: RetentionPolicy,
    info: StreamInfo,
    start: int,
    size: int,
) -> tuple[list[RecordedEvent], bool]:
    """The hidden prefix of one page (`size` events) of a stream from version `start`,
    and whether the whole page was hidden (the prefix may go on)."""
    try:
        if info.deleted:
            page = await store._read_deleted(info.name, start, size)
        else:
            page = [e async for e in store._read_stream(info.name, start, False, size)]
    except (StreamDeleted, NotSupported):  # deleted meanwhile; an engine that cannot
        return [], False
    doomed: list[RecordedEvent] = []
    for e in page:
        if not view.hidden(policy, e, info.version, info.deleted):
            break
        doomed.append(e)
    return doomed, len(doomed) == len(page) == size


async def _scavenge_chunk(
    store: GroupEngine,
    view: RetentionView,
    todo: list[tuple[StreamInfo, RetentionPolicy]],
    lease: Lease,
) -> tuple[int, int]:
    """Delete the hidden prefix of some streams, a page of each at a time: (deleted, lost)."""
    deleted = lost = 0
    forget = [info.name for info, policy in todo if info.deleted and not policy.keep_tombstone]
    starts = dict.fromkeys((info.name for info, _ in todo), 0)
    size = min(_FIRST_PAGE, store.scavenge_batch)
    while todo:
        pages = await asyncio.gather(
            *(
                _hidden_prefix(store, view, policy, info, starts[info.name], size)
                for info, policy in todo
            )
        )
        size = min(size * 2, store.scavenge_batch)
        await lease.check()
        cuts: dict[str, int] = {}
        more = []
        for (info, policy), (doomed, whole) in zip(todo, pages, strict=True):
            if not doomed:
                continue
            unconsumed = [e for e in doomed if not view.consumed(e)]
            if unconsumed:
                lost += await _lost(store, view, unconsumed)
            cuts[info.name] = starts[info.name] = doomed[-1].version + 1
            if whole:
                more.append((info, policy))
        if cuts:
            deleted += await store._delete_many(cuts)
        todo = more
    for name in forget:  # every event gone: drop the tombstone too
        with contextlib.suppress(NotSupported):
            if not await store._read_deleted(name, 0, 1):
                await store._forget_stream(name)
    return deleted, lost


def event_bytes(event: RecordedEvent) -> int:
    """What `hard_max_bytes` weighs an event: its data and its metadata as stored
    (compact JSON), the same on every engine."""
    return len(event.data) + len(encode_metadata(event.metadata))


async def _byte_cuts(store: GroupEngine, view: RetentionView) -> dict[tuple[str, str], int]:
    """Scope -> the position below which `hard_max_bytes` deletes the scope's events:
    the oldest ones (by position, so a prefix of each stream), down to the cap.

    The scope is the streams the rule covers (the most specific rule wins, as
    for every field). SQL engines weigh it in one aggregate query and read only
    the oldest events when it is over; other engines read the scope's events.
    """
    cuts: dict[tuple[str, str], int] = {}
    for scope, rule in sorted(view.cache.rules.items()):
        cap = None if rule.policy is None else rule.policy.hard_max_bytes
        if cap is None:
            continue
        category = None if scope[0] == "store" else category_of(scope[1])
        sizes = await store._stream_bytes(category)
        total = None
        if sizes is not None:
            total = sum(n for s, n in sizes.items() if view.cache.scope(s) == scope)
            if total <= cap:
                continue
        filters = LogFilter(None if category is None else frozenset([category]), None, None)
        raw = store._read_all(0, filters, None)
        weighed: AsyncIterator[tuple[int, int]] = (
            (e.position, event_bytes(e)) async for e in raw if view.cache.scope(e.stream) == scope
        )
        if total is None:
            listed = [pair async for pair in weighed]
            total = sum(n for _, n in listed)
            weighed = _aiter(listed)
        removed = 0
        async for position, size in weighed:
            if total - removed <= cap:
                break
            removed += size
            cuts[scope] = position + 1
        with contextlib.suppress(AttributeError):
            await raw.aclose()  # type: ignore[attr-defined]
    return cuts


async def _aiter(pairs: list[tuple[int, int]]) -> AsyncIterator[tuple[int, int]]:
    for pair in pairs:
        yield pair


async def scavenge_store(store: GroupEngine, lease: Lease) -> ScavengeReport:
    """One pass over the streams the rules cover, deleting what they hide.

    The rules and the groups' checkpoints are read afresh first, so a rule
    relaxed or a checkpoint moved in another process is honoured. The caller
    took `lease`; it is renewed (or found lost, which ends the pass) between
    batches.
    """
    view = await store._retention_view(force=True)
    if view is None:
        return ScavengeReport()
    view.byte_cuts = await _byte_cuts(store, view)
    deleted = lost = streams = 0
    todo: list[tuple[StreamInfo, RetentionPolicy]] = []
    try:
        async for info in _streams(store, view):
            policy = view.policy(info.name)
            if policy is None or (info.deleted and not policy.scavenge_deleted):
                continue
            if info.version is None and not info.deleted:
                continue
            streams += 1
            todo.append((info, policy))
            if len(todo) == _CHUNK:
                d, n = await _scavenge_chunk(store, view, todo, lease)
                deleted, lost, todo = deleted + d, lost + n, []
        if todo:
            d, n = await _scavenge_chunk(store, view, todo, lease)
            deleted, lost = deleted + d, lost + n
    except LeaseLost:
        log.warning("tidelog scavenger: the lease went to another process; stopping")
    return ScavengeReport(deleted=deleted, streams=streams, lost=lost)


async def scavenge_leased(store: GroupEngine, release: bool) -> ScavengeReport:
    """`GroupEngine.scavenge` under its lock: take the lease, scavenge, and (if
    `release`) leave the lease's group."""
    if not store._scavenger_member:
        # Names sort in joining order, and the first name owns the lease: a
        # process that joins later never takes it from a live holder.
        store._scavenger_member = (
            f"scavenger-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
    seconds = max(store.scavenge_lease, 3 * store.scavenge_interval)
    lease = Lease(store, store._scavenger_member, seconds)
    try:
        if not await lease.take():
            return ScavengeReport(ran=False)
        return await scavenge_store(store, lease)
    finally:
        if release:
            await lease.release()


async def scavenge_forever(store: GroupEngine) -> None:
    """The background scavenger of one process: a pass every `scavenge_interval`
    seconds while it holds the lease, until the store closes."""
    watch = store.head_watch()
    loop = asyncio.get_running_loop()
    while not store._closed:
        # The head watch wakes on every commit and at close: sleep the interval
        # out on it, so that a closed store's scavenger ends at once.
        deadline = loop.time() + store.scavenge_interval
        while not store._closed and (left := deadline - loop.time()) > 0:
            await watch.wait_beyond(_NEVER, left)
        if store._closed:
            return
        try:
            await store.scavenge(release=False)
        except StoreClosed:
            return
        except (TidelogError, OSError) as exc:
            log.warning("tidelog scavenger: %s (retrying in %.0f s)", exc, store.scavenge_interval)


async def look_for_rules(store: GroupEngine, force: bool = False) -> None:
    """Read the rules (which starts the scavenger if there are any), in the
    background: at a process's first write, so that a process that only writes
    scavenges too, and when reads find the cache stale."""
    try:
        await store._retention_view(force)
    except TidelogError as exc:  # a closed or failing store: the next read retries
        log.debug("tidelog retention: could not read the rules: %s", exc)
