"""The NATS engine's writer: group commit on one store's JetStream stream.

Every write of an engine goes through one queue (the kit's `GroupCommit`):
appends (which move `head`) and group commits, with or without appends (which
change a group document; joins, heartbeats and leaves do not wait in it, see
`NatsEngine`). Its single writer task takes what is queued, as many writes as
fit in one atomic batch; this writer decides each write against state read
once for the batch, and publishes the survivors as ONE atomic batch, with
one new `head` and each group document written once: in-process writes
never race each other on a compare-and-set, a conflict fails only its own
write, and a worker's many commits share a batch (an atomic batch costs the
server several times a single publish). Races with other processes show up
as a failed compare-and-set and make the writer re-read and retry.

The writer also keeps what its batches leave behind: the heads it wrote (so
the next batch need not read them) and, while someone follows the log live,
the events it just committed (`recent_from`), which spare a subscriber in
this process a round trip.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, TypeAlias
from uuid import UUID, uuid4

from nats.aio.client import Client as NatsClient

from tidelog.engines._kit.batching import GroupCommit, unknown_outcome
from tidelog.engines._kit.checks import resolve_retry
from tidelog.engines._kit.watch import HeadWatch
from tidelog.engines.contract import Checkpoint, Write
from tidelog.engines.nats import wire
from tidelog.engines.nats.errors import Conflict, NotFound, raise_api, translated
from tidelog.engines.nats.reads import Reader
from tidelog.engines.nats.setup import NatsConfig
from tidelog.errors import NotSupported, StoreClosed, StoreUnavailable, StreamDeleted, TidelogError
from tidelog.model import AppendResult, NewEvent, RecordedEvent, check_expected_version

__all__ = ["GroupDraft", "Message", "Writer", "too_big"]

log = logging.getLogger(__name__)

RECENT: Final = 4096
"""Just-committed events kept for live subscribers in this process."""
STREAM_CACHE: Final = 100_000
"""Stream heads remembered by the writer; past this the cache starts over (a miss costs a read)."""

Message: TypeAlias = tuple[str, bytes, dict[str, str]]
"""(subject, payload, headers) of one message to publish."""
Results: TypeAlias = dict[str, AppendResult]


def too_big(engine: str, messages: int) -> NotSupported:
    """The refusal of a write that cannot fit in one atomic batch."""
    return NotSupported(
        engine,
        f"a write of {messages} messages",
        "a JetStream atomic batch holds at most 1000 messages "
        "(each event takes two: the event and its id-index entry)",
    )


@dataclass(eq=False)
class _Pending:
    """One queued all-or-nothing write, and its outcome once its batch decided it."""

    write: Write
    deadline: float
    """When its caller stops waiting behind other processes' writers (`append_timeout`)."""
    outcome: Results | TidelogError | None = None

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def settle(self, outcome: Results | TidelogError) -> None:
        """Decide the write, unless it is decided already."""
        if self.outcome is None:
            self.outcome = outcome

    def decided(self) -> Results | TidelogError:
        """Its outcome: every write of a batch has one once the batch is done with."""
        if self.outcome is None:
            raise AssertionError("a write of the batch was left undecided")
        return self.outcome

    @property
    def group(self) -> tuple[str, str] | None:
        """The (group, category) whose document this write changes, if any."""
        cp = self.write.checkpoint
        return None if cp is None else (cp.group, cp.category)


@dataclass(eq=False)
class GroupDraft:
    """A group document as one batch changes it: written once, whatever the number of writes."""

    seq: int
    """The sequence its replacement must expect (compare-and-set)."""
    doc: wire.GroupDoc
    before: bytes | None
    """The document as read (None: there was none, so any write creates it)."""
    fence: bool = False
    """A commit with appends took part: write it even if unchanged, as their fence."""

    @classmethod
    def of(cls, seq: int, doc: wire.GroupDoc | None) -> GroupDraft:
        """The draft of a document as `Reader.group` read it."""
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
    outcomes: list[tuple[_Pending, Results | TidelogError]] = field(default_factory=list)
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
            p.settle(outcome)


