"""`StoreWrapper`: a store around another store that forwards the whole contract.

A wrapper changes one thing about a store (`ValidatingStore` checks what is
written against the schema registry) and must answer everything else exactly
as the store it wraps would, including the methods an engine overrides for
speed: the contract's defaults of `read_page` and `count_events` are correct
but slow (the lag of a consumer group counted by reading every event), so a
wrapper that fell back to them would silently undo the engine's indexes.

So this base forwards every method of the contract to `inner`. Where the
contract has a front end and an engine hook (`append`, `append_many` and
`commit` over `_apply_write`; `read_stream`, `read_all`, `read_page`,
`count_events` and `subscribe` over `_read_stream`, `_read_all`, `_read_page`,
`_count_events` and `_subscribe`), it forwards the hook, so the wrapper keeps
the contract's one front end (argument checks, fence-first commits) and
reaches the inner engine's own work. A subclass overrides `_apply_write` (and what it truly
changes), never the front ends. `tests/test_store_wrapper.py` enumerates the
contract and fails if a wrapper answers any method from a base-class default,
so a method added to the contract later cannot be missed here.

A member forwarded as it is is one line, `name = from_inner()`: the wrapper's
`name` is `inner.name` (its bound method, or its property's value), so the
signature is the contract's, stated once there, and a call costs no extra
frame. Only what the wrapper does differently is written out.
"""

from __future__ import annotations

from typing import Any

from tidelog.engines.contract import Engine, GroupEngine, Write
from tidelog.model import AppendResult, Membership

__all__ = ["StoreWrapper", "from_inner"]


class _FromInner:
    """A non-data descriptor: `wrapper.name` is `wrapper.inner.name`."""

    name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: StoreWrapper | None, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return getattr(obj.inner, self.name)


def from_inner() -> Any:
    """A contract member a `StoreWrapper` answers exactly as its `inner` store does.

    Typed `Any` so that the member keeps the contract's type (mypy checks callers
    against `GroupEngine`'s signature, which this one neither restates nor hides).
    """
    return _FromInner()


class StoreWrapper(GroupEngine):
    """Forwards every contract method to `inner`; subclass it and override `_apply_write`.

    The wrapper has no state of its own: it is open while `inner` is, and
    closing it closes `inner`.
    """

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name

    def _check_open(self) -> None:
        """The front ends' closed check asks `inner`: closing either closes both."""
        self.inner._check_open()

    @property
    def poll_interval(self) -> float:
        """The inner store's: consumers wait on the head watch this long between checks."""
        return self.inner.poll_interval

    @poll_interval.setter
    def poll_interval(self, value: float) -> None:
        self.inner.poll_interval = value

    async def _apply_write(self, write: Write) -> dict[str, AppendResult]:
        """Make `write` durable in `inner`: the one write hook, forwarded."""
        return await self.inner._apply_write(write)

    async def close(self) -> None:
        await self._stop_scheduler()
        await self.inner.close()

    # ------------------------------------------------------------------ layer 1

    _read_stream = from_inner()
    delete_stream = from_inner()
    purge_stream = from_inner()
    list_streams = from_inner()

    # ------------------------------------------------------------ scheduled delivery
    # The hooks are forwarded; the wrapper's own scheduler (the contract's
    # `start_scheduler`) moves due events through the wrapper's `append_many`,
    # so what the wrapper changes about writes applies to them too.

    @property
    def max_write_events(self) -> int | None:
        """The inner engine's: the wrapper's writes are its."""
        return self.inner.max_write_events

    @max_write_events.setter
    def max_write_events(self, value: int | None) -> None:
        self.inner.max_write_events = value

    supports_scheduling = from_inner()
    _schedule = from_inner()
    _take_due = from_inner()
    _next_due = from_inner()
    _forget_scheduled = from_inner()
    _cancel_scheduled = from_inner()
    _list_scheduled = from_inner()
    _count_scheduled = from_inner()

    # ------------------------------------------------------------------ layer 2

    _read_all = from_inner()
    _read_page = from_inner()
    _count_events = from_inner()
    last_position = from_inner()
    partition_count = from_inner()
    head_watch = from_inner()
    _subscribe = from_inner()

    # ------------------------------------------------------------------ layer 3

    async def _join_group(
        self, group: str, category: str, member: str, lease: float, cooperative: bool
    ) -> Membership:
        return await self.inner.join_group(group, category, member, lease, cooperative=cooperative)

    async def _heartbeat(
        self, group: str, category: str, member: str, lease: float, release: tuple[int, ...]
    ) -> Membership:
        return await self.inner.heartbeat(group, category, member, lease, release=release)

    leave_group = from_inner()
    checkpoints = from_inner()
    describe_group = from_inner()
    list_groups = from_inner()

    # ------------------------------------------------------------------ retention
    # The rules, their cache and the scavenger are the inner store's: a rule set
    # through either is in force through both at once. The contract's read front
    # ends of the wrapper filter with the inner store's view.

    applies_retention = from_inner()
    scavenge_interval = from_inner()
    scavenge_lease = from_inner()
    scavenge_batch = from_inner()
    retention_stats = from_inner()
    _retention_idle = from_inner()
    _retention_view = from_inner()
    _set_rule = from_inner()
    retention = from_inner()
    scavenge = from_inner()
    first_position = from_inner()
    _stream_heads = from_inner()
    _stream_bytes = from_inner()
    _count_below = from_inner()
    _start_stream_at = from_inner()
