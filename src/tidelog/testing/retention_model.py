"""The property-based model test of retention: rules, appends and scavenges interleave.

Subclass `RetentionModelSuite` under a name pytest collects and give it a
factory (as for `ModelSuite`). Hypothesis drives random sequences of appends,
rule changes (set and clear, on a stream, a category or the store) and
scavenges against the engine and against a plain Python model of the rules
(not another engine: the model is written from the documented semantics, so
the contract's own code is not its own oracle). After every step, every
stream reads, and the log reads, exactly as the model says:

- visible: versions from the larger of the rule's floor and what was deleted;
- deleted: a scavenge moves each covered stream's physical floor up to the
  rule's floor, never back, so relaxing a rule later shows only what was not
  deleted (NATS keeps each stream's last event: `keeps_last_event`).

The rules are count-based (`max_count`, `truncate_before`, `keep_latest`), so
no clock enters the model.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Awaitable
from typing import Any

import hypothesis.strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

import tidelog
from tidelog.retention import RetentionPolicy
from tidelog.testing.stateful import WAIT, model_settings

__all__ = ["RetentionModelSuite"]

STREAMS = ("order-1", "order-2", "price-1", "account-7")
USER_CATEGORIES = ("order", "price", "account")
SCOPES: tuple[tuple[str, str], ...] = (
    ("store", ""),
    ("category", "order"),
    ("category", "price"),
    ("stream", "account-7"),
    ("stream", "order-2"),
)

policies = st.one_of(
    st.builds(RetentionPolicy, max_count=st.integers(1, 4)),
    st.builds(RetentionPolicy, keep_latest=st.just(True)),
)


class RetentionModelSuite:
    """Random interleavings of rules, appends and scavenges; the engine must match the model."""

    keeps_last_event: bool = False
    max_examples: int = 25
    stateful_step_count: int = 25

    async def open_store(self, tmp_path: pathlib.Path) -> tidelog.Store:
        raise NotImplementedError

    def test_retention_agrees_with_the_model(self, tmp_path: pathlib.Path) -> None:
        run_state_machine_as_test(
            _machine(self, tmp_path),
            settings=model_settings(self.max_examples, self.stateful_step_count),
        )


def _machine(suite: RetentionModelSuite, tmp_path: pathlib.Path) -> type[RuleBasedStateMachine]:
    class RetentionAgreesWithModel(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.store: tidelog.Store | None = None
            try:
                self.store = self._run(suite.open_store(tmp_path))
            except BaseException:
                self.teardown()
                raise
            self.heads: dict[str, int] = {}
            """stream -> versions appended (the next version)."""
            self.floors: dict[str, int] = {}
            """stream -> the lowest version still stored."""
            self.log: list[tuple[str, int]] = []
            """(stream, version) of the user streams' events, in position order."""
            self.policies: dict[tuple[str, str], RetentionPolicy] = {}

        def _run(self, awaitable: Awaitable[Any]) -> Any:
            async def bounded() -> Any:
                async with asyncio.timeout(WAIT):
                    return await awaitable

            return self.loop.run_until_complete(bounded())

        def teardown(self) -> None:
            try:
                if self.store is not None:
                    self.loop.run_until_complete(self.store.close())
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

        # ---------------------------------------------------------- the model

        def policy(self, stream: str) -> RetentionPolicy | None:
            category = stream.split("-", 1)[0]
            for scope in (("stream", stream), ("category", category), ("store", "")):
                if scope in self.policies:
                    return self.policies[scope]
            return None

        def rule_floor(self, stream: str) -> int:
            policy = self.policy(stream)
            head = self.heads.get(stream, 0) - 1
            if policy is None:
                return 0
            floor = policy.truncate_before or 0
            if policy.keep_latest:
                floor = max(floor, head)
            if policy.max_count is not None:
                floor = max(floor, head - policy.max_count + 1)
            return floor

        def visible(self, stream: str) -> list[int]:
            low = max(self.floors.get(stream, 0), self.rule_floor(stream))
            return list(range(low, self.heads.get(stream, 0)))

        # ---------------------------------------------------------- steps

        @rule(stream=st.sampled_from(STREAMS), count=st.integers(1, 3))
        def append(self, stream: str, count: int) -> None:
            assert self.store is not None
            events = [tidelog.NewEvent(type="E") for _ in range(count)]
            result = self._run(self.store.append(stream, events))
            first = self.heads.get(stream, 0)
            assert result.version == first + count - 1
            self.heads[stream] = first + count
            self.log += [(stream, v) for v in range(first, first + count)]

        @rule(scope=st.sampled_from(SCOPES), policy=policies)
        def set_rule(self, scope: tuple[str, str], policy: RetentionPolicy) -> None:
            assert self.store is not None
            kind, name = scope
            where = {kind: name} if kind != "store" else {}
            self._run(self.store.set_retention(policy, **where))
            self.policies[scope] = policy

        @rule(stream=st.sampled_from(("account-7", "order-2")), before=st.integers(0, 8))
        def truncate(self, stream: str, before: int) -> None:
            assert self.store is not None
            policy = RetentionPolicy(truncate_before=before)
            self._run(self.store.set_retention(policy, stream=stream))
            self.policies[("stream", stream)] = policy

        @rule(scope=st.sampled_from(SCOPES))
        def clear(self, scope: tuple[str, str]) -> None:
            assert self.store is not None
            kind, name = scope
            where = {kind: name} if kind != "store" else {}
            self._run(self.store.set_retention(None, **where))
            self.policies.pop(scope, None)

        @rule()
        def scavenge(self) -> None:
            assert self.store is not None
            report = self._run(self.store.scavenge())
            assert report.ran
            deleted = 0
            for stream, head in self.heads.items():
                if self.policy(stream) is None:
                    continue
                cap = head - 1 if suite.keeps_last_event else head
                floor = max(self.floors.get(stream, 0), min(self.rule_floor(stream), cap))
                deleted += floor - self.floors.get(stream, 0)
                self.floors[stream] = floor
            assert report.deleted == deleted

        # ---------------------------------------------------------- checks

        @invariant()
        def reads_agree(self) -> None:
            assert self.store is not None
            store = self.store
            for stream in STREAMS:
                got = self._run(_versions(store.read_stream(stream)))
                assert got == self.visible(stream), stream
            logged = self._run(_pairs(store.read_all(categories=USER_CATEGORIES)))
            expected = [(s, v) for s, v in self.log if v in set(self.visible(s))]
            assert logged == expected

    return RetentionAgreesWithModel


async def _versions(events: Any) -> list[int]:
    return [e.version async for e in events]


async def _pairs(events: Any) -> list[tuple[str, int]]:
    return [(e.stream, e.version) async for e in events]
