"""Smoke test of the scheduling workloads (`benchmarks/workloads/scheduling.py`) at tiny sizes.

Asserts the shape of the results, never a speed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

RUN_PY = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
WORKLOADS = ("scheduled_lateness", "scheduled_memory")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tidelog_bench_run_scheduling", RUN_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
async def test_scheduling_workloads_run_and_report(bench: ModuleType, tmp_path: Path) -> None:
    result = await bench.run(["sqlite"], WORKLOADS, bench.TINY, True, workdir=tmp_path)
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
