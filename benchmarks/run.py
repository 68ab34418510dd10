"""tidelog benchmarks: each workload measured beside a plain-driver baseline in the same run.

    python benchmarks/run.py [--quick] [--engines sqlite,postgres,nats,memory]
                             [--workloads append_batch,replay_all] [--json OUT.json]
                             [--repeat N] [--timeout SECONDS] [--scale-events N]

Prints one JSON document (and writes it to `--json`):

    {"workloads": {"sqlite.append_batch": {"value": ..., "unit": "events/s",
                   "baseline": ..., "ratio": ..., "goal": ">= 1.0", "met": true, ...},
                   "postgres.append_batch": {"skipped": "reason"}, ...},
     "meta": {"quick": false, "python": ..., "sizes": {...}, "engines": {...}}}

Keys are `ENGINE.WORKLOAD`. `ratio` is always `value / baseline`: for a
throughput higher is better, for a latency lower is better. A missed goal or a
failing workload never fails the run (the entry then carries `"met": false` or
`"error"`); CI runs `--quick` only so that this code cannot rot.

Baselines are measured in the same run and bracket the engine (half before,
half after), so a change of machine load weighs on both sides alike; with
`--repeat` the median run is kept.

This module is the runner (arguments, repeats, judging against the goals,
the JSON document); the engines under test are in `backends.py`, the
workloads and their registry in `workloads/` (adding one: see its
`__init__.py`), the sizes in `common.py`.

See benchmarks/README.md for the exact definitions and the baselines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script, or loaded by path (the tests)
    sys.path.append(str(Path(__file__).resolve().parent.parent))

import tidelog
from benchmarks.backends import BACKENDS, Backend
from benchmarks.common import FULL, QUICK, TINY, Sizes, log
from benchmarks.workloads import WORKLOADS, Workload
from benchmarks.workloads.store import percentile

__all__ = [
    "BACKENDS",
    "FULL",
    "QUICK",
    "TINY",
    "WORKLOADS",
    "Backend",
    "Sizes",
    "Workload",
    "main",
    "percentile",
    "run",
]


def judge(entry: dict[str, Any], workload: Workload, threshold: float) -> None:
    """Add `ratio`, `goal` and `met` to a workload's result."""
    if entry.get("baseline"):
        entry["ratio"] = round(entry["value"] / entry["baseline"], 3)
    else:
        entry["ratio"] = None
    got = entry.get(workload.goal_metric)
    entry["goal"] = (
        f"{workload.goal_op} {threshold}"
        if workload.goal_metric == "ratio"
        else f"{workload.goal_op} {threshold} {entry['unit']}"
    )
    if got is None:
        entry["met"] = False
    elif workload.goal_op == ">=":
        entry["met"] = got >= threshold
    else:
        entry["met"] = got < threshold
    if entry.get("all_goals_met") is False:  # a workload with several goals (`goals`)
        entry["met"] = False


