"""Commands: `tidelog worker`, `tidelog groups`, `tidelog dlq list|show|retry|drop`.

Loaded by `tidelog.cli` (its `_COMMAND_MODULES`), which owns the global
`--store` and `--json` options and turns `TidelogError`s into one-line errors.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import typer

from tidelog.errors import InvalidInput

__all__ = ["JsonLogFormatter", "load_app", "register"]

_Group = Annotated[str, typer.Argument(help="The consumer group.")]
_EventId = Annotated[str, typer.Argument(help="The parked event's id.")]


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            "pid": os.getpid(),
        }
        fields = getattr(record, "tidelog", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def load_app(spec: str) -> Any:
    """Import `module:attribute` (the current directory is importable, like uvicorn)."""
    from ._app import App

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidInput(f"expected module:app, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    from tidelog._cli_kit import import_user_module, one_line

    module = import_user_module(module_name)
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise InvalidInput(f"{module_name!r} has no attribute {attr!r}")
    if callable(target) and not isinstance(target, App):
        try:
            target = target()  # an app factory
        except Exception as exc:
            raise InvalidInput(f"{spec}() raised {one_line(exc)}") from None
    if not isinstance(target, App):
        raise InvalidInput(f"{spec} is not a tidelog.App")
    return target


_YOUNG_COLLECTION_AT = 10_000
"""Allocations between two collections of the youngest generation (Python's default: 700)."""


def _tune_gc() -> None:
    """Set the worker process's garbage collector for a steady flow of events.

    Each fetched event holds a few tracked objects until it is handled: with
    the default threshold (700) they set off a young collection every few
    hundred events, and those that survive it full ones, which walk every
    object of the process (~40k after imports). Both cost a busy worker
    ~10% of its CPU (`group_throughput`), for memory that is freed anyway
    once the events are handled. What is alive now (modules, classes, the
    app) lives as long as the process: frozen, full collections skip it.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(_YOUNG_COLLECTION_AT, older, oldest)


def _uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise InvalidInput(f"not an event id (UUID): {text!r}") from None


def _printable(text: str) -> str:
    """`text` on one line, without control characters (errors are anyone's text)."""
    return "".join(c if c.isprintable() else " " for c in " ".join(text.split()))


async def _known_group(store: Any, group: str) -> None:
    """Raise `InvalidInput` unless `group` is a consumer group of `store`.

    An empty listing of a mistyped group would read as "nothing parked".
    """
    known = sorted({g for g, _ in await store.list_groups()})
    if group not in known:
        listed = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        raise InvalidInput(f"unknown consumer group {group!r} (groups: {listed or 'none yet'})")


def register(app: typer.Typer) -> None:  # noqa: PLR0915 (the commands are nested functions; each is short)
    from tidelog._cli_kit import (
        command_group,
        connect_options,
        emit,
        emit_rows,
        open_store,
        partition_lags,
        run,
        say,
        settings,
    )

    @app.command()
    def worker(
        ctx: typer.Context,
        target: Annotated[str, typer.Argument(help="The app to run, as module:attribute.")],
        concurrency: Annotated[
            int | None, typer.Option(help="Handler calls running at once in this process.")
        ] = None,
        max_in_flight: Annotated[
            int | None, typer.Option(help="Events fetched but unfinished, per group.")
        ] = None,
        lease: Annotated[float | None, typer.Option(help="Group lease in seconds.")] = None,
        shutdown_timeout: Annotated[
            float | None,
            typer.Option(help="Seconds to finish in-flight events after SIGTERM/SIGINT."),
        ] = None,
        log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
        metrics_port: Annotated[
            int | None,
            typer.Option(help="Serve Prometheus metrics at http://HOST:PORT/metrics."),
        ] = None,
        metrics_host: Annotated[
            str, typer.Option(help="Address the metrics endpoint listens on.")
        ] = "127.0.0.1",
    ) -> None:
        """Run an app's handlers: join their groups, consume, stop cleanly on SIGTERM/SIGINT.

        Logs are JSON lines on stderr. The store is the app's own, else --store.
        """
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLogFormatter())
        root = logging.getLogger("tidelog")
        root.addHandler(handler)
        root.setLevel(log_level.upper())
        the_app = load_app(target)
        changes: dict[str, Any] = {}
        for key, value in (
            ("concurrency", concurrency),
            ("max_in_flight", max_in_flight),
            ("lease", lease),
            ("shutdown_timeout", shutdown_timeout),
        ):
            if value is not None:
                changes[key] = value
        if changes:
            the_app.options = replace(the_app.options, **changes)
        if the_app.store is None:
            the_app.store = settings(ctx).store
        if metrics_port is not None:
            from ._metrics import serve_metrics

            try:
                serve_metrics(the_app, metrics_host, metrics_port)
            except OSError as exc:
                raise typer.BadParameter(
                    f"cannot listen on {metrics_host}:{metrics_port}: {exc.strerror}",
                    param_hint="--metrics-port",
                ) from None
        _tune_gc()

        async def main() -> None:
            loop = asyncio.get_running_loop()
            signals = 0

            def on_signal(signum: int) -> None:
                nonlocal signals
                signals += 1
                logging.getLogger("tidelog.consumers").info(
                    "signal", extra={"tidelog": {"signal": signal.Signals(signum).name}}
                )
                if signals > 1:
                    os._exit(130)  # a second signal: stop now
                the_app.request_stop()

            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal, sig)
            store = the_app.store
            if isinstance(store, str) and connect_options(ctx, store):
                # a server's URL: open it here with the global --token/--token-file
                async with open_store(ctx, url=store) as opened:
                    the_app.store = opened
                    try:
                        await the_app.run()
                    finally:
                        the_app.store = store
                return
            await the_app.run()

        run(main())
        stats = the_app.stats
        if stats is not None:
            logging.getLogger("tidelog.consumers").info("stats", extra={"tidelog": asdict(stats)})

    @app.command()
    def groups(
        ctx: typer.Context,
        group: Annotated[str | None, typer.Option(help="Only this group.")] = None,
    ) -> None:
        """Consumer groups: members, partition owners, checkpoints and lag per partition."""

        async def body() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = []
            async with open_store(ctx, reads_only=True) as store:
                if group is not None:
                    await _known_group(store, group)  # a typo is not an empty table
                for g, category in await store.list_groups():
                    if group is not None and g != group:
                        continue
                    desc = await store.describe_group(g, category)
                    lags = await partition_lags(store, g, category)
                    owners = {}
                    members = []
                    if desc is not None:
                        for m in desc.members:
                            members.append(m.member)
                            for p in m.partitions:
                                owners[p] = m.member
                    for p, (cp, lag) in lags.items():
                        rows.append(
                            {
                                "group": g,
                                "category": category,
                                "generation": None if desc is None else desc.generation,
                                "members": members,
                                "partition": p,
                                "owner": owners.get(p),
                                "checkpoint": cp,
                                "lag": lag,
                            }
                        )
            return rows

        rows = run(body())
        empty = "no consumer groups yet (a worker's handler or a join creates one)"
        if emit_rows(ctx, rows, empty=empty):
            return
        from rich.console import Console
        from rich.table import Table

        table = Table("group", "category", "gen", "partition", "owner", "checkpoint", "lag")
        for row in rows:
            table.add_row(
                row["group"],
                row["category"],
                str(row["generation"]),
                str(row["partition"]),
                row["owner"] or "-",
                str(row["checkpoint"]),
                str(row["lag"]),
            )
        Console(soft_wrap=True).print(table)

    dlq = command_group(app, "dlq", "Parked events of a consumer group ($dlq-<group>).")

    def _parked_json(p: Any, *, with_event: bool = True) -> dict[str, Any]:
        """A parked event as JSON; the listing leaves out the event itself (`with_event`)."""
        from tidelog._cli_kit import event_to_json

        row: dict[str, Any] = p.summary()
        if with_event:
            row["event"] = event_to_json(p.event)
        return row

    @dlq.command("list")
    def dlq_list(
        ctx: typer.Context,
        group: _Group,
        all_: Annotated[
            bool, typer.Option("--all", help="Include resolved and dropped events.")
        ] = False,
    ) -> None:
        """Parked and held events, oldest first."""
        from ._dlq import list_parked

        async def body() -> list[Any]:
            async with open_store(ctx, reads_only=True) as store:
                parked = await list_parked(store, group, include_settled=all_)
                if not parked:
                    await _known_group(store, group)
                return parked

        parked = run(body())
        if emit_rows(ctx, (_parked_json(p, with_event=False) for p in parked)):
            return
        # Not a table: a table squeezed into a narrow terminal cuts the event ids,
        # which `dlq show/retry/drop` need whole. Each event is a line that starts
        # with its whole id, then its error, indented.
        if not parked:
            typer.echo(f"nothing parked in group {group}")
        for p in parked:
            typer.echo(
                f"{p.event.id}  {p.status.value:<8} {_printable(p.event.stream)}@{p.event.version}"
                f"  {_printable(p.event.type)}  attempts {p.attempts}"
            )
            if p.error:
                typer.echo(f"    {_printable(p.error)}")

    @dlq.command("show")
    def dlq_show(
        ctx: typer.Context,
        group: _Group,
        event_id: _EventId,
    ) -> None:
        """One parked event: the original event, its error, attempts and handler."""
        from ._dlq import find_parked

        wanted = _uuid(event_id)

        async def body() -> Any:
            async with open_store(ctx, reads_only=True) as store:
                return await find_parked(store, group, wanted)

        emit(_parked_json(run(body())))

    def settle_command(action: str, help: str) -> None:
        """Add `tidelog dlq ACTION GROUP EVENT_ID`: retry and drop differ only in the call."""

        @dlq.command(action, help=help)
        def settle(ctx: typer.Context, group: _Group, event_id: _EventId) -> None:
            from ._dlq import drop_parked, retry_parked

            fn = retry_parked if action == "retry" else drop_parked
            target = _uuid(event_id)

            async def body() -> Any:
                async with open_store(ctx) as store:
                    return await fn(store, group, target)

            parked = run(body())
            say(
                ctx,
                {"event_id": event_id, "action": action, "stream": parked.event.stream},
                f"{action} requested for {event_id} ({parked.event.stream})",
            )

    settle_command(
        "retry", "Run a parked event through its handler again (by the partition's owner)."
    )
    settle_command("drop", "Give up on a parked event; events held behind it are released.")
