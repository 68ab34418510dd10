"""Choosing an engine from a URL: the one place that names concrete engines.

Engine modules are imported lazily so that `tidelog[postgres]` and
`tidelog[nats]` stay optional.
"""

from __future__ import annotations

import importlib
import urllib.parse
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from tidelog.engines.contract import Engine
from tidelog.errors import InvalidURL

__all__ = ["DEFAULT_STORE_URL", "connect"]

DEFAULT_STORE_URL = "sqlite:///tidelog-data/tidelog.db"

_ENGINES: dict[str, str] = {
    "memory": "tidelog.engines.memory",
    "sqlite": "tidelog.engines.sqlite",
    "postgresql": "tidelog.engines.postgres",
    "postgres": "tidelog.engines.postgres",
    "nats": "tidelog.engines.nats",
    "http": "tidelog.engines.remote",
    "https": "tidelog.engines.remote",
}


def _opener(url: str) -> Callable[..., Awaitable[Engine]]:
    if not isinstance(url, str):
        raise InvalidURL(repr(url), "a store URL must be a string")
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    module_name = _ENGINES.get(scheme)
    if module_name is None:
        known = ", ".join(sorted({f"{s}://" for s in _ENGINES}))
        raise InvalidURL(url, f"unknown scheme {scheme!r}; use one of {known}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = {"postgresql": "postgres", "postgres": "postgres", "nats": "nats"}.get(
            scheme, "server"
        )
        raise InvalidURL(
            url, f"the {scheme} engine needs extra packages: pip install 'tidelog[{extra}]' ({exc})"
        ) from None
    opener: Callable[..., Awaitable[Engine]] = module.open_engine
    return opener


class _Connecting:
    """`await connect(url)` or `async with connect(url) as store`."""

    def __init__(self, url: str, options: dict[str, Any]) -> None:
        self._open = _opener(url)
        self._url = url
        self._options = options
        self._store: Engine | None = None

    def __await__(self) -> Generator[Any, None, Engine]:
        return self._opened().__await__()

    async def __aenter__(self) -> Engine:
        self._store = await self._opened()
        return self._store

    async def _opened(self) -> Engine:
        """Open the store and read its retention rules, so that the first read already
        honours them and, if there are any, this process's scavenger starts."""
        store = await self._open(self._url, **self._options)
        if store.applies_retention:
            try:
                await store._retention_view(force=True)
            except BaseException:
                await store.close()
                raise
        return store

    async def __aexit__(self, *exc: object) -> None:
        if self._store is not None:
            await self._store.close()


def connect(url: str = DEFAULT_STORE_URL, **options: Any) -> _Connecting:
    """Open a store from a URL.

    `sqlite:///path.db` (the embedded default), `memory://`,
    `postgresql://…`, `nats://…`, `http(s)://host:7070`. Engine options go in
    the URL's query string (`sqlite:///x.db?partitions=32`); `options` carries
    what does not fit a URL (for example `token=` for the remote client).
    """
    return _Connecting(url, options)
