"""`tidelog worker --metrics-port`: `/livez` and `/readyz` tell the truth (issue #19).

A real worker process consumes PostgreSQL through a TCP proxy the test cuts:
ready once it joined its group, not ready while its store is unreachable,
ready again when the store is back, and a clean exit on SIGTERM. The state
machine behind `/readyz` (`Health`) is checked on its own for every state,
fenced included, and the endpoints before the app runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

import tidelog
from support.consumers import eventually
from support.postgres import PG_DSN, Schemas, require_postgres
from support.tcp_proxy import TcpProxy
from tidelog.consumers import App, Context, RunnerOptions
from tidelog.consumers._health import Health
from tidelog.consumers._metrics import serve_metrics

WORKERS = pathlib.Path(__file__).parent / "support" / "workers"
TIDELOG = str(pathlib.Path(sys.executable).parent / "tidelog")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_until(check: Any, what: str, proc: subprocess.Popen[bytes] | None = None) -> Any:
    deadline = time.monotonic() + 60
    while True:
        try:
            value = check()
        except OSError:  # the endpoint is not listening yet
            value = None
        if value:
            return value
        assert proc is None or proc.poll() is None, f"the worker exited while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest_asyncio.fixture
async def pg_url() -> AsyncIterator[str]:
    await require_postgres()
    schemas = Schemas()
    try:
        yield schemas.url("partitions=4")
    finally:
        await schemas.drop()


async def _invoiced(url: str) -> int:
    async with tidelog.connect(url) as store:
        return await store.count_events(0, ["invoice"])


async def _append(url: str, n: int) -> None:
    async with tidelog.connect(url) as store:
        for i in range(n):
            await store.append(f"order-{i}", [tidelog.NewEvent(type="Placed", data=b"ok")])


@pytest.mark.postgres
def test_worker_probes_follow_membership_and_store(pg_url: str, tmp_path: pathlib.Path) -> None:
    dsn = urllib.parse.urlsplit(PG_DSN)
    proxy = TcpProxy(dsn.hostname or "127.0.0.1", dsn.port or 5432)
    parts = urllib.parse.urlsplit(pg_url)
    through_proxy = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
    asyncio.run(_append(pg_url, 5))
    port = free_port()
    log = tmp_path / "worker.log"
    env = dict(os.environ, FLAKY_STORE=through_proxy, FAIL_FILE="")
    with log.open("ab") as err:
        worker = subprocess.Popen(
            [TIDELOG, "worker", "flaky_app:app", "--metrics-port", str(port)],
            cwd=WORKERS,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        _, body = wait_until(lambda: (r := probe(port, "/readyz"))[0] == 200 and r, "ready", worker)
        assert body == {"status": "ready", "consumers": {"billing/order": "ready"}}
        assert probe(port, "/livez") == (200, {"status": "live"})
        wait_until(lambda: asyncio.run(_invoiced(pg_url)) == 5, "the events handled", worker)

        # the store goes away: not ready (still live: restarting would not help)
        proxy.cut()
        _, body = wait_until(
            lambda: (r := probe(port, "/readyz"))[0] == 503 and r, "not ready", worker
        )
        assert body["status"] == "not ready"
        assert body["consumers"]["billing/order"].startswith("store unreachable")
        assert probe(port, "/livez")[0] == 200

        # it comes back: the worker rejoins (its lease may have lapsed) and is ready
        proxy.restore()
        wait_until(lambda: probe(port, "/readyz")[0] == 200, "ready again", worker)
        asyncio.run(_append(pg_url, 10))
        # 5 streams had one event each; now 10 streams get one more: 15 invoices
        wait_until(lambda: asyncio.run(_invoiced(pg_url)) == 15, "handled after", worker)

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        proxy.close()


def test_probes_before_the_app_runs(tmp_path: pathlib.Path) -> None:
    """Live (the process is up) but not ready (it has joined nothing yet)."""
    app = App("probe", f"sqlite:///{tmp_path}/x.db")
    port = free_port()
    server, _ = serve_metrics(app, "127.0.0.1", port)
    try:
        assert probe(port, "/livez") == (200, {"status": "starting"})
        assert probe(port, "/readyz") == (503, {"status": "starting"})
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert b"tidelog_worker_handled_total" in r.read()
    finally:
        server.shutdown()
        server.server_close()


def test_health_states() -> None:
    health = Health()
    assert health.ready() == (False, {"process": "starting"})
    billing = health.consumer("billing", "order")
    audit = health.consumer("audit", "order")
    assert health.ready() == (
        False,
        {"billing/order": "not joined", "audit/order": "not joined"},
    )
    billing.on_joined()
    audit.on_joined()
    assert health.ready() == (True, {"billing/order": "ready", "audit/order": "ready"})

    # fenced: a heartbeat found the lease gone; not ready until it has rejoined
    audit.on_fenced()
    ready, reasons = health.ready()
    assert not ready and reasons["audit/order"] == "fenced: lease lost, rejoining"
    audit.on_joined()
    assert health.ready()[0]

    # the store: any failed call makes it unready, the next successful one ready
    billing.on_store_error(ConnectionResetError("reset by peer"))
    ready, reasons = health.ready()
    assert not ready
    assert reasons["billing/order"] == "store unreachable: ConnectionResetError('reset by peer')"
    billing.on_store_ok()
    assert health.ready()[0]

    # leaving the group, or stopping, is not ready
    billing.on_left()
    assert health.ready()[1]["billing/order"] == "not joined"
    billing.on_joined()
    health.stopping = True
    assert health.ready() == (
        False,
        {"billing/order": "ready", "audit/order": "ready", "process": "stopping"},
    )


def test_liveness_fails_when_the_loop_stops_ticking() -> None:
    health = Health(stall_after=30.0)
    assert health.live() == (True, "live")
    health.last_tick -= 31.0  # as if the loop had not run for 31 s
    live, why = health.live()
    assert not live and why.startswith("event loop blocked for")
    health.tick()
    assert health.live()[0]


async def test_a_fenced_member_is_not_ready_until_it_has_rejoined() -> None:
    """The group consumer's hooks, in a real run: a heartbeat refused as stale (the lease
    was lost) makes it unready; it is ready again once it has joined anew."""
    from tidelog.errors import StaleGeneration

    async with tidelog.connect("memory://?partitions=4") as store:
        app = App("probe", store, options=RunnerOptions(lease=3.0, heartbeat_interval=0.02))

        @app.handler("order", group="billing")
        async def handle(event: tidelog.RecordedEvent, ctx: Context) -> None:
            pass

        real_heartbeat, real_join = store.heartbeat, store.join_group
        fence = asyncio.Event()
        rejoin = asyncio.Event()
        joins = 0

        async def heartbeat(*args: Any, **kwargs: Any) -> Any:
            if fence.is_set():
                fence.clear()
                raise StaleGeneration("billing", "order", "m", 1, 2)
            return await real_heartbeat(*args, **kwargs)

        async def join_group(*args: Any, **kwargs: Any) -> Any:
            nonlocal joins
            joins += 1
            if joins > 1:
                await rejoin.wait()  # held, so the test sees the fenced state
            return await real_join(*args, **kwargs)

        store.heartbeat = heartbeat  # type: ignore[method-assign]
        store.join_group = join_group  # type: ignore[method-assign]
        task = asyncio.create_task(app.run())
        try:
            await eventually(lambda: app.health is not None and app.health.ready()[0], what="ready")
            fence.set()
            await eventually(
                lambda: app.health is not None and not app.health.ready()[0], what="fenced"
            )
            assert app.health is not None
            assert app.health.ready()[1] == {"billing/order": "fenced: lease lost, rejoining"}
            rejoin.set()
            await eventually(lambda: app.health is not None and app.health.ready()[0], what="back")
            assert app.stats is not None and app.stats.rejoins == 1
        finally:
            app.request_stop()
            await task
        assert app.health is not None
        assert app.health.ready()[1]["process"] == "stopping"
