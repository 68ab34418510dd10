"""The schema registry, stored in the store itself.

Every registration and every compatibility setting is an event in the system
stream `$schemas`, so the registry needs no other database, replicates and
backs up with the log, and works the same on every engine. A registry object
reads that stream into memory (`refresh`) and appends to it with an exact
expected version, so two processes registering at once cannot both win: the
loser re-reads and re-checks.

Subjects are event type names (`OrderPlaced`); a subject's versions are the
event's schema versions (`@tidelog.event("OrderPlaced", version=2)` is
version 2 of subject `OrderPlaced`). Each registration also gets a global id,
as in Confluent's registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from tidelog.codec import DEFAULT_REGISTRY, EventRegistry
from tidelog.engines.contract import Engine, Write
from tidelog.engines.wrapper import StoreWrapper
from tidelog.errors import (
    IncompatibleSchema,
    InvalidInput,
    SchemaViolation,
    UnknownEventType,
    WrongExpectedVersion,
)
from tidelog.model import (
    ANY,
    NO_STREAM,
    AppendResult,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
)
from tidelog.schemas.compatibility import Compatibility, compatibility_problems, schema_problem
from tidelog.schemas.validation import first_error

__all__ = [
    "SCHEMAS_STREAM",
    "SchemaRegistry",
    "SchemaVersion",
    "ValidatingStore",
    "schema_of",
]

SCHEMAS_STREAM: Final = "$schemas"
_REGISTERED: Final = "tidelog.schema.registered"
_CONFIGURED: Final = "tidelog.schema.compatibility"
_RETRIES: Final = 8


class SchemaVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One registered schema: `subject` at `version`, with its global `id`."""

    subject: str
    version: int
    id: int
    schema: dict[str, Any]


class _ConfigSet(msgspec.Struct, frozen=True, kw_only=True):
    subject: str | None
    compatibility: Compatibility


def schema_of(cls: type[msgspec.Struct]) -> dict[str, Any]:
    """The JSON Schema of an event class, with closed object models.

    A msgspec encoder never writes a field its class does not declare, so the
    schema of what this class *writes* is closed (`additionalProperties:
    false`). That is what makes adding an optional field a compatible change
    (see `tidelog.schemas.compatibility`).
    """
    schema: dict[str, Any] = msgspec.json.schema(cls)
    for definition in (schema.get("$defs") or {}).values():
        if (
            isinstance(definition, dict)
            and definition.get("type") == "object"
            and "properties" in definition
            and "additionalProperties" not in definition
        ):
            definition["additionalProperties"] = False
    return schema


def _canonical(schema: Any) -> bytes:
    return msgspec.json.encode(schema, order="sorted")


