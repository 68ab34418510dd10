"""The circuit breaker (issue #19): a poison event parks one stream; a dead dependency pauses.

Both paths run a real `App` on a real store. The failing handler is driven by
state the test controls, and the dead dependency makes its first calls wait
until enough distinct streams have called: the failures that open the
breaker come before any retry, whatever the machine's speed.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import AsyncIterator

import pytest

import tidelog
from support.consumers import STORE_KINDS, eventually, open_store
from tidelog.consumers import App, Context, HandlerOptions, RunnerOptions, list_parked
from tidelog.errors import InvalidInput

FAST = RunnerOptions(lease=3.0, commit_interval=0.05, dlq_poll_interval=0.05)
THRESHOLD = 3
OPTIONS = HandlerOptions(
    max_attempts=2,
    backoff_initial=0.001,
    backoff_max=0.005,
    breaker_threshold=THRESHOLD,
    breaker_backoff_initial=0.01,
    breaker_backoff_max=0.05,
)


@pytest.fixture(params=STORE_KINDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> AsyncIterator[tidelog.Store]:
    async with open_store(request.param, tmp_path) as s:
        yield s


async def _orders(store: tidelog.Store, streams: list[str]) -> None:
    await store.append_many(
        {
            s: tidelog.AppendRequest(events=[tidelog.NewEvent(type="Placed", data=s.encode())])
            for s in streams
        }
    )


async def test_a_poison_event_parks_its_stream_and_pauses_nothing(store: tidelog.Store) -> None:
    handled: set[str] = set()
    app = App("shop", store, options=FAST)

    @app.handler("order", group="billing", options=OPTIONS)
    async def bill(event: tidelog.RecordedEvent, ctx: Context) -> None:
        if event.stream == "order-bad":
            raise ValueError("cannot parse this order")
        handled.add(event.stream)

    good = [f"order-{i}" for i in range(10)]
    await _orders(store, ["order-bad", *good])
    task = asyncio.create_task(app.run())
    try:
        await eventually(lambda: handled == set(good), what="the good orders")
        await eventually(lambda: app.stats is not None and app.stats.parked == 1, what="parked")
        parked = await list_parked(store, "billing")
        assert [(p.stream, p.attempts) for p in parked] == [("order-bad", 2)]
        assert app.stats is not None
        assert app.stats.breaker_opens == 0 and app.stats.paused_handlers == 0
    finally:
        app.request_stop()
        await task


async def test_a_dead_dependency_pauses_the_handler_parks_nothing_and_resumes(
    store: tidelog.Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "tidelog.consumers")
    up = False
    first_callers: set[str] = set()
    enough = asyncio.Event()
    handled: set[str] = set()
    app = App("shop", store, options=FAST)

    @app.handler("order", group="billing", options=OPTIONS)
    async def bill(event: tidelog.RecordedEvent, ctx: Context) -> None:
        if not up:
            if not enough.is_set():  # the first calls fail together, before any retry
                first_callers.add(event.stream)
                if len(first_callers) >= THRESHOLD:
                    enough.set()
                await enough.wait()
            raise ConnectionError("payment service unreachable")
        handled.add(event.stream)

    streams = [f"order-{i}" for i in range(20)]
    await _orders(store, streams)
    task = asyncio.create_task(app.run())
    try:
        await eventually(
            lambda: app.stats is not None and app.stats.breaker_probes >= 3,
            what="the breaker open and probing",
        )
        stats = app.stats
        assert stats is not None
        assert stats.breaker_opens == 1 and stats.paused_handlers == 1
        assert stats.parked == 0  # nothing parked: no attempt was spent while open
        assert await list_parked(store, "billing") == []
        assert handled == set()

        up = True  # the dependency is back: the next probe succeeds, every event goes through
        await eventually(lambda: handled == set(streams), what="every order after the outage")
        assert stats.paused_handlers == 0 and stats.breaker_opens == 1
        assert stats.parked == 0 and await list_parked(store, "billing") == []
        events = [r.getMessage() for r in caplog.records]
        assert events.count("breaker_opened") == 1 and events.count("breaker_closed") == 1
        assert events.index("breaker_opened") < events.index("breaker_closed")
    finally:
        app.request_stop()
        await task


async def test_poison_events_alone_are_still_parked_though_they_open_the_breaker(
    store: tidelog.Store,
) -> None:
    """Only poison events, in more streams than the threshold: to the breaker that looks
    like a dead dependency, and it opens; but its probes are then retries of events that
    failed before, which spend their attempts, so every one is parked in the end."""
    app = App("shop", store, options=FAST)

    @app.handler("order", group="billing", options=OPTIONS)
    async def bill(event: tidelog.RecordedEvent, ctx: Context) -> None:
        raise ValueError("cannot parse this order")

    streams = [f"order-{i}" for i in range(THRESHOLD + 2)]
    await _orders(store, streams)
    task = asyncio.create_task(app.run())
    try:
        await eventually(
            lambda: app.stats is not None and app.stats.parked == len(streams), what="parked"
        )
        parked = await list_parked(store, "billing")
        assert sorted(p.stream for p in parked) == sorted(streams)
        assert {p.attempts for p in parked} == {OPTIONS.max_attempts}
    finally:
        app.request_stop()
        await task


async def test_breaker_off_parks_every_event_of_a_dead_dependency(tmp_path: pathlib.Path) -> None:
    """`breaker_threshold=None`: the behaviour before the breaker, for comparison."""
    async with open_store("sqlite", tmp_path) as store:
        app = App("shop", store, options=FAST)

        @app.handler(
            "order", group="billing", options=HandlerOptions(max_attempts=1, breaker_threshold=None)
        )
        async def bill(event: tidelog.RecordedEvent, ctx: Context) -> None:
            raise ConnectionError("payment service unreachable")

        await _orders(store, [f"order-{i}" for i in range(6)])
        task = asyncio.create_task(app.run())
        try:
            await eventually(lambda: app.stats is not None and app.stats.parked == 6)
            assert app.stats is not None and app.stats.breaker_opens == 0
        finally:
            app.request_stop()
            await task


def test_breaker_options_are_checked() -> None:
    with pytest.raises(InvalidInput, match="breaker_threshold"):
        HandlerOptions(breaker_threshold=1)  # one stream failing is a poison event
    with pytest.raises(InvalidInput, match="breaker_backoff"):
        HandlerOptions(breaker_backoff_initial=10.0, breaker_backoff_max=1.0)
    assert HandlerOptions().breaker_threshold == 5
