"""The batching `Producer`: results per send, order, bounded buffer, flush on close."""

from __future__ import annotations

import asyncio

import pytest

import tidelog
from tidelog.consumers import BufferFull, Producer


@pytest.fixture
def store(partitioned_store: tidelog.Store) -> tidelog.Store:
    return partitioned_store


async def test_each_send_gets_its_own_result_and_order_holds(store: tidelog.Store) -> None:
    async with Producer(store, linger=0.01, max_batch=200) as producer:
        futures = [
            await producer.send(f"order-{i % 7}", tidelog.NewEvent(type="E", data=str(i).encode()))
            for i in range(700)
        ]
        results = await asyncio.gather(*futures)
    assert producer.batches < 700  # batched, not one append per send
    for i, result in enumerate(results):
        stream = f"order-{i % 7}"
        assert result.version == i // 7
        events = [e async for e in store.read_stream(stream, from_version=result.version)]
        event = events[0]
        assert event.position == result.position
        assert event.data == str(i).encode()


async def test_a_conflicting_send_fails_alone(store: tidelog.Store) -> None:
    await store.append("acct-1", [tidelog.NewEvent(type="Opened")])
    async with Producer(store, linger=0.05) as producer:
        ok = await producer.send("acct-2", [tidelog.NewEvent(type="Opened")], tidelog.NO_STREAM)
        bad = await producer.send("acct-1", [tidelog.NewEvent(type="Opened")], tidelog.NO_STREAM)
        also_ok = await producer.send("acct-3", [tidelog.NewEvent(type="Opened")])
        with pytest.raises(tidelog.WrongExpectedVersion) as err:
            await bad
        assert err.value.actual == 0
        assert (await ok).version == 0
        assert (await also_ok).version == 0


async def test_invalid_input_raises_at_send(store: tidelog.Store) -> None:
    async with Producer(store) as producer:
        with pytest.raises(tidelog.InvalidStreamName):
            await producer.send("bad stream", [tidelog.NewEvent(type="E")])
        with pytest.raises(tidelog.InvalidEvent):
            await producer.send("ok-1", [])


async def test_a_full_buffer_raises_or_blocks(store: tidelog.Store) -> None:
    producer = Producer(store, linger=10.0, max_batch=10, max_buffered=20, block=False)
    for _ in range(20):
        await producer.send("x-1", tidelog.NewEvent(type="E"))
    with pytest.raises(BufferFull) as err:
        await producer.send("x-1", tidelog.NewEvent(type="E"))
    assert (err.value.buffered, err.value.limit) == (20, 20)
    await producer.close()  # flushes despite the long linger: max_batch reached
    assert [e.version async for e in store.read_stream("x-1")] == list(range(20))

    blocking = Producer(store, linger=0.0, max_batch=5, max_buffered=5)
    futures = [await blocking.send("y-1", tidelog.NewEvent(type="E")) for _ in range(50)]
    assert blocking.peak_buffered <= 5
    await blocking.close()
    assert all(f.done() for f in futures)
    assert [e.version async for e in store.read_stream("y-1")] == list(range(50))
    with pytest.raises(tidelog.StoreClosed):
        await blocking.send("y-1", tidelog.NewEvent(type="E"))
