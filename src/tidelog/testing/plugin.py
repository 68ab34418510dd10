"""The pytest plugin (entry point `pytest11`): fixtures for users' handler tests.

`tidelog_store` gives each test a fresh in-memory store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import tidelog


@pytest.fixture
async def tidelog_store() -> AsyncIterator[tidelog.Store]:
    async with tidelog.connect("memory://") as store:
        yield store
