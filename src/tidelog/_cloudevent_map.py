"""CloudEvents 1.0 and tidelog events, mapped both ways: the one mapping.

The server's CloudEvents routes (`tidelog.server._cloudevents`) and the
command line's `tidelog export/import --format cloudevents` both use it, so
an event reads back the same way over HTTP and in a file, and a CloudEvent
becomes the same tidelog event either way. It needs nothing of the server's
extra. The mapping (see docs/http-api.md, "CloudEvents 1.0"):

- the target stream is the stream the caller names (the HTTP `?stream=`
  parameter, the `tidelogstream` extension in a file), else the CloudEvent's
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
  are UUIDs of version 8 (`DERIVED_ID_VERSION`), which the `/v1` append API
  refuses from clients, so only CloudEvents ingest, on behalf of the
  authenticated principal, makes them;
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

Reading back, `to_cloudevent` gives every event a CloudEvent in the JSON
format; `tidelogstream`, `tidelogversion` and `tidelogposition` extensions
locate it in the store.
"""

from __future__ import annotations

import base64
import re
import urllib.parse
import uuid
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from tidelog import wire
from tidelog.errors import InvalidEvent
from tidelog.model import NewEvent, RecordedEvent, validate_event, validate_stream_name

__all__ = [
    "BATCH_CONTENT_TYPE",
    "BATCH_DECODER",
    "CLOUDEVENTS_NAMESPACE",
    "CLOUDEVENT_SCHEMA",
    "DERIVED_ID_VERSION",
    "LOCATION_EXTENSIONS",
    "STRUCTURED_CONTENT_TYPE",
    "STRUCTURED_DECODER",
    "Parsed",
    "cloudevent_id",
    "from_binary",
    "from_structured",
    "media_type",
    "to_cloudevent",
]

DERIVED_ID_VERSION: Final = 8
"""The UUID version of the event ids derived from CloudEvents (`cloudevent_id`);
the server lets no client but an admin choose ids of this version."""
LOCATION_EXTENSIONS: Final = ("tidelogstream", "tidelogversion", "tidelogposition")
"""The extensions `to_cloudevent` adds to locate an event in the store it was read from."""

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
STRUCTURED_DECODER: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])
BATCH_DECODER: Final = msgspec.json.Decoder(list[dict[str, msgspec.Raw]])
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


def _is_jsonmedia_type(media: str | None) -> bool:
    if media is None:
        return True
    base = media.split(";", 1)[0].strip().lower()
    return base in ("application/json", "text/json") or base.endswith("+json")


def media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


class Parsed(msgspec.Struct, kw_only=True):
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
) -> Parsed:
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
    return Parsed(stream=stream, event=event)


DELIVER_AT: Final = "deliverat"
"""The CloudEvents extension that schedules an event (names are lowercase alphanumerics)."""


def _timestamp(value: object) -> datetime | None:
    """An RFC 3339 timestamp with an offset, or None."""
    try:
        parsed = _DATETIME.decode(msgspec.json.encode(value))
    except msgspec.DecodeError:
        return None
    return parsed if parsed is not None and parsed.tzinfo is not None else None


def from_structured(  # noqa: PLR0912 (one branch per CloudEvents attribute rule)
    principal: str, fields: dict[str, msgspec.Raw], stream_param: str | None, max_event_bytes: int
) -> Parsed:
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
        if _is_jsonmedia_type(ct if isinstance(ct, str) else None):
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


def from_binary(
    principal: str,
    headers: list[tuple[str, str]],
    content_type: str | None,
    body: bytes,
    stream_param: str | None,
    max_event_bytes: int,
) -> Parsed:
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
            and name not in LOCATION_EXTENSIONS
        ):
            ce[name] = value
    ce["tidelogstream"] = e.stream
    ce["tidelogversion"] = e.version
    ce["tidelogposition"] = e.position
    ct = meta.get("datacontenttype") if isinstance(meta.get("datacontenttype"), str) else None
    if e.data:
        if _is_jsonmedia_type(ct) and wire.embeds_as_json(e.data):  # else it would lose bytes
            ce["data"] = msgspec.Raw(e.data)
            ce.setdefault("datacontenttype", "application/json")
        elif not _is_jsonmedia_type(ct) and _is_text(e.data):
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
