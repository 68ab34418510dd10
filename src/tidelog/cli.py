"""The `tidelog` command line (also `python -m tidelog`).

Every command is a small sync wrapper that runs async code with
`asyncio.run` (through `run`) against the store named by the global
`--store URL` (or `TIDELOG_STORE`, default `tidelog.DEFAULT_STORE_URL`).
`--json` switches every command's output to JSON lines for scripts.

Errors are handled in exactly one place, `_Group.invoke`: a `TidelogError`
(bad stream name, wrong expected version, deleted stream, unknown URL
scheme, ...) or malformed JSON from the command line becomes one line on
stderr and exit code 1, never a traceback. Anything else is a bug and keeps
its traceback.

Feature areas add their own commands without editing this file's commands:
each module named in `_COMMAND_MODULES` exposes `register(app)`, and may use
`settings(ctx)`, `run(...)`, `emit(...)` and `parse_json(...)` from here.
A module that does not exist (yet) is skipped; any other import error is
raised, so a broken feature module is never silently hidden. Such modules
should import heavy optional dependencies inside their command functions, so
that `tidelog --help` works on a base install.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Final, TypeVar
from uuid import UUID

import msgspec
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

import tidelog
from tidelog.errors import InvalidEvent, InvalidInput, TidelogError
from tidelog.model import (
    AppendResult,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamInfo,
    StreamState,
    validate_expected_version,
)

__all__ = ["app", "emit", "main", "parse_expected_version", "parse_json", "run", "settings"]

T = TypeVar("T")

_COMMAND_MODULES: Final = (
    "tidelog.consumers._cli",
    "tidelog.schemas._cli",
    "tidelog.projections._cli",
    "tidelog._cli_admin",
    "tidelog.server._cli",
)
"""Modules that add commands: each exposes `register(app: typer.Typer) -> None`."""

_json_encoder: Final = msgspec.json.Encoder()
_json_decoder: Final = msgspec.json.Decoder()


class _Group(typer.core.TyperGroup):
    """The one place where errors become a one-line message and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except TidelogError as exc:
            _fail(ctx, type(exc).__name__, str(exc))
        except (msgspec.DecodeError, json.JSONDecodeError) as exc:
            _fail(ctx, "InvalidInput", f"invalid JSON: {exc}")
        except BrokenPipeError:
            # The reader went away (`tidelog log | head`): stop quietly, like other tools.
            # Point stdout at /dev/null so flushing it at exit cannot raise again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(141) from None


def _fail(ctx: Any, kind: str, message: str) -> None:
    """Print one line on stderr (a JSON object with `--json`) and exit with status 1."""
    message = " ".join(message.split())  # one line, whatever the message contains
    if settings(ctx).json:
        typer.echo(_json_encoder.encode({"error": kind, "message": message}), err=True)
    else:
        typer.echo(f"error: {kind}: {message}", err=True)
    raise typer.Exit(1)


app = typer.Typer(
    name="tidelog",
    cls=_Group,
    help="tidelog: an event store and a message queue in one.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass(frozen=True)
class Settings:
    """The global options, available to every command as `settings(ctx)`."""

    store: str
    json: bool


def _print_version(value: bool | None) -> None:
    if value:
        typer.echo(f"tidelog {tidelog.__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    ctx: typer.Context,
    store: Annotated[
        str,
        typer.Option(
            "--store",
            envvar="TIDELOG_STORE",
            help="Store URL: sqlite:///path.db, memory://, postgresql://..., nats://..., "
            "http(s)://...",
        ),
    ] = tidelog.DEFAULT_STORE_URL,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON lines instead of tables.")
    ] = False,
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = None,
) -> None:
    ctx.obj = Settings(store=store, json=json_output)


def settings(ctx: typer.Context) -> Settings:
    """The global options of this invocation."""
    obj = ctx.find_object(Settings)
    return obj if obj is not None else Settings(store=tidelog.DEFAULT_STORE_URL, json=False)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's async body."""
    return asyncio.run(coro)


def emit(value: Any) -> None:
    """Print one JSON line (any msgspec-encodable value)."""
    typer.echo(_json_encoder.encode(value).decode())


def parse_json(text: str, what: str) -> Any:
    """Decode JSON given on the command line; malformed input raises `InvalidInput`."""
    try:
        # surrogateescape: undecodable bytes in argv become a JSON error, not a crash.
        return _json_decoder.decode(text.encode("utf-8", "surrogateescape"))
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None


def parse_expected_version(text: str) -> ExpectedVersion:
    """`any`, `no_stream`, `stream_exists` (or `no-stream`, `stream-exists`) or an int >= 0."""
    word = text.strip().lower()
    for state in StreamState:
        if word.replace("-", "_") == state.value:
            return state
    if re.fullmatch(r"-?[0-9]{1,20}", word) is None:  # ASCII digits only, bounded
        raise tidelog.InvalidExpectedVersion(text)
    return validate_expected_version(int(word))


def _console(err: bool = False) -> Console:
    return Console(stderr=err, soft_wrap=True, highlight=False)


def _open(ctx: typer.Context) -> Any:
    return tidelog.connect(settings(ctx).store)


