"""The consumer-group state machine, written once for every engine.

Cooperative hand-over (as Kafka's incremental cooperative rebalancing, KIP-429,
and its successor KIP-848 do it): when the assignment moves a partition away
from a *cooperative* member that is still alive, the partition is not handed to
its new owner at once. It stays with its holder, listed in the holder's
`revoking`, until the holder has finished or abandoned its in-flight events,
committed, and released it (`heartbeat(..., release=...)`); only then does the
new owner get it. The new owner sees it in its `awaiting` meanwhile. A holder
that neither releases nor heartbeats loses the partition when its lease runs
out, and one that heartbeats but never releases loses it at a deadline, one of
its leases after the hand-over began: a stuck member cannot keep a partition.
So a graceful join or leave moves partitions without any event handled twice,
and a crash costs what it always did (at-least-once).

A member that joins without `cooperative=True` is handed nothing to release:
its partitions move at once, as before (a client that does not know about
`revoking` would otherwise hold every moved partition until the deadline).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeAlias

import msgspec

from tidelog.errors import InvalidInput, StaleGeneration
from tidelog.model import GroupMember, Membership

__all__ = ["GroupState", "Handover", "assign_partitions", "check_cooperative", "check_release"]

# --------------------------------------------------------------------------- groups


class Handover(msgspec.Struct, frozen=True, array_like=True):
    """A partition withheld from its new owner: `holder` keeps it until it releases it,
    leaves, loses its lease, or `deadline` (seconds since the epoch) passes."""

    holder: str
    deadline: float


_Before: TypeAlias = tuple[set[str], list[str | None], list[str | None]]


class GroupState(msgspec.Struct, kw_only=True):
    """One consumer group on one category, as every engine stores it.

    Engines persist this small document (a row, a key-value entry) and change it
    only through the methods below inside a transaction or compare-and-set, so
    the rules of membership, assignment, hand-over and fencing are written once.
    Documents written before the hand-over existed decode with empty
    `cooperative` and `withheld` maps, which mean what they meant then.
    """

    generation: int = 0
    members: dict[str, float] = msgspec.field(default_factory=dict)
    """member id -> lease expiry, seconds since the epoch."""
    cooperative: dict[str, float] = msgspec.field(default_factory=dict)
    """member id -> its lease in seconds, for the live members that joined with
    `cooperative=True` (they release moved partitions themselves)."""
    withheld: dict[int, Handover] = msgspec.field(default_factory=dict)
    """partition -> the hand-over under way: held by a previous owner, not yet by
    the member the assignment names."""

    # ---------------------------------------------------------------- changes

    def join(
        self,
        member: str,
        now: float,
        lease: float,
        partition_count: int,
        cooperative: bool = False,
    ) -> None:
        check_cooperative(cooperative)
        before = self._snapshot(partition_count, now)
        self._expire(now)
        self.members[member] = now + lease
        if cooperative:
            self.cooperative[member] = lease
        else:
            self.cooperative.pop(member, None)
        self._settle(before, now, partition_count)

    def heartbeat(
        self,
        group: str,
        category: str,
        member: str,
        now: float,
        lease: float,
        partition_count: int,
        release: Collection[int] = (),
    ) -> None:
        """Renew `member`'s lease, after it released the partitions in `release`.

        Releasing a partition the member is not asked to give up (not in its
        `revoking`) changes nothing: a late or repeated release is harmless.
        """
        released = check_release(release, partition_count)
        before = self._snapshot(partition_count, now)
        self._expire(now)
        if member not in self.members:
            self._settle(before, now, partition_count)
            raise StaleGeneration(group, category, member, -1, self.generation)
        self.members[member] = now + lease
        if member in self.cooperative:
            self.cooperative[member] = lease
        mine = [p for p in released if before[1][p] == member]
        self._settle(before, now, partition_count, mine)

    def leave(self, member: str, now: float, partition_count: int) -> None:
        before = self._snapshot(partition_count, now)
        self._expire(now)
        self.members.pop(member, None)
        self._settle(before, now, partition_count)

    def _expire(self, now: float) -> None:
        for m in [m for m, until in self.members.items() if until <= now]:
            del self.members[m]

    def _snapshot(self, partition_count: int, now: float) -> _Before:
        """The live members and each partition's holder, before a change: now (a
        hand-over past its deadline has ended) and as stored (for the generation)."""
        return (
            set(self.members),
            self._holders(partition_count, now),
            self._holders(partition_count),
        )

    def _settle(
        self,
        before: _Before,
        now: float,
        partition_count: int,
        released: Collection[int] = (),
    ) -> None:
        """After a change: withhold each moved partition from its new owner while its
        previous holder is a live cooperative member that has not released it (and
        its deadline has not passed); bump the generation if the live members or any
        partition's holder changed (a hand-over that ended at its deadline too)."""
        members_before, holders_before, stored_before = before
        for m in [m for m in self.cooperative if m not in self.members]:
            del self.cooperative[m]
        target = _owners(self.members, partition_count)
        withheld: dict[int, Handover] = {}
        for p, holder in enumerate(holders_before):
            if (
                holder is None
                or holder == target[p]
                or holder not in self.cooperative
                or p in released
            ):
                continue  # nothing to hand over: the assignment's owner holds it now
            current = self.withheld.get(p)
            if current is not None and current.holder == holder:
                withheld[p] = current  # under way (`_holders` dropped it at its deadline)
            else:
                withheld[p] = Handover(holder, now + self.cooperative[holder])
        self.withheld = withheld
        if set(self.members) != members_before or self._holders(partition_count) != stored_before:
            self.generation += 1

    # ---------------------------------------------------------------- reading

    def _holders(self, partition_count: int, now: float | None = None) -> list[str | None]:
        """Who holds each partition: the assignment, except the hand-overs under way
        (those before their deadline, when `now` is given; right after a change,
        `_settle` has ended the others)."""
        holders = _owners(self.members, partition_count)
        for p, handover in self.withheld.items():
            if 0 <= p < partition_count and (now is None or handover.deadline > now):
                holders[p] = handover.holder
        return holders

    def check(
        self,
        group: str,
        category: str,
        member: str,
        generation: int,
        partition: int,
        partition_count: int,
        now: float,
    ) -> None:
        """Raise `StaleGeneration` unless `member` may commit `partition` now: a live
        member of the current generation that holds it (a partition it is asked to
        release included, so it can commit before it releases)."""
        until = self.members.get(member)
        if (
            until is None
            or until <= now
            or generation != self.generation
            or not 0 <= partition < partition_count
            or self._holders(partition_count, now)[partition] != member
        ):
            raise StaleGeneration(group, category, member, generation, self.generation)

    def described(self, group: str, category: str, partition_count: int, now: float) -> Membership:
        """The group as `describe_group` shows it: lapsed leases expired and hand-overs
        past their deadline ended, without joining anyone (`member` is empty). Works on
        a copy, so reading a group never changes it."""
        live = GroupState(
            generation=self.generation,
            members=dict(self.members),
            cooperative=dict(self.cooperative),
            withheld=dict(self.withheld),
        )
        before = live._snapshot(partition_count, now)
        live._expire(now)
        live._settle(before, now, partition_count)
        return live.membership(group, category, "", partition_count)

    def membership(
        self, group: str, category: str, member: str, partition_count: int
    ) -> Membership:
        """`member`'s view right after a change (or `described`): what it holds, what
        it is asked to release (`revoking`) and what it waits for (`awaiting`)."""
        holders = self._holders(partition_count)
        target = _owners(self.members, partition_count)
        held: dict[str, list[int]] = {m: [] for m in self.members}
        for p, holder in enumerate(holders):
            if holder is not None:
                held[holder].append(p)
        return Membership(
            group=group,
            category=category,
            member=member,
            generation=self.generation,
            partitions=tuple(held.get(member, ())),
            partition_count=partition_count,
            members=tuple(
                GroupMember(member=m, partitions=tuple(held[m]), lease_expires_at=self.members[m])
                for m in sorted(self.members)
            ),
            revoking=tuple(p for p in held.get(member, ()) if target[p] != member),
            awaiting=tuple(
                p for p, owner in enumerate(target) if owner == member and holders[p] != member
            ),
        )


