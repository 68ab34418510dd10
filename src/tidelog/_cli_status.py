"""`tidelog status`: is this store (or server) healthy? For scripts and container health checks.

It opens the store named by the global `--store` (a server through its URL and
token), and reports the engine, the log's head, and per consumer group its
members, its lag (events of its category after its checkpoints) and its open
dead-letter entries apart, as the dashboard shows them: `parked` (failed, waiting
for `tidelog dlq retry` or `drop`), `held` (waiting behind a parked event of
their stream) and `retrying` (a retry was asked, the partition's owner runs
it). The exit status is the answer: 0 healthy; 1 when the store
cannot be reached within `--timeout` (one `error:` line, like every command)
or when a threshold given by `--max-lag` / `--max-parked` is passed (the
report is printed, then the reasons on stderr).

Like every command module, a leaf: `register(app)` adds the command.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

import typer

from tidelog._cli_kit import open_store, partition_lags, run, settings
from tidelog._connect import resolved_url
from tidelog.errors import StoreUnavailable

__all__ = ["register"]


@dataclass
class GroupStatus:
    group: str
    category: str
    members: int
    lag: int
    parked: int
    """Failed events waiting for an operator (`--max-parked` judges these)."""
    held: int = 0
    """Events waiting behind a parked event of their stream: released with it."""
    retrying: int = 0
    """Parked events whose retry was asked and has not run yet."""


@dataclass
class Status:
    store: str
    engine: str
    head: int
    partitions: int
    groups: list[GroupStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems


async def collect(store: Any, url: str) -> Status:
    """What `status` reports about an open store, thresholds not yet applied."""
    from tidelog.consumers import ParkedStatus, list_parked
    from tidelog.engines._kit.retention import SCAVENGER_GROUP

    engine = store.name
    behind = getattr(store, "server_engine", "")
    if behind:
        engine = f"{engine} ({behind} behind the server)"
    status = Status(
        store=resolved_url(url),
        engine=engine,
        head=await store.last_position(),
        partitions=store.partition_count,
    )
    open_by_group: dict[str, Counter[ParkedStatus]] = {}
    for group, category in await store.list_groups():
        if group == SCAVENGER_GROUP:
            # the scavenger's lease, not a consumer: its "lag" would be the retention
            # rule changes it never checkpoints
            continue
        if group not in open_by_group:
            open_by_group[group] = Counter(p.status for p in await list_parked(store, group))
        counts = open_by_group[group]
        described = await store.describe_group(group, category)
        lags = await partition_lags(store, group, category)
        status.groups.append(
            GroupStatus(
                group=group,
                category=category,
                members=0 if described is None else len(described.members),
                lag=sum(lag for _, lag in lags.values()),
                parked=counts[ParkedStatus.PARKED],
                held=counts[ParkedStatus.HELD],
                retrying=counts[ParkedStatus.RETRYING],
            )
        )
    return status


def judge(status: Status, max_lag: int | None, max_parked: int | None) -> None:
    """Add a problem for each group past a threshold (None: that one is not checked)."""
    parked_seen: set[str] = set()
    for g in status.groups:
        if max_lag is not None and g.lag > max_lag:
            status.problems.append(
                f"group {g.group!r} on {g.category!r} lags {g.lag} events (--max-lag {max_lag})"
            )
        if max_parked is not None and g.parked > max_parked and g.group not in parked_seen:
            parked_seen.add(g.group)
            status.problems.append(
                f"group {g.group!r} has {g.parked} parked events (--max-parked {max_parked})"
            )


def register(app: typer.Typer) -> None:
    app.command("status")(status)


def status(
    ctx: typer.Context,
    max_lag: Annotated[
        int | None,
        typer.Option("--max-lag", min=0, help="Unhealthy when a group lags more events."),
    ] = None,
    max_parked: Annotated[
        int | None,
        typer.Option(
            "--max-parked",
            min=0,
            help="Unhealthy when a group has more parked events (held and retrying ones"
            " are shown apart and not counted).",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.1, help="Seconds to wait for the store's answers."),
    ] = 10.0,
) -> None:
    """Check a store or server: engine, head, lag and parked events per group.

    Exits 0 when healthy, 1 when unreachable or past a --max-lag/--max-parked
    threshold: for scripts and container health checks.
    """
    url = settings(ctx).store

    async def body() -> Status:
        try:
            async with asyncio.timeout(timeout):
                async with open_store(ctx, reads_only=True) as store:
                    return await collect(store, url)
        except TimeoutError:
            raise StoreUnavailable(
                f"{resolved_url(url)} gave no answer within {timeout:g} s"
            ) from None

    report = run(body())
    judge(report, max_lag, max_parked)
    _print(ctx, report)
    if not report.healthy:
        for problem in report.problems:
            typer.echo(f"unhealthy: {problem}", err=True)
        raise typer.Exit(1)


def _print(ctx: typer.Context, report: Status) -> None:
    if settings(ctx).json:
        from tidelog._cli_kit import emit

        emit({**asdict(report), "healthy": report.healthy})
        return
    from rich.console import Console
    from rich.table import Table

    out = Console(soft_wrap=True, highlight=False)
    out.print(f"store   {report.store}")
    out.print(f"engine  {report.engine}, {report.partitions} partitions")
    out.print(f"head    {report.head}")
    out.print(f"status  {'healthy' if report.healthy else 'UNHEALTHY'}")
    if not report.groups:
        out.print("groups  none")
        return
    table = Table("group", "category", "members", "lag", "parked", "held", "retrying", box=None)
    for g in report.groups:
        table.add_row(
            g.group,
            g.category,
            *(str(n) for n in (g.members, g.lag, g.parked, g.held, g.retrying)),
        )
    out.print(table)
