"""What the schema registry's routes share: Confluent's bodies, errors and paths.

Kept apart from the routes (`_registry_api`) so the app can answer every
request under the registry's paths, including unknown routes and wrong
methods, in Confluent's error shape (`confluent_error`, `is_registry_path`),
and can let a percent-encoded `/` through to a subject (`keep_encoded_slashes`)
without importing a route module's internals.

Confluent's error codes: 40101 missing or bad credentials, 40301 no grant,
40401 subject not found, 40402 version not found, 40403 schema not found,
40404 subject soft-deleted, 40405 subject not soft-deleted, 40406 version
soft-deleted, 40407 version not soft-deleted, 40408 no subject-level
compatibility, 409 incompatible schema, 42201 invalid schema, 42202 invalid
version, 42203 invalid compatibility level, 42208 invalid subject, 404/405
unknown route or method, 400 malformed JSON, 50001 internal error.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any, Final, cast

import msgspec
from litestar import Request, Response
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, MethodNotAllowedException, NotFoundException
from litestar.types import ASGIApp, Receive, Scope, Send

from tidelog import wire
from tidelog.errors import (
    AccessDenied,
    IncompatibleSchema,
    InvalidInput,
    TidelogError,
    UnknownEventType,
)
from tidelog.schemas import SCHEMAS_STREAM
from tidelog.schemas.registry import subject_problem
from tidelog.security.acl import Access, Permission
from tidelog.server._deps import auth_challenge, check_depth

__all__ = [
    "CONTENT_TYPE",
    "ConfigBody",
    "RegisterSchema",
    "confluent_error",
    "depth",
    "is_registry_path",
    "keep_encoded_slashes",
    "need",
    "refuse",
    "reply",
    "subject_of",
]

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "application/vnd.schemaregistry.v1+json"
_ENCODER: Final = msgspec.json.Encoder()
_PREFIXES: Final = ("subjects", "schemas", "config", "compatibility", "mode", "contexts")
_ENCODED: Final = "tidelog.registry.encoded"
"""Scope key: the path's segments were re-encoded by `keep_encoded_slashes`."""


class RegisterSchema(msgspec.Struct, kw_only=True):
    """A schema to register, look up or check: `schema` is the schema as a JSON string
    (Confluent's form) or, for convenience, as a JSON value.

    `schemaType` is `JSON` (the default here: tidelog's typed events are JSON
    Schema) or `AVRO`. Confluent's own default is Avro; its clients send the
    type explicitly. Unknown fields (`metadata`, `ruleSet`) are ignored."""

    schema: str | dict[str, Any] | bool
    schemaType: str = "JSON"  # Confluent's field name
    references: list[Any] | None = None


class ConfigBody(msgspec.Struct, kw_only=True):
    """`PUT /config` bodies: Confluent's `compatibility`, or `compatibilityLevel`."""

    compatibility: str | None = None
    compatibilityLevel: str | None = None


def refuse(status: int, error_code: int, message: str) -> HTTPException:
    """An error answered as `{"error_code": error_code, "message": message}`."""
    return HTTPException(status_code=status, detail=message, extra={"error_code": error_code})


def reply(value: Any, status: int = 200) -> Response[bytes]:
    return Response(_ENCODER.encode(value), status_code=status, media_type=CONTENT_TYPE)


def need(access: Access, perm: Permission) -> None:
    if not access.can_stream(SCHEMAS_STREAM, perm):
        raise AccessDenied(
            f"{access.principal!r} lacks {perm.value} on {SCHEMAS_STREAM} (the schema registry)"
        )


def depth(raw: bytes, limit: int, status: int = 400, code: int = 400) -> None:
    """Refuse JSON nested deeper than `limit` before decoding it (see `check_depth`)."""
    try:
        check_depth(raw, limit)
    except InvalidInput as exc:
        raise refuse(status, code, str(exc)) from None


def subject_of(request: Request[Any, Any, Any], subject: str) -> str:
    """The subject named by the path, decoded, or 42208 when it cannot name one."""
    if cast(dict[str, Any], request.scope).get(_ENCODED):
        subject = urllib.parse.unquote(subject)
    if problem := subject_problem(subject):
        raise refuse(422, 42208, f"invalid subject {subject[:60]!r}: {problem}")
    return subject


def is_registry_path(path: str) -> bool:
    """Whether `path` is under one of the registry's (Confluent's) top-level paths."""
    return path.strip("/").partition("/")[0] in _PREFIXES


def keep_encoded_slashes(app: ASGIApp) -> ASGIApp:
    """Wraps the app's router: a subject may hold `/`, sent percent-encoded (`a%2Fb`).

    The server decodes the path before routing, so `a%2Fb` would be two
    segments and no route; this runs before the router (`create_app` wraps
    `Litestar.asgi_handler`: Litestar's middleware runs after routing).
    Under the registry's paths, each segment is decoded from the raw path and
    re-encoded alone (`%`, `/` and what is not printable ASCII); the routes
    decode the subject once more (`subject_of`). Other paths are untouched.
    """

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] == ScopeType.HTTP else None
        if isinstance(raw, bytes) and is_registry_path(scope["path"]):
            text = raw.partition(b"?")[0].decode("latin-1")
            segments = [
                urllib.parse.quote(urllib.parse.unquote(s), safe="".join(_SAFE))
                for s in text.split("/")
            ]
            scope["path"] = "/".join(segments)
            cast(dict[str, Any], scope)[_ENCODED] = True
        await app(scope, receive, send)

    return middleware


# every printable ASCII character but `%` and `/` stays as it is (the route sees it)
_SAFE: Final = frozenset(chr(c) for c in range(0x21, 0x7F)) - {"%", "/"}


def confluent_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Every error under the registry's paths in Confluent's shape: `{"error_code", "message"}`."""
    headers: dict[str, str] = {}
    if isinstance(exc, NotFoundException):
        status, code, message = 404, 404, "HTTP 404 Not Found"
    elif isinstance(exc, MethodNotAllowedException):
        status, code, message = 405, 405, "HTTP 405 Method Not Allowed"
        headers = dict(exc.headers or {})
    elif isinstance(exc, HTTPException):
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
    if status == 401:
        headers["WWW-Authenticate"] = auth_challenge(request.headers.get("authorization"))
    return Response(
        _ENCODER.encode({"error_code": code, "message": message}),
        status_code=status,
        media_type=CONTENT_TYPE,
        headers=headers,
    )
