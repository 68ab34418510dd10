"""Multi-process worker tests: the store they share, and their `tidelog worker` processes.

The SIGKILL test (`test_worker_sigkill`) and the chaos soak (`test_worker_chaos`)
run the same way: a store of 12 partitions for each engine, and workers started
from `support/workers` with their JSON log kept per process.
"""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from support.consumers import nats_store_url, url_for

WORKERS = pathlib.Path(__file__).parent / "workers"
"""The worker apps' folder: each process runs there (`kill_app:app`, `chaos_app:app`)."""
TIDELOG = str(pathlib.Path(sys.executable).parent / "tidelog")


@contextlib.asynccontextmanager
async def store_url(
    kind: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    """The URL of a store of 12 partitions: `sqlite`, `postgres` (a schema of its own,
    dropped afterwards), `nats` (the test module's `nats_server` fixture, started only
    when this variant runs) or a URL of `TIDELOG_CONSUMER_TEST_URLS`."""
    schemas = None
    if kind == "postgres":
        from support.postgres import Schemas, require_postgres

        await require_postgres()
        schemas = Schemas()
        url = schemas.url("partitions=12&pool_max=4")
    elif kind == "nats":
        url = nats_store_url(request.getfixturevalue("nats_server"), "partitions=12")
    else:
        url = url_for(kind, tmp_path).replace("partitions=8", "partitions=12")
    try:
        yield url
    finally:
        if schemas is not None:
            await schemas.drop()


def start_worker(app: str, env: dict[str, str], log: pathlib.Path) -> subprocess.Popen[bytes]:
    """`tidelog worker <app>` in `WORKERS`, its stderr (the JSON log) written to `log`."""
    with log.open("wb") as err:
        return subprocess.Popen(
            [TIDELOG, "worker", app],
            cwd=WORKERS,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
