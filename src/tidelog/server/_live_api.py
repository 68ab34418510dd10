"""Live subscriptions: Server-Sent Events and WebSocket, both fed by one bounded pump."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Request, WebSocket, get, websocket
from litestar.datastructures import State
from litestar.exceptions import HTTPException, WebSocketDisconnect
from litestar.params import FromQuery, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

import tidelog
from tidelog import wire
from tidelog.errors import AccessDenied, InvalidInput, TidelogError
from tidelog.security.acl import Access, Permission
from tidelog.security.tokens import AuthError
from tidelog.server._deps import AccessDep, Runtime, need_categories, runtime
from tidelog.server._deps import principal as principal_of

__all__ = ["ROUTES"]


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
    rt = runtime(state)
    need_categories(access, category, Permission.READ)
    last_id = request.headers.get("last-event-id")
    if last_id is not None:
        if not last_id.isdigit() or len(last_id) > 18:
            raise InvalidInput("Last-Event-ID must be a position")
        from_position = int(last_id) + 1
    _check_subscription_quota(rt, access)
    return ServerSentEvent(
        _sse_events(_live(rt, access, from_position, category, type, partition)),
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _live(
    rt: Runtime,
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


def _check_subscription_quota(rt: Runtime, access: Access) -> None:
    if rt.subscriptions[access.principal] >= rt.config.limits.max_subscriptions_per_principal:
        raise HTTPException(status_code=429, detail="too many subscriptions for this principal")


async def _sse_events(
    events: AsyncIterator[tidelog.RecordedEvent | None],
) -> AsyncIterator[ServerSentEventMessage]:
    """Events as SSE messages (the id is the position), keep-alives as comments."""
    encoder = msgspec.json.Encoder()
    async for e in events:
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
    rt: Runtime,
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
    rt = runtime(socket.app.state)
    await socket.accept()
    try:
        with contextlib.ExitStack() as slot:
            try:
                principal = principal_of(socket, rt)  # the middleware counted this one
            except AuthError:
                first = await asyncio.wait_for(socket.receive_text(), 5.0)
                token = msgspec.json.decode(first[:16384]).get("token") if first else None
                if not isinstance(token, str):
                    raise AuthError('send {"token": "..."} first') from None
                principal = rt.auth.authenticate(token)
                slot.enter_context(rt.connections.hold(principal))
            access = Access(principal, rt.config.grants)
            need_categories(access, category, Permission.READ)
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


ROUTES = [subscribe, ws_subscribe]
