"""The SQLite engine: one file, one writer thread, group commit.

- `engine`: `SQLiteEngine`, reads and the contract's write hook;
- `writer`: the single writer thread and its batched transactions;
- `db`: the file's schema, migrations and pragmas.
"""

from tidelog.engines.sqlite.engine import (
    CHANGE_POLL_INTERVAL,
    PAGE_GROWTH,
    PAGE_SIZE,
    SCHEMA_VERSION,
    SQLiteConfig,
    SQLiteEngine,
    migrate,
    open_engine,
    schema_version,
)

__all__ = [
    "CHANGE_POLL_INTERVAL",
    "PAGE_GROWTH",
    "PAGE_SIZE",
    "SCHEMA_VERSION",
    "SQLiteConfig",
    "SQLiteEngine",
    "migrate",
    "open_engine",
    "schema_version",
]
