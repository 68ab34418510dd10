"""Hardening cases of the attack catalogue (issue 18, items 12 and 9): what the
host sees of the store's files, readiness on a full disk, and connections that
never finish a request.

Kept apart from `test_server_security.py` (near the module size limit); the
count of cases tried here is reported the same way at the end of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import tidelog
from support.server import ADMIN_KEY, Serve
from tidelog.engines.sqlite.db import create_private
from tidelog.server import Limits, ServerConfig
from tidelog.server._serve import prepare_config

CASES_TRIED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def report_count() -> Iterator[None]:
    yield
    print(f"\n[security catalogue: hardening] cases tried: {len(CASES_TRIED)}")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- file modes


async def test_store_files_and_directories_are_private(tmp_path: Path) -> None:
    """Under a 022 umask, new directories are 0700 and the database with its WAL,
    shared-memory and journal files 0600; what already existed keeps its mode."""
    CASES_TRIED.append("world-readable store files")
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    db = existing / "a" / "b" / "store.db"
    with _umask(0o022):
        async with tidelog.connect(f"sqlite:///{db}") as store:
            await store.append("order-1", [tidelog.NewEvent(type="X")])
            assert _mode(existing / "a") == 0o700
            assert _mode(existing / "a" / "b") == 0o700
            assert _mode(db) == 0o600
            for suffix in ("-wal", "-shm"):
                sidecar = db.with_name(db.name + suffix)
                assert sidecar.exists()
                assert _mode(sidecar) == 0o600, suffix
        assert _mode(existing) == 0o755  # not narrowed: it was there before

        # a rollback journal (a store file opened by plain sqlite3 in a journal mode)
        journaled = tmp_path / "journaled.db"
        create_private(journaled)
        with contextlib.closing(sqlite3.connect(journaled, isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode = PERSIST")
            conn.execute("CREATE TABLE t (x)")
        assert _mode(journaled.with_name("journaled.db-journal")) == 0o600

        # an existing file keeps its mode: the operator chose it
        kept = tmp_path / "kept.db"
        kept.touch(mode=0o640)
        kept.chmod(0o640)
        async with tidelog.connect(f"sqlite:///{kept}") as store:
            await store.append("order-1", [tidelog.NewEvent(type="X")])
        assert _mode(kept) == 0o640


def test_server_data_dir_is_private(tmp_path: Path) -> None:
    CASES_TRIED.append("world-readable data directory")
    data = tmp_path / "data" / "dir"
    with _umask(0o022):
        prepare_config(ServerConfig(data_dir=str(data)), lambda _: None)
    assert _mode(tmp_path / "data") == 0o700
    assert _mode(data) == 0o700
    assert _mode(data / "admin-key.sha256") == 0o600


# --------------------------------------------------------------------------- readiness


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at `path` (root only): a disk that really fills up."""
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the disk is full; delete it to free the space."""
    filler = directory / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    # the last partial buffer may be left in Python's buffer: the close fails too
    return filler


async def _status(client: httpx.AsyncClient, path: str) -> int:
    return (await client.get(path)).status_code


async def _wait_for_status(client: httpx.AsyncClient, path: str, want: int) -> None:
    deadline = time.monotonic() + 30
    while (status := await _status(client, path)) != want:
        assert time.monotonic() < deadline, f"{path} still {status}, wanted {want}"
        await asyncio.sleep(0.2)


async def test_readyz_reflects_a_full_disk(serve: Serve, tmp_path: Path) -> None:
    """A real full disk: appends fail with 503, /readyz turns 503 (while /livez
    stays 200), and once space is freed a probe write makes it 200 again."""
    CASES_TRIED.append("readiness on a full disk")
    with _tmpfs(tmp_path / "disk", "2m") as disk:
        store = await tidelog.connect(f"sqlite:///{disk}/store.db")
        try:
            srv, _ = await serve(store=store)
            headers = {"authorization": f"Bearer {ADMIN_KEY}"}
            base = f"http://127.0.0.1:{srv.port}"
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
                assert await _status(client, "/readyz") == 200
                with contextlib.suppress(OSError):
                    _fill(disk)
                event: dict[str, Any] = {"type": "X", "data": "x" * 200_000}
                r = await client.post("/v1/streams/order-1/events", json={"events": [event]})
                assert r.status_code == 503, r.text
                assert await _status(client, "/readyz") == 503
                assert await _status(client, "/livez") == 200
                # still full: the probe of /readyz fails too
                await asyncio.sleep(1.1)
                assert await _status(client, "/readyz") == 503

                (disk / "filler").unlink()
                await _wait_for_status(client, "/readyz", 200)
                r = await client.post("/v1/streams/order-1/events", json={"events": [event]})
                assert r.status_code == 200, r.text
                # the probe wrote to a system stream only, and purged it
                streams = [s.name async for s in store.list_streams()]
                assert streams == ["order-1"]
        finally:
            await store.close()


# --------------------------------------------------------------------------- slow clients


def _closed_within(sock: socket.socket, seconds: float, dribble: bytes = b"") -> bytes:
    """Wait up to `seconds` for the server to close `sock`, sending `dribble` a byte
    every 0.2 s meanwhile; return what the server sent. Fails if it stays open."""
    sock.setblocking(False)
    received = b""
    deadline = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.2)
        if ready:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk
            continue
        if sent < len(dribble):
            try:
                sock.send(dribble[sent : sent + 1])
            except OSError:  # reset or broken pipe: closed
                return received
            sent += 1
    raise AssertionError(f"still open after {seconds} s (sent {sent} bytes)")


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


async def _livez_works(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        assert (await client.get("/livez")).status_code == 200


async def test_silent_and_dribbling_connections_are_closed(serve: Serve) -> None:
    """No request head within `header_timeout`: 408 and closed, whether the client
    says nothing or dribbles its head a byte at a time; a body that does not end
    within `body_timeout` is cut off too. Normal clients are served throughout."""
    limits = Limits(header_timeout=1.0, body_timeout=1.5)
    srv, _ = await serve(limits=limits)
    port = srv.port
    CASES_TRIED.append("silent connection")
    with _connect(port) as silent:
        answer = await asyncio.to_thread(_closed_within, silent, 15)
        assert answer.startswith(b"HTTP/1.1 408")
    CASES_TRIED.append("head dribbled a byte at a time")
    head = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 500 + b"\r\n\r\n"
    with _connect(port) as dribbling:
        task = asyncio.create_task(asyncio.to_thread(_closed_within, dribbling, 15, head))
        await _livez_works(port)
        answer = await task
        assert answer.startswith(b"HTTP/1.1 408")
    CASES_TRIED.append("body dribbled a byte at a time")
    body_head = (
        f"POST /v1/streams/order-1/events HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode()
    with _connect(port) as slow_body:
        slow_body.sendall(body_head)
        task = asyncio.create_task(asyncio.to_thread(_closed_within, slow_body, 15, b" " * 1000))
        await _livez_works(port)
        answer = await task
        assert not answer.startswith(b"HTTP/1.1 2")
    CASES_TRIED.append("idle after a response, then a dribble")
    with _connect(port) as kept:
        kept.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.to_thread(_closed_within, kept, 15, b"\r\n" * 100 + head)
        assert answer.startswith(b"HTTP/1.1 200")
        assert b"HTTP/1.1 408" in answer
    assert srv.guard is not None
    assert srv.guard.open_from("127.0.0.1") == 0
    await _livez_works(port)


async def test_connections_per_address_are_capped(serve: Serve) -> None:
    """One address holds at most `max_connections_per_address` connections: one more
    is answered 429 and closed; other addresses, and the address once it closes
    one, are served."""
    CASES_TRIED.append("connections beyond the per-address cap")
    srv, _ = await serve(limits=Limits(max_connections_per_address=3, header_timeout=60))
    port = srv.port
    held = [_connect(port) for _ in range(3)]
    try:
        with _connect(port) as extra:
            answer = await asyncio.to_thread(_closed_within, extra, 15)
        assert answer.startswith(b"HTTP/1.1 429")
        assert b"too_many_connections" in answer
        # another client address is not affected
        with _connect(port, source="127.0.0.2") as other:
            other.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await asyncio.to_thread(_closed_within, other, 15)).startswith(b"HTTP/1.1 200")
        held.pop().close()
        deadline = time.monotonic() + 15
        while srv.guard is not None and srv.guard.open_from("127.0.0.1") > 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await _livez_works(port)
    finally:
        for sock in held:
            sock.close()


# --------------------------------------------------------------------------- groups and /metrics


async def test_groups_per_principal_are_capped(serve: Serve) -> None:
    """A principal with read on a category and its groups creates at most
    `max_groups_per_principal` groups (429 beyond); joining an existing group is
    free, others are unaffected."""
    CASES_TRIED.append("consumer groups beyond the per-principal cap")
    groups = ("g0", "g1", "g2", "g3", "other")
    srv, _ = await serve(
        keys={"k-bob": "bob"},
        grants=("bob=read:category:order", *(f"bob=read:group:{g}" for g in groups)),
        limits=Limits(max_groups_per_principal=3),
    )
    base = f"http://127.0.0.1:{srv.port}"
    bob = {"authorization": "Bearer k-bob"}
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:

        async def join(group: str, headers: dict[str, str]) -> int:
            r = await client.post(
                f"/v1/groups/{group}/order/members/m1", json={"lease": 30}, headers=headers
            )
            return r.status_code

        assert [await join(f"g{i}", bob) for i in range(3)] == [200, 200, 200]
        assert await join("g3", bob) == 429
        assert await join("g0", bob) == 200  # an existing group: no new one
        assert await join("other", admin) == 200  # another principal's quota
        assert await join("other", bob) == 200  # joining it creates nothing
        groups = (await client.get("/v1/groups", headers=admin)).json()["groups"]
        assert sorted(g for g, _ in groups) == ["g0", "g1", "g2", "other"]


async def test_a_scrape_does_not_compute_lag(serve: Serve) -> None:
    """/metrics answers from the cache even while computing lag is stuck (the
    background refresh), so its cost does not grow with the number of groups."""
    CASES_TRIED.append("/metrics made expensive by many groups")
    store = await tidelog.connect("memory://")
    try:
        await store.append("order-1", [tidelog.NewEvent(type="X")])
        for i in range(50):
            await store.join_group(f"g{i}", "order", "m1")
        stuck = asyncio.Event()
        count_events = store.count_events

        async def blocked(*args: Any, **kwargs: Any) -> int:
            await stuck.wait()
            return await count_events(*args, **kwargs)

        store.count_events = blocked  # type: ignore[method-assign]
        srv, _ = await serve(store=store)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.port}", timeout=10) as c:
            for _ in range(3):
                r = await c.get("/metrics")  # would hang if a scrape computed lag
                assert r.status_code == 200
            assert "tidelog_consumer_lag_events{" not in r.text
            stuck.set()
            deadline = time.monotonic() + 30
            while 'group="g49"' not in (await c.get("/metrics")).text:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
    finally:
        await store.close()


async def test_a_websocket_holds_its_address_slot_until_it_closes(serve: Serve) -> None:
    """The WebSocket protocol takes over the connection at the upgrade: the slot of
    its address is given back when the WebSocket ends, not leaked, not dropped early."""
    CASES_TRIED.append("websocket address slot")
    srv, _ = await serve(limits=Limits(header_timeout=0.5))
    assert srv.guard is not None
    with _connect(srv.port) as ws:
        ws.sendall(
            b"GET /v1/ws/subscribe HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        assert (await asyncio.to_thread(ws.recv, 4096)).startswith(b"HTTP/1.1 101")
        await asyncio.sleep(1.0)  # past header_timeout: the head deadline no longer applies
        assert srv.guard.open_from("127.0.0.1") == 1
    deadline = time.monotonic() + 15
    while srv.guard.open_from("127.0.0.1"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
