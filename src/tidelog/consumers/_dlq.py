"""Parked events: the dead-letter stream `$dlq-<group>` and its state.

A group's parked events live in one system stream, `$dlq-<group>`, as an
append-only history of entries:

    tidelog.Parked          an event failed `max_attempts` times (its error,
                            attempt count and handler), or - with
                            `on_park="park_stream"` - came after a parked
                            event of the same stream
    tidelog.Held            an event of a blocked stream, waiting behind the
                            parked one (`on_park="block"`, the default)
    tidelog.RetryRequested  an operator asked to run it through the handler again
    tidelog.Resolved        it was handled after all
    tidelog.Dropped         an operator gave up on it

Because the history is durable, a stream's "blocked" state survives restarts
and moves with its partition to another member, and the group's checkpoint can
pass a parked event: nothing of a blocked stream is kept only in memory. The
state of every parked event is a fold over the entries (`DlqState.apply`),
computed the same way by workers and by the `tidelog dlq` commands.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final, Literal

import msgspec

from tidelog.engines.contract import GroupEngine
from tidelog.errors import InvalidInput, StreamDeleted
from tidelog.model import NewEvent, RecordedEvent, validate_stream_name

__all__ = [
    "DLQ_NAMESPACE",
    "DlqState",
    "ParkedEvent",
    "ParkedStatus",
    "dlq_stream",
    "drop_parked",
    "entry_id",
    "find_parked",
    "held_entry",
    "list_parked",
    "load_state",
    "parked_entry",
    "resolved_entry",
    "retry_parked",
]

DLQ_NAMESPACE: Final = uuid.UUID("6f1d2c3e-8a4b-5c6d-9e0f-1a2b3c4d5e6f")
"""Namespace of the deterministic ids of DLQ entries and handler effects."""

PARKED: Final = "tidelog.Parked"
HELD: Final = "tidelog.Held"
RETRY: Final = "tidelog.RetryRequested"
RESOLVED: Final = "tidelog.Resolved"
DROPPED: Final = "tidelog.Dropped"


class ParkedStatus(enum.Enum):
    PARKED = "parked"
    """Failed (or parked behind a failure); waits for `tidelog dlq retry` or `drop`."""
    HELD = "held"
    """Waits behind a parked event of its stream; released when that one is resolved."""
    RETRYING = "retrying"
    """A retry was requested; the partition's owner will run the handler again."""
    RESOLVED = "resolved"
    DROPPED = "dropped"

    @property
    def open(self) -> bool:
        """Still blocks its stream."""
        return self in (ParkedStatus.PARKED, ParkedStatus.HELD, ParkedStatus.RETRYING)


class ParkedEvent(msgspec.Struct, kw_only=True):
    """An event of a group's dead-letter stream and where it stands."""

    group: str
    event: RecordedEvent
    """The original event, unchanged."""
    status: ParkedStatus
    handler: str
    error: str | None
    """`repr` of the last exception (None for held events)."""
    error_type: str | None
    attempts: int
    reason: str
    """`failed`, `blocked` (held behind a parked event) or `stream_parked`."""
    parked_at: datetime
    dlq_version: int
    """Version in `$dlq-<group>` of the entry that parked it (its order in the DLQ)."""

    @property
    def stream(self) -> str:
        return self.event.stream

    def summary(self) -> dict[str, Any]:
        """Where it stands, as JSON, without the event's content: what `tidelog dlq list`
        and the HTTP routes (`server/_dlq_api`) show; each adds the event in its own shape."""
        return {
            "group": self.group,
            "event_id": str(self.event.id),
            "stream": self.event.stream,
            "version": self.event.version,
            "position": self.event.position,
            "type": self.event.type,
            "status": self.status.value,
            "reason": self.reason,
            "handler": self.handler,
            "attempts": self.attempts,
            "error_type": self.error_type,
            "error": self.error,
            "parked_at": self.parked_at.isoformat(),
        }


class _ParkedData(msgspec.Struct, kw_only=True):
    event: RecordedEvent
    handler: str
    error: str | None = None
    error_type: str | None = None
    attempts: int = 0
    reason: str = "failed"


