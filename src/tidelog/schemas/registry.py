"""The schema registry, stored in the store itself.

Every registration and every compatibility setting is an event in the system
stream `$schemas`, so the registry needs no other database, replicates and
backs up with the log, and works the same on every engine. A registry object
reads that stream into memory (`refresh`) and appends to it with an exact
expected version, so two processes registering at once cannot both win: the
loser re-reads and re-checks.

Subjects named like event types (`OrderPlaced`) hold those events' JSON
Schemas; a subject's versions are the event's schema versions
(`@tidelog.event("OrderPlaced", version=2)` is version 2 of subject
`OrderPlaced`). Other subjects (`orders-value`, Confluent's `<topic>-value`)
are the registry's alone, for Confluent's clients, and may hold Avro schemas
(`schema_type="AVRO"`). Each distinct schema gets one global id, as in
Confluent's registry; deletes are Confluent's too (soft, then permanent).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
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
    ScheduledEvent,
)
from tidelog.schemas.compatibility import Compatibility, compatibility_problems, schema_problem
from tidelog.schemas.validation import first_error

__all__ = [
    "MAX_SUBJECT_LENGTH",
    "SCHEMAS_STREAM",
    "SCHEMA_TYPES",
    "SchemaRegistry",
    "SchemaVersion",
    "ValidatingStore",
    "schema_of",
    "stored_schema",
    "subject_problem",
]

SCHEMAS_STREAM: Final = "$schemas"
_REGISTERED: Final = "tidelog.schema.registered"
_CONFIGURED: Final = "tidelog.schema.compatibility"
_DELETED: Final = "tidelog.schema.deleted"
_RETRIES: Final = 8


class SchemaVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One registered schema: `subject` at `version`, with its global `id`.

    `schema` is a JSON Schema (an object, or the boolean schemas `true` and
    `false`) when `schema_type` is `JSON`, or an Avro schema in its stored form
    (`tidelog.schemas.avro.parse_avro`: an object, a list for a union, a
    string for a primitive) when it is `AVRO`. Versions registered before Avro
    was supported carry no `schema_type` and are JSON.
    """

    subject: str
    version: int
    id: int
    schema: Any
    schema_type: str = "JSON"


class _ConfigSet(msgspec.Struct, frozen=True, kw_only=True):
    subject: str | None
    compatibility: Compatibility | None  # None: the subject's own mode is removed


class _Deleted(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    version: int | None  # None: every version of the subject
    permanent: bool


SCHEMA_TYPES: Final = ("JSON", "AVRO")
"""The schema types the registry takes (Confluent's names). Protobuf is refused:
see docs/http-api.md."""

MAX_SUBJECT_LENGTH: Final = 255


def subject_problem(subject: object) -> str | None:
    """Why `subject` cannot name a subject, or None.

    Confluent's rule: any text without control characters. Up to 255
    characters, so `<topic>-value` fits a long topic name. A subject that is
    also a valid event type names the schema of those events; any other
    (one with `/`, spaces, over 200 characters) is a registry-only subject.
    """
    if not isinstance(subject, str) or not subject:
        return "a subject is a non-empty string"
    if len(subject) > MAX_SUBJECT_LENGTH:
        return f"a subject has at most {MAX_SUBJECT_LENGTH} characters"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in subject):
        return "a subject has no control characters"
    return None


def stored_schema(schema: Any, schema_type: str = "JSON") -> Any:
    """`schema` (a decoded JSON value) as the registry stores it, or `InvalidInput`.

    A JSON Schema is an object or a boolean and must be well formed for the
    keywords the checker compares (`schema_problem`); an Avro schema must
    parse (`parse_avro`), and is stored in its parsed form.
    """
    if schema_type == "AVRO":
        return _parse_avro(schema)
    if schema_type != "JSON":
        raise InvalidInput(
            f"schema type {schema_type!r} is not supported: one of {', '.join(SCHEMA_TYPES)}"
        )
    if not isinstance(schema, (Mapping, bool)):
        raise InvalidInput("a JSON Schema is a JSON object or a boolean")
    stored = dict(schema) if isinstance(schema, Mapping) else schema
    if problem := schema_problem(stored):
        raise InvalidInput(f"invalid JSON Schema: {problem}")
    return stored


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


def _avro_problems(new: Any, previous: list[Any], mode: Compatibility) -> list[str]:
    from tidelog.schemas.avro import avro_problems  # see `_parse_avro`

    return avro_problems(new, previous, mode)


