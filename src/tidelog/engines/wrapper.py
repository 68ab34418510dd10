"""`StoreWrapper`: a store around another store that forwards the whole contract.

A wrapper changes one thing about a store (`ValidatingStore` checks what is
written against the schema registry) and must answer everything else exactly
as the store it wraps would, including the methods an engine overrides for
speed: the contract's defaults of `read_page` and `count_events` are correct
but slow (the lag of a consumer group counted by reading every event), so a
wrapper that fell back to them would silently undo the engine's indexes.

So this base forwards every method of the contract to `inner`; the write hook
`_apply_write` too, so `append`, `append_many` and `commit` keep the one front
end of the contract (argument checks, fence-first commits) and reach the
inner engine's hook. A subclass overrides `_apply_write` (and what it truly
changes), never the front ends. `tests/test_store_wrapper.py` enumerates the
contract and fails if a wrapper answers any method from a base-class default,
so a method added to the contract later cannot be missed here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection

from tidelog.engines.contract import Engine, GroupEngine, HeadWatch, StreamEngine, Write
from tidelog.errors import InvalidInput
from tidelog.model import (
    ANY,
    AppendRequest,
    AppendResult,
    ExpectedVersion,
    Membership,
    RecordedEvent,
    StreamInfo,
)

__all__ = ["StoreWrapper"]


class StoreWrapper(GroupEngine):
    """Forwards every contract method to `inner`; subclass it and override `_apply_write`.

    The wrapper has no state of its own: it is open while `inner` is, and
    closing it closes `inner`.
    """

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name

    def _check_open(self) -> None:
        """The front ends' closed check asks `inner`: closing either closes both."""
        self.inner._check_open()

    @property
    def poll_interval(self) -> float:
        """The inner store's: consumers wait on the head watch this long between checks."""
        return self.inner.poll_interval

    @poll_interval.setter
    def poll_interval(self, value: float) -> None:
        self.inner.poll_interval = value

    async def _apply_write(self, write: Write) -> dict[str, AppendResult]:
        """Make `write` durable in `inner`: the one write hook, forwarded."""
        inner = self.inner
        if type(inner)._apply_write is StreamEngine._apply_write:  # TODO(one-write-path)
            return await _through_front_ends(inner, write)
        return await inner._apply_write(write)

    # ------------------------------------------------------------------ layer 1

    def read_stream(
        self, stream: str, from_version: int = 0, backwards: bool = False, limit: int | None = None
    ) -> AsyncIterator[RecordedEvent]:
        return self.inner.read_stream(stream, from_version, backwards, limit)

    async def delete_stream(self, stream: str, expected_version: ExpectedVersion = ANY) -> None:
        await self.inner.delete_stream(stream, expected_version)

    async def purge_stream(self, stream: str) -> None:
        await self.inner.purge_stream(stream)

    def list_streams(self, category: str | None = None) -> AsyncIterator[StreamInfo]:
        return self.inner.list_streams(category)

    async def close(self) -> None:
        await self.inner.close()

    # ------------------------------------------------------------------ layer 2

    def read_all(
        self,
        from_position: int = 0,
        categories: Collection[str] | None = None,
        types: Collection[str] | None = None,
        limit: int | None = None,
        partitions: Collection[int] | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        return self.inner.read_all(from_position, categories, types, limit, partitions)

    async def read_page(
        self,
        from_position: int,
        categories: Collection[str] | None,
        types: Collection[str] | None,
        limit: int,
        partitions: Collection[int] | None,
    ) -> list[RecordedEvent]:
        return await self.inner.read_page(from_position, categories, types, limit, partitions)

    async def count_events(
        self,
        from_position: int = 0,
        categories: Collection[str] | None = None,
        partitions: Collection[int] | None = None,
    ) -> int:
        return await self.inner.count_events(from_position, categories, partitions)

    async def last_position(self) -> int:
        return await self.inner.last_position()

    @property
    def partition_count(self) -> int:
        return self.inner.partition_count

    def head_watch(self) -> HeadWatch:
        return self.inner.head_watch()

    def subscribe(
        self,
        from_position: int = 0,
        categories: Collection[str] | None = None,
        types: Collection[str] | None = None,
        partitions: Collection[int] | None = None,
    ) -> AsyncIterator[RecordedEvent]:
        return self.inner.subscribe(from_position, categories, types, partitions)

    # ------------------------------------------------------------------ layer 3

    async def join_group(
        self, group: str, category: str, member: str, lease: float = 10.0
    ) -> Membership:
        return await self.inner.join_group(group, category, member, lease)

    async def heartbeat(
        self, group: str, category: str, member: str, lease: float = 10.0
    ) -> Membership:
        return await self.inner.heartbeat(group, category, member, lease)

    async def leave_group(self, group: str, category: str, member: str) -> None:
        await self.inner.leave_group(group, category, member)

    async def checkpoints(self, group: str, category: str) -> dict[int, int]:
        return await self.inner.checkpoints(group, category)

    async def describe_group(self, group: str, category: str) -> Membership | None:
        return await self.inner.describe_group(group, category)

    async def list_groups(self) -> list[tuple[str, str]]:
        return await self.inner.list_groups()


# TODO(one-write-path): delete once `_apply_write` is abstract (every engine has it)
async def _through_front_ends(inner: Engine, write: Write) -> dict[str, AppendResult]:
    """`write` through the front ends of an engine that still overrides them.

    A fence-only commit is sent with an append every engine refuses (no
    events): its commit fences the member before it judges the appends, so a
    stale member gets `StaleGeneration` and a current one writes nothing.
    """
    requests = {
        s: AppendRequest(events, expected) for s, (events, expected) in write.appends.items()
    }
    cp = write.checkpoint
    if cp is None:
        if len(requests) == 1:
            [(stream, request)] = requests.items()
            return {stream: await inner.append(stream, request.events, request.expected_version)}
        return await inner.append_many(requests)
    if write.fence_only:
        requests = {f"{cp.category}-fence": AppendRequest(())}
    try:
        return await inner.commit(
            cp.group,
            cp.category,
            cp.partition,
            cp.position,
            member=cp.member,
            generation=cp.generation,
            appends=requests or None,
        )
    except InvalidInput:
        if write.fence_only:
            return {}
        raise
