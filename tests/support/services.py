"""Outside services (PostgreSQL, nats-server, Chromium) a test cannot reach.

On a developer machine a missing service skips the test with the reason; when
`TIDELOG_REQUIRE_SERVICES=1` (set by `.ci/run`) it fails, so CI can never pass
by skipping.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def services_required() -> bool:
    return os.environ.get("TIDELOG_REQUIRE_SERVICES", "") not in ("", "0")


def service_missing(reason: str) -> NoReturn:
    if services_required():
        pytest.fail(f"required service missing (TIDELOG_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)
