"""The schema registry over HTTP, in Confluent Schema Registry's REST shape.

Confluent's clients (`confluent-kafka`'s `SchemaRegistryClient` and
serializers, `python-schema-registry-client`) work against these routes
unchanged: register, look up, read, delete, check compatibility, configure.
Subjects that are event type names (`OrderPlaced`) hold the JSON Schemas of
tidelog's typed events; any other subject (`orders-value`, one with a `/`)
is the registry's alone. Schema types: `JSON` (the default when a request
names none) and `AVRO`; Protobuf is refused with 42201 (docs/http-api.md says
why). The registry itself is `tidelog.schemas.SchemaRegistry`, kept in the
`$schemas` stream.

Access: reading, looking up and checking need `read` on the stream `$schemas`;
registering, deleting and changing compatibility need `write` on it (an
admin's `*` grant covers both). Credentials: `Authorization: Bearer <key>` or
HTTP Basic with the key as the password.

Every response under these paths, errors included (unknown routes and wrong
methods too), is Confluent's: bodies `{"error_code": N, "message": "..."}`
with the codes listed in `_registry_wire`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from litestar import Request, Response, Router, delete, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath

from tidelog.errors import InvalidInput
from tidelog.schemas import Compatibility, SchemaRegistry, SchemaVersion
from tidelog.schemas.registry import SCHEMA_TYPES, stored_schema
from tidelog.security.acl import Access, Permission
from tidelog.server._deps import AccessDep, registry_of, runtime
from tidelog.server._registry_wire import (
    CONTENT_TYPE,
    ConfigBody,
    RegisterSchema,
    confluent_error,
    depth,
    need,
    refuse,
    reply,
    subject_of,
)

__all__ = ["CONTENT_TYPE", "ROUTES", "ConfigBody", "RegisterSchema"]

_REGISTER: Final = msgspec.json.Decoder(RegisterSchema)
_CONFIG: Final = msgspec.json.Decoder(ConfigBody)
_JSON: Final = msgspec.json.Decoder()
_AVRO_TYPES: Final = frozenset({"record", "enum", "fixed"})


def _decode(request_raw: bytes, decoder: msgspec.json.Decoder[Any], limit: int) -> Any:
    depth(request_raw, limit)
    try:
        return decoder.decode(request_raw)
    except RecursionError:  # nesting left open is not the depth check's to refuse
        raise refuse(400, 400, "JSON nested too deeply") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise refuse(400, 400, f"invalid request body: {exc}") from None


async def _schema_body(request: Request[Any, Any, Any]) -> tuple[Any, str]:
    """The request's schema in its stored form, and its type; 42201 when it is not one."""
    limit = runtime(request.app.state).config.limits.max_json_depth
    body: RegisterSchema = _decode(await request.body(), _REGISTER, limit)
    schema_type = body.schemaType.upper()
    if schema_type == "PROTOBUF":
        raise refuse(
            422,
            42201,
            "schemaType PROTOBUF is not supported: tidelog has no well-kept Python library "
            "to parse .proto schemas and check their compatibility; use JSON or AVRO",
        )
    if schema_type not in SCHEMA_TYPES:
        raise refuse(
            422, 42201, f"schemaType {body.schemaType[:40]!r}: one of {', '.join(SCHEMA_TYPES)}"
        )
    if body.references:
        raise refuse(422, 42201, "schema references are not supported")
    schema: Any = body.schema
    if isinstance(schema, str):
        depth(schema.encode(), limit, 422, 42201)
        try:
            schema = _JSON.decode(schema)
        except RecursionError:
            raise refuse(422, 42201, "JSON nested too deeply") from None
        except msgspec.DecodeError as exc:
            raise refuse(422, 42201, f"schema is not valid JSON: {exc}") from None
    try:
        return stored_schema(schema, schema_type), schema_type
    except InvalidInput as exc:
        hint = ""
        kind = schema.get("type") if isinstance(schema, dict) else None
        if schema_type == "JSON" and isinstance(kind, str) and kind in _AVRO_TYPES:
            hint = ' (an Avro schema? send "schemaType": "AVRO")'
        raise refuse(422, 42201, f"{exc}{hint}") from None


