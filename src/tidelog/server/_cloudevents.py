"""CloudEvents 1.0 over HTTP: ingest (structured, batch and binary mode) and reading back.

The mapping between CloudEvents and tidelog events is `tidelog._cloudevent_map`
(the command line's `export`/`import --format cloudevents` uses it too); see
its docstring and docs/http-api.md. Here: the routes, the request's limits and
grants, and the caller's principal, from which the event ids are derived.

Every malformed CloudEvent is refused as a whole request with a 4xx naming the
rule it broke; nothing of the request is written (a batch is one atomic
`append_many`).
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from typing import Annotated, Any, Final

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromPath, FromQuery, QueryParameter

from tidelog import telemetry
from tidelog._cloudevent_map import (
    BATCH_CONTENT_TYPE,
    BATCH_DECODER,
    CLOUDEVENT_SCHEMA,
    CLOUDEVENTS_NAMESPACE,
    DELIVER_AT,
    STRUCTURED_CONTENT_TYPE,
    STRUCTURED_DECODER,
    Parsed,
    cloudevent_id,
    from_binary,
    from_structured,
    media_type,
    to_cloudevent,
)
from tidelog.errors import InvalidEvent, InvalidInput
from tidelog.model import AppendRequest, AppendResult, NewEvent, category_of, validate_stream_name
from tidelog.security.acl import Permission
from tidelog.server._deps import (
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
    media = media_type(content_type)
    body = await request.body()
    who = access.principal
    parsed: list[Parsed]
    try:
        if media == STRUCTURED_CONTENT_TYPE:
            check_utf8(body)
            check_depth(body, limits.max_json_depth)
            parsed = [
                from_structured(
                    who, STRUCTURED_DECODER.decode(body), stream, limits.max_event_bytes
                )
            ]
        elif media == BATCH_CONTENT_TYPE:
            check_utf8(body)
            check_depth(body, limits.max_json_depth)
            batch = BATCH_DECODER.decode(body)
            if len(batch) > limits.max_events_per_append:
                raise InvalidEvent(f"at most {limits.max_events_per_append} CloudEvents per batch")
            parsed = [from_structured(who, f, stream, limits.max_event_bytes) for f in batch]
        elif "ce-specversion" in request.headers:
            parsed = [
                from_binary(
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
        # the stream and position on the span, as the other append routes put them
        telemetry.record_append_many({s: r.events for s, r in requests.items()}, results)
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
