"""Smoke test of benchmarks/run.py: every workload runs end to end at tiny sizes.

It asserts the shape of the result document, never a speed: timing varies with
the machine, and the benchmark's goals are reported, not enforced.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

RUN_PY = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
CORE = ("append_batch", "append_single", "replay_all", "subscribe_latency")
"""The store workloads run here; workloads other areas register are smoke-tested by them."""


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tidelog_bench_run", RUN_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


def _engine_under_test() -> str:
    """The SQLite engine once it exists; the memory engine keeps the harness honest before."""
    return "sqlite" if importlib.util.find_spec("tidelog.engines.sqlite") else "memory"


async def test_every_workload_runs_and_reports(bench: ModuleType, tmp_path: Path) -> None:
    engine = _engine_under_test()
    result = await bench.run([engine], CORE, bench.TINY, True, workdir=tmp_path)

    assert result["meta"]["sizes"]["batch_events"] == bench.TINY.batch_events
    assert result["meta"]["engines"][engine]
    for name in CORE:
        entry = result["workloads"][f"{engine}.{name}"]
        assert "error" not in entry, entry
        assert entry["value"] > 0 or name == "subscribe_latency"
        assert entry["baseline"] > 0 or name == "subscribe_latency"
        assert isinstance(entry["met"], bool)
        assert entry["goal"]
        assert entry["unit"]
    assert result["workloads"][f"{engine}.append_batch"]["events"] == bench.TINY.batch_events
    leftover = await asyncio.to_thread(lambda: list(tmp_path.iterdir()))
    assert leftover == [], "the benchmark must remove its database files"


async def test_unavailable_engine_is_recorded_as_skipped(bench: ModuleType, tmp_path: Path) -> None:
    class Missing(bench.Backend):  # type: ignore[name-defined,misc]
        name = "missing"

        async def setup(self, workdir: Path) -> str | None:
            return "not installed here"

    bench.BACKENDS["missing"] = Missing
    try:
        result = await bench.run(["missing"], ["append_batch"], bench.TINY, True, workdir=tmp_path)
    finally:
        del bench.BACKENDS["missing"]
    assert result["workloads"]["missing.append_batch"] == {"skipped": "not installed here"}
    assert result["meta"]["engines"]["missing"] == {"skipped": "not installed here"}


def test_every_registered_workload_is_well_formed(bench: ModuleType) -> None:
    for name, workload in bench.WORKLOADS.items():
        assert workload.name == name
        assert callable(workload.run)
        assert workload.goal_metric in ("ratio", "value")
        assert workload.goal_op in (">=", "<")


def test_unknown_engine_is_a_usage_error(bench: ModuleType) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["--engines", "oracle"])
    assert exc.value.code == 2


def test_percentile_is_nearest_rank(bench: ModuleType) -> None:
    values = list(range(1, 101))
    assert bench.percentile(values, 50) == 50
    assert bench.percentile(values, 99) == 99
    assert bench.percentile(values, 100) == 100
    assert bench.percentile([7.0], 99) == 7.0


SCHEDULING = ("scheduled_lateness", "scheduled_memory")
"""Scheduled delivery's workloads (#16), smoke-tested here with the runner loaded once."""


@pytest.mark.slow
async def test_scheduling_workloads_run_and_report(bench: ModuleType, tmp_path: Path) -> None:
    result = await bench.run(["sqlite"], SCHEDULING, bench.TINY, True, workdir=tmp_path)
    lateness = result["workloads"]["sqlite.scheduled_lateness"]
    assert "error" not in lateness, lateness
    assert lateness["events"] == bench.TINY.scheduled_events
    assert lateness["unit"] == "ms (p99)"
    assert lateness["p50_ms"] <= lateness["p99_ms"] <= lateness["max_ms"]
    assert lateness["delivered_early"] == 0  # never visible before its due time
    memory = result["workloads"]["sqlite.scheduled_memory"]
    assert "error" not in memory, memory
    assert memory["pending"] == bench.TINY.scheduled_pending
    for entry in (lateness, memory):
        assert isinstance(entry["met"], bool)
        assert entry["goal"]


async def test_scale_curve_reports_both_sizes(bench: ModuleType, tmp_path: Path) -> None:
    """The #17 store-growth workload, at tiny sizes: every figure at both sizes, run once."""
    if not importlib.util.find_spec("tidelog.engines.sqlite"):
        pytest.skip("needs the SQLite engine")
    result = await bench.run(
        ["sqlite"], ["scale_curve"], bench.TINY, True, workdir=tmp_path, repeat=3
    )
    entry = result["workloads"]["sqlite.scale_curve"]
    assert "error" not in entry, entry
    assert "runs" not in entry  # `once`: a large fill is never repeated
    assert entry["small"]["events"] < entry["large"]["events"]
    assert entry["streams"] == bench.TINY.scale_events // 100
    for point in (entry["small"], entry["large"]):
        for figure in ("append_rate", "read_p99_ms", "replay_rate", "bytes_per_event"):
            assert point[figure] > 0, figure
        assert point["subscribe_rss_mb"] > 0
        assert point["group_rss_mb"] > 0
    assert entry["baseline_bytes_per_event"] > 0
    assert set(entry["checks"].values()) <= {True, False}
    leftover = await asyncio.to_thread(lambda: list(tmp_path.iterdir()))
    assert leftover == []
