"""Whether a worker process is alive and ready: what `/livez` and `/readyz` report.

`tidelog worker --metrics-port N` serves both beside `/metrics`, so a
Kubernetes probe asks the worker itself rather than trusting that a running
process works:

- **live**: the process's event loop still runs. The runtime ticks `Health`
  every second from the loop; a loop blocked for `stall_after` seconds (a
  handler that never yields, a deadlock) fails the liveness probe, and the
  kubelet restarts the container. The HTTP thread answering is not enough.
- **ready**: every handler's consumer has joined its group and holds a
  current membership (not fenced: its lease was not lost), and its last call
  to the store succeeded. A member whose store is unreachable, that was
  fenced, that has not joined yet, or that is stopping, is not ready.

Worker pods take no traffic, so readiness does not route requests; it tells
a rollout (`maxUnavailable`, the PodDisruptionBudget) and an operator
(`kubectl get pods`) which members really consume.

The group consumers write their state here from the event loop and the HTTP
thread reads it: plain attribute writes of immutable values, so no lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["ConsumerHealth", "Health"]


@dataclass(slots=True)
class ConsumerHealth:
    """One group consumer's part of readiness."""

    group: str
    category: str
    joined: bool = False
    """Holds a current membership: joined, and not fenced or left since."""
    fenced: bool = False
    """Its lease was lost (a heartbeat or commit was refused); cleared when it rejoins."""
    store_error: str | None = None
    """The last store call failed with this (unreachable); None once one succeeds."""

    @property
    def ready(self) -> bool:
        return self.joined and not self.fenced and self.store_error is None

    def reason(self) -> str:
        if self.store_error is not None:
            return f"store unreachable: {self.store_error}"
        if self.fenced:
            return "fenced: lease lost, rejoining"
        if not self.joined:
            return "not joined"
        return "ready"

    # The group consumer's hooks, one per thing that happened.

    def on_joined(self) -> None:
        self.joined, self.fenced, self.store_error = True, False, None

    def on_fenced(self) -> None:
        self.fenced = True

    def on_store_ok(self) -> None:
        self.store_error = None

    def on_store_error(self, exc: BaseException) -> None:
        self.store_error = repr(exc)[:200]

    def on_left(self) -> None:
        self.joined = False


@dataclass(slots=True)
class Health:
    """A worker process's liveness and readiness, over all its group consumers."""

    stall_after: float = 60.0
    """Seconds without a tick of the event loop after which the process is not live."""
    consumers: list[ConsumerHealth] = field(default_factory=list)
    stopping: bool = False
    last_tick: float = field(default_factory=time.monotonic)

    def consumer(self, group: str, category: str) -> ConsumerHealth:
        """The state of a new group consumer (not joined yet)."""
        state = ConsumerHealth(group, category)
        self.consumers.append(state)
        return state

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def live(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self.last_tick
        if stalled > self.stall_after:
            return False, f"event loop blocked for {stalled:.0f} s"
        return True, "live"

    def ready(self) -> tuple[bool, dict[str, str]]:
        """(ready, the reason of each `group/category`)."""
        reasons = {f"{c.group}/{c.category}": c.reason() for c in self.consumers}
        if self.stopping:
            return False, {**reasons, "process": "stopping"}
        if not self.consumers:
            return False, {"process": "starting"}
        return all(c.ready for c in self.consumers), reasons
