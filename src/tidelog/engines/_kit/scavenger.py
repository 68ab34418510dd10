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

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec

from tidelog.engines._kit.retention import (
    LOST_EVENTS_TYPE,
    SYSTEM_STREAM,
    RetentionPolicy,
    RetentionView,
    ScavengeReport,
)
from tidelog.errors import StreamDeleted
from tidelog.model import NewEvent, RecordedEvent, StreamInfo, category_of, partition_of

if TYPE_CHECKING:
    from tidelog.engines.contract import GroupEngine

__all__ = ["LostEvents", "scavenge_store", "visible"]

log = logging.getLogger("tidelog.retention")


class LostEvents(msgspec.Struct, frozen=True, kw_only=True):
    """The data of a `RetentionLostEvents` event in `$system`."""

    group: str
    category: str
    partition: int
    count: int
    first_position: int
    last_position: int
    checkpoint: int


async def visible(
    view: RetentionView,
    events: AsyncIterator[RecordedEvent],
    limit: int | None,
    head_of: Callable[[str], Awaitable[int | None]],
) -> AsyncIterator[RecordedEvent]:
    """The events of `events` the rules keep, up to `limit` of them.

    `head_of(stream)` gives a stream's last version, asked once per stream per
    read and only for policies that count (`max_count`, `keep_latest`).
    """
    heads: dict[str, int | None] = {}
    count = 0
    try:
        if limit == 0:
            return
        async for e in events:
            policy = view.policy(e.stream)
            if policy is not None:
                head = None
                if policy.needs_head:
                    if e.stream not in heads:
                        heads[e.stream] = await head_of(e.stream)
                    head = heads[e.stream]
                if view.hidden(policy, e, head):
                    continue
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
    return total


async def _scavenge_stream(
    store: GroupEngine, view: RetentionView, policy: RetentionPolicy, info: StreamInfo
) -> tuple[int, int]:
    """Delete the hidden prefix of one stream, a batch at a time: (deleted, lost)."""
    deleted = lost = 0
    head = info.version
    start = 0
    while True:
        try:
            page = [
                e async for e in store._read_stream(info.name, start, False, store.scavenge_batch)
            ]
        except StreamDeleted:
            return deleted, lost
        doomed: list[RecordedEvent] = []
        for e in page:
            if not view.hidden(policy, e, head):
                break
            doomed.append(e)
        if not doomed:
            return deleted, lost
        unconsumed = [e for e in doomed if not view.consumed(e)]
        if unconsumed:
            lost += await _lost(store, view, unconsumed)
        deleted += await store._delete_before(info.name, doomed[-1].version + 1)
        if len(doomed) < len(page) or len(page) < store.scavenge_batch:
            return deleted, lost
        start = doomed[-1].version + 1


async def scavenge_store(store: GroupEngine) -> ScavengeReport:
    """One pass over the streams the rules cover, deleting what they hide.

    The rules and the groups' checkpoints are read afresh first, so a rule
    relaxed or a checkpoint moved in another process is honoured. The caller
    holds the scavenger lease.
    """
    view = await store._retention_view(force=True)
    if view is None:
        return ScavengeReport()
    deleted = lost = streams = 0
    async for info in _streams(store, view):
        policy = view.policy(info.name)
        if policy is None or info.deleted or info.version is None:
            continue
        streams += 1
        d, n = await _scavenge_stream(store, view, policy, info)
        deleted += d
        lost += n
    return ScavengeReport(deleted=deleted, streams=streams, lost=lost)
