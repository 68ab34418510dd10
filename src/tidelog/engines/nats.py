"""The NATS JetStream engine (`nats://host:4222?store=orders&replicas=3`).

One JetStream stream per store holds everything: events, the event-id index,
tombstones and consumer groups (the subject layout is in `_nats_wire`). Every
write is a compare-and-set on a subject's last sequence
(`Nats-Expected-Last-Subject-Sequence`), and every write of more than one
message is one JetStream atomic batch (nats-server 2.12+, `allow_atomic`):

- an append writes, in one batch, an index message per event id (each expecting
  its subject to be empty, so an id can be stored only once, in any stream)
  and the events (the first expecting the stream subject's last sequence, so
  versions never fork and a tombstone in between refuses the append);
- idempotent retries are found in the index, which is written atomically with
  the events, so a retry is recognised however late it comes (no
  deduplication window);
- a tombstone is a marker message on the stream's subject, written with the same
  compare-and-set, so it is atomic with respect to concurrent appends;
- a consumer group is one document (membership, generation and checkpoints) on
  its own subject, replaced with a compare-and-set and `Nats-Rollup: sub`, so a
  commit's fencing check, its checkpoint and the handler's appends go into one
  atomic batch: `commit(..., appends=...)` is transactional on this engine.

A failed compare-and-set re-reads the state and re-checks the request, so the
errors raised (`WrongExpectedVersion`, `StreamDeleted`, `DuplicateEventId`) are
decided on the same rules as the memory engine. Limits, with their reasons, are
in `docs/nats.md`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import urllib.parse
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from datetime import UTC, datetime
from typing import Any, Final, Literal
from uuid import UUID, uuid4

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tidelog.engines import _nats_wire as wire
from tidelog.engines.base import (
    GroupEngine,
    HeadWatch,
    check_position,
    check_read_args,
    config_from_url,
    prepare_append,
    prepare_append_many,
    resolve_retry,
    validate_filters,
    validate_group_name,
)
from tidelog.errors import (
    InvalidEvent,
    InvalidInput,
    InvalidURL,
    NotSupported,
    StaleGeneration,
    StoreUnavailable,
    StreamDeleted,
    TidelogError,
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
    check_expected_version,
    partition_of,
    validate_expected_version,
    validate_stream_name,
)

__all__ = ["NatsConfig", "NatsEngine", "open_engine"]

log = logging.getLogger(__name__)

DEFAULT_PARTITIONS: Final = 16
MIN_SERVER: Final = (2, 12)
MAX_ATTEMPTS: Final = 200
"""Compare-and-set rounds before giving up under contention (each round someone wins)."""
PAGE: Final = 256
_STORE_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


class NatsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Options of the NATS engine, from the URL's query string.

    `store` names the store: the JetStream stream `tidelog_<store>` with the
    subjects `tl.<store>.>`. `partitions` is fixed when the store is created and
    read back afterwards (None: 16, or whatever the store was created with).
    `replicas` is the JetStream replica count at creation (3 in a cluster).
    `storage=memory` loses every acknowledged event on a restart and is refused
    unless `allow_unsafe=true`.
    """

    store: str = "tidelog"
    partitions: int | None = None
    replicas: int = 1
    storage: Literal["file", "memory"] = "file"
    allow_unsafe: bool = False
    timeout: float = 5.0
    """Seconds to wait for one request to the server."""
    connect_timeout: float = 5.0


class _Conflict(Exception):
    """A compare-and-set lost a race: re-read and try again."""


class _ApiError(Exception):
    def __init__(self, code: int, err_code: int, description: str) -> None:
        self.code = code
        self.err_code = err_code
        self.description = description
        super().__init__(f"{code}/{err_code}: {description}")


class _NotFound(Exception):
    pass


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """The one place where nats errors become tidelog errors."""
    try:
        yield
    except (TidelogError, _Conflict, _NotFound):
        raise
    except _ApiError as exc:
        if exc.err_code in wire.WRONG_LAST_SEQUENCE:
            raise _Conflict() from exc
        raise StoreUnavailable(f"{what}: JetStream error {exc}") from exc
    except nats.errors.MaxPayloadError as exc:
        raise InvalidEvent(f"{what}: an event is larger than the server's max_payload") from exc
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


