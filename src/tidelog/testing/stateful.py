"""The property-based model test: an engine must agree with the memory engine.

Subclass `ModelSuite` under a name pytest collects and give it a factory::

    class TestSQLiteModel(ModelSuite):
        async def open_store(self, tmp_path):
            return await tidelog.connect(f"sqlite:///{tmp_path}/{uuid4()}.db")

Hypothesis drives random sequences of appends (fresh, retried, mixed,
multi-stream), reads, deletes, subscriptions and group operations against the
engine and against a `MemoryEngine` with the same partition count. After every
operation both must have returned the same value or raised the same error with
the same attributes. Both stores start empty, so positions, versions and group
generations must be identical, not merely equivalent.

The state machine is synchronous (hypothesis drives it), so each example owns
an event loop on which both stores run; the loop is closed at teardown.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final
from uuid import UUID

import hypothesis.strategies as st
import msgspec
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

import tidelog
from tidelog.engines.memory import MemoryConfig, MemoryEngine

__all__ = ["ModelSuite", "model_settings"]

WAIT = 20.0
"""Upper bound for one operation: a hang becomes a failure, never a pass."""

LEASE = 300.0
"""Leases far longer than any example, so wall-clock expiry never enters the model."""

GROUP = "g"
STREAMS = ("order-1", "order-2", "invoice-1", "user-1", "$dlq-g")
CATEGORIES = ("order", "invoice", "user", "$dlq")
TYPES = ("Created", "Paid", "Shipped")
MEMBERS = ("m1", "m2", "m3")
GROUP_CATEGORIES = ("order", "invoice")

streams = st.sampled_from(STREAMS)
expected_versions: st.SearchStrategy[tidelog.ExpectedVersion] = st.one_of(
    st.sampled_from([tidelog.ANY, tidelog.NO_STREAM, tidelog.STREAM_EXISTS]),
    st.integers(0, 4),
)
JSON_VALUES = (b'{"a": 1}', b"[1,\n2]", b'"\xe2\x80\xa8"', b"0", b"null")
JSON_SPACE = (b"", b" ", b"\t", b"\n", b"\r\n")
event_data: st.SearchStrategy[bytes] = st.one_of(
    st.binary(max_size=6),
    st.builds(
        lambda before, value, after: before + value + after,
        st.sampled_from(JSON_SPACE),
        st.sampled_from(JSON_VALUES),
        st.sampled_from(JSON_SPACE),
    ),
)
"""Any bytes, and JSON that is easy to spoil in transit: whitespace around the value,
line ends and U+2028 (a line end for some readers) inside it."""
EventSpec = tuple[str, bytes, dict[str, Any]]
event_specs: st.SearchStrategy[EventSpec] = st.tuples(
    st.sampled_from(TYPES),
    event_data,
    st.dictionaries(st.sampled_from(["correlationid", "n"]), st.integers(-3, 3), max_size=2),
)
batches_of_specs = st.lists(event_specs, min_size=1, max_size=3)
category_filters = st.none() | st.frozensets(st.sampled_from(CATEGORIES), max_size=2)
type_filters = st.none() | st.frozensets(st.sampled_from(TYPES), max_size=2)
partition_filters = st.none() | st.frozensets(st.integers(0, 5), max_size=3)
log_filters = st.fixed_dictionaries(
    {"categories": category_filters, "types": type_filters, "partitions": partition_filters}
)
"""The filters `read_all` and `subscribe` share, as their keyword arguments."""
limits = st.none() | st.integers(0, 4)


_CLOCK_FIELDS: Final = frozenset({"recorded_at", "lease_expires_at"})
"""Fields holding wall-clock times: two engines may legitimately disagree on them."""


def _normalize(value: object) -> object:
    """A comparable form of a result: every field of a value but its wall-clock times.

    Field by field from the struct's own definition, so a field added to a
    value type is compared without touching this suite.
    """
    if isinstance(value, msgspec.Struct):
        return (
            type(value).__name__,
            *(
                _normalize(getattr(value, name))
                for name in value.__struct_fields__
                if name not in _CLOCK_FIELDS
            ),
        )
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    return value


def _normalize_error(exc: Exception) -> object:
    """An error's type and the attributes callers rely on (never its message)."""
    if isinstance(exc, tidelog.WrongExpectedVersion):
        return ("error", "WrongExpectedVersion", exc.stream, exc.expected, exc.actual)
    if isinstance(exc, tidelog.DuplicateEventId):
        return ("error", "DuplicateEventId", exc.stream, frozenset(exc.event_ids))
    if isinstance(exc, tidelog.StreamDeleted):
        return ("error", "StreamDeleted", exc.stream)
    if isinstance(exc, tidelog.StaleGeneration):
        return (
            "error",
            "StaleGeneration",
            exc.group,
            exc.category,
            exc.member,
            exc.generation,
            exc.current,
        )
    return ("error", type(exc).__name__)


