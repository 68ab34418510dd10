"""The synchronous API: tidelog for code that is not async.

Django and Flask views, scripts and notebooks call the store the way they call
any library::

    import tidelog.sync

    with tidelog.sync.connect("sqlite:///tidelog-data/shop.db") as store:
        store.append("order-42", [tidelog.NewEvent(type="OrderPlaced", data=b"{}")])
        for event in store.read_stream("order-42"):
            print(event.version, event.type)

`SyncStore` has the methods of `tidelog.Store` under the same names and with
the same arguments; each returns the plain value (`append` an `AppendResult`)
and each async iterator (`read_stream`, `read_all`, `list_streams`,
`subscribe`) becomes a plain iterator. `Repository` and `Producer` here are the
async ones, driven the same way.

**How.** One asyncio event loop per store runs in a helper thread for the
store's whole life, and the async store lives on it: every call is handed to
that loop (`asyncio.run_coroutine_threadsafe`) and the caller waits for its
result. The sync API is the async core driven from outside, never a copy of
it (httpx's hand-copied `Client`/`AsyncClient` is the pitfall), and not
`asyncio.run` per call, which would build and tear down a loop each time and
could not keep an engine's connections, group-commit queue or subscriptions
between calls. Because the loop is shared, calls made from many threads at
once are concurrent on it: a thread-safe store whose concurrent appends are
group-committed as they are from async code.

**Closing.** `close()` (or leaving the `with` block) closes the async store,
ends what is still running on the loop (a thread blocked in a subscription gets
`StoreClosed`, as an async subscriber would), finalises every unfinished
iterator and stops the thread. Closing an iterator (`it.close()`, leaving its
`with` block, or dropping it) closes its async generator on the loop; an
iterator closed while another thread waits in it ends that thread's loop
(`StopIteration`).

**Re-entrancy.** Code that runs on the store's own loop (an upcaster, a cipher,
a coroutine given to `SyncStore.run`) must use the async API: a blocking call
from there would wait for the loop it blocks. It raises `ReentrantCall`
instead of deadlocking.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import threading
import warnings
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Concatenate, Final, Generic, ParamSpec, Self, TypeVar

from tidelog import aggregates, consumers
from tidelog._connect import DEFAULT_STORE_URL
from tidelog._connect import connect as connect_async
from tidelog.aggregates import Aggregate
from tidelog.codec import EventCipher, EventRegistry
from tidelog.engines.contract import Engine
from tidelog.errors import StoreClosed, TidelogError
from tidelog.model import ANY, AppendResult, ExpectedVersion, NewEvent

__all__ = [
    "NOT_IN_SYNC",
    "Producer",
    "ReentrantCall",
    "Repository",
    "SyncIterator",
    "SyncStore",
    "connect",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")
_A = TypeVar("_A", bound=Aggregate)

NOT_IN_SYNC: Final[dict[str, str]] = {
    "head_watch": "the asyncio notifier that wakes live subscriptions: engine plumbing",
    "poll_interval": "how often a live subscription re-checks: tuned on the async store",
    "applies_retention": "engine plumbing: whether this store applies the rules itself",
    "scavenge_interval": "the background scavenger's tuning: set on the async store",
    "scavenge_lease": "the background scavenger's tuning: set on the async store",
    "scavenge_batch": "the background scavenger's tuning: set on the async store",
    "start_scheduler": "returns the scheduler, an asyncio task's handle: use `run` with the "
    "async store (a store starts it by itself when it schedules an event)",
}
"""Public names of the async contract the sync facade leaves out, and why.

`tests/test_sync.py` fails when the contract gains a public name that is
neither in `SyncStore` nor here."""


class ReentrantCall(TidelogError, RuntimeError):
    """A blocking call from the store's own event loop thread, which would deadlock.

    Code that runs on the loop (upcasters, ciphers, coroutines given to
    `SyncStore.run`) must use the async store, `SyncStore.async_store`.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(
            f"{what} was called from the store's own event loop thread, where it would "
            "wait for itself: use the async API there (SyncStore.async_store)"
        )


