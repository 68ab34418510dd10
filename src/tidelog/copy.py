"""Copy a whole store to another, across engines: `tidelog copy SRC DST`.

Uses only the engine contract, so any pair of engines works (SQLite to
PostgreSQL, PostgreSQL to NATS, ...). What is copied:

- every event with its id, stream, version, type, data, metadata and
  schema version, in the source's log order (`recorded_at` becomes the time
  of the copy: the contract has no way to set it);
- tombstones (after the events, since a deleted stream takes no appends);
- what retention deleted stays deleted: a stream whose first events a
  scavenge deleted starts in the destination at the version of its first kept
  event (and one with no event left keeps its version), through the contract's
  `start_stream_at`, the state a scavenge leaves. The retention rules are
  events of `$retention` and are copied in log order; the destination's groups
  are made known before any event, so that its readers and scavenger keep
  every event no group has checkpointed past until the checkpoints arrive
  (rules copied without their groups would let it delete what the source's
  groups still protect). An engine that cannot start a stream at a version
  (NATS, remote) is refused up front, naming the stream;
- consumer-group checkpoints, mapped to the destination's positions: a
  checkpoint at source position p becomes the destination position of the
  last copied event whose source position is <= p (0 if none). Live group
  members are not copied: they rejoin.

Resumable: after an interruption, run it again. It finds the destination's
last event in the source and goes on after it. Every append names the
source's version as its expected version, so a destination that is not a
prefix of the source is refused instead of mixed, and a batch that was
committed just before the interruption is an idempotent retry (same ids).

Verified: the source and destination logs are read side by side and must hold
the same events in the same order; stream heads, tombstones and the mapped
checkpoints must match too. Copy a store that nothing writes to meanwhile:
events appended to the source during the copy are left for a later run.
"""

from __future__ import annotations

import bisect
import contextlib
import uuid
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tidelog.engines.contract import Engine
from tidelog.errors import GroupError, InvalidInput, NotSupported, StreamDeleted
from tidelog.model import (
    NO_STREAM,
    AppendRequest,
    AppendResult,
    RecordedEvent,
    StreamInfo,
)

__all__ = ["CopyReport", "LogBatch", "OrderedAppender", "copy_store"]

T = TypeVar("T")

Progress = Callable[[int, int], None]
"""Called as `progress(source_position_done, source_last_position)` after each batch."""


@dataclass
class CopyReport:
    """What a copy did and whether the destination matches the source."""

    source_last_position: int = 0
    resumed_after: int = 0
    """Source position the copy resumed after (0: started from the beginning)."""
    events_copied: int = 0
    """Events written by this run (not counting those of an earlier, interrupted run)."""
    events_total: int = 0
    tombstones: int = 0
    checkpoints: int = 0
    mismatches: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.mismatches


async def _resume_after(src: Engine, dst: Engine) -> int:
    """The source position of the destination's last event (0 for an empty destination)."""
    last = await dst.last_position()
    if last == 0:
        return 0
    tail = [e async for e in dst.read_all(from_position=last, limit=1)]
    if not tail:
        return 0
    mark = tail[0]
    with contextlib.suppress(StreamDeleted):
        async for e in src.read_stream(mark.stream, from_version=mark.version, limit=1):
            if e.id == mark.id:
                return e.position
    async for e in src.read_all():  # the stream was deleted in the source: scan for the id
        if e.id == mark.id:
            return e.position
    raise InvalidInput(
        "the destination is neither empty nor a partial copy of this source "
        f"(its last event {mark.id} is not in the source)"
    )


class LogBatch(Generic[T]):
    """Consecutive entries of a log, gathered for one atomic write that keeps their order.

    One `append_many` holds each stream once, so an entry joins the pending
    batch only if its stream is new to the batch or the last one added; the
    streams of a batch are in log order. Shared by `copy_store` and
    `tidelog import`.
    """

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self.streams: dict[str, list[T]] = {}
        self.last_stream: str | None = None
        self.count = 0

    def needs_flush(self, stream: str) -> bool:
        """Whether the batch must be written before an entry of `stream` joins it."""
        return self.count >= self.max_events or (
            stream in self.streams and stream != self.last_stream
        )

    def add(self, stream: str, entry: T) -> None:
        self.streams.setdefault(stream, []).append(entry)
        self.last_stream = stream
        self.count += 1

    def take(self) -> dict[str, list[T]]:
        """The pending entries by stream (in log order), leaving the batch empty."""
        taken = self.streams
        self.streams, self.last_stream, self.count = {}, None, 0
        return taken


