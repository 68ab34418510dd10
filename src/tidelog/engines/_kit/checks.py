"""Input checks every engine applies the same way: one definition per rule.

The contract's public methods call these before an engine's own code runs, so
a call with bad arguments gets the same error, in the same order of checks, on
every engine.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple, cast
from uuid import UUID

from tidelog.errors import DuplicateEventId, GroupError, InvalidEvent, InvalidInput
from tidelog.model import (
    AppendRequest,
    AppendResult,
    ExpectedVersion,
    NewEvent,
    validate_event,
    validate_expected_version,
    validate_stream_name,
)

__all__ = [
    "DEFAULT_PARTITIONS",
    "MAX_EVENTS_PER_APPEND",
    "MAX_POSITION",
    "LogFilter",
    "check_checkpoint",
    "check_position",
    "check_read_args",
    "log_filter",
    "prepare_append",
    "prepare_append_many",
    "prepare_delete",
    "prepare_purge",
    "prepare_read_all",
    "prepare_read_stream",
    "resolve_retry",
    "validate_filters",
    "validate_group_key",
    "validate_group_name",
    "validate_partitions",
]

DEFAULT_PARTITIONS = 16
MAX_EVENTS_PER_APPEND = 10_000

# --------------------------------------------------------------------------- input


def prepare_append(
    stream: object, events: object, expected_version: object
) -> tuple[str, tuple[NewEvent, ...], ExpectedVersion]:
    """Validate one append's input identically for every engine."""
    name = validate_stream_name(stream)
    expected = validate_expected_version(expected_version)
    if isinstance(events, (str, bytes, NewEvent)) or not isinstance(events, Sequence):
        raise InvalidEvent("events must be a sequence of tidelog.NewEvent")
    if not events:
        raise InvalidEvent("an append needs at least one event")
    if len(events) > MAX_EVENTS_PER_APPEND:
        raise InvalidEvent(f"at most {MAX_EVENTS_PER_APPEND} events per append")
    checked = tuple([validate_event(e) for e in events])
    if len(checked) > 1 and len({e.id for e in checked}) != len(checked):
        raise InvalidEvent(f"an append to {name!r} repeats an event id")
    return name, checked, expected


def prepare_append_many(
    requests: object,
) -> dict[str, tuple[tuple[NewEvent, ...], ExpectedVersion]]:
    """Validate an `append_many` (or a transactional commit's appends)."""
    if not isinstance(requests, Mapping):
        raise InvalidEvent("append_many takes a mapping of stream name to tidelog.AppendRequest")
    if not requests:
        raise InvalidEvent("append_many needs at least one stream")
    out: dict[str, tuple[tuple[NewEvent, ...], ExpectedVersion]] = {}
    seen: set[UUID] = set()
    for stream, request in requests.items():
        if not isinstance(request, AppendRequest):
            raise InvalidEvent("append_many values must be tidelog.AppendRequest")
        name, events, expected = prepare_append(stream, request.events, request.expected_version)
        for e in events:
            if e.deliver_at is not None:
                raise InvalidEvent(
                    "scheduled events (deliver_at) cannot be part of an atomic multi-stream "
                    "write: schedule them with append"
                )
            if e.id in seen:
                raise InvalidEvent(f"append_many repeats event id {e.id}")
            seen.add(e.id)
        out[name] = (events, expected)
    return out


def resolve_retry(
    stream: str,
    events: Sequence[NewEvent],
    stored: Mapping[UUID, tuple[str, int, int]],
) -> AppendResult | None:
    """Decide whether an append is an idempotent retry, from the ids already stored.

    `stored` maps each of the append's ids that is already in the store to its
    (stream, version, position). Returns None when no id is stored (a fresh
    append), the original result when all are stored in `stream`, and raises
    `DuplicateEventId` otherwise.
    """
    if not stored:
        return None
    elsewhere = any(s != stream for s, _, _ in stored.values())
    if len(stored) != len(events) or elsewhere:
        raise DuplicateEventId(stream, list(stored), in_other_stream=elsewhere)
    _, version, position = max(stored.values(), key=lambda row: row[2])
    return AppendResult(version=version, position=position)


def validate_group_name(value: object, what: str = "group") -> str:
    """Group, member and category names follow the stream-name rules."""
    try:
        return validate_stream_name(value)
    except InvalidInput as exc:
        raise GroupError(f"invalid {what} name {value!r}") from exc


def validate_group_key(group: object, category: object) -> None:
    """The group and category names every group operation takes."""
    validate_group_name(group)
    validate_group_name(category, "category")


