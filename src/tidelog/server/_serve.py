"""Running the app on uvicorn: TLS, mutual TLS, and the first-start admin key.

uvicorn checks a client certificate at the handshake (`ssl_cert_reqs`) but does
not hand it to the application (the ASGI TLS extension is not implemented
there). `_PeerCertProtocol` closes that gap: per connection it reads the
verified peer certificate from the TLS socket and adds
`scope["extensions"]["tls"]["client_principal"]` (the subject's common name)
to every request on that connection. Nothing from the client's headers can
set it.

HTTP/1.1 is parsed by httptools (llhttp, the parser of Node.js): h11, pure
Python, took a quarter of the server's time per append request.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tidelog._connect import connect
from tidelog._files import make_private_dirs
from tidelog.engines.contract import Engine
from tidelog.errors import InvalidInput
from tidelog.security.acl import Grant, Permission
from tidelog.security.tokens import hash_api_key, new_api_key
from tidelog.server._app import create_app
from tidelog.server._config import ServerConfig
from tidelog.server._guard import ConnectionGuard

__all__ = ["Server", "client_principal", "prepare_config"]

log = logging.getLogger(__name__)

ADMIN_KEY_FILE = "admin-key.sha256"


def client_principal(cert: dict[str, Any] | None) -> str | None:
    """The principal named by a verified peer certificate: its subject's common name."""
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str) and value:
                return value
    return None


class _PeerCertProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        principal = client_principal(ssl_object.getpeercert()) if ssl_object else None
        inner = self.app

        async def with_peer(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] in ("http", "websocket"):
                extensions = dict(scope.get("extensions") or {})
                extensions["tls"] = {"client_principal": principal}
                scope = {**scope, "extensions": extensions}
            await inner(scope, receive, send)

        self.app = with_peer


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def prepare_config(config: ServerConfig, announce: Callable[[str], None]) -> ServerConfig:
    """Without any auth configured, serve loopback only and create an admin key once.

    The key itself is printed once, at creation; only its SHA-256 digest is kept
    (in the data directory), so later starts reuse it without showing it again.
    """
    if config.api_keys or config.jwt or config.tls_client_ca:
        return config
    if not _is_loopback(config.host):
        raise InvalidInput(
            f"refusing to serve {config.host} without authentication configured: "
            "set api_keys, jwt or tls_client_ca, or bind to 127.0.0.1"
        )
    key_file = Path(config.data_dir) / ADMIN_KEY_FILE
    if key_file.exists():
        digest = key_file.read_text().strip()
        announce(f"admin key: the one printed at first start (digest in {key_file})")
    else:
        key = new_api_key()
        digest = hash_api_key(key)
        make_private_dirs(key_file.parent)
        key_file.write_text(digest + "\n")
        key_file.chmod(0o600)
        announce(f"admin key (shown once, keep it): {key}")
    grants = (*config.grants, Grant(principal="admin", permission=Permission.ADMIN, resource="*"))
    return msgspec.structs.replace(config, api_keys={digest: "admin"}, grants=grants)


class _Uvicorn(uvicorn.Server):
    """uvicorn without its signal capture: the caller (`tidelog serve`) owns signals.

    uvicorn's own capture would swallow SIGTERM/SIGINT in whatever process embeds
    the server (a test run, an application) and re-raise them only at shutdown.
    """

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()


class Server:
    """The app on uvicorn, startable in-process (tests) or from `tidelog serve`."""

    def __init__(self, config: ServerConfig, store: Engine | None = None) -> None:
        self.config = config
        self._store = store
        self._uvicorn: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._app: Any = None
        self.guard: ConnectionGuard | None = None
        """The per-address connection count and request deadlines (see `_guard`)."""
        self.port: int = config.port

    def open_subscriptions(self, principal: str) -> int:
        """Live subscriptions `principal` holds now (`Limits.max_subscriptions_per_principal`)."""
        if self._app is None:
            return 0
        return int(self._app.state.runtime.subscriptions.open_for(principal))

    def open_connections(self, principal: str) -> int:
        """Connections `principal` holds now (see `Limits.max_connections_per_principal`)."""
        if self._app is None:
            return 0
        return int(self._app.state.runtime.connections.open_for(principal))

    def _uvicorn_config(self, app: Any, sock: socket.socket | None) -> uvicorn.Config:
        c = self.config
        guard = ConnectionGuard(
            c.limits.max_connections_per_address,
            c.limits.header_timeout,
            c.limits.body_timeout,
        )
        self.guard = guard
        kwargs: dict[str, Any] = {
            "log_level": "warning",
            # uvicorn's loggers propagate to whatever the process configured
            # (tidelog.telemetry.configure_logging in `tidelog serve`) instead of
            # installing uvicorn's own formatters.
            "log_config": None,
            "lifespan": "on",
            "access_log": False,
            "timeout_keep_alive": 15,
            "http": guard.protocol(HttpToolsProtocol),
            "ws": "wsproto",
        }
        if c.tls_cert and c.tls_key:
            kwargs.update(ssl_certfile=c.tls_cert, ssl_keyfile=c.tls_key)
            if c.tls_client_ca:
                kwargs.update(
                    ssl_ca_certs=c.tls_client_ca,
                    ssl_cert_reqs=ssl.CERT_REQUIRED,
                    http=guard.protocol(_PeerCertProtocol),
                )
        if sock is None:
            kwargs.update(host=c.host, port=c.port)
        return uvicorn.Config(app, **kwargs)

    async def start(self) -> None:
        """Bind (port 0 picks a free one, see `.port`) and serve in a background task."""
        sock = self._listen()
        try:
            owns_store = self._store is None
            store = self._store or await connect(self.config.store_url)
        except BaseException:
            sock.close()
            raise
        self._store = store
        app = create_app(store, self.config, close_store=owns_store)
        self._app = app
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._uvicorn = _Uvicorn(self._uvicorn_config(app, sock))
        self._task = asyncio.create_task(self._uvicorn.serve(sockets=[sock]))
        while not self._uvicorn.started:
            if self._task.done():
                await self._task
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.01)

    def _listen(self) -> socket.socket:
        """The listening socket, bound before the store is opened: a port in use is one
        error line for `tidelog serve` (it was a traceback), and opens nothing."""
        host, port = self.config.host, self.config.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # accepted connections inherit it: uvicorn writes a response's head and body
            # separately, and Nagle + delayed ACK would add ~40 ms to each request
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            hint = " (another server? give another --port)" if exc.errno == errno.EADDRINUSE else ""
            raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
        return sock

    async def stop(self) -> None:
        """End the live subscriptions, then let uvicorn finish the other requests.

        uvicorn waits for every response to end before it stops, and a live
        subscription never ends by itself: without this, one open SSE stream or
        WebSocket would keep the server from stopping at all.
        """
        if self._uvicorn is not None and self._task is not None:
            self._app.state.runtime.end_live()
            self._uvicorn.should_exit = True
            await self._task
            self._uvicorn = None

    async def run_until(self, stopped: Callable[[], Awaitable[None]]) -> None:
        await self.start()
        try:
            await stopped()
        finally:
            await self.stop()
