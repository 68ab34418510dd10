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
from tidelog.server import ServerConfig
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
