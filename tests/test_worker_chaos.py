"""Worker processes under faults: SIGKILL, SIGSTOP past the lease, poison events.

Three `tidelog worker` processes share one store and consume 50,000 events
published meanwhile by a `Producer`, on every engine (NATS: a private
nats-server 2.12+). Each event's effect is committed with the group's
checkpoint, one commit per event; the engines write a worker's concurrent
commits together (SQLite's writer, PostgreSQL's and NATS's group commit).
About half a minute on SQLite and PostgreSQL; on NATS, where four writing
processes race for the store's `head` and the group's document, two to three
minutes (docs/nats.md, Limits). Members are killed with SIGKILL (and
replaced) and paused with SIGSTOP longer than their lease. Afterwards, on
every engine:

- every event was handled: each normal event has exactly one effect, written
  through `ctx.append` (exactly-once effects), in stream order (the effect's
  expected version is the source version - 1);
- each handler's own view kept per-stream order within each partition claim;
- the paused member's late commit was refused (fencing) and it rejoined;
- the 1% poison events are parked in `$dlq-chaos` with their error after
  `max_attempts`, the later events of their streams are held behind them, and
  no other stream was blocked;
- every partition's checkpoint reached the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import tidelog
from support.nats import NatsServer, private_nats
from support.worker_procs import start_worker, store_url
from tidelog.consumers import ParkedStatus, Producer, list_parked

pytestmark = pytest.mark.slow


LEASE = 1.5
POISON_PER_STREAM, POISON_AT = 5, 2


@dataclass(frozen=True)
class Scale:
    """How many events one run publishes: `normal_per_stream` per normal stream, 5 per poison.

    A poison stream's event at version `POISON_AT` always fails: with as many
    poison streams as 1/100 of the events, 1% of the events are poison.
    """

    normal_streams: int
    poison_streams: int
    normal_per_stream: int = 100

    @property
    def total(self) -> int:
        return (
            self.normal_streams * self.normal_per_stream + self.poison_streams * POISON_PER_STREAM
        )


FULL = Scale(normal_streams=475, poison_streams=500)  # 47,500 + 2,500 = 50,000 events
MULTI_PROCESS_KINDS = [
    pytest.param("sqlite", FULL, id="sqlite"),
    pytest.param("postgres", FULL, id="postgres", marks=pytest.mark.postgres),
    pytest.param("nats", FULL, id="nats", marks=pytest.mark.nats),
    *(
        pytest.param(url, FULL, id=url)
        for url in os.environ.get("TIDELOG_CONSUMER_TEST_URLS", "").split()
    ),
]


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A fresh server of this module's own: the soak must not share a server that
    earlier tests filled with their stores' streams."""
    yield from private_nats(tmp_path_factory.mktemp("nats-chaos"))