class OrderedAppender:
    """Writes the appends of one batch, in the order given, atomically where the engine can.

    An engine that refuses multi-stream appends (`NotSupported`) gets one
    append per stream from then on, still in order.
    """

    def __init__(self, dst: Engine) -> None:
        self.dst = dst
        self.multi_stream = True

    async def write(self, requests: Mapping[str, AppendRequest]) -> dict[str, AppendResult]:
        if self.multi_stream and len(requests) > 1:
            try:
                return await self.dst.append_many(requests)
            except NotSupported:
                self.multi_stream = False
        return {
            stream: await self.dst.append(stream, request.events, request.expected_version)
            for stream, request in requests.items()
        }


async def _start(dst: Engine, stream: str, version: int) -> None:
    """Start `stream` at `version` in `dst` (its versions below were deleted in the source)."""
    try:
        await dst.start_stream_at(stream, version)
    except NotSupported as exc:
        raise NotSupported(
            dst.name,
            "copying a store whose retention deleted events",
            f"stream {stream!r} starts at version {version} in the source and this engine "
            f"cannot start a stream there ({exc.reason or exc.feature})",
        ) from None


async def _start_streams(src: Engine, dst: Engine, streams: dict[str, StreamInfo]) -> None:
    """Start the destination's streams whose first versions the source's retention deleted.

    Up front, before any event is copied, so that a destination that cannot is
    refused with nothing written. Only when some stream misses events (the
    source's streams hold fewer events than their versions count: one count),
    since it reads each stream's first event. Tombstoned streams cannot be read:
    the writer starts them when their first event comes, and step 2 those with
    no event left.
    """
    stored = sum(i.version + 1 for i in streams.values() if i.version is not None)
    if await src.count_events() >= stored:
        return
    for info in streams.values():
        if info.deleted or info.version is None:
            continue
        first = [e async for e in src.read_stream(info.name, limit=1)]
        start = first[0].version if first else info.version + 1
        if start > 0:
            await _start(dst, info.name, start)


async def _prepare(
    src: Engine, dst: Engine, groups: list[tuple[str, str]]
) -> dict[str, StreamInfo]:
    """Before any event: make the source's groups known to the destination, so its
    retention keeps every event until their checkpoints are copied (a known group
    with no checkpoint has read nothing), and start the scavenged streams."""
    for group, category in groups:
        if await src.checkpoints(group, category):
            member = f"tidelog-copy-{uuid.uuid4().hex}"
            await dst.join_group(group, category, member, lease=60.0)
            await dst.leave_group(group, category, member)
    streams = await _streams(src)
    await _start_streams(src, dst, streams)
    return streams


async def _finish_streams(dst: Engine, streams: dict[str, StreamInfo]) -> int:
    """After the events: start the streams that have none left in the source (their
    version is kept), then tombstone the deleted ones; returns the tombstones written."""
    absent = streams.keys() - (await _streams(dst)).keys()
    tombstones = 0
    for info in streams.values():
        if info.version is not None and info.name in absent:
            await _start(dst, info.name, info.version + 1)
        if info.deleted:
            with contextlib.suppress(StreamDeleted):
                await dst.delete_stream(info.name)
                tombstones += 1
    return tombstones


class _Writer:
    """Copies source events in log order, each stream's expected version its source version."""

    def __init__(self, dst: Engine, batch_events: int) -> None:
        self.batch: LogBatch[RecordedEvent] = LogBatch(batch_events)
        self.appender = OrderedAppender(dst)
        self.dst = dst
        self.seen: set[str] = set()
        """Streams written by this run: only a stream's first batch may need a start."""

    async def add(self, event: RecordedEvent) -> bool:
        """Queue `event`; returns True when that flushed (wrote) a batch first."""
        flushed = self.batch.needs_flush(event.stream)
        if flushed:
            await self.flush()
        self.batch.add(event.stream, event)
        return flushed

    async def flush(self) -> None:
        pending = self.batch.take()
        if not pending:
            return
        for stream, events in pending.items():
            if stream not in self.seen:
                self.seen.add(stream)
                if events[0].version > 0:  # a no-op unless retention deleted its start
                    await _start(self.dst, stream, events[0].version)
        await self.appender.write(
            {
                stream: AppendRequest(
                    events=[e.to_new_event() for e in events],
                    expected_version=NO_STREAM if events[0].version == 0 else events[0].version - 1,
                )
                for stream, events in pending.items()
            }
        )


def _differences(a: RecordedEvent, b: RecordedEvent) -> list[str]:
    return [
        name
        for name in ("id", "stream", "version", "type", "data", "metadata", "schema_version")
        if getattr(a, name) != getattr(b, name)
    ]


