"""What a run reports: its counters (`Stats`) and its structured log lines (`emit`).

A leaf of the consumer runtime: the flow control, the checkpoints, the
partition runs and the group consumers all count and log, and none of them
should have to import the runtime that owns them to do so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

__all__ = ["Stats", "emit", "log"]

log = logging.getLogger("tidelog.consumers")


def emit(level: int, event: str, **fields: Any) -> None:
    """A structured log line: `event` is the message, `fields` ride in `extra`."""
    if log.isEnabledFor(level):
        log.log(level, event, extra={"tidelog": fields})


@dataclass(slots=True)
class Stats:
    """Counters of one run, for tests, benchmarks and `tidelog worker` logs."""

    handled: int = 0
    """Successful handler calls (events, or batches)."""
    events_handled: int = 0
    retries: int = 0
    parked: int = 0
    held: int = 0
    skipped_parked: int = 0
    """Redelivered events that the DLQ already holds or settled."""
    commits: int = 0
    refused_commits: int = 0
    """Commits the engine refused with StaleGeneration (this member was fenced)."""
    stale_heartbeats: int = 0
    rejoins: int = 0
    partitions_started: int = 0
    partitions_revoked: int = 0
    breaker_opens: int = 0
    """Times a handler's circuit breaker opened (paused it: its dependency is down)."""
    breaker_probes: int = 0
    """Calls let through a paused handler to see whether its dependency is back."""
    paused_handlers: int = 0
    """Handlers paused by their circuit breaker now (a gauge)."""
    peak_in_flight: int = 0
    """The highest number of fetched but unfinished events seen."""
