"""Retention's optional engine hooks, with the defaults every engine inherits.

`GroupEngine` takes these from this mixin, so the contract module stays the
contract's front ends and the hooks an engine must give; an engine overrides a
default here when it can answer faster (one SQL query instead of one read per
stream) or can do what the default refuses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping
from typing import TYPE_CHECKING

from tidelog.engines._kit.checks import LogFilter
from tidelog.engines._kit.retention import RetentionView, static_floor
from tidelog.errors import NotSupported
from tidelog.model import RecordedEvent, StreamInfo, category_of, partition_of

__all__ = ["RetentionHooks", "StreamStates"]

StreamStates = dict[str, tuple[int | None, bool]]
"""stream -> (last version or None, tombstoned), as retention decides with them."""


class RetentionHooks:
    """The optional retention hooks of an engine (mixed into `GroupEngine`)."""

    name: str

    if TYPE_CHECKING:

        async def _stream_state(self, stream: str) -> tuple[int | None, bool]: ...
        async def _retention_view(self, force: bool = False) -> RetentionView | None: ...
        async def _count_events(self, from_position: int, filters: LogFilter) -> int: ...
        def _read_all_retained(
            self, from_position: int, filters: LogFilter, limit: int | None
        ) -> AsyncIterator[RecordedEvent]: ...
        def list_streams(self, category: str | None = None) -> AsyncIterator[StreamInfo]: ...
        @property
        def partition_count(self) -> int: ...

    async def _stream_heads(self, streams: Collection[str]) -> StreamStates:
        """`_stream_state` of several streams: what count-based rules (`max_count`,
        `keep_latest`) and `scavenge_deleted` need of each stream a read meets.

        The default asks each stream in turn (a read per stream); SQLite and
        PostgreSQL answer all of them with one query of their `streams` table.
        A tombstoned stream is `(None, True)` and an unknown one `(None, False)`,
        as `_stream_state` has them.
        """
        return {stream: await self._stream_state(stream) for stream in streams}

    async def _start_stream_at(self, stream: str, version: int) -> None:
        """The hook behind `start_stream_at` (which checked the name, and calls it for a
        version > 0 only): make the absent `stream` start at `version`, as a scavenge
        that deleted its versions below leaves it; a no-op for a stream that exists.
        Engines that cannot raise `NotSupported` with the reason."""
        raise NotSupported(self.name, "starting a stream at a version")

    async def _stream_bytes(self, category: str | None) -> dict[str, int] | None:
        """Stored bytes (data plus metadata as compact JSON) of each stream of `category`
        (None: of every user stream), for `hard_max_bytes`, in one aggregate query;
        None when the engine cannot without reading (the default), and then the
        scavenger reads the scope's events to weigh them."""
        return None

    async def _count_below(self, floors: Mapping[str, int], from_position: int) -> int | None:
        """How many stored events of the streams of `floors` have a version below the
        stream's floor and a position >= `from_position`, in one query; None when the
        engine cannot count without reading (the default), and then `count_events`
        under rules reads."""
        return None

    async def _count_retained(self, from_position: int, filters: LogFilter) -> int:
        """`count_events` under the rules: the engine's count minus what the rules hide,
        when the rules that apply are version-based and unprotected (`max_count`,
        `keep_latest`, `truncate_before`, with `even_if_unconsumed` or no group on
        the category): then what is hidden of each stream is its versions below
        `static_floor`, which an SQL engine counts in one query (`_count_below`).
        Events a group protects are never hidden (bar `hard_max_age`), so a count
        from beyond the groups' lowest checkpoint (a group's lag) needs no floor
        for them. Otherwise (age, events some group may have read, deleted
        streams) it reads the events."""
        view = await self._retention_view()
        floors = None if view is None else await self._floors(view, filters, from_position)
        if view is None or floors is not None:
            total = await self._count_events(from_position, filters)
            if not floors:
                return total
            hidden = await self._count_below(floors, from_position)
            if hidden is not None:
                return total - hidden
        count = 0
        async for _ in self._read_all_retained(from_position, filters, None):
            count += 1
        return count

    async def _floors(
        self, view: RetentionView, filters: LogFilter, from_position: int
    ) -> dict[str, int] | None:
        """stream -> the version below which the rules hide it, for the streams of
        `filters` with a rule; None if a rule that applies is not version-based."""
        if filters.types is not None:
            return None
        categories: Collection[str | None] = (
            [None] if filters.categories is None else sorted(filters.categories)
        )
        floors: dict[str, int] = {}
        for category in categories:
            async for info in self.list_streams(category):
                policy = view.policy(info.name)
                if policy is None:
                    continue
                partition = partition_of(info.name, self.partition_count)
                if filters.partitions is not None and partition not in filters.partitions:
                    continue
                key = (category_of(info.name), partition)
                if not policy.even_if_unconsumed and key[0] in view.cache.grouped:
                    read_up_to = view.cache.floors.get(key, 0)
                    if policy.hard_max_age is None and from_position > read_up_to:
                        continue  # every event counted is unread by some group: kept
                    return None
                if info.deleted or policy.max_age is not None or policy.hard_max_age is not None:
                    return None
                floor = static_floor(policy, info.version)
                if floor > 0:
                    floors[info.name] = floor
        return floors
