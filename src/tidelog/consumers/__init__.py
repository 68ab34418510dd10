"""Consumer groups, workers, retries and parking, on the engine contract only.

    app = tidelog.App("billing", "sqlite:///data.db")

    @app.handler("order", group="billing")
    async def on_order(event: tidelog.RecordedEvent, ctx: tidelog.Context) -> None: ...

Run with `await app.run()` or `tidelog worker module:app`. See docs/consumers.md.

One concern per module: `_options`, `_context` and `_handler` are what users
write against; `_runtime` runs an `App` and maps the rest (group consumer,
partition run, delivery, checkpoints, flow control); `_dlq` and `_producer`
stand beside it.
"""

from ._app import App
from ._context import Context
from ._dlq import (
    DlqState,
    ParkedEvent,
    ParkedStatus,
    dlq_stream,
    drop_parked,
    list_parked,
    retry_parked,
)
from ._options import HandlerOptions, RunnerOptions
from ._producer import BufferFull, Producer
from ._stats import Stats

__all__ = [
    "App",
    "BufferFull",
    "Context",
    "DlqState",
    "HandlerOptions",
    "ParkedEvent",
    "ParkedStatus",
    "Producer",
    "RunnerOptions",
    "Stats",
    "dlq_stream",
    "drop_parked",
    "list_parked",
    "retry_parked",
]
