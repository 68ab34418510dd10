"""Unit tests of the vocabulary in `tidelog.model`."""

from __future__ import annotations

import os
import re
import string
import threading
import time
import uuid
from typing import Any, cast

import hypothesis.strategies as st
import msgspec
import pytest
from hypothesis import given, settings

import tidelog
from tidelog.model import (
    MAX_NAME_LENGTH,
    check_expected_version,
    new_event_id,
    parse_expected_version,
    validate_event,
    validate_expected_version,
    validate_stream_name,
)

FAST = settings(max_examples=300, deadline=None, database=None)

# The documented rule: ASCII letters, digits, '_', '-', ':', '@', an optional
# leading '$', not starting with '-', 1..200 characters.
DOCUMENTED = re.compile(r"\$?[A-Za-z0-9_:@][A-Za-z0-9_:@-]*")
NAME_CHARS = string.ascii_letters + string.digits + "_-:@"


@FAST
@given(st.text(max_size=40))
def test_any_accepted_name_matches_the_documented_charset(name: str) -> None:
    try:
        accepted = validate_stream_name(name)
    except tidelog.InvalidStreamName:
        assert DOCUMENTED.fullmatch(name) is None or len(name) > MAX_NAME_LENGTH
        return
    assert accepted == name
    assert DOCUMENTED.fullmatch(name) is not None
    assert name.isascii()
    assert 1 <= len(name) <= MAX_NAME_LENGTH


@FAST
@given(st.text(alphabet=NAME_CHARS + "$./\\ *>%\x00\u200b\u202e", max_size=40))
def test_names_near_the_charset(name: str) -> None:
    ok = DOCUMENTED.fullmatch(name) is not None
    if ok:
        assert validate_stream_name(name) == name
    else:
        with pytest.raises(tidelog.InvalidStreamName):
            validate_stream_name(name)


@FAST
@given(st.from_regex(DOCUMENTED, fullmatch=True).filter(lambda n: len(n) <= MAX_NAME_LENGTH))
def test_every_documented_name_is_accepted(name: str) -> None:
    assert validate_stream_name(name) == name


def test_length_limit() -> None:
    assert validate_stream_name("a" * MAX_NAME_LENGTH) == "a" * MAX_NAME_LENGTH
    with pytest.raises(tidelog.InvalidStreamName):
        validate_stream_name("a" * (MAX_NAME_LENGTH + 1))
    with pytest.raises(tidelog.InvalidStreamName):
        validate_stream_name("a" * 10_000)


@pytest.mark.parametrize("value", [None, 1, b"order-1", ["order-1"]])
def test_non_string_names(value: object) -> None:
    with pytest.raises(tidelog.InvalidStreamName):
        validate_stream_name(value)


@pytest.mark.parametrize(
    ("stream", "category"),
    [
        ("order-42", "order"),
        ("order-42-a", "order"),
        ("order", "order"),
        ("order:eu-1", "order:eu"),
        ("$dlq-billing", "$dlq"),
        ("a@b-c", "a@b"),
    ],
)
def test_category_of(stream: str, category: str) -> None:
    assert tidelog.category_of(stream) == category


@pytest.mark.parametrize(
    ("stream", "partitions", "expected"),
    [
        ("order-1", 16, 15),
        ("order-42", 16, 14),
        ("invoice-7", 16, 12),
        ("$dlq-billing", 16, 9),
        ("a", 16, 3),
        ("order-1", 7, 6),
        ("order-42", 7, 1),
        ("order-1", 1, 0),
    ],
)
def test_partition_of_known_values(stream: str, partitions: int, expected: int) -> None:
    """Pinned values: changing the hash would move streams between partitions of stored data."""
    assert tidelog.partition_of(stream, partitions) == expected


@FAST
@given(st.from_regex(DOCUMENTED, fullmatch=True), st.integers(1, 1024))
def test_partition_of_is_in_range_and_stable(stream: str, partitions: int) -> None:
    p = tidelog.partition_of(stream, partitions)
    assert 0 <= p < partitions
    assert tidelog.partition_of(stream, partitions) == p


@pytest.mark.parametrize("value", [tidelog.ANY, tidelog.NO_STREAM, tidelog.STREAM_EXISTS, 0, 7])
def test_valid_expected_versions(value: tidelog.ExpectedVersion) -> None:
    assert validate_expected_version(value) is value


@pytest.mark.parametrize("value", [-1, True, False, 1.5, "3", 2**63, None, "any"])
def test_invalid_expected_versions(value: object) -> None:
    with pytest.raises(tidelog.InvalidExpectedVersion):
        validate_expected_version(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("any", tidelog.ANY),
        (" No_Stream ", tidelog.NO_STREAM),
        ("STREAM_EXISTS", tidelog.STREAM_EXISTS),
        (tidelog.NO_STREAM, tidelog.NO_STREAM),
        (7, 7),
        ("0", 0),
        ("007", 7),
        (str(2**62 - 1), 2**62 - 1),
        (-1, -1),  # an int is read as it is: its range is validate_expected_version's
    ],
)
def test_parse_expected_version_reads_each_spelling(
    value: object, expected: tidelog.ExpectedVersion
) -> None:
    assert parse_expected_version(value) == expected
    assert parse_expected_version(value, dashes=True) == expected