def _raise_api(resp: Mapping[str, Any]) -> None:
    err = resp.get("error")
    if err:
        code = int(err.get("code", 0))
        err_code = int(err.get("err_code", 0))
        if code == 404 and err_code == wire.NOT_FOUND:
            raise _NotFound()
        raise _ApiError(code, err_code, str(err.get("description", "")))


def _version_key(m: wire.StoredMsg) -> int | None:
    return None if m.is_tombstone else wire.decode_envelope(m.data).version


def _position_key(m: wire.StoredMsg) -> int | None:
    return None if m.is_tombstone else wire.decode_envelope(m.data).position


class NatsEngine(GroupEngine):
    name = "nats"
    poll_interval = 0.1

    def __init__(self, nc: NatsClient, config: NatsConfig, partitions: int) -> None:
        self._nc = nc
        self.config = config
        self._layout = wire.Layout(config.store, partitions)
        self._jstream = f"tidelog_{config.store}"
        self._watch = HeadWatch()
        self._watch_sub: Subscription | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_dirty = False

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """`_translated`, except that a read cut short by `close()` raises `StoreClosed`."""
        try:
            with _translated(what):
                yield
        except StoreUnavailable:
            self._check_open()
            raise

    async def _request(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Msg:
        msg: Msg = await self._nc.request(
            subject, payload, timeout=self.config.timeout, headers=headers
        )
        return msg

    async def _api(self, op: str, body: object = None) -> dict[str, Any]:
        payload = b"" if body is None else wire.json_bytes(body)
        try:
            msg = await self._request(f"$JS.API.{op}", payload)
        except nats.errors.NoRespondersError:
            raise StoreUnavailable("JetStream is not enabled or has no leader") from None
        resp: dict[str, Any] = json.loads(msg.data)
        _raise_api(resp)
        return resp

    async def _last_msg(self, subject: str) -> wire.StoredMsg | None:
        """The last message on `subject` (wildcards allowed), read from the stream leader."""
        try:
            resp = await self._api(f"STREAM.MSG.GET.{self._jstream}", {"last_by_subj": subject})
        except _NotFound:
            return None
        return wire.parse_api_message(resp["message"])

    async def _scan(
        self, from_seq: int, subject: str, *, until: int | None = None
    ) -> AsyncIterator[wire.StoredMsg]:
        """Stored messages on `subject` from sequence `from_seq`, in order, a page at a time.

        Pages come from batched direct gets, which any replica may answer; a
        replica holds a prefix of the stream, so a page may end early but never
        skips a message.
        """
        seq = max(from_seq, 1)
        while True:
            self._check_open()
            page, pending = await self._direct_page(seq, subject, PAGE)
            for m in page:
                if until is not None and m.seq > until:
                    return
                yield m
                seq = m.seq + 1
            if not page or pending == 0:
                return

    async def _direct_page(
        self, seq: int, subject: str, batch: int
    ) -> tuple[list[wire.StoredMsg], int]:
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        out: list[wire.StoredMsg] = []
        try:
            body = {"seq": seq, "next_by_subj": subject, "batch": batch}
            await self._nc.publish(
                f"$JS.API.DIRECT.GET.{self._jstream}", wire.json_bytes(body), reply=inbox
            )
            while True:
                msg = await sub.next_msg(self.config.timeout)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status is not None:
                    if status == "404":
                        return out, 0
                    if status == "204":
                        return out, int(headers.get("Nats-Num-Pending", "0"))
                    if status == "408" and out:
                        return out, 1
                    raise StoreUnavailable(f"direct get failed: {status} {headers}")
                out.append(
                    wire.StoredMsg(
                        subject=headers["Nats-Subject"],
                        seq=int(headers["Nats-Sequence"]),
                        headers=headers,
                        data=msg.data,
                    )
                )
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _publish_one(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        msg = await self._request(subject, payload, headers)
        resp = json.loads(msg.data)
        _raise_api(resp)
        return int(resp["seq"])

    async def _publish_batch(self, msgs: Sequence[tuple[str, bytes, dict[str, str]]]) -> int:
        """Publish `msgs` as one atomic batch; returns the sequence of the last one."""
        if len(msgs) == 1:
            return await self._publish_one(*msgs[0])
        if len(msgs) > wire.MAX_BATCH_MESSAGES:
            raise NotSupported(
                self.name,
                f"a write of {len(msgs)} messages",
                "a JetStream atomic batch holds at most 1000 messages "
                "(each event takes two: the event and its id-index entry)",
            )
        batch_id = uuid4().hex
        last = len(msgs)
        for i, (subject, payload, headers) in enumerate(msgs, 1):
            h = {**headers, wire.BATCH_ID: batch_id, wire.BATCH_SEQ: str(i)}
            if i < last:
                await self._nc.publish(subject, payload, headers=h)
            else:
                h[wire.BATCH_COMMIT] = "1"
                return await self._publish_one(subject, payload, h)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ layer 1

    async def _lookup_ids(self, ids: Sequence[UUID]) -> dict[UUID, tuple[str, int, int]]:
        """Where each id already stored is: (stream, version, position)."""

        async def one(event_id: UUID) -> tuple[UUID, tuple[str, int, int] | None]:
            m = await self._last_msg(self._layout.index_subject(event_id))
            if m is None:
                return event_id, None
            entry = wire.decode_index(m.data)
            return event_id, (entry.stream, entry.version, entry.position)

        found = await asyncio.gather(*(one(i) for i in ids))
        return {i: where for i, where in found if where is not None}

    async def _head_of(self, stream: str) -> tuple[int, int | None, bool]:
        """(last sequence on the stream's subject or 0, last version or None, deleted)."""
        m = await self._last_msg(self._layout.stream_subject(stream))
        if m is None:
            return 0, None, False
        if m.is_tombstone:
            version = m.headers.get("Tl-Version")
            return m.seq, None if not version else int(version), True
        return m.seq, wire.decode_envelope(m.data).version, False

    async def _log_head(self) -> tuple[int, int]:
        """(sequence of the head message or 0, last position given out or 0)."""
        m = await self._last_msg(self._layout.head)
        if m is None:
            return 0, 0
        return m.seq, int(m.data)

    async def _write(
        self,
        checked: Mapping[str, tuple[tuple[NewEvent, ...], ExpectedVersion]],
        group: Callable[[], Awaitable[tuple[str, bytes, dict[str, str]] | None]] | None = None,
    ) -> dict[str, AppendResult]:
        """Append to several streams (and optionally replace a group document) atomically.

        Each round reads the current state, decides exactly as the memory engine
        does, and writes with compare-and-set; a lost race starts a new round.
        """
        ids = [e.id for events, _ in checked.values() for e in events]
        for attempt in range(MAX_ATTEMPTS):
            self._check_open()
            with _translated("append"):
                lookups = asyncio.gather(self._lookup_ids(ids), self._log_head())
                stream_heads = asyncio.gather(*(self._head_of(s) for s in checked))
                (found, log_head), heads_list = await asyncio.gather(lookups, stream_heads)
                heads = dict(zip(checked, heads_list, strict=True))
                results: dict[str, AppendResult] = {}
                fresh: list[tuple[str, tuple[NewEvent, ...], int, int]] = []
                for stream, (events, expected) in checked.items():
                    stored = {e.id: found[e.id] for e in events if e.id in found}
                    retry = resolve_retry(stream, events, stored)
                    if retry is not None:
                        results[stream] = retry
                        continue
                    seq, version, deleted = heads[stream]
                    if deleted:
                        raise StreamDeleted(stream)
                    check_expected_version(stream, expected, version)
                    fresh.append((stream, events, seq, -1 if version is None else version))
                group_msg = await group() if group is not None else None
                if not fresh and group_msg is None:
                    return results
                msgs, placed, last_position = self._build_append(fresh, *log_head)
                if group_msg is not None:
                    msgs.append(group_msg)
                try:
                    await self._publish_batch(msgs)
                except _ApiError as exc:
                    if exc.err_code in wire.WRONG_LAST_SEQUENCE:
                        await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * attempt)))
                        continue
                    raise
            results.update(placed)
            self._watch.advance(last_position)
            return results
        raise StoreUnavailable("append: gave up after too many concurrent conflicting writes")

    def _build_append(
        self,
        fresh: Sequence[tuple[str, tuple[NewEvent, ...], int, int]],
        head_seq: int,
        head_position: int,
    ) -> tuple[list[tuple[str, bytes, dict[str, str]]], dict[str, AppendResult], int]:
        """The batch: the id-index entries, the events, then the new log head.

        Returns the messages, the result per stream and the new last position.
        """
        now = datetime.now(UTC)
        index_msgs: list[tuple[str, bytes, dict[str, str]]] = []
        event_msgs: list[tuple[str, bytes, dict[str, str]]] = []
        placed: dict[str, AppendResult] = {}
        position = head_position
        for stream, events, last_seq, last_version in fresh:
            subject = self._layout.stream_subject(stream)
            for n, e in enumerate(events):
                version = last_version + 1 + n
                position += 1
                index_msgs.append(
                    (
                        self._layout.index_subject(e.id),
                        wire.encode_index(wire.IndexEntry(stream, version, position)),
                        {wire.EXPECTED_LAST_SUBJECT_SEQ: "0"},
                    )
                )
                headers = {"Tl-Version": str(version)}
                if n == 0:
                    headers[wire.EXPECTED_LAST_SUBJECT_SEQ] = str(last_seq)
                event_msgs.append((subject, wire.encode_event(e, version, position, now), headers))
                placed[stream] = AppendResult(version=version, position=position)
        head = (
            self._layout.head,
            str(position).encode(),
            {wire.EXPECTED_LAST_SUBJECT_SEQ: str(head_seq), wire.ROLLUP: "sub"},
        )
        return [*index_msgs, *event_msgs, head], placed, position

    async def append(
        self,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        self._check_open()
        name, checked, expected = prepare_append(stream, events, expected_version)
        return (await self._write({name: (checked, expected)}))[name]

    async def append_many(self, requests: Mapping[str, AppendRequest]) -> dict[str, AppendResult]:
        self._check_open()
        return await self._write(prepare_append_many(requests))

    async def read_stream(
        self,
        stream: str,
        from_version: int = 0,
        backwards: bool = False,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        self._check_open()
        validate_stream_name(stream)
        check_read_args(from_version, limit, backwards)
        with _translated("read_stream"):
            last_seq, last_version, deleted = await self._head_of(stream)
        if deleted:
            raise StreamDeleted(stream)
        if last_version is None or limit == 0:
            return
        subject = self._layout.stream_subject(stream)
        if backwards:
            top = last_version if from_version < 0 else min(from_version, last_version)
            low = 0 if limit is None else max(0, top - limit + 1)
            collected: list[RecordedEvent] = []
            with _translated("read_stream"):
                start = await self._bisect(subject, low, last_seq, _version_key)
                async for m in self._scan(start, subject, until=last_seq):
                    if m.is_tombstone:
                        continue
                    e = wire.decode_event(stream, m.data)
                    if e.version > top:
                        break
                    if e.version >= low:
                        collected.append(e)
            for e in reversed(collected):
                yield e
            return
        if from_version > last_version:
            return
        count = 0
        with _translated("read_stream"):
            start = await self._bisect(subject, from_version, last_seq, _version_key)
            async for m in self._scan(start, subject, until=last_seq):
                if m.is_tombstone:
                    continue
                e = wire.decode_event(stream, m.data)
                if e.version < from_version:
                    continue
                yield e
                count += 1
                if limit is not None and count >= limit:
                    return

    async def _bisect(
        self, subject: str, target: int, hi: int, key: Callable[[wire.StoredMsg], int | None]
    ) -> int:
        """A sequence at or before the first message on `subject` whose key is `target`.

        Versions (on one stream's subject) and positions (on the events) grow
        with sequences, so the first message at or after a sequence tells on
        which side the target lies. Messages without a key (tombstones) only
        narrow the search.
        """
        lo = 1
        if target <= 1:
            return lo
        while hi - lo > PAGE:
            mid = (lo + hi) // 2
            page, _ = await self._direct_page(mid, subject, 1)
            found = key(page[0]) if page else None
            if found is not None and found < target:
                lo = page[0].seq
            else:
                hi = mid
        return lo

    async def delete_stream(self, stream: str, expected_version: ExpectedVersion = ANY) -> None:
        self._check_open()
        name = validate_stream_name(stream)
        expected = validate_expected_version(expected_version)
        subject = self._layout.stream_subject(name)
        for attempt in range(MAX_ATTEMPTS):
            with _translated("delete_stream"):
                seq, version, deleted = await self._head_of(name)
                if deleted:
                    raise StreamDeleted(name)
                check_expected_version(name, expected, version)
                headers = {
                    wire.KIND: wire.TOMBSTONE,
                    wire.EXPECTED_LAST_SUBJECT_SEQ: str(seq),
                    "Tl-Version": "" if version is None else str(version),
                }
                try:
                    await self._publish_one(subject, b"", headers)
                except _ApiError as exc:
                    if exc.err_code in wire.WRONG_LAST_SEQUENCE:
                        await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * attempt)))
                        continue
                    raise
                return
        raise StoreUnavailable("delete_stream: gave up after too many concurrent writes")

    async def _subjects(self, subject_filter: str) -> list[str]:
        """Every subject with messages that matches `subject_filter`."""
        out: list[str] = []
        offset = 0
        while True:
            resp = await self._api(
                f"STREAM.INFO.{self._jstream}",
                {"subjects_filter": subject_filter, "offset": offset},
            )
            subjects = resp.get("state", {}).get("subjects") or {}
            out.extend(subjects)
            total = int(resp.get("total", 0))
            offset += len(subjects)
            if not subjects or offset >= total:
                return out

    async def list_streams(self, category: str | None = None) -> AsyncIterator[StreamInfo]:
        self._check_open()
        if category is not None:
            validate_group_name(category, "category")
        with _translated("list_streams"):
            subjects = await self._subjects(self._layout.events_filter(category, None))
            names = sorted(self._layout.stream_of(s) for s in subjects)
            infos: list[StreamInfo] = []
            for chunk in range(0, len(names), 64):
                heads = await asyncio.gather(*(self._head_of(n) for n in names[chunk : chunk + 64]))
                for n, (_, version, deleted) in zip(names[chunk : chunk + 64], heads, strict=True):
                    infos.append(StreamInfo(name=n, version=version, deleted=deleted))
        for info in infos:
            if category is None or category_of(info.name) == category:
                yield info

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._watch.close()
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch_task
        with contextlib.suppress(Exception):
            await self._nc.close()

    # ------------------------------------------------------------------ layer 2

    def _filter_subject(self, cats: frozenset[str] | None, parts: frozenset[int] | None) -> str:
        cat = next(iter(cats)) if cats is not None and len(cats) == 1 else None
        part = next(iter(parts)) if parts is not None and len(parts) == 1 else None
        if cat is None and part is None:
            return self._layout.events
        return self._layout.events_filter(cat, part)

    async def _matching(
        self,
        start_seq: int,
        from_position: int,
        cats: frozenset[str] | None,
        tys: frozenset[str] | None,
        parts: frozenset[int] | None,
    ) -> AsyncIterator[tuple[int, RecordedEvent | None]]:
        """(sequence, event) from `start_seq`; the event is None for a message filtered out."""
        subject = self._filter_subject(cats, parts)
        async for m in self._scan(start_seq, subject):
            if m.is_tombstone:
                yield m.seq, None
                continue
            stream = self._layout.stream_of(m.subject)
            if (cats is not None and category_of(stream) not in cats) or (
                parts is not None and partition_of(stream, self.partition_count) not in parts
            ):
                yield m.seq, None
                continue
            e = wire.decode_event(stream, m.data)
            if e.position < from_position or (tys is not None and e.type not in tys):
                yield m.seq, None
                continue
            yield m.seq, e

    async def _start_seq(self, from_position: int) -> int:
        if from_position <= 1:
            return 1
        head_seq, _ = await self._log_head()
        return await self._bisect(self._layout.events, from_position, head_seq, _position_key)

    async def read_all(
        self,
        from_position: int = 0,
        categories: Collection[str] | None = None,
        types: Collection[str] | None = None,
        limit: int | None = None,
        partitions: Collection[int] | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        self._check_open()
        cats, tys = validate_filters(categories, types)
        check_read_args(from_position, limit, False)
        parts = None if partitions is None else frozenset(partitions)
        if limit == 0 or cats == frozenset() or tys == frozenset() or parts == frozenset():
            return
        count = 0
        with self._reading("read_all"):
            start = await self._start_seq(from_position)
            async for _, e in self._matching(start, from_position, cats, tys, parts):
                if e is None:
                    continue
                yield e
                count += 1
                if limit is not None and count >= limit:
                    return

    async def last_position(self) -> int:
        self._check_open()
        with _translated("last_position"):
            _, position = await self._log_head()
        return position

    @property
    def partition_count(self) -> int:
        return self._layout.partitions

    def _head_watch(self) -> HeadWatch:
        return self._watch

    async def _ensure_watch(self) -> None:
        """Follow the store's subjects with a core subscription that wakes subscribers.

        A core message only says "something was published"; the position comes
        from the stream itself, so a wake-up never claims an event that is not stored.
        """
        if self._watch_sub is not None:
            return

        async def on_msg(_: Msg) -> None:
            self._watch_dirty = True
            if self._watch_task is None or self._watch_task.done():
                self._watch_task = asyncio.create_task(self._refresh_head())

        with _translated("subscribe"):
            self._watch_sub = await self._nc.subscribe(self._layout.events, cb=on_msg)

    async def _refresh_head(self) -> None:
        while self._watch_dirty and not self._closed:
            self._watch_dirty = False
            try:
                self._watch.advance(await self.last_position())
            except TidelogError:
                return

    async def subscribe(
        self,
        from_position: int = 0,
        categories: Collection[str] | None = None,
        types: Collection[str] | None = None,
        partitions: Collection[int] | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Catch up, then follow live.

        Unlike the generic loop this never jumps ahead to the head it was told
        about: it moves only past events it has read itself, because in a
        cluster the head and the pages may come from different replicas.
        """
        cats, tys = validate_filters(categories, types)
        parts = None if partitions is None else frozenset(partitions)
        check_position(from_position)
        self._check_open()
        await self._ensure_watch()
        with self._reading("subscribe"):
            next_seq = await self._start_seq(from_position)
        while True:
            self._check_open()
            seen = self._watch.head
            with self._reading("subscribe"):
                async for seq, event in self._matching(next_seq, from_position, cats, tys, parts):
                    next_seq = seq + 1
                    if event is not None:
                        yield event
            await self._watch.wait_beyond(seen, self.poll_interval)

    # ------------------------------------------------------------------ layer 3

    async def _group(self, group: str, category: str) -> tuple[int, wire.GroupDoc | None]:
        m = await self._last_msg(self._layout.group_subject(group, category))
        if m is None:
            return 0, None
        return m.seq, wire.decode_group(m.data)

    def _group_msg(
        self, group: str, category: str, seq: int, doc: wire.GroupDoc
    ) -> tuple[str, bytes, dict[str, str]]:
        return (
            self._layout.group_subject(group, category),
            wire.encode_group(doc),
            {wire.EXPECTED_LAST_SUBJECT_SEQ: str(seq), wire.ROLLUP: "sub"},
        )

    async def _update_group(
        self, group: str, category: str, change: Callable[[wire.GroupDoc], Membership | None]
    ) -> Membership | None:
        """Apply `change` to the group's document with compare-and-set.

        As in the memory engine, the document is created by any operation on the
        group and a change made before `change` raises (leases expired) is kept.
        """
        validate_group_name(group)
        validate_group_name(category, "category")
        for attempt in range(MAX_ATTEMPTS):
            self._check_open()
            with _translated("group"):
                seq, doc = await self._group(group, category)
                before = None if doc is None else wire.encode_group(doc)
                doc = doc or wire.GroupDoc()
                error: TidelogError | None = None
                result = None
                try:
                    result = change(doc)
                except TidelogError as exc:
                    error = exc
                if before is None or wire.encode_group(doc) != before:
                    try:
                        await self._publish_one(*self._group_msg(group, category, seq, doc))
                    except _ApiError as exc:
                        if exc.err_code in wire.WRONG_LAST_SEQUENCE:
                            await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * attempt)))
                            continue
                        raise
                if error is not None:
                    raise error
                return result
        raise StoreUnavailable("group: gave up after too many concurrent writes")

    async def join_group(
        self, group: str, category: str, member: str, lease: float = 10.0
    ) -> Membership:
        self._check_open()
        validate_group_name(member, "member")

        def change(doc: wire.GroupDoc) -> Membership:
            doc.state.join(member, self._now(), lease)
            return doc.state.membership(group, category, member, self.partition_count)

        result = await self._update_group(group, category, change)
        assert result is not None
        return result

    async def heartbeat(
        self, group: str, category: str, member: str, lease: float = 10.0
    ) -> Membership:
        self._check_open()

        def change(doc: wire.GroupDoc) -> Membership:
            doc.state.heartbeat(group, category, member, self._now(), lease)
            return doc.state.membership(group, category, member, self.partition_count)

        result = await self._update_group(group, category, change)
        assert result is not None
        return result

    async def leave_group(self, group: str, category: str, member: str) -> None:
        self._check_open()

        def change(doc: wire.GroupDoc) -> None:
            doc.state.leave(member, self._now())

        await self._update_group(group, category, change)

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
        self._check_open()
        check_position(position)
        validate_group_name(group)
        validate_group_name(category, "category")
        checked: dict[str, tuple[tuple[NewEvent, ...], ExpectedVersion]] | None = None

        async def group_step() -> tuple[str, bytes, dict[str, str]] | None:
            nonlocal checked
            seq, doc = await self._group(group, category)
            doc = doc or wire.GroupDoc()
            try:
                doc.state.check(
                    group,
                    category,
                    member,
                    generation,
                    partition,
                    self.partition_count,
                    self._now(),
                )
            except StaleGeneration:
                if seq == 0:  # the memory engine creates the group on any operation
                    with contextlib.suppress(_ApiError):
                        await self._publish_one(*self._group_msg(group, category, 0, doc))
                raise
            if checked is None:
                checked = prepare_append_many(appends) if appends else {}
            old = doc.checkpoints.get(partition, 0)
            if not appends and partition in doc.checkpoints and position <= old:
                return None  # nothing changes; with appends the write still fences them
            doc.checkpoints[partition] = max(old, position)
            return self._group_msg(group, category, seq, doc)

        if not appends:
            for attempt in range(MAX_ATTEMPTS):
                self._check_open()
                with _translated("commit"):
                    msg = await group_step()
                    if msg is None:
                        return {}
                    try:
                        await self._publish_one(*msg)
                    except _ApiError as exc:
                        if exc.err_code in wire.WRONG_LAST_SEQUENCE:
                            await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * attempt)))
                            continue
                        raise
                    return {}
            raise StoreUnavailable("commit: gave up after too many concurrent writes")
        # Fencing first (as the memory engine does), then the appends' own validation.
        with _translated("commit"):
            _, doc = await self._group(group, category)
        (doc or wire.GroupDoc()).state.check(
            group, category, member, generation, partition, self.partition_count, self._now()
        )
        checked = prepare_append_many(appends)
        return await self._write(checked, group_step)

    async def checkpoints(self, group: str, category: str) -> dict[int, int]:
        self._check_open()
        with _translated("checkpoints"):
            _, doc = await self._group(group, category)
        return {} if doc is None else dict(doc.checkpoints)

    async def describe_group(self, group: str, category: str) -> Membership | None:
        self._check_open()
        with _translated("describe_group"):
            _, doc = await self._group(group, category)
        if doc is None:
            return None
        live = doc.state
        live.leave("", self._now())  # expire without joining anyone; not written back
        return live.membership(group, category, "", self.partition_count)

    async def list_groups(self) -> list[tuple[str, str]]:
        self._check_open()
        with _translated("list_groups"):
            subjects = await self._subjects(self._layout.groups)
        return sorted(self._layout.parse_group_subject(s) for s in subjects)


# --------------------------------------------------------------------------- opening


def _servers(url: str) -> list[str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "nats":
        raise InvalidURL(url, "the NATS engine takes nats://host:port[,host:port...]")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    hosts = hosts or "127.0.0.1:4222"
    prefix = f"{userinfo}@" if userinfo else ""
    return [f"nats://{prefix}{h}" for h in hosts.split(",") if h]


async def _ensure_stream(nc: NatsClient, url: str, config: NatsConfig) -> None:
    """Create the store's JetStream stream, or check that an existing one is safe."""
    js = f"tidelog_{config.store}"
    subject = f"tl.{config.store}.>"
    wanted = {
        "name": js,
        "subjects": [subject],
        "retention": "limits",
        "storage": config.storage,
        "num_replicas": config.replicas,
        "discard": "old",
        "max_msgs": -1,
        "max_bytes": -1,
        "max_age": 0,
        "max_msgs_per_subject": -1,
        "duplicate_window": 120_000_000_000,
        "allow_atomic": True,
        "allow_direct": True,
        "allow_rollup_hdrs": True,
        "deny_delete": True,
    }

    async def api(op: str, body: object) -> dict[str, Any]:
        msg = await nc.request(f"$JS.API.{op}", wire.json_bytes(body), timeout=config.timeout)
        resp: dict[str, Any] = json.loads(msg.data)
        return resp

    info = await api(f"STREAM.INFO.{js}", {})
    if info.get("error", {}).get("err_code") == wire.STREAM_NOT_FOUND:
        created = await api(f"STREAM.CREATE.{js}", wanted)
        if created.get("error") and created["error"].get("err_code") != 10058:  # name in use
            _raise_api(created)
        info = await api(f"STREAM.INFO.{js}", {})
    _raise_api(info)
    current = info["config"]
    if current.get("storage") != "file" and not config.allow_unsafe:
        raise NotSupported(
            "nats",
            f"a store on {current.get('storage')} storage",
            "acknowledged events would be lost on a restart; pass allow_unsafe=true to accept",
        )
    if subject not in current.get("subjects", []):
        raise InvalidURL(url, f"JetStream stream {js} does not capture {subject}")
    if int(current.get("num_replicas", 1)) < config.replicas:
        log.warning(
            "JetStream stream %s has %s replicas, fewer than the %s asked for",
            js,
            current.get("num_replicas"),
            config.replicas,
        )
    if not (current.get("allow_atomic") and current.get("allow_direct")) or not current.get(
        "allow_rollup_hdrs"
    ):
        current.update(allow_atomic=True, allow_direct=True, allow_rollup_hdrs=True)
        _raise_api(await api(f"STREAM.UPDATE.{js}", current))


async def _ensure_meta(nc: NatsClient, url: str, config: NatsConfig) -> int:
    """Read the store's partition count, writing it first when the store is new."""
    js = f"tidelog_{config.store}"
    subject = f"tl.{config.store}.meta"
    for _ in range(10):
        msg = await nc.request(
            f"$JS.API.STREAM.MSG.GET.{js}",
            wire.json_bytes({"last_by_subj": subject}),
            timeout=config.timeout,
        )
        resp = json.loads(msg.data)
        try:
            _raise_api(resp)
        except _NotFound:
            meta = wire.Meta(partitions=config.partitions or DEFAULT_PARTITIONS)
            ack = await nc.request(
                subject,
                wire.encode_meta(meta),
                timeout=config.timeout,
                headers={wire.EXPECTED_LAST_SUBJECT_SEQ: "0"},
            )
            ack_resp = json.loads(ack.data)
            if ack_resp.get("error", {}).get("err_code") in wire.WRONG_LAST_SEQUENCE:
                continue
            _raise_api(ack_resp)
            return meta.partitions
        stored = wire.decode_meta(wire.parse_api_message(resp["message"]).data)
        if config.partitions is not None and config.partitions != stored.partitions:
            raise InvalidURL(
                url,
                f"store {config.store!r} was created with {stored.partitions} partitions; "
                "the count is fixed at creation",
            )
        return stored.partitions
    raise StoreUnavailable("could not read the store's settings")


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
    if config.replicas < 1 or config.timeout <= 0:
        raise InvalidURL(url, "replicas must be >= 1 and timeout > 0")
    if config.storage == "memory" and not config.allow_unsafe:
        raise NotSupported(
            "nats",
            "storage=memory",
            "acknowledged events would be lost on a restart; pass allow_unsafe=true to accept",
        )
    servers = _servers(url)
    try:
        nc = await nats.connect(
            servers,
            connect_timeout=config.connect_timeout,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            allow_reconnect=True,
            error_cb=_log_error,
        )
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
        with _translated("open"):
            await _ensure_stream(nc, url, config)
            partitions = await _ensure_meta(nc, url, config)
    except BaseException:
        await nc.close()
        raise
    return NatsEngine(nc, config, partitions)


async def _log_error(exc: Exception) -> None:
    log.info("nats connection: %s: %s", type(exc).__name__, exc)