class SchemaRegistry:
    """Subjects, versions, compatibility modes and validation, kept in `$schemas`."""

    def __init__(self, store: Engine, *, default: Compatibility = Compatibility.BACKWARD) -> None:
        self.store = store
        self._default = default
        self._global: Compatibility | None = None
        self._per_subject: dict[str, Compatibility] = {}
        self._versions: dict[str, dict[int, SchemaVersion]] = {}
        self._next_id = 1
        self._stream_version: int | None = None

    # ------------------------------------------------------------------ reading

    async def refresh(self) -> None:
        """Read registrations appended since the last refresh (by anyone)."""
        start = 0 if self._stream_version is None else self._stream_version + 1
        async for recorded in self.store.read_stream(SCHEMAS_STREAM, from_version=start):
            self._apply(recorded)
            self._stream_version = recorded.version

    def _apply(self, recorded: RecordedEvent) -> None:
        if recorded.type == _REGISTERED:
            sv = msgspec.json.decode(recorded.data, type=SchemaVersion)
            self._versions.setdefault(sv.subject, {})[sv.version] = sv
            self._next_id = max(self._next_id, sv.id + 1)
        elif recorded.type == _CONFIGURED:
            cfg = msgspec.json.decode(recorded.data, type=_ConfigSet)
            if cfg.subject is None:
                self._global = cfg.compatibility
            else:
                self._per_subject[cfg.subject] = cfg.compatibility

    async def subjects(self) -> list[str]:
        await self.refresh()
        return sorted(self._versions)

    async def versions(self, subject: str) -> list[int]:
        await self.refresh()
        return sorted(self._versions.get(subject, {}))

    async def get(self, subject: str, version: int | None = None) -> SchemaVersion:
        """A subject's schema at `version` (None: the latest). Raises `UnknownEventType`."""
        await self.refresh()
        return self._get(subject, version)

    def _get(self, subject: str, version: int | None) -> SchemaVersion:
        versions = self._versions.get(subject)
        if not versions:
            raise UnknownEventType(subject, f"no schema registered for subject {subject!r}")
        chosen = versions.get(max(versions) if version is None else version)
        if chosen is None:
            raise UnknownEventType(
                f"{subject} v{version}",
                f"subject {subject!r} has no version {version} (versions: "
                + ", ".join(str(v) for v in sorted(versions))
                + ")",
            )
        return chosen

    async def get_by_id(self, schema_id: int) -> SchemaVersion:
        await self.refresh()
        for versions in self._versions.values():
            for sv in versions.values():
                if sv.id == schema_id:
                    return sv
        raise UnknownEventType(f"schema id {schema_id}", f"no schema has id {schema_id}")

    # ------------------------------------------------------------------ compatibility

    async def compatibility(self, subject: str | None = None) -> Compatibility:
        """The mode of `subject` (its own, else the global one), or the global mode."""
        await self.refresh()
        return self._mode(subject)

    def _mode(self, subject: str | None) -> Compatibility:
        if subject is not None and subject in self._per_subject:
            return self._per_subject[subject]
        return self._global or self._default

    async def set_compatibility(
        self, mode: Compatibility | str, subject: str | None = None
    ) -> None:
        """Set the mode of one subject, or the global mode (`subject=None`)."""
        try:
            mode = Compatibility(mode)
        except ValueError:
            raise InvalidInput(f"unknown compatibility mode {mode!r}") from None
        data = msgspec.json.encode(_ConfigSet(subject=subject, compatibility=mode))
        await self._append(NewEvent(type=_CONFIGURED, data=data), check=None)

    async def check(self, subject: str, schema: Mapping[str, Any]) -> list[str]:
        """Why `schema` could not be registered as the next version (empty: it could)."""
        await self.refresh()
        return self._problems(subject, schema)

    def _problems(self, subject: str, schema: Mapping[str, Any]) -> list[str]:
        versions = self._versions.get(subject, {})
        previous = [versions[v].schema for v in sorted(versions)]
        return compatibility_problems(schema, previous, self._mode(subject))

    # ------------------------------------------------------------------ registering

    async def register(
        self, subject: str, schema: Mapping[str, Any], *, version: int | None = None
    ) -> SchemaVersion:
        """Register `schema` as the next (or the given) version of `subject`.

        Registering a schema identical to a registered version returns that
        version (idempotent). Raises `IncompatibleSchema` with every broken
        rule when the subject's compatibility mode refuses it.
        """
        if not isinstance(subject, str) or not subject:
            raise InvalidInput(f"invalid subject {subject!r}")
        if not isinstance(schema, Mapping):
            raise InvalidInput("a schema is a JSON object")
        if problem := schema_problem(dict(schema)):
            raise InvalidInput(f"malformed JSON Schema: {problem}")
        if version is not None and (isinstance(version, bool) or version < 1):
            raise InvalidInput(f"schema version must be an int >= 1, got {version!r}")
        for _ in range(_RETRIES):
            await self.refresh()
            versions = self._versions.get(subject, {})
            for sv in versions.values():
                if _canonical(sv.schema) == _canonical(schema):
                    if version not in (None, sv.version):
                        raise InvalidInput(
                            f"{subject!r}: this schema is already version {sv.version}"
                        )
                    return sv
            latest = max(versions, default=0)
            chosen = latest + 1 if version is None else version
            if chosen <= latest:
                raise InvalidInput(
                    f"{subject!r} version {chosen} must be above the latest ({latest})"
                )
            problems = self._problems(subject, schema)
            if problems:
                raise IncompatibleSchema(subject, self._mode(subject).value, problems)
            sv = SchemaVersion(
                subject=subject, version=chosen, id=self._next_id, schema=dict(schema)
            )
            try:
                await self._append(
                    NewEvent(type=_REGISTERED, data=msgspec.json.encode(sv)), check=True
                )
            except WrongExpectedVersion:
                continue  # someone registered meanwhile: re-read and re-check
            return sv
        raise WrongExpectedVersion(SCHEMAS_STREAM, self._stream_version, None)

    async def register_event(
        self, cls: type[msgspec.Struct], *, registry: EventRegistry | None = None
    ) -> SchemaVersion:
        """Register the schema of an `@tidelog.event` class under its type name and version."""
        subject, version = (registry or DEFAULT_REGISTRY).type_of(cls)
        return await self.register(subject, schema_of(cls), version=version)

    async def _append(self, event: NewEvent, *, check: bool | None) -> None:
        expected: ExpectedVersion = ANY
        if check:
            expected = NO_STREAM if self._stream_version is None else self._stream_version
        await self.store.append(SCHEMAS_STREAM, [event], expected)
        await self.refresh()

    # ------------------------------------------------------------------ validation

    async def validate(self, event: NewEvent | RecordedEvent) -> None:
        """Raise `SchemaViolation` (naming the field) if a registered type's data breaks its schema.

        Types with no registered subject pass unchecked; a registered type at a
        version that is not registered is refused.
        """
        subject, version = event.type, event.schema_version
        if subject not in self._versions or version not in self._versions[subject]:
            await self.refresh()
        versions = self._versions.get(subject)
        if not versions:
            return
        sv = versions.get(version)
        if sv is None:
            raise SchemaViolation(subject, version, "$", "this schema version is not registered")
        try:
            value = msgspec.json.decode(event.data)
        except msgspec.DecodeError:
            raise SchemaViolation(subject, version, "$", "data is not valid JSON") from None
        error = first_error(sv.schema, value)
        if error is not None:
            raise SchemaViolation(subject, version, *error)


class ValidatingStore(StoreWrapper):
    """A store that refuses appends whose data breaks the registered schemas.

    Wraps any engine: every append (`append`, `append_many`, the appends of a
    group `commit`) is validated by `registry.validate` once the contract has
    checked the arguments, before the inner engine writes; everything else is
    passed through (a `StoreWrapper`). System streams (`$...`) are not validated.
    """

    def __init__(self, inner: Engine, registry: SchemaRegistry) -> None:
        super().__init__(inner)
        self.registry = registry

    async def _apply_write(self, write: Write) -> dict[str, AppendResult]:
        """Validate the events of `write`, then hand it to the inner store.

        The contract has checked the arguments already; a commit's member is
        fenced before its events are judged, as on every engine, so a stale
        member gets `StaleGeneration` rather than a `SchemaViolation`.
        """
        try:
            for stream, (events, _) in write.appends.items():
                if not stream.startswith("$"):
                    for event in events:
                        await self.registry.validate(event)
        except InvalidInput:
            if write.checkpoint is not None:
                await super()._apply_write(Write({}, write.checkpoint, fence_only=True))
            raise
        return await super()._apply_write(write)
