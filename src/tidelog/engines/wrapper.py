"""`StoreWrapper`: a store around another store that forwards the whole contract.

A wrapper changes one thing about a store (`ValidatingStore` checks what is
written against the schema registry) and must answer everything else exactly
as the store it wraps would, including the methods an engine overrides for
speed: the contract's defaults of `read_page` and `count_events` are correct
but slow (the lag of a consumer group counted by reading every event), so a
wrapper that fell back to them would silently undo the engine's indexes.

So this base forwards every method of the contract to `inner`. Where the
contract has a front end and an engine hook (`append`, `append_many` and
`commit` over `_apply_write`; `read_stream`, `read_all`, `read_page`,
`count_events` and `subscribe` over `_read_stream`, `_read_all`, `_read_page`,
`_count_events` and `_subscribe`), it forwards the hook, so the wrapper keeps
the contract's one front end (argument checks, fence-first commits) and
reaches the inner engine's own work. A subclass overrides `_apply_write` (and what it truly
changes), never the front ends. `tests/test_store_wrapper.py` enumerates the
contract and fails if a wrapper answers any method from a base-class default,
so a method added to the contract later cannot be missed here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from uuid import UUID

from tidelog.engines._kit.retention import (
    RetentionRule,
    RetentionView,
    ScavengeReport,
)
from tidelog.engines._kit.retention_hooks import StreamStates
from tidelog.engines.contract import (
    Engine,
    GroupEngine,
    HeadWatch,
    LogFilter,
    Write,
)
from tidelog.model import (
    ANY,
    AppendResult,
    ExpectedVersion,
    Membership,
    RecordedEvent,
    ScheduledEvent,
    StreamInfo,
)

__all__ = ["StoreWrapper"]


class StoreWrapper(GroupEngine):
    """Forwards every contract method to `inner`; subclass it and override `_apply_write`.

    The wrapper has no state of its own: it is open while `inner` is, and
    closing it closes `inner`.
    """

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name

    def _check_open(self) -> None:
        """The front ends' closed check asks `inner`: closing either closes both."""
        self.inner._check_open()

    @property
    def poll_interval(self) -> float:
        """The inner store's: consumers wait on the head watch this long between checks."""
        return self.inner.poll_interval

    @poll_interval.setter
    def poll_interval(self, value: float) -> None:
        self.inner.poll_interval = value

    async def _apply_write(self, write: Write) -> dict[str, AppendResult]:
        """Make `write` durable in `inner`: the one write hook, forwarded."""
        return await self.inner._apply_write(write)

    # ------------------------------------------------------------------ layer 1

    def _read_stream(
        self, stream: str, from_version: int, backwards: bool, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        return self.inner._read_stream(stream, from_version, backwards, limit)

    async def delete_stream(self, stream: str, expected_version: ExpectedVersion = ANY) -> None:
        await self.inner.delete_stream(stream, expected_version)

    async def purge_stream(self, stream: str) -> None:
        await self.inner.purge_stream(stream)

    def list_streams(self, category: str | None = None) -> AsyncIterator[StreamInfo]:
        return self.inner.list_streams(category)

    async def close(self) -> None:
        await self._stop_scheduler()
        await self.inner.close()

    # ------------------------------------------------------------ scheduled delivery
    # The hooks are forwarded; the wrapper's own scheduler (the contract's
    # `start_scheduler`) moves due events through the wrapper's `append_many`,
    # so what the wrapper changes about writes applies to them too.

    @property
    def supports_scheduling(self) -> bool:
        return self.inner.supports_scheduling

    async def _schedule(self, rows: Sequence[ScheduledEvent]) -> None:
        await self.inner._schedule(rows)

    async def _take_due(self, now: float, limit: int, lease: float) -> list[ScheduledEvent]:
        return await self.inner._take_due(now, limit, lease)

    async def _next_due(self) -> float | None:
        return await self.inner._next_due()

    async def _forget_scheduled(self, ids: Sequence[UUID]) -> None:
        await self.inner._forget_scheduled(ids)

    async def _cancel_scheduled(self, event_id: UUID) -> bool:
        return await self.inner._cancel_scheduled(event_id)

    async def _list_scheduled(self, stream: str | None, limit: int) -> list[ScheduledEvent]:
        return await self.inner._list_scheduled(stream, limit)

    async def _count_scheduled(self) -> int:
        return await self.inner._count_scheduled()

    # ------------------------------------------------------------------ layer 2

    def _read_all(
        self, from_position: int, filters: LogFilter, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        return self.inner._read_all(from_position, filters, limit)

    async def _read_page(
        self, from_position: int, filters: LogFilter, limit: int
    ) -> list[RecordedEvent]:
        return await self.inner._read_page(from_position, filters, limit)

    async def _count_events(self, from_position: int, filters: LogFilter) -> int:
        return await self.inner._count_events(from_position, filters)

    async def last_position(self) -> int:
        return await self.inner.last_position()

    @property
    def partition_count(self) -> int:
        return self.inner.partition_count

    def head_watch(self) -> HeadWatch:
        return self.inner.head_watch()

    def _subscribe(self, from_position: int, filters: LogFilter) -> AsyncIterator[RecordedEvent]:
        return self.inner._subscribe(from_position, filters)

    # ------------------------------------------------------------------ layer 3

    async def _join_group(
        self, group: str, category: str, member: str, lease: float, cooperative: bool
    ) -> Membership:
        return await self.inner.join_group(group, category, member, lease, cooperative=cooperative)

    async def _heartbeat(
        self, group: str, category: str, member: str, lease: float, release: tuple[int, ...]
    ) -> Membership:
        return await self.inner.heartbeat(group, category, member, lease, release=release)

    async def leave_group(self, group: str, category: str, member: str) -> None:
        await self.inner.leave_group(group, category, member)

    async def checkpoints(self, group: str, category: str) -> dict[int, int]:
        return await self.inner.checkpoints(group, category)

    async def describe_group(self, group: str, category: str) -> Membership | None:
        return await self.inner.describe_group(group, category)

    async def list_groups(self) -> list[tuple[str, str]]:
        return await self.inner.list_groups()

    # ------------------------------------------------------------------ retention
    # The rules, their cache and the scavenger are the inner store's: a rule set
    # through either is in force through both at once. The contract's read front
    # ends of the wrapper filter with the inner store's view.

    @property
    def applies_retention(self) -> bool:  # type: ignore[override]
        return self.inner.applies_retention

    @property
    def scavenge_interval(self) -> float:  # type: ignore[override]
        return self.inner.scavenge_interval

    @property
    def scavenge_lease(self) -> float:  # type: ignore[override]
        return self.inner.scavenge_lease

    @property
    def scavenge_batch(self) -> int:  # type: ignore[override]
        return self.inner.scavenge_batch

    @property
    def retention_stats(self) -> dict[str, int]:
        return self.inner.retention_stats

    def _retention_idle(self) -> bool:
        return self.inner._retention_idle()

    async def _retention_view(self, force: bool = False) -> RetentionView | None:
        return await self.inner._retention_view(force)

    async def _set_rule(self, rule: RetentionRule) -> RetentionRule:
        return await self.inner._set_rule(rule)

    async def retention(self, stream: str | None = None) -> list[RetentionRule]:
        return await self.inner.retention(stream)

    async def scavenge(self, *, release: bool = True) -> ScavengeReport:
        return await self.inner.scavenge(release=release)

    async def first_position(self) -> int:
        return await self.inner.first_position()

    async def _stream_heads(self, streams: Collection[str]) -> StreamStates:
        return await self.inner._stream_heads(streams)

    async def _stream_bytes(self, category: str | None) -> dict[str, int] | None:
        return await self.inner._stream_bytes(category)

    async def _count_below(self, floors: Mapping[str, int], from_position: int) -> int | None:
        return await self.inner._count_below(floors, from_position)

    async def _start_stream_at(self, stream: str, version: int) -> None:
        await self.inner._start_stream_at(stream, version)
