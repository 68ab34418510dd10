"""Smoke test of the `sse_fanout` workload (`benchmarks/workloads/fanout.py`) at tiny sizes.

Asserts the shape of the result and that every subscriber got every event in
order (the workload's own correctness), never a speed.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from support.bench import load_runner


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_runner("tidelog_bench_run_fanout")


@pytest.mark.slow
async def test_sse_fanout_delivers_every_event_to_every_subscriber(
    bench: ModuleType, tmp_path: Path
) -> None:
    result = await bench.run(["sqlite"], ["sse_fanout"], bench.TINY, True, workdir=tmp_path)
    entry = result["workloads"]["sqlite.sse_fanout"]
    assert "error" not in entry, entry
    assert entry["unit"] == "ms" and entry["goal"] and isinstance(entry["met"], bool)
    [(count, step)] = entry["steps"].items()
    assert int(count) == bench.TINY.fanout_subscribers[0] == step["subscribers"]
    for run in (step, entry["baseline_step"]):
        assert run["all_delivered"] and run["in_order"]
        assert run["fewest_delivered"] == run["events"] > 0
        assert run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
        rss = run["server_rss_mb"]
        assert rss["idle"] > 0 and rss["connected"] <= rss["peak"]
    assert entry["growth"][count]["p99_ms"] == step["p99_ms"]
    assert entry["growth"][count]["server_rss_peak_mb"] == step["server_rss_mb"]["peak"]
    assert (
        entry["value"] == step["p99_ms"] and entry["baseline"] == entry["baseline_step"]["p99_ms"]
    )
