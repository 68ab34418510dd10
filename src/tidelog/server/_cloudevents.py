"""CloudEvents 1.0 over HTTP: ingest (structured, batch and binary mode) and reading back.

Mapping (see docs/http-api.md):

- the target stream is the `?stream=` query parameter, else the CloudEvent's
  `subject` (a valid, non-system stream name);
- the tidelog event `type` is the CloudEvent `type` (validated as any event type);
- the tidelog event id is derived from the caller's principal, `source` and
  `id` (`cloudevent_id`): re-sending a CloudEvent is an idempotent retry (the
  original result, nothing written), and the same identity sent by the same
  principal to another stream is refused as a duplicate. The principal is part
  of it because ids are unique store-wide: with `source` + `id` alone, a
  principal allowed to write only its own streams could store another
  producer's next CloudEvent first (its ingest then fails with 409) or probe
  whether an id exists in a stream it cannot read (409 versus 200). The ids
  are UUIDs of version 8, which the `/v1` append API refuses from clients, so
  only this ingest, on behalf of the authenticated principal, makes them;
- `id`, `source`, `subject`, `time`, `datacontenttype`, `dataschema` and every
  extension (`correlationid`, `causationid`, `traceparent`, `tracestate`, ...)
  are kept in the event's metadata under their CloudEvents names, so the event
  reads back as the same CloudEvent;
- the `deliverat` extension (an RFC 3339 timestamp with an offset) schedules
  the event (docs/scheduling.md): it stays pending until then. A request with
  scheduled events targets one stream with one `deliverat` (a scheduled
  append is one stream's), else it is refused; the extension stays in the
  metadata like any other;
- JSON `data` is stored byte for byte (the body is decoded into `msgspec.Raw`
  slices, never re-encoded); `data_base64` and binary-mode bodies are stored as
  the bytes they carry.

Every malformed CloudEvent is refused as a whole request with a 4xx naming the
rule it broke; nothing of the request is written (a batch is one atomic
`append_many`).
"""

from __future__ import annotations

import base64
import re
import time
import urllib.parse
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery, QueryParameter

from tidelog import telemetry, wire
from tidelog.errors import InvalidEvent, InvalidInput
from tidelog.model import (
    AppendRequest,
    AppendResult,
    NewEvent,
    RecordedEvent,
    category_of,
    validate_event,
    validate_stream_name,
)
from tidelog.security.acl import Permission
from tidelog.server._deps import (
    DERIVED_ID_VERSION,
    AccessDep,
    Runtime,
    check_depth,
    check_utf8,
    need_stream,
    page_limit,
    runtime,
)

__all__ = [
    "BATCH_CONTENT_TYPE",
    "CLOUDEVENTS_NAMESPACE",
    "CLOUDEVENT_SCHEMA",
    "ROUTES",
    "STRUCTURED_CONTENT_TYPE",
    "cloudevent_id",
    "to_cloudevent",
]

STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+json"
CLOUDEVENTS_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://tidelog.dev/cloudevents")
"""The uuid5 namespace of event ids derived from a CloudEvent's `source` and `id`."""

CLOUDEVENT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "description": "A CloudEvent 1.0 in the JSON event format; extensions are further "
    "attributes (lowercase letters and digits, at most 20 characters).",
    "required": ["specversion", "id", "source", "type"],
    "properties": {
        "specversion": {"const": "1.0"},
        "id": {"type": "string", "minLength": 1},
        "source": {"type": "string", "minLength": 1},
        "type": {"type": "string", "minLength": 1},
        "subject": {"type": "string", "description": "the target stream (unless ?stream=)"},
        "time": {"type": "string", "format": "date-time"},
        "datacontenttype": {"type": "string"},
        "dataschema": {"type": "string"},
        "data": {},
        "data_base64": {"type": "string", "contentEncoding": "base64"},
    },
    "additionalProperties": {"type": ["string", "integer", "boolean"]},
}

_NAME_RE: Final = re.compile(r"[a-z0-9]{1,20}")
_CORE: Final = frozenset({"id", "source", "specversion", "type"})
_OPTIONAL_STRINGS: Final = frozenset({"subject", "time", "datacontenttype", "dataschema"})
_INT32: Final = (-(2**31), 2**31 - 1)
_MAX_ATTRIBUTE_CHARS: Final = 4096
_JSON: Final = msgspec.json.Decoder()
_STRUCTURED: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
_BATCH: Final = msgspec.json.Decoder(list[dict[str, msgspec.Raw]])
_DATETIME: Final = msgspec.json.Decoder(datetime)


