"""Every error tidelog raises, in one tree.

Callers catch by type, never by message text; each error carries what went
wrong as attributes.

    TidelogError
    ├── InvalidInput (also ValueError)       bad input from the caller; nothing changed
    │   ├── InvalidStreamName
    │   ├── InvalidEvent
    │   │   ├── DuplicateEventId              ids already stored elsewhere, or a mix of old and new
    │   │   ├── UnknownEventType              no event class is registered for a type name
    │   │   └── SchemaViolation               event data does not match its registered schema
    │   ├── InvalidExpectedVersion
    │   ├── InvalidURL
    │   └── IncompatibleSchema                a new schema version breaks the compatibility mode
    ├── WrongExpectedVersion                 optimistic concurrency conflict
    ├── StreamDeleted                        the stream carries a tombstone
    ├── AggregateNotFound                    no events for the aggregate asked for
    ├── GroupError
    │   └── StaleGeneration                  a fenced (stale) consumer-group member
    ├── AccessDenied                         missing or invalid credentials, or no grant
    ├── NotSupported                         this engine refuses the feature (documented)
    ├── StoreClosed                          the store was closed
    └── StoreUnavailable                     the engine's backend failed or is out of reach

Driver errors (sqlite3, asyncpg, nats) never escape an engine: each engine
translates them in one place into this tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeAlias
from uuid import UUID

from tidelog._redact import redact_url

__all__ = [
    "AggregateNotFound",
    "AccessDenied",
    "DuplicateEventId",
    "GroupError",
    "IncompatibleSchema",
    "InvalidEvent",
    "InvalidExpectedVersion",
    "InvalidInput",
    "InvalidStreamName",
    "InvalidURL",
    "NotSupported",
    "SchemaViolation",
    "StaleGeneration",
    "StoreClosed",
    "StoreUnavailable",
    "StreamDeleted",
    "TidelogError",
    "UnknownEventType",
    "WrongExpectedVersion",
]


Interface: TypeAlias = Literal["python", "http", "cli"]
"""Who reads an error message: a Python caller, an HTTP client, a command-line user."""


class TidelogError(Exception):
    """The root of every error tidelog raises."""

    def message_for(self, interface: Interface) -> str:
        """The message in the words of the interface the caller typed into.

        `str(error)` is the Python form (`NO_STREAM`); the HTTP API and the
        command line take `no_stream`, so an error about an expected version
        says `no_stream` there. Most messages read the same everywhere.
        """
        return str(self)


def _spelled(value: object, interface: Interface) -> str:
    """An expected or actual version as `interface` spells it.

    A `tidelog.StreamState` (recognised by shape: this module imports nothing
    of tidelog's) is `NO_STREAM` in Python and `no_stream` on the wire and the
    command line; a missing version (a stream with no events) is `None` in
    Python and `no_stream` elsewhere.
    """
    name, word = getattr(value, "name", None), getattr(value, "value", None)
    if isinstance(name, str) and isinstance(word, str):
        return name if interface == "python" else word
    if value is None:
        return "None" if interface == "python" else "no_stream"
    return str(value)


class InvalidInput(TidelogError, ValueError):
    """Input from the caller is malformed. The store was not changed."""


class InvalidStreamName(InvalidInput):
    """A stream name breaks the naming rules (see `tidelog.model.validate_stream_name`)."""

    def __init__(self, name: object, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"invalid stream name {name!r}: {reason}")


class InvalidEvent(InvalidInput):
    """An event to append is malformed (type, metadata, id or data)."""


class DuplicateEventId(InvalidEvent):
    """Event ids that are already stored, in a way that is not an idempotent retry.

    An append whose ids are *all* stored in the same stream is a retry and returns
    the original result; this error is for a mix of stored and new ids, or ids
    stored in another stream.
    """

    def __init__(
        self, stream: str, event_ids: Sequence[UUID], *, in_other_stream: bool = False
    ) -> None:
        self.stream = stream
        self.event_ids = tuple(event_ids)
        self.in_other_stream = in_other_stream
        """Some of the ids are stored in another stream than `stream` (which one is not
        said: the caller may have no right to read it)."""
        ids = ", ".join(str(i) for i in self.event_ids[:5])
        if in_other_stream:
            message = (
                f"event id {ids} is already stored in another stream, so it cannot be "
                f"appended to {stream!r}: an event id is stored once, in one stream"
            )
        else:
            message = (
                f"append to {stream!r} mixes new events with already stored ids ({ids}); "
                "an idempotent retry must repeat exactly the same events"
            )
        super().__init__(message)


class UnknownEventType(InvalidEvent):
    """No event class is registered for this type name (or class) in the registry used."""

    def __init__(self, type_name: str, message: str | None = None) -> None:
        self.type_name = type_name
        # `message`: the schema registry speaks of subjects and schemas, not classes
        super().__init__(message or f"no event class registered for {type_name!r}")


class SchemaViolation(InvalidEvent):
    """Event data does not match the JSON Schema registered for its type and version.

    `path` names the offending field (JSON path such as `$.customer.email`).
    """

    def __init__(self, subject: str, version: int, path: str, reason: str) -> None:
        self.subject = subject
        self.version = version
        self.path = path
        self.reason = reason
        super().__init__(f"{subject!r} v{version} data invalid at {path}: {reason}")


class IncompatibleSchema(InvalidInput):
    """A schema was refused: it breaks the subject's compatibility mode.

    `problems` lists each rule broken, as readable strings naming the field.
    """

    def __init__(self, subject: str, mode: str, problems: Sequence[str]) -> None:
        self.subject = subject
        self.mode = mode
        self.problems = tuple(problems)
        super().__init__(
            f"schema for {subject!r} is not {mode}-compatible: " + "; ".join(self.problems)
        )


class InvalidExpectedVersion(InvalidInput):
    """An expected version that is neither ANY, NO_STREAM, STREAM_EXISTS nor an int >= 0."""

    def __init__(self, value: object) -> None:
        self.value = value
        super().__init__(self.message_for("python"))

    def message_for(self, interface: Interface) -> str:
        choices = {
            "python": "ANY, NO_STREAM, STREAM_EXISTS or an int >= 0",
            "http": '"any", "no_stream", "stream_exists" or an integer >= 0',
            "cli": "any, no_stream, stream_exists or an integer >= 0",
        }[interface]
        return f"invalid expected version {self.value!r}: use {choices}"


class InvalidURL(InvalidInput):
    """A store URL that names no known engine or has malformed options."""

    def __init__(self, url: str, reason: str) -> None:
        # masked here, once, so no engine's error can print a password or token back
        self.url = redact_url(url)
        self.reason = reason
        super().__init__(f"invalid store URL {self.url!r}: {reason}")


class WrongExpectedVersion(TidelogError):
    """The stream's current version is not what the writer expected.

    `actual` is the stream's last version, or None when it has no events.
    """

    def __init__(self, stream: str, expected: object, actual: int | None) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        super().__init__(self.message_for("python"))

    def message_for(self, interface: Interface) -> str:
        return (
            f"wrong expected version for {self.stream!r}: expected "
            f"{_spelled(self.expected, interface)}, actual {_spelled(self.actual, interface)}"
        )


class StreamDeleted(TidelogError):
    """The stream was deleted (tombstoned): it can be neither read nor appended to."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        super().__init__(f"stream {stream!r} is deleted")


class AggregateNotFound(TidelogError):
    """The aggregate has no events (or none at the version or time asked for)."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        super().__init__(f"no aggregate in stream {stream!r}")


class GroupError(TidelogError):
    """A consumer-group operation was refused."""


class StaleGeneration(GroupError):
    """A member acted with a generation that is no longer current (it was fenced).

    Raised when its lease expired, it left, or the group rebalanced since it last
    joined or heartbeated. It must heartbeat (rejoin) and restart from the
    committed checkpoints.
    """

    def __init__(
        self, group: str, category: str, member: str, generation: int, current: int | None
    ) -> None:
        self.group = group
        self.category = category
        self.member = member
        self.generation = generation
        self.current = current
        super().__init__(
            f"member {member!r} of group {group!r} on {category!r} acted with stale "
            f"generation {generation} (current: {current})"
        )


class AccessDenied(TidelogError):
    """The server refused the caller: bad or missing credentials (401) or no grant (403)."""

    def __init__(self, message: str, status: int = 403, *, no_token: bool = False) -> None:
        self.status = status
        self.reason = message
        self.no_token = no_token
        """A server asked for credentials and the client sent no token: say where one goes."""
        super().__init__(self.message_for("python"))

    def message_for(self, interface: Interface) -> str:
        hint = _NO_TOKEN_HINTS[interface] if self.no_token else ""
        return f"{self.reason} ({hint})" if hint else self.reason


_NO_TOKEN_HINTS: dict[Interface, str] = {
    "python": "the server wants a key: tidelog.connect(url, token=...) or token_file=...,"
    " or set TIDELOG_TOKEN or TIDELOG_TOKEN_FILE",
    "cli": "the server wants a key: give it with --token-file PATH, TIDELOG_TOKEN or --token",
    "http": "",
}


class NotSupported(TidelogError):
    """The engine does not offer this feature; the docs say why."""

    def __init__(self, engine: str, feature: str, reason: str = "") -> None:
        self.engine = engine
        self.feature = feature
        self.reason = reason
        super().__init__(
            f"{engine} engine does not support {feature}" + (f": {reason}" if reason else "")
        )


class StoreClosed(TidelogError):
    """The store was closed; open a new one."""

    def __init__(self) -> None:
        super().__init__("the store is closed")


class StoreUnavailable(TidelogError):
    """The engine's backend failed or could not be reached.

    The outcome of a write that raised this is unknown: retry it with the same
    event ids, which makes the retry idempotent.
    """