@pytest.mark.parametrize(
    "value",
    [
        *("no-stream", "stream-exists", "-1", "+1", "1_0", "1e3", "1.5", "²", "١٢", "9" * 20),
        *("", "x", True, None, 1.5, [], {}),
    ],
)
def test_parse_expected_version_refuses_the_rest(value: object) -> None:
    with pytest.raises(tidelog.InvalidExpectedVersion):
        parse_expected_version(value)


def test_only_the_command_line_reads_dashes() -> None:
    assert parse_expected_version("No-Stream", dashes=True) is tidelog.NO_STREAM
    assert parse_expected_version("stream-exists", dashes=True) is tidelog.STREAM_EXISTS
    for value in ("-1", "1-", "a-ny"):
        with pytest.raises(tidelog.InvalidExpectedVersion):
            parse_expected_version(value, dashes=True)


def test_check_expected_version() -> None:
    check_expected_version("s", tidelog.ANY, None)
    check_expected_version("s", tidelog.ANY, 3)
    check_expected_version("s", tidelog.NO_STREAM, None)
    check_expected_version("s", tidelog.STREAM_EXISTS, 0)
    check_expected_version("s", 3, 3)
    for expected, actual in (
        (tidelog.NO_STREAM, 0),
        (tidelog.STREAM_EXISTS, None),
        (2, 3),
        (0, None),
    ):
        with pytest.raises(tidelog.WrongExpectedVersion) as info:
            check_expected_version("s", expected, actual)
        assert (info.value.expected, info.value.actual) == (expected, actual)


def test_validate_event_accepts_a_plain_event() -> None:
    event = tidelog.NewEvent(type="Order.Created:v1@x_y-z", data=b"{}", metadata={"a": [1]})
    assert validate_event(event) is event


@pytest.mark.parametrize(
    "event",
    [
        tidelog.NewEvent(type="has space"),
        tidelog.NewEvent(type=""),
        tidelog.NewEvent(type="x" * 201),
        tidelog.NewEvent(type="ok", data=cast(Any, "str")),
        tidelog.NewEvent(type="ok", metadata={"k": object()}),
        tidelog.NewEvent(type="ok", schema_version=0),
        cast(Any, {"type": "ok"}),
    ],
    ids=["space", "empty", "long", "str-data", "metadata", "schema-version", "dict"],
)
def test_validate_event_refuses(event: Any) -> None:
    with pytest.raises(tidelog.InvalidEvent):
        validate_event(event)


def test_new_event_defaults_and_json_round_trip() -> None:
    a, b = tidelog.NewEvent(type="T"), tidelog.NewEvent(type="T")
    assert a.id != b.id
    assert (a.data, a.metadata, a.schema_version) == (b"", {}, 1)
    decoded = msgspec.json.decode(msgspec.json.encode(a), type=tidelog.NewEvent)
    assert decoded == a


def test_stream_state_repr() -> None:
    assert repr(tidelog.ANY) == "ANY"
    assert repr(tidelog.NO_STREAM) == "NO_STREAM"


def test_new_event_ids_are_uuid7_in_time_order() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    for event_id in ids:
        assert event_id.version == 7 and event_id.variant == uuid.RFC_4122
        assert uuid.UUID(str(event_id)) == event_id  # a real UUID: equal, hashable, parsable
        assert before <= event_id.int >> 80 <= after
    assert len(set(ids)) == len(ids)
    millis = [i.int >> 80 for i in ids]
    assert millis == sorted(millis)


def test_new_event_ids_differ_across_threads() -> None:
    out: list[list[uuid.UUID]] = [[] for _ in range(4)]

    def make(i: int) -> None:
        out[i].extend(new_event_id() for _ in range(5000))

    threads = [threading.Thread(target=make, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [i for chunk in out for i in chunk]
    assert len(set(ids)) == len(ids)


def _random_part() -> bytes:
    return (new_event_id().int & (2**74 - 1)).to_bytes(10)


# Python 3.12+ warns about fork() in a process with threads; the child here only
# makes ids and leaves with os._exit.
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    """The random bits are pooled: a child must not inherit the parent's unused ones."""
    new_event_id()  # the pool now holds unused random bits
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send ten ids' random bits, then leave at once
        os.close(read)
        os.write(write, b"".join(_random_part() for _ in range(10)))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    child = {data[i : i + 10] for i in range(0, len(data), 10)}
    parent = {_random_part() for _ in range(10)}
    assert len(child) == 10
    assert not child & parent


def test_a_recorded_or_scheduled_event_appends_again_as_itself() -> None:
    """`to_new_event` keeps what makes a retry idempotent (the id) and gives the new
    event its own metadata dict, so changing one cannot change the other."""
    from datetime import UTC, datetime

    when = datetime.now(UTC)
    common: dict[str, Any] = {
        "id": new_event_id(),
        "stream": "order-1",
        "type": "Placed",
        "data": b"\x00\x01",
        "metadata": {"k": "v"},
        "schema_version": 3,
    }
    recorded = tidelog.RecordedEvent(version=4, position=9, recorded_at=when, **common)
    scheduled = tidelog.ScheduledEvent(due_at=when, batch=common["id"], **common)
    for source in (recorded, scheduled):
        new = source.to_new_event()
        assert (new.id, new.type, new.data, new.schema_version) == (
            common["id"],
            "Placed",
            b"\x00\x01",
            3,
        )
        assert new.metadata == {"k": "v"} and new.metadata is not source.metadata
        assert new.deliver_at is None
