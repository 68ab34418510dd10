"""How many events a SIGKILLed worker makes the group handle twice (#17).

Three `tidelog worker` processes of one group (`support/workers/kill_app.py`:
default options but a short lease, and checkpoints committed by count only,
every `commit_every` finished events, as at high rates) consume 20,000 events
already in the store;
once about a third are handled one worker is killed with SIGKILL. Every handled
event is recorded by its handler; afterwards:

- nothing is lost: every event was handled at least once;
- the events handled twice after the victim are bounded by what it had in
  flight (`max_in_flight` fetched and unfinished) and finished but not yet
  committed (`commit_every` for the whole member, not per partition: #17),
  plus what finished while its last commit round was being written: another
  `commit_every` at most (`member_bound`);
- survivors hand partitions over at the rebalance (partition p goes to member
  p mod n: from 3 to 2 members, half of each survivor's partitions move) and
  their final commit is refused (the new generation does not give them those
  partitions), so each may add as much again (`duplicate_bound`).

Each run prints its figures (handled twice: in all, after the victim, after
survivors' hand-overs).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import pathlib
import signal
import subprocess
from collections.abc import Iterator

import pytest

import tidelog
from support.nats import NatsServer, private_nats
from support.worker_procs import start_worker, store_url
from tidelog.consumers import RunnerOptions

pytestmark = pytest.mark.slow

EVENTS, STREAMS, MEMBERS, KILL_AT = 20_000, 1_000, 3, 6_800
WIDTH = 11  # kill_app.WIDTH


def member_bound() -> int:
    """What one member's partitions may make the group handle twice when it loses them."""
    options = RunnerOptions()
    return options.max_in_flight + 2 * options.commit_every


def duplicate_bound(members: int) -> int:
    """What the group may handle twice after one of `members` died: each member's bound."""
    return members * member_bound()


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    yield from private_nats(tmp_path_factory.mktemp("nats-sigkill"))


def handled(records: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in records.glob("*.rec")) // WIDTH


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
        pytest.param("nats", id="nats", marks=pytest.mark.nats),
    ],
)
async def test_sigkill_duplicates_are_bounded(
    kind: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    async with store_url(kind, tmp_path, request) as url:
        await run_kill(kind, url, tmp_path)


async def run_kill(kind: str, url: str, tmp: pathlib.Path) -> None:
    records = tmp / "records"
    records.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    loop = asyncio.get_running_loop()
    async with tidelog.connect(url) as store:
        for start in range(0, EVENTS, 400):  # NATS: at most 1,000 messages, 2 per event
            await store.append_many(
                {
                    f"job-{i % STREAMS}": tidelog.AppendRequest(
                        events=[tidelog.NewEvent(type="J", data=b"")]
                    )
                    for i in range(start, min(start + 400, EVENTS))
                }
            )
        last: dict[int, int] = {}
        partition_of: dict[int, int] = {}
        async for e in store.read_all(categories=["job"]):
            p = tidelog.partition_of(e.stream, store.partition_count)
            last[p] = e.position
            partition_of[e.position] = p
        go = tmp / "go"
        env = dict(os.environ, KILL_STORE=url, RECORD_DIR=str(records), GO=str(go))
        try:
            procs.extend(
                start_worker("kill_app:app", env, tmp / f"worker-{i}.log") for i in range(MEMBERS)
            )
            until = loop.time() + 300
            # handling starts once all joined and heartbeated on their final
            # assignment: the duplicates counted are the kill's, not the joins'
            while (g := await store.describe_group("kill", "job")) is None or len(
                g.members
            ) < MEMBERS:
                assert loop.time() < until, "workers never joined"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.5)  # a lease: each member heartbeated since
            go.touch()
            while handled(records) < KILL_AT:
                assert loop.time() < until, "no progress"
                assert all(p.poll() is None for p in procs), "a worker died"
                await asyncio.sleep(0.01)
            victim = procs[0]
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            killed_at = handled(records)
            while await store.checkpoints("kill", "job") != last:
                assert loop.time() < until, "checkpoints stuck"
                await asyncio.sleep(0.1)
            for p in procs[1:]:
                p.send_signal(signal.SIGTERM)
                assert p.wait(timeout=60) == 0
        finally:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait()

    seen: collections.Counter[int] = collections.Counter()
    by_victim: set[int] = set()
    for rec in records.glob("*.rec"):
        for line in rec.read_text().splitlines():
            position = int(line)
            seen[position] += 1
            if int(rec.stem) == victim.pid:
                by_victim.add(position)
    assert set(seen) == set(partition_of), "every event handled at least once"
    twice = sum(n - 1 for n in seen.values())
    after_victim = sum(seen[pos] - 1 for pos in by_victim)
    print(
        f"\n{kind}: killed at {killed_at} of {EVENTS}; handled twice {twice}"
        f" ({after_victim} of the victim's, {twice - after_victim} of survivors');"
        f" bounds {member_bound()} (victim) and {duplicate_bound(MEMBERS)} (all)"
    )
    assert after_victim <= member_bound()
    assert twice <= duplicate_bound(MEMBERS)
