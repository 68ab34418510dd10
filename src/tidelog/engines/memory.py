"""The in-memory reference engine: simple and obviously right.

It is the oracle of the property-based model test and the engine for users'
unit tests (`memory://`). Everything happens on the event loop without an
await between a check and a write, so every operation is atomic.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from uuid import UUID

import msgspec

from tidelog.engines._kit.checks import (
    DEFAULT_PARTITIONS,
    LogFilter,
    prepare_delete,
    prepare_purge,
    resolve_retry,
    validate_group_key,
    validate_group_name,
)
from tidelog.engines._kit.groups import GroupState
from tidelog.engines._kit.scheduling import to_micros
from tidelog.engines._kit.urls import config_from_url
from tidelog.engines._kit.watch import HeadWatch
from tidelog.engines.contract import GroupEngine, Write
from tidelog.errors import InvalidInput, StreamDeleted
from tidelog.model import (
    ANY,
    AppendResult,
    ExpectedVersion,
    Membership,
    NewEvent,
    RecordedEvent,
    ScheduledEvent,
    StreamInfo,
    category_of,
    check_expected_version,
    partition_of,
)

__all__ = ["MemoryConfig", "MemoryEngine", "open_engine"]


class MemoryConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Options of the memory engine (`memory://?partitions=8`)."""

    partitions: int = DEFAULT_PARTITIONS


