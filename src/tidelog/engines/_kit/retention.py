"""Retention, written once: the policy values, where they live, and the rule that
decides whether an event is kept.

Policies are events of the system stream `$retention` (one `RetentionRule` per
event; a rule with no policy clears its scope), so they travel with `tidelog
copy` and every process that opens the store sees them. The current rules are
the fold of that stream: the last rule of each scope wins.

Resolution: a stream's policy is its own scope's, else its category's, else the
store's. The most specific scope wins as a whole (its fields are not merged
with a wider scope's), so what applies to a stream can be read off one rule.
System streams (`$...`) follow only rules that name them or their category: a
store-wide rule never ages out `$retention` itself, dead-letter queues or the
`$system` log, and no rule may name `$retention`.

Every condition of a policy holds for a prefix of a stream (versions, positions
and recorded times grow together), so what is kept of a stream is always a
suffix: reads hide the prefix at once (`RetentionView.hidden`) and the scavenger
deletes the same prefix later (`tidelog.engines.contract`), with the same
function deciding both. What a reader sees therefore never depends on whether
the scavenger has run yet.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final, Literal

import msgspec

from tidelog.errors import InvalidInput
from tidelog.model import RecordedEvent, category_of, partition_of, validate_stream_name

__all__ = [
    "LOST_EVENTS_TYPE",
    "REFRESH_INTERVAL",
    "RETENTION_STREAM",
    "RULE_TYPE",
    "SCAVENGER_GROUP",
    "SYSTEM_STREAM",
    "RetentionCache",
    "RetentionPolicy",
    "RetentionRule",
    "RetentionView",
    "ScavengeReport",
    "RetentionRules",
    "fold_rules",
    "make_rule",
    "static_floor",
]

RETENTION_STREAM: Final = "$retention"
"""The system stream holding the rules, one `RetentionRule` per event."""
RULE_TYPE: Final = "RetentionRuleSet"
SYSTEM_STREAM: Final = "$system"
"""Where the scavenger reports events it deleted before a consumer group read them."""
LOST_EVENTS_TYPE: Final = "RetentionLostEvents"
SCAVENGER_GROUP: Final = "$scavenger"
"""The consumer group (on the category `$retention`) whose partition 0 is the
scavenger's lease: the member that owns it is the one scavenger of the store."""
REFRESH_INTERVAL: Final = 1.0
"""Seconds a process trusts its cached rules and checkpoints before reading them again."""

_MAX_AGE: Final = 100 * 365 * 86400.0


