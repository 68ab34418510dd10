"""SIGKILL a process while it scavenges: nothing a rule keeps is lost, nothing deleted
comes back, no position is reused (SQLite and PostgreSQL).

A child (`tests/support/retention_child.py`) appends to a few streams, one
acknowledged event at a time, and scavenges in batches of 3 in a loop under a
`max_count` rule; it is killed at a random moment, over and over. After each
kill, for every stream: the events the rule keeps are exactly the newest
acknowledged ones, at their acknowledged versions and positions; the oldest
version still stored never moves back (what was deleted never returns), and
the head of the log never moves back either.

The control (`test_control_a_lost_event_is_caught`) deletes one kept event
behind the store's back and must fail the same check, so the check can fail.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from functools import partial

import pytest
import pytest_asyncio

import tidelog
from support.crash import ack_lines, kill_after, wait_for_growth
from support.postgres import Schemas, require_postgres
from tidelog.retention import RetentionPolicy

CHILD = pathlib.Path(__file__).parent / "support" / "retention_child.py"
KEEP = 4
ROUNDS = 8

pytestmark = pytest.mark.slow


def _acks(path: pathlib.Path) -> list[dict[str, object]]:
    found = []
    for line in ack_lines(path):
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill, closed by the next child
            continue
    return found


class History:
    """What the checks carry from one kill to the next."""

    def __init__(self) -> None:
        self.floors: dict[str, int] = {}
        self.head = 0
        self.deleted: set[str] = set()


async def _check(url: str, acks: list[dict[str, object]], history: History) -> None:
    async with tidelog.connect(url) as store:
        head = await store.last_position()
        assert head >= history.head, "the head moved back: positions could be reused"
        history.head = head
        by_stream: dict[str, list[dict[str, object]]] = {}
        for ack in acks:
            by_stream.setdefault(str(ack["stream"]), []).append(ack)
        for stream, acked in by_stream.items():
            acked.sort(key=lambda a: int(str(a["version"])))
            # What the rule keeps: the newest KEEP acknowledged (later, unacknowledged
            # appends may exist: their outcome was unknown when the child died).
            visible = [e async for e in store.read_stream(stream)]
            kept_ids = {str(e.id): e for e in visible}
            for ack in acked[-KEEP:]:
                if int(str(ack["version"])) > visible[-1].version - KEEP:
                    e = kept_ids.get(str(ack["id"]))
                    assert e is not None, f"lost a kept event: {ack}"
                    assert (e.version, e.position) == (ack["version"], ack["position"])
            assert [e.version for e in visible] == list(
                range(visible[-1].version - len(visible) + 1, visible[-1].version + 1)
            )
            assert len(visible) == min(KEEP, visible[-1].version + 1)
            # Physically stored: never below a floor seen before, no deleted id back.
            stored = [e async for e in store._read_stream(stream, 0, False, None)]
            floor = stored[0].version
            assert floor >= history.floors.get(stream, 0), "a deleted event came back"
            history.floors[stream] = floor
            ids = {str(e.id) for e in stored}
            assert not ids & history.deleted, "a deleted event came back"
            history.deleted |= {str(a["id"]) for a in acked if int(str(a["version"])) < floor}


async def _prepare(url: str) -> None:
    async with tidelog.connect(url) as store:
        await store.set_retention(RetentionPolicy(max_count=KEEP), category="job")


def _kill_rounds(url: str, ack_file: pathlib.Path, rng: random.Random) -> int:
    history = History()
    deadline = time.monotonic() + 90  # bound the test even on a loaded machine
    rounds = 0
    for _ in range(ROUNDS):
        # A random moment once the child is at work (see `wait_for_growth`).
        writing = partial(wait_for_growth, ack_file, deadline, rng.uniform(0.1, 0.9))
        kill_after([str(CHILD), url, str(ack_file)], writing)
        asyncio.run(_check(url, _acks(ack_file), history))
        rounds += 1
        if time.monotonic() > deadline:
            break
    assert history.deleted, "the scavenger never deleted anything: the test proved nothing"
    return rounds


def test_sigkill_during_scavenge_sqlite(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "crash.db"
    url = f"sqlite:///{db}"
    asyncio.run(_prepare(url))
    assert _kill_rounds(url, tmp_path / "acks.jsonl", random.Random(16)) >= 2
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


@pytest_asyncio.fixture
async def pg_url() -> AsyncIterator[str]:
    await require_postgres()
    schemas = Schemas()
    yield schemas.url("pool_max=3")
    await schemas.drop()


def test_sigkill_during_scavenge_postgres(pg_url: str, tmp_path: pathlib.Path) -> None:
    asyncio.run(_prepare(pg_url))
    assert _kill_rounds(pg_url, tmp_path / "acks.jsonl", random.Random(17)) >= 2


def test_control_a_lost_event_is_caught(tmp_path: pathlib.Path) -> None:
    """Delete one event the rule keeps behind the store's back: the check must fail."""
    db = tmp_path / "control.db"
    url = f"sqlite:///{db}"
    asyncio.run(_prepare(url))
    ack_file = tmp_path / "acks.jsonl"
    kill_after(
        [str(CHILD), url, str(ack_file)],
        partial(wait_for_growth, ack_file, time.monotonic() + 60, 0.5),
    )
    acks = _acks(ack_file)
    newest = max(acks, key=lambda a: int(str(a["position"])))
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM events WHERE position = ?", (newest["position"],))
    conn.commit()
    conn.close()
    with pytest.raises(AssertionError):
        asyncio.run(_check(url, acks, History()))