async def _none_found() -> dict[UUID, tuple[str, int, int]]:
    return {}


class Writer:
    """The group-commit writer of one engine (see the module's docstring).

    It reads through the engine's `Reader`, advances the engine's head
    `watch` after each commit, and fences commits on `clock` (the engine's
    time, as for its joins and heartbeats).
    """

    def __init__(
        self,
        nc: NatsClient,
        config: NatsConfig,
        layout: wire.Layout,
        reader: Reader,
        watch: HeadWatch,
        clock: Callable[[], float],
    ) -> None:
        self._nc = nc
        self._config = config
        self._layout = layout
        self._reader = reader
        self._watch = watch
        self._clock = clock
        self._closed = False
        self._batches: GroupCommit[_Pending, Results] = GroupCommit(
            lambda: contextlib.nullcontext(self._commit),
            max_items=wire.MAX_BATCH_MESSAGES,
            max_weight=wire.MAX_BATCH_MESSAGES - 1,  # the new `head` takes one message
            failure=self._failure,
        )
        self._log_cache: tuple[int, int] | None = None
        """(sequence, position) of the head this process wrote last."""
        self._stream_cache: dict[str, tuple[int, int | None, bool]] = {}
        """stream -> (last sequence, last version, deleted) as this process wrote them."""
        self._live = 0
        """Live subscriptions of this engine; while there are any the writer keeps `_recent`."""
        self._followed_until = 0.0
        """Loop time until which a consumer's page reads keep `_recent` too (`follow_for`)."""
        self._recent: collections.deque[tuple[int, int, RecordedEvent]] = collections.deque(
            maxlen=RECENT
        )
        """(position, sequence, event) of the last events this process committed, gap-free."""

    # ------------------------------------------------------------------ publishing

    async def publish_one(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        """Publish one message to the stream; returns its sequence."""
        msg = await self._nc.request(
            subject, payload, timeout=self._config.timeout, headers=headers
        )
        resp = json.loads(msg.data)
        raise_api(resp)
        return int(resp["seq"])

    async def publish_batch(self, msgs: Sequence[Message]) -> int:
        """Publish `msgs` as one atomic batch; returns the sequence of the last one."""
        if len(msgs) == 1:
            return await self.publish_one(*msgs[0])
        if len(msgs) > wire.MAX_BATCH_MESSAGES:
            raise too_big("nats", len(msgs))
        batch_id = uuid4().hex
        last = len(msgs)
        for i, (subject, payload, headers) in enumerate(msgs, 1):
            h = {**headers, wire.BATCH_ID: batch_id, wire.BATCH_SEQ: str(i)}
            if i < last:
                await self._nc.publish(subject, payload, headers=h)
            else:
                h[wire.BATCH_COMMIT] = "1"
                return await self.publish_one(subject, payload, h)
        raise AssertionError("unreachable")

    async def lookup_ids(self, ids: Sequence[UUID]) -> dict[UUID, tuple[str, int, int]]:
        """Where each id already stored is: (stream, version, position)."""

        async def one(event_id: UUID) -> tuple[UUID, tuple[str, int, int] | None]:
            m = await self._reader.last_msg(self._layout.index_subject(event_id))
            if m is None:
                return event_id, None
            entry = wire.decode_index(m.data)
            return event_id, (entry.stream, entry.version, entry.position)

        found = await asyncio.gather(*(one(i) for i in ids))
        return {i: where for i, where in found if where is not None}

    # ------------------------------------------------------------------ what it remembers

    def forget_stream(self, stream: str) -> None:
        """Drop the cached head of `stream`: someone else (a tombstone, a purge) moves it."""
        self._stream_cache.pop(stream, None)

    @contextlib.contextmanager
    def followed(self) -> Iterator[None]:
        """While a live subscription of this engine runs, keep the events just committed."""
        self._live += 1
        try:
            yield
        finally:
            self._live -= 1

    def follow_for(self, seconds: float) -> None:
        """Keep the events just committed for `seconds`: a consumer read up to the head
        and will read this process's next commits (`NatsEngine._read_page`)."""
        self._followed_until = asyncio.get_running_loop().time() + seconds

    def recent_from(self, next_pos: int) -> list[tuple[int, int, RecordedEvent]] | None:
        """This process's just-committed (position, sequence, event) from `next_pos`, or None
        to read the stream.

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

    # ------------------------------------------------------------------ the queue

    def submit(self, write: Write) -> asyncio.Future[Results]:
        """Queue one all-or-nothing write; the future's result is its appends' results.

        Its weight is the messages it adds to a batch: two per event (the event,
        its id-index entry) and one for its group document.
        """
        events = sum(len(events) for events, _ in write.appends.values())
        size = 2 * events + (write.checkpoint is not None)
        if size + 1 > wire.MAX_BATCH_MESSAGES:
            raise too_big("nats", size + 1)
        deadline = asyncio.get_running_loop().time() + self._config.append_timeout
        return self._batches.submit(_Pending(write, deadline), size)

    async def close(self) -> None:
        """Fail what is queued with `StoreClosed`; let the batch in flight finish, within bounds.

        Its outcome is then known; past the request timeout the writer is
        cancelled and its callers get `StoreClosed`.
        """
        self._closed = True
        self._batches.fail_waiting(StoreClosed())
        await self._batches.close(grace=self._config.timeout)

    @staticmethod
    def _failure(exc: BaseException) -> Exception:
        """What the callers of a batch get when deciding it raised instead of settling them."""
        if isinstance(exc, asyncio.CancelledError):  # close() stopped waiting for it
            return StoreClosed()
        if not isinstance(exc, Exception):
            return unknown_outcome(exc)
        log.error("nats writer: unexpected error", exc_info=exc)  # never a silent failure
        return StoreUnavailable(f"append: {type(exc).__name__}: {exc}")

    @staticmethod
    def _fail(batch: Sequence[_Pending], exc: TidelogError) -> None:
        for p in batch:
            p.settle(exc)

    # ------------------------------------------------------------------ one batch

    async def _commit(self, batch: list[_Pending]) -> list[Results | Exception]:
        """The kit's batch commit: each write's results, or the error that failed it alone."""
        await self._commit_batch(batch)
        return [p.decided() for p in batch]

    async def _commit_batch(self, batch: list[_Pending]) -> None:  # noqa: PLR0912 (the retry levels of one compare-and-set round, read in order)
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
                if now > p.deadline:
                    p.settle(
                        StoreUnavailable(
                            "append: gave up waiting behind concurrent writers of other "
                            "processes (outcome unknown: retry with the same event ids)"
                        )
                    )
            batch = [p for p in batch if not p.done]
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
                    last_seq = await self.publish_batch(plan.msgs)
            except Conflict as exc:
                conflicts += 1
                lost_on = await self._lost_on(exc)
                log.debug("write batch lost a compare-and-set race (%d) on %s", conflicts, lost_on)
                self._log_cache = None
                streams = {
                    self._layout.stream_subject(s): s for p in batch for s in p.write.appends
                }
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
            # Live subscribers take the batch from `_recent`. Wake them once the callers
            # are settled (`GroupCommit` settles them when this returns), as before the
            # kit: the callback runs before any caller resumes, so an append that returned
            # has moved the head, and its caller runs before the subscribers it woke.
            loop.call_soon(self._watch.advance, plan.last_position)
            return

    async def _lost_on(self, conflict: Conflict) -> str | None:
        """The subject whose compare-and-set failed, or None if that cannot be told."""
        if not conflict.last_seq:  # also a subject purged meanwhile
            return None
        try:
            with translated("append"):
                resp = await self._reader.api(
                    f"STREAM.MSG.GET.{self._layout.jstream}", {"seq": conflict.last_seq}
                )
        except NotFound:  # rolled up since: `head` or a group document
            return self._layout.head
        except TidelogError:
            return None
        return wire.parse_api_message(resp["message"]).subject

    def _forget(self, batch: Sequence[_Pending]) -> None:
        self._log_cache = None
        for p in batch:
            for stream in p.write.appends:
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
        followed = self._live or asyncio.get_running_loop().time() < self._followed_until
        if followed and plan.event_msgs:
            first = plan.last_position - len(plan.event_msgs) + 1
            if self._recent and self._recent[-1][0] + 1 != first:
                self._recent.clear()  # another process wrote in between: no gap-free run
            base = last_seq - (n - 1 - len(plan.index_msgs))
            for i, ((_, payload, _), (stream, _)) in enumerate(
                zip(plan.event_msgs, plan.event_streams, strict=True)
            ):
                self._recent.append((first + i, base + i, wire.decode_event(stream, payload)))

    def _fence(self, doc: wire.GroupDoc, cp: Checkpoint, fence_only: bool) -> None:
        """Refuse a stale member, as the memory engine does; then move the checkpoint.

        A refusal keeps what the check changed before it raised (leases expired).
        """
        doc.state.check(
            cp.group,
            cp.category,
            cp.member,
            cp.generation,
            cp.partition,
            self._layout.partitions,
            self._clock(),
        )
        if not fence_only:
            doc.checkpoints[cp.partition] = max(doc.checkpoints.get(cp.partition, 0), cp.position)

    async def _plan(self, batch: Sequence[_Pending], level: int) -> _Plan | None:  # noqa: PLR0912, PLR0915 (decides a batch's writes in queue order in one read of the state)
        """Read the state once and decide every write of `batch` in queue order.

        A write's group change comes first (a fenced member is refused before
        its appends are checked), then its appends; if they fail, the change is
        undone. Group documents are always read fresh, so their refusals are
        final. Returns None when an append fails on state that was not read
        fresh from the leader with its ids looked up (level < 2): the caller
        re-plans at level 2.
        """
        streams = list(dict.fromkeys(s for p in batch for s in p.write.appends))
        need = streams if level >= 1 else [s for s in streams if s not in self._stream_cache]
        ids = [e.id for p in batch for events, _ in p.write.appends.values() for e in events]
        keys = list(dict.fromkeys(p.group for p in batch if p.group is not None))

        async def log_head() -> tuple[int, int]:
            if level == 0 and self._log_cache is not None:
                return self._log_cache
            return await self._reader.log_head()

        async def draft(key: tuple[str, str]) -> GroupDraft:
            return GroupDraft.of(*await self._reader.group(*key))

        found, (head_seq, position), read, drafts = await asyncio.gather(
            self.lookup_ids(ids) if level >= 2 else _none_found(),
            log_head(),
            asyncio.gather(*(self._reader.head_of(s) for s in need)),
            asyncio.gather(*(draft(k) for k in keys)),
        )
        heads = {s: self._stream_cache[s] for s in streams if s not in need}
        heads.update(zip(need, read, strict=True))
        groups = dict(zip(keys, drafts, strict=True))
        plan = _Plan(position)
        touched: set[str] = set()
        now = datetime.now(UTC)
        for p in batch:
            write = p.write
            results: Results = {}
            fresh: list[tuple[str, tuple[NewEvent, ...], int, int]] = []
            group = None if p.group is None else groups[p.group]
            undo = None
            appending = False
            try:
                if group is not None and write.checkpoint is not None:
                    undo = wire.encode_group(group.doc) if write.appends else None
                    self._fence(group.doc, write.checkpoint, write.fence_only)
                appending = True
                for stream, (events, expected) in write.appends.items():
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
            if group is not None and write.appends:
                group.fence = True
            plan.outcomes.append((p, results))
        for key, group in groups.items():
            msg = group.message(self._layout.group_subject(*key))
            if msg is not None:
                plan.group_msgs.append(msg)
        plan.finish(self._layout.head, head_seq)
        return plan