class _Portal:
    """One event loop in a daemon thread, and the one way to run code on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._lock = threading.RLock()  # re-entrant: a finaliser may run while it is held
        self.closed = False
        self._thread = threading.Thread(target=self._serve, name="tidelog-sync", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def submit(self, what: str, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
        """Schedule `coro` on the loop; refuses (and closes `coro`) when the call cannot run."""
        if threading.current_thread() is self._thread:  # not ident: idents are reused
            coro.close()
            raise ReentrantCall(what)
        with self._lock:  # close() sets `closed` under it: nothing lands on a stopped loop
            if self.closed:
                coro.close()
                raise StoreClosed()
            return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, what: str, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run `coro` on the loop and wait for its result (or its exception)."""
        future = self.submit(what, coro)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self.closed:  # ended by close(), from another thread
                raise StoreClosed() from None
            raise
        except KeyboardInterrupt:
            future.cancel()  # Ctrl-C in a script or notebook stops the call on the loop too
            raise

    def run(self, what: str, fn: Callable[[], _T]) -> _T:
        """Run the plain function `fn` on the loop (where the store's state lives)."""

        async def body() -> _T:
            return fn()

        return self.call(what, body())

    def close(self, shutdown: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `shutdown` on the loop, end every task and iterator left, stop the thread.

        A second caller (another thread) returns once the first has finished.
        """
        if threading.current_thread() is self._thread:  # not ident: idents are reused
            raise ReentrantCall("close()")
        with self._lock:
            first, self.closed = not self.closed, True
        if first:
            try:
                asyncio.run_coroutine_threadsafe(self._finish(shutdown), self.loop).result()
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()

    def abandon(self, shutdown: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Close without waiting: for a store that was dropped unclosed (a finaliser)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        with contextlib.suppress(RuntimeError):  # the loop is gone already (interpreter exit)
            future = asyncio.run_coroutine_threadsafe(self._finish(shutdown), self.loop)
            future.add_done_callback(lambda _: self.loop.call_soon_threadsafe(self.loop.stop))

    async def _finish(self, shutdown: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await shutdown()
        finally:
            current = asyncio.current_task()
            left = [t for t in asyncio.all_tasks() if t is not current]
            for task in left:
                task.cancel()
            await asyncio.gather(*left, return_exceptions=True)
            await self.loop.shutdown_asyncgens()
            await self.loop.shutdown_default_executor()


class SyncIterator(Iterator[_T]):
    """An async iterator of the store, driven from a plain `for` loop.

    Closing it (`close()`, leaving `with`, or dropping it) closes the async
    iterator on the loop; if another thread is waiting in `next()` meanwhile,
    that wait is cancelled and its loop ends.
    """

    def __init__(
        self, portal: _Portal, source: AsyncIterator[_T], what: str, owner: object = None
    ) -> None:
        self._owner = owner  # the store: kept alive while one of its iterators is
        self._portal = portal
        self._source = source
        self._what = what
        self._step_lock = asyncio.Lock()
        self._task: asyncio.Task[Any] | None = None
        self._done = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> _T:
        if self._done:
            raise StopIteration
        try:
            return self._portal.call(f"next() of {self._what}", self._step())
        except (StopAsyncIteration, concurrent.futures.CancelledError):
            if not self._done:
                raise  # a cancellation that was not this iterator's close()
            raise StopIteration from None

    async def _step(self) -> _T:
        async with self._step_lock:  # two threads in next() take turns, as a generator cannot
            if self._done:
                raise StopAsyncIteration
            self._task = asyncio.current_task()
            try:
                return await anext(self._source)
            except StopAsyncIteration:
                self._done = True
                raise
            finally:
                self._task = None

    def close(self) -> None:
        """Close the async iterator (idempotent; nothing to do once the store is closed)."""
        if self._done or self._portal.closed:
            self._done = True
            return
        with contextlib.suppress(StoreClosed):  # the store closed meanwhile: already finalised
            self._portal.call(f"close() of {self._what}", self._close())

    async def _close(self) -> None:
        self._done = True
        if self._task is not None:  # another thread waits in next(): end its wait
            self._task.cancel()
            await asyncio.wait([self._task])  # its outcome is that thread's to see
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Dropped unfinished: close on the loop without waiting. A finaliser may run
        # anywhere, even inside this thread's own call to the loop, so it takes no
        # lock and makes no coroutine here (one the loop never ran would warn).
        if not self._done and not self._portal.closed:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to do
                self._portal.loop.call_soon_threadsafe(self._close_soon)

    def _close_soon(self) -> None:
        self._portal.loop.create_task(self._close())


def _named_like(
    wrapper: Callable[..., Any], method: Callable[..., Any], *, iterating: bool = False
) -> None:
    """Give `wrapper` the async method's name, docstring and signature (for `help()`).

    The signature is the contract's, arguments and defaults alike; only an
    iterator's return type reads `SyncIterator` where the contract has
    `AsyncIterator`.
    """
    functools.update_wrapper(wrapper, method)
    signature = inspect.signature(method)
    if iterating:
        returns = str(signature.return_annotation).replace("AsyncIterator", "SyncIterator")
        signature = signature.replace(return_annotation=returns)
    wrapper.__signature__ = signature  # type: ignore[attr-defined]


def _blocking(
    method: Callable[Concatenate[Engine, _P], Awaitable[_T]],
) -> Callable[Concatenate[SyncStore, _P], _T]:
    """A sync method that runs the async store's `method` on the loop and returns its result."""
    name = method.__name__

    def call(self: SyncStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        async def body() -> _T:
            return await getattr(self._async, name)(*args, **kwargs)  # type: ignore[no-any-return]

        return self._portal.call(f"{name}()", body())

    _named_like(call, method)
    return call


def _iterating(
    method: Callable[Concatenate[Engine, _P], AsyncIterator[_T]],
) -> Callable[Concatenate[SyncStore, _P], SyncIterator[_T]]:
    """A sync method returning a plain iterator over the async store's `method`.

    The async iterator is made on the loop, so arguments are checked when the
    call is made, exactly as in async code.
    """
    name = method.__name__

    def call(self: SyncStore, /, *args: _P.args, **kwargs: _P.kwargs) -> SyncIterator[_T]:
        source: AsyncIterator[_T] = self._portal.run(
            f"{name}()", lambda: getattr(self._async, name)(*args, **kwargs)
        )
        return SyncIterator(self._portal, source, f"{name}()", self)

    _named_like(call, method, iterating=True)
    return call


class SyncStore:
    """`tidelog.Store` for sync code: the same methods, plain values and iterators.

    Made by `tidelog.sync.connect`. Thread-safe: any number of threads may call
    it at once. A context manager; `close()` is idempotent and after it every
    call raises `StoreClosed`.
    """

    def __init__(self, store: Engine, portal: _Portal) -> None:
        self._async = store
        self._portal = portal
        weakref.finalize(self, _abandoned, portal, store)

    @property
    def async_store(self) -> Engine:
        """The async store behind this one, for code that runs on its loop (see `run`)."""
        return self._async

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run a coroutine on the store's loop and return its result.

        For async-only tidelog code (a `ProjectionRunner`, a consumer `App`) that
        should use this store: give it `async_store`, and run it here.
        """
        return self._portal.call("run()", coro)

    @property
    def name(self) -> str:
        """The engine's name (`sqlite`, `memory`, ...)."""
        return self._async.name

    @property
    def partition_count(self) -> int:
        """Partitions per category; fixed when the store is created."""
        return self._async.partition_count

    # layer 1: streams
    append = _blocking(Engine.append)
    append_many = _blocking(Engine.append_many)
    read_stream = _iterating(Engine.read_stream)
    delete_stream = _blocking(Engine.delete_stream)
    purge_stream = _blocking(Engine.purge_stream)
    list_streams = _iterating(Engine.list_streams)
    # layer 2: the global log
    read_all = _iterating(Engine.read_all)
    read_page = _blocking(Engine.read_page)
    count_events = _blocking(Engine.count_events)
    last_position = _blocking(Engine.last_position)
    first_position = _blocking(Engine.first_position)
    subscribe = _iterating(Engine.subscribe)
    # layer 3: consumer groups
    join_group = _blocking(Engine.join_group)
    heartbeat = _blocking(Engine.heartbeat)
    leave_group = _blocking(Engine.leave_group)
    commit = _blocking(Engine.commit)
    checkpoints = _blocking(Engine.checkpoints)
    describe_group = _blocking(Engine.describe_group)
    list_groups = _blocking(Engine.list_groups)
    # retention (docs/retention.md)
    set_retention = _blocking(Engine.set_retention)
    retention = _blocking(Engine.retention)
    scavenge = _blocking(Engine.scavenge)
    start_stream_at = _blocking(Engine.start_stream_at)
    # scheduled delivery (docs/scheduling.md)
    cancel_scheduled = _blocking(Engine.cancel_scheduled)
    scheduled = _blocking(Engine.scheduled)
    count_scheduled = _blocking(Engine.count_scheduled)

    @property
    def supports_scheduling(self) -> bool:
        """Whether this store keeps scheduled events (else they raise `NotSupported`)."""
        return self._async.supports_scheduling

    @property
    def max_write_events(self) -> int | None:
        """Events one all-or-nothing write can hold (None: no limit of the engine's own)."""
        return self._async.max_write_events

    @property
    def retention_stats(self) -> dict[str, int]:
        """Counters of this process's scavenges (`deleted`, `lost`, `runs`, ...)."""
        return dict(self._async.retention_stats)

    def close(self) -> None:
        """Close the store, end its open iterators and stop its thread. Idempotent."""
        self._portal.close(self._async.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def connect(url: str = DEFAULT_STORE_URL, **options: Any) -> SyncStore:
    """Open a store from a URL, for sync code: `tidelog.connect`'s URLs and options.

    Starts the store's helper thread and event loop, opens the async store on
    it, and returns the `SyncStore` (also a context manager). If opening fails,
    the thread is stopped and the error raised.
    """
    portal = _Portal()
    try:
        store = portal.call("connect()", _open(url, options))
    except BaseException:
        portal.close(_nothing)
        raise
    return SyncStore(store, portal)


def _abandoned(portal: _Portal, store: Engine) -> None:
    """A store dropped without `close()`: say so, as an unclosed file does, and close it."""
    if portal.closed:
        return
    warnings.warn(
        f"a tidelog.sync store ({store.name}) was not closed: close it, or use `with`",
        ResourceWarning,
        stacklevel=2,
    )
    portal.abandon(store.close)


async def _open(url: str, options: dict[str, Any]) -> Engine:
    return await connect_async(url, **options)


async def _nothing() -> None:
    return None


class Repository(Generic[_A]):
    """`tidelog.Repository` for sync code: load and save aggregates through a `SyncStore`."""

    def __init__(
        self,
        store: SyncStore,
        aggregate: type[_A],
        *,
        registry: EventRegistry | None = None,
        cipher: EventCipher | None = None,
    ) -> None:
        self.store = store
        self.repository = aggregates.Repository(
            store.async_store, aggregate, registry=registry, cipher=cipher
        )
        """The async repository underneath."""

    def create(self, id: str) -> _A:
        """A new aggregate; saving it fails with `WrongExpectedVersion` if it exists."""
        return self.repository.create(id)

    def get(self, id: str, *, version: int | None = None, at: datetime | None = None) -> _A:
        """Load an aggregate (see `tidelog.Repository.get`)."""
        return self.store._portal.call("get()", self.repository.get(id, version=version, at=at))

    def get_or_create(self, id: str) -> _A:
        """Load an aggregate, or make a new one when it has no events."""
        return self.store._portal.call("get_or_create()", self.repository.get_or_create(id))

    def save(self, *changed: Aggregate) -> None:
        """Commit the aggregates' pending events atomically (see `tidelog.Repository.save`)."""
        self.store._portal.call("save()", self.repository.save(*changed))


class Producer:
    """`tidelog.Producer` for sync code: buffered, batched sends through a `SyncStore`.

    `send` returns a `concurrent.futures.Future` of the send's `AppendResult`
    (`future.result()` waits for it); many threads may send at once and their
    sends share batches. Flushed on `close()` and at the end of a `with` block.
    """

    def __init__(
        self,
        store: SyncStore,
        *,
        linger: float = 0.002,
        max_batch: int = 1000,
        max_buffered: int = 10_000,
        block: bool = True,
    ) -> None:
        self.store = store
        self.producer = store._portal.run(
            "Producer()",
            lambda: consumers.Producer(
                store.async_store,
                linger=linger,
                max_batch=max_batch,
                max_buffered=max_buffered,
                block=block,
            ),
        )
        """The async producer underneath (made on the store's loop, where it runs)."""

    @property
    def buffered(self) -> int:
        """Events accepted but not yet written."""
        return self.producer.buffered

    def send(
        self,
        stream: str,
        events: NewEvent | Sequence[NewEvent],
        expected_version: ExpectedVersion = ANY,
    ) -> concurrent.futures.Future[AppendResult]:
        """Buffer an append and return a future of its `AppendResult`.

        Input is checked at once (a bad send raises here); a full buffer waits
        for room, or raises `BufferFull` with `block=False`.
        """
        portal = self.store._portal

        async def body() -> concurrent.futures.Future[AppendResult]:
            inner = await self.producer.send(stream, events, expected_version)
            outer: concurrent.futures.Future[AppendResult] = concurrent.futures.Future()
            inner.add_done_callback(functools.partial(_settle, outer))
            outer.add_done_callback(functools.partial(_cancel_on_loop, portal, inner))
            return outer

        return portal.call("send()", body())

    def flush(self) -> None:
        """Wait until everything sent so far is written (or failed)."""
        self.store._portal.call("flush()", self.producer.flush())

    def close(self) -> None:
        """Flush, then refuse further sends. Idempotent."""
        if self.store._portal.closed:
            return
        self.store._portal.call("close()", self.producer.close())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _settle(
    outer: concurrent.futures.Future[AppendResult], inner: asyncio.Future[AppendResult]
) -> None:
    """Copy the outcome of a send (on the loop) to the caller's future."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # the caller cancelled it
        if inner.cancelled():
            outer.cancel()
        elif (error := inner.exception()) is not None:
            outer.set_exception(error)
        else:
            outer.set_result(inner.result())


def _cancel_on_loop(
    portal: _Portal, inner: asyncio.Future[AppendResult], outer: concurrent.futures.Future[Any]
) -> None:
    """A send the caller cancelled is skipped by the producer, if not yet written."""
    if outer.cancelled() and not portal.closed:
        with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
            portal.loop.call_soon_threadsafe(inner.cancel)
