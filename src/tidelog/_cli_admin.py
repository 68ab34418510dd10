"""Store administration commands: `tidelog copy SRC DST` and `tidelog migrate-schema`.

Loaded by `tidelog.cli` through `register(app)`. Engine modules are imported
inside the commands, so `tidelog --help` works without the optional extras.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import TaskProgressColumn

from tidelog._cli_kit import connect_options, emit, open_store, progress_bar, run, say, settings
from tidelog._connect import resolved_url
from tidelog._redact import redact_url
from tidelog.errors import InvalidInput

__all__ = ["migrate_schema", "register"]


async def migrate_schema(url: str, **options: Any) -> dict[str, Any]:
    """Create or upgrade the store's schema explicitly; returns what happened.

    PostgreSQL runs its versioned migrations; SQLite runs its own
    (`tidelog.engines.sqlite.migrate`); other engines have no schema to
    migrate and are opened once (with `options`: a remote store's token) to
    check they are reachable.
    """
    import tidelog

    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("postgresql", "postgres"):
        from tidelog.engines import postgres

        version, applied = await postgres.migrate_url(url)
        return {"store": redact_url(url), "schema_version": version, "applied": applied}
    if scheme == "sqlite":
        from tidelog.engines import sqlite
        from tidelog.engines.sqlite.engine import _path_from_url

        path = _path_from_url(url)
        before = sqlite.schema_version(path) if _exists(path) else 0
        after = int(sqlite.migrate(path))
        return {
            "store": resolved_url(url),
            "schema_version": after,
            "applied": list(range(before + 1, after + 1)),
        }
    async with tidelog.connect(url, **options):
        return {"store": redact_url(url), "schema_version": None, "applied": []}


def _same_store(source: str, destination: str) -> bool:
    """Whether two store URLs name one store (`memory://` is a new store each time).

    SQLite paths are compared as files (relative, absolute, through a link);
    other URLs by their text, which is what names a database or a server.
    """
    if not (isinstance(source, str) and isinstance(destination, str)):
        return False
    schemes = {urllib.parse.urlsplit(u).scheme.lower() for u in (source, destination)}
    if schemes == {"sqlite"}:
        from tidelog.engines.sqlite.engine import _path_from_url

        a, b = _path_from_url(source), _path_from_url(destination)
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
        return os.path.abspath(a) == os.path.abspath(b)
    if "memory" in schemes:
        return False
    return source.rstrip("/") == destination.rstrip("/")


def _exists(path: str) -> bool:
    import pathlib

    return pathlib.Path(path).exists()


def register(app: typer.Typer) -> None:
    @app.command("copy")
    def copy(
        ctx: typer.Context,
        source: Annotated[str, typer.Argument(help="Store URL to copy from.")],
        destination: Annotated[
            str, typer.Argument(help="Store URL to copy into: empty, or an interrupted copy.")
        ],
        batch: Annotated[
            int, typer.Option("--batch", min=1, help="Events per atomic append.")
        ] = 500,
    ) -> None:
        """Copy a whole store (events, tombstones, group checkpoints) and verify the copy.

        Run it again after an interruption: it resumes where it stopped.
        """
        from tidelog.copy import CopyReport, copy_store

        if _same_store(source, destination):
            raise InvalidInput(
                f"the destination is the source ({resolved_url(source)}): copy into another store"
            )

        as_json = settings(ctx).json
        err = Console(stderr=True, highlight=False)

        async def body() -> CopyReport:
            async with (
                open_store(ctx, url=source, reads_only=True) as src,
                open_store(ctx, url=destination) as dst,
            ):
                with progress_bar(
                    "copy",
                    TaskProgressColumn(),
                    "position {task.completed:,.0f}/{task.total:,.0f}",
                    err,
                    disable=as_json,
                ) as bar:
                    task = bar.add_task("copy", total=1)

                    def progress(done: int, total: int) -> None:
                        bar.update(task, completed=done, total=max(total, 1))

                    return await copy_store(src, dst, batch_events=batch, progress=progress)

        report = run(body())
        summary = {
            "source_last_position": report.source_last_position,
            "resumed_after": report.resumed_after,
            "events_copied": report.events_copied,
            "events_total": report.events_total,
            "tombstones": report.tombstones,
            "checkpoints": report.checkpoints,
            "verified": report.verified,
            "mismatches": report.mismatches,
        }
        if as_json:
            emit(summary)
        else:
            out = Console(highlight=False)
            out.print(
                f"copied {report.events_copied:,} events ({report.events_total:,} in the "
                f"destination), {report.tombstones} tombstones, {report.checkpoints} checkpoints"
                + (
                    f"; resumed after source position {report.resumed_after:,}"
                    if report.resumed_after
                    else ""
                )
            )
            out.print(
                "verified: the copy matches the source" if report.verified else "NOT verified:"
            )
            for line in report.mismatches:
                out.print(f"  {line}")
        if not report.verified:
            raise typer.Exit(1)

    @app.command("migrate-schema")
    def migrate_schema_command(
        ctx: typer.Context,
        store: Annotated[
            str | None,
            typer.Option("--store", help="Store URL (default: the global --store)."),
        ] = None,
    ) -> None:
        """Create or upgrade the store's schema (opening a store also does this)."""

        url = store or settings(ctx).store
        result = run(migrate_schema(url, **connect_options(ctx, url)))
        applied = ", ".join(str(v) for v in result["applied"]) or "none"
        version = result["schema_version"]
        say(
            ctx,
            result,
            f"{result['store']}: schema version {version if version is not None else 'n/a'}"
            f" (applied now: {applied})",
        )
