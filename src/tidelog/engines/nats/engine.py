"""The NATS JetStream engine (`nats://host:4222?store=orders&replicas=3`).

One JetStream stream per store holds everything: events, the event-id index,
tombstones and consumer groups (the subject layout is in `wire`). The
stream is named `KV_tidelog_<store>`, so it is also the key-value bucket
`tidelog_<store>`, whose keys are the consumer groups. Every
write is a compare-and-set on a subject's last sequence
(`Nats-Expected-Last-Subject-Sequence`), and every write of more than one
message is one JetStream atomic batch (nats-server 2.12+, `allow_atomic`):

- an append writes, in one batch, an index message per event id (each expecting
  its subject to be empty, so an id can be stored only once, in any stream)
  and the events (the first expecting the stream subject's last sequence, so
  versions never fork and a tombstone in between refuses the append);
- positions are dense and in commit order: each batch numbers its events from
  the `head` message and replaces it in the same batch (compare-and-set), so
  appends are serialised store-wide;
- group commit: concurrent appends and group commits of one engine are queued
  and a single writer task (`writer.Writer`, behind the contract's write hook)
  publishes them together as one batch with one new `head` and each group
  document written once, each write decided on its own (a conflict fails only
  its write), so in-process writes never race each other on a compare-and-set;
  only other processes' batches can;
- idempotent retries are found in the index, which is written atomically with
  the events, so a retry is recognised however late it comes (no
  deduplication window);
- a tombstone is a marker message on the stream's subject, written with the same
  compare-and-set, so it is atomic with respect to concurrent appends;
- a consumer group is one document (membership, generation and checkpoints),
  a key of the store's KV bucket, replaced with a KV update (a compare-and-set
  on the revision read) and `Nats-Rollup: sub` (history 1). Being in the store's
  stream, a commit's fencing check, its checkpoint and the handler's appends go
  into one atomic batch: `commit(..., appends=...)` is transactional here.

A failed compare-and-set re-reads the state and re-checks the request, so the
errors raised (`WrongExpectedVersion`, `StreamDeleted`, `DuplicateEventId`) are
decided on the same rules as the memory engine. Limits, with their reasons, are
in `docs/nats.md`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Final, TypeAlias
from uuid import UUID

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tidelog.engines._kit.checks import (
    LogFilter,
    check_position,
    prepare_delete,
    prepare_purge,
    validate_group_key,
    validate_group_name,
)
from tidelog.engines._kit.urls import config_from_url
from tidelog.engines._kit.watch import HeadWatch
from tidelog.engines.contract import GroupEngine, Write
from tidelog.engines.nats import wire
from tidelog.engines.nats.client import Client
from tidelog.engines.nats.errors import ApiError, translated
from tidelog.engines.nats.reads import Reader, version_key
from tidelog.engines.nats.scheduled import Schedules
from tidelog.engines.nats.setup import NatsConfig, ensure_meta, ensure_stream, servers_of
from tidelog.engines.nats.writer import GroupDraft, Writer
from tidelog.errors import (
    InvalidInput,
    InvalidURL,
    NotSupported,
    StoreUnavailable,
    StreamDeleted,
    TidelogError,
)
from tidelog.model import (
    ANY,
    AppendResult,
    ExpectedVersion,
    Membership,
    RecordedEvent,
    ScheduledEvent,
    StreamInfo,
    category_of,
    check_expected_version,
    partition_of,
)

__all__ = ["NatsConfig", "NatsEngine", "open_engine"]

log = logging.getLogger(__name__)

MIN_SERVER: Final = (2, 12)
FOLLOW_FOR: Final = 5.0
"""Seconds the writer keeps its commits in memory after a consumer's page read reached the head."""
MAX_ATTEMPTS: Final = 200
"""Compare-and-set rounds before giving up under contention (each round someone wins)."""
_STORE_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")

GroupChange: TypeAlias = Callable[[wire.GroupDoc], Any]
"""Changes a group document in place and returns the caller's result; raises (keeping
what it changed before, such as expired leases) to refuse, say a fenced member."""


