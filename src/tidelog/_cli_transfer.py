"""`tidelog export` and `tidelog import`: a store's events as JSON lines, and back.

Two formats, one event per line:

- `jsonl` (the default): the event as the HTTP API sends it (`wire.WireEvent`):
  `id`, `stream`, `type`, `data` (the JSON value when the bytes are one, else
  null with the bytes in `data_base64`), `metadata` and `schema_version`, plus
  `version`, `position` and `recorded_at`, which say where the event was and
  which import ignores. Data that holds a raw line feed goes as `data_base64`
  too, so that a line is always one event;
- `cloudevents`: CloudEvents 1.0 in the JSON format (structured mode), mapped
  by `tidelog._cloudevent_map`, the mapping the server's CloudEvents routes
  use. Import derives each event's id from `--principal`, `source` and `id`,
  as the server does for its caller, and writes to the `tidelogstream`
  extension's stream when there is one (else the `subject`).

Export streams the log (constant memory) up to its head when the export
starts. Import appends in batches (one atomic `append_many` each, batched in
log order the way `tidelog copy` does) with the events' own ids, so running
it again appends nothing new: every id is already stored. A batch partly
stored already (an import re-run after the file grew, or with another
`--batch`) is written without the events its streams already end with. A
line that is not a valid event, or a batch the store refuses (a conflicting
id, a deleted stream), stops the import with the line and the reason; that
batch is not written, the ones before it are.

Like every command module, a leaf: `register(app)` adds the commands.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Annotated, Any, Final
from uuid import UUID

import msgspec
import typer
from rich.console import Console
from rich.progress import DownloadColumn

from tidelog import wire
from tidelog._cli_kit import CategoriesOption, open_store, progress_bar, run, say
from tidelog._cloudevent_map import (
    LOCATION_EXTENSIONS,
    STRUCTURED_DECODER,
    from_structured,
    to_cloudevent,
)
from tidelog.copy import LogBatch, OrderedAppender
from tidelog.engines.contract import Engine
from tidelog.errors import DuplicateEventId, InvalidInput, StreamDeleted, TidelogError
from tidelog.model import (
    AppendRequest,
    AppendResult,
    NewEvent,
    RecordedEvent,
    validate_event,
    validate_stream_name,
)

__all__ = ["ImportRefused", "register"]


class Format(enum.StrEnum):
    JSONL = "jsonl"
    CLOUDEVENTS = "cloudevents"


FormatOption = Annotated[
    Format, typer.Option("--format", "-f", help="jsonl (tidelog's own) or cloudevents.")
]
"""`--format/-f`, shared by `export` and `import` so the two always speak the same formats."""


class ImportRefused(TidelogError):
    """A line of an import that is not a valid event, or whose batch the store refused.

    `line` is its 1-based number, `cause` the error; `appended` events (of
    earlier batches) were written before it.
    """

    def __init__(self, line: int, cause: Exception, appended: int) -> None:
        self.line = line
        self.cause = cause
        self.appended = appended
        kind = type(cause).__name__
        super().__init__(
            f"line {line}: {kind}: {cause}. Nothing of its batch was written; "
            f"{appended} events of the lines before it were"
        )


def register(app: typer.Typer) -> None:
    """Add `export` and `import` to the tidelog CLI."""
    app.command("export")(export)
    app.command("import")(import_events)


# --------------------------------------------------------------------------- export

_ENCODER: Final = msgspec.json.Encoder()
_NULL: Final = msgspec.Raw(b"null")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def export_line(event: RecordedEvent, format: Format) -> bytes:
    """One event as one line of the format (without the line feed)."""
    if format is Format.CLOUDEVENTS:
        ce = to_cloudevent(event)
        data = ce.get("data")
        if isinstance(data, msgspec.Raw) and b"\n" in bytes(data):
            del ce["data"]  # a raw line feed in the JSON would split the line
            ce["data_base64"] = _b64(event.data)
        return _ENCODER.encode(ce)
    line = wire.WireEvent.from_recorded(event)
    if line.data_base64 is None and b"\n" in event.data:
        line = msgspec.structs.replace(line, data=_NULL, data_base64=_b64(event.data))
    return _ENCODER.encode(line)


def export(
    ctx: typer.Context,
    category: CategoriesOption = None,
    from_position: Annotated[
        int, typer.Option("--from", min=0, help="First position (events at or after it).")
    ] = 0,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write to this file (default: standard output)."),
    ] = None,
    format: FormatOption = Format.JSONL,
) -> None:
    """Write the log's events as JSON lines, one event each, in commit order."""

    async def body() -> int:
        count = 0
        async with open_store(ctx, reads_only=True) as store, contextlib.AsyncExitStack() as stack:
            # the file is made once the store is open: a bad --store leaves no empty file
            out = sys.stdout.buffer if output is None else stack.enter_context(_open(output, "wb"))
            end = await store.last_position()  # what is written meanwhile is left for later
            events = store.read_all(from_position=from_position, categories=category)
            async with contextlib.aclosing(events):
                async for event in events:
                    if event.position > end:
                        break
                    out.write(export_line(event, format))
                    out.write(b"\n")
                    count += 1
            out.flush()
        return count

    count = run(body())
    if output is None:
        return
    say(
        ctx,
        {"events": count, "output": str(output)},
        f"exported {count} events to {output}",
    )