class RetentionPolicy(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What to keep of each stream a rule covers. Every field is optional; an event is
    past the policy when any condition set says so.

    - `max_age`: seconds since the event was recorded (KurrentDB `$maxAge`,
      Kafka `retention.ms`, NATS `MaxAge`);
    - `max_count`: events kept per stream, the newest ones (`$maxCount`,
      NATS `MaxMsgsPerSubject`);
    - `truncate_before`: a stream version; events below it go (`$tb`: keep a
      snapshot, drop what it covers). Only on a rule for one stream;
    - `keep_latest`: keep only the last event of each stream (a Kafka compacted
      topic, with the stream as the key);
    - `even_if_unconsumed`: delete even events a consumer group of the
      category has not checkpointed past. By default such events are kept;
    - `hard_max_age`: seconds past which an event goes even if unconsumed; the
      group that lost it is reported (warning log, counter, `$system` event);
    - `hard_max_bytes`: when the events of the streams the rule covers hold
      more bytes than this (data plus compact-JSON metadata, stored), the
      scavenger deletes their oldest events down to it, even unconsumed ones,
      reported as for `hard_max_age`. Applied by the scavenger only: reads see
      the events until it deletes them (a size is not known at read time);
    - `scavenge_deleted`: every event of a tombstoned stream (`delete_stream`)
      is past the policy;
    - `keep_tombstone`: with `scavenge_deleted`, False forgets a tombstoned
      stream once its events are gone: the name may be used again, from
      version 0 (positions are still never reused).
    """

    max_age: float | None = None
    max_count: int | None = None
    truncate_before: int | None = None
    keep_latest: bool = False
    even_if_unconsumed: bool = False
    hard_max_age: float | None = None
    hard_max_bytes: int | None = None
    scavenge_deleted: bool = False
    keep_tombstone: bool = True

    def __post_init__(self) -> None:
        for name in ("max_age", "hard_max_age"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not math.isfinite(value) or not 0 < value <= _MAX_AGE
            ):
                raise InvalidInput(f"{name} must be a number of seconds > 0, got {value!r}")
        for name in ("max_count", "truncate_before", "hard_max_bytes"):
            value = getattr(self, name)
            least = int(name != "truncate_before")
            if value is not None and (isinstance(value, bool) or value < least):
                raise InvalidInput(f"{name} must be an int >= {least}")
        if self.is_empty:
            raise InvalidInput("a retention policy needs at least one condition")
        if not self.keep_tombstone and not self.scavenge_deleted:
            raise InvalidInput("keep_tombstone=False only goes with scavenge_deleted=True")

    @property
    def is_empty(self) -> bool:
        return (
            self.max_age is None
            and self.max_count is None
            and self.truncate_before is None
            and not self.keep_latest
            and self.hard_max_age is None
            and self.hard_max_bytes is None
            and not self.scavenge_deleted
        )

    @property
    def needs_head(self) -> bool:
        """Whether deciding needs the stream's state: its last version (count-based
        conditions) or its tombstone (`scavenge_deleted`)."""
        return self.max_count is not None or self.keep_latest or self.scavenge_deleted


Kind = Literal["stream", "category", "store"]


class RetentionRule(msgspec.Struct, frozen=True, kw_only=True):
    """A policy set on a scope; `policy` None clears the scope (an event of `$retention`)."""

    kind: Kind
    name: str = ""
    """The stream or category name; empty for the store."""
    policy: RetentionPolicy | None = None

    def __post_init__(self) -> None:
        if self.kind == "store":
            if self.name:
                raise InvalidInput("a store-wide rule names no stream or category")
        else:
            validate_stream_name(self.name)
            if self.kind == "category" and "-" in self.name:
                raise InvalidInput(f"{self.name!r} is not a category (no '-' in a category)")
            if RETENTION_STREAM in (self.name, category_of(self.name)):
                raise InvalidInput("the retention rules themselves have no retention")
        if self.kind != "stream" and self.policy and self.policy.truncate_before is not None:
            raise InvalidInput("truncate_before is a version of one stream: set it on a stream")

    @property
    def scope(self) -> tuple[str, str]:
        return (self.kind, self.name)


def fold_rules(
    rules: dict[tuple[str, str], RetentionRule], events: Iterable[RecordedEvent]
) -> None:
    """Apply `$retention` events in order to `rules` (scope -> rule). An event that does
    not decode (a newer tidelog's rule) is skipped, never half-applied."""
    for e in events:
        if e.type != RULE_TYPE:
            continue
        try:
            rule = _RULE_DECODER.decode(e.data)
        except (msgspec.DecodeError, InvalidInput):
            continue
        if rule.policy is None:
            rules.pop(rule.scope, None)
        else:
            rules[rule.scope] = rule


def static_floor(policy: RetentionPolicy, head: int | None) -> int:
    """The lowest version the version-based conditions keep (a forward read starts there)."""
    floor = policy.truncate_before or 0
    if head is not None:
        if policy.keep_latest:
            floor = max(floor, head)
        if policy.max_count is not None:
            floor = max(floor, head - policy.max_count + 1)
    return floor


_RULE_DECODER: Final = msgspec.json.Decoder(RetentionRule)


def make_rule(
    policy: RetentionPolicy | None, stream: str | None, category: str | None
) -> RetentionRule:
    """The rule `set_retention(policy, stream=..., category=...)` means (checked)."""
    if stream is not None and category is not None:
        raise InvalidInput("name a stream or a category, not both")
    if stream is not None:
        return RetentionRule(kind="stream", name=stream, policy=policy)
    if category is not None:
        return RetentionRule(kind="category", name=category, policy=policy)
    return RetentionRule(kind="store", policy=policy)


class RetentionRules(msgspec.Struct, frozen=True, kw_only=True):
    """The rules, as the HTTP API sends them."""

    rules: list[RetentionRule]


class ScavengeReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one scavenge did: events deleted, streams visited, events lost to consumers."""

    deleted: int = 0
    streams: int = 0
    lost: int = 0
    """Events deleted that a consumer group had not checkpointed past (`hard_max_age`
    or `even_if_unconsumed`); each group is named in a `$system` event."""
    ran: bool = True
    """False when another process holds the scavenger lease."""


class RetentionCache:
    """One process's view of the rules and of the consumer groups' checkpoints.

    Read when the store is opened (`connect`), then refreshed at most every
    `REFRESH_INTERVAL` seconds by the store's reads (`$retention` read from
    the version last seen, so a refresh costs one small read when nothing
    changed); a process's own `set_retention` updates it at once. A rule set
    by another process applies here from the next refresh: in about a second
    while this process reads.
    """

    def __init__(self) -> None:
        self.rules: dict[tuple[str, str], RetentionRule] = {}
        self.version = -1
        self.checked_at = -math.inf
        self.floors: dict[tuple[str, int], int] = {}
        """(category, partition) -> the lowest checkpoint of the category's groups."""
        self.groups: dict[tuple[str, str], dict[int, int]] = {}
        """(group, category) -> checkpoints, of every group but the scavenger's."""
        self.grouped: frozenset[str] = frozenset()
        """Categories that have consumer groups (their unconsumed events are protected)."""
        self._policies: dict[str, RetentionPolicy | None] = {}

    def stale(self) -> bool:
        return time.monotonic() - self.checked_at >= REFRESH_INTERVAL

    def update(
        self,
        events: Iterable[RecordedEvent],
        groups: dict[tuple[str, str], dict[int, int]],
        partitions: int,
    ) -> None:
        """Fold new `$retention` events and replace the groups' checkpoints."""
        fold_rules(self.rules, events)
        floors: dict[tuple[str, int], int] = {}
        for (_, category), points in groups.items():
            for p in range(partitions):
                key = (category, p)
                floors[key] = min(floors.get(key, points.get(p, 0)), points.get(p, 0))
        self.groups = groups
        self.floors = floors
        self.grouped = frozenset(c for _, c in groups)
        self._policies.clear()
        self.checked_at = time.monotonic()

    def apply(self, rule: RetentionRule) -> None:
        """A rule this process just wrote: effective here at once."""
        if rule.policy is None:
            self.rules.pop(rule.scope, None)
        else:
            self.rules[rule.scope] = rule
        self._policies.clear()

    def scope(self, stream: str) -> tuple[str, str] | None:
        """The scope of the rule that applies to `stream` (see `policy`), or None."""
        keys = [("stream", stream), ("category", category_of(stream))]
        if not stream.startswith("$"):
            keys.append(("store", ""))
        return next((key for key in keys if key in self.rules), None)

    def policy(self, stream: str) -> RetentionPolicy | None:
        """The policy that applies to `stream`: its own, its category's, or the store's."""
        try:
            return self._policies[stream]
        except KeyError:
            pass
        rules = self.rules
        category = category_of(stream)
        rule = rules.get(("stream", stream)) or rules.get(("category", category))
        if rule is None and not stream.startswith("$"):
            rule = rules.get(("store", ""))
        policy = None if rule is None else rule.policy
        if len(self._policies) > 100_000:
            self._policies.clear()
        self._policies[stream] = policy
        return policy


