"""What every command module of the CLI shares: the global options, running, output.

A command module (`_cli_store`, `consumers/_cli`, `schemas/_cli`, ...) imports
these helpers from here, never from `tidelog.cli`: `tidelog.cli` imports the
command modules to assemble the application, so a command module that
imported it back would close an import circle. `tidelog.cli` re-exports the
names of `__all__` for code outside the package.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import sys
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, Final, TypeVar

import msgspec
import typer

import tidelog
from tidelog import model
from tidelog.errors import InvalidInput
from tidelog.model import ExpectedVersion, RecordedEvent, validate_expected_version

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, ProgressColumn

__all__ = [
    "CategoriesOption",
    "LimitOption",
    "Settings",
    "command_group",
    "connect_options",
    "emit",
    "emit_rows",
    "event_to_json",
    "import_user_module",
    "one_line",
    "open_store",
    "parse_expected_version",
    "parse_json",
    "progress_bar",
    "partition_lags",
    "run",
    "say",
    "settings",
]

T = TypeVar("T")

json_encoder: Final = msgspec.json.Encoder()
_json_decoder: Final = msgspec.json.Decoder()


@dataclass(frozen=True)
class Settings:
    """The global options, available to every command as `settings(ctx)`."""

    store: str
    json: bool
    token: str | None = field(default=None, repr=False)
    """The bearer token for an http(s) store (`--token`, `TIDELOG_TOKEN`); never shown."""
    token_file: str | None = None
    """A file holding the bearer token (`--token-file`, `TIDELOG_TOKEN_FILE`)."""


def open_store(ctx: typer.Context, *, reads_only: bool = False, url: str | None = None) -> Any:
    """`tidelog.connect` for a command: the global `--store` (or `url`) with its credentials.

    `reads_only=True` is for commands that only read (`read`, `streams`,
    `groups`, ...): they refuse a SQLite file that does not exist rather than
    create one and show it empty, which is what a mistyped path or a run from
    another directory would otherwise do. The token goes only to an http(s)
    store, the one engine that takes it.
    """
    target = url if url is not None else settings(ctx).store
    return tidelog.connect(target, must_exist=reads_only, **connect_options(ctx, target))


def connect_options(ctx: typer.Context, url: str) -> dict[str, Any]:
    """The `tidelog.connect` options the global options give the store at `url`."""
    opts = settings(ctx)
    if isinstance(url, str) and url.lower().startswith(("http:", "https:")):
        return {"token": opts.token, "token_file": opts.token_file}
    return {}


def command_group(app: typer.Typer, name: str, help: str) -> typer.Typer:
    """Add the group `tidelog NAME ...` to `app`; run bare, it prints its help."""
    group = typer.Typer(help=help, no_args_is_help=True)
    app.add_typer(group, name=name)
    return group


def settings(ctx: typer.Context) -> Settings:
    """The global options of this invocation."""
    obj = ctx.find_object(Settings)
    return obj if obj is not None else Settings(store=tidelog.DEFAULT_STORE_URL, json=False)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's async body."""
    return asyncio.run(coro)


def emit(value: Any) -> None:
    """Print one JSON line (any msgspec-encodable value)."""
    typer.echo(json_encoder.encode(value).decode())


def say(ctx: typer.Context, value: Any, text: str) -> None:
    """Answer with `value` as one JSON line under `--json`, else with `text`.

    Every command answers a script and a person alike: the choice between the
    two forms is made here, once, from the global option.
    """
    if settings(ctx).json:
        emit(value)
    else:
        typer.echo(text)


def emit_rows(ctx: typer.Context, rows: Iterable[Any], *, empty: str | None = None) -> bool:
    """Under `--json`, print each row as one JSON line and return True: the command is done.

    Without `--json` it prints nothing and returns False, leaving the caller to
    draw its table (or sentence) for a person; given `empty`, a listing with no
    rows (a list) prints that sentence instead and returns True, so a person is
    never left with blank output.
    """
    if not settings(ctx).json:
        if empty is not None and not rows:
            typer.echo(empty)
            return True
        return False
    for row in rows:
        emit(row)
    return True


async def partition_lags(store: Any, group: str, category: str) -> dict[int, tuple[int, int]]:
    """(checkpoint, lag) per partition of a group on a category, as Kafka counts lag:
    the events of that category and partition after the group's checkpoint.

    What `groups` shows per partition and `status` sums per group.
    """
    points = await store.checkpoints(group, category)
    out = {}
    for p in range(store.partition_count):
        cp = points.get(p, 0)
        out[p] = (cp, await store.count_events(cp + 1, [category], [p]))
    return out


def parse_json(text: str, what: str) -> Any:
    """Decode JSON given on the command line; malformed input raises `InvalidInput`."""
    try:
        # surrogateescape: undecodable bytes in argv become a JSON error, not a crash.
        return _json_decoder.decode(text.encode("utf-8", "surrogateescape"))
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None


def parse_expected_version(text: str) -> ExpectedVersion:
    """`any`, `no_stream`, `stream_exists` (or `no-stream`, `stream-exists`) or an int >= 0.

    Read by the one parser of `tidelog.model`, and checked against the range at
    once: the command line reports a bad version before anything else.
    """
    return validate_expected_version(model.parse_expected_version(text, dashes=True))


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


def import_user_module(module_path: str) -> ModuleType:
    """Import the user's module `module_path` (the current directory is importable).

    A module that cannot be found, or that raises while it is imported, is the
    user's input error (`InvalidInput`), reported in one line like every other:
    the module's name and the exception's type and first line. A traceback
    through importlib's frames tells a user less than that line.
    """
    if "." not in sys.path and "" not in sys.path:
        sys.path.insert(0, "")
    try:
        return importlib.import_module(module_path)
    except Exception as exc:
        raise InvalidInput(f"cannot import {module_path!r}: {one_line(exc)}") from None


def progress_bar(
    label: str, count: ProgressColumn, note: str, console: Console, *, disable: bool
) -> Progress:
    """A long command's progress on stderr, alike in every command: a label, the bar,
    a count, a note, the time taken. (rich is imported here, when a bar is drawn, not
    with every command.)"""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(label),
        BarColumn(),
        count,
        TextColumn(note),
        TimeElapsedColumn(),
        console=console,
        disable=disable,
    )


def one_line(exc: BaseException) -> str:
    """An exception as `Type: first line of its message`, for a one-line error."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


NAMES: Final = "<name>[,<name>…]"
"""The metavar of a repeatable name option (`--category`, `--type`), read by `comma_list`."""


def comma_list(values: list[str] | None) -> list[str] | None:
    """A repeatable option's values, each also split at commas: `-c order,invoice` is
    `-c order -c invoice` (no category or event type has a comma; it matched nothing)."""
    if not values:
        return values
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


CategoriesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--category",
        "-c",
        help="Only these categories (repeat it, or separate with commas).",
        metavar=NAMES,
        callback=comma_list,
    ),
]
"""`--category/-c`, repeatable, for the commands that read the log: declared once so
`log`, `tail` and `export` filter by the same flag with the same help."""
LimitOption = Annotated[int | None, typer.Option("--limit", "-n", help="At most N events.")]
"""`--limit/-n` of the commands that print events (`read`, `log`)."""


def not_negative(**options: int | None) -> None:
    """Refuse a negative `--from` or `--limit` in the command line's words (the store
    said `invalid start -3: an int >= 0`, naming no option)."""
    for name, value in options.items():
        if value is not None and value < 0:
            raise InvalidInput(f"invalid --{name} {value}: it must be 0 or more")
