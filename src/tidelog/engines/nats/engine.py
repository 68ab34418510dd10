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
  and a single writer task publishes them together as one batch with one new
  `head` and each group document written once, each write decided on its own
  (a conflict fails only its write), so in-process writes never race each
  other on a compare-and-set; only other processes' batches can;
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
import collections
import contextlib
import itertools
import json
import logging
import random
import re
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias
from uuid import UUID, uuid4

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from tidelog.engines._kit.checks import (
    check_checkpoint,
    check_position,
    log_filter,
    prepare_append,
    prepare_append_many,
    prepare_delete,
    prepare_purge,
    prepare_read_all,
    prepare_read_stream,
    resolve_retry,
    validate_group_key,
    validate_group_name,
)
from tidelog.engines._kit.urls import config_from_url
from tidelog.engines._kit.watch import HeadWatch
from tidelog.engines.contract import GroupEngine
from tidelog.engines.nats import wire
from tidelog.engines.nats.errors import ApiError, Conflict, NotFound, raise_api, translated
from tidelog.engines.nats.setup import NatsConfig, ensure_meta, ensure_stream, servers_of
from tidelog.errors import (
    InvalidInput,
    InvalidURL,
    NotSupported,
    StoreClosed,
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
)

__all__ = ["NatsConfig", "NatsEngine", "open_engine"]

log = logging.getLogger(__name__)

MIN_SERVER: Final = (2, 12)
MAX_ATTEMPTS: Final = 200
"""Compare-and-set rounds before giving up under contention (each round someone wins)."""
PAGE: Final = 256
RECENT: Final = 4096
"""Just-committed events kept for live subscribers in this process."""
STREAM_CACHE: Final = 100_000
"""Stream heads remembered by the writer; past this the cache starts over (a miss costs a read)."""
_STORE_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


Message: TypeAlias = tuple[str, bytes, dict[str, str]]
"""(subject, payload, headers) of one message to publish."""
GroupChange: TypeAlias = Callable[[wire.GroupDoc], Any]
"""Changes a group document in place and returns the caller's result; raises (keeping
what it changed before, such as expired leases) to refuse, say a fenced member."""


@dataclass(eq=False)
class _Pending:
    """One queued all-or-nothing write and the future its caller awaits.

    A write appends to `checked` streams, changes the group document `group`
    (group, category), or both (a transactional commit).
    """

    checked: Mapping[str, tuple[tuple[NewEvent, ...], ExpectedVersion]]
    group: tuple[str, str] | None
    change: GroupChange | None
    size: int
    deadline: float
    future: asyncio.Future[Any]


@dataclass(eq=False)
class _GroupDraft:
    """A group document as one batch changes it: written once, whatever the number of writes."""

    seq: int
    """The sequence its replacement must expect (compare-and-set)."""
    doc: wire.GroupDoc
    before: bytes | None
    """The document as read (None: there was none, so any write creates it)."""
    fence: bool = False
    """A commit with appends took part: write it even if unchanged, as their fence."""

    @classmethod
    def of(cls, seq: int, doc: wire.GroupDoc | None) -> _GroupDraft:
        """The draft of a document as `_group` read it."""
        if doc is None:
            return cls(seq, wire.GroupDoc(), None)
        return cls(seq, doc, wire.encode_group(doc))

    def message(self, subject: str) -> Message | None:
        data = wire.encode_group(self.doc)
        if not self.fence and data == self.before:
            return None
        return subject, data, {wire.EXPECTED_LAST_SUBJECT_SEQ: str(self.seq), wire.ROLLUP: "sub"}