async def _collect(iterator: AsyncIterator[tidelog.RecordedEvent]) -> list[tidelog.RecordedEvent]:
    return [e async for e in iterator]


async def _take(store: tidelog.Store, count: int, **filters: Any) -> list[tidelog.RecordedEvent]:
    subscription = store.subscribe(**filters)
    out: list[tidelog.RecordedEvent] = []
    try:
        while len(out) < count:
            out.append(await anext(subscription))
    finally:
        aclose = getattr(subscription, "aclose", None)
        if aclose is not None:
            await aclose()
    return out


Operation = Callable[[tidelog.Store], Awaitable[Any]]


class ModelSuite:
    """Runs random operation sequences on `open_store()` and on a MemoryEngine; they must agree."""

    supports_multi_stream_atomic: bool = True
    """False: `append_many` is left out of the generated sequences."""
    supports_transactional_commit: bool = True
    """False: commits never carry appends."""
    max_examples: int = 40
    stateful_step_count: int = 30
    shrink: bool = True
    """False skips shrinking a failure to a minimal example (it can take minutes)."""

    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        """Return a fresh, empty, open store. Called once per hypothesis example."""
        raise NotImplementedError

    def test_agrees_with_memory_engine(self, tmp_path: pathlib.Path) -> None:
        run_state_machine_as_test(
            _machine(self, tmp_path),
            settings=model_settings(self.max_examples, self.stateful_step_count, self.shrink),
        )


def model_settings(examples: int, steps: int, shrink: bool = True) -> settings:
    """The hypothesis settings of a model test: no deadline and no example database
    (an engine's timing varies; examples are not kept between runs)."""
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        phases=list(Phase) if shrink else [p for p in Phase if p != Phase.shrink],
    )


