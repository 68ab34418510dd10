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
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
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
    ) -> None:
        self._nc = nc
        self._config = config
        self._layout = layout
        self._jstream = layout.jstream
        self._check_open = check_open

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
            page, _ = await self.direct_page(mid, subject, 1)
            found = key(page[0]) if page else None
            if found is not None and found < target:
                lo = page[0].seq
            else:
                hi = mid
        return lo

    # ------------------------------------------------------------------ the global log

    async def start_seq(self, from_position: int) -> int:
        """A sequence at or before the first event at `from_position`."""
        if from_position <= 1:
            return 1
        head_seq, _ = await self.log_head()
        return await self.bisect(self._layout.events, from_position, head_seq, position_key)

    def _filter_subject(self, cats: frozenset[str] | None, parts: frozenset[int] | None) -> str:
        cat = next(iter(cats)) if cats is not None and len(cats) == 1 else None
        part = next(iter(parts)) if parts is not None and len(parts) == 1 else None
        if cat is None and part is None:
            return self._layout.events
        return self._layout.events_filter(cat, part)

    async def matching(
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
        async for m in self.scan(start_seq, subject):
            if m.is_tombstone:
                yield m.seq, None, None
                continue
            stream = self._layout.stream_of(m.subject)
            if (cats is not None and category_of(stream) not in cats) or (
                parts is not None and partition_of(stream, self._layout.partitions) not in parts
            ):
                yield m.seq, None, None
                continue
            e = wire.decode_event(stream, m.data)
            if e.position < from_position or (tys is not None and e.type not in tys):
                yield m.seq, e.position, None
                continue
            yield m.seq, e.position, e
