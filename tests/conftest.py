"""Shared test plumbing.

Tests that need an outside service (PostgreSQL, nats-server, Chromium) call
`service_missing(reason)` when it cannot be reached. On a developer machine
that skips with the reason; when `TIDELOG_REQUIRE_SERVICES=1` (set by
`.ci/run`) it fails, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NoReturn

import pytest

import tidelog


def services_required() -> bool:
    return os.environ.get("TIDELOG_REQUIRE_SERVICES", "") not in ("", "0")


def service_missing(reason: str) -> NoReturn:
    if services_required():
        pytest.fail(f"required service missing (TIDELOG_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def contract_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tidelog.Store]:
    """A fresh store on each engine the toolkit tests run on.

    Code built only on the engine contract (aggregates, projections, the
    schema registry) runs the same tests on several engines through this.
    """
    schemas = None
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/store.db"
    else:
        from _pg_util import Schemas, require_postgres

        await require_postgres()
        schemas = Schemas()
        url = schemas.url()
    try:
        async with tidelog.connect(url) as store:
            yield store
    finally:
        if schemas is not None:
            await schemas.drop()
