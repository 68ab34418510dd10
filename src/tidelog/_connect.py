"""Choosing an engine from a URL: the one place that names concrete engines.

Engine modules are imported lazily so that `tidelog[postgres]` and
`tidelog[nats]` stay optional.
"""

from __future__ import annotations

import importlib
import os
import urllib.parse
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from tidelog.engines.contract import Engine
from tidelog.errors import InvalidURL

__all__ = ["DEFAULT_STORE_URL", "connect", "resolved_url"]

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
    scheme = _scheme(url)
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

    def __init__(self, url: str, options: dict[str, Any], must_exist: bool) -> None:
        self._open = _opener(url)
        self._url = url
        if must_exist and _scheme(url) == "sqlite":
            # only a file store can be made by mistake: the others are opened on
            # a server that exists or fails to answer
            options = {**options, "must_exist": True}
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


def connect(
    url: str = DEFAULT_STORE_URL, *, must_exist: bool = False, **options: Any
) -> _Connecting:
    """Open a store from a URL.

    `sqlite:///path.db` (the embedded default), `memory://`,
    `postgresql://…`, `nats://…`, `http(s)://host:7070`. Engine options go in
    the URL's query string (`sqlite:///x.db?partitions=32`); `options` carries
    what does not fit a URL: for the remote client `token=` or `token_file=`
    (else `TIDELOG_TOKEN` / `TIDELOG_TOKEN_FILE` from the environment),
    `verify=` and `cert=`.

    Opening a SQLite store creates its file; `must_exist=True` refuses a file
    that is not there instead (`InvalidURL` naming the absolute path), for
    code that only reads: a mistyped path must not read as an empty store.
    Other engines open what their server holds, so the flag changes nothing there.
    """
    return _Connecting(url, options, must_exist)


def _scheme(url: str) -> str:
    return urllib.parse.urlsplit(url).scheme.lower()


def resolved_url(url: str) -> str:
    """`url` as a person should see it: credentials masked, a SQLite path made absolute.

    A relative SQLite path depends on the directory a command runs in; the
    absolute one says which file a banner or an error means.
    """
    from tidelog._redact import redact_url

    if isinstance(url, str) and _scheme(url) == "sqlite":
        parts = urllib.parse.urlsplit(url)
        path = urllib.parse.unquote(parts.path)
        if not parts.netloc and len(path) > 1:
            absolute = os.path.abspath(path[1:])
            query = f"?{parts.query}" if parts.query else ""
            return redact_url(f"sqlite:///{urllib.parse.quote(absolute)}{query}")
    return redact_url(url)
