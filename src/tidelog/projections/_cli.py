"""`tidelog projections list|status|rebuild NAME`.

Projections are found in the Python module given by `--module` (or the
`TIDELOG_PROJECTIONS` environment variable): every `Projection` subclass
defined there that can be built with no arguments. Importing the module also
registers its event classes (`@tidelog.event`) in the default registry.
Non-SQLite projections keep their checkpoints in the store (`StreamCheckpoints`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tidelog._cli_kit import command_group, import_user_module, open_store, run, say, settings

__all__ = ["register"]

_MODULE_HELP = "Python module defining the projections (e.g. myapp.projections)."
Module = Annotated[
    str | None, typer.Option("--module", envvar="TIDELOG_PROJECTIONS", help=_MODULE_HELP)
]


def _projections(module_path: str | None) -> list[Any]:
    from tidelog.errors import InvalidInput
    from tidelog.projections import PostgresProjection, Projection, SQLiteProjection

    if not module_path:
        raise InvalidInput("give --module (or TIDELOG_PROJECTIONS): where the projections are")
    module = import_user_module(module_path)
    found = [
        obj()
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Projection)
        and obj not in (Projection, SQLiteProjection, PostgresProjection)
        and obj.__module__ == module.__name__
    ]
    if not found:
        raise InvalidInput(f"no Projection classes in {module_path!r}")
    return sorted(found, key=lambda p: p.name)


def register(app: typer.Typer) -> None:
    """Add the `projections` command group to the tidelog CLI."""
    proj_app = command_group(
        app, "projections", "Projections (read models): list them, show their lag, rebuild one."
    )

    @proj_app.command("list")
    def list_(ctx: typer.Context, module: Module = None) -> None:
        """The projections of MODULE and the event types each handles."""
        from tidelog.codec import DEFAULT_REGISTRY
        from tidelog.projections import PostgresProjection, SQLiteProjection

        for p in _projections(module):
            types = sorted(DEFAULT_REGISTRY.type_of(cls)[0] for cls in p._handlers)
            if isinstance(p, SQLiteProjection):
                kind = "sqlite-transaction"
            elif isinstance(p, PostgresProjection):
                kind = "postgres-transaction"
            else:
                kind = "checkpoint-store"
            say(
                ctx,
                {"name": p.name, "kind": kind, "handles": types},
                f"{p.name}  [{kind}]  handles {', '.join(types) or '-'}",
            )

    @proj_app.command()
    def status(ctx: typer.Context, module: Module = None) -> None:
        """Checkpoint, log head and lag (in positions) of every projection."""

        projections = _projections(module)

        async def body() -> list[Any]:
            from tidelog.projections import ProjectionRunner

            async with (
                open_store(ctx, reads_only=True) as store,
                ProjectionRunner(store, projections) as runner,
            ):
                return await runner.status()

        for s in run(body()):
            say(ctx, s, f"{s.name}  position {s.position}  head {s.head}  lag {s.lag}")

    @proj_app.command()
    def rebuild(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="Projection name.")],
        module: Module = None,
    ) -> None:
        """Rebuild NAME from position 0 into a fresh read model, then swap it in."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        projections = _projections(module)

        async def body() -> int:
            from tidelog.projections import ProjectionRunner

            with Progress(
                TextColumn(f"rebuilding {name}"),
                BarColumn(),
                MofNCompleteColumn(),
                disable=settings(ctx).json,
                transient=True,
            ) as bar:
                task = bar.add_task("rebuild", total=None)

                def progress(position: int, head: int) -> None:
                    bar.update(task, completed=position, total=head)

                async with (
                    open_store(ctx) as store,
                    ProjectionRunner(store, projections) as runner,
                ):
                    return await runner.rebuild(name, progress=progress)

        position = run(body())
        say(ctx, {"name": name, "position": position}, f"rebuilt {name} up to position {position}")