class NatsEngine(GroupEngine):
    name = "nats"
    poll_interval = 0.1
    max_write_events = (wire.MAX_BATCH_MESSAGES - 1) // 2  # each event and its index entry

    def __init__(
        self, nc: NatsClient, config: NatsConfig, partitions: int, replicas: int = 1
    ) -> None:
        self._nc = nc
        self.config = config
        self._layout = wire.Layout(config.store, partitions)
        self._watch = HeadWatch()
        self._watch_sub: Subscription | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_dirty = False
        self._reader = Reader(nc, config, self._layout, self._check_open, replicas)
        self._writer = Writer(nc, config, self._layout, self._reader, self._watch, self._now)
        self._schedules = Schedules(
            nc, config, self._writer.publish_one, self._writer.publish_batch
        )

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """`translated`, except that a read cut short by `close()` raises `StoreClosed`."""
        try:
            with translated(what):
                yield
        except StoreUnavailable:
            self._check_open()
            raise

    # ------------------------------------------------------------------ layer 1

    async def _apply_write(self, write: Write) -> dict[str, AppendResult]:
        """Queue `write` for the writer, which commits it in a batch with its neighbours.

        A commit's fence, its checkpoint and its appends go into one atomic
        batch; a `fence_only` write changes the group document only where the
        check itself did (leases expired) and writes no events.
        """
        return await self._writer.submit(write)

    async def _read_stream(
        self, stream: str, from_version: int, backwards: bool, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        with translated("read_stream"):
            last_seq, last_version, deleted = await self._reader.head_of(stream)
        if deleted:
            raise StreamDeleted(stream)
        if last_version is None or limit == 0:
            return
        subject = self._layout.stream_subject(stream)
        if backwards:
            top = last_version if from_version < 0 else min(from_version, last_version)
            low = 0 if limit is None else max(0, top - limit + 1)
            collected: list[RecordedEvent] = []
            with translated("read_stream"):
                async for e in self._versions(stream, subject, low, last_seq):
                    if e.version > top:
                        break
                    collected.append(e)
            for e in reversed(collected):
                yield e
            return
        if from_version > last_version:
            return
        count = 0
        with translated("read_stream"):
            async for e in self._versions(stream, subject, from_version, last_seq):
                yield e
                count += 1
                if limit is not None and count >= limit:
                    return

    async def _versions(
        self, stream: str, subject: str, low: int, last_seq: int
    ) -> AsyncIterator[RecordedEvent]:
        """The events of `stream` from version `low` on, as stored up to sequence `last_seq`.

        A bisection finds where `low` starts, so a deep read does not scan the
        stream's beginning.
        """
        start = await self._reader.bisect(subject, low, last_seq, version_key)
        async for m in self._reader.scan(start, subject, until=last_seq):
            if m.is_tombstone:
                continue
            e = wire.decode_event(stream, m.data)
            if e.version >= low:
                yield e

    async def delete_stream(self, stream: str, expected_version: ExpectedVersion = ANY) -> None:
        self._check_open()
        name, expected = prepare_delete(stream, expected_version)
        subject = self._layout.stream_subject(name)
        self._writer.forget_stream(name)  # the tombstone moves the stream's head
        for attempt in range(MAX_ATTEMPTS):
            with translated("delete_stream"):
                seq, version, deleted = await self._reader.head_of(name)
                if deleted:
                    raise StreamDeleted(name)
                check_expected_version(name, expected, version)
                headers = {
                    wire.KIND: wire.TOMBSTONE,
                    wire.EXPECTED_LAST_SUBJECT_SEQ: str(seq),
                    "Tl-Version": "" if version is None else str(version),
                }
                try:
                    await self._writer.publish_one(subject, b"", headers)
                except ApiError as exc:
                    if exc.err_code in wire.WRONG_LAST_SEQUENCE:
                        await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * attempt)))
                        continue
                    raise
                return
        raise StoreUnavailable("delete_stream: gave up after too many concurrent writes")

    async def purge_stream(self, stream: str) -> None:
        """Purge the stream's subject and its id-index entries from JetStream.

        JetStream removes purged messages from its file store; the store-wide
        `head` is untouched, so purged positions are never handed out again.
        """
        self._check_open()
        name = prepare_purge(stream)
        subject = self._layout.stream_subject(name)
        self._writer.forget_stream(name)
        with translated("purge_stream"):
            ids = [
                wire.decode_event(name, m.data).id
                async for m in self._reader.scan(1, subject)
                if not m.is_tombstone
            ]
            purge = f"STREAM.PURGE.{self._layout.jstream}"
            await self._reader.api(purge, {"filter": subject})
            for event_id in ids:
                await self._reader.api(
                    purge,
                    {"filter": self._layout.index_subject(event_id)},
                )

    async def _delete_before(self, stream: str, version: int) -> int:
        """Retention's hook: purge the stream's subject below the first message kept, and
        the id-index entries of the events purged.

        The stream's last event is always kept here, whatever `version` says: the
        stream's version lives in its subject's last message, so without it the
        next append would start again from version 0 (reads hide it all the
        same). The store-wide `head` is untouched: positions are never reused.
        """
        self._check_open()
        subject = self._layout.stream_subject(stream)
        with translated("retention"):
            last_seq, last_version, deleted = await self._reader.head_of(stream)
            if last_version is None:
                return 0
            if not deleted:  # a tombstone is the last message: it keeps the version
                version = min(version, last_version)
            ids = []
            keep_seq = last_seq
            async for m in self._reader.scan(1, subject, until=last_seq):
                if m.is_tombstone:
                    continue
                e = wire.decode_event(stream, m.data)
                if e.version >= version:
                    keep_seq = m.seq
                    break
                ids.append(e.id)
            if not ids:
                return 0
            purge = f"STREAM.PURGE.{self._layout.jstream}"
            await self._reader.api(purge, {"filter": subject, "seq": keep_seq})
            for event_id in ids:
                await self._reader.api(purge, {"filter": self._layout.index_subject(event_id)})
        return len(ids)

    async def _read_deleted(
        self, stream: str, from_version: int, limit: int
    ) -> list[RecordedEvent]:
        self._check_open()
        subject = self._layout.stream_subject(stream)
        out: list[RecordedEvent] = []
        with translated("retention"):
            last_seq, _, _ = await self._reader.head_of(stream)
            async for e in self._versions(stream, subject, from_version, last_seq):
                out.append(e)
                if len(out) >= limit:
                    break
        return out

    async def _start_stream_at(self, stream: str, version: int) -> None:
        """Refused: a stream's version is its subject's last message's, so a stream
        cannot start beyond version 0 without a message (an event) there."""
        raise NotSupported(
            self.name,
            "starting a stream at a version",
            "a stream's version lives in its last message, which a copy cannot invent",
        )

    async def _forget_stream(self, stream: str) -> None:
        """Purge the stream's subject, tombstone included, if no event is left on it."""
        self._check_open()
        if await self._read_deleted(stream, 0, 1):
            return
        self._writer.forget_stream(stream)
        with translated("retention"):
            purge = f"STREAM.PURGE.{self._layout.jstream}"
            await self._reader.api(purge, {"filter": self._layout.stream_subject(stream)})

    async def list_streams(self, category: str | None = None) -> AsyncIterator[StreamInfo]:
        self._check_open()
        if category is not None:
            validate_group_name(category, "category")
        with translated("list_streams"):
            subjects = await self._reader.subjects(self._layout.events_filter(category, None))
            names = sorted(self._layout.stream_of(s) for s in subjects)
            infos: list[StreamInfo] = []
            for chunk in range(0, len(names), 64):
                heads = await asyncio.gather(
                    *(self._reader.head_of(n) for n in names[chunk : chunk + 64])
                )
                for n, (_, version, deleted) in zip(names[chunk : chunk + 64], heads, strict=True):
                    infos.append(StreamInfo(name=n, version=version, deleted=deleted))
        for info in infos:
            if category is None or category_of(info.name) == category:
                yield info

    async def close(self) -> None:
        if self._closed:
            return
        await self._stop_scheduler()
        self._closed = True
        self._watch.close()
        await self._schedules.close()
        await self._writer.close()
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch_task
        with contextlib.suppress(Exception):
            await self._nc.close()

    # ------------------------------------------------------------ scheduled delivery
    # Pending events live in a second JetStream stream with server-side timers
    # (`scheduled`, docs/scheduling.md); the contract's `Scheduler` appends them.

    async def _schedule(self, rows: Sequence[ScheduledEvent]) -> None:
        self._check_open()
        await self._schedules.schedule(rows)

    async def _take_due(self, now: float, limit: int, lease: float) -> list[ScheduledEvent]:
        self._check_open()
        return await self._schedules.take_due(now, limit, lease)

    async def _next_due(self) -> float | None:
        self._check_open()
        return await self._schedules.next_due()

    async def _forget_scheduled(self, ids: Sequence[UUID]) -> None:
        await self._schedules.forget(ids)

    async def _cancel_scheduled(self, event_id: UUID) -> bool:
        self._check_open()
        return await self._schedules.cancel(event_id)

    async def _list_scheduled(self, stream: str | None, limit: int) -> list[ScheduledEvent]:
        self._check_open()
        return await self._schedules.list_rows(stream, limit)

    async def _count_scheduled(self) -> int:
        self._check_open()
        return await self._schedules.count()

    # ------------------------------------------------------------------ layer 2

    async def _read_all(
        self, from_position: int, filters: LogFilter, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        if limit == 0 or filters.matches_nothing:
            return
        count = 0
        with self._reading("read_all"):
            # The head bounds the read: past it nothing is there yet (one round trip
            # instead of a page), and a read merging several subjects stops there.
            head_seq, head_position = await self._reader.log_head()
            if from_position > head_position:
                return
            start = await self._reader.start_seq(from_position, head_seq)
            async for _, _, e in self._reader.matching(
                start, from_position, *filters, until=head_seq, limit=limit
            ):
                if e is None:
                    continue
                yield e
                count += 1
                if limit is not None and count >= limit:
                    return
        # Read to the head: the next read from past it starts at once (`Reader.remember`).
        self._reader.remember(head_position, head_seq)

    async def _read_page(
        self, from_position: int, filters: LogFilter, limit: int
    ) -> list[RecordedEvent]:
        """A consumer's page: from the events this process just committed when they run
        without a gap from `from_position` through the head, else from the stream.

        The head is read either way (it bounds the read), so an in-process
        appender's events reach its consumers one round trip after the commit,
        without a page read and its decoding. A page that reached the head asks
        the writer to keep its next commits for the next read (`FOLLOW_FOR`).
        """
        if limit == 0 or filters.matches_nothing:
            return []
        with self._reading("read_page"):
            head_seq, head_position = await self._reader.log_head()
        if from_position > head_position:
            self._writer.follow_for(FOLLOW_FOR)
            return []
        page: list[RecordedEvent] = []
        recent = self._writer.recent_from(from_position)
        if recent and recent[-1][0] >= head_position:
            cats, tys, parts = filters
            count = self.partition_count
            for pos, seq, e in recent:
                if pos > head_position or len(page) >= limit:
                    break
                if (
                    (cats is None or category_of(e.stream) in cats)
                    and (tys is None or e.type in tys)
                    and (parts is None or partition_of(e.stream, count) in parts)
                ):
                    page.append(e)
                    self._reader.remember(pos, seq)
        else:
            with self._reading("read_page"):
                start = await self._reader.start_seq(from_position, head_seq)
                async for _, _, found in self._reader.matching(
                    start, from_position, *filters, until=head_seq, limit=limit
                ):
                    if found is not None:
                        page.append(found)
                        if len(page) >= limit:
                            return page
        if len(page) < limit:  # read through the head
            self._reader.remember(head_position, head_seq)
            self._writer.follow_for(FOLLOW_FOR)
        return page

    async def last_position(self) -> int:
        self._check_open()
        with translated("last_position"):
            _, position = await self._reader.log_head()
        return position

    @property
    def partition_count(self) -> int:
        return self._layout.partitions

    def head_watch(self) -> HeadWatch:
        return self._watch

    async def _ensure_watch(self) -> None:
        """Follow the `head` subject with a core subscription that wakes subscribers.

        Appends from this process wake them directly (the writer advances the
        watch after each commit); this is for appends from other processes.

        A core message only says "something was published"; the position comes
        from the stream itself, so a wake-up never claims an event that is not stored.
        """
        if self._watch_sub is not None:
            return

        async def on_msg(_: Msg) -> None:
            self._watch_dirty = True
            if self._watch_task is None or self._watch_task.done():
                self._watch_task = asyncio.create_task(self._refresh_head())

        with translated("subscribe"):
            # Every append batch ends with the head: one wake-up per batch, not per event.
            self._watch_sub = await self._nc.subscribe(self._layout.head, cb=on_msg)

    async def _refresh_head(self) -> None:
        while self._watch_dirty and not self._closed:
            self._watch_dirty = False
            try:
                self._watch.advance(await self.last_position())
            except TidelogError:
                return

    async def _subscribe(
        self, from_position: int, filters: LogFilter
    ) -> AsyncIterator[RecordedEvent]:
        """Catch up, then follow live.

        Unlike the generic loop this never jumps ahead to the head it was told
        about: it moves only past events it has read itself, because in a
        cluster the head and the pages may come from different replicas.
        """
        cats, tys, parts = filters
        check_position(from_position)
        self._check_open()
        await self._ensure_watch()
        with self._reading("subscribe"):
            next_seq = await self._reader.start_seq(from_position)
        next_pos = max(from_position, 1)
        """Every event below this position has been delivered or filtered out."""

        def wanted(e: RecordedEvent) -> bool:
            return (
                e.position >= from_position
                and (cats is None or category_of(e.stream) in cats)
                and (tys is None or e.type in tys)
                and (parts is None or partition_of(e.stream, self.partition_count) in parts)
            )

        idle = False
        with self._writer.followed():
            while True:
                self._check_open()
                seen = self._watch.head
                # After a quiet poll interval read the stream whatever the watch says:
                # a wake-up from another process can come before its batch is stored.
                recent = None if idle else self._writer.recent_from(next_pos)
                if recent is not None:
                    for pos, seq, e in recent:
                        next_pos, next_seq = pos + 1, max(next_seq, seq + 1)
                        if wanted(e):
                            yield e
                    if recent:
                        continue
                else:
                    with self._reading("subscribe"):
                        async for seq, at, event in self._reader.matching(
                            next_seq, from_position, cats, tys, parts
                        ):
                            next_seq = seq + 1
                            if at is not None:
                                next_pos = at + 1
                            if event is not None:
                                yield event
                await self._watch.wait_beyond(seen, self.poll_interval)
                idle = self._watch.head <= seen

    # ------------------------------------------------------------------ layer 3

    async def _update_group(self, group: str, category: str, change: GroupChange) -> Any:
        """Apply `change` to the group's document with compare-and-set; returns its result.

        Joins, heartbeats and leaves do not queue behind the writer: when its
        batches lose races to other processes' appends, a heartbeat waiting
        for them would cost the member its lease.

        As in the memory engine, the document is created by any operation on the
        group and a change made before `change` raises (leases expired) is kept.
        """
        validate_group_key(group, category)
        subject = self._layout.group_subject(group, category)
        for attempt in range(MAX_ATTEMPTS):
            self._check_open()
            with translated("group"):
                draft = GroupDraft.of(*await self._reader.group(group, category))
                error: TidelogError | None = None
                result = None
                try:
                    result = change(draft.doc)
                except TidelogError as exc:
                    error = exc
                msg = draft.message(subject)
                if msg is not None:
                    try:
                        await self._writer.publish_one(*msg)
                    except ApiError as exc:
                        if exc.err_code in wire.WRONG_LAST_SEQUENCE:
                            await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * attempt)))
                            continue
                        raise
                if error is not None:
                    raise error
                return result
        raise StoreUnavailable("group: gave up after too many concurrent writes")

    async def _join_group(
        self, group: str, category: str, member: str, lease: float, cooperative: bool
    ) -> Membership:
        self._check_open()
        validate_group_name(member, "member")

        def change(doc: wire.GroupDoc) -> Membership:
            doc.state.join(member, self._now(), lease, self.partition_count, cooperative)
            return doc.state.membership(group, category, member, self.partition_count)

        result: Membership = await self._update_group(group, category, change)
        return result

    async def _heartbeat(
        self, group: str, category: str, member: str, lease: float, release: tuple[int, ...]
    ) -> Membership:
        self._check_open()

        def change(doc: wire.GroupDoc) -> Membership:
            now, count = self._now(), self.partition_count
            doc.state.heartbeat(group, category, member, now, lease, count, release)
            return doc.state.membership(group, category, member, self.partition_count)

        result: Membership = await self._update_group(group, category, change)
        return result

    async def leave_group(self, group: str, category: str, member: str) -> None:
        self._check_open()

        def change(doc: wire.GroupDoc) -> None:
            doc.state.leave(member, self._now(), self.partition_count)

        await self._update_group(group, category, change)

    async def checkpoints(self, group: str, category: str) -> dict[int, int]:
        self._check_open()
        with translated("checkpoints"):
            _, doc = await self._reader.group(group, category)
        return {} if doc is None else dict(doc.checkpoints)

    async def describe_group(self, group: str, category: str) -> Membership | None:
        self._check_open()
        with translated("describe_group"):
            _, doc = await self._reader.group(group, category)
        if doc is None:
            return None
        return doc.state.described(group, category, self.partition_count, self._now())

    async def list_groups(self) -> list[tuple[str, str]]:
        self._check_open()
        with translated("list_groups"):
            subjects = await self._reader.subjects(self._layout.groups)
            # A key deleted with KV tools keeps its subject (the marker): read each.
            found: list[tuple[str, str]] = []
            for chunk in range(0, len(subjects), 64):
                lasts = await asyncio.gather(
                    *(self._reader.last_msg(s) for s in subjects[chunk : chunk + 64])
                )
                found += [
                    self._layout.parse_group_subject(m.subject)
                    for m in lasts
                    if m is not None and not m.is_kv_removed
                ]
        return sorted(found)


