"""The store's own commands: `append`, `read`, `log`, `tail`, `streams`, `demo`.

Like every command module, a leaf: it takes its helpers from `tidelog._cli_kit`
and `register(app)` adds its commands to the application `tidelog.cli`
assembles.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Final
from uuid import UUID

import msgspec
import typer
from rich.console import Console
from rich.progress import MofNCompleteColumn
from rich.table import Table
from rich.text import Text

from tidelog._cli_kit import (
    NAMES,
    CategoriesOption,
    LimitOption,
    comma_list,
    connect_options,
    emit,
    event_to_json,
    not_negative,
    open_store,
    parse_expected_version,
    parse_json,
    progress_bar,
    run,
    settings,
)
from tidelog._connect import resolved_url
from tidelog.engines.contract import Engine
from tidelog.errors import InvalidEvent, InvalidInput
from tidelog.model import AppendResult, NewEvent, RecordedEvent, StreamInfo

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the store's commands to the tidelog CLI (first: they lead its help)."""
    for command in (append, read, log, tail, streams, demo):
        app.command()(command)


def _console(err: bool = False) -> Console:
    return Console(stderr=err, soft_wrap=True, highlight=False)


# Event data is anyone's input: never let it move the cursor or recolour the terminal.
_CONTROL: Final = {c: f"\\x{c:02x}" for c in (*range(32), *range(0x7F, 0xA0))} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def _event_line(event: RecordedEvent) -> Text:
    try:
        data = event.data.decode("utf-8").translate(_CONTROL)
    except UnicodeDecodeError:
        data = f"<{len(event.data)} bytes>"
    return Text.assemble(
        (f"{event.position:>8} ", "dim"),
        (f"{event.stream}", "cyan"),
        (f"@{event.version} ", "dim"),
        (event.type, "bold"),
        " ",
        data,
    )