class Workers:
    def __init__(self, url: str, tmp: pathlib.Path) -> None:
        self.url = url
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, pathlib.Path] = {}

    def start(self) -> subprocess.Popen[bytes]:
        log = self.tmp / f"worker-{len(self.procs)}.log"
        env = dict(os.environ, CHAOS_STORE=self.url, VIEW_DIR=str(self.tmp), CHAOS_LEASE=str(LEASE))
        proc = start_worker("chaos_app:app", env, log)
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def member_of(self, pid: int) -> str:
        for line in self.logs[pid].read_text().splitlines():
            if '"event": "joined"' in line:
                return str(json.loads(line)["member"])
        raise AssertionError(f"worker {pid} never joined")

    def live(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def cleanup(self) -> None:
        for p in self.live():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
            p.wait()


async def publish(url: str, scale: Scale) -> None:
    async with tidelog.connect(url) as store, Producer(store, linger=0.005) as producer:
        futures = []
        for v in range(scale.normal_per_stream):
            for s in range(scale.normal_streams):
                futures.append(
                    await producer.send(f"job-n{s}", tidelog.NewEvent(type="Job", data=b"ok"))
                )
            if v < POISON_PER_STREAM:
                for s in range(scale.poison_streams):
                    data = b"poison" if v == POISON_AT else b"ok"
                    futures.append(
                        await producer.send(f"job-p{s}", tidelog.NewEvent(type="Job", data=data))
                    )
            if v % 10 == 0:
                await asyncio.sleep(0.05)  # a steady flow rather than one burst
        results = await asyncio.gather(*futures)
        assert len(results) == scale.total


async def progress(store: tidelog.Store) -> tuple[int, int]:
    effects = 0
    async for info in store.list_streams(category="effect"):
        effects += 0 if info.version is None else info.version + 1
    dlq = 0
    async for _ in store.read_stream("$dlq-chaos"):
        dlq += 1
    return effects, dlq


# Its own budget: on NATS, 50,000 events took 130-170 s on a quiet 2-core
# machine; the default 300 s leaves too little room on a loaded one.
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("kind", "scale"), MULTI_PROCESS_KINDS)
async def test_three_workers_survive_kill_and_pause(
    kind: str, scale: Scale, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    async with store_url(kind, tmp_path, request) as url:
        await run_chaos(url, scale, tmp_path)


async def run_chaos(url: str, scale: Scale, tmp_path: pathlib.Path) -> None:
    async with tidelog.connect(url):
        pass  # create the store before the workers race to
    workers = Workers(url, tmp_path)
    expected_effects = (
        scale.normal_streams * scale.normal_per_stream + scale.poison_streams * POISON_AT
    )
    expected_dlq = scale.poison_streams * (POISON_PER_STREAM - POISON_AT)
    paused_pid = 0
    producer: asyncio.Task[None] | None = None
    try:
        for _ in range(3):
            workers.start()
        producer = asyncio.create_task(publish(url, scale))
        loop = asyncio.get_running_loop()
        async with tidelog.connect(url) as store:

            async def wait_progress(fraction: float) -> None:
                until = loop.time() + 300
                while (await progress(store))[0] < expected_effects * fraction:
                    assert loop.time() < until, "no progress"
                    assert all(p.poll() is None for p in workers.procs[-3:]), "a worker died"
                    await asyncio.sleep(0.2)

            await wait_progress(0.15)
            victim = workers.live()[0]
            victim.send_signal(signal.SIGKILL)  # a crash: no commit, no leave
            victim.wait()
            workers.start()
            await wait_progress(0.35)
            paused = workers.live()[0]
            paused_pid = paused.pid
            paused.send_signal(signal.SIGSTOP)
            await asyncio.sleep(LEASE * 2.5)  # well past its lease: the others take over
            paused.send_signal(signal.SIGCONT)
            await wait_progress(0.6)
            victim = workers.live()[-1]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            workers.start()
            await producer
            until = loop.time() + 300
            while (done := await progress(store)) != (expected_effects, expected_dlq):
                assert done[0] <= expected_effects and done[1] <= expected_dlq, done
                assert loop.time() < until, f"stuck at {await progress(store)}"
                await asyncio.sleep(0.2)
            # every partition's checkpoint reaches its last event (a partition that
            # moved at the very end is redelivered from its checkpoint first)
            last: dict[int, int] = {}
            async for e in store.read_all(categories=["job"]):
                last[tidelog.partition_of(e.stream, store.partition_count)] = e.position
            while await store.checkpoints("chaos", "job") != last:
                assert loop.time() < until, "checkpoints stuck"
                await asyncio.sleep(0.2)
            stopped = workers.live()
            # A worker restarted late may still be starting (on a loaded machine the
            # others can finish the work first): SIGTERM before it runs its signal
            # handlers ends it by the default action, which is not what this checks.
            for p in stopped:
                while '"event": "joined"' not in workers.logs[p.pid].read_text():
                    assert loop.time() < until, f"worker {p.pid} never joined"
                    await asyncio.sleep(0.2)
            for p in stopped:  # a rolling shutdown
                p.send_signal(signal.SIGTERM)
                assert p.wait(timeout=30) == 0

            # exactly-once effects in stream order, for every normal event
            for s in range(scale.normal_streams):
                got = [int(e.data) async for e in store.read_stream(f"effect-n{s}")]
                assert got == list(range(scale.normal_per_stream)), f"effect-n{s}"
            for s in range(scale.poison_streams):
                got = [int(e.data) async for e in store.read_stream(f"effect-p{s}")]
                assert got == list(range(POISON_AT)), f"effect-p{s}"

            # poison parked with its error after max_attempts; later events held
            parked = await list_parked(store, "chaos")
            by_status: dict[ParkedStatus, list[tidelog.ParkedEvent]] = defaultdict(list)
            for p in parked:
                by_status[p.status].append(p)
                assert p.stream.startswith("job-p")
            failed = by_status[ParkedStatus.PARKED]
            assert len(failed) == scale.poison_streams
            assert {p.event.version for p in failed} == {POISON_AT}
            assert {p.attempts for p in failed} == {3}
            assert {p.error_type for p in failed} == {"ValueError"}
            assert all(p.error and "poison event" in p.error for p in failed)
            held = by_status[ParkedStatus.HELD]
            assert len(held) == scale.poison_streams * (POISON_PER_STREAM - POISON_AT - 1)

            # the shutdown left them there
            assert await store.checkpoints("chaos", "job") == last
            # members stopped by SIGTERM left at once (a SIGKILLed one expires later)
            group = await store.describe_group("chaos", "job")
            assert group is not None
            left = {workers.member_of(p.pid) for p in stopped}
            assert left.isdisjoint(m.member for m in group.members)
    finally:
        workers.cleanup()
        if producer is not None and not producer.done():  # the run failed: end it too
            producer.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(producer, 10)

    # the paused member was fenced: its late commit was refused, and it rejoined
    paused_log = workers.logs[paused_pid].read_text()
    assert '"event": "lease_lost"' in paused_log
    assert '"event": "commit_refused"' in paused_log

    check_views(tmp_path, expected_effects)


def check_views(tmp_path: pathlib.Path, expected_effects: int) -> None:
    """Each handler's view kept stream order within every partition claim."""
    views = 0
    for view in tmp_path.glob("*.view"):
        last_seen: dict[tuple[str, str], int] = {}
        for line in view.read_text().splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue  # a line cut by SIGKILL
            claim, _, stream, version = parts
            key = (claim, stream)
            v = int(version)
            if key in last_seen:
                assert v == last_seen[key] + 1, f"{view.name}: {stream} {last_seen[key]} -> {v}"
            last_seen[key] = v
            views += 1
    assert views >= expected_effects
