"""Connections before authentication: a deadline for every request's head and
body, and a cap on the connections one client address holds.

uvicorn bounds none of this. `timeout_keep_alive` starts only after a response
(a connection that never sends a request, or sends it a byte at a time, is
kept forever: every byte cancels that timer), `h11_max_incomplete_event_size`
bounds the size of a head and not its time (and only with h11, which this
server does not use), and `limit_concurrency` is one global count answered with
503, which one client can fill for everybody. An ASGI middleware sees a request
only once its head is complete, too late for all of it, so the bounds live in
the HTTP protocol (a subclass of uvicorn's httptools protocol):

- from the moment a connection is made, or the first byte of a request arrives,
  the head must be complete within `header_timeout` (else 408 and closed);
- from the end of the head, the body must be complete within `body_timeout`
  (else closed: the app sees a disconnect);
- at most `max_connections_per_address` connections per client IP address
  are open at once, whatever they are doing (an authenticated subscription
  counts too, a WebSocket until it closes); one more is answered 429 and closed
  before a byte of it is read.

The time between requests on a kept-alive connection stays uvicorn's
`timeout_keep_alive`; a response that streams (SSE) is bounded by the
per-principal limits once authenticated, not here.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tidelog import wire

__all__ = ["ConnectionGuard"]

_TOO_MANY = msgspec.json.encode(
    wire.WireError(code="too_many_connections", message="too many connections from this address")
)
_REFUSAL = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
    b"content-length: "
    + str(len(_TOO_MANY)).encode()
    + b"\r\nconnection: close\r\n\r\n"
    + _TOO_MANY
)
_HEAD_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class ConnectionGuard:
    """The per-address count and the deadlines, shared by one server's connections."""

    def __init__(self, max_per_address: int, header_timeout: float, body_timeout: float) -> None:
        self.max_per_address = max_per_address
        """0: no cap (behind a proxy every client has the proxy's address)."""
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self._open: Counter[str] = Counter()

    def open_from(self, address: str) -> int:
        """Connections open now from `address` (for tests)."""
        return self._open[address]

    def acquire(self, address: str) -> bool:
        if self.max_per_address and self._open[address] >= self.max_per_address:
            return False
        self._open[address] += 1
        return True

    def release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

    def protocol(self, base: type[HttpToolsProtocol]) -> type[HttpToolsProtocol]:
        """`base` (uvicorn's protocol or a subclass) under this guard, for `Config(http=)`."""
        return type(f"Guarded{base.__name__}", (_GuardedProtocol, base), {"guard": self})


class _GuardedProtocol(HttpToolsProtocol):
    guard: ConnectionGuard
    _deadline: asyncio.TimerHandle | None = None
    _address: str | None = None
    """Set while this connection holds a slot of its address."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self.client[0] if self.client else ""
        if not self.guard.acquire(address):
            transport.write(_REFUSAL)
            transport.close()
            return
        self._address = address
        self._arm(self.guard.header_timeout, head=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Bytes that start no request (blank lines between requests) cancel uvicorn's
        # keep-alive timer: without a deadline of ours they would hold the connection.
        if (
            self._deadline is None
            and self.timeout_keep_alive_task is None
            and not self.transport.is_closing()
            and self.transport.get_protocol() is self
            and (self.cycle is None or self.cycle.response_complete)
        ):
            self._arm(self.guard.header_timeout, head=True)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.guard.header_timeout, head=True)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.guard.body_timeout, head=False)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def handle_websocket_upgrade(self) -> None:
        """The WebSocket protocol takes the transport: its end gives the slot back."""
        self._disarm()
        super().handle_websocket_upgrade()
        ws = self.transport.get_protocol()
        if ws is self:
            return
        lost = ws.connection_lost

        def release_then_lost(exc: Exception | None) -> None:
            self._release()
            lost(exc)

        ws.connection_lost = release_then_lost  # type: ignore[method-assign]

    def _release(self) -> None:
        if self._address is not None:
            self.guard.release(self._address)
            self._address = None

    def _arm(self, seconds: float, *, head: bool) -> None:
        self._disarm()
        if seconds > 0:
            self._deadline = self.loop.call_later(seconds, self._expired, head)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, head: bool) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if head:
            self.transport.write(_HEAD_TIMEOUT)
        self.transport.close()
