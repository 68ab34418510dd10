"""`Context`: what a handler gets beside its event(s), and the scope it shares with its run.

A handler's writes go through `Context.append`: buffered, given deterministic
ids, and committed by the partition run together with the group's checkpoint.
Only the runtime constructs a `Context` (`Context._deliver`, once per handler
call), so the class holds no logic about when or how often it is called.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec

from tidelog import codec
from tidelog.engines.contract import GroupEngine, due_time
from tidelog.model import (
    ANY,
    AppendRequest,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    validate_stream_name,
)

from ._dlq import DLQ_NAMESPACE

__all__ = ["Context", "DeliveryScope"]


@dataclass(frozen=True, slots=True)
class DeliveryScope:
    """What every `Context` of one partition run shares: built once, not per event."""

    store: GroupEngine
    group: str
    category: str
    handler: str
    member: str
    partition: int
    claim: int
    registry: codec.EventRegistry | None


_new_object = object.__new__


class Context:
    """What a handler gets beside its event(s).

    `append` buffers the handler's writes; they are committed when the handler
    returns, atomically with the group's checkpoint on engines with
    transactions. Their event ids are derived from the group and the source
    event (`idempotency_key`), so a redelivered event writes nothing twice.
    """

    __slots__ = {
        "_appends": "Created by the first `append`: most handlings append nothing.",
        "_count": "Effects appended so far: the number of the next one (part of its id).",
        "_key": "`idempotency_key`, once asked for.",
        "_scope": "What every delivery of the partition run shares.",
        "_source": "The event(s) delivered.",
        "attempt": "1 on first delivery to the handler in this process, then 2, 3 ... on retries.",
        "generation": "The group generation this delivery belongs to.",
    }
    _scope: DeliveryScope
    generation: int
    attempt: int
    _source: tuple[RecordedEvent, ...]
    _appends: dict[str, tuple[list[NewEvent], ExpectedVersion]] | None
    _count: int
    _key: str | None

    def __init__(
        self,
        *,
        store: GroupEngine,
        group: str,
        category: str,
        handler: str,
        member: str,
        generation: int,
        partition: int,
        claim: int,
        attempt: int,
        source: Sequence[RecordedEvent],
        registry: codec.EventRegistry | None,
    ) -> None:
        self._scope = DeliveryScope(
            store, group, category, handler, member, partition, claim, registry
        )
        self.generation = generation
        self.attempt = attempt
        self._source = tuple(source)
        self._appends = None
        self._count = 0
        self._key = None

    @classmethod
    def _deliver(
        cls,
        scope: DeliveryScope,
        generation: int,
        attempt: int,
        source: tuple[RecordedEvent, ...],
    ) -> Context:
        """The runtime's constructor, once per handler call: sets what `__init__` sets.

        It takes the run's scope as is and skips `__init__` (a call less): this
        runs once per delivered event (`PartitionRun._work_streams` has it
        written out: keep the two alike).
        """
        self = _new_object(cls)
        self._scope = scope
        self.generation = generation
        self.attempt = attempt
        self._source = source
        self._appends = None
        self._count = 0
        self._key = None
        return self

    @property
    def store(self) -> GroupEngine:
        """The store, for reads. Write through `append` to keep effects exactly-once."""
        return self._scope.store

    @property
    def group(self) -> str:
        return self._scope.group

    @property
    def category(self) -> str:
        return self._scope.category

    @property
    def handler(self) -> str:
        return self._scope.handler

    @property
    def member(self) -> str:
        return self._scope.member

    @property
    def partition(self) -> int:
        return self._scope.partition

    @property
    def claim(self) -> int:
        """Increases each time this process (re)starts a partition from its checkpoint."""
        return self._scope.claim

    @property
    def idempotency_key(self) -> str:
        """Stable across redeliveries of the same event (for a batch: of the same list).

        Derived on first use: most handlers never ask, and formatting a UUID
        would cost as much as the rest of a delivery.
        """
        if self._key is None:
            if len(self._source) == 1:
                key = str(self._source[0].id)
            else:
                key = str(uuid.uuid5(DLQ_NAMESPACE, ",".join(str(e.id) for e in self._source)))
            self._key = f"{self.group}:{key}"
        return self._key

    @property
    def event(self) -> RecordedEvent:
        """The (first) source event."""
        return self._source[0]

    def append(
        self,
        stream: str,
        events: Sequence[NewEvent | msgspec.Struct],
        expected_version: ExpectedVersion = ANY,
        *,
        deliver_at: datetime | None = None,
        deliver_after: timedelta | None = None,
    ) -> None:
        """Buffer an append, committed when the handler returns successfully.

        With `deliver_at` or `deliver_after` ("retry this business step in an
        hour") the events are scheduled instead, when the handler has returned
        and just before its commit (see docs/scheduling.md); their ids are as
        deterministic as any effect's, so a handling that is retried schedules
        the same events again, which keeps one.

        Typed events (`@tidelog.event` Structs) are encoded. Each event gets a
        deterministic id; causation and correlation ids are set from the source
        event. Appends to the same stream within one handling are merged (the
        first expected version counts). A conflict fails the handling: it is
        retried, and parked after `max_attempts`.
        """
        name = validate_stream_name(stream)
        due = due_time(deliver_at, deliver_after)
        source = self._source[0]
        correlation = source.metadata.get("correlationid", str(source.id))
        registry = self._scope.registry
        out: list[NewEvent] = []
        for e in events:
            new = e if isinstance(e, NewEvent) else codec.encode(e, registry=registry)
            meta = {"causationid": str(source.id), "correlationid": correlation, **new.metadata}
            event_id = uuid.uuid5(DLQ_NAMESPACE, f"{self.idempotency_key}\x00effect:{self._count}")
            self._count += 1
            if due is None:
                out.append(replace_event(new, id=event_id, metadata=meta))
            else:
                out.append(replace_event(new, id=event_id, metadata=meta, deliver_at=due))
        if self._appends is None:
            self._appends = {}
        if name in self._appends:
            self._appends[name][0].extend(out)
        else:
            self._appends[name] = (out, expected_version)

    def _requests(self) -> dict[str, AppendRequest]:
        return {
            s: AppendRequest(events=tuple(evs), expected_version=ev)
            for s, (evs, ev) in (self._appends or {}).items()
        }


def replace_event(event: NewEvent, **changes: Any) -> NewEvent:
    return msgspec.structs.replace(event, **changes)
