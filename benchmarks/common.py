"""What the backends, the workloads and the runner share: the sizes, and the progress log."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does. `FULL` are the issue's definitions."""

    batch_events: int = 200_000
    batch_streams: int = 1_000
    batch_size: int = 100
    batch_callers: int = 8
    single_callers: int = 64
    single_events_per_caller: int = 200
    single_baseline_events: int = 12_800
    replay_events: int = 200_000
    replay_page: int = 1_000
    subscribe_rate: int = 5_000
    subscribe_events: int = 25_000
    event_bytes: int = 200
    retention_seconds: int = 60
    scale_events: int = 10_000_000
    scale_small: int = 100_000
    scale_probe: int = 20_000
    scale_reads: int = 1_000


FULL = Sizes()
QUICK = replace(
    FULL,
    batch_events=20_000,
    batch_streams=200,
    single_events_per_caller=10,
    single_baseline_events=640,
    replay_events=20_000,
    subscribe_events=5_000,
    retention_seconds=8,
    scale_events=50_000,
    scale_small=5_000,
    scale_probe=2_000,
    scale_reads=200,
)
TINY = replace(
    FULL,
    batch_events=400,
    batch_streams=4,
    batch_callers=2,
    single_callers=4,
    single_events_per_caller=3,
    single_baseline_events=12,
    replay_events=400,
    replay_page=100,
    subscribe_rate=1_000,
    subscribe_events=50,
    retention_seconds=2,
    scale_events=2_000,
    scale_small=500,
    scale_probe=200,
    scale_reads=10,
)
"""For the smoke test: every code path, a fraction of a second of work."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
