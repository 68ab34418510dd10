"""The conformance suite of scheduled delivery (`append(..., deliver_at=...)`).

An engine's test module subclasses `SchedulingSuite` beside its `EngineSuite`::

    class TestSQLiteScheduling(SchedulingSuite):
        async def open_store(self, tmp_path): ...

An engine that stores no pending events sets `supports_scheduling = False`;
the suite then checks that every scheduling call raises `NotSupported` and
that nothing reaches the log.

Most tests drive the store's scheduler by hand with a clock hours ahead
(`Scheduler.run_once(now=...)`), so what is due is decided by the test, not by
the wall clock; the one test of the background scheduler only waits (bounded)
for eventual visibility. No test asserts on time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

import tidelog
from tidelog.engines._kit.scheduling import FAILED_STREAM, Scheduler
from tidelog.testing.conformance import WAIT, SuiteBase, collect, ev, subscribed, take

__all__ = ["SchedulingSuite"]

LATER = timedelta(hours=1)
"""Far enough that the store's own scheduler (on the real clock) never takes it."""


def _after(hours: float = 2.0) -> float:
    """A scheduler clock past every `LATER` event of a test."""
    return time.time() + hours * 3600


async def _stream(store: tidelog.Store, stream: str) -> list[tidelog.RecordedEvent]:
    return await collect(store.read_stream(stream))