async def open_engine(url: str, **options: Any) -> NatsEngine:
    """Open (creating if needed) the store named by `url`.

    Needs nats-server 2.12 or later with JetStream: atomic batch publishing is
    what makes multi-event appends, `append_many` and transactional commits
    all-or-nothing.
    """
    config = config_from_url(NatsConfig, url, **options)
    if _STORE_RE.fullmatch(config.store) is None:
        raise InvalidURL(url, "store must be 1-64 ASCII letters, digits, '_' or '-'")
    if config.partitions is not None and config.partitions < 1:
        raise InvalidInput("partitions must be >= 1")
    if config.replicas < 1 or config.timeout <= 0 or config.append_timeout <= 0:
        raise InvalidURL(url, "replicas must be >= 1, timeout and append_timeout > 0")
    if config.storage == "memory" and not config.allow_unsafe:
        raise NotSupported(
            "nats",
            "storage=memory",
            "acknowledged events would be lost on a restart; pass allow_unsafe=true to accept",
        )
    servers = servers_of(url)
    # as `nats.connect` passes them (nats-py's annotations say int for the float seconds)
    connect_options: dict[str, Any] = {
        "connect_timeout": config.connect_timeout,
        "max_reconnect_attempts": 1,
        "reconnect_time_wait": 0.2,
        "allow_reconnect": True,
        "error_cb": _log_error,
    }
    nc = Client()
    try:
        await nc.connect(servers, **connect_options)
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise StoreUnavailable(f"cannot connect to {', '.join(servers)}: {exc}") from exc
    # Fail fast when no server answers at first, but once connected reconnect for
    # as long as it takes (nats-py would otherwise retry the first connect forever).
    nc.options["max_reconnect_attempts"] = -1
    try:
        version = nc.connected_server_version
        if (version.major, version.minor) < MIN_SERVER:
            raise NotSupported(
                "nats",
                f"nats-server {version}",
                "tidelog needs nats-server 2.12+ for atomic batch publishing",
            )
        with translated("open"):
            replicas = await ensure_stream(nc, url, config)
            partitions = await ensure_meta(nc, url, config)
    except BaseException:
        await nc.close()
        raise
    return NatsEngine(nc, config, partitions, replicas)


async def _log_error(exc: Exception) -> None:
    log.info("nats connection: %s: %s", type(exc).__name__, exc)
