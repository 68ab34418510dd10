"""Child processes for the SQLite crash and multi-process tests.

Run as `python tests/support/sqlite_child.py MODE DB ...`. Every acknowledged append is
reported as one JSON line, written with a single `write` after the append
returned, so a line that exists was acknowledged (a line cut by SIGKILL is
ignored by the parent).

Modes:
  crash DB ACKFILE          append forever to a few streams with expected
                            versions, several appends at once (group commit);
                            the parent kills it with SIGKILL
  crash-early-ack DB ACKFILE
                            the control: the same, but each append is reported
                            before it is committed (the checker must notice)
  writer DB N               wait for a line on stdin, then make N successful
                            appends to shared streams with expected versions,
                            retrying on conflicts; report each to stdout; any other error is a crash
  append DB COUNT GAP       append COUNT single events GAP seconds apart,
                            reporting the wall-clock time of each ack
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time

import tidelog
from tidelog import NewEvent, WrongExpectedVersion

STREAMS = ("order-a", "order-b", "order-c", "order-d")


async def _version(store: tidelog.Store, stream: str) -> int | None:
    async for event in store.read_stream(stream, -1, backwards=True, limit=1):
        return event.version
    return None


def _expected(version: int | None) -> tidelog.ExpectedVersion:
    return tidelog.NO_STREAM if version is None else version


async def crash(db: str, ack_file: str, early_ack: bool = False) -> None:
    """`early_ack` is the control: it reports an append BEFORE it is committed."""
    fd = os.open(ack_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    async with tidelog.connect(f"sqlite:///{db}") as store:
        versions = {s: await _version(store, s) for s in STREAMS}

        def report(stream: str, events: list[NewEvent], version: int) -> None:
            line = {"stream": stream, "ids": [str(e.id) for e in events], "version": version}
            os.write(fd, (json.dumps(line) + "\n").encode())

        async def one(stream: str) -> None:
            events = [
                NewEvent(type="Tick", data=os.urandom(16)) for _ in range(random.randint(1, 4))
            ]
            current = versions[stream]
            if early_ack:
                report(stream, events, (-1 if current is None else current) + len(events))
                # Widen the window between the ack and the commit, so a kill at
                # a random moment lands in it in most rounds.
                await asyncio.sleep(0.02)
            result = await store.append(stream, events, _expected(current))
            versions[stream] = result.version
            if not early_ack:
                report(stream, events, result.version)

        while True:
            await asyncio.gather(*(one(s) for s in STREAMS))


async def writer(db: str, count: int) -> None:
    async with tidelog.connect(f"sqlite:///{db}") as store:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the parent's "go"
        done = conflicts = 0
        streams = STREAMS[:3]
        while done < count:
            stream = random.choice(streams)
            version = await _version(store, stream)
            event = NewEvent(type="Wrote", data=str(os.getpid()).encode())
            try:
                result = await store.append(stream, [event], _expected(version))
            except WrongExpectedVersion:
                conflicts += 1
                continue
            done += 1
            print(
                json.dumps({"stream": stream, "id": str(event.id), "version": result.version}),
                flush=True,
            )
        print(json.dumps({"done": True, "conflicts": conflicts}), flush=True)


async def append(db: str, count: int, gap: float) -> None:
    async with tidelog.connect(f"sqlite:///{db}") as store:
        for i in range(count):
            await asyncio.sleep(gap)
            result = await store.append("ping-1", [NewEvent(type="Ping", data=str(i).encode())])
            print(json.dumps({"t": time.time(), "position": result.position}), flush=True)


def main(argv: list[str]) -> None:
    mode, db, *rest = argv
    if mode == "crash":
        asyncio.run(crash(db, rest[0]))
    elif mode == "crash-early-ack":
        asyncio.run(crash(db, rest[0], early_ack=True))
    elif mode == "writer":
        asyncio.run(writer(db, int(rest[0])))
    elif mode == "append":
        asyncio.run(append(db, int(rest[0]), float(rest[1])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
