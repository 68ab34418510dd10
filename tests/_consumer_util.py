"""Shared helpers of the consumer, producer and worker tests.

`CONSUMER_URLS` lists the engines the consumer tests run on. Add one by
setting `TIDELOG_CONSUMER_TEST_URLS` (space separated, `{tmp}` is replaced by
a fresh directory), e.g. `postgresql://postgres@127.0.0.1/test`.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from collections.abc import Callable

ENGINE_KINDS = ["memory", "sqlite", *os.environ.get("TIDELOG_CONSUMER_TEST_URLS", "").split()]


def url_for(kind: str, tmp: pathlib.Path) -> str:
    if kind == "memory":
        return "memory://?partitions=8"
    if kind == "sqlite":
        return f"sqlite:///{tmp}/store.db?partitions=8&synchronous=normal"
    return kind.replace("{tmp}", str(tmp))


async def eventually(cond: Callable[[], bool], within: float = 60.0, what: str = "") -> None:
    """Wait for `cond` (a hang guard, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + within
    while not cond():
        if loop.time() > until:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.02)