async def _compare_logs(
    src: Engine, dst: Engine, end: int, report: CopyReport
) -> tuple[array[int], array[int]]:
    """Read both logs side by side; returns the (source, destination) positions paired."""
    src_positions: array[int] = array("q")
    dst_positions: array[int] = array("q")
    src_iter = aiter(src.read_all())
    dst_iter = aiter(dst.read_all())
    while True:
        a = await anext(src_iter, None)
        if a is not None and a.position > end:
            a = None
        b = await anext(dst_iter, None)
        if a is None or b is None:
            if a is not None:
                report.mismatches.append(f"source event {a.position} missing from destination")
            if b is not None:
                report.mismatches.append(f"destination has extra event at {b.position}")
            break
        diff = _differences(a, b)
        if diff:
            report.mismatches.append(
                f"source {a.position} vs destination {b.position}: {', '.join(diff)} differ"
            )
            if len(report.mismatches) >= 20:
                break
        src_positions.append(a.position)
        dst_positions.append(b.position)
    with contextlib.suppress(Exception):
        await src_iter.aclose()  # type: ignore[attr-defined]
    with contextlib.suppress(Exception):
        await dst_iter.aclose()  # type: ignore[attr-defined]
    report.events_total = len(src_positions)
    return src_positions, dst_positions


async def _streams(store: Engine) -> dict[str, StreamInfo]:
    return {s.name: s async for s in store.list_streams()}


async def copy_store(  # noqa: PLR0912 (one pass: copy, resume, verify and report, each option a branch)
    src: Engine,
    dst: Engine,
    *,
    batch_events: int = 500,
    progress: Progress | None = None,
) -> CopyReport:
    """Copy every event, tombstone and group checkpoint of `src` into `dst`, then verify.

    `dst` must be empty or hold an interrupted copy of `src` (which is then
    resumed). Returns a report; `report.verified` is False (with the
    differences in `report.mismatches`) when the destination does not match.
    """
    if batch_events < 1:
        raise InvalidInput("batch_events must be >= 1")
    report = CopyReport()
    end = report.source_last_position = await src.last_position()
    groups = await src.list_groups()
    if groups and src.partition_count != dst.partition_count:
        raise InvalidInput(
            f"the source has {src.partition_count} partitions and the destination "
            f"{dst.partition_count}: group checkpoints cannot be mapped; create the "
            f"destination with ?partitions={src.partition_count}"
        )

    # 0. Groups known first (their unread events are kept), scavenged streams started.
    src_streams = await _prepare(src, dst, groups)

    # 1. Events, in log order, resuming after the destination's last one.
    done = report.resumed_after = await _resume_after(src, dst)
    writer = _Writer(dst, batch_events)
    async for event in src.read_all(from_position=done + 1):
        if event.position > end:
            break
        if await writer.add(event) and progress is not None:
            progress(done, end)
        report.events_copied += 1
        done = event.position
    await writer.flush()
    if progress is not None:
        progress(end, end)

    # 2. Streams with no event left keep their version; then tombstones.
    report.tombstones = await _finish_streams(dst, src_streams)

    # 3. Verify the log and pair the positions; then streams.
    src_positions, dst_positions = await _compare_logs(src, dst, end, report)
    src_streams, dst_streams = await _streams(src), await _streams(dst)
    if src_streams != dst_streams:
        differing = sorted(repr(i) for i in set(src_streams.items()) ^ set(dst_streams.items()))[:5]
        report.mismatches.append(f"streams differ: {differing}")

    if report.mismatches:
        return report  # positions cannot be mapped onto a log that differs

    # 4. Checkpoints, mapped to destination positions.
    def mapped(position: int) -> int:
        index = bisect.bisect_right(src_positions, position) - 1
        return dst_positions[index] if index >= 0 else 0

    for group, category in groups:
        points = await src.checkpoints(group, category)
        if not points:
            continue
        member = f"tidelog-copy-{uuid.uuid4().hex}"
        membership = await dst.join_group(group, category, member, lease=60.0)
        try:
            if not set(points) <= set(membership.partitions):
                raise GroupError(
                    f"group {group!r} on {category!r} has live members in the destination; "
                    "stop them before copying its checkpoints"
                )
            for partition, position in sorted(points.items()):
                await dst.commit(
                    group,
                    category,
                    partition,
                    mapped(position),
                    member=member,
                    generation=membership.generation,
                )
                report.checkpoints += 1
        finally:
            await dst.leave_group(group, category, member)
        expected = {p: mapped(pos) for p, pos in points.items()}
        if await dst.checkpoints(group, category) != expected:
            report.mismatches.append(f"checkpoints of {group!r} on {category!r} differ")
    return report