def event_to_json(event: RecordedEvent) -> dict[str, Any]:
    """An event as a JSON object: `data` is the JSON value when the data is JSON,
    else null with the bytes in `data_base64` (the same shape as the HTTP API)."""
    data: Any = msgspec.Raw(b"null")
    data_base64 = None
    try:
        _json_decoder.decode(event.data)
        # Raw newlines in valid JSON are whitespace between tokens: one event per line.
        data = msgspec.Raw(event.data.replace(b"\n", b" ").replace(b"\r", b" "))
    except msgspec.DecodeError:
        data_base64 = base64.b64encode(event.data).decode("ascii")
    out: dict[str, Any] = {
        "id": str(event.id),
        "stream": event.stream,
        "version": event.version,
        "position": event.position,
        "type": event.type,
        "data": data,
        "metadata": event.metadata,
        "recorded_at": event.recorded_at.isoformat(),
        "schema_version": event.schema_version,
    }
    if data_base64 is not None:
        out["data_base64"] = data_base64
    return out


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


# --------------------------------------------------------------------------- commands


@app.command()
def append(
    ctx: typer.Context,
    stream: Annotated[str, typer.Argument(help="Stream name, e.g. order-42.")],
    type_: Annotated[str, typer.Option("--type", "-t", help="Event type.")],
    data: Annotated[str, typer.Option("--data", "-d", help="Event data as JSON.")] = "{}",
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
    parse_json(data, "--data")
    meta = {} if metadata is None else parse_json(metadata, "--metadata")
    if not isinstance(meta, dict):
        raise InvalidEvent("--metadata must be a JSON object")
    event = NewEvent(type=type_, data=data.strip().encode(), metadata=meta)
    if event_id is not None:
        try:
            event = msgspec.structs.replace(event, id=UUID(event_id))
        except ValueError:
            raise InvalidEvent(f"--id {event_id!r} is not a UUID") from None

    async def body() -> AppendResult:
        async with _open(ctx) as store:
            result: AppendResult = await store.append(stream, [event], expected)
            return result

    result = run(body())
    emit({"stream": stream, "id": str(event.id), "version": result.version,
          "position": result.position})  # fmt: skip


@app.command()
def read(
    ctx: typer.Context,
    stream: Annotated[str, typer.Argument(help="Stream name.")],
    from_version: Annotated[
        int | None,
        typer.Option("--from", help="First version (default: 0, or the end when backwards)."),
    ] = None,
    backwards: Annotated[bool, typer.Option("--backwards", help="Newest first.")] = False,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="At most N events.")] = None,
) -> None:
    """Print the events of one stream."""
    start = from_version if from_version is not None else (-1 if backwards else 0)
    printer = _Printer(settings(ctx).json)

    async def body() -> None:
        async with _open(ctx) as store:
            async for event in store.read_stream(
                stream, from_version=start, backwards=backwards, limit=limit
            ):
                printer.event(event)

    run(body())


@app.command()
def log(
    ctx: typer.Context,
    from_position: Annotated[
        int, typer.Option("--from", help="First position (events at or after it).")
    ] = 0,
    category: Annotated[
        list[str] | None, typer.Option("--category", "-c", help="Only these categories.")
    ] = None,
    type_: Annotated[
        list[str] | None, typer.Option("--type", "-t", help="Only these event types.")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="At most N events.")] = None,
) -> None:
    """Print the global log, in commit order."""
    printer = _Printer(settings(ctx).json)

    async def body() -> None:
        async with _open(ctx) as store:
            async for event in store.read_all(
                from_position=from_position, categories=category, types=type_, limit=limit
            ):
                printer.event(event)

    run(body())


@app.command()
def tail(
    ctx: typer.Context,
    category: Annotated[
        list[str] | None, typer.Option("--category", "-c", help="Only these categories.")
    ] = None,
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
        async with _open(ctx) as store:
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


@app.command()
def streams(
    ctx: typer.Context,
    category: Annotated[
        str | None, typer.Option("--category", "-c", help="Only this category.")
    ] = None,
) -> None:
    """List streams with their last version."""
    opts = settings(ctx)

    async def body() -> list[StreamInfo]:
        async with _open(ctx) as store:
            return [info async for info in store.list_streams(category=category)]

    found = run(body())
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
    _console().print(f"{len(found)} streams", style="dim")


@app.command()
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
    progress = Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        TimeElapsedColumn(),
        console=err,
        disable=as_json,
        transient=False,
    )
    tasks = {
        "append": progress.add_task("append", total=events),
        "replay": progress.add_task("replay", total=events, start=False),
    }

    def on_progress(phase: str, n: int) -> None:
        # Shown from the first append on, so that a refused store gives only the error line.
        if not progress.live.is_started:
            if not as_json:
                err.print(f"tidelog demo: {events:,} events into {url}")
            progress.start()
        if phase == "replay" and not progress.tasks[tasks["replay"]].started:
            progress.start_task(tasks["replay"])
        progress.advance(tasks[phase], n)

    try:
        report = run(run_demo(url, events, on_progress=on_progress))
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
        out.print(
            Text(f"\nexplore it: tidelog --store {report.store} read {report.sample_stream}"),
            style="dim",
        )
    if not report.matches:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- extensions


def _register_extensions(target: typer.Typer) -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Only "this module (or its package) does not exist yet" is skipped.
            missing = exc.name or ""
            if missing and (name == missing or name.startswith(missing + ".")):
                continue
            raise
        module.register(target)


_register_extensions(app)


def main() -> None:
    """The console script `tidelog`."""
    app(prog_name="tidelog")
