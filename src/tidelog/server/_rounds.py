"""One round of a background loop of the server, which a store outage must not end."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

__all__ = ["one_round"]


async def one_round(step: Callable[[], Awaitable[None]], log: logging.Logger, failed: str) -> float:
    """Run `step` once and return the seconds it took, which the loop's duty cycle needs.

    A failure is logged as `failed` and swallowed: the store may be down, and the
    next round retries (a gap in the charts, a stale gauge, never a dead loop).
    Cancellation, a `BaseException`, ends the loop as it should.
    """
    started = time.monotonic()
    try:
        await step()
    except Exception as exc:
        log.warning("%s: %s", failed, exc)
    return time.monotonic() - started
