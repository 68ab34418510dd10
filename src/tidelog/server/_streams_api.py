"""Streams: append (one stream or several atomically), read a page, delete, purge, list."""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Request, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, QueryParameter

import tidelog
from tidelog import telemetry, wire
from tidelog.model import category_of, parse_expected_version, validate_stream_name
from tidelog.security.acl import Permission
from tidelog.server._deps import (
    AccessDep,
    append_requests,
    decode_body,
    need_stream,
    new_events,
    page_limit,
    runtime,
)

__all__ = ["ROUTES"]


@post("/v1/streams/{stream:str}/events", status_code=200, summary="Append to a stream")
async def append(
    stream: FromPath[str], request: Request[Any, Any, Any], state: State, access: AccessDep
) -> tidelog.AppendResult:
    rt = runtime(state)
    data = await decode_body(request, wire.WireAppend)
    validate_stream_name(stream)
    need_stream(access, stream, Permission.WRITE)
    events = new_events(rt, access, data)
    started = time.perf_counter()
    with telemetry.publish_span([category_of(stream)], request.headers, count=len(events)) as tc:
        events = telemetry.with_trace_context(events, tc)  # W3C traceparent into metadata
        expected = parse_expected_version(data.expected_version)
        if data.scheduled:  # stored as pending: a `ScheduledResult`, appended when due
            return await rt.store.append(
                stream, events, expected, deliver_at=data.deliver_at, deliver_after=data.delay()
            )
        result = await rt.store.append(stream, events, expected)
        telemetry.record_append(stream, events, result)
    rt.metrics.appended(category_of(stream), len(events), time.perf_counter() - started)
    return result


@post("/v1/append-many", status_code=200, summary="Append to several streams atomically")
async def append_many(
    request: Request[Any, Any, Any], state: State, access: AccessDep
) -> wire.WireResults:
    rt = runtime(state)
    data = await decode_body(request, wire.WireAppendMany)
    requests = append_requests(rt, access, data.streams)
    count = sum(len(r.events) for r in requests.values())
    with telemetry.publish_span(
        {category_of(s) for s in requests}, request.headers, count=count
    ) as tc:
        requests = {
            s: msgspec.structs.replace(r, events=telemetry.with_trace_context(r.events, tc))
            for s, r in requests.items()
        }
        results = await rt.store.append_many(requests)
        telemetry.record_append_many({s: r.events for s, r in requests.items()}, results)
    for stream, req in requests.items():
        rt.metrics.appended(category_of(stream), len(req.events), 0.0)
    return wire.WireResults(results=results)


@get("/v1/streams/{stream:str}/events", summary="Read a stream (one page)")
async def read_stream(
    stream: FromPath[str],
    state: State,
    access: AccessDep,
    from_version: Annotated[int | None, QueryParameter(ge=-1, le=2**62)] = None,
    backwards: FromQuery[bool] = False,
    limit: Annotated[int | None, QueryParameter(ge=0, le=2**62)] = None,
) -> wire.WirePage:
    """Without `from_version`, a backwards page starts at the newest event (the store's rule)."""
    rt = runtime(state)
    validate_stream_name(stream)
    need_stream(access, stream, Permission.READ)
    events = [
        wire.WireEvent.from_recorded(e)
        async for e in rt.store.read_stream(
            stream, from_version, backwards=backwards, limit=page_limit(rt, limit)
        )
    ]
    rt.metrics.read(len(events))
    return wire.WirePage(events=events)


@delete("/v1/streams/{stream:str}", status_code=204, summary="Delete (tombstone) a stream")
async def delete_stream(
    stream: FromPath[str],
    state: State,
    access: AccessDep,
    expected_version: FromQuery[str] = "any",
) -> None:
    rt = runtime(state)
    validate_stream_name(stream)
    need_stream(access, stream, Permission.ADMIN)
    await rt.store.delete_stream(stream, parse_expected_version(expected_version))


@post("/v1/streams/{stream:str}/purge", status_code=204, summary="Erase a system stream")
async def purge_stream(stream: FromPath[str], state: State, access: AccessDep) -> None:
    """Crypto-shredding support: only `$` system streams, only with admin on that stream."""
    rt = runtime(state)
    validate_stream_name(stream)
    need_stream(access, stream, Permission.ADMIN)
    await rt.store.purge_stream(stream)


@get("/v1/streams", summary="List streams")
async def list_streams(
    state: State, access: AccessDep, category: FromQuery[str | None] = None
) -> wire.WireStreams:
    rt = runtime(state)
    streams = [
        s
        async for s in rt.store.list_streams(category)
        if access.can_stream(s.name, Permission.READ)
    ]
    return wire.WireStreams(streams=streams)


ROUTES = [append, append_many, read_stream, delete_stream, purge_stream, list_streams]
