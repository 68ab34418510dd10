"""Readiness: does the store accept writes?

Reading the head (`last_position`) answers from a full disk as happily as from
an empty one, so `/readyz` would say 200 while every append fails. The server
therefore remembers the outcome of writes: a write request that fails with
`StoreUnavailable` (a full disk, an I/O error, a lock held past the busy
timeout) makes the server unready. Only a write can prove the store writable
again, and clients may have stopped sending writes to an unready server (a load
balancer takes it out), so while unready the server probes: it appends one
event to the system stream `$tidelog-readiness` and purges it (never user data),
every `PROBE_INTERVAL` seconds in the background and at most once a second from
`/readyz`. A healthy server does not probe at all: no writes, no position gaps,
until a real write has failed. `/livez` does not look at the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from tidelog.engines.contract import Engine
from tidelog.errors import NotSupported, TidelogError
from tidelog.model import NewEvent

__all__ = ["PROBE_INTERVAL", "PROBE_STREAM", "Readiness"]

log = logging.getLogger(__name__)

PROBE_STREAM = "$tidelog-readiness"
PROBE_INTERVAL = 5.0
"""Seconds between background probes while the store refuses writes."""
_PROBE_TIMEOUT = 2.0
_MIN_PROBE_GAP = 1.0
"""`/readyz` probes at most this often: a scraper polling it cannot turn it into a write load."""


class Readiness:
    """The last known write outcome; `failure` is None while the store accepts writes."""

    def __init__(self) -> None:
        self.failure: str | None = None
        self._last_probe = 0.0
        self._lock = asyncio.Lock()

    def write_failed(self, exc: BaseException) -> None:
        if self.failure is None:
            log.warning(
                "the store refused a write (%s): not ready until a probe write succeeds", exc
            )
        self.failure = type(exc).__name__

    async def probe(self, store: Engine) -> None:
        """One write to the probe stream, then purge it; the outcome sets `failure`."""
        async with self._lock:
            self._last_probe = time.monotonic()
            try:
                async with asyncio.timeout(_PROBE_TIMEOUT):
                    await store.append(PROBE_STREAM, [NewEvent(type="probe")])
                    with contextlib.suppress(NotSupported):
                        await store.purge_stream(PROBE_STREAM)
            except (TidelogError, TimeoutError) as exc:
                self.failure = type(exc).__name__
            else:
                if self.failure is not None:
                    log.warning("the store accepts writes again: ready")
                self.failure = None

    async def check(self, store: Engine) -> str | None:
        """The reason the server is unready, probing first if one is due."""
        if self.failure is not None and time.monotonic() - self._last_probe >= _MIN_PROBE_GAP:
            await self.probe(store)
        return self.failure

    async def run(self, store: Callable[[], Engine], interval: float = PROBE_INTERVAL) -> None:
        """The background probe: while unready, try a write every `interval` seconds."""
        while True:
            await asyncio.sleep(interval)
            if self.failure is not None:
                try:
                    await self.probe(store())
                except Exception:  # the loop must outlive any surprise; the next tick retries
                    log.exception("readiness probe failed unexpectedly")
