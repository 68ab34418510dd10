"""What the backends, the workloads and the runner share: the sizes, the progress log, and
the backlog the consumer workloads read."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace

import tidelog


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
    fanout_subscribers: tuple[int, ...] = (100, 1_000, 5_000)
    fanout_rate: int = 1_000
    fanout_seconds: float = 10.0
    fanout_clients: int = 2
    retention_seconds: int = 60
    scheduled_events: int = 100_000
    scheduled_seconds: float = 10.0
    scheduled_pending: int = 1_000_000
    scale_events: int = 10_000_000
    scale_small: int = 100_000
    scale_probe: int = 20_000
    scale_reads: int = 1_000
    scaling_events: int = 100_000
    scaling_io_events: int = 20_000
    scaling_processes: int = 4


FULL = Sizes()
QUICK = replace(
    FULL,
    batch_events=20_000,
    batch_streams=200,
    single_events_per_caller=10,
    single_baseline_events=640,
    replay_events=20_000,
    subscribe_events=5_000,
    fanout_subscribers=(50,),
    fanout_seconds=3.0,
    retention_seconds=8,
    scheduled_events=10_000,
    scheduled_seconds=2.0,
    scheduled_pending=100_000,
    scale_events=50_000,
    scale_small=5_000,
    scale_probe=2_000,
    scale_reads=200,
    scaling_events=5_000,
    scaling_io_events=2_000,
    scaling_processes=2,
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
    fanout_subscribers=(3,),
    fanout_rate=50,
    fanout_seconds=0.5,
    fanout_clients=1,
    retention_seconds=2,
    scheduled_events=200,
    scheduled_seconds=0.5,
    scheduled_pending=2_000,
    scale_events=2_000,
    scale_small=500,
    scale_probe=200,
    scale_reads=10,
    scaling_events=300,
    scaling_io_events=200,
    scaling_processes=2,
)
"""For the smoke test: every code path, a fraction of a second of work."""


FANOUT_BUCKET_MS = 0.1
"""The width of the `sse_fanout` latency histogram's buckets, in ms."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


FILL_STREAMS = 1_000
"""The streams a backlog spreads over (`fill`)."""
FILL_BATCH = 400
"""Events (one per stream) per `append_many` of a backlog: NATS writes at most 1,000
messages atomically, two per event (the event and its id-index entry)."""


async def fill(store: tidelog.Store, category: str, n: int) -> None:
    """Append `n` events of 100 bytes to `category`, spread over `FILL_STREAMS` streams:
    the backlog a consumer workload then reads, written as fast as the store takes it."""
    sent = 0
    while sent < n:
        batch = min(FILL_BATCH, n - sent)
        await store.append_many(
            {
                f"{category}-{(sent + i) % FILL_STREAMS}": tidelog.AppendRequest(
                    events=[tidelog.NewEvent(type="Tick", data=b"x" * 100)]
                )
                for i in range(batch)
            }
        )
        sent += batch
