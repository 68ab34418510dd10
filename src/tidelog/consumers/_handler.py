"""`Handler`: one registered handler, what it consumes and how the runtime calls it.

`App.handler` builds these; the group consumer and the partition runs only
read them. Kept apart from `App` so that the runtime, which `App.run` starts,
never needs to import the module that starts it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, get_type_hints

import msgspec

from tidelog import codec
from tidelog.errors import InvalidInput
from tidelog.model import RecordedEvent

from ._context import Context
from ._options import HandlerOptions

__all__ = ["Handler", "HandlerFn", "event_class"]

HandlerFn = Callable[[Any, Context], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class Handler:
    """A registered handler: what it consumes and how to call it."""

    name: str
    category: str
    group: str
    fn: HandlerFn
    options: HandlerOptions
    event_class: type[msgspec.Struct] | None = None
    """The annotated Struct type: events are decoded into it and filtered by its type name."""
    types: frozenset[str] | None = None

    def decode(self, event: RecordedEvent, registry: codec.EventRegistry | None) -> Any:
        if self.event_class is None:
            return event
        return codec.decode(event, registry=registry)

    def invoke(
        self,
        events: Sequence[RecordedEvent],
        ctx: Context,
        registry: codec.EventRegistry | None,
    ) -> Awaitable[None]:
        """The handler's awaitable for `events` (a plain call: no coroutine of its own)."""
        if self.options.batch is not None:
            return self.fn([self.decode(e, registry) for e in events], ctx)
        if self.event_class is None:
            return self.fn(events[0], ctx)
        return self.fn(self.decode(events[0], registry), ctx)


def event_class(fn: Callable[..., Any], batch: bool) -> type[msgspec.Struct] | None:
    """The Struct a handler's first parameter is annotated with, if any."""
    try:
        hints = get_type_hints(fn)
    except Exception:  # unresolvable annotations: deliver RecordedEvent
        return None
    params = list(inspect.signature(fn).parameters)
    if not params:
        raise InvalidInput(f"handler {fn.__qualname__} must take (event, ctx)")
    hint = hints.get(params[0])
    if batch and hint is not None:
        args = getattr(hint, "__args__", None)
        hint = args[0] if args else None
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct) and hint is not RecordedEvent:
        return hint
    return None
