"""A store scheduled by the first version of scheduling, opened by this one.

The first version had no `scheduled_claims`: a claim moved a row's ready time
past its due time. Each engine's upgrade test schedules two events, takes its
own store back to that shape (SQL of its own), then checks the same outcome
here: nothing is lost and nothing is delivered twice.
"""

from __future__ import annotations

import time
from datetime import timedelta

import tidelog
from tidelog.engines._kit.scheduling import Scheduler
from tidelog.testing.conformance import collect

LATER = timedelta(hours=1)
"""How far ahead both events are scheduled."""


async def schedule_pending_and_claimed(
    store: tidelog.Store,
) -> tuple[tidelog.NewEvent, tidelog.NewEvent]:
    """Two events scheduled `LATER`, in `order-1` and `order-2`: the test then makes the
    second one claimed, the first version's way."""
    pending, claimed = tidelog.NewEvent(type="Pending"), tidelog.NewEvent(type="Claimed")
    await store.append("order-1", [pending], deliver_after=LATER)
    await store.append("order-2", [claimed], deliver_after=LATER)
    return pending, claimed


async def check_old_claims_upgraded(
    url: str, pending: tidelog.NewEvent, claimed: tidelog.NewEvent
) -> None:
    """Opened by this version: both still count, the old claim holds (no cancel, no
    delivery) until its lease ends, and each event is delivered once."""
    async with await tidelog.connect(url) as store:
        assert await store.count_scheduled() == 2
        assert not await store.cancel_scheduled(claimed.id)  # the older claim holds
        due = time.time() + LATER.total_seconds() + 60
        assert await Scheduler(store).run_once(now=due) == 1
        assert [e.id for e in await collect(store.read_stream("order-1"))] == [pending.id]
        assert await collect(store.read_stream("order-2")) == []
        assert await Scheduler(store).run_once(now=due + 2 * 3600) == 1  # its lease ended
        assert [e.id for e in await collect(store.read_stream("order-2"))] == [claimed.id]
        assert await store.count_scheduled() == 0
