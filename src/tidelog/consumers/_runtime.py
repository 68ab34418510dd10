"""The runtime of one `App.run`: the store, the limits shared by all handlers, a consumer each.

How the pieces fit, top down:

    Runtime            this module: opens the store, starts a GroupConsumer per handler
    GroupConsumer      `_group`: membership, heartbeats, rebalances, the reader
    PartitionRun       `_partition`: one owned partition's workers, in per-stream order
    Delivery           `_delivery`: an event through the handler: DLQ gate, retries, parking
    Checkpoint         `_checkpoints`: what finished, and the fenced commits recording it
    Credits, Limiter   `_flow`: events fetched, and handler calls running, at once
    Stats, emit        `_stats`: what a run counts and logs

Delivery is at-least-once; a handler's `ctx.append`s are committed with the
checkpoint (atomically and fenced on engines with transactions), with ids
derived from the source event, so a redelivery writes nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
from collections.abc import Sequence
from typing import Protocol

from tidelog import codec
from tidelog.engines.contract import GroupEngine

from ._flow import Limiter
from ._group import GroupConsumer
from ._handler import Handler
from ._health import Health
from ._options import RunnerOptions
from ._stats import Stats, emit

__all__ = ["AppSpec", "Runtime", "default_member"]

_MEMBER_CHARS = re.compile(r"[^A-Za-z0-9_@:\-]")


def default_member(app_name: str) -> str:
    """A member id unique per process: app, host, pid and a random suffix."""
    host = _MEMBER_CHARS.sub("_", socket.gethostname())[:40]
    return f"{app_name}-{host}-{os.getpid()}-{secrets.token_hex(3)}"


class AppSpec(Protocol):
    """What a runtime needs of the `App` it runs (so it never imports the module of `App`)."""

    @property
    def name(self) -> str: ...
    @property
    def store(self) -> str | GroupEngine | None: ...
    @property
    def options(self) -> RunnerOptions: ...
    @property
    def registry(self) -> codec.EventRegistry | None: ...
    @property
    def member(self) -> str | None: ...
    @property
    def handlers(self) -> Sequence[Handler]: ...


class Runtime:
    """One `App.run`: the store, the shared limits and a consumer per handler."""

    def __init__(self, app: AppSpec, stop: asyncio.Event | None) -> None:
        self.app = app
        self.options = app.options
        self.registry = app.registry
        self.member = app.member or default_member(app.name)
        self.stopping = stop or asyncio.Event()
        self.stats = Stats()
        self.health = Health()
        """What `/livez` and `/readyz` of `tidelog worker --metrics-port` report."""
        self.running = Limiter(self.options.concurrency)
        self.store: GroupEngine = None  # type: ignore[assignment]

    def request_stop(self) -> None:
        self.stopping.set()

    async def _tick(self) -> None:
        """Show the health probes that the event loop runs (see `Health.live`)."""
        while True:
            self.health.tick()
            await asyncio.sleep(1.0)

    async def run(self) -> None:
        from tidelog._connect import connect

        app = self.app
        if not app.handlers:
            raise ValueError(f"app {app.name!r} has no handlers")
        owned = not isinstance(app.store, GroupEngine)
        if isinstance(app.store, GroupEngine):
            self.store = app.store
        else:
            self.store = await (connect(app.store) if app.store else connect())
        emit(logging.INFO, "worker_started", app=app.name, member=self.member)
        ticker = asyncio.create_task(self._tick())
        try:
            consumers = [GroupConsumer(self, h) for h in app.handlers]
            await asyncio.gather(*(c.run() for c in consumers))
        finally:
            self.health.stopping = True
            ticker.cancel()
            emit(logging.INFO, "worker_stopped", app=app.name, member=self.member)
            if owned:
                await self.store.close()
