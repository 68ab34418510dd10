"""The schema registry over HTTP, in Confluent Schema Registry's REST shape.

Existing Confluent tooling (and its clients) can register and read tidelog's
JSON Schemas: subjects are event type names, versions are the events' schema
versions, ids are the registry's global ids (`tidelog.schemas.SchemaRegistry`,
kept in the `$schemas` stream). Only `schemaType: "JSON"` is supported (an
absent `schemaType` means JSON here, not Avro).

Access: reading needs `read` on the stream `$schemas`, registering and
changing compatibility need `write` on it (an admin's `*` grant covers both).

Errors have Confluent's body `{"error_code": N, "message": "..."}`: 40401
subject not found, 40402 version not found, 40403 schema not found, 409
incompatible schema, 42201 invalid schema or subject, 42202 invalid version,
42203 invalid compatibility level, 400 malformed JSON, 401/403 credentials.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import msgspec
from litestar import Request, Response, Router, get, post, put
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery

from tidelog import wire
from tidelog.errors import (
    AccessDenied,
    IncompatibleSchema,
    InvalidEvent,
    InvalidInput,
    TidelogError,
    UnknownEventType,
)
from tidelog.model import NewEvent, validate_event
from tidelog.schemas import SCHEMAS_STREAM, Compatibility, SchemaRegistry, compatibility_problems
from tidelog.schemas.compatibility import schema_problem
from tidelog.security.acl import Access, Permission
from tidelog.server._deps import AccessDep, check_depth, registry_of, runtime

__all__ = ["CONTENT_TYPE", "ROUTES", "ConfigBody", "RegisterSchema"]

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "application/vnd.schemaregistry.v1+json"
_ENCODER: Final = msgspec.json.Encoder()


class RegisterSchema(msgspec.Struct, kw_only=True):
    """A schema to register or check: `schema` is the JSON Schema as a JSON string
    (Confluent's form) or, for convenience, as an object."""

    schema: str | dict[str, Any]
    schemaType: str = "JSON"  # Confluent's field name
    references: list[Any] = msgspec.field(default_factory=list)


class ConfigBody(msgspec.Struct, kw_only=True):
    compatibility: str


_REGISTER: Final = msgspec.json.Decoder(RegisterSchema)
_CONFIG: Final = msgspec.json.Decoder(ConfigBody)
_JSON: Final = msgspec.json.Decoder()


def _refuse(status: int, error_code: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message, extra={"error_code": error_code})


def _need(access: Access, perm: Permission) -> None:
    if not access.can_stream(SCHEMAS_STREAM, perm):
        raise AccessDenied(
            f"{access.principal!r} lacks {perm.value} on {SCHEMAS_STREAM} (the schema registry)"
        )


def _reply(value: Any, status: int = 200) -> Response[bytes]:
    return Response(_ENCODER.encode(value), status_code=status, media_type=CONTENT_TYPE)


def _check_subject(subject: str) -> None:
    try:
        validate_event(NewEvent(type=subject))
    except InvalidEvent as exc:
        raise _refuse(422, 42201, f"invalid subject {subject[:60]!r}: {exc}") from None


async def _schema_body(request: Request[Any, Any, Any]) -> dict[str, Any]:
    raw = await request.body()
    limit = runtime(request.app.state).config.limits.max_json_depth
    _depth(raw, limit)
    try:
        body = _REGISTER.decode(raw)
    except RecursionError:  # nesting left open is not the depth check's to refuse
        raise _refuse(400, 400, "JSON nested too deeply") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _refuse(400, 400, f"invalid request body: {exc}") from None
    if body.schemaType.upper() != "JSON":
        raise _refuse(422, 42201, f"schemaType {body.schemaType!r} is not supported: only JSON")
    if body.references:
        raise _refuse(422, 42201, "schema references are not supported")
    schema: Any = body.schema
    if isinstance(schema, str):
        try:
            check_depth(schema.encode(), limit)
        except InvalidInput as exc:
            raise _refuse(422, 42201, str(exc)) from None
        try:
            schema = _JSON.decode(schema)
        except RecursionError:
            raise _refuse(422, 42201, "JSON nested too deeply") from None
        except msgspec.DecodeError as exc:
            raise _refuse(422, 42201, f"schema is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise _refuse(422, 42201, "a JSON Schema must be a JSON object")
    if problem := schema_problem(schema):
        raise _refuse(422, 42201, f"invalid JSON Schema: {problem}")
    return schema


def _depth(raw: bytes, limit: int) -> None:
    try:
        check_depth(raw, limit)
    except InvalidInput as exc:
        raise _refuse(400, 400, str(exc)) from None


def _version(value: str) -> int | None:
    """`latest` (or -1) is None; otherwise a positive int."""
    if value in ("latest", "-1"):
        return None
    if not value.isdigit() or len(value) > 9 or int(value) < 1:
        raise _refuse(422, 42202, f"invalid version {value[:30]!r}: a positive integer or 'latest'")
    return int(value)


async def _lookup(registry: SchemaRegistry, subject: str, version: int | None) -> Any:
    versions = await registry.versions(subject)
    if not versions:
        raise _refuse(404, 40401, f"subject {subject[:200]!r} not found")
    if version is not None and version not in versions:
        raise _refuse(404, 40402, f"version {version} of {subject[:200]!r} not found")
    return await registry.get(subject, version)


def _schema_string(schema: dict[str, Any]) -> str:
    return _ENCODER.encode(schema).decode()


# --------------------------------------------------------------------------- routes


@post("/subjects/{subject:str}/versions", summary="Register a schema version (Confluent API)")
async def register_schema(
    subject: FromPath[str], request: Request[Any, Any, Any], state: State, access: AccessDep
) -> Response[bytes]:
    _need(access, Permission.WRITE)
    _check_subject(subject)
    schema = await _schema_body(request)
    registry, lock = registry_of(state)
    async with lock:
        sv = await registry.register(subject, schema)
    return _reply({"id": sv.id})


@get("/subjects", summary="List subjects (Confluent API)")
async def list_subjects(state: State, access: AccessDep) -> Response[bytes]:
    _need(access, Permission.READ)
    registry, lock = registry_of(state)
    async with lock:
        return _reply(await registry.subjects())


@get("/subjects/{subject:str}/versions", summary="List a subject's versions (Confluent API)")
async def list_versions(subject: FromPath[str], state: State, access: AccessDep) -> Response[bytes]:
    _need(access, Permission.READ)
    registry, lock = registry_of(state)
    async with lock:
        versions = await registry.versions(subject)
    if not versions:
        raise _refuse(404, 40401, f"subject {subject[:200]!r} not found")
    return _reply(versions)


@get(
    "/subjects/{subject:str}/versions/{version:str}",
    summary="A subject's schema at a version or 'latest' (Confluent API)",
)
async def get_version(
    subject: FromPath[str], version: FromPath[str], state: State, access: AccessDep
) -> Response[bytes]:
    _need(access, Permission.READ)
    wanted = _version(version)
    registry, lock = registry_of(state)
    async with lock:
        sv = await _lookup(registry, subject, wanted)
    return _reply(
        {
            "subject": sv.subject,
            "version": sv.version,
            "id": sv.id,
            "schemaType": "JSON",
            "schema": _schema_string(sv.schema),
        }
    )


@get("/schemas/ids/{schema_id:int}", summary="A schema by global id (Confluent API)")
async def get_schema_by_id(
    schema_id: FromPath[int], state: State, access: AccessDep
) -> Response[bytes]:
    _need(access, Permission.READ)
    registry, lock = registry_of(state)
    async with lock:
        try:
            sv = await registry.get_by_id(schema_id)
        except UnknownEventType:
            raise _refuse(404, 40403, f"schema id {schema_id} not found") from None
    return _reply({"schema": _schema_string(sv.schema), "schemaType": "JSON"})


@post(
    "/compatibility/subjects/{subject:str}/versions/{version:str}",
    summary="Would this schema be compatible? (Confluent API)",
    status_code=200,
)
async def check_compatibility(
    subject: FromPath[str],
    version: FromPath[str],
    request: Request[Any, Any, Any],
    state: State,
    access: AccessDep,
    verbose: FromQuery[bool] = False,
) -> Response[bytes]:
    """Against `latest`: exactly what registering would check (all versions if transitive).
    Against a numbered version: that version alone, in the subject's mode."""
    _need(access, Permission.READ)
    wanted = _version(version)
    schema = await _schema_body(request)
    registry, lock = registry_of(state)
    async with lock:
        sv = await _lookup(registry, subject, wanted)
        if wanted is None:
            problems = await registry.check(subject, schema)
        else:
            mode = await registry.compatibility(subject)
            problems = compatibility_problems(schema, [sv.schema], mode)
    result: dict[str, Any] = {"is_compatible": not problems}
    if verbose:
        result["messages"] = problems
    return _reply(result)


async def _config_reply(state: State, subject: str | None) -> Response[bytes]:
    registry, lock = registry_of(state)
    async with lock:
        mode = (await registry.compatibility(subject)).value
    return _reply({"compatibility": mode, "compatibilityLevel": mode})


async def _set_config(
    request: Request[Any, Any, Any], state: State, subject: str | None
) -> Response[bytes]:
    raw = await request.body()
    _depth(raw, runtime(state).config.limits.max_json_depth)
    try:
        body = _CONFIG.decode(raw)
    except RecursionError:
        raise _refuse(400, 400, "JSON nested too deeply") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise _refuse(400, 400, f"invalid request body: {exc}") from None
    try:
        mode = Compatibility(body.compatibility.upper())
    except ValueError:
        raise _refuse(
            422,
            42203,
            f"invalid compatibility level {body.compatibility[:40]!r}: one of "
            + ", ".join(m.value for m in Compatibility),
        ) from None
    registry, lock = registry_of(state)
    async with lock:
        await registry.set_compatibility(mode, subject)
    return _reply({"compatibility": mode.value})


@get("/config", summary="The global compatibility level (Confluent API)")
async def get_config(state: State, access: AccessDep) -> Response[bytes]:
    _need(access, Permission.READ)
    return await _config_reply(state, None)


@put("/config", summary="Set the global compatibility level (Confluent API)")
async def put_config(
    request: Request[Any, Any, Any], state: State, access: AccessDep
) -> Response[bytes]:
    _need(access, Permission.WRITE)
    return await _set_config(request, state, None)


@get("/config/{subject:str}", summary="A subject's compatibility level (Confluent API)")
async def get_subject_config(
    subject: FromPath[str], state: State, access: AccessDep
) -> Response[bytes]:
    _need(access, Permission.READ)
    return await _config_reply(state, subject)


@put("/config/{subject:str}", summary="Set a subject's compatibility level (Confluent API)")
async def put_subject_config(
    subject: FromPath[str], request: Request[Any, Any, Any], state: State, access: AccessDep
) -> Response[bytes]:
    _need(access, Permission.WRITE)
    _check_subject(subject)
    return await _set_config(request, state, subject)


# --------------------------------------------------------------------------- errors


def _confluent_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Every error of these routes in Confluent's shape: `{"error_code", "message"}`."""
    if isinstance(exc, HTTPException):
        status = exc.status_code
        extra = exc.extra if isinstance(exc.extra, dict) else {}
        code = extra.get("error_code", status)
        message = str(exc.detail)
    elif isinstance(exc, IncompatibleSchema):
        status, code, message = 409, 409, str(exc)
    elif isinstance(exc, UnknownEventType):
        status, code, message = 404, 40401, str(exc)
    elif isinstance(exc, AccessDenied):
        status, code, message = exc.status, exc.status * 100 + 1, str(exc)
    elif isinstance(exc, InvalidInput):
        status, code, message = 422, 42201, str(exc)
    elif isinstance(exc, TidelogError):
        wire_error, status = wire.error_to_wire(exc)
        code, message = status, wire_error.message
    else:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        status, code, message = 500, 50001, "internal error"
    return Response(
        _ENCODER.encode({"error_code": code, "message": message}),
        status_code=status,
        media_type=CONTENT_TYPE,
    )


ROUTES = [
    Router(
        path="/",
        route_handlers=[
            register_schema,
            list_subjects,
            list_versions,
            get_version,
            get_schema_by_id,
            check_compatibility,
            get_config,
            put_config,
            get_subject_config,
            put_subject_config,
        ],
        exception_handlers={Exception: _confluent_error},
        tags=["schema registry"],
    )
]
