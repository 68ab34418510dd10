"""`tidelog scheduled list|cancel`: the scheduled events a store is holding.

`list` shows the pending events (not yet due, or due and being delivered),
earliest first; `cancel ID` removes one before it is delivered and exits 1
when it was not pending any more (unknown, delivered, or being delivered right
now: then it may still appear in its stream). See docs/scheduling.md.

Like every command module, a leaf: `register(app)` adds the commands.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import typer
from rich.console import Console
from rich.table import Table

from tidelog._cli_kit import command_group, emit_rows, open_store, run, say
from tidelog.errors import InvalidInput
from tidelog.model import ScheduledEvent

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    group = command_group(app, "scheduled", "Scheduled events waiting for their due time.")
    group.command("list")(list_scheduled)
    group.command("cancel")(cancel)


def _row(event: ScheduledEvent) -> dict[str, Any]:
    expected = event.expected_version
    return {
        "id": str(event.id),
        "stream": event.stream,
        "type": event.type,
        "due_at": event.due_at.isoformat(),
        "expected_version": expected if isinstance(expected, int) else expected.value,
        "batch": str(event.batch),
    }


def list_scheduled(
    ctx: typer.Context,
    stream: Annotated[str | None, typer.Option("--stream", "-s", help="Only this stream.")] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=0, max=10_000, help="At most this many.")
    ] = 100,
) -> None:
    """List pending scheduled events, earliest due first, with the total pending."""

    async def body() -> tuple[list[ScheduledEvent], int]:
        async with open_store(ctx, reads_only=True) as store:
            return await store.scheduled(stream, limit), await store.count_scheduled()

    found, total = run(body())
    if emit_rows(ctx, [_row(e) for e in found]):
        return
    console = Console()
    table = Table("due at (UTC)", "stream", "type", "id", box=None)
    for event in found:
        table.add_row(event.due_at.isoformat(), event.stream, event.type, str(event.id))
    console.print(table)
    console.print(f"{len(found)} shown, {total} pending in the store", style="dim")


def cancel(
    ctx: typer.Context,
    event_id: Annotated[str, typer.Argument(help="The scheduled event's id (a UUID).")],
) -> None:
    """Cancel a scheduled event before it is delivered (exit 1 if it is not pending)."""
    try:
        target = UUID(event_id)
    except ValueError:
        raise InvalidInput(f"{event_id!r} is not a UUID") from None

    async def body() -> bool:
        async with open_store(ctx, reads_only=True) as store:
            cancelled: bool = await store.cancel_scheduled(target)
            return cancelled

    cancelled = run(body())
    say(
        ctx,
        {"id": str(target), "cancelled": cancelled},
        f"cancelled {target}" if cancelled else f"{target} is not pending (nothing cancelled)",
    )
    if not cancelled:
        raise typer.Exit(1)
