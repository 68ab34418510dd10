"""Smoke test of the consumer workloads (`benchmarks/workloads/consumers.py`) at tiny sizes.

Asserts the shape of the results, never a speed.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from support.bench import load_runner

WORKLOADS = ("group_throughput", "end_to_end_latency", "group_scaling")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_runner("tidelog_bench_run_consumers")


@pytest.mark.slow
async def test_consumer_workloads_run_and_report(bench: ModuleType, tmp_path: Path) -> None:
    result = await bench.run(["sqlite"], WORKLOADS, bench.TINY, True, workdir=tmp_path)
    throughput = result["workloads"]["sqlite.group_throughput"]
    assert "error" not in throughput, throughput
    assert set(throughput["by_workers"]) == {"1", "2", "4"}
    assert all(rate > 0 for rate in throughput["by_workers"].values())
    assert throughput["baseline"] > 0
    assert throughput["unit"] == "events/s"
    latency = result["workloads"]["sqlite.end_to_end_latency"]
    assert "error" not in latency, latency
    assert latency["unit"] == "ms"
    assert latency["p50_ms"] <= latency["p99_ms"]
    scaling = result["workloads"]["sqlite.group_scaling"]
    assert "error" not in scaling, scaling
    assert set(scaling["by_processes"]) == {"trivial", "io"}
    for runs in scaling["by_processes"].values():
        assert set(runs) == {"1", "2"}  # TINY, like --quick: 1 and 2 processes
        assert all(r["rate"] > 0 and r["handled_twice"] == 0 for r in runs.values())
    assert {g["goal"].split(" >=")[0] for g in scaling["goals"]} == {"io 2/1", "trivial 2/1"}
    assert scaling["all_goals_met"] == all(g["met"] for g in scaling["goals"])
    for entry in (throughput, latency, scaling):
        assert isinstance(entry["met"], bool)
        assert entry["goal"]
