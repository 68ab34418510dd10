"""Stopping PostgreSQL abruptly loses no acknowledged append.

Runs against a private cluster the test creates (`initdb` into a temporary
directory, on a free loopback port), never the shared server: appenders
record every acknowledgement, the server is stopped with
`pg_ctl stop -m immediate` (no shutdown checkpoint; recovery replays the WAL)
while appends are in flight, then restarted. Every acknowledged event must be
there exactly once; appends whose outcome was unknown are retried with the
same ids and must resolve to exactly once too.

(An immediate stop keeps the OS page cache, so this checks that tidelog
acknowledges only after commit, not the disk's honesty about fsync.)
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

import tidelog
from support.services import service_missing

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

APPENDERS = 4
ACKS_BEFORE_STOP = 150


@dataclass
class Cluster:
    bin_dir: str
    data: str
    base: str
    port: int
    as_user: list[str]

    @property
    def url(self) -> str:
        return (
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
            "?schema=crash&listen=false&pool_max=4&connect_timeout=5"
        )

    def pg_ctl(self, *args: str) -> list[str]:
        return [*self.as_user, f"{self.bin_dir}/pg_ctl", "-D", self.data, *args]

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=on"
        subprocess.run(
            self.pg_ctl("-o", options, "-l", f"{self.base}/server.log", "-w", "-t", "60", "start"),
            check=True,
            capture_output=True,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        service_missing("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)")
    bin_dir = os.path.dirname(found[-1])
    base = tempfile.mkdtemp(prefix="tidelog-pg-")
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            service_missing("running as root and there is no 'postgres' user to run initdb as")
        os.chown(base, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = f"{base}/data"
    cluster = Cluster(bin_dir, data, base, _free_port(), as_user)
    init = subprocess.run(
        [*as_user, f"{bin_dir}/initdb", "-D", data, "-A", "trust", "-U", "postgres", "-N"],
        capture_output=True,
        text=True,
        check=False,
    )
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        service_missing(f"initdb failed: {init.stderr.strip()[-300:]}")
    cluster.start()
    try:
        yield cluster
    finally:
        subprocess.run(cluster.pg_ctl("-m", "immediate", "stop"), capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


async def test_immediate_stop_loses_no_acknowledged_append(cluster: Cluster) -> None:
    acked: list[uuid.UUID] = []
    unknown: dict[uuid.UUID, str] = {}
    stopped = asyncio.Event()
    enough = asyncio.Event()

    store = await tidelog.connect(cluster.url)

    async def appender(index: int) -> None:
        stream = f"crash-{index}"
        while True:
            event_id = uuid.uuid4()
            try:
                await store.append(stream, [tidelog.NewEvent(type="Tick", id=event_id)])
            except tidelog.StoreUnavailable:
                unknown[event_id] = stream
                if stopped.is_set():
                    return
                continue
            acked.append(event_id)
            if len(acked) >= ACKS_BEFORE_STOP:
                enough.set()

    tasks = [asyncio.create_task(appender(i)) for i in range(APPENDERS)]
    try:
        async with asyncio.timeout(60):
            await enough.wait()
            stop = await asyncio.create_subprocess_exec(
                *cluster.pg_ctl("-m", "immediate", "stop"),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            assert await stop.wait() == 0
            stopped.set()
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(tidelog.TidelogError):
            await store.close()

    assert unknown, "the stop interrupted no append: the test did not test anything"
    cluster.start()
    async with tidelog.connect(cluster.url) as store:
        ids = Counter([e.id async for e in store.read_all()])
        assert [e.position async for e in store.read_all()] == list(range(1, len(ids) + 1))
        assert all(ids[event_id] == 1 for event_id in acked), "an acknowledged append was lost"
        assert max(ids.values()) == 1
        # Unknown outcomes: retrying with the same ids lands each exactly once.
        for event_id, stream in unknown.items():
            await store.append(stream, [tidelog.NewEvent(type="Tick", id=event_id)])
        after = Counter([e.id async for e in store.read_all()])
        assert max(after.values()) == 1
        assert set(acked) | set(unknown) == set(after)
