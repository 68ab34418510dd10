"""`tidelog schema list|show|register|check`: the registry from the command line.

`register` and `check` take a Python module path (`myapp.events`) and work on
the `@tidelog.event` classes defined in it. `check` is meant for CI: it exits
with code 1 when any class would be refused by the registry (an incompatible
change, or a registered version whose schema was edited in place).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import typer

from tidelog._cli_kit import (
    command_group,
    emit,
    emit_rows,
    import_user_module,
    open_store,
    run,
    say,
    settings,
)

__all__ = ["register"]


def _event_classes(module_path: str) -> list[type[msgspec.Struct]]:
    from tidelog.errors import InvalidInput

    module = import_user_module(module_path)
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, msgspec.Struct)
        and getattr(obj, "__tidelog_event__", None) is not None
        and obj.__module__ == module.__name__
    ]
    if not found:
        raise InvalidInput(f"no @tidelog.event classes in {module_path!r}")
    return sorted(found, key=lambda c: c.__tidelog_event__)  # type: ignore[attr-defined]


def register(app: typer.Typer) -> None:  # noqa: PLR0915 (the commands are nested functions; each is short)
    """Add the `schema` command group to the tidelog CLI."""
    schema_app = command_group(
        app, "schema", "The schema registry: list, show, register and check event schemas."
    )

    @schema_app.command("list")
    def list_(ctx: typer.Context) -> None:
        """Every subject with its versions and compatibility mode."""

        async def body() -> list[dict[str, Any]]:
            from tidelog.schemas import SchemaRegistry

            async with open_store(ctx, reads_only=True) as store:
                reg = SchemaRegistry(store)
                rows = []
                for subject in await reg.subjects():
                    rows.append(
                        {
                            "subject": subject,
                            "versions": await reg.versions(subject),
                            "compatibility": (await reg.compatibility(subject)).value,
                        }
                    )
                return rows

        rows = run(body())
        if emit_rows(ctx, rows):
            return
        if not rows:
            typer.echo("no schemas registered")
        for row in rows:
            versions = ",".join(str(v) for v in row["versions"])
            typer.echo(f"{row['subject']}  versions {versions}  {row['compatibility']}")

    @schema_app.command()
    def show(
        ctx: typer.Context,
        subject: Annotated[str, typer.Argument(help="Subject (event type name).")],
        version: Annotated[
            int | None, typer.Option("--version", "-v", help="Version (default: latest).")
        ] = None,
    ) -> None:
        """Print a subject's JSON Schema (the latest version unless --version)."""

        async def body() -> Any:
            from tidelog.schemas import SchemaRegistry

            async with open_store(ctx, reads_only=True) as store:
                return await SchemaRegistry(store).get(subject, version)

        sv = run(body())
        emit(
            {"subject": sv.subject, "version": sv.version, "id": sv.id, "schema": sv.schema}
            if settings(ctx).json
            else sv.schema
        )

    @schema_app.command("register")
    def register_(
        ctx: typer.Context,
        module: Annotated[str, typer.Argument(help="Python module with @tidelog.event classes.")],
    ) -> None:
        """Register the schema of every event class of MODULE (refused if incompatible)."""

        classes = _event_classes(module)

        async def body() -> list[Any]:
            from tidelog.schemas import SchemaRegistry, schema_of

            out = []
            async with open_store(ctx) as store:
                reg = SchemaRegistry(store)
                for cls in classes:
                    subject, version = cls.__tidelog_event__  # type: ignore[attr-defined]
                    out.append(await reg.register(subject, schema_of(cls), version=version))
            return out

        for sv in run(body()):
            say(
                ctx,
                {"subject": sv.subject, "version": sv.version, "id": sv.id},
                f"{sv.subject} v{sv.version} (id {sv.id})",
            )

    @schema_app.command()
    def check(
        ctx: typer.Context,
        module: Annotated[str, typer.Argument(help="Python module with @tidelog.event classes.")],
    ) -> None:
        """Check the event classes of MODULE against the registry; exit 1 if any is refused."""

        classes = _event_classes(module)

        async def body() -> list[tuple[str, int, list[str]]]:
            from tidelog.errors import UnknownEventType
            from tidelog.schemas import SchemaRegistry, schema_of

            results = []
            async with open_store(ctx) as store:
                reg = SchemaRegistry(store)
                for cls in classes:
                    subject, version = cls.__tidelog_event__  # type: ignore[attr-defined]
                    schema = schema_of(cls)
                    try:
                        existing = await reg.get(subject, version)
                    except UnknownEventType:
                        existing = None
                    if existing is not None:
                        same = msgspec.json.encode(existing.schema, order="sorted") == (
                            msgspec.json.encode(schema, order="sorted")
                        )
                        problems = (
                            [] if same else [f"version {version} is registered with another schema"]
                        )
                    else:
                        problems = await reg.check(subject, schema)
                    results.append((subject, version, problems))
            return results

        failed = False
        for subject, version, problems in run(body()):
            failed = failed or bool(problems)
            if settings(ctx).json:
                emit(
                    {
                        "subject": subject,
                        "version": version,
                        "ok": not problems,
                        "problems": problems,
                    }
                )
            elif problems:
                typer.echo(f"INCOMPATIBLE {subject} v{version}:", err=True)
                for p in problems:
                    typer.echo(f"  {p}", err=True)
            else:
                typer.echo(f"ok {subject} v{version}")
        if failed:
            raise typer.Exit(1)
