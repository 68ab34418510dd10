"""`App`: handlers registered per (category, group), and the run that consumes for them.

    app = tidelog.App("billing", "sqlite:///data.db")

    @app.handler("order", group="billing")
    async def on_order(event: tidelog.RecordedEvent, ctx: tidelog.Context) -> None:
        ctx.append(f"invoice-{event.stream}", [tidelog.NewEvent(type="Invoiced")])

`app.run()` (or `tidelog worker module:app`) joins each handler's group and
delivers the partitions this process owns; see `tidelog.consumers._runtime`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from tidelog import codec
from tidelog.engines.contract import GroupEngine
from tidelog.errors import InvalidInput
from tidelog.model import validate_stream_name

from ._handler import Handler, HandlerFn, event_class
from ._health import Health
from ._options import HandlerOptions, RunnerOptions
from ._runtime import Runtime
from ._stats import Stats

__all__ = ["App"]


class App:
    """A set of handlers consuming categories in consumer groups.

    `store` is a URL (opened by `run`) or an open store (left open).
    """

    def __init__(
        self,
        name: str,
        store: str | GroupEngine | None = None,
        *,
        options: RunnerOptions | None = None,
        registry: codec.EventRegistry | None = None,
        member: str | None = None,
    ) -> None:
        validate_stream_name(name)
        self.name = name
        self.store = store
        self.options = options or RunnerOptions()
        self.registry = registry
        self.member = member
        self.handlers: list[Handler] = []
        self._runtime: Runtime | None = None

    def handler(
        self,
        category: str,
        *,
        group: str,
        batch: int | None = None,
        max_attempts: int | None = None,
        on_park: Literal["block", "park_stream"] | None = None,
        options: HandlerOptions | None = None,
        name: str | None = None,
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Register `async def fn(event, ctx)` for `category` in consumer group `group`.

        Annotate `event` with a `@tidelog.event` Struct to receive decoded
        events of that type only; with `batch=N`, `fn` receives a list.
        """
        validate_stream_name(category)
        validate_stream_name(group)
        opts = options or HandlerOptions()
        changes: dict[str, Any] = {}
        if batch is not None:
            changes["batch"] = batch
        if max_attempts is not None:
            changes["max_attempts"] = max_attempts
        if on_park is not None:
            changes["on_park"] = on_park
        opts = replace(opts, **changes) if changes else opts

        def deco(fn: HandlerFn) -> HandlerFn:
            if not inspect.iscoroutinefunction(fn):
                raise InvalidInput(f"handler {fn.__qualname__} must be an async function")
            if any(h.group == group and h.category == category for h in self.handlers):
                raise InvalidInput(
                    f"group {group!r} already has a handler for {category!r}: "
                    "use one handler per (category, group)"
                )
            cls = event_class(fn, opts.batch is not None)
            types = None
            if cls is not None:
                type_name, _ = (self.registry or codec.DEFAULT_REGISTRY).type_of(cls)
                types = frozenset({type_name})
            self.handlers.append(
                Handler(
                    name=name or f"{fn.__module__}.{fn.__qualname__}",
                    category=category,
                    group=group,
                    fn=fn,
                    options=opts,
                    event_class=cls,
                    types=types,
                )
            )
            return fn

        return deco

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume until `stop` is set (or `request_stop` is called), then leave cleanly."""
        self._runtime = runtime = Runtime(self, stop)
        await runtime.run()

    def request_stop(self) -> None:
        """Stop fetching, finish in-flight work (within the shutdown timeout), commit, leave."""
        if self._runtime is not None:
            self._runtime.request_stop()

    @property
    def stats(self) -> Stats | None:
        """Counters of the current (or last) run; None before `run`."""
        return None if self._runtime is None else self._runtime.stats

    @property
    def health(self) -> Health | None:
        """Liveness and readiness of the current (or last) run; None before `run`."""
        return None if self._runtime is None else self._runtime.health
