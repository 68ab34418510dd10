"""The workloads, and the registry `--workloads` chooses from.

- `store`: the store's own workloads (append, replay, subscribe);
- `aggregates`: loading an aggregate with and without snapshots;
- `consumers` (with `consumers_worker`, the app its worker processes run):
  consumer-group throughput and end-to-end latency;
- `scaling`: `group_scaling`, a consumer group of 1, 2 and 4 worker processes;
- `via_server`: the store through the HTTP server;
- `fanout` (with `fanout_client`, the subscriber processes): many SSE
  subscribers on one server;
- `retention`: a queue under a `max_age` rule, against the same queue without;
- `scale` (with `scale_child`, the reader its child processes run): the store
  at 100,000 and at 10 million events (`scale_curve`);
- `scheduling`: scheduled delivery, how late events become visible.

Adding a workload: write `async def my_workload(backend: Backend, sizes: Sizes)
-> dict` that returns at least `value`, `unit`, `baseline`, and register it in
`WORKLOADS` with its goal. `Backend.open_store()` gives a fresh, empty,
durable store of the engine under test.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.backends import Backend
from benchmarks.common import Sizes
from benchmarks.workloads import (
    aggregates,
    consumers,
    fanout,
    retention,
    scale,
    scaling,
    scheduling,
    store,
    via_server,
)


@dataclass(frozen=True)
class Workload:
    name: str
    run: Callable[[Backend, Sizes], Awaitable[dict[str, Any]]]
    goal_metric: str  # "ratio" or "value"
    goal_op: str  # ">=" or "<"
    goal: float
    once: bool = False
    """Run once whatever `--repeat` says (a workload that fills a large store)."""


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("append_batch", store.append_batch, "ratio", ">=", 1.0),
        Workload("append_single", store.append_single, "ratio", ">=", 5.0),
        Workload("replay_all", store.replay_all, "ratio", ">=", 0.7),
        Workload("subscribe_latency", store.subscribe_latency, "value", "<", 10.0),
        Workload("aggregate_load", aggregates.aggregate_load, "ratio", "<", 0.2),
        Workload("group_throughput", consumers.group_throughput, "ratio", ">=", 0.5),
        Workload("group_scaling", scaling.group_scaling, "ratio", ">=", 0.75),
        Workload("end_to_end_latency", consumers.end_to_end_latency, "value", "<", 20.0),
        Workload("http_append", via_server.http_append, "ratio", ">=", 0.6),
        Workload("http_subscribe", via_server.http_subscribe, "ratio", ">=", 0.3),
        Workload("scale_curve", scale.scale_curve, "ratio", ">=", 0.8, once=True),
        Workload("sse_fanout", fanout.sse_fanout, "value", "<", 250.0),
        Workload("retention_steady_state", retention.retention_steady_state, "ratio", ">=", 0.8),
        Workload("scheduled_lateness", scheduling.scheduled_lateness, "value", "<", 100.0),
        Workload("scheduled_memory", scheduling.scheduled_memory, "value", "<", 50.0),
    )
}