def _version(value: str) -> int | None:
    """`latest` (or -1) is None; otherwise a positive int."""
    if value in ("latest", "-1"):
        return None
    if not value.isdigit() or len(value) > 9 or int(value) < 1:
        raise refuse(422, 42202, f"invalid version {value[:30]!r}: a positive integer or 'latest'")
    return int(value)


@dataclass(frozen=True, slots=True)
class _Call:
    """One request to the registry: the caller's access, its query, the app's registry.

    Every route takes it as its `call` dependency rather than the request, the
    state and the access one by one: what they do with the three is the same few
    steps (check a permission, name a subject, read a flag, lock the registry).
    """

    request: Request[Any, Any, Any]
    state: State
    access: Access

    def need(self, permission: Permission) -> None:
        need(self.access, permission)

    def subject(self, subject: str, permission: Permission) -> str:
        """The path's subject, once the caller may use the registry that way.

        The permission is checked first, so a caller without access learns nothing
        about which subject names are valid.
        """
        need(self.access, permission)
        return subject_of(self.request, subject)

    def version(self, subject: str, version: str, permission: Permission) -> tuple[str, int | None]:
        """The path's subject and version (None: `latest`), checked in that order."""
        return self.subject(subject, permission), _version(version)

    def flag(self, name: str) -> bool:
        """A boolean query parameter (`?deleted=true`; Python clients send `True`)."""
        return str(self.request.query_params.get(name, "")).lower() == "true"

    @asynccontextmanager
    async def registry(self) -> AsyncIterator[SchemaRegistry]:
        """The app's registry, held under the lock that serializes it.

        Every route reads or changes the registry as one step under this lock, so a
        check and the change it guards (delete only after a soft delete, ...) never
        interleave with another request's.
        """
        registry, lock = registry_of(self.state)
        async with lock:
            yield registry


async def _provide_call(request: Request[Any, Any, Any], state: State, access: AccessDep) -> _Call:
    return _Call(request, state, access)


_CallDep = NamedDependency[_Call]


def _subject_missing(subject: str) -> Exception:
    return refuse(404, 40401, f"Subject '{subject[:255]}' not found.")


async def _lookup(
    registry: SchemaRegistry, subject: str, version: int | None, *, deleted: bool = False
) -> SchemaVersion:
    versions = await registry.versions(subject, deleted=deleted)
    if not versions:
        raise _subject_missing(subject)
    if version is not None and version not in versions:
        raise refuse(404, 40402, f"Version {version} not found.")
    return await registry.get(subject, version, deleted=deleted)


def _schema_text(sv: SchemaVersion) -> str:
    """The schema as Confluent returns it: a JSON text inside the JSON response."""
    return json.dumps(sv.schema, separators=(",", ":"))


def _described(sv: SchemaVersion) -> dict[str, Any]:
    return {
        "subject": sv.subject,
        "version": sv.version,
        "id": sv.id,
        "schemaType": sv.schema_type,
        "schema": _schema_text(sv),
    }


# --------------------------------------------------------------------------- subjects


@post("/subjects/{subject:str}/versions", summary="Register a schema version (Confluent API)")
async def register_schema(subject: FromPath[str], call: _CallDep) -> Response[bytes]:
    subject = call.subject(subject, Permission.WRITE)
    schema, schema_type = await _schema_body(call.request)
    async with call.registry() as registry:
        sv = await registry.register(subject, schema, schema_type=schema_type)
    return reply({"id": sv.id})