class RetentionView:
    """The rules at one instant, for one read or one scavenge.

    `hidden(event, head)` is the one decision: whether `event` is past its
    stream's policy and not protected by a consumer group (`head` is the
    stream's last version, needed only when `policy.needs_head`).
    """

    def __init__(self, cache: RetentionCache, now: float, partitions: int) -> None:
        self.cache = cache
        self.now = now
        self.partitions = partitions
        self._cutoffs: dict[float, datetime] = {}
        self.byte_cuts: dict[tuple[str, str], int] = {}
        """Scope -> the position below which `hard_max_bytes` deletes its events; set by
        the scavenger for its pass (reads do not know sizes)."""

    def cutoff(self, age: float) -> datetime:
        found = self._cutoffs.get(age)
        if found is None:
            found = self._cutoffs[age] = datetime.fromtimestamp(self.now - age, UTC)
        return found

    def policy(self, stream: str) -> RetentionPolicy | None:
        return self.cache.policy(stream)

    def past(
        self, policy: RetentionPolicy, event: RecordedEvent, head: int | None, deleted: bool = False
    ) -> bool:
        """Whether `event` is past `policy`, consumers aside (`deleted`: its stream is
        tombstoned)."""
        if deleted and policy.scavenge_deleted:
            return True
        version = event.version
        if policy.truncate_before is not None and version < policy.truncate_before:
            return True
        if head is not None:
            if policy.keep_latest and version < head:
                return True
            if policy.max_count is not None and version <= head - policy.max_count:
                return True
        return policy.max_age is not None and event.recorded_at < self.cutoff(policy.max_age)

    def hard(self, policy: RetentionPolicy, event: RecordedEvent) -> bool:
        """Whether `event` is past a hard cap, which overrides consumer protection."""
        if policy.hard_max_bytes is not None and self.byte_cuts:
            scope = self.cache.scope(event.stream)
            if scope is not None and event.position < self.byte_cuts.get(scope, 0):
                return True
        return policy.hard_max_age is not None and event.recorded_at < self.cutoff(
            policy.hard_max_age
        )

    def consumed(self, event: RecordedEvent) -> bool:
        """Whether every consumer group of the event's category checkpointed past it."""
        category = category_of(event.stream)
        if category not in self.cache.grouped:
            return True
        floor = self.cache.floors.get((category, partition_of(event.stream, self.partitions)), 0)
        return event.position <= floor

    def hidden(
        self, policy: RetentionPolicy, event: RecordedEvent, head: int | None, deleted: bool = False
    ) -> bool:
        if self.hard(policy, event):
            return True
        if not self.past(policy, event, head, deleted):
            return False
        return policy.even_if_unconsumed or self.consumed(event)
