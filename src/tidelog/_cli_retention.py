"""Retention commands: `tidelog retention set|show|clear` and `tidelog scavenge`.

Loaded by `tidelog.cli` through `register(app)`. The same names as the store's
methods (`set_retention`, `retention`, `scavenge`) and the HTTP routes: a rule
is set on `--stream`, `--category`, or (neither) the whole store.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final

import msgspec
import typer

import tidelog
from tidelog._cli_kit import command_group, emit_rows, run, say, settings
from tidelog.errors import InvalidInput
from tidelog.retention import RetentionPolicy, RetentionRule

__all__ = ["parse_duration", "register"]

_UNITS: Final = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `15m`, `12h`, `7d` or `2w`."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise InvalidInput(f"invalid duration {text!r}: use seconds or 15m, 12h, 7d, 2w")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _scope(rule: RetentionRule) -> str:
    return "store" if rule.kind == "store" else f"{rule.kind} {rule.name}"


def _describe(policy: RetentionPolicy | None) -> str:
    if policy is None:
        return "cleared"
    fields: dict[str, Any] = {}
    for field in msgspec.structs.fields(RetentionPolicy):
        value = getattr(policy, field.name)
        if value != field.default:
            fields[field.name] = value
    return ", ".join(
        k if v is True else f"{k}={_duration(v) if k.endswith('max_age') else v}"
        for k, v in fields.items()
    )


def _duration(seconds: float) -> str:
    """`7d` for 604800.0, as `--max-age` takes it (it printed `max_age=604800.0`)."""
    for unit in ("d", "h", "m"):
        count = seconds / _UNITS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{seconds:g}s"


async def _set(
    ctx: typer.Context, policy: RetentionPolicy | None, stream: str | None, category: str | None
) -> RetentionRule:
    """`set` and `clear`: one rule written to the store of the global `--store`."""
    async with tidelog.connect(settings(ctx).store) as store:
        return await store.set_retention(policy, stream=stream, category=category)


StreamOpt = Annotated[str | None, typer.Option("--stream", "-s", help="The rule of one stream.")]
CategoryOpt = Annotated[
    str | None, typer.Option("--category", "-c", help="The rule of one category.")
]


def register(app: typer.Typer) -> None:
    group = command_group(
        app, "retention", "Age out, cap or truncate streams (rules per stream, category, store)."
    )

    @group.command("set")
    def set_rule(
        ctx: typer.Context,
        stream: StreamOpt = None,
        category: CategoryOpt = None,
        max_age: Annotated[
            str | None, typer.Option("--max-age", help="Keep events this long (90, 15m, 7d).")
        ] = None,
        max_count: Annotated[
            int | None, typer.Option("--max-count", help="Keep the newest N events per stream.")
        ] = None,
        truncate_before: Annotated[
            int | None,
            typer.Option("--truncate-before", help="Drop versions below this (a stream only)."),
        ] = None,
        keep_latest: Annotated[
            bool, typer.Option("--keep-latest", help="Keep only each stream's last event.")
        ] = False,
        even_if_unconsumed: Annotated[
            bool,
            typer.Option(
                "--even-if-unconsumed", help="Delete even what a consumer group has not read."
            ),
        ] = False,
        hard_max_age: Annotated[
            str | None,
            typer.Option("--hard-max-age", help="Past this age, delete even if unconsumed."),
        ] = None,
        hard_max_bytes: Annotated[
            int | None,
            typer.Option(
                "--hard-max-bytes",
                help="Past this many bytes (data + metadata) in the scope, delete the oldest"
                " events even if unconsumed.",
            ),
        ] = None,
        scavenge_deleted: Annotated[
            bool,
            typer.Option("--scavenge-deleted", help="Delete the events of tombstoned streams."),
        ] = False,
        forget_tombstones: Annotated[
            bool,
            typer.Option(
                "--forget-tombstones",
                help="With --scavenge-deleted: then forget the stream (its name is free again).",
            ),
        ] = False,
    ) -> None:
        """Set the retention rule of a stream, a category or (neither) the store."""
        policy = RetentionPolicy(
            max_age=None if max_age is None else parse_duration(max_age),
            max_count=max_count,
            truncate_before=truncate_before,
            keep_latest=keep_latest,
            even_if_unconsumed=even_if_unconsumed,
            hard_max_age=None if hard_max_age is None else parse_duration(hard_max_age),
            hard_max_bytes=hard_max_bytes,
            scavenge_deleted=scavenge_deleted,
            keep_tombstone=not forget_tombstones,
        )

        rule = run(_set(ctx, policy, stream, category))
        say(ctx, rule, f"{_scope(rule)}: {_describe(rule.policy)}")

    @group.command("clear")
    def clear_rule(
        ctx: typer.Context, stream: StreamOpt = None, category: CategoryOpt = None
    ) -> None:
        """Clear the rule of a stream, a category or (neither) the store."""

        rule = run(_set(ctx, None, stream, category))
        say(ctx, rule, f"{_scope(rule)}: cleared")

    @group.command("show")
    def show(ctx: typer.Context, stream: StreamOpt = None) -> None:
        """Show every rule, or (with --stream) the one that applies to a stream."""

        async def body() -> tuple[list[RetentionRule], int]:
            async with tidelog.connect(settings(ctx).store) as store:
                return await store.retention(stream), await store.first_position()

        rules, first = run(body())
        if emit_rows(ctx, rules):
            return
        for rule in rules:
            typer.echo(f"{_scope(rule)}: {_describe(rule.policy)}")
        if not rules:
            typer.echo("no retention rule" + (f" applies to {stream}" if stream else ""))
        typer.echo(f"low-water position: {first} (the oldest event still stored)")

    @app.command("scavenge")
    def scavenge(ctx: typer.Context) -> None:
        """Delete now, for good, what the retention rules hide (one scavenger per store)."""

        async def body() -> tuple[Any, int]:
            async with tidelog.connect(settings(ctx).store) as store:
                return await store.scavenge(), await store.first_position()

        report, first = run(body())
        if not report.ran:
            say(ctx, report, "another process holds the scavenger lease: it scavenges")
            return
        say(
            ctx,
            {**{f: getattr(report, f) for f in report.__struct_fields__}, "first_position": first},
            f"deleted {report.deleted:,} events of {report.streams:,} streams"
            + (f"; {report.lost:,} unconsumed (see $system)" if report.lost else "")
            + f"; low-water position {first}",
        )
