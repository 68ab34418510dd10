"""The live-head notifier that wakes subscriptions."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["HeadWatch"]

# --------------------------------------------------------------------------- live head


class HeadWatch:
    """Wakes subscribers when the log's head moves past what they have seen.

    In-process appends call `advance`; engines that learn of appends from
    elsewhere (other processes, LISTEN/NOTIFY) call it too.
    """

    def __init__(self) -> None:
        self._head = 0
        self._changed = asyncio.Event()
        self._closed = False

    @property
    def head(self) -> int:
        return self._head

    def advance(self, position: int) -> None:
        if position > self._head:
            self._head = position
            self._changed.set()
            self._changed = asyncio.Event()

    def close(self) -> None:
        self._closed = True
        self._changed.set()

    async def wait_beyond(self, position: int, within: float | None) -> None:
        """Return when the head passes `position`, after `within` seconds, or on close."""
        if self._head > position or self._closed:
            return
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
        # cancellation that arrives as the event fires, so a cancelled
        # subscription task could run on forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._changed.wait()