# --------------------------------------------------------------------------- import


class _Line(wire.WireNewEvent, kw_only=True, forbid_unknown_fields=True):
    """A line of the `jsonl` format: the HTTP wire's new event, with its stream and an id.

    `version`, `position` and `recorded_at` (what export writes besides) are
    read and ignored.
    """

    stream: str
    id: UUID  # required here: without it a re-run could not be idempotent
    version: Any = None
    position: Any = None
    recorded_at: Any = None


_LINE: Final = msgspec.json.Decoder(_Line)
_STRING: Final = msgspec.json.Decoder(str)
Parser = Callable[[bytes], tuple[str, NewEvent]]


def _parse_jsonl(raw: bytes) -> tuple[str, NewEvent]:
    line = _LINE.decode(raw)
    return validate_stream_name(line.stream), validate_event(line.to_new_event())


def _cloudevents_parser(principal: str) -> Parser:
    def parse(raw: bytes) -> tuple[str, NewEvent]:
        fields = STRUCTURED_DECODER.decode(raw)
        located = fields.pop(LOCATION_EXTENSIONS[0], None)
        for name in LOCATION_EXTENSIONS[1:]:
            fields.pop(name, None)
        stream = None if located is None else _STRING.decode(located)
        parsed = from_structured(principal, fields, stream, sys.maxsize)
        return parsed.stream, parsed.event

    return parse


Entry = tuple[int, NewEvent]
"""A line number and the event it holds."""


class _Importer:
    """Batches parsed lines and writes them, counting what was new."""

    def __init__(self, store: Engine, batch_events: int) -> None:
        self.store = store
        self.batch: LogBatch[Entry] = LogBatch(batch_events)
        self.appender = OrderedAppender(store)
        self.ids: dict[UUID, str] = {}
        """The ids of the pending batch, and their streams."""
        self.events = 0
        self.appended = 0

    async def add(self, number: int, stream: str, event: NewEvent) -> None:
        if self.batch.needs_flush(stream):
            await self.flush()
        seen = self.ids.get(event.id)
        if seen == stream:
            self.events += 1  # the same event twice in one batch (files joined): once is enough
            return
        if seen is not None:
            raise ImportRefused(number, DuplicateEventId(stream, [event.id]), self.appended)
        self.ids[event.id] = stream
        self.batch.add(stream, (number, event))
        self.events += 1

    async def flush(self) -> None:
        pending = self.batch.take()
        self.ids.clear()
        if not pending:
            return
        head = await self.store.last_position()
        try:
            written = await self._write(pending)
        except DuplicateEventId:
            # Partly stored already: an import re-run after the file grew, or with
            # another --batch. Leave out what the streams already end with; retry.
            pending = await self._without_stored(pending)
            try:
                written = await self._write(pending)
            except DuplicateEventId as exc:  # stored elsewhere: a real conflict
                raise ImportRefused(_line_of(pending, exc), exc, self.appended) from None
        self.appended += sum(
            len(pending[stream]) for stream, result in written.items() if result.position > head
        )

    async def _write(self, pending: dict[str, list[Entry]]) -> dict[str, AppendResult]:
        requests = {
            stream: AppendRequest([event for _, event in entries])
            for stream, entries in pending.items()
            if entries
        }
        if not requests:
            return {}
        try:
            return await self.appender.write(requests)
        except DuplicateEventId:
            raise
        except TidelogError as exc:
            raise ImportRefused(_line_of(pending, exc), exc, self.appended) from None

    async def _without_stored(self, pending: dict[str, list[Entry]]) -> dict[str, list[Entry]]:
        kept: dict[str, list[Entry]] = {}
        for stream, entries in pending.items():
            stored: set[UUID] = set()
            with contextlib.suppress(StreamDeleted):  # the append reports it, with its line
                async for e in self.store.read_stream(
                    stream, from_version=-1, backwards=True, limit=len(entries)
                ):
                    stored.add(e.id)
            kept[stream] = [(n, e) for n, e in entries if e.id not in stored]
        return kept