def cloudevent_id(principal: str, source: str, event_id: str) -> uuid.UUID:
    """The tidelog event id of the CloudEvent (`source`, `id`) sent by `principal`.

    Deterministic, so a producer's retries dedupe; scoped to the principal, so
    no other principal can occupy or probe it (see the module docstring). The
    length prefixes keep ("a", "bc") and ("ab", "c") apart. The uuid5 hash is
    stamped as version 8 (RFC 9562's custom UUIDs): clients may not choose
    such ids (`_deps.new_events`), so the id space is the server's alone.
    """
    name = f"{len(principal)}:{principal}:{len(source)}:{source}:{event_id}"
    hashed = uuid.uuid5(CLOUDEVENTS_NAMESPACE, name).int
    return uuid.UUID(int=(hashed & ~(0xF << 76)) | (DERIVED_ID_VERSION << 76))


def _is_json_media(media: str | None) -> bool:
    if media is None:
        return True
    base = media.split(";", 1)[0].strip().lower()
    return base in ("application/json", "text/json") or base.endswith("+json")


def _media(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


class _Parsed(msgspec.Struct, kw_only=True):
    stream: str
    event: NewEvent


def _attribute(name: str, value: Any) -> str | int | bool:
    """A context attribute's value: a string, a bool or a 32-bit integer (CE's JSON types)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT32[0] <= value <= _INT32[1]:
            raise InvalidEvent(f"CloudEvents attribute {name!r}: integer out of 32-bit range")
        return value
    if isinstance(value, str):
        if len(value) > _MAX_ATTRIBUTE_CHARS:
            raise InvalidEvent(
                f"CloudEvents attribute {name!r} longer than {_MAX_ATTRIBUTE_CHARS} characters"
            )
        return value
    raise InvalidEvent(
        f"CloudEvents attribute {name!r} must be a string, boolean or integer, "
        f"got {type(value).__name__}"
    )


def _check_name(name: str) -> None:
    if _NAME_RE.fullmatch(name) is None:
        raise InvalidEvent(
            f"invalid CloudEvents attribute name {name[:40]!r}: "
            "lowercase ASCII letters and digits, at most 20 characters"
        )


def _build(
    principal: str,
    attrs: dict[str, str | int | bool],
    data: bytes,
    stream_param: str | None,
    max_event_bytes: int,
) -> _Parsed:
    """Check the context attributes and turn one CloudEvent into a tidelog event."""
    if attrs.get("specversion") != "1.0":
        raise InvalidEvent(
            f"CloudEvents specversion must be '1.0', got {attrs.get('specversion')!r}"
        )
    for required in ("id", "source", "type"):
        value = attrs.get(required)
        if not isinstance(value, str) or not value:
            raise InvalidEvent(f"CloudEvents attribute {required!r} is required (non-empty string)")
    for name in _OPTIONAL_STRINGS:
        if name in attrs and not isinstance(attrs[name], str):
            raise InvalidEvent(f"CloudEvents attribute {name!r} must be a string")
    for moment in ("time", DELIVER_AT):
        if moment in attrs and _timestamp(attrs[moment]) is None:
            raise InvalidEvent(
                f"CloudEvents {moment} {attrs[moment]!r} is not an RFC 3339 timestamp"
            )
    subject = attrs.get("subject")
    stream = stream_param if stream_param is not None else subject
    if not isinstance(stream, str):
        raise InvalidEvent("no target stream: give the CloudEvent a subject, or ?stream=")
    validate_stream_name(stream)
    if stream.startswith("$"):
        raise InvalidEvent(f"system stream {stream!r} cannot be written with CloudEvents")
    if len(data) > max_event_bytes:
        raise InvalidEvent(f"event data larger than {max_event_bytes} bytes")
    source, ce_id, ce_type = str(attrs["source"]), str(attrs["id"]), str(attrs["type"])
    metadata: dict[str, Any] = {k: v for k, v in attrs.items() if k not in ("specversion", "type")}
    event = validate_event(
        NewEvent(
            type=ce_type,
            data=data,
            metadata=metadata,
            id=cloudevent_id(principal, source, ce_id),
            deliver_at=_timestamp(attrs[DELIVER_AT]) if DELIVER_AT in attrs else None,
        )
    )
    return _Parsed(stream=stream, event=event)


DELIVER_AT: Final = "deliverat"
"""The CloudEvents extension that schedules an event (names are lowercase alphanumerics)."""


def _timestamp(value: object) -> datetime | None:
    """An RFC 3339 timestamp with an offset, or None."""
    try:
        parsed = _DATETIME.decode(msgspec.json.encode(value))
    except msgspec.DecodeError:
        return None
    return parsed if parsed is not None and parsed.tzinfo is not None else None


def _from_structured(  # noqa: PLR0912 (one branch per CloudEvents attribute rule)
    principal: str, fields: dict[str, msgspec.Raw], stream_param: str | None, max_event_bytes: int
) -> _Parsed:
    """One CloudEvent in the JSON event format (structured mode, or a batch member)."""
    attrs: dict[str, str | int | bool] = {}
    raw_data: msgspec.Raw | None = None
    data_base64: Any = None
    for name, raw in fields.items():
        if name == "data":
            if bytes(raw) != b"null":
                raw_data = raw
            continue
        value = _JSON.decode(raw)
        if value is None:
            continue  # a JSON null attribute is an absent attribute (CloudEvents JSON format)
        if name == "data_base64":
            data_base64 = value
            continue
        _check_name(name)
        attrs[name] = _attribute(name, value)
    if raw_data is not None and data_base64 is not None:
        raise InvalidEvent("a CloudEvent has either data or data_base64, not both")
    data = b""
    if data_base64 is not None:
        if not isinstance(data_base64, str):
            raise InvalidEvent("CloudEvents data_base64 must be a string")
        try:
            data = base64.b64decode(data_base64, validate=True)
        except ValueError:
            raise InvalidEvent("CloudEvents data_base64 is not valid base64") from None
    elif raw_data is not None:
        ct = attrs.get("datacontenttype")
        if _is_json_media(ct if isinstance(ct, str) else None):
            data = bytes(raw_data)  # byte-exact: the slice of the request body
        else:
            value = _JSON.decode(raw_data)
            if not isinstance(value, str):
                raise InvalidEvent(
                    f"CloudEvents data of non-JSON content type {ct!r} must be a JSON "
                    "string (or use data_base64)"
                )
            data = value.encode("utf-8")
    return _build(principal, attrs, data, stream_param, max_event_bytes)


def _from_binary(
    principal: str,
    headers: list[tuple[str, str]],
    content_type: str | None,
    body: bytes,
    stream_param: str | None,
    max_event_bytes: int,
) -> _Parsed:
    """Binary mode: attributes in `ce-*` headers (percent-encoded), the body is the data."""
    attrs: dict[str, str | int | bool] = {}
    for header, value in headers:
        key = header.lower()
        if not key.startswith("ce-"):
            continue
        name = key[3:]
        _check_name(name)
        if name == "datacontenttype":
            raise InvalidEvent("binary mode: give the data's media type as Content-Type")
        if name in attrs:
            raise InvalidEvent(f"header ce-{name} given more than once")
        try:
            decoded = urllib.parse.unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise InvalidEvent(f"header ce-{name} is not percent-encoded UTF-8") from None
        attrs[name] = _attribute(name, decoded)
    if content_type:
        attrs["datacontenttype"] = content_type
    return _build(principal, attrs, body, stream_param, max_event_bytes)


class CloudEventsAccepted(msgspec.Struct, kw_only=True):
    """What an ingest wrote (or had written: a retry): per stream, the last version and position.

    `ids` are the tidelog event ids, in request order.
    """

    results: dict[str, AppendResult]
    ids: list[uuid.UUID]


@post(
    "/v1/cloudevents",
    status_code=200,
    summary="Ingest CloudEvents (structured, batch or binary mode)",
)
async def ingest_cloudevents(
    request: Request[Any, Any, Any],
    state: State,
    access: AccessDep,
    stream: FromQuery[str | None] = None,
) -> CloudEventsAccepted:
    """Append CloudEvents 1.0 to their streams, atomically (one `append_many`)."""
    rt = runtime(state)
    limits = rt.config.limits
    content_type = request.headers.get("content-type")
    media = _media(content_type)
    body = await request.body()
    who = access.principal
    parsed: list[_Parsed]
    try:
        if media == STRUCTURED_CONTENT_TYPE:
            check_utf8(body)
            check_depth(body, limits.max_json_depth)
            parsed = [
                _from_structured(who, _STRUCTURED.decode(body), stream, limits.max_event_bytes)
            ]
        elif media == BATCH_CONTENT_TYPE:
            check_utf8(body)
            check_depth(body, limits.max_json_depth)
            batch = _BATCH.decode(body)
            if len(batch) > limits.max_events_per_append:
                raise InvalidEvent(f"at most {limits.max_events_per_append} CloudEvents per batch")
            parsed = [_from_structured(who, f, stream, limits.max_event_bytes) for f in batch]
        elif "ce-specversion" in request.headers:
            parsed = [
                _from_binary(
                    who,
                    list(request.headers.items()),
                    content_type,
                    body,
                    stream,
                    limits.max_event_bytes,
                )
            ]
        else:
            raise HTTPException(
                status_code=415,
                detail=f"send {STRUCTURED_CONTENT_TYPE}, {BATCH_CONTENT_TYPE}, "
                "or binary mode (ce-specversion and the other ce-* headers)",
            )
    except RecursionError:  # nesting left open is not the depth check's to refuse
        raise InvalidInput("JSON nested too deeply") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"invalid CloudEvents JSON: {exc}") from None
    if not parsed:
        return CloudEventsAccepted(results={}, ids=[])
    by_stream: dict[str, list[NewEvent]] = defaultdict(list)
    for p in parsed:
        need_stream(access, p.stream, Permission.WRITE)
        by_stream[p.stream].append(p.event)
    if any(p.event.deliver_at is not None for p in parsed):
        return await _schedule(rt, by_stream)
    started = time.perf_counter()
    count = len(parsed)
    with telemetry.publish_span(
        {category_of(s) for s in by_stream}, request.headers, count=count
    ) as tc:
        requests = {
            s: AppendRequest(telemetry.with_trace_context(events, tc))
            for s, events in by_stream.items()
        }
        results = await rt.store.append_many(requests)
    elapsed = time.perf_counter() - started
    for s, events in by_stream.items():
        rt.metrics.appended(category_of(s), len(events), elapsed)
    return CloudEventsAccepted(results=results, ids=[p.event.id for p in parsed])


async def _schedule(rt: Runtime, by_stream: dict[str, list[NewEvent]]) -> CloudEventsAccepted:
    """Scheduled CloudEvents: one stream's scheduled append (mixing is refused by it)."""
    if len(by_stream) != 1:
        raise InvalidEvent(
            f"CloudEvents with {DELIVER_AT} must all target one stream: "
            "a scheduled append is one stream's"
        )
    [(stream, events)] = by_stream.items()
    result = await rt.store.append(stream, events)
    return CloudEventsAccepted(results={stream: result}, ids=[e.id for e in events])


# --------------------------------------------------------------------------- reading


def _ext_name(name: str) -> bool:
    return _NAME_RE.fullmatch(name) is not None and name not in _CORE and name != "data"


def to_cloudevent(e: RecordedEvent) -> dict[str, Any]:
    """A recorded event as a CloudEvent in the JSON format (data as raw JSON when it is JSON).

    Events ingested as CloudEvents read back with their original attributes;
    other events get `id` = the event id, `source` = `/tidelog/streams/{stream}`,
    `subject` = the stream and `time` = the recording time. `tidelogstream`,
    `tidelogversion` and `tidelogposition` extensions locate the event in the store.
    """
    meta = e.metadata
    ce: dict[str, Any] = {
        "specversion": "1.0",
        "id": meta["id"] if isinstance(meta.get("id"), str) else str(e.id),
        "source": meta["source"]
        if isinstance(meta.get("source"), str)
        else f"/tidelog/streams/{e.stream}",
        "type": e.type,
        "subject": meta["subject"] if isinstance(meta.get("subject"), str) else e.stream,
        "time": meta["time"] if isinstance(meta.get("time"), str) else _rfc3339(e.recorded_at),
    }
    for name, value in meta.items():
        if (
            _ext_name(name)
            and name not in ce
            and isinstance(value, (str, bool, int))
            and name not in ("tidelogstream", "tidelogversion", "tidelogposition")
        ):
            ce[name] = value
    ce["tidelogstream"] = e.stream
    ce["tidelogversion"] = e.version
    ce["tidelogposition"] = e.position
    ct = meta.get("datacontenttype") if isinstance(meta.get("datacontenttype"), str) else None
    if e.data:
        if _is_json_media(ct) and wire.embeds_as_json(e.data):  # else it would lose bytes
            ce["data"] = msgspec.Raw(e.data)
            ce.setdefault("datacontenttype", "application/json")
        elif not _is_json_media(ct) and _is_text(e.data):
            ce["data"] = e.data.decode("utf-8")
        else:
            ce["data_base64"] = base64.b64encode(e.data).decode("ascii")
    return ce


def _rfc3339(moment: datetime) -> str:
    """RFC 3339 needs an offset: a naive recording time is UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_ENCODER: Final = msgspec.json.Encoder()


@get(
    "/v1/streams/{stream:str}/cloudevents",
    summary="Read a stream as a CloudEvents batch (one page)",
    media_type=BATCH_CONTENT_TYPE,
)
async def read_cloudevents(
    stream: FromPath[str],
    state: State,
    access: AccessDep,
    from_version: Annotated[int, QueryParameter(ge=0, le=2**62)] = 0,
    limit: Annotated[int | None, QueryParameter(ge=0, le=2**62)] = None,
) -> Response[bytes]:
    rt = runtime(state)
    validate_stream_name(stream)
    need_stream(access, stream, Permission.READ)
    events = [
        to_cloudevent(e)
        async for e in rt.store.read_stream(stream, from_version, limit=page_limit(rt, limit))
    ]
    rt.metrics.read(len(events))
    return Response(_ENCODER.encode(events), media_type=BATCH_CONTENT_TYPE)


ROUTES = [ingest_cloudevents, read_cloudevents]
