"""`tidelog_group_desired_members`: the server's scaling signal for workers (issue #19).

The formula on its own, then the signal as the server computes it from a real
store: a group's lag is driven up and down with appends and commits, and the
rate comes from how far the checkpoints moved between refreshes. The clock is
the test's (`Metrics(clock=...)`), so nothing depends on how fast this
machine runs.
"""

from __future__ import annotations

import math
import pathlib

import pytest
from prometheus_client.parser import text_string_to_metric_families

import tidelog
from tidelog.errors import InvalidInput
from tidelog.server._config import Scaling, load_config
from tidelog.server._metrics import Metrics, desired_members

PARTITIONS = 4


@pytest.mark.parametrize(
    ("lag", "rate", "members", "expected"),
    [
        (0, 10.0, 3, 0),  # nothing to drain: the autoscaler keeps its minimum
        (0, None, 0, 0),
        (100, None, 0, 1),  # lag, nobody consuming yet: one member, to measure a rate
        (100, None, 3, 3),  # lag, no progress measured: more of a stalled handler won't help
        (599, 10.0, 1, 1),  # 10 events/s for 60 s drains 600
        (600, 10.0, 1, 1),
        (601, 10.0, 1, 2),
        (1800, 10.0, 1, 3),
        (10**6, 10.0, 1, PARTITIONS),  # never more members than partitions
        (10**6, None, 9, PARTITIONS),
    ],
)
def test_the_formula(lag: int, rate: float | None, members: int, expected: int) -> None:
    assert desired_members(lag, rate, members, PARTITIONS, 60.0) == expected


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


async def test_the_signal_follows_the_lag_and_the_measured_rate() -> None:
    now = 0.0
    metrics = Metrics(Scaling(drain_seconds=60.0, rate_window_seconds=1.0), clock=lambda: now)
    group = {"group": "billing", "category": "order"}

    def desired() -> float | None:
        return sample(metrics, "tidelog_group_desired_members", **group)

    async with tidelog.connect(f"memory://?partitions={PARTITIONS}") as store:
        positions: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}

        async def append(count: int) -> None:
            for _ in range(count):
                stream = f"order-{sum(map(len, positions.values()))}"
                result = await store.append(stream, [tidelog.NewEvent(type="Placed")])
                positions[tidelog.partition_of(stream, PARTITIONS)].append(result.position)

        membership = await store.join_group("billing", "order", "m1", lease=3600)
        done = dict.fromkeys(range(PARTITIONS), 0)

        async def consume(count: int) -> None:
            """Commit each partition's checkpoint past `count` more events in all."""
            left = count
            while left:
                for p in range(PARTITIONS):
                    if left and done[p] < len(positions[p]):
                        done[p] += 1
                        left -= 1
            for p in range(PARTITIONS):
                if done[p]:
                    await store.commit(
                        "billing",
                        "order",
                        p,
                        positions[p][done[p] - 1],
                        member="m1",
                        generation=membership.generation,
                    )

        # t=0: a lag of 1000 and no rate measured yet: the one member there is
        await append(1000)
        await metrics.refresh_lag(store)
        assert sample(metrics, "tidelog_group_members", **group) == 1
        assert desired() == 1

        # t=10: the member handled 100 events in 10 s (10/s): 900 left take 90 s > 60 s
        now = 10.0
        await consume(100)
        await metrics.refresh_lag(store)
        assert sample(metrics, "tidelog_group_consumed_events_per_second", **group) == 10.0
        assert desired() == math.ceil(900 / (10 * 60)) == 2

        # t=20: a burst of 5000 more, still 10/s: the formula says 10, the partitions 4
        now = 20.0
        await append(5000)
        await consume(100)
        await metrics.refresh_lag(store)
        assert math.ceil(5800 / (10 * 60)) == 10
        assert desired() == PARTITIONS

        # t=30: 5500 handled in 10 s (550/s: the handler got faster); 300 left, which
        # one member drains in well under 60 s: the signal falls
        now = 30.0
        await consume(5500)
        await metrics.refresh_lag(store)
        assert desired() == 1
        now = 40.0
        await consume(300)
        await metrics.refresh_lag(store)
        assert sample(metrics, "tidelog_consumer_lag_events", partition="0", **group) == 0
        assert desired() == 0


def test_scaling_is_configured_in_the_config_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tidelog.toml"
    path.write_text("[scaling]\ndrain_seconds = 300\n")
    config = load_config(path, environ={})
    assert config.scaling == Scaling(drain_seconds=300.0, rate_window_seconds=120.0)
    path.write_text("[scaling]\ndrain_seconds = 0\n")
    with pytest.raises(InvalidInput, match="drain_seconds"):
        load_config(path, environ={})
