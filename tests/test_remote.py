"""The remote engine passes the whole conformance suite through a live server.

Each store is a real uvicorn server on a free loopback port in front of a fresh
engine, reached over HTTP by `RemoteEngine`; closing the store stops both.
"""

from __future__ import annotations

import pathlib
from uuid import uuid4

import tidelog
from _server_util import ADMIN_KEY, config
from tidelog.engines.remote import RemoteConfig, RemoteEngine
from tidelog.server import Server
from tidelog.testing.conformance import EngineSuite
from tidelog.testing.stateful import ModelSuite


class _ServedRemote(RemoteEngine):
    """A remote store that owns the server (and the engine) behind it."""

    server: Server
    backing: tidelog.Store

    async def close(self) -> None:
        if self._closed:
            return
        await super().close()
        await self.server.stop()
        await self.backing.close()


async def _served(backing_url: str) -> tidelog.Store:
    backing = await tidelog.connect(backing_url)
    server = Server(config(), backing)
    await server.start()
    remote = _ServedRemote(f"http://127.0.0.1:{server.port}", RemoteConfig(page=7), token=ADMIN_KEY)
    remote.server, remote.backing = server, backing
    await remote._start()
    return remote


class TestRemoteEngine(EngineSuite):
    """In front of the memory engine; a small page size exercises paging."""

    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await _served("memory://")


class TestRemoteOverSQLite(EngineSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await _served(f"sqlite:///{tmp_path}/{uuid4().hex}.db")


class TestRemoteModel(ModelSuite):
    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        return await _served("memory://?partitions=4")