class SchedulingSuite(SuiteBase):
    """Scheduled appends: invisible until due, then appended once, in order."""

    supports_scheduling: bool = True
    """False: every scheduling call raises `NotSupported` and writes nothing."""

    async def open_same(self, store: tidelog.Store) -> tidelog.Store | None:
        """A second store on the same data as `store`, as another process would open it.

        None (the default) skips the tests of schedulers in several processes.
        """
        return None

    @pytest.fixture(autouse=True)
    def _needs_scheduling(self, request: pytest.FixtureRequest) -> None:
        if request.function.__name__ == "test_refused_when_not_supported":
            if self.supports_scheduling:
                pytest.skip("this engine supports scheduling")
        elif not self.supports_scheduling:
            pytest.skip("this engine refuses scheduling (tested by test_refused...)")

    async def test_refused_when_not_supported(self, store: tidelog.Store) -> None:
        with pytest.raises(tidelog.NotSupported):
            await store.append("order-1", [ev()], deliver_after=LATER)
        with pytest.raises(tidelog.NotSupported):
            await store.cancel_scheduled(uuid4())
        with pytest.raises(tidelog.NotSupported):
            await store.scheduled()
        with pytest.raises(tidelog.NotSupported):
            await store.count_scheduled()
        assert await collect(store.read_all()) == []

    async def test_invisible_until_due_then_appended_with_version_and_position(
        self, store: tidelog.Store
    ) -> None:
        await store.append("order-1", [ev("Placed")])
        event = ev("Reminder", b"r", metadata={"k": 1})
        result = await store.append("order-1", [event], deliver_after=LATER)
        assert isinstance(result, tidelog.ScheduledResult)
        assert (result.version, result.position, result.ids) == (-1, -1, (event.id,))
        assert [e.type for e in await _stream(store, "order-1")] == ["Placed"]
        assert [e.type for e in await collect(store.read_all())] == ["Placed"]
        assert await store.count_events() == 1
        assert await store.count_scheduled() == 1
        [pending] = await store.scheduled()
        assert (pending.id, pending.stream, pending.type, pending.data) == (
            event.id,
            "order-1",
            "Reminder",
            b"r",
        )
        assert pending.metadata == {"k": 1}
        assert await Scheduler(store).run_once(now=_after()) == 1
        events = await _stream(store, "order-1")
        assert [(e.type, e.version, e.id) for e in events] == [
            ("Placed", 0, events[0].id),
            ("Reminder", 1, event.id),
        ]
        assert events[1].position > events[0].position
        assert events[1].data == b"r" and events[1].metadata == {"k": 1}
        assert await store.count_scheduled() == 0
        assert await store.scheduled() == []

    async def test_the_store_delivers_by_itself_and_subscribers_see_it(
        self, store: tidelog.Store
    ) -> None:
        event = ev("Due")
        async with subscribed(store, categories=["order"]) as sub:
            await store.append("order-2", [event], deliver_after=timedelta(0))
            [got] = await take(sub, 1)
        assert (got.id, got.stream, got.version) == (event.id, "order-2", 0)
        for _ in range(int(WAIT / 0.01)):  # forgotten after the append: wait for it
            if not await store.count_scheduled():
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("a delivered event stayed pending")

    async def test_deliver_at_on_the_events_and_order_of_due_times(
        self, store: tidelog.Store
    ) -> None:
        now = datetime.now(UTC)
        second = ev("Second", deliver_at=now + timedelta(hours=1, minutes=2))
        first = ev("First", deliver_at=now + timedelta(hours=1, minutes=1))
        await store.append("order-3", [second])
        await store.append("order-3", [first])
        assert [e.type for e in await store.scheduled()] == ["First", "Second"]
        assert [e.type for e in await store.scheduled(stream="order-3", limit=1)] == ["First"]
        assert await store.scheduled(stream="order-4") == []
        await Scheduler(store).run_once(now=_after())
        assert [e.type for e in await _stream(store, "order-3")] == ["First", "Second"]

    async def test_one_scheduled_append_is_delivered_together(self, store: tidelog.Store) -> None:
        events = [ev("A"), ev("B"), ev("C")]
        result = await store.append("order-5", events, tidelog.NO_STREAM, deliver_after=LATER)
        assert isinstance(result, tidelog.ScheduledResult)
        assert list(result.ids) == [e.id for e in events]
        # a claim of one row takes its whole batch
        assert await Scheduler(store, batch=1).run_once(now=_after()) == 3
        stored = await _stream(store, "order-5")
        assert [(e.type, e.version) for e in stored] == [("A", 0), ("B", 1), ("C", 2)]

    async def test_expected_version_is_checked_at_delivery(self, store: tidelog.Store) -> None:
        await store.append("order-6", [ev("Placed")])
        ok = ev("Ok")
        await store.append("order-6", [ok], 1, deliver_after=LATER)  # right once "Paid" is in
        late = ev("Late")
        await store.append("order-7", [late], tidelog.NO_STREAM, deliver_after=LATER)
        await store.append("order-6", [ev("Paid")])
        await store.append("order-7", [ev("Placed")])  # now order-7 exists: a conflict
        other = ev("Other")
        await store.append("order-8", [other], deliver_after=LATER)
        await Scheduler(store).run_once(now=_after())
        assert [e.type for e in await _stream(store, "order-6")] == ["Placed", "Paid", "Ok"]
        assert [e.id for e in await _stream(store, "order-8")] == [other.id]
        assert [e.type for e in await _stream(store, "order-7")] == ["Placed"]
        [parked] = await _stream(store, FAILED_STREAM)
        assert (parked.id, parked.type) == (late.id, "Late")
        assert parked.metadata["scheduled_stream"] == "order-7"
        assert parked.metadata["scheduled_error"] == "WrongExpectedVersion"
        assert "order-7" in parked.metadata["scheduled_reason"]
        assert await store.count_scheduled() == 0

    async def test_an_id_already_in_another_stream_is_parked(self, store: tidelog.Store) -> None:
        taken = ev("Taken")
        await store.append("order-9", [taken])
        await store.append("order-10", [ev("Clash", id=taken.id)], deliver_after=LATER)
        await Scheduler(store).run_once(now=_after())
        assert await _stream(store, "order-10") == []
        [parked] = await _stream(store, FAILED_STREAM)
        assert parked.id != taken.id and parked.metadata["scheduled_id"] == str(taken.id)
        assert parked.metadata["scheduled_error"] == "DuplicateEventId"

    async def test_cancel(self, store: tidelog.Store) -> None:
        keep, drop = ev("Keep"), ev("Drop")
        await store.append("order-11", [keep], deliver_after=LATER)
        await store.append("order-11", [drop], deliver_after=LATER)
        assert await store.cancel_scheduled(drop.id) is True
        assert await store.cancel_scheduled(drop.id) is False  # already gone
        assert await store.cancel_scheduled(uuid4()) is False
        assert [e.id for e in await store.scheduled()] == [keep.id]
        await Scheduler(store).run_once(now=_after())
        assert [e.id for e in await _stream(store, "order-11")] == [keep.id]
        assert await store.cancel_scheduled(keep.id) is False  # delivered
        with pytest.raises(tidelog.InvalidInput):
            await store.cancel_scheduled("not-a-uuid")  # type: ignore[arg-type]

    async def test_a_claimed_event_cannot_be_cancelled(self, store: tidelog.Store) -> None:
        event = ev()
        await store.append("order-12", [event], deliver_after=LATER)
        [claimed] = await store._take_due(_after(), 10, 60.0)
        assert claimed.id == event.id
        assert await store.cancel_scheduled(event.id) is False
        assert await store.count_scheduled() == 1

    async def test_a_crash_between_append_and_forget_delivers_once(
        self, store: tidelog.Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        events = [ev("A"), ev("B")]
        failed = ev("F")
        await store.append("order-13", [ev("Placed")])
        await store.append("order-13", events, 0, deliver_after=LATER)
        await store.append("order-14", [failed], 5, deliver_after=LATER)  # parked
        now = _after()

        async def crash(ids: Sequence[UUID]) -> None:
            raise RuntimeError("crashed before forgetting")

        monkeypatch.setattr(store, "_forget_scheduled", crash)
        with pytest.raises(RuntimeError):
            await Scheduler(store, lease=0.0).run_once(now=now)
        monkeypatch.undo()
        # The claim ran out (lease 0): the next pass moves the same rows again.
        assert await Scheduler(store).run_once(now=now + 1) == 3
        assert [e.type for e in await _stream(store, "order-13")] == ["Placed", "A", "B"]
        assert [e.id for e in await _stream(store, FAILED_STREAM)] == [failed.id]
        assert await store.count_scheduled() == 0
        assert len(await collect(store.read_all())) == 4

    async def test_concurrent_schedulers_deliver_each_event_once(
        self, store: tidelog.Store
    ) -> None:
        events = [ev(f"E{i}") for i in range(60)]
        for i, event in enumerate(events):
            await store.append(f"order-c{i % 7}", [event], deliver_after=LATER)
        now = _after()
        schedulers = [Scheduler(store, batch=5, lease=0.0) for _ in range(3)]

        async def drain(scheduler: Scheduler) -> None:
            while await store.count_scheduled():
                await scheduler.run_once(now=now)

        await asyncio.gather(*(drain(s) for s in schedulers))
        ids = [e.id for e in await collect(store.read_all())]
        assert sorted(ids) == sorted(e.id for e in events)  # each once, none lost
        assert await _stream(store, FAILED_STREAM) == []
        assert sum(s.delivered for s in schedulers) >= len(events)

    async def test_schedulers_of_two_stores_on_the_same_data_claim_apart(
        self, store: tidelog.Store
    ) -> None:
        other = await self.open_same(store)
        if other is None:
            pytest.skip("this engine's data is not shared between stores")
        try:
            events = [ev(f"E{i}") for i in range(80)]
            for i, event in enumerate(events):
                writer = store if i % 2 else other
                await writer.append(f"order-p{i % 9}", [event], deliver_after=LATER)
            now = _after()
            # A lease longer than the test: a row is moved by the one that claimed it.
            schedulers = [Scheduler(s, batch=7) for s in (store, other, store, other)]

            async def drain(scheduler: Scheduler) -> None:
                while await scheduler.store.count_scheduled():
                    if not await scheduler.run_once(now=now):
                        await asyncio.sleep(0.001)

            await asyncio.gather(*(drain(s) for s in schedulers))
            ids = [e.id for e in await collect(store.read_all())]
            assert sorted(ids) == sorted(e.id for e in events)
            assert sum(s.delivered for s in schedulers) == len(events)  # no row moved twice
        finally:
            await other.close()

    async def test_on_the_real_clock_each_stream_keeps_its_scheduled_order(
        self, store: tidelog.Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Groups due at different moments are appended while later ones wait for their
        time; a group waits for the earlier ones that share a stream."""
        # The store's own scheduler stays off: the one below is the only one.
        monkeypatch.setattr(store, "start_scheduler", lambda: Scheduler(store))
        start = datetime.now(UTC) + timedelta(milliseconds=200)
        order: dict[str, list[UUID]] = {"order-r1": [], "order-r2": [], "order-r3": []}
        for i in range(30):
            stream = f"order-r{1 + i % 2}" if i % 5 else "order-r3"
            event = ev(f"E{i}")
            order[stream].append(event.id)
            due = start + timedelta(milliseconds=2 * i)
            await store.append(stream, [event], deliver_at=due)
        # one pass claims everything (a long lookahead) and appends each at its time
        assert await Scheduler(store, lookahead=3600.0).run_once() == 30
        for stream, ids in order.items():
            assert [e.id for e in await _stream(store, stream)] == ids
        assert await store.count_scheduled() == 0

    async def test_running_loops_claim_ahead_keep_stream_order_and_deliver_once(
        self, store: tidelog.Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The running loop claims again before a pass is delivered (small claims with
        room for several in flight here): one loop keeps each stream's order across
        its passes, and two loops on one store deliver each event once."""
        monkeypatch.setattr(store, "start_scheduler", lambda: Scheduler(store))

        async def schedule() -> dict[str, list[UUID]]:
            start = datetime.now(UTC)
            order: dict[str, list[UUID]] = {f"order-k{k}": [] for k in range(3)}
            for i in range(60):
                stream = f"order-k{i % 3}"
                event = ev(f"E{i}")
                order[stream].append(event.id)
                await store.append(stream, [event], deliver_at=start + timedelta(milliseconds=i))
            return order

        for loops in (1, 2):
            head = await store.last_position()
            async with subscribed(store, from_position=head + 1) as subscription:
                order = await schedule()
                schedulers = [Scheduler(store, batch=4, in_flight=12) for _ in range(loops)]
                for scheduler in schedulers:
                    scheduler.start()
                try:
                    seen = await take(subscription, 60)
                finally:
                    for scheduler in schedulers:
                        await scheduler.stop()
            assert sorted(e.id for e in seen) == sorted(i for ids in order.values() for i in ids)
            if loops == 1:
                for stream, ids in order.items():
                    assert [e.id for e in seen if e.stream == stream] == ids
        assert len(await collect(store.read_all())) == 120  # each once
        assert await store.count_scheduled() == 0
        assert await _stream(store, FAILED_STREAM) == []

    async def test_appends_due_together_beyond_one_write_are_all_delivered(
        self, store: tidelog.Store
    ) -> None:
        """The scheduler joins the appends due at one moment into one `append_many`; more
        events than one write of the engine holds (NATS: 499) are split to fit."""
        due = datetime.now(UTC) + LATER
        streams = {f"order-w{k}": [ev(f"E{k}-{i}") for i in range(150)] for k in range(5)}
        for name, events in streams.items():
            await store.append(name, events, deliver_at=due)
        assert await Scheduler(store).run_once(now=_after()) == 750
        for name, events in streams.items():
            assert [e.id for e in await _stream(store, name)] == [e.id for e in events]
        assert await store.count_scheduled() == 0

    async def test_rescheduling_the_same_ids_keeps_one(self, store: tidelog.Store) -> None:
        event = ev()
        await store.append("order-15", [event], deliver_after=LATER)
        await store.append("order-15", [event], deliver_after=LATER)
        assert await store.count_scheduled() == 1
        await Scheduler(store).run_once(now=_after())
        await store.append("order-15", [event], deliver_after=timedelta(0))  # after delivery
        await Scheduler(store).run_once(now=_after(3))
        assert [e.id for e in await _stream(store, "order-15")] == [event.id]

    @pytest.mark.parametrize(
        ("events", "kwargs"),
        [
            pytest.param(
                lambda: [ev(), ev(deliver_at=datetime.now(UTC) + LATER)], {}, id="mixed-now-later"
            ),
            pytest.param(
                lambda: [
                    ev(deliver_at=datetime.now(UTC) + LATER),
                    ev(deliver_at=datetime.now(UTC) + 2 * LATER),
                ],
                {},
                id="two-due-times",
            ),
            pytest.param(lambda: [ev(deliver_at=datetime(2030, 1, 1))], {}, id="naive-deliver-at"),
            pytest.param(lambda: [ev()], {"deliver_at": datetime(2030, 1, 1)}, id="naive-kwarg"),
            pytest.param(lambda: [ev()], {"deliver_after": timedelta(-1)}, id="negative-delay"),
            pytest.param(lambda: [ev()], {"deliver_after": 5}, id="delay-not-timedelta"),
            pytest.param(
                lambda: [ev()],
                {"deliver_after": LATER, "deliver_at": datetime.now(UTC)},
                id="both",
            ),
        ],
    )
    async def test_bad_schedules_are_refused_and_change_nothing(
        self, store: tidelog.Store, events: Any, kwargs: dict[str, Any]
    ) -> None:
        with pytest.raises(tidelog.InvalidEvent):
            await store.append("order-16", events(), **kwargs)
        assert await store.count_scheduled() == 0
        assert await collect(store.read_all()) == []

    async def test_atomic_multi_stream_writes_refuse_scheduled_events(
        self, store: tidelog.Store
    ) -> None:
        later = ev(deliver_at=datetime.now(UTC) + LATER)
        with pytest.raises(tidelog.InvalidEvent):
            await store.append_many({"order-17": tidelog.AppendRequest([later])})
        assert await store.count_scheduled() == 0
        assert await collect(store.read_all()) == []
