"""The HTTP wire format, shared by the server and the remote engine.

Event data travels as the JSON value it is when that keeps every byte
(`embeds_as_json`: embedded with `msgspec.Raw`, so what a reader gets is
exactly what the writer sent) and as `data_base64` otherwise. Errors travel as a code and the
error's attributes, and are turned back into the same exception types by
`raise_wire_error`, so a remote store raises what a local one would.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any, Final
from uuid import UUID

import msgspec

from tidelog import errors
from tidelog.model import (
    AppendResult,
    ExpectedVersion,
    Membership,
    NewEvent,
    RecordedEvent,
    ScheduledEvent,
    StreamInfo,
    StreamState,
    new_event_id,
    parse_expected_version,
)

__all__ = [
    "MAX_DELAY_SECONDS",
    "WireAppend",
    "WireAppendMany",
    "WireCancelled",
    "WireCommit",
    "WireError",
    "WireEvent",
    "WireNewEvent",
    "WireScheduled",
    "WireScheduledEvent",
    "embeds_as_json",
    "error_to_wire",
    "expected_to_wire",
    "raise_wire_error",
]

_NULL: Final = msgspec.Raw(b"null")
_json_decoder: Final = msgspec.json.Decoder(msgspec.Raw)
"""Validates JSON without building Python objects."""


def embeds_as_json(data: bytes) -> bool:
    """Whether `data` can travel as the JSON value it is and arrive byte for byte.

    It must be exactly one JSON value: a decoder keeps the value, not the
    whitespace around it, so `b' {"a": 1} '` would arrive as `b'{"a": 1}'`.
    It must be UTF-8, as JSON text is (the decoder checks the syntax, not the
    encoding), and hold no carriage return: JSON allows one between tokens,
    but Server-Sent Events end a line there and cannot carry it. Any other
    bytes travel as `data_base64`. JSON written by an encoder passes at the
    cost of one validating scan.
    """
    if not data or 13 in data:  # CR; an int is a memchr, a bytes needle a slower search
        return False
    try:
        value = _json_decoder.decode(data)
    except msgspec.DecodeError:
        return False
    if len(value) != len(data):  # whitespace before or after the value
        return False
    if not data.isascii():
        try:
            data.decode()
        except UnicodeDecodeError:
            return False
    return True


def data_to_wire(data: bytes) -> tuple[msgspec.Raw, str | None]:
    """Event bytes as the wire's `data` (JSON embedded as is) or `data_base64` (any other)."""
    if embeds_as_json(data):
        return msgspec.Raw(data), None
    return _NULL, base64.b64encode(data).decode("ascii")


def data_from_wire(data: msgspec.Raw, data_base64: str | None) -> bytes:
    """The event bytes `data_to_wire` sent (a server's answer: trusted to be base64)."""
    return bytes(data) if data_base64 is None else base64.b64decode(data_base64)


