"""The PostgreSQL engine: group commit over asyncpg, commit-order reads.

- `engine`: `PostgresEngine`, reads, groups and the contract's write hook;
- `writer`: the group commit, and the transactions it runs;
- `schema`: the tables, the SQL and versioned migrations;
- `errors`: asyncpg errors translated into tidelog's, in one place.

The names below are the package's whole interface; its modules list none of
their own, so this is the one list.
"""

from tidelog.engines.postgres.engine import (
    PostgresConfig,
    PostgresEngine,
    migrate_url,
    open_engine,
    split_url,
)
from tidelog.engines.postgres.schema import LATEST_VERSION

__all__ = [
    "LATEST_VERSION",
    "PostgresConfig",
    "PostgresEngine",
    "migrate_url",
    "open_engine",
    "split_url",
]
