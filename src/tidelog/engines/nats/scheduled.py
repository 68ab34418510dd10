"""The NATS engine's pending scheduled events: a second JetStream stream per store.

Private to `tidelog.engines.nats`. The store's own stream is the log (every
subject of it is part of the global order), so pending events live apart, in
the stream `tidelog-sched_<store>` capturing `tls.<store>.>`:

    tls.<store>.b.<batch hex>.<due µs, 17 digits>   one scheduled append: its rows
                                                    (msgpack), its lease (`Tl-Lease`)
    tls.<store>.i.<batch hex>.<event hex>           id index: the batch subject of a
                                                    pending event
    tls.<store>.s.<batch hex>                       its timer: a NATS 2.12 message
                                                    schedule (`Nats-Schedule: @at`)
    tls.<store>.q.<batch hex>                       where the server stages it when due

The batch id is the token after the kind, so one purge filter takes a batch's
rows and index entries (`*.<batch>.*`) and another its timer and notice
(`*.<batch>`).

Why this shape. The server keeps the timers: each batch carries a one-shot
schedule that the server fires (`LEAD` seconds before the due time) by
publishing a copy to the batch's staging subject and removing the schedule,
so the process never holds or sorts a million due times; a durable pull
consumer on the staging subjects tells any scheduler what is due, in firing
order, with no scan. The server does not append the events itself: used that
way (targeting the log's subjects), a schedule would bypass the engine's
version check, id index and dense positions. Here the staged message is only a
notice; the tidelog `Scheduler` claims the batch and appends it through the
normal write path, so the exactly-once argument is the SQL engines':

1. a claim is a compare-and-set on the batch's subject (the rows republished
   with `Tl-Lease: <until>`, `Nats-Expected-Last-Subject-Sequence` the one
   read, `Nats-Rollup: sub`): two schedulers never both win, and a cancel
   (another compare-and-set on the same subject) and a claim never both win;
2. the append is idempotent by event id;
3. forgetting purges the batch's rows and index entries (one purge), then
   its timer and notice (another); a crash
   in between leaves a leased batch whose notice the consumer redelivers
   after its ack wait (the lease), and the repeated append writes nothing.

The due time in the batch subject lets `scheduled()` (earliest first) and a
scheduler driven by a clock ahead of the real one (`Scheduler.run_once(now=)`,
tests and tools) sort subject names rather than read bodies: that listing is
proportional to the pending batches and is not on the running scheduler's
path. Scheduling writes the index entries (each expecting no message on
`i.*.<event hex>`, whatever the batch: an id is pending once, the first
kept), the batch and its schedule in one atomic batch, so a scheduled append
is stored whole or not at all. Forgetting is per batch, not per event: a
purge per index entry (the first layout, `i.<event hex>`) made forgets the
bottleneck of `scheduled_lateness` (p50 2.6 s, quick run, load 12).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from tidelog.engines._kit.batching import GroupCommit
from tidelog.engines._kit.scheduling import DEFAULT_LEASE, from_row, to_micros, to_row
from tidelog.engines.nats import wire
from tidelog.engines.nats.errors import ApiError, NotFound, raise_api, translated
from tidelog.engines.nats.setup import NatsConfig
from tidelog.engines.nats.writer import Message, too_big
from tidelog.errors import StoreUnavailable
from tidelog.model import ScheduledEvent

__all__ = ["LEAD", "Schedules", "sched_stream_of"]

LEAD: Final = 0.25
"""Seconds before its due time that the server fires a batch's schedule. The server's
timer fired about 10 ms late for future times and up to 250 ms late for times already
past when scheduled (measured on nats-server 2.15 on the development machine); firing
early lets the scheduler claim ahead and append at the due time itself."""
CONSUMER: Final = "scheduler"
ACK_WAIT = DEFAULT_LEASE
"""Seconds before the consumer hands a notice that was not acknowledged (its scheduler
crashed) to another: the lease on the real clock. Read when the consumer is created."""
_DRIVEN: Final = 1.0
"""A `now` this far past the real clock is a driven clock (tests, tools): due batches
are then found by listing, not by waiting for the server's timers."""
_RECHECK: Final = 1.0
"""Seconds between looks for a schedules stream that did not exist yet."""
_ATTEMPTS: Final = 50
_CLAIMS: Final = 16
"""Batches claimed at once."""
_FANOUT: Final = 64
"""Purges and reads in flight at once."""
_CANCELLED: Final = "cancelled"
_CONSUMER_NOT_FOUND: Final = 10014
_EXPECTED_SUBJECT: Final = "Nats-Expected-Last-Subject-Sequence-Subject"
"""Makes the expected-sequence check apply to a filter: an event id's index entries
in any batch (`i.*.<id>`), so the entries of a batch share a prefix and one purge."""
_ROWS_ENC: Final = msgspec.msgpack.Encoder()
_ROWS_DEC: Final = msgspec.msgpack.Decoder(list[tuple[Any, ...]])