@post(
    "/subjects/{subject:str}",
    summary="Is this schema registered under the subject? (Confluent API)",
    status_code=200,
)
async def lookup_schema(subject: FromPath[str], call: _CallDep) -> Response[bytes]:
    """What serializers do with `auto.register.schemas=False`: find the version
    holding exactly this schema (`?deleted=true` searches soft-deleted ones too)."""
    subject = call.subject(subject, Permission.READ)
    schema, schema_type = await _schema_body(call.request)
    deleted = call.flag("deleted")
    async with call.registry() as registry:
        if not await registry.versions(subject, deleted=deleted):
            raise _subject_missing(subject)
        sv = await registry.lookup(subject, schema, schema_type, deleted=deleted)
    if sv is None:
        raise refuse(404, 40403, "Schema not found")
    return reply(_described(sv))


@get("/subjects", summary="List subjects (Confluent API)")
async def list_subjects(call: _CallDep) -> Response[bytes]:
    """`?deleted=true` adds soft-deleted subjects, `?deletedOnly=true` lists only
    them; `?subjectPrefix=` keeps those starting with it."""
    call.need(Permission.READ)
    only_deleted = call.flag("deletedOnly") or call.flag("deleted_only")
    prefix = str(call.request.query_params.get("subjectPrefix", ""))
    async with call.registry() as registry:
        subjects = await registry.subjects(deleted=only_deleted or call.flag("deleted"))
        if only_deleted:
            live = set(await registry.subjects())
            subjects = [s for s in subjects if s not in live]
    return reply([s for s in subjects if s.startswith(prefix)])


@get("/subjects/{subject:str}/versions", summary="List a subject's versions (Confluent API)")
async def list_versions(subject: FromPath[str], call: _CallDep) -> Response[bytes]:
    subject = call.subject(subject, Permission.READ)
    async with call.registry() as registry:
        versions = await registry.versions(subject, deleted=call.flag("deleted"))
    if not versions:
        raise _subject_missing(subject)
    return reply(versions)


async def _read_version(call: _Call, subject: str, version: str) -> SchemaVersion:
    """The version a GET names (`?deleted=true`: soft-deleted ones too)."""
    subject, wanted = call.version(subject, version, Permission.READ)
    async with call.registry() as registry:
        return await _lookup(registry, subject, wanted, deleted=call.flag("deleted"))


@get(
    "/subjects/{subject:str}/versions/{version:str}",
    summary="A subject's schema at a version or 'latest' (Confluent API)",
)
async def get_version(
    subject: FromPath[str], version: FromPath[str], call: _CallDep
) -> Response[bytes]:
    return reply(_described(await _read_version(call, subject, version)))


@get(
    "/subjects/{subject:str}/versions/{version:str}/schema",
    summary="Only the schema of a subject's version (Confluent API)",
)
async def get_version_schema(
    subject: FromPath[str], version: FromPath[str], call: _CallDep
) -> Response[bytes]:
    return reply((await _read_version(call, subject, version)).schema)


@delete(
    "/subjects/{subject:str}",
    summary="Delete a subject: soft, or with ?permanent=true after a soft delete (Confluent API)",
    status_code=200,
)
async def delete_subject(subject: FromPath[str], call: _CallDep) -> Response[bytes]:
    """The versions deleted. Events written under them stay in the store."""
    subject = call.subject(subject, Permission.WRITE)
    permanent = call.flag("permanent")
    async with call.registry() as registry:
        live = await registry.versions(subject)
        if not await registry.versions(subject, deleted=True):
            raise _subject_missing(subject)
        if not permanent and not live:
            raise refuse(
                404,
                40404,
                f"Subject '{subject}' was soft deleted.Set permanent=true to delete permanently",
            )
        if permanent and live:
            raise refuse(
                404,
                40405,
                f"Subject '{subject}' was not deleted first before being permanently deleted",
            )
        deleted = await registry.delete(subject, permanent=permanent)
        if permanent and await registry.own_compatibility(subject) is not None:
            await registry.set_compatibility(None, subject)
    return reply(deleted)