def _line_of(pending: dict[str, list[Entry]], exc: TidelogError) -> int:
    """The line an error of a batch's write is about: its event, else its stream's first."""
    ids = set(getattr(exc, "event_ids", ()))
    for entries in pending.values():
        for number, event in entries:
            if event.id in ids:
                return number
    stream = getattr(exc, "stream", None)
    if isinstance(stream, str) and pending.get(stream):
        return pending[stream][0][0]
    return min(entries[0][0] for entries in pending.values() if entries)


def _open(path: Path, mode: str) -> IO[bytes]:
    """Open a file named on the command line; a path that cannot be opened is bad input."""
    try:
        opened: IO[bytes] = path.open(mode)
    except OSError as exc:
        raise InvalidInput(f"cannot open {str(path)!r}: {exc.strerror or exc}") from None
    return opened


def _lines(source: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for number, raw in enumerate(source, 1):
        if raw.strip():  # blank lines (a trailing one, say) are no events
            yield number, raw


def import_events(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="A file of JSON lines, or - for standard input.")],
    format: FormatOption = Format.JSONL,
    batch: Annotated[
        int, typer.Option("--batch", min=1, max=10_000, help="Events per atomic append.")
    ] = 500,
    principal: Annotated[
        str,
        typer.Option(
            "--principal",
            help="cloudevents: the principal event ids are derived from, as the server "
            "derives them for its caller.",
        ),
    ] = "admin",
) -> None:
    """Append the events of a JSON lines file (from `tidelog export`); a re-run appends nothing."""
    parse: Parser = _parse_jsonl if format is Format.JSONL else _cloudevents_parser(principal)
    if file == "-":
        source: IO[bytes] = sys.stdin.buffer
        total = None
    else:
        source = _open(Path(file), "rb")
        info = os.fstat(source.fileno())
        total = info.st_size if stat.S_ISREG(info.st_mode) else None  # a pipe has no size
    console = Console(stderr=True)
    progress = progress_bar(
        "importing",
        DownloadColumn(),
        "{task.fields[events]} events",
        console,
        disable=not console.is_terminal,
    )

    async def body() -> _Importer:
        async with open_store(ctx) as store:
            importer = _Importer(store, batch)
            task = progress.add_task("import", total=total, events=0)
            done = 0
            for number, raw in _lines(source):
                done += len(raw)
                try:
                    stream, event = parse(raw)
                except (TidelogError, msgspec.DecodeError) as exc:
                    raise ImportRefused(number, exc, importer.appended) from None
                except RecursionError:  # msgspec's own depth limit
                    too_deep = InvalidInput("JSON nested too deeply")
                    raise ImportRefused(number, too_deep, importer.appended) from None
                await importer.add(number, stream, event)
                if number % 256 == 0:
                    progress.update(task, completed=done, events=importer.events)
            await importer.flush()
            progress.update(task, completed=done, events=importer.events)
            return importer

    with contextlib.ExitStack() as stack:
        if source is not sys.stdin.buffer:
            stack.enter_context(source)
        stack.enter_context(progress)
        importer = run(body())
    kept = importer.events - importer.appended
    say(
        ctx,
        {"events": importer.events, "appended": importer.appended, "already_stored": kept},
        f"imported {importer.events} events: {importer.appended} appended, {kept} already stored",
    )
