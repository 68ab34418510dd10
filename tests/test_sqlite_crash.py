"""Kill a writing process with SIGKILL at random moments; nothing acknowledged is lost.

A child (`tests/support/sqlite_child.py crash`) appends to a few streams with expected
versions, several appends at once so that group commit is exercised, and
records every acknowledged append in a file. It is killed at a random moment,
over and over. After each kill the file must contain every acknowledged event
exactly once, at the acknowledged version, with contiguous versions, and pass
`PRAGMA integrity_check`.

SIGKILL does not drop the page cache, so this proves crash consistency of the
process (WAL recovery, no half-written batch, no ack before commit), not
durability across power loss, which `synchronous=FULL` is there for.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import random
import sqlite3
import time
from functools import partial
from uuid import UUID

import pytest

import tidelog
from support.crash import ack_lines, kill_after, wait_for_growth

CHILD = pathlib.Path(__file__).parent / "support" / "sqlite_child.py"
ROUNDS = 16
STREAMS = ("order-a", "order-b", "order-c", "order-d")


def _acks(path: pathlib.Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in ack_lines(path)]


async def _check(db: pathlib.Path, acks: list[dict[str, object]]) -> int:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    async with tidelog.connect(f"sqlite:///{db}") as store:
        log = [e async for e in store.read_all()]
        assert [e.position for e in log] == list(range(1, len(log) + 1))
        where: dict[UUID, tuple[str, int]] = {}
        for stream in STREAMS:
            events = [e async for e in store.read_stream(stream)]
            assert [e.version for e in events] == list(range(len(events))), "version gap"
            for e in events:
                assert e.id not in where, "duplicated event"
                where[e.id] = (e.stream, e.version)
        assert len(where) == len(log)
        for ack in acks:
            ids = [UUID(str(i)) for i in ack["ids"]]  # type: ignore[attr-defined]
            last = int(ack["version"])  # type: ignore[call-overload]
            first = last - len(ids) + 1
            for offset, event_id in enumerate(ids):
                assert where.get(event_id) == (ack["stream"], first + offset), "lost ack"
    return len(log)


def _kill_rounds(
    mode: str, db: pathlib.Path, ack_file: str | pathlib.Path, rounds: int, rng: random.Random
) -> list[int | AssertionError]:
    """Run the child `rounds` times, SIGKILL it at a random moment, check after each kill."""
    outcomes: list[int | AssertionError] = []
    deadline = time.monotonic() + 60  # bound the test even on a loaded machine
    for _ in range(rounds):
        writing = partial(wait_for_growth, pathlib.Path(ack_file), deadline, rng.uniform(0.05, 0.5))
        kill_after([str(CHILD), mode, str(db), str(ack_file)], writing)
        try:
            outcomes.append(asyncio.run(_check(db, _acks(pathlib.Path(ack_file)))))
        except AssertionError as exc:
            outcomes.append(exc)
        if time.monotonic() > deadline:
            break
    return outcomes


@pytest.mark.slow
def test_sigkill_never_loses_acknowledged_events(tmp_path: pathlib.Path) -> None:
    ack_file = tmp_path / "acks.jsonl"
    rng = random.Random(os.environ.get("TIDELOG_CRASH_SEED", "tidelog"))
    outcomes = _kill_rounds("crash", tmp_path / "crash.db", ack_file, ROUNDS, rng)
    failures = [o for o in outcomes if isinstance(o, AssertionError)]
    assert not failures, failures[0]
    counts = [o for o in outcomes if isinstance(o, int)]
    acked_events = sum(len(a["ids"]) for a in _acks(ack_file))  # type: ignore[arg-type]
    print(f"rounds={len(counts)} acked events={acked_events} stored={counts[-1]}")
    # The kills landed while the child was writing: most rounds added events.
    assert 0 < acked_events <= counts[-1]
    assert len(set(counts)) > len(counts) // 2


@pytest.mark.slow
def test_control_acknowledging_before_commit_is_caught(tmp_path: pathlib.Path) -> None:
    """The checker is not blind: a writer that acknowledges early loses acks on SIGKILL."""
    rng = random.Random("control")
    outcomes = _kill_rounds("crash-early-ack", tmp_path / "c.db", tmp_path / "a.jsonl", 6, rng)
    assert any(isinstance(o, AssertionError) and "lost ack" in str(o) for o in outcomes)
