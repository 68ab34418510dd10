"""Live subscriptions: Server-Sent Events and WebSocket, both fed by one bounded pump."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated, Any, cast

import msgspec
from litestar import Request, WebSocket, get, websocket
from litestar.datastructures import State
from litestar.exceptions import HTTPException, WebSocketDisconnect
from litestar.params import FromQuery, QueryParameter
from litestar.response import ServerSentEvent
from litestar.response.base import ASGIResponse
from litestar.types import Receive, Scope, Send

from tidelog.engines._kit.checks import log_filter
from tidelog.errors import AccessDenied, InvalidInput, TidelogError
from tidelog.security.acl import Access, Permission
from tidelog.security.tokens import AuthError
from tidelog.server._deps import AccessDep, LogFilterDep, Runtime, need_categories, runtime
from tidelog.server._deps import principal as principal_of
from tidelog.server._fanout import Part

__all__ = ["ROUTES"]


@get("/v1/subscribe", summary="Subscribe (Server-Sent Events; the SSE id is the position)")
async def subscribe(
    request: Request[Any, Any, Any], state: State, access: AccessDep, log_filter: LogFilterDep
) -> ServerSentEvent:
    rt = runtime(state)
    f = log_filter
    from_position = f.from_position
    last_id = request.headers.get("last-event-id")
    if last_id is not None:
        if not last_id.isdigit() or len(last_id) > 18:
            raise InvalidInput("Last-Event-ID must be a position")
        from_position = int(last_id) + 1
    feed = _Feed(rt, access, from_position, f.categories, f.types, f.partitions)
    return _FeedResponse(feed)


class _Feed:
    """One live subscription: its slot in the principal's quota and its place at the hub.

    The events come from the server's one live tail of the store (`_fanout.Hub`),
    read and encoded once for every subscriber; while this feed catches up from
    an old position, or after it fell behind, it reads the store itself.

    The slot is taken when the feed is made, in the same step as the quota
    check (no await between them), so a burst of requests cannot all pass the
    check before any is counted. `close` gives the slot back and leaves the
    hub; it is synchronous and idempotent, so the response calls it in a
    `finally` on every way it ends (the last event, a hang-up, a send timeout,
    a shutdown's cancellation). A generator's `finally` would not do: Litestar
    wraps the events in iterators of its own and does not close them when a
    send fails, so that `finally` ran only when the garbage collector found the
    generator, minutes later, with the slot held all along.
    """

    def __init__(
        self,
        rt: Runtime,
        access: Access,
        from_position: int,
        categories: list[str] | None,
        types: list[str] | None,
        partitions: list[int] | None,
    ) -> None:
        filters = log_filter(categories, types, partitions)  # bad filters: 400, no slot taken
        if rt.stopping:
            raise HTTPException(status_code=503, detail="the server is stopping")
        if not rt.subscriptions.acquire(access.principal):
            raise HTTPException(status_code=429, detail="too many subscriptions for this principal")
        self._rt = rt
        self._access = access
        self._closed = False
        self._member = rt.live_hub().attach(
            access, filters, max(from_position, 0), rt.config.limits.live_queue_events
        )
        rt.metrics.subscriptions.inc()
        self._end = self.end
        rt.live.add(self._end)

    def end(self) -> None:
        """Close, and wake the events so they end too (the server is stopping)."""
        self.close()

    def close(self) -> None:
        """Give the slot back and leave the hub; the first call does it, the others nothing."""
        if self._closed:
            return
        self._closed = True
        self._rt.live.discard(self._end)
        self._rt.subscriptions.release(self._access.principal)
        self._rt.metrics.subscriptions.dec()
        self._member.close()

    async def batches(self) -> AsyncIterator[list[Part] | None]:
        """Events the principal may read, live, in batches; None every keep-alive interval
        of silence.

        A batch is every event waiting for this subscriber when it takes the
        next: one write to the client for all of them, not one each (with 1,000
        subscribers each event was a thousand writes and sends, most of the
        server's time). The hub never waits for a slow client: one that lets
        `live_queue_events` wait reads the store itself until it caught up, and
        the send timeout drops a client that stops reading. A failed store ends
        the events (the client reconnects with `Last-Event-ID`).
        """
        if self._closed:
            return
        try:
            async for batch in self._member.batches(self._rt.config.limits.keepalive_interval):
                if self._closed:
                    return
                if batch is not None:
                    self._rt.metrics.read(sum(len(p.deliveries) for p in batch))
                yield batch
        except Exception:  # the store failed or closed: the stream ends
            pass
        finally:
            self.close()


class _FeedResponse(ServerSentEvent):
    """The feed's events as Server-Sent Events; the feed is closed when the response ends.

    Each batch of the feed is encoded here into one chunk (`_sse_chunks`),
    not by Litestar message by message: one send per batch instead of one per
    event. The bytes are the same as Litestar's: `id`, `event` and `data`
    lines ended by CR LF, keep-alives as comments.
    """

    def __init__(self, feed: _Feed) -> None:
        super().__init__(b"", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        self.iterator = _sse_chunks(feed.batches())
        self._feed = feed

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        inner = super().to_asgi_response(*args, **kwargs)
        return cast(ASGIResponse, _Closing(inner, self._feed))


class _Closing:
    """An ASGI response that closes its feed however the response ends."""

    def __init__(self, inner: ASGIResponse, feed: _Feed) -> None:
        self._inner = inner
        self._feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._inner(scope, receive, send)
        finally:
            self._feed.close()


_KEEPALIVE = b": keep-alive\r\n\r\n"


async def _sse_chunks(
    batches: AsyncIterator[list[Part] | None],
) -> AsyncIterator[bytes]:
    """Each batch as one chunk of SSE messages (the id is the position); keep-alives as
    comments. Each part's messages are encoded and joined once per server (`Part.sse`)."""
    async for batch in batches:
        if batch is None:
            yield _KEEPALIVE
        elif len(batch) == 1:
            yield batch[0].sse()
        else:
            yield b"".join([p.sse() for p in batch])


async def _ws_stream(socket: WebSocket[Any, Any, Any], rt: Runtime, feed: _Feed) -> None:
    """Send events until the client goes away; a reader task notices the disconnect."""

    async def send_all() -> None:
        timeout = rt.config.limits.send_timeout
        async for batch in feed.batches():
            texts = (
                (_WS_KEEPALIVE,)
                if batch is None
                else (d.text() for p in batch for d in p.deliveries)
            )
            for text in texts:
                async with asyncio.timeout(timeout):  # a deadline, not a task per frame
                    await socket.send_text(text)

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
        feed.close()  # first: the awaits below may be cut short by a shutdown
        for task in (sender, reader):
            task.cancel()
        await asyncio.gather(sender, reader, return_exceptions=True)


_WS_KEEPALIVE = '{"keepalive":true}'

_FIRST_MESSAGE = 'send {"token": "..."} first'


def _token_of(first: str | None) -> str:
    """The token of a first message, which must be a JSON object with a string `token`.

    Anything else (an array, a string, a number, invalid or truncated JSON, a
    binary frame) is the client's mistake: an `AuthError`, closed with 1008.
    """
    if not first or len(first) > _MAX_FIRST_MESSAGE:
        raise AuthError(_FIRST_MESSAGE)
    try:
        message = msgspec.json.decode(first)
    except (msgspec.DecodeError, RecursionError):
        raise AuthError(f"the first message is not JSON: {_FIRST_MESSAGE}") from None
    token = message.get("token") if isinstance(message, dict) else None
    if not isinstance(token, str):
        raise AuthError(_FIRST_MESSAGE)
    return token


_MAX_FIRST_MESSAGE = 16384
"""Characters; a token is far shorter (the header limit bounds the other way in)."""


async def _first_message(socket: WebSocket[Any, Any, Any]) -> str | None:
    """The first text frame, for a client that sent no Authorization header (a browser)."""
    try:
        return await asyncio.wait_for(socket.receive_data("text"), _FIRST_MESSAGE_WAIT)
    except TimeoutError:
        raise AuthError(
            f"no credentials within {_FIRST_MESSAGE_WAIT:g} s: {_FIRST_MESSAGE}"
        ) from None


_FIRST_MESSAGE_WAIT = 5.0
"""Seconds a WebSocket without an Authorization header has to send its token."""


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
    a first message `{"token": "..."}` within five seconds. A refusal closes with
    1008 (policy violation) and the reason: at once when the header's
    credential is wrong (the first message is then not waited for), after the
    five seconds when no token came.
    """
    rt = runtime(socket.app.state)
    await socket.accept()
    try:
        with contextlib.ExitStack() as slot:
            try:
                principal = principal_of(socket, rt)  # the middleware counted this one
            except AuthError:
                if socket.headers.get("authorization") is not None:
                    raise  # a credential was given and is wrong: say so now, wait for nothing
                principal = rt.auth.authenticate(_token_of(await _first_message(socket)))
                slot.enter_context(rt.connections.hold(principal))
            access = Access(principal, rt.grants)
            need_categories(access, category, Permission.READ)
            feed = _Feed(rt, access, from_position, category, type, partition)
            await _ws_stream(socket, rt, feed)
            with contextlib.suppress(Exception):  # the feed ended (a stop), or the client left
                await socket.close(code=1001, reason="the server is stopping")
    except (AccessDenied, TidelogError, HTTPException, ValueError, TimeoutError) as exc:
        reason = str(exc)[:120]
        with contextlib.suppress(Exception):
            await socket.close(code=1008, reason=reason)
    except WebSocketDisconnect:
        return


ROUTES = [subscribe, ws_subscribe]
