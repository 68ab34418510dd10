"""Benchmark workloads `http_append` and `http_subscribe`: the store through the server.

Registered in `benchmarks/workloads/__init__.py`. The server runs as a separate process
(`python -m tidelog serve`, as users run it) in front of the engine under
test; the client is the remote engine (`tidelog.connect("http://…")`).
Baseline: the same workload on the engine in-process, in the same run.

- `http_append`: `batch_events` events over `batch_streams` streams, appended in
  batches of `batch_size` by `batch_callers` concurrent callers; events/s.
  Goal (#17): ratio >= 0.6.
- `http_subscribe`: a live subscriber catching up over Server-Sent Events on
  a log of `replay_events` events; events/s, against `store.subscribe` in-process.
  Goal (#17): ratio >= 0.3.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import tidelog
from tidelog import NewEvent

__all__ = ["Served", "http_append", "http_subscribe", "serve_process"]

_KEY_LINE = re.compile(r"admin key \(shown once, keep it\): (\S+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Served(NamedTuple):
    url: str
    key: str
    pid: int


@contextlib.asynccontextmanager
async def serve_process(
    store_url: str, limits: Mapping[str, float] | None = None
) -> AsyncIterator[Served]:
    """`tidelog serve` in a child process, with `limits` changed in its `[limits]`.

    Yields the base URL, the admin key it printed at first start, and its pid.
    Its log is read to the end in a thread, so a chatty server never blocks on
    a full pipe.
    """
    port = _free_port()
    drain: threading.Thread | None = None
    with tempfile.TemporaryDirectory() as data_dir:
        env = {**os.environ, "TIDELOG_DATA_DIR": data_dir}
        if limits:
            config = Path(data_dir) / "tidelog.toml"
            config.write_text("[limits]\n" + "".join(f"{k} = {v!r}\n" for k, v in limits.items()))
            env["TIDELOG_CONFIG"] = str(config)
        proc = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for off the loop
            [sys.executable, "-m", "tidelog", "serve", "--store", store_url, "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stderr is not None
            key = None
            deadline = time.monotonic() + 30
            while key is None and time.monotonic() < deadline:
                line = await asyncio.to_thread(proc.stderr.readline)
                if not line:
                    raise RuntimeError(f"server exited with {proc.wait()}")
                if m := _KEY_LINE.search(line):
                    key = m.group(1)
            if key is None:
                raise RuntimeError("server printed no admin key")
            drain = threading.Thread(target=proc.stderr.read, daemon=True)
            drain.start()
            url = f"http://127.0.0.1:{port}"
            for _ in range(300):
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                await asyncio.sleep(0.05)
            yield Served(url, key, proc.pid)
        finally:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
            if drain is not None:  # at the end of the log now that the server exited
                await asyncio.to_thread(drain.join, 15)
            if proc.stderr is not None:
                proc.stderr.close()


def _batches(sizes: Any) -> list[tuple[str, list[NewEvent]]]:
    payload = b'{"n": 0, "pad": "' + b"x" * max(0, sizes.event_bytes - 20) + b'"}'
    out = []
    for i in range(sizes.batch_events // sizes.batch_size):
        stream = f"bench-{i % sizes.batch_streams}"
        out.append(
            (stream, [NewEvent(type="Bench", data=payload) for _ in range(sizes.batch_size)])
        )
    return out


async def _append_all(
    store: tidelog.Store, batches: list[tuple[str, list[NewEvent]]], n: int
) -> float:
    queue = iter(batches)

    async def caller() -> None:
        for stream, events in queue:
            await store.append(stream, events)

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(n)))
    return time.perf_counter() - t0


def _store_url(backend: Any) -> str:
    make = getattr(backend, "store_url", None)
    if make is None:
        raise RuntimeError("the http workloads run on the sqlite engine (a file the server opens)")
    url: str = make()
    return url


async def http_append(backend: Any, sizes: Any) -> dict[str, Any]:
    batches = _batches(sizes)
    total = len(batches) * sizes.batch_size
    local = await backend.open_store()
    try:
        base_seconds = await _append_all(local, batches, sizes.batch_callers)
    finally:
        await local.close()
    async with (
        serve_process(_store_url(backend)) as (url, key, _),
        tidelog.connect(url, token=key) as remote,
    ):
        seconds = await _append_all(remote, _batches(sizes), sizes.batch_callers)
        written = await remote.last_position()
    if written != total:
        raise RuntimeError(f"server store holds {written} events, expected {total}")
    return {
        "value": round(total / seconds),
        "unit": "events/s",
        "baseline": round(total / base_seconds),
        "events": total,
        "callers": sizes.batch_callers,
        "batch": sizes.batch_size,
    }


async def _consume(store: tidelog.Store, count: int) -> float:
    t0 = time.perf_counter()
    seen = 0
    async for _ in store.subscribe():
        seen += 1
        if seen == count:
            break
    return time.perf_counter() - t0


async def http_subscribe(backend: Any, sizes: Any) -> dict[str, Any]:
    count = sizes.replay_events
    url_for_server = _store_url(backend)
    # both sides read the same log: written once, through the engine
    store = await tidelog.connect(url_for_server)
    try:
        await _append_all(store, _batches_of(count, sizes), sizes.batch_callers)
        base_seconds = await _consume(store, count)
    finally:
        await store.close()
    async with (
        serve_process(url_for_server) as (url, key, _),
        tidelog.connect(url, token=key) as remote,
    ):
        seconds = await _consume(remote, count)
    return {
        "value": round(count / seconds),
        "unit": "events/s",
        "baseline": round(count / base_seconds),
        "events": count,
    }


def _batches_of(count: int, sizes: Any) -> list[tuple[str, list[NewEvent]]]:
    payload = b'{"n": 0}'
    per = sizes.batch_size
    return [
        (
            f"bench-{i % sizes.batch_streams}",
            [NewEvent(type="Bench", data=payload) for _ in range(per)],
        )
        for i in range(count // per)
    ]