class WireNewEvent(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An event to append.

    `data` is any JSON value, stored as the bytes of the value as sent (the
    whitespace around it is not part of it); `data_base64` carries any other
    bytes exactly, such as binary data or JSON with whitespace around it.
    """

    type: str
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    data_base64: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    id: UUID | None = None
    schema_version: int = 1

    def to_new_event(self) -> NewEvent:
        if self.data_base64 is not None:
            if bytes(self.data) not in (b"", b"null"):
                raise errors.InvalidEvent("give either data or data_base64, not both")
            try:
                payload = base64.b64decode(self.data_base64, validate=True)
            except ValueError:
                raise errors.InvalidEvent("data_base64 is not valid base64") from None
        else:
            payload = bytes(self.data)
        return NewEvent(
            type=self.type,
            data=payload,
            metadata=self.metadata,
            id=self.id or new_event_id(),
            schema_version=self.schema_version,
        )

    @classmethod
    def from_new_event(cls, event: NewEvent) -> WireNewEvent:
        data, data_base64 = data_to_wire(event.data)
        return cls(
            type=event.type,
            data=data,
            data_base64=data_base64,
            metadata=event.metadata,
            id=event.id,
            schema_version=event.schema_version,
        )


class WireAppend(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An append to one stream.

    `expected_version`: an int, "any", "no_stream" or "stream_exists".
    `deliver_at` (RFC 3339 with an offset) or `deliver_after` (seconds)
    schedule the append (one stream's append only; see docs/scheduling.md).
    """

    events: list[WireNewEvent]
    expected_version: int | str = "any"
    deliver_at: datetime | None = None
    deliver_after: float | None = None

    def delay(self) -> timedelta | None:
        """`deliver_after` as a timedelta; refused beyond `MAX_DELAY_SECONDS` or below 0."""
        if self.deliver_after is None:
            return None
        if not 0 <= self.deliver_after <= MAX_DELAY_SECONDS:
            raise errors.InvalidEvent(f"deliver_after must be 0 to {MAX_DELAY_SECONDS} seconds")
        return timedelta(seconds=self.deliver_after)

    @property
    def scheduled(self) -> bool:
        return self.deliver_at is not None or self.deliver_after is not None


MAX_DELAY_SECONDS: Final = 100 * 366 * 86_400
"""A century: a longer delay is a mistake, and timedelta arithmetic would overflow."""


class WireScheduledEvent(msgspec.Struct, kw_only=True):
    """A pending scheduled event, as `GET /v1/scheduled` lists it.

    Every field of `ScheduledEvent` under its own name, plus `data_base64`, so
    the conversions copy the fields by name and a field added to the model
    travels without a change here (cheap enough: listing is an admin read, not
    the event feed, whose `WireEvent` spells its fields out for speed).
    """

    id: UUID
    stream: str
    due_at: datetime
    type: str
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    data_base64: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    schema_version: int = 1
    expected_version: int | str = "any"
    batch: UUID
    seq: int = 0

    @classmethod
    def of(cls, e: ScheduledEvent) -> WireScheduledEvent:
        fields = msgspec.structs.asdict(e)
        fields["data"], fields["data_base64"] = data_to_wire(e.data)
        fields["expected_version"] = expected_to_wire(e.expected_version)
        return cls(**fields)

    def to_scheduled(self) -> ScheduledEvent:
        fields = msgspec.structs.asdict(self)
        fields["data"] = data_from_wire(self.data, fields.pop("data_base64"))
        fields["expected_version"] = parse_expected_version(self.expected_version)
        return ScheduledEvent(**fields)


class WireScheduled(msgspec.Struct, kw_only=True):
    """`GET /v1/scheduled`: pending events, earliest due first, and how many are pending.

    `pending` counts the whole store; it is null unless the caller may read the
    whole log (a count across streams is not for a caller limited to some).
    """

    events: list[WireScheduledEvent]
    pending: int | None = None


class WireCancelled(msgspec.Struct, kw_only=True):
    cancelled: bool


class WireAppendMany(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    streams: dict[str, WireAppend]


class WireCommit(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    partition: int
    position: int
    member: str
    generation: int
    appends: dict[str, WireAppend] | None = None


class WireJoin(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of a join: the lease, and whether the member hands partitions over."""

    lease: float = 10.0
    cooperative: bool = False


class WireHeartbeat(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of a heartbeat: the lease, and the partitions the member released."""

    lease: float = 10.0
    release: list[int] = msgspec.field(default_factory=list)


class WireEvent(msgspec.Struct, kw_only=True):
    """A recorded event as the server sends it.

    `data` is the event's bytes as a JSON value when they are exactly one JSON
    value in UTF-8, with no whitespace around it and no carriage return;
    otherwise `data` is null and `data_base64` holds the bytes. Either way a
    reader gets back every byte the writer stored.
    """

    id: UUID
    stream: str
    version: int
    position: int
    type: str
    data: msgspec.Raw
    data_base64: str | None = None
    metadata: dict[str, Any]
    recorded_at: datetime
    schema_version: int

    @classmethod
    def from_recorded(cls, e: RecordedEvent) -> WireEvent:
        data, data_base64 = data_to_wire(e.data)
        return cls(
            id=e.id,
            stream=e.stream,
            version=e.version,
            position=e.position,
            type=e.type,
            data=data,
            data_base64=data_base64,
            metadata=e.metadata,
            recorded_at=e.recorded_at,
            schema_version=e.schema_version,
        )

    def to_recorded(self) -> RecordedEvent:
        data = data_from_wire(self.data, self.data_base64)
        return RecordedEvent(
            id=self.id,
            stream=self.stream,
            version=self.version,
            position=self.position,
            type=self.type,
            data=data,
            metadata=self.metadata,
            recorded_at=self.recorded_at,
            schema_version=self.schema_version,
        )


class WirePage(msgspec.Struct, kw_only=True):
    events: list[WireEvent]


class WireHead(msgspec.Struct, kw_only=True):
    position: int


class WireCount(msgspec.Struct, kw_only=True):
    count: int


class WireInfo(msgspec.Struct, kw_only=True):
    engine: str
    partition_count: int
    version: str


class WireStreams(msgspec.Struct, kw_only=True):
    streams: list[StreamInfo]


class WireGroup(msgspec.Struct, kw_only=True):
    membership: Membership | None
    checkpoints: dict[int, int]


class WireGroups(msgspec.Struct, kw_only=True):
    groups: list[tuple[str, str]]


class WireResults(msgspec.Struct, kw_only=True):
    results: dict[str, AppendResult]


class WireError(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An error response: a stable `code`, a message, and the error's attributes."""

    code: str
    message: str
    stream: str | None = None
    expected: int | str | None = None
    actual: int | None = None
    group: str | None = None
    category: str | None = None
    member: str | None = None
    generation: int | None = None
    current: int | None = None
    event_ids: list[UUID] | None = None
    feature: str | None = None
    field: str | None = None
    """The request field that is wrong, when the error knows it."""
    reason: str | None = None
    """Why a name was refused (`invalid_stream_name`)."""
    in_other_stream: bool | None = None
    """`duplicate_event_id`: an id is stored in another stream (not a retry gone wrong)."""


def expected_to_wire(expected: ExpectedVersion) -> int | str:
    return expected.value if isinstance(expected, StreamState) else expected


# status codes: client mistakes are 4xx; only an unavailable backend is a 5xx
_ERRORS: Final[dict[type[errors.TidelogError], tuple[str, int]]] = {
    errors.WrongExpectedVersion: ("wrong_expected_version", 409),
    errors.DuplicateEventId: ("duplicate_event_id", 409),
    errors.StreamDeleted: ("stream_deleted", 410),
    errors.StaleGeneration: ("stale_generation", 409),
    errors.InvalidStreamName: ("invalid_stream_name", 400),
    errors.InvalidExpectedVersion: ("invalid_expected_version", 400),
    errors.InvalidEvent: ("invalid_event", 400),
    errors.InvalidURL: ("invalid_input", 400),
    errors.InvalidInput: ("invalid_input", 400),
    errors.GroupError: ("group_error", 400),
    errors.NotSupported: ("not_supported", 422),
    errors.StoreClosed: ("unavailable", 503),
    errors.StoreUnavailable: ("unavailable", 503),
}


def error_to_wire(exc: errors.TidelogError) -> tuple[WireError, int]:
    """The wire form and HTTP status of an error (the most specific class wins)."""
    for cls in type(exc).__mro__:
        if cls in _ERRORS:
            code, status = _ERRORS[cls]
            break
    else:
        code, status = "error", 400
    if isinstance(exc, errors.AccessDenied):
        code, status = ("unauthorized" if exc.status == 401 else "forbidden"), exc.status
    wire = WireError(code=code, message=exc.message_for("http"))
    if isinstance(exc, errors.WrongExpectedVersion):
        wire.stream = exc.stream
        wire.expected = (
            expected_to_wire(exc.expected)
            if isinstance(exc.expected, (StreamState, int))
            else str(exc.expected)
        )
        wire.actual = exc.actual
    elif isinstance(exc, errors.DuplicateEventId):
        wire.stream, wire.event_ids = exc.stream, list(exc.event_ids)
        wire.in_other_stream = exc.in_other_stream or None
    elif isinstance(exc, errors.StreamDeleted):
        wire.stream = exc.stream
    elif isinstance(exc, errors.StaleGeneration):
        wire.group, wire.category, wire.member = exc.group, exc.category, exc.member
        wire.generation, wire.current = exc.generation, exc.current
    elif isinstance(exc, errors.NotSupported):
        wire.feature = exc.feature
    elif isinstance(exc, errors.InvalidStreamName):
        wire.stream, wire.reason = str(exc.name)[:250], exc.reason
    return wire, status


def raise_wire_error(wire: WireError, status: int) -> None:
    """Raise the tidelog error a server answered with (the inverse of `error_to_wire`)."""
    code = wire.code
    if code == "wrong_expected_version":
        expected: object = wire.expected
        if isinstance(expected, str):
            expected = parse_expected_version(expected)
        raise errors.WrongExpectedVersion(wire.stream or "", expected, wire.actual)
    if code == "duplicate_event_id":
        raise errors.DuplicateEventId(
            wire.stream or "", wire.event_ids or [], in_other_stream=bool(wire.in_other_stream)
        )
    if code == "stream_deleted":
        raise errors.StreamDeleted(wire.stream or "")
    if code == "stale_generation":
        raise errors.StaleGeneration(
            wire.group or "",
            wire.category or "",
            wire.member or "",
            wire.generation if wire.generation is not None else -1,
            wire.current,
        )
    if code == "invalid_stream_name":
        raise errors.InvalidStreamName(wire.stream, wire.reason or wire.field or wire.message)
    if code == "invalid_expected_version":
        raise errors.InvalidExpectedVersion(wire.expected)
    if code == "invalid_event":
        raise errors.InvalidEvent(wire.message)
    if code == "group_error":
        raise errors.GroupError(wire.message)
    if code in ("unauthorized", "forbidden"):
        raise errors.AccessDenied(wire.message, 401 if code == "unauthorized" else 403)
    if code == "not_supported":
        raise errors.NotSupported("remote", wire.feature or "?", wire.message)
    if code == "unavailable" or status >= 500:
        raise errors.StoreUnavailable(wire.message)
    raise errors.InvalidInput(wire.message)
