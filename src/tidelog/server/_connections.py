"""Concurrent connections per principal: one counter, enforced by one ASGI middleware.

A connection here is anything the server holds open for a principal: an
in-flight request, a streaming (SSE) response, a WebSocket. The middleware
counts a request from the moment it is authenticated until the inner app
returns, and releases it in a `finally`, so every way out (normal end, an
exception, a client that hangs up, a cancelled task at shutdown) gives the slot
back. A request whose credentials do not check out is not counted: the route's
own authentication answers it with a 401.

The one exception is a WebSocket that authenticates with its first message
(browsers cannot set headers): its principal is only known inside the route,
which takes a slot from the same counter with `hold`.

The same counter (`ConnectionLimit`, another instance) bounds live
subscriptions per principal; the live routes take and give back its slots.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, cast

import msgspec
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Receive, Scope, Send

from tidelog import wire

__all__ = ["PRINCIPAL_KEY", "ConnectionLimit", "TooManyConnections"]

PRINCIPAL_KEY = "tidelog.principal"
"""Where the middleware leaves the principal it authenticated, so the route does not
authenticate a second time. Only the server writes scope keys; a client cannot set it."""

_MESSAGE = "too many connections for this principal"


class TooManyConnections(HTTPException):
    status_code = 429


class ConnectionLimit:
    """At most `limit` connections open at once per principal."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: Counter[str] = Counter()

    def open_for(self, principal: str) -> int:
        """How many connections `principal` holds now (for tests and metrics)."""
        return self._open[principal]

    def acquire(self, principal: str) -> bool:
        """Take a slot if one is free; every True must be paired with `release`.

        The check and the count are one step with no await between them, so
        concurrent requests cannot all pass the check before any is counted.
        """
        if self._open[principal] >= self.limit:
            return False
        self._open[principal] += 1
        return True

    def clear(self) -> None:
        """Forget every slot (tests that lend one server to store after store)."""
        self._open.clear()

    def release(self, principal: str) -> None:
        self._open[principal] -= 1
        if self._open[principal] <= 0:
            del self._open[principal]  # principals come and go (JWT subjects)

    @contextlib.contextmanager
    def hold(self, principal: str) -> Iterator[None]:
        """Take a slot for the duration of the block, or raise `TooManyConnections`."""
        if not self.acquire(principal):
            raise TooManyConnections(detail=_MESSAGE)
        try:
            yield
        finally:
            self.release(principal)

    def middleware(self, authenticate: Callable[[Scope], str]) -> Callable[[ASGIApp], ASGIApp]:
        """ASGI middleware; `authenticate` raises when the request has no valid credentials."""

        def wrap(app: ASGIApp) -> ASGIApp:
            async def limited(scope: Scope, receive: Receive, send: Send) -> None:
                if scope["type"] not in (ScopeType.HTTP, ScopeType.WEBSOCKET):
                    await app(scope, receive, send)
                    return
                try:
                    principal = authenticate(scope)
                except Exception:
                    # unauthenticated: not counted, the route's auth answers 401
                    await app(scope, receive, send)
                    return
                cast(dict[str, Any], scope)[PRINCIPAL_KEY] = principal
                if not self.acquire(principal):
                    await _refuse(scope, receive, send)
                    return
                try:
                    await app(scope, receive, send)
                finally:
                    self.release(principal)

            return limited

        return wrap


async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
    """429 with the wire error body; a WebSocket is accepted, then closed with 1008
    (policy violation) like every other WebSocket refusal of this server."""
    if scope["type"] == ScopeType.WEBSOCKET:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept", "subprotocol": None, "headers": []})
        await send({"type": "websocket.close", "code": 1008, "reason": _MESSAGE})
        return
    body = msgspec.json.encode(wire.WireError(code="too_many_connections", message=_MESSAGE))
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
