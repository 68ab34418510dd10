"""Real tidelog servers for tests: uvicorn on a free loopback port.

`running` starts one server in the test's own event loop, for tests that look
at one server's behaviour (its config, limits, metrics, shutdown). `SharedServers`
keeps servers running for a whole module and lends each to one store at a time,
for tests where the server is only the way to a store (the remote engine's
conformance suite opens several hundred stores; building the app and starting
uvicorn for each was nearly half of the quick test run).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import msgspec

import tidelog
from tidelog.engines.remote import RemoteConfig, RemoteEngine
from tidelog.security.acl import Grant, parse_grant
from tidelog.security.tokens import hash_api_key
from tidelog.server import Server, ServerConfig

ADMIN_KEY = "admin-key-for-tests"

T = TypeVar("T")

Serve = Callable[..., Awaitable[tuple[Server, tidelog.Store]]]
"""The `serve` fixture (conftest): `await serve(keys=..., grants=..., **config)`."""


def config(
    *,
    keys: dict[str, str] | None = None,
    grants: tuple[str, ...] = (),
    **changes: Any,
) -> ServerConfig:
    """A config on port 0 with API keys (plain key -> principal) and grant strings."""
    all_keys = {ADMIN_KEY: "admin", **(keys or {})}
    parsed: tuple[Grant, ...] = (
        parse_grant("admin=admin:*"),
        *(parse_grant(g) for g in grants),
    )
    base = ServerConfig(
        host="127.0.0.1",
        port=0,
        api_keys={hash_api_key(k): p for k, p in all_keys.items()},
        grants=parsed,
    )
    return msgspec.structs.replace(base, **changes)


@contextlib.asynccontextmanager
async def running(
    cfg: ServerConfig, store: tidelog.Store | None = None
) -> AsyncIterator[tuple[Server, tidelog.Store]]:
    own = store is None
    store = store or await tidelog.connect("memory://")
    server = Server(cfg, store)
    await server.start()
    try:
        yield server, store
    finally:
        await server.stop()
        if own:
            await store.close()


class SharedServers:
    """Servers on one event loop in a background thread, each lent to one store at a time.

    The loop is the servers' own, not the test's: pytest-asyncio gives every
    test a fresh loop and the model test runs one per hypothesis example, and a
    server must keep serving across them. The store behind a server lives on
    that loop too; the test holds only a `RemoteEngine`, which talks HTTP.

    `open(url)` connects a fresh store from `url`, puts it behind an idle server
    (starting one when all are lent: a test may hold several stores at once)
    and returns a remote store; closing that closes the store behind it and
    returns the server. A server's app is built once, and lending it swaps the
    store its routes use and forgets what the previous store's requests left
    in the app's state (the schema registry it caches, subscription counts).
    """

    def __init__(self, cfg: ServerConfig) -> None:
        self.config = cfg
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tidelog-shared-servers", daemon=True
        )
        self._idle: list[Server] = []
        self._servers: list[Server] = []
        self._lent: dict[Server, tidelog.Store] = {}
        self._tls = ssl.create_default_context()
        """Given to every remote store: a `RemoteEngine` otherwise builds an SSL context
        per client even for plain HTTP, and loading the CA bundle is most of the cost
        of opening one (about 90 ms, several hundred times in a module)."""
        self._fresh_state: dict[Server, frozenset[str]] = {}
        """The app state's keys right after start-up; the rest is per store."""
        self.started = 0
        """Servers started so far (`tests/test_support.py` checks the sharing with it)."""

    def __enter__(self) -> SharedServers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(60)
            self._loop.close()

    async def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the servers' loop; await it from any other loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def open(self, backing_url: str, remote: RemoteConfig | None = None) -> tidelog.Store:
        """A remote store in front of a fresh store from `backing_url`."""
        server = await self._on_loop(self._lend(backing_url))
        store = _LentRemote(
            f"http://127.0.0.1:{server.port}",
            remote or RemoteConfig(),
            token=ADMIN_KEY,
            verify=self._tls,
        )
        store.servers, store.server = self, server
        try:
            await store._start()
        except BaseException:
            await store.close()
            raise
        return store

    async def _lend(self, backing_url: str) -> Server:
        backing = await tidelog.connect(backing_url)
        try:
            if self._idle:
                server = self._idle.pop()
                self._serve(server, backing)
            else:
                server = Server(self.config, backing)
                await server.start()
                self._servers.append(server)
                self._fresh_state[server] = frozenset(server._app.state.keys())
                self.started += 1
        except BaseException:
            await backing.close()
            raise
        self._lent[server] = backing
        return server

    def _serve(self, server: Server, store: tidelog.Store) -> None:
        """Put `store` behind the running `server`'s app, as if the app were new.

        This reaches into the server (`Server._app`, the state's `runtime` with
        its `store` and `subscriptions`): tests own both sides, and should those
        move, this fails loudly (AttributeError) instead of serving a wrong store.
        """
        state = server._app.state
        for key in set(state.keys()) - self._fresh_state[server]:
            del state[key]
        runtime = state.runtime
        runtime.store = store
        runtime.subscriptions.clear()

    async def _give_back(self, server: Server) -> None:
        backing = self._lent.pop(server, None)
        if backing is None:
            return
        try:
            await backing.close()
        finally:
            self._idle.append(server)

    async def _shutdown(self) -> None:
        """Stop the servers, close stores a test left open, end what still runs on the loop."""
        for server in self._servers:
            await server.stop()
        for backing in self._lent.values():
            await backing.close()
        self._lent.clear()
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_asyncgens()


class _LentRemote(RemoteEngine):
    """A remote store on a lent server; closing it gives the server back."""

    servers: SharedServers
    server: Server

    async def close(self) -> None:
        if self._closed:
            return
        await super().close()
        await self.servers._on_loop(self.servers._give_back(self.server))
