"""The contract's second layer: the global log, counts and subscriptions.

Split from `tidelog.engines.contract` (which re-exports every name here) only
to keep modules short: read the contract there; this is its second part.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Collection

from tidelog.engines._contract_streams import _NO_FILTER, StreamEngine
from tidelog.engines._kit.checks import LogFilter, log_filter, prepare_read_all
from tidelog.engines._kit.watch import HeadWatch
from tidelog.model import RecordedEvent

__all__ = ["LogEngine"]


class LogEngine(StreamEngine):
    """Layer 2: the global log, in commit order.

    A reader that has seen position p never later finds an event below p.
    """

    poll_interval: float = 0.05
    """How long a live subscription waits on the head watch before checking again."""

    def read_all(
        self,
        from_position: int = 0,
        categories: Collection[str] | None = None,
        types: Collection[str] | None = None,
        limit: int | None = None,
        partitions: Collection[int] | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Events of every stream with position >= `from_position`, in position order.

        Filters combine with AND: `categories` (stream categories), `types`
        (event types) and `partitions` (stream partitions). `limit` caps how many
        events are yielded. Checked here, read by the engine's `_read_all`.
        """
        self._check_open()
        filters = prepare_read_all(from_position, categories, types, limit, partitions)
        if self._retention_idle():
            return self._read_all(from_position, filters, limit)
        return self._read_all_retained(from_position, filters, limit)

    def _read_all_retained(
        self, from_position: int, filters: LogFilter, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        """`read_all` under the retention rules (`GroupEngine` applies them)."""
        return self._read_all(from_position, filters, limit)

    @abc.abstractmethod
    def _read_all(
        self, from_position: int, filters: LogFilter, limit: int | None
    ) -> AsyncIterator[RecordedEvent]:
        """The engine's read of the log; `read_all` checked the arguments."""

    async def read_page(
        self,
        from_position: int,
        categories: Collection[str] | None,
        types: Collection[str] | None,
        limit: int,
        partitions: Collection[int] | None,
    ) -> list[RecordedEvent]:
        """What `read_all` yields with these arguments, as one list: a consumer's read.

        A consumer group's reader takes the log a page at a time.
        """
        self._check_open()
        filters = prepare_read_all(from_position, categories, types, limit, partitions)
        if self._retention_idle():
            return await self._read_page(from_position, filters, limit)
        return await self._read_page_retained(from_position, filters, limit)

    async def _read_page_retained(
        self, from_position: int, filters: LogFilter, limit: int
    ) -> list[RecordedEvent]:
        """`read_page` under the retention rules (`GroupEngine` applies them)."""
        return await self._read_page(from_position, filters, limit)

    async def _read_page(
        self, from_position: int, filters: LogFilter, limit: int
    ) -> list[RecordedEvent]:
        """The engine's page read. Engines that fetch a page in one go override this
        to skip the async iterator's step per event, a good share of a delivery
        when the handler does little."""
        return [e async for e in self._read_all(from_position, filters, limit)]

    async def count_events(
        self,
        from_position: int = 0,
        categories: Collection[str] | None = None,
        partitions: Collection[int] | None = None,
    ) -> int:
        """How many events `read_all` would yield with these filters (consumer lag)."""
        self._check_open()
        filters = prepare_read_all(from_position, categories, None, None, partitions)
        if self._retention_idle():
            return await self._count_events(from_position, filters)
        return await self._count_retained(from_position, filters)

    async def _count_retained(self, from_position: int, filters: LogFilter) -> int:
        """`count_events` under the retention rules (`GroupEngine` applies them)."""
        return await self._count_events(from_position, filters)

    async def _count_events(self, from_position: int, filters: LogFilter) -> int:
        """The engine's count. The default reads the events; engines with an index
        answer with one query."""
        count = 0
        async for _ in self._read_all(from_position, filters, None):
            count += 1
        return count

    @abc.abstractmethod
    async def last_position(self) -> int:
        """The position of the newest visible event, 0 when the log is empty."""

    async def first_position(self) -> int:
        """The low-water mark: the position of the oldest event still stored.

        Retention's scavenger deletes the oldest events; positions below this one
        are gone for good and never reused. An empty log answers
        `last_position() + 1`, where the next event will be.
        """
        self._check_open()
        async for event in self._read_all(0, _NO_FILTER, 1):
            return event.position
        return await self.last_position() + 1

    @property
    @abc.abstractmethod
    def partition_count(self) -> int:
        """Partitions per category; fixed when the store is created."""

    @abc.abstractmethod
    def head_watch(self) -> HeadWatch:
        """The notifier that wakes live subscriptions."""

    async def subscribe(
        self,
        from_position: int = 0,
        categories: Collection[str] | None = None,
        types: Collection[str] | None = None,
        partitions: Collection[int] | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        """Catch up from `from_position`, then follow live; never ends by itself.

        Each matching event is yielded exactly once and in position order,
        across the switch from catch-up to live. Raises `StoreClosed` when the
        store closes. The filters are checked here, once for every engine; the
        engine's `_subscribe` follows the log.
        """
        filters = log_filter(categories, types, partitions)
        async for event in self._subscribe(max(from_position, 0), filters):
            yield event

    async def _subscribe(
        self, from_position: int, filters: LogFilter
    ) -> AsyncIterator[RecordedEvent]:
        """The engine's subscription; `subscribe` checked the filters and made
        `from_position` at least 0. Each engine checks the store is open itself.

        This generic loop reads the log, then waits on the head watch and reads
        again from the head it saw: engines whose reads and head always agree
        need nothing else.
        """
        cats, tys, parts = filters
        watch = self.head_watch()
        next_position = from_position
        while True:
            self._check_open()
            head = await self.last_position()
            async for event in self.read_all(
                from_position=next_position, categories=cats, types=tys, partitions=parts
            ):
                next_position = event.position + 1
                yield event
            next_position = max(next_position, head + 1)
            await watch.wait_beyond(next_position - 1, self.poll_interval)
