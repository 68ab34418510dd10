"""The sqlite engine's read side: query plans for the log and rows made into events.

Pure functions, no connection of their own: the engine runs the queries on
its reader threads (`SQLiteEngine._read`) and turns the rows into events with
`decode_rows` on the event loop, a chunk at a time as the caller consumes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from uuid import UUID

import msgspec

from tidelog.engines._kit.checks import MAX_POSITION, prepare_read_all
from tidelog.model import RecordedEvent, decode_metadata

__all__ = [
    "COLUMNS",
    "DECODE_CHUNK",
    "PAGE_GROWTH",
    "PAGE_SIZE",
    "count_plan",
    "decode_rows",
    "read_all_plan",
]

PAGE_SIZE: Final = 1000
"""Rows of the first read query; later pages double up to `PAGE_GROWTH` times this.

A long read then costs few thread hand-offs (each costs a GIL switch and a
wake-up), while a short one still answers quickly.
"""
PAGE_GROWTH: Final = 2
DECODE_CHUNK: Final = 256
"""Rows `read_all` turns into events at a time, on the event loop as the caller consumes.

Below the cyclic GC's first threshold (700 allocations): the UUIDs of a chunk
(GC-tracked objects) are usually consumed and freed before a collection sees
them, whereas decoding a whole page kept thousands alive, which the collector
then promoted and traversed again and again.
"""
COLUMNS: Final = (
    "position, id, stream, version, type, data, nullif(metadata, x'7b7d'), recorded_at,"
    " schema_version"
)
"""The columns `decode_rows` takes. Empty metadata (the writer stores `{}`) arrives as
NULL: no bytes object to create and compare in the common case."""
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_UUID_LIST: Final = list[UUID]
_to_uuids: Final = msgspec.convert


def decode_rows(rows: Sequence[Any]) -> list[RecordedEvent]:
    """Rows of `COLUMNS` to events; data stays bytes, empty metadata (NULL) skips the decoder.

    The ids of all the rows are converted in one msgspec call: `UUID(bytes=...)`
    per row would cost more than everything else here together.
    """
    out: list[RecordedEvent] = []
    append = out.append
    last_us = -1
    last_at = _EPOCH
    ids = _to_uuids([row[1] for row in rows], _UUID_LIST)
    for (position, _, stream, version, type_, data, meta, us, sv), id_ in zip(
        rows, ids, strict=True
    ):
        if us != last_us:
            last_us = us
            last_at = _EPOCH + timedelta(microseconds=us)
        append(
            RecordedEvent(
                id=id_,
                stream=stream,
                version=version,
                position=position,
                type=type_,
                data=data,
                metadata={} if meta is None else decode_metadata(meta),
                recorded_at=last_at,
                schema_version=sv,
            )
        )
    return out


def _log_filter(
    cats: frozenset[str] | None, tys: frozenset[str] | None, parts: frozenset[int] | None
) -> tuple[str, str, list[Any]]:
    """The index hint, the WHERE terms after `position >= ?`, and their parameters."""
    index = ""
    where = ""
    params: list[Any] = []
    if cats is not None:
        if len(cats) == 1:
            # One category: walk its index in position order; one partition of
            # it (a consumer group's partition run): walk just that partition.
            if parts is not None and len(parts) == 1:
                index = " INDEXED BY events_category_partition_position"
            else:
                index = " INDEXED BY events_category_position"
            where += " AND category = ?"
        else:
            # Several: scan the log in position order (sorting merged index
            # ranges would cost the whole range for every page).
            where += f" AND +category IN ({','.join('?' * len(cats))})"
        params.extend(sorted(cats))
    if tys is not None:
        where += f" AND type IN ({','.join('?' * len(tys))})"
        params.extend(sorted(tys))
    if parts is not None:
        where += (
            " AND partition = ?"
            if len(parts) == 1
            else f" AND partition IN ({','.join('?' * len(parts))})"
        )
        params.extend(sorted(parts))
    return index, where, params


def _first_position(from_position: int) -> int:
    """The query's start: beyond the largest integer SQLite holds finds nothing anyway."""
    return min(max(from_position, 1), MAX_POSITION)


def read_all_plan(
    from_position: int,
    categories: Collection[str] | None,
    types: Collection[str] | None,
    limit: int | None,
    partitions: Collection[int] | None,
    partition_count: int,
) -> tuple[str, list[Any], int] | None:
    """A log read's query, its filter parameters and its first position; None: no rows.

    The query's parameters are the first position, `params`, then the row limit.
    """
    filters = prepare_read_all(from_position, categories, types, limit, partitions)
    filters = filters.within(partition_count)
    if limit == 0 or filters.matches_nothing:
        return None
    index, where, params = _log_filter(*filters)
    sql = (
        f"SELECT {COLUMNS} FROM events{index} WHERE position >= ?{where} ORDER BY position LIMIT ?"
    )
    return sql, params, _first_position(from_position)


def count_plan(
    from_position: int,
    categories: Collection[str] | None,
    partitions: Collection[int] | None,
    partition_count: int,
) -> tuple[str, tuple[Any, ...]] | None:
    """`count_events`' query and its parameters: one `count(*)` over the index a read
    would walk; None: nothing can match."""
    filters = prepare_read_all(from_position, categories, None, None, partitions)
    filters = filters.within(partition_count)
    if filters.matches_nothing:
        return None
    index, where, params = _log_filter(*filters)
    sql = f"SELECT count(*) FROM events{index} WHERE position >= ?{where}"
    return sql, (_first_position(from_position), *params)