@dataclass(eq=False)
class _Plan:
    """One batch as decided: its messages and each write's result or error."""

    last_position: int
    index_msgs: list[Message] = field(default_factory=list)
    event_msgs: list[Message] = field(default_factory=list)
    event_streams: list[tuple[str, int]] = field(default_factory=list)
    group_msgs: list[Message] = field(default_factory=list)
    outcomes: list[tuple[_Pending, object]] = field(default_factory=list)
    """Each write's result (append results, or its group change's) or TidelogError."""
    msgs: list[Message] = field(default_factory=list)
    last_event: dict[str, tuple[int, int]] = field(default_factory=dict)
    """stream -> (index in `msgs` of its last event, that event's version)."""

    def finish(self, head_subject: str, head_seq: int) -> None:
        """Lay the batch out: id-index entries, events, group documents, then the new head.

        A batch without events leaves `head` alone: group changes need no position.
        """
        self.msgs = [*self.index_msgs, *self.event_msgs, *self.group_msgs]
        if self.event_msgs:
            head = (
                head_subject,
                str(self.last_position).encode(),
                {wire.EXPECTED_LAST_SUBJECT_SEQ: str(head_seq), wire.ROLLUP: "sub"},
            )
            self.msgs.append(head)
        base = len(self.index_msgs)
        for i, (stream, version) in enumerate(self.event_streams):
            self.last_event[stream] = (base + i, version)

    def resolve(self) -> None:
        for p, outcome in self.outcomes:
            if p.future.done():
                continue
            if isinstance(outcome, TidelogError):
                p.future.set_exception(outcome)
            else:
                p.future.set_result(outcome)


