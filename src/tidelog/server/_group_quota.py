"""How many consumer groups one principal may create: each group costs every
metrics refresh a count per partition and a row in every listing, and creating
one takes only read on a category (500 groups in a second made each scrape
take seconds).

The server counts, per principal, the groups it created by joining a
(group, category) the store did not have; joining an existing group is free.
The count is this server process's (it starts from the store's groups at the
first join, with no owner for those), which bounds what one principal can
make a running server carry; it is not a ledger kept across restarts.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from litestar.exceptions import HTTPException

from tidelog.engines.contract import Engine

__all__ = ["GroupQuota", "TooManyGroups"]


class TooManyGroups(HTTPException):
    status_code = 429


class GroupQuota:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._store: Engine | None = None
        self._known: set[tuple[str, str]] = set()
        self._created: Counter[str] = Counter()
        self._lock = asyncio.Lock()

    def created_by(self, principal: str) -> int:
        return self._created[principal]

    async def claim(self, store: Engine, principal: str, group: str, category: str) -> None:
        """Count a new group against `principal`, or raise `TooManyGroups` (429)."""
        async with self._lock:
            if store is not self._store:  # a new store (tests lend an app to several)
                self._store = store
                self._known = set(await store.list_groups())
                self._created.clear()
            key = (group, category)
            if key in self._known:
                return
            if self._created[principal] >= self.limit:
                raise TooManyGroups(
                    detail=f"{principal!r} has created {self.limit} consumer groups, the limit"
                )
            self._known.add(key)
            self._created[principal] += 1