@delete(
    "/subjects/{subject:str}/versions/{version:str}",
    summary="Delete a version: soft, or with ?permanent=true after a soft delete (Confluent API)",
    status_code=200,
)
async def delete_version(
    subject: FromPath[str], version: FromPath[str], call: _CallDep
) -> Response[bytes]:
    """The version deleted. It no longer validates appends of its event type."""
    subject, wanted = call.version(subject, version, Permission.WRITE)
    permanent = call.flag("permanent")
    async with call.registry() as registry:
        kept = await registry.versions(subject, deleted=True)
        if not kept:
            raise _subject_missing(subject)
        soft = await registry.soft_deleted(subject)
        if wanted is None:  # latest: of the live versions, or of the soft-deleted ones
            candidates = soft if permanent else [v for v in kept if v not in soft]
            wanted = max(candidates, default=max(kept))
        if wanted not in kept:
            raise refuse(404, 40402, f"Version {wanted} not found.")
        if not permanent and wanted in soft:
            raise refuse(
                404,
                40406,
                f"Subject '{subject}' Version {wanted} was soft deleted."
                "Set permanent=true to delete permanently",
            )
        if permanent and wanted not in soft:
            raise refuse(
                404,
                40407,
                f"Subject '{subject}' Version {wanted} was not deleted "
                "first before being permanently deleted",
            )
        await registry.delete(subject, wanted, permanent=permanent)
    return reply(wanted)


# --------------------------------------------------------------------------- schemas by id


@get("/schemas/ids/{schema_id:int}", summary="A schema by global id (Confluent API)")
async def get_schema_by_id(schema_id: FromPath[int], call: _CallDep) -> Response[bytes]:
    """Soft-deleted versions' ids still resolve: data written under them stays readable."""
    call.need(Permission.READ)
    async with call.registry() as registry:
        uses = await registry.uses_of(schema_id, deleted=True)
    if not uses:
        raise refuse(404, 40403, f"Schema {schema_id} not found")
    return reply({"schema": _schema_text(uses[0]), "schemaType": uses[0].schema_type})


@get(
    "/schemas/ids/{schema_id:int}/versions",
    summary="The subjects and versions registered with a schema id (Confluent API)",
)
async def get_schema_versions(schema_id: FromPath[int], call: _CallDep) -> Response[bytes]:
    call.need(Permission.READ)
    async with call.registry() as registry:
        if not await registry.uses_of(schema_id, deleted=True):
            raise refuse(404, 40403, f"Schema {schema_id} not found")
        uses = await registry.uses_of(schema_id, deleted=call.flag("deleted"))
    return reply([{"subject": sv.subject, "version": sv.version} for sv in uses])


@get("/schemas/types", summary="The schema types this registry takes (Confluent API)")
async def get_schema_types(call: _CallDep) -> Response[bytes]:
    call.need(Permission.READ)
    return reply(sorted(SCHEMA_TYPES))


# --------------------------------------------------------------------------- compatibility


def _verdict(call: _Call, problems: list[str]) -> Response[bytes]:
    result: dict[str, Any] = {"is_compatible": not problems}
    if call.flag("verbose"):
        result["messages"] = problems
    return reply(result)


@post(
    "/compatibility/subjects/{subject:str}/versions/{version:str}",
    summary="Would this schema be compatible with that version? (Confluent API)",
    status_code=200,
)
async def check_compatibility(
    subject: FromPath[str], version: FromPath[str], call: _CallDep
) -> Response[bytes]:
    """Against one version (`latest`: the latest live one), in the subject's mode."""
    subject, wanted = call.version(subject, version, Permission.READ)
    schema, schema_type = await _schema_body(call.request)
    async with call.registry() as registry:
        sv = await _lookup(registry, subject, wanted)
        problems = await registry.check(subject, schema, schema_type, against=sv.version)
    return _verdict(call, problems)


