"""The conformance suite of retention: every rule, on every engine.

Part of `EngineSuite` (see `tidelog.testing.conformance`). Time-based rules are
tested by moving the store's clock (`shift_clock`), never by waiting; the
suite asserts no timing.
"""

from __future__ import annotations

import time

import pytest

import tidelog
from tidelog.engines._kit.retention import (
    LOST_EVENTS_TYPE,
    RETENTION_STREAM,
    SCAVENGER_GROUP,
    SYSTEM_STREAM,
)
from tidelog.retention import RetentionPolicy, RetentionRule
from tidelog.testing.conformance import (
    LONG_LEASE,
    SuiteBase,
    all_positions,
    collect,
    ev,
    stream_versions,
    subscribed,
    take,
)

__all__ = ["RetentionSuite"]


class RetentionSuite(SuiteBase):
    keeps_last_event: bool = False
    """True where the scavenger must keep each stream's last event physically (NATS:
    the stream's version lives in its last message). Reads are the same everywhere."""
    supports_start_stream_at: bool = True
    """False: `start_stream_at` raises `NotSupported` and writes nothing (NATS: a
    stream's version lives in its last message; remote: no HTTP route for it)."""

    def shift_clock(self, store: tidelog.Store, seconds: float) -> None:
        """Move the clock retention decides with `seconds` ahead (the engine's `_now`)."""
        store._now = lambda: time.time() + seconds  # type: ignore[method-assign]

    async def _fill(self, store: tidelog.Store, stream: str, count: int) -> None:
        await store.append(stream, [ev(data=str(i).encode()) for i in range(count)])

    async def test_rules_round_trip_resolve_and_clear(self, store: tidelog.Store) -> None:
        assert await store.retention() == []
        await store.set_retention(RetentionPolicy(max_age=60))
        await store.set_retention(RetentionPolicy(keep_latest=True), category="price")
        await store.set_retention(RetentionPolicy(truncate_before=3), stream="order-1")
        rules = await store.retention()
        assert [(r.kind, r.name) for r in rules] == [
            ("category", "price"),
            ("store", ""),
            ("stream", "order-1"),
        ]
        assert (await store.retention("order-1"))[0].policy == RetentionPolicy(truncate_before=3)
        assert (await store.retention("price-eur"))[0].kind == "category"
        assert (await store.retention("order-2"))[0].kind == "store"
        assert await store.retention("$dlq-x") == []  # store rules skip system streams
        await store.set_retention(None, category="price")
        assert (await store.retention("price-eur"))[0].kind == "store"
        # The rules are events of $retention: they travel with the store.
        assert len(await stream_versions(store, RETENTION_STREAM)) == 4

    @pytest.mark.parametrize(
        ("policy", "scope"),
        [
            ({"max_age": 0}, {}),
            ({"max_age": -1}, {}),
            ({"max_age": float("nan")}, {}),
            ({"max_count": 0}, {}),
            ({"truncate_before": -1}, {"stream": "order-1"}),
            ({"truncate_before": 2}, {"category": "order"}),
            ({"keep_latest": True}, {"stream": "$retention"}),
            ({"keep_latest": True}, {"stream": "bad name"}),
            ({"keep_latest": True}, {"category": "order-1"}),
            ({"keep_latest": True}, {"stream": "a", "category": "b"}),
            ({}, {}),
        ],
    )
    async def test_invalid_rules_are_refused_and_change_nothing(
        self, store: tidelog.Store, policy: dict[str, object], scope: dict[str, str]
    ) -> None:
        with pytest.raises(tidelog.InvalidInput):
            await store.set_retention(RetentionPolicy(**policy), **scope)  # type: ignore[arg-type]
        assert await store.retention() == []
        assert await stream_versions(store, RETENTION_STREAM) == []

    async def test_max_count_hides_at_once_and_the_scavenger_deletes(
        self, store: tidelog.Store
    ) -> None:
        await self._fill(store, "order-1", 5)
        await self._fill(store, "invoice-1", 2)
        await store.set_retention(RetentionPolicy(max_count=2), category="order")
        assert await stream_versions(store, "order-1") == [3, 4]
        assert await stream_versions(store, "order-1", backwards=True, from_version=-1) == [4, 3]
        assert await stream_versions(store, "order-1", from_version=1, limit=1) == [3]
        assert await all_positions(store, categories=["order", "invoice"]) == [4, 5, 6, 7]
        page = await store.read_page(0, ["order"], None, 1, None)
        assert [e.version for e in page] == [3]
        assert await store.count_events(0, ["order"]) == 2
        # Appends keep counting from the real head, and push older events out.
        result = await store.append("order-1", [ev()], expected_version=4)
        assert result.version == 5
        assert await stream_versions(store, "order-1") == [4, 5]
        report = await store.scavenge()
        assert report.ran
        assert report.deleted >= 4
        # Gone for good: clearing the rule does not bring them back.
        await store.set_retention(None, category="order")
        assert await stream_versions(store, "order-1") == [4, 5]
        assert await stream_versions(store, "invoice-1") == [0, 1]

    async def test_count_events_agrees_with_reads_under_count_rules(
        self, store: tidelog.Store
    ) -> None:
        """`count_events` counts without reading where it can (version-based rules, no
        group to protect): it must agree with `read_all` under every filter, before and
        after a scavenge, and once a group, a tombstone and an age rule take it back to
        reading."""
        for _ in range(4):
            for n in range(1, 7):
                await self._fill(store, f"order-{n}", 1)
            await self._fill(store, "price-x", 1)
        await self._fill(store, "invoice-1", 2)
        await self._fill(store, "account-1", 5)
        await store.set_retention(RetentionPolicy(max_count=2), category="order")
        await store.set_retention(RetentionPolicy(keep_latest=True), category="price")
        await store.set_retention(RetentionPolicy(truncate_before=3), stream="account-1")
        await store.set_retention(RetentionPolicy(max_count=1))

        async def agree() -> None:
            for categories in (None, ["order"], ["order", "price", "account"]):
                for partitions in (None, [0], [1, 2]):
                    for start in (0, 9, 25):
                        read = await collect(
                            store.read_all(start, categories, partitions=partitions)
                        )
                        counted = await store.count_events(start, categories, partitions)
                        assert counted == len(read), (categories, partitions, start)

        await agree()
        assert await store.count_events(0, ["order"]) == 12
        await store.scavenge()
        await agree()
        await self._fill(store, "order-1", 2)
        m = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        await store.retention()  # the group is seen now, not at the next refresh
        await agree()  # from beyond what the group read, counted without reading
        partition = tidelog.partition_of("order-1", store.partition_count)
        await store.commit("billing", "order", partition, 12, member="m1", generation=m.generation)
        await store.retention()
        await agree()
        await store.delete_stream("price-x")
        await store.set_retention(RetentionPolicy(max_age=3600), category="invoice")
        self.shift_clock(store, 7200)
        await agree()

    async def test_truncate_before_drops_what_a_snapshot_covers(self, store: tidelog.Store) -> None:
        await self._fill(store, "account-7", 6)
        await store.set_retention(RetentionPolicy(truncate_before=4), stream="account-7")
        assert await stream_versions(store, "account-7") == [4, 5]
        assert await stream_versions(store, "account-7", from_version=2, limit=1) == [4]
        await self._fill(store, "account-8", 2)  # another stream of the category is untouched
        await store.scavenge()
        await store.set_retention(None, stream="account-7")
        assert await stream_versions(store, "account-7") == [4, 5]
        assert await stream_versions(store, "account-8") == [0, 1]

    async def test_keep_latest_is_a_compacted_topic(self, store: tidelog.Store) -> None:
        for _ in range(3):
            await self._fill(store, "price-eur", 1)
            await self._fill(store, "price-usd", 1)
        await store.set_retention(RetentionPolicy(keep_latest=True), category="price")
        latest = await collect(store.read_all(categories=["price"]))
        assert [(e.stream, e.version) for e in latest] == [("price-eur", 2), ("price-usd", 2)]
        await store.scavenge()
        await store.set_retention(None, category="price")
        assert await stream_versions(store, "price-eur") == [2]
        assert await stream_versions(store, "price-usd") == [2]

    async def test_max_age_and_positions_never_reused(self, store: tidelog.Store) -> None:
        await self._fill(store, "order-1", 3)
        head = await store.last_position()
        await store.set_retention(RetentionPolicy(max_age=3600))
        assert await stream_versions(store, "order-1") == [0, 1, 2]
        self.shift_clock(store, 7200)
        assert await stream_versions(store, "order-1") == []
        assert await all_positions(store, categories=["order"]) == []
        report = await store.scavenge()
        assert report.deleted == (2 if self.keeps_last_event else 3)
        assert await store.last_position() >= head
        self.shift_clock(store, 0)
        again = await store.append("order-1", [ev()], expected_version=2)
        assert (again.version, again.position > head) == (3, True)
        # (The clock went back: an event hidden but not deleted shows again.)
        kept = [2, 3] if self.keeps_last_event else [3]
        assert await stream_versions(store, "order-1") == kept
        # The oldest event kept is now the rule itself (an event of $retention).
        first = await store.first_position()
        assert first == head if self.keeps_last_event else first > head

    async def test_the_most_specific_scope_wins_and_system_streams_are_spared(
        self, store: tidelog.Store
    ) -> None:
        await self._fill(store, "order-1", 3)
        await self._fill(store, "order-2", 3)
        await self._fill(store, "$dlq-billing", 3)
        await store.set_retention(RetentionPolicy(max_count=1))
        await store.set_retention(RetentionPolicy(max_count=2), category="order")
        await store.set_retention(RetentionPolicy(truncate_before=0), stream="order-2")
        assert await stream_versions(store, "order-1") == [1, 2]
        assert await stream_versions(store, "order-2") == [0, 1, 2]
        assert await stream_versions(store, "$dlq-billing") == [0, 1, 2]
        await store.scavenge()
        assert await stream_versions(store, "$dlq-billing") == [0, 1, 2]
        assert len(await store.retention()) == 3  # $retention itself is never aged out

    async def test_unconsumed_events_are_kept_until_the_group_checkpoints(
        self, store: tidelog.Store
    ) -> None:
        m = await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        await self._fill(store, "order-1", 4)
        events = await collect(store.read_stream("order-1"))
        partition = tidelog.partition_of("order-1", store.partition_count)
        await store.set_retention(RetentionPolicy(max_count=1), category="order")
        assert await stream_versions(store, "order-1") == [0, 1, 2, 3]
        await store.commit(
            "billing", "order", partition, events[1].position, member="m1", generation=m.generation
        )
        await store.scavenge()
        assert await stream_versions(store, "order-1") == [2, 3]
        await store.set_retention(None, category="order")
        assert await stream_versions(store, "order-1") == [2, 3]

    async def test_even_if_unconsumed_deletes_and_names_the_group(
        self, store: tidelog.Store
    ) -> None:
        await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        await self._fill(store, "order-1", 3)
        policy = RetentionPolicy(max_count=1, even_if_unconsumed=True)
        await store.set_retention(policy, category="order")
        assert await stream_versions(store, "order-1") == [2]
        report = await store.scavenge()
        assert report.lost == 2
        lost = await collect(store.read_stream(SYSTEM_STREAM))
        assert [e.type for e in lost] == [LOST_EVENTS_TYPE]
        assert b'"group":"billing"' in lost[0].data
        assert b'"count":2' in lost[0].data
        assert store.retention_stats["lost"] >= 2 or not store.applies_retention

    async def test_hard_max_age_overrides_consumers(self, store: tidelog.Store) -> None:
        await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        await self._fill(store, "order-1", 2)
        await store.set_retention(RetentionPolicy(max_age=60, hard_max_age=3600), category="order")
        self.shift_clock(store, 120)
        assert await stream_versions(store, "order-1") == [0, 1]  # unconsumed: kept
        self.shift_clock(store, 7200)
        assert await stream_versions(store, "order-1") == []
        assert (await store.scavenge()).lost >= 1

    async def test_hard_max_bytes_deletes_the_oldest_even_unconsumed(
        self, store: tidelog.Store
    ) -> None:
        await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        for i in range(10):
            await store.append(f"order-{i % 2}", [ev(data=b"x" * 100, metadata={"k": "v"})])
        await self._fill(store, "invoice-1", 3)  # another category: not in the scope
        positions = await all_positions(store, categories=["order"])
        # An event weighs its data and its metadata as compact JSON: 100 + len('{"k":"v"}').
        await store.set_retention(RetentionPolicy(hard_max_bytes=4 * 109 + 8), category="order")
        assert await all_positions(store, categories=["order"]) == positions  # not yet
        report = await store.scavenge()
        assert await all_positions(store, categories=["order"]) == positions[-4:]
        assert report.deleted == 6
        assert report.lost == 6
        lost = await collect(store.read_stream(SYSTEM_STREAM))
        assert [e.type for e in lost] == [LOST_EVENTS_TYPE] * 2
        assert all(b'"group":"billing"' in e.data and b'"count":3' in e.data for e in lost)
        assert store.retention_stats["lost"] >= 6 or not store.applies_retention
        assert await stream_versions(store, "invoice-1") == [0, 1, 2]
        # Under the cap, nothing more goes.
        assert (await store.scavenge()).deleted == 0
        with pytest.raises(tidelog.InvalidInput):
            RetentionPolicy(hard_max_bytes=0)

    async def test_reads_from_a_scavenged_position_start_at_the_oldest_kept(
        self, store: tidelog.Store
    ) -> None:
        await self._fill(store, "order-1", 4)
        await store.set_retention(RetentionPolicy(truncate_before=3), stream="order-1")
        await store.scavenge()
        await store.set_retention(None, stream="order-1")
        kept = await collect(store.read_stream("order-1"))
        assert [e.version for e in kept] == [3]
        assert await store.first_position() == kept[0].position
        assert await all_positions(store, categories=["order"]) == [kept[0].position]
        async with subscribed(store, from_position=1, categories=["order"]) as sub:
            await store.append("order-1", [ev()])
            got = await take(sub, 2)
        assert [e.version for e in got] == [3, 4]

    async def test_scavenging_is_leased_one_scavenger_at_a_time(self, store: tidelog.Store) -> None:
        await self._fill(store, "order-1", 3)
        await store.set_retention(RetentionPolicy(max_count=1), category="order")
        # Another process holds the lease: "0other" sorts before "scavenger-...".
        await store.join_group(SCAVENGER_GROUP, RETENTION_STREAM, "0other", lease=LONG_LEASE)
        report = await store.scavenge()
        assert not report.ran
        assert report.deleted == 0
        await store.leave_group(SCAVENGER_GROUP, RETENTION_STREAM, "0other")
        assert (await store.scavenge()).deleted == 2

    async def test_tombstoned_streams_are_scavenged_keeping_the_tombstone(
        self, store: tidelog.Store
    ) -> None:
        await self._fill(store, "order-1", 3)
        await self._fill(store, "order-2", 2)
        await store.delete_stream("order-1")
        kept = await all_positions(store, categories=["order"])
        await store.set_retention(RetentionPolicy(scavenge_deleted=True), category="order")
        hidden = await collect(store.read_all(categories=["order"]))
        assert [e.stream for e in hidden] == ["order-2", "order-2"]  # hidden at once
        assert (await store.scavenge()).deleted == 3
        await store.set_retention(None, category="order")
        assert await all_positions(store, categories=["order"]) == kept[3:]
        with pytest.raises(tidelog.StreamDeleted):
            await store.append("order-1", [ev()])
        infos = [i async for i in store.list_streams("order")]
        assert [(i.name, i.deleted) for i in infos] == [("order-1", True), ("order-2", False)]

    async def test_tombstoned_streams_can_be_forgotten(self, store: tidelog.Store) -> None:
        await self._fill(store, "order-1", 3)
        await store.delete_stream("order-1")
        policy = RetentionPolicy(scavenge_deleted=True, keep_tombstone=False)
        await store.set_retention(policy, category="order")
        assert (await store.scavenge()).deleted == 3
        assert [i.name async for i in store.list_streams("order")] == []
        again = await store.append("order-1", [ev()], tidelog.NO_STREAM)
        assert again.version == 0
        assert await stream_versions(store, "order-1") == [0]

    async def test_a_tombstoned_stream_waits_for_its_consumers(self, store: tidelog.Store) -> None:
        await store.join_group("billing", "order", "m1", lease=LONG_LEASE)
        await self._fill(store, "order-1", 2)
        await store.delete_stream("order-1")
        await store.set_retention(RetentionPolicy(scavenge_deleted=True), category="order")
        assert len(await all_positions(store, categories=["order"])) == 2  # unconsumed
        assert (await store.scavenge()).deleted == 0

    async def test_rules_are_values_of_the_public_type(self, store: tidelog.Store) -> None:
        rule = await store.set_retention(RetentionPolicy(max_age=5), category="order")
        assert rule == RetentionRule(
            kind="category", name="order", policy=RetentionPolicy(max_age=5)
        )

    # ------------------------------------------------------------ start_stream_at

    async def test_start_stream_at_leaves_what_a_scavenge_leaves(
        self, store: tidelog.Store
    ) -> None:
        """An empty stream whose versions below are gone: appends go on from there."""
        if not self.supports_start_stream_at:
            with pytest.raises(tidelog.NotSupported):
                await store.start_stream_at("order-1", 5)
            assert [i.name async for i in store.list_streams()] == []
            return
        await store.start_stream_at("order-1", 5)
        assert await stream_versions(store, "order-1") == []
        with pytest.raises(tidelog.WrongExpectedVersion):
            await store.append("order-1", [ev()], tidelog.NO_STREAM)
        assert (await store.append("order-1", [ev()], expected_version=4)).version == 5
        assert await stream_versions(store, "order-1") == [5]

    async def test_start_stream_at_leaves_a_stream_that_exists_alone(
        self, store: tidelog.Store
    ) -> None:
        await self._fill(store, "order-1", 2)
        await store.start_stream_at("order-2", 0)  # version 0: nothing to start
        if self.supports_start_stream_at:
            await store.start_stream_at("order-1", 7)
        assert await stream_versions(store, "order-1") == [0, 1]
        assert (await store.append("order-1", [ev()], expected_version=1)).version == 2
        assert [i.name async for i in store.list_streams("order")] == ["order-1"]

    async def test_start_stream_at_refuses_bad_input(self, store: tidelog.Store) -> None:
        for version in (-1, True, 1.5, "3"):
            with pytest.raises(tidelog.InvalidInput):
                await store.start_stream_at("order-1", version)  # type: ignore[arg-type]
        with pytest.raises(tidelog.InvalidStreamName):
            await store.start_stream_at("../x", 3)
        assert [i.name async for i in store.list_streams()] == []
