"""The benchmark runner (`benchmarks/run.py`) loaded by path, for the benchmarks' smoke tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

RUN_PY = Path(__file__).resolve().parent.parent.parent / "benchmarks" / "run.py"


def load_runner(name: str) -> ModuleType:
    """`benchmarks/run.py` as module `name` (one name per test module: each loads its own)."""
    spec = importlib.util.spec_from_file_location(name, RUN_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module