class _Printer:
    """Prints events as JSON lines or readable lines."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.console = _console()

    def event(self, event: RecordedEvent) -> None:
        if self.as_json:
            emit(event_to_json(event))
        else:
            self.console.print(_event_line(event))


def _print_events(
    ctx: typer.Context, events: Callable[[Engine], AsyncIterator[RecordedEvent]]
) -> None:
    """Print what `events` reads from the global `--store`, opened for reads only.

    `read` and `log` differ only in which read they make; opening the store,
    the output format and running the loop are the same, and written here once.
    """
    printer = _Printer(settings(ctx).json)

    async def body() -> None:
        async with open_store(ctx, reads_only=True) as store:
            async for event in events(store):
                printer.event(event)

    run(body())


def _data_text(data: str) -> str:
    """The JSON text `--data` names: itself, stdin (`-`) or a file (`@path`), like curl.

    No JSON text starts with `@`, so the prefix cannot hide a value.
    """
    if data == "-":
        return sys.stdin.read()
    if data.startswith("@"):
        path = data[1:]
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                return f.read()
        except OSError as exc:
            raise InvalidInput(f"cannot read --data file {path!r}: {exc.strerror}") from None
    return data


# --------------------------------------------------------------------------- commands


def append(
    ctx: typer.Context,
    stream: Annotated[str, typer.Argument(help="Stream name, e.g. order-42.")],
    type_: Annotated[str, typer.Option("--type", "-t", help="Event type.")],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            "-d",
            help="Event data as JSON; '-' reads it from stdin, '@FILE' from a file.",
        ),
    ] = "{}",
    expected_version: Annotated[
        str,
        typer.Option(
            "--expected-version",
            "-e",
            help="An int (the version of the stream's last event), any, no_stream or "
            "stream_exists.",
        ),
    ] = "any",
    event_id: Annotated[
        str | None,
        typer.Option("--id", help="Event id (UUID); repeating an append with it is a no-op."),
    ] = None,
    metadata: Annotated[
        str | None, typer.Option("--metadata", "-m", help="Metadata as a JSON object.")
    ] = None,
) -> None:
    """Append one event to a stream and print the result as JSON."""
    expected = parse_expected_version(expected_version)
    text = _data_text(data)
    parse_json(text, "--data")
    meta = {} if metadata is None else parse_json(metadata, "--metadata")
    if not isinstance(meta, dict):
        raise InvalidEvent("--metadata must be a JSON object")
    event = NewEvent(
        type=type_, data=text.strip().encode("utf-8", "surrogateescape"), metadata=meta
    )
    if event_id is not None:
        try:
            event = msgspec.structs.replace(event, id=UUID(event_id))
        except ValueError:
            raise InvalidEvent(f"--id {event_id!r} is not a UUID") from None

    async def body() -> AppendResult:
        async with open_store(ctx) as store:
            result: AppendResult = await store.append(stream, [event], expected)
            return result

    result = run(body())
    emit({"stream": stream, "id": str(event.id), "version": result.version,
          "position": result.position})  # fmt: skip


def read(
    ctx: typer.Context,
    stream: Annotated[str, typer.Argument(help="Stream name.")],
    from_version: Annotated[
        int | None,
        typer.Option("--from", help="First version (default: 0, or the end when backwards)."),
    ] = None,
    backwards: Annotated[bool, typer.Option("--backwards", help="Newest first.")] = False,
    limit: LimitOption = None,
) -> None:
    """Print the events of one stream."""
    # backwards, a negative start is the end, as in the store's API
    not_negative(**{"from": None if backwards else from_version, "limit": limit})
    _print_events(
        ctx,
        lambda store: store.read_stream(
            stream, from_version=from_version, backwards=backwards, limit=limit
        ),
    )


def log(
    ctx: typer.Context,
    from_position: Annotated[
        int, typer.Option("--from", help="First position (events at or after it).")
    ] = 0,
    category: CategoriesOption = None,
    type_: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            "-t",
            help="Only these event types (repeat it, or separate with commas).",
            metavar=NAMES,
            callback=comma_list,
        ),
    ] = None,
    limit: LimitOption = None,
) -> None:
    """Print the global log, in commit order."""
    not_negative(**{"from": from_position, "limit": limit})
    _print_events(
        ctx,
        lambda store: store.read_all(
            from_position=from_position, categories=category, types=type_, limit=limit
        ),
    )


def tail(
    ctx: typer.Context,
    category: CategoriesOption = None,
    from_position: Annotated[
        int | None,
        typer.Option("--from", help="Start at this position (default: only new events)."),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option("--count", min=1, help="Stop after N events (default: follow forever)."),
    ] = None,
) -> None:
    """Follow the log live until Ctrl-C."""
    printer = _Printer(settings(ctx).json)

    async def body() -> None:
        async with open_store(ctx, reads_only=True) as store:
            start = from_position
            if start is None:
                start = await store.last_position() + 1
            seen = 0
            live = store.subscribe(from_position=start, categories=category)
            async with contextlib.aclosing(live):
                async for event in live:
                    printer.event(event)
                    sys.stdout.flush()
                    seen += 1
                    if count is not None and seen >= count:
                        return

    # SIGTERM ends a tail as cleanly as Ctrl-C does (containers, supervisors).
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        run(body())
    except KeyboardInterrupt:
        pass
    finally:
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


def streams(
    ctx: typer.Context,
    category: Annotated[
        str | None, typer.Option("--category", "-c", help="Only this category.")
    ] = None,
) -> None:
    """List streams with their last version."""
    opts = settings(ctx)

    async def body() -> tuple[list[StreamInfo], int]:
        async with open_store(ctx, reads_only=True) as store:
            found = [info async for info in store.list_streams(category=category)]
            return found, await store.first_position()

    found, first = run(body())
    if opts.json:
        for info in found:
            emit({"name": info.name, "version": info.version, "deleted": info.deleted})
        return
    table = Table("stream", "version", "deleted", box=None)
    for info in found:
        table.add_row(
            info.name, "-" if info.version is None else str(info.version), "yes" * info.deleted
        )
    _console().print(table)
    counted = f"{len(found)} stream{'' if len(found) == 1 else 's'}"
    if first > 1:  # else nothing was deleted, and the note would say it was
        counted += f"; low-water position {first} (retention deleted what is below)"
    _console().print(counted, style="dim")


def demo(
    ctx: typer.Context,
    events: Annotated[
        int, typer.Option("--events", "-n", min=1, help="How many events to write.")
    ] = 20_000,
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="An empty store to use (default: a fresh file under ./tidelog-data/).",
        ),
    ] = None,
) -> None:
    """Write and replay a realistic event-sourced workload, and show how fast it went."""
    from tidelog._demo import run_demo

    as_json = settings(ctx).json
    url = store or "sqlite:///tidelog-data/demo-{}-{}.db".format(
        time.strftime("%Y%m%d-%H%M%S"), os.getpid()
    )
    err = _console(err=True)
    progress = progress_bar(
        "{task.description:<10}", MofNCompleteColumn(), "events", err, disable=as_json
    )
    tasks = {
        "append": progress.add_task("append", total=events),
        "replay": progress.add_task("replay", total=events, start=False),
    }

    def on_progress(phase: str, n: int) -> None:
        # Shown from the first append on, so that a refused store gives only the error line.
        if not progress.live.is_started:
            if not as_json:
                err.print(f"tidelog demo: {events:,} events into {resolved_url(url)}")
            progress.start()
        if phase == "replay" and not progress.tasks[tasks["replay"]].started:
            progress.start_task(tasks["replay"])
        progress.advance(tasks[phase], n)

    try:
        report = run(
            run_demo(url, events, on_progress=on_progress, options=connect_options(ctx, url))
        )
    finally:
        if progress.live.is_started:
            progress.stop()

    if as_json:
        emit(
            {
                "store": report.store,
                "engine": report.engine,
                "events": report.events,
                "appends": report.appends,
                "streams": report.streams,
                "orders": report.orders,
                "customers": report.customers,
                "conflicts_retried": report.conflicts_retried,
                "append_seconds": report.append_seconds,
                "append_events_per_second": report.append_rate,
                "replayed": report.replayed,
                "replay_seconds": report.replay_seconds,
                "replay_events_per_second": report.replay_rate,
                "status": report.status,
                "revenue_cents": report.revenue_cents,
                "loyalty_points": report.loyalty_points,
                "read_model_matches": report.matches,
            }
        )
    else:
        out = _console()
        table = Table(title=f"tidelog demo on {report.engine}", box=None, show_header=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("store", report.store)
        table.add_row(
            "wrote",
            f"{report.events:,} events in {report.appends:,} appends to {report.streams:,} "
            f"streams ({report.orders:,} orders, {report.customers:,} customers)",
        )
        table.add_row(
            "append",
            f"{report.append_seconds:.2f} s = {report.append_rate:,.0f} events/s, "
            "each with an expected version",
        )
        table.add_row(
            "conflicts",
            f"{report.conflicts_retried:,} concurrent writes to a customer were refused "
            "(WrongExpectedVersion) and retried",
        )
        table.add_row(
            "replay",
            f"{report.replayed:,} events in {report.replay_seconds:.2f} s = "
            f"{report.replay_rate:,.0f} events/s",
        )
        table.add_row("orders", ", ".join(f"{k} {v:,}" for k, v in report.status.items()))
        table.add_row("revenue", f"{report.revenue_cents / 100:,.2f}")
        table.add_row("loyalty", f"{report.loyalty_points:,} points")
        table.add_row(
            "read model",
            "matches what was written" if report.matches else "DOES NOT MATCH what was written",
        )
        out.print(table)
        out.print(Text(f"\nhistory of {report.sample_stream}:", style="bold"))
        for line in report.sample_history[:8]:
            out.print(Text("  " + line))
        if len(report.sample_history) > 8:
            out.print(Text(f"  ... {len(report.sample_history) - 8} more", style="dim"))
        if report.engine == "memory":
            # gone with this process: no later command can read it
            hint = "the store was in memory and is gone; keep one with --store sqlite:///demo.db"
        else:
            hint = f"explore it: tidelog --store {report.store} read {report.sample_stream}"
        out.print(Text("\n" + hint), style="dim")
    if not report.matches:
        raise typer.Exit(1)
