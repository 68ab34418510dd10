"""The knobs: `HandlerOptions` (per handler) and `RunnerOptions` (per process).

Plain frozen values with their checks, imported by every other module of the
consumer runtime and by nothing of it: a reader finds each default and its
reason in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tidelog.errors import InvalidInput

__all__ = ["HandlerOptions", "RunnerOptions"]


@dataclass(frozen=True, kw_only=True)
class HandlerOptions:
    """How one handler is retried, parked and batched."""

    max_attempts: int = 5
    """Attempts before the event is parked in `$dlq-<group>` (1 = no retry)."""
    backoff_initial: float = 0.05
    """Seconds before the first retry; doubles (`backoff_multiplier`) each attempt."""
    backoff_multiplier: float = 2.0
    backoff_max: float = 5.0
    jitter: float = 0.5
    """Each delay is scaled by a random factor in [1 - jitter, 1]: retries of many
    events do not fire in lockstep."""
    on_park: Literal["block", "park_stream"] = "block"
    """What happens to later events of a stream after one of its events is parked:
    `block` holds them in the DLQ and releases them in order once the parked one is
    retried or dropped; `park_stream` parks each of them too (retry or drop each)."""
    batch: int | None = None
    """Deliver lists of up to this many events of one partition (in log order)."""
    breaker_threshold: int | None = 5
    """Failures of this many distinct streams in a row (no success between) pause the
    handler in this process: its dependency is down, not one event poisoned, so events
    wait instead of being parked (`_breaker`). None: never pause."""
    breaker_backoff_initial: float = 1.0
    """Seconds paused before the first probe call; doubles after each failed probe."""
    breaker_backoff_max: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidInput("max_attempts must be >= 1")
        if self.batch is not None and self.batch < 1:
            raise InvalidInput("batch must be None or >= 1")
        if self.on_park not in ("block", "park_stream"):
            raise InvalidInput("on_park must be 'block' or 'park_stream'")
        if not 0 <= self.jitter <= 1:
            raise InvalidInput("jitter must be within [0, 1]")
        if self.breaker_threshold is not None and self.breaker_threshold < 2:
            # one stream failing over and over is a poison event: parked, not a pause
            raise InvalidInput("breaker_threshold must be None or >= 2")
        if not 0 < self.breaker_backoff_initial <= self.breaker_backoff_max:
            raise InvalidInput("need 0 < breaker_backoff_initial <= breaker_backoff_max")

    def backoff(self, attempt: int, rand: float) -> float:
        """The delay after failed attempt number `attempt` (1-based); `rand` in [0, 1)."""
        base = min(
            self.backoff_max, self.backoff_initial * self.backoff_multiplier ** (attempt - 1)
        )
        return base * (1 - self.jitter * rand)


@dataclass(frozen=True, kw_only=True)
class RunnerOptions:
    """How a process consumes: leases, buffers, pages and commit cadence."""

    lease: float = 10.0
    """Seconds a member stays in its group without a heartbeat."""
    heartbeat_interval: float | None = None
    """Default: a third of the lease."""
    concurrency: int = 64
    """Handler calls running at once in this process, over all partitions."""
    max_in_flight: int = 2000
    """Events fetched but not yet finished, per group consumer: reading pauses at
    this bound, so memory stays bounded whatever the backlog. Twice `page_size`:
    the handlers work through one page while the next is read."""
    page_size: int = 1000
    """Events per read, at most. A read costs a query and a wake-up of every
    partition's worker, so a backlog is read in big pages; a consumer that has
    caught up gets what is there, one event or more, as soon as it is there."""
    commit_interval: float = 0.2
    """Seconds between checkpoint commits of a partition that made progress."""
    commit_every: int = 500
    """Commit sooner once this many events finished uncommitted, counted over all
    the partitions of the process's group consumer (not per partition): it bounds
    what a crash of this process makes the group handle again, beside
    `max_in_flight`. A partition that alone reaches it commits alone."""
    dlq_poll_interval: float = 0.25
    """How often the DLQ is re-read for retries and drops requested elsewhere."""
    shutdown_timeout: float = 10.0
    """On stop: seconds to let in-flight events finish before abandoning them."""

    @property
    def heartbeat_every(self) -> float:
        return self.heartbeat_interval or self.lease / 3
