"""The HTTP application: the store's API over Litestar, with auth, ACLs and limits.

Request and response bodies are the msgspec types of `tidelog.wire`,
so the OpenAPI document at `/schema` is generated from the same definitions
the remote engine decodes. Every error from the store is turned into a 4xx
(or a 503 when the backend is down) by one exception handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar, cast

import msgspec
from litestar import Litestar, Request, Response, WebSocket, delete, get, post, websocket
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, WebSocketDisconnect
from litestar.openapi import OpenAPIConfig
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.types import ASGIApp, Message, Receive, Scope, Send

import tidelog
from tidelog import telemetry, wire
from tidelog.engines.contract import Engine
from tidelog.errors import AccessDenied, InvalidEvent, InvalidInput, TidelogError
from tidelog.model import AppendRequest, category_of, validate_stream_name
from tidelog.security.acl import Access, Permission
from tidelog.security.tokens import Authenticator, AuthError
from tidelog.server._config import ServerConfig
from tidelog.server._connections import PRINCIPAL_KEY, ConnectionLimit
from tidelog.server._metrics import Metrics

__all__ = ["create_app"]

log = logging.getLogger(__name__)

T = TypeVar("T")

AccessDep = NamedDependency[Access]


@dataclass
class _Runtime:
    """What the routes share: the store, the config, auth and live counters."""

    store: Engine
    config: ServerConfig
    auth: Authenticator
    metrics: Metrics
    subscriptions: Counter[str] = field(default_factory=Counter)
    connections: ConnectionLimit = field(default_factory=lambda: ConnectionLimit(0))


def _runtime(state: State) -> _Runtime:
    rt: _Runtime = state.runtime
    return rt


def _principal(connection: ASGIConnection[Any, Any, Any, Any], rt: _Runtime) -> str:
    """The caller: the verified client certificate's principal, or the bearer token's.

    The connection-limit middleware authenticates first and leaves the result in
    the scope; it is reused rather than checking a token twice.
    """
    cached = cast(dict[str, Any], connection.scope).get(PRINCIPAL_KEY)
    if isinstance(cached, str):
        return cached
    extensions: dict[str, Any] = dict(connection.scope.get("extensions") or {})
    tls = extensions.get("tls")
    principal: str | None = None
    if isinstance(tls, dict) and isinstance(tls.get("client_principal"), str):
        principal = tls["client_principal"]
    header = connection.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            raise AuthError("use 'Authorization: Bearer <token>'")
        principal = rt.auth.authenticate(token.strip())
    if not principal:
        raise AuthError("authentication required")
    return principal


async def _access(request: Request[Any, Any, Any], state: State) -> Access:
    rt = _runtime(state)
    return Access(_principal(request, rt), rt.config.grants)


def _need_stream(access: Access, stream: str, perm: Permission) -> None:
    if not access.can_stream(stream, perm):
        raise AccessDenied(f"{access.principal!r} lacks {perm.value} on stream {stream!r}")


def _need_categories(access: Access, categories: Sequence[str] | None, perm: Permission) -> None:
    if categories:
        for c in categories:
            if not access.can_category(c, perm):
                raise AccessDenied(f"{access.principal!r} lacks {perm.value} on category {c!r}")
    elif not access.can_all(perm):
        raise AccessDenied(f"{access.principal!r} lacks {perm.value} on the global log ($all)")


_BODY_DECODERS: dict[type[Any], msgspec.json.Decoder[Any]] = {}


async def _body(request: Request[Any, Any, Any], kind: type[T]) -> T:
    """Decode a JSON body straight from bytes, so `msgspec.Raw` event data keeps every byte.

    (Litestar's own body parsing goes through Python objects first.)
    """
    decoder = _BODY_DECODERS.get(kind)
    if decoder is None:
        decoder = _BODY_DECODERS[kind] = msgspec.json.Decoder(kind)
    raw = await request.body()
    _check_depth(raw, _runtime(request.app.state).config.limits.max_json_depth)
    try:
        return cast(T, decoder.decode(raw))
    except RecursionError:
        raise InvalidInput("JSON nested too deeply") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"invalid request body: {exc}") from None


_STRING_OR_TAIL = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"|("[\s\S]*)', re.DOTALL)
_NOT_SKELETON = bytes(b for b in range(256) if b not in b'[]{}"\\')
_AS_PARENS = bytes.maketrans(b"[{]}", b"(())")
_OPEN, _CLOSE = b"()"


def _nesting(raw: bytes) -> bytes:
    """The body's brackets outside strings as `(` and `)`, in one pass of C code.

    One `translate` keeps only brackets, quotes and backslashes; without a
    backslash no string holds an escaped quote, so splitting at the quotes cuts
    the strings out. Else a regex cuts each complete string, and from a string
    that never ends it keeps the rest of the body as it is (splitting at its
    quotes then), as a scan that retried that string at every later quote used
    to: the regex reads each byte once, where that scan read the tail again at
    each quote, in time growing with the square of the body.
    """
    skeleton = raw.translate(None, _NOT_SKELETON)
    if b"\\" in skeleton:
        pieces = _STRING_OR_TAIL.split(raw)  # outside, None or the tail, outside, ...
        tail = pieces[-2] if len(pieces) > 1 else None
        skeleton = b"".join([*pieces[::2], tail or b""]).translate(None, _NOT_SKELETON)
    return b"".join(skeleton.split(b'"')[::2]).translate(_AS_PARENS)


def _height(nesting: bytes, above: int) -> tuple[int, bool]:
    """The tallest matched pair (1 for `()`), and whether anything can never be matched.

    One pass: each open bracket holds the tallest pair closed inside it so far.
    A stray backslash is a wall no pair spans; brackets left open or closed
    without an opener are unmatched too. A pair taller than `above` ends the
    pass: that is all the caller needs to know.
    """
    inside: list[int] = []  # per open bracket, the tallest pair closed inside it
    tallest = 0
    stray = False
    for byte in nesting:
        if byte == _OPEN:
            inside.append(0)
        elif byte == _CLOSE and inside:
            height = inside.pop() + 1
            if height > tallest:
                tallest = height
                if tallest > above:
                    break
            if inside and inside[-1] < height:
                inside[-1] = height
        else:  # a close without an opener, or a backslash outside strings
            stray = True
            inside.clear()
    return tallest, stray or bool(inside)


def _check_depth(raw: bytes, limit: int) -> None:
    """Refuse deeply nested JSON before decoding it, in time linear in the body.

    Each `replace` of `()` peels the innermost pairs, lowering the depth by one:
    C code, a byte per nanosecond, enough for the few rounds a body of events
    needs. The rounds stop at a budget of four times the brackets' length; what
    is left is measured in one pass of Python instead (`_height`), so neither a
    body of many deep towers nor a long one refused late costs more than a few
    passes over it. The decisions are exactly those of peeling `limit` times:
    too deep when every round peeled something and something is left.
    """
    nesting = _nesting(raw)
    if len(nesting) <= limit:
        return
    budget = 4 * len(nesting)
    peeled_rounds = 0
    while peeled_rounds < limit:
        if budget < len(nesting):
            # rounds r..limit peel something iff a pair is `limit - r` tall here
            rest = limit - peeled_rounds
            tallest, stray = _height(nesting, rest)
            if tallest > rest or (tallest == rest and stray):
                break
            return
        budget -= len(nesting)
        peeled = nesting.replace(b"()", b"")
        if len(peeled) == len(nesting):  # nothing left, or unbalanced: the decoder says so
            return
        nesting = peeled
        peeled_rounds += 1
    else:
        if not nesting:
            return
    raise InvalidInput(f"JSON nested deeper than {limit} levels")


def _expected(value: str | int) -> tidelog.ExpectedVersion:
    return wire.expected_from_wire(value)


def _events(rt: _Runtime, body: wire.WireAppend) -> list[tidelog.NewEvent]:
    limits = rt.config.limits
    if len(body.events) > limits.max_events_per_append:
        raise InvalidEvent(f"at most {limits.max_events_per_append} events per append")
    events = [e.to_new_event() for e in body.events]
    for e in events:
        if len(e.data) > limits.max_event_bytes:
            raise InvalidEvent(f"event data larger than {limits.max_event_bytes} bytes")
    return events


# --------------------------------------------------------------------------- streams


@post("/v1/streams/{stream:str}/events", status_code=200, summary="Append to a stream")
async def append(
    stream: FromPath[str], request: Request[Any, Any, Any], state: State, access: AccessDep
) -> tidelog.AppendResult:
    rt = _runtime(state)
    data = await _body(request, wire.WireAppend)
    validate_stream_name(stream)
    _need_stream(access, stream, Permission.WRITE)
    events = _events(rt, data)
    started = time.perf_counter()
    with telemetry.publish_span([category_of(stream)], request.headers, count=len(events)) as tc:
        events = telemetry.with_trace_context(events, tc)  # W3C traceparent into metadata
        result = await rt.store.append(stream, events, _expected(data.expected_version))
        telemetry.record_append(stream, events, result)
    rt.metrics.appended(category_of(stream), len(events), time.perf_counter() - started)
    return result


@post("/v1/append-many", status_code=200, summary="Append to several streams atomically")
async def append_many(
    request: Request[Any, Any, Any], state: State, access: AccessDep
) -> wire.WireResults:
    rt = _runtime(state)
    data = await _body(request, wire.WireAppendMany)
    requests = _append_requests(rt, access, data.streams)
    count = sum(len(r.events) for r in requests.values())
    with telemetry.publish_span(
        {category_of(s) for s in requests}, request.headers, count=count
    ) as tc:
        requests = {
            s: msgspec.structs.replace(r, events=telemetry.with_trace_context(r.events, tc))
            for s, r in requests.items()
        }
        results = await rt.store.append_many(requests)
    for stream, req in requests.items():
        rt.metrics.appended(category_of(stream), len(req.events), 0.0)
    return wire.WireResults(results=results)


def _append_requests(
    rt: _Runtime, access: AccessDep, streams: dict[str, wire.WireAppend], *, names: bool = True
) -> dict[str, AppendRequest]:
    """The appends of a request, access-checked and within the server's limits.

    `names=False` leaves the stream names to the store: a transactional commit
    fences the member before it checks its appends, as every engine does.
    """
    out: dict[str, AppendRequest] = {}
    total = 0
    for stream, body in streams.items():
        if names:
            validate_stream_name(stream)
        _need_stream(access, stream, Permission.WRITE)
        events = _events(rt, body)
        total += len(events)
        out[stream] = AppendRequest(events, _expected(body.expected_version))
    if total > rt.config.limits.max_events_per_append:
        raise InvalidEvent(f"at most {rt.config.limits.max_events_per_append} events per request")
    return out


def _page_limit(rt: _Runtime, limit: int | None) -> int:
    cap = rt.config.limits.max_page
    if limit is None:
        return cap
    if limit < 0:
        raise InvalidInput("limit must be >= 0")
    return min(limit, cap)


@get("/v1/streams/{stream:str}/events", summary="Read a stream (one page)")
async def read_stream(
    stream: FromPath[str],
    state: State,
    access: AccessDep,
    from_version: Annotated[int, QueryParameter(ge=-1, le=2**62)] = 0,
    backwards: FromQuery[bool] = False,
    limit: Annotated[int | None, QueryParameter(ge=0, le=2**62)] = None,
) -> wire.WirePage:
    rt = _runtime(state)
    validate_stream_name(stream)
    _need_stream(access, stream, Permission.READ)
    events = [
        wire.WireEvent.from_recorded(e)
        async for e in rt.store.read_stream(
            stream, from_version, backwards=backwards, limit=_page_limit(rt, limit)
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
    rt = _runtime(state)
    validate_stream_name(stream)
    _need_stream(access, stream, Permission.ADMIN)
    await rt.store.delete_stream(stream, _expected(expected_version))


@post("/v1/streams/{stream:str}/purge", status_code=204, summary="Erase a system stream")
async def purge_stream(stream: FromPath[str], state: State, access: AccessDep) -> None:
    """Crypto-shredding support: only `$` system streams, only with admin on that stream."""
    rt = _runtime(state)
    validate_stream_name(stream)
    _need_stream(access, stream, Permission.ADMIN)
    await rt.store.purge_stream(stream)


@get("/v1/streams", summary="List streams")
async def list_streams(
    state: State, access: AccessDep, category: FromQuery[str | None] = None
) -> wire.WireStreams:
    rt = _runtime(state)
    streams = [
        s
        async for s in rt.store.list_streams(category)
        if access.can_stream(s.name, Permission.READ)
    ]
    return wire.WireStreams(streams=streams)


# --------------------------------------------------------------------------- log


@get("/v1/log", summary="Read the global log (one page)")
async def read_all(
    state: State,
    access: AccessDep,
    from_position: Annotated[int, QueryParameter(ge=0, le=2**62)] = 0,
    category: FromQuery[list[str] | None] = None,
    type: FromQuery[list[str] | None] = None,
    partition: FromQuery[list[int] | None] = None,
    limit: Annotated[int | None, QueryParameter(ge=0, le=2**62)] = None,
) -> wire.WirePage:
    rt = _runtime(state)
    _need_categories(access, category, Permission.READ)
    events = [
        wire.WireEvent.from_recorded(e)
        async for e in rt.store.read_all(
            from_position, category, type, _page_limit(rt, limit), partition
        )
        if access.can_stream(e.stream, Permission.READ)
    ]
    rt.metrics.read(len(events))
    return wire.WirePage(events=events)


@get("/v1/log/count", summary="Count the events of categories (consumer lag)")
async def count_events(
    state: State,
    access: AccessDep,
    category: FromQuery[list[str]],
    from_position: Annotated[int, QueryParameter(ge=0, le=2**62)] = 0,
    partition: FromQuery[list[int] | None] = None,
) -> wire.WireCount:
    """How many events of these categories (and partitions) are at `from_position` or later.

    Categories are required: a count of the whole log would include system
    streams that `$all` does not grant, so it is refused rather than filtered.
    """
    rt = _runtime(state)
    _need_categories(access, category, Permission.READ)
    return wire.WireCount(count=await rt.store.count_events(from_position, category, partition))


@get("/v1/log/head", summary="The newest position")
async def head(state: State, access: AccessDep) -> wire.WireHead:
    return wire.WireHead(position=await _runtime(state).store.last_position())


@get("/v1/info", summary="Engine and partitioning")
async def info(state: State, access: AccessDep) -> wire.WireInfo:
    rt = _runtime(state)
    return wire.WireInfo(
        engine=rt.store.name, partition_count=rt.store.partition_count, version=tidelog.__version__
    )


@get("/v1/subscribe", summary="Subscribe (Server-Sent Events; the SSE id is the position)")
async def subscribe(
    request: Request[Any, Any, Any],
    state: State,
    access: AccessDep,
    from_position: Annotated[int, QueryParameter(ge=0, le=2**62)] = 0,
    category: FromQuery[list[str] | None] = None,
    type: FromQuery[list[str] | None] = None,
    partition: FromQuery[list[int] | None] = None,
) -> ServerSentEvent:
    rt = _runtime(state)
    _need_categories(access, category, Permission.READ)
    last_id = request.headers.get("last-event-id")
    if last_id is not None:
        if not last_id.isdigit() or len(last_id) > 18:
            raise InvalidInput("Last-Event-ID must be a position")
        from_position = int(last_id) + 1
    _check_subscription_quota(rt, access)
    return ServerSentEvent(
        _sse_events(rt, access, from_position, category, type, partition),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _live(
    rt: _Runtime,
    access: Access,
    from_position: int,
    categories: list[str] | None,
    types: list[str] | None,
    partitions: list[int] | None,
) -> AsyncIterator[tidelog.RecordedEvent | None]:
    """Events the principal may read, live; None every keep-alive interval of silence.

    A bounded queue sits between the store's subscription and the client, so a
    slow client pauses the subscription instead of growing memory; the send
    timeout (see `_send_timeout`) drops a client that stops reading.
    """
    queue: asyncio.Queue[tidelog.RecordedEvent | BaseException | None] = asyncio.Queue(maxsize=256)

    async def pump() -> None:
        try:
            async for e in rt.store.subscribe(from_position, categories, types, partitions):
                if access.can_stream(e.stream, Permission.READ):
                    await queue.put(e)
        except BaseException as exc:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(exc)
            raise

    task = asyncio.create_task(pump())
    principal = access.principal
    rt.subscriptions[principal] += 1
    rt.metrics.subscriptions.inc()
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), rt.config.limits.keepalive_interval)
            except TimeoutError:
                yield None
                continue
            if isinstance(item, BaseException) or item is None:
                return
            rt.metrics.read(1)
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TidelogError):
            await task
        rt.subscriptions[principal] -= 1
        rt.metrics.subscriptions.dec()


def _check_subscription_quota(rt: _Runtime, access: Access) -> None:
    if rt.subscriptions[access.principal] >= rt.config.limits.max_subscriptions_per_principal:
        raise HTTPException(status_code=429, detail="too many subscriptions for this principal")


async def _sse_events(
    rt: _Runtime,
    access: Access,
    from_position: int,
    categories: list[str] | None,
    types: list[str] | None,
    partitions: list[int] | None,
) -> AsyncIterator[ServerSentEventMessage]:
    encoder = msgspec.json.Encoder()
    async for e in _live(rt, access, from_position, categories, types, partitions):
        if e is None:
            yield ServerSentEventMessage(comment="keep-alive")
        else:
            yield ServerSentEventMessage(
                data=encoder.encode(wire.WireEvent.from_recorded(e)).decode(),
                id=e.position,
                event="event",
            )


async def _ws_stream(
    socket: WebSocket[Any, Any, Any],
    rt: _Runtime,
    events: AsyncIterator[tidelog.RecordedEvent | None],
) -> None:
    """Send events until the client goes away; a reader task notices the disconnect."""
    encoder = msgspec.json.Encoder()

    async def send_all() -> None:
        async for e in events:
            text = (
                '{"keepalive":true}'
                if e is None
                else encoder.encode(wire.WireEvent.from_recorded(e)).decode()
            )
            await asyncio.wait_for(socket.send_text(text), rt.config.limits.send_timeout)

    async def until_disconnect() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await socket.receive_data("text")

    sender = asyncio.create_task(send_all())
    reader = asyncio.create_task(until_disconnect())
    try:
        done, _ = await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in (sender, reader):
            task.cancel()
        await asyncio.gather(sender, reader, return_exceptions=True)
        if isinstance(events, AsyncGenerator):
            await events.aclose()


@websocket("/v1/ws/subscribe")
async def ws_subscribe(
    socket: WebSocket[Any, Any, Any],
    from_position: Annotated[int, QueryParameter(ge=0, le=2**62)] = 0,
    category: FromQuery[list[str] | None] = None,
    type: FromQuery[list[str] | None] = None,
    partition: FromQuery[list[int] | None] = None,
) -> None:
    """Live events as JSON text frames.

    Authenticate with the Authorization header, or (browsers cannot set it) with
    a first message `{"token": "..."}` within five seconds.
    """
    rt = _runtime(socket.app.state)
    await socket.accept()
    try:
        with contextlib.ExitStack() as slot:
            try:
                principal = _principal(socket, rt)  # the middleware counted this one
            except AuthError:
                first = await asyncio.wait_for(socket.receive_text(), 5.0)
                token = msgspec.json.decode(first[:16384]).get("token") if first else None
                if not isinstance(token, str):
                    raise AuthError('send {"token": "..."} first') from None
                principal = rt.auth.authenticate(token)
                slot.enter_context(rt.connections.hold(principal))
            access = Access(principal, rt.config.grants)
            _need_categories(access, category, Permission.READ)
            _check_subscription_quota(rt, access)
            await _ws_stream(
                socket, rt, _live(rt, access, from_position, category, type, partition)
            )
    except (AccessDenied, TidelogError, HTTPException, ValueError, TimeoutError) as exc:
        reason = str(exc)[:120]
        with contextlib.suppress(Exception):
            await socket.close(code=1008, reason=reason)
    except WebSocketDisconnect:
        return


# --------------------------------------------------------------------------- groups


@post("/v1/groups/{group:str}/{category:str}/members/{member:str}", status_code=200)
async def join_group(
    group: FromPath[str],
    category: FromPath[str],
    member: FromPath[str],
    data: JSONBody[wire.WireJoin],
    state: State,
    access: AccessDep,
) -> tidelog.Membership:
    _need_categories(access, [category], Permission.READ)
    return await _runtime(state).store.join_group(group, category, member, _lease(data.lease))


@post("/v1/groups/{group:str}/{category:str}/members/{member:str}/heartbeat", status_code=200)
async def heartbeat(
    group: FromPath[str],
    category: FromPath[str],
    member: FromPath[str],
    data: JSONBody[wire.WireJoin],
    state: State,
    access: AccessDep,
) -> tidelog.Membership:
    _need_categories(access, [category], Permission.READ)
    return await _runtime(state).store.heartbeat(group, category, member, _lease(data.lease))


@delete("/v1/groups/{group:str}/{category:str}/members/{member:str}", status_code=204)
async def leave_group(
    group: FromPath[str],
    category: FromPath[str],
    member: FromPath[str],
    state: State,
    access: AccessDep,
) -> None:
    _need_categories(access, [category], Permission.READ)
    await _runtime(state).store.leave_group(group, category, member)


@post("/v1/groups/{group:str}/{category:str}/commit", status_code=200)
async def commit(
    group: FromPath[str],
    category: FromPath[str],
    request: Request[Any, Any, Any],
    state: State,
    access: AccessDep,
) -> wire.WireResults:
    rt = _runtime(state)
    data = await _body(request, wire.WireCommit)
    _need_categories(access, [category], Permission.READ)
    appends = _append_requests(rt, access, data.appends, names=False) if data.appends else None
    results = await rt.store.commit(
        group,
        category,
        data.partition,
        data.position,
        member=data.member,
        generation=data.generation,
        appends=appends,
    )
    return wire.WireResults(results=results)


@get("/v1/groups/{group:str}/{category:str}")
async def describe_group(
    group: FromPath[str], category: FromPath[str], state: State, access: AccessDep
) -> wire.WireGroup:
    _need_categories(access, [category], Permission.READ)
    rt = _runtime(state)
    return wire.WireGroup(
        membership=await rt.store.describe_group(group, category),
        checkpoints=await rt.store.checkpoints(group, category),
    )


@get("/v1/groups")
async def list_groups(state: State, access: AccessDep) -> wire.WireGroups:
    groups = await _runtime(state).store.list_groups()
    return wire.WireGroups(groups=[g for g in groups if access.can_category(g[1], Permission.READ)])


def _lease(lease: float) -> float:
    if not 0.05 <= lease <= 3600:
        raise InvalidInput("lease must be between 0.05 and 3600 seconds")
    return lease


# --------------------------------------------------------------------------- operations


@get("/livez", summary="The process is alive", include_in_schema=True)
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="The engine answers")
async def readyz(state: State) -> Response[dict[str, str]]:
    try:
        await asyncio.wait_for(_runtime(state).store.last_position(), 2.0)
    except (TidelogError, TimeoutError) as exc:
        return Response({"status": "unavailable", "reason": type(exc).__name__}, status_code=503)
    return Response({"status": "ok"})


@get("/metrics", summary="Prometheus metrics", media_type="text/plain; version=0.0.4")
async def metrics(state: State) -> Response[bytes]:
    rt = _runtime(state)
    await rt.metrics.refresh_lag(rt.store)
    return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4")


# --------------------------------------------------------------------------- errors


def _error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, TidelogError):
        body, status = wire.error_to_wire(exc)
    elif isinstance(exc, HTTPException):
        body = wire.WireError(code="http_error", message=str(exc.detail))
        status = exc.status_code
        if exc.status_code == 400 and getattr(exc, "extra", None):
            body.message = f"{exc.detail}: {exc.extra}"
    else:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        body, status = wire.WireError(code="internal", message="internal error"), 500
    return Response(body, status_code=status)


ROUTES = [
    append,
    append_many,
    read_stream,
    delete_stream,
    purge_stream,
    list_streams,
    read_all,
    count_events,
    head,
    info,
    subscribe,
    ws_subscribe,
    join_group,
    heartbeat,
    leave_group,
    commit,
    describe_group,
    list_groups,
    livez,
    readyz,
    metrics,
]


def _send_timeout(seconds: float) -> Callable[[ASGIApp], ASGIApp]:
    """Drop a client that does not take a response chunk within `seconds` (slow readers)."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def bounded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return

            async def timed_send(message: Message) -> None:
                await asyncio.wait_for(send(message), seconds)

            await app(scope, receive, timed_send)

        return bounded

    return middleware


def create_app(store: Engine, config: ServerConfig, *, close_store: bool = False) -> Litestar:
    """The ASGI app serving `store`. The caller owns the store unless `close_store`."""
    from tidelog.server import (  # they import this module
        _asyncapi,
        _cloudevents,
        _consumers_api,
        _registry_api,
    )
    from tidelog.server._dashboard import DASHBOARD_ROUTES  # it imports this module
    from tidelog.server._openapi import render_plugins

    runtime = _Runtime(
        store=store,
        config=config,
        auth=Authenticator(config.api_keys, config.jwt),
        metrics=Metrics(),
        connections=ConnectionLimit(config.limits.max_connections_per_principal),
    )

    def authenticate(scope: Scope) -> str:
        return _principal(ASGIConnection(scope), runtime)

    async def on_shutdown() -> None:
        if close_store:
            await store.close()

    app = Litestar(
        route_handlers=[
            *ROUTES,
            *DASHBOARD_ROUTES,
            *_cloudevents.ROUTES,
            *_consumers_api.ROUTES,
            *_registry_api.ROUTES,
            *_asyncapi.ROUTES,
        ],
        dependencies={"access": Provide(_access)},
        exception_handlers={Exception: _error_response},
        request_max_body_size=config.limits.max_body_bytes,
        state=State({"runtime": runtime}),
        openapi_config=OpenAPIConfig(
            title="tidelog",
            version=tidelog.__version__,
            path="/schema",
            render_plugins=render_plugins(),  # the JSON completed with hand-decoded bodies
        ),
        on_shutdown=[on_shutdown],
        middleware=[
            runtime.metrics.middleware,
            _send_timeout(config.limits.send_timeout),
            runtime.connections.middleware(authenticate),
        ],
        debug=False,
        logging_config=None,  # the embedding process configures logging, not the app
    )
    return app
