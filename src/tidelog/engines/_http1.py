"""A lean HTTP/1.1 client for the remote engine's request/response calls.

Profiling `http_append` (issue #17) showed the client spending most of its
time in httpx, not in tidelog: per request it parses and normalizes the URL,
walks its connection pool asking every idle connection whether the peer
closed it (a `poll` and a `getpeername` each), and goes through anyio's
stream layers, about 1 ms of CPU per append on a loaded machine against
0.06 ms to encode 100 events. This pool does only what the remote engine
needs: it keeps HTTP/1.1 connections alive on an asyncio protocol, parses
answers with `httptools` (llhttp, the parser the server uses), and hands back
the status and the body.

What it keeps of httpx's behaviour: at most `max_connections` open at once
(callers beyond them wait), `max_idle` kept between requests and for at most
`idle_expiry` seconds (below the server's keep-alive, so a connection is
dropped here before the server closes it under a request), a connect
timeout, and a read timeout that counts from the last byte received. A
connection the peer closed while idle is noticed by the event loop and never
reused. A request interrupted in any way (timeout, cancellation, a broken
connection, a malformed answer) closes its connection: it is never reused in
an unknown state. The engine turns every `OSError` (the transport's, and
`TimeoutError`) into `StoreUnavailable`, as it does for httpx's errors.

Streaming responses (Server-Sent Events) and requests through a proxy stay
on httpx (see `RemoteEngine`).
"""

from __future__ import annotations

import asyncio
import collections
import ssl

import httptools

from tidelog.errors import InvalidInput

__all__ = ["Http1Pool", "MalformedAnswer"]


class MalformedAnswer(OSError):
    """The server's answer is not HTTP/1.1 this client understands."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.last_data = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._keep_alive = False
        self.early: list[bytes] = []
        """Bytes that came before a request: a server refusing a new connection (429)
        answers at once, and that is the answer to the request about to be sent."""

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_data = self.loop.time()
        if self._answer is None:
            self.early.append(data)
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(MalformedAnswer(f"malformed HTTP answer: {exc}"))

    def eof_received(self) -> bool | None:
        if self._answer is not None:
            self._fail(ConnectionResetError("the server closed the connection"))
        else:  # idle, or a refusal in `early` still to be read as the next answer
            self.closed = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(
            exc
            if isinstance(exc, OSError)
            else ConnectionResetError("the server closed the connection")
        )

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._body = []

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_result((self._parser.get_status_code(), b"".join(self._body)))
        self._body = []

    # -- use

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self._answer = self.loop.create_future()
        self._keep_alive = False
        self.last_data = self.loop.time()
        answer = self._answer
        if not self.transport.is_closing():
            self.transport.write(request)
        early, self.early = self.early, []
        for data in early:
            self._feed(data)
        if self.closed and not answer.done():
            answer.set_exception(ConnectionResetError("the server closed the connection"))
        return answer

    @property
    def reusable(self) -> bool:
        return self._keep_alive and not self.closed and self._answer is None

    def _fail(self, exc: BaseException) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Pool:
    """Keep-alive HTTP/1.1 connections to one server, for request/response calls."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        head: bytes,
        timeout: float,
        max_connections: int = 100,
        max_idle: int = 20,
        idle_expiry: float = 5.0,
    ) -> None:
        """`head`: header lines sent with every request (`Host`, `Authorization`), each
        ending in CRLF. `timeout` bounds the connect and each wait for bytes."""
        self._host = host
        self._port = port
        self._tls = tls
        self._head = head
        self._timeout = timeout
        self._max_idle = max_idle
        self._idle_expiry = idle_expiry
        self._idle: collections.deque[_Connection] = collections.deque()
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> tuple[int, bytes]:
        """Send one request and return (status, body). `target` is an absolute path with
        its query, already quoted; `headers` must not hold CR or LF."""
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
        if extra.count("\n") != len(headers) or extra.count("\r") != len(headers):
            # a line break of a name or value would end the header there
            raise InvalidInput("an HTTP header holds a line break")
        lines = [f"{method} {target} HTTP/1.1\r\n".encode("ascii"), self._head]
        lines.append(extra.encode("latin-1"))
        if body is not None:
            lines.append(b"Content-Length: %d\r\n\r\n" % len(body))
            lines.append(body)
        else:
            lines.append(b"\r\n" if method == "GET" else b"Content-Length: 0\r\n\r\n")
        raw = b"".join(lines)
        async with self._slots:
            conn = self._take() or await self._connect()
            try:
                status, content = await self._wait(conn, conn.send(raw))
            except BaseException:
                conn.close()
                raise
            self._give_back(conn)
            return status, content

    def _take(self) -> _Connection | None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to expire
            if (
                conn.closed
                or conn.early
                or now - conn.idle_since > self._idle_expiry
                or conn.loop is not loop  # a store used from another event loop since
            ):
                conn.close()
                continue
            return conn
        return None

    def _give_back(self, conn: _Connection) -> None:
        if self._closed or not conn.reusable or len(self._idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle.append(conn)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout):
            _, conn = await loop.create_connection(
                lambda: _Connection(loop),
                self._host,
                self._port,
                ssl=self._tls,
                server_hostname=self._host if self._tls is not None else None,
            )
        return conn  # asyncio turns Nagle off: a request's head and body never wait

    async def _wait(
        self, conn: _Connection, answer: asyncio.Future[tuple[int, bytes]]
    ) -> tuple[int, bytes]:
        """The answer, or `TimeoutError` once `timeout` passed without a byte from the server."""
        loop = asyncio.get_running_loop()
        timeout = self._timeout

        timer: list[asyncio.TimerHandle] = []

        def check() -> None:
            idle = loop.time() - conn.last_data
            if answer.done():
                return
            if idle >= timeout:
                answer.set_exception(TimeoutError(f"no answer from the server in {timeout} s"))
            else:
                timer[0] = loop.call_later(timeout - idle, check)

        timer.append(loop.call_later(timeout, check))
        try:
            return await answer
        finally:
            timer[0].cancel()

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()