def check_cooperative(cooperative: object) -> None:
    """A join's `cooperative` flag: a bool, nothing else."""
    if not isinstance(cooperative, bool):
        raise InvalidInput(f"invalid cooperative {cooperative!r}: a bool")


def check_release(release: object, partition_count: int) -> tuple[int, ...]:
    """The partitions of a heartbeat's `release`, each checked: an int in the store's range."""
    if isinstance(release, (str, bytes)) or not isinstance(release, Collection):
        raise InvalidInput(f"invalid release {release!r}: a collection of partitions")
    out = []
    for p in release:
        if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < partition_count:
            raise InvalidInput(f"invalid partition {p!r} to release: 0 to {partition_count - 1}")
        out.append(p)
    return tuple(sorted(set(out)))


def _owners(members: Collection[str], partition_count: int) -> list[str | None]:
    """The member `assign_partitions` gives each partition (None: no members)."""
    ordered = sorted(members)
    if not ordered:
        return [None] * partition_count
    return [ordered[p % len(ordered)] for p in range(partition_count)]


def assign_partitions(members: Collection[str], partition_count: int) -> dict[str, tuple[int, ...]]:
    """Deterministic assignment: partition p goes to the (p mod n)-th member in sorted order."""
    ordered = sorted(members)
    out: dict[str, list[int]] = {m: [] for m in ordered}
    if ordered:
        for p in range(partition_count):
            out[ordered[p % len(ordered)]].append(p)
    return {m: tuple(ps) for m, ps in out.items()}
