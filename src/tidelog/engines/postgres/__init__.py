"""The PostgreSQL engine: group commit over asyncpg, commit-order reads.

- `engine`: `PostgresEngine`, reads, groups and the contract's write hook;
- `writer`: the group commit, and the transactions it runs;
- `schema`: the tables, the SQL and versioned migrations;
- `errors`: asyncpg errors translated into tidelog's, in one place.
"""

from tidelog.engines.postgres.engine import (
    LATEST_VERSION,
    PostgresConfig,
    PostgresEngine,
    migrate_url,
    open_engine,
    split_url,
)

__all__ = [
    "LATEST_VERSION",
    "PostgresConfig",
    "PostgresEngine",
    "migrate_url",
    "open_engine",
    "split_url",
]
