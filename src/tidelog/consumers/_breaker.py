"""The circuit breaker of one handler: a dead dependency pauses it instead of parking everything.

Retries and parking (`_delivery`) are right for a poison event: one event of
one stream that fails however often it is tried is parked, and the other
streams flow on. They are wrong when what fails is the handler's dependency
(a database, an API): then every event fails, each is tried `max_attempts`
times and parked, and an outage of minutes leaves the DLQ full of good events
that an operator must retry by hand.

The two look different: a poison event fails for one stream, again and
again; a dead dependency fails every stream, fresh events too. So the breaker
counts the *distinct streams* among the handler's consecutive failed *first
attempts* (a retry failing is what a poison event does; any success starts
the count again). At `breaker_threshold` of them it opens:

- the handler is paused in this process: no call starts (each waits in
  `admit`), and the first attempts that fail while it is open (the one that
  opened it included) are not the events' fault: their attempt is not spent,
  nothing is parked;
- after `breaker_backoff_initial` seconds one waiting call goes through as a
  probe (half-open), a fresh event if one waits. If it succeeds the breaker
  closes and every waiting call goes on; if a fresh probe fails the pause
  doubles, up to `breaker_backoff_max`.

Each event is a fresh probe once. A probe that is not fresh (its event failed
before the breaker opened, or was a probe already) spends its attempt as
usual: when the only events left are ones that keep failing - poison events
at the end of a backlog - they are still parked, one probe at a time, instead
of holding the handler paused for ever. So a dead dependency parks nothing
for as many probes as there are events waiting (each stream in flight, up to
`max_in_flight`), at `breaker_backoff_max` apart once the pause has grown:
with the defaults, from minutes to hours.

Opening and closing are logged (`breaker_opened`, `breaker_closed`) and
counted (`tidelog_worker_breaker_opens_total`, `..._probes_total`, and the
gauge `tidelog_worker_paused_handlers`). The state is per process: each worker
finds out for itself that the dependency is back.
"""

from __future__ import annotations

import asyncio
import logging

from ._handler import Handler
from ._stats import Stats, emit

__all__ = ["Breaker"]


class Breaker:
    """Open after failed first attempts for `threshold` distinct streams in a row; closed by a
    successful call."""

    def __init__(self, handler: Handler, stats: Stats) -> None:
        options = handler.options
        self.handler = handler
        self.stats = stats
        self.threshold = options.breaker_threshold
        self.initial = options.breaker_backoff_initial
        self.max = options.breaker_backoff_max
        self.closed = True
        """False while the handler is paused (open or half-open)."""
        self.streams: set[str] = set()
        """The distinct streams among the failed first attempts since the last success."""
        self.delay = self.initial
        self.probing = False
        """A call waits out the pause or runs as the probe: the others wait for its outcome."""
        self.fresh_waiting = 0
        """Calls of events not tried yet, waiting: they go first as probes."""
        self._changed = asyncio.Event()

    def succeeded(self) -> None:
        """A handler call succeeded: the count starts again; an open breaker closes."""
        if self.streams:
            self.streams.clear()
        if not self.closed:
            self.closed, self.probing, self.delay = True, False, self.initial
            self.stats.paused_handlers -= 1
            self._log(logging.WARNING, "breaker_closed")
            self._wake()

    def failed(self, stream: str, error: BaseException, *, fresh: bool, probe: bool) -> bool:
        """A handler call for `stream` raised `error`; True if its attempt is not spent.

        `fresh`: it was the event's first counted attempt (for a probe: and its
        first probe); `probe`: the call was let through a paused handler as its
        probe (`admit` said so).
        """
        if self.threshold is None:
            return False
        if not self.closed:
            if probe:
                self.probing = False
                if fresh:  # a new event failed too: the dependency is still down
                    self.delay = min(self.delay * 2, self.max)
                self._wake()  # the next probe
            return fresh
        if not fresh:
            return False
        self.streams.add(stream)
        if len(self.streams) < self.threshold:
            return False
        self.closed, self.delay = False, self.initial
        self.stats.breaker_opens += 1
        self.stats.paused_handlers += 1
        self._log(
            logging.WARNING,
            "breaker_opened",
            streams=len(self.streams),
            pause=self.delay,
            error=repr(error)[:500],
        )
        self.streams.clear()
        return True

    async def admit(self, *, fresh: bool) -> bool:
        """Return at once while closed (False); while paused, once this call may go as the
        probe (True), or once the breaker closed (False). Fresh events probe first."""
        while not self.closed:
            if not self.probing and (fresh or not self.fresh_waiting):
                self.probing = True
                try:
                    await asyncio.sleep(self.delay)
                except BaseException:
                    self.probing = False
                    self._wake()
                    raise
                if self.closed:  # a call begun before the pause succeeded meanwhile
                    return False
                self.stats.breaker_probes += 1
                self._log(logging.INFO, "breaker_probe", pause=self.delay)
                return True
            changed = self._changed
            self.fresh_waiting += fresh
            try:
                await changed.wait()
            finally:
                self.fresh_waiting -= fresh
        return False

    def _log(self, level: int, event: str, **fields: object) -> None:
        """A breaker log line: each names the group and the handler it pauses."""
        emit(level, event, group=self.handler.group, handler=self.handler.name, **fields)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