class _ControlData(msgspec.Struct, kw_only=True):
    event_id: uuid.UUID
    by: str = ""


_ENC: Final = msgspec.json.Encoder()
_PARKED_DEC: Final = msgspec.json.Decoder(_ParkedData)
_CONTROL_DEC: Final = msgspec.json.Decoder(_ControlData)


def dlq_stream(group: str) -> str:
    """The dead-letter stream of a group: `$dlq-<group>`."""
    return validate_stream_name(f"$dlq-{group}")


def entry_id(group: str, event_id: uuid.UUID, what: str) -> uuid.UUID:
    """A deterministic id, so a redelivered park or resolution is an idempotent append."""
    return uuid.uuid5(DLQ_NAMESPACE, f"{group}\x00{event_id}\x00{what}")


def parked_entry(
    group: str,
    event: RecordedEvent,
    *,
    handler: str,
    error: BaseException | None,
    attempts: int,
    reason: Literal["failed", "stream_parked"] = "failed",
    round_: int = 0,
) -> NewEvent:
    data = _ParkedData(
        event=event,
        handler=handler,
        error=None if error is None else repr(error)[:4000],
        error_type=None if error is None else type(error).__qualname__,
        attempts=attempts,
        reason=reason,
    )
    return NewEvent(
        type=PARKED,
        data=_ENC.encode(data),
        metadata={"event_id": str(event.id), "stream": event.stream, "handler": handler},
        id=entry_id(group, event.id, f"parked:{round_}"),
    )


def held_entry(group: str, event: RecordedEvent, *, handler: str) -> NewEvent:
    data = _ParkedData(event=event, handler=handler, reason="blocked")
    return NewEvent(
        type=HELD,
        data=_ENC.encode(data),
        metadata={"event_id": str(event.id), "stream": event.stream, "handler": handler},
        id=entry_id(group, event.id, "held"),
    )


def resolved_entry(group: str, event_id: uuid.UUID, round_: int) -> NewEvent:
    return NewEvent(
        type=RESOLVED,
        data=_ENC.encode(_ControlData(event_id=event_id)),
        metadata={"event_id": str(event_id)},
        id=entry_id(group, event_id, f"resolved:{round_}"),
    )


def _control_entry(kind: str, event_id: uuid.UUID, by: str) -> NewEvent:
    return NewEvent(
        type=kind,
        data=_ENC.encode(_ControlData(event_id=event_id, by=by)),
        metadata={"event_id": str(event_id)},
    )


