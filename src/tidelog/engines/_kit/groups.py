"""The consumer-group state machine, written once for every engine."""

from __future__ import annotations

from collections.abc import Collection

import msgspec

from tidelog.errors import StaleGeneration
from tidelog.model import GroupMember, Membership

__all__ = ["GroupState", "assign_partitions"]

# --------------------------------------------------------------------------- groups


class GroupState(msgspec.Struct, kw_only=True):
    """One consumer group on one category, as every engine stores it.

    Engines persist this small document (a row, a key-value entry) and change it
    only through the methods below inside a transaction or compare-and-set, so
    the rules of membership, assignment and fencing are written once.
    """

    generation: int = 0
    members: dict[str, float] = msgspec.field(default_factory=dict)
    """member id -> lease expiry, seconds since the epoch."""

    def _expire(self, now: float) -> None:
        expired = [m for m, until in self.members.items() if until <= now]
        for m in expired:
            del self.members[m]
        if expired:
            self.generation += 1

    def join(self, member: str, now: float, lease: float) -> None:
        self._expire(now)
        if member not in self.members:
            self.generation += 1
        self.members[member] = now + lease

    def heartbeat(self, group: str, category: str, member: str, now: float, lease: float) -> None:
        self._expire(now)
        if member not in self.members:
            raise StaleGeneration(group, category, member, -1, self.generation)
        self.members[member] = now + lease

    def leave(self, member: str, now: float) -> None:
        self._expire(now)
        if self.members.pop(member, None) is not None:
            self.generation += 1

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
        """Raise `StaleGeneration` unless `member` may commit `partition` now."""
        until = self.members.get(member)
        if (
            until is None
            or until <= now
            or generation != self.generation
            or partition not in assign_partitions(self.members, partition_count).get(member, ())
        ):
            raise StaleGeneration(group, category, member, generation, self.generation)

    def described(self, group: str, category: str, partition_count: int, now: float) -> Membership:
        """The group as `describe_group` shows it: lapsed leases expired, without joining
        anyone (`member` is empty). Works on a copy, so reading a group never changes it."""
        live = GroupState(generation=self.generation, members=dict(self.members))
        live._expire(now)
        return live.membership(group, category, "", partition_count)

    def membership(
        self, group: str, category: str, member: str, partition_count: int
    ) -> Membership:
        assignment = assign_partitions(self.members, partition_count)
        return Membership(
            group=group,
            category=category,
            member=member,
            generation=self.generation,
            partitions=assignment.get(member, ()),
            partition_count=partition_count,
            members=tuple(
                GroupMember(member=m, partitions=assignment[m], lease_expires_at=self.members[m])
                for m in sorted(self.members)
            ),
        )


def assign_partitions(members: Collection[str], partition_count: int) -> dict[str, tuple[int, ...]]:
    """Deterministic assignment: partition p goes to the (p mod n)-th member in sorted order."""
    ordered = sorted(members)
    out: dict[str, list[int]] = {m: [] for m in ordered}
    if ordered:
        for p in range(partition_count):
            out[ordered[p % len(ordered)]].append(p)
    return {m: tuple(ps) for m, ps in out.items()}