class MemoryEngine(GroupEngine):
    name = "memory"

    def __init__(self, config: MemoryConfig | None = None) -> None:
        self.config = config or MemoryConfig()
        if self.config.partitions < 1:
            raise InvalidInput("partitions must be >= 1")
        self._log: list[RecordedEvent | None] = []
        """Index = position - 1; a purged event's slot is None (a gap)."""
        self._streams: dict[str, list[RecordedEvent]] = {}
        self._dropped: dict[str, int] = {}
        """Events retention deleted from the front of a stream: its list starts at that version."""
        self._deleted: set[str] = set()
        self._ids: dict[UUID, RecordedEvent] = {}
        self._groups: dict[tuple[str, str], GroupState] = {}
        self._checkpoints: dict[tuple[str, str], dict[int, int]] = {}
        self._watch = HeadWatch()
        self._pending: dict[UUID, ScheduledEvent] = {}
        """Scheduled events not yet delivered; `_ready` holds when each may be taken."""
        self._ready: dict[UUID, float] = {}
        self._batches: dict[UUID, list[UUID]] = {}
        self._due_heap: list[tuple[float, int, UUID]] = []
        """(ready time, tie-break, id); entries whose ready time changed are skipped."""
        self._tie = itertools.count()

    # ------------------------------------------------------------------ layer 1

    def _check_append(
        self, stream: str, events: Sequence[NewEvent], expected: ExpectedVersion
    ) -> AppendResult | None:
        """Validate against the current state; returns the original result of a retry."""
        stored = {
            e.id: (r.stream, r.version, r.position)
            for e in events
            if (r := self._ids.get(e.id)) is not None
        }
        retry = resolve_retry(stream, events, stored)
        if retry is not None:
            return retry
        if stream in self._deleted:
            raise StreamDeleted(stream)
        check_expected_version(stream, expected, self._head(stream))
        return None

    def _head(self, stream: str) -> int | None:
        """The stream's last version, kept when retention deleted its events."""
        count = self._dropped.get(stream, 0) + len(self._streams.get(stream, ()))
        return count - 1 if count else None

    def _write(self, stream: str, events: Sequence[NewEvent]) -> AppendResult:
        recorded_at = datetime.now(UTC)
        existing = self._streams.setdefault(stream, [])
        base = self._dropped.get(stream, 0)
        for e in events:
            rec = RecordedEvent(
                id=e.id,
                stream=stream,
                version=base + len(existing),
                position=len(self._log) + 1,
                type=e.type,
                data=e.data,
                metadata=dict(e.metadata),
                recorded_at=recorded_at,
                schema_version=e.schema_version,
            )
            self._log.append(rec)
            existing.append(rec)
            self._ids[e.id] = rec
        return AppendResult(version=existing[-1].version, position=existing[-1].position)

    def _append_many_now(
        self, checked: Mapping[str, tuple[tuple[NewEvent, ...], ExpectedVersion]]
    ) -> dict[str, AppendResult]:
        results: dict[str, AppendResult] = {}
        fresh = []
        for stream, (events, expected) in checked.items():
            retry = self._check_append(stream, events, expected)
            if retry is not None:
                results[stream] = retry
            else:
                fresh.append((stream, events))
        for stream, events in fresh:
            results[stream] = self._write(stream, events)
        self._watch.advance(len(self._log))
        return results

    async def _apply_write(self, write: Write) -> dict[str, AppendResult]:
        cp = write.checkpoint
        if cp is not None:
            state = self._state(cp.group, cp.category)
            state.check(
                cp.group,
                cp.category,
                cp.member,
                cp.generation,
                cp.partition,
                self.partition_count,
                self._now(),
            )
            if write.fence_only:
                return {}
        results = self._append_many_now(write.appends) if write.appends else {}
        if cp is not None:
            points = self._checkpoints.setdefault((cp.group, cp.category), {})
            points[cp.partition] = max(points.get(cp.partition, 0), cp.position)
        return results

    async def _read_stream(
        self, stream: str, from_version: int, backwards: bool, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        if stream in self._deleted:
            raise StreamDeleted(stream)
        events = self._streams.get(stream, [])
        base = self._dropped.get(stream, 0)
        if backwards:
            last = len(events) - 1
            start = last if from_version < 0 else min(from_version - base, last)
            selected = events[start::-1] if start >= 0 else []
        else:
            selected = events[max(from_version - base, 0) :]
        for e in selected[:limit]:
            yield e

    async def delete_stream(self, stream: str, expected_version: ExpectedVersion = ANY) -> None:
        self._check_open()
        name, expected = prepare_delete(stream, expected_version)
        if name in self._deleted:
            raise StreamDeleted(name)
        check_expected_version(name, expected, self._head(name))
        self._deleted.add(name)

    async def purge_stream(self, stream: str) -> None:
        self._check_open()
        name = prepare_purge(stream)
        for e in self._streams.pop(name, []):
            self._log[e.position - 1] = None
            del self._ids[e.id]
        self._deleted.discard(name)
        self._dropped.pop(name, None)

    async def _delete_before(self, stream: str, version: int) -> int:
        """Drop the stream's events below `version`; their log slots become gaps."""
        self._check_open()
        events = self._streams.get(stream, [])
        count = max(0, min(version - self._dropped.get(stream, 0), len(events)))
        for e in events[:count]:
            self._log[e.position - 1] = None
            del self._ids[e.id]
        if count:
            self._streams[stream] = events[count:]
            self._dropped[stream] = self._dropped.get(stream, 0) + count
        return count

    async def _count_below(self, floors: Mapping[str, int], from_position: int) -> int:
        self._check_open()
        count = 0
        for stream, floor in floors.items():
            events = self._streams.get(stream, [])
            below = events[: max(0, floor - self._dropped.get(stream, 0))]
            count += sum(1 for e in below if e.position >= from_position)
        return count

    async def _start_stream_at(self, stream: str, version: int) -> None:
        self._check_open()
        if version > 0 and stream not in self._streams and stream not in self._deleted:
            self._streams[stream] = []
            self._dropped[stream] = version

    async def _read_deleted(
        self, stream: str, from_version: int, limit: int
    ) -> list[RecordedEvent]:
        self._check_open()
        events = self._streams.get(stream, [])
        return events[max(from_version - self._dropped.get(stream, 0), 0) :][:limit]

    async def _forget_stream(self, stream: str) -> None:
        self._check_open()
        if stream in self._deleted and not self._streams.get(stream):
            self._deleted.discard(stream)
            self._streams.pop(stream, None)
            self._dropped.pop(stream, None)

    async def list_streams(self, category: str | None = None) -> AsyncIterator[StreamInfo]:
        self._check_open()
        names = set(self._streams) | self._deleted
        for name in sorted(names):
            if category is not None and category_of(name) != category:
                continue
            yield StreamInfo(name=name, version=self._head(name), deleted=name in self._deleted)

    async def close(self) -> None:
        await self._stop_scheduler()
        self._closed = True
        self._watch.close()

    # ------------------------------------------------------------ scheduled delivery

    def _set_ready(self, event_id: UUID, ready: float) -> None:
        self._ready[event_id] = ready
        heapq.heappush(self._due_heap, (ready, next(self._tie), event_id))

    async def _schedule(self, rows: Sequence[ScheduledEvent]) -> None:
        for row in rows:
            if row.id in self._pending:
                continue
            self._pending[row.id] = row
            self._batches.setdefault(row.batch, []).append(row.id)
            self._set_ready(row.id, to_micros(row.due_at) / 1e6)

    def _drop_stale(self) -> None:
        heap = self._due_heap
        while heap and self._ready.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)

    async def _take_due(self, now: float, limit: int, lease: float) -> list[ScheduledEvent]:
        self._check_open()
        taken: list[ScheduledEvent] = []
        while len(taken) < limit:
            self._drop_stale()
            if not self._due_heap or self._due_heap[0][0] > now:
                break
            first = self._pending[self._due_heap[0][2]]
            for event_id in self._batches[first.batch]:
                if self._ready[event_id] <= now:
                    # off the heap until the claim is complete: a lease of 0
                    # must not make a row taken here ready again in this call
                    self._ready[event_id] = -1.0
                    taken.append(self._pending[event_id])
        for row in taken:
            self._set_ready(row.id, now + lease)
        return taken

    async def _next_due(self) -> float | None:
        self._check_open()
        self._drop_stale()
        return self._due_heap[0][0] if self._due_heap else None

    def _remove_scheduled(self, event_id: UUID) -> None:
        row = self._pending.pop(event_id)
        del self._ready[event_id]
        members = self._batches[row.batch]
        members.remove(event_id)
        if not members:
            del self._batches[row.batch]

    async def _forget_scheduled(self, ids: Sequence[UUID]) -> None:
        for event_id in ids:
            if event_id in self._pending:
                self._remove_scheduled(event_id)

    async def _cancel_scheduled(self, event_id: UUID) -> bool:
        row = self._pending.get(event_id)
        if row is None or self._ready[event_id] > to_micros(row.due_at) / 1e6:
            return False  # unknown, delivered, or claimed by a scheduler
        self._remove_scheduled(event_id)
        return True

    async def _list_scheduled(self, stream: str | None, limit: int) -> list[ScheduledEvent]:
        rows = [r for r in self._pending.values() if stream is None or r.stream == stream]
        rows.sort(key=lambda r: (r.due_at, str(r.batch), r.seq))
        return rows[:limit]

    async def _count_scheduled(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ layer 2

    async def _read_all(
        self, from_position: int, filters: LogFilter, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        if limit == 0 or filters.matches_nothing:
            return
        cats, tys, parts = filters
        count = 0
        index = max(from_position, 1) - 1
        while index < len(self._log) and (limit is None or count < limit):
            e = self._log[index]
            index += 1
            if e is None:
                continue
            if cats is not None and category_of(e.stream) not in cats:
                continue
            if tys is not None and e.type not in tys:
                continue
            if parts is not None and partition_of(e.stream, self.config.partitions) not in parts:
                continue
            count += 1
            yield e
            self._check_open()

    async def last_position(self) -> int:
        self._check_open()
        return len(self._log)

    @property
    def partition_count(self) -> int:
        return self.config.partitions

    def head_watch(self) -> HeadWatch:
        return self._watch

    # ------------------------------------------------------------------ layer 3

    def _state(self, group: str, category: str) -> GroupState:
        validate_group_key(group, category)
        return self._groups.setdefault((group, category), GroupState())

    async def _join_group(
        self, group: str, category: str, member: str, lease: float, cooperative: bool
    ) -> Membership:
        self._check_open()
        validate_group_name(member, "member")
        state = self._state(group, category)
        state.join(member, self._now(), lease, self.partition_count, cooperative)
        return state.membership(group, category, member, self.partition_count)

    async def _heartbeat(
        self, group: str, category: str, member: str, lease: float, release: tuple[int, ...]
    ) -> Membership:
        self._check_open()
        state = self._state(group, category)
        count = self.partition_count
        state.heartbeat(group, category, member, self._now(), lease, count, release)
        return state.membership(group, category, member, count)

    async def leave_group(self, group: str, category: str, member: str) -> None:
        self._check_open()
        self._state(group, category).leave(member, self._now(), self.partition_count)

    async def checkpoints(self, group: str, category: str) -> dict[int, int]:
        self._check_open()
        return dict(self._checkpoints.get((group, category), {}))

    async def describe_group(self, group: str, category: str) -> Membership | None:
        self._check_open()
        key = (group, category)
        if key not in self._groups and key not in self._checkpoints:
            return None
        state = self._groups.get(key, GroupState())
        return state.described(group, category, self.partition_count, self._now())

    async def list_groups(self) -> list[tuple[str, str]]:
        self._check_open()
        return sorted(set(self._groups) | set(self._checkpoints))


async def open_engine(url: str) -> MemoryEngine:
    """Open `memory://` (each call is a new, empty store)."""
    return MemoryEngine(config_from_url(MemoryConfig, url))