class DlqState:
    """The fold of a group's DLQ entries: every parked event and whether it blocks its stream.

    `rounds[event_id]` counts the retries requested so far; it makes the ids of
    the entries a retry produces deterministic (a redelivered retry writes the
    same ids and so nothing twice).
    """

    def __init__(self, group: str) -> None:
        self.group = group
        self.entries: dict[uuid.UUID, ParkedEvent] = {}
        self.by_stream: dict[str, list[uuid.UUID]] = {}
        self.rounds: dict[uuid.UUID, int] = {}
        self.next_version = 0

    def apply(self, entry: RecordedEvent) -> None:
        self.next_version = entry.version + 1
        if entry.type in (PARKED, HELD):
            data = _PARKED_DEC.decode(entry.data)
            known = self.entries.get(data.event.id)
            status = ParkedStatus.PARKED if entry.type == PARKED else ParkedStatus.HELD
            if known is not None:
                if status is ParkedStatus.PARKED and known.status in (
                    ParkedStatus.HELD,
                    ParkedStatus.RETRYING,
                ):
                    # a released or retried event failed again: parked anew, keeping
                    # its place in the stream; settled events stay settled
                    known.status = status
                    known.error, known.error_type = data.error, data.error_type
                    known.attempts = data.attempts
                return
            self.entries[data.event.id] = ParkedEvent(
                group=self.group,
                event=data.event,
                status=status,
                handler=data.handler,
                error=data.error,
                error_type=data.error_type,
                attempts=data.attempts,
                reason=data.reason,
                parked_at=entry.recorded_at,
                dlq_version=entry.version,
            )
            self.by_stream.setdefault(data.event.stream, []).append(data.event.id)
            return
        if entry.type not in (RETRY, RESOLVED, DROPPED):
            return
        control = _CONTROL_DEC.decode(entry.data)
        parked = self.entries.get(control.event_id)
        if parked is None:
            return
        if entry.type == RETRY:
            if parked.status.open:
                parked.status = ParkedStatus.RETRYING
                self.rounds[parked.event.id] = self.rounds.get(parked.event.id, 0) + 1
        elif entry.type == RESOLVED:
            parked.status = ParkedStatus.RESOLVED
        elif parked.status.open:
            parked.status = ParkedStatus.DROPPED

    def blocked(self, stream: str, position: int | None = None) -> bool:
        """Whether `stream` has an open (parked, held, retrying) event, before `position`.

        An event *before* the first parked one (a redelivery after a restart)
        is not blocked by it: it was handled once already or never, and goes
        to the handler again.
        """
        return any(
            (p := self.entries[i]).status.open and (position is None or p.event.position < position)
            for i in self.by_stream.get(stream, ())
        )

    def head(self, stream: str) -> ParkedEvent | None:
        """The first open entry of `stream`: the one that must be settled next."""
        for i in self.by_stream.get(stream, ()):
            if self.entries[i].status.open:
                return self.entries[i]
        return None

    def open_streams(self) -> list[str]:
        return [s for s in self.by_stream if self.blocked(s)]


async def read_entries(
    store: GroupEngine, group: str, from_version: int
) -> AsyncIterator[RecordedEvent]:
    if group.startswith("$"):
        return  # `$dlq-$…` is no stream name: such a group (`$scavenger`) has no DLQ
    try:
        async for entry in store.read_stream(dlq_stream(group), from_version=from_version):
            yield entry
    except StreamDeleted:
        return


async def load_state(store: GroupEngine, group: str, state: DlqState | None = None) -> DlqState:
    """Read the group's DLQ (from where `state` stopped) and fold it."""
    state = state or DlqState(group)
    async for entry in read_entries(store, group, state.next_version):
        state.apply(entry)
    return state


async def list_parked(
    store: GroupEngine, group: str, *, include_settled: bool = False
) -> list[ParkedEvent]:
    """The group's parked events in DLQ order (open ones only unless `include_settled`)."""
    state = await load_state(store, group)
    events = sorted(state.entries.values(), key=lambda p: p.dlq_version)
    return [p for p in events if include_settled or p.status.open]


async def find_parked(store: GroupEngine, group: str, event_id: uuid.UUID) -> ParkedEvent:
    """One event of the group's DLQ, settled or not; `InvalidInput` if it was never parked."""
    state = await load_state(store, group)
    parked = state.entries.get(event_id)
    if parked is None:
        raise InvalidInput(f"event {event_id} is not parked in group {group!r}")
    return parked


async def retry_parked(
    store: GroupEngine, group: str, event_id: uuid.UUID, *, by: str = "cli"
) -> ParkedEvent:
    """Ask the partition's owner to run a parked event through its handler again.

    The retry waits until the entries before it in the same stream are settled,
    so per-stream order holds; a retry that fails again parks the event anew.
    """
    parked = await find_parked(store, group, event_id)
    if not parked.status.open:
        raise InvalidInput(f"event {event_id} is already {parked.status.value}")
    await store.append(dlq_stream(group), [_control_entry(RETRY, event_id, by)])
    return parked


async def drop_parked(
    store: GroupEngine, group: str, event_id: uuid.UUID, *, by: str = "cli"
) -> ParkedEvent:
    """Give up on a parked event; held events behind it are then released."""
    parked = await find_parked(store, group, event_id)
    if not parked.status.open:
        raise InvalidInput(f"event {event_id} is already {parked.status.value}")
    await store.append(dlq_stream(group), [_control_entry(DROPPED, event_id, by)])
    return parked


def now() -> datetime:
    return datetime.now(UTC)