def validate_filters(
    categories: Collection[str] | None, types: Collection[str] | None
) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    if isinstance(categories, str) or isinstance(types, str):
        raise InvalidInput("categories and types take a collection of names, not one string")
    cats = None if categories is None else frozenset(categories)
    tys = None if types is None else frozenset(types)
    return cats, tys


def validate_partitions(partitions: object) -> frozenset[int] | None:
    """The `partitions` filter of a read or subscription: None (no filter) or a
    collection of partition numbers, ints >= 0.

    A number at or above the store's partition count is no error: no stream is
    in that partition, so it matches nothing (`LogFilter.within` drops it).
    """
    if partitions is None:
        return None
    if isinstance(partitions, str | bytes | bytearray | memoryview):
        raise InvalidInput("partitions take a collection of ints, not a string or bytes")
    try:
        numbers = frozenset(cast(Collection[object], partitions))
    except TypeError:
        raise InvalidInput(
            f"partitions take a collection of ints, not {type(partitions).__name__}"
        ) from None
    for p in numbers:
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise InvalidInput(f"invalid partition {p!r}: an int >= 0")
    return cast(frozenset[int], numbers)


class LogFilter(NamedTuple):
    """The filters of a log read, as sets; None is no filter on that field."""

    categories: frozenset[str] | None
    types: frozenset[str] | None
    partitions: frozenset[int] | None

    @property
    def matches_nothing(self) -> bool:
        """A filter given as an empty collection: no event can match, so no query is needed."""
        return frozenset() in (self.categories, self.types, self.partitions)

    def within(self, partition_count: int) -> LogFilter:
        """This filter without the partition numbers a store of `partition_count`
        partitions does not have: they match nothing, and need not reach a query
        (where a number too big for the column would be an error)."""
        if self.partitions is None or all(p < partition_count for p in self.partitions):
            return self
        kept = frozenset(p for p in self.partitions if p < partition_count)
        return self._replace(partitions=kept)


def log_filter(
    categories: Collection[str] | None,
    types: Collection[str] | None,
    partitions: Collection[int] | None,
) -> LogFilter:
    """Validate the filters of `subscribe` (`prepare_read_all` for a read)."""
    cats, tys = validate_filters(categories, types)
    return LogFilter(cats, tys, validate_partitions(partitions))


def prepare_read_all(
    from_position: object,
    categories: Collection[str] | None,
    types: Collection[str] | None,
    limit: object,
    partitions: Collection[int] | None,
) -> LogFilter:
    """Validate the arguments of `read_all` (and `count_events`) identically for every engine.

    The order of the checks decides which error a call with several bad
    arguments gets; it is the same everywhere because it is written once.
    """
    cats, tys = validate_filters(categories, types)
    parts = validate_partitions(partitions)
    check_read_args(from_position, limit, False)
    return LogFilter(cats, tys, parts)


def prepare_read_stream(
    stream: object, from_version: object, backwards: bool, limit: object
) -> str:
    """Validate the arguments of `read_stream`; returns the stream name."""
    name = validate_stream_name(stream)
    check_read_args(from_version, limit, backwards)
    return name


def prepare_delete(stream: object, expected_version: object) -> tuple[str, ExpectedVersion]:
    """Validate the arguments of `delete_stream`."""
    return validate_stream_name(stream), validate_expected_version(expected_version)


def prepare_purge(stream: object) -> str:
    """Validate the argument of `purge_stream`: only system streams can be erased."""
    name = validate_stream_name(stream)
    if not name.startswith("$"):
        raise InvalidInput(f"only system streams ($...) can be purged, not {name!r}")
    return name


def check_read_args(start: object, limit: object, backwards: bool) -> None:
    """Validate a read's start (version or position) and limit; negative starts only backwards."""
    if isinstance(start, bool) or not isinstance(start, int) or (start < 0 and not backwards):
        raise InvalidInput(f"invalid start {start!r}: an int >= 0")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidInput(f"invalid limit {limit!r}: None or an int >= 0")


def check_position(position: object) -> None:
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise InvalidInput(f"invalid position {position!r}: an int >= 0")


MAX_POSITION = 2**63 - 1
"""The largest position or version an engine can store (SQLite and PostgreSQL keep
64-bit integers). A read may start beyond it and finds nothing there."""


def check_checkpoint(position: object) -> None:
    """A position to commit as a checkpoint: one an engine can store, 0 to `MAX_POSITION`.

    Checked before anything is written, so every engine refuses the same values.
    """
    if (
        isinstance(position, bool)
        or not isinstance(position, int)
        or not 0 <= position <= MAX_POSITION
    ):
        raise InvalidInput(f"invalid position {position!r}: an int from 0 to 2**63 - 1")