def sched_stream_of(store: str) -> str:
    """`tidelog-sched_<store>`: never a store's stream (`KV_tidelog_…`) nor the old
    layout's (`tidelog_…`), whatever the store's name."""
    return f"tidelog-sched_{store}"


def _encode(rows: Sequence[ScheduledEvent]) -> bytes:
    return _ROWS_ENC.encode(
        [(r[0].bytes, r[1].bytes, *r[2:]) for r in (to_row(row) for row in rows)]
    )


def _decode(data: bytes) -> list[ScheduledEvent]:
    return [from_row(raw) for raw in _ROWS_DEC.decode(data)]


def _at(moment: float) -> str:
    """An `@at` schedule in RFC 3339, to the millisecond, UTC."""
    when = datetime.fromtimestamp(max(moment, 0.0), UTC)
    return "@at " + when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class _Claim(msgspec.Struct):
    """A batch this process claimed: its subject, its rows' ids, its staged notice."""

    subject: str
    ids: list[uuid.UUID]
    notice: Msg | None = None


class Schedules:
    """The statements of one store's schedules stream, for the engine's hooks."""

    def __init__(
        self,
        nc: NatsClient,
        config: NatsConfig,
        publish_one: Callable[[str, bytes, dict[str, str]], Awaitable[int]],
        publish_batch: Callable[[Sequence[Message]], Awaitable[int]],
    ) -> None:
        self._nc = nc
        self._config = config
        self._publish_one = publish_one
        self._publish_batch = publish_batch
        self.jstream = sched_stream_of(config.store)
        self.root = f"tls.{config.store}"
        self._ready = False
        self._looked_at = -_RECHECK
        self._stash: dict[str, tuple[int, int, Msg]] = {}
        """Staged notices fetched and not yet claimed: batch subject -> (due µs, rows (as
        scheduled: a hint), notice)."""
        self._claims: dict[str, _Claim] = {}
        self._claimed_ids: dict[uuid.UUID, str] = {}
        self._writes: GroupCommit[list[Message], None] = GroupCommit(
            lambda: contextlib.nullcontext(self._commit),
            max_items=wire.MAX_BATCH_MESSAGES,
            max_weight=wire.MAX_BATCH_MESSAGES,
        )

    async def close(self) -> None:
        """Wait until every scheduling write queued so far is settled."""
        await self._writes.close()

    # ------------------------------------------------------------------ subjects

    def batch_subject(self, due_us: int, batch: uuid.UUID) -> str:
        return f"{self.root}.b.{batch.hex}.{max(due_us, 0):017d}"

    def _timer(self, batch: str) -> str:
        return f"{self.root}.s.{batch}"

    def _staged(self, batch: str) -> str:
        return f"{self.root}.q.{batch}"

    def _index(self, batch: uuid.UUID, event_id: uuid.UUID) -> str:
        return f"{self.root}.i.{batch.hex}.{event_id.hex}"

    def _index_of(self, event_id: uuid.UUID) -> str:
        """Every index subject of `event_id` (it is pending in one batch at most)."""
        return f"{self.root}.i.*.{event_id.hex}"

    def _loose(self, batch: str) -> str:
        """The timer and the staged notice of a batch, in one purge filter."""
        return f"{self.root}.*.{batch}"

    @staticmethod
    def _parts(subject: str) -> tuple[int, str]:
        """(due µs, batch hex) of a batch subject: its sort key, earliest first."""
        *_, batch, due = subject.split(".")
        return int(due), batch

    def _rows_and_entries(self, batch: str) -> str:
        """A batch's rows and index entries (`b.<batch>.<due>`, `i.<batch>.<id>`), in one
        purge filter."""
        return f"{self.root}.*.{batch}.*"

    # ------------------------------------------------------------------ plumbing

    async def _api(self, op: str, body: object = None) -> dict[str, Any]:
        payload = b"" if body is None else wire.json_bytes(body)
        try:
            msg = await self._nc.request(f"$JS.API.{op}", payload, timeout=self._config.timeout)
        except nats.errors.NoRespondersError:
            raise StoreUnavailable("JetStream is not enabled or has no leader") from None
        resp: dict[str, Any] = json.loads(msg.data)
        raise_api(resp)
        return resp

    async def _get(self, subject: str) -> wire.StoredMsg | None:
        try:
            resp = await self._api(f"STREAM.MSG.GET.{self.jstream}", {"last_by_subj": subject})
        except NotFound:
            return None
        return wire.parse_api_message(resp["message"])

    async def _purge(self, *subjects: str) -> None:
        for subject in subjects:
            await self._api(f"STREAM.PURGE.{self.jstream}", {"filter": subject})

    async def _fan(self, jobs: Sequence[Awaitable[Any]]) -> list[Any]:
        out: list[Any] = []
        for i in range(0, len(jobs), _FANOUT):
            out += await asyncio.gather(*jobs[i : i + _FANOUT])
        return out

    async def _subjects(self, subject_filter: str) -> list[str]:
        out: list[str] = []
        offset = 0
        while True:
            resp = await self._api(
                f"STREAM.INFO.{self.jstream}", {"subjects_filter": subject_filter, "offset": offset}
            )
            subjects = resp.get("state", {}).get("subjects") or {}
            out.extend(subjects)
            offset += len(subjects)
            if not subjects or offset >= int(resp.get("total", 0)):
                return out

    async def exists(self) -> bool:
        """Whether the stream exists; while it does not, asked at most once a second
        (an idle scheduler looks every 50 ms, and another process may create it)."""
        if not self._ready and time.monotonic() - self._looked_at >= _RECHECK:
            self._looked_at = time.monotonic()
            with translated("scheduled"):
                try:
                    await self._api(f"STREAM.INFO.{self.jstream}")
                except ApiError as exc:
                    if exc.err_code != wire.STREAM_NOT_FOUND:
                        raise
                    return False
                await self._ensure_consumer()
            self._ready = True
        return self._ready

    async def _ensure(self) -> None:
        """Create the stream and its consumer on the first schedule (a store that never
        schedules has neither), with the store's storage and replicas."""
        if await self.exists():
            return
        config = {
            "name": self.jstream,
            "subjects": [f"{self.root}.>"],
            "retention": "limits",
            "storage": self._config.storage,
            "num_replicas": self._config.replicas,
            "discard": "old",
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            "allow_msg_schedules": True,
            "allow_atomic": True,
            "allow_direct": True,
            "allow_rollup_hdrs": True,
        }
        try:
            await self._api(f"STREAM.CREATE.{self.jstream}", config)
        except ApiError as exc:
            if exc.err_code != 10058:  # created meanwhile by another process
                raise
        await self._ensure_consumer()
        self._ready = True

    async def _ensure_consumer(self) -> None:
        """The durable pull consumer of staged notices; its ack wait is the lease after
        which a notice whose scheduler crashed is handed to another. One that exists is
        kept as it is (an operator may have tuned it)."""
        try:
            await self._api(f"CONSUMER.INFO.{self.jstream}.{CONSUMER}")
            return
        except ApiError as exc:
            if exc.err_code != _CONSUMER_NOT_FOUND:
                raise
        await self._api(
            f"CONSUMER.CREATE.{self.jstream}.{CONSUMER}",
            {
                "stream_name": self.jstream,
                "config": {
                    "durable_name": CONSUMER,
                    "filter_subject": f"{self.root}.q.>",
                    "deliver_policy": "all",
                    "ack_policy": "explicit",
                    "ack_wait": int(ACK_WAIT * 1e9),
                    "max_deliver": -1,
                    "max_ack_pending": -1,
                },
            },
        )

    async def _fetch(self, batch: int) -> None:
        """Add the staged notices the consumer hands out now to the stash: one `no_wait`
        pull (the server answers at once, with messages or "none"), on an inbox of its
        own so that a late answer can never be taken for the next pull's."""
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        try:
            await self._nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self.jstream}.{CONSUMER}",
                wire.json_bytes({"batch": batch, "no_wait": True}),
                reply=inbox,
            )
            for _ in range(batch):
                msg: Msg = await sub.next_msg(timeout=self._config.timeout)
                headers = msg.headers or {}
                if "Status" in headers:  # 404 (none left), 408, 409: this pull is over
                    return
                subject = headers.get("Tl-Batch")
                if subject is None:  # not one of ours: nothing to deliver
                    await msg.ack()
                    continue
                rows = int(headers.get("Tl-Rows", "1"))
                self._stash[subject] = (self._parts(subject)[0], rows, msg)
        finally:
            await sub.unsubscribe()

    # ------------------------------------------------------------------ the hooks

    async def schedule(self, rows: Sequence[ScheduledEvent]) -> None:
        """Store one scheduled append; an id already pending keeps its first schedule."""
        if 2 * len(rows) + 1 > wire.MAX_BATCH_MESSAGES:  # it could never be appended
            raise too_big("nats", 2 * len(rows) + 1)
        with translated("schedule"):
            await self._ensure()
            pending = list(rows)
            for _ in range(_ATTEMPTS):
                if not pending:
                    return
                msgs = self._schedule_msgs(pending)
                try:
                    await self._writes.submit(msgs, len(msgs))
                    return
                except ApiError as exc:
                    if exc.err_code not in wire.WRONG_LAST_SEQUENCE:
                        raise
                pending = await self._not_pending(pending)
        raise StoreUnavailable("schedule: gave up after too many concurrent writes")

    async def _commit(self, batch: list[list[Message]]) -> list[Exception | None]:
        """Concurrent scheduled appends in one atomic batch: one request and one sync
        for them all (measured at 50 appends of 100 events a second, each in a batch of
        its own took 110-900 ms p50 where an append took 45). A refused joint batch
        (an id or a batch already pending) is retried one append at a time, so the
        refusal is its own append's. Appends that share an id or a batch are never
        joined: each checks the stream as it was before the batch."""
        if len(batch) > 1:
            joined: list[Message] = []
            seen: set[str] = set()
            for msgs in batch:
                keys = {m[0].rsplit(".", 1)[1] for m in msgs}
                if keys & seen:
                    break
                seen |= keys
                joined += msgs
            else:
                try:
                    await self._publish_batch(joined)
                    return [None] * len(batch)
                except ApiError as exc:
                    if exc.err_code not in wire.WRONG_LAST_SEQUENCE:
                        raise
        out: list[Exception | None] = []
        for msgs in batch:
            try:
                await self._publish_batch(msgs)
                out.append(None)
            except Exception as exc:  # the append's own outcome, raised to it
                out.append(exc)
        return out

    def _schedule_msgs(self, rows: Sequence[ScheduledEvent]) -> list[Message]:
        due_us = to_micros(rows[0].due_at)
        subject = self.batch_subject(due_us, rows[0].batch)
        batch = rows[0].batch.hex
        empty = {wire.EXPECTED_LAST_SUBJECT_SEQ: "0"}
        msgs: list[Message] = [
            (
                self._index(r.batch, r.id),
                subject.encode(),
                {**empty, _EXPECTED_SUBJECT: self._index_of(r.id)},
            )
            for r in rows
        ]
        msgs.append((subject, _encode(rows), {**empty, "Tl-Due": str(due_us)}))
        timer = {
            **empty,
            "Nats-Schedule": _at(due_us / 1e6 - LEAD),
            "Nats-Schedule-Target": self._staged(batch),
            "Tl-Batch": subject,
            "Tl-Rows": str(len(rows)),
        }
        msgs.append((self._timer(batch), b"", timer))
        return msgs

    async def _not_pending(self, rows: Sequence[ScheduledEvent]) -> list[ScheduledEvent]:
        """After a refused schedule: the rows whose ids are not pending, as a batch of its
        own (the first kept id's); stale entries left by a crash are removed."""
        found = await self._fan([self._get(self._index_of(r.id)) for r in rows])
        batches = {m.data.decode() for m in found if m is not None}
        live = dict(zip(batches, await self._fan([self._live(b) for b in batches]), strict=True))
        keep: list[ScheduledEvent] = []
        for row, entry in zip(rows, found, strict=True):
            if entry is not None and live[entry.data.decode()]:
                continue
            if entry is not None:
                await self._purge(entry.subject)
            keep.append(row)
        if keep and not [m for m in found if m is not None]:  # a stale timer of this batch
            await self._purge(self._loose(keep[0].batch.hex))
        if keep and keep[0].batch != keep[0].id:
            keep = [msgspec.structs.replace(r, batch=keep[0].id, seq=i) for i, r in enumerate(keep)]
        return keep

    async def _live(self, subject: str) -> bool:
        m = await self._get(subject)
        return m is not None and m.headers.get(wire.KIND) != _CANCELLED

    async def take_due(self, now: float, limit: int, lease: float) -> list[ScheduledEvent]:
        if not await self.exists():
            return []
        now_us, until = int(now * 1e6), int((now + lease) * 1e6)
        taken: list[ScheduledEvent] = []
        with translated("take_due"):
            if now > time.time() + _DRIVEN:
                listed = sorted(await self._subjects(f"{self.root}.b.>"), key=self._parts)
                candidates = [(s, 1) for s in listed if self._parts(s)[0] <= now_us]
            else:
                await self._fetch(max(1, limit - len(self._stash)))
                candidates = sorted(
                    ((s, n) for s, (due, n, _) in self._stash.items() if due <= now_us),
                    key=lambda c: self._parts(c[0]),
                )
            # Claimed a few at once (each is a read and a compare-and-set): one at a
            # time, claims fell behind 50 batches due a second on a loaded machine.
            i = 0
            while i < len(candidates) and len(taken) < limit:
                chunk: list[str] = []
                room = limit - len(taken)
                while i < len(candidates) and len(chunk) < _CLAIMS and room > 0:
                    chunk.append(candidates[i][0])
                    room -= candidates[i][1]
                    i += 1
                for rows in await asyncio.gather(*(self._claim(s, now_us, until) for s in chunk)):
                    taken += rows or []
        return taken

    async def _claim(self, subject: str, now_us: int, until: int) -> list[ScheduledEvent] | None:
        """Claim one batch (compare-and-set on its subject); its rows, or None."""
        notice = self._stash.pop(subject, (0, 0, None))[2]
        m = await self._get(subject)
        if m is None or m.headers.get(wire.KIND) == _CANCELLED:  # delivered or cancelled
            if notice is not None:
                await notice.ack()
                await self._purge(self._loose(self._parts(subject)[1]))
            return None
        lease = int(m.headers.get("Tl-Lease", "0"))
        if lease > now_us:  # claimed by another: look again when its lease ends
            if notice is not None:
                await notice.nak(delay=(lease - now_us) / 1e6 + 0.05)
            return None
        headers = {
            "Tl-Due": m.headers.get("Tl-Due", "0"),
            "Tl-Lease": str(until),
            wire.EXPECTED_LAST_SUBJECT_SEQ: str(m.seq),
            wire.ROLLUP: "sub",
        }
        try:
            await self._publish_one(subject, m.data, headers)
        except ApiError as exc:
            if exc.err_code in wire.WRONG_LAST_SEQUENCE:
                return None  # claimed or cancelled meanwhile
            raise
        rows = _decode(m.data)
        old = self._claims.get(subject)
        self._claims[subject] = _Claim(
            subject, [r.id for r in rows], notice or (old.notice if old else None)
        )
        for row in rows:
            self._claimed_ids[row.id] = subject
        return rows

    async def next_due(self) -> float | None:
        """The earliest due time of the staged notices (fetched here, kept for the claim
        that follows); None when the server has fired nothing that is unclaimed."""
        if not await self.exists():
            return None
        with translated("next_due"):
            await self._fetch(64)
        if not self._stash:
            return None
        return min(due for due, _, _ in self._stash.values()) / 1e6

    async def forget(self, ids: Sequence[uuid.UUID]) -> None:
        """Remove delivered batches: index entries first, then the batch, its timer and its
        notice (a crash in between leaves a leased batch, redelivered and appended again,
        which writes nothing)."""
        if not ids or not await self.exists():
            return
        subjects: dict[str, None] = {}
        with translated("forget"):
            for event_id in ids:
                subject = self._claimed_ids.get(event_id)
                if subject is None:
                    entry = await self._get(self._index_of(event_id))
                    subject = None if entry is None else entry.data.decode()
                if subject is not None:
                    subjects[subject] = None
            await self._fan([self._forget_batch(s) for s in subjects])

    async def _forget_batch(self, subject: str) -> None:
        claim = self._claims.get(subject)
        batch = self._parts(subject)[1]
        await self._purge(self._rows_and_entries(batch))
        if claim is not None and claim.notice is not None:  # before its message is purged
            with contextlib.suppress(nats.errors.Error):
                await claim.notice.ack()
        await self._purge(self._loose(batch))
        ids = claim.ids if claim is not None else []
        self._claims.pop(subject, None)
        for event_id in ids:
            self._claimed_ids.pop(event_id, None)

    async def cancel(self, event_id: uuid.UUID) -> bool:
        """Remove a pending event unless a scheduler holds a lease on its batch."""
        if not await self.exists():
            return False
        with translated("cancel"):
            for _ in range(_ATTEMPTS):
                entry = await self._get(self._index_of(event_id))
                if entry is None:
                    return False
                subject = entry.data.decode()
                m = await self._get(subject)
                if m is None or m.headers.get(wire.KIND) == _CANCELLED:
                    await self._purge(entry.subject)  # a crash's leftover
                    return False
                if int(m.headers.get("Tl-Lease", "0")) > int(time.time() * 1e6):
                    return False  # claimed: it may still be delivered
                rows = _decode(m.data)
                rest = [r for r in rows if r.id != event_id]
                if rest:
                    payload, headers = _encode(rest), {"Tl-Due": m.headers.get("Tl-Due", "0")}
                else:
                    payload, headers = b"", {wire.KIND: _CANCELLED}
                headers |= {wire.EXPECTED_LAST_SUBJECT_SEQ: str(m.seq), wire.ROLLUP: "sub"}
                try:
                    await self._publish_one(subject, payload, headers)
                except ApiError as exc:
                    if exc.err_code in wire.WRONG_LAST_SEQUENCE:
                        continue  # claimed or changed meanwhile: look again
                    raise
                await self._purge(entry.subject)
                if not rest:
                    batch = self._parts(subject)[1]
                    await self._purge(self._loose(batch), subject)
                return True
        raise StoreUnavailable("cancel_scheduled: gave up after too many concurrent writes")

    async def list_rows(self, stream: str | None, limit: int) -> list[ScheduledEvent]:
        """Earliest due first: the batch subjects sorted by name (due time, batch), then
        read in that order until `limit` rows (of `stream`) are found."""
        if not await self.exists():
            return []
        out: list[ScheduledEvent] = []
        with translated("scheduled"):
            subjects = sorted(await self._subjects(f"{self.root}.b.>"), key=self._parts)
            for i in range(0, len(subjects), _FANOUT):
                for m in await self._fan([self._get(s) for s in subjects[i : i + _FANOUT]]):
                    if m is None or m.headers.get(wire.KIND) == _CANCELLED:
                        continue
                    out += [r for r in _decode(m.data) if stream is None or r.stream == stream]
                if len(out) >= limit:
                    break
        return out[:limit]

    async def count(self) -> int:
        """Pending events: the id index's messages (one per pending event), counted by the
        server for a short-lived consumer filtered on them, with no listing."""
        if not await self.exists():
            return 0
        name = f"count_{uuid.uuid4().hex}"
        with translated("count_scheduled"):
            resp = await self._api(
                f"CONSUMER.CREATE.{self.jstream}.{name}",
                {
                    "stream_name": self.jstream,
                    "config": {
                        "name": name,
                        "filter_subject": f"{self.root}.i.>",
                        "deliver_policy": "all",
                        "ack_policy": "none",
                        "mem_storage": True,
                        "inactive_threshold": int(timedelta(seconds=10).total_seconds() * 1e9),
                    },
                },
            )
            with contextlib.suppress(ApiError, NotFound):
                await self._api(f"CONSUMER.DELETE.{self.jstream}.{name}")
        return int(resp.get("num_pending", 0))
