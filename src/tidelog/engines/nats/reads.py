"""Reads of one store's JetStream stream, shared by the engine and its writer.

Every read goes to JetStream's API or to its direct gets: the last message
on a subject (the heads that the writer's compare-and-sets expect, a group
document), pages of messages (a stream's events, the global log) and a
bisection that finds where a version or a position starts without reading
from the beginning. The engine reads through it, and so does the writer
(`writer.Writer`) when it plans a batch; neither reaches into the other.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Final

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from tidelog.engines.nats import wire
from tidelog.engines.nats.errors import NotFound, raise_api
from tidelog.engines.nats.setup import NatsConfig
from tidelog.errors import StoreUnavailable
from tidelog.model import RecordedEvent, category_of, partition_of

__all__ = ["PAGE", "Reader", "position_key", "version_key"]

PAGE: Final = 256
"""Messages per batched direct get."""
MERGE_MAX: Final = 64
"""Most subjects one read of the log merges (a consumer's partitions, say); past this it
reads the narrowest single wildcard and filters the messages itself."""
HINTS: Final = 4096
"""(position, sequence) pairs a reader remembers per generation (two generations)."""


def version_key(m: wire.StoredMsg) -> int | None:
    """What `Reader.bisect` compares on one stream's subject: the event's version."""
    return None if m.is_tombstone else wire.decode_envelope(m.data).version


def position_key(m: wire.StoredMsg) -> int | None:
    """What `Reader.bisect` compares on the events' subjects: the event's position."""
    return None if m.is_tombstone else wire.decode_envelope(m.data).position


class Reader:
    """One store's JetStream stream as this engine reads it.

    `check_open` is the engine's: a long scan stops with `StoreClosed` between
    pages once the store is closed.
    """

    def __init__(
        self,
        nc: NatsClient,
        config: NatsConfig,
        layout: wire.Layout,
        check_open: Callable[[], None],
        replicas: int = 1,
    ) -> None:
        self._nc = nc
        self._config = config
        self._layout = layout
        self._jstream = layout.jstream
        self._check_open = check_open
        self._merge = replicas == 1
        """Whether reads of several subjects are merged (see `scan_merged`)."""
        self._hints: dict[int, int] = {}
        self._old_hints: dict[int, int] = {}
        """position -> a sequence such that every event past that position lies past it."""

    async def api(self, op: str, body: object = None) -> dict[str, Any]:
        """One JetStream API request (`$JS.API.<op>`); its error raised as `errors` says."""
        payload = b"" if body is None else wire.json_bytes(body)
        try:
            msg: Msg = await self._nc.request(
                f"$JS.API.{op}", payload, timeout=self._config.timeout
            )
        except nats.errors.NoRespondersError:
            raise StoreUnavailable("JetStream is not enabled or has no leader") from None
        resp: dict[str, Any] = json.loads(msg.data)
        raise_api(resp)
        return resp

    async def last_msg(self, subject: str) -> wire.StoredMsg | None:
        """The last message on `subject` (wildcards allowed), read from the stream leader."""
        try:
            resp = await self.api(f"STREAM.MSG.GET.{self._jstream}", {"last_by_subj": subject})
        except NotFound:
            return None
        return wire.parse_api_message(resp["message"])

    async def head_of(self, stream: str) -> tuple[int, int | None, bool]:
        """(last sequence on the stream's subject or 0, last version or None, deleted)."""
        m = await self.last_msg(self._layout.stream_subject(stream))
        if m is None:
            return 0, None, False
        if m.is_tombstone:
            version = m.headers.get("Tl-Version")
            return m.seq, None if not version else int(version), True
        return m.seq, wire.decode_envelope(m.data).version, False

    async def log_head(self) -> tuple[int, int]:
        """(sequence of the head message or 0, last position given out or 0)."""
        m = await self.last_msg(self._layout.head)
        if m is None:
            return 0, 0
        return m.seq, int(m.data)

    async def group(self, group: str, category: str) -> tuple[int, wire.GroupDoc | None]:
        """(revision to compare-and-set against or 0, the group's document or None).

        A key deleted or purged with KV tools (`nats kv del`) is no group, but its
        marker's revision is what the next write must expect.
        """
        m = await self.last_msg(self._layout.group_subject(group, category))
        if m is None:
            return 0, None
        if m.is_kv_removed:
            return m.seq, None
        return m.seq, wire.decode_group(m.data)

    async def subjects(self, subject_filter: str) -> list[str]:
        """Every subject with messages that matches `subject_filter`."""
        out: list[str] = []
        offset = 0
        while True:
            resp = await self.api(
                f"STREAM.INFO.{self._jstream}",
                {"subjects_filter": subject_filter, "offset": offset},
            )
            subjects = resp.get("state", {}).get("subjects") or {}
            out.extend(subjects)
            total = int(resp.get("total", 0))
            offset += len(subjects)
            if not subjects or offset >= total:
                return out

    async def scan(
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
            page, pending = await self.direct_page(seq, subject, PAGE)
            for m in page:
                if until is not None and m.seq > until:
                    return
                yield m
                seq = m.seq + 1
            if not page or pending == 0:
                return

    async def direct_page(
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
                status, headers = await asyncio.wait_for(asyncio.shield(end), self._config.timeout)
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

    async def bisect(
        self,
        subject: str,
        target: int,
        hi: int,
        key: Callable[[wire.StoredMsg], int | None],
        lo: int = 1,
    ) -> int:
        """A sequence at or before the first message on `subject` whose key is `target`.

        Versions (on one stream's subject) and positions (on the events) grow
        with sequences, so the first message at or after a sequence tells on
        which side the target lies. Messages without a key (tombstones) only
        narrow the search. `lo` is a sequence known to be at or before it.
        """
        lo = max(lo, 1)
        if target <= 1:
            return lo
        while hi - lo > PAGE:
            mid = (lo + hi) // 2
            page, _ = await self.direct_page(mid, subject, 1)
            found = key(page[0]) if page else None
            if found is not None and found < target:
                lo = page[0].seq
            else:
                hi = mid
        return lo

    # ------------------------------------------------------------------ the global log

    def remember(self, position: int, seq: int) -> None:
        """Note that every event past `position` lies past sequence `seq`.

        True of the sequence of the event at `position` (positions grow with
        sequences) and of the `head` message that gave out `position` (it ends
        its batch). A consumer's next read starts just past its last, so
        `start_seq` then needs no bisection. Two generations bound the memory.
        """
        hints = self._hints
        hints[position] = seq
        if len(hints) >= HINTS:
            self._old_hints, self._hints = hints, {}

    def _hint(self, from_position: int) -> tuple[int, int] | None:
        """The remembered (position, sequence) with the highest position below `from_position`."""
        p = from_position - 1
        seq = self._hints.get(p)
        if seq is None:
            seq = self._old_hints.get(p)
        if seq is not None:
            return p, seq
        below = [q for h in (self._hints, self._old_hints) for q in h if q < from_position]
        if not below:
            return None
        p = max(below)
        return p, self._hints.get(p, self._old_hints.get(p, 0))

    async def start_seq(self, from_position: int, head_seq: int | None = None) -> int:
        """A sequence at or before the first event at `from_position`.

        From a remembered position close below it, that position's sequence
        (a short scan costs less than a bisection's round trips); else a
        bisection up to `head_seq` (read when not given).
        """
        if from_position <= 1:
            return 1
        known = self._hint(from_position)
        lo = 1 if known is None else known[1] + 1
        if known is not None and from_position - known[0] <= PAGE:
            return lo
        if head_seq is None:
            head_seq, _ = await self.log_head()
        return await self.bisect(self._layout.events, from_position, head_seq, position_key, lo)

    def _filter_subjects(
        self, cats: frozenset[str] | None, parts: frozenset[int] | None
    ) -> tuple[list[str], bool]:
        """The subjects a read of the log takes, and whether they match exactly the filters.

        One subject per (category, partition) asked for, merged by `scan_merged`
        (a consumer owning some partitions reads only theirs); else, above
        `MERGE_MAX` subjects or on a replicated stream, the narrowest single
        wildcard, whose messages `matching` filters itself.
        """
        if parts is not None and parts.issuperset(range(self._layout.partitions)):
            parts = None  # every partition: no partition token to match
        cat_list: list[str | None] = [None] if cats is None else [*sorted(cats)]
        part_list: list[int | None] = [None] if parts is None else [*sorted(parts)]
        n = len(cat_list) * len(part_list)
        if n == 1 and cats is None and parts is None:
            return [self._layout.events], True
        if n == 1 or (self._merge and n <= MERGE_MAX):
            return [self._layout.events_filter(c, p) for c in cat_list for p in part_list], True
        cat = cat_list[0] if len(cat_list) == 1 else None
        part = part_list[0] if len(part_list) == 1 else None
        return [self._layout.events_filter(cat, part)], False

    async def scan_merged(
        self, from_seq: int, subjects: Sequence[str], until: int, batch: int = PAGE
    ) -> AsyncIterator[wire.StoredMsg]:
        """Stored messages on any of `subjects` (disjoint) from `from_seq` through `until`,
        in order: one batched direct get per subject at a time, all in parallel.

        A subject's page says nothing past its last message, so each round
        yields only up to the lowest last sequence among the subjects with more
        to come. A subject that has no more says so as of when it was asked,
        which is complete only through messages stored before: `until` must be
        a sequence read before this call (the `head`), and the scan stops there.
        Replicas may answer direct gets with a prefix of the stream each, so
        only a stream on one replica is read this way (`_filter_subjects`).
        """
        following = dict.fromkeys(subjects, max(from_seq, 1))
        """subject -> the sequence its next page starts at, while it may have more."""
        buffers: dict[str, collections.deque[wire.StoredMsg]] = {
            s: collections.deque() for s in subjects
        }
        while True:
            self._check_open()
            need = [s for s, b in buffers.items() if not b and s in following]
            pages = await asyncio.gather(*(self.direct_page(following[s], s, batch) for s in need))
            for s, (page, pending) in zip(need, pages, strict=True):
                buffer = buffers[s]
                more = pending > 0
                for m in page:
                    if m.seq > until:
                        more = False
                        break
                    buffer.append(m)
                if not buffer or not more:
                    del following[s]
                else:
                    following[s] = buffer[-1].seq + 1
            bound = min((buffers[s][-1].seq for s in following), default=until)
            ready: list[list[wire.StoredMsg]] = []
            for buffer in buffers.values():
                taken = []
                while buffer and buffer[0].seq <= bound:
                    taken.append(buffer.popleft())
                if taken:
                    ready.append(taken)
            for m in heapq.merge(*ready, key=_seq_of):
                yield m
            if not following:
                return

    async def matching(
        self,
        start_seq: int,
        from_position: int,
        cats: frozenset[str] | None,
        tys: frozenset[str] | None,
        parts: frozenset[int] | None,
        *,
        until: int | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[tuple[int, int | None, RecordedEvent | None]]:
        """(sequence, position, event) from `start_seq`, through sequence `until` if given.

        The event is None for a message filtered out, the position None where
        it was not decoded (tombstones, streams filtered out by name). `limit`
        (the events wanted, if known) sizes the pages of a merged read. Every
        event decoded is remembered for `start_seq`.
        """
        subjects, exact = self._filter_subjects(cats, parts)
        if not subjects:  # an empty filter: nothing can match
            return
        if len(subjects) == 1:
            source = self.scan(start_seq, subjects[0], until=until)
        else:
            if until is None:
                until, _ = await self.log_head()
            batch = PAGE if limit is None else min(PAGE, max(16, limit * 5 // (4 * len(subjects))))
            source = self.scan_merged(start_seq, subjects, until, batch)
        remember = self.remember
        count = self._layout.partitions
        async for m in source:
            if m.is_tombstone:
                yield m.seq, None, None
                continue
            stream = self._layout.stream_of(m.subject)
            if not exact and (
                (cats is not None and category_of(stream) not in cats)
                or (parts is not None and partition_of(stream, count) not in parts)
            ):
                yield m.seq, None, None
                continue
            e = wire.decode_event(stream, m.data)
            remember(e.position, m.seq)
            if e.position < from_position or (tys is not None and e.type not in tys):
                yield m.seq, e.position, None
                continue
            yield m.seq, e.position, e


def _seq_of(m: wire.StoredMsg) -> int:
    return m.seq