def _parse_avro(schema: Any) -> Any:
    """The stored form of an Avro schema. `tidelog.schemas.avro` is imported on first
    use: only Avro subjects need the `avro` package (in the `avro` and `server`
    extras), not every user of the registry."""
    try:
        from tidelog.schemas.avro import parse_avro
    except ImportError:
        raise InvalidInput(
            "Avro schemas need the 'avro' package: pip install 'tidelog[avro]'"
        ) from None
    return parse_avro(schema)


def _canonical(schema: Any) -> bytes:
    return msgspec.json.encode(schema, order="sorted")


class SchemaRegistry:
    """Subjects, versions, compatibility modes and validation, kept in `$schemas`.

    Deletes are Confluent's: a soft delete hides a version (or every version of
    a subject) from reads, lookups, compatibility checks and write validation,
    but its id still resolves (`get_by_id`), so data written under it can still
    be read; a permanent delete, allowed only after a soft one, forgets the
    version. Deleting a schema never deletes events.
    """

    def __init__(self, store: Engine, *, default: Compatibility = Compatibility.BACKWARD) -> None:
        self.store = store
        self._default = default
        self._global: Compatibility | None = None
        self._per_subject: dict[str, Compatibility] = {}
        self._versions: dict[str, dict[int, SchemaVersion]] = {}
        self._deleted: dict[str, set[int]] = {}
        """Soft-deleted versions per subject (still in `_versions`)."""
        self._ids: dict[tuple[str, bytes], int] = {}
        """Global id per (schema type, canonical schema): one schema, one id, as in Confluent."""
        self._by_id: dict[int, dict[tuple[str, int], SchemaVersion]] = {}
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
            self._deleted.get(sv.subject, set()).discard(sv.version)
            self._ids.setdefault((sv.schema_type, _canonical(sv.schema)), sv.id)
            self._by_id.setdefault(sv.id, {})[(sv.subject, sv.version)] = sv
            self._next_id = max(self._next_id, sv.id + 1)
        elif recorded.type == _CONFIGURED:
            cfg = msgspec.json.decode(recorded.data, type=_ConfigSet)
            if cfg.subject is None:
                self._global = cfg.compatibility
            elif cfg.compatibility is None:
                self._per_subject.pop(cfg.subject, None)
            else:
                self._per_subject[cfg.subject] = cfg.compatibility
        elif recorded.type == _DELETED:
            self._apply_delete(msgspec.json.decode(recorded.data, type=_Deleted))

    def _apply_delete(self, deleted: _Deleted) -> None:
        versions = self._versions.get(deleted.subject, {})
        chosen = list(versions) if deleted.version is None else [deleted.version]
        gone = self._deleted.get(deleted.subject, set())
        for v in chosen:
            if v not in versions:
                continue
            if not deleted.permanent:
                self._deleted.setdefault(deleted.subject, set()).add(v)
                continue
            if v not in gone:  # only a soft-deleted version is forgotten, even when
                continue  # the event names the whole subject (a version may be live)
            sv = versions.pop(v)
            self._deleted.get(deleted.subject, set()).discard(v)
            uses = self._by_id.get(sv.id, {})
            uses.pop((sv.subject, sv.version), None)
            if not uses:
                self._by_id.pop(sv.id, None)
        if not versions:
            self._versions.pop(deleted.subject, None)
            self._deleted.pop(deleted.subject, None)

    def _live(self, subject: str, *, deleted: bool = False) -> dict[int, SchemaVersion]:
        """`subject`'s versions, without the soft-deleted ones unless `deleted`."""
        versions = self._versions.get(subject, {})
        gone = self._deleted.get(subject)
        if deleted or not gone:
            return versions
        return {v: sv for v, sv in versions.items() if v not in gone}

    async def subjects(self, *, deleted: bool = False) -> list[str]:
        """Subjects with a live version (with `deleted`: with any version still kept)."""
        await self.refresh()
        return sorted(s for s in self._versions if self._live(s, deleted=deleted))

    async def versions(self, subject: str, *, deleted: bool = False) -> list[int]:
        """`subject`'s live versions (with `deleted`: soft-deleted ones too), ascending."""
        await self.refresh()
        return sorted(self._live(subject, deleted=deleted))

    async def soft_deleted(self, subject: str) -> list[int]:
        """`subject`'s soft-deleted versions, ascending."""
        await self.refresh()
        return sorted(self._deleted.get(subject, ()))

    async def get(
        self, subject: str, version: int | None = None, *, deleted: bool = False
    ) -> SchemaVersion:
        """A subject's schema at `version` (None: the latest live one).

        Raises `UnknownEventType` when there is none (or it is soft-deleted and
        `deleted` is false).
        """
        await self.refresh()
        return self._get(subject, version, deleted=deleted)

    def _get(self, subject: str, version: int | None, *, deleted: bool = False) -> SchemaVersion:
        versions = self._live(subject, deleted=deleted)
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
        """A version registered with `schema_id` (soft-deleted ones too: readers need them)."""
        await self.refresh()
        uses = self._by_id.get(schema_id)
        if not uses:
            raise UnknownEventType(f"schema id {schema_id}", f"no schema has id {schema_id}")
        return next(iter(uses.values()))

    async def uses_of(self, schema_id: int, *, deleted: bool = False) -> list[SchemaVersion]:
        """Every (subject, version) registered with `schema_id`, live ones unless `deleted`."""
        await self.refresh()
        uses = self._by_id.get(schema_id, {})
        return sorted(
            (
                sv
                for sv in uses.values()
                if deleted or sv.version not in self._deleted.get(sv.subject, ())
            ),
            key=lambda sv: (sv.subject, sv.version),
        )

    async def lookup(
        self, subject: str, schema: Any, schema_type: str = "JSON", *, deleted: bool = False
    ) -> SchemaVersion | None:
        """The version of `subject` whose schema is `schema` (latest first), or None.

        `schema` is compared in its stored form, so an Avro schema matches
        whatever its spacing and key order.
        """
        stored = stored_schema(schema, schema_type)
        await self.refresh()
        wanted = _canonical(stored)
        versions = self._live(subject, deleted=deleted)
        for v in sorted(versions, reverse=True):
            sv = versions[v]
            if sv.schema_type == schema_type and _canonical(sv.schema) == wanted:
                return sv
        return None

    # ------------------------------------------------------------------ compatibility

    async def compatibility(self, subject: str | None = None) -> Compatibility:
        """The mode of `subject` (its own, else the global one), or the global mode."""
        await self.refresh()
        return self._mode(subject)

    async def own_compatibility(self, subject: str) -> Compatibility | None:
        """The mode set on `subject` itself, or None (it follows the global mode)."""
        await self.refresh()
        return self._per_subject.get(subject)

    def _mode(self, subject: str | None) -> Compatibility:
        if subject is not None and subject in self._per_subject:
            return self._per_subject[subject]
        return self._global or self._default

    async def set_compatibility(
        self, mode: Compatibility | str | None, subject: str | None = None
    ) -> None:
        """Set the mode of one subject, or the global mode (`subject=None`).

        `None` removes a subject's own mode, so it follows the global one again.
        """
        if mode is not None:
            try:
                mode = Compatibility(mode)
            except ValueError:
                raise InvalidInput(f"unknown compatibility mode {mode!r}") from None
        elif subject is None:
            raise InvalidInput("the global compatibility mode cannot be removed")
        data = msgspec.json.encode(_ConfigSet(subject=subject, compatibility=mode))
        await self._append(NewEvent(type=_CONFIGURED, data=data), check=None)

    async def check(
        self,
        subject: str,
        schema: Any,
        schema_type: str = "JSON",
        *,
        against: int | None = None,
    ) -> list[str]:
        """Why `schema` could not be registered as the next version (empty: it could).

        `against` checks it against that live version alone, in the subject's
        mode (Confluent's check against one version).
        """
        stored = stored_schema(schema, schema_type)
        await self.refresh()
        return self._problems(subject, stored, schema_type, against=against)

    def _problems(
        self,
        subject: str,
        schema: Any,
        schema_type: str,
        *,
        against: int | None = None,
    ) -> list[str]:
        versions = self._live(subject)
        chosen = [against] if against is not None else sorted(versions)
        previous = [versions[v] for v in chosen if v in versions]
        mode = self._mode(subject)
        other = sorted({sv.schema_type for sv in previous} - {schema_type})
        if other and mode is not Compatibility.NONE:
            return [f"schema type {schema_type} differs from the registered {', '.join(other)}"]
        olds = [sv.schema for sv in previous]
        if schema_type == "AVRO":
            return _avro_problems(schema, olds, mode)
        return compatibility_problems(schema, olds, mode)

    # ------------------------------------------------------------------ registering

    async def register(
        self,
        subject: str,
        schema: Any,
        *,
        version: int | None = None,
        schema_type: str = "JSON",
    ) -> SchemaVersion:
        """Register `schema` as the next (or the given) version of `subject`.

        Registering a schema identical to a live version returns that version
        (idempotent); one identical to a version of another subject gets that
        version's id (one schema, one id). Raises `IncompatibleSchema` with
        every broken rule when the subject's compatibility mode refuses it.
        """
        if problem := subject_problem(subject):
            raise InvalidInput(f"invalid subject {str(subject)[:60]!r}: {problem}")
        stored = stored_schema(schema, schema_type)
        if version is not None and (isinstance(version, bool) or version < 1):
            raise InvalidInput(f"schema version must be an int >= 1, got {version!r}")
        key = (schema_type, _canonical(stored))
        for _ in range(_RETRIES):
            await self.refresh()
            for sv in self._live(subject).values():
                if (sv.schema_type, _canonical(sv.schema)) == key:
                    if version not in (None, sv.version):
                        raise InvalidInput(
                            f"{subject!r}: this schema is already version {sv.version}"
                        )
                    return sv
            latest = max(self._versions.get(subject, {}), default=0)
            chosen = latest + 1 if version is None else version
            if chosen <= latest:
                raise InvalidInput(
                    f"{subject!r} version {chosen} must be above the latest ({latest})"
                )
            problems = self._problems(subject, stored, schema_type)
            if problems:
                raise IncompatibleSchema(subject, self._mode(subject).value, problems)
            sv = SchemaVersion(
                subject=subject,
                version=chosen,
                id=self._ids.get(key, self._next_id),
                schema=stored,
                schema_type=schema_type,
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

    async def delete(
        self, subject: str, version: int | None = None, *, permanent: bool = False
    ) -> list[int]:
        """Delete `version` of `subject` (None: every version); the versions deleted.

        A soft delete (the default) hides live versions; a permanent one
        forgets soft-deleted versions and only those: delete softly first, as
        in Confluent. Events written under a deleted schema stay in the store.
        """
        await self.refresh()
        kept = self._versions.get(subject, {})
        gone = self._deleted.get(subject, set())
        candidates = sorted(kept) if version is None else [version] if version in kept else []
        chosen = [v for v in candidates if (v in gone) == permanent]
        if chosen:
            data = _Deleted(subject=subject, version=version, permanent=permanent)
            await self._append(NewEvent(type=_DELETED, data=msgspec.json.encode(data)), check=None)
        return chosen

    async def _append(self, event: NewEvent, *, check: bool | None) -> None:
        expected: ExpectedVersion = ANY
        if check:
            expected = NO_STREAM if self._stream_version is None else self._stream_version
        await self.store.append(SCHEMAS_STREAM, [event], expected)
        await self.refresh()

    # ------------------------------------------------------------------ validation

    async def validate(self, event: NewEvent | RecordedEvent) -> None:
        """Raise `SchemaViolation` (naming the field) if a registered type's data breaks its schema.

        Types with no live version pass unchecked; a registered type at a
        version that is not live (never registered, or deleted) is refused.
        Avro subjects do not judge appends: tidelog's typed events are JSON,
        and data serialized for an Avro subject is Confluent's binary framing
        that its serializer wrote against the registered schema already.
        """
        subject, version = event.type, event.schema_version
        if subject not in self._versions or version not in self._versions[subject]:
            await self.refresh()
        versions = self._live(subject)
        if not versions or any(sv.schema_type != "JSON" for sv in versions.values()):
            return
        sv = versions.get(version)
        if sv is None:
            raise SchemaViolation(
                subject, version, "$", "this schema version is not registered (or was deleted)"
            )
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

        The registry reads what is new in `$schemas` once per write (usually
        nothing: one short read), so a version deleted by any process stops
        validating at once; registrations alone would only be noticed when an
        unknown version shows up.
        """
        try:
            if any(not stream.startswith("$") for stream in write.appends):
                await self.registry.refresh()
            for stream, (events, _) in write.appends.items():
                if not stream.startswith("$"):
                    for event in events:
                        await self.registry.validate(event)
        except InvalidInput:
            if write.checkpoint is not None:
                await super()._apply_write(Write({}, write.checkpoint, fence_only=True))
            raise
        return await super()._apply_write(write)

    async def _schedule(self, rows: Sequence[ScheduledEvent]) -> None:
        """Validate scheduled events when they are scheduled, as appends are: a bad one
        is refused now, not parked at its due time (delivery validates again, through
        `_apply_write`, against the schemas of that moment)."""
        if any(not row.stream.startswith("$") for row in rows):
            await self.registry.refresh()
        for row in rows:
            if not row.stream.startswith("$"):
                await self.registry.validate(row.to_new_event())
        await super()._schedule(rows)