async def _none_found() -> dict[UUID, tuple[str, int, int]]:
    return {}


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
        self._jstream = self._layout.jstream
        self._watch = HeadWatch()
        self._watch_sub: Subscription | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_dirty = False
        self._queue: collections.deque[_Pending] = collections.deque()
        self._writer: asyncio.Task[None] | None = None
        self._log_cache: tuple[int, int] | None = None
        """(sequence, position) of the head this process wrote last."""
        self._stream_cache: dict[str, tuple[int, int | None, bool]] = {}
        self._live = 0
        """Live subscriptions of this engine; while there are any the writer keeps `_recent`."""
        self._recent: collections.deque[tuple[int, int, RecordedEvent]] = collections.deque(
            maxlen=RECENT
        )
        """(position, sequence, event) of the last events this process committed, gap-free."""
        """stream -> (last sequence, last version, deleted) as this process wrote them."""

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """`_translated`, except that a read cut short by `close()` raises `StoreClosed`."""
        try:
            with translated(what):
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
        raise_api(resp)
        return resp

    async def _last_msg(self, subject: str) -> wire.StoredMsg | None:
        """The last message on `subject` (wildcards allowed), read from the stream leader."""
        try:
            resp = await self._api(f"STREAM.MSG.GET.{self._jstream}", {"last_by_subj": subject})
        except NotFound:
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
        """One batched direct get: up to `batch` messages from `seq`, and how many remain.

        Replies are collected by a callback rather than `next_msg`, which costs a
        task, a timer and a uuid per message (most of a replay's client CPU).
        """
        out: list[wire.StoredMsg] = []
        loop = asyncio.get_running_loop()
        end: asyncio.Future[tuple[str, Mapping[str, str]]] = loop.create_future()

        async def on_msg(msg: Msg) -> None:
            if end.done():
                return
            headers = msg.headers or {}
            status = headers.get("Status")
            if status is not None:
                end.set_result((status, headers))
                return
            out.append(
                wire.StoredMsg(
                    subject=headers["Nats-Subject"],
                    seq=int(headers["Nats-Sequence"]),
                    headers=headers,
                    data=msg.data,
                )
            )
            if len(out) >= batch:  # a full page needs no end-of-batch marker
                end.set_result(("204", headers))

        sub = await self._nc.subscribe(self._nc.new_inbox(), cb=on_msg)
        try:
            body = {"seq": seq, "next_by_subj": subject, "batch": batch}
            await self._nc.publish(
                f"$JS.API.DIRECT.GET.{self._jstream}", wire.json_bytes(body), reply=sub.subject
            )
            try:
                status, headers = await asyncio.wait_for(asyncio.shield(end), self.config.timeout)
            except TimeoutError:
                if out:
                    return out, 1
                raise nats.errors.TimeoutError() from None
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if status == "404":
            return out, 0
        if status == "204":
            return out, int(headers.get("Nats-Num-Pending", "0"))
        if status == "408" and out:
            return out, 1
        raise StoreUnavailable(f"direct get failed: {status} {dict(headers)}")

    async def _publish_one(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        msg = await self._request(subject, payload, headers)
        resp = json.loads(msg.data)
        raise_api(resp)
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

    # ------------------------------------------------------------------ group commit
    #
    # Every write of this process goes through one queue: appends (which move
    # `head`) and group commits, with or without appends (which change a group
    # document; joins, heartbeats and leaves do not wait in it). A single
    # writer task takes what is queued, decides each write against state read
    # once for the batch, and publishes the survivors as ONE atomic batch,
    # with one new `head` and each group document written once: in-process
    # writes never race each other on a compare-and-set, a conflict fails only
    # its own write, and a worker's many commits share a batch (an atomic
    # batch costs the server several times a single publish). Races with
    # other processes show up as a failed compare-and-set and make the writer
    # re-read and retry.

    def _write(
        self,
        checked: Mapping[str, tuple[tuple[NewEvent, ...], ExpectedVersion]],
        group: tuple[str, str] | None = None,
        change: GroupChange | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one all-or-nothing write: appends to `checked` and/or `change` of a group.

        The future's result is the appends' results, or (without appends) what
        `change` returned.
        """
        size = 2 * sum(len(events) for events, _ in checked.values()) + (group is not None)
        if size + 1 > wire.MAX_BATCH_MESSAGES:
            raise NotSupported(
                self.name,
                f"a write of {size + 1} messages",
                "a JetStream atomic batch holds at most 1000 messages "
                "(each event takes two: the event and its id-index entry)",
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(
            _Pending(
                checked=checked,
                group=group,
                change=change,
                size=size,
                deadline=loop.time() + self.config.append_timeout,
                future=future,
            )
        )
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        """The writer task: commit batches until the queue is empty."""
        while self._queue:
            batch = self._take()
            if not batch:
                continue
            try:
                await self._commit_batch(batch)
            except asyncio.CancelledError:
                self._fail(batch, StoreClosed())
                raise
            except Exception as exc:  # never let the writer die with callers waiting
                log.exception("nats writer: unexpected error")
                self._fail(batch, StoreUnavailable(f"append: {type(exc).__name__}: {exc}"))

    def _take(self) -> list[_Pending]:
        """As many queued writes as fit in one atomic batch (the head takes one message)."""
        batch: list[_Pending] = []
        rest: collections.deque[_Pending] = collections.deque()
        total = 1
        while self._queue:
            p = self._queue.popleft()
            if p.future.done():  # the caller was cancelled before its turn
                continue
            if total + p.size > wire.MAX_BATCH_MESSAGES:
                rest.append(p)
                continue
            batch.append(p)
            total += p.size
        self._queue = rest
        return batch

    @staticmethod
    def _fail(batch: Sequence[_Pending], exc: BaseException) -> None:
        for p in batch:
            if not p.future.done():
                p.future.set_exception(exc)

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        """Decide and publish `batch`, retrying the whole of it when another process wins.

        Level 0 trusts what this process wrote last (cached `head` and stream
        heads, no id lookups). A lost compare-and-set names the sequence of the
        message it lost to, which tells the subject: `head` or a group document
        (re-read, as always), a stream (its head re-read) or an id (the ids are
        looked up, level 2). Re-reading only that keeps a retry as cheap as the
        first try, so a big batch is not starved by other processes' small
        ones. Lost to something unknown, it re-reads every head (level 1), and
        then the id index too. Every error is decided at level 2, on state read
        from the stream leader, so a user never sees a conflict that a stale
        cache made up.
        """
        loop = asyncio.get_running_loop()
        level = 0
        conflicts = 0
        while True:
            now = loop.time()
            for p in batch:
                if now > p.deadline and not p.future.done():
                    p.future.set_exception(
                        StoreUnavailable(
                            "append: gave up waiting behind concurrent writers of other "
                            "processes (outcome unknown: retry with the same event ids)"
                        )
                    )
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                return
            if self._closed:
                self._fail(batch, StoreClosed())
                return
            try:
                with translated("append"):
                    plan = await self._plan(batch, level)
            except TidelogError as exc:
                self._fail(batch, exc)
                return
            if plan is None:  # an error decided on cached state: decide it on fresh state
                level = 2
                continue
            if not plan.msgs:
                plan.resolve()
                return
            try:
                with translated("append"):
                    last_seq = await self._publish_batch(plan.msgs)
            except Conflict as exc:
                conflicts += 1
                lost_on = await self._lost_on(exc)
                log.debug("write batch lost a compare-and-set race (%d) on %s", conflicts, lost_on)
                self._log_cache = None
                streams = {self._layout.stream_subject(s): s for p in batch for s in p.checked}
                if lost_on in streams:
                    self._stream_cache.pop(streams[lost_on], None)
                elif lost_on is None or lost_on.startswith(self._layout.index_prefix):
                    self._forget(batch)
                    level = 2 if lost_on else min(level + 1, 2)
                if conflicts > 1:
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * conflicts)))
                continue
            except TidelogError as exc:
                self._forget(batch)  # the outcome is unknown: trust nothing cached
                self._fail(batch, exc)
                return
            self._remember(plan, last_seq)
            plan.resolve()
            self._watch.advance(plan.last_position)  # live subscribers take it from `_recent`
            return

    async def _lost_on(self, conflict: Conflict) -> str | None:
        """The subject whose compare-and-set failed, or None if that cannot be told."""
        if not conflict.last_seq:  # also a subject purged meanwhile
            return None
        try:
            with translated("append"):
                resp = await self._api(
                    f"STREAM.MSG.GET.{self._jstream}", {"seq": conflict.last_seq}
                )
        except NotFound:  # rolled up since: `head` or a group document
            return self._layout.head
        except TidelogError:
            return None
        return wire.parse_api_message(resp["message"]).subject

    def _forget(self, batch: Sequence[_Pending]) -> None:
        self._log_cache = None
        for p in batch:
            for stream in p.checked:
                self._stream_cache.pop(stream, None)

    def _remember(self, plan: _Plan, last_seq: int) -> None:
        """Cache the heads this batch left (messages of a batch take consecutive sequences)."""
        n = len(plan.msgs)
        if plan.event_msgs:  # else `head` was not written
            self._log_cache = (last_seq, plan.last_position)
        if len(self._stream_cache) > STREAM_CACHE:
            self._stream_cache.clear()
        for stream, (index, version) in plan.last_event.items():
            self._stream_cache[stream] = (last_seq - (n - 1 - index), version, False)
        if self._live and plan.event_msgs:
            first = plan.last_position - len(plan.event_msgs) + 1
            if self._recent and self._recent[-1][0] + 1 != first:
                self._recent.clear()  # another process wrote in between: no gap-free run
            base = last_seq - (n - 1 - len(plan.index_msgs))
            for i, ((_, payload, _), (stream, _)) in enumerate(
                zip(plan.event_msgs, plan.event_streams, strict=True)
            ):
                self._recent.append((first + i, base + i, wire.decode_event(stream, payload)))

    async def _plan(self, batch: Sequence[_Pending], level: int) -> _Plan | None:
        """Read the state once and decide every write of `batch` in queue order.

        A write's group change comes first (a fenced member is refused before
        its appends are checked), then its appends; if they fail, the change is
        undone. Group documents are always read fresh, so their refusals are
        final. Returns None when an append fails on state that was not read
        fresh from the leader with its ids looked up (level < 2): the caller
        re-plans at level 2.
        """
        streams = list(dict.fromkeys(s for p in batch for s in p.checked))
        need = streams if level >= 1 else [s for s in streams if s not in self._stream_cache]
        ids = [e.id for p in batch for events, _ in p.checked.values() for e in events]
        keys = list(dict.fromkeys(p.group for p in batch if p.group is not None))

        async def log_head() -> tuple[int, int]:
            if level == 0 and self._log_cache is not None:
                return self._log_cache
            return await self._log_head()

        async def draft(key: tuple[str, str]) -> _GroupDraft:
            return _GroupDraft.of(*await self._group(*key))

        found, (head_seq, position), read, drafts = await asyncio.gather(
            self._lookup_ids(ids) if level >= 2 else _none_found(),
            log_head(),
            asyncio.gather(*(self._head_of(s) for s in need)),
            asyncio.gather(*(draft(k) for k in keys)),
        )
        heads = {s: self._stream_cache[s] for s in streams if s not in need}
        heads.update(zip(need, read, strict=True))
        groups = dict(zip(keys, drafts, strict=True))
        plan = _Plan(position)
        touched: set[str] = set()
        now = datetime.now(UTC)
        for p in batch:
            results: dict[str, AppendResult] = {}
            fresh: list[tuple[str, tuple[NewEvent, ...], int, int]] = []
            group = None if p.group is None else groups[p.group]
            undo = None
            appending = False
            try:
                changed: object = None
                if group is not None and p.change is not None:
                    undo = wire.encode_group(group.doc) if p.checked else None
                    changed = p.change(group.doc)
                appending = True
                for stream, (events, expected) in p.checked.items():
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
            except TidelogError as exc:
                if group is not None and undo is not None:
                    group.doc = wire.decode_group(undo)
                if appending and level < 2:
                    return None
                plan.outcomes.append((p, exc))
                continue
            for stream, events, seq, last_version in fresh:
                subject = self._layout.stream_subject(stream)
                for n, e in enumerate(events):
                    version = last_version + 1 + n
                    plan.last_position += 1
                    where = (stream, version, plan.last_position)
                    found[e.id] = where
                    plan.index_msgs.append(
                        (
                            self._layout.index_subject(e.id),
                            wire.encode_index(wire.IndexEntry(*where)),
                            {wire.EXPECTED_LAST_SUBJECT_SEQ: "0"},
                        )
                    )
                    headers = {"Tl-Version": str(version)}
                    if n == 0 and stream not in touched:
                        headers[wire.EXPECTED_LAST_SUBJECT_SEQ] = str(seq)
                    plan.event_msgs.append(
                        (subject, wire.encode_event(e, version, plan.last_position, now), headers)
                    )
                    plan.event_streams.append((stream, version))
                    results[stream] = AppendResult(version=version, position=plan.last_position)
                touched.add(stream)
                heads[stream] = (seq, results[stream].version, False)
            if group is not None and p.checked:
                group.fence = True
            plan.outcomes.append((p, results if p.change is None or p.checked else changed))
        for key, group in groups.items():
            msg = group.message(self._layout.group_subject(*key))
            if msg is not None:
                plan.group_msgs.append(msg)
        plan.finish(self._layout.head, head_seq)
        return plan

    async def append(
        self,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> AppendResult:
        self._check_open()
        name, checked, expected = prepare_append(stream, events, expected_version)
        results: dict[str, AppendResult] = await self._write({name: (checked, expected)})
        return results[name]

    async def append_many(self, requests: Mapping[str, AppendRequest]) -> dict[str, AppendResult]:
        self._check_open()
        results: dict[str, AppendResult] = await self._write(prepare_append_many(requests))
        return results

    async def read_stream(
        self,
        stream: str,
        from_version: int = 0,
        backwards: bool = False,
        limit: int | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        self._check_open()
        prepare_read_stream(stream, from_version, backwards, limit)
        with translated("read_stream"):
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
            with translated("read_stream"):
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
        with translated("read_stream"):
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
        name, expected = prepare_delete(stream, expected_version)
        subject = self._layout.stream_subject(name)
        self._stream_cache.pop(name, None)  # the tombstone moves the stream's head
        for attempt in range(MAX_ATTEMPTS):
            with translated("delete_stream"):
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
        self._stream_cache.pop(name, None)
        with translated("purge_stream"):
            ids = [
                wire.decode_event(name, m.data).id
                async for m in self._scan(1, subject)
                if not m.is_tombstone
            ]
            await self._api(f"STREAM.PURGE.{self._jstream}", {"filter": subject})
            for event_id in ids:
                await self._api(
                    f"STREAM.PURGE.{self._jstream}",
                    {"filter": self._layout.index_subject(event_id)},
                )

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
        with translated("list_streams"):
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
        queued = list(self._queue)
        self._queue.clear()
        self._fail(queued, StoreClosed())
        if self._writer is not None and not self._writer.done():
            # Let the batch in flight finish (its outcome is then known), within bounds.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._writer), self.config.timeout)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
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
    ) -> AsyncIterator[tuple[int, int | None, RecordedEvent | None]]:
        """(sequence, position, event) from `start_seq`.

        The event is None for a message filtered out, the position None where
        it was not decoded (tombstones, streams filtered out by name).
        """
        subject = self._filter_subject(cats, parts)
        async for m in self._scan(start_seq, subject):
            if m.is_tombstone:
                yield m.seq, None, None
                continue
            stream = self._layout.stream_of(m.subject)
            if (cats is not None and category_of(stream) not in cats) or (
                parts is not None and partition_of(stream, self.partition_count) not in parts
            ):
                yield m.seq, None, None
                continue
            e = wire.decode_event(stream, m.data)
            if e.position < from_position or (tys is not None and e.type not in tys):
                yield m.seq, e.position, None
                continue
            yield m.seq, e.position, e

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
        filters = prepare_read_all(from_position, categories, types, limit, partitions)
        if limit == 0 or filters.matches_nothing:
            return
        count = 0
        with self._reading("read_all"):
            start = await self._start_seq(from_position)
            async for _, _, e in self._matching(start, from_position, *filters):
                if e is None:
                    continue
                yield e
                count += 1
                if limit is not None and count >= limit:
                    return

    async def last_position(self) -> int:
        self._check_open()
        with translated("last_position"):
            _, position = await self._log_head()
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
        cats, tys, parts = log_filter(categories, types, partitions)
        from_position = max(from_position, 0)  # as the generic loop does
        check_position(from_position)
        self._check_open()
        await self._ensure_watch()
        with self._reading("subscribe"):
            next_seq = await self._start_seq(from_position)
        next_pos = max(from_position, 1)
        """Every event below this position has been delivered or filtered out."""

        def wanted(e: RecordedEvent) -> bool:
            return (
                e.position >= from_position
                and (cats is None or category_of(e.stream) in cats)
                and (tys is None or e.type in tys)
                and (parts is None or partition_of(e.stream, self.partition_count) in parts)
            )

        self._live += 1
        idle = False
        try:
            while True:
                self._check_open()
                seen = self._watch.head
                # After a quiet poll interval read the stream whatever the watch says:
                # a wake-up from another process can come before its batch is stored.
                recent = None if idle else self._recent_from(next_pos)
                if recent is not None:
                    for pos, seq, e in recent:
                        next_pos, next_seq = pos + 1, max(next_seq, seq + 1)
                        if wanted(e):
                            yield e
                    if recent:
                        continue
                else:
                    with self._reading("subscribe"):
                        async for seq, at, event in self._matching(
                            next_seq, from_position, cats, tys, parts
                        ):
                            next_seq = seq + 1
                            if at is not None:
                                next_pos = at + 1
                            if event is not None:
                                yield event
                await self._watch.wait_beyond(seen, self.poll_interval)
                idle = self._watch.head <= seen
        finally:
            self._live -= 1

    def _recent_from(self, next_pos: int) -> list[tuple[int, int, RecordedEvent]] | None:
        """This process's just-committed events from `next_pos`, or None to read the stream.

        Positions are dense, so if the recent events run without a gap from
        `next_pos` they are exactly the log from there: a subscriber takes them
        without a round trip. [] means caught up with nothing newer known.
        """
        if not self._recent:
            return None
        lo, hi = self._recent[0][0], self._recent[-1][0]
        if lo <= next_pos <= hi:
            return list(itertools.islice(self._recent, next_pos - lo, None))
        if next_pos == hi + 1 and self._watch.head <= hi:
            return []
        return None

    # ------------------------------------------------------------------ layer 3

    async def _group(self, group: str, category: str) -> tuple[int, wire.GroupDoc | None]:
        """(revision to compare-and-set against or 0, the group's document or None).

        A key deleted or purged with KV tools (`nats kv del`) is no group, but its
        marker's revision is what the next write must expect.
        """
        m = await self._last_msg(self._layout.group_subject(group, category))
        if m is None:
            return 0, None
        if m.is_kv_removed:
            return m.seq, None
        return m.seq, wire.decode_group(m.data)

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
                draft = _GroupDraft.of(*await self._group(group, category))
                error: TidelogError | None = None
                result = None
                try:
                    result = change(draft.doc)
                except TidelogError as exc:
                    error = exc
                msg = draft.message(subject)
                if msg is not None:
                    try:
                        await self._publish_one(*msg)
                    except ApiError as exc:
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

        result: Membership = await self._update_group(group, category, change)
        return result

    async def heartbeat(
        self, group: str, category: str, member: str, lease: float = 10.0
    ) -> Membership:
        self._check_open()

        def change(doc: wire.GroupDoc) -> Membership:
            doc.state.heartbeat(group, category, member, self._now(), lease)
            return doc.state.membership(group, category, member, self.partition_count)

        result: Membership = await self._update_group(group, category, change)
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
        check_checkpoint(position)
        validate_group_key(group, category)

        def fence(doc: wire.GroupDoc) -> dict[str, AppendResult]:
            """Refuse a stale member, as the memory engine does."""
            doc.state.check(
                group, category, member, generation, partition, self.partition_count, self._now()
            )
            return {}

        def change(doc: wire.GroupDoc) -> dict[str, AppendResult]:
            fence(doc)
            doc.checkpoints[partition] = max(doc.checkpoints.get(partition, 0), position)
            return {}

        try:
            checked = prepare_append_many(appends) if appends else {}
        except TidelogError:
            # Fencing first (as the memory engine does), then the appends' own validation.
            await self._write({}, (group, category), fence)
            raise
        result: dict[str, AppendResult] = await self._write(checked, (group, category), change)
        return result

    async def checkpoints(self, group: str, category: str) -> dict[int, int]:
        self._check_open()
        with translated("checkpoints"):
            _, doc = await self._group(group, category)
        return {} if doc is None else dict(doc.checkpoints)

    async def describe_group(self, group: str, category: str) -> Membership | None:
        self._check_open()
        with translated("describe_group"):
            _, doc = await self._group(group, category)
        if doc is None:
            return None
        return doc.state.described(group, category, self.partition_count, self._now())

    async def list_groups(self) -> list[tuple[str, str]]:
        self._check_open()
        with translated("list_groups"):
            subjects = await self._subjects(self._layout.groups)
            # A key deleted with KV tools keeps its subject (the marker): read each.
            found: list[tuple[str, str]] = []
            for chunk in range(0, len(subjects), 64):
                lasts = await asyncio.gather(
                    *(self._last_msg(s) for s in subjects[chunk : chunk + 64])
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
        with translated("open"):
            await ensure_stream(nc, url, config)
            partitions = await ensure_meta(nc, url, config)
    except BaseException:
        await nc.close()
        raise
    return NatsEngine(nc, config, partitions)


async def _log_error(exc: Exception) -> None:
    log.info("nats connection: %s: %s", type(exc).__name__, exc)