@post(
    "/compatibility/subjects/{subject:str}/versions",
    summary="Would this schema be compatible as the next version? (Confluent API)",
    status_code=200,
)
async def check_compatibility_all(subject: FromPath[str], call: _CallDep) -> Response[bytes]:
    """Exactly what registering would check: the latest version, or every live
    version in a `_TRANSITIVE` mode. A subject with no versions accepts anything."""
    subject = call.subject(subject, Permission.READ)
    schema, schema_type = await _schema_body(call.request)
    async with call.registry() as registry:
        problems = await registry.check(subject, schema, schema_type)
    return _verdict(call, problems)


# --------------------------------------------------------------------------- config


def _level(mode: Compatibility) -> dict[str, str]:
    return {"compatibility": mode.value, "compatibilityLevel": mode.value}


async def _config_reply(call: _Call, subject: str | None) -> Response[bytes]:
    async with call.registry() as registry:
        mode = await registry.compatibility(subject)
    return reply(_level(mode))


async def _set_config(call: _Call, subject: str | None) -> Response[bytes]:
    limit = runtime(call.state).config.limits.max_json_depth
    body: ConfigBody = _decode(await call.request.body(), _CONFIG, limit)
    given = body.compatibility or body.compatibilityLevel or ""
    try:
        mode = Compatibility(given.upper())
    except ValueError:
        raise refuse(
            422,
            42203,
            f"invalid compatibility level {given[:40]!r}: one of "
            + ", ".join(m.value for m in Compatibility),
        ) from None
    async with call.registry() as registry:
        await registry.set_compatibility(mode, subject)
    return reply({"compatibility": mode.value})


@get("/config", summary="The global compatibility level (Confluent API)")
async def get_config(call: _CallDep) -> Response[bytes]:
    call.need(Permission.READ)
    return await _config_reply(call, None)


@put("/config", summary="Set the global compatibility level (Confluent API)")
async def put_config(call: _CallDep) -> Response[bytes]:
    call.need(Permission.WRITE)
    return await _set_config(call, None)


@get("/config/{subject:str}", summary="A subject's compatibility level (Confluent API)")
async def get_subject_config(subject: FromPath[str], call: _CallDep) -> Response[bytes]:
    """The subject's own level, else the global one (Confluent's `defaultToGlobal`)."""
    return await _config_reply(call, call.subject(subject, Permission.READ))


@put("/config/{subject:str}", summary="Set a subject's compatibility level (Confluent API)")
async def put_subject_config(subject: FromPath[str], call: _CallDep) -> Response[bytes]:
    return await _set_config(call, call.subject(subject, Permission.WRITE))


@delete(
    "/config/{subject:str}",
    summary="Remove a subject's own compatibility level (Confluent API)",
    status_code=200,
)
async def delete_subject_config(subject: FromPath[str], call: _CallDep) -> Response[bytes]:
    """The level removed; the subject follows the global level again."""
    subject = call.subject(subject, Permission.WRITE)
    async with call.registry() as registry:
        own = await registry.own_compatibility(subject)
        if own is None:
            raise refuse(
                404,
                40408,
                f"Subject '{subject}' does not have subject-level compatibility configured",
            )
        await registry.set_compatibility(None, subject)
    return reply(_level(own))


ROUTES = [
    Router(
        path="/",
        route_handlers=[
            register_schema,
            lookup_schema,
            list_subjects,
            list_versions,
            get_version,
            get_version_schema,
            delete_subject,
            delete_version,
            get_schema_by_id,
            get_schema_versions,
            get_schema_types,
            check_compatibility,
            check_compatibility_all,
            get_config,
            put_config,
            get_subject_config,
            put_subject_config,
            delete_subject_config,
        ],
        dependencies={"call": Provide(_provide_call)},
        exception_handlers={Exception: confluent_error},
        tags=["schema registry"],
    )
]