async def measure(
    backend: Backend, workload: Workload, sizes: Sizes, repeat: int, limit: float
) -> dict[str, Any]:
    """Run `workload` `repeat` times; keep the median run by the goal's metric.

    A run that raises or outlasts `limit` seconds makes the entry an
    `{"error": ...}` (the benchmark goes on with the next workload).
    """
    threshold = backend.goals.get(workload.name, workload.goal)
    runs: list[dict[str, Any]] = []
    if workload.once:
        repeat = 1
    for _ in range(repeat):
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                entry = await workload.run(backend, sizes)
        except Exception as exc:  # a broken workload is reported, not fatal
            error = f"timed out after {limit} s" if deadline.expired() else repr(exc)
            log(f"{backend.name}.{workload.name} failed: {error}")
            return {"error": error}
        judge(entry, workload, threshold)
        runs.append(entry)
    runs.sort(key=lambda e: e[workload.goal_metric] or 0)
    chosen = runs[len(runs) // 2]
    if repeat > 1:
        chosen["runs"] = [e[workload.goal_metric] for e in runs]
    return chosen


def _workdir_root() -> Path:
    """A directory on a real disk: fsync on tmpfs would measure nothing."""
    for candidate in (os.environ.get("TIDELOG_BENCH_DIR"), tempfile.gettempdir(), os.getcwd()):
        if candidate and not _is_tmpfs(candidate):
            return Path(candidate)
    return Path.cwd()


def _is_tmpfs(path: str) -> bool:
    try:
        out = subprocess.run(
            ["stat", "-f", "-c", "%T", path], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return False
    return out in {"tmpfs", "ramfs"}


async def run(
    engines: Sequence[str],
    workloads: Sequence[str],
    sizes: Sizes,
    quick: bool,
    workdir: Path | None = None,
    repeat: int = 1,
    limit_seconds: float = 600.0,
) -> dict[str, Any]:
    """Run `workloads` on each of `engines`; the result document (see the module docstring)."""
    results: dict[str, Any] = {}
    meta: dict[str, Any] = {
        "quick": quick,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "tidelog": tidelog.__version__,
        "sizes": asdict(sizes),
        "repeat": repeat,
        "timeout_seconds": limit_seconds,
        "ratio": "value / baseline (throughput: higher is better; latency: lower is better)",
        "engines": {},
    }
    root = Path(tempfile.mkdtemp(prefix="tidelog-bench-", dir=workdir or _workdir_root()))
    meta["workdir_fs"] = "tmpfs" if _is_tmpfs(str(root)) else "disk"
    try:
        for engine in engines:
            backend = BACKENDS[engine]()
            backend.replay_page = sizes.replay_page
            reason = await backend.setup(root)
            if reason is not None:
                log(f"{engine}: skipped ({reason})")
                meta["engines"][engine] = {"skipped": reason}
                for w in workloads:
                    results[f"{engine}.{w}"] = {"skipped": reason}
                continue
            try:
                for w in workloads:
                    workload = WORKLOADS[w]
                    log(f"{engine}.{w} ...")
                    t = time.perf_counter()
                    entry = await measure(backend, workload, sizes, repeat, limit_seconds)
                    entry["wall_seconds"] = round(time.perf_counter() - t, 2)
                    results[f"{engine}.{w}"] = entry
                    log(f"{engine}.{w}: {json.dumps(entry)}")
            finally:
                # After the runs, so that settings observed on the live stores are included.
                meta["engines"][engine] = backend.describe()
                await backend.teardown()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"workloads": results, "meta": meta}


def _names(value: str, known: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return names


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (CI smoke run)")
    parser.add_argument(
        "--engines", default="sqlite", help=f"comma-separated, of: {', '.join(BACKENDS)}"
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, of: {', '.join(WORKLOADS)}",
    )
    parser.add_argument("--json", metavar="OUT.json", help="also write the result here")
    parser.add_argument(
        "--repeat",
        type=int,
        help="runs per workload, the median is kept (default: 3, or 1 with --quick)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per workload run (default 600)"
    )
    parser.add_argument(
        "--scale-events",
        type=int,
        metavar="N",
        help="the large size of scale_curve (default 10,000,000; --quick: 50,000)",
    )
    args = parser.parse_args(argv)
    try:
        engines = _names(args.engines, list(BACKENDS), "engines")
        workloads = _names(args.workloads, list(WORKLOADS), "workloads")
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    repeat = args.repeat or (1 if args.quick else 3)
    if repeat < 1:
        parser.error("--repeat must be >= 1")
    sizes = QUICK if args.quick else FULL
    if args.scale_events is not None:
        if args.scale_events <= sizes.scale_small:
            parser.error(f"--scale-events must be above {sizes.scale_small}")
        sizes = replace(sizes, scale_events=args.scale_events)
    # SIGTERM unwinds like Ctrl-C, so the `finally` blocks stop a private
    # nats-server and drop the PostgreSQL schemas.
    signal.signal(signal.SIGTERM, _interrupt)
    result = asyncio.run(
        run(engines, workloads, sizes, args.quick, repeat=repeat, limit_seconds=args.timeout)
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