def _machine(suite: ModelSuite, tmp_path: pathlib.Path) -> type[RuleBasedStateMachine]:
    """The state machine class for one engine (hypothesis instantiates it per example)."""

    class EngineAgreesWithMemory(RuleBasedStateMachine):
        batches = Bundle("batches")

        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.engine: tidelog.Store | None = None
            self.model: MemoryEngine | None = None
            try:
                self.engine = self._run(suite.open_store(tmp_path))
                self.model = MemoryEngine(MemoryConfig(partitions=self.engine.partition_count))
            except BaseException:
                self.teardown()
                raise
            self.next_id = 0
            self.generations: dict[tuple[str, str], int] = {}
            self.written: dict[str, tuple[tidelog.NewEvent, ...]] = {}
            """The last batch appended per stream (when it was stored), to retry later."""

        # ---------------------------------------------------------- plumbing

        def _run(self, awaitable: Awaitable[Any]) -> Any:
            async def bounded() -> Any:
                async with asyncio.timeout(WAIT):
                    return await awaitable

            return self.loop.run_until_complete(bounded())

        def _outcome(self, op: Operation, store: tidelog.Store) -> tuple[object, object]:
            try:
                value = self._run(op(store))
            except Exception as exc:
                return _normalize_error(exc), None
            return _normalize(value), value

        def compare(self, op: Operation) -> object:
            """Run `op` on both stores, assert they agree, return the memory engine's value."""
            assert self.engine is not None
            assert self.model is not None
            expected, value = self._outcome(op, self.model)
            actual, _ = self._outcome(op, self.engine)
            assert actual == expected, f"\nengine: {actual!r}\nmemory: {expected!r}"
            return value

        def fresh(self, specs: list[EventSpec]) -> tuple[tidelog.NewEvent, ...]:
            out = []
            for type_, data, metadata in specs:
                self.next_id += 1
                out.append(
                    tidelog.NewEvent(
                        type=type_, data=data, metadata=metadata, id=UUID(int=self.next_id)
                    )
                )
            return tuple(out)

        def teardown(self) -> None:
            try:
                for store in (self.engine, self.model):
                    if store is not None:
                        self.loop.run_until_complete(store.close())
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

        # ---------------------------------------------------------- streams

        @initialize(
            target=batches,
            seed=st.lists(st.tuples(streams, batches_of_specs), max_size=6),
        )
        def seed(self, seed: list[tuple[str, list[EventSpec]]]) -> object:
            """Start most examples with some events so reads and filters have work to do."""
            written = []
            for stream, specs in seed:
                written.append(self._append(stream, specs, tidelog.ANY))
            return multiple(*written)

        def _append(
            self, stream: str, specs: list[EventSpec], expected: tidelog.ExpectedVersion
        ) -> tuple[str, tuple[tidelog.NewEvent, ...]]:
            events = self.fresh(specs)
            if isinstance(
                self.compare(lambda s: s.append(stream, events, expected)), tidelog.AppendResult
            ):
                self.written[stream] = events
            return stream, events

        @rule(target=batches, stream=streams, specs=batches_of_specs, expected=expected_versions)
        def append(
            self, stream: str, specs: list[EventSpec], expected: tidelog.ExpectedVersion
        ) -> tuple[str, tuple[tidelog.NewEvent, ...]]:
            return self._append(stream, specs, expected)

        @rule(target=batches, stream=streams, specs=batches_of_specs)
        def append_any(
            self, stream: str, specs: list[EventSpec]
        ) -> tuple[str, tuple[tidelog.NewEvent, ...]]:
            """Appends that usually succeed, so streams grow long enough to page through."""
            return self._append(stream, specs, tidelog.ANY)

        @rule(
            batch=batches,
            other_stream=streams,
            expected=expected_versions,
            mode=st.sampled_from(["same", "same", "tail", "with-fresh", "doubled", "elsewhere"]),
        )
        def retry(
            self,
            batch: tuple[str, tuple[tidelog.NewEvent, ...]],
            other_stream: str,
            expected: tidelog.ExpectedVersion,
            mode: str,
        ) -> None:
            """Re-append stored ids: an idempotent retry, a mix, another stream, or a repeat."""
            stream, events = batch
            if mode == "tail":
                events = events[1:] or events
            elif mode == "with-fresh":
                events = events + self.fresh([("Created", b"", {})])
            elif mode == "doubled":
                events = events + events[:1]
            elif mode == "elsewhere":
                stream = other_stream
            self.compare(lambda s: s.append(stream, events, expected))

        @precondition(lambda self: suite.supports_multi_stream_atomic)
        @rule(
            requests=st.dictionaries(
                streams, st.tuples(batches_of_specs, expected_versions), min_size=1, max_size=3
            )
        )
        def append_many(
            self, requests: dict[str, tuple[list[EventSpec], tidelog.ExpectedVersion]]
        ) -> None:
            built = {
                stream: tidelog.AppendRequest(self.fresh(specs), expected)
                for stream, (specs, expected) in requests.items()
            }
            self.compare(lambda s: s.append_many(built))

        @rule(
            stream=streams,
            from_version=st.none() | st.integers(-1, 6),
            backwards=st.booleans(),
            limit=limits,
        )
        def read_stream(
            self, stream: str, from_version: int | None, backwards: bool, limit: int | None
        ) -> None:
            self.compare(
                lambda s: _collect(
                    s.read_stream(
                        stream, from_version=from_version, backwards=backwards, limit=limit
                    )
                )
            )

        @rule(stream=streams, expected=expected_versions)
        def delete_stream(self, stream: str, expected: tidelog.ExpectedVersion) -> None:
            """Delete, then check the tombstone at once: reads, and a retry of stored events."""
            self.compare(lambda s: s.delete_stream(stream, expected))
            self.compare(lambda s: _collect(s.read_stream(stream)))
            stored = self.written.get(stream)
            if stored is not None:
                self.compare(lambda s: s.append(stream, stored, tidelog.NO_STREAM))
            fresh = self.fresh([("Created", b"", {})])
            self.compare(lambda s: s.append(stream, fresh))

        @rule(category=st.none() | st.sampled_from(CATEGORIES))
        def list_streams(self, category: str | None) -> None:
            async def listed(s: tidelog.Store) -> list[tidelog.StreamInfo]:
                return [i async for i in s.list_streams(category)]

            self.compare(listed)

        # ---------------------------------------------------------- log

        @rule(from_position=st.integers(0, 12), filters=log_filters, limit=limits)
        def read_all(self, from_position: int, filters: dict[str, Any], limit: int | None) -> None:
            self.compare(
                lambda s: _collect(s.read_all(from_position=from_position, limit=limit, **filters))
            )

        @rule(from_position=st.integers(0, 6), filters=log_filters, count=st.integers(1, 6))
        def subscribe(self, from_position: int, filters: dict[str, Any], count: int) -> None:
            """Take as many events as are already stored (a live wait would never end)."""
            assert self.model is not None
            available = self._run(
                _collect(self.model.read_all(from_position=from_position, **filters))
            )
            take = min(count, len(available))
            if take:
                self.compare(lambda s: _take(s, take, from_position=from_position, **filters))

        @invariant()
        def same_state(self) -> None:
            """After every step: the same head and the same log, event for event."""
            if self.engine is None:
                return
            self.compare(lambda s: s.last_position())
            self.compare(lambda s: _collect(s.read_all()))

        # ---------------------------------------------------------- groups

        def _remember(self, category: str, member: str, membership: object) -> None:
            if isinstance(membership, tidelog.Membership):
                self.generations[(category, member)] = membership.generation
            self._same_group(category)

        def _same_group(self, category: str) -> None:
            """After a group changed: the same generation, members and partitions."""
            self.compare(lambda s: s.describe_group(GROUP, category))

        @rule(
            category=st.sampled_from(GROUP_CATEGORIES),
            member=st.sampled_from(MEMBERS),
            cooperative=st.booleans(),
        )
        def join(self, category: str, member: str, cooperative: bool) -> None:
            got = self.compare(
                lambda s: s.join_group(
                    GROUP, category, member, lease=LEASE, cooperative=cooperative
                )
            )
            self._remember(category, member, got)

        @rule(
            category=st.sampled_from(GROUP_CATEGORIES),
            member=st.sampled_from(MEMBERS),
            release=st.lists(st.integers(-1, 5), max_size=3),
        )
        def heartbeat(self, category: str, member: str, release: list[int]) -> None:
            """With partitions released: those asked for move, the others change nothing."""
            got = self.compare(
                lambda s: s.heartbeat(GROUP, category, member, lease=LEASE, release=release)
            )
            self._remember(category, member, got)

        @rule(category=st.sampled_from(GROUP_CATEGORIES), member=st.sampled_from(MEMBERS))
        def leave(self, category: str, member: str) -> None:
            self.compare(lambda s: s.leave_group(GROUP, category, member))
            self._same_group(category)

        @rule(
            category=st.sampled_from(GROUP_CATEGORIES),
            member=st.sampled_from(MEMBERS),
            partition=st.integers(0, 5),
            position=st.integers(0, 30),
            stale=st.booleans(),
            appends=st.none() | st.tuples(streams, batches_of_specs, expected_versions),
        )
        def commit(
            self,
            category: str,
            member: str,
            partition: int,
            position: int,
            stale: bool,
            appends: tuple[str, list[EventSpec], tidelog.ExpectedVersion] | None,
        ) -> None:
            generation = self.generations.get((category, member), 0) - (1 if stale else 0)
            requests = None
            if appends is not None and suite.supports_transactional_commit:
                stream, specs, expected = appends
                requests = {stream: tidelog.AppendRequest(self.fresh(specs), expected)}
            self.compare(
                lambda s: s.commit(
                    GROUP,
                    category,
                    partition,
                    position,
                    member=member,
                    generation=generation,
                    appends=requests,
                )
            )
            self.compare(lambda s: s.checkpoints(GROUP, category))

        @rule(category=st.sampled_from(GROUP_CATEGORIES))
        def inspect_groups(self, category: str) -> None:
            self.compare(lambda s: s.checkpoints(GROUP, category))
            self.compare(lambda s: s.describe_group(GROUP, category))
            self.compare(lambda s: s.list_groups())

    return EngineAgreesWithMemory
