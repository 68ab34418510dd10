"""The sync facade seen as an async store, so the conformance suite runs through it.

`AsyncOverSync` presents a `tidelog.sync.SyncStore` as a `tidelog.Store`: each
async method of the contract runs the sync method of the same name in a
worker thread, and each async iterator is a sync iterator stepped in a worker
thread (its `aclose` closes the sync iterator). Nothing here knows a method by
name: the contract says which methods are coroutines, so a method the facade
lacks fails the suite instead of being papered over.

The worker threads are this adapter's own pool rather than the event loop's
default executor (`asyncio.to_thread`): a sync subscriber holds its thread
while it waits, and a test with several waiting subscribers and writers would
otherwise queue its writers behind them on the default executor's few threads.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import tidelog
import tidelog.sync

T = TypeVar("T")

_END = object()


async def open_through_sync(url: str) -> tidelog.Store:
    """Open `url` with `tidelog.sync.connect` and present it as an async store."""
    store = await asyncio.to_thread(tidelog.sync.connect, url)
    return cast(tidelog.Store, AsyncOverSync(store))


class _AsyncOverIterator(AsyncIterator[T]):
    def __init__(self, iterator: Iterator[T], run: Callable[..., Any]) -> None:
        self._iterator = iterator
        self._run = run

    def __aiter__(self) -> _AsyncOverIterator[T]:
        return self

    async def __anext__(self) -> T:
        value = await self._run(next, self._iterator, _END)
        if value is _END:
            raise StopAsyncIteration
        return cast(T, value)

    async def aclose(self) -> None:
        await self._run(getattr(self._iterator, "close", lambda: None))


class AsyncOverSync:
    """A `tidelog.Store` whose every call goes through the sync facade."""

    def __init__(self, store: tidelog.sync.SyncStore) -> None:
        self.sync = store
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="sync-adapter")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def __getattr__(self, name: str) -> Any:
        contract = inspect.getattr_static(tidelog.Store, name)
        target = getattr(self.sync, name)  # AttributeError: the facade lacks it
        if isinstance(contract, property) or not callable(target):
            return target
        if inspect.iscoroutinefunction(contract):

            async def call(*args: Any, **kwargs: Any) -> Any:
                return await self._run(functools.partial(target, *args, **kwargs))

            return call

        def iterate(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            # Called at once, like the contract's read methods, so bad arguments raise here.
            return _AsyncOverIterator(target(*args, **kwargs), self._run)

        return iterate

    async def close(self) -> None:
        # The pool stays: calls after close must reach the facade and get its
        # StoreClosed; its idle threads end when the adapter is collected.
        await self._run(self.sync.close)

    async def __aenter__(self) -> AsyncOverSync:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
